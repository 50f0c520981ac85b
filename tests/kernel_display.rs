//! Zero copy from the kernel decoder to a display: `vpufwhtdec
//! device=/dev/video1 ! kmssink driver-name=vkms` in the VM, every frame
//! PRIME-imported by kmssink (its own debug log says so; the preroll frame
//! is not shown twice, `show-preroll-frame=false`), no copy in the
//! decoder (its stats say so), and at most one new framebuffer per CAPTURE
//! buffer (each is one persistent GstMemory, on which kmssink caches it).
//!
//! ```sh
//! cargo test --test kernel_display --no-run
//! VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh target/debug/deps/kernel_display-<hash>
//! ```
//!
//! vkms scans out BGRA/BGRx/RGB16 only, so the clip is BGRx: vicodec codes
//! it as a 4-component RGB stream and decodes it straight to XR24 (BGRx).
//! Where the nodes or kmssink are missing each test prints a loud
//! `*** SKIPPED ***` line and returns.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gst::prelude::*;

mod pipeline_support;
use pipeline_support::{launch, play_to_eos, stats};

const N: u64 = 30;

#[test]
fn every_decoded_frame_is_prime_imported_by_kmssink() {
    let test = "every_decoded_frame_is_prime_imported_by_kmssink";
    for p in ["/dev/video0", "/dev/video1", "/dev/dri/card0"] {
        if !Path::new(p).exists() {
            eprintln!(
                "*** SKIPPED {test}: {p} does not exist (run the kernel_* tests in the VM, \
                 see README \"Kernel backend\") ***"
            );
            return;
        }
    }
    gst::init().unwrap();
    gstrsvpu::plugin_register_static().unwrap();
    if gst::ElementFactory::find("kmssink").is_none() {
        eprintln!("*** SKIPPED {test}: no kmssink (gstreamer1.0-plugins-bad) ***");
        return;
    }

    // kmssink's log: one line per imported buffer, "found KMS mem .. in
    // DMABuf mem" (an fb made earlier for that dma-buf) or "setting KMS mem
    // .. to DMABuf mem" (a new PRIME import).
    let imports: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let imports = Arc::clone(&imports);
        gst::log::add_log_function(move |cat, _level, _file, _func, _line, _obj, msg| {
            if cat.name() == "kmssink"
                && let Some(text) = msg.get()
                && text.contains("DMABuf mem")
                && (text.starts_with("found KMS mem") || text.starts_with("setting KMS mem"))
            {
                imports.lock().unwrap().push(text.to_string());
            }
        });
    }
    gst::log::remove_default_log_function();
    gst::log::set_active(true);
    gst::log::set_threshold_for_name("kmssink", gst::DebugLevel::Log);

    let (rendered, dmabuf, imported, new_fbs, stats) = play(&imports);
    eprintln!(
        "kmssink got {rendered} frames, {dmabuf} as dma-buf memory, {imported} PRIME-imported \
         ({new_fbs} new framebuffers); decoder stats {stats}"
    );
    assert_eq!(rendered, N, "every frame reached the display");
    assert_eq!(dmabuf, N, "every frame is the driver's exported dma-buf");
    assert_eq!(imported, N, "kmssink imported every frame, copied none");
    // Each CAPTURE slot is one persistent GstMemory: one new framebuffer
    // per CAPTURE buffer at most, then kmssink's cache.
    let capture_buffers = stats.get::<u64>("capture-buffers").unwrap();
    assert!(
        new_fbs as u64 <= capture_buffers,
        "{new_fbs} new framebuffers for {capture_buffers} CAPTURE buffers"
    );
    assert!(
        (new_fbs as u64) < N,
        "kmssink reused a framebuffer: {new_fbs} new for {N} frames"
    );
    assert_eq!(stats.get::<u64>("frames-out").unwrap(), N, "{stats}");
    assert_eq!(stats.get::<u64>("frame-copies").unwrap(), 0, "{stats}");
    assert_eq!(
        stats.get::<u64>("coherency-violations").unwrap(),
        0,
        "{stats}"
    );
}

/// Plays the clip to vkms: frames kmssink got,
/// how many as dma-buf memory, how many it PRIME-imported, the decoder stats.
fn play(imports: &Mutex<Vec<String>>) -> (u64, u64, u64, usize, gst::Structure) {
    imports.lock().unwrap().clear();
    let desc = format!(
        "videotestsrc num-buffers={N} pattern=ball \
         ! video/x-raw,format=BGRx,width=640,height=480,framerate=30/1 \
         ! vpufwhtenc device=/dev/video0 \
         ! vpufwhtdec name=vpu device=/dev/video1 \
         ! kmssink name=sink driver-name=vkms sync=false show-preroll-frame=false"
    );
    let pipeline = launch(&desc);
    let rendered = Arc::new(AtomicU64::new(0));
    let dmabuf = Arc::new(AtomicU64::new(0));
    {
        let (rendered, dmabuf) = (Arc::clone(&rendered), Arc::clone(&dmabuf));
        let sink = pipeline.by_name("sink").unwrap();
        sink.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer() {
                    rendered.fetch_add(1, Ordering::Relaxed);
                    let all_dmabuf = b.n_memory() > 0
                        && b.iter_memories().all(|m| {
                            m.downcast_memory_ref::<gst_allocators::DmaBufMemory>()
                                .is_some()
                        });
                    if all_dmabuf {
                        dmabuf.fetch_add(1, Ordering::Relaxed);
                    }
                }
                gst::PadProbeReturn::Ok
            });
    }
    play_to_eos(&pipeline, &desc, 120);
    let stats = stats(&pipeline, "vpu");
    pipeline.set_state(gst::State::Null).unwrap();

    let rendered = rendered.load(Ordering::Relaxed);
    let dmabuf = dmabuf.load(Ordering::Relaxed);
    let lines = std::mem::take(&mut *imports.lock().unwrap());
    let new_fbs = lines.iter().filter(|l| l.starts_with("setting")).count();
    (rendered, dmabuf, lines.len() as u64, new_fbs, stats)
}
