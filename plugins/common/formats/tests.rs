use std::str::FromStr;

use super::*;
use crate::m2m::PlaneLayout;

fn init() {
    gst::init().expect("GStreamer initialises");
}

/// Every raw format, with the GStreamer format the brief's table names.
const TABLE: &[(PixelFormat, VideoFormat)] = &[
    (PixelFormat::I420, VideoFormat::I420),
    (PixelFormat::Yv12, VideoFormat::Yv12),
    (PixelFormat::Nv12, VideoFormat::Nv12),
    (PixelFormat::Nv21, VideoFormat::Nv21),
    (PixelFormat::Yuv422p, VideoFormat::Y42b),
    (PixelFormat::Nv16, VideoFormat::Nv16),
    (PixelFormat::Yuyv, VideoFormat::Yuy2),
    (PixelFormat::Uyvy, VideoFormat::Uyvy),
    (PixelFormat::Grey, VideoFormat::Gray8),
    (PixelFormat::Rgb24, VideoFormat::Rgb),
    (PixelFormat::Bgr24, VideoFormat::Bgr),
    (PixelFormat::Xbgr32, VideoFormat::Bgrx),
    (PixelFormat::Xrgb32, VideoFormat::Xrgb),
    (PixelFormat::Rgbx32, VideoFormat::Rgbx),
    (PixelFormat::Bgrx32, VideoFormat::Xbgr),
];

#[test]
fn every_pixel_format_maps_both_ways() {
    for &p in PixelFormat::ALL {
        let expected = TABLE.iter().find(|(tp, _)| *tp == p).map(|&(_, v)| v);
        assert_eq!(video_format(p), expected, "{p}");
        assert_eq!(
            expected.is_none(),
            p.is_coded(),
            "{p}: only coded formats lack a mapping"
        );
        if let Some(v) = expected {
            assert_eq!(pixel_format(v), Some(p), "{v:?} back to {p}");
        }
    }
    // The table covers every raw format exactly once.
    let raw = PixelFormat::ALL.iter().filter(|p| !p.is_coded()).count();
    assert_eq!(TABLE.len(), raw);
}

#[test]
fn other_video_formats_have_no_pixel_format() {
    for v in [
        VideoFormat::Unknown,
        VideoFormat::Encoded,
        VideoFormat::I42010le,
        VideoFormat::Bgra,
        VideoFormat::Y444,
        VideoFormat::Yvyu,
        VideoFormat::Nv61,
    ] {
        assert_eq!(pixel_format(v), None, "{v:?}");
    }
}

/// The 32-bit RGB FourCCs: component order in memory, checked against
/// GStreamer's own description of each format.
#[test]
fn rgb32_memory_order_matches_gstreamer() {
    init();
    // (format, byte offsets of R, G, B in a pixel)
    let cases = [
        (PixelFormat::Xbgr32, [2, 1, 0]), // XR24: B G R X
        (PixelFormat::Xrgb32, [1, 2, 3]), // BX24: X R G B
        (PixelFormat::Rgbx32, [0, 1, 2]), // XB24: R G B X
        (PixelFormat::Bgrx32, [3, 2, 1]), // RX24: X B G R
        (PixelFormat::Rgb24, [0, 1, 2]),
        (PixelFormat::Bgr24, [2, 1, 0]),
    ];
    for (p, rgb) in cases {
        let v = video_format(p).unwrap();
        let info = gst_video::VideoFormatInfo::from_format(v);
        assert!(info.is_rgb(), "{v:?}");
        assert!(is_rgb(p), "{p}");
        assert_eq!(info.poffset()[..3], rgb, "{p} as {v:?}");
    }
    for p in [PixelFormat::I420, PixelFormat::Grey, PixelFormat::Yuyv] {
        assert!(!is_rgb(p), "{p}");
    }
}

