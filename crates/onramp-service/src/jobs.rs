//! Jobs: the device side of AWS IoT Jobs over MQTT (get pending, start
//! next, describe, update, and the `notify` / `notify-next` notifications)
//! and the operator side (create, describe with counts, list, cancel).
//!
//! The rules are `onramp_domain::job`'s; this module loads a thing's
//! executions, asks the rules, writes the result with a version guard
//! (retrying on a concurrent write) and turns the outcome into replies.

use crate::device::DeviceReply;
use crate::{Caller, Onramp, Result, ServiceError, now};
use onramp_domain::job::{
    self, ExecutionChange, JobConfig, JobExecution, JobRejection, JobRequestLimits, NEXT_JOB_ID,
    Notifications,
};
use onramp_domain::{AuditEntry, JobsOp, JobsTopic, Outcome, Page, Permission, UnixTime};
use onramp_store::{JobRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Attempts at a version-guarded write before answering InternalError.
const CAS_ATTEMPTS: usize = 16;
/// The most things one job may target directly.
pub const MAX_JOB_TARGETS: usize = 100_000;

/// A job's document and configuration, which never change after creation.
#[derive(Debug, Clone)]
pub(crate) struct JobRules {
    pub document: Value,
    pub config: JobConfig,
    /// When this node read them: a job deleted and created again under the
    /// same id on another node is read afresh after [`JOB_RULES_TTL`].
    pub loaded: std::time::Instant,
}

/// How long a node trusts its cached copy of a job's document and
/// configuration (they change only when a deleted job's id is reused).
pub(crate) const JOB_RULES_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// What to target: things by name, thing groups, and a dynamic group
/// defined by a fleet query. With SNAPSHOT selection the members at
/// creation are targeted; with CONTINUOUS, things that join a group or
/// start matching the query later are targeted too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTargets {
    #[serde(default)]
    pub things: Vec<String>,
    #[serde(default, alias = "thing_groups")]
    pub thing_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<onramp_domain::fleet::FleetQuery>,
}

/// CreateJob.
#[derive(Debug, Clone)]
pub struct CreateJob {
    pub job_id: String,
    pub description: Option<String>,
    /// The job document: a JSON object of at most 32 KB.
    pub document: Vec<u8>,
    pub targets: JobTargets,
    /// Target things added later too (CONTINUOUS) or not (SNAPSHOT, the default).
    pub continuous: bool,
    /// The configuration members (timeoutConfig, jobExecutionsRetryConfig, ...).
    pub config: Value,
}

/// A job with its execution counts by status, named in camelCase like the
/// CreateJob body and the executions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDescription {
    pub job_id: String,
    pub status: String,
    pub description: Option<String>,
    pub document: Value,
    pub config: Value,
    pub targets: Value,
    pub target_selection: String,
    pub created_by: String,
    pub created_at: UnixTime,
    pub updated_at: UnixTime,
    pub completed_at: Option<UnixTime>,
    /// Executions per status (terminal ones included).
    pub execution_counts: BTreeMap<String, i64>,
    /// Failures (FAILED, TIMED_OUT, REJECTED) by hardware revision and
    /// device class, most first: a failure confined to one revision shows
    /// at a glance. Empty in listings.
    #[serde(default)]
    pub failures_by_group: Vec<FailureGroup>,
    /// The rollout is paused: nothing more is released until it is resumed.
    #[serde(default)]
    pub rollout_paused: bool,
}

/// Failed executions of one status among things of one hardware revision
/// and device class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureGroup {
    pub hardware_revision: Option<String>,
    pub device_class: Option<String>,
    pub status: String,
    pub count: i64,
}

fn describe_record(r: &JobRecord, counts: BTreeMap<String, i64>) -> JobDescription {
    let parse = |s: &str| serde_json::from_str(s).unwrap_or(Value::Null);
    JobDescription {
        job_id: r.job_id.clone(),
        status: r.status.clone(),
        description: r.description.clone(),
        document: parse(&r.document),
        config: parse(&r.config),
        targets: parse(&r.targets),
        target_selection: r.target_selection.clone(),
        created_by: r.created_by.clone(),
        created_at: r.created_at,
        updated_at: r.updated_at,
        completed_at: r.completed_at,
        execution_counts: counts,
        failures_by_group: Vec::new(),
        rollout_paused: false,
    }
}

