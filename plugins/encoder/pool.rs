//! The buffer pool the VPU encoders (`vpufwhtenc`, `vpuh264enc`) propose upstream, so that a producer such as
//! `videotestsrc` writes its frames straight into VPU memory and the encoder
//! queues them without a copy.
//!
//! Every buffer is one GstMemory made by [`VpuAllocator::wrap`] (or
//! [`VpuDmaBufAllocator::wrap`] for a dma-buf region) over a fresh
//! [`Region`] of exactly `Format::size` bytes, laid out per the contract
//! ([`Format::raw`]): vicodec's strides and the padding rows up to the coded
//! size, described by a `GstVideoMeta`. The padding is never written by a
//! producer (it writes the visible picture through the meta), so it keeps the
//! zeros of the fresh region, which the codec needs to match the kernel's
//! stream.
//!
//! # Configuration
//!
//! The pool serves exactly one format, fixed at construction. `set_config`
//! refuses caps of another format or size, and refuses a configuration
//! without `GstBufferPoolOptionVideoMeta` when the contract's layout is not
//! GStreamer's default one for those caps (a producer that ignores the meta
//! would write the wrong bytes). It always sets the buffer size to the
//! contract's size, so the base class's release check sees the size it
//! handed out and keeps the buffer (a buffer discarded there would be a new
//! region, mapped into the VPU again).
//!
//! # Cache maintenance
//!
//! Nothing here: the allocator's map override hands a cacheable region to the
//! CPU when the producer maps it (sync for CPU if the VPU owned it) and
//! records the CPU's writes; the session cleans the region (sync for device)
//! when the encoder queues it. A buffer the VPU still reads is held by the
//! encoder until its OUTPUT buffer is done, so it cannot come back to the
//! pool, and be handed out again, before then.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use gst::glib;
use gst::subclass::prelude::*;

use crate::allocator::{VpuAllocator, VpuDmaBufAllocator};
use crate::common::formats::{self, FormatError, MetaLayout};
use crate::m2m::Format;
use crate::mem::{Checker, Coherency, MemoryKind, Region};
use crate::sys::DmaBackend;

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpuencpool",
        gst::DebugColorFlags::empty(),
        Some("VPU encoder input pool"),
    )
});

/// What the pool allocates: fixed at construction.
struct Setup {
    raw: Format,
    layout: MetaLayout,
    coherency: Coherency,
    backend: DmaBackend,
    checker: Arc<Checker>,
    memfd: VpuAllocator,
    dmabuf: VpuDmaBufAllocator,
}

mod imp {
    use super::*;

    #[derive(Default)]
    pub struct VpuBufferPool {
        pub(super) setup: Mutex<Option<Setup>>,
        /// Buffers allocated so far (names the regions).
        pub(super) allocated: AtomicU32,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for VpuBufferPool {
        const NAME: &'static str = "GstVpuEncBufferPool";
        type Type = super::VpuBufferPool;
        type ParentType = gst::BufferPool;
    }

    impl ObjectImpl for VpuBufferPool {}
    impl GstObjectImpl for VpuBufferPool {}

