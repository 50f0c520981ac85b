//! The coherency checker: counts cache maintenance and records ownership
//! violations of cacheable regions.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// How the checker behaves. `Default` is "record violations, no simulation".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckerConfig {
    /// Model a write-back CPU cache with 64-byte lines for every cacheable
    /// region, so that a missed sync shows up as stale data (see `Region`).
    pub simulate_cache: bool,
    /// Panic (after recording) on the first violation instead of carrying on.
    pub panic_on_violation: bool,
}

/// Which ownership transfer a violation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Memory the CPU owns reached the device: `sync_for_device` was missing.
    CpuToDevice,
    /// Memory the device owns reached the CPU: `sync_for_cpu` was missing.
    DeviceToCpu,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::CpuToDevice => "CPU->device",
            Direction::DeviceToCpu => "device->CPU",
        })
    }
}

/// One access to a cacheable region by the side that did not own it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The region's name.
    pub buffer: String,
    pub direction: Direction,
    /// `cpu_read`, `cpu_write`, `device_read` or `device_write`.
    pub operation: String,
    /// A sentence saying what happened and which sync was missing.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "coherency violation on buffer \"{}\" ({} transfer, {}): {}",
            self.buffer, self.direction, self.operation, self.detail
        )
    }
}

/// Counters of cache maintenance actually performed (coherent regions and
/// no-op syncs are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// `sync_for_device` on cacheable regions (clean).
    pub syncs_for_device: u64,
    /// `sync_for_cpu` on cacheable regions (invalidate).
    pub syncs_for_cpu: u64,
    /// `DMA_BUF_IOCTL_SYNC` calls issued by CPU guards (START and END each count).
    pub dma_buf_ioctls: u64,
    /// Of those, how many the kernel refused (logged as errors).
    pub dma_buf_ioctl_errors: u64,
    /// 64-byte lines written back by the cache simulation.
    pub lines_written_back: u64,
}

/// How many violations are kept for inspection; later ones are only counted.
const MAX_KEPT_VIOLATIONS: usize = 4096;

/// Shared (`Arc`) by every region of one VPU / pipeline. Thread-safe.
#[derive(Debug)]
pub struct Checker {
    config: CheckerConfig,
    violations: Mutex<Vec<Violation>>,
    violation_count: AtomicU64,
    syncs_for_device: AtomicU64,
    syncs_for_cpu: AtomicU64,
    dma_buf_ioctls: AtomicU64,
    dma_buf_ioctl_errors: AtomicU64,
    lines_written_back: AtomicU64,
}

impl Checker {
    pub fn new(config: CheckerConfig) -> Arc<Checker> {
        Arc::new(Checker {
            config,
            violations: Mutex::new(Vec::new()),
            violation_count: AtomicU64::new(0),
            syncs_for_device: AtomicU64::new(0),
            syncs_for_cpu: AtomicU64::new(0),
            dma_buf_ioctls: AtomicU64::new(0),
            dma_buf_ioctl_errors: AtomicU64::new(0),
            lines_written_back: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> CheckerConfig {
        self.config
    }

    /// The recorded violations (the first 4096 since the last `take`).
    pub fn violations(&self) -> Vec<Violation> {
        self.lock().clone()
    }

    /// Returns and forgets the recorded violations (the count is kept).
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut *self.lock())
    }

    /// All violations ever recorded, including those beyond the kept ones.
    pub fn violation_count(&self) -> usize {
        usize::try_from(self.violation_count.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    pub fn stats(&self) -> SyncStats {
        SyncStats {
            syncs_for_device: self.syncs_for_device.load(Ordering::Relaxed),
            syncs_for_cpu: self.syncs_for_cpu.load(Ordering::Relaxed),
            dma_buf_ioctls: self.dma_buf_ioctls.load(Ordering::Relaxed),
            dma_buf_ioctl_errors: self.dma_buf_ioctl_errors.load(Ordering::Relaxed),
            lines_written_back: self.lines_written_back.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Violation>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.violations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn record(&self, violation: Violation) {
        log::warn!("{violation}");
        self.violation_count.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.lock();
        if kept.len() < MAX_KEPT_VIOLATIONS {
            kept.push(violation);
        }
    }

    pub(crate) fn count_sync_for_device(&self, lines_written_back: usize) {
        self.syncs_for_device.fetch_add(1, Ordering::Relaxed);
        self.lines_written_back
            .fetch_add(lines_written_back as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_sync_for_cpu(&self) {
        self.syncs_for_cpu.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_dma_buf_ioctl(&self, ok: bool) {
        self.dma_buf_ioctls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.dma_buf_ioctl_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_buffer_direction_and_operation() {
        let v = Violation {
            buffer: "capture-2".into(),
            direction: Direction::DeviceToCpu,
            operation: "cpu_read".into(),
            detail: "CPU read of \"capture-2\" while the device owns it: missing sync_for_cpu"
                .into(),
        };
        let s = v.to_string();
        assert!(s.contains("capture-2"), "{s}");
        assert!(s.contains("device->CPU"), "{s}");
        assert!(s.contains("cpu_read"), "{s}");
        assert!(s.contains("missing sync_for_cpu"), "{s}");
    }

    #[test]
    fn keeps_a_bounded_number_but_counts_all() {
        let c = Checker::new(CheckerConfig::default());
        let v = Violation {
            buffer: "b".into(),
            direction: Direction::CpuToDevice,
            operation: "device_read".into(),
            detail: "d".into(),
        };
        for _ in 0..MAX_KEPT_VIOLATIONS + 10 {
            c.record(v.clone());
        }
        assert_eq!(c.violation_count(), MAX_KEPT_VIOLATIONS + 10);
        assert_eq!(c.take_violations().len(), MAX_KEPT_VIOLATIONS);
        assert!(c.violations().is_empty());
        assert_eq!(c.violation_count(), MAX_KEPT_VIOLATIONS + 10);
    }
}
