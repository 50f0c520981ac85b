//! The rsvpu plugin's FWHT type finder (plugins/typefind.rs): the vicodec
//! vectors in tests/data/fwht are found as `video/x-fwht` with their size, by
//! the type finder alone, by all of GStreamer's type finders together, by a
//! `typefind` element and inside `decodebin`; other media and broken headers
//! are not.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use gst::prelude::*;

/// (file, width, height) of every vector in tests/data/fwht.
const VECTORS: &[(&str, i32, i32)] = &[
    ("i420_640x480_gop4.fwht", 640, 480),
    ("rgb24_800x600_qp.fwht", 800, 600),
    ("xr24_640x360.fwht", 640, 360),
    ("grey_noise_640x360.fwht", 640, 360),
];

fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().expect("GStreamer initialises");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    });
}

fn vector_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fwht")
        .join(name)
}

fn vector(name: &str) -> Vec<u8> {
    let path = vector_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The type finder the plugin registered; fails when it is missing.
fn fwht_factory() -> gst::TypeFindFactory {
    init();
    let factory = gst::TypeFindFactory::factories()
        .into_iter()
        .find(|f| f.name() == "video/x-fwht")
        .expect("the rsvpu plugin registers a video/x-fwht type finder");
    assert_eq!(factory.plugin_name().as_deref(), Some("rsvpu"));
    factory
}

/// Runs only our type finder over `data`.
fn ours(data: &[u8]) -> (Option<gst::TypeFindProbability>, Option<gst::Caps>) {
    let factory = fwht_factory();
    let mut find = gst::SliceTypeFind::new(data);
    factory.call_function(&mut find);
    (find.probability, find.caps)
}

fn fwht_caps(width: i32, height: i32) -> gst::Caps {
    gst::Caps::builder("video/x-fwht")
        .field("width", width)
        .field("height", height)
        .build()
}

fn is_fwht(caps: Option<&gst::Caps>) -> bool {
    caps.and_then(|c| c.structure(0))
        .is_some_and(|s| s.name() == "video/x-fwht")
}

#[test]
fn factory_declares_extension_and_caps() {
    let factory = fwht_factory();
    assert_eq!(factory.extensions(), ["fwht"]);
    assert_eq!(
        factory.caps(),
        Some(gst::Caps::new_empty_simple("video/x-fwht"))
    );
    assert_eq!(factory.rank(), gst::Rank::PRIMARY);
}

#[test]
fn vicodec_vectors_are_fwht_with_their_size() {
    init();
    for &(name, width, height) in VECTORS {
        let data = vector(name);
        let (probability, caps) = ours(&data);
        assert!(
            matches!(probability, Some(gst::TypeFindProbability::Maximum)),
            "{name}: {probability:?}"
        );
        assert_eq!(caps, Some(fwht_caps(width, height)), "{name}");

        // All of GStreamer's type finders together agree.
        let (probability, caps) = gst::SliceTypeFind::type_find(&data);
        assert!(
            matches!(probability, gst::TypeFindProbability::Maximum),
            "{name}: {probability:?}"
        );
        assert_eq!(caps, Some(fwht_caps(width, height)), "{name}");
    }
}

#[test]
fn a_single_frame_is_nearly_certain() {
    init();
    let data = vector("i420_640x480_gop4.fwht");
    let size = u32::from_be_bytes([data[40], data[41], data[42], data[43]]) as usize;
    let (probability, caps) = ours(&data[..44 + size]);
    assert!(
        matches!(probability, Some(gst::TypeFindProbability::NearlyCertain)),
        "{probability:?}"
    );
    assert_eq!(caps, Some(fwht_caps(640, 480)));
}

/// A fixed LCG, so that the "random" data is the same on every run.
fn noise(len: usize, mut seed: u32) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as u8
        })
        .collect()
}

fn mpeg_ts() -> Vec<u8> {
    let mut out = Vec::new();
    for cc in 0..32u8 {
        // Sync byte, PUSI + PID 0x100, payload only with continuity counter.
        let mut packet = vec![0x47, 0x41, 0x00, 0x10 | (cc & 0xf)];
        packet.extend(noise(184, u32::from(cc)));
        out.extend(packet);
    }
    out
}

fn mp4() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0x18u32.to_be_bytes());
    out.extend(b"ftypisom");
    out.extend(0x200u32.to_be_bytes());
    out.extend(b"isommp41");
    out.extend(0x08u32.to_be_bytes());
    out.extend(b"free");
    out.extend(0x1000u32.to_be_bytes());
    out.extend(b"mdat");
    out.extend(noise(0x1000 - 8, 7));
    out
}

fn png() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(b"IHDR");
    out.extend(640u32.to_be_bytes());
    out.extend(480u32.to_be_bytes());
    out.extend([8, 2, 0, 0, 0]);
    out.extend([0; 4]); // CRC, not checked by type finders
    out.extend(noise(2000, 3));
    out
}