    impl VpuBufferPool {
        fn setup(&self) -> std::sync::MutexGuard<'_, Option<Setup>> {
            self.setup
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    impl BufferPoolImpl for VpuBufferPool {
        fn options() -> &'static [&'static str] {
            static OPTIONS: LazyLock<[&'static str; 1]> =
                LazyLock::new(|| [gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str()]);
            OPTIONS.as_ref()
        }

        fn set_config(&self, config: &mut gst::BufferPoolConfigRef) -> bool {
            let Some((caps, _size, min, max)) = config.params() else {
                gst::warning!(CAT, imp = self, "configuration without parameters");
                return false;
            };
            let guard = self.setup();
            let Some(setup) = guard.as_ref() else {
                gst::error!(CAT, imp = self, "pool made without a format");
                return false;
            };
            let raw = &setup.raw;
            let Some(info) = caps
                .as_ref()
                .and_then(|c| gst_video::VideoInfo::from_caps(c).ok())
            else {
                gst::warning!(CAT, imp = self, "caps {caps:?} are not raw video");
                return false;
            };
            if formats::pixel_format(info.format()) != Some(raw.pixelformat)
                || (info.width(), info.height()) != (raw.width, raw.height)
            {
                gst::warning!(
                    CAT,
                    imp = self,
                    "this pool holds {}x{} {} frames, not {:?} {}x{}",
                    raw.width,
                    raw.height,
                    raw.pixelformat,
                    info.format(),
                    info.width(),
                    info.height()
                );
                return false;
            }
            let meta = config.has_option(gst_video::BUFFER_POOL_OPTION_VIDEO_META.as_str());
            if !meta && let Err(e) = formats::layout_matches(&info, raw) {
                gst::warning!(
                    CAT,
                    imp = self,
                    "without VideoMeta the producer would write GStreamer's default \
                     layout, which is not the VPU's: {e}"
                );
                return false;
            }
            let Ok(size) = u32::try_from(raw.size) else {
                gst::error!(CAT, imp = self, "a {}-byte frame is too large", raw.size);
                return false;
            };
            config.set_params(caps.as_ref(), size, min, max);
            drop(guard);
            self.parent_set_config(config)
        }

        fn alloc_buffer(
            &self,
            _params: Option<&gst::BufferPoolAcquireParams>,
        ) -> Result<gst::Buffer, gst::FlowError> {
            let guard = self.setup();
            let setup = guard.as_ref().ok_or(gst::FlowError::NotNegotiated)?;
            let n = self.allocated.fetch_add(1, Ordering::Relaxed);
            let name = format!("vpuenc-pool-{n}");
            let region = Region::allocate(
                &name,
                setup.raw.size,
                setup.coherency,
                setup.backend,
                &setup.checker,
            )
            .map_err(|e| {
                gst::error!(CAT, imp = self, "cannot allocate {name}: {e}");
                gst::FlowError::Error
            })?;
            let memory = match region.kind() {
                MemoryKind::Memfd => setup.memfd.wrap(region),
                MemoryKind::DmaBuf => setup.dmabuf.wrap(region),
            }
            .map_err(|e| {
                gst::error!(CAT, imp = self, "cannot wrap {name}: {e}");
                gst::FlowError::Error
            })?;
            let mut buffer = gst::Buffer::new();
            {
                let b = buffer.get_mut().ok_or(gst::FlowError::Error)?;
                b.append_memory(memory);
                setup.layout.add_to(b).map_err(|e| {
                    gst::error!(CAT, imp = self, "cannot add the VideoMeta: {e}");
                    gst::FlowError::Error
                })?;
            }
            gst::debug!(
                CAT,
                imp = self,
                "allocated {name} ({} bytes)",
                setup.raw.size
            );
            Ok(buffer)
        }
    }
}

glib::wrapper! {
    /// A pool of frames in VPU memory, in the contract layout of one format.
    pub struct VpuBufferPool(ObjectSubclass<imp::VpuBufferPool>)
        @extends gst::BufferPool, gst::Object;
}

impl VpuBufferPool {
    /// A pool of `raw` frames in `coherency` memory watched by `checker`
    /// (the session's VPU's), from the best memory this system offers.
    pub(super) fn new(
        raw: &Format,
        coherency: Coherency,
        checker: &Arc<Checker>,
    ) -> Result<VpuBufferPool, FormatError> {
        let layout = MetaLayout::of(raw)?;
        let pool: VpuBufferPool = glib::Object::new();
        *pool
            .imp()
            .setup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Setup {
            raw: raw.clone(),
            layout,
            coherency,
            backend: DmaBackend::probe(),
            checker: Arc::clone(checker),
            memfd: VpuAllocator::new(),
            dmabuf: VpuDmaBufAllocator::new(),
        });
        Ok(pool)
    }
}
