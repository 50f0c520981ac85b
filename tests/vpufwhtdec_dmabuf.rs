//! `vpufwhtdec`'s caps feature and memory type: plain system-memory caps
//! with fd memory when the VPU's memory is a memfd (or when downstream does
//! not ask for dma-bufs), `memory:DMABuf` with GstDmaBufMemory when the
//! memory is a real dma-buf and downstream asks for it.
//!
//! The dma-buf test needs `/dev/dma_heap/system` or `/dev/udmabuf`
//! (`DmaBackend::probe()` not Memfd). Where neither exists it says so loudly
//! on stderr and checks nothing; run it where they exist, e.g. in the VM:
//!
//! ```text
//! cargo test --no-run --test vpufwhtdec_dmabuf
//! VMBED_RW=$PWD/target /work/shared/vm/run-in-vm.sh \
//!     target/debug/deps/vpufwhtdec_dmabuf-<hash> --test-threads=1
//! ```

use gst::prelude::*;
use gstrsvpu::m2m::PixelFormat;
use gstrsvpu::sys::DmaBackend;

mod vpufwhtdec_support;
use vpufwhtdec_support::*;

const VECTOR: &str = "i420_640x480_gop4.fwht";
const FRAMES: usize = 6;

/// What one received frame was.
struct Received {
    dmabuf_feature: bool,
    fd_memory: bool,
    dmabuf_memory: bool,
    ours: bool,
}

/// Decodes the vector through `filesrc ! vpufwhtdec device=emu ! {middle}
/// appsink`, checking every frame against the bare codec (a CPU map of the
/// memory downstream got: a dma-buf map brackets it with
/// DMA_BUF_IOCTL_SYNC). The emulated VPU explicitly: in the VM `auto` would
/// pick vicodec, whose frames tests/kernel_*.rs check.
fn decode(middle: &str) -> Vec<Received> {
    decode_with("device=emu", middle)
}

/// [`decode`] with `props` set on the decoder.
fn decode_with(props: &str, middle: &str) -> Vec<Received> {
    init();
    let desc = format!(
        "filesrc location={} ! vpufwhtdec name=dec {props} ! {middle} appsink name=sink sync=false",
        data(VECTOR).display()
    );
    // A consumer that reads GstVideoMeta, as importers do.
    let pipeline = launch_with_video_meta(&desc);
    let sink = pipeline.by_name("sink").unwrap();
    let (raw, pictures) = bare_decode(&std::fs::read(data(VECTOR)).unwrap(), PixelFormat::I420);
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut received = Vec::new();
    while let Some(sample) = try_pull_sample(&sink) {
        let caps = sample.caps().unwrap();
        let info = gst_video::VideoInfo::from_caps(caps).unwrap();
        assert_eq!(info.format(), gst_video::VideoFormat::I420);
        let buffer = sample.buffer().unwrap();
        let i = received.len();
        assert_same_picture(buffer, &info, &raw, &pictures[i], &format!("frame {i}"));
        let mem = buffer.peek_memory(0);
        received.push(Received {
            dmabuf_feature: caps
                .features(0)
                .is_some_and(|f| f.contains(gst_allocators::CAPS_FEATURE_MEMORY_DMABUF)),
            fd_memory: mem.is_memory_type::<gst_allocators::FdMemory>(),
            dmabuf_memory: mem.is_memory_type::<gst_allocators::DmaBufMemory>(),
            ours: gstrsvpu::allocator::region(mem).is_some(),
        });
    }
    assert!(sink.property::<bool>("eos"), "{desc}: reaches EOS");
    assert_no_error(&pipeline);
    let st = stats(&pipeline.by_name("dec").unwrap());
    assert_eq!(stat(&st, "frame-copies"), 0, "{st}");
    assert_eq!(stat(&st, "coherency-violations"), 0, "{st}");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(received.len(), FRAMES, "{desc}: N frames in, N out ({st})");
    received
}

