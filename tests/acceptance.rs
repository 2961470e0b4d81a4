//! "validate says ok" implies "QEMU starts": a generated family of configurations — every disk
//! type × cdrom type × boot order × machine type × NIC model, with disk, cdrom and NIC counts,
//! floppy, SCSI controller, PCI reservations, VGA card, sound card, USB mouse, ACPI and guest
//! agent varied along — is
//! validated by kvmd's own checks, and every configuration they accept has its argv (the
//! builder a start runs) started on the real QEMU, paused (`-S`, no guest runs), which must
//! come up and answer QMP. Configurations kvmd refuses must be refused for a reason the
//! family expects (floppy on q35, more IDE devices than positions, PCI slot collisions), and
//! a refused PCI layout is started without the check to show that QEMU refuses it too.
//!
//! The argv is used as built, with one change: the QMP chardev gets a path instead of the
//! fd a real start would pass.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmd::model::hvparams::{HvOverrides, HvValue};
use kvmd::model::spec::{Accel, DiskFormat, DiskSpec, InstanceSpec, NicMode, NicSpec, NodeConfig};
use support::images;

const QEMU: &str = "/usr/bin/qemu-system-x86_64";
const DISK_TYPES: &[&str] = &["paravirtual", "ide", "scsi-hd"];
const CDROM_TYPES: &[&str] = &["", "ide", "paravirtual", "scsi-cd"];
const BOOT_ORDERS: &[&str] = &["disk", "cdrom", "floppy", "network"];
const MACHINES: &[&str] = &["pc", "q35"];
const NIC_TYPES: &[&str] = &[
    "paravirtual",
    "e1000",
    "rtl8139",
    "ne2k_pci",
    "ne2k_isa",
    "pcnet",
    "i82551",
    "i82557b",
    "i82559er",
];
const SCSI_CONTROLLERS: &[&str] = &["lsi", "virtio-scsi-pci", "megasas", "dc390"];
const VGAS: &[&str] = &["none", "std", "cirrus", "virtio", "qxl", "vmware"];
const SOUND: &[&str] = &["hda", "ac97", "es1370", "sb16", "adlib", "cs4231a", "gus"];

/// The fields a refusal of this family may name.
const EXPECTED_REFUSALS: &[&str] = &[
    "hvparams.floppy_image_path",
    "hvparams.disk_type",
    "hvparams.kvm_pci_reservations",
];

#[derive(Clone, Debug)]
struct Config {
    index: usize,
    hv: Vec<(&'static str, HvValue)>,
    disks: usize,
    nics: usize,
}

/// The whole product of the five main dimensions; the others vary with the index so that
/// every value of each appears many times, deterministically.
fn family() -> Vec<Config> {
    let mut out = Vec::new();
    for &disk_type in DISK_TYPES {
        for &cdrom_type in CDROM_TYPES {
            for &boot in BOOT_ORDERS {
                for &machine in MACHINES {
                    for &nic in NIC_TYPES {
                        let i = out.len();
                        let s = |v: &str| HvValue::Str(v.into());
                        let mut hv = vec![
                            ("kernel_path", s("")),
                            ("disk_type", s(disk_type)),
                            ("cdrom_disk_type", s(cdrom_type)),
                            ("boot_order", s(boot)),
                            ("machine_version", s(machine)),
                            ("nic_type", s(nic)),
                            ("scsi_controller_type", s(SCSI_CONTROLLERS[(i / 3) % 4])),
                        ];
                        let cdroms = if boot == "cdrom" { 1 + i % 2 } else { i % 3 };
                        if cdroms >= 1 {
                            hv.push(("cdrom_image_path", s("@ISO1")));
                        }
                        if cdroms == 2 {
                            hv.push(("cdrom2_image_path", s("@ISO2")));
                        }
                        // Floppies mostly where they fit, sometimes on q35 to be refused.
                        if (machine == "pc" && i % 2 == 0) || boot == "floppy" && i % 7 == 0 {
                            hv.push(("floppy_image_path", s("@FLOPPY")));
                        }
                        if i % 11 == 0 {
                            hv.push((
                                "kvm_pci_reservations",
                                HvValue::Int([3, 4, 5, 6][(i / 11) % 4]),
                            ));
                        }
                        if i % 3 == 0 {
                            hv.push(("vga", s(VGAS[(i / 3) % VGAS.len()])));
                        }
                        if i % 5 == 0 {
                            hv.push(("soundhw", s(SOUND[(i / 5) % SOUND.len()])));
                        }
                        if i % 7 == 0 {
                            hv.push(("usb_mouse", s(["mouse", "tablet"][(i / 7) % 2])));
                        }
                        if i % 4 == 1 {
                            hv.push(("use_guest_agent", HvValue::Bool(true)));
                        }
                        if i % 9 == 4 {
                            hv.push(("acpi", HvValue::Bool(false)));
                        }
                        out.push(Config {
                            index: i,
                            hv,
                            disks: [1, 2, 3, 0][i % 4],
                            // ISA NE2000s share one I/O port: one per VM.
                            nics: if nic == "ne2k_isa" { 1 } else { 1 + i % 2 },
                        });
                    }
                }
            }
        }
    }
    out
}

/// Per worker: its own images (QEMU locks writable disks).
struct Media {
    dir: PathBuf,
}

impl Media {
    fn new(dir: PathBuf) -> Media {
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..3 {
            images::disk(&dir.join(format!("disk{i}.img")), "DISK");
        }
        images::iso(&dir.join("1.iso"), "CDROM");
        images::iso(&dir.join("2.iso"), "CDROM2");
        images::floppy(&dir.join("floppy.img"), "FLOPPY");
        Media { dir }
    }

