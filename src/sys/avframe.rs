//! Frames lent to libavcodec without a copy: an `AVFrame` whose planes point
//! into a read-only mapping of a frame buffer's fd, refcounted by an
//! `AVBuffer` (`av_buffer_create`, `AV_BUFFER_FLAG_READONLY`) whose free
//! callback tells the lender that libav let go of it.
//!
//! # Why a mapping of its own
//!
//! The bytes of a `mem::Region` are only reachable under its lock (its
//! guards), so a pointer taken from a guard cannot outlive the guard, while
//! libavcodec may keep a frame past the call that gave it (`avcodec_send_frame`
//! takes a reference, `av_frame_ref`, and keeps it until the codec consumed
//! it). A [`FrameMapping`] is a second, read-only `MAP_SHARED` mapping of the
//! same fd, like the IOMMU mapping through which a real VPU reads a dma-buf:
//! it sees memory (what `device_read` sees), and it stays mapped as long as
//! anyone holds its `Arc`, which the `AVBuffer`'s opaque does until libav
//! frees the buffer. So no pointer libav holds can dangle, whatever the
//! region's owner does. Keeping the bytes *unchanged* while libav reads them
//! is the lender's job: it must not hand the buffer back for rewriting
//! before [`Lease::released`].
//!
//! # Lifetime of a lent frame
//!
//! [`LentFrame::new`] makes the frame (one reference to the buffer, ours)
//! and a [`Lease`]. Sending it (`avcodec_send_frame(frame)`) makes libav take
//! its own reference (refcounted frames are referenced, not copied); dropping
//! the [`LentFrame`] drops ours. When the last reference goes (libavcodec
//! unreferences the frame once the codec consumed it, or when the codec
//! context is freed) the callback drops the opaque, and with it the
//! mapping's `Arc`, then marks the lease released. The callback runs on
//! whichever thread drops the last reference; it only drops an `Arc` and
//! stores an atomic flag.

use std::ffi::{c_int, c_void};
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ffmpeg_next as ff;
use ffmpeg_next::ffi;

use super::mapping::RawMap;

/// A read-only, `MAP_SHARED` mapping of a frame buffer's fd, lent to libav
/// by [`LentFrame`]s. Unmaps when the last `Arc` goes.
pub struct FrameMapping {
    raw: RawMap,
}

// SAFETY: the mapping is owned memory that no Rust reference ever points
// into (only libav reads it, through the raw pointers of lent frames);
// moving or sharing the owner across threads moves or shares nothing else.
// It is unmapped only on drop, when no `Arc` (and so no lent frame) is left.
unsafe impl Send for FrameMapping {}
// SAFETY: as above: `&FrameMapping` gives no access to the bytes at all.
unsafe impl Sync for FrameMapping {}

impl FrameMapping {
    /// Maps the first `len` bytes of `fd` read-only.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Arc<FrameMapping>> {
        RawMap::map_read_only(fd, len).map(|raw| Arc::new(FrameMapping { raw }))
    }

    pub fn len(&self) -> usize {
        self.raw.len
    }

    /// Always false: zero-length mappings cannot be created.
    pub fn is_empty(&self) -> bool {
        self.raw.len == 0
    }
}

impl fmt::Debug for FrameMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameMapping")
            .field("len", &self.raw.len)
            .finish_non_exhaustive()
    }
}

/// One plane of a lent frame: `rows` rows of `row_bytes` bytes, the first at
/// `offset` in the mapping, each `stride` bytes after the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneView {
    pub offset: usize,
    pub stride: usize,
    pub rows: usize,
    pub row_bytes: usize,
}

impl PlaneView {
    /// One past the last byte of the plane, if it does not overflow.
    fn end(&self) -> Option<usize> {
        let last_row = self.rows.checked_sub(1)?;
        self.stride
            .checked_mul(last_row)?
            .checked_add(self.row_bytes)?
            .checked_add(self.offset)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LendError {
    #[error("a lent frame has 1 to {max} planes, not {found}")]
    Planes { found: usize, max: usize },
    #[error(
        "plane {plane} ({rows} rows of {row_bytes} bytes every {stride} from byte {offset}) \
         does not fit the {size}-byte buffer"
    )]
    OutOfRange {
        plane: usize,
        offset: usize,
        stride: usize,
        rows: usize,
        row_bytes: usize,
        size: usize,
    },
    #[error("a stride of {0} bytes does not fit libav's int")]
    Stride(usize),
    #[error("libavutil could not allocate the frame or its buffer reference")]
    NoMemory,
}