#[test]
fn plain_caps_and_the_vpus_fd_memory_unless_downstream_asks_for_dma_bufs() {
    let backend = DmaBackend::probe();
    let is_dmabuf = backend != DmaBackend::Memfd;
    for r in decode("") {
        assert!(!r.dmabuf_feature, "downstream accepts anything: plain caps");
        assert!(r.ours, "the VPU's own memory, not a copy");
        assert!(r.fd_memory, "fd memory (zero copy for CPU consumers)");
        assert_eq!(
            r.dmabuf_memory, is_dmabuf,
            "GstDmaBufMemory exactly when the memory is a dma-buf ({backend:?})"
        );
    }
}

#[test]
fn dmabuf_caps_feature_when_the_memory_is_a_dma_buf() {
    let backend = DmaBackend::probe();
    if backend == DmaBackend::Memfd {
        eprintln!(
            "\n*** SKIPPED dmabuf_caps_feature_when_the_memory_is_a_dma_buf: the VPU allocates \
             memfds here (no /dev/dma_heap/system or /dev/udmabuf). Run this binary in \
             /work/shared/vm (see the module doc). ***\n"
        );
        return;
    }
    for r in decode("capsfilter caps=video/x-raw(memory:DMABuf) !") {
        assert!(r.dmabuf_feature, "memory:DMABuf negotiated ({backend:?})");
        assert!(r.ours, "the VPU's own memory, not a copy");
        assert!(
            r.dmabuf_memory,
            "gst_is_dmabuf_memory() on what downstream got"
        );
    }
}

/// `capture-io-mode=mmap`: the VPU's frames as plain mapped memory (no fd,
/// not our allocator's), the same pictures, no copy, no coherency violation
/// (the CPU sync is done before the push).
#[test]
fn capture_io_mode_mmap_pushes_the_same_memory_as_plain_memory() {
    for r in decode_with("capture-io-mode=mmap", "") {
        assert!(!r.dmabuf_feature, "plain caps");
        assert!(
            !r.fd_memory && !r.dmabuf_memory,
            "plain memory, not fd memory"
        );
        assert!(!r.ours, "not a VpuAllocator memory");
    }
}

/// `capture-io-mode=dmabuf`: GstDmaBufMemory where the VPU's memory is a
/// dma-buf; where it is a memfd, a clear error at start naming the reason.
#[test]
fn capture_io_mode_dmabuf_gives_dma_bufs_or_a_clear_error() {
    if DmaBackend::probe() != DmaBackend::Memfd {
        for r in decode_with("capture-io-mode=dmabuf", "") {
            assert!(r.ours && r.dmabuf_memory, "the VPU's dma-bufs");
        }
        return;
    }
    init();
    let pipeline = launch(&format!(
        "filesrc location={} ! vpufwhtdec device=emu capture-io-mode=dmabuf ! fakesink",
        data(VECTOR).display()
    ));
    let _ = pipeline.set_state(gst::State::Playing);
    let msg = eos_or_error(&pipeline, 10).expect("an error within 10 s");
    pipeline.set_state(gst::State::Null).unwrap();
    let gst::MessageView::Error(e) = msg.view() else {
        panic!("capture-io-mode=dmabuf ran on memfd memory");
    };
    let text = format!("{} {:?}", e.error(), e.debug());
    assert!(
        text.contains("capture-io-mode=dmabuf") && text.contains("memfd"),
        "{text}"
    );
}

/// `capture-io-mode` on every decoder of the shared base: documented,
/// `auto` by default, and takes the three modes by name.
#[test]
fn capture_io_mode_is_a_documented_property_of_every_decoder() {
    init();
    for factory in ["vpufwhtdec", "vpuh264dec"] {
        let dec = gst::ElementFactory::make(factory).build().unwrap();
        let p = dec
            .find_property("capture-io-mode")
            .unwrap_or_else(|| panic!("{factory} has capture-io-mode"));
        assert!(p.blurb().is_some_and(|b| b.len() > 100), "{factory}");
        let nick = |e: &gst::Element| {
            let v = e.property_value("capture-io-mode");
            gst::glib::EnumValue::from_value(&v)
                .unwrap()
                .1
                .nick()
                .to_owned()
        };
        assert_eq!(nick(&dec), "auto", "{factory}");
        for mode in ["mmap", "dmabuf", "auto"] {
            dec.set_property_from_str("capture-io-mode", mode);
            assert_eq!(nick(&dec), mode, "{factory}");
        }
    }
}
