//! The rules an enrolment must pass: token use, key strength, CSR subject.

use crate::UnixTime;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What the registry knows of an enrolment token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    pub serial_number: String,
    pub expires_at: UnixTime,
    pub used_at: Option<UnixTime>,
    pub revoked_at: Option<UnixTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    #[error("the enrolment token is unknown")]
    Unknown,
    #[error("the enrolment token has already been used")]
    AlreadyUsed,
    #[error("the enrolment token has been revoked")]
    Revoked,
    #[error("the enrolment token has expired")]
    Expired,
    #[error("the enrolment token was issued for another serial number")]
    WrongSerial,
}

impl TokenState {
    /// Whether the token may enrol `serial` at `now`. Checked again atomically
    /// by the store when the token is consumed, so two concurrent uses cannot both win.
    pub fn check(&self, serial: &str, now: UnixTime) -> Result<(), TokenRefusal> {
        if self.revoked_at.is_some() {
            return Err(TokenRefusal::Revoked);
        }
        if self.used_at.is_some() {
            return Err(TokenRefusal::AlreadyUsed);
        }
        if now >= self.expires_at {
            return Err(TokenRefusal::Expired);
        }
        if self.serial_number != serial {
            return Err(TokenRefusal::WrongSerial);
        }
        Ok(())
    }
}

/// A request presenting an already used token, seen against what that token
/// produced: a device whose response was lost (a crash, a dropped
/// connection) sends the identical request again and must get the same
/// certificate, or it is stranded until an operator issues a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentRetry<'a> {
    /// When the token was consumed.
    pub used_at: UnixTime,
    /// How long after that a retry is answered; 0 answers none.
    pub window_secs: i64,
    /// SHA-256 of the public key the certificate was issued for.
    pub recorded_key: &'a str,
    /// SHA-256 of the public key in the retry's CSR.
    pub presented_key: &'a str,
    pub certificate: CertStatus,
    /// The device's state now (None: it is gone).
    pub device: Option<crate::DeviceStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetryRefusal {
    #[error("the request presents another public key than the one certified")]
    OtherKey,
    #[error("the window for retrying the enrolment has passed")]
    WindowPassed,
    #[error("the certificate it produced is no longer active")]
    CertificateNotActive,
    #[error("the device is no longer active")]
    DeviceNotActive,
}

impl EnrolmentRetry<'_> {
    /// Whether the retry gets the certificate the token produced. Only the
    /// holder of the certified key can ask (the CSR's signature proves it),
    /// so the answer gives nobody anything new; anything that changed since
    /// (revocation, renewal, suspension) ends the retries.
    pub fn check(&self, now: UnixTime) -> Result<(), RetryRefusal> {
        if self.recorded_key != self.presented_key {
            return Err(RetryRefusal::OtherKey);
        }
        if self.window_secs <= 0 || now.saturating_sub(self.used_at) > self.window_secs {
            return Err(RetryRefusal::WindowPassed);
        }
        if self.certificate != CertStatus::Active {
            return Err(RetryRefusal::CertificateNotActive);
        }
        if self.device != Some(crate::DeviceStatus::Active) {
            return Err(RetryRefusal::DeviceNotActive);
        }
        Ok(())
    }
}

/// A certificate's standing in the registry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStatus {
    Active,
    /// Replaced by a newer certificate through re-enrolment; no longer accepted.
    Superseded,
    Revoked,
    /// Registered but switched off (a provisioning template said `INACTIVE`);
    /// refused until an operator activates it.
    Inactive,
}

impl CertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Active => "active",
            CertStatus::Superseded => "superseded",
            CertStatus::Revoked => "revoked",
            CertStatus::Inactive => "inactive",
        }
    }
}

impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CertStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(CertStatus::Active),
            "superseded" => Ok(CertStatus::Superseded),
            "revoked" => Ok(CertStatus::Revoked),
            "inactive" => Ok(CertStatus::Inactive),
            other => Err(format!("unknown certificate status `{other}`")),
        }
    }
}

