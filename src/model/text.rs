//! Making untrusted text safe to show: values from clients, config files, QEMU output, hooks
//! and instance data pass through [`escape`] (or [`escape_clipped`]) before they reach a log
//! line, an error message or a terminal. Printable text, including non-ASCII, is kept as it is.
//!
//! Invariant: pure. The output contains no control characters (C0, DEL, C1) and no
//! bidirectional-override characters, and it is unambiguous: a backslash is doubled, so an
//! escaped `\n` cannot be confused with a literal backslash-n.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that reorder text on screen (Unicode bidi marks, embeddings, overrides and
/// isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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

/// The first `max_bytes` of `s` (cut at a character boundary), escaped, with `…` when cut.
pub fn escape_clipped(s: &str, max_bytes: usize) -> String {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = escape(&s[..end]).into_owned();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// [`escape_clipped`] for bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub fn escape_bytes_clipped(b: &[u8], max_bytes: usize) -> String {
    let cut = &b[..b.len().min(max_bytes)];
    let mut out = escape(&String::from_utf8_lossy(cut)).into_owned();
    if b.len() > max_bytes {
        out.push('…');
    }
    out
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
        assert_eq!(escape("plain é"), "plain é");
    }

    #[test]
    fn control_characters_cannot_forge_a_line_or_colour_a_terminal() {
        let evil = "web1\n2026-01-01T00:00:00Z  INFO forged\u{1b}[31m";
        let safe = escape(evil);
        assert!(!safe.contains('\n') && !safe.contains('\u{1b}'));
        assert_eq!(escape("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape("del\x7f c1\u{9b}"), "del\\x7f c1\\u{9b}");
        assert_eq!(escape("rtl\u{202e}txt\u{200f}"), "rtl\\u{202e}txt\\u{200f}");
        assert_eq!(
            escape("back\\n"),
            "back\\\\n",
            "a literal backslash-n stays distinct"
        );
    }

    #[test]
    fn clipping_cuts_at_a_character_boundary_and_marks_the_cut() {
        assert_eq!(escape_clipped("abcdef", 3), "abc…");
        assert_eq!(escape_clipped("abc", 3), "abc");
        assert_eq!(escape_clipped("aé", 2), "a…", "é is two bytes");
        assert_eq!(escape_clipped("a\nb", 8), "a\\nb");
        assert_eq!(escape_bytes_clipped(b"x\xffy\n", 3), "x\u{fffd}y…");
        assert_eq!(escape_bytes_clipped(b"ok", 3), "ok");
    }
}
