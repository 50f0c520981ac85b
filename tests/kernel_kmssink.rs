//! Zero copy from the emulated VPU to a display and between VPU elements,
//! with real dma-bufs (dma-heap / udmabuf) and a real KMS driver (vkms):
//!
//! * `vpufwhtdec device=emu ! kmssink driver-name=vkms`: every frame kmssink
//!   shows is PRIME-imported from the decoder's own dma-buf, none is copied
//!   into a dumb buffer (counted from kmssink's debug log: `Found a dmabuf`
//!   per frame, new imports `found these prime ids`, cache hits `found KMS
//!   mem`, and its `performance` category's `frame copy`), and the decoder's
//!   `frame-copies` is 0; each CAPTURE buffer is one persistent GstMemory, so
//!   kmssink imports it at most once and hits its cache afterwards;
//! * `vpufwhtdec device=emu ! vpufwhtenc device=emu`: the encoder queues the
//!   decoder's dma-buf frames as they are (`imported-frames` = every frame,
//!   `frame-copies` 0). This one also runs on the host, with fd memory;
//! * `v4l2fwhtdec capture-io-mode=dmabuf ! vpufwhtenc device=emu`: the
//!   encoder imports a foreign producer's dma-bufs (vicodec's exported
//!   CAPTURE buffers) instead of copying them, and codes the same stream.
//!
//! Needs the VM of `../shared/vm` (vkms, /dev/dma_heap, /dev/udmabuf), with
//! `GST_VPU_KERNEL_TESTS=1` as `scripts/vm-test.sh` runs it; without the
//! switch each test says loudly that it checked nothing.

use std::sync::{Arc, Mutex, Once};

use gst::prelude::*;
use gstrsvpu::sys::DmaBackend;

mod pipeline_support;
use pipeline_support::{collect, launch, play_to_eos, stats};

fn kernel_drivers(test: &str) -> bool {
    if std::env::var("GST_VPU_KERNEL_TESTS").is_ok_and(|v| v == "1") {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: needs vkms and real dma-bufs; run it in the VM with \
         GST_VPU_KERNEL_TESTS=1 (scripts/vm-test.sh) ***\n"
    );
    false
}

/// What kmssink's debug log said, counted.
#[derive(Debug, Default, Clone)]
struct KmsLog {
    /// `gst_kms_sink_import_dmabuf` looked at a frame's dma-buf.
    dmabuf_frames: usize,
    /// A dma-buf PRIME-imported for the first time (new framebuffer).
    prime_imports: usize,
    /// A dma-buf imported before (cached framebuffer).
    cached_imports: usize,
    /// A frame copied into one of kmssink's dumb buffers.
    frame_copies: usize,
    /// `drain`: the last frame copied at a DRAIN/ALLOCATION query.
    drains: usize,
    /// Frames shown (`displaying fb`).
    shown: usize,
}

/// `gst::init`, the plugin, and a log function that counts kmssink's
/// messages into the returned `KmsLog` (reset by each test).
fn init() -> Arc<Mutex<KmsLog>> {
    static INIT: Once = Once::new();
    static LOG: Mutex<Option<Arc<Mutex<KmsLog>>>> = Mutex::new(None);
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
        let counts = Arc::new(Mutex::new(KmsLog::default()));
        *LOG.lock().unwrap() = Some(Arc::clone(&counts));
        gst::log::remove_default_log_function();
        gst::log::set_threshold_from_string("kmssink:7,performance:5", true);
        gst::log::add_log_function(
            move |category, _level, _file, _function, _line, _obj, msg| {
                let name = category.name();
                if name != "kmssink" && name != "performance" {
                    return;
                }
                let Some(text) = msg.get() else { return };
                let text = text.as_str();
                let mut c = counts.lock().unwrap();
                if name == "performance" {
                    if text.contains("frame copy") {
                        c.frame_copies += 1;
                    }
                    return;
                }
                if text.starts_with("Found a dmabuf") {
                    c.dmabuf_frames += 1;
                } else if text.starts_with("found these prime ids") {
                    c.prime_imports += 1;
                } else if text.starts_with("found KMS mem") {
                    c.cached_imports += 1;
                } else if text.starts_with("draining") {
                    c.drains += 1;
                } else if text.starts_with("displaying fb") {
                    c.shown += 1;
                }
            },
        );
    });
    LOG.lock().unwrap().clone().unwrap()
}

