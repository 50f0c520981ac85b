//! What the decoders' and encoders' `stats` structures share: the VPU-wide
//! counters of the coherency checker and the mean VPU time per frame.

use std::time::Duration;

use crate::mem::Checker;

/// `cache-syncs` (cache maintenance on cacheable regions, both directions)
/// and `coherency-violations` of `checker`: VPU-wide counters, 0 before a
/// session exists.
pub(crate) fn checker_counts(checker: Option<&Checker>) -> (u64, u64) {
    checker.map_or((0, 0), |c| {
        let s = c.stats();
        (
            s.syncs_for_device + s.syncs_for_cpu,
            c.violation_count() as u64,
        )
    })
}

/// Time frames spent in the VPU, from queueing to done.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct VpuTime {
    total: Duration,
    frames: u64,
}

impl VpuTime {
    pub(crate) fn add(&mut self, frame: Duration) {
        self.total += frame;
        self.frames += 1;
    }

    /// `vpu-time-per-frame-us`: the mean, 0 before the first frame.
    pub(crate) fn mean_us(&self) -> u64 {
        if self.frames == 0 {
            return 0;
        }
        (self.total.as_micros() / u128::from(self.frames)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_zero_before_a_frame_then_the_average() {
        let mut t = VpuTime::default();
        assert_eq!(t.mean_us(), 0);
        t.add(Duration::from_micros(100));
        t.add(Duration::from_micros(300));
        assert_eq!(t.mean_us(), 200);
        assert_eq!(checker_counts(None), (0, 0));
    }
}
