//! The CRL's upkeep, driven in-process on SQLite and on PostgreSQL: a
//! revocation read from the identity-change feed re-signs it, nothing new
//! signs nothing, half the validity re-signs it, numbers keep increasing
//! across a restart, and OCSP answers from the registry at once.

use onramp_domain::DEFAULT_TENANT;
use onramp_pki::crl::crl_info;
use onramp_pki::{CaKeyAlgorithm, CertificateAuthority, SecretHasher};
use onramp_service::{Caller, Onramp, RevocationSettings, Settings};
use onramp_store::testing::{scratch_postgres, sqlite_url};

const TEMPLATE: &str = r#"{
  "Parameters": {
    "SerialNumber": {"Type": "String"},
    "AWS::IoT::Certificate::Id": {"Type": "String"}
  },
  "Resources": {
    "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}},
    "certificate": {
      "Type": "AWS::IoT::Certificate",
      "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}
    }
  }
}"#;

struct Fixture {
    url: String,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(postgres: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = if postgres {
            scratch_postgres().await
        } else {
            sqlite_url(dir.path())
        };
        CertificateAuthority::create(
            &dir.path().join("ca"),
            CaKeyAlgorithm::EcdsaP256,
            "Test",
            onramp_service::now(),
        )
        .unwrap();
        Fixture { url, dir }
    }

    /// A server process over the same database and CA directory.
    async fn onramp(&self, settings: RevocationSettings) -> Onramp {
        let store = onramp_store::open(&self.url).await.unwrap();
        let ca = CertificateAuthority::load(&self.dir.path().join("ca")).unwrap();
        let hasher = SecretHasher::load_or_create(&self.dir.path().join("hmac.key")).unwrap();
        let o = Onramp::new(store, ca, hasher, Settings::default());
        o.enable_revocation(settings).await.unwrap();
        o
    }
}

fn caller() -> Caller {
    Caller::local(DEFAULT_TENANT)
}

fn settings(crl_validity_secs: i64) -> RevocationSettings {
    RevocationSettings {
        crl_validity_secs,
        ..RevocationSettings::default()
    }
}

async fn the_crl_follows_the_feed(postgres: bool) {
    let f = Fixture::new(postgres).await;
    let o = f.onramp(settings(86_400)).await;
    let first = o.current_crl().expect("a CRL from the start");
    assert_eq!(first.entries, 0);
    assert_eq!(first.next_update - first.this_update, 86_400);
    assert!(
        !o.refresh_revocation().await.unwrap(),
        "nothing changed: nothing is signed"
    );

    o.create_template(
        &caller(),
        "fleet",
        onramp_domain::TemplateKind::Fleet,
        TEMPLATE,
        Default::default(),
    )
    .await
    .unwrap();
    let claim = o.create_claim(&caller(), "fleet", 30).await.unwrap();
    let other = o.create_claim(&caller(), "fleet", 30).await.unwrap();
    // Creating certificates is not a revocation, and is not on the feed.
    assert!(!o.refresh_revocation().await.unwrap());
    o.revoke_claim(&caller(), &claim.claim.serial)
        .await
        .unwrap();
    assert!(
        o.refresh_revocation().await.unwrap(),
        "the revocation re-signs"
    );
    let second = o.current_crl().unwrap();
    assert_eq!(second.entries, 1);
    assert!(second.number > first.number);
    let info = crl_info(&second.der).unwrap();
    assert_eq!(info.serials, vec![claim.claim.serial.clone()]);
    assert_eq!(info.crl_number, Some(second.number));
    assert!(!o.refresh_revocation().await.unwrap());

    // OCSP: a request for each claim, built by the test from the certificates.
    let status = |serial: &str| {
        let o = o.clone();
        let serial = serial.to_string();
        async move {
            let der = ocsp_request(o.ca().issuing_der(), &serial);
            let resp = o.ocsp_response(&der).await;
            ocsp_status(&resp)
        }
    };
    assert_eq!(status(&claim.claim.serial).await, "revoked");
    assert_eq!(status(&other.claim.serial).await, "good");
    assert_eq!(status("0badbadbad").await, "unknown");
    assert_eq!(
        ocsp_status(&o.ocsp_response(b"\x30\x03junk").await),
        "malformedRequest"
    );

    // A restart numbers its first CRL above the kept one.
    drop(o);
    let again = f.onramp(settings(86_400)).await;
    let third = again.current_crl().unwrap();
    assert!(third.number > second.number);
    assert_eq!(third.entries, 1);
}

async fn half_the_validity_re_signs(postgres: bool) {
    let f = Fixture::new(postgres).await;
    // The service signs CRLs valid for at least a minute; half of 2 s is due at once.
    let o = f.onramp(settings(2)).await;
    let first = o.current_crl().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(o.refresh_revocation().await.unwrap());
    let second = o.current_crl().unwrap();
    assert!(second.number > first.number);
    assert!(second.this_update > first.this_update);
}

/// A DER OCSP request for `serial` (hex) of the issuing CA, SHA-1 CertID.
fn ocsp_request(issuer_der: &[u8], serial: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let issuer = dir.path().join("issuer.pem");
    std::fs::write(&issuer, onramp_pki::certificate_pem(issuer_der)).unwrap();
    let req = dir.path().join("req.der");
    let out = std::process::Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&issuer)
        .args(["-serial", &format!("0x{serial}"), "-reqout"])
        .arg(&req)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read(req).unwrap()
}

/// `good`, `revoked`, `unknown`, or the response status when not successful.
fn ocsp_status(der: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let resp = dir.path().join("resp.der");
    std::fs::write(&resp, der).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["ocsp", "-noverify", "-resp_text", "-respin"])
        .arg(&resp)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if let Some(s) = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cert Status: "))
    {
        return s.trim().to_string();
    }
    if text.to_ascii_lowercase().contains("malformedrequest") {
        return "malformedRequest".into();
    }
    panic!("unreadable OCSP response: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_follows_the_feed_on_sqlite() {
    the_crl_follows_the_feed(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crl_follows_the_feed_on_postgres() {
    the_crl_follows_the_feed(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_validity_re_signs_on_sqlite() {
    half_the_validity_re_signs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_the_validity_re_signs_on_postgres() {
    half_the_validity_re_signs(true).await;
}
