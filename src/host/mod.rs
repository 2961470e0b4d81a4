//! OS adapters: syscalls (the only `unsafe`, in `sys`), QEMU as a process, taps and NIC
//! setup, the uid pool, probing QEMU binaries, node checks, the wall clock.
//!
//! Invariant: no VM policy here; the VM actor decides, these modules do.

pub mod affinity;
pub mod clock;
pub mod net;
pub mod probe;
pub mod process;
pub mod sys;
pub mod uidpool;
pub mod validate;
