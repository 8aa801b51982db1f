//! Outbound events, dead letters, audit findings and connection attempts,
//! against SQLite and against PostgreSQL.

use onramp_domain::audit_check::{CheckName, ConnectionObservation, Finding};
use onramp_domain::event::{Event, EventType};
use onramp_domain::*;
use onramp_store::testing::{scratch_postgres, sqlite_url};
use onramp_store::*;
use std::sync::Arc;

const NOW: i64 = 1_800_000_000;

async fn sqlite() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&sqlite_url(dir.path())).await.unwrap();
    (store, Some(dir))
}

async fn postgres() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    (open(&scratch_postgres().await).await.unwrap(), None)
}

fn audit(tenant: &str, action: &str) -> AuditEntry {
    AuditEntry {
        id: 0,
        tenant: tenant.into(),
        actor: "test".into(),
        action: action.into(),
        target: "t".into(),
        source: "local".into(),
        outcome: Outcome::Success,
        detail: String::new(),
        at: NOW,
    }
}

fn sub(id: &str, tenant: &str, types: &str) -> SubscriptionRecord {
    SubscriptionRecord {
        id: id.into(),
        tenant: tenant.into(),
        url: format!("http://127.0.0.1:9/{id}"),
        event_types: types.into(),
        secret_salt: "salt".into(),
        created_at: NOW,
        created_by: "test".into(),
    }
}

fn event(id: &str, tenant: &str, t: EventType) -> Event {
    Event {
        id: id.into(),
        tenant: tenant.into(),
        event_type: t,
        subject: "certificate:01".into(),
        occurred_at: NOW,
        data: serde_json::json!({"serial": "01"}),
    }
}

async fn events_fan_out_to_matching_subscriptions_of_their_tenant(store: Arc<dyn Store>) {
    store
        .create_tenant("acme", &audit("acme", "tenant.create"), NOW)
        .await
        .unwrap();
    store
        .create_subscription(
            &sub("s-all", DEFAULT_TENANT, "*"),
            &audit(DEFAULT_TENANT, "event.subscribe"),
        )
        .await
        .unwrap();
    store
        .create_subscription(
            &sub("s-rev", DEFAULT_TENANT, "certificate.revoked"),
            &audit(DEFAULT_TENANT, "event.subscribe"),
        )
        .await
        .unwrap();
    store
        .create_subscription(
            &sub("s-acme", "acme", "*"),
            &audit("acme", "event.subscribe"),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .list_subscriptions(DEFAULT_TENANT)
            .await
            .unwrap()
            .len(),
        2
    );

    assert!(
        store
            .enqueue_event(
                &event("e1", DEFAULT_TENANT, EventType::CertificateExpiring),
                &[]
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .enqueue_event(
                &event("e2", DEFAULT_TENANT, EventType::CertificateRevoked),
                &[]
            )
            .await
            .unwrap()
    );
    let due = store.due_deliveries(NOW, 100).await.unwrap();
    let mut pairs: Vec<(String, String)> = due
        .iter()
        .map(|d| (d.event_id.clone(), d.subscription_id.clone()))
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            ("e1".into(), "s-all".into()),
            ("e2".into(), "s-all".into()),
            ("e2".into(), "s-rev".into())
        ]
    );
    // Not the other tenant's subscription.
    assert!(due.iter().all(|d| d.tenant == DEFAULT_TENANT));
    let body: serde_json::Value = serde_json::from_str(&due[0].body).unwrap();
    assert_eq!(body["tenant"], DEFAULT_TENANT);
    assert_eq!(
        store
            .list_events("acme", &Page::new(None, None))
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        store
            .list_events(DEFAULT_TENANT, &Page::new(None, None))
            .await
            .unwrap()
            .len(),
        2
    );
}

