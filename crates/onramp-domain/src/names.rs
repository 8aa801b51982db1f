//! Names that end up in certificates, MQTT topics and policy variables.
//!
//! A thing name is substituted into topic filters by the policy engine, so it
//! must never contain MQTT wildcards (`+`, `#`), the level separator `/` or NUL:
//! the grammar below (AWS IoT's) rules all of them out.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains `{ch}`; allowed are letters, digits and {allowed}")]
    BadCharacter {
        what: &'static str,
        ch: char,
        allowed: &'static str,
    },
}

pub const THING_NAME_MAX: usize = 128;
pub const SERIAL_NUMBER_MAX: usize = 64;

fn validate(
    value: &str,
    what: &'static str,
    max: usize,
    extra: &[char],
    allowed: &'static str,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.chars().count() > max {
        return Err(NameError::TooLong { what, max });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || extra.contains(c)))
    {
        return Err(NameError::BadCharacter { what, ch, allowed });
    }
    Ok(())
}

/// A thing name: 1–128 of `[A-Za-z0-9:_-]`.
pub fn validate_thing_name(name: &str) -> Result<(), NameError> {
    validate(
        name,
        "thing name",
        THING_NAME_MAX,
        &[':', '_', '-'],
        "`:_-`",
    )
}

/// A device serial number: 1–64 of `[A-Za-z0-9.:_-]`.
pub fn validate_serial_number(serial: &str) -> Result<(), NameError> {
    validate(
        serial,
        "serial number",
        SERIAL_NUMBER_MAX,
        &['.', ':', '_', '-'],
        "`.:_-`",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_names_are_accepted() {
        assert!(validate_thing_name("sensor-0042").is_ok());
        assert!(validate_thing_name("acme:gw_7").is_ok());
        assert!(validate_serial_number("SN.2024-000017").is_ok());
    }

    #[test]
    fn names_that_could_widen_a_topic_grant_are_refused() {
        for bad in ["a+b", "a#", "a/b", "a\0b", "+", "#", "dev ice", "é"] {
            assert!(validate_thing_name(bad).is_err(), "{bad:?}");
            assert!(validate_serial_number(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_thing_name(""),
            Err(NameError::Empty { what: "thing name" })
        );
        assert!(validate_thing_name(&"x".repeat(129)).is_err());
        assert!(validate_thing_name(&"x".repeat(128)).is_ok());
    }

    proptest! {
        #[test]
        fn an_accepted_thing_name_never_holds_a_topic_metacharacter(s in "\\PC{0,40}") {
            if validate_thing_name(&s).is_ok() {
                prop_assert!(!s.contains(['+', '#', '/', '\0']));
                prop_assert!(!s.is_empty());
            }
        }
    }
}
