//! Untrusted text made inert for display: the characters that hide
//! themselves or change how the text around them is shown (terminal
//! controls, bidirectional overrides, zero-width and other invisible
//! characters) are found here and turned into visible escapes such as
//! `\u{1b}`, so an approver reads what was written, not what it pretends.
//!
//! Requesters write reasons, params, resource ids and context; reviewers
//! write review reasons. Every channel that shows them to someone else (the
//! CLI, chat, the console) passes them through this module first.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use unicode_script::{Script, UnicodeScript};
use unicode_security::MixedScript;

/// Whether `c` hides itself or changes how the text around it is shown:
/// control characters (C0 with ESC, CR, BEL, backspace; DEL; C1), format
/// characters (bidirectional embeddings, overrides, isolates and marks,
/// zero-width space and joiners, word joiner, BOM, soft hyphen, tags…), the
/// line and paragraph separators, and the letters that render as blank.
pub fn is_hidden(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || matches!(
        c,
        // Combining grapheme joiner, the Hangul fillers and the blank
        // Braille pattern: not format characters, but show as nothing, so
        // they can pad or split a word unseen.
        '\u{034F}' | '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}' | '\u{2800}'
        // Variation selectors (also Mongolian's) and Khmer's inherent
        // vowels: marks that show as nothing after a letter, so
        // `prod.customers\u{fe0f}` looked like `prod.customers` (found by
        // a black-box pass); unassigned code points Unicode reserves as
        // ignorable.
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{E0100}'..='\u{E01EF}'
        | '\u{180B}'..='\u{180F}'
        | '\u{17B4}'..='\u{17B5}'
        | '\u{2065}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{E0000}'..='\u{E0FFF}'
    ) || (c != ' ' && c.general_category() == GeneralCategory::SpaceSeparator)
}

/// Whether `s` holds any character [`is_hidden`] finds.
pub fn has_hidden(s: &str) -> bool {
    s.chars().any(is_hidden)
}

/// Whether `s` says nothing a person can read: empty, white space, or
/// hidden characters only (a reason of one zero-width space was taken as
/// a reason; found by a black-box pass).
pub fn is_blank(s: &str) -> bool {
    s.chars().all(|c| c.is_whitespace() || is_hidden(c))
}

/// Whether any string in `v`, key or value, at any depth, holds a hidden
/// character.
pub fn json_has_hidden(v: &Value) -> bool {
    match v {
        Value::String(s) => has_hidden(s),
        Value::Array(a) => a.iter().any(json_has_hidden),
        Value::Object(o) => o.iter().any(|(k, v)| has_hidden(k) || json_has_hidden(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// The visible stand-in for a hidden character: `\n`, `\r` and `\t` for
/// the common three, else `\u{…}` with the code point in hex.
pub fn escape_char(c: char) -> String {
    match c {
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        c => format!("\\u{{{:x}}}", u32::from(c)),
    }
}

/// A run of text as it splits for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text with no hidden character.
    Text(&'a str),
    /// One hidden character.
    Hidden(char),
}

/// Splits `s` into runs of plain text and single hidden characters, for a
/// display that marks the latter (the console).
pub fn pieces(s: &str) -> Pieces<'_> {
    Pieces { rest: s }
}

/// The iterator [`pieces`] returns.
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let mut chars = self.rest.char_indices();
        let (_, first) = chars.next()?;
        if is_hidden(first) {
            self.rest = &self.rest[first.len_utf8()..];
            return Some(Piece::Hidden(first));
        }
        let end = chars
            .find(|(_, c)| is_hidden(*c))
            .map_or(self.rest.len(), |(i, _)| i);
        let (text, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(Piece::Text(text))
    }
}

/// A resource as people read it, `TYPE:ID`, with an id that begins or ends
/// with a space (or is empty) quoted: it names another resource than the
/// id without, one its entity's tags do not cover, and would look the same
/// (found by a black-box pass). Hidden characters are the caller's to
/// escape ([`visible`]).
///
/// A letter of another script that stands in a word with Latin letters
/// (`prod.cust`+Cyrillic `о`+`mers`) is written as its escape
/// ([`mixed_scripts_shown`]): it names another table than the one it looks
/// like.
pub fn resource_label(kind: &str, id: &str) -> String {
    if id.is_empty() || id.trim() != id {
        format!("{kind}:{}", mixed_scripts_shown(&format!("{id:?}")))
    } else {
        format!("{kind}:{}", mixed_scripts_shown(id))
    }
}

/// `s` with each letter of another script than Latin that stands in a
/// word (a run of letters and digits) of mixed scripts (Unicode TR39's
/// single-script test, by `unicode-security`) written as its escape
/// (`\u{43e}`): `cust`+Cyrillic `о`+`mers` looks like `customers` and is
/// not. Words in one script are left as written, so Russian, Greek or
/// Japanese names read as they are. Borrowed when nothing is mixed.
pub fn mixed_scripts_shown(s: &str) -> Cow<'_, str> {
    let mixed = |w: &str| !w.is_single_script();
    let foreign = |c: char| {
        !c.script_extension().contains_script(Script::Latin)
            && !matches!(c.script(), Script::Common | Script::Inherited)
    };
    if !runs(s).any(|(word, run)| word && mixed(run)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (word, run) in runs(s) {
        if word && mixed(run) {
            for c in run.chars() {
                if foreign(c) {
                    out.push_str(&escape_char(c));
                } else {
                    out.push(c);
                }
            }
        } else {
            out.push_str(run);
        }
    }
    Cow::Owned(out)
}

/// `s` as alternating runs of letters and digits (`true`) and of the rest.
fn runs(s: &str) -> impl Iterator<Item = (bool, &str)> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let word = rest.chars().next()?.is_alphanumeric();
        let end = rest
            .char_indices()
            .find(|(_, c)| c.is_alphanumeric() != word)
            .map_or(rest.len(), |(i, _)| i);
        let (run, after) = rest.split_at(end);
        rest = after;
        Some((word, run))
    })
}

