//! Discovery of the kernel's stateful V4L2 M2M codec nodes.
//!
//! [`nodes`] scans `/dev/video*` once per process and keeps every node that
//! is a *stateful* memory-to-memory codec, in the sense of the kernel's
//! `dev-decoder.rst` / `dev-encoder.rst`:
//!
//! * `VIDIOC_QUERYCAP` reports `V4L2_CAP_VIDEO_M2M` or
//!   `V4L2_CAP_VIDEO_M2M_MPLANE` (the queues are single- or multi-planar
//!   accordingly);
//! * a **decoder** offers coded formats (`V4L2_FMT_FLAG_COMPRESSED`) on its
//!   OUTPUT queue and none on CAPTURE; an **encoder** offers only raw
//!   formats on OUTPUT and coded ones on CAPTURE;
//! * a **stateless** decoder is left out: one whose coded format is a
//!   parsed-slice/frame FourCC (`S264`, `S265`, `VP8F`, `VP9F`, `MG2S`,
//!   `AV1F`, vicodec's `SFWH`), or whose OUTPUT queue supports the request
//!   API (`V4L2_BUF_CAP_SUPPORTS_REQUESTS`), which only stateless codecs need;
//! * a plain converter (raw in, raw out, like `vim2m`) is left out.
//!
//! A node that cannot be opened or answers an ioctl with an error is skipped
//! with a debug log: discovery never fails and never panics, it just finds
//! fewer nodes. The order is the node number (`/dev/video2` before
//! `/dev/video10`), so "the first node that offers X" is stable.
//!
//! Probing touches nothing a client could see: it opens the node (an M2M node
//! gives every open file its own context), asks for capabilities, formats and
//! frame sizes, and makes one `VIDIOC_REQBUFS` with count 0 on the OUTPUT
//! queue, which allocates nothing and only reports the queue's capabilities.
//!
//! `GST_VPU_DEVICES` (see [`DEVICES_ENV`]) replaces the scan of `/dev/video*`
//! by an explicit, ordered, `:`-separated list of nodes; set but empty, it
//! hides every kernel node (the elements' `device=auto` then uses the
//! emulated VPU). Tests use it to pin which nodes count; on a board with
//! several codec nodes it chooses the one `auto` prefers.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use v4l2r::QueueType;
use v4l2r::ioctl::{
    self, BufferCapabilities, Capabilities, Capability, FmtDesc, FormatFlags, FormatIterator,
    FrmSizeTypes, MemoryConsistency,
};
use v4l2r::memory::MemoryType;

use crate::m2m::format::fourcc;
use crate::m2m::{PixelFormat, Role};

/// Environment variable naming the nodes to consider instead of scanning
/// `/dev/video*`: an ordered, `:`-separated list of paths; set but empty,
/// no kernel node at all.
pub const DEVICES_ENV: &str = "GST_VPU_DEVICES";

/// FourCCs of the coded formats of *stateless* decoders: the client parses
/// the bitstream and hands the driver slices or frames plus controls,
/// through the request API. Our elements drive stateful codecs only.
pub const STATELESS_FOURCCS: &[u32] = &[
    fourcc(b"S264"), // V4L2_PIX_FMT_H264_SLICE
    fourcc(b"S265"), // V4L2_PIX_FMT_HEVC_SLICE
    fourcc(b"VP8F"), // V4L2_PIX_FMT_VP8_FRAME
    fourcc(b"VP9F"), // V4L2_PIX_FMT_VP9_FRAME
    fourcc(b"MG2S"), // V4L2_PIX_FMT_MPEG2_SLICE
    fourcc(b"AV1F"), // V4L2_PIX_FMT_AV1_FRAME
    fourcc(b"SFWH"), // V4L2_PIX_FMT_FWHT_STATELESS (vicodec)
];

/// A format a node offers: one the contract knows, or any other FourCC
/// (kept so that nodes with codecs we have no element for can be reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeFormat {
    Known(PixelFormat),
    Other(u32),
}

impl NodeFormat {
    /// The format with this V4L2 FourCC.
    pub fn from_fourcc(code: u32) -> NodeFormat {
        PixelFormat::from_fourcc(code).map_or(NodeFormat::Other(code), NodeFormat::Known)
    }

