//! Device requests on reserved topics, recognised in one place.
//!
//! A device asks Onramp for something by publishing to a `$aws/...` request
//! topic: fleet provisioning, a shadow operation or a jobs operation. This
//! module turns a topic into one [`DeviceRequest`] and builds the topics the
//! answers go to, so the gateway needs a single branch for all of them and a
//! new kind of request is added here, not in every layer.

use crate::job::{NEXT_JOB_ID, valid_job_id};
use crate::provisioning::ProvisioningTopic;

/// One request a device made by publishing to a reserved topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRequest {
    Provisioning(ProvisioningTopic),
    Shadow(ShadowTopic),
    Jobs(JobsTopic),
    /// A topic in a request namespace that names no operation (for example
    /// `$aws/things/T/jobs/a/b/c`). It is answered on `{topic}/rejected`
    /// with `InvalidTopic`, as AWS IoT does, rather than ignored.
    InvalidTopic {
        topic: String,
        thing_name: String,
    },
}

impl DeviceRequest {
    /// The request a topic names, or `None` for an ordinary topic.
    pub fn parse(topic: &str) -> Option<DeviceRequest> {
        if let Some(p) = ProvisioningTopic::parse(topic) {
            return Some(DeviceRequest::Provisioning(p));
        }
        if let Some(s) = ShadowTopic::parse(topic) {
            return Some(DeviceRequest::Shadow(s));
        }
        let rest = topic.strip_prefix("$aws/things/")?;
        let (thing, jobs) = rest.split_once("/jobs")?;
        if thing.is_empty() || thing.contains('/') || !(jobs.is_empty() || jobs.starts_with('/')) {
            return None;
        }
        if let Some(j) = JobsTopic::parse(topic) {
            return Some(DeviceRequest::Jobs(j));
        }
        // Answers and notifications are the server's own topics, not requests.
        if is_server_only(topic) {
            return None;
        }
        Some(DeviceRequest::InvalidTopic {
            topic: topic.to_string(),
            thing_name: thing.to_string(),
        })
    }

    /// The thing a request is about, where the topic names one.
    pub fn thing_name(&self) -> Option<&str> {
        match self {
            DeviceRequest::Provisioning(_) => None,
            DeviceRequest::Shadow(s) => Some(&s.thing_name),
            DeviceRequest::Jobs(j) => Some(&j.thing_name),
            DeviceRequest::InvalidTopic { thing_name, .. } => Some(thing_name),
        }
    }

    /// The topic the request was published to.
    pub fn topic(&self) -> String {
        match self {
            DeviceRequest::Provisioning(p) => p.topic(),
            DeviceRequest::Shadow(s) => s.topic(),
            DeviceRequest::Jobs(j) => j.topic(),
            DeviceRequest::InvalidTopic { topic, .. } => topic.clone(),
        }
    }

    /// Where an accepted answer goes.
    pub fn accepted(&self) -> String {
        format!("{}/accepted", self.topic())
    }

    /// Where a rejection goes.
    pub fn rejected(&self) -> String {
        format!("{}/rejected", self.topic())
    }
}

/// Topics only the server publishes to: lifecycle events, request answers,
/// shadow deltas and documents, and job notifications. A device publishing
/// to one could impersonate the server to other subscribers.
pub fn is_server_only(topic: &str) -> bool {
    if topic.starts_with("$aws/events/") {
        return true;
    }
    let Some(rest) = topic.strip_prefix("$aws/") else {
        return false;
    };
    if rest.ends_with("/accepted") || rest.ends_with("/rejected") {
        return true;
    }
    if topic.starts_with("$aws/things/") {
        return rest.ends_with("/shadow/update/delta")
            || rest.ends_with("/shadow/update/documents")
            || rest.ends_with("/jobs/notify")
            || rest.ends_with("/jobs/notify-next");
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOp {
    Get,
    Update,
    Delete,
}

impl ShadowOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowOp::Get => "get",
            ShadowOp::Update => "update",
            ShadowOp::Delete => "delete",
        }
    }
}

/// A shadow request topic: `$aws/things/{thing}/shadow[/name/{shadow}]/{get|update|delete}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowTopic {
    pub thing_name: String,
    /// None for the classic (unnamed) shadow.
    pub shadow_name: Option<String>,
    pub op: ShadowOp,
}

