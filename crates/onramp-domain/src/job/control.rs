//! What an operator may do with a whole job once it exists: pause and
//! resume its rollout, start it at a scheduled time and end it at another
//! (`schedulingConfig`, with AWS's field names and limits), and delete it.
//!
//! A job's status is one of AWS's: `SCHEDULED` (waiting for its
//! `startTime`), `IN_PROGRESS`, `COMPLETED` or `CANCELED`. Pausing is
//! Onramp's own and is not a status: a paused job stays `IN_PROGRESS` (or
//! `SCHEDULED`) with `rolloutPaused` set, so that AWS clients reading the
//! status see what they expect.

use super::JobConfigError;
use crate::UnixTime;
use serde::{Deserialize, Serialize};

/// The nearest a scheduled `startTime` (and `endTime`) may be to the time
/// the job is created, and the shortest time between start and end.
pub const SCHEDULE_MIN_LEAD_SECONDS: i64 = 30 * 60;
/// How far ahead a `startTime` may be.
pub const SCHEDULE_MAX_START_AHEAD_SECONDS: i64 = 366 * 86_400;
/// How far ahead an `endTime` may be, and the longest time between start and end.
pub const SCHEDULE_MAX_END_AHEAD_SECONDS: i64 = 2 * 366 * 86_400;

/// A job's status, spelt as AWS spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Scheduled,
    InProgress,
    Completed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Scheduled => "SCHEDULED",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        [
            JobStatus::Scheduled,
            JobStatus::InProgress,
            JobStatus::Completed,
            JobStatus::Canceled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// COMPLETED and CANCELED jobs never run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Canceled)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an operator's request on a job was refused (a conflict with the
/// job's state, never a malformed request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JobControlRefusal(pub String);

/// Whether a job in `status` whose rollout is `paused` may be paused.
/// Terminal jobs have nothing left to pause.
pub fn check_pause(job_id: &str, status: JobStatus, paused: bool) -> Result<(), JobControlRefusal> {
    if status.is_terminal() {
        return Err(JobControlRefusal(format!(
            "job {job_id} is {status}: only a scheduled or in-progress job can be paused"
        )));
    }
    if paused {
        return Err(JobControlRefusal(format!(
            "the rollout of job {job_id} is already paused"
        )));
    }
    Ok(())
}

/// Whether a job in `status` whose rollout is `paused` may be resumed.
pub fn check_resume(
    job_id: &str,
    status: JobStatus,
    paused: bool,
) -> Result<(), JobControlRefusal> {
    if status.is_terminal() {
        return Err(JobControlRefusal(format!(
            "job {job_id} is {status}: only a scheduled or in-progress job can be resumed"
        )));
    }
    if !paused {
        return Err(JobControlRefusal(format!(
            "the rollout of job {job_id} is not paused"
        )));
    }
    Ok(())
}

/// Whether a job in `status` may be deleted: as AWS's DeleteJob, only a
/// COMPLETED or CANCELED job, unless `force`.
pub fn check_delete(job_id: &str, status: JobStatus, force: bool) -> Result<(), JobControlRefusal> {
    if status.is_terminal() || force {
        Ok(())
    } else {
        Err(JobControlRefusal(format!(
            "job {job_id} is {status}: only a COMPLETED or CANCELED job can be deleted \
             without force"
        )))
    }
}

/// A point in time as `schedulingConfig` accepts it: AWS's ISO 8601 text
/// (`2027-03-01T09:30`, seconds and a `Z` or `±HH:MM` offset allowed), or
/// Unix epoch seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScheduleTime {
    Epoch(i64),
    Text(String),
}

impl ScheduleTime {
    /// The time in epoch seconds, or None when the text is not ISO 8601.
    pub fn epoch(&self) -> Option<UnixTime> {
        match self {
            ScheduleTime::Epoch(t) => Some(*t),
            ScheduleTime::Text(s) => parse_iso8601(s),
        }
    }
}

