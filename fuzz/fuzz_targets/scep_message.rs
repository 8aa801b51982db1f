//! SCEP PKIMessage reading (`onramp_pki::scep::parse_pki_message`, the body
//! of `POST /scep?operation=PKIOperation`) and, for what it accepts, the
//! digest and signature checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_pki::scep::{MAX_MESSAGE_BYTES, parse_pki_message};

fuzz_target!(|data: &[u8]| {
    let first = parse_pki_message(data);
    if let Ok(m) = &first {
        assert!(data.len() <= MAX_MESSAGE_BYTES);
        assert!(!m.transaction_id.is_empty() && m.transaction_id.len() <= 128);
        assert!((1..=64).contains(&m.sender_nonce.len()));
        assert!(!m.signer_cert_der.is_empty());
        let _ = m.verify();
    }
    // Deterministic.
    assert_eq!(
        first.map(|m| (m.transaction_id, m.sender_nonce, m.content)),
        parse_pki_message(data).map(|m| (m.transaction_id, m.sender_nonce, m.content))
    );
});