/// The public key found in a CSR, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    EcP384,
    EcOther(String),
    Rsa { bits: usize },
    Ed25519,
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("RSA keys must have at least 2048 bits; this one has {0}")]
    RsaTooShort(usize),
    #[error("elliptic curve {0} is not accepted; use P-256 or P-384")]
    UnsupportedCurve(String),
    #[error("public key algorithm {0} is not accepted")]
    UnsupportedAlgorithm(String),
}

/// Device keys Onramp will certify: ECDSA P-256/P-384, Ed25519, RSA ≥ 2048.
pub fn check_key(kind: &KeyKind) -> Result<(), KeyRefusal> {
    match kind {
        KeyKind::EcP256 | KeyKind::EcP384 | KeyKind::Ed25519 => Ok(()),
        KeyKind::Rsa { bits } if *bits >= 2048 => Ok(()),
        KeyKind::Rsa { bits } => Err(KeyRefusal::RsaTooShort(*bits)),
        KeyKind::EcOther(curve) => Err(KeyRefusal::UnsupportedCurve(curve.clone())),
        KeyKind::Unknown(alg) => Err(KeyRefusal::UnsupportedAlgorithm(alg.clone())),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectRefusal {
    #[error("the CSR subject names neither a common name nor a serial number")]
    Empty,
    #[error("the CSR subject serialNumber `{found}` is not the enrolling serial `{expected}`")]
    SerialMismatch { expected: String, found: String },
    #[error(
        "the CSR subject CN `{found}` is neither the serial `{serial}` nor the thing name `{thing}`"
    )]
    CommonNameMismatch {
        serial: String,
        thing: String,
        found: String,
    },
}

