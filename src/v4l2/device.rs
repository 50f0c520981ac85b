//! [`KernelDevice`]: one V4L2 stateful M2M codec node.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use v4l2r::QueueType;
use v4l2r::bindings;
use v4l2r::ioctl::{Capabilities, Capability, enum_fmt, querycap};

use super::session::KernelSession;
use crate::m2m::{Device, DeviceInfo, DeviceKind, M2mError, PixelFormat, Role, Session};
use crate::mem::{Checker, CheckerConfig};

/// How long a session waits for a device that holds work and completes
/// nothing before calling it hung. Generous: vicodec under an emulated CPU
/// takes tens of milliseconds per frame.
pub(super) const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens `path` read-write, non-blocking, close-on-exec.
pub(super) fn open_node(path: &Path) -> Result<File, M2mError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| M2mError::Kernel(format!("cannot open {}: {e}", path.display())))
}

/// One format a queue of the node enumerates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Offered {
    pub fourcc: u32,
}

/// `VIDIOC_ENUM_FMT` over every index of `queue`.
pub(super) fn enumerate_formats(fd: &File, queue: QueueType) -> Vec<Offered> {
    let mut out = Vec::new();
    for index in 0..256 {
        match enum_fmt::<bindings::v4l2_fmtdesc>(fd, queue, index) {
            Ok(d) => out.push(Offered {
                fourcc: d.pixelformat,
            }),
            Err(_) => break,
        }
    }
    out
}

/// A kernel V4L2 stateful memory-to-memory codec node (`/dev/videoN`).
///
/// Opening it checks that it is one: `VIDIOC_QUERYCAP` says M2M (single- or
/// multi-planar) and a queue enumerates a coded format the contract knows.
/// Each [`Device::open`] opens the node again: one file handle per session,
/// as V4L2 M2M drivers keep one context per handle.
#[derive(Debug, Clone)]
pub struct KernelDevice {
    path: PathBuf,
    card: String,
    driver: String,
    mplane: bool,
    codecs: Vec<(Role, PixelFormat)>,
    checker: Arc<Checker>,
}

impl KernelDevice {
    /// Probes `path`. Errors name the path and what it is instead.
    pub fn probe(path: impl AsRef<Path>) -> Result<KernelDevice, M2mError> {
        KernelDevice::with_checker(path, Checker::new(CheckerConfig::default()))
    }

    /// Like [`KernelDevice::probe`], with the checker that watches the
    /// sessions' buffer ownership (CPU vs device).
    pub fn with_checker(
        path: impl AsRef<Path>,
        checker: Arc<Checker>,
    ) -> Result<KernelDevice, M2mError> {
        let path = path.as_ref().to_path_buf();
        let fd = open_node(&path)?;
        let cap: Capability = querycap(&fd).map_err(|e| {
            M2mError::Kernel(format!(
                "{} is not a V4L2 device (VIDIOC_QUERYCAP: {e})",
                path.display()
            ))
        })?;
        let caps = cap.device_caps();
        let mplane = if caps.contains(Capabilities::VIDEO_M2M_MPLANE) {
            true
        } else if caps.contains(Capabilities::VIDEO_M2M) {
            false
        } else {
            return Err(M2mError::Kernel(format!(
                "{} ({}, driver {}) is not a V4L2 memory-to-memory node (capabilities {caps:?})",
                path.display(),
                cap.card,
                cap.driver
            )));
        };
        let (out_q, cap_q) = if mplane {
            (QueueType::VideoOutputMplane, QueueType::VideoCaptureMplane)
        } else {
            (QueueType::VideoOutput, QueueType::VideoCapture)
        };
        let mut codecs = Vec::new();
        for (queue, role) in [(out_q, Role::Decoder), (cap_q, Role::Encoder)] {
            for f in enumerate_formats(&fd, queue) {
                if let Some(p) = PixelFormat::from_fourcc(f.fourcc).filter(|p| p.is_coded()) {
                    codecs.push((role, p));
                }
            }
        }
        if codecs.is_empty() {
            return Err(M2mError::Kernel(format!(
                "{} ({}, driver {}) is an M2M node but not a stateful codec: no queue \
                 offers a coded format this plugin knows (OUTPUT: {}; CAPTURE: {})",
                path.display(),
                cap.card,
                cap.driver,
                describe(&enumerate_formats(&fd, out_q)),
                describe(&enumerate_formats(&fd, cap_q)),
            )));
        }
        log::info!(
            "{}: {} (driver {}), {}-planar, {codecs:?}",
            path.display(),
            cap.card,
            cap.driver,
            if mplane { "multi" } else { "single" }
        );
        Ok(KernelDevice {
            path,
            card: cap.card,
            driver: cap.driver,
            mplane,
            codecs,
            checker,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The driver's name (`vicodec`, `hantro-vpu` ...).
    pub fn driver(&self) -> &str {
        &self.driver
    }

    /// True if the node speaks the multi-planar API.
    pub fn is_mplane(&self) -> bool {
        self.mplane
    }

    pub fn checker(&self) -> &Arc<Checker> {
        &self.checker
    }

    /// Opens a session as the concrete type (named controls, statistics).
    pub fn open_session(&self, role: Role, codec: PixelFormat) -> Result<KernelSession, M2mError> {
        if !self.codecs.contains(&(role, codec)) {
            let offered: Vec<String> = self
                .codecs
                .iter()
                .map(|(r, c)| format!("{c} {r}"))
                .collect();
            return Err(M2mError::Kernel(format!(
                "{} ({}) has no {role} for {codec}; it offers: {}",
                self.path.display(),
                self.card,
                offered.join(", ")
            )));
        }
        KernelSession::open(self, role, codec)
    }
}

fn describe(formats: &[Offered]) -> String {
    if formats.is_empty() {
        return "none".into();
    }
    let mut s = String::new();
    for (i, f) in formats.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(s, "{sep}{}", super::format::fourcc_name(f.fourcc));
    }
    s
}

impl Device for KernelDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            name: format!("{} ({})", self.card, self.path.display()),
            kind: DeviceKind::Kernel(self.path.clone()),
            codecs: self.codecs.clone(),
        }
    }

    fn open(&self, role: Role, codec: PixelFormat) -> Result<Box<dyn Session>, M2mError> {
        Ok(Box::new(self.open_session(role, codec)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_node_is_an_error_naming_it() {
        let e = KernelDevice::probe("/dev/video-none-here").unwrap_err();
        assert!(e.to_string().contains("/dev/video-none-here"), "{e}");
    }

    #[test]
    fn a_file_that_is_no_v4l2_node_is_an_error_naming_it() {
        let e = KernelDevice::probe("/dev/null").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("/dev/null") && text.contains("V4L2"),
            "{text}"
        );
    }
}
