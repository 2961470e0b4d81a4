//! Where every disk, cdrom and NIC sits — the slot plan — and a model of how QEMU places the
//! PCI devices kvmd does not place itself, so that a slot collision is found before QEMU
//! refuses the command line.
//!
//! Ganeti's placement is kept so that a guest sees the same hardware under kvmd as under
//! Ganeti: PCI slots from `kvm_pci_reservations` upwards for disks then NICs (an IDE disk
//! reserves one too, unused), SCSI ids from 0 for disks, IDE positions in Ganeti 3.0.2's
//! `-drive if=ide` order (IDE cdroms first, then IDE disks). kvmd adds what Ganeti leaves to
//! chance: SCSI cdroms get ids after the disks, and every IDE device an explicit bus and unit.
//!
//! Invariant: pure, like the rest of `cmdline`.

use std::collections::BTreeMap;

use super::SCSI_DISK_TYPES;
use crate::model::field_error::FieldError;
use crate::model::hotplug::hotplug_port_id;
use crate::model::hvparams::{key, HvParams};
use crate::model::spec::InstanceSpec;
use crate::qemu::caps::QemuCaps;

/// Where a device sits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Slot {
    /// A fixed slot on the root PCI bus (`pci.0`, or `pcie.0` on q35).
    Pci { bus: String, slot: u8 },
    /// A SCSI id on `scsi.0`.
    Scsi { id: u8 },
    /// An IDE bus (`ide.N`) and unit. `pci` is the PCI slot Ganeti reserves for an IDE disk
    /// (unused by QEMU; kept so that the NICs after it keep Ganeti's addresses).
    Ide {
        bus: u8,
        unit: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pci: Option<u8>,
    },
    /// Placed by QEMU (ISA devices; a virtio cdrom).
    Auto,
}

impl Slot {
    pub(super) fn device_props(&self) -> String {
        match self {
            Slot::Pci { bus, slot } => format!(",bus={bus},addr={slot:#x}"),
            Slot::Scsi { id } => format!(",bus=scsi.0,channel=0,scsi-id={id},lun=0"),
            Slot::Ide { bus, unit, .. } => format!(",bus=ide.{bus},unit={unit}"),
            Slot::Auto => String::new(),
        }
    }
}

/// Device placement of one instance (kept in the runtime file).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotPlan {
    pub disks: Vec<Slot>,
    pub nics: Vec<Slot>,
    /// One per configured cdrom, `cdrom1` before `cdrom2`.
    #[serde(default)]
    pub cdroms: Vec<Slot>,
    /// Spare `pcie-root-port`s for hot-plug (q35 only): `hotport0`.. at slot 0x1e.
    #[serde(default)]
    pub hotplug_ports: u8,
}

/// The most spare root ports: the eight functions of one slot.
pub const MAX_HOTPLUG_PORTS: u8 = 8;
/// The q35 slot whose functions are the spare root ports (disks and NICs stop at 0x1c, the
/// `-usb` controllers sit at 0x1d, ICH9 at 0x1f).
pub const HOTPLUG_PORT_SLOT: u8 = 0x1e;

/// The `-device` of spare root port `i`: function `i` of slot 0x1e (function 0 says the slot
/// is multifunction), its own chassis, hot-plug on (QEMU's default).
pub fn hotplug_port_device(i: u8) -> String {
    format!(
        "pcie-root-port,id={},bus=pcie.0,addr={HOTPLUG_PORT_SLOT:#x}.{i},chassis={},port={:#x}{}",
        hotplug_port_id(i),
        u16::from(i) + 1,
        0x10 + u16::from(i),
        if i == 0 { ",multifunction=on" } else { "" }
    )
}

/// One configured cdrom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cdrom {
    /// `cdrom1` or `cdrom2` (the blockdev node name).
    pub id: &'static str,
    pub image: String,
    pub bootable: bool,
    /// The QEMU device: `ide-cd`, `virtio-blk-pci` or `scsi-cd`.
    pub device: &'static str,
}

/// The cdrom type in effect: `cdrom_disk_type`, or `disk_type` when that is empty.
fn cdrom_type(hv: &HvParams) -> &str {
    match hv.str(key::CDROM_DISK_TYPE) {
        "" => hv.str(key::DISK_TYPE),
        t => t,
    }
}

