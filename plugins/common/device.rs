//! Which VPU an element drives: the one place backends are chosen.
//!
//! The `device` property of every element takes `auto` (a kernel codec node
//! that offers the codec, else the emulated VPU), `emu` (the emulated VPU),
//! or a path (`/dev/videoN`). `auto` takes the first node, in discovery order
//! ([`crate::v4l2::discovery::nodes`]), that is a stateful codec of the
//! element's role for its codec; when that node fails to open, the element
//! runs on the emulated VPU and a warning names the node and the error. All
//! elements of a process that use the emulated VPU share one core, each with
//! its own session, like elements sharing one kernel node.
//!
//! The emulated VPU's coherency checker is always on; `GST_VPU_CHECKER`
//! chooses how strict it is: `report` (default: violations are counted and
//! logged), `simulate` (also model a write-back CPU cache, so a missed sync
//! corrupts data as on a non-coherent SoC) or `panic` (abort on the first
//! violation, for tests).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::m2m::{Device, DeviceInfo, M2mError, PixelFormat, Role, Session};
use crate::mem::{Checker, CheckerConfig, MemoryKind};
use crate::sys::DmaBackend;
use crate::v4l2::discovery::{self, CodecNode};
use crate::vpu::{EmuConfig, EmuVpu};

/// Environment variable that sets the emulated VPU's checker mode.
pub(crate) const CHECKER_ENV: &str = "GST_VPU_CHECKER";

/// The value of a `device` property.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum DeviceChoice {
    /// A kernel node offering the codec, else the emulated VPU.
    #[default]
    Auto,
    /// The in-crate emulated VPU.
    Emulated,
    /// A kernel V4L2 M2M node.
    Path(PathBuf),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Emulated => f.write_str("emu"),
            DeviceChoice::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A `device` value that is none of `auto`, `emu` or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device \"{0}\" is not auto, emu or an absolute path like /dev/video0")]
pub(crate) struct BadDevice(pub String);

impl FromStr for DeviceChoice {
    type Err = BadDevice;

    fn from_str(s: &str) -> Result<DeviceChoice, BadDevice> {
        match s.trim() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "emu" => Ok(DeviceChoice::Emulated),
            p if p.starts_with('/') => Ok(DeviceChoice::Path(PathBuf::from(p))),
            other => Err(BadDevice(other.to_owned())),
        }
    }
}

/// The checker configuration `GST_VPU_CHECKER` asks for.
fn checker_config() -> CheckerConfig {
    let mode = std::env::var(CHECKER_ENV).unwrap_or_default();
    match mode.as_str() {
        "simulate" => CheckerConfig {
            simulate_cache: true,
            ..CheckerConfig::default()
        },
        "panic" => CheckerConfig {
            panic_on_violation: true,
            ..CheckerConfig::default()
        },
        "" | "report" => CheckerConfig::default(),
        other => {
            log::warn!("{CHECKER_ENV}={other} is not report, simulate or panic: using report");
            CheckerConfig::default()
        }
    }
}

/// The process's emulated VPU, booted on first use.
pub(crate) fn emulated() -> Result<EmuVpu, M2mError> {
    static VPU: Mutex<Option<EmuVpu>> = Mutex::new(None);
    let mut vpu = VPU.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(v) = vpu.as_ref() {
        return Ok(v.clone());
    }
    let checker = Checker::new(checker_config());
    let v = EmuVpu::new(EmuConfig {
        checker,
        ..EmuConfig::default()
    })?;
    log::info!("emulated VPU booted");
    *vpu = Some(v.clone());
    Ok(v)
}

/// An open session and what it runs on.
pub(crate) struct Opened {
    pub session: Box<dyn Session>,
    pub info: DeviceInfo,
    /// The checker watching the session's memory (the emulated VPU's).
    pub checker: Option<Arc<Checker>>,
    /// What buffers the session allocates are: real dma-bufs or memfds.
    /// Known before allocating, so that caps (`memory:DMABuf`) can be
    /// negotiated first.
    pub memory: MemoryKind,
}

