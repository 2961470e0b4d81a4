//! vCPU pinning plans: which host CPUs each QEMU thread may run on, from Ganeti's `cpu_mask`.
//!
//! One mask entry applies to the whole VM: the main QEMU thread *and every vCPU thread* are
//! pinned (Ganeti pins only the main thread, bug #1080, so its vCPUs float). Several entries
//! are one per vCPU, in `cpu-index` order; `all` leaves a vCPU on every host CPU.
//!
//! Invariant: pure; the VM actor applies the plan with sched_setaffinity.

use crate::model::hvparams::CpuSet;

/// One thread and the host CPUs it may use (`None` = all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub tid: u32,
    pub cpus: Option<Vec<u32>>,
}

/// Check a parsed mask against the VM and host: entry count and CPU numbers.
pub fn check_mask(mask: &[CpuSet], vcpus: u32, host_cpus: u32) -> Result<(), String> {
    if mask.len() > 1 && mask.len() != vcpus as usize {
        return Err(format!(
            "has {} entries but the instance has {vcpus} vCPUs (use one entry, or one per vCPU)",
            mask.len()
        ));
    }
    for cpus in mask.iter().flatten() {
        if let Some(bad) = cpus.iter().find(|c| **c >= host_cpus) {
            return Err(format!(
                "names CPU {bad}, but this host has CPUs 0-{}",
                host_cpus.saturating_sub(1)
            ));
        }
    }
    Ok(())
}

/// The pins to apply. `vcpu_threads` is `(cpu-index, thread-id)` from `query-cpus-fast`.
pub fn plan(mask: &[CpuSet], main_pid: u32, vcpu_threads: &[(u32, u32)]) -> Vec<Pin> {
    match mask {
        [] | [None] => Vec::new(),
        [one] => std::iter::once(main_pid)
            .chain(vcpu_threads.iter().map(|(_, tid)| *tid))
            .map(|tid| Pin {
                tid,
                cpus: one.clone(),
            })
            .collect(),
        many => {
            let mut threads = vcpu_threads.to_vec();
            threads.sort_unstable();
            threads
                .iter()
                .zip(many)
                .map(|((_, tid), cpus)| Pin {
                    tid: *tid,
                    cpus: cpus.clone(),
                })
                .collect()
        }
    }
}

/// The pins of a live re-pin: every thread of the QEMU process gets a set, including `all`
/// (which a start leaves as it is). One entry: every thread. One entry per vCPU: each vCPU
/// thread its own, and every other thread (the emulator's: main loop, I/O, workers) the
/// union of the entries. `threads` are all the process's thread ids.
pub fn plan_live(mask: &[CpuSet], threads: &[u32], vcpu_threads: &[(u32, u32)]) -> Vec<Pin> {
    let vcpu_tids: Vec<u32> = vcpu_threads.iter().map(|(_, tid)| *tid).collect();
    let emulator = |cpus: Option<Vec<u32>>| {
        threads
            .iter()
            .filter(|t| !vcpu_tids.contains(t))
            .map(move |tid| Pin {
                tid: *tid,
                cpus: cpus.clone(),
            })
            .collect::<Vec<_>>()
    };
    match mask {
        [] => Vec::new(),
        [one] => {
            let mut pins = emulator(one.clone());
            pins.extend(vcpu_tids.iter().map(|tid| Pin {
                tid: *tid,
                cpus: one.clone(),
            }));
            pins
        }
        many => {
            let union = if many.iter().any(Option::is_none) {
                None
            } else {
                let mut all: Vec<u32> = many.iter().flatten().flatten().copied().collect();
                all.sort_unstable();
                all.dedup();
                Some(all)
            };
            let mut pins = emulator(union);
            let mut vcpus = vcpu_threads.to_vec();
            vcpus.sort_unstable();
            pins.extend(vcpus.iter().zip(many).map(|((_, tid), cpus)| Pin {
                tid: *tid,
                cpus: cpus.clone(),
            }));
            pins
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hvparams::parse_cpu_mask;

    #[test]
    fn a_live_pin_sets_every_thread_and_all_unpins() {
        let threads = [100, 101, 102, 103];
        let vcpus = [(1, 102), (0, 101)];
        let p = plan_live(&parse_cpu_mask("all").unwrap(), &threads, &vcpus);
        assert_eq!(p.len(), 4);
        assert!(p.iter().all(|p| p.cpus.is_none()));
        let p = plan_live(&parse_cpu_mask("0:1").unwrap(), &threads, &vcpus);
        let of = |tid| p.iter().find(|p| p.tid == tid).unwrap().cpus.clone();
        assert_eq!(of(101), Some(vec![0]));
        assert_eq!(of(102), Some(vec![1]));
        assert_eq!(
            of(100),
            Some(vec![0, 1]),
            "the emulator threads get the union"
        );
        assert_eq!(of(103), Some(vec![0, 1]));
        let p = plan_live(&parse_cpu_mask("0:all").unwrap(), &threads, &vcpus);
        assert_eq!(p.iter().find(|p| p.tid == 100).unwrap().cpus, None);
    }

    #[test]
    fn whole_vm_mask_pins_the_main_thread_and_every_vcpu() {
        let m = parse_cpu_mask("1").unwrap();
        let p = plan(&m, 100, &[(0, 101), (1, 102)]);
        assert_eq!(p.iter().map(|p| p.tid).collect::<Vec<_>>(), [100, 101, 102]);
        assert!(p.iter().all(|p| p.cpus == Some(vec![1])));
    }

    #[test]
    fn per_vcpu_masks_follow_cpu_index_order() {
        let m = parse_cpu_mask("0:all").unwrap();
        let p = plan(&m, 100, &[(1, 202), (0, 201)]);
        assert_eq!(
            p,
            vec![
                Pin {
                    tid: 201,
                    cpus: Some(vec![0])
                },
                Pin {
                    tid: 202,
                    cpus: None
                }
            ]
        );
    }

    #[test]
    fn all_means_no_pinning() {
        assert!(plan(&parse_cpu_mask("all").unwrap(), 1, &[(0, 2)]).is_empty());
    }

    #[test]
    fn masks_are_checked_against_vcpus_and_host_cpus() {
        assert!(check_mask(&parse_cpu_mask("0:1:0").unwrap(), 2, 4)
            .unwrap_err()
            .contains("3 entries"));
        assert!(check_mask(&parse_cpu_mask("7").unwrap(), 2, 4)
            .unwrap_err()
            .contains("CPU 7"));
        assert!(check_mask(&parse_cpu_mask("0-1").unwrap(), 8, 4).is_ok());
    }
}
