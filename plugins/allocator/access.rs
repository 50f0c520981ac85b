//! What happens to a region when GStreamer maps or unmaps one of our
//! memories on the CPU: lazy cache maintenance, ownership checks and, under
//! cache simulation, the staging copy. Safe code; `imp.rs` calls it from the
//! allocator's map/unmap trampolines.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::mem::{Coherency, Owner, Region};

use super::imp::CAT;

/// Per wrapped (root) GstMemory: the region, whether the device may still be
/// using it, and the staging copy used under cache simulation.
#[derive(Debug)]
pub(super) struct Wrapped {
    pub(super) region: Arc<Region>,
    /// Set while the region is queued to the device: a CPU map must then not
    /// take the region back with a lazy `sync_for_cpu`.
    device_busy: AtomicBool,
    /// Serialises lazy syncs, so that concurrent first maps sync once.
    claim: Mutex<()>,
    /// `Some` for cacheable regions whose checker simulates a CPU cache.
    staging: Option<Mutex<Staging>>,
    /// Run once when GStreamer frees the memory (see `wrap_with_release`).
    release: Release,
}

/// What to do once the memory is freed: typically hand the region back to
/// the device's queue.
pub(super) type ReleaseFn = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Release(Mutex<Option<ReleaseFn>>);

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.lock().map(|r| r.is_some()).unwrap_or(false);
        f.write_str(if set {
            "Release(Some)"
        } else {
            "Release(None)"
        })
    }
}

/// The CPU's view of a cache-simulated region while GStreamer has it mapped.
#[derive(Debug, Default)]
struct Staging {
    /// Exactly `region.size()` bytes once first mapped; never resized while
    /// `maps > 0`, so the pointer handed to GStreamer stays valid.
    bytes: Vec<u8>,
    /// Outstanding GStreamer maps of the memory and its sub-memories.
    maps: usize,
    /// `bytes` as filled at the first map, kept once a WRITE map happened:
    /// at the last unmap only the bytes that differ go back to the region.
    before_write: Option<Vec<u8>>,
}

/// Where a map's pointer comes from.
pub(super) enum MapPlan {
    /// The parent's fd mapping (`MAP_SHARED`: the same bytes the region's
    /// own mapping and guards see).
    Parent,
    /// The staging copy (cache simulation); do not call the parent.
    Staging(*mut u8),
}

impl Wrapped {
    pub(super) fn new(region: Arc<Region>, release: Option<ReleaseFn>) -> Wrapped {
        let simulated =
            region.coherency() == Coherency::Cacheable && region.checker().config().simulate_cache;
        Wrapped {
            region,
            device_busy: AtomicBool::new(false),
            claim: Mutex::new(()),
            staging: simulated.then(|| Mutex::new(Staging::default())),
            release: Release(Mutex::new(release)),
        }
    }

    /// Takes the release callback (at most once).
    pub(super) fn take_release(&self) -> Option<ReleaseFn> {
        self.release
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    pub(super) fn set_device_busy(&self, busy: bool) {
        self.device_busy.store(busy, Ordering::Release);
    }

    pub(super) fn is_simulated(&self) -> bool {
        self.staging.is_some()
    }

    fn lock_staging(staging: &Mutex<Staging>) -> MutexGuard<'_, Staging> {
        // Every update of `Staging` is completed before anything that can
        // panic (region guards), so a poisoned lock holds consistent state.
        staging
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lazy `sync_for_cpu`: only when the device owns the region and has
    /// released it (not busy). The sync is counted by the region's checker.
    fn claim_for_cpu(&self) {
        let region = &self.region;
        let wanted =
            || region.owner() == Owner::Device && !self.device_busy.load(Ordering::Acquire);
        if !wanted() {
            return;
        }
        // Checked again under the lock: another map may have synced.
        let _claim = self
            .claim
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !wanted() {
            return;
        }
        match region.sync_for_cpu() {
            Ok(()) => gst::trace!(CAT, "{}: lazy sync_for_cpu on CPU map", region.name()),
            Err(e) => gst::error!(
                CAT,
                "{}: sync_for_cpu on CPU map failed: {e}",
                region.name()
            ),
        }
    }

    /// Before a GStreamer CPU map. May panic only through the region's own
    /// `panic_on_violation`; the caller catches that and fails the map.
    pub(super) fn before_map(&self, write: bool) -> MapPlan {
        let region = &self.region;
        if region.coherency() == Coherency::Coherent {
            return MapPlan::Parent;
        }
        self.claim_for_cpu();
        let Some(staging) = &self.staging else {
            // The parent maps the fd; the region lock is not held during the
            // map. The device still owning the region means no sync could be
            // done (busy, or the sync failed): a short guard lets the checker
            // report the access exactly as a Rust-side access would be.
            if region.owner() == Owner::Device {
                if write {
                    drop(region.cpu_write());
                } else {
                    drop(region.cpu_read());
                }
            }
            return MapPlan::Parent;
        };
        let mut s = Self::lock_staging(staging);
        if s.maps == 0 {
            // The guard checks ownership (reporting a violation) and, under
            // simulation, yields what the CPU cache holds: stale lines
            // included if the device still owns the region.
            let bytes = if write {
                region.cpu_write().to_vec()
            } else {
                region.cpu_read().to_vec()
            };
            s.bytes = bytes;
            s.before_write = None;
        }
        if write && s.before_write.is_none() {
            s.before_write = Some(s.bytes.clone());
        }
        s.maps += 1;
        MapPlan::Staging(s.bytes.as_mut_ptr())
    }

    /// After a GStreamer CPU unmap of a map with the given flags. For the
    /// parent path, call it after the parent's unmap.
    pub(super) fn after_unmap(&self, write: bool) {
        let region = &self.region;
        if region.coherency() == Coherency::Coherent {
            return;
        }
        let Some(staging) = &self.staging else {
            if write {
                // Tells the checker the CPU wrote (the next sync_for_device
                // cleans it), and reports if the device took the region
                // while it was mapped for writing.
                drop(region.cpu_write());
            }
            return;
        };
        let mut s = Self::lock_staging(staging);
        let Some(remaining) = s.maps.checked_sub(1) else {
            gst::error!(CAT, "{}: unmap without a map", region.name());
            return;
        };
        s.maps = remaining;
        if remaining > 0 {
            return;
        }
        let Some(before) = s.before_write.take() else {
            return;
        };
        // Write back exactly the bytes GStreamer changed, through a CPU
        // guard: they become dirty lines of the simulated cache, reaching
        // memory only at the next sync_for_device.
        let mut guard = region.cpu_write();
        for ((dst, &new), &old) in guard.iter_mut().zip(&s.bytes).zip(&before) {
            if new != old {
                *dst = new;
            }
        }
    }
}
