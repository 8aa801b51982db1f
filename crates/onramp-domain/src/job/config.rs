//! A job's configuration, in CreateJob's shape, and its validation.
//!
//! The fields carry AWS's names so that a CreateJob body can be read as it
//! is. Ranges follow AWS's API reference; each refusal names the field and
//! the range it broke.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest job document: 32 KB of JSON.
pub const JOB_DOCUMENT_MAX_BYTES: usize = 32 * 1024;
/// The in-progress timer's range, in minutes (up to 7 days).
pub const IN_PROGRESS_TIMEOUT_MINUTES: std::ops::RangeInclusive<u32> = 1..=10_080;
/// `maximumPerMinute` range, and its default.
pub const MAXIMUM_PER_MINUTE: std::ops::RangeInclusive<u32> = 1..=1000;
pub const DEFAULT_MAXIMUM_PER_MINUTE: u32 = 1000;
/// `baseRatePerMinute` range.
pub const BASE_RATE_PER_MINUTE: std::ops::RangeInclusive<u32> = 1..=1000;
/// `incrementFactor` range.
pub const INCREMENT_FACTOR: std::ops::RangeInclusive<f64> = 1.1..=5.0;
/// Retries one criterion may grant, and retries one thing may get per job
/// across every failure type.
pub const MAX_RETRIES: u32 = 10;
/// The confirmation window of truthful success, in minutes (up to 7 days).
pub const CONFIRMATION_MINUTES: std::ops::RangeInclusive<u32> = 1..=10_080;

