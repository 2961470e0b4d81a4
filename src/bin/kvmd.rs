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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

fn print_chain(e: &anyhow::Error) {
    eprintln!("kvmd: error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
