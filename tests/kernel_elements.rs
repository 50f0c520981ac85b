//! `vpufwhtenc` / `vpufwhtdec` on the kernel backend (vicodec in the VM):
//! the same elements, `device=/dev/video0|1`, against the emulated VPU.
//!
//! ```sh
//! cargo test --test kernel_elements --no-run
//! VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh target/debug/deps/kernel_elements-<hash>
//! ```
//!
//! Where the nodes are missing (the host) each test prints a loud
//! `*** SKIPPED ***` line and returns.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use gst::prelude::*;

const ENC: &str = "/dev/video0";
const DEC: &str = "/dev/video1";
const RAW: &str = "video/x-raw,format=I420,width=640,height=480,framerate=30/1";

fn init() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        gst::init().expect("GStreamer initialises");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    });
}

/// True if the vicodec nodes exist; else prints the loud skip line.
fn nodes(test: &str) -> bool {
    for p in [ENC, DEC] {
        if !Path::new(p).exists() {
            eprintln!(
                "*** SKIPPED {test}: {p} does not exist (run the kernel_* tests in the VM, \
                 see README \"Kernel backend\") ***"
            );
            return false;
        }
    }
    init();
    true
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    data: Vec<u8>,
    pts: Option<gst::ClockTime>,
    delta: bool,
}

struct Out {
    frames: Vec<Frame>,
    /// What memory each frame arrived in: "dmabuf", "fd" or "plain".
    memory: Vec<&'static str>,
    caps: Option<gst::Caps>,
    /// The `stats` of the element named `vpu`, if any.
    stats: Option<gst::Structure>,
}

/// Runs `desc` (ending in `fakesink name=sink`) to EOS within `seconds`,
/// copying out what the sink gets (so no buffer is held).
fn run(desc: &str, seconds: u64) -> Out {
    let pipeline = gst::parse::launch(desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    sink.set_property("sync", false);
    sink.set_property("signal-handoffs", true);
    let got: Arc<Mutex<(Vec<Frame>, Option<gst::Caps>)>> = Arc::default();
    let got2 = Arc::clone(&got);
    let memory: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let memory2 = Arc::clone(&memory);
    sink.connect("handoff", false, move |args| {
        let buffer = args[1].get::<gst::Buffer>().unwrap();
        let pad = args[2].get::<gst::Pad>().unwrap();
        let mem = buffer.peek_memory(0);
        memory2
            .lock()
            .unwrap()
            .push(if mem.is_memory_type::<gst_allocators::DmaBufMemory>() {
                "dmabuf"
            } else if mem.is_memory_type::<gst_allocators::FdMemory>() {
                "fd"
            } else {
                "plain"
            });
        let map = buffer.map_readable().unwrap();
        let mut g = got2.lock().unwrap();
        g.1 = pad.current_caps();
        g.0.push(Frame {
            data: map.as_slice().to_vec(),
            pts: buffer.pts(),
            delta: buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
        });
        None
    });
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(seconds),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| {
            let _ = pipeline.set_state(gst::State::Null);
            panic!("{desc}: no EOS within {seconds} s (stalled)")
        });
    if let gst::MessageView::Error(e) = msg.view() {
        let _ = pipeline.set_state(gst::State::Null);
        panic!("{desc}: {} ({:?})", e.error(), e.debug());
    }
    let stats = pipeline
        .by_name("vpu")
        .map(|e| e.property::<gst::Structure>("stats"));
    pipeline.set_state(gst::State::Null).unwrap();
    let (frames, caps) = std::mem::take(&mut *got.lock().unwrap());
    let memory = std::mem::take(&mut *memory.lock().unwrap());
    Out {
        frames,
        memory,
        caps,
        stats,
    }
}

fn stat(s: &gst::Structure, name: &str) -> u64 {
    s.get::<u64>(name)
        .unwrap_or_else(|e| panic!("{name}: {e} in {s}"))
}

fn encode(device: &str, n: u32) -> Out {
    run(
        &format!(
            "videotestsrc num-buffers={n} pattern=ball ! {RAW} \
             ! vpufwhtenc name=vpu device={device} gop-size=10 ! fakesink name=sink"
        ),
        120,
    )
}

fn decode(device: &str, file: &Path) -> Out {
    run(
        &format!(
            "filesrc location={} ! vpufwhtdec name=vpu device={device} \
             ! video/x-raw,format=I420 ! fakesink name=sink",
            file.display()
        ),
        120,
    )
}

