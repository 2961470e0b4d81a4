//! The error of any request: a stable code, a message, and for bad input every rejected
//! field (name, value, rule, allowed values).
//!
//! Invariant: no JSON here; `control::protocol` encodes it.

use std::fmt;

use crate::model::field_error::{FieldError, FieldErrors};

use crate::model::name::InstanceName;

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
    /// The job was cancelled (by `cancel`, or by a stop during a start).
    Cancelled,
    /// The job cannot be cancelled (short operations run to their end).
    NotCancellable,
    /// The connection cap (or the per-peer cap) is reached.
    TooManyConnections,
    /// A migration target's preflight refused the migration (the reasons are the details).
    MigrationRefused,
    /// A migration failed, was given up, or ended without QEMU saying how.
    MigrationFailed,
    /// The guest refused to let a device go (`DEVICE_UNPLUG_GUEST_ERROR`); it stays plugged.
    GuestRefused,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 21] = [
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
        ErrorCode::Cancelled,
        ErrorCode::NotCancellable,
        ErrorCode::TooManyConnections,
        ErrorCode::MigrationRefused,
        ErrorCode::MigrationFailed,
        ErrorCode::GuestRefused,
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
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::NotCancellable => "not_cancellable",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::MigrationRefused => "migration_refused",
            ErrorCode::MigrationFailed => "migration_failed",
            ErrorCode::GuestRefused => "guest_refused",
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
                FieldErrors(many.to_vec())
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

/// Printed with control characters escaped (a message may quote untrusted text).
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            crate::model::text::escape(&self.message),
            self.code.as_str()
        )
    }
}

impl std::error::Error for ApiError {}
