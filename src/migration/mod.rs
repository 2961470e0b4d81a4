//! Live migration: the pure policy that steers a running migration (`policy`), what a
//! source hands its target with the target's preflight (`info`), and the coordinator actor
//! that drives one outgoing migration over QMP by the policy (`coordinator`).
//!
//! Still to come (issue 8): the steps as control requests on both daemons, VM states and
//! recovery for migrations, `kvmctl migrate`.

pub mod coordinator;
pub mod info;
pub mod policy;
