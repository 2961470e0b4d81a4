//! What a QEMU binary offers, parsed from its own output: version, machines (with aliases and
//! the default), devices, and which command-line options `--help` lists (Ganeti's regexes:
//! `-no-acpi`, `-soundhw`, `-run-with` with `chroot=` and `user=`, `vhost=on|off`,
//! `fds=x:y:...:z`, `auto-read-only`, `-spice`, `-runas`, `-chroot`, ...).
//!
//! Invariant: pure parsers over recorded output, unit-tested with the real output of QEMU 7.2
//! and excerpts of other versions. Running QEMU is `host::probe`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use regex::Regex;

/// One machine type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub description: String,
    /// `pc` → `pc-i440fx-7.2`.
    pub alias_of: Option<String>,
}

/// Which command-line options `--help` lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-no-acpi` (removed in QEMU 9; then `acpi=off` on `-machine`).
    pub no_acpi: bool,
    /// `-soundhw` (removed in QEMU 7.1; then `-audio`).
    pub soundhw: bool,
    /// `-audio driver=...,model=...` (QEMU ≥ 7.1).
    pub audio: bool,
    /// `-run-with` mentioning both `chroot=` and `user=` (QEMU ≥ 9.1).
    pub run_with: bool,
    /// `-runas` (removed in QEMU 10) and `-chroot` (removed in QEMU 9).
    pub runas: bool,
    pub chroot: bool,
    /// `-netdev tap,...,vhost=on|off`.
    pub vhost: bool,
    /// `-netdev tap,...,fds=x:y:...:z` (multiqueue).
    pub tap_fds: bool,
    /// `-blockdev` help mentions `auto-read-only`.
    pub auto_read_only: bool,
    pub spice: bool,
    pub uuid: bool,
    pub display: bool,
    pub usbdevice: bool,
}

/// Facts about one QEMU binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuCaps {
    pub version: (u32, u32, u32),
    /// The whole first line of `--version`.
    pub version_text: String,
    /// Machine type marked `(default)`, if any.
    pub default_machine: Option<String>,
    pub machines: BTreeMap<String, Machine>,
    /// Device names from `-device help`.
    pub devices: BTreeSet<String>,
    /// The devices of `-device help` that sit on a PCI bus, with their aliases (`lsi`).
    pub pci_devices: BTreeSet<String>,
    /// Which of [`URL_DRIVERS`] this binary can load (`None`: not probed, e.g. from recorded
    /// output). Debian ships them in a separate package (`qemu-block-extra`).
    pub url_drivers: Option<BTreeSet<String>>,
    /// The migration capabilities this binary knows (`query-migrate-capabilities`; `None`:
    /// not probed).
    pub migration_capabilities: Option<BTreeSet<String>>,
    pub options: Options,
}

/// The URL schemes a cdrom image may use: QEMU's curl block drivers.
pub const URL_DRIVERS: &[&str] = &["http", "https", "ftp", "ftps"];

impl QemuCaps {
    /// Build from recorded outputs of `--version`, `--help`, `-machine help`, `-device help`.
    pub fn from_outputs(version: &str, help: &str, machines: &str, devices: &str) -> Option<Self> {
        let machines_parsed = parse_machines(machines);
        Some(Self {
            version: parse_version(version).or_else(|| parse_version(help))?,
            version_text: version.lines().next().unwrap_or("").trim().to_string(),
            default_machine: parse_default_machine(machines),
            machines: machines_parsed,
            devices: parse_devices(devices),
            pci_devices: parse_pci_devices(devices),
            url_drivers: None,
            migration_capabilities: None,
            options: parse_options(help),
        })
    }

    /// Is `v` at least `(major, minor)`?
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }

    pub fn has_device(&self, name: &str) -> bool {
        self.devices.contains(name)
    }

    /// The concrete machine a name stands for (aliases resolved), if this QEMU has it.
    pub fn resolve_machine(&self, name: &str) -> Option<String> {
        let m = self.machines.get(name)?;
        Some(m.alias_of.clone().unwrap_or_else(|| name.to_string()))
    }
}

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid regex"))
}

/// Parse the version from the first line of `--version`/`--help`: the first `N.N[.N]`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let c = re(&RE, r"\b(\d+)\.(\d+)(?:\.(\d+))?\b").captures(text.lines().next()?)?;
    Some((
        c[1].parse().ok()?,
        c[2].parse().ok()?,
        c.get(3).map_or(Some(0), |m| m.as_str().parse().ok())?,
    ))
}

