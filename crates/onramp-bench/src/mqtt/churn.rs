//! `onramp-bench mqtt-churn`: connection churn soak. For `--duration-secs`,
//! `--clients` tasks each repeat: TCP connect, full TLS 1.3 handshake with
//! the client certificate, CONNECT (MQTT 3.1.1, clean session, a client id
//! never used before), a QoS 1 PUBLISH and its PUBACK, DISCONNECT and the
//! wait until the broker closes the connection. The broker's RSS is read
//! every `--sample-secs`; the result is the RSS at `--mark-secs` (after
//! warm-up) against the RSS at the end: memory that grows with every client
//! id ever seen, or that is not given back, shows as growth between the two.

use super::client::{self, Dialer, Publisher};
use super::{Broker, CpuMark, MqttArgs, Setup, progress, side_by_side};
use crate::report::Report;
use crate::sys;
use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use futures_util::SinkExt;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v3::Packet;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const SCENARIO: &str = "mqtt-churn";
/// One cycle taking longer than this counts as failed.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ChurnArgs {
    /// Concurrent clients, each connecting again as soon as it is done.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of the soak per broker, seconds.
    #[arg(long, default_value_t = 3600)]
    duration_secs: u64,
    /// When the reference RSS is read (after warm-up), seconds into the soak.
    #[arg(long, default_value_t = 300)]
    mark_secs: u64,
    /// How often the broker's RSS is read, seconds.
    #[arg(long, default_value_t = 60)]
    sample_secs: u64,
    /// Payload of each QoS 1 PUBLISH, bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    #[command(flatten)]
    mqtt: MqttArgs,
}

/// RSS at a moment of the soak.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    cycles: usize,
    rss_kib: u64,
    sockets: usize,
}

struct Outcome {
    cycles: usize,
    failures: BTreeMap<String, usize>,
    wall: Duration,
    rss0_kib: u64,
    samples: Vec<Sample>,
    mark: Option<Sample>,
    end: Sample,
    peak_rss_kib: u64,
    cpu: super::CpuUse,
}

impl Outcome {
    fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// RSS at the end over the RSS at the mark.
    fn growth(&self) -> Option<f64> {
        let mark = self.mark?;
        Some(self.end.rss_kib as f64 / mark.rss_kib.max(1) as f64)
    }

    fn json(&self) -> serde_json::Value {
        let sample = |s: &Sample| {
            serde_json::json!({
                "at_s": s.at.as_secs(),
                "cycles": s.cycles,
                "rss_kib": s.rss_kib,
                "sockets": s.sockets,
            })
        };
        serde_json::json!({
            "cycles": self.cycles,
            "failed": self.failed(),
            "failures": self.failures,
            "duration_s": super::round3(self.wall.as_secs_f64()),
            "cycles_per_s": super::round3(self.cycles as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)),
            "rss0_kib": self.rss0_kib,
            "mark": self.mark.as_ref().map(sample),
            "end": sample(&self.end),
            "end_over_mark": self.growth().map(super::round3),
            "peak_rss_kib": self.peak_rss_kib,
            "cpu": self.cpu.json(),
            "samples": self.samples.iter().map(sample).collect::<Vec<_>>(),
        })
    }
}

pub async fn run(args: ChurnArgs) -> Result<Report> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.duration_secs > 0, "--duration-secs must be at least 1");
    ensure!(args.sample_secs > 0, "--sample-secs must be at least 1");
    let setup = Setup::start(&args.mqtt, SCENARIO).await?;
    let mut results = Vec::new();
    for broker in &setup.brokers {
        progress(
            SCENARIO,
            &format!(
                "{}: {} clients for {} s",
                broker.name, args.clients, args.duration_secs
            ),
        );
        let outcome = measure(&args, broker).await.with_context(|| {
            format!(
                "measuring {}; its last log lines:\n{}",
                broker.name,
                setup.log_tail(broker.name)
            )
        })?;
        results.push((broker.name, outcome));
    }
    Ok(summarise(&args, &setup, &results))
}