/// The configured cdroms and their devices, or why a cdrom has none.
///
/// A bootable cdrom of a paravirtual type goes on IDE: SeaBIOS boots El Torito images only
/// from cdrom devices, and `virtio-blk-pci` looks like a hard disk to it. Ganeti 3.0.2 puts
/// every bootable cdrom on IDE (`-drive ...,if=ide`); a `scsi-cd` boots as it is.
pub fn cdroms(hv: &HvParams) -> Result<Vec<Cdrom>, FieldError> {
    let boot_cdrom = hv.str(key::KERNEL_PATH).is_empty() && hv.str(key::BOOT_ORDER) == "cdrom";
    let mut out = Vec::new();
    for (k, id) in [
        (key::CDROM_IMAGE_PATH, "cdrom1"),
        (key::CDROM2_IMAGE_PATH, "cdrom2"),
    ] {
        let image = hv.str(k);
        if image.is_empty() {
            continue;
        }
        let bootable = boot_cdrom && id == "cdrom1";
        let device = match cdrom_type(hv) {
            "ide" => "ide-cd",
            "paravirtual" if bootable => "ide-cd",
            "paravirtual" => "virtio-blk-pci",
            t if SCSI_DISK_TYPES.contains(&t) => "scsi-cd",
            other => {
                let field = if hv.str(key::CDROM_DISK_TYPE).is_empty() {
                    key::DISK_TYPE.name()
                } else {
                    key::CDROM_DISK_TYPE.name()
                };
                return Err(FieldError::new(
                    field,
                    format!("{other:?}"),
                    "cdroms can be ide, paravirtual or a scsi type (scsi-cd); set cdrom_disk_type",
                )
                .with_allowed(["ide", "paravirtual", "scsi-cd"]));
            }
        };
        out.push(Cdrom {
            id,
            image: image.to_string(),
            bootable,
            device,
        });
    }
    Ok(out)
}

/// Which PC a machine type is: its root bus, and how its IDE positions are numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    /// `pc-i440fx-*`: PIIX IDE, two buses of two units; VGA at slot 2.
    I440fx,
    /// `pc-q35-*`: AHCI, six buses of one unit; VGA at slot 1, ICH9 at 0x1f.
    Q35,
}

impl Board {
    /// The board of a concrete machine type, or `None` for machines without a PCI PC board
    /// (microvm, isapc, none, x-remote), which cannot take kvmd's PCI devices.
    pub fn of(machine: &str) -> Option<Board> {
        if machine.starts_with("pc-q35-") || machine == "q35" {
            Some(Board::Q35)
        } else if machine.starts_with("pc-i440fx-")
            || machine.starts_with("pc-1.")
            || machine == "pc"
        {
            Some(Board::I440fx)
        } else {
            None
        }
    }

    fn bus(self) -> &'static str {
        match self {
            Board::I440fx => "pci.0",
            Board::Q35 => "pcie.0",
        }
    }

    /// The IDE position of the `i`-th IDE device, if there is one.
    fn ide(self, i: usize) -> Option<(u8, u8)> {
        let i = u8::try_from(i).ok()?;
        match self {
            Board::I440fx => (i < 4).then_some((i / 2, i % 2)),
            Board::Q35 => (i < 6).then_some((i, 0)),
        }
    }

    /// The last slot for disks and NICs: q35 keeps 0x1d for the `-usb` controllers kvmd
    /// always adds and 0x1f for ICH9.
    fn last_slot(self) -> u8 {
        match self {
            Board::I440fx => 31,
            Board::Q35 => 0x1c,
        }
    }

    fn ide_positions(self) -> usize {
        match self {
            Board::I440fx => 4,
            Board::Q35 => 6,
        }
    }
}

/// The highest SCSI id of a controller (QEMU's `max_target`).
fn max_scsi_id(controller: &str) -> u8 {
    match controller {
        "virtio-scsi-pci" => 255,
        "megasas" => 64,
        _ => 7, // lsi, dc390
    }
}

