//! VpuAllocator / VpuDmaBufAllocator: zero-copy GstMemory over mem regions,
//! region lifetime and recovery, lazy cache maintenance on CPU maps, the
//! cache simulation seen through GStreamer maps, and flow through elements.
//!
//! The dma-buf test needs /dev/dma_heap or /dev/udmabuf; without them it
//! says so loudly and skips. Run it in the VM:
//! `cargo test --no-run --test allocator`, then
//! `VMBED_RW=$PWD/target ../shared/vm/run-in-vm.sh target/debug/deps/allocator-<hash>`
//! (the path `cargo test --no-run` prints).

use std::os::fd::AsRawFd;
use std::sync::Arc;

use gst::prelude::*;
use gstrsvpu::allocator::{self, VpuAllocator, VpuDmaBufAllocator};
use gstrsvpu::mem::{Checker, CheckerConfig, Coherency, Direction, MemoryKind, Owner, Region};
use gstrsvpu::sys::DmaBackend;

fn init() {
    gst::init().expect("gst::init");
}

fn checker(simulate_cache: bool) -> Arc<Checker> {
    Checker::new(CheckerConfig {
        simulate_cache,
        panic_on_violation: false,
    })
}

fn memfd_region(name: &str, size: usize, c: Coherency, chk: &Arc<Checker>) -> Arc<Region> {
    Region::allocate(name, size, c, DmaBackend::Memfd, chk).expect("memfd region")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn assert_clean(chk: &Checker) {
    assert_eq!(chk.violation_count(), 0, "{:#?}", chk.violations());
}

#[test]
fn wrap_is_zero_copy_over_the_region_fd_and_data_matches() {
    init();
    let chk = checker(false);
    let region = memfd_region("frame", 10_000, Coherency::Cacheable, &chk);
    let data = pattern(10_000, 3);
    region.cpu_write().copy_from_slice(&data);

    let alloc = VpuAllocator::new();
    let mut mem = alloc.wrap(Arc::clone(&region)).unwrap();
    assert_eq!(mem.size(), 10_000);

    let fd_mem = mem
        .downcast_memory_ref::<gst_allocators::FdMemory>()
        .expect("an fd memory");
    assert_eq!(fd_mem.fd(), region.fd().as_raw_fd(), "same fd, no dup");
    assert!(
        !mem.is_memory_type::<gst_allocators::DmaBufMemory>(),
        "a memfd is not labelled dma-buf"
    );

    assert_eq!(mem.map_readable().unwrap().as_slice(), &data[..]);
    {
        let mem = mem.get_mut().expect("sole owner");
        let mut map = mem.map_writable().unwrap();
        map[0..4].copy_from_slice(b"VPU!");
    }
    assert_eq!(&region.cpu_read()[0..4], b"VPU!");
    assert_eq!(&region.cpu_read()[4..], &data[4..]);

    assert_eq!(chk.stats().syncs_for_cpu, 0, "the CPU owned it all along");
    assert_clean(&chk);
}

#[test]
fn the_region_lives_exactly_as_long_as_the_memory_and_is_recovered() {
    init();
    let chk = checker(false);
    let region = memfd_region("lifetime", 4096, Coherency::Coherent, &chk);
    let alloc = VpuAllocator::new();
    let mem = alloc.wrap(Arc::clone(&region)).unwrap();
    assert_eq!(Arc::strong_count(&region), 2, "the memory holds one ref");

    let found = VpuAllocator::region(&mem).expect("our memory");
    assert!(Arc::ptr_eq(&found, &region));
    drop(found);

    // A sub-memory holds its parent, and maps to the same region.
    let sub = mem.share(100..200);
    assert!(Arc::ptr_eq(&allocator::region(&sub).unwrap(), &region));
    drop(mem);
    assert_eq!(Arc::strong_count(&region), 2, "sub-memory keeps it alive");
    region.cpu_write()[150] = 0xab;
    assert_eq!(sub.map_readable().unwrap()[50], 0xab);
    drop(sub);
    assert_eq!(Arc::strong_count(&region), 1, "freed with the last memory");

    let foreign = gst::Memory::from_slice(vec![0u8; 16]);
    assert!(VpuAllocator::region(&foreign).is_none());
    assert!(!allocator::set_device_busy(&foreign, true));
}

#[test]
fn cpu_map_of_a_device_owned_cacheable_region_syncs_lazily_once() {
    init();
    let chk = checker(false);
    let region = memfd_region("capture-0", 8192, Coherency::Cacheable, &chk);
    let alloc = VpuAllocator::new();
    let mut mem = alloc.wrap(Arc::clone(&region)).unwrap();

    // The driver queues the frame, the device decodes into it.
    region.sync_for_device().unwrap();
    let decoded = pattern(8192, 9);
    region.device_write().copy_from_slice(&decoded);
    assert_eq!(region.owner(), Owner::Device);
    let before = chk.stats();

    // Downstream maps it: invalidate first, then read.
    assert_eq!(mem.map_readable().unwrap().as_slice(), &decoded[..]);
    assert_eq!(region.owner(), Owner::Cpu);
    assert_eq!(chk.stats().syncs_for_cpu, before.syncs_for_cpu + 1);
    // A second map, and a write map, need no further sync.
    drop(mem.map_readable().unwrap());
    mem.get_mut().unwrap().map_writable().unwrap()[0] = 1;
    assert_eq!(chk.stats().syncs_for_cpu, before.syncs_for_cpu + 1);
    assert_eq!(
        chk.stats().syncs_for_device,
        before.syncs_for_device,
        "maps never clean"
    );
    assert_eq!(region.owner(), Owner::Cpu, "the next queue cleans it");

    // Re-queued: a device write map (write after device) goes the same way.
    region.sync_for_device().unwrap();
    region.device_write().fill(0x55);
    {
        let mem = mem.get_mut().unwrap();
        let map = mem.map_writable().unwrap();
        assert!(map.iter().all(|&b| b == 0x55));
    }
    assert_eq!(chk.stats().syncs_for_cpu, before.syncs_for_cpu + 2);
    assert_eq!(region.owner(), Owner::Cpu);
    assert_clean(&chk);
}

#[test]
fn frames_never_cpu_mapped_cost_no_sync() {
    init();
    let chk = checker(false);
    let region = memfd_region("display-only", 4096, Coherency::Cacheable, &chk);
    region.sync_for_device().unwrap();
    let before = chk.stats();
    let alloc = VpuAllocator::new();
    let mem = alloc.wrap(Arc::clone(&region)).unwrap();
    // An importer only takes the fd.
    let fd = mem
        .downcast_memory_ref::<gst_allocators::FdMemory>()
        .unwrap()
        .fd();
    assert_eq!(fd, region.fd().as_raw_fd());
    drop(mem);
    assert_eq!(chk.stats(), before);
    assert_eq!(region.owner(), Owner::Device);
    assert_clean(&chk);
}

#[test]
fn coherent_region_maps_issue_no_sync() {
    init();
    let chk = checker(true);
    let region = memfd_region("bitstream", 2048, Coherency::Coherent, &chk);
    let alloc = VpuAllocator::new();
    let mut mem = alloc.wrap(Arc::clone(&region)).unwrap();
    region.sync_for_device().unwrap(); // a no-op for coherent regions
    region.device_write()[7] = 7;
    assert_eq!(mem.map_readable().unwrap()[7], 7);
    mem.get_mut().unwrap().map_writable().unwrap()[8] = 8;
    assert_eq!(region.device_read()[8], 8, "no cache in between");
    assert_eq!(chk.stats(), Default::default(), "nothing synced or counted");
    assert_clean(&chk);
}

#[test]
fn map_while_the_device_is_busy_is_reported_not_synced() {
    init();
    let chk = checker(false);
    let region = memfd_region("capture-busy", 4096, Coherency::Cacheable, &chk);
    let alloc = VpuAllocator::new();
    let mut mem = alloc.wrap(Arc::clone(&region)).unwrap();
    region.sync_for_device().unwrap();
    assert!(allocator::set_device_busy(&mem, true));

    drop(mem.map_readable().unwrap());
    let v = chk.take_violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].buffer, "capture-busy");
    assert_eq!(v[0].direction, Direction::DeviceToCpu);
    assert_eq!(v[0].operation, "cpu_read");
    assert_eq!(
        chk.stats().syncs_for_cpu,
        0,
        "no sync behind the device's back"
    );
    assert_eq!(region.owner(), Owner::Device);

    drop(mem.get_mut().unwrap().map_writable().unwrap());
    let ops: Vec<_> = chk
        .take_violations()
        .into_iter()
        .map(|v| v.operation)
        .collect();
    assert_eq!(ops, ["cpu_write", "cpu_write"], "reported at map and unmap");

    // Released (dequeued): the next map syncs and is clean.
    allocator::set_device_busy(&mem, false);
    let n = chk.violation_count();
    drop(mem.map_readable().unwrap());
    assert_eq!(chk.violation_count(), n);
    assert_eq!(chk.stats().syncs_for_cpu, 1);
}