/// What happens at a scheduled job's `endTime`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndBehavior {
    /// No more things are released or added; executions already released
    /// run to their end, and the job completes when they have.
    #[default]
    StopRollout,
    /// The job is canceled as `onramp job cancel` would: queued executions
    /// are canceled, in-progress ones run on.
    Cancel,
    /// The job is canceled with force: in-progress executions are canceled too.
    ForceCancel,
}

/// CreateJob's `schedulingConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<ScheduleTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<ScheduleTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_behavior: Option<EndBehavior>,
}

/// A job's schedule in epoch seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub start: Option<UnixTime>,
    pub end: Option<UnixTime>,
    pub end_behavior: EndBehavior,
}

fn invalid(field: &'static str, reason: &'static str) -> JobConfigError {
    JobConfigError::Invalid { field, reason }
}

impl SchedulingConfig {
    /// The schedule's times, checked for form only (as every stored job's
    /// were when it was created): the text parses and `endBehavior` comes
    /// with an `endTime`.
    pub fn schedule(&self) -> Result<Schedule, JobConfigError> {
        let time = |field: &'static str, t: &Option<ScheduleTime>| match t {
            None => Ok(None),
            Some(t) => t.epoch().map(Some).ok_or_else(|| {
                invalid(
                    field,
                    "must be ISO 8601 such as 2027-03-01T09:30 (UTC unless an offset is given) \
                     or epoch seconds",
                )
            }),
        };
        let start = time("schedulingConfig.startTime", &self.start_time)?;
        let end = time("schedulingConfig.endTime", &self.end_time)?;
        if self.end_behavior.is_some() && end.is_none() {
            return Err(invalid(
                "schedulingConfig.endBehavior",
                "needs an endTime to apply at",
            ));
        }
        Ok(Schedule {
            start,
            end,
            end_behavior: self.end_behavior.unwrap_or_default(),
        })
    }

    /// The schedule of a job being created at `now`, with AWS's limits: a
    /// `startTime` at least 30 minutes and at most a year ahead (one in the
    /// past is refused, as AWS refuses it); an `endTime` at least 30 minutes
    /// after the start (or after `now` without a start) and at most two
    /// years ahead.
    pub fn schedule_at(&self, now: UnixTime) -> Result<Schedule, JobConfigError> {
        let schedule = self.schedule()?;
        if let Some(start) = schedule.start {
            if start < now.saturating_add(SCHEDULE_MIN_LEAD_SECONDS) {
                return Err(invalid(
                    "schedulingConfig.startTime",
                    "must be at least 30 minutes after the job is created",
                ));
            }
            if start > now.saturating_add(SCHEDULE_MAX_START_AHEAD_SECONDS) {
                return Err(invalid(
                    "schedulingConfig.startTime",
                    "must be at most a year after the job is created",
                ));
            }
        }
        if let Some(end) = schedule.end {
            let from = schedule.start.unwrap_or(now);
            if end < from.saturating_add(SCHEDULE_MIN_LEAD_SECONDS) {
                return Err(invalid(
                    "schedulingConfig.endTime",
                    "must be at least 30 minutes after the startTime (or after the job is \
                     created, without a startTime)",
                ));
            }
            if end > now.saturating_add(SCHEDULE_MAX_END_AHEAD_SECONDS) {
                return Err(invalid(
                    "schedulingConfig.endTime",
                    "must be at most two years after the job is created",
                ));
            }
        }
        Ok(schedule)
    }
}

/// What the scheduler does to a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    /// The start time has come: the job becomes IN_PROGRESS and its rollout begins.
    Start,
    /// The end time has come: apply the end behavior.
    End(EndBehavior),
}