#[test]
fn raw_caps_lists_formats_in_order_and_skips_coded() {
    init();
    let caps = raw_caps(&[
        PixelFormat::Fwht,
        PixelFormat::Nv12,
        PixelFormat::I420,
        PixelFormat::Nv12,
        PixelFormat::Xbgr32,
    ]);
    let expected = gst::Caps::from_str(
        "video/x-raw, format=(string){ NV12, I420, BGRx }, width=(int)[ 1, 8192 ], \
         height=(int)[ 1, 8192 ], framerate=(fraction)[ 0/1, 2147483647/1 ]",
    )
    .unwrap();
    assert_eq!(caps, expected, "{caps}");
    assert!(raw_caps(&[PixelFormat::Fwht, PixelFormat::H264]).is_empty());
    assert!(raw_caps(&[]).is_empty());

    // Every raw format: the caps accept a fixed frame of it.
    let all = raw_caps(PixelFormat::ALL);
    for &(p, v) in TABLE {
        let info = video_info(&Format::raw(p, 640, 480).unwrap()).unwrap();
        let fixed = info.to_caps().unwrap();
        assert!(fixed.can_intersect(&all), "{p} ({v:?}) not in {all}");
    }
}

#[test]
fn fwht_caps_with_and_without_size() {
    init();
    assert_eq!(fwht_caps(None).to_string(), "video/x-fwht");
    assert_eq!(
        fwht_caps(Some((640, 480))).to_string(),
        "video/x-fwht, width=(int)640, height=(int)480"
    );
    assert!(fwht_caps(Some((640, 480))).is_fixed());
}

#[test]
fn video_info_has_the_contract_layout_for_every_format() {
    init();
    for &(p, v) in TABLE {
        // 645x361 has padding columns and rows in every format.
        let format = Format::raw(p, 645, 361).unwrap();
        let info = video_info(&format).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(info.format(), v);
        assert_eq!((info.width(), info.height()), (645, 361));
        assert_eq!(info.size(), format.size, "{p}");
        assert_eq!(info.n_planes() as usize, format.planes.len(), "{p}");
        for (i, plane) in format.planes.iter().enumerate() {
            assert_eq!(info.offset()[i], plane.offset, "{p} plane {i} offset");
            assert_eq!(
                info.stride()[i] as usize,
                plane.stride,
                "{p} plane {i} stride"
            );
        }
        // The reverse check accepts what the forward mapping produced.
        assert_eq!(layout_matches(&info, &format), Ok(()), "{p}");

        let meta = MetaLayout::of(&format).unwrap();
        assert_eq!(meta.video_format, v);
        assert_eq!(meta.offsets, info.offset());
        assert_eq!(meta.strides, info.stride());
    }
}

#[test]
fn i420_1080p_video_info_keeps_the_padding_rows() {
    init();
    let format = Format::raw(PixelFormat::I420, 1920, 1080).unwrap();
    let info = video_info(&format).unwrap();
    assert_eq!(info.offset(), [0, 1920 * 1088, 1920 * 1088 + 960 * 544]);
    assert_eq!(info.stride(), [1920, 960, 960]);
    assert_eq!(info.size(), 1920 * 1088 * 3 / 2);
    assert_eq!(info.colorimetry().to_string(), "bt709");

    // GStreamer's default layout for the same caps has no padding rows: not
    // importable as is.
    let plain = gst_video::VideoInfo::builder(VideoFormat::I420, 1920, 1080)
        .build()
        .unwrap();
    assert_eq!(
        layout_matches(&plain, &format),
        Err(LayoutMismatch::Plane {
            plane: 1,
            expected_offset: 1920 * 1088,
            expected_stride: 960,
            found_offset: 1920 * 1080,
            found_stride: 960,
        })
    );
}

#[test]
fn default_layout_matches_when_no_padding_is_needed() {
    init();
    // 640x480 I420: GStreamer's default layout is vicodec's.
    let format = Format::raw(PixelFormat::I420, 640, 480).unwrap();
    let plain = gst_video::VideoInfo::builder(VideoFormat::I420, 640, 480)
        .build()
        .unwrap();
    assert_eq!(layout_matches(&plain, &format), Ok(()));
}

