use serde_json::{json, Value};

use super::*;
use crate::api::{
    DaemonEvent, Event, EventKind, JobInfo, JobOutcome, JobRef, JobState, JobSummary, Progress,
    QemuEvent, StopResult,
};
use crate::model::exit::{ExitKind, ExitRecord};
use crate::model::field_error::FieldError;
use crate::model::job::{JobId, Operation};
use crate::model::state::{StopEnd, VmState};

fn n(s: &str) -> InstanceName {
    InstanceName::parse(s).unwrap()
}

fn err_of(line: &str) -> ApiError {
    parse_request(line.as_bytes()).1.unwrap_err()
}

fn exit() -> ExitRecord {
    ExitRecord {
        kind: ExitKind::UserDown,
        reason: "the guest powered itself off".into(),
        exit_code: Some(0),
        signal: None,
        stderr_tail: vec!["qemu: warning\u{1b}[31m".into()],
        pid: 4242,
        at_ms: 1_700_000_000_000,
    }
}

fn vm() -> VmInfo {
    VmInfo {
        name: n("web1"),
        state: VmState::Stopping,
        pid: Some(4243),
        memory_mib: 256,
        vcpus: 2,
        cpu_time_ms: Some(1500),
        uptime_s: Some(12),
        started_at_ms: Some(1_700_000_000_100),
        qemu_version: Some("QEMU emulator version 7.2.22".into()),
        autostart: true,
        in_config: true,
        pending_changes: false,
        job: Some(JobSummary {
            id: JobId(6963200000000003),
            kind: Operation::Stop,
            phase: "acpi".into(),
        }),
        last_exit: Some(exit()),
        cpu_mask: Some("0-1:all".into()),
        balloon: Some(crate::api::BalloonInfo {
            target_mib: 128,
            actual_mib: 130,
            state: "stalled".into(),
        }),
        hardware: Some(Box::new(crate::api::Hardware {
            uuid: "6c3b2a9e-8f41-4d2c-9e7a-1b2c3d4e5f60".into(),
            machine: "pc-q35-7.2".into(),
            accelerator: "tcg".into(),
            disks: vec![crate::api::DiskInfo {
                path: "/srv/web1.img".into(),
                format: "raw".into(),
                readonly: false,
                bus: "paravirtual".into(),
                address: "pcie.0 0x05".into(),
                hotplugged: false,
                id: None,
                pending_removal: false,
            }],
            nics: vec![crate::api::NicInfo {
                mode: "bridged".into(),
                link: "br0".into(),
                mac: "52:54:00:12:34:56".into(),
                tap: Some("tap0".into()),
                model: "paravirtual".into(),
                address: "pcie.0 0x06".into(),
                hotplugged: true,
                id: Some("hotnic0".into()),
                pending_removal: true,
                link_up: false,
            }],
            serial_socket: Some("/run/kvmd/web1/serial.sock".into()),
            display: None,
            hotplug_ports: 8,
            hotplug_ports_free: 7,
        })),
        guest_memory: Some(crate::api::GuestMemory {
            total_mib: 218,
            free_mib: 150,
            available_mib: 170,
            updated_at_s: 1_795_000_000,
        }),
        managed_by: Some("ganeti".into()),
    }
}

fn job(state: JobState, outcome: Option<JobOutcome>) -> JobInfo {
    JobInfo {
        id: JobId(6963200000000003),
        instance: n("web1"),
        kind: Operation::Stop,
        state,
        phase: "sigterm".into(),
        progress: Some(Progress {
            done: 1,
            total: 3,
            unit: "phases".into(),
        }),
        started_at_ms: 1_700_000_000_200,
        deadline_ms: Some(1_700_000_120_200),
        ended_at_ms: outcome.as_ref().map(|_| 1_700_000_002_260),
        resumed: true,
        outcome,
    }
}

fn some_jobs() -> Vec<JobInfo> {
    vec![
        job(JobState::Running, None),
        job(
            JobState::Succeeded,
            Some(JobOutcome::Done {
                stop: Some(StopResult {
                    ended: StopEnd::Acpi,
                    elapsed_ms: 2060,
                }),
            }),
        ),
        job(JobState::Succeeded, Some(JobOutcome::Done { stop: None })),
        job(
            JobState::Failed,
            Some(JobOutcome::Failed(ApiError::new(
                ErrorCode::StartFailed,
                "QEMU did not come up",
            ))),
        ),
        job(
            JobState::Cancelled,
            Some(JobOutcome::Cancelled {
                reason: "cancelled by request".into(),
            }),
        ),
    ]
}

