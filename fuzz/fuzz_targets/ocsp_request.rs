//! OCSP requests: `parse_ocsp_request` on the raw input (the POST body), and
//! `decode_get_request` on the input as lossy UTF-8 (the GET path), then
//! `parse_ocsp_request` on what that decodes to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use onramp_pki::ocsp::{MAX_QUERIES, decode_get_request, parse_ocsp_request};

fn check(der: &[u8]) {
    if let Ok(req) = parse_ocsp_request(der) {
        assert!(!req.queries.is_empty() && req.queries.len() <= MAX_QUERIES);
        for q in &req.queries {
            assert!(!q.serial.is_empty());
            assert!(
                q.serial
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
        if let Some(n) = &req.nonce {
            let len = n.extn_value.as_bytes().len();
            assert!((1..=34).contains(&len));
        }
        // Parsing is deterministic.
        assert_eq!(parse_ocsp_request(der).ok(), Some(req));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let path = String::from_utf8_lossy(data);
    if let Ok(der) = decode_get_request(&path) {
        check(&der);
    }
});