#[test]
fn under_cache_simulation_gstreamer_maps_see_what_guards_see() {
    init();
    let chk = checker(true);
    let region = memfd_region("sim", 1000, Coherency::Cacheable, &chk);
    let alloc = VpuAllocator::new();
    let mut mem = alloc.wrap(Arc::clone(&region)).unwrap();

    // CPU writes through the Rust API sit in the simulated cache: memory (the
    // fd) does not have them yet, but a GStreamer map does.
    let data = pattern(1000, 1);
    region.cpu_write().copy_from_slice(&data);
    assert_eq!(mem.map_readable().unwrap().as_slice(), &data[..]);

    // A GStreamer write reaches the region's CPU view at unmap, and memory
    // only with sync_for_device.
    {
        let mem = mem.get_mut().unwrap();
        let mut map = mem.map_writable().unwrap();
        map[200..210].fill(0xee);
    }
    assert!(region.cpu_read()[200..210].iter().all(|&b| b == 0xee));
    region.sync_for_device().unwrap();
    assert!(region.device_read()[200..210].iter().all(|&b| b == 0xee));
    assert_eq!(&region.device_read()[..200], &data[..200]);

    // Correct hand-back: the device writes, the map syncs and sees it.
    region.device_write().fill(0x44);
    assert!(mem.map_readable().unwrap().iter().all(|&b| b == 0x44));
    assert_eq!(chk.stats().syncs_for_cpu, 1);
    assert_clean(&chk);

    // Missing sync: the device writes while (still) owning the region and
    // the memory is mapped while it is marked busy: reported, and the map
    // shows the stale cached data, as on a non-coherent SoC.
    region.sync_for_device().unwrap();
    region.device_write()[64..128].fill(0x99);
    allocator::set_device_busy(&mem, true);
    {
        let map = mem.map_readable().unwrap();
        assert!(map[64..128].iter().all(|&b| b == 0x44), "stale line");
    }
    let v = chk.take_violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(
        (v[0].operation.as_str(), v[0].direction),
        ("cpu_read", Direction::DeviceToCpu)
    );
    allocator::set_device_busy(&mem, false);
    let map = mem.map_readable().unwrap();
    assert!(map[64..128].iter().all(|&b| b == 0x99), "fresh after sync");
}