fn write_stream(name: &str, frames: &[Frame]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}.fwht", std::process::id()));
    let stream: Vec<u8> = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
    std::fs::write(&path, stream).unwrap();
    path
}

#[test]
fn round_trip_of_60_frames_is_bit_identical_to_the_emulated_vpu() {
    let test = "round_trip_of_60_frames_is_bit_identical_to_the_emulated_vpu";
    if !nodes(test) {
        return;
    }
    let kernel = encode(ENC, 60);
    let emu = encode("emu", 60);
    assert_eq!(
        kernel.frames.len(),
        60,
        "the kernel encoder codes every frame"
    );
    assert_eq!(emu.frames.len(), 60);
    for (i, (k, e)) in kernel.frames.iter().zip(&emu.frames).enumerate() {
        assert_eq!(
            k.data, e.data,
            "coded frame {i}: vicodec and the emulated VPU agree"
        );
        assert_eq!(
            (k.pts, k.delta),
            (e.pts, e.delta),
            "frame {i}: timestamp and key flag"
        );
    }
    assert!(!kernel.frames[0].delta && !kernel.frames[10].delta && kernel.frames[1].delta);
    let caps = kernel.caps.unwrap();
    assert_eq!(caps.structure(0).unwrap().name(), "video/x-fwht", "{caps}");
    let stats = kernel.stats.unwrap();
    eprintln!("kernel encoder stats: {stats}");
    assert_eq!(stat(&stats, "frames-out"), 60, "{stats}");
    // videotestsrc wrote into the encoder's pool (dma-heap memory in the
    // VM), and the node imported each frame (V4L2_MEMORY_DMABUF): no copy.
    assert_eq!(stat(&stats, "frame-copies"), 0, "{stats}");
    assert_eq!(stat(&stats, "imported-frames"), 60, "{stats}");

    let file = write_stream("kernel-elements", &kernel.frames);
    let dk = decode(DEC, &file);
    let de = decode("emu", &file);
    std::fs::remove_file(&file).ok();
    assert_eq!(
        dk.frames.len(),
        60,
        "the kernel decoder gives every frame, EOS included"
    );
    assert_eq!(de.frames.len(), 60);
    for (i, (k, e)) in dk.frames.iter().zip(&de.frames).enumerate() {
        assert_eq!(k.data.len(), 640 * 480 * 3 / 2, "frame {i}");
        assert!(
            k.data == e.data,
            "decoded frame {i}: vicodec and the emulated VPU agree"
        );
    }
    let stats = dk.stats.unwrap();
    eprintln!("kernel decoder stats: {stats}");
    assert_eq!(stat(&stats, "frames-out"), 60, "{stats}");
    assert_eq!(stat(&stats, "frame-copies"), 0, "{stats}");

    // Frames decoded by the emulated VPU (dma-heap memory) go into the
    // kernel encoder as dma-bufs, without a copy, and code to the same stream.
    let file = write_stream("kernel-elements-import", &kernel.frames);
    let reencoded = run(
        &format!(
            "filesrc location={} ! vpufwhtdec device=emu ! video/x-raw,format=I420 \
             ! vpufwhtenc name=vpu device={ENC} gop-size=10 ! fakesink name=sink",
            file.display()
        ),
        120,
    );
    std::fs::remove_file(&file).ok();
    let stats = reencoded.stats.unwrap();
    eprintln!("emu decoder -> kernel encoder stats: {stats}");
    assert_eq!(reencoded.frames.len(), 60);
    assert_eq!(stat(&stats, "frame-copies"), 0, "{stats}");
    assert_eq!(stat(&stats, "imported-frames"), 60, "{stats}");

    // The whole chain on the kernel nodes, in one pipeline.
    let chain = run(
        &format!(
            "videotestsrc num-buffers=60 pattern=ball ! {RAW} \
             ! vpufwhtenc device={ENC} gop-size=10 ! vpufwhtdec name=vpu device={DEC} \
             ! video/x-raw,format=I420 ! fakesink name=sink"
        ),
        180,
    );
    assert_eq!(chain.frames.len(), 60, "60 in, 60 out through both nodes");
    for (i, (c, k)) in chain.frames.iter().zip(&dk.frames).enumerate() {
        assert!(
            c.data == k.data,
            "chained frame {i} equals the file-decoded one"
        );
    }
}

