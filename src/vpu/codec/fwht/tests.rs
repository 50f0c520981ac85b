//! Encoder/decoder round trips and error paths.

use super::*;
use crate::m2m::{Format, PlaneLayout};

/// Every raw format of the contract (the codec takes them all).
fn all_raw() -> impl Iterator<Item = PixelFormat> {
    PixelFormat::ALL.iter().copied().filter(|p| !p.is_coded())
}

fn encode_frames(fmt: &Format, params: EncoderParams, n: u32) -> Vec<(Vec<u8>, bool)> {
    let mut enc = FwhtEncoder::new(fmt, params).unwrap();
    let mut src = vec![0u8; fmt.size];
    let mut out = Vec::new();
    for i in 0..n {
        test_pattern(fmt, i, &mut src);
        let mut dst = vec![0u8; FwhtEncoder::max_frame_size(fmt)];
        let e = enc.encode(&src, &mut dst).unwrap();
        dst.truncate(e.bytes);
        out.push((dst, e.keyframe));
    }
    out
}

/// Mean absolute error over the visible samples of every component.
fn mean_error(fmt: &Format, a: &[u8], b: &[u8]) -> f64 {
    let (_, geoms) = pixfmt::plane_geoms(fmt).unwrap();
    let (mut sum, mut n) = (0u64, 0u64);
    for g in &geoms {
        for y in 0..g.visible_rows {
            for x in 0..g.visible_area / g.visible_rows.max(1) {
                let i = g.offset + y * g.stride + x * g.step;
                sum += u64::from(a[i].abs_diff(b[i]));
                n += 1;
            }
        }
    }
    sum as f64 / n.max(1) as f64
}

#[test]
fn round_trip_every_format_and_odd_sizes() {
    for pf in all_raw() {
        for (w, h) in [(64, 48), (45, 37), (17, 9), (8, 8)] {
            let fmt = Format::raw(pf, w, h).unwrap();
            let params = EncoderParams {
                gop_size: 3,
                ..Default::default()
            };
            let frames = encode_frames(&fmt, params, 5);
            assert!(frames[0].1, "{pf} {w}x{h}: first frame must be a keyframe");
            let mut dec = FwhtDecoder::new();
            let mut src = vec![0u8; fmt.size];
            let mut dst = vec![0u8; fmt.size];
            for (i, (f, key)) in frames.iter().enumerate() {
                let hdr = parse_header(f).unwrap();
                assert!(!capture_formats(&hdr).is_empty());
                assert!(
                    capture_formats(&hdr).contains(&pf),
                    "{pf} not in {:?}",
                    capture_formats(&hdr)
                );
                let d = dec.decode(f, &fmt, &mut dst).unwrap();
                assert_eq!(d.keyframe, *key);
                test_pattern(&fmt, i as u32, &mut src);
                let err = mean_error(&fmt, &src, &dst);
                assert!(err < 12.0, "{pf} {w}x{h} frame {i}: mean error {err}");
            }
        }
    }
}

#[test]
fn gop_and_params() {
    let fmt = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    let frames = encode_frames(
        &fmt,
        EncoderParams {
            gop_size: 4,
            ..Default::default()
        },
        9,
    );
    // Frame 0 intra; P-frames follow unless nothing was predicted.
    assert!(frames[0].1);
    assert!(frames[4].1 || frames[8].1 || frames.iter().filter(|f| f.1).count() >= 2);
    assert!(
        FwhtEncoder::new(
            &fmt,
            EncoderParams {
                gop_size: 0,
                ..Default::default()
            }
        )
        .is_err()
    );
    let mut enc = FwhtEncoder::new(&fmt, EncoderParams::default()).unwrap();
    assert!(matches!(
        enc.set_params(EncoderParams {
            i_frame_qp: 32,
            ..Default::default()
        }),
        Err(FwhtError::InvalidParam {
            name: "i_frame_qp",
            value: 32,
            min: 1,
            max: 31
        })
    ));
    let src = vec![0u8; fmt.size];
    let mut dst = vec![0u8; FwhtEncoder::max_frame_size(&fmt)];
    assert!(enc.encode(&src, &mut dst).unwrap().keyframe);
    enc.force_keyframe();
    assert!(enc.encode(&src, &mut dst).unwrap().keyframe);
    assert!(matches!(
        enc.encode(&src[..10], &mut dst),
        Err(FwhtError::BufferTooSmall { .. })
    ));
    assert!(matches!(
        enc.encode(&src, &mut dst[..50]),
        Err(FwhtError::BufferTooSmall { .. })
    ));
}