/// What `device=auto` means for a `role` session of `codec`, given the
/// machine's stateful codec nodes (in discovery order): the first node that
/// is a `role` for `codec`, else the emulated VPU.
pub(crate) fn resolve_auto(nodes: &[CodecNode], role: Role, codec: PixelFormat) -> DeviceChoice {
    nodes
        .iter()
        .find(|n| n.supports(role, codec))
        .map_or(DeviceChoice::Emulated, |n| {
            DeviceChoice::Path(n.path.clone())
        })
}

/// Opens a `role` session for `codec` on the chosen device.
pub(crate) fn open(
    choice: &DeviceChoice,
    role: Role,
    codec: PixelFormat,
) -> Result<Opened, M2mError> {
    open_among(discovery::nodes(), choice, role, codec)
}

/// [`open`] with `device=auto` choosing among `nodes`. A kernel node that
/// `auto` chose but that fails to open leaves the element working on the
/// emulated VPU, with a warning naming the node and the error; a node the
/// user named fails.
fn open_among(
    nodes: &[CodecNode],
    choice: &DeviceChoice,
    role: Role,
    codec: PixelFormat,
) -> Result<Opened, M2mError> {
    match choice {
        DeviceChoice::Auto => match resolve_auto(nodes, role, codec) {
            DeviceChoice::Path(path) => match open_kernel(&path, role, codec) {
                Ok(opened) => {
                    log::info!("device=auto: {codec} {role} on {}", path.display());
                    Ok(opened)
                }
                Err(e) => {
                    log::warn!(
                        "device=auto: {} offers a {codec} {role} but cannot be used ({e}); \
                         using the emulated VPU",
                        path.display()
                    );
                    open_emulated(role, codec)
                }
            },
            _ => {
                log::debug!("device=auto: no kernel {codec} {role}; using the emulated VPU");
                open_emulated(role, codec)
            }
        },
        DeviceChoice::Emulated => open_emulated(role, codec),
        DeviceChoice::Path(path) => open_kernel(path, role, codec),
    }
}

/// A session on the process's emulated VPU.
fn open_emulated(role: Role, codec: PixelFormat) -> Result<Opened, M2mError> {
    let vpu = emulated()?;
    let session = vpu.open(role, codec)?;
    Ok(Opened {
        session,
        info: vpu.info(),
        checker: Some(vpu.checker()),
        // `emulated()` boots with `EmuConfig::default()`, whose
        // backend is `DmaBackend::probe()`: dma-heap and udmabuf
        // allocate dma-bufs, memfd does not.
        memory: match DmaBackend::probe() {
            DmaBackend::Memfd => MemoryKind::Memfd,
            DmaBackend::DmaHeap | DmaBackend::Udmabuf => MemoryKind::DmaBuf,
        },
    })
}