impl ShadowTopic {
    pub fn parse(topic: &str) -> Option<ShadowTopic> {
        let rest = topic.strip_prefix("$aws/things/")?;
        let (thing, rest) = rest.split_once("/shadow/")?;
        if thing.is_empty() || thing.contains('/') {
            return None;
        }
        let (shadow_name, op) = match rest.strip_prefix("name/") {
            Some(named) => {
                let (name, op) = named.split_once('/')?;
                (Some(name.to_string()), op)
            }
            None => (None, rest),
        };
        let op = match op {
            "get" => ShadowOp::Get,
            "update" => ShadowOp::Update,
            "delete" => ShadowOp::Delete,
            _ => return None,
        };
        Some(ShadowTopic {
            thing_name: thing.to_string(),
            shadow_name,
            op,
        })
    }

    /// The shadow's topic prefix, before the operation.
    pub fn base(&self) -> String {
        match &self.shadow_name {
            Some(n) => format!("$aws/things/{}/shadow/name/{n}", self.thing_name),
            None => format!("$aws/things/{}/shadow", self.thing_name),
        }
    }

    pub fn topic(&self) -> String {
        format!("{}/{}", self.base(), self.op.as_str())
    }

    /// `{base}/update/delta`: the difference between desired and reported.
    pub fn delta_topic(&self) -> String {
        format!("{}/update/delta", self.base())
    }
}

/// A jobs operation named by its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsOp {
    /// `jobs/get`: GetPendingJobExecutions.
    GetPending,
    /// `jobs/start-next`: StartNextPendingJobExecution.
    StartNext,
    /// `jobs/{jobId}/get`: DescribeJobExecution (`jobId` may be `$next`).
    Describe { job_id: String },
    /// `jobs/{jobId}/update`: UpdateJobExecution.
    Update { job_id: String },
}

/// A jobs request topic: `$aws/things/{thing}/jobs/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsTopic {
    pub thing_name: String,
    pub op: JobsOp,
}

impl JobsTopic {
    pub fn parse(topic: &str) -> Option<JobsTopic> {
        let rest = topic.strip_prefix("$aws/things/")?;
        let (thing, rest) = rest.split_once("/jobs/")?;
        if thing.is_empty() || thing.contains('/') {
            return None;
        }
        let op = match rest.split('/').collect::<Vec<_>>().as_slice() {
            ["get"] => JobsOp::GetPending,
            ["start-next"] => JobsOp::StartNext,
            [job, "get"] if valid_job_id(job) || *job == NEXT_JOB_ID => JobsOp::Describe {
                job_id: (*job).to_string(),
            },
            [job, "update"] if valid_job_id(job) => JobsOp::Update {
                job_id: (*job).to_string(),
            },
            _ => return None,
        };
        Some(JobsTopic {
            thing_name: thing.to_string(),
            op,
        })
    }

    pub fn base(thing_name: &str) -> String {
        format!("$aws/things/{thing_name}/jobs")
    }

    pub fn topic(&self) -> String {
        let base = JobsTopic::base(&self.thing_name);
        match &self.op {
            JobsOp::GetPending => format!("{base}/get"),
            JobsOp::StartNext => format!("{base}/start-next"),
            JobsOp::Describe { job_id } => format!("{base}/{job_id}/get"),
            JobsOp::Update { job_id } => format!("{base}/{job_id}/update"),
        }
    }

    /// `jobs/notify`: the thing's pending executions changed.
    pub fn notify_topic(thing_name: &str) -> String {
        format!("{}/notify", JobsTopic::base(thing_name))
    }

