//! CLI for jobs: `onramp job create|list|show|executions|cancel|pause|resume|delete|thing`.

use crate::admin::Admin;
use crate::cli::{Output, PageArgs, next_after, ts};
use anyhow::{Context, Result};
use clap::Subcommand;
use onramp_domain::job::JobExecution;
use onramp_service::{CreateJob, JobDescription, JobTargets};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job and queue it for its targets (see docs/jobs.md and docs/rollouts.md).
    Create {
        /// Job id: 1 to 64 letters, digits, `-` and `_`.
        job_id: String,
        /// The job document: a JSON object file of at most 32 KB.
        #[arg(long)]
        document: PathBuf,
        /// A target thing; repeat for more.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// A target thing group; repeat for more.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A fleet query as JSON, e.g. '{"hardwareRevision":"b","firmwareLt":"2.0"}'.
        #[arg(long)]
        query: Option<String>,
        /// Also target things that join the groups or match the query later.
        #[arg(long)]
        continuous: bool,
        /// A JSON file with configuration members: timeoutConfig,
        /// jobExecutionsRetryConfig, jobExecutionsRolloutConfig, abortConfig,
        /// successConfirmation, schedulingConfig.
        #[arg(long = "job-config")]
        job_config: Option<PathBuf>,
        /// Free text shown with the job.
        #[arg(long)]
        description: Option<String>,
    },
    /// List jobs in id order.
    List(PageArgs),
    /// Show a job with its executions counted by status and its failures
    /// grouped by hardware revision and device class.
    Show {
        /// The job id.
        job_id: String,
    },
    /// List a job's executions in thing order.
    Executions {
        /// The job id.
        job_id: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Cancel a job (queued executions are canceled, waiting targets
    /// dropped), or with --thing only that thing's execution.
    Cancel {
        /// The job id.
        job_id: String,
        /// Cancel only this thing's execution.
        #[arg(long)]
        thing: Option<String>,
        /// Cancel executions already in progress too.
        #[arg(long)]
        force: bool,
    },
    /// Pause a job's rollout: nothing more is released to devices until it
    /// is resumed; executions already released run on.
    Pause {
        /// The job id.
        job_id: String,
    },
    /// Resume a paused rollout at its configured pace.
    Resume {
        /// The job id.
        job_id: String,
    },
    /// Delete a COMPLETED or CANCELED job with its executions, or with
    /// --force a job in any status (canceled first, in-progress executions
    /// too).
    Delete {
        /// The job id.
        job_id: String,
        /// Delete a job that is still scheduled or in progress.
        #[arg(long)]
        force: bool,
    },
    /// A thing's pending executions.
    Thing {
        /// The thing name.
        thing_name: String,
    },
}

const JOB_HEAD: [&str; 5] = ["JOB", "STATUS", "SELECTION", "EXECUTIONS", "CREATED"];
const EXEC_HEAD: [&str; 6] = ["THING", "JOB", "NUMBER", "STATUS", "VERSION", "UPDATED"];

fn job_row(j: &JobDescription) -> Vec<String> {
    let counts = j
        .execution_counts
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let status = if j.rollout_paused {
        format!("{} (paused)", j.status)
    } else {
        j.status.clone()
    };
    vec![
        j.job_id.clone(),
        status,
        j.target_selection.clone(),
        counts,
        ts(j.created_at),
    ]
}

fn exec_row(e: &JobExecution) -> Vec<String> {
    let mut status = e.status.to_string();
    if let Some(reason) = &e.failure_reason {
        status = format!("{status} ({reason:?})");
    }
    vec![
        e.thing_name.clone(),
        e.job_id.clone(),
        e.execution_number.to_string(),
        status,
        e.version.to_string(),
        ts(e.last_updated_at),
    ]
}

/// The schedule of a job, as `job show` prints it under the table.
fn schedule_line(j: &JobDescription) -> Option<String> {
    let config = j.config.get("schedulingConfig")?;
    let scheduling: onramp_domain::job::SchedulingConfig =
        serde_json::from_value(config.clone()).ok()?;
    let schedule = scheduling.schedule().ok()?;
    let mut parts = Vec::new();
    if let Some(start) = schedule.start {
        parts.push(format!("starts {}", ts(start)));
    }
    if let Some(end) = schedule.end {
        parts.push(format!(
            "ends {} ({})",
            ts(end),
            match schedule.end_behavior {
                onramp_domain::job::EndBehavior::StopRollout => "STOP_ROLLOUT",
                onramp_domain::job::EndBehavior::Cancel => "CANCEL",
                onramp_domain::job::EndBehavior::ForceCancel => "FORCE_CANCEL",
            }
        ));
    }
    (!parts.is_empty()).then(|| format!("schedule: {}", parts.join(", ")))
}

pub async fn job(admin: &Admin, out: &Output, cmd: JobCommand) -> Result<()> {
    match cmd {
        JobCommand::Create {
            job_id,
            document,
            targets,
            groups,
            query,
            continuous,
            job_config,
            description,
        } => {
            let document = std::fs::read(&document)
                .with_context(|| format!("reading {}", document.display()))?;
            let query = query
                .map(|q| serde_json::from_str(&q).context("--query is not a fleet query"))
                .transpose()?;
            let config = match job_config {
                Some(path) => serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{} is not JSON", path.display()))?,
                None => serde_json::json!({}),
            };
            let created = admin
                .create_job(CreateJob {
                    job_id,
                    description,
                    document,
                    targets: JobTargets {
                        things: targets,
                        thing_groups: groups,
                        query,
                    },
                    continuous,
                    config,
                })
                .await?;
            let rows = vec![job_row(&created)];
            out.table_or_json(&created, &JOB_HEAD, rows)
        }
        JobCommand::List(p) => {
            let page = p.page()?;
            let jobs = admin.list_jobs(&page).await?;
            let next = next_after(&jobs, &page, |j| j.job_id.clone());
            let rows = jobs.iter().map(job_row).collect();
            out.list(&jobs, next, &JOB_HEAD, rows)
        }
        JobCommand::Show { job_id } => {
            let j = admin.describe_job(&job_id).await?;
            if out.json {
                return out.table_or_json(&j, &JOB_HEAD, vec![]);
            }
            out.table_or_json(&j, &JOB_HEAD, vec![job_row(&j)])?;
            if let Some(line) = schedule_line(&j) {
                println!("{line}");
            }
            if !j.failures_by_group.is_empty() {
                println!();
                let rows = j
                    .failures_by_group
                    .iter()
                    .map(|g| {
                        vec![
                            g.hardware_revision.clone().unwrap_or_default(),
                            g.device_class.clone().unwrap_or_default(),
                            g.status.clone(),
                            g.count.to_string(),
                        ]
                    })
                    .collect();
                out.table_or_json(
                    &j.failures_by_group,
                    &["HW REV", "CLASS", "FAILURE", "COUNT"],
                    rows,
                )?;
            }
            Ok(())
        }
        JobCommand::Executions { job_id, page } => {
            let page = page.page()?;
            let executions = admin.list_job_executions(&job_id, &page).await?;
            let next = next_after(&executions, &page, |e| {
                format!("{}/{}", e.thing_name, e.execution_number)
            });
            let rows = executions.iter().map(exec_row).collect();
            out.list(&executions, next, &EXEC_HEAD, rows)
        }
        JobCommand::Cancel {
            job_id,
            thing: Some(thing),
            force,
        } => {
            let e = admin.cancel_job_execution(&job_id, &thing, force).await?;
            let rows = vec![exec_row(&e)];
            out.table_or_json(&e, &EXEC_HEAD, rows)
        }
        JobCommand::Cancel {
            job_id,
            thing: None,
            force,
        } => {
            let j = admin.cancel_job(&job_id, force).await?;
            let rows = vec![job_row(&j)];
            out.table_or_json(&j, &JOB_HEAD, rows)
        }
        JobCommand::Pause { job_id } => {
            let j = admin.pause_job(&job_id).await?;
            out.table_or_json(&j, &JOB_HEAD, vec![job_row(&j)])
        }
        JobCommand::Resume { job_id } => {
            let j = admin.resume_job(&job_id).await?;
            out.table_or_json(&j, &JOB_HEAD, vec![job_row(&j)])
        }
        JobCommand::Delete { job_id, force } => {
            admin.delete_job(&job_id, force).await?;
            out.message(
                &serde_json::json!({"jobId": job_id, "deleted": true}),
                &format!("deleted job {job_id}"),
            )
        }
        JobCommand::Thing { thing_name } => {
            let executions = admin.thing_jobs(&thing_name).await?;
            let rows = executions.iter().map(exec_row).collect();
            out.table_or_json(&executions, &EXEC_HEAD, rows)
        }
    }
}