#[test]
fn under_simulation_sub_memories_and_nested_maps_share_one_view() {
    init();
    let chk = checker(true);
    let region = memfd_region("sim-sub", 512, Coherency::Cacheable, &chk);
    let data = pattern(512, 5);
    region.cpu_write().copy_from_slice(&data);
    let mem = VpuAllocator::new().wrap(Arc::clone(&region)).unwrap();
    let sub = mem.share(100..300);
    let a = mem.map_readable().unwrap();
    let b = sub.map_readable().unwrap();
    assert_eq!(b.as_slice(), &data[100..300]);
    assert_eq!(a.as_slice(), &data[..]);
    drop((a, b));
    assert_clean(&chk);
}

#[test]
fn concurrent_maps_from_several_threads_agree() {
    init();
    for simulate_cache in [false, true] {
        let chk = checker(simulate_cache);
        let region = memfd_region("shared-frame", 65536, Coherency::Cacheable, &chk);
        region.sync_for_device().unwrap();
        let decoded = pattern(65536, 4);
        region.device_write().copy_from_slice(&decoded);
        let mem = VpuAllocator::new().wrap(Arc::clone(&region)).unwrap();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (mem, decoded) = (&mem, &decoded);
                s.spawn(move || {
                    for i in 0..50 {
                        let sub = mem.share(t * 1000 + i..t * 1000 + i + 500);
                        let map = sub.map_readable().unwrap();
                        assert_eq!(map.as_slice(), &decoded[t * 1000 + i..][..500]);
                    }
                });
            }
        });
        assert_eq!(
            chk.stats().syncs_for_cpu,
            1,
            "simulate_cache={simulate_cache}"
        );
        assert_clean(&chk);
    }
}