#[test]
fn errors_instead_of_panics() {
    let fmt = Format::raw(PixelFormat::I420, 64, 48).unwrap();
    let frames = encode_frames(&fmt, EncoderParams::default(), 3);
    let (i_frame, p_frame) = (&frames[0].0, &frames[1].0);
    assert!(!frames[1].1, "second frame should be predicted");
    let mut dst = vec![0u8; fmt.size];

    // P-frame with no reference.
    let mut dec = FwhtDecoder::new();
    assert_eq!(
        dec.decode(p_frame, &fmt, &mut dst),
        Err(FwhtError::NoReference)
    );
    // Every truncation is an error.
    for cut in [0, 10, 43, 44, 45, i_frame.len() / 2, i_frame.len() - 1] {
        assert!(
            dec.decode(&i_frame[..cut], &fmt, &mut dst).is_err(),
            "cut {cut}"
        );
    }
    // Mismatched CAPTURE format.
    let rgb = Format::raw(PixelFormat::Rgb24, 64, 48).unwrap();
    let mut rgb_dst = vec![0u8; rgb.size];
    assert!(matches!(
        dec.decode(i_frame, &rgb, &mut rgb_dst),
        Err(FwhtError::FormatMismatch { .. })
    ));
    let other = Format::raw(PixelFormat::I420, 64, 64).unwrap();
    assert!(matches!(
        dec.decode(i_frame, &other, &mut dst),
        Err(FwhtError::FormatMismatch { .. })
    ));
    // Bogus size.
    let mut big = i_frame.clone();
    big[40..44].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        dec.decode(&big, &fmt, &mut dst),
        Err(FwhtError::PayloadTooLarge { .. })
    ));
    // Corrupt payloads: flip bytes everywhere; never panic.
    let mut seed = 0x1234_5678u32;
    for _ in 0..300 {
        let mut f = if seed & 1 == 0 {
            i_frame.clone()
        } else {
            p_frame.clone()
        };
        for _ in 0..4 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let pos = 44 + (seed as usize >> 8) % (f.len() - 44);
            f[pos] = (seed >> 3) as u8;
        }
        let _ = dec.decode(&f, &fmt, &mut dst);
    }
    // After errors the next I-frame decodes, then the P-frame.
    dec.reset();
    assert!(dec.decode(i_frame, &fmt, &mut dst).unwrap().keyframe);
    assert!(!dec.decode(p_frame, &fmt, &mut dst).unwrap().keyframe);
    // Too-small destination.
    assert!(matches!(
        dec.decode(i_frame, &fmt, &mut dst[..100]),
        Err(FwhtError::BufferTooSmall { .. })
    ));
}

#[test]
fn noise_goes_stored_raw_and_never_contains_the_magic() {
    let fmt = Format::raw(PixelFormat::Grey, 64, 64).unwrap();
    let mut seed = 99u32;
    let src: Vec<u8> = (0..fmt.size)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8 | 0x80
        })
        .collect();
    let mut enc = FwhtEncoder::new(&fmt, EncoderParams::default()).unwrap();
    let mut dst = vec![0u8; FwhtEncoder::max_frame_size(&fmt)];
    let e = enc.encode(&src, &mut dst).unwrap();
    let h = parse_header(&dst).unwrap();
    assert_ne!(h.flags & flags::LUMA_IS_UNCOMPRESSED, 0);
    assert_eq!(e.bytes, 44 + 64 * 64);
    assert!(!dst[44..e.bytes].contains(&0xff));
    let mut out = vec![0u8; fmt.size];
    FwhtDecoder::new()
        .decode(&dst[..e.bytes], &fmt, &mut out)
        .unwrap();
    let expect: Vec<u8> = src.iter().map(|&v| v.min(0xfe)).collect();
    assert_eq!(out, expect);
}

