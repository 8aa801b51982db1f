//! A guard for JSON documents that Onramp stores and reads back later.
//!
//! serde_json's `raw_value` feature (sqlx turns it on, and features are
//! unified, so every Onramp build has it) makes `Value` read an object whose
//! *first* key is [`RAW_VALUE_MARKER`] as raw JSON text. A document that has
//! the marker as any other key parses, but once written back (`Map` sorts its
//! keys, and `$` sorts first) it no longer reads: a stored shadow or policy
//! holding it would fail every later read.

use serde_json::Value;

/// serde_json's private marker key for raw values.
pub const RAW_VALUE_MARKER: &str = "$serde_json::private::RawValue";

/// Whether a document, as received (`text`) or as parsed (`value`), holds the
/// marker: literally in the text, or as an object key at any depth however it
/// was escaped.
pub fn holds_raw_value_marker(text: &str, value: &Value) -> bool {
    // Without the `$`, so that `\u0024serde_json::...` is caught too.
    text.contains(&RAW_VALUE_MARKER[1..]) || has_marker_key(value)
}

fn has_marker_key(value: &Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter()
            .any(|(key, inner)| key == RAW_VALUE_MARKER || has_marker_key(inner)),
        Value::Array(items) => items.iter().any(has_marker_key),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_found_as_text_and_as_an_escaped_key_at_any_depth() {
        let plain = r#"{"a":{"b":[{"c":1,"$serde_json::private::RawValue":0}]}}"#;
        let escaped = r#"{"a":{"b":[{"c":1,"\u0024serde_json::private::RawValu\u0065":0}]}}"#;
        for text in [plain, escaped] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(has_marker_key(&value), "{text}");
            assert!(holds_raw_value_marker(text, &value), "{text}");
        }
        let clean = r#"{"a":{"serde":"json","b":[1,{"RawValue":2}]}}"#;
        let value: Value = serde_json::from_str(clean).unwrap();
        assert!(!holds_raw_value_marker(clean, &value));
    }
}