    fn path(&self, placeholder: &str) -> String {
        let file = match placeholder {
            "@ISO1" => "1.iso",
            "@ISO2" => "2.iso",
            "@FLOPPY" => "floppy.img",
            other => return other.to_string(),
        };
        self.dir.join(file).display().to_string()
    }
}

fn spec_of(c: &Config, media: &Media) -> InstanceSpec {
    let mut hvparams = HvOverrides::new();
    for (k, v) in &c.hv {
        let v = match v {
            HvValue::Str(s) => HvValue::Str(media.path(s)),
            other => other.clone(),
        };
        hvparams.insert(k.to_string(), v);
    }
    let name = format!("acc{}", c.index);
    InstanceSpec {
        uuid: kvmd::model::spec::uuid_from_name(&name),
        name: kvmd::model::name::InstanceName::parse(&name).unwrap(),
        memory: 64,
        min_memory: 64,
        vcpus: 1,
        network_port: None,
        disks: (0..c.disks)
            .map(|i| DiskSpec {
                path: media.dir.join(format!("disk{i}.img")),
                format: DiskFormat::Raw,
                readonly: false,
            })
            .collect(),
        nics: (0..c.nics)
            .map(|i| NicSpec {
                mode: NicMode::User,
                link: String::new(),
                mac: format!("52:54:00:ac:{:02x}:{i:02x}", c.index % 256),
                ip: None,
            })
            .collect(),
        hvparams,
        autostart: false,
    }
}

enum Outcome {
    /// Refused by kvmd, and (for PCI collisions, where the argv can still be built without
    /// the check) QEMU refused it too.
    Refused(Vec<String>),
    Started,
    QemuFailed(String),
    /// kvmd refused a PCI collision that QEMU starts.
    QemuStarted(String),
}

/// Start the argv paused; up means QEMU greeted on QMP.
fn start_paused(argv: &[String], run: &Path) -> Result<(), String> {
    let qmp = run.join("acceptance-qmp.sock");
    let mut argv = support::with_qmp_path(argv, &qmp);
    if !argv.iter().any(|a| a == "-S") {
        argv.push("-S".into());
    }
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let result = loop {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).ok();
            break Err(format!("QEMU exited ({st}): {}", err.trim()));
        }
        if let Ok(s) = UnixStream::connect(&qmp) {
            // The greeting comes from QMP's own thread, even while QEMU still creates its
            // devices: only an answer from the main loop says the machine is up.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut w = s.try_clone().unwrap();
            std::io::Write::write_all(
                &mut w,
                b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n",
            )
            .ok();
            let status = BufReader::new(s)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.contains("\"status\""));
            break match status {
                Some(l) if l.contains("\"prelaunch\"") => Ok(()),
                Some(l) => Err(format!("unexpected status: {l}")),
                None => {
                    let _ = child.wait();
                    let mut err = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).ok();
                    Err(format!("QEMU exited before answering: {}", err.trim()))
                }
            };
        }
        if Instant::now() > deadline {
            break Err("QEMU did not come up within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn run_one(c: &Config, media: &Media, node: &NodeConfig) -> Outcome {
    let spec = spec_of(c, media);
    let caps = kvmd::host::probe::probe(Path::new(QEMU), node.probe_timeout).unwrap();
    let hv = spec.effective_hvparams(node);
    // What `kvmctl validate` runs for one instance.
    let errs = kvmd::host::validate::instance(&spec, node, false);
    let fields: Vec<String> = errs.iter().map(|e| e.field.clone()).collect();
    let pci_only = !errs.is_empty() && fields.iter().all(|f| f == "hvparams.kvm_pci_reservations");
    let cl = if errs.is_empty() {
        kvmd::host::validate::dry_build(&spec, &hv, node, &caps)
            .expect("validate accepted it, so the argv builds")
    } else if pci_only {
        // The argv as it would be without the PCI check: QEMU must refuse it too.
        kvmd::host::validate::dry_build_with(
            &spec,
            &hv,
            node,
            &caps,
            kvmd::qemu::cmdline::build_unchecked,
        )
        .expect("only the PCI check refused it")
    } else {
        return Outcome::Refused(fields);
    };
    let run = node.run_dir.join(spec.name.as_str());
    std::fs::create_dir_all(&run).unwrap();
    let started = start_paused(&cl.argv, &run);
    let _ = std::fs::remove_dir_all(&run);
    let argv = cl.argv.join(" ");
    match (started, pci_only) {
        (Ok(()), false) => Outcome::Started,
        (Err(e), false) => Outcome::QemuFailed(format!("{e}\n  argv: {argv}")),
        (Err(_), true) => Outcome::Refused(fields),
        (Ok(()), true) => Outcome::QemuStarted(format!("{errs:?}\n  argv: {argv}")),
    }
}

#[test]
fn every_configuration_validate_accepts_starts_on_the_real_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeConfig::defaults();
    node.run_dir = dir.path().join("run");
    node.accelerator = Accel::Tcg;
    node.qemu = QEMU.into();
    node.hvparams
        .insert("vhost_net".into(), HvValue::Bool(false));
    let configs = family();
    let started_at = Instant::now();
    let workers = 2;
    let results: Vec<(usize, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let configs = &configs;
                let node = &node;
                let media = Media::new(dir.path().join(format!("media{w}")));
                scope.spawn(move || {
                    configs
                        .iter()
                        .skip(w)
                        .step_by(workers)
                        .map(|c| (c.index, run_one(c, &media, node)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut started = 0;
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (i, outcome) in &results {
        match outcome {
            Outcome::Started => started += 1,
            Outcome::Refused(fields) => {
                for f in fields {
                    *refused.entry(f.clone()).or_default() += 1;
                    if !EXPECTED_REFUSALS.contains(&f.as_str()) {
                        failures.push(format!("config {i} {:?}: refused for {f}", configs[*i]));
                    }
                }
            }
            Outcome::QemuStarted(e) => failures.push(format!(
                "config {i} {:?}: kvmd refused a PCI layout QEMU starts: {e}",
                configs[*i]
            )),
            Outcome::QemuFailed(e) => failures.push(format!(
                "config {i} {:?}: validate said ok, QEMU refused: {e}",
                configs[*i]
            )),
        }
    }
    eprintln!(
        "acceptance: {} configurations, {started} accepted and started on QEMU, {} refused {refused:?}, in {:.1} s",
        configs.len(),
        configs.len() - started,
        started_at.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The family exercises both sides: most configurations start, every refusal kind occurs.
    assert!(
        started * 10 >= configs.len() * 7,
        "only {started} of {} started",
        configs.len()
    );
    for f in EXPECTED_REFUSALS {
        assert!(
            refused.contains_key(*f),
            "no configuration was refused for {f}"
        );
    }
}
