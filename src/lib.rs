//! kvmd: a node agent that supervises QEMU virtual machines — Ganeti's KVM hypervisor layer
//! as a long-running daemon.
//!
//! Requests arrive on a Unix socket (`control`), are parsed (`protocol`) into operations
//! (`api`), and go to the root `supervisor` actor, which owns one `vm` actor per instance. A VM
//! actor owns its QEMU process (`process`), its QMP connection (`qmp`), its exit and
//! user-shutdown detection (`vmstate`) and its runtime files (`runtime`). VMs outlive kvmd: a
//! restarted kvmd re-adopts them from the run dir.
//!
//! # Layout
//! - `daemon` — process setup: run dir, socket, actor system, signals.
//! - `events` — the event bus: a bounded ring of events with sequence numbers.
//! - `control`, `protocol`, `client` — the control socket: server, wire format, client.
//! - `api` — operations, results and error codes as domain types.
//! - `supervisor` — root actor: config, VM actors, reloads, `list`/`info`.
//! - `vm` — one actor per instance: start, stop, reboot, events, exits, re-adoption.
//! - `vmstate` — pure: states and exit classification.
//! - `config`, `spec`, `hvparams`, `name`, `check` — pure: the config file, instance
//!   definitions, Ganeti's hvparams, instance names, field errors.
//! - `pinning` — pure: vCPU pinning plans from `cpu_mask`.
//! - `cmdline`, `probe` — QEMU's argv (pure) and what a QEMU binary offers.
//! - `net` — tap devices and NIC setup per Ganeti mode (bridged, routed, openvswitch).
//! - `qmp` — our QMP client.
//! - `process` — QEMU as a process: spawn, identity, exit, signals.
//! - `uidpool` — Ganeti's uid pool for `security_model = pool`.
//! - `runtime` — runtime files on disk and the persistence thread.
//! - `validate` — checking an instance against this node (files, users, what QEMU offers).
//! - `sys` — the only `unsafe`: pidfds, the new-session hook, tun ioctls, `SO_PEERGROUPS`.
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod host;
pub mod model;
pub mod qemu;
pub mod qmp;
pub mod store;
pub mod supervisor;
pub mod vm;
