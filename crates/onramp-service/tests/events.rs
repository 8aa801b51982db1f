//! The certificate-expiry scan, in-process on SQLite and PostgreSQL: each
//! threshold warning and the expiry are stored once per certificate however
//! often the scan runs, and they reach only the certificate's tenant.

use onramp_domain::event::EventType;
use onramp_domain::{AuditEntry, DEFAULT_TENANT, DeviceProfile, Outcome, Page};
use onramp_pki::{CaKeyAlgorithm, CertificateAuthority, SecretHasher};
use onramp_service::{Caller, Onramp, Settings, now};
use onramp_store::testing::{scratch_postgres, sqlite_url};
use onramp_store::{EnrolmentCommit, NewCertificate, Store, Supersede};
use std::sync::Arc;

const DAY: i64 = 86_400;

async fn setup(postgres: bool) -> (Onramp, Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = if postgres {
        scratch_postgres().await
    } else {
        sqlite_url(dir.path())
    };
    let ca = CertificateAuthority::create(
        &dir.path().join("ca"),
        CaKeyAlgorithm::EcdsaP256,
        "Test",
        now(),
    )
    .unwrap();
    let store = onramp_store::open(&url).await.unwrap();
    let hasher = SecretHasher::load_or_create(&dir.path().join("hmac.key")).unwrap();
    (
        Onramp::new(store.clone(), ca, hasher, Settings::default()),
        store,
        dir,
    )
}

/// Records an active certificate valid until `not_after` for a new thing.
async fn certificate(store: &Arc<dyn Store>, tenant: &str, thing: &str, not_after: i64) {
    let t = now();
    store
        .commit_enrolment(&EnrolmentCommit {
            tenant: tenant.into(),
            thing_name: thing.into(),
            serial_number: thing.into(),
            profile: DeviceProfile::default(),
            token_id: None,
            public_key_sha256: format!("{thing:0>64}"),
            supersede: Supersede::AllActive,
            certificate: NewCertificate {
                serial: format!("5e{}", thing.len()) + &hex_of(thing),
                fingerprint: hex_of(thing),
                pem: String::new(),
                not_before: t - 300 * DAY,
                not_after,
            },
            audit: AuditEntry {
                id: 0,
                tenant: tenant.into(),
                actor: "test".into(),
                action: "est.simpleenroll".into(),
                target: format!("device:{thing}"),
                source: "local".into(),
                outcome: Outcome::Success,
                detail: String::new(),
                at: t,
            },
            now: t,
        })
        .await
        .unwrap();
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

async fn events(o: &Onramp, tenant: &str) -> Vec<(EventType, String, Option<i64>)> {
    o.list_events(&Caller::local(tenant), &Page::new(None, Some(1000)))
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            (
                e.event_type,
                e.data["thingName"].as_str().unwrap_or_default().to_string(),
                e.data["thresholdDays"].as_i64(),
            )
        })
        .collect()
}

