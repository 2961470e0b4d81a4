//! What can go wrong in a VM's tasks, with causes, and the one place it becomes a wire error
//! ([`VmError::to_api`]).
//!
//! Invariant: messages start with a capital letter, have no trailing period and do not repeat
//! their cause (the cause is printed in the chain).

use crate::api::{ApiError, ErrorCode};
use crate::host::net::NetError;
use crate::host::probe::ProbeError;
use crate::model::field_error::FieldError;
use crate::qmp::QmpError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The definition breaks a rule (every broken rule, with its field).
    #[error("Invalid parameters")]
    Invalid(Vec<FieldError>),
    #[error("Cannot probe QEMU")]
    Probe(#[source] ProbeError),
    #[error("Cannot prepare the run dir")]
    RunDir(#[source] std::io::Error),
    #[error("Cannot create the tap of nic[{index}]")]
    Tap {
        index: usize,
        #[source]
        source: NetError,
    },
    #[error("Cannot set up nic[{index}] ({tap})")]
    NicUp {
        index: usize,
        tap: String,
        #[source]
        source: NetError,
    },
    #[error("Cannot take a uid from node.uid_pool: {0}")]
    UidPool(String),
    #[error("Cannot bind the QMP socket")]
    QmpSocket(#[source] std::io::Error),
    #[error("Cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Cannot watch QEMU (pid {pid})")]
    Watch {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during the start")]
    ExitedEarly,
    #[error("QEMU did not come up")]
    Connect(#[source] QmpError),
    #[error("Cannot pin vCPUs")]
    Pin(#[source] PinError),
    #[error("Cannot read {hvparam}")]
    PasswordFile {
        hvparam: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Reading {hvparam} took longer than {seconds} s")]
    PasswordFileTimeout { hvparam: &'static str, seconds: u64 },
    #[error("Cannot set the {protocol} password")]
    Password {
        protocol: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("Cannot resume the guest")]
    Resume(#[source] QmpError),
    #[error("Cannot set the start-up balloon size")]
    Balloon(#[source] QmpError),
    #[error("Cannot make QEMU wait for the incoming migration")]
    Incoming(#[source] QmpError),
    #[error("The incoming migration is not complete (QEMU says {0})")]
    IncomingIncomplete(String),
    #[error("Cannot write the runtime file")]
    RuntimeFile(#[source] std::io::Error),
    #[error("QMP command failed")]
    Qmp(#[source] QmpError),
    #[error("QEMU did not exit after SIGKILL")]
    WouldNotDie,
    #[error("Cannot signal QEMU")]
    Signal(#[source] std::io::Error),
    #[error("No QEMU process is watched for this VM")]
    NoProcess,
    #[error("{0}")]
    Cancelled(String),
    #[error("The store failed")]
    Store(#[source] StoreError),
    #[error("A task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// Why vCPU pinning failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("Invalid cpu_mask: {0}")]
    Mask(String),
    #[error("Cannot list the vCPU threads")]
    Query(#[source] QmpError),
    #[error("Cannot list QEMU's threads")]
    Threads(#[source] std::io::Error),
    #[error("Cannot pin thread {tid}")]
    Affinity {
        tid: u32,
        #[source]
        source: nix::Error,
    },
}

/// The message of `e` followed by its causes, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl VmError {
    /// The stable code of this error on the wire.
    pub fn code(&self) -> ErrorCode {
        match self {
            VmError::Invalid(_) | VmError::Pin(PinError::Mask(_)) => ErrorCode::InvalidParameter,
            VmError::Cancelled(_) => ErrorCode::Cancelled,
            VmError::Qmp(QmpError::Timeout { .. }) => ErrorCode::Unresponsive,
            VmError::Qmp(_) => ErrorCode::QmpError,
            VmError::WouldNotDie
            | VmError::Signal(_)
            | VmError::NoProcess
            | VmError::Store(_)
            | VmError::Join(_) => ErrorCode::Internal,
            _ => ErrorCode::StartFailed,
        }
    }

    /// The wire error: code, the message with its causes, every rejected field.
    pub fn to_api(&self) -> ApiError {
        match self {
            VmError::Invalid(fields) => ApiError::invalid(fields.clone()),
            other => ApiError::new(other.code(), chain(other)),
        }
    }
}

impl From<StoreError> for VmError {
    fn from(e: StoreError) -> Self {
        VmError::Store(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_error_carries_the_whole_chain_and_the_right_code() {
        let e = VmError::Password {
            protocol: "vnc",
            source: QmpError::Command {
                command: "set_password".into(),
                class: "GenericError".into(),
                desc: "no VNC".into(),
            },
        };
        let api = e.to_api();
        assert_eq!(api.code, ErrorCode::StartFailed);
        assert_eq!(
            api.message,
            "Cannot set the vnc password: QMP command set_password failed: GenericError: no VNC"
        );
        let t = VmError::Qmp(QmpError::Timeout {
            command: "stop".into(),
            ms: 1000,
        });
        assert_eq!(t.to_api().code, ErrorCode::Unresponsive);
        let inv = VmError::Invalid(vec![FieldError::new(
            "hvparams.acpi",
            "1",
            "must be a boolean",
        )]);
        assert_eq!(inv.to_api().fields[0].field, "hvparams.acpi");
    }
}