fn internal(e: impl std::fmt::Display) -> JobRejection {
    tracing::error!(error = %e, "job storage failed");
    JobRejection::internal_error("the request could not be completed; retry")
}

fn notification_replies(thing: &str, n: Notifications) -> Vec<DeviceReply> {
    let mut out = Vec::new();
    if let Some(body) = n.notify {
        out.push(DeviceReply::to_subscribers(
            JobsTopic::notify_topic(thing),
            &body,
        ));
    }
    if let Some(body) = n.notify_next {
        out.push(DeviceReply::to_subscribers(
            JobsTopic::notify_next_topic(thing),
            &body,
        ));
    }
    out
}

/// The configuration members CreateJob understands.
const CONFIG_MEMBERS: [&str; 6] = [
    "timeoutConfig",
    "jobExecutionsRetryConfig",
    "jobExecutionsRolloutConfig",
    "abortConfig",
    "successConfirmation",
    "schedulingConfig",
];

/// CreateJob's configuration without `targetSelection: SNAPSHOT` (the only
/// selection Onramp has). Any other member is refused rather than ignored:
/// a job that silently lacked its `maintenanceWindows`, or a misspelt
/// `timeoutConfig`, would run unlike what the operator asked for.
fn known_config(config: &Value) -> Result<Value> {
    let Some(members) = config.as_object() else {
        return Ok(config.clone());
    };
    let mut known = serde_json::Map::new();
    for (name, value) in members {
        if name == "targetSelection" {
            if value != "SNAPSHOT" {
                return Err(ServiceError::BadRequest(format!(
                    "targetSelection {value} is not supported: jobs target the things and \
                     thing-group members of their creation (SNAPSHOT)"
                )));
            }
        } else if name == "requireSignedArtifacts" {
            // Checked by `check_job_artifacts` at creation; not a rule of executions.
            if !value.is_boolean() {
                return Err(ServiceError::BadRequest(
                    "requireSignedArtifacts must be true or false".into(),
                ));
            }
        } else if CONFIG_MEMBERS.contains(&name.as_str()) {
            known.insert(name.clone(), value.clone());
        } else {
            return Err(ServiceError::BadRequest(format!(
                "unknown or unsupported member {name:?}; a job takes jobId, description, \
                 document, targets, thingGroups, query, targetSelection, \
                 requireSignedArtifacts and {}",
                CONFIG_MEMBERS.join(", ")
            )));
        }
    }
    Ok(Value::Object(known))
}

/// The outcome of one attempt at a device request.
enum Attempt {
    Done(Vec<DeviceReply>),
    /// Another writer changed an execution meanwhile: read again.
    Raced,
}

