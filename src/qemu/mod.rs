//! What kvmd knows about QEMU, pure: the command line, what a binary offers (parsed from its
//! output), and the checks of an instance against Ganeti's rules and a probed QEMU.
//!
//! Invariant: no side effects; running QEMU, opening taps and reading the host belong to
//! `host`.

pub mod caps;
pub mod checks;
pub mod cmdline;
pub mod host_facts;
