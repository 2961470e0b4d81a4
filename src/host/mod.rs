//! OS adapters: syscalls (the only `unsafe`, in `sys`), QEMU as a process, external programs
//! with deadlines, taps and NIC setup, the uid pool, probing QEMU binaries, node checks,
//! process limits, fault injection for tests, the wall clock.
//!
//! Invariant: no VM policy here; the VM actor decides, these modules do.

/// vCPU pinning (`sched_setaffinity`).
pub mod affinity;
/// The wall clock, read in one place.
pub mod clock;
/// External programs (hooks, `ip`, QEMU probes) with a deadline, bounded output and a process
/// group killed at the deadline.
pub mod exec;
/// Test-only fault injection (`KVMD_FAULTS`); constant no-ops in release builds.
pub mod faults;
/// Process resource limits (open files).
pub mod limits;
/// Tap devices and NIC setup per Ganeti NIC mode.
pub mod net;
/// The node: memory and CPU facts, its checks (`verify`), the power cycle.
pub mod node;
/// Probing a QEMU binary's version, machines and devices, bounded by a deadline.
pub mod probe;
/// QEMU as an OS process: spawn, identify, wait, signal.
pub mod process;
/// CPU, memory and traffic counters of a QEMU, for the metrics.
pub mod procstat;
/// Raw syscalls: the only `unsafe`.
pub mod sys;
/// Ganeti's uid pool for `security_model = pool`.
pub mod uidpool;
/// Checking an instance against this node.
pub mod validate;
