//! The emulated IOMMU: which regions the VPU can address, under which handle.
//!
//! On real hardware the kernel maps a dma-buf into the device's address space
//! and hands the device an IOVA; here the host driver registers a [`Region`]
//! and the firmware receives a `u32` handle in ring messages. The table is the
//! only path from a handle to memory, so a handle the firmware was never given
//! (or one already unmapped) cannot reach anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::mem::Region;

#[derive(Debug, Default)]
pub struct Iommu {
    table: Mutex<HashMap<u32, Arc<Region>>>,
    next: AtomicU32,
}

impl Iommu {
    fn table(&self) -> MutexGuard<'_, HashMap<u32, Arc<Region>>> {
        // A panic elsewhere while holding the lock leaves the table consistent
        // (every operation is a single insert/remove), so keep using it.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `region` addressable by the VPU and returns its handle (never 0).
    pub fn map(&self, region: Arc<Region>) -> u32 {
        let mut table = self.table();
        loop {
            let handle = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if handle != 0 && !table.contains_key(&handle) {
                table.insert(handle, region);
                return handle;
            }
        }
    }

    pub fn unmap(&self, handle: u32) -> Option<Arc<Region>> {
        self.table().remove(&handle)
    }

    pub fn lookup(&self, handle: u32) -> Option<Arc<Region>> {
        self.table().get(&handle).cloned()
    }

    /// Handles currently mapped.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