/// The machine marked `(default)` in `-machine help` output.
pub fn parse_default_machine(text: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, r"(?m)^(\S+)\s.*\(default\)")
        .captures(text)
        .map(|c| c[1].to_string())
}

/// Every machine of `-machine help`.
pub fn parse_machines(text: &str) -> BTreeMap<String, Machine> {
    static ALIAS: OnceLock<Regex> = OnceLock::new();
    let alias = re(&ALIAS, r"\(alias of ([^)]+)\)");
    text.lines()
        .filter(|l| !l.starts_with("Supported machines") && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, rest) = l.split_once(char::is_whitespace)?;
            Some((
                name.to_string(),
                Machine {
                    description: rest.trim().to_string(),
                    alias_of: alias.captures(rest).map(|c| c[1].to_string()),
                },
            ))
        })
        .collect()
}

/// Device names of `-device help`.
pub fn parse_devices(text: &str) -> BTreeSet<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    re(&RE, r#"(?m)^name "([^"]+)""#)
        .captures_iter(text)
        .map(|c| c[1].to_string())
        .collect()
}

/// Names and aliases of the `-device help` devices on a PCI bus.
pub fn parse_pci_devices(text: &str) -> BTreeSet<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let mut out = BTreeSet::new();
    for c in re(&RE, r#"(?m)^name "([^"]+)", bus PCI(?:, alias "([^"]+)")?"#).captures_iter(text) {
        out.insert(c[1].to_string());
        if let Some(alias) = c.get(2) {
            out.insert(alias.as_str().to_string());
        }
    }
    out
}

