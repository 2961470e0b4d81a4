//! kvmd's metrics: what each VM's last sample says and kvmd's own counters, rendered in
//! Prometheus' text format on demand.
//!
//! The VM actors fill the sample cache in the background, one QMP round and a few `/proc`
//! reads per VM per `node.metrics_interval_ms` ([`put_sample`], [`set_state`]); the rest of
//! kvmd counts what it does ([`stats`]). A scrape ([`render`]) reads only this memory: it
//! never waits on a VM, a QMP command or the supervisor.
//!
//! Invariant: no I/O, no actix; a process-wide registry (one kvmd per process).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod sample;
pub use sample::{DiskSample, GuestSample, MigrationSample, NicSample, VcpuSample, VmSample};

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Buckets of the duration histograms (seconds): 0.5 ms to about 65 s.
#[derive(Clone, Copy, Debug)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

const QMP_BUCKETS: Buckets = Buckets(&[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
]);
const JOB_BUCKETS: Buckets = Buckets(&[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
]);

/// kvmd's own counters, shared by every scrape.
#[derive(Debug)]
pub struct Stats {
    qmp_duration: Family<Labels, Histogram, Buckets>,
    qmp_timeouts: Family<Labels, Counter>,
    jobs: Family<Labels, Counter>,
    job_duration: Family<Labels, Histogram, Buckets>,
    events: Counter,
    events_dropped: Counter,
    requests: Family<Labels, Counter>,
    actor_restarts: Counter,
    samples: Mutex<BTreeMap<String, VmSample>>,
}

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The process's counters and samples.
pub fn stats() -> &'static Stats {
    static STATS: OnceLock<Stats> = OnceLock::new();
    STATS.get_or_init(|| Stats {
        qmp_duration: Family::new_with_constructor(QMP_BUCKETS),
        qmp_timeouts: Family::default(),
        jobs: Family::default(),
        job_duration: Family::new_with_constructor(JOB_BUCKETS),
        events: Counter::default(),
        events_dropped: Counter::default(),
        requests: Family::default(),
        actor_restarts: Counter::default(),
        samples: Mutex::new(BTreeMap::new()),
    })
}

impl Stats {
    /// A QMP command answered (or failed) after `seconds`; `timed_out` when it missed its
    /// deadline.
    pub fn qmp_command(&self, command: &str, seconds: f64, timed_out: bool) {
        let l = labels([("command", command)]);
        self.qmp_duration.get_or_create(&l).observe(seconds);
        if timed_out {
            self.qmp_timeouts.get_or_create(&l).inc();
        }
    }

    /// A job ended: its kind, result (`succeeded`, `failed`, `cancelled`) and duration.
    pub fn job_ended(&self, kind: &str, result: &str, seconds: f64) {
        self.jobs
            .get_or_create(&labels([("kind", kind), ("result", result)]))
            .inc();
        self.job_duration
            .get_or_create(&labels([("kind", kind)]))
            .observe(seconds);
    }

    pub fn event_published(&self) {
        self.events.inc();
    }

    /// Events a subscriber lost (it fell behind).
    pub fn events_dropped(&self, n: u64) {
        self.events_dropped.inc_by(n);
    }

    /// A control request was answered: its kind and `ok` or the error code.
    pub fn request(&self, kind: &str, code: &str) {
        self.requests
            .get_or_create(&labels([("request", kind), ("code", code)]))
            .inc();
    }