/// Runs `desc` to EOS; the `stats` of the elements named in `stats_of`.
fn run(desc: &str, stats_of: &[&str]) -> Vec<gst::Structure> {
    let pipeline = launch(desc);
    play_to_eos(&pipeline, desc, 120);
    let stats = stats_of.iter().map(|n| stats(&pipeline, n)).collect();
    pipeline.set_state(gst::State::Null).unwrap();
    stats
}

/// One pipeline at a time: under TCG two at once on the one emulated VPU
/// core come near its watchdog bound.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn dma_bufs_here() {
    assert_ne!(
        DmaBackend::probe(),
        DmaBackend::Memfd,
        "the emulated VPU must allocate real dma-bufs here (dma-heap or udmabuf)"
    );
}

#[test]
fn emulated_decoder_frames_reach_kmssink_by_prime_import_without_copies() {
    if !kernel_drivers("emulated_decoder_frames_reach_kmssink_by_prime_import_without_copies") {
        return;
    }
    let log = init();
    let _one = serial();
    dma_bufs_here();
    const FRAMES: u64 = 20;
    // 640x480: GStreamer's default layout; 650x370: padded planes, so only
    // the GstVideoMeta tells kmssink the layout.
    for (w, h) in [(640, 480), (650, 370)] {
        *log.lock().unwrap() = KmsLog::default();
        let stats = run(
            &format!(
                "videotestsrc num-buffers={FRAMES} ! video/x-raw,format=BGRx,width={w},height={h} \
                 ! vpufwhtenc ! vpufwhtdec name=dec device=emu \
                 ! kmssink driver-name=vkms sync=false"
            ),
            &["dec"],
        );
        let kms = log.lock().unwrap().clone();
        let dec = &stats[0];
        eprintln!("{w}x{h}: {kms:?}; decoder {dec}");
        assert_eq!(dec.get::<u64>("frames-out").unwrap(), FRAMES, "{dec}");
        assert_eq!(dec.get::<u64>("frame-copies").unwrap(), 0, "{dec}");
        assert_eq!(
            kms.frame_copies, 0,
            "{w}x{h}: kmssink copied frames: {kms:?}"
        );
        assert_eq!(kms.drains, 0, "{kms:?}");
        // Every frame shown (the first twice: preroll, then play) came in
        // as a dma-buf, imported anew or from kmssink's cache.
        assert!(kms.shown as u64 >= FRAMES, "{kms:?}");
        assert_eq!(kms.dmabuf_frames, kms.shown, "{kms:?}");
        assert_eq!(
            kms.prime_imports + kms.cached_imports,
            kms.dmabuf_frames,
            "{kms:?}"
        );
        assert!(kms.prime_imports >= 1, "{kms:?}");
        // Each CAPTURE slot is one persistent GstMemory: kmssink imports it
        // once and finds its framebuffer cached on the memory afterwards.
        let capture_buffers = dec.get::<u64>("capture-buffers").unwrap();
        assert!(
            kms.prime_imports as u64 <= capture_buffers,
            "{w}x{h}: at most one import per CAPTURE buffer ({capture_buffers}): {kms:?}"
        );
        assert!(
            kms.cached_imports > 0,
            "{w}x{h}: kmssink reused an import: {kms:?}"
        );
    }
}

