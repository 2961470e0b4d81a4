//! Ganeti's uid pool (`security_model = pool`): each VM's QEMU runs as its own unprivileged
//! uid from `node.uid_pool`.
//!
//! A uid is free when no kvmd VM holds it (the registry below, refilled from runtime files on
//! re-adoption) and no process on the host runs as it (Ganeti's rule), and it maps to a user
//! name (QEMU before 9.1 only takes names with `-runas`). The registry makes picking atomic
//! within kvmd: a QEMU only drops to its uid after initialising, so the process scan alone
//! cannot see a start that is under way.
//!
//! Invariant: blocking (`/proc` scan, passwd lookups); call from a blocking thread.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use crate::model::name::InstanceName;

/// Parse Ganeti's uid-pool syntax: comma-separated uids and `a-b` ranges.
pub fn parse(text: &str) -> Result<Vec<(u32, u32)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{s:?} is not a uid"))
            };
            match p.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("range {p:?} runs backwards"));
                    }
                    Ok((a, b))
                }
                None => num(p).map(|u| (u, u)),
            }
        })
        .collect()
}

fn registry() -> &'static Mutex<BTreeMap<u32, InstanceName>> {
    static R: OnceLock<Mutex<BTreeMap<u32, InstanceName>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Record that `name` holds `uid` (re-adoption).
pub fn hold(uid: u32, name: &InstanceName) {
    registry()
        .lock()
        .expect("uid registry")
        .insert(uid, name.clone());
}

/// Give `name`'s uid back.
pub fn release(name: &InstanceName) {
    registry()
        .lock()
        .expect("uid registry")
        .retain(|_, n| n != name);
}

/// Uids some process runs as (real or effective).
fn uids_in_use() -> std::collections::BTreeSet<u32> {
    let mut used = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(e.path().join("status")) {
            // A zombie (an exited QEMU that init has not reaped yet) uses nothing.
            if s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                continue;
            }
            if let Some(line) = s.lines().find(|l| l.starts_with("Uid:")) {
                used.extend(
                    line.split_whitespace()
                        .skip(1)
                        .take(2)
                        .filter_map(|u| u.parse::<u32>().ok()),
                );
            }
        }
    }
    used
}

/// Take a free uid of the pool for `name`: (uid, user name).
pub fn take(pool: &[(u32, u32)], name: &InstanceName) -> Result<(u32, String), String> {
    if pool.is_empty() {
        return Err("node.uid_pool is empty".into());
    }
    let mut reg = registry().lock().expect("uid registry");
    if let Some((uid, _)) = reg.iter().find(|(_, n)| *n == name) {
        let uid = *uid;
        reg.remove(&uid);
    }
    let busy = uids_in_use();
    for &(a, b) in pool {
        for uid in a..=b {
            if reg.contains_key(&uid) || busy.contains(&uid) {
                continue;
            }
            let Some(user) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
            else {
                continue;
            };
            reg.insert(uid, name.clone());
            return Ok((uid, user.name));
        }
    }
    Err(format!("no free uid in node.uid_pool ({} uid(s): each is held by a VM, used by a process, or has no user name)", pool.iter().map(|(a, b)| b - a + 1).sum::<u32>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ganetis_pool_syntax() {
        assert_eq!(
            parse("2000-2009, 3000").unwrap(),
            vec![(2000, 2009), (3000, 3000)]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(parse("10-5").is_err());
        assert!(parse("abc").is_err());
    }
}
