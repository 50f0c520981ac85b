//! `vpufwhtdec` with a downstream that keeps every decoded frame: the CAPTURE
//! pool grows (VIDIOC_CREATE_BUFS) instead of stalling or copying, and the
//! stats say so.

use std::sync::{Arc, Mutex};

use gst::prelude::*;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

#[test]
fn the_pool_grows_when_downstream_holds_every_frame() {
    init();
    // 4 copies of a 6-frame vicodec clip: 24 frames, all kept by the sink.
    let clip = std::fs::read(data("i420_640x480_gop4.fwht")).expect("test vector");
    let dir = std::env::temp_dir().join(format!("vpufwhtdec-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("clip.fwht");
    std::fs::write(&file, clip.repeat(4)).expect("write clip");

    let pipeline = launch(&format!(
        "filesrc location={} ! vpufwhtdec name=dec ! fakesink name=sink sync=false signal-handoffs=true",
        file.display()
    ));
    let held: Arc<Mutex<Vec<gst::Buffer>>> = Arc::default();
    let h = held.clone();
    pipeline
        .by_name("sink")
        .expect("sink")
        .connect("handoff", false, move |args| {
            h.lock()
                .expect("lock")
                .push(args[1].get::<gst::Buffer>().expect("buffer"));
            None
        });
    pipeline.set_state(gst::State::Playing).expect("PLAYING");
    let msg = eos_or_error(&pipeline, 20).expect("EOS or an error");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{} ({:?})", e.error(), e.debug());
    }
    let stats = pipeline
        .by_name("dec")
        .expect("dec")
        .property::<gst::Structure>("stats");
    assert_eq!(
        held.lock().expect("lock").len(),
        24,
        "every frame decoded while all are held"
    );
    let grown = stats.get::<u64>("pool-grown").expect("pool-grown");
    assert!(grown >= 19, "the pool grew to hold every frame: {stats}");
    assert_eq!(
        stats.get::<u64>("frame-copies").ok(),
        Some(0),
        "grew, did not copy: {stats}"
    );
    assert!(
        stats
            .get::<u64>("starvation-waits")
            .expect("starvation-waits")
            > 0,
        "{stats}"
    );
    assert_eq!(
        stats.get::<u64>("coherency-violations").ok(),
        Some(0),
        "{stats}"
    );
    pipeline.set_state(gst::State::Null).expect("NULL");
    held.lock().expect("lock").clear();
    let _ = std::fs::remove_dir_all(&dir);
}