#[test]
fn srgb_and_rgb_streams_do_not_stall_the_decoder() {
    let test = "srgb_and_rgb_streams_do_not_stall_the_decoder";
    if !nodes(test) {
        return;
    }
    for caps in [
        "video/x-raw,format=I420,width=640,height=480,framerate=30/1,colorimetry=sRGB",
        "video/x-raw,format=RGB,width=640,height=480,framerate=30/1",
    ] {
        let out = run(
            &format!(
                "videotestsrc num-buffers=10 ! {caps} ! vpufwhtenc device={ENC} \
                 ! vpufwhtdec name=vpu device={DEC} ! fakesink name=sink"
            ),
            60,
        );
        assert_eq!(out.frames.len(), 10, "{caps}: every frame out");
        eprintln!("{caps} -> {}", out.caps.unwrap());
    }
    // What GStreamer's own v4l2fwhtenc writes (sRGB for RGB input), where
    // the guest's GStreamer has registered it for vicodec.
    if gst::ElementFactory::find("v4l2fwhtenc").is_some() {
        let out = run(
            "videotestsrc num-buffers=10 ! video/x-raw,format=RGB,width=640,height=480 \
             ! v4l2fwhtenc ! vpufwhtdec name=vpu device=/dev/video1 ! fakesink name=sink",
            60,
        );
        assert_eq!(out.frames.len(), 10, "a v4l2fwhtenc stream decodes fully");
    } else {
        eprintln!("{test}: no v4l2fwhtenc element here; its stream was not tried");
    }
}

#[test]
fn extra_controls_reach_the_kernel_node_by_name() {
    let test = "extra_controls_reach_the_kernel_node_by_name";
    if !nodes(test) {
        return;
    }
    // "video-gop-size" is not the element's own spelling: the node finds
    // it by its normalised v4l2-ctl name (video_gop_size) and every frame
    // becomes a key frame; an unknown name is a warning naming the node's.
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=6 pattern=ball ! {RAW} ! vpufwhtenc name=vpu device={ENC} \
         extra-controls=\"controls,video-gop-size=1,no_such_control=3\" ! fakesink name=sink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let keys = Arc::new(Mutex::new(Vec::new()));
    {
        let keys = Arc::clone(&keys);
        let sink = pipeline.by_name("sink").unwrap();
        sink.static_pad("sink")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(b) = info.buffer() {
                    let key = !b.flags().contains(gst::BufferFlags::DELTA_UNIT);
                    keys.lock().unwrap().push(key);
                }
                gst::PadProbeReturn::Ok
            });
    }
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let mut warnings = Vec::new();
    loop {
        let msg = bus
            .timed_pop_filtered(
                gst::ClockTime::from_seconds(60),
                &[
                    gst::MessageType::Eos,
                    gst::MessageType::Error,
                    gst::MessageType::Warning,
                ],
            )
            .expect("EOS within 60 s");
        match msg.view() {
            gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => panic!("{}", e.error()),
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(
        *keys.lock().unwrap(),
        vec![true; 6],
        "GOP 1 from extra-controls"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("no_such_control") && w.contains("video_gop_size")),
        "{warnings:?}"
    );
}

/// Encodes 60 frames on the kernel node with `output-io-mode=mode`.
fn encode_io(mode: &str) -> Out {
    run(
        &format!(
            "videotestsrc num-buffers=60 pattern=ball ! {RAW} \
             ! vpufwhtenc name=vpu device={ENC} gop-size=10 output-io-mode={mode} \
             ! fakesink name=sink"
        ),
        120,
    )
}

fn io_stats(mode: &str, out: &Out) -> (u64, u64, String) {
    let stats = out.stats.as_ref().unwrap();
    eprintln!("output-io-mode={mode}: {stats}");
    (
        stat(stats, "frame-copies"),
        stat(stats, "imported-frames"),
        stats.get::<String>("output-io").unwrap(),
    )
}

/// `output-io-mode` on vicodec: 60 frames out in every mode, the same
/// bitstream; `mmap` (V4L2_MEMORY_MMAP) copies every frame into the
/// driver's buffers, `dmabuf-import` and `auto` (the guest has dma-heap)
/// import videotestsrc's frames from the proposed pool.
#[test]
fn output_io_modes_give_the_same_stream_on_the_kernel_encoder() {
    let test = "output_io_modes_give_the_same_stream_on_the_kernel_encoder";
    if !nodes(test) {
        return;
    }
    if std::env::var_os("GST_VPU_DMA_BACKEND").is_some() {
        eprintln!("{test}: GST_VPU_DMA_BACKEND is set; this test wants the probed backend");
        return;
    }
    let auto = encode_io("auto");
    let mmap = encode_io("mmap");
    let import = encode_io("dmabuf-import");
    for (mode, out) in [("auto", &auto), ("mmap", &mmap), ("dmabuf-import", &import)] {
        assert_eq!(out.frames.len(), 60, "{mode}: every frame out");
        for (i, (a, b)) in out.frames.iter().zip(&auto.frames).enumerate() {
            assert!(a == b, "{mode}: coded frame {i} equals auto's");
        }
    }
    assert_eq!(io_stats("auto", &auto), (0, 60, "dmabuf-import".into()));
    assert_eq!(io_stats("mmap", &mmap), (60, 0, "mmap".into()));
    assert_eq!(
        io_stats("dmabuf-import", &import),
        (0, 60, "dmabuf-import".into())
    );
    let bytes = stat(mmap.stats.as_ref().unwrap(), "bytes-copied");
    assert_eq!(
        bytes,
        60 * 640 * 480 * 3 / 2,
        "mmap copies every frame once"
    );
}

