//! The storage suite: every test runs against SQLite and against PostgreSQL.

use onramp_domain::template::{OverrideSetting, ThingOverrides, ThingPlan};
use onramp_domain::*;
use onramp_store::testing::{scratch_postgres, sqlite_url};
use onramp_store::*;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000;

struct Db {
    store: Arc<dyn Store>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    Db {
        store: open(&url).await.unwrap(),
        url,
        _dir: Some(dir),
    }
}

async fn postgres() -> Db {
    let url = scratch_postgres().await;
    Db {
        store: open(&url).await.unwrap(),
        url,
        _dir: None,
    }
}

fn audit(tenant: &str, action: &str, target: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        tenant: tenant.into(),
        actor: "test".into(),
        action: action.into(),
        target: target.into(),
        source: "local".into(),
        outcome: Outcome::Success,
        detail: String::new(),
        at: NOW,
    }
}

fn token(id: &str, serial: &str, thing: &str) -> NewToken {
    NewToken {
        id: id.into(),
        tenant: DEFAULT_TENANT.into(),
        token_hash: format!("hash-{id}"),
        serial_number: serial.into(),
        thing_name: thing.into(),
        profile: DeviceProfile {
            device_class: Some("sensor".into()),
            hardware_revision: Some("B".into()),
            firmware_version: Some("2.9.0".into()),
        },
        expires_at: NOW + 3600,
        created_by: "test".into(),
    }
}

fn cert(serial: &str) -> NewCertificate {
    NewCertificate {
        serial: serial.into(),
        fingerprint: format!("fp-{serial}"),
        pem: format!("PEM {serial}"),
        not_before: NOW,
        not_after: NOW + 10 * 86_400,
    }
}

fn enrolment(
    thing: &str,
    serial: &str,
    token_id: Option<&str>,
    cert_serial: &str,
) -> EnrolmentCommit {
    EnrolmentCommit {
        tenant: DEFAULT_TENANT.into(),
        thing_name: thing.into(),
        serial_number: serial.into(),
        profile: DeviceProfile::default(),
        token_id: token_id.map(str::to_string),
        public_key_sha256: format!("key-{cert_serial}"),
        supersede: Supersede::AllActive,
        certificate: cert(cert_serial),
        audit: audit(DEFAULT_TENANT, "est.simpleenroll", thing),
        now: NOW,
    }
}

async fn audit_count(s: &dyn Store, tenant: &str) -> usize {
    s.query_audit(
        tenant,
        &AuditQuery {
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .len()
}

async fn certs_of(s: &dyn Store, thing: &str) -> Vec<Certificate> {
    s.list_certificates(DEFAULT_TENANT, Some(thing), None, &Page::new(None, None))
        .await
        .unwrap()
}

async fn token_creation_registers_a_pending_device(db: Db) {
    let s = db.store.as_ref();
    let t = s
        .create_token(
            &token("t1", "SN1", "pump-1"),
            &audit("default", "token.create", "t1"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(t.serial_number, "SN1");
    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Pending);
    assert_eq!(d.firmware_version.as_deref(), Some("2.9.0"));
    assert_eq!(
        s.get_token_by_hash("hash-t1").await.unwrap().unwrap().id,
        "t1"
    );
    assert!(s.get_token_by_hash("nope").await.unwrap().is_none());
}

async fn enrolment_activates_the_device_records_the_cert_and_consumes_the_token(db: Db) {
    let s = db.store.as_ref();
    s.create_token(
        &token("t1", "SN1", "pump-1"),
        &audit("default", "token.create", "t1"),
        NOW,
    )
    .await
    .unwrap();
    let c = s
        .commit_enrolment(&enrolment("pump-1", "SN1", Some("t1"), "aa01"))
        .await
        .unwrap();
    assert_eq!(c.status, CertStatus::Active);
    assert_eq!(c.thing_name, "pump-1");
    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Active);
    let t = s.get_token_by_hash("hash-t1").await.unwrap().unwrap();
    assert_eq!(t.used_at, Some(NOW));
}

async fn a_used_token_is_refused_and_nothing_changes(db: Db) {
    let s = db.store.as_ref();
    s.create_token(
        &token("t1", "SN1", "pump-1"),
        &audit("default", "token.create", "t1"),
        NOW,
    )
    .await
    .unwrap();
    s.commit_enrolment(&enrolment("pump-1", "SN1", Some("t1"), "aa01"))
        .await
        .unwrap();
    let audits = audit_count(s, DEFAULT_TENANT).await;
    let err = s
        .commit_enrolment(&enrolment("pump-1", "SN1", Some("t1"), "aa02"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TokenNotUsable), "{err}");
    assert!(s.get_certificate("aa02").await.unwrap().is_none());
    assert_eq!(
        s.get_certificate("aa01").await.unwrap().unwrap().status,
        CertStatus::Active
    );
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, audits);
}

async fn an_expired_or_revoked_token_cannot_be_consumed(db: Db) {
    let s = db.store.as_ref();
    let mut t = token("t1", "SN1", "pump-1");
    t.expires_at = NOW - 1;
    s.create_token(&t, &audit("default", "token.create", "t1"), NOW - 10)
        .await
        .unwrap();
    let err = s
        .commit_enrolment(&enrolment("pump-1", "SN1", Some("t1"), "aa01"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TokenNotUsable));
    s.create_token(
        &token("t2", "SN1", "pump-1"),
        &audit("default", "token.create", "t2"),
        NOW,
    )
    .await
    .unwrap();
    let revoked = s
        .revoke_token(
            DEFAULT_TENANT,
            "t2",
            &audit("default", "token.revoke", "t2"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW));
    let err = s
        .commit_enrolment(&enrolment("pump-1", "SN1", Some("t2"), "aa02"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::TokenNotUsable));
    assert!(certs_of(s, "pump-1").await.is_empty());
    assert_eq!(
        s.get_device(DEFAULT_TENANT, "pump-1")
            .await
            .unwrap()
            .unwrap()
            .status,
        DeviceStatus::Pending
    );
}

async fn concurrent_uses_of_one_token_have_exactly_one_winner(db: Db) {
    let s = db.store.clone();
    s.create_token(
        &token("t1", "SN1", "pump-1"),
        &audit("default", "token.create", "t1"),
        NOW,
    )
    .await
    .unwrap();
    let mut handles = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            s.commit_enrolment(&enrolment("pump-1", "SN1", Some("t1"), &format!("c{i}")))
                .await
        }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::TokenNotUsable) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(certs_of(s.as_ref(), "pump-1").await.len(), 1);
}

async fn re_enrolment_supersedes_exactly_the_presented_certificate(db: Db) {
    let s = db.store.as_ref();
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    let mut re = enrolment("dev", "SN9", None, "c2");
    re.supersede = Supersede::Certificate("c1".into());
    s.commit_enrolment(&re).await.unwrap();
    let old = s.get_certificate("c1").await.unwrap().unwrap();
    assert_eq!(old.status, CertStatus::Superseded);
    assert_eq!(old.superseded_by.as_deref(), Some("c2"));
    // Renewing from the superseded certificate again is refused and records nothing.
    let mut again = enrolment("dev", "SN9", None, "c3");
    again.supersede = Supersede::Certificate("c1".into());
    assert!(matches!(
        s.commit_enrolment(&again).await.unwrap_err(),
        StoreError::CertificateNotActive
    ));
    assert!(s.get_certificate("c3").await.unwrap().is_none());
    assert_eq!(
        s.get_certificate("c2").await.unwrap().unwrap().status,
        CertStatus::Active
    );
}