#[test]
fn default_layout_is_gstreamers_and_the_decoder_can_write_it() {
    init();
    let f = default_layout(&Format::raw(PixelFormat::I420, 1920, 1080).unwrap()).unwrap();
    assert_eq!(
        f.planes,
        [
            PlaneLayout {
                offset: 0,
                stride: 1920,
                rows: 1080
            },
            PlaneLayout {
                offset: 1920 * 1080,
                stride: 960,
                rows: 540
            },
            PlaneLayout {
                offset: 1920 * 1080 * 5 / 4,
                stride: 960,
                rows: 540
            },
        ]
    );
    assert_eq!(f.size, 1920 * 1080 * 3 / 2);
    for &(p, v) in TABLE {
        // Odd sizes: rows and strides rounded as GStreamer rounds them.
        let raw = Format::raw(p, 645, 361).unwrap();
        let f = default_layout(&raw).unwrap_or_else(|e| panic!("{p}: {e}"));
        let plain = gst_video::VideoInfo::builder(v, 645, 361).build().unwrap();
        assert_eq!(layout_matches(&plain, &f), Ok(()), "{p}");
        assert_eq!(f.size, plain.size(), "{p}");
        assert_eq!(
            (f.pixelformat, f.width, f.height, f.colorimetry),
            (raw.pixelformat, raw.width, raw.height, raw.colorimetry)
        );
        // Every plane inside the buffer, and a layout the FWHT decoder fills.
        MetaLayout::of(&f).unwrap_or_else(|e| panic!("{p}: {e}"));
        crate::vpu::codec::fwht::check_output_layout(&f).unwrap_or_else(|e| panic!("{p}: {e}"));
    }
}

#[test]
fn layout_mismatches_say_what_differs() {
    init();
    let format = Format::raw(PixelFormat::Nv12, 640, 480).unwrap();
    let other = gst_video::VideoInfo::builder(VideoFormat::I420, 640, 480)
        .build()
        .unwrap();
    assert!(matches!(
        layout_matches(&other, &format),
        Err(LayoutMismatch::Format {
            found: VideoFormat::I420,
            ..
        })
    ));
    let smaller = gst_video::VideoInfo::builder(VideoFormat::Nv12, 640, 360)
        .build()
        .unwrap();
    assert_eq!(
        layout_matches(&smaller, &format),
        Err(LayoutMismatch::Size {
            expected: (640, 480),
            found: (640, 360)
        })
    );
    let strided = gst_video::VideoInfo::builder(VideoFormat::Nv12, 640, 480)
        .stride(&[704, 704])
        .offset(&[0, 704 * 480])
        .build()
        .unwrap();
    let err = layout_matches(&strided, &format).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plane 0: expected offset 0 stride 640, found offset 0 stride 704"
    );
    let short = gst_video::VideoInfo::builder(VideoFormat::Nv12, 640, 480)
        .size(1000)
        .build()
        .unwrap();
    assert_eq!(
        layout_matches(&short, &format),
        Err(LayoutMismatch::TooSmall {
            expected: 640 * 480 * 3 / 2,
            found: 1000
        })
    );
}

#[test]
fn buffer_layout_prefers_the_video_meta() {
    init();
    let format = Format::raw(PixelFormat::I420, 1920, 1080).unwrap();
    // Upstream caps: GStreamer's default layout (no padding rows).
    let caps_info = gst_video::VideoInfo::builder(VideoFormat::I420, 1920, 1080)
        .build()
        .unwrap();

    // A buffer of our layout, announced by a VideoMeta: importable.
    let mut buffer = gst::Buffer::with_size(format.size).unwrap();
    MetaLayout::of(&format)
        .unwrap()
        .add_to(buffer.get_mut().unwrap())
        .unwrap();
    assert_eq!(buffer_layout_matches(&buffer, &caps_info, &format), Ok(()));

    // The same buffer without the meta follows the caps: not importable.
    let plain = gst::Buffer::with_size(format.size).unwrap();
    assert!(matches!(
        buffer_layout_matches(&plain, &caps_info, &format),
        Err(LayoutMismatch::Plane { plane: 1, .. })
    ));

    // Right meta, buffer too short for the padding rows the codec reads.
    let mut short = gst::Buffer::with_size(1920 * 1080 * 3 / 2).unwrap();
    MetaLayout::of(&format)
        .unwrap()
        .add_to(short.get_mut().unwrap())
        .unwrap();
    assert_eq!(
        buffer_layout_matches(&short, &caps_info, &format),
        Err(LayoutMismatch::TooSmall {
            expected: format.size,
            found: 1920 * 1080 * 3 / 2
        })
    );
}

