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

use std::path::{Path, PathBuf};

use gst::prelude::*;
use gst_video::prelude::*;
use gstrsvpu::m2m::{Format, PixelFormat};
use gstrsvpu::sys::DmaBackend;
use gstrsvpu::vpu::codec::fwht::{FwhtDecoder, parse_header};

fn init() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    });
}

const VECTOR: &str = "i420_640x480_gop4.fwht";
const FRAMES: usize = 6;

fn vector() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fwht")
        .join(VECTOR)
}

/// The bare codec's I420 pictures of the vector.
fn bare_i420() -> (Format, Vec<Vec<u8>>) {
    let stream = std::fs::read(vector()).unwrap();
    let h = parse_header(&stream).unwrap();
    let raw = Format::raw(PixelFormat::I420, h.width, h.height).unwrap();
    let mut dec = FwhtDecoder::new();
    let mut rest = &stream[..];
    let mut pictures = Vec::new();
    while !rest.is_empty() {
        let size = parse_header(rest).unwrap().frame_size();
        let mut dst = vec![0; raw.size];
        dec.decode(&rest[..size], &raw, &mut dst).unwrap();
        pictures.push(dst);
        rest = &rest[size..];
    }
    (raw, pictures)
}

fn assert_same_picture(
    buffer: &gst::BufferRef,
    info: &gst_video::VideoInfo,
    raw: &Format,
    bare: &[u8],
    what: &str,
) {
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
        .unwrap_or_else(|_| panic!("{what}: the frame does not map"));
    for plane in 0..info.n_planes() {
        let rows = frame.comp_height(plane) as usize;
        let row_bytes = frame.comp_width(plane) as usize;
        let stride = frame.plane_stride()[plane as usize] as usize;
        let data = frame.plane_data(plane).unwrap();
        let p = &raw.planes[plane as usize];
        for y in 0..rows {
            let got = &data[y * stride..y * stride + row_bytes];
            let want = &bare[p.offset + y * p.stride..p.offset + y * p.stride + row_bytes];
            assert!(got == want, "{what}: plane {plane} row {y} differs");
        }
    }
}

/// What one received frame was.
struct Received {
    dmabuf_feature: bool,
    fd_memory: bool,
    dmabuf_memory: bool,
    ours: bool,
}

/// Decodes the vector through `filesrc ! vpufwhtdec ! {middle} appsink`,
/// checking every frame against the bare codec (a CPU map of the memory
/// downstream got: a dma-buf map brackets it with DMA_BUF_IOCTL_SYNC).
fn decode(middle: &str) -> Vec<Received> {
    init();
    let desc = format!(
        "filesrc location={} ! vpufwhtdec name=dec ! {middle} appsink name=sink sync=false",
        vector().display()
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap_or_else(|e| panic!("{desc}: {e}"))
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    // A consumer that reads GstVideoMeta, as importers do.
    sink.static_pad("sink")
        .unwrap()
        .add_probe(gst::PadProbeType::QUERY_DOWNSTREAM, |_, info| {
            if let Some(gst::QueryViewMut::Allocation(q)) = info.query_mut().map(|q| q.view_mut()) {
                q.add_allocation_meta::<gst_video::VideoMeta>(None);
            }
            gst::PadProbeReturn::Ok
        });
    let (raw, pictures) = bare_i420();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut received = Vec::new();
    while let Some(sample) =
        sink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&10_000_000_000u64])
    {
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
    if let Some(msg) = pipeline
        .bus()
        .unwrap()
        .pop_filtered(&[gst::MessageType::Error])
    {
        panic!("{desc}: {msg:?}");
    }
    let st = pipeline
        .by_name("dec")
        .unwrap()
        .property::<gst::Structure>("stats");
    assert_eq!(st.get::<u64>("frame-copies").unwrap(), 0, "{st}");
    assert_eq!(st.get::<u64>("coherency-violations").unwrap(), 0, "{st}");
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(received.len(), FRAMES, "{desc}: N frames in, N out");
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