/// The scheduler's decision for a job in `status` with `schedule`, whose
/// end was already applied when `ended`. The end wins when both are due
/// (a scheduler that was down through the whole window releases nothing).
pub fn schedule_action(
    status: JobStatus,
    schedule: &Schedule,
    ended: bool,
    now: UnixTime,
) -> Option<ScheduleAction> {
    if status.is_terminal() {
        return None;
    }
    if !ended && schedule.end.is_some_and(|end| end <= now) {
        return Some(ScheduleAction::End(schedule.end_behavior));
    }
    if status == JobStatus::Scheduled && schedule.start.is_none_or(|start| start <= now) {
        return Some(ScheduleAction::Start);
    }
    None
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `YYYY-MM-DDTHH:MM[:SS][Z|±HH:MM]` as epoch seconds; UTC without an offset.
pub fn parse_iso8601(text: &str) -> Option<UnixTime> {
    let (date, rest) = text.split_once('T')?;
    let mut parts = date.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, month, day) = (digits(year)?, digits(month)?, digits(day)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let (clock, offset) = if let Some(clock) = rest.strip_suffix('Z') {
        (clock, 0)
    } else if let Some(at) = rest.rfind(['+', '-']) {
        let (clock, zone) = rest.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (h, m) = zone.get(1..)?.split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m) = (digits(h)?, digits(m)?);
        if h > 23 || m > 59 {
            return None;
        }
        (clock, sign * (h * 3600 + m * 60))
    } else {
        (rest, 0)
    };
    let fields: Vec<&str> = clock.split(':').collect();
    let (hour, minute, second) = match fields.as_slice() {
        [h, m] => (*h, *m, "00"),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    if hour.len() != 2 || minute.len() != 2 || second.len() != 2 {
        return None;
    }
    let (hour, minute, second) = (digits(hour)?, digits(minute)?, digits(second)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn iso_times_read_as_utc_epoch_seconds() {
        assert_eq!(parse_iso8601("1970-01-01T00:00"), Some(0));
        assert_eq!(parse_iso8601("2027-03-01T09:30"), Some(1_803_893_400));
        assert_eq!(parse_iso8601("2027-03-01T09:30:15Z"), Some(1_803_893_415));
        assert_eq!(parse_iso8601("2027-03-01T11:30+02:00"), Some(1_803_893_400));
        assert_eq!(parse_iso8601("2027-03-01T04:30-05:00"), Some(1_803_893_400));
        assert_eq!(parse_iso8601("2024-02-29T00:00"), Some(1_709_164_800));
        for bad in [
            "",
            "2027-03-01",
            "2027-3-01T09:30",
            "2027-02-29T00:00",
            "2027-13-01T00:00",
            "2027-03-01T24:00",
            "2027-03-01T09:60",
            "2027-03-01T09:30:61",
            "2027-03-01T09",
            "2027-03-01T09:30+2",
            "2027-03-01T+9:30",
            "２０２７-03-01T09:30",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_minute_reads_back(t in 0i64..4_102_444_800) {
            let t = t - t % 60;
            let days = t.div_euclid(86_400);
            // Civil date of `days` by counting from a known year start.
            let mut year = 1970;
            let mut left = days;
            loop {
                let len = if days_in_month(year, 2) == 29 { 366 } else { 365 };
                if left < len { break; }
                left -= len;
                year += 1;
            }
            let mut month = 1;
            while left >= days_in_month(year, month) {
                left -= days_in_month(year, month);
                month += 1;
            }
            let secs = t.rem_euclid(86_400);
            let text = format!(
                "{year:04}-{month:02}-{:02}T{:02}:{:02}",
                left + 1,
                secs / 3600,
                secs % 3600 / 60
            );
            prop_assert_eq!(parse_iso8601(&text), Some(t));
        }

        #[test]
        fn no_text_panics(s in "\\PC{0,40}") {
            let _ = parse_iso8601(&s);
        }
    }

    fn config(v: serde_json::Value) -> SchedulingConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_schedule_follows_aws_limits() {
        let now = 1_800_000_000;
        let ok = config(json!({"startTime": now + 1800, "endTime": now + 3600,
            "endBehavior": "CANCEL"}));
        assert_eq!(
            ok.schedule_at(now).unwrap(),
            Schedule {
                start: Some(now + 1800),
                end: Some(now + 3600),
                end_behavior: EndBehavior::Cancel
            }
        );
        let refused = |v: serde_json::Value| config(v).schedule_at(now).unwrap_err().to_string();
        assert!(refused(json!({"startTime": now - 60})).contains("startTime"));
        assert!(refused(json!({"startTime": now + 1799})).contains("30 minutes"));
        assert!(refused(json!({"startTime": now + 400 * 86_400})).contains("a year"));
        assert!(
            refused(json!({"startTime": now + 3600, "endTime": now + 3600 + 1799}))
                .contains("endTime")
        );
        assert!(refused(json!({"endTime": now + 60})).contains("endTime"));
        assert!(refused(json!({"endTime": now + 800 * 86_400})).contains("two years"));
        assert!(refused(json!({"endBehavior": "CANCEL"})).contains("endBehavior"));
        assert!(refused(json!({"startTime": "next tuesday"})).contains("ISO 8601"));
        // Without an end behavior, the end stops the rollout (AWS's default).
        let end_only = config(json!({"endTime": now + 1800}))
            .schedule_at(now)
            .unwrap();
        assert_eq!(end_only.end_behavior, EndBehavior::StopRollout);
        assert_eq!(end_only.start, None);
        assert!(
            serde_json::from_value::<SchedulingConfig>(json!({"startTme": 1})).is_err(),
            "a misspelt member is refused, not ignored"
        );
        assert!(
            serde_json::from_value::<SchedulingConfig>(json!({"endBehavior": "STOP"})).is_err()
        );
    }

    #[test]
    fn the_scheduler_starts_then_ends_once() {
        let schedule = Schedule {
            start: Some(100),
            end: Some(2000),
            end_behavior: EndBehavior::ForceCancel,
        };
        let at = |status, ended, now| schedule_action(status, &schedule, ended, now);
        assert_eq!(at(JobStatus::Scheduled, false, 99), None);
        assert_eq!(
            at(JobStatus::Scheduled, false, 100),
            Some(ScheduleAction::Start)
        );
        assert_eq!(at(JobStatus::InProgress, false, 1999), None);
        assert_eq!(
            at(JobStatus::InProgress, false, 2000),
            Some(ScheduleAction::End(EndBehavior::ForceCancel))
        );
        assert_eq!(at(JobStatus::InProgress, true, 5000), None, "ended once");
        assert_eq!(
            at(JobStatus::Scheduled, false, 3000),
            Some(ScheduleAction::End(EndBehavior::ForceCancel)),
            "a window missed entirely ends without releasing"
        );
        assert_eq!(at(JobStatus::Canceled, false, 3000), None);
        assert_eq!(at(JobStatus::Completed, false, 3000), None);
    }

    #[test]
    fn pause_resume_and_delete_depend_on_the_status() {
        use JobStatus::*;
        assert!(check_pause("j", InProgress, false).is_ok());
        assert!(check_pause("j", Scheduled, false).is_ok());
        assert!(check_pause("j", InProgress, true).is_err());
        for terminal in [Completed, Canceled] {
            let e = check_pause("j", terminal, false).unwrap_err();
            assert!(e.0.contains(terminal.as_str()), "{e}");
            assert!(check_resume("j", terminal, true).is_err());
            assert!(check_delete("j", terminal, false).is_ok());
        }
        assert!(check_resume("j", InProgress, true).is_ok());
        assert!(check_resume("j", InProgress, false).is_err());
        assert!(check_delete("j", InProgress, false).is_err());
        assert!(check_delete("j", Scheduled, false).is_err());
        assert!(check_delete("j", InProgress, true).is_ok());
        for s in [Scheduled, InProgress, Completed, Canceled] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        assert_eq!(JobStatus::parse("in_progress"), None);
    }
}