    /// `jobs/notify-next`: the thing's next execution changed.
    pub fn notify_next_topic(thing_name: &str) -> String {
        format!("{}/notify-next", JobsTopic::base(thing_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_topics_parse_for_classic_and_named_shadows() {
        assert_eq!(
            ShadowTopic::parse("$aws/things/D1/shadow/update"),
            Some(ShadowTopic {
                thing_name: "D1".into(),
                shadow_name: None,
                op: ShadowOp::Update
            })
        );
        let named = ShadowTopic::parse("$aws/things/D1/shadow/name/cfg/get").unwrap();
        assert_eq!(named.shadow_name.as_deref(), Some("cfg"));
        assert_eq!(named.topic(), "$aws/things/D1/shadow/name/cfg/get");
        assert_eq!(
            named.delta_topic(),
            "$aws/things/D1/shadow/name/cfg/update/delta"
        );
        for not_a_request in [
            "$aws/things/D1/shadow/update/accepted",
            "$aws/things/D1/shadow/update/delta",
            "$aws/things/D1/shadow/name/cfg",
            "$aws/things//shadow/get",
            "things/D1/shadow/get",
        ] {
            assert_eq!(ShadowTopic::parse(not_a_request), None, "{not_a_request}");
        }
    }

    #[test]
    fn every_jobs_operation_parses_and_builds_its_topic_back() {
        for (topic, op) in [
            ("$aws/things/T/jobs/get", JobsOp::GetPending),
            ("$aws/things/T/jobs/start-next", JobsOp::StartNext),
            (
                "$aws/things/T/jobs/job-1/get",
                JobsOp::Describe {
                    job_id: "job-1".into(),
                },
            ),
            (
                "$aws/things/T/jobs/$next/get",
                JobsOp::Describe {
                    job_id: "$next".into(),
                },
            ),
            (
                "$aws/things/T/jobs/job_2/update",
                JobsOp::Update {
                    job_id: "job_2".into(),
                },
            ),
        ] {
            let parsed = JobsTopic::parse(topic).unwrap();
            assert_eq!(parsed.op, op, "{topic}");
            assert_eq!(parsed.thing_name, "T");
            assert_eq!(parsed.topic(), topic);
            assert_eq!(
                DeviceRequest::parse(topic),
                Some(DeviceRequest::Jobs(parsed.clone()))
            );
            assert_eq!(
                DeviceRequest::parse(topic).unwrap().rejected(),
                format!("{topic}/rejected")
            );
        }
    }

    #[test]
    fn unknown_jobs_topics_are_invalid_topic_requests_but_answers_are_not_requests() {
        for topic in [
            "$aws/things/T/jobs",
            "$aws/things/T/jobs/nope",
            "$aws/things/T/jobs/a/b/c",
            "$aws/things/T/jobs/$next/update",
            "$aws/things/T/jobs/bad id/get",
        ] {
            assert_eq!(
                DeviceRequest::parse(topic),
                Some(DeviceRequest::InvalidTopic {
                    topic: topic.into(),
                    thing_name: "T".into()
                }),
                "{topic}"
            );
        }
        for topic in [
            "$aws/things/T/jobs/get/accepted",
            "$aws/things/T/jobs/j1/update/rejected",
            "$aws/things/T/jobs/notify",
            "$aws/things/T/jobs/notify-next",
            "$aws/things/T/jobsx/get",
            "telemetry/T",
        ] {
            assert_eq!(DeviceRequest::parse(topic), None, "{topic}");
        }
    }

    #[test]
    fn provisioning_topics_are_device_requests_without_a_thing() {
        let r = DeviceRequest::parse("$aws/certificates/create/json").unwrap();
        assert!(matches!(r, DeviceRequest::Provisioning(_)));
        assert_eq!(r.thing_name(), None);
        assert_eq!(r.accepted(), "$aws/certificates/create/json/accepted");
    }

    #[test]
    fn server_only_topics_cover_answers_deltas_notifications_and_events() {
        for t in [
            "$aws/events/presence/connected/c1",
            "$aws/things/T/shadow/update/accepted",
            "$aws/things/T/shadow/name/n/get/rejected",
            "$aws/things/T/shadow/update/delta",
            "$aws/things/T/shadow/update/documents",
            "$aws/things/T/jobs/notify",
            "$aws/things/T/jobs/notify-next",
            "$aws/things/T/jobs/j/update/accepted",
            "$aws/certificates/create/json/accepted",
        ] {
            assert!(is_server_only(t), "{t}");
        }
        for t in [
            "$aws/things/T/shadow/update",
            "$aws/things/T/jobs/get",
            "sensors/accepted",
            "$aws/rules/x",
        ] {
            assert!(!is_server_only(t), "{t}");
        }
    }
}
