//! `vpufwhtdec` PLAYING -> NULL -> PLAYING, 100 times. Alone in its test
//! binary: it counts the regions of the process-wide emulated VPU, which
//! other tests running in parallel would change.

use gst::prelude::*;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

#[test]
fn playing_null_playing_a_hundred_times() {
    init();
    let vpu = gstrsvpu::emulated_vpu().unwrap();
    let path = data("nv12_650x370.fwht");
    let pipeline = launch(&format!(
        "filesrc location={} ! vpufwhtdec ! fakesink",
        path.display()
    ));
    let regions_before = vpu.mapped_regions();
    for i in 0..100 {
        pipeline.set_state(gst::State::Playing).unwrap();
        let msg = eos_or_error(&pipeline, 10).unwrap_or_else(|| panic!("cycle {i}: no EOS"));
        assert_eq!(msg.type_(), gst::MessageType::Eos, "cycle {i}: {msg:?}");
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(
            vpu.mapped_regions(),
            regions_before,
            "cycle {i}: every VPU buffer is freed at NULL"
        );
    }
}
