//! CLI for outbound events and audit checks: `onramp webhook
//! create|list|delete`, `onramp event list|deliveries|dead-letters|replay`
//! and `onramp audit-checks run|findings|suppress|unsuppress`, on the data
//! directory or on a server through the REST API, printing the same.

use crate::admin::Admin;
use crate::cli::{Output, PageArgs, next_after, ts};
use anyhow::Result;
use clap::Subcommand;
use onramp_service::{AuditFinding, EventDelivery};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Subscribe a URL to events. The signing secret is printed once.
    Create {
        /// Where events are POSTed (http:// or https://).
        #[arg(long)]
        url: String,
        /// `*` or a comma-separated list: certificate.expiring,
        /// certificate.expired, certificate.revoked, claim.expiring,
        /// ca.expiring, audit.finding.
        #[arg(long, default_value = "*")]
        events: String,
    },
    /// List the subscriptions (without secrets).
    List,
    /// Delete a subscription; its undelivered events are dropped.
    Delete {
        /// The subscription id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventCommand {
    /// List the tenant's events, oldest first.
    List(PageArgs),
    /// List deliveries, latest first.
    Deliveries {
        /// pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
    },
    /// List the deliveries that gave up after every retry.
    DeadLetters,
    /// Send a dead-lettered delivery again.
    Replay {
        /// The event id.
        event: String,
        /// The subscription id.
        subscription: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCheckCommand {
    /// Run the audit checks now (all, or those named with --check) and
    /// print the open findings.
    Run {
        /// A check to run (repeatable): device-certificate-expiring,
        /// ca-certificate-expiring, revoked-certificate-still-active,
        /// device-certificate-shared, overly-permissive-policy,
        /// conflicting-client-ids, device-never-seen, claim-certificate-permissive.
        #[arg(long = "check")]
        checks: Vec<String>,
    },
    /// List findings.
    Findings {
        /// open or resolved.
        #[arg(long)]
        status: Option<String>,
    },
    /// Suppress a finding: it stays listed but sends no events.
    Suppress {
        /// The finding id.
        id: String,
        /// Why the finding is accepted.
        #[arg(long)]
        reason: String,
    },
    /// Lift a suppression.
    Unsuppress {
        /// The finding id.
        id: String,
    },
}

const DELIVERY_HEAD: [&str; 6] = [
    "EVENT",
    "SUBSCRIPTION",
    "TYPE",
    "STATUS",
    "ATTEMPTS",
    "LAST ERROR",
];

fn delivery_row(d: &EventDelivery) -> Vec<String> {
    vec![
        d.event_id.clone(),
        d.subscription_id.clone(),
        d.event_type.clone(),
        d.status.clone(),
        d.attempts.to_string(),
        d.last_error.clone().unwrap_or_default(),
    ]
}

const FINDING_HEAD: [&str; 6] = ["ID", "CHECK", "SEVERITY", "RESOURCE", "STATUS", "DETAIL"];

fn finding_row(f: &AuditFinding) -> Vec<String> {
    let status = match &f.suppressed_reason {
        Some(r) => format!("{} (suppressed: {r})", f.status),
        None => f.status.clone(),
    };
    vec![
        f.id.clone(),
        f.check.clone(),
        f.severity.clone(),
        f.resource.clone(),
        status,
        f.detail.clone(),
    ]
}

pub async fn webhook(admin: &Admin, out: &Output, cmd: WebhookCommand) -> Result<()> {
    match cmd {
        WebhookCommand::Create { url, events } => {
            let c = admin.create_event_subscription(&url, &events).await?;
            out.message(
                &serde_json::to_value(&c)?,
                &format!(
                    "subscription {} sends {} to {}\nsigning secret (shown only now): {}",
                    c.subscription.id, c.subscription.event_types, c.subscription.url, c.secret
                ),
            )
        }
        WebhookCommand::List => {
            let items = admin.list_event_subscriptions().await?;
            let rows = items
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.event_types.clone(),
                        s.url.clone(),
                        ts(s.created_at),
                    ]
                })
                .collect();
            out.table_or_json(&items, &["ID", "EVENTS", "URL", "CREATED"], rows)
        }
        WebhookCommand::Delete { id } => {
            admin.delete_event_subscription(&id).await?;
            out.message(
                &serde_json::json!({"deleted": id}),
                &format!("deleted subscription {id}"),
            )
        }
    }
}

pub async fn event(admin: &Admin, out: &Output, cmd: EventCommand) -> Result<()> {
    match cmd {
        EventCommand::List(p) => {
            let page = p.page()?;
            let items = admin.list_events(&page).await?;
            let next = next_after(&items, &page, |e| e.id.clone());
            let rows = items
                .iter()
                .map(|e| {
                    vec![
                        e.id.clone(),
                        e.event_type.to_string(),
                        e.subject.clone(),
                        ts(e.occurred_at),
                    ]
                })
                .collect();
            out.list(&items, next, &["ID", "TYPE", "SUBJECT", "AT"], rows)
        }
        EventCommand::Deliveries { status } => {
            let items = admin.list_event_deliveries(status.as_deref()).await?;
            let rows = items.iter().map(delivery_row).collect();
            out.table_or_json(&items, &DELIVERY_HEAD, rows)
        }
        EventCommand::DeadLetters => {
            let items = admin.list_event_deliveries(Some("dead")).await?;
            let rows = items.iter().map(delivery_row).collect();
            out.table_or_json(&items, &DELIVERY_HEAD, rows)
        }
        EventCommand::Replay {
            event,
            subscription,
        } => {
            admin.replay_event_delivery(&event, &subscription).await?;
            out.message(
                &serde_json::json!({"replayed": event, "subscription": subscription}),
                &format!("event {event} queued again for subscription {subscription}"),
            )
        }
    }
}

pub async fn audit_checks(admin: &Admin, out: &Output, cmd: AuditCheckCommand) -> Result<()> {
    match cmd {
        AuditCheckCommand::Run { checks } => {
            let items = admin.run_audit_checks(&checks).await?;
            let rows = items.iter().map(finding_row).collect();
            out.table_or_json(&items, &FINDING_HEAD, rows)
        }
        AuditCheckCommand::Findings { status } => {
            let items = admin.list_audit_findings(status.as_deref()).await?;
            let rows = items.iter().map(finding_row).collect();
            out.table_or_json(&items, &FINDING_HEAD, rows)
        }
        AuditCheckCommand::Suppress { id, reason } => {
            let f = admin.suppress_audit_finding(&id, Some(&reason)).await?;
            out.table_or_json(&f, &FINDING_HEAD, vec![finding_row(&f)])
        }
        AuditCheckCommand::Unsuppress { id } => {
            let f = admin.suppress_audit_finding(&id, None).await?;
            out.table_or_json(&f, &FINDING_HEAD, vec![finding_row(&f)])
        }
    }
}