/// Assign every disk, cdrom and NIC its place.
pub fn plan_slots(
    spec: &InstanceSpec,
    hv: &HvParams,
    board: Board,
    cdroms: &[Cdrom],
) -> Result<SlotPlan, Vec<FieldError>> {
    let mut errs = Vec::new();
    let disk_type = hv.str(key::DISK_TYPE);
    let scsi_disks = SCSI_DISK_TYPES.contains(&disk_type);
    let ide_disks = disk_type == "ide";
    let mut plan = SlotPlan::default();

    // IDE: cdroms first, then disks (Ganeti 3.0.2's -drive if=ide order).
    let ide_cdroms = cdroms.iter().filter(|c| c.device == "ide-cd").count();
    let ide_count = ide_cdroms + if ide_disks { spec.disks.len() } else { 0 };
    if ide_count > board.ide_positions() {
        // Only disks can overflow a bus (there are at most two cdroms).
        errs.push(FieldError::new(
            key::DISK_TYPE.name(),
            format!("{disk_type:?}"),
            format!(
                "puts {ide_count} devices on IDE ({ide_cdroms} cdroms, {} disks); this machine has {} IDE positions",
                ide_count - ide_cdroms,
                board.ide_positions()
            ),
        ));
    }
    let mut next_ide = 0usize;
    let mut ide = || {
        let (bus, unit) = board.ide(next_ide).unwrap_or((0, 0));
        next_ide += 1;
        Slot::Ide {
            bus,
            unit,
            pci: None,
        }
    };

    // SCSI: disks from id 0, then cdroms.
    let scsi_cdroms = cdroms.iter().filter(|c| c.device == "scsi-cd").count();
    let scsi_count = scsi_cdroms + if scsi_disks { spec.disks.len() } else { 0 };
    let max_id = max_scsi_id(hv.str(key::SCSI_CONTROLLER_TYPE));
    if scsi_count > usize::from(max_id) + 1 {
        errs.push(FieldError::new(
            key::DISK_TYPE.name(),
            format!("{disk_type:?}"),
            format!(
                "puts {scsi_count} devices on SCSI; scsi_controller_type {:?} takes SCSI ids 0..{max_id}",
                hv.str(key::SCSI_CONTROLLER_TYPE)
            ),
        ));
    }
    let mut next_scsi = 0u8;
    let mut scsi = || {
        let id = next_scsi;
        next_scsi = next_scsi.saturating_add(1);
        Slot::Scsi { id }
    };

    // PCI: disks, then NICs, from kvm_pci_reservations (checked to be 0..=32).
    let last = board.last_slot();
    let mut next_pci = u8::try_from(hv.int(key::KVM_PCI_RESERVATIONS)).unwrap_or(u8::MAX);
    let mut pci = |what: &str| -> Result<u8, FieldError> {
        if next_pci > last {
            return Err(FieldError::new(
                key::KVM_PCI_RESERVATIONS.name(),
                hv.int(key::KVM_PCI_RESERVATIONS).to_string(),
                format!(
                    "leaves no PCI slot for {what} (slots {}..{last:#x} are for disks and NICs)",
                    hv.int(key::KVM_PCI_RESERVATIONS)
                ),
            ));
        }
        next_pci += 1;
        Ok(next_pci - 1)
    };

    // SCSI cdroms are numbered after the disks, below; virtio ones QEMU places.
    for c in cdroms {
        plan.cdroms.push(if c.device == "ide-cd" {
            ide()
        } else {
            Slot::Auto
        });
    }
    for i in 0..spec.disks.len() {
        let slot = if scsi_disks {
            scsi()
        } else if ide_disks {
            match (ide(), pci(&format!("disk[{i}]"))) {
                (Slot::Ide { bus, unit, .. }, Ok(p)) => Slot::Ide {
                    bus,
                    unit,
                    pci: Some(p),
                },
                (_, Err(e)) => {
                    errs.push(e);
                    break;
                }
                (other, Ok(_)) => other,
            }
        } else if disk_type == "paravirtual" {
            match pci(&format!("disk[{i}]")) {
                Ok(slot) => Slot::Pci {
                    bus: board.bus().into(),
                    slot,
                },
                Err(e) => {
                    errs.push(e);
                    break;
                }
            }
        } else {
            Slot::Auto
        };
        plan.disks.push(slot);
    }
    for (c, slot) in cdroms.iter().zip(plan.cdroms.iter_mut()) {
        if c.device == "scsi-cd" {
            *slot = scsi();
        }
    }
    for i in 0..spec.nics.len() {
        if hv.str(key::NIC_TYPE) == "ne2k_isa" {
            plan.nics.push(Slot::Auto);
            continue;
        }
        match pci(&format!("nic[{i}]")) {
            Ok(slot) => plan.nics.push(Slot::Pci {
                bus: board.bus().into(),
                slot,
            }),
            Err(e) => {
                errs.push(e);
                break;
            }
        }
    }
    if errs.is_empty() {
        Ok(plan)
    } else {
        Err(errs)
    }
}

/// Sound models that are PCI cards (QEMU places them before any `-device`).
const PCI_SOUND: &[&str] = &["ac97", "es1370", "hda"];

/// The value of `key=` in a QEMU option string (`driver,key=value,...`).
fn prop<'a>(opts: &'a str, key: &str) -> Option<&'a str> {
    opts.split(',')
        .skip(1)
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The root PCI bus as QEMU fills it.
struct PciBus {
    /// (slot, function) → what holds it, and whether `kvm_extra` put it there.
    taken: BTreeMap<(u8, u8), (String, bool)>,
    /// One past the highest slot below 0x1d that QEMU placed itself: the reservations must
    /// cover it.
    needed: u8,
    /// `kvm_pci_reservations`, for errors.
    reservations: String,
}

impl PciBus {
    fn fixed(&mut self, slot: u8, what: &str) {
        self.taken.insert((slot, 0), (what.to_string(), false));
        if slot < 0x1d {
            self.needed = self.needed.max(slot + 1);
        }
    }

