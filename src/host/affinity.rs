//! vCPU pinning on the host: `sched_setaffinity` of QEMU's threads.
//!
//! Invariant: blocking and policy-free; the plan comes from `model::pinning`.

use crate::model::pinning::Pin;

/// Apply one pin: the thread may run on `pin.cpus` (`None`: every one of `host_cpus`).
pub fn apply(pin: &Pin, host_cpus: u32) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in pin.cpus.clone().unwrap_or_else(|| (0..host_cpus).collect()) {
        set.set(cpu as usize)?;
    }
    nix::sched::sched_setaffinity(
        nix::unistd::Pid::from_raw(crate::host::sys::pid_t(pin.tid)),
        &set,
    )
}

/// The thread ids of process `pid` (`/proc/PID/task`).
pub fn threads_of(pid: u32) -> std::io::Result<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The host CPUs thread `tid` may run on now.
pub fn current(tid: u32) -> nix::Result<Vec<u32>> {
    let set =
        nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(crate::host::sys::pid_t(tid)))?;
    Ok((0..nix::sched::CpuSet::count())
        .filter(|c| set.is_set(*c).unwrap_or(false))
        .filter_map(|c| u32::try_from(c).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_can_be_pinned_to_cpu_0_and_back() {
        let tid = u32::try_from(nix::unistd::gettid().as_raw()).unwrap();
        let host = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        apply(
            &Pin {
                tid,
                cpus: Some(vec![0]),
            },
            host,
        )
        .unwrap();
        let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
        assert!(set.is_set(0).unwrap());
        apply(&Pin { tid, cpus: None }, host).unwrap();
    }
}
