//! `vpufwhtdec` across a change of stream format mid-stream: a new frame
//! size (the VPU's SOURCE_CHANGE, unframed through `filesrc` and framed
//! through `appsrc`), a new pixel encoding (an I420 stream then an RGB one),
//! and new upstream caps. Every frame comes out, bit-identical to the bare
//! codec, under caps that match it, and every VPU region is freed at NULL.
//!
//! Alone in its test binary, the tests serialised: they count the regions of
//! the process-wide emulated VPU, which other decoders would change.

use gst::prelude::*;
use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::vpu::codec::fwht::{EncoderParams, FwhtEncoder};

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

/// One part of a test stream: its raw format and coded frames.
struct Part {
    raw: Format,
    frames: Vec<Vec<u8>>,
}

/// `count` frames of a moving pattern at `width` x `height` in `pixfmt`,
/// FWHT-coded with a GOP of 3 (so P-frames cross nothing but their own part).
fn part(pixfmt: PixelFormat, width: u32, height: u32, count: usize) -> Part {
    let raw = Format::raw(pixfmt, width, height).expect("a raw layout");
    let params = EncoderParams {
        gop_size: 3,
        ..EncoderParams::default()
    };
    let mut enc = FwhtEncoder::new(&raw, params).expect("an encoder");
    let mut dst = vec![0; FwhtEncoder::max_frame_size(&raw)];
    let frames = (0..count)
        .map(|n| {
            let src: Vec<u8> = (0..raw.size)
                .map(|i| ((i * 7 + n * 13 + (i / width as usize) * 3) % 251) as u8)
                .collect();
            let e = enc.encode(&src, &mut dst).expect("encoding");
            dst[..e.bytes].to_vec()
        })
        .collect();
    Part { raw, frames }
}

/// The output formats these streams may decode to: I420 for the I420 parts,
/// an RGB one for the RGB parts.
fn assert_expected_format(f: gst_video::VideoFormat) {
    use gst_video::VideoFormat as V;
    assert!(
        matches!(
            f,
            V::I420 | V::Rgb | V::Bgr | V::Bgrx | V::Xrgb | V::Rgbx | V::Xbgr
        ),
        "unexpected output format {f:?}"
    );
}

/// What one output frame looked like (the sample itself is dropped at once:
/// it is a CAPTURE buffer the decoder needs back).
struct Seen {
    width: u32,
    height: u32,
    format: gst_video::VideoFormat,
    region_size: usize,
}

/// Pulls every sample of `sink` until EOS, checking each against the bare
/// decode of the part its size says it belongs to, in order.
fn pull_all(sink: &gst::Element, parts: &[Part]) -> Vec<Seen> {
    let mut bares: Vec<Option<(Format, Vec<Vec<u8>>)>> = parts.iter().map(|_| None).collect();
    let mut seen: Vec<Seen> = Vec::new();
    let (mut part_index, mut in_part) = (0, 0);
    while let Some(sample) = try_pull_sample(sink) {
        let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
        assert_expected_format(info.format());
        let buffer = sample.buffer().unwrap();
        if in_part == parts[part_index].frames.len() {
            part_index += 1;
            in_part = 0;
            assert!(
                part_index < parts.len(),
                "more frames out than in: {} so far",
                seen.len() + 1
            );
        }
        let part = &parts[part_index];
        let what = format!("part {part_index} frame {in_part}");
        assert_eq!(
            (info.width(), info.height()),
            (part.raw.width, part.raw.height),
            "{what}: the caps in force carry this frame's size"
        );
        if let Some(meta) = buffer.meta::<gst_video::VideoMeta>() {
            assert_eq!((meta.width(), meta.height()), (info.width(), info.height()));
            assert_eq!(meta.format(), info.format(), "{what}: meta and caps agree");
        }
        let (raw, pictures) = bares[part_index]
            .get_or_insert_with(|| bare_frames(&part.frames, pixel_format(info.format())));
        assert_same_picture(buffer, &info, raw, &pictures[in_part], &what);
        let region = gstrsvpu::allocator::region(buffer.peek_memory(0))
            .unwrap_or_else(|| panic!("{what}: downstream gets the VPU's own memory"));
        seen.push(Seen {
            width: info.width(),
            height: info.height(),
            format: info.format(),
            region_size: region.size(),
        });
        in_part += 1;
    }
    assert!(sink.property::<bool>("eos"), "the pipeline reaches EOS");
    seen
}

/// Sets `pipeline` to NULL and waits (bounded) for the VPU's region count to
/// come back to `baseline`. appsink still holds its last sample after NULL
/// (the pipeline is not dropped here): the VPU's buffers must go anyway.
fn stop_and_check_regions(pipeline: &gst::Pipeline, baseline: usize) {
    pipeline.set_state(gst::State::Null).unwrap();
    assert_regions_freed(baseline);
}

/// Checks the frame sequence: N in, N out, each part at its own size, and
/// the second part's frames in a new CAPTURE allocation that fits them.
fn assert_parts(seen: &[Seen], parts: &[Part]) {
    let total: usize = parts.iter().map(|p| p.frames.len()).sum();
    assert_eq!(seen.len(), total, "N frames in, N frames out");
    let mut i = 0;
    for p in parts {
        for s in &seen[i..i + p.frames.len()] {
            assert_eq!((s.width, s.height), (p.raw.width, p.raw.height));
            let needed = Format::raw(pixel_format(s.format), s.width, s.height)
                .unwrap()
                .size;
            assert!(
                s.region_size >= needed,
                "a {}-byte CAPTURE region for a {needed}-byte {}x{} frame",
                s.region_size,
                s.width,
                s.height
            );
        }
        i += p.frames.len();
    }
}

