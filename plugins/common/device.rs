//! Which VPU an element drives: the one place backends are chosen.
//!
//! The `device` property of every element takes `auto` (a kernel codec node
//! that offers the codec, else the emulated VPU), `emu` (the emulated VPU),
//! or a path (`/dev/videoN`). All elements of a process that use the emulated
//! VPU share one core, each with its own session, like elements sharing one
//! kernel node.
//!
//! The emulated VPU's coherency checker is always on; `GST_VPU_CHECKER`
//! chooses how strict it is: `report` (default: violations are counted and
//! logged), `simulate` (also model a write-back CPU cache, so a missed sync
//! corrupts data as on a non-coherent SoC) or `panic` (abort on the first
//! violation, for tests).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::m2m::{Device, DeviceInfo, M2mError, PixelFormat, Role, Session};
use crate::mem::{Checker, CheckerConfig, MemoryKind};
use crate::sys::DmaBackend;
use crate::vpu::{EmuConfig, EmuVpu};

/// Environment variable that sets the emulated VPU's checker mode.
pub(crate) const CHECKER_ENV: &str = "GST_VPU_CHECKER";

/// The value of a `device` property.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum DeviceChoice {
    /// A kernel node offering the codec, else the emulated VPU.
    #[default]
    Auto,
    /// The in-crate emulated VPU.
    Emulated,
    /// A kernel V4L2 M2M node.
    Path(PathBuf),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Emulated => f.write_str("emu"),
            DeviceChoice::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A `device` value that is none of `auto`, `emu` or an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device \"{0}\" is not auto, emu or an absolute path like /dev/video0")]
pub(crate) struct BadDevice(pub String);

impl FromStr for DeviceChoice {
    type Err = BadDevice;

    fn from_str(s: &str) -> Result<DeviceChoice, BadDevice> {
        match s.trim() {
            "" | "auto" => Ok(DeviceChoice::Auto),
            "emu" => Ok(DeviceChoice::Emulated),
            p if p.starts_with('/') => Ok(DeviceChoice::Path(PathBuf::from(p))),
            other => Err(BadDevice(other.to_owned())),
        }
    }
}

/// The checker configuration `GST_VPU_CHECKER` asks for.
fn checker_config() -> CheckerConfig {
    let mode = std::env::var(CHECKER_ENV).unwrap_or_default();
    match mode.as_str() {
        "simulate" => CheckerConfig {
            simulate_cache: true,
            ..CheckerConfig::default()
        },
        "panic" => CheckerConfig {
            panic_on_violation: true,
            ..CheckerConfig::default()
        },
        "" | "report" => CheckerConfig::default(),
        other => {
            log::warn!("{CHECKER_ENV}={other} is not report, simulate or panic: using report");
            CheckerConfig::default()
        }
    }
}

/// The process's emulated VPU, booted on first use.
pub(crate) fn emulated() -> Result<EmuVpu, M2mError> {
    static VPU: Mutex<Option<EmuVpu>> = Mutex::new(None);
    let mut vpu = VPU.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(v) = vpu.as_ref() {
        return Ok(v.clone());
    }
    let checker = Checker::new(checker_config());
    let v = EmuVpu::new(EmuConfig {
        checker,
        ..EmuConfig::default()
    })?;
    log::info!("emulated VPU booted");
    *vpu = Some(v.clone());
    Ok(v)
}

/// An open session and what it runs on.
pub(crate) struct Opened {
    pub session: Box<dyn Session>,
    pub info: DeviceInfo,
    /// The checker watching the session's memory (the emulated VPU's).
    pub checker: Option<Arc<Checker>>,
    /// What buffers the session allocates are: real dma-bufs or memfds.
    /// Known before allocating, so that caps (`memory:DMABuf`) can be
    /// negotiated first.
    pub memory: MemoryKind,
}

/// Opens a `role` session for `codec` on the chosen device.
pub(crate) fn open(
    choice: &DeviceChoice,
    role: Role,
    codec: PixelFormat,
) -> Result<Opened, M2mError> {
    match choice {
        // Device discovery (a kernel node offering the codec) is not in this
        // build: auto means the emulated VPU.
        DeviceChoice::Auto | DeviceChoice::Emulated => {
            let vpu = emulated()?;
            let session = vpu.open(role, codec)?;
            Ok(Opened {
                session,
                info: vpu.info(),
                checker: Some(vpu.checker()),
                // `emulated()` boots with `EmuConfig::default()`, whose
                // backend is `DmaBackend::probe()`: dma-heap and udmabuf
                // allocate dma-bufs, memfd does not.
                memory: match DmaBackend::probe() {
                    DmaBackend::Memfd => MemoryKind::Memfd,
                    DmaBackend::DmaHeap | DmaBackend::Udmabuf => MemoryKind::DmaBuf,
                },
            })
        }
        DeviceChoice::Path(path) => {
            let device = crate::v4l2::KernelDevice::probe(path)?;
            let session = device.open(role, codec)?;
            Ok(Opened {
                session,
                info: device.info(),
                checker: Some(Arc::clone(device.checker())),
                // Every buffer the kernel backend allocates is a driver
                // buffer exported with VIDIOC_EXPBUF: a dma-buf.
                memory: MemoryKind::DmaBuf,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values_parse() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("emu".parse(), Ok(DeviceChoice::Emulated));
        assert_eq!(
            "/dev/video1".parse(),
            Ok(DeviceChoice::Path("/dev/video1".into()))
        );
        let e = "video1".parse::<DeviceChoice>().unwrap_err();
        assert!(e.to_string().contains("\"video1\""), "{e}");
        for c in [
            DeviceChoice::Auto,
            DeviceChoice::Emulated,
            DeviceChoice::Path("/dev/video0".into()),
        ] {
            assert_eq!(c.to_string().parse(), Ok(c));
        }
    }

    #[test]
    fn elements_share_one_emulated_vpu_with_separate_sessions() {
        let a = open(&DeviceChoice::Emulated, Role::Decoder, PixelFormat::Fwht).unwrap();
        let b = open(&DeviceChoice::Auto, Role::Encoder, PixelFormat::Fwht).unwrap();
        let (ca, cb) = (a.checker.unwrap(), b.checker.unwrap());
        assert!(Arc::ptr_eq(&ca, &cb), "one core for the process");
        assert_eq!(a.info.kind, crate::m2m::DeviceKind::Emulated);
        assert_eq!(a.session.role(), Role::Decoder);
        assert_eq!(b.session.role(), Role::Encoder);
    }

    #[test]
    fn a_missing_or_wrong_kernel_node_is_a_clear_error_naming_it() {
        for path in ["/dev/video-none-here", "/dev/null"] {
            let Err(e) = open(
                &DeviceChoice::Path(path.into()),
                Role::Decoder,
                PixelFormat::Fwht,
            ) else {
                panic!("{path} is no codec node");
            };
            assert!(e.to_string().contains(path), "{e}");
        }
    }
}
