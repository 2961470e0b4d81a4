//! The VM: one actor per instance, around a pure state machine.

pub mod core;
mod legacy;

pub use legacy::*;
