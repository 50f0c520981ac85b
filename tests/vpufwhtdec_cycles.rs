//! `vpufwhtdec` PLAYING -> NULL -> PLAYING, 100 times. Alone in its test
//! binary: it counts the regions of the process-wide emulated VPU, which
//! other tests running in parallel would change.

use std::path::Path;

use gst::prelude::*;

#[test]
fn playing_null_playing_a_hundred_times() {
    gst::init().expect("gst::init");
    gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    let vpu = gstrsvpu::emulated_vpu().unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fwht/nv12_650x370.fwht");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location={} ! vpufwhtdec ! fakesink",
        path.display()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let bus = pipeline.bus().unwrap();
    let regions_before = vpu.mapped_regions();
    for i in 0..100 {
        pipeline.set_state(gst::State::Playing).unwrap();
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(10),
                &[gst::MessageType::Eos, gst::MessageType::Error],
            )
            .unwrap_or_else(|| panic!("cycle {i}: no EOS"));
        assert_eq!(msg.type_(), gst::MessageType::Eos, "cycle {i}: {msg:?}");
        pipeline.set_state(gst::State::Null).unwrap();
        assert_eq!(
            vpu.mapped_regions(),
            regions_before,
            "cycle {i}: every VPU buffer is freed at NULL"
        );
    }
}