    /// QEMU's choice for a device without `addr=`: the lowest slot with nothing in it.
    fn auto(&mut self, what: String, errs: &mut Vec<FieldError>) {
        match (0u8..32).find(|s| !self.taken.keys().any(|(slot, _)| slot == s)) {
            Some(s) => self.fixed(s, &what),
            None => errs.push(FieldError::new(
                key::KVM_PCI_RESERVATIONS.name(),
                self.reservations.clone(),
                format!("no PCI slot is left for {what}, which QEMU places itself"),
            )),
        }
    }
}

/// `addr=S` or `addr=S.F` (hex, with or without `0x`).
fn parse_addr(addr: &str) -> Option<(u8, u8)> {
    let (slot, function) = addr.split_once('.').unwrap_or((addr, "0"));
    let hex = |v: &str| u8::from_str_radix(v.trim_start_matches("0x"), 16).ok();
    Some((hex(slot)?, hex(function)?))
}

/// Replay QEMU's PCI placement over a finished argv: the board's own devices, the VGA card
/// (unless `-vga none`, or `-nodefaults` without a `-vga`), the `-usb` controllers (q35),
/// sound cards, then every `-device` in order — those with an `addr=` take that slot and
/// function, the others the lowest empty slot. A slot and function taken twice is an error
/// naming `kvm_pci_reservations` (kvmd's devices) or `kvm_extra` (the operator's). Not
/// modelled: JSON `-device {...}` and `-machine usb=off` in `kvm_extra`.
pub fn check_pci(
    board: Board,
    argv: &[String],
    extra: &[String],
    hv: &HvParams,
    caps: &QemuCaps,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut bus = PciBus {
        taken: BTreeMap::new(),
        needed: 0,
        reservations: hv.int(key::KVM_PCI_RESERVATIONS).to_string(),
    };
    bus.fixed(0, "the host bridge");
    let vga_slot = match board {
        Board::I440fx => {
            bus.fixed(1, "the PIIX3 ISA/IDE/USB functions");
            2
        }
        Board::Q35 => {
            bus.fixed(0x1f, "the ICH9 LPC/SATA/SMBus functions");
            1
        }
    };
    let opt = |name: &'static str| {
        argv.windows(2)
            .filter(move |w| w[0] == name)
            .map(|w| w[1].as_str())
    };
    let vga = match opt("-vga").next_back() {
        Some(v) => v != "none",
        None => !argv.iter().any(|a| a == "-nodefaults"),
    };
    if vga {
        bus.fixed(vga_slot, "the VGA card");
    }
    if board == Board::Q35 && argv.iter().any(|a| a == "-usb") {
        bus.fixed(0x1d, "the USB controllers of -usb");
    }
    for a in opt("-audio").chain(opt("-soundhw")) {
        let model = prop(a, "model").unwrap_or(a);
        if PCI_SOUND.contains(&model) {
            bus.auto(format!("sound card {model}"), &mut errs);
        }
    }
    let from_extra = |dev: &str| extra.windows(2).any(|w| w[0] == "-device" && w[1] == dev);
    for dev in opt("-device") {
        let first = dev.split(',').next().unwrap_or("");
        let driver = first.strip_prefix("driver=").unwrap_or(first);
        let on_root = prop(dev, "bus").is_none_or(|b| b == board.bus());
        if !caps.pci_devices.contains(driver) || !on_root {
            continue;
        }
        let what =
            prop(dev, "id").map_or_else(|| driver.to_string(), |id| format!("{driver} {id}"));
        let Some(addr) = prop(dev, "addr") else {
            bus.auto(what, &mut errs);
            continue;
        };
        let Some((slot, function)) = parse_addr(addr) else {
            continue;
        };
        match bus.taken.get(&(slot, function)) {
            Some((holder, holder_extra)) if from_extra(dev) || *holder_extra => {
                errs.push(FieldError::new(
                    "kvm_extra",
                    format!("{:?}", hv.str(key::KVM_EXTRA)),
                    format!("{what} and {holder} both want PCI slot {slot:#x}.{function}"),
                ))
            }
            Some((holder, _)) if slot >= 0x1d => errs.push(FieldError::new(
                key::KVM_PCI_RESERVATIONS.name(),
                bus.reservations.clone(),
                format!("puts {what} on PCI slot {slot:#x}, which QEMU keeps for {holder}"),
            )),
            Some((holder, _)) => errs.push(FieldError::new(
                key::KVM_PCI_RESERVATIONS.name(),
                bus.reservations.clone(),
                format!(
                    "puts {what} on PCI slot {slot:#x}, which {holder} already takes; with these devices it must be at least {}",
                    bus.needed
                ),
            )),
            None => {
                bus.taken.insert((slot, function), (what, from_extra(dev)));
            }
        }
    }
    errs
}
