//! The domain model, pure: instance names, definitions and node settings, Ganeti's hvparams,
//! the states operators see, exits and how they are classified, the run dir layout, vCPU
//! pinning plans, and the shape of a rejected input.
//!
//! Invariant: no actix, no tokio, no file system, no processes, no clock.

pub mod exit;
pub mod field_error;
pub mod hotplug;
pub mod hvparams;
pub mod job;
pub mod layout;
pub mod name;
pub mod pinning;
pub mod spec;
pub mod state;
pub mod text;
