//! Bit-exactness of the FWHT engine against the kernel's vicodec driver.
//!
//! The vectors in `tests/data/fwht/` were made by the real vicodec driver in a
//! VM (see `tests/data/fwht/README.md` and `make-vectors.sh`). Their raw
//! inputs are not stored: they are regenerated here with
//! `fwht::test_pattern` (or a fixed LCG for the noise vector) and checked
//! against the input checksums in each `.sha256` sidecar. For every vector:
//!
//! 1. our encoder on the same input produces vicodec's stream byte for byte;
//! 2. our decoder on vicodec's stream produces vicodec's decoded frames;
//! 3. vicodec's decoder on OUR stream produced the frames our decoder makes.
//!
//! Every raw frame, input or decoded, is compared WHOLE: the `Format::raw`
//! buffer of `size` bytes (vicodec's sizeimage), padding rows and columns
//! included. The feeder `tests/data/fwht/fwht-m2m.c` wrote the inputs into
//! vicodec's OUTPUT buffers whole (zero padding, as `fwht::test_pattern`
//! makes it) and saved vicodec's CAPTURE buffers whole, so the vectors whose
//! visible size is not the coded size (1920x1080, 650x370, 648x362) prove
//! the padding handling too: what the encoder reads there, what the decoder
//! writes there (including vicodec's zero reference padding rows), and that
//! bytes outside every coded plane stay zero.
//!
//! Regenerating: `FWHT_VECTOR_OUT=/tmp/fwhtvec cargo test --test fwht_vicodec
//! write_vector_inputs -- --ignored` writes the raw inputs and our streams
//! for the guest script. No VM is needed to run the checks.

use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::vpu::codec::fwht::{self, EncoderParams, FwhtDecoder, FwhtEncoder};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Lower-case hex SHA-256 of `data`, as `sha256sum` prints it.
fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Copy)]
enum Content {
    /// `fwht::test_pattern`.
    Pattern,
    /// Uniform LCG noise in the visible area: exercises stored-raw planes.
    Noise,
}

struct Vector {
    name: &'static str,
    format: PixelFormat,
    width: u32,
    height: u32,
    frames: u32,
    params: EncoderParams,
    content: Content,
}

const fn params(gop_size: u32, i_frame_qp: u32, p_frame_qp: u32) -> EncoderParams {
    EncoderParams {
        gop_size,
        i_frame_qp,
        p_frame_qp,
    }
}

/// Keep in sync with `tests/data/fwht/make-vectors.sh`.
const VECTORS: &[Vector] = &[
    Vector {
        name: "i420_640x480_gop4",
        format: PixelFormat::I420,
        width: 640,
        height: 480,
        frames: 6,
        params: params(4, 20, 20),
        content: Content::Pattern,
    },
    Vector {
        name: "rgb24_800x600_qp",
        format: PixelFormat::Rgb24,
        width: 800,
        height: 600,
        frames: 4,
        params: params(3, 8, 30),
        content: Content::Pattern,
    },
    Vector {
        name: "xr24_640x360",
        format: PixelFormat::Xbgr32,
        width: 640,
        height: 360,
        frames: 3,
        params: params(2, 20, 20),
        content: Content::Pattern,
    },
    Vector {
        name: "grey_noise_640x360",
        format: PixelFormat::Grey,
        width: 640,
        height: 360,
        frames: 2,
        params: params(10, 20, 20),
        content: Content::Noise,
    },
    // Sizes with padding: the raw frames are fed to vicodec whole, padding
    // (zero) included, by `fwht-m2m`, so both sides encode the same bytes.
    Vector {
        name: "i420_1920x1080",
        format: PixelFormat::I420,
        width: 1920,
        height: 1080,
        frames: 3,
        params: params(3, 20, 20),
        content: Content::Pattern,
    },
    Vector {
        name: "nv12_650x370",
        format: PixelFormat::Nv12,
        width: 650,
        height: 370,
        frames: 4,
        params: params(3, 20, 20),
        content: Content::Pattern,
    },
    Vector {
        name: "yuyv_648x362",
        format: PixelFormat::Yuyv,
        width: 648,
        height: 362,
        frames: 3,
        params: params(2, 20, 20),
        content: Content::Pattern,
    },
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fwht")
}

fn raw_format(v: &Vector) -> Format {
    Format::raw(v.format, v.width, v.height).expect("vector formats are raw")
}

fn make_input(v: &Vector, fmt: &Format, index: u32) -> Vec<u8> {
    let mut buf = vec![0u8; fmt.size];
    match v.content {
        Content::Pattern => fwht::test_pattern(fmt, index, &mut buf),
        Content::Noise => {
            let mut seed = 0x5eed_0000u32 + index;
            let (w, h) = (v.width as usize, v.height as usize);
            let stride = fmt.planes[0].stride;
            for y in 0..h {
                for x in 0..w {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    buf[y * stride + x] = (seed >> 16) as u8;
                }
            }
        }
    }
    buf
}