async fn measure(args: &ChurnArgs, broker: &Broker) -> Result<Outcome> {
    let pid = broker.pid;
    let rss0_kib = sys::rss_kib(pid)?;
    sys::reset_peak_rss(pid)?;
    let duration = Duration::from_secs(args.duration_secs);
    let cycles = Arc::new(AtomicUsize::new(0));
    let next_id = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let payload = bytes::Bytes::from(vec![0x5a; args.payload_bytes]);
    // Unique over runs too, so that no id repeats within a broker's life.
    let nonce = std::process::id();
    let mark = CpuMark::start(pid)?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..args.clients {
        let dialer = broker.dialer.clone();
        let (cycles, next_id, running, failures) = (
            cycles.clone(),
            next_id.clone(),
            running.clone(),
            failures.clone(),
        );
        let payload = payload.clone();
        tasks.spawn(async move {
            while running.load(Ordering::Relaxed) {
                let i = next_id.fetch_add(1, Ordering::Relaxed);
                let client_id = format!("churn-{nonce}-{i}");
                match tokio::time::timeout(CYCLE_TIMEOUT, cycle(&dialer, &client_id, &payload))
                    .await
                {
                    Ok(Ok(())) => {
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    outcome => {
                        let why = match outcome {
                            Err(_) => format!("not done within {CYCLE_TIMEOUT:?}"),
                            Ok(Err(e)) => match e.chain().nth(1) {
                                Some(cause) => format!("{e}: {cause}"),
                                None => e.to_string(),
                            },
                            Ok(Ok(())) => String::new(),
                        };
                        *failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(why)
                            .or_insert(0) += 1;
                        // A refused or broken connection is not retried at once.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let mut samples = Vec::new();
    let mut mark_sample = None;
    let sample_every = Duration::from_secs(args.sample_secs);
    let mark_at = Duration::from_secs(args.mark_secs);
    let mut next_sample = sample_every;
    loop {
        let now = started.elapsed();
        if now >= duration {
            break;
        }
        let wake = next_sample
            .min(duration)
            .min(if mark_sample.is_none() && mark_at > now {
                mark_at
            } else {
                duration
            });
        tokio::time::sleep(wake.saturating_sub(now)).await;
        let at = started.elapsed();
        let s = Sample {
            at,
            cycles: cycles.load(Ordering::Relaxed),
            rss_kib: sys::rss_kib(pid)?,
            sockets: sys::fds(pid)?.1,
        };
        if mark_sample.is_none() && at >= mark_at && mark_at < duration {
            mark_sample = Some(s);
            progress(
                SCENARIO,
                &format!(
                    "{}: mark at {} s: {} cycles, RSS {} KiB",
                    broker.name,
                    at.as_secs(),
                    s.cycles,
                    s.rss_kib
                ),
            );
        }
        if at >= next_sample {
            next_sample += sample_every;
            let failed: usize = failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .sum();
            progress(
                SCENARIO,
                &format!(
                    "{}: {} s: {} cycles, {failed} failed, RSS {} KiB, {} sockets",
                    broker.name,
                    at.as_secs(),
                    s.cycles,
                    s.rss_kib,
                    s.sockets
                ),
            );
            samples.push(s);
        }
    }
    running.store(false, Ordering::Relaxed);
    while let Some(joined) = tasks.join_next().await {
        joined.context("a churn task failed")?;
    }
    let wall = started.elapsed();
    let cpu = mark.stop(Duration::ZERO)?;
    // Let the broker finish closing what the last cycles left.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let end = Sample {
        at: started.elapsed(),
        cycles: cycles.load(Ordering::Relaxed),
        rss_kib: sys::rss_kib(pid)?,
        sockets: sys::fds(pid)?.1,
    };
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Outcome {
        cycles: end.cycles,
        failures,
        wall,
        rss0_kib,
        samples,
        mark: mark_sample,
        end,
        peak_rss_kib: sys::status_kib(pid, "VmHWM")?,
        cpu,
    })
}

/// Connect, one QoS 1 PUBLISH and its PUBACK, disconnect.
async fn cycle(dialer: &Dialer, client_id: &str, payload: &bytes::Bytes) -> Result<()> {
    let opened = dialer.open(None, client_id, 60).await?;
    let mut conn = opened.conn;
    let publisher = Publisher::new("bench/churn", QoS::AtLeastOnce);
    conn.send(publisher.packet(1, payload.clone()))
        .await
        .context("PUBLISH")?;
    loop {
        match client::next(&mut conn).await.context("PUBACK")? {
            Packet::PublishAck { packet_id } if packet_id.get() == 1 => break,
            Packet::PublishAck { .. } => bail!("PUBACK for another packet id"),
            Packet::Publish(_) => {}
            other => bail!("PUBACK: got {:?} instead", other.packet_type()),
        }
    }
    client::disconnect(conn).await
}

fn summarise(args: &ChurnArgs, setup: &Setup, results: &[(&'static str, Outcome)]) -> Report {
    let mut rows = setup.describe(&args.mqtt);
    rows.push((
        "soak".into(),
        format!(
            "{} clients, {} s per broker, reference RSS at {} s, QoS 1 payload {} bytes",
            args.clients, args.duration_secs, args.mark_secs, args.payload_bytes
        ),
    ));
    let row = |label: &str, f: &dyn Fn(&Outcome) -> String| side_by_side(results, label, f);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    rows.push(row("cycles / failed", &|o| {
        format!("{} / {}", o.cycles, o.failed())
    }));
    rows.push(row("cycles/s", &|o| {
        format!(
            "{:.1}",
            o.cycles as f64 / o.wall.as_secs_f64().max(f64::MIN_POSITIVE)
        )
    }));
    rows.push(row("failures", &|o| {
        if o.failures.is_empty() {
            "none".into()
        } else {
            o.failures
                .iter()
                .map(|(why, n)| format!("{why}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }));
    rows.push(row("RSS before", &|o| mib(o.rss0_kib)));
    rows.push(row("RSS at the mark", &|o| {
        o.mark.map_or("- (the soak ended first)".into(), |s| {
            format!(
                "{} ({} s, {} cycles)",
                mib(s.rss_kib),
                s.at.as_secs(),
                s.cycles
            )
        })
    }));
    rows.push(row("RSS at the end", &|o| {
        format!("{} ({} cycles)", mib(o.end.rss_kib), o.end.cycles)
    }));
    rows.push(row("end / mark", &|o| {
        o.growth().map_or("-".into(), |g| format!("{g:.3}"))
    }));
    rows.push(row("peak RSS", &|o| mib(o.peak_rss_kib)));
    rows.push(row("CPU cores server/bench/other", &|o| o.cpu.line()));
    for (name, o) in results {
        for s in &o.samples {
            rows.push((
                format!("  {name} at {} s", s.at.as_secs()),
                format!(
                    "{} cycles, RSS {}, {} sockets",
                    s.cycles,
                    mib(s.rss_kib),
                    s.sockets
                ),
            ));
        }
    }
    let mut json = serde_json::json!({
        "scenario": SCENARIO,
        "clients": args.clients,
        "duration_secs": args.duration_secs,
        "mark_secs": args.mark_secs,
        "payload_bytes": args.payload_bytes,
        "kx": format!("{:?}", args.mqtt.kx).to_lowercase(),
        "mosquitto_version": setup.mosquitto_version,
    });
    for (name, o) in results {
        json[*name] = o.json();
    }
    Report {
        title: "MQTT connection churn (onramp-bench mqtt-churn)".into(),
        rows,
        json,
        failed: results.iter().map(|(_, o)| o.failed()).sum(),
    }
}
