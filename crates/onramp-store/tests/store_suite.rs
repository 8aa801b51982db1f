//! The storage suite: every test runs against SQLite and against PostgreSQL.

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
    assert!(s.revoked_since(NOW).await.unwrap().is_empty());
    s.revoke_certificate(
        DEFAULT_TENANT,
        "c1",
        "keyCompromise",
        &audit("default", "certificate.revoke", "c1"),
        NOW + 10,
    )
    .await
    .unwrap();
    let cut = s.revoked_since(NOW + 10).await.unwrap();
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
    let cut = s.revoked_since(NOW + 20).await.unwrap();
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
    the_allowlist_adds_checks_and_removes,
    api_keys_are_found_by_hash_and_revoked,
    the_audit_log_is_append_only_and_queryable,
    fleet_gauges_count_devices_and_expiring_certs,
    policies_are_versioned_attached_and_found_for_a_device,
    retained_messages_and_presence_persist,
    shadows_are_written_with_compare_and_set_and_keep_history,
);
