//! The requests kvmd takes, as ONE table: each request's name, its fields (name, type,
//! required or not, default, doc) and a builder. Parsing, the `unknown_request` and "is not a
//! field of" errors, and the documentation of the requests all come from [`REQUESTS`].
//!
//! Job ids travel as `job_id`: `id` is the envelope's request id, echoed in the reply.
//!
//! Invariant: a request's fields are declared only here; every bad field of a request is
//! reported at once; an encoded request always parses back to itself.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::api::{ApiError, ApiRequest, ErrorCode, JobRef};
use crate::model::field_error::FieldError;
use crate::model::job::JobId;
use crate::model::name::{InstanceName, NAME_RULE};

/// The longest rejected value echoed back in an error.
const MAX_ECHO: usize = 200;

/// The longest `timeout` a request may ask for, in seconds.
const MAX_TIMEOUT_S: u64 = 86_400;

/// Show a rejected JSON value, shortened if long.
pub(super) fn echo(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= MAX_ECHO {
        return text;
    }
    let mut cut = MAX_ECHO;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// What a request field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// An instance name (see the name rule).
    Name,
    Bool,
    /// Whole seconds, 0 to 86400.
    Seconds,
    /// An event sequence number.
    Seq,
    /// A job id: an integer, or a string of digits (for clients whose numbers are doubles).
    JobId,
    /// A string kvmd relays as is (a migration blob).
    Text,
    /// A JSON object (an instance definition), kept as its JSON text.
    Object,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Name => "name",
            FieldType::Bool => "boolean",
            FieldType::Seconds => "integer (seconds, 0-86400)",
            FieldType::Seq => "integer (event sequence number)",
            FieldType::JobId => "integer (job id)",
            FieldType::Text => "string",
            FieldType::Object => "object",
        }
    }
}

/// What an absent (or null) field means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldDefault {
    /// The field must be given.
    Required,
    /// A boolean's value when absent.
    Bool(bool),
    /// No value; the words say what that means.
    Absent(&'static str),
}

/// One field of a request.
#[derive(Debug)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    pub default: FieldDefault,
    pub doc: &'static str,
}

impl FieldSpec {
    pub fn required(&self) -> bool {
        self.default == FieldDefault::Required
    }
}

/// One request: its name, fields and how it is built from them.
#[derive(Debug)]
pub struct RequestSpec {
    pub name: &'static str,
    pub doc: &'static str,
    pub fields: &'static [FieldSpec],
    build: fn(&mut Args) -> Option<ApiRequest>,
}

const fn field(
    name: &'static str,
    ty: FieldType,
    default: FieldDefault,
    doc: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        default,
        doc,
    }
}

const NAME: FieldSpec = field(
    "name",
    FieldType::Name,
    FieldDefault::Required,
    "The instance.",
);
const WAIT: FieldSpec = field(
    "wait",
    FieldType::Bool,
    FieldDefault::Bool(true),
    "Reply when the operation has finished; false: reply at once with the job (`accepted`).",
);
const TIMEOUT: FieldSpec = field(
    "timeout",
    FieldType::Seconds,
    FieldDefault::Absent("node.stop_timeout"),
    "How long to wait for the guest before escalating to signals.",
);