/// What the `AVBuffer` owns while libav references the memory.
struct Lender {
    _mapping: Arc<FrameMapping>,
    released: Arc<AtomicBool>,
}

/// `AVBuffer` free callback: libav dropped its last reference.
unsafe extern "C" fn release(opaque: *mut c_void, _data: *mut u8) {
    // SAFETY: `opaque` is the `Box<Lender>` leaked by `LentFrame::new` for
    // this buffer, and libav calls the free callback exactly once.
    let lender = unsafe { Box::from_raw(opaque.cast::<Lender>()) };
    let released = Arc::clone(&lender.released);
    // The mapping's Arc goes first: "released" means nothing of it is held.
    drop(lender);
    released.store(true, Ordering::Release);
}

/// Tells whether libav still references the memory of a lent frame.
#[derive(Debug, Clone)]
pub struct Lease(Arc<AtomicBool>);

impl Lease {
    /// True once libav (and the [`LentFrame`]) let go of the buffer: the
    /// memory may be rewritten.
    pub fn released(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A refcounted, read-only `AVFrame` over a [`FrameMapping`]. Only shared
/// access is offered (`frame()` to send it, and the timestamp and picture
/// type), so nothing can write the lent memory through it.
pub struct LentFrame {
    frame: ff::frame::Video,
}

impl fmt::Debug for LentFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentFrame")
            .field("format", &self.frame.format())
            .field("width", &self.frame.width())
            .field("height", &self.frame.height())
            .finish_non_exhaustive()
    }
}

impl LentFrame {
    /// A `width`x`height` frame of `format` whose plane `i` is `planes[i]`
    /// of `mapping`, and the lease that says when libav let go of it.
    /// Every plane must lie inside the mapping.
    pub fn new(
        mapping: &Arc<FrameMapping>,
        format: ff::format::Pixel,
        width: u32,
        height: u32,
        planes: &[PlaneView],
    ) -> Result<(LentFrame, Lease), LendError> {
        let max = ffi::AV_NUM_DATA_POINTERS as usize;
        if planes.is_empty() || planes.len() > max {
            return Err(LendError::Planes {
                found: planes.len(),
                max,
            });
        }
        let size = mapping.len();
        let mut linesizes = Vec::with_capacity(planes.len());
        for (plane, p) in planes.iter().enumerate() {
            if p.end().is_none_or(|end| end > size) {
                return Err(LendError::OutOfRange {
                    plane,
                    offset: p.offset,
                    stride: p.stride,
                    rows: p.rows,
                    row_bytes: p.row_bytes,
                    size,
                });
            }
            linesizes.push(c_int::try_from(p.stride).map_err(|_| LendError::Stride(p.stride))?);
        }

        // SAFETY: a plain allocation; null is checked below.
        let raw_frame = unsafe { ffi::av_frame_alloc() };
        if raw_frame.is_null() {
            return Err(LendError::NoMemory);
        }
        // SAFETY: `raw_frame` is a fresh AVFrame nobody else owns; the
        // wrapper frees it (av_frame_free) on drop.
        let mut frame = unsafe { ff::frame::Video::wrap(raw_frame) };
        frame.set_format(format);
        frame.set_width(width);
        frame.set_height(height);

        let released = Arc::new(AtomicBool::new(false));
        let opaque = Box::into_raw(Box::new(Lender {
            _mapping: Arc::clone(mapping),
            released: Arc::clone(&released),
        }));
        let base = mapping.raw.ptr.as_ptr();
        // SAFETY: `base..base + size` is the mapping, which stays mapped
        // while the opaque (owning an Arc of it) lives, i.e. until `release`
        // runs; READONLY makes libav copy instead of writing into it
        // (`av_frame_make_writable`), and the mapping is PROT_READ anyway.
        let buf = unsafe {
            ffi::av_buffer_create(
                base,
                size,
                Some(release),
                opaque.cast(),
                ffi::AV_BUFFER_FLAG_READONLY,
            )
        };
        if buf.is_null() {
            // SAFETY: libav did not take the opaque: it is still ours.
            drop(unsafe { Box::from_raw(opaque) });
            return Err(LendError::NoMemory);
        }
        // SAFETY: `raw_frame` is valid (owned by `frame`); `buf` becomes its
        // only buffer reference, unreferenced by av_frame_free. Each data
        // pointer is `base + offset` with the plane's bytes inside the
        // mapping (checked above), so `add` stays in bounds.
        unsafe {
            (*raw_frame).buf[0] = buf;
            for (i, (p, linesize)) in planes.iter().zip(linesizes).enumerate() {
                (*raw_frame).data[i] = base.add(p.offset);
                (*raw_frame).linesize[i] = linesize;
            }
        }
        Ok((LentFrame { frame }, Lease(released)))
    }