/// 650x370 also checks that the decoder negotiates with the encoder's pool
/// of VPU memory for a padded layout (it used to fail "Failed to configure
/// the buffer pool").
#[test]
fn the_encoder_queues_the_emulated_decoders_dma_bufs_without_copies() {
    // Also on the host, where the VPU's memory is memfds (fd memory): the
    // same import path, without dma-bufs.
    init();
    let _one = serial();
    let kernel = std::env::var("GST_VPU_KERNEL_TESTS").is_ok_and(|v| v == "1");
    if kernel {
        dma_bufs_here();
    }
    let dma_bufs = DmaBackend::probe() != DmaBackend::Memfd;
    const FRAMES: u64 = 20;
    for (w, h) in [(640, 480), (650, 370)] {
        let desc = format!(
            "videotestsrc num-buffers={FRAMES} ! video/x-raw,format=I420,width={w},height={h} \
             ! vpufwhtenc ! vpufwhtdec name=dec device=emu \
             ! identity name=tap ! vpufwhtenc name=enc device=emu ! fakesink"
        );
        let pipeline = launch(&desc);
        // What the second encoder receives: GstDmaBufMemory, one per frame.
        let dmabuf_frames = Arc::new(Mutex::new(0u64));
        let counter = Arc::clone(&dmabuf_frames);
        pipeline
            .by_name("tap")
            .unwrap()
            .static_pad("src")
            .unwrap()
            .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buf) = info.buffer()
                    && buf.n_memory() == 1
                    && buf
                        .peek_memory(0)
                        .downcast_memory_ref::<gst_allocators::DmaBufMemory>()
                        .is_some()
                {
                    *counter.lock().unwrap() += 1;
                }
                gst::PadProbeReturn::Ok
            });
        play_to_eos(&pipeline, &desc, 120);
        let enc = stats(&pipeline, "enc");
        let dec = stats(&pipeline, "dec");
        pipeline.set_state(gst::State::Null).unwrap();
        eprintln!("{w}x{h}: decoder {dec}; encoder {enc}");
        let expected_dmabufs = if dma_bufs { FRAMES } else { 0 };
        assert_eq!(
            *dmabuf_frames.lock().unwrap(),
            expected_dmabufs,
            "dma-buf frames (dma-bufs here: {dma_bufs})"
        );
        assert_eq!(dec.get::<u64>("frame-copies").unwrap(), 0, "{dec}");
        assert_eq!(enc.get::<u64>("frames-out").unwrap(), FRAMES, "{enc}");
        assert_eq!(enc.get::<u64>("imported-frames").unwrap(), FRAMES, "{enc}");
        assert_eq!(enc.get::<u64>("frame-copies").unwrap(), 0, "{enc}");
    }
}

