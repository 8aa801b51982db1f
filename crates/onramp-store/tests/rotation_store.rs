//! Certificate rotation in the store, on SQLite and on PostgreSQL: pending
//! rotations, replacement, activation, the sweep after the grace period and
//! the pending expiry, both moving the identity-change sequence, and the
//! bulk-rotation candidates.

use onramp_domain::rotation::RenewalKind;
use onramp_domain::*;
use onramp_store::testing::{scratch_postgres, sqlite_url};
use onramp_store::*;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000;

struct Db {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    Db {
        store: open(&url).await.unwrap(),
        _dir: Some(dir),
    }
}

async fn postgres() -> Db {
    let url = scratch_postgres().await;
    Db {
        store: open(&url).await.unwrap(),
        _dir: None,
    }
}

fn audit(action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        tenant: DEFAULT_TENANT.into(),
        actor: "test".into(),
        action: action.into(),
        target: target.into(),
        source: "local".into(),
        outcome: Outcome::Success,
        detail: String::new(),
        at: NOW,
    }
}

async fn enrol(s: &dyn Store, thing: &str, class: Option<&str>, cert_serial: &str, days: i64) {
    s.commit_enrolment(&EnrolmentCommit {
        tenant: DEFAULT_TENANT.into(),
        thing_name: thing.into(),
        serial_number: thing.into(),
        profile: DeviceProfile {
            device_class: class.map(str::to_string),
            ..DeviceProfile::default()
        },
        token_id: None,
        public_key_sha256: format!("key-{cert_serial}"),
        supersede: Supersede::AllActive,
        certificate: NewCertificate {
            serial: cert_serial.into(),
            fingerprint: format!("fp-{cert_serial}"),
            pem: format!("PEM {cert_serial}"),
            not_before: NOW,
            not_after: NOW + days * 86_400,
        },
        audit: audit("est.simpleenroll", thing),
        now: NOW,
    })
    .await
    .unwrap();
}

fn rotation(thing: &str, serial: &str, old: &str, at: i64) -> RotationRecord {
    RotationRecord {
        serial: serial.into(),
        tenant: DEFAULT_TENANT.into(),
        thing_name: thing.into(),
        fingerprint: format!("fp-{serial}"),
        pem: format!("PEM {serial}"),
        not_before: at,
        not_after: at + 365 * 86_400,
        old_serial: old.into(),
        kind: RenewalKind::Rotation,
        status: "pending".into(),
        created_at: at,
        expires_at: at + 100,
        activated_at: None,
        revoke_old_at: None,
        old_revoked_at: None,
    }
}

async fn status(s: &dyn Store, serial: &str) -> Option<CertStatus> {
    s.get_certificate(serial).await.unwrap().map(|c| c.status)
}

async fn changed_serials(s: &dyn Store, cursor: &mut IdentityChangeCursor) -> Vec<String> {
    s.identity_changes(cursor)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.certificate_serial)
        .collect()
}

