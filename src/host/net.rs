//! Host side of NICs: tap devices and their setup per Ganeti NIC mode.
//!
//! kvmd opens the taps itself (so QEMU needs no privileges for them) and passes the fds to
//! QEMU: one per queue (`IFF_MULTI_QUEUE` for `virtio_net_queues > 1`), `IFF_VNET_HDR` when
//! `vnet_hdr` and the kernel supports it, vhost fds only when `vhost_net` is on and
//! `/dev/vhost-net` exists (QEMU 7.2 aborts when asked for vhost without it). Taps are not
//! persistent: when QEMU and kvmd have closed them, the kernel removes them.
//!
//! Setup per mode, run before QEMU starts: `bridged` attaches the tap to the bridge `link`;
//! `routed` adds a host route to the NIC's `ip` via the tap (in routing table `link` if set)
//! and turns on proxy ARP; `openvswitch` adds the tap to the switch `link` with `ovs-vsctl`.
//! Then the optional `node.nic_script` runs with Ganeti's environment (INSTANCE, MAC, MODE,
//! LINK, IP, INTERFACE, INTERFACE_INDEX, TAGS, ACTION, BRIDGE). Every program runs through
//! [`exec::run`] with the NIC's deadline (`node.hook_timeout`): argument lists, never a shell;
//! a hook still running at its deadline is killed with its process group and the step fails.
//!
//! Invariant: blocking; call from a blocking thread; no program without a deadline.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::host::exec::{self, ExecError};
use crate::host::sys;
use crate::model::name::InstanceName;
use crate::model::spec::{NicMode, NicSpec};

/// One tap device with its queue fds (and vhost fds).
#[derive(Debug)]
pub struct Tap {
    pub name: String,
    pub fds: Vec<OwnedFd>,
    pub vhost_fds: Vec<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("Cannot open {path}")]
    Open {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot create a tap device")]
    Tap(#[source] std::io::Error),
    /// `ip`, `ovs-vsctl` or the NIC script could not run, failed, or missed its deadline.
    #[error(transparent)]
    Program(#[from] ExecError),
}

/// Open a tap with `queues` queues. `vhost`: also open one `/dev/vhost-net` per queue.
pub fn create_tap(queues: usize, vnet_hdr: bool, vhost: bool) -> Result<Tap, NetError> {
    let mut name = String::new();
    let mut fds = Vec::new();
    let mut vhost_fds = Vec::new();
    for _ in 0..queues.max(1) {
        let tun = open_rw("/dev/net/tun")?;
        let features = sys::tun_features(tun.as_fd()).unwrap_or(0);
        let mut flags = sys::IFF_TAP | sys::IFF_NO_PI;
        if vnet_hdr && features & sys::IFF_VNET_HDR != 0 {
            flags |= sys::IFF_VNET_HDR;
        }
        if queues > 1 {
            flags |= sys::IFF_MULTI_QUEUE;
        } else {
            flags |= sys::IFF_ONE_QUEUE & features;
        }
        // The first queue creates the tap; the others attach to it by name.
        name = sys::tun_set_iff(tun.as_fd(), &name, flags).map_err(NetError::Tap)?;
        fds.push(tun);
        if vhost {
            vhost_fds.push(open_rw("/dev/vhost-net")?);
        }
    }
    Ok(Tap {
        name,
        fds,
        vhost_fds,
    })
}

fn open_rw(path: &'static str) -> Result<OwnedFd, NetError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetError::Open { path, source })
}

/// Is vhost-net usable on this host?
pub fn vhost_available() -> bool {
    Path::new("/dev/vhost-net").exists()
}

/// Run a system program (no shell) with the hook deadline.
fn run(program: &str, args: &[&str], deadline: Duration) -> Result<(), NetError> {
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    exec::run(cmd, &format!("{program} {}", args.join(" ")), deadline)?;
    Ok(())
}

/// Everything a NIC hook needs to know.
#[derive(Debug)]
pub struct NicContext<'a> {
    pub instance: &'a InstanceName,
    pub index: usize,
    pub nic: &'a NicSpec,
    pub tap: &'a str,
    pub script: Option<&'a Path>,
    /// Deadline of each program run for this NIC (`node.hook_timeout`).
    pub deadline: Duration,
}

fn mode_name(m: NicMode) -> &'static str {
    match m {
        NicMode::Bridged => "bridged",
        NicMode::Routed => "routed",
        NicMode::Openvswitch => "openvswitch",
        NicMode::User => "user",
    }
}

/// Ganeti's NIC script environment.
pub fn script_env(c: &NicContext<'_>, action: &str) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("INSTANCE".into(), c.instance.to_string()),
        ("MAC".into(), c.nic.mac.clone()),
        ("MODE".into(), mode_name(c.nic.mode).into()),
        ("INTERFACE".into(), c.tap.into()),
        ("INTERFACE_INDEX".into(), c.index.to_string()),
        ("TAGS".into(), String::new()),
        ("ACTION".into(), action.into()),
    ];
    if !c.nic.link.is_empty() {
        env.push(("LINK".into(), c.nic.link.clone()));
    }
    if let Some(ip) = &c.nic.ip {
        env.push(("IP".into(), ip.clone()));
    }
    if c.nic.mode == NicMode::Bridged {
        env.push(("BRIDGE".into(), c.nic.link.clone()));
    }
    env
}

fn run_script(c: &NicContext<'_>, action: &str) -> Result<(), NetError> {
    let Some(script) = c.script else {
        return Ok(());
    };
    let mut cmd = Command::new(script);
    cmd.arg(c.tap).env_clear().envs(script_env(c, action));
    exec::run(cmd, &format!("{} {}", script.display(), c.tap), c.deadline)?;
    Ok(())
}

