//! `vpufwhtdec` on a VPU whose firmware hangs: one element error within the
//! watchdog bound, no deadlock, clean shutdown. Alone in its test binary: the
//! hang is injected into the process-wide emulated VPU.

use std::time::{Duration, Instant};

use gst::prelude::*;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

#[test]
fn a_hung_vpu_is_an_element_error_not_a_hang() {
    init();
    let vpu = gstrsvpu::emulated_vpu().unwrap();
    let _serial = serial();
    let path = data("i420_640x480_gop4.fwht");
    let pipeline = launch(&format!(
        // Slow input: the hang hits a decoder that is streaming.
        "filesrc location={} blocksize=4096 ! identity sleep-time=100000 ! vpufwhtdec ! fakesink",
        path.display()
    ));
    pipeline.set_state(gst::State::Playing).unwrap();
    std::thread::sleep(Duration::from_millis(250));
    vpu.faults().set_hang(true);
    let start = Instant::now();
    let msg = eos_or_error(&pipeline, 15).expect("an error message, not silence");
    let took = start.elapsed();
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("expected an error, got {msg:?}");
    };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(
        text.contains("did not answer") || text.contains("stopped answering"),
        "{text}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // Shutdown must not block on the hung VPU.
    let start = Instant::now();
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    vpu.faults().set_hang(false);
}

#[test]
fn a_vpu_hung_before_start_fails_the_state_change_with_an_error() {
    init();
    let vpu = gstrsvpu::emulated_vpu().unwrap();
    let dec = gst::ElementFactory::make("vpufwhtdec").build().unwrap();
    // Both tests of this file share the VPU: run this one on its own
    // session only while the other is not hanging it (they serialise on
    // this lock).
    let _serial = serial();
    vpu.faults().set_hang(true);
    let start = Instant::now();
    let res = dec.set_state(gst::State::Paused);
    vpu.faults().set_hang(false);
    assert!(res.is_err(), "opening a session on a hung VPU fails");
    assert!(start.elapsed() < Duration::from_secs(8));
    dec.set_state(gst::State::Null).unwrap();
}