async fn a_rotation_is_pending_then_active_and_the_old_certificate_revoked_after_grace(db: Db) {
    let s = db.store.as_ref();
    enrol(s, "t1", None, "c1", 365).await;
    let replaced = s
        .create_rotation(
            &rotation("t1", "r1", "c1", NOW),
            &audit("certificate.rotation_requested", "t1"),
        )
        .await
        .unwrap();
    assert!(replaced.is_empty());
    // Pending: not a certificate yet, the old one still active.
    assert_eq!(status(s, "r1").await, None);
    assert_eq!(status(s, "c1").await, Some(CertStatus::Active));
    let found = s
        .get_rotation_by_fingerprint("fp-r1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.status, "pending");
    assert_eq!(found.old_serial, "c1");
    // A second request replaces the first; its certificate is revoked.
    let mut cursor = s.identity_change_head().await.unwrap();
    let replaced = s
        .create_rotation(
            &rotation("t1", "r2", "c1", NOW + 1),
            &audit("certificate.rotation_requested", "t1"),
        )
        .await
        .unwrap();
    assert_eq!(replaced, vec!["r1".to_string()]);
    assert_eq!(status(s, "r1").await, Some(CertStatus::Revoked));
    assert_eq!(
        changed_serials(s, &mut cursor).await,
        vec!["r1".to_string()]
    );
    // Activation: the new certificate active, the old superseded by it.
    let cert = s
        .activate_rotation(
            "r2",
            NOW + 10,
            NOW + 20,
            &audit("certificate.rotation_activated", "t1"),
        )
        .await
        .unwrap();
    assert_eq!(cert.status, CertStatus::Active);
    assert_eq!(cert.thing_name, "t1");
    let old = s.get_certificate("c1").await.unwrap().unwrap();
    assert_eq!(old.status, CertStatus::Superseded);
    assert_eq!(old.superseded_by.as_deref(), Some("r2"));
    // Activating twice, or a replaced one, is refused.
    assert!(matches!(
        s.activate_rotation("r2", NOW + 11, NOW + 21, &audit("x", "t1"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.activate_rotation("r1", NOW + 11, NOW + 21, &audit("x", "t1"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // Before the grace ends nothing happens.
    let sweep = s.sweep_rotations(NOW + 19).await.unwrap();
    assert_eq!(sweep, RotationSweep::default());
    assert_eq!(status(s, "c1").await, Some(CertStatus::Superseded));
    // After it: revoked as superseded, through the identity-change sequence.
    let sweep = s.sweep_rotations(NOW + 20).await.unwrap();
    assert_eq!(
        sweep.revoked_old,
        vec![(DEFAULT_TENANT.to_string(), "c1".to_string())]
    );
    let old = s.get_certificate("c1").await.unwrap().unwrap();
    assert_eq!(old.status, CertStatus::Revoked);
    assert_eq!(old.revocation_reason.as_deref(), Some("superseded"));
    assert_eq!(
        changed_serials(s, &mut cursor).await,
        vec!["c1".to_string()]
    );
    let crl: Vec<String> = s
        .revoked_own_certificates(NOW + 30)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.serial)
        .collect();
    assert!(
        crl.contains(&"c1".to_string()) && crl.contains(&"r1".to_string()),
        "{crl:?}"
    );
    // Once only.
    assert_eq!(
        s.sweep_rotations(NOW + 40).await.unwrap(),
        RotationSweep::default()
    );
    let list = s.list_rotations(DEFAULT_TENANT, "t1").await.unwrap();
    let states: Vec<&str> = list.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(states, ["replaced", "active"]);
    assert_eq!(list[1].old_revoked_at, Some(NOW + 20));
}

async fn a_pending_rotation_expires_and_only_an_active_certificate_may_ask(db: Db) {
    let s = db.store.as_ref();
    enrol(s, "t2", None, "c2", 365).await;
    s.create_rotation(
        &rotation("t2", "r3", "c2", NOW),
        &audit("certificate.rotation_requested", "t2"),
    )
    .await
    .unwrap();
    let mut cursor = s.identity_change_head().await.unwrap();
    // Past its expiry it can no longer be activated, and the sweep revokes it.
    assert!(matches!(
        s.activate_rotation("r3", NOW + 100, NOW + 200, &audit("x", "t2"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let sweep = s.sweep_rotations(NOW + 100).await.unwrap();
    assert_eq!(sweep.expired.len(), 1);
    assert_eq!(status(s, "r3").await, Some(CertStatus::Revoked));
    assert_eq!(status(s, "c2").await, Some(CertStatus::Active));
    assert_eq!(
        changed_serials(s, &mut cursor).await,
        vec!["r3".to_string()]
    );
    let actions: Vec<String> = s
        .query_audit(
            DEFAULT_TENANT,
            &AuditQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.contains(&"certificate.rotation_expired".to_string()),
        "{actions:?}"
    );
    // A revoked certificate cannot ask.
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c2",
        "keyCompromise",
        &audit("certificate.revoke", "c2"),
        NOW,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.create_rotation(&rotation("t2", "r4", "c2", NOW + 200), &audit("x", "t2"))
            .await,
        Err(StoreError::CertificateNotActive)
    ));
    assert!(
        s.get_rotation_by_fingerprint("fp-r4")
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_superseded_certificate_may_ask_again_only_within_its_grace(db: Db) {
    let s = db.store.as_ref();
    enrol(s, "t5", None, "c5", 365).await;
    s.create_rotation(&rotation("t5", "r5", "c5", NOW), &audit("x", "t5"))
        .await
        .unwrap();
    s.activate_rotation("r5", NOW + 1, NOW + 50, &audit("x", "t5"))
        .await
        .unwrap();
    assert_eq!(
        s.get_rotation("r5").await.unwrap().unwrap().status,
        "active"
    );
    assert!(s.get_rotation("nope").await.unwrap().is_none());
    // c5 is superseded by r5, in grace until NOW + 50: it may ask again.
    s.create_rotation(&rotation("t5", "r6", "c5", NOW + 49), &audit("x", "t5"))
        .await
        .unwrap();
    // At the end of the grace period it may not, swept or not yet.
    assert!(matches!(
        s.create_rotation(&rotation("t5", "r7", "c5", NOW + 50), &audit("x", "t5"))
            .await,
        Err(StoreError::CertificateNotActive)
    ));
    // Its grace ended, the device connects with what it asked for in time:
    // that activates (revoked as superseded is not an operator's revocation).
    s.sweep_rotations(NOW + 50).await.unwrap();
    assert_eq!(status(s, "c5").await, Some(CertStatus::Revoked));
    s.activate_rotation("r6", NOW + 60, NOW + 70, &audit("x", "t5"))
        .await
        .unwrap();
    assert_eq!(status(s, "r6").await, Some(CertStatus::Active));
    assert_eq!(status(s, "r5").await, Some(CertStatus::Superseded));

    // A rotation whose requester an operator revoked never activates.
    enrol(s, "t6", None, "c6", 365).await;
    s.create_rotation(&rotation("t6", "r8", "c6", NOW), &audit("x", "t6"))
        .await
        .unwrap();
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c6",
        "keyCompromise",
        &audit("certificate.revoke", "c6"),
        NOW + 1,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.activate_rotation("r8", NOW + 2, NOW + 20, &audit("x", "t6"))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(status(s, "r8").await, None);
    assert_eq!(
        s.get_rotation("r8").await.unwrap().unwrap().status,
        "pending"
    );
}

async fn bulk_rotation_candidates_follow_the_query(db: Db) {
    let s = db.store.as_ref();
    enrol(s, "p1", Some("pump"), "k1", 10).await;
    enrol(s, "p2", Some("pump"), "k2", 100).await;
    enrol(s, "v1", Some("valve"), "k3", 100).await;
    let q = |query| async move { s.rotation_candidates(DEFAULT_TENANT, &query).await.unwrap() };
    assert_eq!(
        q(RotationQuery::DeviceClass("pump".into())).await,
        ["p1", "p2"]
    );
    assert_eq!(q(RotationQuery::IssuerCa(None)).await, ["p1", "p2", "v1"]);
    assert!(
        q(RotationQuery::IssuerCa(Some("maker".into())))
            .await
            .is_empty()
    );
    assert_eq!(
        q(RotationQuery::ExpiringBefore(NOW + 30 * 86_400)).await,
        ["p1"]
    );
    // Only active certificates of active devices.
    s.transition_device(
        DEFAULT_TENANT,
        "p2",
        LifecycleAction::Suspend,
        &audit("device.suspend", "p2"),
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(q(RotationQuery::DeviceClass("pump".into())).await, ["p1"]);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(super::sqlite().await).await }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() { super::$name(super::postgres().await).await }
            )*
        }
    };
}

suite!(
    a_rotation_is_pending_then_active_and_the_old_certificate_revoked_after_grace,
    a_pending_rotation_expires_and_only_an_active_certificate_may_ask,
    a_superseded_certificate_may_ask_again_only_within_its_grace,
    bulk_rotation_candidates_follow_the_query,
);
