//! The control socket: the server (`server`), the wire format (`protocol`, the only module that
//! knows the control JSON) and a blocking client (`client`) for kvmctl, tests and benchmarks.
//!
//! Invariant: nothing outside `protocol` builds or reads control JSON.

pub mod client;
pub mod console;
pub mod metrics_http;
pub mod protocol;
pub mod server;