    /// The V4L2 FourCC.
    pub fn fourcc(self) -> u32 {
        match self {
            NodeFormat::Known(f) => f.fourcc(),
            NodeFormat::Other(code) => code,
        }
    }

    /// The contract's format, when it knows this one.
    pub fn known(self) -> Option<PixelFormat> {
        match self {
            NodeFormat::Known(f) => Some(f),
            NodeFormat::Other(_) => None,
        }
    }
}

impl fmt::Display for NodeFormat {
    /// The FourCC as four characters (non-printable bytes as `.`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: String = self
            .fourcc()
            .to_le_bytes()
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        f.write_str(&text)
    }
}

/// The coded frame sizes a node accepts for one coded format
/// (`VIDIOC_ENUM_FRAMESIZES`), as a range: discrete sizes are summarised by
/// their smallest and largest width and height, with a step of 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SizeRange {
    pub min_width: u32,
    pub max_width: u32,
    pub step_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub step_height: u32,
}

/// One coded format of a node, with the sizes the node reports for it
/// (`None` when the driver does not implement `VIDIOC_ENUM_FRAMESIZES`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CodedFormat {
    pub format: NodeFormat,
    pub sizes: Option<SizeRange>,
}

/// A stateful M2M codec node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecNode {
    pub path: PathBuf,
    /// `v4l2_capability.driver`, e.g. `vicodec`, `hantro-vpu`.
    pub driver: String,
    /// `v4l2_capability.card`.
    pub card: String,
    /// `v4l2_capability.bus_info`, e.g. `platform:vicodec`.
    pub bus_info: String,
    pub role: Role,
    /// The queues are multi-planar (`V4L2_CAP_VIDEO_M2M_MPLANE`).
    pub multiplanar: bool,
    /// Coded formats: the OUTPUT queue's for a decoder, CAPTURE's for an encoder.
    pub coded: Vec<CodedFormat>,
    /// Raw formats: the CAPTURE queue's for a decoder (possibly empty: a
    /// decoder may list them only once it knows the stream), OUTPUT's for
    /// an encoder.
    pub raw: Vec<NodeFormat>,
}

impl CodecNode {
    /// True when this node is a `role` for the coded format `codec`.
    pub fn supports(&self, role: Role, codec: PixelFormat) -> bool {
        self.role == role
            && self
                .coded
                .iter()
                .any(|c| c.format == NodeFormat::Known(codec))
    }
}

/// Why a node is not a stateful codec node we can use.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open: {0}")]
    Open(#[from] std::io::Error),
    #[error("VIDIOC_QUERYCAP failed: {0}")]
    QueryCap(#[from] ioctl::QueryCapError),
    #[error("not a memory-to-memory device (capabilities {0})")]
    NotM2m(Capabilities),
    #[error("no coded format on either queue: a converter, not a codec")]
    Converter,
    #[error("coded formats on both queues: not a decoder nor an encoder")]
    CodedBothWays,
    #[error("raw formats on the OUTPUT queue beside coded ones: not a decoder nor an encoder")]
    MixedOutput,
    #[error("stateless decoder (coded format {0})")]
    StatelessFormat(NodeFormat),
    #[error("stateless decoder (its OUTPUT queue supports the request API)")]
    RequestApi,
}

/// The formats a queue lists, coded and raw apart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct QueueFormats {
    coded: Vec<NodeFormat>,
    raw: Vec<NodeFormat>,
}

impl QueueFormats {
    fn from_descs(descs: impl IntoIterator<Item = FmtDesc>) -> QueueFormats {
        let mut formats = QueueFormats::default();
        for d in descs {
            let f = NodeFormat::from_fourcc(d.pixelformat.to_u32());
            let list = if d.flags.contains(FormatFlags::COMPRESSED) {
                &mut formats.coded
            } else {
                &mut formats.raw
            };
            if !list.contains(&f) {
                list.push(f);
            }
        }
        formats
    }
}

/// What the probe of a node found: the role and the formats on the side of
/// the coded and raw data, before frame sizes are asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Classified {
    role: Role,
    coded: Vec<NodeFormat>,
    raw: Vec<NodeFormat>,
}

