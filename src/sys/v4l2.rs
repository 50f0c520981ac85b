//! The unsafe corners of talking to a V4L2 node: reading the unions of
//! `struct v4l2_format` and waiting on the node with `poll(2)`.
//!
//! The ioctls themselves are v4l2r's (`v4l2r::ioctl`); what they exchange
//! are bindgen structs whose unions can only be read in `unsafe` code. This
//! module turns them into plain values so that `crate::v4l2` stays free of
//! `unsafe`.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use v4l2r::bindings;

/// `struct v4l2_plane_pix_format`: one memory plane of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanePixFormat {
    pub bytesperline: u32,
    pub sizeimage: u32,
}

/// The fields of `struct v4l2_pix_format` / `v4l2_pix_format_mplane` that a
/// codec client uses, the same for both APIs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PixFormat {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub colorspace: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
    pub xfer_func: u32,
    /// Memory planes: exactly one with the single-planar API.
    pub planes: Vec<PlanePixFormat>,
}

/// True for the `V4L2_BUF_TYPE_*_MPLANE` buffer types.
const fn is_mplane(type_: u32) -> bool {
    type_ == bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE
        || type_ == bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE
}

impl PixFormat {
    /// Reads the pixel format out of `f`, per its `type_`. `None` for a
    /// buffer type that is not a video capture or output type.
    pub fn from_v4l2(f: &bindings::v4l2_format) -> Option<PixFormat> {
        if is_mplane(f.type_) {
            // SAFETY: the kernel fills `pix_mp` for the MPLANE buffer types,
            // and every bit pattern is a valid value of its integer fields.
            let p = unsafe { f.fmt.pix_mp };
            // SAFETY: `ycbcr_enc` and `hsv_enc` are both `u8`, any value is valid.
            let ycbcr_enc = unsafe { p.__bindgen_anon_1.ycbcr_enc };
            let n = usize::from(p.num_planes).min(p.plane_fmt.len());
            Some(PixFormat {
                width: p.width,
                height: p.height,
                pixelformat: p.pixelformat,
                field: p.field,
                colorspace: p.colorspace,
                ycbcr_enc: u32::from(ycbcr_enc),
                quantization: u32::from(p.quantization),
                xfer_func: u32::from(p.xfer_func),
                planes: p.plane_fmt[..n]
                    .iter()
                    .map(|pl| PlanePixFormat {
                        bytesperline: pl.bytesperline,
                        sizeimage: pl.sizeimage,
                    })
                    .collect(),
            })
        } else if f.type_ == bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE
            || f.type_ == bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT
        {
            // SAFETY: the kernel fills `pix` for the single-planar video
            // types, and every bit pattern is valid for its integer fields.
            let p = unsafe { f.fmt.pix };
            // SAFETY: `ycbcr_enc` and `hsv_enc` are both `u32`, any value is valid.
            let ycbcr_enc = unsafe { p.__bindgen_anon_1.ycbcr_enc };
            Some(PixFormat {
                width: p.width,
                height: p.height,
                pixelformat: p.pixelformat,
                field: p.field,
                colorspace: p.colorspace,
                ycbcr_enc,
                quantization: p.quantization,
                xfer_func: p.xfer_func,
                planes: vec![PlanePixFormat {
                    bytesperline: p.bytesperline,
                    sizeimage: p.sizeimage,
                }],
            })
        } else {
            None
        }
    }

