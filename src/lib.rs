//! kvmd: a node agent that supervises QEMU virtual machines — Ganeti's KVM hypervisor layer
//! as a long-running daemon.
//!
//! Requests arrive on a Unix socket (`control`), are parsed into operations (`api`), and go to
//! the root `supervisor` actor, which owns one `vm` actor per instance. Each VM actor is a thin
//! shell around a pure state machine (`vm::core`): every operation is a job, admitted by one
//! table, persisted when long, so a restarted kvmd finishes or rolls back what was in flight.
//! VMs outlive kvmd: a restarted kvmd re-adopts them from the run dir. Every state change,
//! job and notable QMP event goes to an event bus (`events`) that clients can follow.
//!
//! # Layout (bottom up; nothing imports upwards)
//! - `model` — pure domain: names, definitions, Ganeti's hvparams (typed keys), states, exits
//!   and their classification, jobs and undo steps, the run dir layout, pinning plans.
//! - `api` — pure control surface: requests, replies, jobs, events, errors.
//! - `qemu` — pure QEMU knowledge: the command line, capabilities parsing, checks, and the one
//!   builder of a start's host facts.
//! - `qmp` — our QMP client, the only module that knows QMP's JSON (typed commands/events).
//! - `host` — OS adapters: syscalls (`sys`, the only `unsafe`: pidfds, tun ioctls, the pre-exec
//!   hooks, `SO_PEERGROUPS`), processes, external programs with deadlines, taps, probing, node
//!   checks, uid pool, affinity, limits, fault injection.
//! - `store` — the run dir on disk and the persistence thread (file jobs only).
//! - `events` — the sequenced event bus with gap markers.
//! - `migration` — live migration: the pure policy that steers a running migration
//!   (convergence, stalls, bad answers); the coordinator comes with issue 8.
//! - `vm` — `core` (pure state machine) and the actor, its tasks and its handle.
//! - `supervisor` — root actor: VM actors, `list`/`info`, the job table, reloads.
//! - `control` — the socket: server, wire format (`protocol`), client.
//! - `config`, `daemon` — the config file; process setup and signals.
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod host;
pub mod metrics;
pub mod migration;
pub mod model;
pub mod qemu;
pub mod qmp;
pub mod store;
pub mod supervisor;
pub mod vm;
