//! The text page: names, labels and values as Prometheus reads them.

use super::*;

fn running() -> VmSample {
    VmSample {
        name: "web1".into(),
        state: "running".into(),
        pid: Some(42),
        uptime_s: 12.5,
        memory_bytes: 256 << 20,
        balloon_bytes: Some(200 << 20),
        rss_bytes: Some(50 << 20),
        cpu_seconds: Some(3.25),
        vcpus: vec![VcpuSample {
            index: 0,
            run_seconds: 2.5,
            wait_seconds: 0.125,
        }],
        guest: Some(GuestSample {
            total: 180 << 20,
            available: 150 << 20,
            ..GuestSample::default()
        }),
        disks: vec![DiskSample {
            id: "disk0".into(),
            rd_bytes: 4096,
            rd_ops: 1,
            ..DiskSample::default()
        }],
        nics: vec![NicSample {
            id: "nic0".into(),
            tap: "tap7".into(),
            rx_bytes: 100,
            tx_bytes: 200,
            ..NicSample::default()
        }],
        migration: None,
        unresponsive: false,
        sampled_at_ms: 1,
    }
}

#[test]
fn every_vm_family_carries_its_labels_and_values() {
    let stopped = VmSample {
        name: "db".into(),
        state: "stopped".into(),
        ..VmSample::default()
    };
    let st = stats();
    st.qmp_command("query-status", 0.002, false);
    st.job_ended("start", "succeeded", 1.5);
    let page = render_samples(&[running(), stopped], st);
    for line in [
        "kvmd_vm_state{vm=\"web1\",state=\"running\"} 1.0",
        "kvmd_vm_state{vm=\"db\",state=\"stopped\"} 1.0",
        "kvmd_vm_up{vm=\"db\"} 0.0",
        "kvmd_vm_uptime_seconds{vm=\"web1\"} 12.5",
        "kvmd_vm_memory_configured_bytes{vm=\"web1\"} 268435456.0",
        "kvmd_vm_qemu_cpu_seconds_total{vm=\"web1\"} 3.25",
        "kvmd_vm_vcpu_seconds_total{vm=\"web1\",vcpu=\"0\"} 2.5",
        "kvmd_vm_vcpu_wait_seconds_total{vm=\"web1\",vcpu=\"0\"} 0.125",
        "kvmd_vm_guest_memory_available_bytes{vm=\"web1\"} 157286400.0",
        "kvmd_vm_block_read_bytes_total{vm=\"web1\",disk=\"disk0\"} 4096.0",
        "kvmd_vm_block_operations_total{vm=\"web1\",disk=\"disk0\",operation=\"read\"} 1.0",
        "kvmd_vm_network_transmit_bytes_total{vm=\"web1\",nic=\"nic0\",tap=\"tap7\"} 200.0",
        "kvmd_jobs_total{kind=\"start\",result=\"succeeded\"}",
        "kvmd_qmp_command_duration_seconds_bucket{le=\"0.0025\",command=\"query-status\"}",
        "kvmd_vms_unresponsive 0",
        "# EOF",
    ] {
        assert!(page.contains(line), "missing {line:?} in:\n{page}");
    }
    // A stopped VM has no counters.
    assert!(!page.contains("kvmd_vm_uptime_seconds{vm=\"db\"}"));
}

#[test]
fn the_classic_format_names_counters_by_their_total_series() {
    let page = classic(&render_samples(&[running()], stats()));
    assert!(
        page.contains("# HELP kvmd_vm_qemu_cpu_seconds_total CPU time"),
        "{page}"
    );
    assert!(page.contains("# TYPE kvmd_vm_qemu_cpu_seconds_total counter"));
    assert!(page.contains("kvmd_vm_qemu_cpu_seconds_total{vm=\"web1\"} 3.25"));
    assert!(page.contains("# TYPE kvmd_vm_uptime_seconds gauge"));
    assert!(!page.contains("# UNIT") && !page.contains("# EOF"));
}
