//! PKCS#10 DER parsing, signature verification and key classification:
//! the path every EST `simpleenroll` / `simplereenroll` body takes after base64.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_domain::check_key;
use onramp_pki::parse_csr;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = parse_csr(data) {
        // parse_csr only hands back keys the policy accepts.
        assert!(check_key(&csr.key).is_ok(), "accepted key {:?}", csr.key);
        assert!(!csr.spki_der.is_empty());
        // The SPKI is copied verbatim from the request.
        assert!(
            data.windows(csr.spki_der.len())
                .any(|w| w == csr.spki_der.as_slice()),
            "spki_der is not a slice of the request"
        );
    }
});
