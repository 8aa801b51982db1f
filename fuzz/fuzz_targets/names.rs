//! Thing-name and serial-number validation. A thing name is substituted into
//! MQTT topic filters, so an accepted one must never hold `+`, `#`, `/` or NUL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_domain::names::{SERIAL_NUMBER_MAX, THING_NAME_MAX};
use onramp_domain::{validate_serial_number, validate_thing_name};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let thing_ok = validate_thing_name(s).is_ok();
    if thing_ok {
        assert!(!s.contains(['+', '#', '/', '\0']), "thing name {s:?}");
        assert!(!s.is_empty());
        assert!(s.chars().count() <= THING_NAME_MAX);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'))
        );
    }
    let serial_ok = validate_serial_number(s).is_ok();
    if serial_ok {
        assert!(!s.contains(['+', '#', '/', '\0']), "serial number {s:?}");
        assert!(!s.is_empty());
        assert!(s.chars().count() <= SERIAL_NUMBER_MAX);
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-'))
        );
    }
    // The serial alphabet is the thing-name alphabet plus '.', with a lower
    // length limit: a short valid thing name is a valid serial.
    if thing_ok && s.chars().count() <= SERIAL_NUMBER_MAX {
        assert!(serial_ok, "{s:?} is a thing name but not a serial");
    }
});
