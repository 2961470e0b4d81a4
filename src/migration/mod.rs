//! Live migration: the pure policy that steers a running migration (`policy`), and what a
//! source hands its target with the target's preflight (`info`).
//!
//! Still to come (issue 8): the source and target steps and the coordinator actor that drives
//! QMP by the policy.

pub mod info;
pub mod policy;
