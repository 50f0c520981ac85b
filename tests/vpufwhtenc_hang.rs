//! `vpufwhtenc` on a VPU whose firmware hangs mid-stream: one element error
//! within the watchdog bound, no deadlock, clean shutdown. Alone in its test
//! binary: the hang is injected into the process-wide emulated VPU.

use std::time::{Duration, Instant};

use gst::prelude::*;

#[test]
fn a_hung_vpu_is_an_element_error_not_a_hang() {
    gst::init().expect("gst::init");
    gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    let vpu = gstrsvpu::emulated_vpu().expect("the emulated VPU boots");
    let pipeline = gst::parse::launch(
        // Slow input: the hang hits an encoder that is streaming.
        "videotestsrc num-buffers=200 ! video/x-raw,format=I420,width=160,height=120 \
         ! identity sleep-time=20000 ! vpufwhtenc ! fakesink",
    )
    .expect("pipeline")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    std::thread::sleep(Duration::from_millis(250));
    vpu.faults().set_hang(true);
    let start = Instant::now();
    let msg = pipeline
        .bus()
        .expect("bus")
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("an error message, not silence");
    let took = start.elapsed();
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("expected an error, got {msg:?}");
    };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(text.contains("VPU"), "the error names the VPU: {text}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    let start = Instant::now();
    pipeline.set_state(gst::State::Null).expect("NULL");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown must not block on the hung VPU"
    );
    vpu.faults().set_hang(false);
}