async fn expiry_events_are_stored_once_per_threshold_and_certificate(postgres: bool) {
    let (o, store, _dir) = setup(postgres).await;
    let t = now();
    store
        .create_tenant(
            "acme",
            &AuditEntry {
                id: 0,
                tenant: "acme".into(),
                actor: "test".into(),
                action: "tenant.create".into(),
                target: "tenant:acme".into(),
                source: "local".into(),
                outcome: Outcome::Success,
                detail: String::new(),
                at: t,
            },
            t,
        )
        .await
        .unwrap();
    certificate(&store, DEFAULT_TENANT, "far", t + 90 * DAY).await;
    certificate(&store, DEFAULT_TENANT, "month", t + 25 * DAY).await;
    certificate(&store, DEFAULT_TENANT, "days", t + 5 * DAY).await;
    certificate(&store, DEFAULT_TENANT, "gone", t - DAY).await;
    certificate(&store, "acme", "other", t + 10 * DAY).await;

    assert_eq!(o.scan_certificate_expiry().await.unwrap(), 4);
    let mut got = events(&o, DEFAULT_TENANT).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            (EventType::CertificateExpiring, "days".into(), Some(7)),
            (EventType::CertificateExpiring, "month".into(), Some(30)),
            (EventType::CertificateExpired, "gone".into(), None),
        ]
    );
    assert_eq!(
        events(&o, "acme").await,
        vec![(EventType::CertificateExpiring, "other".into(), Some(14))]
    );
    // Scanning again (or on another node) stores nothing more: the 5-day
    // certificate's 30- and 14-day warnings were taken with its 7-day one.
    assert_eq!(o.scan_certificate_expiry().await.unwrap(), 0);
    assert_eq!(events(&o, DEFAULT_TENANT).await.len(), 3);

    // A revocation written without its event (a decommission, or a process
    // that died after the commit) is caught by the scan, once.
    let serial = format!("5e3{}", hex_of("far"));
    let audit = AuditEntry {
        id: 0,
        tenant: DEFAULT_TENANT.into(),
        actor: "test".into(),
        action: "certificate.revoke".into(),
        target: format!("certificate:{serial}"),
        source: "local".into(),
        outcome: Outcome::Success,
        detail: String::new(),
        at: now(),
    };
    store
        .revoke_certificate(DEFAULT_TENANT, &serial, "keyCompromise", &audit, now())
        .await
        .unwrap();
    assert_eq!(o.scan_certificate_expiry().await.unwrap(), 1);
    assert_eq!(o.scan_certificate_expiry().await.unwrap(), 0);
    let revoked: Vec<_> = events(&o, DEFAULT_TENANT)
        .await
        .into_iter()
        .filter(|e| e.0 == EventType::CertificateRevoked)
        .collect();
    assert_eq!(
        revoked,
        vec![(EventType::CertificateRevoked, "far".into(), None)]
    );
}

#[tokio::test]
async fn expiry_events_once_on_sqlite() {
    expiry_events_are_stored_once_per_threshold_and_certificate(false).await;
}

#[tokio::test]
async fn expiry_events_once_on_postgres() {
    expiry_events_are_stored_once_per_threshold_and_certificate(true).await;
}

/// A certificate connecting under a new client id every time (a churning or
/// hostile client) is recorded as a few rows per window, not one per client
/// id, and the shared-key check still sees it.
async fn endless_client_ids_are_folded(postgres: bool) {
    let (o, store, _dir) = setup(postgres).await;
    for i in 0..500 {
        o.observe_connection(
            DEFAULT_TENANT,
            "5eabc",
            "churner",
            &format!("client-{i}"),
            "10.0.0.1",
            false,
        );
    }
    // Another certificate, well behaved, is untouched by the first's folding.
    o.observe_connection(DEFAULT_TENANT, "5edef", "calm", "calm", "10.0.0.2", false);
    o.flush_connection_attempts().await.unwrap();
    let rows = store
        .connection_attempts(DEFAULT_TENANT, now() - 60)
        .await
        .unwrap();
    let churner: Vec<_> = rows.iter().filter(|r| r.serial == "5eabc").collect();
    assert_eq!(churner.len(), 9, "{churner:?}");
    let folded: Vec<_> = churner.iter().filter(|r| r.client_id == "*").collect();
    assert_eq!(folded.len(), 1);
    assert_eq!(folded[0].count, 492);
    assert_eq!(churner.iter().map(|r| r.count).sum::<i64>(), 500);
    assert!(
        rows.iter()
            .any(|r| r.serial == "5edef" && r.client_id == "calm")
    );

    let findings = o
        .run_audit_checks_as(
            &Caller::local(DEFAULT_TENANT),
            &[
                "device-certificate-shared".to_string(),
                "conflicting-client-ids".to_string(),
            ],
        )
        .await
        .unwrap();
    let shared: Vec<_> = findings
        .iter()
        .filter(|f| f.check == "device-certificate-shared")
        .collect();
    assert_eq!(shared.len(), 1, "{findings:?}");
    assert_eq!(shared[0].resource, "certificate:5eabc");
    assert!(
        findings.iter().all(|f| f.check != "conflicting-client-ids"),
        "{findings:?}"
    );
}

#[tokio::test]
async fn endless_client_ids_are_folded_on_sqlite() {
    endless_client_ids_are_folded(false).await;
}

#[tokio::test]
async fn endless_client_ids_are_folded_on_postgres() {
    endless_client_ids_are_folded(true).await;
}