#[test]
fn capture_format_preferences() {
    let hdr = |fl| FwhtHeader {
        version: 3,
        width: 640,
        height: 480,
        flags: fl,
        colorimetry: Default::default(),
        payload_size: 0,
        components: 1 + ((fl >> 16) & 7),
        pixel_encoding: Some(if fl & (1 << 19) != 0 {
            PixelEncoding::Yuv
        } else {
            PixelEncoding::Rgb
        }),
    };
    assert_eq!(capture_formats(&hdr(0xa0000))[0], PixelFormat::I420);
    assert_eq!(capture_formats(&hdr(0x120180))[0], PixelFormat::Bgr24);
    assert_eq!(capture_formats(&hdr(0x130180))[0], PixelFormat::Xbgr32);
    assert_eq!(capture_formats(&hdr(0x100180)), vec![PixelFormat::Grey]);
}

/// `fmt` re-laid without vicodec's padding: each plane holds exactly the
/// visible rows and columns of its components (rounded up per subsampling,
/// as GStreamer does), planes back to back.
fn tight_layout(fmt: &Format) -> Format {
    let info = pixfmt::PixInfo::of(fmt.pixelformat).unwrap();
    let mut out = fmt.clone();
    let mut offset = 0;
    for (p, plane) in out.planes.iter_mut().enumerate() {
        let (mut stride, mut rows) = (0, 0);
        for c in info.components.iter().filter(|c| c.plane == p) {
            let (wd, hd) = info.divs(c.slot);
            let cols = fmt.width.div_ceil(wd) as usize;
            stride = stride.max(c.offset + (cols - 1) * c.step + 1);
            rows = rows.max(fmt.height.div_ceil(hd) as usize);
        }
        *plane = PlaneLayout {
            offset,
            stride,
            rows,
        };
        offset += stride * rows;
    }
    out.size = offset;
    out
}

#[test]
fn decodes_into_a_layout_without_padding() {
    for pf in all_raw() {
        for (w, h) in [(64, 48), (45, 37), (17, 9), (8, 8)] {
            let fmt = Format::raw(pf, w, h).unwrap();
            let tight = tight_layout(&fmt);
            check_output_layout(&tight).unwrap();
            let frames = encode_frames(&fmt, EncoderParams::default(), 4);
            let (mut dec_a, mut dec_b) = (FwhtDecoder::new(), FwhtDecoder::new());
            let mut a = vec![0u8; fmt.size];
            let mut b = vec![0x55u8; tight.size];
            let info = pixfmt::PixInfo::of(pf).unwrap();
            for (i, (f, _)) in frames.iter().enumerate() {
                dec_a.decode(f, &fmt, &mut a).unwrap();
                dec_b.decode(f, &tight, &mut b).unwrap();
                // Every sample the tight layout holds is vicodec's (as far
                // as the coded component reaches: vicodec leaves the last
                // column of e.g. 17-wide 4:2:0 chroma unwritten too).
                for c in info.components {
                    let (wd, hd) = info.divs(c.slot);
                    let coded = |d: u32, div: u32| ((d / div) as usize).div_ceil(8) * 8;
                    let rows = (h.div_ceil(hd) as usize).min(coded(h, hd));
                    let cols = (w.div_ceil(wd) as usize).min(coded(w, wd));
                    let (pa, pb) = (fmt.planes[c.plane], tight.planes[c.plane]);
                    for y in 0..rows {
                        for x in 0..cols {
                            let ia = pa.offset + y * pa.stride + c.offset + x * c.step;
                            let ib = pb.offset + y * pb.stride + c.offset + x * c.step;
                            assert_eq!(a[ia], b[ib], "{pf} {w}x{h} frame {i} ({x},{y})");
                        }
                    }
                }
            }
            // One row short of the visible ones: refused, not written.
            let mut short = tight.clone();
            short.planes[0].rows -= 1;
            assert!(
                matches!(
                    check_output_layout(&short),
                    Err(FwhtError::BadLayout { .. })
                ),
                "{pf} {w}x{h}"
            );
            let mut dec = FwhtDecoder::new();
            assert!(matches!(
                dec.decode(&frames[0].0, &short, &mut b),
                Err(FwhtError::BadLayout { .. })
            ));
        }
    }
}
