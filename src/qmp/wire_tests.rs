//! Unit tests of `wire.rs`: greeting, message classification, every typed event from a line
//! shaped like QEMU 7.2's, the fallbacks for missing fields, reply decoding, bounded excerpts.
//!
//! Invariant: pure — no sockets, no QEMU.

use serde_json::json;

use super::*;

fn event(line: &str) -> (QmpEvent, u64) {
    match parse_incoming(line.as_bytes()).unwrap() {
        Incoming::Event {
            event,
            timestamp_us,
        } => (event, timestamp_us),
        other => panic!("not an event: {other:?}"),
    }
}

fn ev(line: &str) -> QmpEvent {
    event(line).0
}

#[test]
fn the_greeting_of_qemu_7_2_gives_its_version() {
    let g = parse_greeting(br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#).unwrap();
    assert_eq!((g.major, g.minor, g.micro), (7, 2, 22));
    assert_eq!(g.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
}

#[test]
fn a_greeting_without_a_version_is_refused_and_quoted_only_in_part() {
    assert!(matches!(
        parse_greeting(b"{\"hello\": 1}"),
        Err(QmpError::Greeting(_))
    ));
    let long = format!("{{\"hello\": \"{}\"}}", "x".repeat(10_000));
    match parse_greeting(long.as_bytes()) {
        Err(QmpError::Greeting(msg)) => assert!(msg.len() < 400, "{} bytes", msg.len()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_command_is_one_json_line_with_its_id_and_arguments() {
    let line = encode_command("getfd", args_fdname("tap0"), 7);
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        v,
        json!({"execute": "getfd", "arguments": {"fdname": "tap0"}, "id": 7})
    );
    let v: Value = serde_json::from_slice(&encode_command("cont", None, 8)).unwrap();
    assert_eq!(v, json!({"execute": "cont", "id": 8}));
}

#[test]
fn typed_command_arguments_are_spelled_as_qemu_expects() {
    assert_eq!(
        args_set_password(Display::Spice, "s3cret"),
        Some(json!({"protocol": "spice", "password": "s3cret"}))
    );
    assert_eq!(
        args_qom_list_types("device", false),
        Some(json!({"implements": "device", "abstract": false}))
    );
}

#[test]
fn incoming_messages_are_classified_and_unknown_fields_ignored() {
    assert_eq!(
        parse_incoming(br#"{"return": {"status": "running"}, "id": 7, "extra": 1}"#).unwrap(),
        Incoming::Return {
            id: Some(7),
            value: json!({"status": "running"})
        }
    );
    assert_eq!(
        parse_incoming(br#"{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": 3}"#)
            .unwrap(),
        Incoming::Error {
            id: Some(3),
            class: "CommandNotFound".into(),
            desc: "nope".into()
        }
    );
    assert_eq!(
        parse_incoming(br#"{"return": {}, "id": "not-ours"}"#).unwrap(),
        Incoming::Return {
            id: None,
            value: json!({})
        }
    );
    assert_eq!(
        parse_incoming(br#"{"something": "new"}"#).unwrap(),
        Incoming::Other
    );
    assert!(parse_incoming(b"garbage").is_err());
}

#[test]
fn an_error_description_is_bounded_and_its_control_characters_escaped() {
    let line = json!({"error": {"class": "GenericError", "desc": format!("a\nb{}", "y".repeat(5000))}, "id": 1});
    match parse_incoming(line.to_string().as_bytes()).unwrap() {
        Incoming::Error { desc, .. } => {
            assert!(desc.starts_with("a\\nb"), "{desc}");
            assert!(desc.len() <= EXCERPT + 8, "{} bytes", desc.len());
            assert!(desc.ends_with('…'));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_typed_event_is_parsed_from_a_line_as_qemu_sends_it() {
    let (e, ts) = event(
        r#"{"timestamp": {"seconds": 1795973537, "microseconds": 425819}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#,
    );
    assert_eq!(
        e,
        QmpEvent::Shutdown {
            guest: true,
            reason: "guest-shutdown".into()
        }
    );
    assert_eq!(ts, 1_795_973_537_425_819);
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}"#
        ),
        QmpEvent::Reset {
            guest: false,
            reason: "host-qmp-system-reset".into()
        }
    );
    assert_eq!(
        ev(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#),
        QmpEvent::Stop
    );
    assert_eq!(
        ev(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#),
        QmpEvent::Resume
    );
    assert_eq!(
        ev(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#),
        QmpEvent::Powerdown
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "GUEST_PANICKED", "data": {"action": "poweroff"}}"#
        ),
        QmpEvent::GuestPanicked {
            action: "poweroff".into()
        }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BLOCK_IO_ERROR", "data": {"device": "", "node-name": "disk0-fmt", "operation": "write", "action": "stop", "nospace": true, "reason": "No space left on device"}}"#
        ),
        QmpEvent::BlockIoError {
            device: "".into(),
            node_name: Some("disk0-fmt".into()),
            operation: "write".into(),
            action: "stop".into(),
            nospace: true,
            reason: "No space left on device".into()
        }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"device": "nic1", "path": "/machine/peripheral/nic1"}}"#
        ),
        QmpEvent::DeviceDeleted {
            device: Some("nic1".into()),
            path: "/machine/peripheral/nic1".into()
        }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/nic1/virtio-backend"}}"#
        ),
        QmpEvent::DeviceDeleted {
            device: None,
            path: "/machine/peripheral/nic1/virtio-backend".into()
        }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "DEVICE_UNPLUG_GUEST_ERROR", "data": {"device": "hotnic0", "path": "/machine/peripheral/hotnic0"}}"#
        ),
        QmpEvent::DeviceUnplugGuestError {
            device: Some("hotnic0".into()),
            path: "/machine/peripheral/hotnic0".into()
        }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "BALLOON_CHANGE", "data": {"actual": 134217728}}"#
        ),
        QmpEvent::BalloonChange { actual: 134217728 }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "completed"}}"#
        ),
        QmpEvent::Migration {
            status: "completed".into()
        }
    );
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION_PASS", "data": {"pass": 2}}"#
        ),
        QmpEvent::MigrationPass { pass: 2 }
    );
}

