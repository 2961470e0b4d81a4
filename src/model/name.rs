//! Instance names: the one place that decides whether a string may name a VM.
//!
//! A name becomes a directory under the run dir, a QEMU `-name` value and a log field, so it is
//! validated before it touches any path. The rule is DNS-label-like (what Ganeti, libvirt and
//! Proxmox users already use): lower-case letters, digits, `-`, `_` and `.`, starting with a
//! letter or digit, at most 63 bytes, and never `.`/`..` or containing `/`.
//!
//! Invariant: no other module builds a path from an unvalidated string; they take `InstanceName`.

use std::fmt;

/// The rule, as shown to operators in errors.
pub const NAME_RULE: &str =
    "1-63 characters from a-z 0-9 . - _, starting with a letter or digit, no '..'";

/// A validated instance name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceName(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid instance name {value:?}: {reason}")]
pub struct NameError {
    pub value: String,
    pub reason: &'static str,
}

impl InstanceName {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let err = |reason| {
            Err(NameError {
                value: value.to_string(),
                reason,
            })
        };
        if value.is_empty() {
            return err("it is empty");
        }
        if value.len() > 63 {
            return err("it is longer than 63 characters");
        }
        if value.contains('/') {
            return err("it contains '/'");
        }
        if value.contains("..") {
            return err("it contains '..'");
        }
        let first = value.as_bytes()[0];
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return err("it must start with a lower-case letter or a digit");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        {
            return err("only a-z, 0-9, '.', '-' and '_' are allowed");
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["web1", "db-01.example", "a", "9lives", "x_y"] {
            assert!(InstanceName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_names_that_could_escape_the_run_dir() {
        for (bad, why) in [
            ("", "empty"),
            ("../etc", "'/'"),
            ("a/b", "'/'"),
            ("..", ".."),
            (".hidden", "start"),
            ("Web", "start"),
            ("a b", "only"),
            ("a..b", ".."),
            ("-x", "start"),
        ] {
            let e = InstanceName::parse(bad).unwrap_err();
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        }
        assert!(InstanceName::parse(&"a".repeat(64)).is_err());
    }
}