/// Decides what a node is from the formats of its queues. Pure, so that
/// the rules can be tested without a device.
fn classify(output: QueueFormats, capture: QueueFormats) -> Result<Classified, ProbeError> {
    let classified = match (output.coded.is_empty(), capture.coded.is_empty()) {
        (true, true) => return Err(ProbeError::Converter),
        (false, false) => return Err(ProbeError::CodedBothWays),
        // Coded in, nothing coded out: a decoder. Its CAPTURE formats may
        // still be empty before a stream is known.
        (false, true) => {
            if !output.raw.is_empty() {
                return Err(ProbeError::MixedOutput);
            }
            Classified {
                role: Role::Decoder,
                coded: output.coded,
                raw: capture.raw,
            }
        }
        (true, false) => {
            if output.raw.is_empty() {
                return Err(ProbeError::Converter);
            }
            Classified {
                role: Role::Encoder,
                coded: capture.coded,
                raw: output.raw,
            }
        }
    };
    if let Some(&f) = classified
        .coded
        .iter()
        .find(|f| STATELESS_FOURCCS.contains(&f.fourcc()))
    {
        return Err(ProbeError::StatelessFormat(f));
    }
    Ok(classified)
}

/// Probes one node: `Ok` when it is a stateful codec node.
pub fn probe(path: &Path) -> Result<CodecNode, ProbeError> {
    let file = File::options().read(true).write(true).open(path)?;
    let cap: Capability = ioctl::querycap(&file)?;
    let caps = cap.device_caps();
    let multiplanar = if caps.contains(Capabilities::VIDEO_M2M_MPLANE) {
        true
    } else if caps.contains(Capabilities::VIDEO_M2M) {
        false
    } else {
        return Err(ProbeError::NotM2m(caps));
    };
    let (output_queue, capture_queue) = if multiplanar {
        (QueueType::VideoOutputMplane, QueueType::VideoCaptureMplane)
    } else {
        (QueueType::VideoOutput, QueueType::VideoCapture)
    };
    let output = QueueFormats::from_descs(FormatIterator::new(&file, output_queue));
    let capture = QueueFormats::from_descs(FormatIterator::new(&file, capture_queue));
    let classified = classify(output, capture)?;
    // The coded data's queue: a stateless decoder's OUTPUT queue takes
    // requests; a stateful one's need not (vicodec's stateful nodes do not).
    if classified.role == Role::Decoder && supports_requests(&file, output_queue) {
        return Err(ProbeError::RequestApi);
    }
    let coded = classified
        .coded
        .into_iter()
        .map(|format| CodedFormat {
            format,
            sizes: frame_sizes(&file, format),
        })
        .collect();
    Ok(CodecNode {
        path: path.to_owned(),
        driver: cap.driver,
        card: cap.card,
        bus_info: cap.bus_info,
        role: classified.role,
        multiplanar,
        coded,
        raw: classified.raw,
    })
}

/// `VIDIOC_REQBUFS(count = 0)` on `queue`: does it support requests? A
/// driver that fails the call is taken as not supporting them.
fn supports_requests(file: &File, queue: QueueType) -> bool {
    match ioctl::reqbufs::<BufferCapabilities>(
        file,
        queue,
        MemoryType::Mmap,
        0,
        MemoryConsistency::empty(),
    ) {
        Ok(caps) => caps.contains(BufferCapabilities::SUPPORTS_REQUESTS),
        Err(e) => {
            log::debug!("REQBUFS(0) on {queue:?}: {e}; assuming no request API");
            false
        }
    }
}

/// The frame sizes of a coded format, summarised as one range.
fn frame_sizes(file: &File, format: NodeFormat) -> Option<SizeRange> {
    let pixfmt = v4l2r::PixelFormat::from_u32(format.fourcc());
    let mut range: Option<SizeRange> = None;
    // Discrete sizes come one index at a time; a stepwise or continuous
    // range comes whole at index 0. Bounded, in case a driver never says EINVAL.
    for index in 0..256 {
        let Ok(e) =
            ioctl::enum_frame_sizes::<v4l2r::bindings::v4l2_frmsizeenum>(file, index, pixfmt)
        else {
            break;
        };
        match e.size() {
            Some(FrmSizeTypes::StepWise(s)) => {
                return Some(SizeRange {
                    min_width: s.min_width,
                    max_width: s.max_width,
                    step_width: s.step_width.max(1),
                    min_height: s.min_height,
                    max_height: s.max_height,
                    step_height: s.step_height.max(1),
                });
            }
            Some(FrmSizeTypes::Discrete(d)) => {
                let r = range.get_or_insert(SizeRange {
                    min_width: d.width,
                    max_width: d.width,
                    step_width: 1,
                    min_height: d.height,
                    max_height: d.height,
                    step_height: 1,
                });
                r.min_width = r.min_width.min(d.width);
                r.max_width = r.max_width.max(d.width);
                r.min_height = r.min_height.min(d.height);
                r.max_height = r.max_height.max(d.height);
            }
            None => break,
        }
    }
    range
}