#[test]
fn panic_on_violation_fails_the_map_instead_of_unwinding_into_c() {
    init();
    let chk = Checker::new(CheckerConfig {
        simulate_cache: false,
        panic_on_violation: true,
    });
    let region = memfd_region("strict", 4096, Coherency::Cacheable, &chk);
    let mem = VpuAllocator::new().wrap(Arc::clone(&region)).unwrap();
    region.sync_for_device().unwrap();
    allocator::set_device_busy(&mem, true);
    assert!(mem.map_readable().is_err(), "the map is refused");
    assert_eq!(chk.violation_count(), 1);
    allocator::set_device_busy(&mem, false);
    assert!(mem.map_readable().is_ok());
}

#[test]
fn wrong_kind_is_refused_with_a_hint() {
    init();
    let chk = checker(false);
    let region = memfd_region("memfd", 4096, Coherency::Cacheable, &chk);
    let e = VpuDmaBufAllocator::new().wrap(region).unwrap_err();
    assert!(e.to_string().contains("wrap it with VpuAllocator"), "{e}");
}

/// A foreign fd memory's import is kept with it per VPU (checker): the same
/// VPU gets the same region again; our own memory and memory without an fd
/// are not imported; at most a few VPUs' imports are kept, the oldest going
/// first, and all of them go with the memory.
#[test]
fn foreign_fd_memory_imports_are_kept_per_vpu_and_bounded() {
    use gst_allocators::prelude::*;
    use std::os::fd::IntoRawFd;
    init();
    let size = 64 * 1024;
    let producer = memfd_region(
        "foreign-import-probe",
        size,
        Coherency::Coherent,
        &checker(false),
    );
    let fd = producer.fd().try_clone_to_owned().unwrap();
    drop(producer);
    // SAFETY: a fresh duplicate, handed over to GStreamer, which closes it.
    let mem = unsafe {
        gst_allocators::FdAllocator::new().alloc_fd(
            fd.into_raw_fd(),
            size,
            gst_allocators::FdMemoryFlags::NONE,
        )
    }
    .unwrap();
    let mapped = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| l.contains("memfd:foreign-import-probe"))
            .count()
    };
    assert_eq!(mapped(), 0);
    let vpu = checker(false);
    let first = allocator::import_foreign_fd_memory(&mem, size, &vpu, false)
        .expect("fd memory is imported")
        .unwrap();
    let again = allocator::import_foreign_fd_memory(&mem, size, &vpu, false)
        .unwrap()
        .unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the same VPU gets the same region"
    );
    assert_eq!(first.kind(), MemoryKind::Memfd);
    assert_eq!(mapped(), 1);
    let e = allocator::import_foreign_fd_memory(&mem, size, &checker(false), true)
        .unwrap()
        .unwrap_err();
    assert!(e.contains("no dma-buf"), "{e}");
    drop((first, again));
    let others: Vec<Arc<Checker>> = (0..6).map(|_| checker(false)).collect();
    for c in &others {
        allocator::import_foreign_fd_memory(&mem, size, c, false)
            .unwrap()
            .unwrap();
    }
    assert_eq!(mapped(), 4, "the imports of at most 4 VPUs are kept");
    // Ours is not foreign; plain memory has no fd.
    let ours = VpuAllocator::new()
        .wrap(memfd_region("ours", size, Coherency::Coherent, &vpu))
        .unwrap();
    assert!(allocator::import_foreign_fd_memory(&ours, size, &vpu, false).is_none());
    let plain = gst::Memory::with_size(size);
    assert!(allocator::import_foreign_fd_memory(&plain, size, &vpu, false).is_none());
    drop(mem);
    assert_eq!(mapped(), 0, "the imports go with the memory");
}