async fn once_keys_make_an_event_happen_once(store: Arc<dyn Store>) {
    store
        .create_subscription(
            &sub("s", DEFAULT_TENANT, "*"),
            &audit(DEFAULT_TENANT, "event.subscribe"),
        )
        .await
        .unwrap();
    let keys = vec!["k7".to_string(), "k14".to_string(), "k30".to_string()];
    assert!(
        store
            .enqueue_event(
                &event("e1", DEFAULT_TENANT, EventType::CertificateExpiring),
                &keys
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .enqueue_event(
                &event("e2", DEFAULT_TENANT, EventType::CertificateExpiring),
                &keys[..1]
            )
            .await
            .unwrap()
    );
    let mut taken = store
        .once_keys_taken(&["k14".into(), "k30".into(), "k99".into()])
        .await
        .unwrap();
    taken.sort();
    assert_eq!(taken, vec!["k14".to_string(), "k30".to_string()]);
    assert_eq!(store.due_deliveries(NOW, 100).await.unwrap().len(), 1);
}

async fn failed_deliveries_retry_then_die_and_replay(store: Arc<dyn Store>) {
    store
        .create_subscription(
            &sub("s", DEFAULT_TENANT, "*"),
            &audit(DEFAULT_TENANT, "event.subscribe"),
        )
        .await
        .unwrap();
    store
        .enqueue_event(&event("e1", DEFAULT_TENANT, EventType::AuditFinding), &[])
        .await
        .unwrap();
    store
        .record_delivery(
            "e1",
            "s",
            &DeliveryOutcome::RetryAt {
                at: NOW + 10,
                error: "HTTP 500".into(),
            },
            NOW,
        )
        .await
        .unwrap();
    assert!(store.due_deliveries(NOW + 9, 10).await.unwrap().is_empty());
    let due = store.due_deliveries(NOW + 10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 1);
    store
        .record_delivery(
            "e1",
            "s",
            &DeliveryOutcome::Dead {
                error: "HTTP 500".into(),
            },
            NOW + 10,
        )
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries(NOW + 1000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let dead = store
        .list_deliveries(DEFAULT_TENANT, Some("dead"), 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 500"));
    // Another tenant cannot replay it.
    assert!(
        !store
            .replay_delivery("acme", "e1", "s", &audit("acme", "event.replay"), NOW + 20)
            .await
            .unwrap()
    );
    assert!(
        store
            .replay_delivery(
                DEFAULT_TENANT,
                "e1",
                "s",
                &audit(DEFAULT_TENANT, "event.replay"),
                NOW + 20
            )
            .await
            .unwrap()
    );
    let due = store.due_deliveries(NOW + 20, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, 0);
    store
        .record_delivery("e1", "s", &DeliveryOutcome::Delivered, NOW + 21)
        .await
        .unwrap();
    assert!(
        store
            .list_deliveries(DEFAULT_TENANT, Some("dead"), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list_deliveries(DEFAULT_TENANT, Some("delivered"), 100)
            .await
            .unwrap()
            .len(),
        1
    );
    // Deleting a subscription drops what it had not received.
    store
        .enqueue_event(&event("e2", DEFAULT_TENANT, EventType::AuditFinding), &[])
        .await
        .unwrap();
    assert!(
        store
            .delete_subscription(
                DEFAULT_TENANT,
                "s",
                &audit(DEFAULT_TENANT, "event.unsubscribe")
            )
            .await
            .unwrap()
    );
    assert!(
        store
            .due_deliveries(NOW + 100, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !store
            .delete_subscription(
                DEFAULT_TENANT,
                "s",
                &audit(DEFAULT_TENANT, "event.unsubscribe")
            )
            .await
            .unwrap()
    );
}

fn finding(check: CheckName, resource: &str) -> Finding {
    Finding {
        check,
        resource: resource.into(),
        detail: "d".into(),
    }
}

async fn findings_open_resolve_reopen_and_suppress(store: Arc<dyn Store>) {
    let ran = [CheckName::DeviceNeverSeen];
    let opened = store
        .record_findings(
            DEFAULT_TENANT,
            &ran,
            &[finding(CheckName::DeviceNeverSeen, "device:a")],
            NOW,
        )
        .await
        .unwrap();
    assert_eq!(opened.len(), 1);
    // Seen again: still open, not new.
    let opened2 = store
        .record_findings(
            DEFAULT_TENANT,
            &ran,
            &[finding(CheckName::DeviceNeverSeen, "device:a")],
            NOW + 1,
        )
        .await
        .unwrap();
    assert!(opened2.is_empty());
    // Not seen: resolved.
    store
        .record_findings(DEFAULT_TENANT, &ran, &[], NOW + 2)
        .await
        .unwrap();
    let all = store.list_findings(DEFAULT_TENANT, None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, "resolved");
    // Seen again: reopened, and reported as opened.
    let again = store
        .record_findings(
            DEFAULT_TENANT,
            &ran,
            &[finding(CheckName::DeviceNeverSeen, "device:a")],
            NOW + 3,
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, opened[0].id);
    let s = store
        .suppress_finding(
            DEFAULT_TENANT,
            &opened[0].id,
            Some("lab device"),
            &audit(DEFAULT_TENANT, "finding.suppress"),
            NOW + 4,
        )
        .await
        .unwrap();
    assert_eq!(s.suppressed_reason.as_deref(), Some("lab device"));
    assert_eq!(s.suppressed_by.as_deref(), Some("test"));
    let wrong = store
        .suppress_finding(
            "acme",
            &opened[0].id,
            Some("x"),
            &audit("acme", "finding.suppress"),
            NOW,
        )
        .await;
    assert!(matches!(wrong, Err(StoreError::NotFound(_))), "{wrong:?}");
    assert_eq!(
        store
            .list_findings(DEFAULT_TENANT, Some("open"))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn connection_attempts_aggregate(store: Arc<dyn Store>) {
    let o = |first: i64, last: i64| ConnectionObservation {
        serial: "01".into(),
        thing_name: "t".into(),
        client_id: "t".into(),
        source: "10.0.0.1".into(),
        refused: true,
        count: 2,
        first_at: first,
        last_at: last,
    };
    store
        .record_connection_attempts(&[(DEFAULT_TENANT.into(), o(NOW, NOW + 5))])
        .await
        .unwrap();
    store
        .record_connection_attempts(&[(DEFAULT_TENANT.into(), o(NOW + 6, NOW + 9))])
        .await
        .unwrap();
    let seen = store
        .connection_attempts(DEFAULT_TENANT, NOW)
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].count, 4);
    assert_eq!((seen[0].first_at, seen[0].last_at), (NOW, NOW + 9));
    assert!(
        store
            .connection_attempts("acme", NOW)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.prune_connection_attempts(NOW + 10).await.unwrap(), 1);
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test] async fn $name() { let (s, _d) = super::sqlite().await; super::$name(s).await; } )* }
        mod on_postgres { $( #[tokio::test] async fn $name() { let (s, _d) = super::postgres().await; super::$name(s).await; } )* }
    };
}

on_both!(
    events_fan_out_to_matching_subscriptions_of_their_tenant,
    once_keys_make_an_event_happen_once,
    failed_deliveries_retry_then_die_and_replay,
    findings_open_resolve_reopen_and_suppress,
    connection_attempts_aggregate,
);
