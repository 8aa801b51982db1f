//! Certificate revocation lists: the pure parts (CRL numbers, reasons) and
//! the CRL the issuing CA signs over a list of revoked serials.

use crate::{PkiError, Result};
use x509_parser::prelude::*;

/// One revoked certificate as the CRL and the OCSP responder see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedSerial {
    /// Lowercase hex of the serial, without leading zero bytes.
    pub serial: String,
    /// Unix time of the revocation.
    pub revoked_at: i64,
    /// The registry's reason (`keyCompromise`, `superseded`, ...).
    pub reason: String,
}

/// RFC 5280 reason codes Onramp records, by the registry's names.
/// Unknown names read as `unspecified`.
pub fn reason_code(reason: &str) -> u8 {
    match reason {
        "keyCompromise" => 1,
        "cACompromise" | "caCompromise" => 2,
        "affiliationChanged" => 3,
        "superseded" => 4,
        "cessationOfOperation" => 5,
        "certificateHold" => 6,
        "privilegeWithdrawn" => 9,
        _ => 0,
    }
}

fn rcgen_reason(code: u8) -> rcgen::RevocationReason {
    use rcgen::RevocationReason as R;
    match code {
        1 => R::KeyCompromise,
        2 => R::CaCompromise,
        3 => R::AffiliationChanged,
        4 => R::Superseded,
        5 => R::CessationOfOperation,
        6 => R::CertificateHold,
        9 => R::PrivilegeWithdrawn,
        _ => R::Unspecified,
    }
}

/// The number of the next CRL: above the previous one, and at least the
/// time of issue in milliseconds, so that numbers stay increasing across a
/// restart that lost the previous CRL and across nodes sharing the CA.
pub fn next_crl_number(previous: Option<u64>, this_update_unix_ms: i64) -> u64 {
    let floor = u64::try_from(this_update_unix_ms).unwrap_or(0);
    match previous {
        Some(p) => floor.max(p.saturating_add(1)),
        None => floor.max(1),
    }
}

/// What a CRL says about itself, read back from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInfo {
    pub crl_number: Option<u64>,
    pub this_update: i64,
    pub next_update: Option<i64>,
    /// Revoked serials as lowercase hex.
    pub serials: Vec<String>,
}

/// Parses a DER CRL (no signature check) for its number, dates and serials.
pub fn crl_info(der: &[u8]) -> Result<CrlInfo> {
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| PkiError::Invalid(format!("CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Invalid("CRL: trailing bytes".into()));
    }
    let crl_number = crl.crl_number().and_then(|n| u64::try_from(n).ok());
    Ok(CrlInfo {
        crl_number,
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().map(|t| t.timestamp()),
        serials: crl
            .iter_revoked_certificates()
            .map(|r| crate::encoding::serial_hex(r.raw_serial()))
            .collect(),
    })
}

/// The parameters of one CRL.
#[derive(Debug, Clone)]
pub struct CrlRequest<'a> {
    pub revoked: &'a [RevokedSerial],
    pub this_update: i64,
    pub next_update: i64,
    pub crl_number: u64,
}

pub(crate) fn crl_params(
    req: &CrlRequest<'_>,
    key_identifier: Option<Vec<u8>>,
) -> Result<rcgen::CertificateRevocationListParams> {
    let at = |t: i64| {
        ::time::OffsetDateTime::from_unix_timestamp(t).map_err(|e| PkiError::Invalid(e.to_string()))
    };
    if req.next_update <= req.this_update {
        return Err(PkiError::Invalid(
            "a CRL's nextUpdate must be after its thisUpdate".into(),
        ));
    }
    let mut revoked_certs = Vec::with_capacity(req.revoked.len());
    for r in req.revoked {
        let bytes = hex::decode(&r.serial)
            .map_err(|_| PkiError::Invalid(format!("serial `{}` is not hex", r.serial)))?;
        if bytes.is_empty() || bytes.len() > 20 {
            return Err(PkiError::Invalid(format!(
                "serial `{}` is not 1 to 20 bytes",
                r.serial
            )));
        }
        revoked_certs.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&bytes),
            revocation_time: at(r.revoked_at)?,
            reason_code: Some(rcgen_reason(reason_code(&r.reason))),
            invalidity_date: None,
        });
    }
    let mut number = req.crl_number.to_be_bytes().to_vec();
    // A positive INTEGER: keep one leading zero byte only when the top bit is set.
    while number.len() > 1 && number[0] == 0 && number[1] & 0x80 == 0 {
        number.remove(0);
    }
    if number[0] & 0x80 != 0 {
        number.insert(0, 0);
    }
    Ok(rcgen::CertificateRevocationListParams {
        this_update: at(req.this_update)?,
        next_update: at(req.next_update)?,
        crl_number: rcgen::SerialNumber::from_slice(&number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: match key_identifier {
            Some(id) => rcgen::KeyIdMethod::PreSpecified(id),
            None => rcgen::KeyIdMethod::Sha256,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reasons_map_to_rfc_5280_codes() {
        assert_eq!(reason_code("unspecified"), 0);
        assert_eq!(reason_code("keyCompromise"), 1);
        assert_eq!(reason_code("affiliationChanged"), 3);
        assert_eq!(reason_code("superseded"), 4);
        assert_eq!(reason_code("cessationOfOperation"), 5);
        assert_eq!(reason_code("certificateHold"), 6);
        assert_eq!(reason_code("no such reason"), 0);
    }

    #[test]
    fn crl_numbers_follow_time_and_never_go_back() {
        assert_eq!(next_crl_number(None, 1_700_000_000_000), 1_700_000_000_000);
        assert_eq!(
            next_crl_number(Some(1_700_000_000_000), 1_700_000_000_000),
            1_700_000_000_001,
            "two CRLs in the same millisecond"
        );
        assert_eq!(
            next_crl_number(Some(1_800_000_000_000), 1_700_000_000_000),
            1_800_000_000_001,
            "a clock stepped back"
        );
        assert_eq!(next_crl_number(None, -5), 1);
    }

    proptest! {
        #[test]
        fn a_crl_number_is_always_above_the_previous(prev in any::<u64>(), t in any::<i64>()) {
            let n = next_crl_number(Some(prev), t);
            prop_assert!(n > prev || prev == u64::MAX);
        }
    }

    #[test]
    fn bad_serials_and_dates_are_refused() {
        let bad = [RevokedSerial {
            serial: "zz".into(),
            revoked_at: 10,
            reason: "unspecified".into(),
        }];
        let req = CrlRequest {
            revoked: &bad,
            this_update: 100,
            next_update: 200,
            crl_number: 1,
        };
        assert!(crl_params(&req, None).is_err());
        let req = CrlRequest {
            revoked: &[],
            this_update: 200,
            next_update: 200,
            crl_number: 1,
        };
        assert!(crl_params(&req, None).is_err());
    }
}
