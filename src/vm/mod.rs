//! The VM: one actor per instance around a pure state machine.
//!
//! - `core` — PURE: states, the admission table, jobs, exits, recovery decisions.
//! - `actor` — the thin shell: owns the QEMU handle, the QMP connection, the waiting
//!   clients; feeds the core and carries out its effects.
//! - `start`, `stop`, `recover`, `undo`, `watch` — the tasks the actor runs off its thread;
//!   `migrate` — its side of a migration around the coordinator actor.
//! - `handle` — how the supervisor talks to a VM without importing actix.
//! - `error` — what can go wrong, with causes, and its one conversion to the wire error.

mod actor;
mod balloon;
pub mod core;
pub mod error;
mod handle;
mod hotplug;
mod messages;
mod migrate;
mod observe;
mod pin;
mod recover;
mod report;
mod sample;
mod start;
mod stop;
mod undo;
mod watch;

pub use actor::{VmActor, VmNotify, VmSetup};
pub use handle::VmHandle;
pub use messages::{JobIds, VmAnswer, VmAsk, VmNotice, VmReply};

/// Start a VM actor for one instance.
pub fn spawn(setup: VmSetup) -> VmHandle {
    use actix::Actor;
    VmHandle {
        addr: VmActor::new(setup).start(),
    }
}
