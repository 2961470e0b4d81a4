//! Making untrusted text safe to show: values from clients, QEMU output and instance data pass
//! through [`escape`] before they reach a log line or a terminal.
//!
//! Invariant: the output of [`escape`] contains no control characters (C0, DEL, C1) and no
//! bidirectional-override characters, and it is unambiguous (a backslash is doubled, so an
//! escaped `\n` cannot be confused with a literal backslash-n).

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that reorder text on screen (Unicode bidi embeddings, overrides and isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn needs_escape(c: char) -> bool {
    c.is_control() || c == '\\' || is_bidi_control(c)
}

/// `s` with control characters written as escapes (`\n`, `\t`, `\r`, `\x1b`, `\u{9b}`, ...)
/// and backslashes doubled. Borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_left_alone_and_not_copied() {
        assert!(matches!(
            escape("web1: stopped (acpi) — ok"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn control_characters_and_terminal_escapes_do_not_pass_through() {
        assert_eq!(escape("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape("del\x7f c1\u{9b}"), "del\\x7f c1\\u{9b}");
        assert_eq!(escape("rtl\u{202e}txt"), "rtl\\u{202e}txt");
        assert_eq!(
            escape("back\\n"),
            "back\\\\n",
            "a literal backslash-n stays distinct"
        );
    }
}
