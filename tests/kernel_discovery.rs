//! Discovery of the kernel's stateful codec nodes and `device=auto`, on the
//! real `vicodec` driver: its stateful encoder (/dev/video0) and decoder
//! (/dev/video1) are found with the right roles and formats, its stateless
//! decoder (/dev/video2), `vim2m` (a converter) and `visl` (stateless) are not.
//!
//! Needs the VM of `../shared/vm` (vicodec, vim2m, visl loaded). The switch
//! `GST_VPU_KERNEL_TESTS=1` says "the kernel drivers are here": then a missing
//! node fails the test. Without it (the host) each test says loudly that it
//! checked nothing. `scripts/vm-test.sh` runs this binary in the guest with
//! the switch on; by hand:
//!
//! ```text
//! cargo test --no-run --test kernel_discovery
//! VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh \
//!     env GST_VPU_KERNEL_TESTS=1 target/debug/deps/kernel_discovery-<hash>
//! ```

use std::path::{Path, PathBuf};
use std::sync::Once;

use gst::prelude::*;
use gstrsvpu::m2m::format::fourcc;
use gstrsvpu::m2m::{PixelFormat, Role};
use gstrsvpu::v4l2::discovery::{self, CodecNode, NodeFormat, ProbeError};

/// True when the kernel drivers must be there; false (after a loud message)
/// on a machine without them.
fn kernel_drivers(test: &str) -> bool {
    if std::env::var("GST_VPU_KERNEL_TESTS").is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: needs vicodec; run it in the VM with GST_VPU_KERNEL_TESTS=1 \
         (scripts/vm-test.sh) ***\n"
    );
    false
}

/// `gst::init` and the rsvpu plugin, once per process.
fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    });
}

fn node(path: &str) -> &'static CodecNode {
    discovery::nodes()
        .iter()
        .find(|n| n.path == Path::new(path))
        .unwrap_or_else(|| {
            panic!(
                "{path} not discovered; found {:?}",
                discovery::nodes()
                    .iter()
                    .map(|n| &n.path)
                    .collect::<Vec<_>>()
            )
        })
}

/// The raw formats of the contract that vicodec offers on its raw queues
/// (it offers every one of them).
fn contract_raw_formats() -> Vec<NodeFormat> {
    PixelFormat::ALL
        .iter()
        .filter(|f| !f.is_coded())
        .map(|&f| NodeFormat::Known(f))
        .collect()
}

fn check_vicodec_node(n: &CodecNode, role: Role) {
    assert_eq!(n.driver, "vicodec", "{n:?}");
    assert_eq!(n.bus_info, "platform:vicodec", "{n:?}");
    assert_eq!(n.role, role, "{n:?}");
    // vicodec is single-planar unless loaded with multiplanar=1.
    assert!(!n.multiplanar, "{n:?}");
    assert_eq!(n.coded.len(), 1, "{n:?}");
    assert_eq!(n.coded[0].format, NodeFormat::Known(PixelFormat::Fwht));
    // vicodec.c: MIN_WIDTH 640, MAX_WIDTH 4096, MIN_HEIGHT 360, MAX_HEIGHT
    // 2160, stepwise by 8.
    let sizes = n.coded[0]
        .sizes
        .expect("vicodec implements ENUM_FRAMESIZES");
    assert_eq!(
        (sizes.min_width, sizes.max_width, sizes.step_width),
        (640, 4096, 8),
        "{sizes:?}"
    );
    assert_eq!(
        (sizes.min_height, sizes.max_height, sizes.step_height),
        (360, 2160, 8),
        "{sizes:?}"
    );
    for f in contract_raw_formats() {
        assert!(
            n.raw.contains(&f),
            "{}: {f} missing from {:?}",
            n.path.display(),
            n.raw
        );
    }
    // Formats the contract does not know are kept, as FourCCs.
    let nv24 = NodeFormat::Other(fourcc(b"NV24"));
    assert!(n.raw.contains(&nv24), "{:?}", n.raw);
    assert!(n.supports(role, PixelFormat::Fwht));
    assert!(!n.supports(role, PixelFormat::H264));
}

#[test]
fn vicodec_stateful_nodes_are_found_with_their_roles_and_formats() {
    if !kernel_drivers("vicodec_stateful_nodes_are_found_with_their_roles_and_formats") {
        return;
    }
    check_vicodec_node(node("/dev/video0"), Role::Encoder);
    check_vicodec_node(node("/dev/video1"), Role::Decoder);
    // Nothing else on the VM is a stateful codec.
    let paths: Vec<&PathBuf> = discovery::nodes().iter().map(|n| &n.path).collect();
    assert_eq!(
        paths,
        [Path::new("/dev/video0"), Path::new("/dev/video1")],
        "only vicodec's stateful nodes"
    );
}

#[test]
fn stateless_decoders_and_converters_are_left_out_with_the_reason() {
    if !kernel_drivers("stateless_decoders_and_converters_are_left_out_with_the_reason") {
        return;
    }
    // vicodec's stateless decoder: FWHT_STATELESS on OUTPUT.
    match discovery::probe(Path::new("/dev/video2")) {
        Err(ProbeError::StatelessFormat(f)) => assert_eq!(f.fourcc(), fourcc(b"SFWH")),
        other => panic!("/dev/video2 (vicodec stateless): {other:?}"),
    }
    // vim2m: raw to raw.
    match discovery::probe(Path::new("/dev/video3")) {
        Err(ProbeError::Converter) => {}
        other => panic!("/dev/video3 (vim2m): {other:?}"),
    }
    // visl: stateless formats only.
    match discovery::probe(Path::new("/dev/video4")) {
        Err(e @ ProbeError::StatelessFormat(_)) => {
            assert!(e.to_string().contains("stateless"), "{e}")
        }
        other => panic!("/dev/video4 (visl): {other:?}"),
    }
}

#[test]
fn device_auto_resolves_to_vicodec_nodes() {
    if !kernel_drivers("device_auto_resolves_to_vicodec_nodes") {
        return;
    }
    assert_eq!(
        gstrsvpu::auto_device(Role::Encoder, PixelFormat::Fwht),
        Some(PathBuf::from("/dev/video0"))
    );
    assert_eq!(
        gstrsvpu::auto_device(Role::Decoder, PixelFormat::Fwht),
        Some(PathBuf::from("/dev/video1"))
    );
    // No H.264 node on the VM: the emulated VPU.
    assert_eq!(
        gstrsvpu::auto_device(Role::Decoder, PixelFormat::H264),
        None
    );
}

/// With `device=auto` on a kernel that has vicodec, the elements round-trip
/// every frame, whichever VPU auto ends up on (the kernel node once the
/// kernel backend is in the build, the emulated VPU with a warning before).
/// 640x480: vicodec takes nothing smaller than 640x360.
#[test]
fn device_auto_round_trips_on_a_kernel_with_vicodec() {
    if !kernel_drivers("device_auto_round_trips_on_a_kernel_with_vicodec") {
        return;
    }
    init();
    let pipeline = gst::parse::launch(
        "videotestsrc num-buffers=10 ! video/x-raw,format=I420,width=640,height=480 \
         ! vpufwhtenc name=enc device=auto ! vpufwhtdec name=dec device=auto \
         ! fakesink name=sink sync=false",
    )
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS or error within 60 s");
    if let gst::MessageView::Error(e) = msg.view() {
        panic!("{} ({:?})", e.error(), e.debug());
    }
    let dec = pipeline.by_name("dec").unwrap();
    let stats = dec.property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), 10, "{stats}");
    assert_eq!(dec.property::<String>("device"), "auto");
}
