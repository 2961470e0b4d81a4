//! kvmctl's command line (clap): global flags, the commands and their options.
//!
//! Invariant: declarations only; values are checked (names, job ids) where they are used, so
//! that `--json` can report them like kvmd's own errors.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Exit status: 0 success; 1 kvmd refused the request, or the job failed or was cancelled, or
validate found problems; 2 bad command line (including invalid names); 3 kvmd could not be
reached (not running, permission denied, connection lost).

start, stop and reboot wait for their job to end (--no-wait: return once it is accepted).
Interrupting kvmctl stops the waiting, not the job: see `kvmctl job ID`, `kvmctl cancel ID`.";

/// Control kvmd: start, stop and inspect virtual machines.
#[derive(Parser)]
#[command(version, about, after_help = AFTER_HELP)]
pub struct Args {
    /// Control socket (default: node.socket from the config file).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Config file to read the socket path from.
    #[arg(long, global = true, default_value = "/etc/kvmd/kvmd.toml")]
    pub config: PathBuf,
    /// Print JSON instead of text: kvmd's replies, one object per line for events, and errors
    /// (kvmd's and kvmctl's own) as {"ok": false, "kind": "error", "error": {...}}.
    #[arg(long, global = true)]
    pub json: bool,
    /// Show a job's phases while waiting for it even when stderr is not a terminal.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Waiting for a job (start, stop, reboot).
#[derive(clap::Args, Clone, Copy)]
pub struct WaitFlags {
    /// Wait until the job has ended (the default).
    #[arg(long = "wait", overrides_with = "no_wait")]
    pub wait: bool,
    /// Print the accepted job and return at once.
    #[arg(long = "no-wait", overrides_with = "wait")]
    pub no_wait: bool,
}

impl WaitFlags {
    pub fn wait(self) -> bool {
        !self.no_wait
    }
}

/// `kvmctl hotplug ...`.
#[derive(Subcommand)]
pub enum HotplugCmd {
    /// Plug a device.
    Add {
        name: String,
        #[command(subcommand)]
        device: HotDeviceArg,
    },
    /// Unplug a plugged device by its id (`kvmctl info` shows it).
    Del { name: String, id: String },
    /// Change a plugged NIC live: --link up|down.
    Mod {
        name: String,
        id: String,
        #[arg(long, value_parser = ["up", "down"])]
        link: String,
    },
}

#[derive(Subcommand)]
pub enum HotDeviceArg {
    /// A virtio disk.
    Disk {
        path: String,
        #[arg(long, default_value = "raw")]
        format: String,
        #[arg(long)]
        readonly: bool,
    },
    /// A virtio NIC: QEMU's user networking, or a tap set up per --mode on --link.
    Nic {
        #[arg(long)]
        mac: Option<String>,
        /// user, bridged, routed or openvswitch.
        #[arg(long, default_value = "user")]
        mode: String,
        /// The bridge (bridged), routing table (routed) or switch (openvswitch).
        #[arg(long, default_value = "")]
        link: String,
    },
}

/// `kvmctl node ...`.
#[derive(Subcommand)]
pub enum NodeCmd {
    /// Memory (total, free, used by instances and by the node), CPUs and topology, the
    /// hypervisor and its version, ancillary files.
    Info,
    /// The node's checks, each with a severity; exit status 1 if any is an error.
    Verify,
    /// Reboot this node at once, without stopping its VMs. Refused without --yes (the
    /// refusal lists the steps).
    Powercycle {
        #[arg(long)]
        yes: bool,
    },
}

/// How a migration went, for a finalization.
#[derive(clap::Args, Clone, Copy)]
#[group(required = true, multiple = false)]
pub struct Verdict {
    #[arg(long)]
    pub success: bool,
    #[arg(long)]
    pub failure: bool,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Check that kvmd answers.
    Ping,
    /// Running instances.
    List {
        /// Every defined instance, not only those with a QEMU.
        #[arg(long)]
        all: bool,
    },
    /// Details of one instance, or of all with --all.
    Info {
        name: Option<String>,
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
    /// Start an instance.
    Start {
        name: String,
        /// Leave the guest paused after QEMU starts.
        #[arg(long)]
        paused: bool,
        /// Start-up memory in MiB (min_memory..memory): the guest boots with its balloon at
        /// this size (default: as much of memory as the node has available).
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// Start with this definition (a JSON file with the keys of an [instance.NAME] table)
        /// instead of the config file's: an instance another engine owns.
        #[arg(long, value_name = "FILE")]
        definition: Option<PathBuf>,
        /// With --definition: the engine that owns the instance.
        #[arg(long, default_value = "external", requires = "definition")]
        managed_by: String,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Stop an instance: ACPI power button, then SIGTERM, then SIGKILL.
    Stop {
        name: String,
        /// Seconds to wait for the guest before escalating (default: node.stop_timeout).
        #[arg(long)]
        timeout: Option<u64>,
        /// Kill QEMU at once.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Reboot: stop and start with the current definition (--hard: reset in place).
    Reboot {
        name: String,
        #[arg(long)]
        hard: bool,
        /// Seconds the stop half waits for the guest (default: node.stop_timeout).
        #[arg(long, conflicts_with = "hard")]
        timeout: Option<u64>,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Freeze a running guest.
    Pause { name: String },
    /// Let a paused guest run (e.g. after start --paused).
    Resume { name: String },
    /// Remove a stopped instance's runtime files.
    Cleanup { name: String },
    /// Make kvmd re-read its config file.
    Reload,
    /// Jobs running and recently ended (of one instance, or all).
    Jobs { name: Option<String> },
    /// One job, by id, or an instance's current (else latest) job.
    Job {
        /// A job id, or an instance name.
        target: String,
        /// Wait until the job has ended.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a running start, stop or reboot job.
    Cancel {
        /// The job's id.
        id: String,
    },
    /// kvmd's events: state changes, jobs, QEMU events, kvmd itself.
    Events {
        /// Replay the kept events after this sequence number first (0: all kept).
        #[arg(long)]
        since: Option<u64>,
        /// Keep printing new events as they happen (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
    },
    /// Migration source: print what a target needs to take this running instance (a
    /// versioned blob; pass it to the target's migration-preflight).
    MigrationInfo { name: String },
    /// Migration target: would this node take the VM a migration-info blob describes?
    /// Checks QEMU version, machine type, devices, capabilities and device placement.
    MigrationPreflight {
        /// The blob: a file, or - for standard input.
        info: PathBuf,
    },
    /// Migrate a running instance. With --to, the whole flow against both daemons (progress
    /// bar, summary; Ctrl-C cancels). With --target, only the source's step (a cluster
    /// engine's `migrate`: the target accepted already).
    Migrate {
        name: String,
        /// The target kvmd: its control socket, or ssh://[user@]host[:port][/socket].
        #[arg(long, conflicts_with = "target", required_unless_present = "target")]
        to: Option<String>,
        /// With --to: where the target listens for the migration, IP:PORT (default, for a
        /// target socket on this host: 127.0.0.1 and a free port).
        #[arg(long, requires = "to")]
        listen: Option<String>,
        /// Step only: the target's listen address, IP:PORT.
        #[arg(long)]
        target: Option<String>,
        /// Pause the guest first (as hvparam migration_mode=non-live does).
        #[arg(long)]
        non_live: bool,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// Migration target: run the preflight, then start a paused QEMU for the VM of a
    /// migration-info blob, listening on IP:PORT.
    Accept {
        name: String,
        /// The blob: a file, or - for standard input.
        #[arg(long)]
        info: PathBuf,
        #[arg(long)]
        listen: String,
        #[command(flatten)]
        wait: WaitFlags,
    },
    /// A migration's status and figures (source), or its summary once it ended.
    MigrationStatus { name: String },
    /// Migration target: --success runs the guest (the migration completed); --failure drops
    /// the waiting QEMU.
    FinalizeDst {
        name: String,
        #[command(flatten)]
        verdict: Verdict,
    },
    /// Migration source: --success ends the source's QEMU (the VM moved); --failure resumes
    /// the guest here.
    FinalizeSrc {
        name: String,
        #[command(flatten)]
        verdict: Verdict,
    },
    /// Cancel the running migration of an instance (the guest runs on the source again).
    MigrateCancel { name: String },
    /// Plug a device into a running instance, or unplug one (pc machines).
    Hotplug {
        #[command(subcommand)]
        what: HotplugCmd,
    },
    /// Resize a running guest's memory with its balloon (MiB, from min_memory to memory);
    /// waits until the guest got there (reached), stopped moving (stalled) or the deadline
    /// (timeout). Exit status 1 unless reached.
    Balloon { name: String, mib: u64 },
    /// A live table of the VMs: state, CPU %, memory, block and network rates (from kvmd's
    /// background samples). With --json: one sample of every VM's counters.
    Top {
        /// Only this instance.
        name: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Attach this terminal to an instance's serial console (Ctrl-] detaches; every other key
    /// goes to the guest). Several may watch; one types.
    Console {
        name: String,
        /// Watch only (another session may be typing).
        #[arg(long)]
        read_only: bool,
        /// Print how to reach the console from elsewhere instead (Ganeti's
        /// GetInstanceConsole): the command, or the VNC/SPICE endpoint.
        #[arg(long, conflicts_with = "read_only")]
        command: bool,
    },
    /// This node: info (memory, CPUs, hypervisor), verify (its checks), powercycle.
    Node {
        #[command(subcommand)]
        what: NodeCmd,
    },
    /// Pin a running instance's threads to host CPUs, live (cpu_mask grammar: `all`,
    /// `0-2,4`, or one entry per vCPU separated by `:`).
    Pin { name: String, mask: String },
    /// Check a config file without kvmd: syntax, hvparam rules, and this node (files, users,
    /// what the QEMU binary offers). Prints every problem; exits non-zero on any.
    Validate {
        file: PathBuf,
        /// Only the checks that do not look at this host.
        #[arg(long)]
        syntax_only: bool,
    },
}