/// Without a dma-buf allocator (`GST_VPU_DMA_BACKEND=memfd`, as on a board
/// without /dev/dma_heap and /dev/udmabuf), `auto` falls back to MMAP by
/// itself and codes the same stream, and `dmabuf-import` is one clear error.
/// The backend is probed once per process, so the test runs itself again
/// in a child process with that variable.
#[test]
fn auto_takes_mmap_without_a_dma_buf_allocator() {
    let test = "auto_takes_mmap_without_a_dma_buf_allocator";
    if !nodes(test) {
        return;
    }
    if std::env::var("GST_VPU_DMA_BACKEND").as_deref() != Ok("memfd") {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env("GST_VPU_DMA_BACKEND", "memfd")
            .output()
            .expect("the test binary runs again");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("memfd child: checked"), "{text}");
        return;
    }
    let auto = encode_io("auto");
    let mmap = encode_io("mmap");
    assert_eq!(auto.frames.len(), 60);
    assert!(auto.frames == mmap.frames, "auto codes as mmap does");
    assert_eq!(io_stats("auto", &auto), (60, 0, "mmap".into()));

    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=5 pattern=ball ! {RAW} \
         ! vpufwhtenc device={ENC} output-io-mode=dmabuf-import ! fakesink"
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("an error within 60 s");
    pipeline.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("dmabuf-import of memfd frames on a kernel node gave EOS");
    };
    let text = e.error().to_string();
    assert!(
        text.contains("dmabuf-import") && text.contains("memfd"),
        "{text}"
    );
    eprintln!("memfd child: checked ({text})");
}

/// `capture-io-mode` on vicodec's decoder: the same 30 frames in every mode,
/// none copied; `auto` and `dmabuf` push the exported CAPTURE buffers as
/// GstDmaBufMemory, `mmap` the same driver memory as plain mapped memory.
#[test]
fn capture_io_modes_push_the_same_frames_without_a_copy() {
    let test = "capture_io_modes_push_the_same_frames_without_a_copy";
    if !nodes(test) {
        return;
    }
    let coded = encode(ENC, 30);
    assert_eq!(coded.frames.len(), 30);
    let file = write_stream("kernel-capture-io", &coded.frames);
    let decode_io = |mode: &str| {
        run(
            &format!(
                "filesrc location={} ! vpufwhtdec name=vpu device={DEC} capture-io-mode={mode} \
                 ! video/x-raw,format=I420 ! fakesink name=sink",
                file.display()
            ),
            120,
        )
    };
    let auto = decode_io("auto");
    let mmap = decode_io("mmap");
    let dmabuf = decode_io("dmabuf");
    std::fs::remove_file(&file).ok();
    for (mode, out, memory) in [
        ("auto", &auto, "dmabuf"),
        ("mmap", &mmap, "plain"),
        ("dmabuf", &dmabuf, "dmabuf"),
    ] {
        let stats = out.stats.as_ref().unwrap();
        eprintln!(
            "capture-io-mode={mode}: memory {:?}, {stats}",
            out.memory.first()
        );
        assert_eq!(out.frames.len(), 30, "{mode}: every frame out");
        assert_eq!(stat(stats, "frames-out"), 30, "{mode}: {stats}");
        assert_eq!(stat(stats, "frame-copies"), 0, "{mode}: {stats}");
        assert_eq!(out.memory, vec![memory; 30], "{mode}: memory type");
        for (i, (a, b)) in out.frames.iter().zip(&auto.frames).enumerate() {
            assert_eq!(a.data.len(), 640 * 480 * 3 / 2, "{mode}: frame {i}");
            assert!(a == b, "{mode}: decoded frame {i} equals auto's");
        }
    }
}
