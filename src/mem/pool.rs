//! A simple pool of equally sized regions of one coherency. The GStreamer
//! buffer pool builds on top of this later; here there is no blocking and no
//! recycling policy beyond "free list".

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sys::DmaBackend;

use super::checker::Checker;
use super::error::MemError;
use super::region::{Coherency, Region};

#[derive(Debug, Default)]
struct PoolState {
    free: Vec<Arc<Region>>,
    /// Ids of every region this pool allocated.
    members: HashSet<u64>,
    grown: usize,
}

/// Fixed-size regions named `<pool>-<n>`, handed out and taken back by
/// `Arc`. Thread-safe.
#[derive(Debug)]
pub struct Pool {
    name: String,
    region_size: usize,
    coherency: Coherency,
    backend: DmaBackend,
    checker: Arc<Checker>,
    state: Mutex<PoolState>,
}

impl Pool {
    /// Allocates `initial_count` regions up front.
    pub fn new(
        name: &str,
        region_size: usize,
        initial_count: usize,
        coherency: Coherency,
        backend: DmaBackend,
        checker: &Arc<Checker>,
    ) -> Result<Pool, MemError> {
        let pool = Pool {
            name: name.into(),
            region_size,
            coherency,
            backend,
            checker: Arc::clone(checker),
            state: Mutex::new(PoolState::default()),
        };
        for _ in 0..initial_count {
            let region = pool.allocate_member()?;
            pool.lock().free.push(region);
        }
        Ok(pool)
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // State changes are single push/pop/insert operations: consistent even
        // if a holder panicked.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn allocate_member(&self) -> Result<Arc<Region>, MemError> {
        let index = self.lock().members.len();
        let region = Region::allocate(
            &format!("{}-{index}", self.name),
            self.region_size,
            self.coherency,
            self.backend,
            &self.checker,
        )?;
        self.lock().members.insert(region.id());
        Ok(region)
    }

    /// A free region, or `None` if all are in use. Never blocks on the
    /// regions' users.
    pub fn acquire(&self) -> Option<Arc<Region>> {
        self.lock().free.pop()
    }

    /// A free region, allocating a new one if all are in use (counted in
    /// [`grown`](Self::grown)).
    pub fn acquire_or_grow(&self) -> Result<Arc<Region>, MemError> {
        if let Some(region) = self.acquire() {
            return Ok(region);
        }
        let region = self.allocate_member()?;
        self.lock().grown += 1;
        log::debug!(
            "pool {}: grown to {} regions of {} bytes",
            self.name,
            self.len(),
            self.region_size
        );
        Ok(region)
    }

    /// Returns a region to the free list. Fails (dropping the `Arc`) for
    /// regions of another pool and for double releases.
    pub fn release(&self, region: Arc<Region>) -> Result<(), MemError> {
        let mut state = self.lock();
        let id = region.id();
        if !state.members.contains(&id) {
            return Err(MemError::ForeignRegion {
                pool: self.name.clone(),
                region: region.name().into(),
                id,
            });
        }
        if state.free.iter().any(|r| r.id() == id) {
            return Err(MemError::DoubleRelease {
                pool: self.name.clone(),
                region: region.name().into(),
                id,
            });
        }
        state.free.push(region);
        Ok(())
    }

    /// How many regions the pool has allocated (free or in use).
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many regions are free.
    pub fn free(&self) -> usize {
        self.lock().free.len()
    }

    /// How many regions `acquire_or_grow` had to add.
    pub fn grown(&self) -> usize {
        self.lock().grown
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn region_size(&self) -> usize {
        self.region_size
    }

    pub fn coherency(&self) -> Coherency {
        self.coherency
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::checker::CheckerConfig;

    fn pool(name: &str, n: usize) -> Pool {
        let chk = Checker::new(CheckerConfig::default());
        Pool::new(name, 1000, n, Coherency::Cacheable, DmaBackend::Memfd, &chk).unwrap()
    }

    #[test]
    fn acquire_release_and_grow() {
        let p = pool("cap", 2);
        assert_eq!((p.len(), p.free()), (2, 2));
        let a = p.acquire().unwrap();
        let b = p.acquire().unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(a.size(), 1000);
        assert!(a.name().starts_with("cap-"));
        assert!(p.acquire().is_none(), "non-blocking and empty");
        let c = p.acquire_or_grow().unwrap();
        assert_eq!((p.len(), p.free(), p.grown()), (3, 0, 1));
        for r in [a, b, c] {
            p.release(r).unwrap();
        }
        assert_eq!((p.len(), p.free()), (3, 3));
        let _d = p.acquire_or_grow().unwrap();
        assert_eq!(p.grown(), 1, "reuse before growing");
    }

    #[test]
    fn rejects_foreign_and_double_release() {
        let p = pool("a", 1);
        let q = pool("b", 1);
        let foreign = q.acquire().unwrap();
        assert!(matches!(
            p.release(foreign),
            Err(MemError::ForeignRegion { .. })
        ));
        let r = p.acquire().unwrap();
        p.release(Arc::clone(&r)).unwrap();
        let e = p.release(r).unwrap_err();
        assert!(matches!(e, MemError::DoubleRelease { .. }), "{e}");
        assert_eq!(p.free(), 1);
    }

    #[test]
    fn zero_sized_pool_fails_cleanly() {
        let chk = Checker::new(CheckerConfig::default());
        let e = Pool::new("z", 0, 1, Coherency::Coherent, DmaBackend::Memfd, &chk).unwrap_err();
        assert!(matches!(e, MemError::ZeroSize { .. }), "{e}");
    }
}