fn baseline() -> usize {
    init();
    gstrsvpu::emulated_vpu().unwrap().mapped_regions()
}

#[test]
fn a_new_frame_size_in_a_plain_file_renegotiates_and_loses_nothing() {
    let _serial = serial();
    let baseline = baseline();
    let parts = [
        part(PixelFormat::I420, 160, 120, 5),
        part(PixelFormat::I420, 328, 248, 4),
    ];
    let path = std::env::temp_dir().join(format!("vpufwhtdec-resize-{}.fwht", std::process::id()));
    let stream: Vec<u8> = parts.iter().flat_map(|p| p.frames.concat()).collect();
    std::fs::write(&path, &stream).unwrap();
    let pipeline = launch_with_video_meta(&format!(
        "filesrc location={} ! vpufwhtdec name=dec ! appsink name=sink sync=false",
        path.display()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let seen = pull_all(&pipeline.by_name("sink").unwrap(), &parts);
    assert_no_error(&pipeline);
    assert_parts(&seen, &parts);
    let st = stats(&pipeline.by_name("dec").unwrap());
    assert_eq!(stat(&st, "frames-out"), 9, "{st}");
    assert_eq!(stat(&st, "frame-copies"), 0, "{st}");
    assert_eq!(stat(&st, "coherency-violations"), 0, "{st}");
    stop_and_check_regions(&pipeline, baseline);
    let _ = std::fs::remove_file(&path);
}

/// Pushes every frame of `parts` through `appsrc`, each part under its own
/// `video/x-fwht` caps (a caps event upstream at each change), then EOS.
fn push_framed(appsrc: &gst::Element, parts: &[Part], with_size_caps: bool) {
    let mut n = 0u64;
    for p in parts {
        let caps = if with_size_caps {
            gst::Caps::builder("video/x-fwht")
                .field("width", p.raw.width as i32)
                .field("height", p.raw.height as i32)
                .field("framerate", gst::Fraction::new(30, 1))
                .build()
        } else {
            gst::Caps::builder("video/x-fwht").build()
        };
        for f in &p.frames {
            let mut b = gst::Buffer::from_slice(f.clone());
            {
                let b = b.get_mut().unwrap();
                b.set_pts(gst::ClockTime::from_mseconds(n * 33));
                b.set_duration(gst::ClockTime::from_mseconds(33));
            }
            let sample = gst::Sample::builder().buffer(&b).caps(&caps).build();
            let ret = appsrc.emit_by_name::<gst::FlowReturn>("push-sample", &[&sample]);
            assert_eq!(ret, gst::FlowReturn::Ok, "pushing frame {n}");
            n += 1;
        }
    }
    let ret = appsrc.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    assert_eq!(ret, gst::FlowReturn::Ok);
}

fn framed_run(parts: &[Part], with_size_caps: bool) {
    let baseline = baseline();
    let pipeline = launch_with_video_meta(
        "appsrc name=src format=time is-live=false max-buffers=2 block=true \
         ! vpufwhtdec name=dec ! appsink name=sink sync=false",
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    let appsrc = pipeline.by_name("src").unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    let seen = std::thread::scope(|s| {
        let pusher = s.spawn(|| push_framed(&appsrc, parts, with_size_caps));
        let seen = pull_all(&sink, parts);
        pusher.join().expect("the pushing thread");
        seen
    });
    assert_no_error(&pipeline);
    assert_parts(&seen, parts);
    stop_and_check_regions(&pipeline, baseline);
}

#[test]
fn a_new_frame_size_in_framed_input_renegotiates_and_loses_nothing() {
    let _serial = serial();
    let parts = [
        part(PixelFormat::I420, 160, 120, 5),
        part(PixelFormat::I420, 328, 248, 4),
    ];
    framed_run(&parts, false);
}

#[test]
fn new_upstream_caps_mid_stream_lose_no_frame() {
    let _serial = serial();
    let parts = [
        part(PixelFormat::I420, 160, 120, 4),
        part(PixelFormat::I420, 328, 248, 4),
        part(PixelFormat::I420, 160, 120, 3),
    ];
    framed_run(&parts, true);
}

#[test]
fn a_new_pixel_encoding_mid_stream_renegotiates_the_format() {
    let _serial = serial();
    let parts = [
        part(PixelFormat::I420, 160, 120, 4),
        part(PixelFormat::Rgb24, 160, 120, 4),
    ];
    let baseline = baseline();
    let path = std::env::temp_dir().join(format!("vpufwhtdec-recode-{}.fwht", std::process::id()));
    let stream: Vec<u8> = parts.iter().flat_map(|p| p.frames.concat()).collect();
    std::fs::write(&path, &stream).unwrap();
    let pipeline = launch_with_video_meta(&format!(
        "filesrc location={} ! vpufwhtdec ! appsink name=sink sync=false",
        path.display()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    let seen = pull_all(&pipeline.by_name("sink").unwrap(), &parts);
    assert_no_error(&pipeline);
    assert_parts(&seen, &parts);
    assert_eq!(seen[0].format, gst_video::VideoFormat::I420);
    let rgb = seen[4].format;
    assert!(
        matches!(
            rgb,
            gst_video::VideoFormat::Rgb
                | gst_video::VideoFormat::Bgr
                | gst_video::VideoFormat::Bgrx
                | gst_video::VideoFormat::Xrgb
                | gst_video::VideoFormat::Rgbx
                | gst_video::VideoFormat::Xbgr
        ),
        "the RGB part decodes to an RGB format, not {rgb:?}"
    );
    stop_and_check_regions(&pipeline, baseline);
    let _ = std::fs::remove_file(&path);
}