#[test]
fn invalid_contract_formats_are_errors() {
    init();
    let coded = Format::coded(PixelFormat::Fwht, 640, 480);
    assert_eq!(
        video_info(&coded).unwrap_err(),
        FormatError::NotRaw(PixelFormat::Fwht)
    );

    let mut two_planes = Format::raw(PixelFormat::I420, 640, 480).unwrap();
    two_planes.planes.pop();
    assert_eq!(
        MetaLayout::of(&two_planes).unwrap_err(),
        FormatError::PlaneCount {
            format: PixelFormat::I420,
            expected: 3,
            found: 2
        }
    );

    let mut overflowing = Format::raw(PixelFormat::Grey, 64, 64).unwrap();
    overflowing.planes[0] = PlaneLayout {
        offset: 16,
        stride: 64,
        rows: 64,
    };
    assert_eq!(
        MetaLayout::of(&overflowing).unwrap_err(),
        FormatError::PlaneOutOfBuffer {
            plane: 0,
            end: 16 + 64 * 64,
            size: 64 * 64
        }
    );

    let mut huge = Format::raw(PixelFormat::Grey, 64, 64).unwrap();
    huge.planes[0].stride = usize::MAX / 2;
    assert!(matches!(
        MetaLayout::of(&huge).unwrap_err(),
        FormatError::StrideTooLarge { plane: 0, .. }
    ));
}

fn v4l2(colorspace: u32, xfer_func: u32, ycbcr_enc: u32, quantization: u32) -> Colorimetry {
    Colorimetry {
        colorspace,
        xfer_func,
        ycbcr_enc,
        quantization,
    }
}

fn gst_str(c: Colorimetry, p: PixelFormat, w: u32, h: u32) -> String {
    colorimetry_to_gst(c, p, w, h).to_string()
}

#[test]
fn v4l2_to_gst_table() {
    init();
    use PixelFormat::{Grey, I420, Rgb24, Xbgr32};
    use v4l2::*;
    let cases = [
        // vicodec's FWHT header: REC709 and zeros.
        (v4l2(COLORSPACE_REC709, 0, 0, 0), I420, 640, 480, "bt709"),
        (v4l2(COLORSPACE_REC709, 0, 0, 0), Rgb24, 640, 480, "1:1:5:1"),
        (v4l2(COLORSPACE_SMPTE170M, 0, 0, 0), I420, 640, 480, "bt601"),
        (
            v4l2(COLORSPACE_SMPTE240M, 0, 0, 0),
            I420,
            1920,
            1080,
            "smpte240m",
        ),
        (v4l2(COLORSPACE_BT2020, 0, 0, 0), I420, 3840, 2160, "bt2020"),
        (
            v4l2(COLORSPACE_BT2020, XFER_FUNC_SMPTE2084, 0, 0),
            I420,
            3840,
            2160,
            "bt2100-pq",
        ),
        // sRGB: RGB is GStreamer's sRGB, YUV is limited-range BT.601 of sRGB
        // content, JPEG the full-range variant.
        (v4l2(COLORSPACE_SRGB, 0, 0, 0), Rgb24, 640, 480, "sRGB"),
        (v4l2(COLORSPACE_SRGB, 0, 0, 0), Xbgr32, 1920, 1080, "sRGB"),
        (v4l2(COLORSPACE_SRGB, 0, 0, 0), I420, 640, 480, "2:4:7:1"),
        (v4l2(COLORSPACE_JPEG, 0, 0, 0), I420, 640, 480, "1:4:7:1"),
        (v4l2(COLORSPACE_JPEG, 0, 0, 0), Rgb24, 640, 480, "sRGB"),
        (
            v4l2(COLORSPACE_SRGB, 0, 0, QUANTIZATION_FULL_RANGE),
            I420,
            640,
            480,
            "1:4:7:1",
        ),
        // Unset colorspace: guessed from format and size.
        (v4l2(COLORSPACE_DEFAULT, 0, 0, 0), I420, 720, 576, "bt601"),
        (v4l2(COLORSPACE_DEFAULT, 0, 0, 0), I420, 1280, 720, "bt709"),
        (v4l2(COLORSPACE_DEFAULT, 0, 0, 0), Rgb24, 1280, 720, "sRGB"),
        (v4l2(COLORSPACE_DEFAULT, 0, 0, 0), Grey, 640, 480, "bt601"),
        // Deprecated BT878 is SMPTE 170M; unknown values count as unset.
        (v4l2(COLORSPACE_BT878, 0, 0, 0), I420, 640, 480, "bt601"),
        (v4l2(99, 99, 99, 99), I420, 1920, 1080, "bt709"),
        (v4l2(u32::MAX, 0, 0, 0), Rgb24, 640, 480, "sRGB"),
        // Explicit fields override the colorspace's defaults.
        (
            v4l2(COLORSPACE_REC709, 0, 0, QUANTIZATION_FULL_RANGE),
            I420,
            1920,
            1080,
            "1:3:5:1",
        ),
        (
            v4l2(COLORSPACE_SMPTE170M, 0, YCBCR_ENC_709, 0),
            I420,
            640,
            480,
            "2:3:16:4",
        ),
        (
            v4l2(COLORSPACE_REC709, XFER_FUNC_NONE, YCBCR_ENC_XV601, 0),
            I420,
            640,
            480,
            "2:4:1:1",
        ),
        // Raw: explicitly no primaries.
        (v4l2(COLORSPACE_RAW, 0, 0, 0), I420, 640, 480, "2:4:1:0"),
        // DCI-P3: primaries known, gamma 2.6 is not.
        (
            v4l2(COLORSPACE_DCI_P3, 0, 0, 0),
            I420,
            4096,
            2160,
            "2:3:0:10",
        ),
    ];
    for (c, p, w, h, expected) in cases {
        assert_eq!(gst_str(c, p, w, h), expected, "{c:?} {p} {w}x{h}");
    }
}

