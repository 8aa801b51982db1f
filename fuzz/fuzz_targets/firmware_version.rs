//! Firmware version parsing and the registry's byte-orderable sort key.
//!
//! The input is read as (lossy) UTF-8; the part before the first newline is
//! version `a`, the rest version `b`.
#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use onramp_domain::{FirmwareVersion, version_sort_key};

/// Components that the sort key keeps (onramp-domain's KEY_COMPONENTS).
const KEY_COMPONENTS: usize = 4;

fn components(v: &FirmwareVersion) -> [u64; KEY_COMPONENTS] {
    std::array::from_fn(|i| v.release.get(i).copied().unwrap_or(0))
}

/// Semver precedence of two pre-release tags, for tags whose identifiers are
/// plain numbers (at most 18 digits) or plain letters; `None` for other tags,
/// whose order the key does not promise to match semver's.
fn semver_pre(x: &str, y: &str) -> Option<Ordering> {
    fn ident(s: &str) -> Option<Result<u64, &str>> {
        if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().ok().map(Ok);
        }
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic())).then_some(Err(s))
    }
    let xs: Option<Vec<_>> = x.split('.').map(ident).collect();
    let ys: Option<Vec<_>> = y.split('.').map(ident).collect();
    let (xs, ys) = (xs?, ys?);
    for (a, b) in xs.iter().zip(&ys) {
        let o = match (a, b) {
            (Ok(m), Ok(n)) => m.cmp(n),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(s), Err(t)) => s.as_bytes().cmp(t.as_bytes()),
        };
        if o != Ordering::Equal {
            return Some(o);
        }
    }
    Some(xs.len().cmp(&ys.len()))
}

/// The order the sort key is meant to encode: the first four numeric
/// components, then a pre-release before its release, then semver
/// precedence of the pre-release tags (where `semver_pre` defines one).
fn expected(a: &FirmwareVersion, b: &FirmwareVersion) -> Option<Ordering> {
    match components(a).cmp(&components(b)) {
        Ordering::Equal => {}
        o => return Some(o),
    }
    match (&a.pre, &b.pre) {
        (None, None) => Some(Ordering::Equal),
        (Some(_), None) => Some(Ordering::Less),
        (None, Some(_)) => Some(Ordering::Greater),
        (Some(x), Some(y)) => semver_pre(x, y),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (sa, sb) = text.split_once('\n').unwrap_or((&text, ""));
    let a = FirmwareVersion::parse(sa);
    let b = FirmwareVersion::parse(sb);
    let (ka, kb) = (a.sort_key(), b.sort_key());

    assert_eq!(version_sort_key(sa), ka);
    assert_eq!(version_sort_key(sb), kb);
    // Parsing is a pure function.
    assert_eq!(FirmwareVersion::parse(sa), a);

    // Ord agrees with the sort keys the registry stores and queries by.
    assert_eq!(a.cmp(&b), ka.cmp(&kb), "{sa:?} vs {sb:?}");
    assert_eq!(b.cmp(&a), a.cmp(&b).reverse());
    assert_eq!(a.cmp(&a), Ordering::Equal);
    assert_eq!(a.partial_cmp(&b), Some(a.cmp(&b)));
    // Equality is sort-key equality, so == and Ord agree.
    assert_eq!(a == b, a.cmp(&b) == Ordering::Equal);
    // Byte order of the keys is the intended version order.
    if let Some(want) = expected(&a, &b) {
        assert_eq!(ka.cmp(&kb), want, "{sa:?} vs {sb:?}");
    }
});