impl Onramp {
    /// A job's document and configuration, cached: both are immutable.
    pub(crate) async fn job_rules(
        &self,
        tenant: &str,
        job_id: &str,
    ) -> std::result::Result<Option<Arc<JobRules>>, StoreError> {
        let key = (tenant.to_string(), job_id.to_string());
        if let Some(rules) = self
            .inner
            .job_rules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|r| r.loaded.elapsed() < JOB_RULES_TTL)
        {
            return Ok(Some(rules.clone()));
        }
        let Some(record) = self.inner.store.get_job(tenant, job_id).await? else {
            return Ok(None);
        };
        let document = serde_json::from_str(&record.document)
            .map_err(|e| StoreError::Corrupt(format!("job document: {e}")))?;
        let config = serde_json::from_str::<Value>(&record.config)
            .ok()
            .and_then(|v| serde_json::from_value::<JobConfig>(v).ok())
            .unwrap_or_default();
        let rules = Arc::new(JobRules {
            document,
            config,
            loaded: std::time::Instant::now(),
        });
        let mut cache = self
            .inner
            .job_rules
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(key, rules.clone());
        Ok(Some(rules))
    }

    async fn rules_of(
        &self,
        tenant: &str,
        executions: &[JobExecution],
    ) -> std::result::Result<BTreeMap<String, Arc<JobRules>>, StoreError> {
        let mut out = BTreeMap::new();
        for e in executions {
            if !out.contains_key(&e.job_id)
                && let Some(r) = self.job_rules(tenant, &e.job_id).await?
            {
                out.insert(e.job_id.clone(), r);
            }
        }
        Ok(out)
    }

    /// Stores one change; returns false when the execution moved meanwhile.
    async fn save_change(
        &self,
        tenant: &str,
        before_version: u64,
        change: &ExecutionChange,
    ) -> std::result::Result<bool, StoreError> {
        let saved = self
            .inner
            .store
            .save_execution(
                tenant,
                &change.execution,
                Some(before_version),
                change.retry.as_ref(),
            )
            .await?;
        if saved {
            metrics::counter!("onramp_job_execution_updates_total", "status" => change.execution.status.as_str()).increment(1);
        }
        Ok(saved)
    }

    /// A thing's pending executions, with any whose timer ran out moved to
    /// TIMED_OUT first (and their notifications added to `replies`).
    async fn settled_pending(
        &self,
        tenant: &str,
        thing: &str,
        at: UnixTime,
        replies: &mut Vec<DeviceReply>,
    ) -> std::result::Result<Vec<JobExecution>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let pending = self
                .inner
                .store
                .thing_executions(tenant, thing, None)
                .await?;
            let Some(overdue) = pending.iter().find(|e| job::is_overdue(e, at)) else {
                return Ok(pending);
            };
            let rules = self.rules_of(tenant, &pending).await?;
            let config = rules
                .get(&overdue.job_id)
                .map(|r| r.config.clone())
                .unwrap_or_default();
            let Some(change) = job::expire(overdue, at, &config) else {
                return Ok(pending);
            };
            if self.save_change(tenant, overdue.version, &change).await? {
                let docs = |id: &str| rules.get(id).map(|r| r.document.clone());
                replies.extend(notification_replies(
                    thing,
                    change.notifications(&pending, at, &docs),
                ));
            }
        }
        Err(StoreError::Corrupt(
            "job executions kept changing while being read".into(),
        ))
    }

    /// Answers one jobs request from a device.
    pub(crate) async fn jobs_request(
        &self,
        tenant: &str,
        topic: &JobsTopic,
        payload: &[u8],
    ) -> Vec<DeviceReply> {
        let limits = JobRequestLimits::default();
        let base = topic.topic();
        let op = match topic.op {
            JobsOp::GetPending => "get_pending",
            JobsOp::StartNext => "start_next",
            JobsOp::Describe { .. } => "describe",
            JobsOp::Update { .. } => "update",
        };
        let at = now();
        let token = job::client_token_for_reply(payload, &limits);
        let outcome = if self
            .inner
            .jobs_limiter
            .check(&format!("{tenant}/{}", topic.thing_name))
            .is_err()
        {
            Err(JobRejection::request_throttled(
                "too many jobs requests for this thing; retry later",
            ))
        } else {
            let mut result = Err(JobRejection::internal_error(
                "job executions kept changing; retry",
            ));
            for _ in 0..CAS_ATTEMPTS {
                match self.jobs_attempt(tenant, topic, payload, &limits, at).await {
                    Ok(Attempt::Raced) => continue,
                    Ok(Attempt::Done(replies)) => {
                        result = Ok(replies);
                        break;
                    }
                    Err(r) => {
                        result = Err(r);
                        break;
                    }
                }
            }
            result
        };
        match outcome {
            Ok(replies) => {
                metrics::counter!("onramp_jobs_requests_total", "op" => op, "outcome" => "accepted").increment(1);
                self.resolve_artifacts_in_replies(tenant, &topic.thing_name, replies)
                    .await
            }
            Err(r) => {
                metrics::counter!("onramp_jobs_requests_total", "op" => op, "outcome" => "rejected").increment(1);
                vec![DeviceReply::to_subscribers(
                    format!("{base}/rejected"),
                    &r.to_reject_json(token.as_deref(), at),
                )]
            }
        }
    }

    async fn jobs_attempt(
        &self,
        tenant: &str,
        topic: &JobsTopic,
        payload: &[u8],
        limits: &JobRequestLimits,
        at: UnixTime,
    ) -> std::result::Result<Attempt, JobRejection> {
        let thing = topic.thing_name.as_str();
        let accepted = format!("{}/accepted", topic.topic());
        let mut replies = Vec::new();
        match &topic.op {
            JobsOp::GetPending => {
                let request = job::parse_get_pending_request(payload, limits)?;
                let pending = self
                    .settled_pending(tenant, thing, at, &mut replies)
                    .await
                    .map_err(internal)?;
                let body = job::get_pending_accepted(&pending, request.client_token.as_deref(), at);
                replies.insert(0, DeviceReply::to_subscribers(accepted, &body));
            }
            JobsOp::StartNext => {
                let request = job::parse_start_next_request(payload, limits)?;
                let pending = self
                    .settled_pending(tenant, thing, at, &mut replies)
                    .await
                    .map_err(internal)?;
                let rules = self.rules_of(tenant, &pending).await.map_err(internal)?;
                let configs: BTreeMap<String, JobConfig> = rules
                    .iter()
                    .map(|(id, r)| (id.clone(), r.config.clone()))
                    .collect();
                let started = job::start_next(&pending, &request, at, &configs)?;
                let body = match &started {
                    None => job::start_next_accepted(None, request.client_token.as_deref(), at),
                    Some(s) => {
                        if s.changed {
                            let before = pending
                                .iter()
                                .find(|e| {
                                    e.job_id == s.execution.job_id
                                        && e.execution_number == s.execution.execution_number
                                })
                                .map(|e| e.version)
                                .unwrap_or(0);
                            let change = ExecutionChange::from(s.execution.clone());
                            if !self
                                .save_change(tenant, before, &change)
                                .await
                                .map_err(internal)?
                            {
                                return Ok(Attempt::Raced);
                            }
                            let docs = |id: &str| rules.get(id).map(|r| r.document.clone());
                            replies.extend(notification_replies(
                                thing,
                                change.notifications(&pending, at, &docs),
                            ));
                        }
                        let doc = rules
                            .get(&s.execution.job_id)
                            .map(|r| r.document.clone())
                            .unwrap_or_else(|| serde_json::json!({}));
                        job::start_next_accepted(
                            Some((&s.execution, &doc)),
                            request.client_token.as_deref(),
                            at,
                        )
                    }
                };
                replies.insert(0, DeviceReply::to_subscribers(accepted, &body));
            }
            JobsOp::Describe { job_id } => {
                let request = job::parse_describe_request(payload, limits)?;
                let executions = if job_id == NEXT_JOB_ID {
                    self.settled_pending(tenant, thing, at, &mut replies)
                        .await
                        .map_err(internal)?
                } else {
                    self.settled_pending(tenant, thing, at, &mut replies)
                        .await
                        .map_err(internal)?;
                    self.inner
                        .store
                        .thing_executions(tenant, thing, Some(job_id))
                        .await
                        .map_err(internal)?
                };
                let found = job::describe_in(&executions, job_id, &request)?;
                let doc = match found {
                    Some(e) => self
                        .job_rules(tenant, &e.job_id)
                        .await
                        .map_err(internal)?
                        .map(|r| r.document.clone())
                        .unwrap_or_else(|| serde_json::json!({})),
                    None => serde_json::json!({}),
                };
                let body = job::describe_accepted(found.map(|e| (e, &doc)), &request, at);
                replies.insert(0, DeviceReply::to_subscribers(accepted, &body));
            }
            JobsOp::Update { job_id } => {
                let request = job::parse_update_request(payload, limits)?;
                let pending = self
                    .settled_pending(tenant, thing, at, &mut replies)
                    .await
                    .map_err(internal)?;
                // A pending execution of the job is its latest (a retry is
                // queued only once the one before has ended), so when the
                // request names it the thing's other executions of the job
                // need not be read.
                let of_job = match job::find_execution(&pending, job_id, request.execution_number) {
                    Some(e) => vec![e.clone()],
                    None => self
                        .inner
                        .store
                        .thing_executions(tenant, thing, Some(job_id))
                        .await
                        .map_err(internal)?,
                };
                let rules = self
                    .job_rules(tenant, job_id)
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| {
                        JobRejection::resource_not_found(format!("job {job_id} does not exist"))
                    })?;
                let change = job::update_in(&of_job, job_id, &request, at, &rules.config)?;
                let before = job::find_execution(&of_job, job_id, request.execution_number)
                    .map(|e| e.version)
                    .unwrap_or(0);
                if !self
                    .save_change(tenant, before, &change)
                    .await
                    .map_err(internal)?
                {
                    return Ok(Attempt::Raced);
                }
                let all_rules = self.rules_of(tenant, &pending).await.map_err(internal)?;
                let docs = |id: &str| {
                    all_rules
                        .get(id)
                        .map(|r| r.document.clone())
                        .or_else(|| (id == job_id).then(|| rules.document.clone()))
                };
                let notes = change.notifications(&pending, at, &docs);
                let body = job::update_accepted(&change.execution, &rules.document, &request, at);
                replies.insert(0, DeviceReply::to_subscribers(accepted, &body));
                replies.extend(notification_replies(thing, notes));
                if change.execution.status.is_terminal() {
                    self.note_job_progress(tenant, job_id).await;
                }
            }
        }
        Ok(Attempt::Done(replies))
    }

    /// Checks the abort criteria, then marks the job COMPLETED once none of
    /// its executions is pending and no target waits for the rollout.
    pub(crate) async fn note_job_progress(&self, tenant: &str, job_id: &str) {
        self.check_abort(tenant, job_id).await;
        let store = &self.inner.store;
        // Each check is an indexed lookup: this runs after every execution
        // that ends, so it must not grow with the size of the job.
        if store
            .job_has_open_work(tenant, job_id)
            .await
            .unwrap_or(true)
        {
            return;
        }
        let confirms = self
            .job_rules(tenant, job_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|r| r.config.success_confirmation.is_some());
        if confirms
            && store
                .job_awaits_confirmation(tenant, job_id)
                .await
                .unwrap_or(true)
        {
            return;
        }
        if let Ok(Some(job)) = store.get_job(tenant, job_id).await
            && job.status == "IN_PROGRESS"
            && let Err(e) = store
                .set_job_status(tenant, job_id, "COMPLETED", now(), None)
                .await
        {
            tracing::warn!(job = job_id, error = %e, "could not mark a job completed");
        }
    }

    /// Publishes, for each thing, what changed in its pending executions.
    /// The things' executions now are read in a few set-based queries, and
    /// everything is published at once.
    pub(crate) async fn notify_things(
        &self,
        tenant: &str,
        changes: Vec<(String, Vec<JobExecution>)>,
    ) {
        if changes.is_empty() {
            return;
        }
        let at = now();
        let things: Vec<String> = changes.iter().map(|(t, _)| t.clone()).collect();
        let now_pending = match self
            .inner
            .store
            .pending_executions_of(tenant, &things)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "job notifications not sent: executions unreadable");
                return;
            }
        };
        let mut out = Vec::new();
        for (thing, before) in changes {
            let after = now_pending.get(&thing).cloned().unwrap_or_default();
            let mut all = before.clone();
            all.extend(after.iter().cloned());
            let Ok(rules) = self.rules_of(tenant, &all).await else {
                continue;
            };
            let docs = |id: &str| rules.get(id).map(|r| r.document.clone());
            let replies =
                notification_replies(&thing, job::notifications(&before, &after, at, &docs));
            out.extend(
                self.resolve_artifacts_in_replies(tenant, &thing, replies)
                    .await,
            );
        }
        self.publish_everywhere(tenant, out).await;
    }

    // ---- operator side ----

    /// Creates a job and queues an execution for every target thing.
    pub async fn create_job(&self, caller: &Caller, request: CreateJob) -> Result<JobDescription> {
        caller.require(Permission::ManageDevices)?;
        let tenant = caller.tenant.as_str();
        if !job::valid_job_id(&request.job_id) {
            return Err(ServiceError::BadRequest(format!(
                "job id {:?} is not 1-64 letters, digits, '-' or '_'",
                request.job_id
            )));
        }
        let document = job::validate_job_document(&request.document)
            .map_err(|e| ServiceError::BadRequest(format!("document: {e}")))?;
        let config = JobConfig::from_json(&known_config(&request.config)?)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let scheduled = self.check_job_schedule(&config, now())?;
        if let Some(q) = &request.targets.query {
            q.validate()
                .map_err(|e| ServiceError::BadRequest(format!("query: {e}")))?;
        }
        self.check_job_artifacts(tenant, &document, &request.config)
            .await?;
        let things = self.resolve_targets(tenant, &request.targets).await?;
        if things.is_empty() && !request.continuous {
            return Err(ServiceError::BadRequest(
                "the job targets no thing: give things or thing groups with members".into(),
            ));
        }
        let at = now();
        // Each target's pending executions, read in a few set-based queries.
        let mut pending = self
            .inner
            .store
            .pending_executions_of(tenant, &things)
            .await?;
        let before: Vec<(String, Vec<JobExecution>)> = things
            .iter()
            .map(|t| (t.clone(), pending.remove(t).unwrap_or_default()))
            .collect();
        // A paced rollout keeps every target waiting for the scheduler, as
        // does a job scheduled to start later; otherwise every target is
        // queued now.
        let paced = config.job_executions_rollout_config.is_some();
        let (executions, waiting): (Vec<JobExecution>, Vec<String>) = if paced || scheduled {
            (Vec::new(), things.clone())
        } else {
            (
                things
                    .iter()
                    .map(|t| JobExecution::queued(&request.job_id, t, at))
                    .collect(),
                Vec::new(),
            )
        };
        let record = JobRecord {
            tenant: tenant.to_string(),
            job_id: request.job_id.clone(),
            status: if scheduled {
                job::JobStatus::Scheduled
            } else {
                job::JobStatus::InProgress
            }
            .as_str()
            .into(),
            description: request.description.clone(),
            document: document.to_string(),
            config: serde_json::to_string(&config)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            targets: serde_json::to_string(&request.targets)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            target_selection: if request.continuous {
                "CONTINUOUS".into()
            } else {
                "SNAPSHOT".into()
            },
            created_by: caller.actor.clone(),
            created_at: at,
            updated_at: at,
            completed_at: None,
        };
        let audit = AuditEntry {
            id: 0,
            tenant: tenant.to_string(),
            actor: caller.actor.clone(),
            action: "job.create".into(),
            target: format!("job:{}", request.job_id),
            source: caller.source.clone(),
            outcome: Outcome::Success,
            detail: format!(
                "{} executions queued, {} waiting for the rollout",
                executions.len(),
                waiting.len()
            ),
            at,
        };
        self.inner
            .store
            .create_job(&record, &executions, &waiting, &audit)
            .await?;
        // A job id used before (by a job since deleted) names this job now.
        self.forget_job_rules(tenant, &request.job_id);
        metrics::counter!("onramp_jobs_created_total").increment(1);
        metrics::counter!("onramp_job_execution_updates_total", "status" => "QUEUED")
            .increment(executions.len() as u64);
        if scheduled {
            // The scheduler starts it at its startTime.
        } else if paced {
            // The first release goes out at once rather than on the next tick.
            if let Err(e) = self.release_rollouts(now()).await {
                tracing::warn!(error = %e, "first rollout release failed; the scheduler retries");
            }
        } else {
            self.notify_things(tenant, before).await;
        }
        self.describe_job(caller, &request.job_id).await
    }

    pub(crate) async fn resolve_targets(
        &self,
        tenant: &str,
        targets: &JobTargets,
    ) -> Result<Vec<String>> {
        let mut things = std::collections::BTreeSet::new();
        if !targets.things.is_empty() {
            let known: std::collections::HashSet<String> = self
                .inner
                .store
                .existing_things(tenant, &targets.things)
                .await?
                .into_iter()
                .collect();
            // The first unknown thing in the order given is the one named.
            if let Some(t) = targets.things.iter().find(|t| !known.contains(*t)) {
                return Err(ServiceError::NotFound(format!("thing {t}")));
            }
            things.extend(targets.things.iter().cloned());
        }
        if !targets.thing_groups.is_empty() || targets.query.is_some() {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .inner
                    .store
                    .list_devices(
                        tenant,
                        &onramp_domain::DeviceFilter::default(),
                        &Page::new(after.clone(), Some(Page::MAX_LIMIT)),
                    )
                    .await?;
                for d in &page {
                    if d.thing_groups
                        .iter()
                        .any(|g| targets.thing_groups.contains(g))
                    {
                        things.insert(d.thing_name.clone());
                        continue;
                    }
                    let Some(q) = &targets.query else { continue };
                    let shadow = if q.needs_shadow() {
                        self.inner
                            .store
                            .get_shadow(tenant, &d.thing_name, "")
                            .await?
                            .and_then(|s| s.document)
                            .and_then(|doc| serde_json::from_str(&doc).ok())
                    } else {
                        None
                    };
                    if q.matches(d, shadow.as_ref()) {
                        things.insert(d.thing_name.clone());
                    }
                }
                if page.len() < Page::MAX_LIMIT as usize {
                    break;
                }
                after = page.last().map(|d| d.thing_name.clone());
            }
        }
        if things.len() > MAX_JOB_TARGETS {
            return Err(ServiceError::BadRequest(format!(
                "a job may target at most {MAX_JOB_TARGETS} things"
            )));
        }
        Ok(things.into_iter().collect())
    }

    /// A job, with its executions counted by status.
    pub async fn describe_job(&self, caller: &Caller, job_id: &str) -> Result<JobDescription> {
        caller.require(Permission::ReadRegistry)?;
        let store = &self.inner.store;
        let record = store
            .get_job(&caller.tenant, job_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("job {job_id}")))?;
        let counts = store
            .job_execution_counts(&caller.tenant, job_id)
            .await?
            .into_iter()
            .collect();
        let mut described = describe_record(&record, counts);
        described.rollout_paused = store
            .job_control(&caller.tenant, job_id)
            .await?
            .is_some_and(|c| c.paused);
        described.failures_by_group = store
            .job_failures_by_group(&caller.tenant, job_id)
            .await?
            .into_iter()
            .map(
                |(hardware_revision, device_class, status, count)| FailureGroup {
                    hardware_revision,
                    device_class,
                    status,
                    count,
                },
            )
            .collect();
        Ok(described)
    }

    /// Jobs in id order.
    pub async fn list_jobs(&self, caller: &Caller, page: &Page) -> Result<Vec<JobDescription>> {
        caller.require(Permission::ReadRegistry)?;
        let records = self.inner.store.list_jobs(&caller.tenant, page).await?;
        let paused = match (records.first(), records.last()) {
            (Some(first), Some(last)) => {
                self.inner
                    .store
                    .paused_jobs(&caller.tenant, &first.job_id, &last.job_id)
                    .await?
            }
            _ => Vec::new(),
        }
        .into_iter()
        .collect::<std::collections::HashSet<String>>();
        Ok(records
            .iter()
            .map(|r| {
                let mut d = describe_record(r, BTreeMap::new());
                d.rollout_paused = paused.contains(&r.job_id);
                d
            })
            .collect())
    }

    /// A job's executions in thing order.
    pub async fn list_job_executions(
        &self,
        caller: &Caller,
        job_id: &str,
        page: &Page,
    ) -> Result<Vec<JobExecution>> {
        caller.require(Permission::ReadRegistry)?;
        if self
            .inner
            .store
            .get_job(&caller.tenant, job_id)
            .await?
            .is_none()
        {
            return Err(ServiceError::NotFound(format!("job {job_id}")));
        }
        Ok(self
            .inner
            .store
            .job_executions(&caller.tenant, job_id, page)
            .await?)
    }

    /// A thing's pending executions.
    pub async fn thing_pending_executions(
        &self,
        caller: &Caller,
        thing: &str,
    ) -> Result<Vec<JobExecution>> {
        caller.require(Permission::ReadRegistry)?;
        if self
            .inner
            .store
            .get_device(&caller.tenant, thing)
            .await?
            .is_none()
        {
            return Err(ServiceError::NotFound(format!("thing {thing}")));
        }
        Ok(self
            .inner
            .store
            .thing_executions(&caller.tenant, thing, None)
            .await?)
    }

    /// Cancels one thing's execution of a job: QUEUED, or with `force` also
    /// IN_PROGRESS, becomes CANCELED; the thing is notified and the cancel
    /// audited. Returns the canceled execution.
    pub async fn cancel_job_execution(
        &self,
        caller: &Caller,
        job_id: &str,
        thing: &str,
        force: bool,
    ) -> Result<JobExecution> {
        caller.require(Permission::ManageDevices)?;
        let tenant = caller.tenant.as_str();
        let store = &self.inner.store;
        for _ in 0..CAS_ATTEMPTS {
            let before = store.thing_executions(tenant, thing, None).await?;
            let of_job = store.thing_executions(tenant, thing, Some(job_id)).await?;
            let current = job::find_execution(&of_job, job_id, None).ok_or_else(|| {
                ServiceError::NotFound(format!("execution of job {job_id} on thing {thing}"))
            })?;
            let canceled = job::cancel(current, force, now())
                .map_err(|r| ServiceError::Conflict(r.message.clone()))?;
            if !store
                .save_execution(tenant, &canceled, Some(current.version), None)
                .await?
            {
                continue;
            }
            metrics::counter!("onramp_job_execution_updates_total", "status" => "CANCELED")
                .increment(1);
            let audit = AuditEntry {
                id: 0,
                tenant: tenant.to_string(),
                actor: caller.actor.clone(),
                action: "job.cancel_execution".into(),
                target: format!("job:{job_id}"),
                source: caller.source.clone(),
                outcome: Outcome::Success,
                detail: format!(
                    "thing {thing}, execution {}{}",
                    canceled.execution_number,
                    if force { ", force" } else { "" }
                ),
                at: canceled.last_updated_at,
            };
            if let Err(e) = store.append_audit(&audit).await {
                tracing::warn!(error = %e, "the execution cancel was not audited");
            }
            self.notify_things(tenant, vec![(thing.to_string(), before)])
                .await;
            self.note_job_progress(tenant, job_id).await;
            return Ok(canceled);
        }
        Err(ServiceError::Unavailable {
            retry_after_secs: 1,
        })
    }

    /// Cancels a job: waiting targets are dropped, its QUEUED executions
    /// become CANCELED, and with `force` its IN_PROGRESS ones too.
    pub async fn cancel_job(
        &self,
        caller: &Caller,
        job_id: &str,
        force: bool,
    ) -> Result<JobDescription> {
        caller.require(Permission::ManageDevices)?;
        let detail = if force { "force" } else { "" };
        if !self
            .stop_job(caller, job_id, force, "job.cancel", detail)
            .await?
        {
            let status = self
                .inner
                .store
                .get_job(&caller.tenant, job_id)
                .await?
                .map(|j| j.status)
                .unwrap_or_default();
            return Err(ServiceError::Conflict(format!(
                "job {job_id} is already {status}"
            )));
        }
        self.describe_job(caller, job_id).await
    }

    /// Moves executions whose timer ran out to TIMED_OUT (queuing retries
    /// where configured) and notifies their things. Returns how many.
    pub async fn expire_job_executions(&self, at: UnixTime) -> Result<usize> {
        let overdue = self.inner.store.overdue_executions(at, 500).await?;
        let mut expired = 0;
        for (tenant, execution) in overdue {
            let before = self
                .inner
                .store
                .thing_executions(&tenant, &execution.thing_name, None)
                .await?;
            let config = self
                .job_rules(&tenant, &execution.job_id)
                .await?
                .map(|r| r.config.clone())
                .unwrap_or_default();
            let Some(change) = job::expire(&execution, at, &config) else {
                continue;
            };
            if self
                .save_change(&tenant, execution.version, &change)
                .await?
            {
                expired += 1;
                self.notify_things(&tenant, vec![(execution.thing_name.clone(), before)])
                    .await;
                self.note_job_progress(&tenant, &execution.job_id).await;
            }
        }
        Ok(expired)
    }
}