/// The CSR subject must identify the device the credential was issued for.
///
/// At least one of CN and serialNumber must be present, and each one present
/// must match: serialNumber the serial; CN the serial or the thing name.
pub fn check_subject(
    serial: &str,
    thing_name: &str,
    subject_cn: Option<&str>,
    subject_serial: Option<&str>,
) -> Result<(), SubjectRefusal> {
    if subject_cn.is_none() && subject_serial.is_none() {
        return Err(SubjectRefusal::Empty);
    }
    if let Some(found) = subject_serial
        && found != serial
    {
        return Err(SubjectRefusal::SerialMismatch {
            expected: serial.to_string(),
            found: found.to_string(),
        });
    }
    if let Some(found) = subject_cn
        && found != serial
        && found != thing_name
    {
        return Err(SubjectRefusal::CommonNameMismatch {
            serial: serial.to_string(),
            thing: thing_name.to_string(),
            found: found.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fresh(serial: &str) -> TokenState {
        TokenState {
            serial_number: serial.into(),
            expires_at: 1_000,
            used_at: None,
            revoked_at: None,
        }
    }

    fn retry() -> EnrolmentRetry<'static> {
        EnrolmentRetry {
            used_at: 1_000,
            window_secs: 600,
            recorded_key: "k1",
            presented_key: "k1",
            certificate: CertStatus::Active,
            device: Some(crate::DeviceStatus::Active),
        }
    }

    #[test]
    fn a_retry_with_the_same_key_within_the_window_gets_the_certificate_again() {
        assert_eq!(retry().check(1_000), Ok(()));
        assert_eq!(retry().check(1_600), Ok(()));
        assert_eq!(retry().check(1_601), Err(RetryRefusal::WindowPassed));
        let off = EnrolmentRetry {
            window_secs: 0,
            ..retry()
        };
        assert_eq!(off.check(1_000), Err(RetryRefusal::WindowPassed));
        let other = EnrolmentRetry {
            presented_key: "k2",
            ..retry()
        };
        assert_eq!(other.check(1_001), Err(RetryRefusal::OtherKey));
        for status in [
            CertStatus::Revoked,
            CertStatus::Superseded,
            CertStatus::Inactive,
        ] {
            let changed = EnrolmentRetry {
                certificate: status,
                ..retry()
            };
            assert_eq!(
                changed.check(1_001),
                Err(RetryRefusal::CertificateNotActive)
            );
        }
        for device in [
            None,
            Some(crate::DeviceStatus::Suspended),
            Some(crate::DeviceStatus::Decommissioned),
        ] {
            let changed = EnrolmentRetry { device, ..retry() };
            assert_eq!(changed.check(1_001), Err(RetryRefusal::DeviceNotActive));
        }
    }

    #[test]
    fn a_fresh_token_enrols_its_own_serial_once() {
        let t = fresh("SN1");
        assert_eq!(t.check("SN1", 999), Ok(()));
        let used = TokenState {
            used_at: Some(500),
            ..t.clone()
        };
        assert_eq!(used.check("SN1", 600), Err(TokenRefusal::AlreadyUsed));
    }

    #[test]
    fn token_refusals() {
        let t = fresh("SN1");
        assert_eq!(t.check("SN2", 10), Err(TokenRefusal::WrongSerial));
        assert_eq!(t.check("SN1", 1_000), Err(TokenRefusal::Expired));
        let revoked = TokenState {
            revoked_at: Some(5),
            ..t
        };
        assert_eq!(revoked.check("SN1", 10), Err(TokenRefusal::Revoked));
    }

    #[test]
    fn weak_or_unknown_keys_are_refused() {
        assert!(check_key(&KeyKind::EcP256).is_ok());
        assert!(check_key(&KeyKind::Rsa { bits: 2048 }).is_ok());
        assert_eq!(
            check_key(&KeyKind::Rsa { bits: 1024 }),
            Err(KeyRefusal::RsaTooShort(1024))
        );
        assert!(check_key(&KeyKind::EcOther("secp256k1".into())).is_err());
        assert!(check_key(&KeyKind::Unknown("1.2.3".into())).is_err());
    }

    #[test]
    fn subject_must_name_the_enrolling_device() {
        assert!(check_subject("SN1", "SN1", Some("SN1"), None).is_ok());
        assert!(check_subject("SN1", "pump-7", Some("pump-7"), Some("SN1")).is_ok());
        assert!(check_subject("SN1", "pump-7", None, Some("SN1")).is_ok());
        assert!(matches!(
            check_subject("SN1", "SN1", Some("SN2"), None),
            Err(SubjectRefusal::CommonNameMismatch { .. })
        ));
        assert!(matches!(
            check_subject("SN1", "SN1", Some("SN1"), Some("SN2")),
            Err(SubjectRefusal::SerialMismatch { .. })
        ));
        assert_eq!(
            check_subject("SN1", "SN1", None, None),
            Err(SubjectRefusal::Empty)
        );
    }

    proptest! {
        #[test]
        fn no_token_is_usable_after_use_or_expiry(
            used in proptest::option::of(0i64..100),
            revoked in proptest::option::of(0i64..100),
            expires in 0i64..100,
            now in 0i64..100,
        ) {
            let t = TokenState { serial_number: "S".into(), expires_at: expires, used_at: used, revoked_at: revoked };
            let ok = t.check("S", now).is_ok();
            prop_assert_eq!(ok, used.is_none() && revoked.is_none() && now < expires);
        }

        #[test]
        fn an_accepted_subject_always_matches(cn in proptest::option::of("[a-c]{1,2}"), sn in proptest::option::of("[a-c]{1,2}")) {
            if check_subject("a", "b", cn.as_deref(), sn.as_deref()).is_ok() {
                prop_assert!(cn.is_some() || sn.is_some());
                if let Some(cn) = cn { prop_assert!(cn == "a" || cn == "b"); }
                if let Some(sn) = sn { prop_assert_eq!(sn, "a"); }
            }
        }
    }
}
