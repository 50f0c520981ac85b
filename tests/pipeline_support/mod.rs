//! Helpers for the tests that run whole pipelines: launching one, playing
//! it to EOS, collecting what a `fakesink` received, an element's `stats`,
//! and the errors of a pipeline that cannot start. Each binary that uses it
//! (or `vpufwhtenc_support`, which builds on it) declares
//! `mod pipeline_support;`.

// Each binary uses a part of it.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use gst::prelude::*;

/// A pipeline from a `gst-launch` description.
pub fn launch(desc: &str) -> gst::Pipeline {
    gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap_or_else(|_| panic!("{desc}: not a pipeline"))
}

/// Plays `pipeline` (launched from `desc`) until EOS. An error message, or
/// no EOS within `secs` seconds, panics naming `desc` (the pipeline set to
/// NULL first). The pipeline is left in PLAYING for the caller to read
/// from.
pub fn play_to_eos(pipeline: &gst::Pipeline, desc: &str, secs: u64) {
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline.bus().unwrap().timed_pop_filtered(
        gst::ClockTime::from_seconds(secs),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    let error = match msg.as_ref().map(|m| m.view()) {
        Some(gst::MessageView::Eos(_)) => return,
        Some(gst::MessageView::Error(e)) => format!("{} ({:?})", e.error(), e.debug()),
        _ => format!("no EOS within {secs} s"),
    };
    pipeline.set_state(gst::State::Null).unwrap();
    panic!("{desc}: {error}");
}

/// The `stats` property of the element named `name`.
pub fn stats(pipeline: &gst::Pipeline, name: &str) -> gst::Structure {
    pipeline
        .by_name(name)
        .unwrap_or_else(|| panic!("no element named {name}"))
        .property::<gst::Structure>("stats")
}

/// What a fakesink received: its buffers and the caps of the last one.
pub type Received = Arc<Mutex<(Vec<gst::Buffer>, Option<gst::Caps>)>>;

/// Makes `sink` (a fakesink) hand over every buffer, without clock sync.
pub fn collect(sink: &gst::Element) -> Received {
    sink.set_property("sync", false);
    sink.set_property("signal-handoffs", true);
    let got: Received = Arc::default();
    let got2 = Arc::clone(&got);
    sink.connect("handoff", false, move |args| {
        let buffer = args[1].get::<gst::Buffer>().unwrap();
        let pad = args[2].get::<gst::Pad>().unwrap();
        let mut g = got2.lock().unwrap();
        g.1 = pad.current_caps();
        g.0.push(buffer);
        None
    });
    got
}

/// Every property in `names` exists on `element` and has a blurb that
/// explains it (more than 40 characters).
pub fn assert_blurbs(element: &gst::Element, names: &[&str]) {
    for name in names {
        let p = element
            .find_property(name)
            .unwrap_or_else(|| panic!("no property {name}"));
        assert!(
            p.blurb().is_some_and(|b| b.len() > 40),
            "{name} has a blurb"
        );
    }
}

/// The error messages (text and debug) of `desc`, a pipeline that must
/// fail to reach PLAYING.
pub fn start_errors(desc: &str) -> Vec<String> {
    let pipeline = launch(desc);
    assert!(
        pipeline.set_state(gst::State::Playing).is_err(),
        "{desc}: must not start"
    );
    let bus = pipeline.bus().unwrap();
    let mut errors = Vec::new();
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            errors.push(format!("{} {:?}", e.error(), e.debug()));
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    errors
}