/// Everything about a job that the execution rules need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_config: Option<TimeoutConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_executions_retry_config: Option<RetryConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_executions_rollout_config: Option<RolloutConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_config: Option<AbortConfig>,
    /// Onramp's truthful success; absent from AWS's CreateJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_confirmation: Option<ConfirmationConfig>,
    /// When the rollout starts and ends (AWS's `schedulingConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_config: Option<super::SchedulingConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutConfig {
    pub in_progress_timeout_in_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryConfig {
    pub criteria_list: Vec<RetryCriteria>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryCriteria {
    pub failure_type: RetryFailureType,
    pub number_of_retries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RetryFailureType {
    Failed,
    TimedOut,
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutConfig {
    #[serde(default = "default_maximum_per_minute")]
    pub maximum_per_minute: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exponential_rate: Option<ExponentialRate>,
}

fn default_maximum_per_minute() -> u32 {
    DEFAULT_MAXIMUM_PER_MINUTE
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExponentialRate {
    pub base_rate_per_minute: u32,
    pub increment_factor: f64,
    pub rate_increase_criteria: RateIncreaseCriteria,
}

/// Exactly one of the two counts: the rate grows each time that many more
/// things have been notified, or have succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateIncreaseCriteria {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_notified_things: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_succeeded_things: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortConfig {
    pub criteria_list: Vec<AbortCriteria>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortCriteria {
    pub failure_type: AbortFailureType,
    pub action: AbortAction,
    pub threshold_percentage: f64,
    pub min_number_of_executed_things: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AbortFailureType {
    Failed,
    Rejected,
    TimedOut,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AbortAction {
    Cancel,
}

/// Truthful success: a SUCCEEDED execution counts only once the device
/// reports `firmwareVersion` within `withinMinutes` of reporting success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmationConfig {
    pub firmware_version: String,
    pub within_minutes: u32,
}

/// Why a job configuration or document was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobConfigError {
    #[error("the job configuration is malformed: {0}")]
    Malformed(String),
    #[error("{field} must be between {min} and {max}, not {value}")]
    OutOfRange {
        field: &'static str,
        min: f64,
        max: f64,
        value: f64,
    },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the job document must be a JSON object")]
    DocumentNotObject,
    #[error("the job document holds a key reserved by Onramp's JSON storage")]
    DocumentReservedKey,
    #[error("the job document is {size} bytes; at most {max} are allowed")]
    DocumentTooLarge { size: usize, max: usize },
}

fn in_range<T: PartialOrd + Copy + Into<f64>>(
    field: &'static str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
) -> Result<(), JobConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(JobConfigError::OutOfRange {
            field,
            min: (*range.start()).into(),
            max: (*range.end()).into(),
            value: value.into(),
        })
    }
}

impl JobConfig {
    /// Reads and validates the configuration members of a CreateJob body;
    /// other members are ignored.
    pub fn from_json(body: &Value) -> Result<JobConfig, JobConfigError> {
        let config: JobConfig = serde_json::from_value(body.clone())
            .map_err(|e| JobConfigError::Malformed(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), JobConfigError> {
        if let Some(timeout) = &self.timeout_config {
            in_range(
                "timeoutConfig.inProgressTimeoutInMinutes",
                timeout.in_progress_timeout_in_minutes,
                &IN_PROGRESS_TIMEOUT_MINUTES,
            )?;
        }
        if let Some(retry) = &self.job_executions_retry_config {
            retry.validate()?;
        }
        if let Some(rollout) = &self.job_executions_rollout_config {
            rollout.validate()?;
        }
        if let Some(abort) = &self.abort_config {
            abort.validate()?;
        }
        if let Some(confirmation) = &self.success_confirmation {
            if confirmation.firmware_version.trim().is_empty() {
                return Err(JobConfigError::Invalid {
                    field: "successConfirmation.firmwareVersion",
                    reason: "must not be empty",
                });
            }
            in_range(
                "successConfirmation.withinMinutes",
                confirmation.within_minutes,
                &CONFIRMATION_MINUTES,
            )?;
        }
        if let Some(scheduling) = &self.scheduling_config {
            scheduling.schedule()?;
        }
        Ok(())
    }

    /// The in-progress timer's length in seconds, when the job has one.
    pub fn in_progress_timeout_seconds(&self) -> Option<i64> {
        self.timeout_config
            .map(|t| i64::from(t.in_progress_timeout_in_minutes) * 60)
    }
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), JobConfigError> {
        const FIELD: &str = "jobExecutionsRetryConfig.criteriaList";
        if self.criteria_list.is_empty() || self.criteria_list.len() > 2 {
            return Err(JobConfigError::Invalid {
                field: FIELD,
                reason: "must hold one or two criteria",
            });
        }
        let types: Vec<_> = self.criteria_list.iter().map(|c| c.failure_type).collect();
        if types.len() == 2 && (types[0] == types[1] || types.contains(&RetryFailureType::All)) {
            // ALL already covers FAILED and TIMED_OUT: together they would overlap.
            return Err(JobConfigError::Invalid {
                field: FIELD,
                reason: "failure types must be distinct, and ALL stands alone",
            });
        }
        for criteria in &self.criteria_list {
            in_range(
                "jobExecutionsRetryConfig.criteriaList.numberOfRetries",
                criteria.number_of_retries,
                &(0..=MAX_RETRIES),
            )?;
        }
        Ok(())
    }

    /// Retries allowed for executions that ended as `failure`.
    pub fn retries_for(&self, failure: RetryFailureType) -> Option<(RetryFailureType, u32)> {
        let find = |t| {
            self.criteria_list
                .iter()
                .find(|c| c.failure_type == t)
                .map(|c| (t, c.number_of_retries))
        };
        find(failure).or_else(|| find(RetryFailureType::All))
    }
}

impl RolloutConfig {
    pub fn validate(&self) -> Result<(), JobConfigError> {
        in_range(
            "jobExecutionsRolloutConfig.maximumPerMinute",
            self.maximum_per_minute,
            &MAXIMUM_PER_MINUTE,
        )?;
        if let Some(rate) = &self.exponential_rate {
            in_range(
                "jobExecutionsRolloutConfig.exponentialRate.baseRatePerMinute",
                rate.base_rate_per_minute,
                &BASE_RATE_PER_MINUTE,
            )?;
            if !rate.increment_factor.is_finite() {
                return Err(JobConfigError::Invalid {
                    field: "jobExecutionsRolloutConfig.exponentialRate.incrementFactor",
                    reason: "must be a number",
                });
            }
            in_range(
                "jobExecutionsRolloutConfig.exponentialRate.incrementFactor",
                rate.increment_factor,
                &INCREMENT_FACTOR,
            )?;
            let criteria = rate.rate_increase_criteria;
            const FIELD: &str = "jobExecutionsRolloutConfig.exponentialRate.rateIncreaseCriteria";
            match (
                criteria.number_of_notified_things,
                criteria.number_of_succeeded_things,
            ) {
                (Some(n), None) | (None, Some(n)) => in_range(FIELD, n, &(1..=u32::MAX))?,
                _ => {
                    return Err(JobConfigError::Invalid {
                        field: FIELD,
                        reason: "must name exactly one of numberOfNotifiedThings and numberOfSucceededThings",
                    });
                }
            }
        }
        Ok(())
    }
}

impl AbortConfig {
    pub fn validate(&self) -> Result<(), JobConfigError> {
        if self.criteria_list.is_empty() {
            return Err(JobConfigError::Invalid {
                field: "abortConfig.criteriaList",
                reason: "must hold at least one criterion",
            });
        }
        for criteria in &self.criteria_list {
            let t = criteria.threshold_percentage;
            if !t.is_finite() || t <= 0.0 || t > 100.0 {
                return Err(JobConfigError::OutOfRange {
                    field: "abortConfig.criteriaList.thresholdPercentage",
                    min: 0.01,
                    max: 100.0,
                    value: t,
                });
            }
            // AWS keeps two decimals; a third would be silently lost.
            if ((t * 100.0).round() - t * 100.0).abs() > 1e-6 {
                return Err(JobConfigError::Invalid {
                    field: "abortConfig.criteriaList.thresholdPercentage",
                    reason: "may have at most two decimals",
                });
            }
            in_range(
                "abortConfig.criteriaList.minNumberOfExecutedThings",
                criteria.min_number_of_executed_things,
                &(1..=u32::MAX),
            )?;
        }
        Ok(())
    }
}

/// A job document: a JSON object of at most 32 KB.
pub fn validate_job_document(document: &[u8]) -> Result<Value, JobConfigError> {
    if document.len() > JOB_DOCUMENT_MAX_BYTES {
        return Err(JobConfigError::DocumentTooLarge {
            size: document.len(),
            max: JOB_DOCUMENT_MAX_BYTES,
        });
    }
    let text = std::str::from_utf8(document).map_err(|_| JobConfigError::DocumentNotObject)?;
    match serde_json::from_str::<Value>(text) {
        // A stored document holding serde_json's raw-value marker as a key
        // would fail every later read of it (see `crate::json`).
        Ok(value) if crate::json::holds_raw_value_marker(text, &value) => {
            Err(JobConfigError::DocumentReservedKey)
        }
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(JobConfigError::DocumentNotObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(e: JobConfigError) -> &'static str {
        match e {
            JobConfigError::OutOfRange { field, .. } | JobConfigError::Invalid { field, .. } => {
                field
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_full_create_job_body_is_read_with_aws_names() {
        let config = JobConfig::from_json(&json!({
            "jobId": "ignored",
            "timeoutConfig": {"inProgressTimeoutInMinutes": 60},
            "jobExecutionsRetryConfig": {"criteriaList": [
                {"failureType": "FAILED", "numberOfRetries": 2},
                {"failureType": "TIMED_OUT", "numberOfRetries": 1}]},
            "jobExecutionsRolloutConfig": {"maximumPerMinute": 500, "exponentialRate": {
                "baseRatePerMinute": 50, "incrementFactor": 2,
                "rateIncreaseCriteria": {"numberOfNotifiedThings": 1000}}},
            "abortConfig": {"criteriaList": [{"action": "CANCEL", "failureType": "ALL",
                "minNumberOfExecutedThings": 10, "thresholdPercentage": 12.5}]},
        }))
        .unwrap();
        assert_eq!(config.in_progress_timeout_seconds(), Some(3600));
        let rollout = config.job_executions_rollout_config.unwrap();
        assert_eq!(rollout.maximum_per_minute, 500);
        assert_eq!(rollout.exponential_rate.unwrap().increment_factor, 2.0);
        let retry = config.job_executions_retry_config.unwrap();
        assert_eq!(
            retry.retries_for(RetryFailureType::TimedOut),
            Some((RetryFailureType::TimedOut, 1))
        );
        assert_eq!(
            config.abort_config.unwrap().criteria_list[0].threshold_percentage,
            12.5
        );
    }

    #[test]
    fn maximum_per_minute_defaults_to_1000() {
        let config = JobConfig::from_json(&json!({"jobExecutionsRolloutConfig": {}})).unwrap();
        assert_eq!(
            config
                .job_executions_rollout_config
                .unwrap()
                .maximum_per_minute,
            1000
        );
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        let cases = [
            (
                json!({"timeoutConfig": {"inProgressTimeoutInMinutes": 0}}),
                "timeoutConfig.inProgressTimeoutInMinutes",
            ),
            (
                json!({"timeoutConfig": {"inProgressTimeoutInMinutes": 10081}}),
                "timeoutConfig.inProgressTimeoutInMinutes",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"maximumPerMinute": 0}}),
                "jobExecutionsRolloutConfig.maximumPerMinute",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"maximumPerMinute": 1001}}),
                "jobExecutionsRolloutConfig.maximumPerMinute",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 0, "incrementFactor": 2, "rateIncreaseCriteria": {"numberOfNotifiedThings": 1}}}}),
                "jobExecutionsRolloutConfig.exponentialRate.baseRatePerMinute",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 1.0, "rateIncreaseCriteria": {"numberOfNotifiedThings": 1}}}}),
                "jobExecutionsRolloutConfig.exponentialRate.incrementFactor",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 5.5, "rateIncreaseCriteria": {"numberOfNotifiedThings": 1}}}}),
                "jobExecutionsRolloutConfig.exponentialRate.incrementFactor",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2, "rateIncreaseCriteria": {}}}}),
                "jobExecutionsRolloutConfig.exponentialRate.rateIncreaseCriteria",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2, "rateIncreaseCriteria": {"numberOfNotifiedThings": 1, "numberOfSucceededThings": 1}}}}),
                "jobExecutionsRolloutConfig.exponentialRate.rateIncreaseCriteria",
            ),
            (
                json!({"jobExecutionsRolloutConfig": {"exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2, "rateIncreaseCriteria": {"numberOfSucceededThings": 0}}}}),
                "jobExecutionsRolloutConfig.exponentialRate.rateIncreaseCriteria",
            ),
            (
                json!({"jobExecutionsRetryConfig": {"criteriaList": []}}),
                "jobExecutionsRetryConfig.criteriaList",
            ),
            (
                json!({"jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 11}]}}),
                "jobExecutionsRetryConfig.criteriaList.numberOfRetries",
            ),
            (
                json!({"jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "ALL", "numberOfRetries": 1}, {"failureType": "FAILED", "numberOfRetries": 1}]}}),
                "jobExecutionsRetryConfig.criteriaList",
            ),
            (
                json!({"jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}, {"failureType": "FAILED", "numberOfRetries": 2}]}}),
                "jobExecutionsRetryConfig.criteriaList",
            ),
            (
                json!({"abortConfig": {"criteriaList": []}}),
                "abortConfig.criteriaList",
            ),
            (
                json!({"abortConfig": {"criteriaList": [{"action": "CANCEL", "failureType": "FAILED", "minNumberOfExecutedThings": 1, "thresholdPercentage": 0}]}}),
                "abortConfig.criteriaList.thresholdPercentage",
            ),
            (
                json!({"abortConfig": {"criteriaList": [{"action": "CANCEL", "failureType": "FAILED", "minNumberOfExecutedThings": 1, "thresholdPercentage": 100.5}]}}),
                "abortConfig.criteriaList.thresholdPercentage",
            ),
            (
                json!({"abortConfig": {"criteriaList": [{"action": "CANCEL", "failureType": "FAILED", "minNumberOfExecutedThings": 1, "thresholdPercentage": 10.125}]}}),
                "abortConfig.criteriaList.thresholdPercentage",
            ),
            (
                json!({"abortConfig": {"criteriaList": [{"action": "CANCEL", "failureType": "FAILED", "minNumberOfExecutedThings": 0, "thresholdPercentage": 10}]}}),
                "abortConfig.criteriaList.minNumberOfExecutedThings",
            ),
            (
                json!({"successConfirmation": {"firmwareVersion": " ", "withinMinutes": 5}}),
                "successConfirmation.firmwareVersion",
            ),
            (
                json!({"successConfirmation": {"firmwareVersion": "2.0", "withinMinutes": 0}}),
                "successConfirmation.withinMinutes",
            ),
        ];
        for (body, field) in cases {
            let err = JobConfig::from_json(&body).expect_err(&body.to_string());
            assert_eq!(field_of(err), field, "{body}");
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        JobConfig::from_json(&json!({
            "timeoutConfig": {"inProgressTimeoutInMinutes": 10080},
            "jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "ALL", "numberOfRetries": 10}]},
            "jobExecutionsRolloutConfig": {"maximumPerMinute": 1, "exponentialRate": {
                "baseRatePerMinute": 1000, "incrementFactor": 1.1,
                "rateIncreaseCriteria": {"numberOfSucceededThings": 1}}},
            "abortConfig": {"criteriaList": [{"action": "CANCEL", "failureType": "TIMED_OUT",
                "minNumberOfExecutedThings": 1, "thresholdPercentage": 100}]},
        }))
        .unwrap();
    }

    #[test]
    fn unknown_enum_values_are_malformed() {
        for body in [
            json!({"abortConfig": {"criteriaList": [{"action": "PAUSE", "failureType": "FAILED", "minNumberOfExecutedThings": 1, "thresholdPercentage": 10}]}}),
            json!({"jobExecutionsRetryConfig": {"criteriaList": [{"failureType": "REJECTED", "numberOfRetries": 1}]}}),
            json!({"timeoutConfig": {"inProgressTimeoutInMinutes": -5}}),
        ] {
            assert!(matches!(
                JobConfig::from_json(&body),
                Err(JobConfigError::Malformed(_))
            ));
        }
    }

    #[test]
    fn job_documents_are_objects_of_at_most_32_kb() {
        assert!(validate_job_document(br#"{"operation":"update"}"#).is_ok());
        assert_eq!(
            validate_job_document(b"[1]"),
            Err(JobConfigError::DocumentNotObject)
        );
        assert_eq!(
            validate_job_document(b"{"),
            Err(JobConfigError::DocumentNotObject)
        );
        assert_eq!(
            validate_job_document(br#"{"a":{"b":1,"$serde_json::private::RawValue":1}}"#),
            Err(JobConfigError::DocumentReservedKey)
        );
        let pad = |n: usize| format!(r#"{{"a":"{}"}}"#, "x".repeat(n - 8));
        assert!(validate_job_document(pad(32 * 1024).as_bytes()).is_ok());
        assert_eq!(
            validate_job_document(pad(32 * 1024 + 1).as_bytes()),
            Err(JobConfigError::DocumentTooLarge {
                size: 32 * 1024 + 1,
                max: 32 * 1024
            })
        );
    }
}
