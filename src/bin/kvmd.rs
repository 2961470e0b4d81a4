//! `kvmd --config PATH`: the node agent, in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Supervise QEMU virtual machines. VMs keep running when kvmd stops.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML).
    #[arg(long, short, default_value = "/etc/kvmd/kvmd.toml")]
    config: PathBuf,
    /// Log filter, e.g. `info` or `kvmd=debug` (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    log: String,
    /// Check the config file and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the QEMU argv kvmd would build for a Ganeti-parity case file (JSON, see
    /// tests/ganeti-parity/README.md) as `{"argv": [...]}`, and exit. Runs no QEMU.
    #[arg(long, value_name = "CASE")]
    print_argv: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(case) = &args.print_argv {
        return match print_argv(case) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                print_chain(&e);
                ExitCode::from(2)
            }
        };
    }
    let config = match kvmd::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            print_chain(&anyhow::Error::new(e));
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "{}: ok ({} instances)",
            args.config.display(),
            config.instances.len()
        );
        return ExitCode::SUCCESS;
    }
    match kvmd::daemon::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_chain(&anyhow::Error::new(e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, control characters escaped (they may quote the config file).
fn print_chain(e: &anyhow::Error) {
    use kvmd::model::text::escape as esc;
    eprintln!("kvmd: error: {}", esc(&e.to_string()));
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {}", esc(&cause.to_string()));
    }
}

/// `--print-argv`: one parity case → our argv, from recorded QEMU output.
fn print_argv(case: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use kvmd::model::hvparams::{HvOverrides, HvValue};
    use kvmd::model::spec::{DiskFormat, DiskSpec, InstanceSpec, NicMode, NicSpec};
    use kvmd::qemu::cmdline::{build_command_line, Launch};
    use serde_json::Value;

    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(case).with_context(|| format!("reading {}", case.display()))?,
    )?;
    let text = |key: &str| -> anyhow::Result<String> {
        let rel = v[key]
            .as_str()
            .with_context(|| format!("case has no {key}"))?;
        let p = std::path::Path::new(rel);
        let p = if p.exists() {
            p.to_path_buf()
        } else {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
        };
        std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
    };
    let help = text("qemu_help")?;
    let caps = kvmd::qemu::caps::QemuCaps::from_outputs(
        &help,
        &help,
        &text("qemu_machine_help")?,
        &text("qemu_device_help")?,
    )
    .context("no QEMU version in the help text")?;
    let mut over = HvOverrides::new();
    for (k, val) in v["hvparams"].as_object().into_iter().flatten() {
        let hv = match val {
            Value::Bool(b) => HvValue::Bool(*b),
            Value::Number(n) => HvValue::Int(n.as_i64().context("integer hvparam")?),
            Value::String(s) => HvValue::Str(s.clone()),
            other => anyhow::bail!("hvparam {k} = {other}: not a string, boolean or integer"),
        };
        kvmd::model::hvparams::check_value(k, &hv).map_err(|e| anyhow::anyhow!("{e}"))?;
        over.insert(k.clone(), hv);
    }
    let hv = kvmd::model::hvparams::HvParams::merged(&[&over]);
    let name =
        kvmd::model::name::InstanceName::parse(v["name"].as_str().context("case has no name")?)?;
    let nics: Vec<NicSpec> = v["nics"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| NicSpec {
            mode: match n["mode"].as_str() {
                Some("routed") => NicMode::Routed,
                Some("openvswitch") => NicMode::Openvswitch,
                Some("user") => NicMode::User,
                _ => NicMode::Bridged,
            },
            link: n["link"].as_str().unwrap_or("").to_string(),
            mac: n["mac"].as_str().unwrap_or("52:54:00:00:00:01").to_string(),
            ip: n["ip"].as_str().map(String::from),
        })
        .collect();
    let spec = InstanceSpec {
        uuid: v["uuid"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| kvmd::model::spec::uuid_from_name(name.as_str())),
        name,
        memory: v["memory"].as_u64().unwrap_or(128),
        min_memory: v["memory"].as_u64().unwrap_or(128),
        vcpus: u32::try_from(v["vcpus"].as_u64().unwrap_or(1)).context("vcpus out of range")?,
        network_port: v["network_port"]
            .as_u64()
            .map(u16::try_from)
            .transpose()
            .context("network_port out of range")?,
        disks: v["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| DiskSpec {
                path: d["path"].as_str().unwrap_or("/dev/null").into(),
                format: DiskFormat::Raw,
                readonly: d["mode"] == "ro",
            })
            .collect(),
        nics,
        hvparams: over,
        autostart: false,
    };
    let paths = kvmd::model::layout::RunPaths::new(std::path::Path::new("/run/kvmd"), &spec.name);
    // The same plan a real start makes; only the gathering differs (from the case file).
    let node = kvmd::model::spec::NodeConfig::defaults();
    let facts = kvmd::qemu::host_facts::NodeFacts {
        vhost_available: true,
        spice_cert_dir: node.spice_cert_dir.clone(),
        hotplug_ports: node.hotplug_ports,
    };
    let plan = kvmd::qemu::host_facts::plan(&spec, &hv, &caps, &facts, &paths, false);
    let (taps, qmp_fd) = kvmd::qemu::host_facts::placeholder_taps(&plan, 10);
    let address = |name: &Option<String>| {
        name.as_ref()
            .and_then(|n| v["host_interfaces"][n]["4"][0].as_str())
            .map(String::from)
    };
    let gathered = kvmd::qemu::host_facts::Gathered {
        block_devices: spec
            .disks
            .iter()
            .map(|d| d.path.starts_with("/dev/"))
            .collect(),
        taps,
        vnc_address: address(&plan.vnc_interface),
        spice_address: address(&plan.spice_interface.as_ref().map(|(n, _)| n.clone())),
        pool_user: None,
        qmp_fd: Some(qmp_fd),
    };
    let host = kvmd::qemu::host_facts::host(&plan, gathered);
    let accel = spec.accel(&hv, &node);
    let cl = build_command_line(&Launch {
        spec: &spec,
        hv: &hv,
        caps: &caps,
        paths: &paths,
        accel,
        host: &host,
    })
    .map_err(|errs| anyhow::anyhow!("{}", kvmd::model::field_error::FieldErrors(errs)))?;
    println!(
        "{}",
        serde_json::json!({ "argv": cl.argv, "slots": cl.slots, "machine": cl.machine })
    );
    Ok(())
}
