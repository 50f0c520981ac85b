//! `vpudeviceprovider`: the VPUs in a `GstDeviceMonitor` and in
//! `gst-device-monitor-1.0`, one device per (VPU, role, codec), whose
//! `create_element` gives our element with `device` set.
//!
//! On the host only the emulated VPU is there. With `GST_VPU_KERNEL_TESTS=1`
//! (the VM of `../shared/vm`, as `scripts/vm-test.sh` runs it) vicodec's
//! stateful encoder and decoder must be listed too, and its stateless node not.
//!
//! The `gst-device-monitor-1.0` test loads the built `libgstrsvpu.so`
//! (`cargo build` first, as `scripts/test.sh` does) and needs the tool
//! (Debian's `gstreamer1.0-plugins-base-apps`, installed by `scripts/setup.sh`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use gst::prelude::*;

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    });
}

fn kernel_drivers() -> bool {
    std::env::var("GST_VPU_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

/// The devices a monitor filtered on `classes` and `caps` finds.
fn monitor(classes: &str, caps: Option<&gst::Caps>) -> Vec<gst::Device> {
    let monitor = gst::DeviceMonitor::new();
    monitor
        .add_filter(Some(classes), caps)
        .expect("the filter is accepted");
    monitor.start().expect("the monitor starts");
    let devices = monitor.devices().into_iter().collect();
    monitor.stop();
    devices
}

fn prop(d: &gst::Device, field: &str) -> Option<String> {
    d.properties()?.get::<String>(field).ok()
}

fn describe(devices: &[gst::Device]) -> Vec<String> {
    devices
        .iter()
        .map(|d| format!("{} [{}]", d.display_name(), d.device_class()))
        .collect()
}

#[test]
fn the_monitor_lists_the_emulated_vpu_once_per_role_and_codec() {
    init();
    let devices = monitor("Video/Codec", None);
    let emu: Vec<&gst::Device> = devices
        .iter()
        .filter(|d| prop(d, "device.api").as_deref() == Some("emulated"))
        .collect();
    let mut seen: Vec<(String, String)> = emu
        .iter()
        .map(|d| (d.device_class().to_string(), prop(d, "vpu.codec").unwrap()))
        .collect();
    seen.sort();
    assert!(
        seen.contains(&("Video/Codec/Decoder".into(), "FWHT".into()))
            && seen.contains(&("Video/Codec/Encoder".into(), "FWHT".into())),
        "{:?}",
        describe(&devices)
    );
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen, "one device per role and codec");

    for d in emu {
        assert_eq!(prop(d, "vpu.device").as_deref(), Some("emu"));
        let caps = d.caps().expect("device caps");
        assert!(
            caps.iter().any(|s| s.name() == "video/x-raw"),
            "raw formats in {caps}"
        );
        // The element this device stands for, on this device.
        let name = format!("from-device-{}", prop(d, "vpu.role").unwrap());
        let element = d.create_element(Some(&name)).expect("create_element");
        let factory = element.factory().unwrap();
        assert_eq!(
            Some(factory.name().to_string()),
            prop(d, "vpu.element"),
            "{}",
            d.display_name()
        );
        assert_eq!(element.name(), name);
        assert_eq!(element.property::<String>("device"), "emu");
        // And it reconfigures an element of its kind, not another.
        let other = gst::ElementFactory::make(&factory.name())
            .property("device", "/dev/video9")
            .build()
            .unwrap();
        d.reconfigure_element(&other).expect("same factory");
        assert_eq!(other.property::<String>("device"), "emu");
        let queue = gst::ElementFactory::make("queue").build().unwrap();
        assert!(d.reconfigure_element(&queue).is_err());
    }
}

#[test]
fn the_monitor_filters_on_class_and_caps() {
    init();
    let fwht = gst::Caps::new_empty_simple("video/x-fwht");
    let decoders = monitor("Codec/Decoder", Some(&fwht));
    assert!(!decoders.is_empty());
    for d in &decoders {
        assert_eq!(
            d.device_class(),
            "Video/Codec/Decoder",
            "{}",
            d.display_name()
        );
    }
    let h265 = gst::Caps::new_empty_simple("video/x-h265");
    let none = monitor("Video/Codec", Some(&h265));
    assert!(
        none.iter()
            .all(|d| prop(d, "device.api").as_deref() == Some("v4l2")),
        "the emulated VPU has no H.265: {:?}",
        describe(&none)
    );
}

#[test]
fn the_monitor_lists_vicodec_stateful_nodes_not_its_stateless_one() {
    if !kernel_drivers() {
        eprintln!(
            "\n*** SKIPPED the_monitor_lists_vicodec_stateful_nodes_not_its_stateless_one: \
             needs vicodec; run it in the VM with GST_VPU_KERNEL_TESTS=1 (scripts/vm-test.sh) ***\n"
        );
        return;
    }
    init();
    let devices = monitor("Video/Codec", None);
    let kernel: Vec<(String, String, String)> = devices
        .iter()
        .filter(|d| prop(d, "device.api").as_deref() == Some("v4l2"))
        .map(|d| {
            (
                prop(d, "device.path").unwrap(),
                d.device_class().to_string(),
                prop(d, "v4l2.device.driver").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kernel,
        [
            (
                "/dev/video0".to_owned(),
                "Video/Codec/Encoder".to_owned(),
                "vicodec".to_owned()
            ),
            (
                "/dev/video1".to_owned(),
                "Video/Codec/Decoder".to_owned(),
                "vicodec".to_owned()
            ),
        ],
        "{:?}",
        describe(&devices)
    );
    let dec = devices
        .iter()
        .find(|d| prop(d, "device.path").as_deref() == Some("/dev/video1"))
        .unwrap();
    let caps = dec.caps().unwrap();
    let coded = caps.structure(0).unwrap();
    assert_eq!(coded.name(), "video/x-fwht");
    let w = coded.get::<gst::IntRange<i32>>("width").unwrap();
    assert_eq!((w.min(), w.max()), (640, 4096), "vicodec's frame sizes");
    let element = dec.create_element(None).unwrap();
    assert_eq!(element.factory().unwrap().name(), "vpufwhtdec");
    assert_eq!(element.property::<String>("device"), "/dev/video1");
}

/// The cdylib cargo built beside this test binary (target/<profile>/).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_owned()
}

#[test]
fn gst_device_monitor_shows_the_vpus() {
    let dir = profile_dir();
    assert!(
        dir.join("libgstrsvpu.so").exists(),
        "{}/libgstrsvpu.so does not exist: run `cargo build` (same profile) before the tests",
        dir.display()
    );
    // A registry of its own, unless one is given (the VM passes its cached
    // one: a cold scan of every plugin costs ~10 s there).
    let registry = std::env::var_os("GST_REGISTRY_1_0").map_or_else(
        || std::env::temp_dir().join(format!("vpu-devmon-{}.bin", std::process::id())),
        PathBuf::from,
    );
    let own_registry = std::env::var_os("GST_REGISTRY_1_0").is_none();
    let mut child = Command::new("gst-device-monitor-1.0")
        .arg("Video/Codec")
        .env("GST_PLUGIN_PATH", &dir)
        .env("GST_REGISTRY_1_0", &registry)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-device-monitor-1.0 (gstreamer1.0-plugins-base-apps; scripts/setup.sh)");
    // It must list and exit, not hang in the provider's start or stop.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            if own_registry {
                let _ = std::fs::remove_file(&registry);
            }
            panic!("gst-device-monitor-1.0 did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_file(&registry);
    assert!(status.success(), "{status}: {err}");
    for line in [
        "name  : rsvpu emulated VPU FWHT decoder",
        "name  : rsvpu emulated VPU FWHT encoder",
        "class : Video/Codec/Decoder",
        "class : Video/Codec/Encoder",
        "vpu.element = vpufwhtdec",
    ] {
        assert!(out.contains(line), "{line:?} not in:\n{out}");
    }
    if kernel_drivers() {
        for line in [
            "name  : vicodec FWHT encoder (/dev/video0)",
            "name  : vicodec FWHT decoder (/dev/video1)",
        ] {
            assert!(out.contains(line), "{line:?} not in:\n{out}");
        }
        assert!(
            !out.contains("/dev/video2"),
            "stateless node listed:\n{out}"
        );
    }
}
