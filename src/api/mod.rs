//! The operations kvmd offers and their results, as domain types. `protocol` maps them to and
//! from the control socket's JSON; the supervisor and VM actors produce them.
//!
//! Invariant: no JSON here, and no actix.

use std::fmt;

use crate::model::exit::ExitRecord;
use crate::model::field_error::FieldError;
use crate::model::name::InstanceName;
use crate::model::state::{StopEnd, VmState};

/// One operation asked of kvmd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    Ping,
    /// Running instances (those with a QEMU process).
    List,
    /// One instance, or all (`name = None`).
    Info {
        name: Option<InstanceName>,
    },
    Start {
        name: InstanceName,
        paused: bool,
    },
    /// `timeout = None` uses the node's stop timeout.
    Stop {
        name: InstanceName,
        timeout_s: Option<u64>,
        force: bool,
    },
    /// Soft: stop (ACPI) and start again with the current definition. Hard: QMP system_reset.
    Reboot {
        name: InstanceName,
        hard: bool,
        /// How long the stop half may wait for the guest (default: the node's stop timeout).
        timeout_s: Option<u64>,
    },
    /// Freeze a running guest (QMP stop).
    Pause {
        name: InstanceName,
    },
    /// Let a paused guest run (QMP cont), e.g. after `start --paused`.
    Resume {
        name: InstanceName,
    },
    Cleanup {
        name: InstanceName,
    },
    Reload,
}

/// Everything `info` shows about one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    pub name: InstanceName,
    pub state: VmState,
    pub pid: Option<u32>,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// CPU time used by QEMU, in milliseconds.
    pub cpu_time_ms: Option<u64>,
    pub uptime_s: Option<u64>,
    pub started_at_ms: Option<u64>,
    pub qemu_version: Option<String>,
    pub autostart: bool,
    /// Present in the config file (an adopted VM may no longer be).
    pub in_config: bool,
    /// The definition changed since QEMU started; applies at next start.
    pub pending_changes: bool,
    /// The operation in progress (`start`, `stop`, `reboot`).
    pub operation: Option<&'static str>,
    pub last_exit: Option<ExitRecord>,
}

/// What a successful operation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiReply {
    Pong {
        version: &'static str,
    },
    List(Vec<VmInfo>),
    Info(Vec<VmInfo>),
    Started(VmInfo),
    Stopped {
        ended: StopEnd,
        elapsed_ms: u64,
        info: VmInfo,
    },
    Rebooted(VmInfo),
    Paused(VmInfo),
    Resumed(VmInfo),
    CleanedUp {
        name: InstanceName,
    },
    Reloaded {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        /// `[node]` settings differ from the running ones: they apply when kvmd restarts.
        node_changed: bool,
    },
}

/// Stable, machine-readable error codes (documented in docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    RequestTooLarge,
    UnknownRequest,
    InvalidParameter,
    NotFound,
    AlreadyRunning,
    NotRunning,
    Busy,
    StartFailed,
    QmpError,
    Unresponsive,
    ConfigError,
    PermissionDenied,
    ShuttingDown,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadRequest,
        ErrorCode::RequestTooLarge,
        ErrorCode::UnknownRequest,
        ErrorCode::InvalidParameter,
        ErrorCode::NotFound,
        ErrorCode::AlreadyRunning,
        ErrorCode::NotRunning,
        ErrorCode::Busy,
        ErrorCode::StartFailed,
        ErrorCode::QmpError,
        ErrorCode::Unresponsive,
        ErrorCode::ConfigError,
        ErrorCode::PermissionDenied,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::UnknownRequest => "unknown_request",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyRunning => "already_running",
            ErrorCode::NotRunning => "not_running",
            ErrorCode::Busy => "busy",
            ErrorCode::StartFailed => "start_failed",
            ErrorCode::QmpError => "qmp_error",
            ErrorCode::Unresponsive => "unresponsive",
            ErrorCode::ConfigError => "config_error",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// A failed operation: code, message, and for bad input every rejected field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Rejected fields (field, value, rule, allowed values). The first is also shown flat.
    pub fields: Vec<FieldError>,
    /// Extra lines: QEMU's stderr for a failed start, the error chain otherwise.
    pub details: Vec<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            fields: Vec::new(),
            details: Vec::new(),
        }
    }

    pub fn invalid(fields: Vec<FieldError>) -> Self {
        let message = match fields.as_slice() {
            [one] => format!("Invalid {}: {}", one.field, one.rule),
            many => format!(
                "{} invalid parameters: {}",
                many.len(),
                crate::model::field_error::FieldErrors(many.to_vec())
            ),
        };
        Self {
            code: ErrorCode::InvalidParameter,
            message,
            fields,
            details: Vec::new(),
        }
    }

    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }

    pub fn not_found(name: &InstanceName) -> Self {
        Self::new(ErrorCode::NotFound, format!("No instance named {name}"))
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code.as_str())
    }
}

impl std::error::Error for ApiError {}
