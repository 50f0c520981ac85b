//! `vpufwhtdec` on a VPU that cannot write GStreamer's default layout (as a
//! kernel node cannot): for a downstream without GstVideoMeta, frames whose
//! VPU layout has padding rows are copied, counted, and still bit-exact.
//! Alone in its test binary: the switch is on the process-wide emulated VPU.

use gst::prelude::*;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

#[test]
fn a_fixed_layout_vpu_makes_the_decoder_copy_for_a_sink_without_video_meta() {
    init();
    let vpu = gstrsvpu::emulated_vpu().unwrap();
    let _serial = serial();
    vpu.faults().set_fixed_layout(true);
    // 650x370 NV12: vicodec stores 384 rows and 656-byte lines.
    let name = "nv12_650x370.fwht";
    let path = data(name);
    let stream = std::fs::read(&path).unwrap();
    let pipeline = launch(&format!(
        "filesrc location={} ! vpufwhtdec name=dec ! appsink name=sink sync=false",
        path.display()
    ));
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut bare = None;
    let mut n = 0;
    while let Some(s) = try_pull_sample(&sink) {
        let info = gst_video::VideoInfo::from_caps(s.caps().unwrap()).unwrap();
        let (raw, frames) =
            bare.get_or_insert_with(|| bare_decode(&stream, pixel_format(info.format())));
        let buffer = s.buffer().unwrap();
        assert!(
            gstrsvpu::allocator::region(buffer.peek_memory(0)).is_none(),
            "frame {n}: a copy, not the VPU's memory"
        );
        assert_same_picture(buffer, &info, raw, &frames[n], &format!("{name} frame {n}"));
        n += 1;
    }
    vpu.faults().set_fixed_layout(false);
    assert_no_error(&pipeline);
    assert_eq!(n, 4, "N frames in, N out");
    let st = stats(&pipeline.by_name("dec").unwrap());
    assert_eq!(stat(&st, "frame-copies"), 4, "{st}");
    assert_eq!(stat(&st, "coherency-violations"), 0, "{st}");
    pipeline.set_state(gst::State::Null).unwrap();
}
