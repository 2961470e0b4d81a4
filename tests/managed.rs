//! Instances another engine owns (Ganeti): started with their whole definition in the
//! request, `managed_by` that engine, never touched by a reload, known again after a kvmd
//! restart; a bad definition names its field; a name the config file defines is refused.

mod support;

use std::time::Duration;

use kvmd::api::{ApiReply, ApiRequest, ErrorCode};
use support::*;

fn create(d: &Daemon, n: &str, definition: &str) -> Result<ApiReply, kvmd::api::ApiError> {
    d.call(ApiRequest::Create {
        name: name(n),
        definition: definition.into(),
        managed_by: "ganeti".into(),
        paused: true,
        wait: true,
        memory: None,
    })
}

#[test]
fn an_instance_defined_by_its_start_is_managed_by_its_engine_and_survives_reloads_and_restarts() {
    // The config defines only "own"; "g1" comes with its definition.
    let mut d = Daemon::start(&instance_toml("own", ""));
    let def = r#"{"memory": 128, "vcpus": 1, "nic": [{"mode": "user", "mac": "52:54:00:00:aa:01"}],
                  "hvparams": {"serial_console": true}}"#;
    let info = match create(&d, "g1", def).unwrap() {
        ApiReply::Started(i) => i,
        other => panic!("{other:?}"),
    };
    assert_eq!(info.state.as_str(), "paused");
    assert_eq!(info.managed_by.as_deref(), Some("ganeti"));
    assert!(!info.in_config);
    assert_eq!(info.memory_mib, 128);
    let pid = info.pid.unwrap();
    let out = d.kvmctl(&["info", "g1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("managed by:   ganeti"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A reload leaves it alone (it is not the config file's).
    d.call(ApiRequest::Reload).unwrap();
    let i = d.info("g1");
    assert_eq!((i.state.as_str(), i.pid), ("paused", Some(pid)));
    assert_eq!(i.managed_by.as_deref(), Some("ganeti"));
    // A restarted kvmd re-adopts it and still knows who owns it.
    d.kill9();
    d.spawn();
    let i = d.wait_state("g1", "paused", Duration::from_secs(10));
    assert_eq!(
        (i.pid, i.managed_by.as_deref()),
        (Some(pid), Some("ganeti"))
    );
    // Stopped, and stopped again (Ganeti repeats a shutdown): both answer, nothing breaks.
    for _ in 0..2 {
        match d
            .call(ApiRequest::Stop {
                name: name("g1"),
                timeout_s: Some(1),
                force: true,
                wait: true,
            })
            .unwrap()
        {
            ApiReply::Stopped { info, .. } => assert_eq!(info.state.as_str(), "stopped"),
            other => panic!("{other:?}"),
        }
    }
    assert!(!alive(pid));
    // Still known, still Ganeti's, across another restart, while stopped.
    d.kill9();
    d.spawn();
    let i = d.wait_state("g1", "stopped", Duration::from_secs(10));
    assert_eq!(i.managed_by.as_deref(), Some("ganeti"));
    // Its next start brings its (new) definition again.
    let info = match create(&d, "g1", r#"{"memory": 160}"#).unwrap() {
        ApiReply::Started(i) => i,
        other => panic!("{other:?}"),
    };
    assert_eq!((info.memory_mib, info.state.as_str()), (160, "paused"));
    // The config's own instance is not managed by anyone else.
    assert_eq!(d.info("own").managed_by, None);
}

#[test]
fn a_bad_definition_names_its_field_and_a_config_instance_cannot_be_taken_over() {
    let d = Daemon::start(&instance_toml("own", ""));
    let e = create(
        &d,
        "g2",
        r#"{"memory": 8, "disk": [{"path": "relative.img"}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidParameter, "{e:?}");
    let fields: Vec<&str> = e.fields.iter().map(|f| f.field.as_str()).collect();
    assert!(fields.contains(&"definition.memory"), "{fields:?}");
    assert!(fields.contains(&"definition.disk[0].path"), "{fields:?}");
    let e = create(&d, "g2", r#"{"memory": 128, "autostart": true}"#).unwrap_err();
    assert_eq!(e.fields[0].field, "definition.autostart", "{e:?}");
    let e = create(
        &d,
        "g2",
        r#"{"memory": 128, "hvparams": {"disk_cache": "fast"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.fields[0].field, "definition.hvparams.disk_cache", "{e:?}");
    // Nothing was started or left behind for it.
    assert!(d.try_info("g2").is_none_or(|i| i.pid.is_none()));
    let e = create(&d, "own", r#"{"memory": 128}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
    assert!(e.message.contains("defined in kvmd's config file"), "{e:?}");
}
