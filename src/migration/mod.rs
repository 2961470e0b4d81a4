//! Live migration: the pure policy that steers a running migration (`policy`).
//!
//! Still to come (issue 8): the blob a source hands a target and the preflight check, the
//! source and target steps, and the coordinator actor that drives QMP by the policy.

pub mod policy;