#[test]
fn gst_to_v4l2_table() {
    init();
    use PixelFormat::{I420, Rgb24, Xbgr32};
    use v4l2::*;
    let cases = [
        ("bt709", I420, 1920, 1080, v4l2(COLORSPACE_REC709, 0, 0, 0)),
        ("bt601", I420, 640, 480, v4l2(COLORSPACE_SMPTE170M, 0, 0, 0)),
        (
            "smpte240m",
            I420,
            640,
            480,
            v4l2(COLORSPACE_SMPTE240M, 0, 0, 0),
        ),
        ("bt2020", I420, 3840, 2160, v4l2(COLORSPACE_BT2020, 0, 0, 0)),
        (
            "bt2020-10",
            I420,
            3840,
            2160,
            v4l2(COLORSPACE_BT2020, 0, 0, 0),
        ),
        (
            "bt2100-pq",
            I420,
            3840,
            2160,
            v4l2(COLORSPACE_BT2020, XFER_FUNC_SMPTE2084, 0, 0),
        ),
        ("sRGB", Rgb24, 640, 480, v4l2(COLORSPACE_SRGB, 0, 0, 0)),
        ("sRGB", Xbgr32, 640, 480, v4l2(COLORSPACE_SRGB, 0, 0, 0)),
        ("2:4:7:1", I420, 640, 480, v4l2(COLORSPACE_SRGB, 0, 0, 0)),
        ("1:4:7:1", I420, 640, 480, v4l2(COLORSPACE_JPEG, 0, 0, 0)),
        (
            "1:3:5:1",
            I420,
            1920,
            1080,
            v4l2(COLORSPACE_REC709, 0, 0, QUANTIZATION_FULL_RANGE),
        ),
        // RGB with BT.709 primaries and curve.
        ("1:1:5:1", Rgb24, 640, 480, v4l2(COLORSPACE_REC709, 0, 0, 0)),
        // Unknown everything: guessed.
        (
            "0:0:0:0",
            I420,
            640,
            480,
            v4l2(COLORSPACE_SMPTE170M, 0, 0, 0),
        ),
        (
            "0:0:0:0",
            I420,
            1920,
            1080,
            v4l2(COLORSPACE_REC709, 0, 0, 0),
        ),
        ("0:0:0:0", Rgb24, 640, 480, v4l2(COLORSPACE_SRGB, 0, 0, 0)),
        // jpegdec's 1:4:0:0: full-range BT.601, nothing else known.
        (
            "1:4:0:0",
            I420,
            640,
            480,
            v4l2(COLORSPACE_SMPTE170M, 0, 0, QUANTIZATION_FULL_RANGE),
        ),
        // Gamma 2.2 has no V4L2 name: the colorspace's default.
        (
            "2:3:4:1",
            I420,
            1920,
            1080,
            v4l2(COLORSPACE_REC709, 0, 0, 0),
        ),
        // Film primaries have no V4L2 colorspace: guessed, the rest kept.
        (
            "2:3:5:6",
            I420,
            640,
            480,
            v4l2(COLORSPACE_SMPTE170M, XFER_FUNC_DEFAULT, YCBCR_ENC_709, 0),
        ),
    ];
    for (s, p, w, h, expected) in cases {
        let c = VideoColorimetry::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(
            colorimetry_from_gst(&c, p, w, h),
            expected,
            "{s} {p} {w}x{h}"
        );
    }
}

