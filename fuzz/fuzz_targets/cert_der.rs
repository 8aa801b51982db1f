//! Certificate reading: DER X.509 (`parse_cert`, used on client chains at
//! re-enrolment and on the CA's own files) and PEM bundles (`pem_to_der_chain`,
//! used on imported CA material and the TLS trust bundle).
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_pki::{parse_cert, pem_to_der_chain};

fn check(der: &[u8]) {
    if let Ok(info) = parse_cert(der) {
        assert_eq!(info.fingerprint.len(), 64);
        assert!(
            info.fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(
            info.serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let pem = String::from_utf8_lossy(data);
    if let Ok(chain) = pem_to_der_chain(&pem) {
        assert!(!chain.is_empty());
        for der in &chain {
            check(der);
        }
    }
});