/// Which options `--help` lists (Ganeti's help regexes, made multi-line tolerant).
pub fn parse_options(help: &str) -> Options {
    let has = |pattern: &str| Regex::new(pattern).expect("valid regex").is_match(help);
    // The help of one option runs until the next line that starts with '-'.
    let option_block = |name: &str| -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in help.lines() {
            if line.starts_with('-') {
                inside = line.starts_with(name) && line[name.len()..].starts_with([' ', '\t'])
                    || line == name;
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    };
    let run_with = option_block("-run-with");
    let tap: String = help
        .lines()
        .skip_while(|l| !l.starts_with("-netdev tap"))
        .take_while(|l| l.starts_with("-netdev tap") || !l.starts_with('-'))
        .collect::<Vec<_>>()
        .join("\n");
    Options {
        no_acpi: has(r"(?m)^-no-acpi\s"),
        soundhw: has(r"(?m)^-soundhw\s"),
        audio: has(r"(?m)^-audio\s"),
        run_with: run_with.contains("chroot=") && run_with.contains("user="),
        runas: has(r"(?m)^-runas\s"),
        chroot: has(r"(?m)^-chroot\s"),
        vhost: tap.contains("vhost=on|off"),
        tap_fds: tap.contains("fds=x:y:...:z"),
        auto_read_only: option_block("-blockdev").contains("auto-read-only=on|off"),
        spice: has(r"(?m)^-spice\s"),
        uuid: has(r"(?m)^-uuid\s"),
        display: has(r"(?m)^-display\s"),
        usbdevice: has(r"(?m)^-usbdevice\s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::Path;

    fn data(f: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(f),
        )
        .unwrap()
    }

    fn qemu_72() -> QemuCaps {
        QemuCaps::from_outputs(
            &data("qemu-7.2/version.txt"),
            &data("qemu-7.2/help.txt"),
            &data("qemu-7.2/machine-help.txt"),
            &data("qemu-7.2/device-help.txt"),
        )
        .unwrap()
    }

    #[test]
    fn pci_devices_with_their_aliases() {
        let c = qemu_72();
        for d in [
            "virtio-balloon-pci",
            "lsi",
            "lsi53c895a",
            "virtio-serial",
            "intel-hda",
        ] {
            assert!(c.pci_devices.contains(d), "{d}");
        }
        for d in [
            "scsi-hd",
            "ide-cd",
            "floppy",
            "usb-tablet",
            "ne2k_isa",
            "sb16",
        ] {
            assert!(!c.pci_devices.contains(d), "{d} is not on PCI");
        }
    }

    #[test]
    fn versions_from_several_qemus() {
        assert_eq!(parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022"), Some((7, 2, 22)));
        assert_eq!(
            parse_version("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1)"),
            Some((8, 2, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2"),
            Some((10, 0, 2))
        );
        assert_eq!(
            parse_version("QEMU emulator version 1.0 (qemu-kvm-1.0 Debian 1.0+dfsg-2)"),
            Some((1, 0, 0))
        );
        assert_eq!(parse_version("no digits here"), None);
    }

    #[test]
    fn the_real_qemu_7_2_output() {
        let c = qemu_72();
        assert_eq!(c.version, (7, 2, 22));
        assert!(c.version_text.starts_with("QEMU emulator version 7.2.22"));
        assert_eq!(c.default_machine.as_deref(), Some("pc-i440fx-7.2"));
        assert_eq!(c.resolve_machine("q35").as_deref(), Some("pc-q35-7.2"));
        assert_eq!(
            c.resolve_machine("pc-i440fx-7.2").as_deref(),
            Some("pc-i440fx-7.2")
        );
        assert_eq!(c.resolve_machine("no-such-machine"), None);
        for d in [
            "virtio-net-pci",
            "virtio-blk-pci",
            "scsi-hd",
            "lsi53c895a",
            "megasas",
            "dc390",
            "virtio-scsi-pci",
            "ide-hd",
            "ide-cd",
            "floppy",
            "usb-tablet",
            "qxl",
            "e1000",
            "ne2k_isa",
        ] {
            assert!(c.has_device(d), "{d}");
        }
        assert!(!c.has_device("lsi"), "aliases are not names");
        let o = &c.options;
        assert!(o.no_acpi && !o.soundhw && o.audio && !o.run_with && o.runas && o.chroot);
        assert!(
            o.vhost
                && o.tap_fds
                && o.auto_read_only
                && o.spice
                && o.uuid
                && o.display
                && o.usbdevice
        );
    }

    /// QEMU 9.2: `-no-acpi` and `-chroot` are gone, `-run-with` takes `chroot=` and `user=`
    /// (excerpt of the options that changed, as documented in QEMU's deprecated/removed list).
    #[test]
    fn qemu_9_2_options() {
        let help = "QEMU emulator version 9.2.0\n-audio [driver=]driver[,model=value][,prop[=value][,...]]\n-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]\n                Set miscellaneous QEMU process lifecycle options:\n-runas user     change to user id user just before starting the VM\n-netdev tap,id=str[,fd=h][,fds=x:y:...:z][,ifname=name][,script=file][,downscript=dfile]\n         [,br=bridge][,helper=helper][,sndbuf=nbytes][,vnet_hdr=on|off][,vhost=on|off]\n";
        let o = parse_options(help);
        assert!(
            o.run_with && !o.no_acpi && !o.chroot && o.runas && o.audio && o.vhost && o.tap_fds
        );
    }

    /// QEMU 6.2: `-soundhw` is still there, `-audio` is not; `-run-with` does not exist.
    #[test]
    fn qemu_6_2_options() {
        let help = "QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)\n-soundhw c1,... enable audio support\n-no-acpi        disable ACPI\n-chroot dir     chroot to dir just before starting the VM\n-runas user     change to user id user just before starting the VM\n";
        let o = parse_options(help);
        assert!(
            o.soundhw && !o.audio && o.no_acpi && o.chroot && o.runas && !o.run_with && !o.vhost
        );
        assert_eq!(parse_version(help), Some((6, 2, 0)));
    }

    /// An Ubuntu build names its default machine after the release, not the version.
    #[test]
    fn default_machine_of_an_ubuntu_build() {
        let text = "Supported machines are:\npc                   Ubuntu 21.10 PC (i440FX + PIIX, 1996) (alias of pc-i440fx-impish)\npc-i440fx-impish     Ubuntu 21.10 PC (i440FX + PIIX, 1996) (default)\npc-i440fx-6.0        Standard PC (i440FX + PIIX, 1996)\n";
        assert_eq!(
            parse_default_machine(text).as_deref(),
            Some("pc-i440fx-impish")
        );
        assert_eq!(
            parse_machines(text)["pc"].alias_of.as_deref(),
            Some("pc-i440fx-impish")
        );
        assert_eq!(
            parse_default_machine("Supported machines are:\nnone  empty machine\n"),
            None
        );
    }
}