/// Connect the tap per the NIC's mode, bring it up, run the NIC script (`ACTION=up`).
pub fn nic_up(c: &NicContext<'_>) -> Result<(), NetError> {
    match c.nic.mode {
        NicMode::Bridged => {
            run(
                "ip",
                &["link", "set", "dev", c.tap, "master", &c.nic.link],
                c.deadline,
            )?;
            run("ip", &["link", "set", "dev", c.tap, "up"], c.deadline)?;
        }
        NicMode::Routed => {
            run("ip", &["link", "set", "dev", c.tap, "up"], c.deadline)?;
            if let Some(ip) = &c.nic.ip {
                let dest = if ip.contains('/') {
                    ip.clone()
                } else if ip.contains(':') {
                    format!("{ip}/128")
                } else {
                    format!("{ip}/32")
                };
                let mut args = vec!["route", "replace", dest.as_str(), "dev", c.tap];
                if !c.nic.link.is_empty() {
                    args.extend(["table", c.nic.link.as_str()]);
                }
                run("ip", &args, c.deadline)?;
            }
            let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", c.tap), "1");
        }
        NicMode::Openvswitch => {
            run(
                "ovs-vsctl",
                &["--may-exist", "add-port", &c.nic.link, c.tap],
                c.deadline,
            )?;
            run("ip", &["link", "set", "dev", c.tap, "up"], c.deadline)?;
        }
        NicMode::User => {}
    }
    run_script(c, "up")
}

/// The NIC script with `ACTION=down` (after QEMU exited; the tap itself is gone by then, and
/// with it its routes and bridge port). Failures are reported, not fatal.
pub fn nic_down(c: &NicContext<'_>) -> Result<(), NetError> {
    if c.nic.mode == NicMode::Openvswitch {
        let _ = run(
            "ovs-vsctl",
            &["--if-exists", "del-port", &c.nic.link, c.tap],
            c.deadline,
        );
    }
    run_script(c, "down")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_environment_is_ganetis() {
        let name = InstanceName::parse("web1").unwrap();
        let nic = NicSpec {
            mode: NicMode::Bridged,
            link: "br0".into(),
            mac: "52:54:00:00:00:01".into(),
            ip: Some("10.0.0.5".into()),
        };
        let c = NicContext {
            instance: &name,
            index: 1,
            nic: &nic,
            tap: "tap7",
            script: None,
            deadline: Duration::from_secs(1),
        };
        let env: std::collections::HashMap<_, _> = script_env(&c, "up").into_iter().collect();
        for (k, v) in [
            ("INSTANCE", "web1"),
            ("MAC", "52:54:00:00:00:01"),
            ("MODE", "bridged"),
            ("LINK", "br0"),
            ("BRIDGE", "br0"),
            ("IP", "10.0.0.5"),
            ("INTERFACE", "tap7"),
            ("INTERFACE_INDEX", "1"),
            ("ACTION", "up"),
        ] {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn taps_are_created_with_the_requested_queues_and_vanish_when_closed() {
        if !nix::unistd::geteuid().is_root() {
            return; // needs CAP_NET_ADMIN; the integration tests run as root
        }
        let tap = create_tap(2, true, false).unwrap();
        assert!(tap.name.starts_with("tap"), "{}", tap.name);
        assert_eq!(tap.fds.len(), 2);
        let sys = format!("/sys/class/net/{}", tap.name);
        assert!(Path::new(&sys).exists());
        let name = tap.name.clone();
        drop(tap);
        // The kernel unregisters the device after the last fd closes; that can trail the
        // close by a moment (and by a concurrent fork's copy of the fd, until its exec).
        let gone = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            !Path::new(&format!("/sys/class/net/{name}")).exists()
        });
        assert!(gone, "non-persistent taps go with their fds");
    }

    fn user_nic() -> NicSpec {
        NicSpec {
            mode: NicMode::User,
            link: String::new(),
            mac: "52:54:00:00:00:02".into(),
            ip: None,
        }
    }

    #[test]
    fn the_nic_script_runs_with_ganetis_environment_and_the_tap_as_argument() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("nic-hook");
        let out = dir.path().join("seen");
        crate::host::exec::write_test_script(
            &script,
            &format!(
                "#!/bin/sh\necho \"$1 $ACTION $INSTANCE $MAC $INTERFACE\" > {}\n",
                out.display()
            ),
        );
        let (name, nic) = (InstanceName::parse("web2").unwrap(), user_nic());
        let c = NicContext {
            instance: &name,
            index: 0,
            nic: &nic,
            tap: "tap9",
            script: Some(&script),
            deadline: Duration::from_secs(10),
        };
        nic_down(&c).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "tap9 down web2 52:54:00:00:00:02 tap9\n"
        );
    }

    #[test]
    fn a_nic_script_that_hangs_fails_the_step_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("nic-hook");
        crate::host::exec::write_test_script(&script, "#!/bin/sh\nexec sleep 1000\n");
        let (name, nic) = (InstanceName::parse("web3").unwrap(), user_nic());
        let deadline = Duration::from_millis(300);
        let c = NicContext {
            instance: &name,
            index: 0,
            nic: &nic,
            tap: "tap9",
            script: Some(&script),
            deadline,
        };
        let t0 = std::time::Instant::now();
        let e = nic_up(&c).unwrap_err();
        assert!(t0.elapsed() < deadline + Duration::from_millis(700));
        assert!(
            matches!(e, NetError::Program(ExecError::TimedOut { .. })),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("nic-hook tap9 did not finish"),
            "{e}"
        );
    }
}