/// `s` on one line with every hidden character as its visible escape
/// ([`escape_char`]): safe to print to a terminal, and no longer able to
/// reorder, overwrite, colour or hide the text around it. Borrowed when
/// nothing needed escaping.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !has_hidden(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for p in pieces(s) {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Hidden(c) => out.push_str(&escape_char(c)),
        }
    }
    Cow::Owned(out)
}

/// Serialized JSON with every hidden character that the serializer left
/// as it is (DEL, C1, format characters, separators; it escapes only C0)
/// written as a JSON `\uXXXX` escape: the same JSON value, but inert when
/// printed. `json` must come from a JSON serializer: hidden characters
/// other than C0 can then only stand inside strings, where the escape means
/// the same character; C0 outside strings is layout (pretty printing's
/// newlines) and is kept.
pub fn escape_json_text(json: &str) -> Cow<'_, str> {
    let needs = |c: char| c >= ' ' && is_hidden(c);
    if !json.chars().any(needs) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if needs(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{u:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `v` as compact JSON, inert when printed (see [`escape_json_text`]).
pub fn json_compact(v: &Value) -> String {
    let text = v.to_string();
    escape_json_text(&text).into_owned()
}

/// `v` as indented JSON, inert when printed (see [`escape_json_text`]).
pub fn json_pretty(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    escape_json_text(&text).into_owned()
}

/// At most `max` characters of `s`, with `…` in place of the rest, so that
/// a long value cannot push what follows it out of a message.
pub fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    /// Every character an attacker can use to disguise text is visible.
    #[test]
    fn terminal_controls_become_visible() {
        // Clear the screen, then write red text.
        assert_eq!(visible("\x1b[2J\x1b[31mok"), "\\u{1b}[2J\\u{1b}[31mok");
        // A carriage return would let "approved" overwrite what came first.
        assert_eq!(visible("rm -rf /\rls -l    "), "rm -rf /\\rls -l    ");
        assert_eq!(visible("a\u{7}b\u{8}c\u{7f}d"), "a\\u{7}b\\u{8}c\\u{7f}d");
        // C1: CSI (U+009B) starts an escape sequence on some terminals too.
        assert_eq!(visible("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(visible("two\nlines\tand tab"), "two\\nlines\\tand tab");
    }

    #[test]
    fn bidirectional_controls_become_visible() {
        // "report" RLO "fdp.exe" displays as "reportexe.pdf".
        assert_eq!(visible("report\u{202e}fdp.exe"), "report\\u{202e}fdp.exe");
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{061c}',
        ] {
            assert!(is_hidden(c), "{:x}", u32::from(c));
            assert_eq!(
                visible(&format!("a{c}b")),
                format!("a\\u{{{:x}}}b", u32::from(c))
            );
        }
    }

    #[test]
    fn look_alike_letters_in_a_latin_word_are_escaped() {
        // A Cyrillic `о` in `customers`, a Greek `ο` in `prod`: each
        // names another table than it shows.
        assert_eq!(
            resource_label("Table", "prod.cust\u{43e}mers"),
            "Table:prod.cust\\u{43e}mers"
        );
        assert_eq!(
            mixed_scripts_shown("pr\u{3bf}d.customers-x"),
            "pr\\u{3bf}d.customers-x"
        );
        // Words in one script, and separators, are left as written.
        for same in [
            "отчёт.клиенты",
            "prod.customers",
            "πελάτες_2024",
            "prod.отчёт",
            "東京タワー",
            "café2",
            "",
        ] {
            assert!(
                matches!(mixed_scripts_shown(same), Cow::Borrowed(_)),
                "{same}"
            );
        }
        assert_eq!(
            resource_label("Table", " отчёт.cliеnts"),
            "Table:\" отчёт.cli\\u{435}nts\""
        );
    }

    #[test]
    fn invisible_characters_become_visible() {
        for c in [
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{2060}',
            '\u{feff}',
            '\u{ad}',
            '\u{2028}',
            '\u{2029}',
            '\u{3164}',
            '\u{e0041}',
            '\u{fe0f}',
            '\u{e0100}',
            '\u{180b}',
            '\u{17b4}',
            '\u{2065}',
            '\u{a0}',
            '\u{2007}',
            '\u{3000}',
        ] {
            assert!(is_hidden(c), "{:x}", u32::from(c));
        }
        assert!(!is_hidden(' '));
        assert!(is_blank("\u{200b} \u{feff}\t"));
        assert!(is_blank(""));
        assert!(!is_blank("\u{200b}why"));
        assert_eq!(visible("ad\u{200b}min"), "ad\\u{200b}min");
        assert_eq!(visible("tag\u{e0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn ordinary_text_is_untouched_and_borrowed() {
        for s in [
            "Table:prod.customers",
            "Quarterly report — for the board, “as agreed”",
            "日本語のテキスト",
            "مرحبا بالعالم",
            "emoji 🎉 and accents é",
            r"C:\Users\alice",
            "",
        ] {
            assert!(!has_hidden(s), "{s}");
            assert!(matches!(visible(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn pieces_split_text_and_hidden_characters() {
        let got: Vec<Piece<'_>> = pieces("ab\u{202e}cd\u{1b}\u{1b}").collect();
        assert_eq!(
            got,
            vec![
                Piece::Text("ab"),
                Piece::Hidden('\u{202e}'),
                Piece::Text("cd"),
                Piece::Hidden('\u{1b}'),
                Piece::Hidden('\u{1b}'),
            ]
        );
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn json_keeps_its_value_and_loses_its_hidden_characters() {
        let v = json!({
            "file\u{202e}": "report\u{202e}fdp.exe",
            "esc": "\u{1b}[31mred",
            "del": "\u{7f}",
            "zw": ["a\u{200b}b", "\u{e0041}"],
        });
        // serde_json alone leaves the override, DEL and the zero-width
        // space raw.
        assert!(v.to_string().contains('\u{202e}'));
        for text in [json_compact(&v), json_pretty(&v)] {
            assert!(!text.chars().any(|c| c >= ' ' && is_hidden(c)), "{text}");
            assert!(!text.contains('\u{1b}'));
            assert!(text.contains("report\\u202efdp.exe"), "{text}");
            assert!(text.contains("\\udb40\\udc41"), "astral as a pair: {text}");
            let back: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back, v, "the same value");
        }
        assert!(json_has_hidden(&v));
        assert!(json_has_hidden(&json!({"k\u{202e}": 1})));
        assert!(!json_has_hidden(
            &json!({"sql": "select 1", "n": [1, true, null]})
        ));
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