#[test]
fn requests_parse_with_their_fields_and_defaults_from_the_table() {
    let (id, r) = parse_request(
        br#"{"id": 7, "request": "stop", "name": "web1", "timeout": 30, "force": true}"#,
    );
    assert_eq!(id, json!(7));
    assert_eq!(
        r.unwrap(),
        ApiRequest::Stop {
            name: n("web1"),
            timeout_s: Some(30),
            force: true,
            wait: true
        }
    );
    assert_eq!(
        parse_request(br#"{"request": "info"}"#).1.unwrap(),
        ApiRequest::Info { name: None }
    );
    assert_eq!(
        parse_request(br#"{"request": "start", "name": "a", "wait": false}"#)
            .1
            .unwrap(),
        ApiRequest::Start {
            name: n("a"),
            paused: false,
            wait: false,
            memory: None
        }
    );
    assert_eq!(
        parse_request(br#"{"request": "subscribe"}"#).1.unwrap(),
        ApiRequest::Subscribe {
            since: None,
            follow: false
        }
    );
    assert_eq!(
        parse_request(br#"{"id": 1, "request": "job", "job_id": "123"}"#)
            .1
            .unwrap(),
        ApiRequest::Job {
            target: JobRef::Id(JobId(123))
        },
        "a job id may come as a string of digits"
    );
}

#[test]
fn bad_requests_get_stable_codes_and_name_the_field() {
    assert_eq!(err_of("{nope").code, ErrorCode::BadRequest);
    assert_eq!(err_of("[1]").code, ErrorCode::BadRequest);
    let e = err_of(r#"{"request": "launch"}"#);
    assert_eq!(e.code, ErrorCode::UnknownRequest);
    assert!(e.fields[0].allowed.contains(&"subscribe".to_string()));
    let e = err_of(r#"{"request": "start", "name": "../etc"}"#);
    assert_eq!(
        (e.code, e.fields[0].field.as_str()),
        (ErrorCode::InvalidParameter, "name")
    );
    let e = err_of(r#"{"request": "start", "name": "a", "pause": true}"#);
    assert_eq!(e.fields[0].field, "pause");
    assert_eq!(
        e.fields[0].allowed,
        [
            "name",
            "paused",
            "memory",
            "definition",
            "managed_by",
            "wait"
        ]
    );
    let e = err_of(r#"{"request": "stop", "name": "a", "timeout": -1}"#);
    assert_eq!(e.fields[0].field, "timeout");
    let e = err_of(r#"{"request": "stop"}"#);
    assert_eq!(
        (e.fields[0].field.as_str(), e.fields[0].value.as_str()),
        ("name", "(missing)")
    );
    let e = err_of(r#"{"id": 1, "request": "cancel"}"#);
    assert_eq!(e.fields[0].field, "job_id");
    let e = err_of(r#"{"request": "job"}"#);
    assert_eq!(
        (e.fields[0].field.as_str(), e.fields[0].rule.as_str()),
        ("job_id", "job needs job_id or name")
    );
    let e = err_of(r#"{"request": "job", "job_id": 5, "name": "a"}"#);
    assert_eq!(e.fields[0].rule, "give job_id or name, not both");
    let e = err_of(r#"{"request": "subscribe", "since": -3, "follow": "yes"}"#);
    let fields: Vec<_> = e.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["since", "follow"]);
    let e = err_of(r#"{"request": "start", "name": "a", "wait": 1}"#);
    assert_eq!(
        (e.fields[0].field.as_str(), e.fields[0].rule.as_str()),
        ("wait", "must be a boolean")
    );
}

#[test]
fn every_bad_field_is_reported_at_once_and_long_values_are_shortened() {
    let long = "x".repeat(10_000);
    let line = format!(
        r#"{{"request": "stop", "name": "../etc", "timeout": "soon", "force": 1, "pad": "{long}"}}"#
    );
    let e = err_of(&line);
    let fields: Vec<_> = e.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["name", "timeout", "force", "pad"]);
    assert!(e.fields[3].value.len() < 300, "{}", e.fields[3].value.len());
    assert!(e.fields[3].value.ends_with("(10002 bytes)"));
    let e = err_of(r#"{"request": 7}"#);
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = err_of(r#"{"request": "reboot", "name": "a", "hard": true, "timeout": 5}"#);
    assert_eq!(e.fields[0].field, "timeout");
    assert_eq!(
        err_of(r#"{"request": "launch"}"#).message,
        "Unknown request \"launch\""
    );
}

#[test]
fn the_request_table_documents_every_field_it_accepts() {
    for spec in REQUESTS {
        assert!(!spec.doc.is_empty(), "{} has a doc", spec.name);
        for f in spec.fields {
            assert!(!f.doc.is_empty(), "{}.{} has a doc", spec.name, f.name);
        }
    }
    let start = REQUESTS.iter().find(|r| r.name == "start").unwrap();
    let wait = start.fields.iter().find(|f| f.name == "wait").unwrap();
    assert_eq!(
        (wait.ty, wait.default),
        (FieldType::Bool, FieldDefault::Bool(true))
    );
}

#[test]
fn every_request_round_trips() {
    let id = || JobId(6963200000000007);
    for req in [
        ApiRequest::Ping,
        ApiRequest::MigrationInfo { name: n("a") },
        ApiRequest::MigrationPreflight {
            info: "{\"format\": 1, \"note\": \"\\u0007\"}".into(),
        },
        ApiRequest::Accept {
            name: n("a"),
            info: "{}".into(),
            listen: "192.0.2.1:8102".into(),
            wait: false,
        },
        ApiRequest::Migrate {
            name: n("a"),
            target: "[2001:db8::1]:8102".into(),
            live: false,
            wait: true,
        },
        ApiRequest::MigrationStatus { name: n("a") },
        ApiRequest::FinalizeDst {
            name: n("a"),
            success: true,
        },
        ApiRequest::FinalizeSrc {
            name: n("a"),
            success: false,
        },
        ApiRequest::MigrateCancel { name: n("a") },
        ApiRequest::Pin {
            name: n("a"),
            mask: "0-1:all".into(),
        },
        ApiRequest::Balloon {
            name: n("a"),
            mib: 128,
        },
        ApiRequest::HotplugAdd {
            name: n("a"),
            device: crate::model::hotplug::HotDevice::Disk {
                path: "/srv/a.img".into(),
                format: "raw".into(),
                readonly: true,
            },
        },
        ApiRequest::HotplugAdd {
            name: n("a"),
            device: crate::model::hotplug::HotDevice::Nic {
                mac: "52:54:00:00:00:01".into(),
                mode: crate::model::spec::NicMode::Bridged,
                link: "br0".into(),
            },
        },
        ApiRequest::HotplugDel {
            name: n("a"),
            id: "hotdisk0".into(),
        },
        ApiRequest::HotplugMod {
            name: n("a"),
            id: "hotnic0".into(),
            link_up: false,
        },
        ApiRequest::Console {
            name: n("a"),
            write: false,
        },
        ApiRequest::ConsoleInfo { name: n("a") },
        ApiRequest::NodeInfo,
        ApiRequest::Stats { name: None },
        ApiRequest::Create {
            name: n("g1"),
            definition: r#"{"memory":192,"nic":[{"mode":"user"}]}"#.into(),
            managed_by: "ganeti".into(),
            paused: true,
            wait: false,
            memory: Some(160),
        },
        ApiRequest::Stats {
            name: Some(n("web1")),
        },
        ApiRequest::NodeVerify,
        ApiRequest::NodePowercycle { yes: false },
        ApiRequest::List { all: false },
        ApiRequest::List { all: true },
        ApiRequest::Info { name: Some(n("a")) },
        ApiRequest::Info { name: None },
        ApiRequest::Start {
            name: n("a"),
            paused: true,
            wait: true,
            memory: None,
        },
        ApiRequest::Start {
            name: n("a"),
            paused: false,
            wait: false,
            memory: None,
        },
        ApiRequest::Stop {
            name: n("a"),
            timeout_s: None,
            force: false,
            wait: true,
        },
        ApiRequest::Stop {
            name: n("a"),
            timeout_s: Some(0),
            force: true,
            wait: false,
        },
        ApiRequest::Reboot {
            name: n("a"),
            hard: false,
            timeout_s: Some(9),
            wait: true,
        },
        ApiRequest::Reboot {
            name: n("a"),
            hard: true,
            timeout_s: None,
            wait: false,
        },
        ApiRequest::Pause { name: n("a") },
        ApiRequest::Resume { name: n("a") },
        ApiRequest::Cleanup { name: n("a") },
        ApiRequest::Reload,
        ApiRequest::Jobs { name: None },
        ApiRequest::Jobs { name: Some(n("a")) },
        ApiRequest::Job {
            target: JobRef::Id(id()),
        },
        ApiRequest::Job {
            target: JobRef::Instance(n("a")),
        },
        ApiRequest::Cancel { id: id() },
        ApiRequest::Subscribe {
            since: None,
            follow: true,
        },
        ApiRequest::Subscribe {
            since: Some(0),
            follow: false,
        },
    ] {
        let line = encode_request(3, &req);
        let (id, back) = parse_request(&line);
        assert_eq!((id, back.unwrap()), (json!(3), req));
    }
}

fn every_reply() -> Vec<ApiReply> {
    let mut plain = vm();
    plain.job = None;
    plain.last_exit = None;
    plain.pid = None;
    vec![
        ApiReply::Pong {
            version: "0.2.0".into(),
        },
        ApiReply::List(vec![vm(), plain.clone()]),
        ApiReply::Info(vec![]),
        ApiReply::Started(plain.clone()),
        ApiReply::Stopped {
            ended: StopEnd::AlreadyStopped,
            elapsed_ms: 0,
            info: plain.clone(),
        },
        ApiReply::Rebooted(vm()),
        ApiReply::Paused(vm()),
        ApiReply::Resumed(vm()),
        ApiReply::CleanedUp { name: n("old1") },
        ApiReply::Reloaded {
            added: vec!["web3".into()],
            removed: vec![],
            changed: vec!["web1".into()],
            node_changed: true,
        },
        ApiReply::Accepted(job(JobState::Running, None)),
        ApiReply::Jobs(some_jobs()),
        ApiReply::Job(some_jobs().remove(3)),
        ApiReply::Cancelling(job(JobState::Running, None)),
        ApiReply::Subscribed { last_seq: 41 },
        ApiReply::MigrationInfo {
            info: "{\"format\":1,\"machine\":\"pc-q35-7.2\"}".into(),
        },
        ApiReply::PreflightPassed {
            machine: "pc-q35-7.2".into(),
            qemu_version: "QEMU emulator version 7.2.22".into(),
        },
        ApiReply::MigrationStatus {
            info: vm(),
            migration: Box::new(kvmd_migration()),
        },
        ApiReply::MigrationStep(plain.clone()),
        ApiReply::Pinned(plain.clone()),
        ApiReply::Ballooned(plain.clone()),
        ApiReply::Hotplugged(plain),
        ApiReply::Console {
            name: n("web1"),
            writer: false,
        },
        ApiReply::ConsoleInfo(crate::api::ConsoleInfo {
            name: n("web1"),
            kind: "vnc".into(),
            command: vec![],
            host: Some("192.0.2.4".into()),
            port: Some(5901),
            password_file: Some("/etc/kvmd/vnc.pw".into()),
        }),
        ApiReply::NodeInfo(Box::new(crate::api::NodeInfo {
            hostname: "node1".into(),
            kvmd_version: "0.2.0".into(),
            memory_total_mib: 24000,
            memory_free_mib: 20000,
            memory_instances_mib: 512,
            memory_node_mib: 3488,
            instances_running: 2,
            cpus: 2,
            sockets: 1,
            cores_per_socket: 2,
            threads_per_core: 1,
            numa_nodes: 1,
            cpu_model: "Test CPU".into(),
            accelerator: "kvm".into(),
            qemu_path: "/usr/bin/qemu-system-x86_64".into(),
            qemu_version: Some((7, 2, 22)),
            qemu_version_text: Some("QEMU emulator version 7.2.22".into()),
            ancillary_files: vec!["/etc/kvmd/kvmd.toml".into()],
        })),
        ApiReply::Stats(vec![crate::api::VmStats {
            name: "web1".into(),
            state: "running".into(),
            sampled_at_ms: 1_795_000_000_000,
            cpu_ms: 2980,
            vcpu_ms: 2775,
            vcpus: 1,
            memory_bytes: 256 << 20,
            rss_bytes: 229 << 20,
            balloon_bytes: Some(256 << 20),
            guest_available_bytes: None,
            block_read_bytes: 4096,
            block_write_bytes: 0,
            block_read_ops: 1,
            block_write_ops: 0,
            net_rx_bytes: 10,
            net_tx_bytes: 20,
        }]),
        ApiReply::NodeVerified(vec![crate::api::NodeFinding {
            severity: "warning".into(),
            check: "orphan".into(),
            detail: "QEMU pid 9 is owned by no instance".into(),
        }]),
        ApiReply::Powercycling {
            steps: vec!["sysrq b".into()],
        },
    ]
}

fn kvmd_migration() -> crate::api::MigrationReport {
    crate::api::MigrationReport {
        status: "active".into(),
        job: Some(JobId(12)),
        transferred: 1 << 20,
        remaining: 3 << 20,
        total: 256 << 20,
        speed_bps: 33_554_432,
        dirty_pages_rate: 1200,
        pass: 2,
        downtime_limit_ms: 30,
        stalled_ms: Some(4000),
        elapsed_ms: 1500,
        summary: Some(crate::api::MigrationSummary {
            outcome: "failed".into(),
            reason: Some("the target went away".into()),
            total_time_ms: Some(2000),
            downtime_ms: None,
            transferred: 5,
            passes: 3,
            path: "auto-converge".into(),
            downtime_limit_ms: 60,
            stopped_at_us: Some(1),
            seen_after_us: None,
            kvmd_measured: true,
        }),
        resumed_at_us: None,
    }
}

#[test]
fn every_reply_round_trips_and_names_its_kind() {
    let replies = every_reply();
    assert_eq!(replies.len(), REPLY_KINDS.len(), "one example per kind");
    for reply in replies {
        let line = encode_reply(&json!("abc"), &Ok(reply.clone()));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["kind"], reply_kind(&reply));
        assert!(REPLY_KINDS.contains(&reply_kind(&reply)));
        assert_eq!(v["ok"], true);
        let back = decode_reply(&line).unwrap();
        assert_eq!(back.id, json!("abc"));
        assert_eq!(back.result.unwrap(), reply);
    }
}

#[test]
fn ping_decodes_the_daemons_version_without_knowing_the_request() {
    let line = br#"{"id":1,"ok":true,"kind":"pong","result":{"pong":true,"version":"9.9.9"}}"#;
    assert_eq!(
        decode_reply(line).unwrap().result.unwrap(),
        ApiReply::Pong {
            version: "9.9.9".into()
        }
    );
}

#[test]
fn replies_of_a_kvmd_without_kinds_are_recognised_by_their_shape() {
    let old = br#"{"id":1,"ok":true,"result":{"pong":true,"version":"0.1.0"}}"#;
    assert_eq!(
        decode_reply(old).unwrap().result.unwrap(),
        ApiReply::Pong {
            version: "0.1.0".into()
        }
    );
    let old_vm = json!({"name":"web1","state":"stopping","pid":17,"memory_mib":256,"vcpus":1,
        "cpu_time_ms":null,"uptime_s":null,"started_at_ms":null,"qemu_version":null,
        "autostart":false,"in_config":true,"pending_changes":false,"operation":"reboot","last_exit":null});
    let line = json!({"id": 2, "ok": true, "result": {"instances": [old_vm]}}).to_string();
    match decode_reply(line.as_bytes()).unwrap().result.unwrap() {
        ApiReply::Info(v) => assert_eq!(v[0].job.as_ref().map(|j| j.kind), Some(Operation::Reboot)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_reply_kind_is_a_decode_error_naming_it() {
    let line = br#"{"id":1,"ok":true,"kind":"teleported","result":{}}"#;
    let e = decode_reply(line).unwrap_err();
    assert!(matches!(&e, ProtocolError::UnknownKind(k) if k == "teleported"));
    assert_eq!(e.to_string(), "Unknown reply kind \"teleported\"");
    let e = decode_reply(br#"{"ok":true,"kind":"pong","result":{"pong":true}}"#).unwrap_err();
    assert_eq!(e.to_string(), "Missing field \"version\"");
}

#[test]
fn errors_round_trip_with_fields_and_say_kind_error() {
    let e = ApiError::invalid(vec![
        FieldError::new("hvparams.acpi", "\"yes\"", "must be a boolean")
            .with_allowed(["true", "false"]),
        FieldError::new("memory", "0", "must be at least 64"),
    ])
    .with_details(vec!["line one".into()]);
    let line = encode_reply(&json!(1), &Err(e.clone()));
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["ok"].as_bool()),
        (Some("error"), Some(false))
    );
    assert_eq!(v["error"]["field"], "hvparams.acpi");
    assert_eq!(v["error"]["code"], "invalid_parameter");
    let back = decode_reply(&line).unwrap();
    assert_eq!((back.id, back.result.unwrap_err()), (json!(1), e));
}

fn every_event() -> Vec<Event> {
    let kinds = vec![
        EventKind::State {
            state: VmState::UserDown,
            previous: VmState::Running,
        },
        EventKind::JobStarted(job(JobState::Running, None)),
        EventKind::JobProgress(job(JobState::Running, None)),
        EventKind::JobEnded(some_jobs().remove(1)),
        EventKind::Exited(exit()),
        EventKind::Qemu(QemuEvent::Shutdown {
            guest: true,
            reason: "guest-shutdown".into(),
        }),
        EventKind::Qemu(QemuEvent::Reset {
            guest: false,
            reason: "host-qmp-system-reset".into(),
        }),
        EventKind::Qemu(QemuEvent::Powerdown),
        EventKind::Qemu(QemuEvent::GuestPanicked {
            action: "pause".into(),
        }),
        EventKind::Qemu(QemuEvent::BlockIoError {
            device: "disk0".into(),
            operation: "write".into(),
            action: "stop".into(),
            reason: "No space left on device".into(),
        }),
        EventKind::Qemu(QemuEvent::Unresponsive {
            command: "query-status".into(),
        }),
        EventKind::Qemu(QemuEvent::Responsive),
        EventKind::Daemon(DaemonEvent::Started {
            version: "0.2.0".into(),
        }),
        EventKind::Daemon(DaemonEvent::Stopping),
        EventKind::Daemon(DaemonEvent::Reloaded {
            added: vec!["a".into()],
            removed: vec!["b".into()],
            changed: vec![],
        }),
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let daemon = matches!(kind, EventKind::Daemon(_));
            Event {
                seq: 100 + i as u64,
                at_ms: 1_700_000_000_000 + i as u64,
                instance: if daemon { None } else { Some(n("web1")) },
                kind,
            }
        })
        .collect()
}

#[test]
fn every_stream_item_round_trips() {
    let mut items: Vec<StreamItem> = every_event().into_iter().map(StreamItem::Event).collect();
    items.push(StreamItem::Gap { from: 3, to: 17 });
    items.push(StreamItem::End { last_seq: 99 });
    let mut types = std::collections::BTreeSet::new();
    for item in items {
        let line = encode_stream_item(&item);
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert!(STREAM_KINDS.contains(&v["kind"].as_str().unwrap()));
        if let Some(t) = v["event"]["type"].as_str() {
            types.insert(t.to_string());
        }
        assert_eq!(decode_stream_item(&line).unwrap(), item);
    }
    let all: std::collections::BTreeSet<_> =
        values::EVENT_TYPES.iter().map(|s| s.to_string()).collect();
    assert_eq!(types, all, "every event type is exercised");
}

#[test]
fn stream_lines_have_the_documented_shapes() {
    let gap = encode_stream_item(&StreamItem::Gap { from: 5, to: 9 });
    assert_eq!(gap, b"{\"from\":5,\"kind\":\"gap\",\"to\":9}\n");
    let end = encode_stream_item(&StreamItem::End { last_seq: 12 });
    assert_eq!(end, b"{\"kind\":\"end\",\"last_seq\":12}\n");
    let ev = every_event().remove(4);
    let v: Value = serde_json::from_slice(&encode_stream_item(&StreamItem::Event(ev))).unwrap();
    assert_eq!(v["event"]["type"], "exited");
    assert_eq!(
        v["event"]["exit"]["kind"], "user-down",
        "exit kinds are spelled by the protocol"
    );
    assert!(decode_stream_item(
        br#"{"id":1,"ok":true,"kind":"pong","result":{"pong":true,"version":"1"}}"#
    )
    .is_err());
    assert!(decode_reply(&gap).is_err(), "a stream line is not a reply");
}

#[test]
fn vm_info_carries_its_job_and_the_old_operation_field() {
    let v = values::vm_to_json(&vm());
    assert_eq!(v["operation"], "stop");
    assert_eq!(v["job"]["phase"], "acpi");
    assert_eq!(v["job"]["kind"], "stop");
    assert_eq!(v["last_exit"]["kind"], "user-down");
}

/// VM infos with every optional part, and with none.
pub(super) fn examples() -> Vec<VmInfo> {
    let full = vm();
    let bare = VmInfo {
        pid: None,
        cpu_time_ms: None,
        uptime_s: None,
        started_at_ms: None,
        qemu_version: None,
        job: None,
        last_exit: None,
        cpu_mask: None,
        balloon: None,
        hardware: None,
        guest_memory: None,
        ..vm()
    };
    vec![full, bare]
}
