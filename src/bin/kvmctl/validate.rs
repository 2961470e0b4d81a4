//! `kvmctl validate`: check a config file without kvmd (syntax, hvparam rules, and unless
//! `--syntax-only` this node: files, users, what the QEMU binary offers).
//!
//! Invariant: offline; never talks to kvmd. Config text shown on a terminal is escaped.

use std::path::Path;
use std::process::ExitCode;

use kvmd::model::field_error::FieldError;
use serde_json::{json, Value};

use crate::render::{e, json_pretty};

fn field_json(f: &FieldError) -> Value {
    json!({"field": f.field, "value": f.value, "rule": f.rule, "allowed": f.allowed})
}

/// Print every problem of `file`; failure when there is any.
pub fn run(file: &Path, syntax_only: bool, as_json: bool) -> ExitCode {
    let config = match kvmd::config::Config::load(file) {
        Ok(c) => c,
        Err(err) => {
            let fields = match &err {
                kvmd::config::ConfigError::Invalid { errors, .. } => errors.0.clone(),
                _ => Vec::new(),
            };
            if as_json {
                let list: Vec<_> = fields.iter().map(field_json).collect();
                let v = json!({"ok": false, "config": err.to_string(), "errors": list});
                println!("{}", json_pretty(&v));
            } else {
                eprintln!("kvmctl: {}", e(&file.display().to_string()));
                if fields.is_empty() {
                    eprintln!("  {}", e(&err.to_string()));
                }
                for f in &fields {
                    eprintln!("  {}", e(&f.to_string()));
                }
            }
            return ExitCode::FAILURE;
        }
    };
    let report = kvmd::host::validate::config_report(&config.node, &config.instances, syntax_only);
    if as_json {
        let instances: serde_json::Map<String, Value> = report
            .instances
            .iter()
            .map(|(n, errs)| {
                (
                    n.clone(),
                    Value::Array(errs.iter().map(field_json).collect()),
                )
            })
            .collect();
        let v = json!({"ok": report.ok(), "instances": instances});
        println!("{}", json_pretty(&v));
    } else {
        for (name, errs) in &report.instances {
            if errs.is_empty() {
                println!("{}: ok", e(name));
            } else {
                println!("{}: {} problem(s)", e(name), errs.len());
                for f in errs {
                    println!("  {}", e(&f.to_string()));
                }
            }
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
