//! Live migration: the pure policy that steers a running migration (`policy`), what a
//! source hands its target with the target's preflight (`info`), and the coordinator actor
//! that drives one outgoing migration over QMP by the policy (`coordinator`).
//!
//! `steps` serves the requests that need no VM actor: the source's `migration-info` and the
//! target's `migration-preflight`. Still to come (issue 8): accept, migrate, status,
//! finalize and cancel as jobs of the VM actors, VM states and recovery for migrations,
//! `kvmctl migrate`.

pub mod coordinator;
pub mod info;
pub mod policy;
pub mod steps;