fn frame_buffer(alloc: &VpuAllocator, region: &Arc<Region>) -> gst::Buffer {
    let mut buffer = gst::Buffer::new();
    buffer
        .get_mut()
        .unwrap()
        .append_memory(alloc.wrap(Arc::clone(region)).unwrap());
    buffer
}

#[test]
fn buffers_of_our_memory_flow_through_identity_without_copy() {
    init();
    let chk = checker(true);
    let region = memfd_region("harness-frame", 3000, Coherency::Cacheable, &chk);
    let alloc = VpuAllocator::new();
    let mut h = gst_check::Harness::new("identity");
    h.set_src_caps_str("video/x-raw,format=GRAY8,width=100,height=30,framerate=30/1");

    // Decoded by the device, pushed downstream without any sync.
    region.sync_for_device().unwrap();
    let decoded = pattern(3000, 2);
    region.device_write().copy_from_slice(&decoded);
    let before = chk.stats();
    assert_eq!(
        h.push(frame_buffer(&alloc, &region)),
        Ok(gst::FlowSuccess::Ok)
    );
    let out = h.pull().unwrap();
    assert_eq!(chk.stats(), before, "passing through costs no sync");

    let mem = out.peek_memory(0);
    let ours = VpuAllocator::region(mem).expect("same memory came out");
    assert!(Arc::ptr_eq(&ours, &region));
    drop(ours);
    // The sink side reads it: one lazy sync, right data.
    assert_eq!(out.map_readable().unwrap().as_slice(), &decoded[..]);
    assert_eq!(chk.stats().syncs_for_cpu, before.syncs_for_cpu + 1);
    drop(out);
    drop(h);
    assert_eq!(Arc::strong_count(&region), 1);
    assert_clean(&chk);
}