/// Every request kvmd takes.
pub static REQUESTS: &[RequestSpec] = &[
    RequestSpec {
        name: "ping",
        doc: "Check that kvmd answers; the reply carries its version.",
        fields: &[],
        build: |_| Some(ApiRequest::Ping),
    },
    RequestSpec {
        name: "list",
        doc: "Instances that have a QEMU process; with all, every instance kvmd knows.",
        fields: &[field(
            "all",
            FieldType::Bool,
            FieldDefault::Bool(false),
            "Every instance kvmd knows (defined in the config, or found in the run dir), not only those with a QEMU.",
        )],
        build: |a| {
            Some(ApiRequest::List {
                all: a.bool("all"),
            })
        },
    },
    RequestSpec {
        name: "info",
        doc: "One instance, or every instance kvmd knows.",
        fields: &[field(
            "name",
            FieldType::Name,
            FieldDefault::Absent("all instances"),
            "The instance to show.",
        )],
        build: |a| {
            Some(ApiRequest::Info {
                name: a.opt_name("name")?,
            })
        },
    },
    RequestSpec {
        name: "start",
        doc: "Start QEMU for a defined instance.",
        fields: &[
            NAME,
            field(
                "paused",
                FieldType::Bool,
                FieldDefault::Bool(false),
                "Leave the guest's CPUs stopped once QEMU is up.",
            ),
            field(
                "memory",
                FieldType::Seq,
                FieldDefault::Absent("Ganeti's rule: as much of memory as the node has available (MemAvailable), at least min_memory"),
                "Start-up memory in MiB, from min_memory to memory: below memory, the balloon is set to it before the guest runs.",
            ),
            field(
                "definition",
                FieldType::Object,
                FieldDefault::Absent("the config file's definition"),
                "The whole instance, as another engine (Ganeti) defines it per start: the keys of an [instance.NAME] table (memory, min_memory, vcpus, uuid, network_port, disk, nic, hvparams). The instance is then managed by that engine: never autostarted, never touched by a reload.",
            ),
            field(
                "managed_by",
                FieldType::Text,
                FieldDefault::Absent("\"external\" with a definition"),
                "With a definition: the engine that owns the instance (ganeti).",
            ),
            WAIT,
        ],
        build: |a| {
            let (name, paused, wait) = (a.name("name"), a.bool("paused"), a.bool("wait"));
            let memory = a.u64("memory");
            let managed_by = a.text("managed_by");
            match a.text("definition") {
                Some(definition) => Some(ApiRequest::Create {
                    name: name?,
                    definition,
                    managed_by: managed_by.unwrap_or_else(|| "external".into()),
                    paused,
                    wait,
                    memory,
                }),
                None => Some(ApiRequest::Start {
                    name: name?,
                    paused,
                    wait,
                    memory,
                }),
            }
        },
    },
    RequestSpec {
        name: "stop",
        doc: "Stop an instance: ACPI power button, then SIGTERM, then SIGKILL.",
        fields: &[
            NAME,
            TIMEOUT,
            field(
                "force",
                FieldType::Bool,
                FieldDefault::Bool(false),
                "Send SIGKILL at once.",
            ),
            WAIT,
        ],
        build: |a| {
            let (name, timeout_s) = (a.name("name"), a.u64("timeout"));
            let (force, wait) = (a.bool("force"), a.bool("wait"));
            Some(ApiRequest::Stop {
                name: name?,
                timeout_s,
                force,
                wait,
            })
        },
    },
    RequestSpec {
        name: "reboot",
        doc: "Soft: stop and start with the current definition. Hard: reset in place.",
        fields: &[
            NAME,
            field(
                "hard",
                FieldType::Bool,
                FieldDefault::Bool(false),
                "Reset in place (QMP system_reset) instead of stopping and starting.",
            ),
            field(
                "timeout",
                FieldType::Seconds,
                FieldDefault::Absent("node.stop_timeout"),
                "Soft reboot only: how long the stop half waits for the guest.",
            ),
            WAIT,
        ],
        build: |a| {
            let (name, hard, timeout_s) = (a.name("name"), a.bool("hard"), a.u64("timeout"));
            let wait = a.bool("wait");
            if let (true, Some(t)) = (hard, timeout_s) {
                a.bad(
                    "timeout",
                    &json!(t),
                    "only applies to a soft reboot (hard is true)",
                );
            }
            Some(ApiRequest::Reboot {
                name: name?,
                hard,
                timeout_s,
                wait,
            })
        },
    },
    RequestSpec {
        name: "pause",
        doc: "Freeze a running guest (QMP stop).",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::Pause {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "resume",
        doc: "Let a paused guest run (QMP cont).",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::Resume {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "cleanup",
        doc: "Remove a stopped instance's runtime files.",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::Cleanup {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "reload",
        doc: "Re-read the config file.",
        fields: &[],
        build: |_| Some(ApiRequest::Reload),
    },
    RequestSpec {
        name: "jobs",
        doc: "Jobs running and recently ended, oldest first.",
        fields: &[field(
            "name",
            FieldType::Name,
            FieldDefault::Absent("every instance's jobs"),
            "Only this instance's jobs.",
        )],
        build: |a| {
            Some(ApiRequest::Jobs {
                name: a.opt_name("name")?,
            })
        },
    },
    RequestSpec {
        name: "job",
        doc: "One job: by id, or an instance's current (else latest) job. Give job_id or name.",
        fields: &[
            field(
                "job_id",
                FieldType::JobId,
                FieldDefault::Absent("use name"),
                "The job's id.",
            ),
            field(
                "name",
                FieldType::Name,
                FieldDefault::Absent("use job_id"),
                "The instance whose current (else latest) job to show.",
            ),
        ],
        build: |a| {
            let (id, name) = (a.u64("job_id"), a.opt_name("name")?);
            let target = match (id, name, a.given("job_id")) {
                (Some(id), None, _) => JobRef::Id(JobId(id)),
                (None, Some(name), false) => JobRef::Instance(name),
                (None, None, false) => {
                    a.missing("job_id", "job needs job_id or name");
                    return None;
                }
                (Some(id), Some(_), _) => {
                    a.bad("job_id", &json!(id), "give job_id or name, not both");
                    return None;
                }
                (None, _, true) => return None, // id was given but bad: already reported
            };
            Some(ApiRequest::Job { target })
        },
    },
    RequestSpec {
        name: "cancel",
        doc: "Cancel a running start, stop or reboot job (it is rolled back where needed).",
        fields: &[field(
            "job_id",
            FieldType::JobId,
            FieldDefault::Required,
            "The job to cancel.",
        )],
        build: |a| {
            Some(ApiRequest::Cancel {
                id: JobId(a.u64("job_id")?),
            })
        },
    },
    RequestSpec {
        name: "subscribe",
        doc: "Turn this connection into an event stream (see the stream lines).",
        fields: &[
            field(
                "since",
                FieldType::Seq,
                FieldDefault::Absent("only events from now on"),
                "Replay the kept events after this sequence number first.",
            ),
            field(
                "follow",
                FieldType::Bool,
                FieldDefault::Bool(false),
                "Keep the stream open for new events; false: replay, then `end`.",
            ),
        ],
        build: |a| {
            Some(ApiRequest::Subscribe {
                since: a.u64("since"),
                follow: a.bool("follow"),
            })
        },
    },
    RequestSpec {
        name: "migration-info",
        doc: "Migration source: what a target needs to take this running instance (a versioned blob, relayed as is to the target's migration-preflight).",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::MigrationInfo {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "migration-preflight",
        doc: "Migration target: would this node take the VM a migration-info blob describes? Checks the QEMU version, machine type, devices, capabilities and device placement; starts nothing.",
        fields: &[field(
            "info",
            FieldType::Text,
            FieldDefault::Required,
            "The source's migration-info blob.",
        )],
        build: |a| {
            Some(ApiRequest::MigrationPreflight {
                info: a.text("info")?,
            })
        },
    },
    RequestSpec {
        name: "accept",
        doc: "Migration target: run the preflight, then start a QEMU for the VM of a migration-info blob that waits for it on `listen`, paused, with the source's machine type and capabilities. The VM runs here only after finalize-dst with success.",
        fields: &[
            NAME,
            field(
                "info",
                FieldType::Text,
                FieldDefault::Required,
                "The source's migration-info blob.",
            ),
            field(
                "listen",
                FieldType::Text,
                FieldDefault::Required,
                "Where the incoming migration arrives: IP:PORT (an IP literal; IPv6 as [ADDR]:PORT).",
            ),
            WAIT,
        ],
        build: |a| {
            let (name, info, listen, wait) =
                (a.name("name"), a.text("info"), a.text("listen"), a.bool("wait"));
            Some(ApiRequest::Accept {
                name: name?,
                info: info?,
                listen: listen?,
                wait,
            })
        },
    },
    RequestSpec {
        name: "migrate",
        doc: "Migration source: migrate the running instance to a target that accepted it. A job (migrate); follow it with migration-status.",
        fields: &[
            NAME,
            field(
                "target",
                FieldType::Text,
                FieldDefault::Required,
                "The target's listen address, IP:PORT.",
            ),
            field(
                "live",
                FieldType::Bool,
                FieldDefault::Bool(true),
                "false: pause the guest first (also when hvparam migration_mode is non-live).",
            ),
            WAIT,
        ],
        build: |a| {
            let (name, target, live, wait) =
                (a.name("name"), a.text("target"), a.bool("live"), a.bool("wait"));
            Some(ApiRequest::Migrate {
                name: name?,
                target: target?,
                live,
                wait,
            })
        },
    },
    RequestSpec {
        name: "migration-status",
        doc: "A migration's status (QEMU's, as Ganeti reads it) and figures; after its end, its summary.",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::MigrationStatus {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "finalize-dst",
        doc: "Migration target: success runs the guest (only if QEMU says the migration completed); failure drops the waiting QEMU and every file.",
        fields: &[NAME, SUCCESS],
        build: |a| {
            let (name, success) = (a.name("name"), a.bool("success"));
            Some(ApiRequest::FinalizeDst {
                name: name?,
                success,
            })
        },
    },
    RequestSpec {
        name: "finalize-src",
        doc: "Migration source: success ends the source's QEMU (the VM moved); failure resumes the guest here (never after postcopy began).",
        fields: &[NAME, SUCCESS],
        build: |a| {
            let (name, success) = (a.name("name"), a.bool("success"));
            Some(ApiRequest::FinalizeSrc {
                name: name?,
                success,
            })
        },
    },
    RequestSpec {
        name: "migrate-cancel",
        doc: "Migration source: cancel the running migration (any phase before postcopy); the guest runs here again.",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::MigrateCancel {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "pin",
        doc: "Pin a running instance's threads to host CPUs, live: one mask for the whole VM (every thread), or one per vCPU separated by `:` (the emulator's threads then get their union). Ganeti's cpu_mask grammar: `all`, `0-2,4`, `1:3`.",
        fields: &[
            NAME,
            field(
                "mask",
                FieldType::Text,
                FieldDefault::Required,
                "The mask, in cpu_mask's grammar.",
            ),
        ],
        build: |a| {
            let (name, mask) = (a.name("name"), a.text("mask"));
            Some(ApiRequest::Pin {
                name: name?,
                mask: mask?,
            })
        },
    },
    RequestSpec {
        name: "hotplug-add",
        doc: "Plug a device into a running instance (pc machines): a virtio disk (path, format, readonly) or a virtio NIC on user networking (mac). A job: the backend, device_add at a free slot of pci.0, query-pci to see it; a failed step undoes the earlier ones.",
        fields: &[
            NAME,
            field("kind", FieldType::Text, FieldDefault::Required, "disk or nic."),
            field("path", FieldType::Text, FieldDefault::Absent("required for a disk"), "A disk's image file or block device."),
            field("format", FieldType::Text, FieldDefault::Absent("raw"), "A disk's format: raw or qcow2."),
            field("readonly", FieldType::Bool, FieldDefault::Bool(false), "A read-only disk."),
            field("mac", FieldType::Text, FieldDefault::Absent("a random 52:54:00:xx:xx:xx"), "A NIC's MAC address."),
            field("mode", FieldType::Text, FieldDefault::Absent("user"), "A NIC's mode: user, bridged, routed or openvswitch (a tap kvmd opens and sets up as at start)."),
            field("link", FieldType::Text, FieldDefault::Absent("none"), "A NIC's bridge (bridged), routing table (routed) or switch (openvswitch)."),
        ],
        build: |a| {
            let name = a.name("name");
            let kind = a.text("kind");
            let device = match kind.as_deref() {
                Some("disk") => {
                    let path = a.text("path");
                    if path.is_none() && !a.given("path") {
                        a.missing("path", "a disk needs a path");
                    }
                    let format = a.text("format").unwrap_or_else(|| "raw".into());
                    if format != "raw" && format != "qcow2" {
                        let v = serde_json::json!(format);
                        a.bad("format", &v, "must be raw or qcow2");
                        return None;
                    }
                    crate::model::hotplug::HotDevice::Disk {
                        path: path?,
                        format,
                        readonly: a.bool("readonly"),
                    }
                }
                Some("nic") => {
                    let mode = match a.text("mode").as_deref().unwrap_or("user") {
                        "user" => crate::model::spec::NicMode::User,
                        "bridged" => crate::model::spec::NicMode::Bridged,
                        "routed" => crate::model::spec::NicMode::Routed,
                        "openvswitch" => crate::model::spec::NicMode::Openvswitch,
                        other => {
                            let v = serde_json::json!(other);
                            a.bad("mode", &v, "must be user, bridged, routed or openvswitch");
                            return None;
                        }
                    };
                    crate::model::hotplug::HotDevice::Nic {
                        mac: a.text("mac").unwrap_or_default(),
                        mode,
                        link: a.text("link").unwrap_or_default(),
                    }
                }
                Some(other) => {
                    let v = serde_json::json!(other);
                    a.bad("kind", &v, "must be disk or nic");
                    return None;
                }
                None => return None,
            };
            Some(ApiRequest::HotplugAdd { name: name?, device })
        },
    },
    RequestSpec {
        name: "hotplug-del",
        doc: "Unplug a plugged device: device_del, then the guest's DEVICE_DELETED for it (10 s at most), only then its backend. A guest that does not let go leaves it pending-removal; a second del is accepted.",
        fields: &[
            NAME,
            field("device", FieldType::Text, FieldDefault::Required, "The device's id (info shows it)."),
        ],
        build: |a| {
            let (name, id) = (a.name("name"), a.text("device"));
            Some(ApiRequest::HotplugDel { name: name?, id: id? })
        },
    },
    RequestSpec {
        name: "hotplug-mod",
        doc: "Change a plugged NIC live: its link up or down (set_link). A disk's changes need a re-plug, and are refused as such.",
        fields: &[
            NAME,
            field("device", FieldType::Text, FieldDefault::Required, "The device's id (info shows it)."),
            field("link", FieldType::Text, FieldDefault::Required, "up or down."),
        ],
        build: |a| {
            let (name, id, link) = (a.name("name"), a.text("device"), a.text("link"));
            let link_up = match link.as_deref() {
                Some("up") => true,
                Some("down") => false,
                Some(other) => {
                    let v = serde_json::json!(other);
                    a.bad("link", &v, "must be up or down");
                    return None;
                }
                None => return None,
            };
            Some(ApiRequest::HotplugMod {
                name: name?,
                id: id?,
                link_up,
            })
        },
    },
    RequestSpec {
        name: "balloon",
        doc: "Resize a running guest's memory with its balloon driver, as a job that follows the guest (BALLOON_CHANGE) and ends reached (within 1 %), stalled or timeout, with the size reached.",
        fields: &[
            NAME,
            field(
                "mib",
                FieldType::Seq,
                FieldDefault::Required,
                "The memory the guest should have, in MiB: from min_memory to memory.",
            ),
        ],
        build: |a| {
            let (name, mib) = (a.name("name"), a.u64("mib"));
            Some(ApiRequest::Balloon {
                name: name?,
                mib: mib?,
            })
        },
    },
    RequestSpec {
        name: "console",
        doc: "Attach to an instance's serial console: after the `console` reply the connection carries the console's raw bytes both ways until either side closes it (or QEMU goes). One session at a time types (write); others watch.",
        fields: &[
            NAME,
            field(
                "write",
                FieldType::Bool,
                FieldDefault::Bool(true),
                "This session types; false: watch only.",
            ),
        ],
        build: |a| {
            let (name, write) = (a.name("name"), a.bool("write"));
            Some(ApiRequest::Console { name: name?, write })
        },
    },
    RequestSpec {
        name: "console-info",
        doc: "How to reach an instance's console from elsewhere (Ganeti's GetInstanceConsole): the command that attaches to its serial console on this node, or its VNC/SPICE host, port and password file.",
        fields: &[NAME],
        build: |a| {
            Some(ApiRequest::ConsoleInfo {
                name: a.name("name")?,
            })
        },
    },
    RequestSpec {
        name: "stats",
        doc: "Each VM's newest metrics sample (taken every node.metrics_interval_ms in the background: CPU, memory, block and network counters), summed per VM; what kvmctl top shows. Never waits on a VM.",
        fields: &[field(
            "name",
            FieldType::Name,
            FieldDefault::Absent("all instances"),
            "The instance.",
        )],
        build: |a| {
            Some(ApiRequest::Stats {
                name: a.opt_name("name")?,
            })
        },
    },
    RequestSpec {
        name: "node-info",
        doc: "This node: memory (total, free, used by instances, by the node itself), CPUs and their topology, the accelerator, the QEMU binary and its version, the files a cluster keeps alike on every node.",
        fields: &[],
        build: |_| Some(ApiRequest::NodeInfo),
    },
    RequestSpec {
        name: "node-verify",
        doc: "This node's checks, each a finding with a severity (error, warning, ok): the QEMU binary (probed), /dev/kvm, the run dir's and socket's owners and modes, the config's mode, the default kernel and initrd, the NIC hook, run-dir entries and QEMU processes no instance owns.",
        fields: &[],
        build: |_| Some(ApiRequest::NodeVerify),
    },
    RequestSpec {
        name: "node-powercycle",
        doc: "Reboot this node at once, without stopping its VMs (Ganeti's PowercycleNode). Refused unless yes is true; the refusal lists the steps.",
        fields: &[field(
            "yes",
            FieldType::Bool,
            FieldDefault::Bool(false),
            "true: really do it.",
        )],
        build: |a| Some(ApiRequest::NodePowercycle { yes: a.bool("yes") }),
    },
];

const SUCCESS: FieldSpec = field(
    "success",
    FieldType::Bool,
    FieldDefault::Required,
    "Whether the migration succeeded.",
);

/// The table entry of a request name.
pub fn spec(name: &str) -> Option<&'static RequestSpec> {
    REQUESTS.iter().find(|r| r.name == name)
}

/// Every request name, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    REQUESTS.iter().map(|r| r.name)
}

/// A field value that passed its type check.
#[derive(Debug)]
enum Parsed {
    Name(InstanceName),
    Bool(bool),
    U64(u64),
    Text(String),
}

/// A request's fields once type-checked, and every problem found so far.
#[derive(Debug)]
pub struct Args {
    spec: &'static RequestSpec,
    values: BTreeMap<&'static str, Parsed>,
    given: Vec<&'static str>,
    errors: Vec<FieldError>,
}

impl Args {
    fn bad(&mut self, field: &str, value: &Value, rule: impl Into<String>) {
        self.errors.push(FieldError::new(field, echo(value), rule));
    }

    fn missing(&mut self, field: &str, rule: impl Into<String>) {
        self.errors.push(FieldError::new(field, "(missing)", rule));
    }

    /// The field was present and not null (whether or not it was valid).
    fn given(&self, key: &str) -> bool {
        self.given.contains(&key)
    }

    fn name(&mut self, key: &str) -> Option<InstanceName> {
        match self.values.get(key) {
            Some(Parsed::Name(n)) => Some(n.clone()),
            _ => None,
        }
    }

    /// `Some(None)` when absent; `None` when given but invalid (already reported).
    fn opt_name(&mut self, key: &str) -> Option<Option<InstanceName>> {
        match self.name(key) {
            Some(n) => Some(Some(n)),
            None if self.given(key) => None,
            None => Some(None),
        }
    }

    /// A boolean, or the table's default when absent (false when invalid: already reported).
    fn bool(&mut self, key: &str) -> bool {
        match self.values.get(key) {
            Some(Parsed::Bool(b)) => *b,
            _ => matches!(
                self.spec
                    .fields
                    .iter()
                    .find(|f| f.name == key)
                    .map(|f| f.default),
                Some(FieldDefault::Bool(true))
            ),
        }
    }

    fn text(&mut self, key: &str) -> Option<String> {
        match self.values.get(key) {
            Some(Parsed::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }

    fn u64(&mut self, key: &str) -> Option<u64> {
        match self.values.get(key) {
            Some(Parsed::U64(n)) => Some(*n),
            _ => None,
        }
    }

    /// Type-check one field's value; report what is wrong with it.
    fn check(&mut self, f: &'static FieldSpec, v: Value) {
        let parsed = match (f.ty, &v) {
            (FieldType::Name, Value::String(s)) => match InstanceName::parse(s) {
                Ok(n) => Some(Parsed::Name(n)),
                Err(e) => {
                    self.bad(f.name, &v, format!("{}; names are {NAME_RULE}", e.reason));
                    return;
                }
            },
            (FieldType::Name, _) => None,
            (FieldType::Bool, Value::Bool(b)) => Some(Parsed::Bool(*b)),
            (FieldType::Seconds, _) => v.as_u64().filter(|n| *n <= MAX_TIMEOUT_S).map(Parsed::U64),
            (FieldType::Seq, _) => v.as_u64().map(Parsed::U64),
            (FieldType::JobId, Value::String(s))
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse().ok().map(Parsed::U64)
            }
            (FieldType::JobId, _) => v.as_u64().map(Parsed::U64),
            (FieldType::Text, Value::String(s)) => Some(Parsed::Text(s.clone())),
            (FieldType::Object, Value::Object(_)) => Some(Parsed::Text(v.to_string())),
            _ => None,
        };
        match parsed {
            Some(p) => {
                self.values.insert(f.name, p);
            }
            None => {
                let rule = match f.ty {
                    FieldType::Name => "must be a string".to_string(),
                    FieldType::Bool => "must be a boolean".to_string(),
                    FieldType::Seconds => {
                        format!("must be an integer between 0 and {MAX_TIMEOUT_S}")
                    }
                    FieldType::Seq => "must be a non-negative integer".to_string(),
                    FieldType::JobId => "must be a job id (a non-negative integer)".to_string(),
                    FieldType::Text => "must be a string".to_string(),
                    FieldType::Object => "must be an object".to_string(),
                };
                self.bad(f.name, &v, rule);
            }
        }
    }
}

/// The error for a request name that is not in the table.
fn unknown_request(request: &str) -> ApiError {
    let shown = echo(&Value::String(request.into()));
    let mut e = ApiError::new(
        ErrorCode::UnknownRequest,
        format!("Unknown request {shown}"),
    );
    e.fields =
        vec![FieldError::new("request", shown, "must be a known request").with_allowed(names())];
    e
}

/// Build a request from its name and the other keys of the request object.
pub(super) fn parse_fields(
    request: &str,
    mut map: Map<String, Value>,
) -> Result<ApiRequest, ApiError> {
    let spec = spec(request).ok_or_else(|| unknown_request(request))?;
    let mut args = Args {
        spec,
        values: BTreeMap::new(),
        given: Vec::new(),
        errors: Vec::new(),
    };
    for f in spec.fields {
        match map.remove(f.name) {
            None | Some(Value::Null) if f.required() => {
                args.missing(f.name, format!("is required by {}", spec.name));
            }
            None | Some(Value::Null) => {}
            Some(v) => {
                args.given.push(f.name);
                args.check(f, v);
            }
        }
    }
    let req = (spec.build)(&mut args);
    for (k, v) in map {
        let rule = format!("is not a field of {}", spec.name);
        args.errors.push(
            FieldError::new(k, echo(&v), rule).with_allowed(spec.fields.iter().map(|f| f.name)),
        );
    }
    match (req, args.errors.is_empty()) {
        (Some(req), true) => Ok(req),
        (_, false) => Err(ApiError::invalid(args.errors)),
        (None, true) => Err(ApiError::new(
            ErrorCode::Internal,
            format!(
                "Request {} was not built and no field was refused",
                spec.name
            ),
        )),
    }
}

/// The request's name and its fields, as the table declares them.
pub(super) fn to_wire(req: &ApiRequest) -> (&'static str, Map<String, Value>) {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    let name = match req {
        ApiRequest::Ping => "ping",
        ApiRequest::List { all } => {
            if *all {
                put("all", json!(true));
            }
            "list"
        }
        ApiRequest::Reload => "reload",
        ApiRequest::Info { name } | ApiRequest::Jobs { name } => {
            if let Some(n) = name {
                put("name", json!(n.as_str()));
            }
            if matches!(req, ApiRequest::Info { .. }) {
                "info"
            } else {
                "jobs"
            }
        }
        ApiRequest::Create {
            name,
            definition,
            managed_by,
            paused,
            wait,
            memory,
        } => {
            put("name", json!(name.as_str()));
            put("paused", json!(paused));
            if let Some(m) = memory {
                put("memory", json!(m));
            }
            put(
                "definition",
                serde_json::from_str(definition).unwrap_or(Value::Null),
            );
            put("managed_by", json!(managed_by));
            if !wait {
                put("wait", json!(false));
            }
            "start"
        }
        ApiRequest::Start {
            name,
            paused,
            wait,
            memory,
        } => {
            put("name", json!(name.as_str()));
            put("paused", json!(paused));
            if let Some(m) = memory {
                put("memory", json!(m));
            }
            if !wait {
                put("wait", json!(false));
            }
            "start"
        }
        ApiRequest::Stop {
            name,
            timeout_s,
            force,
            wait,
        } => {
            put("name", json!(name.as_str()));
            put("timeout", json!(timeout_s));
            put("force", json!(force));
            if !wait {
                put("wait", json!(false));
            }
            "stop"
        }
        ApiRequest::Reboot {
            name,
            hard,
            timeout_s,
            wait,
        } => {
            put("name", json!(name.as_str()));
            put("hard", json!(hard));
            put("timeout", json!(timeout_s));
            if !wait {
                put("wait", json!(false));
            }
            "reboot"
        }
        ApiRequest::Pause { name } => {
            put("name", json!(name.as_str()));
            "pause"
        }
        ApiRequest::Resume { name } => {
            put("name", json!(name.as_str()));
            "resume"
        }
        ApiRequest::Cleanup { name } => {
            put("name", json!(name.as_str()));
            "cleanup"
        }
        ApiRequest::Job { target } => {
            match target {
                JobRef::Id(id) => put("job_id", json!(id.0)),
                JobRef::Instance(n) => put("name", json!(n.as_str())),
            }
            "job"
        }
        ApiRequest::Cancel { id } => {
            put("job_id", json!(id.0));
            "cancel"
        }
        ApiRequest::MigrationInfo { name } => {
            put("name", json!(name.as_str()));
            "migration-info"
        }
        ApiRequest::MigrationPreflight { info } => {
            put("info", json!(info));
            "migration-preflight"
        }
        ApiRequest::Accept {
            name,
            info,
            listen,
            wait,
        } => {
            put("name", json!(name.as_str()));
            put("info", json!(info));
            put("listen", json!(listen));
            if !wait {
                put("wait", json!(false));
            }
            "accept"
        }
        ApiRequest::Migrate {
            name,
            target,
            live,
            wait,
        } => {
            put("name", json!(name.as_str()));
            put("target", json!(target));
            put("live", json!(live));
            if !wait {
                put("wait", json!(false));
            }
            "migrate"
        }
        ApiRequest::MigrationStatus { name } => {
            put("name", json!(name.as_str()));
            "migration-status"
        }
        ApiRequest::FinalizeDst { name, success } | ApiRequest::FinalizeSrc { name, success } => {
            put("name", json!(name.as_str()));
            put("success", json!(success));
            if matches!(req, ApiRequest::FinalizeDst { .. }) {
                "finalize-dst"
            } else {
                "finalize-src"
            }
        }
        ApiRequest::MigrateCancel { name } => {
            put("name", json!(name.as_str()));
            "migrate-cancel"
        }
        ApiRequest::Pin { name, mask } => {
            put("name", json!(name.as_str()));
            put("mask", json!(mask));
            "pin"
        }
        ApiRequest::HotplugAdd { name, device } => {
            put("name", json!(name.as_str()));
            match device {
                crate::model::hotplug::HotDevice::Disk {
                    path,
                    format,
                    readonly,
                } => {
                    put("kind", json!("disk"));
                    put("path", json!(path));
                    put("format", json!(format));
                    put("readonly", json!(readonly));
                }
                crate::model::hotplug::HotDevice::Nic { mac, mode, link } => {
                    put("kind", json!("nic"));
                    put("mac", json!(mac));
                    put("mode", json!(format!("{mode:?}").to_lowercase()));
                    put("link", json!(link));
                }
            }
            "hotplug-add"
        }
        ApiRequest::HotplugDel { name, id } => {
            put("name", json!(name.as_str()));
            put("device", json!(id));
            "hotplug-del"
        }
        ApiRequest::HotplugMod { name, id, link_up } => {
            put("name", json!(name.as_str()));
            put("device", json!(id));
            put("link", json!(if *link_up { "up" } else { "down" }));
            "hotplug-mod"
        }
        ApiRequest::Balloon { name, mib } => {
            put("name", json!(name.as_str()));
            put("mib", json!(mib));
            "balloon"
        }
        ApiRequest::Console { name, write } => {
            put("name", json!(name.as_str()));
            put("write", json!(write));
            "console"
        }
        ApiRequest::ConsoleInfo { name } => {
            put("name", json!(name.as_str()));
            "console-info"
        }
        ApiRequest::NodeInfo => "node-info",
        ApiRequest::Stats { name } => {
            if let Some(n) = name {
                put("name", json!(n.as_str()));
            }
            "stats"
        }
        ApiRequest::NodeVerify => "node-verify",
        ApiRequest::NodePowercycle { yes } => {
            put("yes", json!(yes));
            "node-powercycle"
        }
        ApiRequest::Subscribe { since, follow } => {
            if let Some(s) = since {
                put("since", json!(s));
            }
            put("follow", json!(follow));
            "subscribe"
        }
    };
    (name, m)
}
