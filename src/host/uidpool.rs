//! Ganeti's uid pool (`security_model = pool`): each VM's QEMU runs as its own unprivileged
//! uid from `node.uid_pool`.
//!
//! A uid is free when no kvmd VM holds it (the registry below, refilled from runtime files on
//! re-adoption) and no process on the host runs as it (Ganeti's rule), and it maps to a user
//! name (QEMU before 9.1 only takes names with `-runas`). The registry makes picking atomic
//! within kvmd: a QEMU only drops to its uid after initialising, so the process scan alone
//! cannot see a start that is under way.
//!
//! The registry's lock is held only to pick and record a uid, never during the `/proc` scan or
//! a passwd lookup (NSS may be slow), so [`release`] on an actor thread never waits for them.
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
    // The slow parts run without the lock, so that `release` (on an actor thread) never waits
    // for them: the `/proc` scan first, the passwd lookup of each pick after. A uid is reserved
    // in the registry before its lookup, so two starts never pick the same one.
    let busy = uids_in_use();
    let mut nameless = std::collections::BTreeSet::new();
    {
        let mut reg = registry().lock().expect("uid registry");
        reg.retain(|_, n| n != name);
    }
    loop {
        let picked = {
            let mut reg = registry().lock().expect("uid registry");
            let free = pool.iter().flat_map(|&(a, b)| a..=b).find(|uid| {
                !reg.contains_key(uid) && !busy.contains(uid) && !nameless.contains(uid)
            });
            if let Some(uid) = free {
                reg.insert(uid, name.clone());
            }
            free
        };
        let Some(uid) = picked else { break };
        match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            Ok(Some(user)) => return Ok((uid, user.name)),
            _ => {
                registry().lock().expect("uid registry").remove(&uid);
                nameless.insert(uid);
            }
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

    /// A uid with a user name and no process running as it, if this host has one.
    fn idle_uid_with_a_name() -> Option<u32> {
        let busy = uids_in_use();
        (1..65535).find(|&u| {
            !busy.contains(&u)
                && !registry().lock().unwrap().contains_key(&u)
                && nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u))
                    .ok()
                    .flatten()
                    .is_some()
        })
    }

    #[test]
    fn a_uid_is_held_until_released_and_busy_or_nameless_uids_are_skipped() {
        let Some(uid) = idle_uid_with_a_name() else {
            return;
        };
        let (a, b) = (
            InstanceName::parse("uidpool-a").unwrap(),
            InstanceName::parse("uidpool-b").unwrap(),
        );
        // Our own uid is busy (this process runs as it); a uid far above passwd has no name.
        let me = nix::unistd::getuid().as_raw();
        let nameless = 4_000_000_000;
        let pool = [(me, me), (nameless, nameless), (uid, uid)];
        let (got, user) = take(&pool, &a).unwrap();
        assert_eq!(got, uid);
        assert!(!user.is_empty());
        assert!(take(&pool, &b).is_err(), "held by a");
        // Taking again for the same instance gives its own uid back first.
        assert_eq!(take(&pool, &a).unwrap().0, uid);
        release(&a);
        assert_eq!(take(&pool, &b).unwrap().0, uid);
        release(&b);
        assert!(!registry().lock().unwrap().contains_key(&uid));
    }
}