/// A session on a kernel V4L2 M2M node.
fn open_kernel(path: &Path, role: Role, codec: PixelFormat) -> Result<Opened, M2mError> {
    let device = crate::v4l2::KernelDevice::probe(path)?;
    let session = device.open(role, codec)?;
    Ok(Opened {
        session,
        info: device.info(),
        checker: Some(Arc::clone(device.checker())),
        // Every buffer the kernel backend allocates is a driver buffer
        // exported with VIDIOC_EXPBUF: a dma-buf.
        memory: MemoryKind::DmaBuf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values_parse() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("emu".parse(), Ok(DeviceChoice::Emulated));
        assert_eq!(
            "/dev/video1".parse(),
            Ok(DeviceChoice::Path("/dev/video1".into()))
        );
        let e = "video1".parse::<DeviceChoice>().unwrap_err();
        assert!(e.to_string().contains("\"video1\""), "{e}");
        for c in [
            DeviceChoice::Auto,
            DeviceChoice::Emulated,
            DeviceChoice::Path("/dev/video0".into()),
        ] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
    }

    #[test]
    fn elements_share_one_emulated_vpu_with_separate_sessions() {
        let a = open(&DeviceChoice::Emulated, Role::Decoder, PixelFormat::Fwht).unwrap();
        let b = open(&DeviceChoice::Auto, Role::Encoder, PixelFormat::Fwht).unwrap();
        let (ca, cb) = (a.checker.unwrap(), b.checker.unwrap());
        assert!(Arc::ptr_eq(&ca, &cb), "one core for the process");
        assert_eq!(a.info.kind, crate::m2m::DeviceKind::Emulated);
        assert_eq!(a.session.role(), Role::Decoder);
        assert_eq!(b.session.role(), Role::Encoder);
    }

    #[test]
    fn a_missing_or_wrong_kernel_node_is_a_clear_error_naming_it() {
        for path in ["/dev/video-none-here", "/dev/null"] {
            let Err(e) = open(
                &DeviceChoice::Path(path.into()),
                Role::Decoder,
                PixelFormat::Fwht,
            ) else {
                panic!("{path} is no codec node");
            };
            assert!(e.to_string().contains(path), "{e}");
        }
    }

    fn node(path: &str, role: Role, coded: &[u32]) -> CodecNode {
        use crate::v4l2::discovery::{CodedFormat, NodeFormat};
        CodecNode {
            path: path.into(),
            driver: "fake".into(),
            card: "fake".into(),
            bus_info: "platform:fake".into(),
            role,
            multiplanar: false,
            coded: coded
                .iter()
                .map(|&c| CodedFormat {
                    format: NodeFormat::from_fourcc(c),
                    sizes: None,
                })
                .collect(),
            raw: vec![NodeFormat::Known(PixelFormat::I420)],
        }
    }

    /// vicodec's stateful nodes, plus a Hantro-like decoder before them.
    fn fake_nodes() -> Vec<CodecNode> {
        use crate::m2m::format::fourcc;
        vec![
            node("/dev/video0", Role::Encoder, &[fourcc(b"FWHT")]),
            node("/dev/video1", Role::Decoder, &[fourcc(b"FWHT")]),
            node(
                "/dev/video7",
                Role::Decoder,
                &[fourcc(b"H264"), fourcc(b"VP80")],
            ),
            node("/dev/video8", Role::Decoder, &[fourcc(b"FWHT")]),
        ]
    }

    #[test]
    fn auto_picks_the_first_node_of_the_role_for_the_codec() {
        let nodes = fake_nodes();
        let path = |p: &str| DeviceChoice::Path(p.into());
        assert_eq!(
            resolve_auto(&nodes, Role::Encoder, PixelFormat::Fwht),
            path("/dev/video0")
        );
        assert_eq!(
            resolve_auto(&nodes, Role::Decoder, PixelFormat::Fwht),
            path("/dev/video1")
        );
        assert_eq!(
            resolve_auto(&nodes, Role::Decoder, PixelFormat::H264),
            path("/dev/video7")
        );
        // No H.264 encoder node; no node at all.
        assert_eq!(
            resolve_auto(&nodes, Role::Encoder, PixelFormat::H264),
            DeviceChoice::Emulated
        );
        assert_eq!(
            resolve_auto(&[], Role::Decoder, PixelFormat::Fwht),
            DeviceChoice::Emulated
        );
        // Order is discovery order: without video1, the next FWHT decoder.
        let rest: Vec<_> = nodes
            .into_iter()
            .filter(|n| n.path != Path::new("/dev/video1"))
            .collect();
        assert_eq!(
            resolve_auto(&rest, Role::Decoder, PixelFormat::Fwht),
            path("/dev/video8")
        );
    }

    #[test]
    fn auto_falls_back_to_the_emulated_vpu_when_the_chosen_node_fails() {
        let nodes = fake_nodes();
        let opened = open_among(
            &nodes,
            &DeviceChoice::Auto,
            Role::Decoder,
            PixelFormat::Fwht,
        )
        .expect("auto falls back to emu");
        assert_eq!(opened.info.kind, crate::m2m::DeviceKind::Emulated);
        assert_eq!(opened.session.role(), Role::Decoder);
        // A node the user named is not replaced.
        let Err(e) = open_among(
            &nodes,
            &DeviceChoice::Path("/dev/video1".into()),
            Role::Decoder,
            PixelFormat::Fwht,
        ) else {
            panic!("an explicit path that cannot open is an error");
        };
        assert!(e.to_string().contains("/dev/video1"), "{e}");
    }
}