    /// The frame, to send (`avcodec_send_frame` takes its own reference).
    pub fn frame(&self) -> &ff::Frame {
        &self.frame
    }

    pub fn set_pts(&mut self, pts: Option<i64>) {
        self.frame.set_pts(pts);
    }

    pub fn set_kind(&mut self, kind: ff::picture::Type) {
        self.frame.set_kind(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Mapping, memfd_sealed};

    fn mapping_with(bytes: &[u8]) -> Arc<FrameMapping> {
        let fd = memfd_sealed("avframe-test", bytes.len()).unwrap();
        let mut rw = Mapping::map(std::os::fd::AsFd::as_fd(&fd), bytes.len()).unwrap();
        rw.as_mut_slice().copy_from_slice(bytes);
        FrameMapping::map(std::os::fd::AsFd::as_fd(&fd), bytes.len()).unwrap()
    }

    fn gray(w: usize, h: usize) -> Vec<PlaneView> {
        vec![PlaneView {
            offset: 0,
            stride: w,
            rows: h,
            row_bytes: w,
        }]
    }

    #[test]
    fn the_frame_points_into_the_mapping_and_the_lease_ends_with_the_last_reference() {
        let bytes: Vec<u8> = (0..64 * 8).map(|i| i as u8).collect();
        let mapping = mapping_with(&bytes);
        let planes = [PlaneView {
            offset: 64,
            stride: 64,
            rows: 7,
            row_bytes: 60,
        }];
        let (frame, lease) =
            LentFrame::new(&mapping, ff::format::Pixel::GRAY8, 60, 7, &planes).unwrap();
        assert!(!lease.released());
        // Another reference, as avcodec_send_frame takes one (av_frame_ref).
        // SAFETY: the frame is valid; av_frame_clone returns a new frame
        // referencing the same buffer (or null, checked), owned by `other`.
        let other = unsafe { ffi::av_frame_clone(frame.frame().as_ptr()) };
        assert!(!other.is_null());
        // SAFETY: `other` is a fresh AVFrame nobody else owns.
        let other = unsafe { ff::frame::Video::wrap(other) };
        assert_eq!(other.data(0)[0], 64, "plane 0 starts at byte 64");
        assert_eq!(other.stride(0), 64);
        drop(frame);
        assert!(!lease.released(), "a reference is still out");
        drop(other);
        assert!(lease.released());
        assert_eq!(Arc::strong_count(&mapping), 1, "the opaque's Arc went");
    }

    #[test]
    fn planes_outside_the_mapping_are_refused() {
        let mapping = mapping_with(&[0; 100]);
        let err =
            LentFrame::new(&mapping, ff::format::Pixel::GRAY8, 10, 11, &gray(10, 11)).unwrap_err();
        assert!(
            err.to_string()
                .contains("plane 0 (11 rows of 10 bytes every 10 from byte 0)"),
            "{err}"
        );
        assert!(LentFrame::new(&mapping, ff::format::Pixel::GRAY8, 10, 10, &[]).is_err());
        assert_eq!(Arc::strong_count(&mapping), 1);
    }
}