/// appsrc ! identity ! fakesink: the sink receives our memories (the
/// same regions, recovered from the buffers) and, mapping them like a CPU
/// consumer, triggers exactly one lazy sync per device-written frame.
#[test]
fn buffers_flow_through_an_appsrc_fakesink_pipeline() {
    use std::sync::Mutex;
    init();
    let chk = checker(true);
    let alloc = VpuAllocator::new();
    let regions: Vec<_> = (0..4u8)
        .map(|i| {
            let r = memfd_region(&format!("frame-{i}"), 4096, Coherency::Cacheable, &chk);
            r.sync_for_device().unwrap();
            r.device_write().fill(i + 1);
            r
        })
        .collect();
    let pipeline = gst::parse::launch(
        "appsrc name=src format=time \
           caps=video/x-raw,format=GRAY8,width=64,height=64,framerate=30/1 \
         ! identity ! fakesink name=sink signal-handoffs=true sync=false",
    )
    .expect("appsrc, identity and fakesink (core and -base)")
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline.by_name("src").unwrap();
    let sink = pipeline.by_name("sink").unwrap();

    // (region id, first byte the sink read)
    let seen = Arc::new(Mutex::new(Vec::new()));
    sink.connect("handoff", false, {
        let seen = Arc::clone(&seen);
        move |args| {
            let buffer = args[1].get::<gst::Buffer>().expect("handoff buffer");
            let region = VpuAllocator::region(buffer.peek_memory(0));
            let first = buffer.map_readable().map(|m| m[0]).ok();
            seen.lock().unwrap().push((region.map(|r| r.id()), first));
            None
        }
    });

    pipeline.set_state(gst::State::Playing).unwrap();
    for (i, region) in regions.iter().enumerate() {
        let mut buffer = frame_buffer(&alloc, region);
        buffer
            .get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(33 * i as u64));
        let ret = src.emit_by_name::<gst::FlowReturn>("push-buffer", &[&buffer]);
        assert_eq!(ret, gst::FlowReturn::Ok);
    }
    let _ = src.emit_by_name::<gst::FlowReturn>("end-of-stream", &[]);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("EOS within 10 s");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();

    let expected: Vec<_> = regions
        .iter()
        .zip(1u8..)
        .map(|(r, i)| (Some(r.id()), Some(i)))
        .collect();
    assert_eq!(*seen.lock().unwrap(), expected);
    assert_eq!(chk.stats().syncs_for_cpu, 4);
    for r in &regions {
        assert_eq!(Arc::strong_count(r), 1, "{}: memory freed", r.name());
    }
    assert_clean(&chk);
}

/// Real dma-bufs through VpuDmaBufAllocator. Needs a dma-heap or udmabuf
/// (the VM has them); skips loudly otherwise.
#[test]
fn dma_buf_regions_wrap_as_dmabuf_memory() {
    init();
    let backend = DmaBackend::probe();
    if backend == DmaBackend::Memfd {
        eprintln!(
            "!!! NO DMA-BUF BACKEND (no /dev/dma_heap, no /dev/udmabuf): \
             dma_buf_regions_wrap_as_dmabuf_memory NOT TESTED; run it in the VM"
        );
        return;
    }
    for simulate_cache in [false, true] {
        let chk = checker(simulate_cache);
        let region = Region::allocate("dmabuf-frame", 8192, Coherency::Cacheable, backend, &chk)
            .expect("dma-buf region");
        assert_eq!(region.kind(), MemoryKind::DmaBuf, "{backend}");
        let e = VpuAllocator::new().wrap(Arc::clone(&region)).unwrap_err();
        assert!(e.to_string().contains("VpuDmaBufAllocator"), "{e}");

        let alloc = VpuDmaBufAllocator::new();
        let mut mem = alloc.wrap(Arc::clone(&region)).unwrap();
        let dmabuf = mem
            .downcast_memory_ref::<gst_allocators::DmaBufMemory>()
            .expect("recognised as dma-buf memory downstream");
        assert_eq!(dmabuf.fd(), region.fd().as_raw_fd());

        region.sync_for_device().unwrap();
        region.device_write().fill(0x5a);
        let before = chk.stats();
        assert!(mem.map_readable().unwrap().iter().all(|&b| b == 0x5a));
        assert_eq!(chk.stats().syncs_for_cpu, before.syncs_for_cpu + 1);
        {
            let mem = mem.get_mut().unwrap();
            let mut map = mem.map_writable().unwrap();
            map[..4].copy_from_slice(b"dmab");
        }
        assert_eq!(&region.cpu_read()[..4], b"dmab");
        region.sync_for_device().unwrap();
        assert_eq!(&region.device_read()[..4], b"dmab", "cleaned to memory");
        let s = chk.stats();
        assert_eq!(s.dma_buf_ioctl_errors, 0, "{s:?}");
        assert!(
            s.dma_buf_ioctls >= 2,
            "the write-unmap guard brackets with DMA_BUF_IOCTL_SYNC: {s:?}"
        );
        drop(mem);
        assert_eq!(Arc::strong_count(&region), 1);
        assert_clean(&chk);
    }
    eprintln!("dma-buf allocator tested on backend {backend}");
}