/// Every V4L2 combination (known values, DEFAULT, and out-of-range ones) maps
/// to a GStreamer colorimetry; mapping that back and forth again keeps every
/// field the first mapping knew. The mapping is total and stable.
#[test]
fn colorimetry_is_total_and_stable() {
    init();
    let colorspaces = (0..=13).chain([99, u32::MAX]);
    let formats = [PixelFormat::I420, PixelFormat::Rgb24, PixelFormat::Grey];
    let sizes = [(640, 480), (1920, 1080), (3840, 2160)];
    let mut checked = 0;
    for cs in colorspaces {
        for xfer in (0..=8).chain([99]) {
            for enc in (0..=9).chain([128, 99]) {
                for quant in (0..=3).chain([99]) {
                    let c = v4l2(cs, xfer, enc, quant);
                    for p in formats {
                        for (w, h) in sizes {
                            let g1 = colorimetry_to_gst(c, p, w, h);
                            let back = colorimetry_from_gst(&g1, p, w, h);
                            let g2 = colorimetry_to_gst(back, p, w, h);
                            assert_known_fields_kept(&g1, &g2, c, p);
                            // Once through GStreamer, the V4L2 side is a fixed point.
                            assert_eq!(colorimetry_from_gst(&g2, p, w, h), back, "{c:?} {p}");
                            assert_ne!(g1.range(), VideoColorRange::Unknown, "{c:?} {p}");
                            assert_ne!(g1.matrix(), VideoColorMatrix::Unknown, "{c:?} {p}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 16 * 10 * 12 * 5 * 3 * 3);
}

fn assert_known_fields_kept(
    g1: &VideoColorimetry,
    g2: &VideoColorimetry,
    c: Colorimetry,
    p: PixelFormat,
) {
    assert_eq!(g1.range(), g2.range(), "{c:?} {p}: {g1} -> {g2}");
    assert_eq!(g1.matrix(), g2.matrix(), "{c:?} {p}: {g1} -> {g2}");
    // The BT.709 curve goes by the name of the standard of the primaries
    // (bt601, bt709, bt2020): once unknown primaries are guessed, the name may
    // change, never the curve (8-bit formats only here).
    if g1.transfer() != VideoTransferFunction::Unknown {
        assert!(
            g1.transfer().is_equivalent(8, g2.transfer(), 8),
            "{c:?} {p}: {g1} -> {g2}"
        );
    }
    if g1.primaries() != VideoColorPrimaries::Unknown {
        assert_eq!(g1.primaries(), g2.primaries(), "{c:?} {p}: {g1} -> {g2}");
    }
}

/// GStreamer takes every colorimetry we produce through caps and back: a
/// decoder's output caps never fail to parse downstream.
#[test]
fn produced_colorimetry_survives_caps() {
    init();
    for &(p, _) in TABLE {
        for cs in 0..=12 {
            for xfer in 0..=7 {
                let mut format = Format::raw(p, 640, 480).unwrap();
                format.colorimetry = v4l2(cs, xfer, 0, 0);
                let info = video_info(&format).unwrap_or_else(|e| panic!("{p}: {e}"));
                let caps = info.to_caps().unwrap();
                let parsed = gst_video::VideoInfo::from_caps(&caps)
                    .unwrap_or_else(|e| panic!("{p} {cs}/{xfer}: {caps}: {e}"));
                assert_eq!(parsed.colorimetry(), info.colorimetry(), "{caps}");
            }
        }
    }
}
