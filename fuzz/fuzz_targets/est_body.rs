//! The EST request body path: lenient base64 (line-wrapped, any ASCII
//! whitespace) and then PKCS#10 parsing of whatever it decodes to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_pki::{base64_mime, decode_base64_lenient, parse_csr};

fuzz_target!(|data: &[u8]| {
    if let Some(der) = decode_base64_lenient(data) {
        // What Onramp writes, Onramp reads back unchanged.
        assert_eq!(
            decode_base64_lenient(base64_mime(&der).as_bytes()).as_deref(),
            Some(der.as_slice()),
            "base64_mime round trip"
        );
        let _ = parse_csr(&der);
    }
});
