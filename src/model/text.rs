//! Making untrusted text safe to print: control characters (newline, ESC, ...) are escaped, so
//! a value from a config file, a client or QEMU can neither forge a log line nor drive a
//! terminal. Printable text, including non-ASCII, is kept as it is.
//!
//! Invariant: pure.

use std::borrow::Cow;

/// `s` with every control character escaped (`\n`, `\u{1b}`, ...) and backslashes doubled
/// where they would make an escape ambiguous.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || is_bidi(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() || is_bidi(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Bidirectional overrides, which can reorder what a terminal shows.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line_or_colour_a_terminal() {
        let evil = "web1\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m";
        let safe = escape_control(evil);
        assert!(!safe.contains('\n') && !safe.contains('\u{1b}'));
        assert!(safe.contains("\\n") && safe.contains("\\u{1b}"));
        assert_eq!(escape_control("plain é"), "plain é");
        assert!(matches!(escape_control("plain"), Cow::Borrowed(_)));
    }
}
