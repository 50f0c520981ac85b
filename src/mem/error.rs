//! Errors of the memory layer.

use std::io;

use crate::sys::DmaBackend;

/// What went wrong creating, importing, sharing or pooling a region.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("shared memory access: {0}")]
    OutOfRange(#[from] crate::sys::OutOfRange),

    #[error("region \"{name}\": size must be at least 1 byte, got 0")]
    ZeroSize { name: String },

    #[error(
        "cannot allocate {size} bytes for region \"{name}\" from the {backend} backend: {source}"
    )]
    Allocate {
        name: String,
        size: usize,
        backend: DmaBackend,
        source: io::Error,
    },

    #[error("cannot map {size} bytes of region \"{name}\": {source}")]
    Map {
        name: String,
        size: usize,
        source: io::Error,
    },

    #[error("cannot import \"{name}\": cannot query the size of its fd: {source}")]
    QuerySize { name: String, source: io::Error },

    #[error("cannot import \"{name}\": {expected} bytes requested but the fd holds only {actual}")]
    TooSmall {
        name: String,
        expected: usize,
        actual: u64,
    },

    #[error(
        "region \"{name}\" is cacheable: shared (ring) access needs a coherent region, \
         cacheable memory needs explicit ownership transfers"
    )]
    NotCoherent { name: String },

    #[error(
        "region \"{name}\" is being accessed through a CPU or device guard: \
         it cannot switch to shared (ring) access now"
    )]
    Busy { name: String },

    #[error("pool \"{pool}\": region \"{region}\" (id {id}) was not allocated by this pool")]
    ForeignRegion {
        pool: String,
        region: String,
        id: u64,
    },

    #[error("pool \"{pool}\": region \"{region}\" (id {id}) released twice")]
    DoubleRelease {
        pool: String,
        region: String,
        id: u64,
    },
}
