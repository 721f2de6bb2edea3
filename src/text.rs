//! What worker text may hold once stored: messages, log chunks, worker names and the strings
//! inside `meta` are shown on dashboards and terminals, so control characters (but tab and
//! newline) and the Unicode bidirectional controls, which can make a line read backwards
//! (U+202E) or hide part of it, are removed. One rule, for text and for JSON alike.

use pgrx::prelude::*;
use serde_json::Value;

/// Whether a character is dropped from stored worker text.
pub fn unsafe_char(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

pub fn clean(text: &str) -> String {
    text.chars().filter(|&c| !unsafe_char(c)).collect()
}

/// Every string in a JSON value, keys included, cleaned.
pub fn clean_json(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.iter().map(clean_json).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (clean(k), clean_json(v))).collect()),
        other => other.clone(),
    }
}

/// SQL: worker text without control characters (but tab and newline) and bidi controls.
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _clean(text: &str) -> String {
    clean(text)
}

/// SQL: a JSON value with every string cleaned as `_clean` does.
#[pg_extern(immutable, strict, parallel_safe, sql = false)]
fn _clean_json(value: pgrx::JsonB) -> pgrx::JsonB {
    pgrx::JsonB(clean_json(&value.0))
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_and_bidi_characters_go_and_tab_and_newline_stay() {
        assert_eq!(clean("a\rb\u{1b}[31mc\u{7}d\te\nf"), "ab[31mcd\te\nf");
        assert_eq!(clean("invoice \u{202e}fdp.exe"), "invoice fdp.exe");
        assert_eq!(clean("\u{2066}x\u{2069}\u{200f}"), "x");
        assert_eq!(clean("café ✓"), "café ✓");
    }

    #[test]
    fn every_string_of_a_json_value_is_cleaned_keys_too() {
        let dirty = json!({"a\u{7}": ["x\u{1b}y", {"k": "\u{202e}z"}], "n": 1, "t": true});
        assert_eq!(clean_json(&dirty), json!({"a": ["xy", {"k": "z"}], "n": 1, "t": true}));
    }
}
