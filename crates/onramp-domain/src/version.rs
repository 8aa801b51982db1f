//! Firmware versions compared the way people mean them: 2.10.0 > 2.9.0.
//!
//! The registry stores, next to each firmware version, a sort key whose plain
//! byte order is the version order. Fleet queries such as `firmware < 2.5.0`
//! then become an indexed string comparison in SQL on either backend.

use std::cmp::Ordering;

/// A parsed firmware version: numeric release components and an optional
/// pre-release tag (`2.5.0-rc.1`). Build metadata after `+` is ignored.
#[derive(Debug, Clone)]
pub struct FirmwareVersion {
    pub release: Vec<u64>,
    pub pre: Option<String>,
}

/// Components kept in the sort key; later ones are not significant for ordering.
const KEY_COMPONENTS: usize = 4;
/// Width of one zero-padded component: u64::MAX has 20 digits.
const KEY_WIDTH: usize = 20;

impl FirmwareVersion {
    /// Lenient parse: a leading `v` is dropped; a component's leading digits
    /// count (`3b` is 3); missing components are zero (`2.5` is `2.5.0`).
    pub fn parse(input: &str) -> FirmwareVersion {
        let s = input.trim();
        let s = s.strip_prefix(['v', 'V']).unwrap_or(s).trim_start();
        let s = s.split('+').next().unwrap_or("");
        let (release, pre) = match s.split_once('-') {
            Some((r, p)) => (r, Some(p.to_string())),
            None => (s, None),
        };
        let release = release
            .split('.')
            .map(|c| {
                let digits: String = c.chars().take_while(|ch| ch.is_ascii_digit()).collect();
                digits
                    .parse::<u64>()
                    .unwrap_or(if digits.is_empty() { 0 } else { u64::MAX })
            })
            .collect();
        FirmwareVersion { release, pre }
    }

    fn component(&self, i: usize) -> u64 {
        self.release.get(i).copied().unwrap_or(0)
    }

    /// The byte-orderable key stored beside the version in the registry.
    pub fn sort_key(&self) -> String {
        let mut key = String::with_capacity(KEY_COMPONENTS * (KEY_WIDTH + 1) + 8);
        for i in 0..KEY_COMPONENTS {
            if i > 0 {
                key.push('.');
            }
            key.push_str(&format!("{:0width$}", self.component(i), width = KEY_WIDTH));
        }
        match &self.pre {
            // A pre-release sorts before its release: '-' < '~'.
            Some(pre) => {
                key.push('-');
                // Numeric identifiers compare as numbers (rc.9 < rc.10), and
                // sort before alphanumeric ones as semver wants ('0'..'9' < 'A').
                for (i, ident) in pre.split('.').enumerate() {
                    if i > 0 {
                        key.push('.');
                    }
                    match ident.parse::<u64>() {
                        Ok(n) if ident.chars().all(|c| c.is_ascii_digit()) => {
                            key.push_str(&format!("{n:0width$}", width = KEY_WIDTH));
                        }
                        _ => key.push_str(ident),
                    }
                }
            }
            None => key.push('~'),
        }
        key
    }
}

/// Versions are equal when they sort equal (2.5 == 2.5.0), so that `Eq` and
/// `Ord` agree.
impl PartialEq for FirmwareVersion {
    fn eq(&self, other: &Self) -> bool {
        self.sort_key() == other.sort_key()
    }
}

impl Eq for FirmwareVersion {}

impl PartialOrd for FirmwareVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FirmwareVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

/// A firmware version given as a query bound (`firmware_lt`, `--firmware-lt`)
/// must start with a number, after an optional `v`: the lenient parse would
/// read `bogus` as 0.0.0 and the query would silently match nothing.
pub fn validate_version_bound(input: &str) -> Result<(), String> {
    let s = input.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    if s.starts_with(|c: char| c.is_ascii_digit()) && input.len() <= 128 {
        Ok(())
    } else {
        Err(format!(
            "`{input}` is not a firmware version; give one such as 2.5.0"
        ))
    }
}

/// Shorthand for `FirmwareVersion::parse(v).sort_key()`.
pub fn version_sort_key(version: &str) -> String {
    FirmwareVersion::parse(version).sort_key()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lt(a: &str, b: &str) -> bool {
        version_sort_key(a) < version_sort_key(b)
    }

    #[test]
    fn version_bounds_must_start_with_a_number() {
        for ok in ["2.5.0", "v2", "10", " 3.1-rc.1 "] {
            assert_eq!(validate_version_bound(ok), Ok(()), "{ok}");
        }
        for bad in ["notaversion", "", "v", "x1.2", "-1"] {
            let err = validate_version_bound(bad).unwrap_err();
            assert!(err.contains("is not a firmware version"), "{bad}: {err}");
        }
    }

    #[test]
    fn numeric_components_compare_as_numbers() {
        assert!(lt("2.9.0", "2.10.0"));
        assert!(lt("1.99.99", "2.0.0"));
        assert!(lt("2.5.0", "10.0.0"));
        assert!(!lt("2.10.0", "2.9.0"));
    }

    #[test]
    fn missing_components_are_zero_and_a_leading_v_is_ignored() {
        assert_eq!(version_sort_key("2.5"), version_sort_key("2.5.0"));
        assert_eq!(version_sort_key("v2.5.0"), version_sort_key("2.5.0"));
        assert_eq!(version_sort_key("2.5.0+build7"), version_sort_key("2.5.0"));
    }

    #[test]
    fn a_pre_release_sorts_before_its_release() {
        assert!(lt("2.5.0-rc.1", "2.5.0"));
        assert!(lt("2.4.9", "2.5.0-rc.1"));
    }

    #[test]
    fn numeric_pre_release_parts_compare_as_numbers() {
        assert!(lt("1.0.0-rc.9", "1.0.0-rc.10"));
        assert!(lt("1.0.0-alpha", "1.0.0-beta"));
        assert!(
            lt("1.0.0-1", "1.0.0-alpha"),
            "numeric identifiers sort first"
        );
        assert_eq!(
            FirmwareVersion::parse("2.5"),
            FirmwareVersion::parse("2.5.0")
        );
        assert_eq!(version_sort_key("v 2.5"), version_sort_key("2.5.0"));
    }

    #[test]
    fn garbage_does_not_panic() {
        for s in [
            "",
            "..",
            "-",
            "x.y.z",
            "99999999999999999999999.1",
            "+",
            "v",
        ] {
            let _ = version_sort_key(s);
        }
    }

    proptest! {
        #[test]
        fn key_order_is_semver_order_for_releases(
            a in (0u64..1000, 0u64..1000, 0u64..1000),
            b in (0u64..1000, 0u64..1000, 0u64..1000),
        ) {
            let va = format!("{}.{}.{}", a.0, a.1, a.2);
            let vb = format!("{}.{}.{}", b.0, b.1, b.2);
            let sa = semver::Version::parse(&va).unwrap();
            let sb = semver::Version::parse(&vb).unwrap();
            prop_assert_eq!(version_sort_key(&va).cmp(&version_sort_key(&vb)), sa.cmp(&sb));
        }

        #[test]
        fn any_input_gives_a_key(s in "\\PC{0,30}") {
            let _ = version_sort_key(&s);
        }
    }
}