#[test]
fn an_unknown_event_is_kept_with_its_data() {
    assert_eq!(
        ev(
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RTC_CHANGE", "data": {"offset": 78, "qom-path": "/machine/unattached/device[8]"}}"#
        ),
        QmpEvent::Other {
            name: "RTC_CHANGE".into(),
            data: json!({"offset": 78, "qom-path": "/machine/unattached/device[8]"})
        }
    );
    assert_eq!(
        ev(r#"{"event": "SOMETHING_NEW"}"#),
        QmpEvent::Other {
            name: "SOMETHING_NEW".into(),
            data: Value::Null
        }
    );
}

#[test]
fn a_known_event_missing_strings_or_booleans_keeps_its_variant_with_defaults() {
    assert_eq!(
        ev(r#"{"event": "SHUTDOWN"}"#),
        QmpEvent::Shutdown {
            guest: false,
            reason: String::new()
        }
    );
    assert_eq!(
        ev(r#"{"event": "RESET", "data": {"guest": "yes", "reason": 5}}"#),
        QmpEvent::Reset {
            guest: false,
            reason: String::new()
        }
    );
    assert_eq!(
        ev(r#"{"event": "GUEST_PANICKED", "data": {}}"#),
        QmpEvent::GuestPanicked {
            action: String::new()
        }
    );
    assert_eq!(
        ev(
            r#"{"event": "BLOCK_IO_ERROR", "data": {"device": "ide0-hd0", "operation": "read", "action": "report", "reason": "Input/output error"}}"#
        ),
        QmpEvent::BlockIoError {
            device: "ide0-hd0".into(),
            node_name: None,
            operation: "read".into(),
            action: "report".into(),
            nospace: false,
            reason: "Input/output error".into()
        }
    );
    assert_eq!(
        ev(r#"{"event": "DEVICE_DELETED", "data": {"device": "nic1"}}"#),
        QmpEvent::DeviceDeleted {
            device: Some("nic1".into()),
            path: String::new()
        }
    );
    assert_eq!(
        ev(r#"{"event": "MIGRATION", "data": null}"#),
        QmpEvent::Migration {
            status: String::new()
        }
    );
}

#[test]
fn a_known_event_missing_its_number_is_kept_as_other_rather_than_given_a_made_up_one() {
    assert_eq!(
        ev(r#"{"event": "BALLOON_CHANGE", "data": {"actual": "lots"}}"#),
        QmpEvent::Other {
            name: "BALLOON_CHANGE".into(),
            data: json!({"actual": "lots"})
        }
    );
    assert_eq!(
        ev(r#"{"event": "MIGRATION_PASS", "data": {}}"#),
        QmpEvent::Other {
            name: "MIGRATION_PASS".into(),
            data: json!({})
        }
    );
}

#[test]
fn an_event_without_a_usable_timestamp_gets_zero() {
    assert_eq!(event(r#"{"event": "STOP"}"#).1, 0);
    assert_eq!(
        event(r#"{"event": "STOP", "timestamp": {"seconds": -1, "microseconds": -1}}"#).1,
        0
    );
}

#[test]
fn an_overlong_event_line_keeps_the_event_but_not_its_data() {
    let line = json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown", "pad": "p".repeat(MAX_EVENT_LINE)}});
    assert_eq!(
        ev(&line.to_string()),
        QmpEvent::Shutdown {
            guest: false,
            reason: String::new()
        }
    );
}

#[test]
fn replies_decode_into_typed_results() {
    let st = decode_status(json!({"status": "running", "singlestep": false, "running": true}));
    assert_eq!(
        st.unwrap(),
        Status {
            run_state: RunState::Running,
            running: true
        }
    );
    let st = decode_status(json!({"status": "prelaunch"})).unwrap();
    assert_eq!((st.run_state, st.running), (RunState::Prelaunch, false));
    assert!(decode_status(json!({"running": true})).is_err());

    let cpus = decode_cpus(
        json!([{"thread-id": 4952, "props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}]),
    );
    assert_eq!(
        cpus.unwrap(),
        [CpuThread {
            cpu_index: 0,
            thread_id: 4952
        }]
    );
    let missing = decode_cpus(json!([{"cpu-index": 0}])).unwrap_err();
    assert!(missing.contains("thread-id"), "{missing}");
    assert!(decode_cpus(json!({})).is_err());

    let v = decode_version(
        json!({"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": " Debian "}),
    );
    assert_eq!(
        v.unwrap(),
        QemuVersion {
            major: 7,
            minor: 2,
            micro: 22,
            package: "Debian".into()
        }
    );

    let machines = decode_machines(json!([
        {"hotpluggable-cpus": true, "name": "pc-i440fx-7.2", "is-default": true, "cpu-max": 255, "deprecated": false, "alias": "pc"},
        {"name": "none", "cpu-max": 1, "deprecated": false}
    ]))
    .unwrap();
    assert_eq!(
        machines,
        [
            MachineInfo {
                name: "pc-i440fx-7.2".into(),
                alias: Some("pc".into()),
                is_default: true
            },
            MachineInfo {
                name: "none".into(),
                alias: None,
                is_default: false
            }
        ]
    );

    let types = decode_type_names(
        json!([{"name": "virtio-net-pci", "parent": "virtio-net-pci-base"}, {"name": "e1000"}]),
    );
    assert_eq!(types.unwrap(), ["virtio-net-pci", "e1000"]);
}

#[test]
fn a_log_excerpt_is_bounded_escaped_and_marked_when_cut() {
    let mut line = b"bad \x1b[31m\"line\"".to_vec();
    line.extend(std::iter::repeat_n(b'z', 8 << 20));
    line.push(b'\n');
    let e = excerpt(&line);
    assert!(e.starts_with(r#"bad \x1b[31m"line""#), "{e}");
    assert!(e.ends_with('…'));
    assert!(e.len() < 2 * EXCERPT, "{} bytes", e.len());
    assert_eq!(excerpt(b"short\n"), "short");
}

#[test]
fn query_migrate_decodes_qemu_72s_answers() {
    // Captured from QEMU 7.2 migrating a 64 MiB pc guest over loopback TCP.
    let done: Value = serde_json::from_str(r#"{"status": "completed", "setup-time": 0, "downtime": 10, "total-time": 31, "ram": {"total": 84484096, "postcopy-requests": 0, "dirty-sync-count": 2, "multifd-bytes": 0, "pages-per-second": 0, "downtime-bytes": 152984, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 271.9101935483871, "transferred": 936623, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 783639, "duplicate": 20603, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 749568, "normal": 183}}"#).unwrap();
    let m = decode_migration(done).unwrap();
    assert_eq!(m.status, Some(MigrationStatus::Completed));
    assert_eq!((m.total_time_ms, m.downtime_ms), (Some(31), Some(10)));
    let ram = m.ram.unwrap();
    assert_eq!(
        (ram.transferred, ram.total, ram.dirty_sync_count),
        (936623, 84484096, 2)
    );
    assert!((ram.mbps - 271.91).abs() < 0.01);
    // Before any migration QEMU answers {}; during setup only the status.
    assert_eq!(
        decode_migration(json!({})).unwrap(),
        MigrationInfo::default()
    );
    assert_eq!(
        decode_migration(json!({"status": "setup"})).unwrap().status,
        Some(MigrationStatus::Setup)
    );
    // A failure says why.
    let failed = decode_migration(
        json!({"status": "failed", "error-desc": "Unable to write to socket: Broken pipe"}),
    )
    .unwrap();
    assert_eq!(
        failed.error_desc.as_deref(),
        Some("Unable to write to socket: Broken pipe")
    );
    assert!(decode_migration(json!({"status": 3})).is_err());
}

#[test]
fn migration_arguments_are_spelled_as_qemu_expects() {
    assert_eq!(
        args_migrate_capabilities(&[("events", true), ("postcopy-ram", false)]).unwrap(),
        json!({"capabilities": [{"capability": "events", "state": true}, {"capability": "postcopy-ram", "state": false}]})
    );
    let p = MigrationParams {
        max_bandwidth: Some(32 << 20),
        downtime_limit: Some(30),
        ..MigrationParams::default()
    };
    assert_eq!(
        args_migrate_parameters(&p).unwrap(),
        json!({"max-bandwidth": 33554432, "downtime-limit": 30})
    );
    let params = decode_migration_params(json!({"cpu-throttle-tailslow": false, "downtime-limit": 300, "max-bandwidth": 134217728, "max-postcopy-bandwidth": 0, "cpu-throttle-initial": 20, "cpu-throttle-increment": 10, "tls-creds": ""})).unwrap();
    assert_eq!(
        params,
        MigrationParams {
            max_bandwidth: Some(134217728),
            downtime_limit: Some(300),
            max_postcopy_bandwidth: Some(0),
            cpu_throttle_initial: Some(20),
            cpu_throttle_increment: Some(10),
        }
    );
    assert_eq!(
        args_migrate_parameters(&params).unwrap()["max-bandwidth"],
        134217728
    );
    assert_eq!(
        decode_capabilities(json!([{"capability": "xbzrle", "state": false}])).unwrap(),
        vec![("xbzrle".to_string(), false)]
    );
}

#[test]
fn query_pci_walks_root_ports_and_sees_mapped_bars() {
    let v = json!([{"bus": 0, "devices": [
        {"slot": 0, "qdev_id": "", "regions": []},
        {"slot": 30, "qdev_id": "hotport3", "regions": [], "pci_bridge": {"devices": [
            {"slot": 0, "qdev_id": "hotnic0", "regions": [
                {"type": "memory", "address": -1}, {"type": "io", "address": 49152}]}
        ]}},
        {"slot": 5, "qdev_id": "hotdisk0", "regions": [
            {"type": "memory", "address": 4261412864_i64}]}
    ]}]);
    let d = decode_pci_devices(v).unwrap();
    let by = |id: &str| d.iter().find(|x| x.id == id).unwrap().clone();
    assert_eq!(by("hotnic0").bus, "hotport3");
    assert!(!by("hotnic0").mapped, "an unmapped BAR reads -1");
    assert_eq!((by("hotdisk0").bus.as_str(), by("hotdisk0").slot), ("", 5));
    assert!(by("hotdisk0").mapped);
    assert_eq!(by("hotport3").slot, 30);
    assert!(decode_pci_devices(json!({})).is_err());
}

#[test]
fn block_node_names_are_read() {
    let v = json!([{"node-name": "hotdisk0-backend", "drv": "raw"}, {"node-name": "#block123"}]);
    assert_eq!(
        decode_node_names(v).unwrap(),
        ["hotdisk0-backend", "#block123"]
    );
    assert!(decode_node_names(json!(null)).is_err());
}

#[test]
fn blockstats_of_our_devices_only_named_by_their_ids() {
    let v = json!([
        {"device": "", "qdev": "/machine/peripheral/disk0/virtio-backend", "node-name": "disk0",
         "stats": {"rd_bytes": 4096, "wr_bytes": 512, "rd_operations": 2, "wr_operations": 1,
                   "flush_operations": 1, "rd_total_time_ns": 1000, "wr_total_time_ns": 2000}},
        {"device": "", "qdev": "/machine/unattached/device[18]", "stats": {"rd_bytes": 54}},
        {"device": "sd0", "stats": {}}
    ]);
    let d = decode_blockstats(v).unwrap();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        d[0],
        BlockStats {
            id: "disk0".into(),
            rd_bytes: 4096,
            wr_bytes: 512,
            rd_ops: 2,
            wr_ops: 1,
            flush_ops: 1,
            rd_time_ns: 1000,
            wr_time_ns: 2000,
        }
    );
}
