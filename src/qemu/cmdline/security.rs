//! The security model on the command line (`-run-with`, or `-runas` and `-chroot` on older
//! QEMUs) and `kvm_extra`'s shell-like splitting (done here, never by a shell).
//!
//! Invariant: pure, like the rest of `cmdline`.

use super::{qemu_escape, Launch};
use crate::model::field_error::FieldError;
use crate::model::hvparams::key;

pub(super) fn security_args(l: &Launch<'_>, a: &mut Vec<String>, errs: &mut Vec<FieldError>) {
    let (hv, caps) = (l.hv, l.caps);
    let chroot = l
        .host
        .chroot_dir
        .clone()
        .filter(|_| hv.bool(key::USE_CHROOT));
    if hv.bool(key::USE_CHROOT) && chroot.is_none() {
        errs.push(FieldError::new(
            "use_chroot",
            "true",
            "needs a chroot directory (internal: none was prepared)",
        ));
    }
    let user = match hv.str(key::SECURITY_MODEL) {
        "user" => Some(hv.str(key::SECURITY_DOMAIN).to_string()),
        "pool" => match &l.host.pool_user {
            Some(u) => Some(u.clone()),
            None => {
                errs.push(FieldError::new(
                    "security_model",
                    "\"pool\"",
                    "needs a free uid from node.uid_pool",
                ));
                None
            }
        },
        _ => None,
    };
    if user.is_none() && chroot.is_none() {
        return;
    }
    if caps.options.run_with {
        let mut parts = Vec::new();
        if let Some(u) = &user {
            parts.push(format!("user={}", qemu_escape(u)));
        }
        if let Some(c) = &chroot {
            parts.push(format!("chroot={}", qemu_escape(c)));
        }
        a.extend(["-run-with".into(), parts.join(",")]);
        return;
    }
    if let Some(u) = user {
        if !caps.options.runas {
            errs.push(FieldError::new(
                "security_model",
                format!("{:?}", hv.str(key::SECURITY_MODEL)),
                "this QEMU has neither -run-with nor -runas",
            ));
        }
        a.extend(["-runas".into(), u]);
    }
    if let Some(c) = chroot {
        if !caps.options.chroot {
            errs.push(FieldError::new(
                "use_chroot",
                "true",
                "this QEMU has neither -run-with nor -chroot",
            ));
        }
        a.extend(["-chroot".into(), c]);
    }
}

/// Split a string like a POSIX shell would (quotes and backslashes), without running one.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("has an unterminated single quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => cur.push(ch),
                            Some(ch) => {
                                cur.push('\\');
                                cur.push(ch);
                            }
                            None => return Err("ends inside a double quote".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("has an unterminated double quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(ch) => cur.push(ch),
                    None => return Err("ends with a backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}
