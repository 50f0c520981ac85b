//! A write-back CPU cache model with 64-byte lines, one per cacheable region
//! when `CheckerConfig::simulate_cache` is on.
//!
//! The region's mapping plays DRAM; `shadow` is what the CPU sees. Lines are
//! filled on CPU access, become dirty when a CPU write changes them, are
//! written back by a clean (`sync_for_device`) and dropped by an invalidate
//! (`sync_for_cpu`). There is no spontaneous eviction, so results are
//! deterministic: a missed sync corrupts exactly the affected lines.

/// Cache line size of the model (the common value on arm64 and x86).
pub const CACHE_LINE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineState {
    Invalid,
    Clean,
    Dirty,
}

#[derive(Debug)]
pub(crate) struct CacheSim {
    shadow: Vec<u8>,
    lines: Vec<LineState>,
    /// Shadow contents at the start of the current CPU write (reused buffer).
    before_write: Vec<u8>,
}

impl CacheSim {
    pub(crate) fn new(size: usize) -> CacheSim {
        CacheSim {
            shadow: vec![0; size],
            lines: vec![LineState::Invalid; size.div_ceil(CACHE_LINE)],
            before_write: Vec::new(),
        }
    }

    fn line_range(&self, line: usize) -> std::ops::Range<usize> {
        let start = line * CACHE_LINE;
        start..(start + CACHE_LINE).min(self.shadow.len())
    }

    /// What the CPU sees.
    pub(crate) fn view(&self) -> &[u8] {
        &self.shadow
    }

    pub(crate) fn view_mut(&mut self) -> &mut [u8] {
        &mut self.shadow
    }

    /// CPU access: every invalid line is loaded from DRAM.
    pub(crate) fn fill(&mut self, dram: &[u8]) {
        for line in 0..self.lines.len() {
            if self.lines[line] == LineState::Invalid {
                let r = self.line_range(line);
                self.shadow[r.clone()].copy_from_slice(&dram[r]);
                self.lines[line] = LineState::Clean;
            }
        }
    }

    /// Start of a CPU write: remember the current contents.
    pub(crate) fn begin_write(&mut self) {
        self.before_write.clear();
        self.before_write.extend_from_slice(&self.shadow);
    }

    /// End of a CPU write: lines whose bytes changed become dirty.
    pub(crate) fn end_write(&mut self) {
        for line in 0..self.lines.len() {
            let r = self.line_range(line);
            if self.shadow[r.clone()] != self.before_write[r] {
                self.lines[line] = LineState::Dirty;
            }
        }
    }

    /// Clean: write dirty lines back to DRAM. Returns how many were written.
    pub(crate) fn clean(&mut self, dram: &mut [u8]) -> usize {
        let mut written = 0;
        for line in 0..self.lines.len() {
            if self.lines[line] == LineState::Dirty {
                let r = self.line_range(line);
                dram[r.clone()].copy_from_slice(&self.shadow[r]);
                self.lines[line] = LineState::Clean;
                written += 1;
            }
        }
        written
    }

    /// Invalidate: drop every line (dirty data is lost, as on real hardware
    /// when a device-owned buffer is invalidated).
    pub(crate) fn invalidate(&mut self) {
        self.lines.fill(LineState::Invalid);
    }

    #[cfg(test)]
    pub(crate) fn states(&self) -> &[LineState] {
        &self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_lifecycle_with_partial_last_line() {
        let mut dram = vec![7u8; 130]; // 3 lines, the last one 2 bytes
        let mut c = CacheSim::new(130);
        assert_eq!(c.states(), &[LineState::Invalid; 3]);
        c.fill(&dram);
        assert_eq!(c.view(), &dram[..]);
        assert_eq!(c.states(), &[LineState::Clean; 3]);
        c.begin_write();
        c.view_mut()[129] = 1;
        c.end_write();
        assert_eq!(
            c.states(),
            &[LineState::Clean, LineState::Clean, LineState::Dirty]
        );
        assert_eq!(dram[129], 7, "write-back cache: DRAM untouched until clean");
        assert_eq!(c.clean(&mut dram), 1);
        assert_eq!(dram[129], 1);
        dram[0] = 9; // the device writes DRAM
        assert_eq!(c.view()[0], 7, "stale until invalidated");
        c.invalidate();
        c.fill(&dram);
        assert_eq!(c.view()[0], 9);
    }
}
