//! The shape of a rejected input: which field, which value, which rule, and the allowed values.
//!
//! Config loading, hvparam checks and the control protocol all report bad input this way, so
//! operators see the same three facts whatever the source. Pure data; no I/O.

use std::fmt;

/// One rejected field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `instance.web1.hvparams.disk_cache`.
    pub field: String,
    /// The rejected value as the user wrote it (JSON-ish text).
    pub value: String,
    /// The rule that was broken, in words.
    pub rule: String,
    /// The allowed values, when the field takes one of a fixed set.
    pub allowed: Vec<String>,
}

impl FieldError {
    pub fn new(
        field: impl Into<String>,
        value: impl Into<String>,
        rule: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.into(),
            rule: rule.into(),
            allowed: Vec::new(),
        }
    }

    pub fn with_allowed<I, S>(mut self, allowed: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        self.allowed = allowed.into_iter().map(|s| s.to_string()).collect();
        self
    }

    /// The same error with `prefix.` put before the field path.
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

/// Printed with control characters escaped: a field path or value can come from a config
/// file or a client, and must not forge a log line.
impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::model::text::escape as esc;
        write!(
            f,
            "{} = {}: {}",
            esc(&self.field),
            esc(&self.value),
            esc(&self.rule)
        )?;
        if !self.allowed.is_empty() {
            write!(f, " (allowed: {})", esc(&self.allowed.join(", ")))?;
        }
        Ok(())
    }
}

/// All errors of one input, reported together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