/// A foreign dma-buf producer: GStreamer's own `v4l2fwhtdec` exporting
/// vicodec's CAPTURE buffers (`capture-io-mode=dmabuf`, GstDmaBufMemory from
/// GStreamer's allocator, not ours). `vpufwhtenc device=emu` imports each
/// frame (the emulated VPU maps the dma-buf) instead of copying it, and codes
/// exactly what it codes from system-memory copies of the same frames.
///
/// The reference is made from the frames this encoder received (read at its
/// sink pad), not from a second run of the producer: `v4l2fwhtdec` loses one
/// or two frames per run, and not always the same ones, so two runs do not
/// hand over the same sequence.
#[test]
fn the_encoder_imports_a_kernel_decoders_exported_dma_bufs_without_copies() {
    if !kernel_drivers("the_encoder_imports_a_kernel_decoders_exported_dma_bufs_without_copies") {
        return;
    }
    init();
    let _one = serial();
    // bt709: v4l2fwhtdec stalls on sRGB colorimetry (../shared/vm/README.md).
    let desc = "videotestsrc num-buffers=20 pattern=ball \
         ! video/x-raw,format=I420,width=640,height=480,colorimetry=bt709 \
         ! v4l2fwhtenc ! v4l2fwhtdec capture-io-mode=dmabuf ! video/x-raw,format=I420 \
         ! vpufwhtenc name=enc device=emu ! fakesink name=out";
    let pipeline = launch(desc);
    let enc = pipeline.by_name("enc").unwrap();
    // What reached the encoder: each frame's bytes and whether it came as a
    // dma-buf, read before the encoder takes it.
    let received = Arc::new(Mutex::new(Vec::<(Vec<u8>, bool)>::new()));
    // The producer's memories (by address: its pool keeps them).
    let memories = Arc::new(Mutex::new(std::collections::HashSet::<usize>::new()));
    let caps = Arc::new(Mutex::new(None::<gst::Caps>));
    {
        let received = Arc::clone(&received);
        let memories = Arc::clone(&memories);
        let caps = Arc::clone(&caps);
        enc.static_pad("sink").unwrap().add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::EVENT_DOWNSTREAM,
            move |_pad, info| {
                match &info.data {
                    Some(gst::PadProbeData::Buffer(buffer)) => {
                        let dmabuf = buffer.n_memory() == 1
                            && buffer
                                .peek_memory(0)
                                .is_memory_type::<gst_allocators::DmaBufMemory>();
                        if dmabuf {
                            memories
                                .lock()
                                .unwrap()
                                .insert(buffer.peek_memory(0).as_ptr() as usize);
                        }
                        let map = buffer.map_readable().unwrap();
                        received.lock().unwrap().push((map.to_vec(), dmabuf));
                    }
                    Some(gst::PadProbeData::Event(event)) => {
                        if let gst::EventView::Caps(c) = event.view() {
                            *caps.lock().unwrap() = Some(c.caps_owned());
                        }
                    }
                    _ => {}
                }
                gst::PadProbeReturn::Ok
            },
        );
    }
    let coded = collect(&pipeline.by_name("out").unwrap());
    play_to_eos(&pipeline, desc, 120);
    let stats = stats(&pipeline, "enc");
    pipeline.set_state(gst::State::Null).unwrap();
    eprintln!("imported: {stats}");
    let received = received.lock().unwrap().clone();
    let frames = received.len() as u64;
    // v4l2fwhtdec may lose a frame or two (../shared/vm/README.md).
    assert!(frames >= 15, "{frames} frames reached the encoder");
    assert!(
        received.iter().all(|(_, dmabuf)| *dmabuf),
        "every frame reaches the encoder as a dma-buf"
    );
    assert_eq!(stats.get::<u64>("frames-in").unwrap(), frames, "{stats}");
    assert_eq!(
        stats.get::<u64>("imported-frames").unwrap(),
        frames,
        "{stats}"
    );
    assert_eq!(stats.get::<u64>("frame-copies").unwrap(), 0, "{stats}");
    // Each of the producer's buffers is mapped into the VPU once (the
    // mapping is kept with its memory), not once per frame.
    let memories = memories.lock().unwrap().len() as u64;
    assert!(memories < frames, "{memories} memories for {frames} frames");
    assert_eq!(
        stats.get::<u64>("import-maps").unwrap(),
        memories,
        "one VPU mapping per producer buffer: {stats}"
    );
    assert_eq!(
        stats.get::<u64>("coherency-violations").unwrap(),
        0,
        "{stats}"
    );
    let imported: Vec<Vec<u8>> = coded
        .lock()
        .unwrap()
        .0
        .iter()
        .map(|b| b.map_readable().unwrap().to_vec())
        .collect();
    assert_eq!(
        imported.len() as u64,
        frames,
        "one coded frame per frame in"
    );

    // The same frames from system memory: the encoder copies them.
    let mut h = gst_check::Harness::new("vpufwhtenc");
    h.element().unwrap().set_property_from_str("device", "emu");
    h.set_src_caps(
        caps.lock()
            .unwrap()
            .clone()
            .expect("caps reached the encoder"),
    );
    for (i, (bytes, _)) in received.iter().enumerate() {
        let mut buffer = gst::Buffer::from_mut_slice(bytes.clone());
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(40 * i as u64));
        assert_eq!(h.push(buffer), Ok(gst::FlowSuccess::Ok));
    }
    assert!(h.push_event(gst::event::Eos::new()));
    let mut reference = Vec::new();
    while let Some(buffer) = h.try_pull() {
        reference.push(buffer.map_readable().unwrap().to_vec());
    }
    let copied = h.element().unwrap().property::<gst::Structure>("stats");
    eprintln!("copied: {copied}");
    assert_eq!(
        copied.get::<u64>("frame-copies").unwrap(),
        frames,
        "{copied}"
    );
    assert_eq!(reference.len(), imported.len(), "{copied}");
    for (i, (a, b)) in imported.iter().zip(&reference).enumerate() {
        assert!(
            a == b,
            "frame {i}: the imported frame codes differently from its copy"
        );
    }
}
