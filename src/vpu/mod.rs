//! The in-crate VPU: a firmware core on its own thread behind a shared-memory
//! command ring, and the host-side driver implementing the m2m contract.

pub mod codec;