#[test]
fn other_media_is_not_fwht() {
    init();
    let cases: [(&str, Vec<u8>, Option<&str>); 4] = [
        ("random", noise(64 * 1024, 1), None),
        ("mpeg-ts", mpeg_ts(), Some("video/mpegts")),
        ("mp4", mp4(), Some("video/quicktime")),
        ("png", png(), Some("image/png")),
    ];
    for (what, data, expected) in cases {
        let (probability, caps) = ours(&data);
        assert!(
            probability.is_none() && caps.is_none(),
            "{what}: our type finder suggested {caps:?} ({probability:?})"
        );
        let (_, caps) = gst::SliceTypeFind::type_find(&data);
        assert!(!is_fwht(caps.as_ref()), "{what}: {caps:?}");
        if let Some(media) = expected {
            let name = caps
                .as_ref()
                .and_then(|c| c.structure(0))
                .map(|s| s.name().to_string());
            assert_eq!(name.as_deref(), Some(media), "{what}");
        }
    }
}

#[test]
fn broken_headers_are_not_fwht() {
    init();
    let data = vector("i420_640x480_gop4.fwht");
    let mut bad_version = data[..44].to_vec();
    bad_version[8..12].copy_from_slice(&7u32.to_be_bytes());
    let mut bad_magic = data.clone();
    bad_magic[4] = 0xfe;
    bad_magic.truncate(44 + 100);
    let cases: [(&str, &[u8]); 5] = [
        ("43 header bytes", &data[..43]),
        ("20 header bytes", &data[..20]),
        ("magic only", &data[..8]),
        ("version 7", &bad_version),
        ("broken magic", &bad_magic),
    ];
    for (what, bytes) in cases {
        let (probability, caps) = ours(bytes);
        assert!(
            probability.is_none() && caps.is_none(),
            "{what}: our type finder suggested {caps:?} ({probability:?})"
        );
        let (_, caps) = gst::SliceTypeFind::type_find(bytes);
        assert!(!is_fwht(caps.as_ref()), "{what}: {caps:?}");
    }
}

/// Records the caps a `typefind` element announces.
fn watch_have_type(typefind: &gst::Element) -> Arc<Mutex<Option<gst::Caps>>> {
    let found = Arc::new(Mutex::new(None));
    let slot = found.clone();
    typefind.connect("have-type", false, move |args| {
        let caps = args.get(2).and_then(|v| v.get::<gst::Caps>().ok());
        *slot.lock().unwrap() = caps;
        None
    });
    found
}

/// Brings `pipeline` to PAUSED and waits until it prerolled or failed;
/// returns the error message, if any.
fn preroll(pipeline: &gst::Pipeline) -> Option<String> {
    // A failing state change is reported on the bus as well.
    let _ = pipeline.set_state(gst::State::Paused);
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(20),
            &[gst::MessageType::AsyncDone, gst::MessageType::Error],
        )
        .expect("the pipeline prerolls or fails within 20 s");
    let error = match msg.view() {
        gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
        _ => None,
    };
    pipeline.set_state(gst::State::Null).expect("back to NULL");
    error
}

fn filesrc(name: &str) -> gst::Element {
    gst::ElementFactory::make("filesrc")
        .property("location", vector_path(name).to_str().expect("UTF-8 path"))
        .build()
        .expect("filesrc (coreelements) is installed")
}

#[test]
fn typefind_element_finds_fwht_files() {
    init();
    for &(name, width, height) in VECTORS {
        let pipeline = gst::Pipeline::new();
        let src = filesrc(name);
        let typefind = gst::ElementFactory::make("typefind")
            .build()
            .expect("typefind (coreelements) is installed");
        let sink = gst::ElementFactory::make("fakesink")
            .build()
            .expect("fakesink (coreelements) is installed");
        pipeline.add_many([&src, &typefind, &sink]).unwrap();
        gst::Element::link_many([&src, &typefind, &sink]).unwrap();
        let found = watch_have_type(&typefind);

        let error = preroll(&pipeline);
        assert_eq!(error, None, "{name}");
        let caps = found.lock().unwrap().take();
        assert_eq!(caps, Some(fwht_caps(width, height)), "{name}");
    }
}

/// `decodebin` on a .fwht file gets as far as `video/x-fwht` caps. Whether it
/// then finds a decoder is not this test's business (there is none yet).
#[test]
fn decodebin_types_fwht_files() {
    init();
    let (name, width, height) = VECTORS[0];
    let pipeline = gst::Pipeline::new();
    let src = filesrc(name);
    let decodebin = gst::ElementFactory::make("decodebin")
        .build()
        .expect("decodebin (gst-plugins-base playback) is installed");
    pipeline.add_many([&src, &decodebin]).unwrap();
    src.link(&decodebin).unwrap();
    let typefind = decodebin
        .downcast_ref::<gst::Bin>()
        .and_then(|bin| bin.by_name("typefind"))
        .expect("decodebin has a typefind child");
    let found = watch_have_type(&typefind);
    // Once a decoder exists, decoded pads go to a sink so the pipeline can
    // preroll.
    let pipeline_weak = pipeline.downgrade();
    decodebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = pipeline_weak.upgrade() else {
            return;
        };
        let Ok(sink) = gst::ElementFactory::make("fakesink").build() else {
            return;
        };
        if pipeline.add(&sink).is_ok() {
            let _ = sink.sync_state_with_parent();
            if let Some(sinkpad) = sink.static_pad("sink") {
                let _ = pad.link(&sinkpad);
            }
        }
    });

    // Without a decoder this ends in a missing-plugin error; with one, in
    // preroll. Both are fine here: the type was found before either.
    let _ = preroll(&pipeline);
    let caps = found.lock().unwrap().take();
    assert_eq!(caps, Some(fwht_caps(width, height)));
}