/// `/dev/videoN` nodes, by N.
fn video_nodes(dev: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dev) else {
        return Vec::new();
    };
    let mut nodes: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("video")?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// The nodes to probe: `GST_VPU_DEVICES` when set, else `/dev/video*`.
fn candidates(env: Option<&str>) -> Vec<PathBuf> {
    match env {
        Some(list) => list
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
        None => video_nodes(Path::new("/dev")),
    }
}

/// Probes `paths` in order and keeps the stateful codec nodes; the others
/// are logged at debug level and skipped.
pub fn scan(paths: &[PathBuf]) -> Vec<CodecNode> {
    let mut found = Vec::new();
    for path in paths {
        match probe(path) {
            Ok(node) => {
                log::info!(
                    "{}: {} stateful {} ({}), coded {}, raw {}",
                    node.path.display(),
                    node.driver,
                    node.role,
                    if node.multiplanar {
                        "multi-planar"
                    } else {
                        "single-planar"
                    },
                    list(node.coded.iter().map(|c| c.format)),
                    list(node.raw.iter().copied()),
                );
                found.push(node);
            }
            Err(e) => log::debug!("{}: skipped: {e}", path.display()),
        }
    }
    found
}

fn list(formats: impl Iterator<Item = NodeFormat>) -> String {
    let v: Vec<String> = formats.map(|f| f.to_string()).collect();
    if v.is_empty() {
        "(none yet)".to_owned()
    } else {
        v.join(" ")
    }
}

