//! Hot-plug as the core sees it: the spare root ports of a q35 VM, refusals before QEMU is
//! asked, and a plug's intent in the runtime file before its first QMP command.

use super::*;
use crate::model::hotplug::{HotDevice, HotRecord};

/// A running q35 VM with `ports` spare root ports.
fn q35(ports: u8) -> T {
    let mut t = T::stopped();
    let (_, fx) = t.req(start());
    let job = started_job(&fx);
    let gen = t.core.gen();
    t.input(Input::Spawned { gen, pid: 4242 });
    t.input(Input::QmpUp { gen, conn: 1 });
    let mut info = run_info(false);
    info.hardware.machine = "pc-q35-7.2".into();
    info.hardware.hotplug_ports = ports;
    t.input(Input::StartDone {
        job,
        gen,
        result: Ok(info),
    });
    t
}

fn nic() -> Request {
    Request::HotplugAdd {
        device: HotDevice::Nic {
            mac: "52:54:00:00:00:01".into(),
            mode: crate::model::spec::NicMode::User,
            link: String::new(),
        },
    }
}

fn plug_task(fx: &[Effect]) -> Option<(JobId, HotRecord)> {
    fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::HotplugAdd { job, intent, .. }) => Some((*job, intent.clone())),
        _ => None,
    })
}

fn recorded_devices(fx: &[Effect]) -> Option<Vec<HotRecord>> {
    fx.iter().find_map(|e| match e {
        Effect::RecordHotplug(d) => Some(d.clone()),
        _ => None,
    })
}

#[test]
fn plugs_take_the_spare_root_ports_in_order_and_the_next_is_refused_naming_the_setting() {
    let mut t = q35(2);
    let gen = t.core.gen();
    for port in 0..2u8 {
        let (_, fx) = t.req(nic());
        let (job, intent) = plug_task(&fx).expect("a plug task");
        assert_eq!(intent.port, Some(port));
        assert!(intent.plugging, "the task writes the intent before QMP");
        // Under way: its port counts as taken, the device is not shown yet.
        let hw = t.core.info().hardware.unwrap();
        assert_eq!(hw.hotplug_ports_free, 1 - port);
        assert!(hw.nics.iter().all(|n| n.id.as_deref() != Some(&intent.id)));
        let fx = t.input(Input::HotplugDone {
            job,
            gen,
            result: Ok(HotChange::Added(HotRecord {
                plugging: false,
                ..intent.clone()
            })),
        });
        let devices = recorded_devices(&fx).unwrap();
        assert_eq!(devices.len(), usize::from(port) + 1);
        assert!(devices.iter().all(|d| !d.plugging));
        let hw = t.core.info().hardware.unwrap();
        assert_eq!(hw.nics.last().unwrap().address, format!("hotport{port}"));
    }
    let (ticket, fx) = t.req(nic());
    assert!(plug_task(&fx).is_none(), "refused before QEMU is asked");
    assert_eq!(refused(&fx, ticket), ErrorCode::Busy);
    let msg = match answer(&fx, ticket) {
        Some(Outcome::Now(Err(e))) => e.message,
        other => panic!("{other:?}"),
    };
    assert!(msg.contains("hotplug_ports = 2"), "{msg}");
}

#[test]
fn a_q35_vm_started_without_ports_refuses_plugs_and_says_which_setting() {
    let mut t = q35(0);
    let (ticket, fx) = t.req(nic());
    assert!(plug_task(&fx).is_none());
    assert_eq!(refused(&fx, ticket), ErrorCode::BadRequest);
}

#[test]
fn a_failed_plug_takes_its_intent_out_of_the_runtime_file() {
    let mut t = q35(8);
    let gen = t.core.gen();
    let (_, fx) = t.req(nic());
    let (job, _) = plug_task(&fx).unwrap();
    let fx = t.input(Input::HotplugDone {
        job,
        gen,
        result: Err(ApiError::new(ErrorCode::QmpError, "device_add failed")),
    });
    assert_eq!(recorded_devices(&fx), Some(Vec::new()));
    assert_eq!(t.core.info().hardware.unwrap().hotplug_ports_free, 8);
}

#[test]
fn a_restarted_kvmd_reconciles_a_plug_it_was_in_the_middle_of() {
    let mut t = T::new_core(false, Some(spec()));
    let mut info = run_info(false);
    info.hotplugged.push(HotRecord {
        id: "hotdisk0".into(),
        slot: 0,
        port: None,
        device: HotDevice::Disk {
            path: "/srv/a.img".into(),
            format: "raw".into(),
            readonly: false,
        },
        plugging: true,
        pending_removal: false,
        tap: None,
        link_up: true,
    });
    let mut facts = super::recovery::adopted(RunState::Running);
    facts.gen = 3;
    facts.runtime = RuntimeState::Present {
        pid: 4242,
        info: Box::new(info),
    };
    let fx = t.input(Input::Recovered(facts));
    let records = fx.iter().find_map(|e| match e {
        Effect::Spawn(Task::HotplugReconcile { records, gen, .. }) => Some((records.clone(), *gen)),
        _ => None,
    });
    let (records, gen) = records.expect("a reconcile task");
    assert_eq!((records.len(), gen), (1, 3));
}
