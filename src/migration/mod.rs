//! Live migration: the pure policy that steers a running migration (`policy`), what a
//! source hands its target with the target's preflight (`info`), and the coordinator actor
//! that drives one outgoing migration over QMP by the policy (`coordinator`).
//!
//! `steps` serves the requests that need no VM actor: the source's `migration-info`, the
//! target's `migration-preflight`, and what a target's `accept` starts. The moving steps
//! (accept, migrate, finalize, cancel) are jobs of the VM actors (`vm::core::migration`,
//! `vm::migrate`).

pub mod coordinator;
pub mod info;
pub mod policy;
pub mod steps;