async fn lifecycle_transitions_follow_the_domain_rules(db: Db) {
    let s = db.store.as_ref();
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    let a = |act| audit("default", act, "device:dev");
    let d = s
        .transition_device(
            DEFAULT_TENANT,
            "dev",
            LifecycleAction::Suspend,
            &a("device.suspend"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Suspended);
    // A suspended device cannot enrol.
    let err = s
        .commit_enrolment(&enrolment("dev", "SN9", None, "c2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err}");
    assert!(s.get_certificate("c2").await.unwrap().is_none());
    let err = s
        .transition_device(
            DEFAULT_TENANT,
            "dev",
            LifecycleAction::Suspend,
            &a("device.suspend"),
            NOW,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)));
    s.transition_device(
        DEFAULT_TENANT,
        "dev",
        LifecycleAction::Reactivate,
        &a("device.reactivate"),
        NOW,
    )
    .await
    .unwrap();
    let d = s
        .transition_device(
            DEFAULT_TENANT,
            "dev",
            LifecycleAction::Decommission,
            &a("device.decommission"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Decommissioned);
    let c = s.get_certificate("c1").await.unwrap().unwrap();
    assert_eq!(c.status, CertStatus::Revoked);
    assert_eq!(c.revocation_reason.as_deref(), Some("decommissioned"));
    assert!(
        s.transition_device(
            DEFAULT_TENANT,
            "dev",
            LifecycleAction::Reactivate,
            &a("device.reactivate"),
            NOW
        )
        .await
        .is_err()
    );
    assert!(matches!(
        s.transition_device(
            DEFAULT_TENANT,
            "ghost",
            LifecycleAction::Suspend,
            &a("x"),
            NOW
        )
        .await
        .unwrap_err(),
        StoreError::NotFound(_)
    ));
}

async fn devices_filter_by_firmware_version_order_and_paginate(db: Db) {
    let s = db.store.as_ref();
    for (i, fw) in ["2.9.0", "2.10.0", "2.5.0", "1.0.0", "10.0.0"]
        .iter()
        .enumerate()
    {
        let mut t = token(&format!("t{i}"), &format!("SN{i}"), &format!("d{i}"));
        t.profile.firmware_version = Some(fw.to_string());
        t.profile.device_class = Some(if i % 2 == 0 { "sensor" } else { "gateway" }.into());
        s.create_token(&t, &audit("default", "token.create", "t"), NOW)
            .await
            .unwrap();
    }
    let names = |v: Vec<Device>| v.into_iter().map(|d| d.thing_name).collect::<Vec<_>>();
    let all = Page::new(None, None);
    let lt = DeviceFilter {
        firmware_lt: Some("2.10.0".into()),
        ..Default::default()
    };
    assert_eq!(
        names(s.list_devices(DEFAULT_TENANT, &lt, &all).await.unwrap()),
        ["d0", "d2", "d3"]
    );
    let gte = DeviceFilter {
        firmware_gte: Some("2.10".into()),
        ..Default::default()
    };
    assert_eq!(
        names(s.list_devices(DEFAULT_TENANT, &gte, &all).await.unwrap()),
        ["d1", "d4"]
    );
    let class = DeviceFilter {
        device_class: Some("gateway".into()),
        status: Some(DeviceStatus::Pending),
        ..Default::default()
    };
    assert_eq!(
        names(s.list_devices(DEFAULT_TENANT, &class, &all).await.unwrap()),
        ["d1", "d3"]
    );
    let first = s
        .list_devices(
            DEFAULT_TENANT,
            &DeviceFilter::default(),
            &Page::new(None, Some(2)),
        )
        .await
        .unwrap();
    assert_eq!(names(first.clone()), ["d0", "d1"]);
    let next = s
        .list_devices(
            DEFAULT_TENANT,
            &DeviceFilter::default(),
            &Page::new(Some("d1".into()), Some(2)),
        )
        .await
        .unwrap();
    assert_eq!(names(next), ["d2", "d3"]);
}

async fn attributes_merge_and_null_removes_a_key(db: Db) {
    let s = db.store.as_ref();
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    let patch = |v: serde_json::Value| v.as_object().unwrap().clone();
    s.patch_device_attributes(
        DEFAULT_TENANT,
        "dev",
        &patch(serde_json::json!({"site": "berlin", "floor": 3})),
        &audit("default", "device.patch", "dev"),
        NOW,
    )
    .await
    .unwrap();
    let d = s
        .patch_device_attributes(
            DEFAULT_TENANT,
            "dev",
            &patch(serde_json::json!({"floor": null, "zone": "a"})),
            &audit("default", "device.patch", "dev"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(d.attributes),
        serde_json::json!({"site": "berlin", "zone": "a"})
    );
    let stored = s.get_device(DEFAULT_TENANT, "dev").await.unwrap().unwrap();
    assert_eq!(stored.attributes.len(), 2);
}

async fn tenants_are_isolated(db: Db) {
    let s = db.store.as_ref();
    s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
        .await
        .unwrap();
    assert!(matches!(
        s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    assert!(s.get_device("acme", "dev").await.unwrap().is_none());
    assert!(
        s.list_devices("acme", &DeviceFilter::default(), &Page::new(None, None))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        s.revoke_certificate(
            "acme",
            "c1",
            "keyCompromise",
            &audit("acme", "certificate.revoke", "c1"),
            NOW
        )
        .await
        .unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(
        s.get_certificate("c1").await.unwrap().unwrap().status,
        CertStatus::Active
    );
    assert_eq!(audit_count(s, "acme").await, 1);
    assert_eq!(s.list_tenants().await.unwrap(), ["acme", "default"]);
}

async fn certificates_are_revoked_once(db: Db) {
    let s = db.store.as_ref();
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    let c = s
        .revoke_certificate(
            DEFAULT_TENANT,
            "c1",
            "keyCompromise",
            &audit("default", "certificate.revoke", "c1"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(c.status, CertStatus::Revoked);
    assert!(matches!(
        s.revoke_certificate(
            DEFAULT_TENANT,
            "c1",
            "keyCompromise",
            &audit("default", "certificate.revoke", "c1"),
            NOW
        )
        .await
        .unwrap_err(),
        StoreError::Conflict(_)
    ));
}

async fn the_crl_lists_revoked_unexpired_certificates_of_every_tenant(db: Db) {
    let s = db.store.as_ref();
    s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
        .await
        .unwrap();
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    s.commit_enrolment(&enrolment("dev2", "SN8", None, "c2"))
        .await
        .unwrap();
    assert!(s.revoked_own_certificates(NOW).await.unwrap().is_empty());
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c2",
        "keyCompromise",
        &audit("default", "certificate.revoke", "c2"),
        NOW + 7,
    )
    .await
    .unwrap();
    let c = claim("acme", "a0", NOW + 100, NOW);
    s.create_claim_certificate(&c, &audit("acme", "claim.create", "a0"))
        .await
        .unwrap();
    s.revoke_claim_certificate(
        "acme",
        "a0",
        None,
        &audit("acme", "claim.revoke", "a0"),
        NOW + 9,
    )
    .await
    .unwrap();
    let listed = s.revoked_own_certificates(NOW).await.unwrap();
    assert_eq!(
        listed,
        vec![
            RevokedEntry {
                serial: "a0".into(),
                revoked_at: NOW + 9,
                reason: "unspecified".into(),
            },
            RevokedEntry {
                serial: "c2".into(),
                revoked_at: NOW + 7,
                reason: "keyCompromise".into(),
            },
        ]
    );
    // Expired certificates leave the list; the active one never was on it.
    let later = s.revoked_own_certificates(NOW + 150).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].serial, "c2");
    assert!(
        s.revoked_own_certificates(NOW + 11 * 86_400)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn unexpired_own_certificates_are_listed_with_their_status(db: Db) {
    let s = db.store.as_ref();
    s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
        .await
        .unwrap();
    assert!(s.unexpired_own_certificates(NOW).await.unwrap().is_empty());
    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    s.commit_enrolment(&enrolment("dev2", "SN8", None, "c2"))
        .await
        .unwrap();
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c2",
        "keyCompromise",
        &audit("default", "certificate.revoke", "c2"),
        NOW + 7,
    )
    .await
    .unwrap();
    let c = claim("acme", "a0", NOW + 100, NOW);
    s.create_claim_certificate(&c, &audit("acme", "claim.create", "a0"))
        .await
        .unwrap();
    let listed = s.unexpired_own_certificates(NOW).await.unwrap();
    let summary: Vec<(&str, &str, &str, &str)> = listed
        .iter()
        .map(|c| (c.serial.as_str(), c.status.as_str(), c.kind, c.pem.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("a0", "active", "claim", c.pem.as_str()),
            ("c1", "active", "device", "PEM c1"),
            ("c2", "revoked", "device", "PEM c2"),
        ]
    );
    // The claim certificate expires first and leaves the list.
    let later = s.unexpired_own_certificates(NOW + 150).await.unwrap();
    assert_eq!(later.len(), 2);
    assert!(
        s.unexpired_own_certificates(NOW + 11 * 86_400)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_allowlist_adds_checks_and_removes(db: Db) {
    let s = db.store.as_ref();
    let serials: Vec<String> = ["A1", "A2", "A1"].iter().map(|s| s.to_string()).collect();
    assert_eq!(
        s.allowlist_add(
            DEFAULT_TENANT,
            &serials,
            &audit("default", "allowlist.add", "x"),
            NOW
        )
        .await
        .unwrap(),
        2
    );
    assert!(s.allowlist_contains(DEFAULT_TENANT, "A2").await.unwrap());
    assert!(!s.allowlist_contains(DEFAULT_TENANT, "B1").await.unwrap());
    s.allowlist_remove(
        DEFAULT_TENANT,
        "A2",
        &audit("default", "allowlist.remove", "A2"),
    )
    .await
    .unwrap();
    assert!(!s.allowlist_contains(DEFAULT_TENANT, "A2").await.unwrap());
    assert!(matches!(
        s.allowlist_remove(
            DEFAULT_TENANT,
            "A2",
            &audit("default", "allowlist.remove", "A2")
        )
        .await
        .unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(
        s.list_allowlist(DEFAULT_TENANT, &Page::new(None, None))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn api_keys_are_found_by_hash_and_revoked(db: Db) {
    let s = db.store.as_ref();
    let key = ApiKey {
        id: "k1".into(),
        tenant: DEFAULT_TENANT.into(),
        name: "ci".into(),
        role: Role::Operator,
        created_at: NOW,
        revoked_at: None,
    };
    s.create_api_key(&key, "h1", &audit("default", "apikey.create", "k1"))
        .await
        .unwrap();
    assert_eq!(s.get_api_key_by_hash("h1").await.unwrap().unwrap(), key);
    let revoked = s
        .revoke_api_key(
            DEFAULT_TENANT,
            "k1",
            &audit("default", "apikey.revoke", "k1"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(NOW));
    assert_eq!(s.list_api_keys(DEFAULT_TENANT).await.unwrap().len(), 1);
    let ghost = ApiKey {
        id: "k2".into(),
        tenant: "nowhere".into(),
        ..key
    };
    assert!(
        s.create_api_key(&ghost, "h2", &audit("nowhere", "apikey.create", "k2"))
            .await
            .is_err()
    );
}

async fn the_audit_log_is_append_only_and_queryable(db: Db) {
    let s = db.store.as_ref();
    let mut denied = audit("default", "est.simpleenroll", "SN1");
    denied.outcome = Outcome::Denied;
    denied.detail = "token already used".into();
    s.append_audit(&denied).await.unwrap();
    s.append_audit(&audit("default", "device.suspend", "dev"))
        .await
        .unwrap();
    let q = AuditQuery {
        outcome: Some(Outcome::Denied),
        limit: 10,
        ..Default::default()
    };
    let found = s.query_audit(DEFAULT_TENANT, &q).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].detail, "token already used");
    let all = s
        .query_audit(
            DEFAULT_TENANT,
            &AuditQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all[0].action, "device.suspend", "newest first");
    let older = s
        .query_audit(
            DEFAULT_TENANT,
            &AuditQuery {
                before_id: Some(all[0].id),
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(older.len(), 1);
    // The database itself refuses to edit or delete audit rows.
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    assert!(
        sqlx::query("UPDATE audit_log SET detail = 'x'")
            .execute(&raw)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&raw)
            .await
            .is_err()
    );
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, 2);
}

async fn fleet_gauges_count_devices_and_expiring_certs(db: Db) {
    let s = db.store.as_ref();
    s.commit_enrolment(&enrolment("a", "SA", None, "c1"))
        .await
        .unwrap();
    let mut b = enrolment("b", "SB", None, "c2");
    b.certificate.not_after = NOW + 20 * 86_400;
    s.commit_enrolment(&b).await.unwrap();
    s.create_token(
        &token("t1", "SN1", "pend"),
        &audit("default", "token.create", "t1"),
        NOW,
    )
    .await
    .unwrap();
    let g = s.fleet_gauges(NOW).await.unwrap();
    let count = |st| {
        g.devices_by_status
            .iter()
            .find(|(s, _)| *s == st)
            .unwrap()
            .1
    };
    assert_eq!(count(DeviceStatus::Active), 2);
    assert_eq!(count(DeviceStatus::Pending), 1);
    assert_eq!(count(DeviceStatus::Suspended), 0);
    assert_eq!(
        (
            g.certs_expiring_7d,
            g.certs_expiring_14d,
            g.certs_expiring_30d
        ),
        (0, 1, 2)
    );
    s.probe_writable(NOW).await.unwrap();
    s.probe_writable(NOW + 1).await.unwrap();
}

async fn policies_are_versioned_attached_and_found_for_a_device(db: Db) {
    let s = db.store.as_ref();
    let mut t = token("t1", "SN1", "pump-1");
    t.profile.device_class = Some("pump".into());
    s.create_token(&t, &audit("default", "token.create", "t1"), NOW)
        .await
        .unwrap();
    let p1 = s
        .put_policy(
            DEFAULT_TENANT,
            "p",
            "{}",
            &audit("default", "policy.put", "p"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(p1.version, 1);
    let p2 = s
        .put_policy(
            DEFAULT_TENANT,
            "p",
            "{\"v\":2}",
            &audit("default", "policy.put", "p"),
            NOW + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        (p2.version, p2.created_at, p2.updated_at),
        (2, NOW, NOW + 1)
    );
    s.put_policy(
        DEFAULT_TENANT,
        "q",
        "{}",
        &audit("default", "policy.put", "q"),
        NOW,
    )
    .await
    .unwrap();
    s.put_policy(
        DEFAULT_TENANT,
        "unused",
        "{}",
        &audit("default", "policy.put", "u"),
        NOW,
    )
    .await
    .unwrap();
    let a = audit("default", "policy.attach", "p");
    s.attach_policy(
        DEFAULT_TENANT,
        "p",
        &PolicyTarget::Device("pump-1".into()),
        &a,
        NOW,
    )
    .await
    .unwrap();
    s.attach_policy(
        DEFAULT_TENANT,
        "p",
        &PolicyTarget::Device("pump-1".into()),
        &a,
        NOW,
    )
    .await
    .unwrap();
    s.attach_policy(
        DEFAULT_TENANT,
        "q",
        &PolicyTarget::Class("pump".into()),
        &a,
        NOW,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.attach_policy(
            DEFAULT_TENANT,
            "ghost",
            &PolicyTarget::Class("pump".into()),
            &a,
            NOW
        )
        .await
        .unwrap_err(),
        StoreError::NotFound(_)
    ));
    let names: Vec<String> = s
        .policies_for_device(DEFAULT_TENANT, "pump-1", Some("pump"))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["p", "q"]);
    assert_eq!(
        s.policies_for_device(DEFAULT_TENANT, "pump-1", None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        s.policies_for_device("other", "pump-1", Some("pump"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.policy_targets(DEFAULT_TENANT, "p").await.unwrap(),
        [PolicyTarget::Device("pump-1".into())]
    );
    s.detach_policy(
        DEFAULT_TENANT,
        "p",
        &PolicyTarget::Device("pump-1".into()),
        &a,
    )
    .await
    .unwrap();
    assert!(
        s.detach_policy(
            DEFAULT_TENANT,
            "p",
            &PolicyTarget::Device("pump-1".into()),
            &a
        )
        .await
        .is_err()
    );
    assert_eq!(s.list_policies(DEFAULT_TENANT).await.unwrap().len(), 3);
    assert_eq!(
        s.get_policy(DEFAULT_TENANT, "p")
            .await
            .unwrap()
            .unwrap()
            .document,
        "{\"v\":2}"
    );
}

async fn retained_messages_and_presence_persist(db: Db) {
    let s = db.store.as_ref();
    let r = RetainedRecord {
        tenant: "default".into(),
        topic: "things/a/state".into(),
        payload: vec![0, 1, 2, 255],
        qos: 1,
    };
    s.put_retained(&r, NOW).await.unwrap();
    let mut r2 = r.clone();
    r2.payload = b"new".to_vec();
    s.put_retained(&r2, NOW).await.unwrap();
    assert_eq!(s.load_retained().await.unwrap(), [r2]);
    s.delete_retained("default", "things/a/state")
        .await
        .unwrap();
    assert!(s.load_retained().await.unwrap().is_empty());

    s.commit_enrolment(&enrolment("dev", "SN9", None, "c1"))
        .await
        .unwrap();
    s.set_device_connected(DEFAULT_TENANT, "dev", true, NOW + 5)
        .await
        .unwrap();
    assert_eq!(
        s.get_device(DEFAULT_TENANT, "dev")
            .await
            .unwrap()
            .unwrap()
            .last_seen_at,
        Some(NOW + 5)
    );
    let mut cursor = s.identity_change_head().await.unwrap();
    assert!(s.identity_changes(&mut cursor).await.unwrap().is_empty());
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c1",
        "keyCompromise",
        &audit("default", "certificate.revoke", "c1"),
        NOW + 10,
    )
    .await
    .unwrap();
    let cut = s.identity_changes(&mut cursor).await.unwrap();
    assert_eq!(
        cut,
        [RevokedIdentity {
            tenant: "default".into(),
            thing_name: "dev".into(),
            certificate_serial: Some("c1".into())
        }]
    );
    s.transition_device(
        DEFAULT_TENANT,
        "dev",
        LifecycleAction::Suspend,
        &audit("default", "device.suspend", "dev"),
        NOW + 20,
    )
    .await
    .unwrap();
    let cut = s.identity_changes(&mut cursor).await.unwrap();
    assert_eq!(
        cut,
        [RevokedIdentity {
            tenant: "default".into(),
            thing_name: "dev".into(),
            certificate_serial: None
        }]
    );
}

async fn shadows_are_written_with_compare_and_set_and_keep_history(db: Db) {
    let s = db.store.as_ref();
    let w = |doc: Option<&str>, v: i64| StoredShadow {
        document: doc.map(str::to_string),
        version: v,
        updated_at: NOW,
    };
    assert!(s.get_shadow("default", "D1", "").await.unwrap().is_none());
    assert!(
        s.put_shadow(
            "default",
            "D1",
            "",
            None,
            &w(Some("{\"v\":1}"), 1),
            "node-a",
            NOW
        )
        .await
        .unwrap()
    );
    // A second creator loses.
    assert!(
        !s.put_shadow(
            "default",
            "D1",
            "",
            None,
            &w(Some("{\"v\":9}"), 1),
            "node-a",
            NOW
        )
        .await
        .unwrap()
    );
    assert!(
        s.put_shadow(
            "default",
            "D1",
            "",
            Some(1),
            &w(Some("{\"v\":2}"), 2),
            "node-a",
            NOW
        )
        .await
        .unwrap()
    );
    // A writer that read version 1 loses against the one that wrote 2.
    assert!(
        !s.put_shadow(
            "default",
            "D1",
            "",
            Some(1),
            &w(Some("{\"v\":3}"), 2),
            "node-a",
            NOW
        )
        .await
        .unwrap()
    );
    assert_eq!(
        s.get_shadow("default", "D1", "")
            .await
            .unwrap()
            .unwrap()
            .document
            .as_deref(),
        Some("{\"v\":2}")
    );
    // Delete keeps the version for the next creation.
    assert!(
        s.put_shadow("default", "D1", "", Some(2), &w(None, 2), "node-a", NOW + 1)
            .await
            .unwrap()
    );
    assert!(s.list_shadows("default", "D1").await.unwrap().is_empty());
    assert!(
        s.put_shadow(
            "default",
            "D1",
            "cfg",
            None,
            &w(Some("{}"), 1),
            "node-a",
            NOW
        )
        .await
        .unwrap()
    );
    assert_eq!(s.list_shadows("default", "D1").await.unwrap(), ["cfg"]);
    assert!(s.get_shadow("acme", "D1", "cfg").await.unwrap().is_none());
    let h = s.shadow_history("default", "D1", "", 10).await.unwrap();
    assert_eq!(h.iter().map(|x| x.version).collect::<Vec<_>>(), [2, 1]);
    // The change watch skips the node's own writes.
    assert!(
        s.shadows_updated_since(NOW, "node-a")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.shadows_updated_since(NOW, "cli").await.unwrap().len(), 2);
    // Compaction keeps the newest version even when all are old.
    assert_eq!(s.compact_shadow_history(NOW + 100, 1).await.unwrap(), 1);
    assert_eq!(
        s.shadow_history("default", "D1", "", 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

fn held(seq: i64, packet_id: Option<u16>, payload: &[u8]) -> StoredHeldMessage {
    StoredHeldMessage {
        seq,
        packet_id,
        released: false,
        message: StoredMqttMessage {
            topic: "things/a/data".into(),
            payload: payload.to_vec(),
            qos: 2,
            retain: false,
            properties: Some(r#"{"contentType":"text/plain"}"#.into()),
            expires_at_ms: Some(1_800_000_000_000),
        },
        subscription_ids: vec![3, 9],
    }
}

async fn persistent_mqtt_sessions_round_trip_and_end(db: Db) {
    let s = db.store.as_ref();
    let (t, c) = ("default".to_string(), "dev-1".to_string());
    let will = StoredMqttMessage {
        topic: "things/dev-1/gone".into(),
        payload: vec![0, 255],
        qos: 1,
        retain: true,
        properties: None,
        expires_at_ms: None,
    };
    let record = StoredSessionRecord {
        tenant: t.clone(),
        client_id: c.clone(),
        thing_name: "dev-1".into(),
        certificate_serial: "abc".into(),
        expiry_secs: 3600,
        disconnected_at_ms: None,
        will: Some(will.clone()),
        will_delay_secs: 30,
    };
    let sub = StoredSubscription {
        key: "$share/g/things/+/data".into(),
        filter: "things/+/data".into(),
        share_group: Some("g".into()),
        qos: 2,
        no_local: true,
        retain_as_published: false,
        subscription_id: Some(3),
    };
    let write = |w: Vec<SessionWrite>| async move { s.write_sessions(&w).await.unwrap() };
    write(vec![
        SessionWrite::Open(record.clone()),
        SessionWrite::Subscribe {
            tenant: t.clone(),
            client_id: c.clone(),
            subscription: sub.clone(),
        },
        SessionWrite::Subscribe {
            tenant: t.clone(),
            client_id: c.clone(),
            subscription: StoredSubscription {
                key: "x".into(),
                filter: "x".into(),
                share_group: None,
                qos: 0,
                no_local: false,
                retain_as_published: true,
                subscription_id: None,
            },
        },
        SessionWrite::Hold {
            tenant: t.clone(),
            client_id: c.clone(),
            message: held(1, Some(7), b"one"),
        },
        SessionWrite::Hold {
            tenant: t.clone(),
            client_id: c.clone(),
            message: held(2, None, b"two"),
        },
        SessionWrite::Hold {
            tenant: t.clone(),
            client_id: c.clone(),
            message: held(3, None, b"three"),
        },
        SessionWrite::IncomingAdded {
            tenant: t.clone(),
            client_id: c.clone(),
            packet_id: 42,
        },
        SessionWrite::IncomingAdded {
            tenant: t.clone(),
            client_id: c.clone(),
            packet_id: 43,
        },
    ])
    .await;
    // Later groups: the queued message goes out, the first is received,
    // one subscription and one inbound id end, the connection ends.
    write(vec![
        SessionWrite::Hold {
            tenant: t.clone(),
            client_id: c.clone(),
            message: held(2, Some(8), b"two"),
        },
        SessionWrite::Released {
            tenant: t.clone(),
            client_id: c.clone(),
            seq: 1,
        },
        SessionWrite::Forget {
            tenant: t.clone(),
            client_id: c.clone(),
            seq: 3,
        },
        SessionWrite::Unsubscribe {
            tenant: t.clone(),
            client_id: c.clone(),
            key: "x".into(),
        },
        SessionWrite::IncomingRemoved {
            tenant: t.clone(),
            client_id: c.clone(),
            packet_id: 42,
        },
        SessionWrite::Closed {
            tenant: t.clone(),
            client_id: c.clone(),
            disconnected_at_ms: 1_700_000_000_000,
            expiry_secs: 60,
            will: Some(will.clone()),
            will_delay_secs: 30,
        },
    ])
    .await;
    let other = StoredSessionRecord {
        client_id: "dev-2".into(),
        will: None,
        ..record.clone()
    };
    write(vec![SessionWrite::Open(other.clone())]).await;

    let loaded = s.load_sessions().await.unwrap();
    assert_eq!(loaded.len(), 2);
    let one = &loaded[0];
    assert_eq!(
        one.record,
        StoredSessionRecord {
            disconnected_at_ms: Some(1_700_000_000_000),
            expiry_secs: 60,
            ..record.clone()
        }
    );
    assert_eq!(one.subscriptions, [sub]);
    let mut first = held(1, Some(7), b"one");
    first.released = true;
    assert_eq!(one.messages, [first, held(2, Some(8), b"two")]);
    assert_eq!(one.incoming, [43]);
    assert_eq!(loaded[1].record, other);
    assert!(loaded[1].messages.is_empty());

    // Opening again (a reconnect) marks it connected; deleting ends it whole.
    write(vec![SessionWrite::Open(record.clone())]).await;
    assert_eq!(
        s.load_sessions().await.unwrap()[0]
            .record
            .disconnected_at_ms,
        None
    );
    write(vec![SessionWrite::Delete {
        tenant: t.clone(),
        client_id: c.clone(),
    }])
    .await;
    let loaded = s.load_sessions().await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].record.client_id, "dev-2");
    // A session of the same client id starts empty.
    write(vec![SessionWrite::Open(record.clone())]).await;
    let loaded = s.load_sessions().await.unwrap();
    assert!(
        loaded[0].messages.is_empty()
            && loaded[0].subscriptions.is_empty()
            && loaded[0].incoming.is_empty()
    );
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
    token_creation_registers_a_pending_device,
    enrolment_activates_the_device_records_the_cert_and_consumes_the_token,
    a_used_token_is_refused_and_nothing_changes,
    an_expired_or_revoked_token_cannot_be_consumed,
    concurrent_uses_of_one_token_have_exactly_one_winner,
    re_enrolment_supersedes_exactly_the_presented_certificate,
    lifecycle_transitions_follow_the_domain_rules,
    devices_filter_by_firmware_version_order_and_paginate,
    attributes_merge_and_null_removes_a_key,
    tenants_are_isolated,
    certificates_are_revoked_once,
    the_crl_lists_revoked_unexpired_certificates_of_every_tenant,
    unexpired_own_certificates_are_listed_with_their_status,
    the_allowlist_adds_checks_and_removes,
    api_keys_are_found_by_hash_and_revoked,
    the_audit_log_is_append_only_and_queryable,
    fleet_gauges_count_devices_and_expiring_certs,
    policies_are_versioned_attached_and_found_for_a_device,
    retained_messages_and_presence_persist,
    shadows_are_written_with_compare_and_set_and_keep_history,
    templates_are_versioned_and_their_settings_round_trip,
    claim_certificates_are_listed_revoked_once_and_found_before_expiry,
    registration_creates_the_thing_activates_the_certificate_and_replays,
    an_expired_or_foreign_ownership_token_registers_nothing,
    re_registration_merges_the_thing_and_supersedes_the_first_certificate,
    a_consumed_token_records_the_certificate_and_key_it_produced,
    a_second_writer_beside_the_store_waits_instead_of_failing,
    registration_refuses_a_thing_or_serial_owned_by_another,
    a_missing_named_policy_rolls_the_whole_registration_back,
    purging_expired_pending_certificates_reports_only_unregistered_ones,
    registered_cas_are_listed_per_tenant_and_updated,
    jitp_registration_records_the_issuing_ca,
    concurrent_register_thing_with_one_token_registers_once,
    a_revoked_claim_or_a_deactivated_ca_cuts_its_identities,
    a_revocation_that_commits_late_is_seen_exactly_once,
    re_registration_keeps_attributes_the_template_leaves_alone,
    concurrent_merging_re_registrations_lose_nothing,
    presence_is_written_in_batches,
    a_scheduled_task_runs_once_per_period_and_a_dead_holders_lease_passes_on,
    concurrent_claims_of_a_due_task_have_exactly_one_winner,
    concurrent_writes_of_one_job_execution_have_exactly_one_winner,
    a_group_of_execution_writes_answers_each_write_on_its_own,
    concurrent_execution_writes_each_get_their_own_answer,
    a_group_whose_commit_fails_writes_none_and_fails_every_write,
    a_paced_release_queues_each_waiting_target_once_and_stops_with_the_job,
    job_controls_pause_releases_schedule_starts_end_rollouts_and_delete_jobs,
    persistent_mqtt_sessions_round_trip_and_end,
);

// ---- provisioning: templates, claim certificates, RegisterThing, registered CAs ----

fn template(name: &str, kind: TemplateKind) -> ProvisioningTemplateRecord {
    ProvisioningTemplateRecord {
        tenant: DEFAULT_TENANT.into(),
        name: name.into(),
        kind,
        description: format!("{name} template"),
        enabled: true,
        default_version: 1,
        latest_version: 1,
        serial_allow: None,
        serial_deny: Vec::new(),
        hook_url: None,
        created_at: NOW,
        updated_at: NOW,
    }
}

fn claim(tenant: &str, serial: &str, not_after: i64, created_at: i64) -> ClaimCertificate {
    ClaimCertificate {
        serial: serial.into(),
        tenant: tenant.into(),
        template: "fleet".into(),
        certificate_id: format!("claim-fp-{serial}"),
        pem: format!("CLAIM PEM {serial}"),
        not_before: NOW - 100,
        not_after,
        status: CertStatus::Active,
        created_at,
        revoked_at: None,
        created_by: "test".into(),
        replaced_by: None,
    }
}

/// A pending certificate whose fields match [`cert`] of the same serial.
fn pending(tenant: &str, serial: &str, token_expires_at: i64) -> PendingCertificate {
    let c = cert(serial);
    PendingCertificate {
        serial: serial.into(),
        tenant: tenant.into(),
        certificate_id: c.fingerprint,
        pem: c.pem,
        not_before: c.not_before,
        not_after: c.not_after,
        claim_serial: "claim-1".into(),
        token_expires_at,
        created_at: NOW - 60,
        registered_at: None,
        request_digest: None,
        response: None,
    }
}

fn plan(thing: &str, attributes: &[(&str, &str)], groups: &[&str], kind: &str) -> ThingPlan {
    ThingPlan {
        thing_name: thing.into(),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        thing_type: Some(kind.into()),
        thing_groups: groups.iter().map(|g| g.to_string()).collect(),
        overrides: ThingOverrides::default(),
    }
}

fn ownership(token_hash: &str, digest: &str) -> OwnershipClaim {
    OwnershipClaim {
        token_hash: token_hash.into(),
        request_digest: digest.into(),
        response: format!("response-{digest}"),
    }
}

/// A fleet-provisioning registration of `thing` (serial `serial`) with the
/// pending certificate `cert_serial` and its ownership token.
fn registration(
    thing: ThingPlan,
    serial: &str,
    cert_serial: &str,
    owner: Option<OwnershipClaim>,
) -> RegistrationCommit {
    RegistrationCommit {
        tenant: DEFAULT_TENANT.into(),
        serial_number: serial.into(),
        audit: audit(DEFAULT_TENANT, "provisioning.register", &thing.thing_name),
        thing,
        certificate: cert(cert_serial),
        certificate_status: CertStatus::Active,
        issuer_ca: None,
        ownership: owner,
        policies: Vec::new(),
        now: NOW,
    }
}

fn policy_doc(name: &str, document: &str) -> PolicyToAttach {
    PolicyToAttach {
        name: name.into(),
        document: Some(document.into()),
    }
}

fn registered_ca(id: &str, tenant: &str, created_at: i64) -> RegisteredCa {
    RegisteredCa {
        id: id.into(),
        tenant: tenant.into(),
        pem: format!("CA PEM {id}"),
        subject: format!("CN={id}"),
        not_after: NOW + 365 * 86_400,
        status: CaStatus::Active,
        auto_registration: true,
        template: None,
        created_at,
        updated_at: created_at,
    }
}

/// Audit actions of a tenant, oldest first.
async fn audit_actions(s: &dyn Store, tenant: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .query_audit(
            tenant,
            &AuditQuery {
                limit: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    v.reverse();
    v
}

fn json(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

async fn templates_are_versioned_and_their_settings_round_trip(db: Db) {
    let s = db.store.as_ref();
    let a = |act: &str, name: &str| audit(DEFAULT_TENANT, act, name);
    let b = template("fleet-b", TemplateKind::Fleet);
    s.create_template(&b, "{\"v\":1}", &a("template.create", "fleet-b"))
        .await
        .unwrap();
    let stored = s
        .get_template(DEFAULT_TENANT, "fleet-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, b);
    assert_eq!((stored.default_version, stored.latest_version), (1, 1));
    assert_eq!(
        s.get_template_version(DEFAULT_TENANT, "fleet-b", 1)
            .await
            .unwrap(),
        Some(TemplateVersion {
            version: 1,
            body: "{\"v\":1}".into(),
            created_at: NOW
        })
    );
    // The same name again is a conflict and writes nothing.
    let mut dup = template("fleet-b", TemplateKind::Jitp);
    dup.description = "other".into();
    let err = s
        .create_template(&dup, "{}", &a("template.create", "fleet-b"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap(),
        b
    );
    // A template for a tenant that does not exist.
    let mut ghost = template("g", TemplateKind::Fleet);
    ghost.tenant = "nowhere".into();
    assert!(matches!(
        s.create_template(&ghost, "{}", &audit("nowhere", "template.create", "g"))
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));

    let mut jitp = template("a-jitp", TemplateKind::Jitp);
    jitp.serial_allow = Some(vec!["SN1".into()]);
    s.create_template(&jitp, "{\"j\":1}", &a("template.create", "a-jitp"))
        .await
        .unwrap();
    let names: Vec<String> = s
        .list_templates(DEFAULT_TENANT)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["a-jitp", "fleet-b"]);
    assert!(s.list_templates("acme").await.unwrap().is_empty());

    // A new version that is not the default.
    let t = s
        .add_template_version(
            DEFAULT_TENANT,
            "fleet-b",
            "{\"v\":2}",
            false,
            &a("template.version", "fleet-b"),
            NOW + 10,
        )
        .await
        .unwrap();
    assert_eq!(
        (t.default_version, t.latest_version, t.updated_at),
        (1, 2, NOW + 10)
    );
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap(),
        t
    );
    // One that becomes the default.
    let t = s
        .add_template_version(
            DEFAULT_TENANT,
            "fleet-b",
            "{\"v\":3}",
            true,
            &a("template.version", "fleet-b"),
            NOW + 20,
        )
        .await
        .unwrap();
    assert_eq!(
        (t.default_version, t.latest_version, t.updated_at),
        (3, 3, NOW + 20)
    );
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap(),
        t
    );
    assert!(matches!(
        s.add_template_version(
            DEFAULT_TENANT,
            "ghost",
            "{}",
            true,
            &a("template.version", "ghost"),
            NOW
        )
        .await
        .unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(
        s.get_template_version(DEFAULT_TENANT, "fleet-b", 2)
            .await
            .unwrap(),
        Some(TemplateVersion {
            version: 2,
            body: "{\"v\":2}".into(),
            created_at: NOW + 10
        })
    );
    assert!(
        s.get_template_version(DEFAULT_TENANT, "fleet-b", 4)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_template_version(DEFAULT_TENANT, "a-jitp", 2)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.list_template_versions(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .iter()
            .map(|v| (v.version, v.body.as_str()))
            .collect::<Vec<_>>(),
        [(1, "{\"v\":1}"), (2, "{\"v\":2}"), (3, "{\"v\":3}")]
    );

    // Back to version 2; a version that does not exist is refused.
    let t = s
        .set_template_default_version(
            DEFAULT_TENANT,
            "fleet-b",
            2,
            &a("template.default", "fleet-b"),
            NOW + 30,
        )
        .await
        .unwrap();
    assert_eq!(
        (t.default_version, t.latest_version, t.updated_at),
        (2, 3, NOW + 30)
    );
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap(),
        t
    );
    for (name, version) in [("fleet-b", 4), ("fleet-b", 0), ("ghost", 1)] {
        let err = s
            .set_template_default_version(
                DEFAULT_TENANT,
                name,
                version,
                &a("template.default", name),
                NOW + 40,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "{name} v{version}: {err}"
        );
    }
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap(),
        t
    );

    // Settings: allow list Some(list), deny list and hook round-trip...
    let mut settings = t.clone();
    settings.description = "batch 7".into();
    settings.enabled = false;
    settings.serial_allow = Some(vec!["SN1".into(), "SN2".into()]);
    settings.serial_deny = vec!["SN3".into()];
    settings.hook_url = Some("https://hooks.example/pre".into());
    settings.updated_at = NOW + 50;
    s.update_template_settings(&settings, &a("template.update", "fleet-b"))
        .await
        .unwrap();
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap(),
        settings
    );
    // ...an empty allow list stays empty (nothing allowed), distinct from None...
    settings.serial_allow = Some(Vec::new());
    s.update_template_settings(&settings, &a("template.update", "fleet-b"))
        .await
        .unwrap();
    assert_eq!(
        s.get_template(DEFAULT_TENANT, "fleet-b")
            .await
            .unwrap()
            .unwrap()
            .serial_allow,
        Some(Vec::new())
    );
    // ...and None (any serial not denied) comes back as None.
    settings.serial_allow = None;
    settings.serial_deny = Vec::new();
    settings.hook_url = None;
    settings.enabled = true;
    settings.updated_at = NOW + 60;
    s.update_template_settings(&settings, &a("template.update", "fleet-b"))
        .await
        .unwrap();
    let stored = s
        .get_template(DEFAULT_TENANT, "fleet-b")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, settings);
    assert_eq!(stored.serial_allow, None);
    // The settings update never touches the versions.
    assert_eq!((stored.default_version, stored.latest_version), (2, 3));
    let mut missing = settings.clone();
    missing.name = "ghost".into();
    assert!(matches!(
        s.update_template_settings(&missing, &a("template.update", "ghost"))
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));

    // One audit entry per successful change, none for the refused ones.
    assert_eq!(
        audit_actions(s, DEFAULT_TENANT).await,
        [
            "template.create",
            "template.create",
            "template.version",
            "template.version",
            "template.default",
            "template.update",
            "template.update",
            "template.update",
        ]
    );
    assert!(audit_actions(s, "nowhere").await.is_empty());
}

async fn claim_certificates_are_listed_revoked_once_and_found_before_expiry(db: Db) {
    let s = db.store.as_ref();
    s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
        .await
        .unwrap();
    let a = |t: &str, act: &str, serial: &str| audit(t, act, serial);
    let c1 = claim(DEFAULT_TENANT, "c1", NOW + 100, NOW);
    for c in [
        c1.clone(),
        claim(DEFAULT_TENANT, "c2", NOW + 200, NOW + 1),
        claim(DEFAULT_TENANT, "c3", NOW + 1000, NOW + 2),
        claim(DEFAULT_TENANT, "c4", NOW + 300, NOW + 3),
        claim("acme", "x1", NOW + 50, NOW),
    ] {
        s.create_claim_certificate(&c, &a(&c.tenant, "claim.create", &c.serial))
            .await
            .unwrap();
    }
    assert_eq!(
        s.get_claim_certificate("c1").await.unwrap(),
        Some(c1.clone())
    );
    assert!(s.get_claim_certificate("nope").await.unwrap().is_none());
    let err = s
        .create_claim_certificate(&c1, &a(DEFAULT_TENANT, "claim.create", "c1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let mut same_fp = claim(DEFAULT_TENANT, "c9", NOW + 100, NOW);
    same_fp.certificate_id = c1.certificate_id.clone();
    assert!(matches!(
        s.create_claim_certificate(&same_fp, &a(DEFAULT_TENANT, "claim.create", "c9"))
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    let serials = |v: Vec<ClaimCertificate>| v.into_iter().map(|c| c.serial).collect::<Vec<_>>();
    assert_eq!(
        serials(s.list_claim_certificates(DEFAULT_TENANT).await.unwrap()),
        ["c1", "c2", "c3", "c4"]
    );
    assert_eq!(
        serials(s.list_claim_certificates("acme").await.unwrap()),
        ["x1"]
    );

    s.revoke_claim_certificate(
        DEFAULT_TENANT,
        "c1",
        None,
        &a(DEFAULT_TENANT, "claim.revoke", "c1"),
        NOW + 5,
    )
    .await
    .unwrap();
    let r = s.get_claim_certificate("c1").await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.revoked_at, r.replaced_by.as_deref()),
        (CertStatus::Revoked, Some(NOW + 5), None)
    );
    // Revoking twice is refused and keeps the first revocation.
    let err = s
        .revoke_claim_certificate(
            DEFAULT_TENANT,
            "c1",
            Some("c3"),
            &a(DEFAULT_TENANT, "claim.revoke", "c1"),
            NOW + 6,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(s.get_claim_certificate("c1").await.unwrap().unwrap(), r);
    // Rotation: the replacement is recorded.
    s.revoke_claim_certificate(
        DEFAULT_TENANT,
        "c2",
        Some("c3"),
        &a(DEFAULT_TENANT, "claim.revoke", "c2"),
        NOW + 7,
    )
    .await
    .unwrap();
    let r = s.get_claim_certificate("c2").await.unwrap().unwrap();
    assert_eq!(
        (r.status, r.revoked_at, r.replaced_by.as_deref()),
        (CertStatus::Revoked, Some(NOW + 7), Some("c3"))
    );
    // Another tenant's or an unknown claim certificate.
    for (tenant, serial) in [
        ("acme", "c3"),
        (DEFAULT_TENANT, "x1"),
        (DEFAULT_TENANT, "nope"),
    ] {
        let err = s
            .revoke_claim_certificate(
                tenant,
                serial,
                None,
                &a(tenant, "claim.revoke", serial),
                NOW + 8,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NotFound(_)),
            "{tenant}/{serial}: {err}"
        );
    }
    assert_eq!(
        s.get_claim_certificate("c3").await.unwrap().unwrap().status,
        CertStatus::Active
    );
    assert_eq!(
        s.get_claim_certificate("x1").await.unwrap().unwrap().status,
        CertStatus::Active
    );

    // Active ones only, every tenant, strictly before the bound, soonest first.
    assert_eq!(
        serials(s.claim_certificates_expiring(NOW + 500).await.unwrap()),
        ["x1", "c4"]
    );
    assert_eq!(
        serials(s.claim_certificates_expiring(NOW + 300).await.unwrap()),
        ["x1"]
    );
    assert_eq!(
        serials(s.claim_certificates_expiring(NOW + 5000).await.unwrap()),
        ["x1", "c4", "c3"]
    );
    assert!(
        s.claim_certificates_expiring(NOW + 50)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        audit_actions(s, DEFAULT_TENANT).await,
        [
            "claim.create",
            "claim.create",
            "claim.create",
            "claim.create",
            "claim.revoke",
            "claim.revoke"
        ]
    );
}

async fn registration_creates_the_thing_activates_the_certificate_and_replays(db: Db) {
    let s = db.store.as_ref();
    let p1 = pending(DEFAULT_TENANT, "p1", NOW + 3600);
    s.create_pending_certificate(&p1, "tok-1").await.unwrap();
    assert_eq!(
        s.get_pending_by_token("tok-1").await.unwrap(),
        Some(p1.clone())
    );
    assert!(s.get_pending_by_token("nope").await.unwrap().is_none());
    // The same certificate or the same token twice is refused.
    assert!(matches!(
        s.create_pending_certificate(&p1, "tok-other")
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert!(matches!(
        s.create_pending_certificate(&pending(DEFAULT_TENANT, "p9", NOW + 3600), "tok-1")
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    // A pending certificate is not a certificate yet.
    assert!(
        s.get_certificate_by_fingerprint("fp-p1")
            .await
            .unwrap()
            .is_none()
    );

    let mut c = registration(
        plan(
            "pump-1",
            &[("site", "berlin"), ("floor", "3")],
            &["g1", "g2"],
            "pump",
        ),
        "SN1",
        "p1",
        Some(ownership("tok-1", "d1")),
    );
    c.policies = vec![policy_doc("pump-policy", "{\"allow\":[\"things/*\"]}")];
    let before = audit_count(s, DEFAULT_TENANT).await;
    assert_eq!(
        s.commit_registration(&c).await.unwrap(),
        RegistrationOutcome::Created
    );
    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Active);
    assert_eq!(d.serial_number, "SN1");
    assert_eq!(d.device_class.as_deref(), Some("pump"));
    assert_eq!(
        d.attributes,
        json(serde_json::json!({"site": "berlin", "floor": "3"}))
    );
    assert_eq!(d.thing_groups, ["g1", "g2"]);
    assert_eq!((d.created_at, d.updated_at), (NOW, NOW));
    assert_eq!(
        s.get_device_by_serial(DEFAULT_TENANT, "SN1")
            .await
            .unwrap()
            .unwrap()
            .thing_name,
        "pump-1"
    );

    let crt = s
        .get_certificate_by_fingerprint("fp-p1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(crt.serial, "p1");
    assert_eq!(crt.thing_name, "pump-1");
    assert_eq!(crt.status, CertStatus::Active);
    assert_eq!(crt.issued_at, NOW);
    assert_eq!(crt.issuer_ca, None);
    assert_eq!(crt.pem, p1.pem);
    assert!(
        s.get_certificate_by_fingerprint("fp-nope")
            .await
            .unwrap()
            .is_none()
    );

    let p = s
        .get_policy(DEFAULT_TENANT, "pump-policy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (p.document.as_str(), p.version),
        ("{\"allow\":[\"things/*\"]}", 1)
    );
    let attached: Vec<String> = s
        .policies_for_device(DEFAULT_TENANT, "pump-1", Some("pump"))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(attached, ["pump-policy"]);
    assert_eq!(
        s.policy_targets(DEFAULT_TENANT, "pump-policy")
            .await
            .unwrap(),
        [PolicyTarget::Device("pump-1".into())]
    );

    // The token is consumed, with the request digest and the reply kept.
    let used = s.get_pending_by_token("tok-1").await.unwrap().unwrap();
    assert_eq!(used.registered_at, Some(NOW));
    assert_eq!(used.request_digest.as_deref(), Some("d1"));
    assert_eq!(used.response.as_deref(), Some("response-d1"));
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, before + 1);

    // A retry of the same request gets the same reply and writes nothing.
    let mut retry = c.clone();
    retry.now = NOW + 5;
    retry.policies = vec![policy_doc("pump-policy", "{\"changed\":true}")];
    assert_eq!(
        s.commit_registration(&retry).await.unwrap(),
        RegistrationOutcome::Replayed("response-d1".into())
    );
    assert_eq!(certs_of(s, "pump-1").await.len(), 1);
    assert_eq!(
        s.get_policy(DEFAULT_TENANT, "pump-policy")
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        s.get_pending_by_token("tok-1").await.unwrap().unwrap(),
        used
    );
    assert_eq!(
        s.get_device(DEFAULT_TENANT, "pump-1")
            .await
            .unwrap()
            .unwrap(),
        d
    );
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, before + 1);

    // A different request with the same token is refused.
    let mut other = c.clone();
    other.ownership = Some(ownership("tok-1", "d2"));
    other.now = NOW + 6;
    let err = s.commit_registration(&other).await.unwrap_err();
    assert!(matches!(err, StoreError::TokenNotUsable), "{err}");
    assert_eq!(
        s.get_pending_by_token("tok-1").await.unwrap().unwrap(),
        used
    );
    assert_eq!(certs_of(s, "pump-1").await.len(), 1);
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, before + 1);
}

async fn an_expired_or_foreign_ownership_token_registers_nothing(db: Db) {
    let s = db.store.as_ref();
    let p1 = pending(DEFAULT_TENANT, "p1", NOW + 10);
    s.create_pending_certificate(&p1, "tok-1").await.unwrap();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p2", NOW + 3600), "tok-2")
        .await
        .unwrap();
    let before = audit_count(s, DEFAULT_TENANT).await;
    let attempt = |token: &str, cert_serial: &str, now: i64| {
        let mut c = registration(
            plan("pump-1", &[("site", "berlin")], &["g1"], "pump"),
            "SN1",
            cert_serial,
            Some(ownership(token, "d1")),
        );
        c.policies = vec![policy_doc("made-here", "{}")];
        c.now = now;
        c
    };
    for (what, c) in [
        ("at expiry", attempt("tok-1", "p1", NOW + 10)),
        ("after expiry", attempt("tok-1", "p1", NOW + 11)),
        ("another certificate's token", attempt("tok-2", "p1", NOW)),
        (
            "this token, another certificate",
            attempt("tok-1", "p2", NOW),
        ),
        ("an unknown token", attempt("tok-x", "p1", NOW)),
    ] {
        let err = s.commit_registration(&c).await.unwrap_err();
        assert!(matches!(err, StoreError::TokenNotUsable), "{what}: {err}");
    }
    assert!(
        s.get_device(DEFAULT_TENANT, "pump-1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_certificate("p1").await.unwrap().is_none());
    assert!(s.get_certificate("p2").await.unwrap().is_none());
    assert!(
        s.get_policy(DEFAULT_TENANT, "made-here")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.get_pending_by_token("tok-1").await.unwrap(), Some(p1));
    assert!(
        s.get_pending_by_token("tok-2")
            .await
            .unwrap()
            .unwrap()
            .registered_at
            .is_none()
    );
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, before);
    // An expired token is not replayed either, even for the request it registered.
    let ok = attempt("tok-2", "p2", NOW + 3599);
    assert_eq!(
        s.commit_registration(&ok).await.unwrap(),
        RegistrationOutcome::Created
    );
    let mut late = ok.clone();
    late.now = NOW + 3600;
    assert!(matches!(
        s.commit_registration(&late).await.unwrap_err(),
        StoreError::TokenNotUsable
    ));
}

async fn re_registration_merges_the_thing_and_supersedes_the_first_certificate(db: Db) {
    let s = db.store.as_ref();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p1", NOW + 3600), "tok-1")
        .await
        .unwrap();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p2", NOW + 3600), "tok-2")
        .await
        .unwrap();
    let mut first = registration(
        plan(
            "pump-1",
            &[("site", "berlin"), ("floor", "3")],
            &["g1", "g2"],
            "pump",
        ),
        "SN1",
        "p1",
        Some(ownership("tok-1", "d1")),
    );
    first.policies = vec![policy_doc("pump-policy", "{\"v\":1}")];
    assert_eq!(
        s.commit_registration(&first).await.unwrap(),
        RegistrationOutcome::Created
    );

    let mut thing = plan(
        "pump-1",
        &[("floor", "4"), ("zone", "a")],
        &["g2", "g3"],
        "valve",
    );
    thing.overrides = ThingOverrides {
        attribute_payload: OverrideSetting::Merge,
        thing_type_name: OverrideSetting::DoNothing,
        thing_groups: OverrideSetting::Merge,
    };
    let mut second = registration(thing, "SN1", "p2", Some(ownership("tok-2", "d2")));
    second.now = NOW + 100;
    second.policies = vec![
        policy_doc("pump-policy", "{\"v\":2}"),
        policy_doc("extra", "{}"),
    ];
    assert_eq!(
        s.commit_registration(&second).await.unwrap(),
        RegistrationOutcome::Updated
    );
    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Active);
    assert_eq!(
        d.attributes,
        json(serde_json::json!({"site": "berlin", "floor": "4", "zone": "a"}))
    );
    assert_eq!(d.thing_groups, ["g1", "g2", "g3"]);
    assert_eq!(
        d.device_class.as_deref(),
        Some("pump"),
        "DO_NOTHING keeps it"
    );
    assert_eq!((d.created_at, d.updated_at), (NOW, NOW + 100));

    let old = s.get_certificate("p1").await.unwrap().unwrap();
    assert_eq!(old.status, CertStatus::Superseded);
    assert_eq!(old.superseded_by.as_deref(), Some("p2"));
    let new = s
        .get_certificate_by_fingerprint("fp-p2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((new.status, new.issued_at), (CertStatus::Active, NOW + 100));
    assert_eq!(certs_of(s, "pump-1").await.len(), 2);
    // A changed document is a new version of the policy, attached once.
    let p = s
        .get_policy(DEFAULT_TENANT, "pump-policy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p.document.as_str(), p.version), ("{\"v\":2}", 2));
    let attached: Vec<String> = s
        .policies_for_device(DEFAULT_TENANT, "pump-1", None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(attached, ["extra", "pump-policy"]);

    // REPLACE takes the template's values instead.
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p3", NOW + 3600), "tok-3")
        .await
        .unwrap();
    let mut thing = plan("pump-1", &[("only", "this")], &["g9"], "valve");
    thing.overrides = ThingOverrides {
        attribute_payload: OverrideSetting::Replace,
        thing_type_name: OverrideSetting::Replace,
        thing_groups: OverrideSetting::Replace,
    };
    let mut third = registration(thing, "SN1", "p3", Some(ownership("tok-3", "d3")));
    third.policies = vec![policy_doc("pump-policy", "{\"v\":2}")];
    assert_eq!(
        s.commit_registration(&third).await.unwrap(),
        RegistrationOutcome::Updated
    );
    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.attributes, json(serde_json::json!({"only": "this"})));
    assert_eq!(d.thing_groups, ["g9"]);
    assert_eq!(d.device_class.as_deref(), Some("valve"));
    assert_eq!(
        s.get_certificate("p2").await.unwrap().unwrap().status,
        CertStatus::Superseded
    );
    // The same document again is not a new version.
    assert_eq!(
        s.get_policy(DEFAULT_TENANT, "pump-policy")
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    // FAIL refuses a differing value and writes nothing.
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p4", NOW + 3600), "tok-4")
        .await
        .unwrap();
    let mut thing = plan("pump-1", &[("only", "that")], &["g9"], "valve");
    thing.overrides.attribute_payload = OverrideSetting::Fail;
    let fourth = registration(thing, "SN1", "p4", Some(ownership("tok-4", "d4")));
    assert!(matches!(
        s.commit_registration(&fourth).await.unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert!(s.get_certificate("p4").await.unwrap().is_none());
    assert_eq!(
        s.get_certificate("p3").await.unwrap().unwrap().status,
        CertStatus::Active
    );
    assert!(
        s.get_pending_by_token("tok-4")
            .await
            .unwrap()
            .unwrap()
            .registered_at
            .is_none()
    );
}

async fn registration_refuses_a_thing_or_serial_owned_by_another(db: Db) {
    let s = db.store.as_ref();
    for (i, tok) in ["tok-1", "tok-2", "tok-3"].iter().enumerate() {
        s.create_pending_certificate(
            &pending(DEFAULT_TENANT, &format!("p{}", i + 1), NOW + 3600),
            tok,
        )
        .await
        .unwrap();
    }
    let first = registration(
        plan("pump-1", &[], &[], "pump"),
        "SN1",
        "p1",
        Some(ownership("tok-1", "d1")),
    );
    assert_eq!(
        s.commit_registration(&first).await.unwrap(),
        RegistrationOutcome::Created
    );
    let before = audit_count(s, DEFAULT_TENANT).await;
    // The thing name exists with another serial.
    let other_serial = registration(
        plan("pump-1", &[("k", "v")], &[], "pump"),
        "SN2",
        "p2",
        Some(ownership("tok-2", "d2")),
    );
    let err = s.commit_registration(&other_serial).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    // The serial exists under another thing name.
    let other_thing = registration(
        plan("pump-2", &[], &[], "pump"),
        "SN1",
        "p3",
        Some(ownership("tok-3", "d3")),
    );
    let err = s.commit_registration(&other_thing).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");

    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.serial_number, "SN1");
    assert!(d.attributes.is_empty());
    assert!(
        s.get_device(DEFAULT_TENANT, "pump-2")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_certificate("p2").await.unwrap().is_none());
    assert!(s.get_certificate("p3").await.unwrap().is_none());
    assert_eq!(
        s.get_certificate("p1").await.unwrap().unwrap().status,
        CertStatus::Active
    );
    // The tokens were not consumed: the whole transaction rolled back.
    for tok in ["tok-2", "tok-3"] {
        assert!(
            s.get_pending_by_token(tok)
                .await
                .unwrap()
                .unwrap()
                .registered_at
                .is_none(),
            "{tok}"
        );
    }
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, before);

    // A decommissioned thing cannot be registered again.
    s.transition_device(
        DEFAULT_TENANT,
        "pump-1",
        LifecycleAction::Decommission,
        &audit(DEFAULT_TENANT, "device.decommission", "pump-1"),
        NOW,
    )
    .await
    .unwrap();
    let again = registration(
        plan("pump-1", &[], &[], "pump"),
        "SN1",
        "p2",
        Some(ownership("tok-2", "d2")),
    );
    let err = s.commit_registration(&again).await.unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err}");
    assert!(s.get_certificate("p2").await.unwrap().is_none());
    assert_eq!(
        s.get_device(DEFAULT_TENANT, "pump-1")
            .await
            .unwrap()
            .unwrap()
            .status,
        DeviceStatus::Decommissioned
    );
}

async fn a_missing_named_policy_rolls_the_whole_registration_back(db: Db) {
    let s = db.store.as_ref();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p1", NOW + 3600), "tok-1")
        .await
        .unwrap();
    let before = audit_count(s, DEFAULT_TENANT).await;
    let mut c = registration(
        plan("pump-1", &[("site", "berlin")], &["g1"], "pump"),
        "SN1",
        "p1",
        Some(ownership("tok-1", "d1")),
    );
    c.policies = vec![
        policy_doc("made-here", "{}"),
        PolicyToAttach {
            name: "ghost".into(),
            document: None,
        },
    ];
    let err = s.commit_registration(&c).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(
        s.get_device(DEFAULT_TENANT, "pump-1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.get_certificate("p1").await.unwrap().is_none());
    assert!(
        s.get_certificate_by_fingerprint("fp-p1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_policy(DEFAULT_TENANT, "made-here")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.list_policies(DEFAULT_TENANT).await.unwrap().is_empty());
    let p = s.get_pending_by_token("tok-1").await.unwrap().unwrap();
    assert_eq!(
        (p.registered_at, p.request_digest, p.response),
        (None, None, None)
    );
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, before);

    // Once the policy exists, the same token still registers.
    s.put_policy(
        DEFAULT_TENANT,
        "ghost",
        "{\"g\":1}",
        &audit(DEFAULT_TENANT, "policy.put", "ghost"),
        NOW,
    )
    .await
    .unwrap();
    assert_eq!(
        s.commit_registration(&c).await.unwrap(),
        RegistrationOutcome::Created
    );
    let names: Vec<String> = s
        .policies_for_device(DEFAULT_TENANT, "pump-1", None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["ghost", "made-here"]);
    // Attaching an existing policy by name leaves its document alone.
    let g = s
        .get_policy(DEFAULT_TENANT, "ghost")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((g.document.as_str(), g.version), ("{\"g\":1}", 1));
}

async fn purging_expired_pending_certificates_reports_only_unregistered_ones(db: Db) {
    let s = db.store.as_ref();
    s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
        .await
        .unwrap();
    let a = pending(DEFAULT_TENANT, "pa", NOW + 10);
    let b = pending(DEFAULT_TENANT, "pb", NOW + 10);
    let c = pending(DEFAULT_TENANT, "pc", NOW + 100);
    let e = pending("acme", "pe", NOW + 5);
    for (p, tok) in [(&a, "tok-a"), (&b, "tok-b"), (&c, "tok-c"), (&e, "tok-e")] {
        s.create_pending_certificate(p, tok).await.unwrap();
    }
    // pb is registered (its row stays for replays until the token expires).
    assert_eq!(
        s.commit_registration(&registration(
            plan("pump-b", &[], &[], "pump"),
            "SNB",
            "pb",
            Some(ownership("tok-b", "db")),
        ))
        .await
        .unwrap(),
        RegistrationOutcome::Created
    );
    let defaults_before = audit_count(s, DEFAULT_TENANT).await;
    let acme_before = audit_count(s, "acme").await;

    // Nothing has expired yet.
    assert!(s.purge_expired_pending(NOW + 4).await.unwrap().is_empty());
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, defaults_before);

    let mut purged = s.purge_expired_pending(NOW + 10).await.unwrap();
    purged.sort_by(|x, y| x.serial.cmp(&y.serial));
    assert_eq!(purged, [a, e]);
    for tok in ["tok-a", "tok-b", "tok-e"] {
        assert!(
            s.get_pending_by_token(tok).await.unwrap().is_none(),
            "{tok}"
        );
    }
    assert_eq!(s.get_pending_by_token("tok-c").await.unwrap(), Some(c));
    // The registered certificate itself is untouched.
    assert_eq!(
        s.get_certificate("pb").await.unwrap().unwrap().status,
        CertStatus::Active
    );

    let expired = |tenant: &'static str| async move {
        s.query_audit(
            tenant,
            &AuditQuery {
                action: Some("certificate.pending_expired".into()),
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    };
    let d = expired(DEFAULT_TENANT).await;
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].target.as_str(), d[0].actor.as_str(), d[0].at),
        ("certificate:pa", "system", NOW + 10)
    );
    assert_eq!(d[0].outcome, Outcome::Success);
    let x = expired("acme").await;
    assert_eq!(x.len(), 1);
    assert_eq!(x[0].target, "certificate:pe");
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, defaults_before + 1);
    assert_eq!(audit_count(s, "acme").await, acme_before + 1);

    // Purging again finds nothing and writes nothing.
    assert!(s.purge_expired_pending(NOW + 10).await.unwrap().is_empty());
    assert_eq!(audit_count(s, DEFAULT_TENANT).await, defaults_before + 1);
    // A retry of pb's registration after the purge is refused.
    assert!(matches!(
        s.commit_registration(&registration(
            plan("pump-b", &[], &[], "pump"),
            "SNB",
            "pb",
            Some(ownership("tok-b", "db")),
        ))
        .await
        .unwrap_err(),
        StoreError::TokenNotUsable
    ));
}

async fn registered_cas_are_listed_per_tenant_and_updated(db: Db) {
    let s = db.store.as_ref();
    s.create_tenant("acme", &audit("acme", "tenant.create", "acme"), NOW)
        .await
        .unwrap();
    let ca1 = registered_ca("ca1", DEFAULT_TENANT, NOW);
    let ca2 = registered_ca("ca2", "acme", NOW + 1);
    let ca3 = registered_ca("ca3", DEFAULT_TENANT, NOW + 2);
    for ca in [&ca1, &ca2, &ca3] {
        s.register_ca(ca, &audit(&ca.tenant, "ca.register", &ca.id))
            .await
            .unwrap();
    }
    let err = s
        .register_ca(&ca1, &audit(DEFAULT_TENANT, "ca.register", "ca1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let ghost = registered_ca("ca9", "nowhere", NOW);
    assert!(matches!(
        s.register_ca(&ghost, &audit("nowhere", "ca.register", "ca9"))
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(s.get_registered_ca("ca1").await.unwrap(), Some(ca1.clone()));
    assert!(s.get_registered_ca("ca9").await.unwrap().is_none());
    let ids = |v: Vec<RegisteredCa>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list_registered_cas(Some(DEFAULT_TENANT)).await.unwrap()),
        ["ca1", "ca3"]
    );
    assert_eq!(
        ids(s.list_registered_cas(Some("acme")).await.unwrap()),
        ["ca2"]
    );
    assert!(
        s.list_registered_cas(Some("other"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_registered_cas(None).await.unwrap(),
        [ca1.clone(), ca2.clone(), ca3.clone()]
    );

    let mut changed = ca1.clone();
    changed.status = CaStatus::Inactive;
    changed.auto_registration = false;
    changed.template = Some("jitp-t".into());
    changed.updated_at = NOW + 50;
    s.update_registered_ca(&changed, &audit(DEFAULT_TENANT, "ca.update", "ca1"))
        .await
        .unwrap();
    assert_eq!(
        s.get_registered_ca("ca1").await.unwrap(),
        Some(changed.clone())
    );
    changed.status = CaStatus::Revoked;
    changed.template = None;
    changed.updated_at = NOW + 60;
    s.update_registered_ca(&changed, &audit(DEFAULT_TENANT, "ca.update", "ca1"))
        .await
        .unwrap();
    assert_eq!(
        s.get_registered_ca("ca1").await.unwrap(),
        Some(changed.clone())
    );

    let mut missing = ca3.clone();
    missing.id = "ca9".into();
    let err = s
        .update_registered_ca(&missing, &audit(DEFAULT_TENANT, "ca.update", "ca9"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    // Another tenant's CA is not found either, and stays as it was.
    let mut foreign = ca2.clone();
    foreign.tenant = DEFAULT_TENANT.into();
    foreign.status = CaStatus::Revoked;
    let err = s
        .update_registered_ca(&foreign, &audit(DEFAULT_TENANT, "ca.update", "ca2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(s.get_registered_ca("ca2").await.unwrap(), Some(ca2));
    assert_eq!(
        audit_actions(s, DEFAULT_TENANT).await,
        ["ca.register", "ca.register", "ca.update", "ca.update"]
    );
}

async fn jitp_registration_records_the_issuing_ca(db: Db) {
    let s = db.store.as_ref();
    s.register_ca(
        &registered_ca("ca1", DEFAULT_TENANT, NOW),
        &audit(DEFAULT_TENANT, "ca.register", "ca1"),
    )
    .await
    .unwrap();
    let mut c = registration(
        plan("cam-1", &[("vendor", "acme")], &["cams"], "camera"),
        "CSN1",
        "m1",
        None,
    );
    c.issuer_ca = Some("ca1".into());
    c.audit = audit(DEFAULT_TENANT, "jitp.register", "cam-1");
    assert_eq!(
        s.commit_registration(&c).await.unwrap(),
        RegistrationOutcome::Created
    );
    let crt = s
        .get_certificate_by_fingerprint("fp-m1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(crt.issuer_ca.as_deref(), Some("ca1"));
    assert_eq!(
        (crt.status, crt.thing_name.as_str()),
        (CertStatus::Active, "cam-1")
    );
    assert_eq!(certs_of(s, "cam-1").await, std::slice::from_ref(&crt));
    let d = s
        .get_device(DEFAULT_TENANT, "cam-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.status, DeviceStatus::Active);
    assert_eq!(d.device_class.as_deref(), Some("camera"));

    // The same certificate presented again is a conflict, and the failed
    // attempt does not supersede the certificate already registered.
    let err = s.commit_registration(&c).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(s.get_certificate("m1").await.unwrap(), Some(crt));

    // A template may register the certificate switched off.
    let mut off = registration(plan("cam-2", &[], &[], "camera"), "CSN2", "m2", None);
    off.issuer_ca = Some("ca1".into());
    off.certificate_status = CertStatus::Inactive;
    assert_eq!(
        s.commit_registration(&off).await.unwrap(),
        RegistrationOutcome::Created
    );
    let crt = s
        .get_certificate_by_fingerprint("fp-m2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (crt.status, crt.issuer_ca.as_deref()),
        (CertStatus::Inactive, Some("ca1"))
    );
    // Onramp's own CA: no issuer recorded.
    let own = registration(plan("cam-3", &[], &[], "camera"), "CSN3", "m3", None);
    s.commit_registration(&own).await.unwrap();
    assert_eq!(
        s.get_certificate("m3").await.unwrap().unwrap().issuer_ca,
        None
    );
    assert_eq!(
        audit_actions(s, DEFAULT_TENANT).await,
        [
            "ca.register",
            "jitp.register",
            "provisioning.register",
            "provisioning.register"
        ]
    );
}

async fn concurrent_register_thing_with_one_token_registers_once(db: Db) {
    let s = db.store.clone();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p1", NOW + 3600), "tok-1")
        .await
        .unwrap();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p2", NOW + 3600), "tok-2")
        .await
        .unwrap();
    // Retries of one request: one registers, the others get its reply.
    let mut handles = Vec::new();
    for _ in 0..6 {
        let s = s.clone();
        let c = registration(
            plan("pump-1", &[("site", "berlin")], &["g1"], "pump"),
            "SN1",
            "p1",
            Some(ownership("tok-1", "d1")),
        );
        handles.push(tokio::spawn(async move { s.commit_registration(&c).await }));
    }
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.await.unwrap().unwrap());
    }
    let created = outcomes
        .iter()
        .filter(|o| **o == RegistrationOutcome::Created)
        .count();
    let replayed = outcomes
        .iter()
        .filter(|o| **o == RegistrationOutcome::Replayed("response-d1".into()))
        .count();
    assert_eq!((created, replayed), (1, 5), "{outcomes:?}");
    assert_eq!(certs_of(s.as_ref(), "pump-1").await.len(), 1);

    // Different requests with one token: exactly one wins.
    let mut handles = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        let c = registration(
            plan(&format!("valve-{i}"), &[], &[], "valve"),
            &format!("SV{i}"),
            "p2",
            Some(ownership("tok-2", &format!("d{i}"))),
        );
        handles.push(tokio::spawn(async move { s.commit_registration(&c).await }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(RegistrationOutcome::Created) => ok += 1,
            Err(StoreError::TokenNotUsable) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 1);
    let valves = s
        .list_devices(
            DEFAULT_TENANT,
            &DeviceFilter {
                device_class: Some("valve".into()),
                ..Default::default()
            },
            &Page::new(None, None),
        )
        .await
        .unwrap();
    assert_eq!(valves.len(), 1);
    assert_eq!(
        s.get_certificate("p2").await.unwrap().unwrap().thing_name,
        valves[0].thing_name
    );
}

/// The identity-change feed is read by position, not by time: a revocation
/// whose transaction commits seconds after it was written (a held lock, a
/// slow disk) is still seen, once. On PostgreSQL a later revocation that
/// commits first is seen first, and the earlier one after it.
async fn a_revocation_that_commits_late_is_seen_exactly_once(db: Db) {
    use sqlx::Executor;
    let s = db.store.as_ref();
    for (thing, serial, crt) in [("dev1", "SN1", "c1"), ("dev2", "SN2", "c2")] {
        s.commit_enrolment(&enrolment(thing, serial, None, crt))
            .await
            .unwrap();
    }
    let cut = |thing: &str, serial: &str| RevokedIdentity {
        tenant: DEFAULT_TENANT.into(),
        thing_name: thing.into(),
        certificate_serial: Some(serial.into()),
    };
    let mut cursor = s.identity_change_head().await.unwrap();
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let mut slow = raw.acquire().await.unwrap();
    let sqlite = db.url.starts_with("sqlite:");
    slow.execute(if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" })
        .await
        .unwrap();
    slow.execute("UPDATE certificates SET status = 'revoked', revoked_at = 1 WHERE serial = 'c1'")
        .await
        .unwrap();
    assert!(s.identity_changes(&mut cursor).await.unwrap().is_empty());
    if !sqlite {
        // SQLite has one writer at a time; PostgreSQL lets this one commit first.
        s.revoke_certificate(
            DEFAULT_TENANT,
            "c2",
            "keyCompromise",
            &audit(DEFAULT_TENANT, "certificate.revoke", "c2"),
            NOW,
        )
        .await
        .unwrap();
        assert_eq!(
            s.identity_changes(&mut cursor).await.unwrap(),
            [cut("dev2", "c2")]
        );
    }
    // Longer than any look-back window a time-based reader would use.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(s.identity_changes(&mut cursor).await.unwrap().is_empty());
    slow.execute("COMMIT").await.unwrap();
    assert_eq!(
        s.identity_changes(&mut cursor).await.unwrap(),
        [cut("dev1", "c1")]
    );
    assert!(s.identity_changes(&mut cursor).await.unwrap().is_empty());
    // A reader that starts now sees none of it again.
    let mut fresh = s.identity_change_head().await.unwrap();
    assert!(s.identity_changes(&mut fresh).await.unwrap().is_empty());
}

async fn a_revoked_claim_or_a_deactivated_ca_cuts_its_identities(db: Db) {
    let s = db.store.as_ref();
    s.create_claim_certificate(
        &claim(DEFAULT_TENANT, "c1", NOW + 1000, NOW),
        &audit(DEFAULT_TENANT, "claim.create", "c1"),
    )
    .await
    .unwrap();
    let ca = registered_ca("ca1", DEFAULT_TENANT, NOW);
    s.register_ca(&ca, &audit(DEFAULT_TENANT, "ca.register", "ca1"))
        .await
        .unwrap();
    let mut cursor = s.identity_change_head().await.unwrap();
    for (thing, serial, crt) in [("cam-1", "CSN1", "m1"), ("cam-2", "CSN2", "m2")] {
        let mut c = registration(plan(thing, &[], &[], "camera"), serial, crt, None);
        c.issuer_ca = Some("ca1".into());
        s.commit_registration(&c).await.unwrap();
    }
    // cam-2's certificate is revoked already: nothing more to cut for it.
    s.revoke_certificate(
        DEFAULT_TENANT,
        "m2",
        "keyCompromise",
        &audit(DEFAULT_TENANT, "certificate.revoke", "m2"),
        NOW + 1,
    )
    .await
    .unwrap();
    assert_eq!(
        s.identity_changes(&mut cursor).await.unwrap(),
        [RevokedIdentity {
            tenant: DEFAULT_TENANT.into(),
            thing_name: "cam-2".into(),
            certificate_serial: Some("m2".into()),
        }]
    );
    assert!(s.identity_changes(&mut cursor).await.unwrap().is_empty());

    s.revoke_claim_certificate(
        DEFAULT_TENANT,
        "c1",
        None,
        &audit(DEFAULT_TENANT, "claim.revoke", "c1"),
        NOW + 10,
    )
    .await
    .unwrap();
    assert_eq!(
        s.identity_changes(&mut cursor).await.unwrap(),
        [RevokedIdentity {
            tenant: DEFAULT_TENANT.into(),
            thing_name: format!("{}c1", onramp_domain::provisioning::CLAIM_IDENTITY_PREFIX),
            certificate_serial: Some("c1".into()),
        }]
    );

    let mut off = ca.clone();
    off.status = CaStatus::Inactive;
    off.updated_at = NOW + 20;
    s.update_registered_ca(&off, &audit(DEFAULT_TENANT, "ca.update", "ca1"))
        .await
        .unwrap();
    assert_eq!(
        s.identity_changes(&mut cursor).await.unwrap(),
        [RevokedIdentity {
            tenant: DEFAULT_TENANT.into(),
            thing_name: "cam-1".into(),
            certificate_serial: Some("m1".into()),
        }]
    );
    // Switching auto-registration off alone keeps the CA trusted.
    let mut on = ca.clone();
    on.auto_registration = false;
    on.updated_at = NOW + 30;
    s.update_registered_ca(&on, &audit(DEFAULT_TENANT, "ca.update", "ca1"))
        .await
        .unwrap();
    assert!(s.identity_changes(&mut cursor).await.unwrap().is_empty());
}

async fn re_registration_keeps_attributes_the_template_leaves_alone(db: Db) {
    let s = db.store.as_ref();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p1", NOW + 3600), "tok-1")
        .await
        .unwrap();
    s.create_pending_certificate(&pending(DEFAULT_TENANT, "p2", NOW + 3600), "tok-2")
        .await
        .unwrap();
    let first = registration(
        plan("pump-1", &[], &[], "pump"),
        "SN1",
        "p1",
        Some(ownership("tok-1", "d1")),
    );
    s.commit_registration(&first).await.unwrap();
    s.patch_device_attributes(
        DEFAULT_TENANT,
        "pump-1",
        &json(serde_json::json!({"floor": 3, "tags": ["a"], "ok": true})),
        &audit("default", "device.patch", "pump-1"),
        NOW,
    )
    .await
    .unwrap();
    let mut thing = plan("pump-1", &[("site", "berlin")], &[], "pump");
    thing.overrides.attribute_payload = OverrideSetting::Merge;
    let second = registration(thing, "SN1", "p2", Some(ownership("tok-2", "d2")));
    assert_eq!(
        s.commit_registration(&second).await.unwrap(),
        RegistrationOutcome::Updated
    );
    let d = s
        .get_device(DEFAULT_TENANT, "pump-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        d.attributes,
        json(serde_json::json!({"floor": 3, "tags": ["a"], "ok": true, "site": "berlin"}))
    );
}

async fn concurrent_merging_re_registrations_lose_nothing(db: Db) {
    let s = db.store.clone();
    for round in 0..10 {
        let thing = format!("pump-{round}");
        let serial = format!("SN{round}");
        let p0 = format!("r{round}-0");
        s.create_pending_certificate(&pending(DEFAULT_TENANT, &p0, NOW + 3600), &format!("t{p0}"))
            .await
            .unwrap();
        let base = registration(
            plan(&thing, &[("base", "1")], &[], "pump"),
            &serial,
            &p0,
            Some(ownership(&format!("t{p0}"), "d0")),
        );
        s.commit_registration(&base).await.unwrap();
        let mut handles = Vec::new();
        for side in ["a", "b"] {
            let p = format!("r{round}-{side}");
            s.create_pending_certificate(
                &pending(DEFAULT_TENANT, &p, NOW + 3600),
                &format!("t{p}"),
            )
            .await
            .unwrap();
            let mut t = plan(&thing, &[(side, "1")], &[side], "pump");
            t.overrides.attribute_payload = OverrideSetting::Merge;
            t.overrides.thing_groups = OverrideSetting::Merge;
            let c = registration(t, &serial, &p, Some(ownership(&format!("t{p}"), side)));
            let s = s.clone();
            handles.push(tokio::spawn(async move { s.commit_registration(&c).await }));
        }
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let d = s.get_device(DEFAULT_TENANT, &thing).await.unwrap().unwrap();
        assert_eq!(
            d.attributes,
            json(serde_json::json!({"base": "1", "a": "1", "b": "1"})),
            "round {round}"
        );
        let mut groups = d.thing_groups.clone();
        groups.sort();
        assert_eq!(groups, ["a", "b"], "round {round}");
    }
}

async fn presence_is_written_in_batches(db: Db) {
    let s = db.store.as_ref();
    for (thing, serial) in [("d1", "S1"), ("d2", "S2"), ("d3", "S3")] {
        s.commit_enrolment(&enrolment(thing, serial, None, &format!("c-{thing}")))
            .await
            .unwrap();
    }
    let batch = vec![
        (DEFAULT_TENANT.to_string(), "d1".to_string(), true),
        (DEFAULT_TENANT.to_string(), "d2".to_string(), true),
        (DEFAULT_TENANT.to_string(), "nobody".to_string(), true),
        ("other".to_string(), "d3".to_string(), true),
    ];
    s.set_devices_connected(&batch, NOW + 5).await.unwrap();
    let seen = |t: &'static str| async move {
        s.get_device(DEFAULT_TENANT, t)
            .await
            .unwrap()
            .unwrap()
            .last_seen_at
    };
    assert_eq!(seen("d1").await, Some(NOW + 5));
    assert_eq!(seen("d2").await, Some(NOW + 5));
    assert_eq!(
        seen("d3").await,
        None,
        "another tenant's thing of the same name is untouched"
    );
    // Larger than one statement's chunk.
    let many: Vec<(String, String, bool)> = (0..700)
        .map(|i| (DEFAULT_TENANT.to_string(), format!("x{i}"), i % 2 == 0))
        .chain(std::iter::once((
            DEFAULT_TENANT.to_string(),
            "d3".to_string(),
            false,
        )))
        .collect();
    s.set_devices_connected(&many, NOW + 9).await.unwrap();
    assert_eq!(seen("d3").await, Some(NOW + 9));
}

async fn a_consumed_token_records_the_certificate_and_key_it_produced(db: Db) {
    let s = db.store.as_ref();
    s.create_token(
        &token("t1", "SN1", "thing-1"),
        &audit(DEFAULT_TENANT, "token.create", "t1"),
        NOW,
    )
    .await
    .unwrap();
    assert!(
        s.token_enrolment("t1").await.unwrap().is_none(),
        "an unused token produced nothing"
    );
    assert!(s.token_enrolment("no-such-token").await.unwrap().is_none());
    s.commit_enrolment(&enrolment("thing-1", "SN1", Some("t1"), "c1"))
        .await
        .unwrap();
    let record = s.token_enrolment("t1").await.unwrap().expect("recorded");
    assert_eq!(record.used_at, NOW);
    assert_eq!(record.public_key_sha256, "key-c1");
    assert_eq!(record.certificate.serial, "c1");
    assert_eq!(record.certificate.pem, "PEM c1");
    assert_eq!(record.certificate.status, CertStatus::Active);
    // A second use is refused and does not overwrite what the first produced.
    let again = s
        .commit_enrolment(&enrolment("thing-1", "SN1", Some("t1"), "c2"))
        .await;
    assert!(
        matches!(again, Err(StoreError::TokenNotUsable)),
        "{again:?}"
    );
    let record = s.token_enrolment("t1").await.unwrap().expect("recorded");
    assert_eq!(record.certificate.serial, "c1");
    assert_eq!(record.public_key_sha256, "key-c1");
    assert!(s.get_certificate("c2").await.unwrap().is_none());
    // The record follows the certificate's standing.
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c1",
        "keyCompromise",
        &audit(DEFAULT_TENANT, "cert.revoke", "c1"),
        NOW + 1,
    )
    .await
    .unwrap();
    let record = s.token_enrolment("t1").await.unwrap().expect("recorded");
    assert_eq!(record.certificate.status, CertStatus::Revoked);
}

/// A second store on the same database (the CLI beside the server) writes
/// while this one runs transactions that read before they write: every call
/// of both must succeed, none may fail on a locked database.
async fn a_second_writer_beside_the_store_waits_instead_of_failing(db: Db) {
    let first = db.store.clone();
    let second = open(&db.url).await.unwrap();
    for i in 0..20 {
        first
            .create_token(
                &token(&format!("t{i}"), &format!("SN{i}"), &format!("d{i}")),
                &audit(DEFAULT_TENANT, "token.create", "t"),
                NOW,
            )
            .await
            .unwrap();
        first
            .commit_enrolment(&enrolment(
                &format!("d{i}"),
                &format!("SN{i}"),
                Some(&format!("t{i}")),
                &format!("c{i}"),
            ))
            .await
            .unwrap();
    }
    let mut handles = Vec::new();
    for i in 0..20 {
        let s = first.clone();
        handles.push(tokio::spawn(async move {
            let thing = format!("d{i}");
            for round in 0..5 {
                s.transition_device(
                    DEFAULT_TENANT,
                    &thing,
                    LifecycleAction::Suspend,
                    &audit(DEFAULT_TENANT, "device.suspend", &thing),
                    NOW + round,
                )
                .await
                .map_err(|e| format!("suspend {thing}: {e}"))?;
                s.transition_device(
                    DEFAULT_TENANT,
                    &thing,
                    LifecycleAction::Reactivate,
                    &audit(DEFAULT_TENANT, "device.reactivate", &thing),
                    NOW + round,
                )
                .await
                .map_err(|e| format!("reactivate {thing}: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for i in 0..20 {
        let s = second.clone();
        handles.push(tokio::spawn(async move {
            s.allowlist_add(
                DEFAULT_TENANT,
                &[format!("A{i}")],
                &audit(DEFAULT_TENANT, "allowlist.add", "a"),
                NOW,
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("allowlist add A{i}: {e}"))
        }));
    }
    let failures: Vec<String> = {
        let mut f = Vec::new();
        for h in handles {
            if let Err(e) = h.await.unwrap() {
                f.push(e);
            }
        }
        f
    };
    assert!(failures.is_empty(), "{failures:?}");
    for i in 0..20 {
        assert_eq!(
            first
                .get_device(DEFAULT_TENANT, &format!("d{i}"))
                .await
                .unwrap()
                .unwrap()
                .status,
            DeviceStatus::Active
        );
        assert!(
            first
                .allowlist_contains(DEFAULT_TENANT, &format!("A{i}"))
                .await
                .unwrap()
        );
    }
}

// ---- periodic tasks shared by the nodes of one database ----

async fn a_scheduled_task_runs_once_per_period_and_a_dead_holders_lease_passes_on(db: Db) {
    use onramp_store::TaskClaim;
    let s = &*db.store;
    let t0 = 1_000_000;
    // A new task is due at once; while node a holds it, b is told to wait.
    assert_eq!(
        s.claim_task("purge", "a", t0, 60, 30).await.unwrap(),
        TaskClaim::Won
    );
    assert_eq!(
        s.claim_task("purge", "b", t0 + 1, 60, 30).await.unwrap(),
        TaskClaim::NotBefore(t0 + 30)
    );
    assert!(s.finish_task("purge", "a", t0 + 2).await.unwrap());
    // Finished: not due again until one period after the run.
    assert_eq!(
        s.claim_task("purge", "b", t0 + 3, 60, 30).await.unwrap(),
        TaskClaim::NotBefore(t0 + 62)
    );
    assert_eq!(
        s.claim_task("purge", "b", t0 + 62, 60, 30).await.unwrap(),
        TaskClaim::Won
    );
    // b dies while running: a may not take over before the lease ends, then does.
    assert_eq!(
        s.claim_task("purge", "a", t0 + 80, 60, 30).await.unwrap(),
        TaskClaim::NotBefore(t0 + 92)
    );
    assert_eq!(
        s.claim_task("purge", "a", t0 + 92, 60, 30).await.unwrap(),
        TaskClaim::Won
    );
    // The dead holder's late finish does not count: a's lease stands.
    assert!(!s.finish_task("purge", "b", t0 + 93).await.unwrap());
    assert!(s.finish_task("purge", "a", t0 + 94).await.unwrap());
    // Tasks are independent of each other.
    assert_eq!(
        s.claim_task("compact", "b", t0 + 95, 600, 30)
            .await
            .unwrap(),
        TaskClaim::Won
    );
}

async fn concurrent_claims_of_a_due_task_have_exactly_one_winner(db: Db) {
    use onramp_store::TaskClaim;
    let store = db.store.clone();
    // Create the row first so every claimant races on the same UPDATE.
    assert_eq!(
        store.claim_task("race", "setup", 10, 1, 1).await.unwrap(),
        TaskClaim::Won
    );
    assert!(store.finish_task("race", "setup", 10).await.unwrap());
    let mut handles = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .claim_task("race", &format!("node-{i}"), 100, 60, 30)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for h in handles {
        if h.await.unwrap() == TaskClaim::Won {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

// ---- jobs ----

fn job_record(job_id: &str) -> JobRecord {
    JobRecord {
        tenant: DEFAULT_TENANT.into(),
        job_id: job_id.into(),
        status: "IN_PROGRESS".into(),
        description: None,
        document: "{}".into(),
        config: "{}".into(),
        targets: "{}".into(),
        target_selection: "SNAPSHOT".into(),
        created_by: "test".into(),
        created_at: NOW,
        updated_at: NOW,
        completed_at: None,
    }
}

fn in_progress(e: &onramp_domain::job::JobExecution) -> onramp_domain::job::JobExecution {
    let mut next = e.clone();
    next.status = onramp_domain::job::JobExecutionStatus::InProgress;
    next.version = e.version + 1;
    next
}

fn write(
    e: onramp_domain::job::JobExecution,
    expected_version: Option<u64>,
    retry: Option<onramp_domain::job::JobExecution>,
) -> ExecutionWrite {
    ExecutionWrite {
        tenant: DEFAULT_TENANT.into(),
        execution: e,
        expected_version,
        retry,
    }
}

async fn stored_execution(s: &dyn Store, thing: &str, n: u64) -> onramp_domain::job::JobExecution {
    s.thing_executions(DEFAULT_TENANT, thing, Some("g"))
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.execution_number == n)
        .unwrap_or_else(|| panic!("no execution {n} on {thing}"))
}

async fn a_group_of_execution_writes_answers_each_write_on_its_own(db: Db) {
    use onramp_domain::job::{JobExecution, JobExecutionStatus};
    let store = db.store.clone();
    let things = ["t1", "t2", "t3", "t4", "t5"];
    let queued: Vec<JobExecution> = things
        .iter()
        .map(|t| JobExecution::queued("g", t, NOW))
        .collect();
    store
        .create_job(
            &job_record("g"),
            &queued,
            &[],
            &audit(DEFAULT_TENANT, "job.create", "job:g"),
        )
        .await
        .unwrap();
    let mut retry = JobExecution::queued("g", "t3", NOW + 1);
    retry.execution_number = 2;
    // A retry whose number is taken: that write fails on its own.
    let mut clashing = JobExecution::queued("g", "t5", NOW + 1);
    clashing.execution_number = 1;
    let mut failed = in_progress(&queued[4]);
    failed.status = JobExecutionStatus::Failed;
    let results = store
        .save_executions(&[
            write(in_progress(&queued[0]), Some(1), None),
            // A stale version: VersionMismatch for this write alone.
            write(in_progress(&queued[1]), Some(7), None),
            write(in_progress(&queued[2]), Some(1), Some(retry.clone())),
            // An insert of an execution that exists: another writer was first.
            write(queued[3].clone(), None, None),
            write(failed, Some(1), Some(clashing)),
            write(JobExecution::queued("g", "t6", NOW), None, None),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 6);
    assert!(matches!(results[0], Ok(true)), "{:?}", results[0]);
    assert!(matches!(results[1], Ok(false)), "{:?}", results[1]);
    assert!(matches!(results[2], Ok(true)), "{:?}", results[2]);
    assert!(matches!(results[3], Ok(false)), "{:?}", results[3]);
    assert!(results[4].is_err(), "{:?}", results[4]);
    assert!(matches!(results[5], Ok(true)), "{:?}", results[5]);
    let s = store.as_ref();
    assert_eq!(stored_execution(s, "t1", 1).await.version, 2);
    assert_eq!(
        stored_execution(s, "t1", 1).await.status,
        JobExecutionStatus::InProgress
    );
    assert_eq!(stored_execution(s, "t2", 1).await, queued[1]);
    assert_eq!(stored_execution(s, "t3", 1).await.version, 2);
    assert_eq!(stored_execution(s, "t3", 2).await, retry);
    assert_eq!(stored_execution(s, "t4", 1).await, queued[3]);
    // The failed write left nothing behind, not even its first statement.
    assert_eq!(stored_execution(s, "t5", 1).await, queued[4]);
    assert_eq!(
        stored_execution(s, "t6", 1).await.status,
        JobExecutionStatus::Queued
    );
    assert!(store.save_executions(&[]).await.unwrap().is_empty());
}

async fn concurrent_execution_writes_each_get_their_own_answer(db: Db) {
    use onramp_domain::job::{JobExecution, JobExecutionStatus};
    let store = db.store.clone();
    let queued: Vec<JobExecution> = (0..64)
        .map(|i| JobExecution::queued("g", &format!("c{i:02}"), NOW))
        .collect();
    store
        .create_job(
            &job_record("g"),
            &queued,
            &[],
            &audit(DEFAULT_TENANT, "job.create", "job:g"),
        )
        .await
        .unwrap();
    // Every third write names a stale version; the others are current.
    let mut handles = Vec::new();
    for (i, e) in queued.iter().enumerate() {
        let store = store.clone();
        let next = in_progress(e);
        let expected = if i % 3 == 0 { 5 } else { 1 };
        handles.push(tokio::spawn(async move {
            store
                .save_execution(DEFAULT_TENANT, &next, Some(expected), None)
                .await
                .unwrap()
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i % 3 != 0, "write {i}");
    }
    for (i, e) in queued.iter().enumerate() {
        let stored = stored_execution(store.as_ref(), &e.thing_name, 1).await;
        let want = if i % 3 == 0 {
            JobExecutionStatus::Queued
        } else {
            JobExecutionStatus::InProgress
        };
        assert_eq!(stored.status, want, "{}", e.thing_name);
    }
}

/// Makes every transaction that updates the execution of thing `doomed`
/// fail at COMMIT (a deferred constraint), outside the store's own code.
async fn doom_commits_touching(url: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let ddl = if url.starts_with("sqlite:") {
        "CREATE TABLE commit_guard_parent (id INTEGER PRIMARY KEY); \
         CREATE TABLE commit_guard (parent INTEGER REFERENCES commit_guard_parent (id) \
           DEFERRABLE INITIALLY DEFERRED); \
         CREATE TRIGGER commit_guard_doom AFTER UPDATE ON job_executions \
           WHEN NEW.thing_name = 'doomed' \
           BEGIN INSERT INTO commit_guard (parent) VALUES (1); END;"
    } else {
        "CREATE FUNCTION commit_guard_doom() RETURNS trigger LANGUAGE plpgsql AS $$ \
           BEGIN IF NEW.thing_name = 'doomed' THEN RAISE EXCEPTION 'doomed at commit'; END IF; \
           RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER commit_guard_doom AFTER UPDATE ON job_executions \
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_guard_doom();"
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn a_group_whose_commit_fails_writes_none_and_fails_every_write(db: Db) {
    use onramp_domain::job::JobExecution;
    let store = db.store.clone();
    let queued: Vec<JobExecution> = ["a1", "doomed", "a2"]
        .iter()
        .map(|t| JobExecution::queued("g", t, NOW))
        .collect();
    store
        .create_job(
            &job_record("g"),
            &queued,
            &[],
            &audit(DEFAULT_TENANT, "job.create", "job:g"),
        )
        .await
        .unwrap();
    doom_commits_touching(&db.url).await;
    let mut retry = JobExecution::queued("g", "a2", NOW + 1);
    retry.execution_number = 2;
    let err = store
        .save_executions(&[
            write(in_progress(&queued[0]), Some(1), None),
            write(in_progress(&queued[1]), Some(1), None),
            write(in_progress(&queued[2]), Some(1), Some(retry)),
        ])
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    // Nothing of the group was written: each execution is as it was.
    for e in &queued {
        assert_eq!(&stored_execution(store.as_ref(), &e.thing_name, 1).await, e);
    }
    let pending = store
        .thing_executions(DEFAULT_TENANT, "a2", None)
        .await
        .unwrap();
    assert_eq!(
        pending,
        vec![queued[2].clone()],
        "the retry was not written"
    );
    // Concurrent single writes that share a doomed transaction fail together
    // and none is written; alone, a write that does not touch `doomed` goes
    // through. Which writes share a transaction depends on timing, so the
    // rule checked is: a write answered true is stored, one answered with an
    // error is not.
    let mut handles = Vec::new();
    for e in &queued {
        let store = store.clone();
        let next = in_progress(e);
        handles.push(tokio::spawn(async move {
            let r = store
                .save_execution(DEFAULT_TENANT, &next, Some(1), None)
                .await;
            (next.thing_name.clone(), r)
        }));
    }
    for h in handles {
        let (thing, r) = h.await.unwrap();
        let stored = stored_execution(store.as_ref(), &thing, 1).await;
        match r {
            Ok(true) => {
                assert_ne!(thing, "doomed");
                assert_eq!(stored.version, 2, "{thing}: answered true but not stored");
            }
            Ok(false) => panic!("{thing}: no other writer, yet a version mismatch"),
            Err(_) => assert_eq!(stored.version, 1, "{thing}: answered an error but stored"),
        }
    }
    assert_eq!(
        stored_execution(store.as_ref(), "doomed", 1).await.version,
        1
    );
}

async fn concurrent_writes_of_one_job_execution_have_exactly_one_winner(db: Db) {
    use onramp_domain::job::{JobExecution, JobExecutionStatus};
    let store = db.store.clone();
    let queued = JobExecution::queued("j1", "t1", NOW);
    store
        .create_job(
            &job_record("j1"),
            std::slice::from_ref(&queued),
            &[],
            &audit(DEFAULT_TENANT, "job.create", "job:j1"),
        )
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..8u64 {
        let store = store.clone();
        let mut next = queued.clone();
        next.status = JobExecutionStatus::InProgress;
        next.version = 2;
        next.status_details.insert("writer".into(), i.to_string());
        handles.push(tokio::spawn(async move {
            store
                .save_execution(DEFAULT_TENANT, &next, Some(1), None)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for h in handles {
        if h.await.unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    let stored = store
        .thing_executions(DEFAULT_TENANT, "t1", Some("j1"))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].version, 2);
    assert_eq!(stored[0].status, JobExecutionStatus::InProgress);
    // A stale version writes nothing.
    let mut stale = stored[0].clone();
    stale.status = JobExecutionStatus::Succeeded;
    stale.version = 3;
    assert!(
        !store
            .save_execution(DEFAULT_TENANT, &stale, Some(1), None)
            .await
            .unwrap()
    );
    // A retry is inserted with the change, in one transaction.
    let mut retry = JobExecution::queued("j1", "t1", NOW + 1);
    retry.execution_number = 2;
    assert!(
        store
            .save_execution(DEFAULT_TENANT, &stale, Some(2), Some(&retry))
            .await
            .unwrap()
    );
    let pending = store
        .thing_executions(DEFAULT_TENANT, "t1", None)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].execution_number, 2);
}

async fn a_paced_release_queues_each_waiting_target_once_and_stops_with_the_job(db: Db) {
    let store = db.store.clone();
    let waiting: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    store
        .create_job(
            &job_record("paced"),
            &[],
            &waiting,
            &audit(DEFAULT_TENANT, "job.create", "job:paced"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.jobs_awaiting_release().await.unwrap(),
        vec![(DEFAULT_TENANT.to_string(), "paced".to_string())]
    );
    // Four releases computed from the same pace race: exactly one goes out.
    let mut handles = Vec::new();
    for i in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .release_job_targets(DEFAULT_TENANT, "paced", 3, NOW, None, &format!("s{i}"))
                .await
                .unwrap()
        }));
    }
    let mut released = Vec::new();
    let mut winners = 0;
    for h in handles {
        if let Some(batch) = h.await.unwrap() {
            winners += 1;
            released.extend(batch.into_iter().map(|e| e.thing_name));
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(released.len(), 3);
    let won = store
        .rollout_state(DEFAULT_TENANT, "paced")
        .await
        .unwrap()
        .unwrap();
    // A release from a stale pace writes nothing.
    assert_eq!(
        store
            .release_job_targets(DEFAULT_TENANT, "paced", 3, NOW, None, "stale")
            .await
            .unwrap(),
        None
    );
    // Releases that chain the pace take the rest, each thing once.
    let next = store
        .release_job_targets(DEFAULT_TENANT, "paced", 3, NOW, Some(&won), "s-next")
        .await
        .unwrap()
        .unwrap();
    released.extend(next.into_iter().map(|e| e.thing_name));
    let last = store
        .release_job_targets(DEFAULT_TENANT, "paced", 3, NOW, Some("s-next"), "s-last")
        .await
        .unwrap()
        .unwrap();
    released.extend(last.into_iter().map(|e| e.thing_name));
    released.sort();
    assert_eq!(released, waiting);
    assert!(store.jobs_awaiting_release().await.unwrap().is_empty());
    assert!(
        store
            .job_has_open_work(DEFAULT_TENANT, "paced")
            .await
            .unwrap(),
        "queued executions are open work"
    );
    assert_eq!(
        store
            .rollout_state(DEFAULT_TENANT, "paced")
            .await
            .unwrap()
            .as_deref(),
        Some("s-last")
    );
    // A stopped job releases nothing more, and its waiting targets can be dropped.
    store
        .create_job(
            &job_record("stopped"),
            &[],
            &waiting,
            &audit(DEFAULT_TENANT, "job.create", "job:stopped"),
        )
        .await
        .unwrap();
    store
        .set_job_status(DEFAULT_TENANT, "stopped", "CANCELED", NOW, None)
        .await
        .unwrap();
    assert!(
        store
            .release_job_targets(DEFAULT_TENANT, "stopped", 3, NOW, None, "{}")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .drop_waiting_targets(DEFAULT_TENANT, "stopped")
            .await
            .unwrap(),
        7
    );
    assert!(
        !store
            .job_has_open_work(DEFAULT_TENANT, "stopped")
            .await
            .unwrap()
    );
    // A second job with the same id is a conflict and changes nothing.
    let err = store
        .create_job(
            &job_record("paced"),
            &[],
            &[],
            &audit(DEFAULT_TENANT, "job.create", "job:paced"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
}

async fn job_controls_pause_releases_schedule_starts_end_rollouts_and_delete_jobs(db: Db) {
    use onramp_domain::job::JobExecution;
    let store = db.store.clone();
    let a = |action: &str, job: &str| audit(DEFAULT_TENANT, action, &format!("job:{job}"));
    let waiting: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    store
        .create_job(&job_record("p"), &[], &waiting, &a("job.create", "p"))
        .await
        .unwrap();
    assert_eq!(
        store.job_control(DEFAULT_TENANT, "p").await.unwrap(),
        Some(JobControl::default())
    );
    assert_eq!(
        store.job_control(DEFAULT_TENANT, "none").await.unwrap(),
        None
    );
    // Paused: no release goes out, and the job is not offered for release.
    assert!(
        store
            .set_rollout_paused(DEFAULT_TENANT, "p", true, NOW, &a("job.pause", "p"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_rollout_paused(DEFAULT_TENANT, "p", true, NOW, &a("job.pause", "p"))
            .await
            .unwrap(),
        "already paused: nothing written"
    );
    assert!(
        store
            .job_control(DEFAULT_TENANT, "p")
            .await
            .unwrap()
            .unwrap()
            .paused
    );
    assert_eq!(
        store.paused_jobs(DEFAULT_TENANT, "a", "z").await.unwrap(),
        vec!["p".to_string()]
    );
    assert!(store.jobs_awaiting_release().await.unwrap().is_empty());
    assert!(
        store
            .release_job_targets(DEFAULT_TENANT, "p", 2, NOW, None, "s1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .set_rollout_paused(DEFAULT_TENANT, "p", false, NOW, &a("job.resume", "p"))
            .await
            .unwrap()
    );
    assert_eq!(
        store.jobs_awaiting_release().await.unwrap(),
        vec![(DEFAULT_TENANT.to_string(), "p".to_string())]
    );
    let released = store
        .release_job_targets(DEFAULT_TENANT, "p", 2, NOW, None, "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(released.len(), 2);

    // A scheduled job starts once; its rollout ends once, dropping what waits.
    let mut scheduled = job_record("s");
    scheduled.status = "SCHEDULED".into();
    scheduled.config = r#"{"schedulingConfig":{"startTime":1,"endTime":2}}"#.into();
    store
        .create_job(&scheduled, &[], &waiting, &a("job.create", "s"))
        .await
        .unwrap();
    assert!(
        store
            .release_job_targets(DEFAULT_TENANT, "s", 2, NOW, None, "")
            .await
            .unwrap()
            .is_none(),
        "a scheduled job releases nothing"
    );
    let listed = store.scheduled_jobs().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].status, "SCHEDULED");
    assert!(
        store
            .start_scheduled_job(DEFAULT_TENANT, "s", NOW, &a("job.start", "s"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .start_scheduled_job(DEFAULT_TENANT, "s", NOW, &a("job.start", "s"))
            .await
            .unwrap()
    );
    let listed = store.scheduled_jobs().await.unwrap();
    assert_eq!(listed.len(), 1, "its end is still due: {listed:?}");
    assert_eq!(listed[0].status, "IN_PROGRESS");
    assert!(
        store
            .end_job_rollout(DEFAULT_TENANT, "s", NOW, &a("job.schedule_end", "s"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .end_job_rollout(DEFAULT_TENANT, "s", NOW, &a("job.schedule_end", "s"))
            .await
            .unwrap()
    );
    assert!(store.scheduled_jobs().await.unwrap().is_empty());
    assert!(
        store
            .job_control(DEFAULT_TENANT, "s")
            .await
            .unwrap()
            .unwrap()
            .rollout_ended
    );
    assert!(!store.job_has_open_work(DEFAULT_TENANT, "s").await.unwrap());

    // Deletion: only a terminal job, and everything of it goes.
    let before = audit_count(store.as_ref(), DEFAULT_TENANT).await;
    assert!(
        !store
            .delete_job(DEFAULT_TENANT, "p", &a("job.delete", "p"))
            .await
            .unwrap(),
        "an in-progress job is not deleted"
    );
    assert_eq!(executions_of(store.as_ref(), "p").await, 2);
    store
        .set_job_status(DEFAULT_TENANT, "p", "CANCELED", NOW, None)
        .await
        .unwrap();
    assert!(
        store
            .delete_job(DEFAULT_TENANT, "p", &a("job.delete", "p"))
            .await
            .unwrap()
    );
    assert_eq!(
        audit_count(store.as_ref(), DEFAULT_TENANT).await,
        before + 1
    );
    assert!(store.get_job(DEFAULT_TENANT, "p").await.unwrap().is_none());
    assert_eq!(executions_of(store.as_ref(), "p").await, 0);
    assert!(
        store
            .job_target_names(DEFAULT_TENANT, "p")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .thing_executions(DEFAULT_TENANT, &released[0].thing_name, None)
            .await
            .unwrap()
            .is_empty()
    );
    // The id is free again, and the new job starts from nothing.
    let fresh = JobExecution::queued("p", "t9", NOW);
    store
        .create_job(
            &job_record("p"),
            std::slice::from_ref(&fresh),
            &[],
            &a("job.create", "p"),
        )
        .await
        .unwrap();
    assert_eq!(executions_of(store.as_ref(), "p").await, 1);
    assert_eq!(
        store.rollout_state(DEFAULT_TENANT, "p").await.unwrap(),
        None
    );
    assert_eq!(
        store.job_control(DEFAULT_TENANT, "p").await.unwrap(),
        Some(JobControl::default())
    );
}

async fn executions_of(s: &dyn Store, job: &str) -> usize {
    s.job_executions(DEFAULT_TENANT, job, &Page::new(None, Some(1000)))
        .await
        .unwrap()
        .len()
}