/// The stateful codec nodes of this machine, found on first call (see the
/// module doc for the rules and `GST_VPU_DEVICES`) and the same for the
/// rest of the process.
pub fn nodes() -> &'static [CodecNode] {
    static NODES: OnceLock<Vec<CodecNode>> = OnceLock::new();
    NODES.get_or_init(|| {
        let env = std::env::var(DEVICES_ENV).ok();
        let paths = candidates(env.as_deref());
        let nodes = scan(&paths);
        log::debug!(
            "V4L2 discovery: {} stateful codec node(s) among {} candidate(s){}",
            nodes.len(),
            paths.len(),
            if env.is_some() {
                format!(" (from {DEVICES_ENV})")
            } else {
                String::new()
            }
        );
        nodes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats(coded: &[&[u8; 4]], raw: &[&[u8; 4]]) -> QueueFormats {
        QueueFormats {
            coded: coded
                .iter()
                .map(|c| NodeFormat::from_fourcc(fourcc(c)))
                .collect(),
            raw: raw
                .iter()
                .map(|c| NodeFormat::from_fourcc(fourcc(c)))
                .collect(),
        }
    }

    #[test]
    fn vicodec_stateful_decoder_and_encoder() {
        let dec = classify(
            formats(&[b"FWHT"], &[]),
            formats(&[], &[b"YU12", b"NV24", b"XR24"]),
        )
        .unwrap();
        assert_eq!(dec.role, Role::Decoder);
        assert_eq!(dec.coded, vec![NodeFormat::Known(PixelFormat::Fwht)]);
        assert_eq!(
            dec.raw,
            vec![
                NodeFormat::Known(PixelFormat::I420),
                NodeFormat::Other(fourcc(b"NV24")),
                NodeFormat::Known(PixelFormat::Xbgr32),
            ]
        );
        let enc = classify(formats(&[], &[b"YU12", b"NV12"]), formats(&[b"FWHT"], &[])).unwrap();
        assert_eq!(enc.role, Role::Encoder);
        assert_eq!(enc.coded, vec![NodeFormat::Known(PixelFormat::Fwht)]);
        assert_eq!(enc.raw.len(), 2);
    }

    #[test]
    fn a_decoder_may_list_no_raw_format_before_the_stream() {
        let dec = classify(
            formats(&[b"H264", b"VP80", b"AV01"], &[]),
            formats(&[], &[]),
        )
        .unwrap();
        assert_eq!(dec.role, Role::Decoder);
        assert_eq!(
            dec.coded,
            vec![
                NodeFormat::Known(PixelFormat::H264),
                NodeFormat::Known(PixelFormat::Vp8),
                NodeFormat::Other(fourcc(b"AV01"))
            ]
        );
        assert!(dec.raw.is_empty());
    }

    #[test]
    fn stateless_decoders_are_excluded() {
        // vicodec's /dev/video2 and visl.
        for coded in [&[b"SFWH"][..], &[b"SFWH", b"MG2S", b"S264", b"AV1F"][..]] {
            let e = classify(formats(coded, &[]), formats(&[], &[b"NV12"])).unwrap_err();
            assert!(
                matches!(e, ProbeError::StatelessFormat(f) if f.fourcc() == fourcc(coded[0])),
                "{e}"
            );
            assert!(e.to_string().contains("SFWH"), "{e}");
        }
        // A stateless format anywhere in the list is enough.
        let e = classify(formats(&[b"H264", b"S265"], &[]), formats(&[], &[])).unwrap_err();
        assert!(e.to_string().contains("S265"), "{e}");
    }

    #[test]
    fn converters_and_oddities_are_excluded() {
        // vim2m: raw both ways.
        let e = classify(
            formats(&[], &[b"RGBP", b"RGB3"]),
            formats(&[], &[b"RGB3", b"YUYV"]),
        )
        .unwrap_err();
        assert!(matches!(e, ProbeError::Converter), "{e}");
        assert!(matches!(
            classify(formats(&[], &[]), formats(&[b"FWHT"], &[])),
            Err(ProbeError::Converter)
        ));
        assert!(matches!(
            classify(formats(&[b"JPEG"], &[]), formats(&[b"H264"], &[])),
            Err(ProbeError::CodedBothWays)
        ));
        assert!(matches!(
            classify(formats(&[b"FWHT"], &[b"YU12"]), formats(&[], &[b"YU12"])),
            Err(ProbeError::MixedOutput)
        ));
    }

    #[test]
    fn node_formats_print_their_fourcc() {
        assert_eq!(NodeFormat::Known(PixelFormat::I420).to_string(), "YU12");
        assert_eq!(NodeFormat::Other(fourcc(b"VP90")).to_string(), "VP90");
        assert_eq!(NodeFormat::Other(0x0001_4142).to_string(), "BA..");
        assert_eq!(
            NodeFormat::from_fourcc(fourcc(b"FWHT")).known(),
            Some(PixelFormat::Fwht)
        );
        assert_eq!(
            NodeFormat::from_fourcc(fourcc(b"HEVC")).known(),
            Some(PixelFormat::Hevc)
        );
        assert_eq!(NodeFormat::from_fourcc(fourcc(b"AV01")).known(), None);
    }

    #[test]
    fn candidates_come_from_the_env_var_in_its_order() {
        assert_eq!(
            candidates(Some("/dev/video5:/dev/video1")),
            vec![PathBuf::from("/dev/video5"), PathBuf::from("/dev/video1")]
        );
        assert!(candidates(Some("")).is_empty());
        assert!(candidates(Some("::")).is_empty());
    }

    #[test]
    fn video_nodes_sort_by_number() {
        let dir = std::env::temp_dir().join(format!("vpu-disc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["video10", "video2", "video0", "videoX", "media0", "video"] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let nodes = video_nodes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = nodes
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["video0", "video2", "video10"]);
    }

    #[test]
    fn nodes_that_are_not_v4l2_are_skipped_with_a_reason() {
        // A regular file: QUERYCAP fails (ENOTTY); a missing path: open fails.
        let file = std::env::temp_dir().join(format!("vpu-disc-file-{}", std::process::id()));
        std::fs::write(&file, b"not a device").unwrap();
        let e = probe(&file).unwrap_err();
        assert!(matches!(e, ProbeError::QueryCap(_)), "{e}");
        let missing = PathBuf::from("/dev/video-does-not-exist");
        assert!(matches!(probe(&missing), Err(ProbeError::Open(_))));
        assert!(scan(&[file.clone(), missing]).is_empty());
        std::fs::remove_file(&file).unwrap();
    }
}