    pub fn actor_restarted(&self) {
        self.actor_restarts.inc();
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VmSample>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A VM's newest sample (its state and counters).
pub fn put_sample(sample: VmSample) {
    stats().samples().insert(sample.name.clone(), sample);
}

/// A VM's state changed: the cache says so at once (its counters come with the next sample).
pub fn set_state(name: &str, state: &str, unresponsive: bool) {
    let mut samples = stats().samples();
    let s = samples.entry(name.to_string()).or_insert_with(|| VmSample {
        name: name.to_string(),
        ..VmSample::default()
    });
    s.state = state.to_string();
    s.unresponsive = unresponsive;
}

/// A VM kvmd no longer knows.
pub fn forget(name: &str) {
    stats().samples().remove(name);
}

/// `f` over the samples, under their lock (keep it short).
pub fn with_samples<R>(f: impl FnOnce(&BTreeMap<String, VmSample>) -> R) -> R {
    f(&stats().samples())
}

/// Every VM's newest sample, by name.
pub fn samples() -> Vec<VmSample> {
    stats().samples().values().cloned().collect()
}

/// One metric family of the VMs, filled sample by sample.
struct VmFamily<M> {
    family: Family<Labels, M>,
}

impl VmFamily<FloatGauge> {
    fn gauge(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Self {
        let family = Family::<Labels, FloatGauge>::default();
        match unit {
            Some(u) => reg.register_with_unit(name, help, u, family.clone()),
            None => reg.register(name, help, family.clone()),
        }
        Self { family }
    }

    fn set(&self, l: &Labels, v: f64) {
        self.family.get_or_create(l).set(v);
    }
}

impl VmFamily<FloatCounter> {
    fn counter(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Self {
        let family = Family::<Labels, FloatCounter>::default();
        match unit {
            Some(u) => reg.register_with_unit(name, help, u, family.clone()),
            None => reg.register(name, help, family.clone()),
        }
        Self { family }
    }

    fn set(&self, l: &Labels, v: f64) {
        self.family.get_or_create(l).inc_by(v);
    }
}

fn with(base: &Labels, k: &str, v: &str) -> Labels {
    let mut l = base.clone();
    l.push((k.to_string(), v.to_string()));
    l
}

#[allow(clippy::cast_precision_loss)] // counters far below 2^53
fn f(v: u64) -> f64 {
    v as f64
}

/// The metrics page: every VM's sample and kvmd's counters, in Prometheus' text format.
pub fn render() -> String {
    render_samples(&samples(), stats())
}

/// [`render`] of given samples (pure but for the shared counters).
pub fn render_samples(samples: &[VmSample], st: &Stats) -> String {
    let mut reg = Registry::with_prefix("kvmd");
    let state = VmFamily::gauge(
        &mut reg,
        "vm_state",
        "The VM's state (1 for the state it is in, as kvmctl list shows it)",
        None,
    );
    let up = VmFamily::gauge(&mut reg, "vm_up", "1 when the VM has a QEMU process", None);
    let unresponsive = VmFamily::gauge(
        &mut reg,
        "vm_unresponsive",
        "1 when the VM's QMP missed a deadline (or kvmd has no QMP connection)",
        None,
    );
    let uptime = VmFamily::gauge(
        &mut reg,
        "vm_uptime",
        "Time since the QEMU process started",
        Some(Unit::Seconds),
    );
    let mem = VmFamily::gauge(
        &mut reg,
        "vm_memory_configured",
        "The memory QEMU was given (Ganeti's maxmem)",
        Some(Unit::Bytes),
    );
    let balloon = VmFamily::gauge(
        &mut reg,
        "vm_memory_balloon",
        "The guest's memory as the balloon sees it (query-balloon)",
        Some(Unit::Bytes),
    );
    let rss = VmFamily::gauge(
        &mut reg,
        "vm_qemu_resident",
        "The QEMU process's resident memory",
        Some(Unit::Bytes),
    );
    let cpu = VmFamily::counter(
        &mut reg,
        "vm_qemu_cpu",
        "CPU time of the whole QEMU process (user + system)",
        Some(Unit::Seconds),
    );
    let vcpu = VmFamily::counter(
        &mut reg,
        "vm_vcpu",
        "Time each vCPU thread ran on a host CPU (schedstat)",
        Some(Unit::Seconds),
    );
    let vcpu_wait = VmFamily::counter(
        &mut reg,
        "vm_vcpu_wait",
        "Time each vCPU thread waited on a run queue (schedstat): host CPU contention",
        Some(Unit::Seconds),
    );
    let g_avail = VmFamily::gauge(
        &mut reg,
        "vm_guest_memory_available",
        "Memory the guest can use without swapping (its MemAvailable, from the balloon driver)",
        Some(Unit::Bytes),
    );
    let g_total = VmFamily::gauge(
        &mut reg,
        "vm_guest_memory_usable",
        "Memory the guest has (its MemTotal, from the balloon driver)",
        Some(Unit::Bytes),
    );
    let g_free = VmFamily::gauge(
        &mut reg,
        "vm_guest_memory_unused",
        "Memory the guest does not use at all (its MemFree)",
        Some(Unit::Bytes),
    );
    let g_cached = VmFamily::gauge(
        &mut reg,
        "vm_guest_memory_cached",
        "The guest's page cache",
        Some(Unit::Bytes),
    );
    let g_major = VmFamily::counter(
        &mut reg,
        "vm_guest_major_page_faults",
        "Page faults the guest served from disk",
        None,
    );
    let g_minor = VmFamily::counter(
        &mut reg,
        "vm_guest_minor_page_faults",
        "Page faults the guest served from memory",
        None,
    );
    let g_swap_in = VmFamily::counter(
        &mut reg,
        "vm_guest_swap_in",
        "Memory the guest swapped in",
        Some(Unit::Bytes),
    );
    let g_swap_out = VmFamily::counter(
        &mut reg,
        "vm_guest_swap_out",
        "Memory the guest swapped out",
        Some(Unit::Bytes),
    );
    let blk_rd = VmFamily::counter(
        &mut reg,
        "vm_block_read",
        "Bytes read by the guest, per disk (query-blockstats)",
        Some(Unit::Bytes),
    );
    let blk_wr = VmFamily::counter(
        &mut reg,
        "vm_block_written",
        "Bytes written by the guest, per disk",
        Some(Unit::Bytes),
    );
    let blk_ops = VmFamily::counter(
        &mut reg,
        "vm_block_operations",
        "Read, write and flush operations, per disk",
        None,
    );
    let blk_time = VmFamily::counter(
        &mut reg,
        "vm_block_time",
        "Time spent in read and write operations, per disk",
        Some(Unit::Seconds),
    );
    let net_rx = VmFamily::counter(
        &mut reg,
        "vm_network_receive",
        "Bytes the guest received on a NIC (its tap's transmit counter)",
        Some(Unit::Bytes),
    );
    let net_tx = VmFamily::counter(
        &mut reg,
        "vm_network_transmit",
        "Bytes the guest sent on a NIC (its tap's receive counter)",
        Some(Unit::Bytes),
    );
    let net_rx_p = VmFamily::counter(
        &mut reg,
        "vm_network_receive_packets",
        "Packets the guest received on a NIC",
        None,
    );
    let net_tx_p = VmFamily::counter(
        &mut reg,
        "vm_network_transmit_packets",
        "Packets the guest sent on a NIC",
        None,
    );
    let mig_total = VmFamily::gauge(
        &mut reg,
        "vm_migration_transferred",
        "Bytes an outgoing migration has sent so far",
        Some(Unit::Bytes),
    );
    let mig_left = VmFamily::gauge(
        &mut reg,
        "vm_migration_remaining",
        "Bytes an outgoing migration still has to send",
        Some(Unit::Bytes),
    );
    let mig_pass = VmFamily::gauge(
        &mut reg,
        "vm_migration_pass",
        "The dirty-memory pass an outgoing migration is in",
        None,
    );
    let mig_rate = VmFamily::gauge(
        &mut reg,
        "vm_migration_dirty_pages_rate",
        "Pages the guest dirties per second during an outgoing migration",
        None,
    );
    for s in samples {
        let vm: Labels = vec![("vm".to_string(), s.name.clone())];
        if !s.state.is_empty() {
            state.set(&with(&vm, "state", &s.state), 1.0);
        }
        up.set(&vm, if s.pid.is_some() { 1.0 } else { 0.0 });
        unresponsive.set(&vm, if s.unresponsive { 1.0 } else { 0.0 });
        if s.pid.is_none() {
            continue;
        }
        uptime.set(&vm, s.uptime_s);
        mem.set(&vm, f(s.memory_bytes));
        if let Some(b) = s.balloon_bytes {
            balloon.set(&vm, f(b));
        }
        if let Some(r) = s.rss_bytes {
            rss.set(&vm, f(r));
        }
        if let Some(c) = s.cpu_seconds {
            cpu.set(&vm, c);
        }
        for v in &s.vcpus {
            let l = with(&vm, "vcpu", &v.index.to_string());
            vcpu.set(&l, v.run_seconds);
            vcpu_wait.set(&l, v.wait_seconds);
        }
        if let Some(g) = &s.guest {
            g_avail.set(&vm, f(g.available));
            g_total.set(&vm, f(g.total));
            g_free.set(&vm, f(g.free));
            g_cached.set(&vm, f(g.disk_caches));
            g_major.set(&vm, f(g.major_faults));
            g_minor.set(&vm, f(g.minor_faults));
            g_swap_in.set(&vm, f(g.swap_in));
            g_swap_out.set(&vm, f(g.swap_out));
        }
        for d in &s.disks {
            let l = with(&vm, "disk", &d.id);
            blk_rd.set(&l, f(d.rd_bytes));
            blk_wr.set(&l, f(d.wr_bytes));
            for (op, n) in [
                ("read", d.rd_ops),
                ("write", d.wr_ops),
                ("flush", d.flush_ops),
            ] {
                blk_ops.set(&with(&l, "operation", op), f(n));
            }
            for (op, ns) in [("read", d.rd_time_ns), ("write", d.wr_time_ns)] {
                blk_time.set(&with(&l, "operation", op), f(ns) / 1e9);
            }
        }
        for n in &s.nics {
            let l = with(&with(&vm, "nic", &n.id), "tap", &n.tap);
            net_rx.set(&l, f(n.rx_bytes));
            net_tx.set(&l, f(n.tx_bytes));
            net_rx_p.set(&l, f(n.rx_packets));
            net_tx_p.set(&l, f(n.tx_packets));
        }
        if let Some(m) = &s.migration {
            mig_total.set(&vm, f(m.transferred_bytes));
            mig_left.set(&vm, f(m.remaining_bytes));
            mig_pass.set(&vm, f(m.pass));
            mig_rate.set(&vm, f(m.dirty_pages_rate));
        }
    }
    reg.register_with_unit(
        "qmp_command_duration",
        "How long QMP commands took to answer, by command",
        Unit::Seconds,
        st.qmp_duration.clone(),
    );
    reg.register(
        "qmp_timeouts",
        "QMP commands that missed their deadline, by command",
        st.qmp_timeouts.clone(),
    );
    reg.register(
        "jobs",
        "Jobs that ended, by kind and result",
        st.jobs.clone(),
    );
    reg.register_with_unit(
        "job_duration",
        "How long jobs took, by kind",
        Unit::Seconds,
        st.job_duration.clone(),
    );
    reg.register("events", "Events published", st.events.clone());
    reg.register(
        "events_dropped",
        "Events a subscriber lost because it fell behind",
        st.events_dropped.clone(),
    );
    reg.register(
        "control_requests",
        "Control requests answered, by request and result code (ok or the error code)",
        st.requests.clone(),
    );
    reg.register(
        "actor_restarts",
        "VM actors rebuilt after a panic",
        st.actor_restarts.clone(),
    );
    let unresp = Gauge::<i64>::default();
    unresp
        .set(i64::try_from(samples.iter().filter(|s| s.unresponsive).count()).unwrap_or(i64::MAX));
    reg.register(
        "vms_unresponsive",
        "VMs whose QMP is unresponsive now",
        unresp,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The same page in Prometheus' classic text format (0.0.4), for clients that do not ask for
/// OpenMetrics (`promtool`, `curl`): a counter's `HELP` and `TYPE` name its `_total` series,
/// and there are no `UNIT` or `EOF` lines.
pub fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