    /// The `struct v4l2_format` of buffer type `type_` holding this format.
    /// Values that do not fit the mplane struct's `u8` fields saturate.
    pub fn to_v4l2(&self, type_: u32) -> bindings::v4l2_format {
        let sat = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
        let fmt = if is_mplane(type_) {
            let mut plane_fmt: [bindings::v4l2_plane_pix_format;
                bindings::VIDEO_MAX_PLANES as usize] = Default::default();
            for (dst, src) in plane_fmt.iter_mut().zip(&self.planes) {
                dst.bytesperline = src.bytesperline;
                dst.sizeimage = src.sizeimage;
            }
            bindings::v4l2_format__bindgen_ty_1 {
                pix_mp: bindings::v4l2_pix_format_mplane {
                    width: self.width,
                    height: self.height,
                    pixelformat: self.pixelformat,
                    field: self.field,
                    colorspace: self.colorspace,
                    plane_fmt,
                    num_planes: sat(self.planes.len().max(1) as u32),
                    flags: 0,
                    __bindgen_anon_1: bindings::v4l2_pix_format_mplane__bindgen_ty_1 {
                        ycbcr_enc: sat(self.ycbcr_enc),
                    },
                    quantization: sat(self.quantization),
                    xfer_func: sat(self.xfer_func),
                    reserved: Default::default(),
                },
            }
        } else {
            let plane = self.planes.first().copied().unwrap_or_default();
            bindings::v4l2_format__bindgen_ty_1 {
                pix: bindings::v4l2_pix_format {
                    width: self.width,
                    height: self.height,
                    pixelformat: self.pixelformat,
                    field: self.field,
                    bytesperline: plane.bytesperline,
                    sizeimage: plane.sizeimage,
                    colorspace: self.colorspace,
                    priv_: 0,
                    flags: 0,
                    __bindgen_anon_1: bindings::v4l2_pix_format__bindgen_ty_1 {
                        ycbcr_enc: self.ycbcr_enc,
                    },
                    quantization: self.quantization,
                    xfer_func: self.xfer_func,
                },
            }
        };
        bindings::v4l2_format { type_, fmt }
    }
}

/// What `poll(2)` reported for a V4L2 node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeReady {
    /// `POLLIN`: a CAPTURE buffer can be dequeued.
    pub capture: bool,
    /// `POLLOUT`: an OUTPUT buffer can be dequeued.
    pub output: bool,
    /// `POLLPRI`: an event is pending.
    pub event: bool,
    /// `POLLERR`: nothing is queued that could complete.
    pub error: bool,
}

/// Waits up to `timeout` for the node to have a buffer or an event ready.
/// `want_capture: false` leaves `POLLIN` out (after a `LAST` buffer the
/// kernel reports CAPTURE readable until the next start). An interrupted
/// wait reports nothing ready.
pub fn poll_node(
    fd: BorrowedFd<'_>,
    want_capture: bool,
    timeout: Duration,
) -> io::Result<NodeReady> {
    let mut flags = PollFlags::OUT | PollFlags::PRI;
    if want_capture {
        flags |= PollFlags::IN;
    }
    let mut fds = [PollFd::new(&fd, flags)];
    let ts = Timespec::try_from(timeout)
        .map_err(|_| io::Error::other(format!("poll timeout {timeout:?} out of range")))?;
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok(NodeReady::default()),
        Err(e) => return Err(e.into()),
    }
    let r = fds[0].revents();
    Ok(NodeReady {
        capture: r.contains(PollFlags::IN),
        output: r.contains(PollFlags::OUT),
        event: r.contains(PollFlags::PRI),
        error: r.intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_through_both_apis() {
        let f = PixFormat {
            width: 640,
            height: 480,
            pixelformat: u32::from_le_bytes(*b"YU12"),
            field: 1,
            colorspace: 8,
            ycbcr_enc: 1,
            quantization: 2,
            xfer_func: 3,
            planes: vec![PlanePixFormat {
                bytesperline: 640,
                sizeimage: 640 * 480 * 3 / 2,
            }],
        };
        for t in [
            bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_OUTPUT,
            bindings::v4l2_buf_type_V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE,
        ] {
            assert_eq!(PixFormat::from_v4l2(&f.to_v4l2(t)), Some(f.clone()));
        }
        let mut other = f.to_v4l2(1);
        other.type_ = bindings::v4l2_buf_type_V4L2_BUF_TYPE_META_CAPTURE;
        assert_eq!(PixFormat::from_v4l2(&other), None);
    }
}