fn encode_ours(v: &Vector, fmt: &Format) -> Vec<u8> {
    let mut enc = FwhtEncoder::new(fmt, v.params).unwrap();
    let mut stream = Vec::new();
    let mut dst = vec![0u8; FwhtEncoder::max_frame_size(fmt)];
    for i in 0..v.frames {
        let e = enc.encode(&make_input(v, fmt, i), &mut dst).unwrap();
        stream.extend_from_slice(&dst[..e.bytes]);
    }
    stream
}

/// Decodes a stream frame by frame; the CAPTURE buffers start zeroed, as
/// vicodec's freshly allocated ones (vicodec reuses its buffers, but never
/// writes the bytes outside the 8-rounded planes, so those stay zero).
fn decode_ours(stream: &[u8], fmt: &Format) -> Vec<Vec<u8>> {
    let mut dec = FwhtDecoder::new();
    let mut scanner = fwht::FrameScanner::new();
    scanner.push(stream);
    let mut out = Vec::new();
    while let Some(frame) = scanner.next_frame() {
        let frame = frame.unwrap();
        let mut dst = vec![0u8; fmt.size];
        dec.decode(&frame, fmt, &mut dst).unwrap();
        out.push(dst);
    }
    out
}

/// The sidecar: `<kind> <frame> <sha256>` lines; `#` starts a comment.
fn sidecar(name: &str) -> Vec<(String, usize, String)> {
    let text = std::fs::read_to_string(data_dir().join(format!("{name}.sha256"))).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad sidecar line {l:?}");
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect()
}

fn sums(sc: &[(String, usize, String)], kind: &str) -> Vec<String> {
    sc.iter()
        .filter(|(k, _, _)| k == kind)
        .map(|(_, _, s)| s.clone())
        .collect()
}

fn hex_sums(frames: &[Vec<u8>]) -> Vec<String> {
    frames.iter().map(|f| sha256_hex(f)).collect()
}

#[test]
fn vicodec_vectors() {
    for v in VECTORS {
        let fmt = raw_format(v);
        let sc = sidecar(v.name);
        let inputs: Vec<Vec<u8>> = (0..v.frames).map(|i| make_input(v, &fmt, i)).collect();
        assert_eq!(
            hex_sums(&inputs),
            sums(&sc, "input"),
            "{}: regenerated input differs",
            v.name
        );

        // 1. Encoder: byte-identical to vicodec's stream.
        let theirs = std::fs::read(data_dir().join(format!("{}.fwht", v.name))).unwrap();
        let ours = encode_ours(v, &fmt);
        assert_eq!(
            sha256_hex(&theirs),
            sums(&sc, "stream")[0],
            "{}: stored stream corrupt",
            v.name
        );
        if ours != theirs {
            let first = ours.iter().zip(&theirs).position(|(a, b)| a != b);
            panic!(
                "{}: our stream ({} bytes) differs from vicodec's ({} bytes) at byte {first:?}",
                v.name,
                ours.len(),
                theirs.len()
            );
        }

        // 2. Decoder on vicodec's stream: vicodec's frames.
        let decoded = decode_ours(&theirs, &fmt);
        assert_eq!(decoded.len() as u32, v.frames, "{}", v.name);
        assert_eq!(
            hex_sums(&decoded),
            sums(&sc, "vicodec-decoded"),
            "{}: decoded frames differ",
            v.name
        );

        // 3. vicodec's decoder on our stream: our decoder's frames.
        let decoded_ours = decode_ours(&ours, &fmt);
        assert_eq!(
            hex_sums(&decoded_ours),
            sums(&sc, "vicodec-decoded-ours"),
            "{}: vicodec decoded our stream differently",
            v.name
        );
    }
}

/// Writes `<name>.raw` (the input frames back to back, each the whole
/// `Format::raw` buffer of `size` bytes, zero padding included) and
/// `<name>.ours.fwht` (our stream) into `$FWHT_VECTOR_OUT`, plus
/// `vectors.list`, for `make-vectors.sh`. Gated: it only runs with
/// `--ignored` and the variable.
#[test]
#[ignore = "generator for tests/data/fwht; needs FWHT_VECTOR_OUT"]
fn write_vector_inputs() {
    let Ok(dir) = std::env::var("FWHT_VECTOR_OUT") else {
        panic!("set FWHT_VECTOR_OUT to the directory to write the raw inputs into");
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut list = String::new();
    for v in VECTORS {
        let fmt = raw_format(v);
        let raw: Vec<u8> = (0..v.frames).flat_map(|i| make_input(v, &fmt, i)).collect();
        std::fs::write(dir.join(format!("{}.raw", v.name)), raw).unwrap();
        std::fs::write(
            dir.join(format!("{}.ours.fwht", v.name)),
            encode_ours(v, &fmt),
        )
        .unwrap();
        list.push_str(&format!(
            "{} {} {} {} {} {} {} {} {} {}\n",
            v.name,
            v.format,
            v.width,
            v.height,
            v.frames,
            v.params.gop_size,
            v.params.i_frame_qp,
            v.params.p_frame_qp,
            fmt.size,
            fmt.planes[0].stride
        ));
    }
    std::fs::write(dir.join("vectors.list"), list).unwrap();
}
