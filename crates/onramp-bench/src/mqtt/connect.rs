//! `onramp-bench mqtt-connect`: connection set-up rate. `--concurrency`
//! tasks share `--connections` connections per broker; each is a fresh TCP
//! connection, a full TLS 1.3 handshake with the client certificate,
//! CONNECT (MQTT 3.1.1, clean session, a client id of its own) and CONNACK,
//! then DISCONNECT and the wait until the broker closes the connection.
//! Latency runs from the TCP connect to the CONNACK; the cycle includes the
//! DISCONNECT and the close.
//!
//! A broker may close its side before it has finished with a connection; the
//! bench counts the broker's open sockets meanwhile, and after the last
//! client waits until they are back to where they were ("closing after the
//! run"), with the CPU used until then.

use super::client::{self, Dialer};
use super::{Broker, CpuMark, CpuUse, MqttArgs, Setup, progress, ratio, ratio_text, side_by_side};
use crate::report::{Latency, Report, ms};
use crate::sys;
use anyhow::{Context, Result, ensure};
use clap::Args;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const SCENARIO: &str = "mqtt-connect";
/// A connection that takes longer than this counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between brokers, so that one's closing work is not the other's load.
const SETTLE: Duration = Duration::from_secs(2);
/// How often the broker's open sockets are counted.
const SOCKET_SAMPLING: Duration = Duration::from_millis(250);
/// Longest wait for the broker to close its side after the run.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Concurrent tasks, each opening one connection after another.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections per broker.
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    #[command(flatten)]
    mqtt: MqttArgs,
}

struct Sample {
    /// TCP connect to CONNACK.
    latency: Duration,
    tcp: Duration,
    tls: Duration,
    mqtt: Duration,
    /// TCP connect to the broker's close after DISCONNECT.
    cycle: Duration,
    outcome: Result<(), String>,
}

struct Outcome {
    attempted: usize,
    connected: usize,
    failures: BTreeMap<String, usize>,
    wall: Duration,
    latency: Latency,
    tcp: Latency,
    tls: Latency,
    mqtt: Latency,
    cycle: Latency,
    cpu: CpuUse,
    /// From the start until the broker's sockets were back to `sockets0`.
    cpu_with_drain: CpuUse,
    peak_rss_kib: u64,
    tls_params: String,
    /// The broker's open sockets before the run, at most during it, when
    /// the last client finished, and after the drain.
    sockets0: usize,
    max_sockets: usize,
    sockets_at_end: usize,
    sockets_left: usize,
    /// How long the broker took to close its side of every connection
    /// after the last client was done.
    drain: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.connected as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn server_ms_per_connection(&self) -> f64 {
        ms(self.cpu.server) / self.attempted.max(1) as f64
    }

    fn server_ms_per_connection_with_drain(&self) -> f64 {
        ms(self.cpu_with_drain.server) / self.attempted.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "attempted": self.attempted,
            "connected": self.connected,
            "failed": self.attempted - self.connected,
            "failures": self.failures,
            "duration_s": super::round3(self.wall.as_secs_f64()),
            "connects_per_s": (self.rate() * 10.0).round() / 10.0,
            "latency_ms": self.latency.json(),
            "tcp_connect_ms": self.tcp.json(),
            "tls_handshake_ms": self.tls.json(),
            "connect_connack_ms": self.mqtt.json(),
            "cycle_ms": self.cycle.json(),
            "cpu": self.cpu.json(),
            "server_cpu_ms_per_connection": super::round3(self.server_ms_per_connection()),
            "server_cpu_ms_per_connection_with_drain": super::round3(self.server_ms_per_connection_with_drain()),
            "server_sockets": {
                "before": self.sockets0,
                "max": self.max_sockets,
                "at_end": self.sockets_at_end,
                "after_drain": self.sockets_left,
            },
            "drain_s": super::round3(self.drain.as_secs_f64()),
            "server_peak_rss_kib": self.peak_rss_kib,
            "tls": self.tls_params,
        })
    }
}

pub async fn run(args: ConnectArgs) -> Result<Report> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.connections > 0, "--connections must be at least 1");
    let setup = Setup::start(&args.mqtt, SCENARIO).await?;
    let mut results = Vec::new();
    for (k, broker) in setup.brokers.iter().enumerate() {
        if k > 0 {
            tokio::time::sleep(SETTLE).await;
        }
        progress(
            SCENARIO,
            &format!(
                "{}: {} connections, {} at a time",
                broker.name, args.connections, args.concurrency
            ),
        );
        let outcome = measure(&args, broker).await.with_context(|| {
            format!(
                "measuring {}; its last log lines:\n{}",
                broker.name,
                setup.log_tail(broker.name)
            )
        })?;
        progress(
            SCENARIO,
            &format!(
                "{}: {:.1} connects/s, {} failed",
                broker.name,
                outcome.rate(),
                outcome.attempted - outcome.connected
            ),
        );
        results.push((broker.name, outcome));
    }
    Ok(summarise(&args, &setup, &results))
}

async fn measure(args: &ConnectArgs, broker: &Broker) -> Result<Outcome> {
    let pid = broker.pid;
    let (_, sockets0) = sys::fds(pid)?;
    sys::reset_peak_rss(pid)?;
    // The broker's open sockets, sampled: the clients hold at most
    // `concurrency` connections at once.
    let max_sockets = Arc::new(AtomicUsize::new(sockets0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (max_sockets, sampling) = (max_sockets.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Ok((_, s)) = sys::fds(pid) {
                    max_sockets.fetch_max(s, Ordering::Relaxed);
                }
                tokio::time::sleep(SOCKET_SAMPLING).await;
            }
        })
    };
    let mark = CpuMark::start(pid)?;
    let started = Instant::now();
    let (samples, tls_params) =
        connect_all(&broker.dialer, args.connections, args.concurrency).await?;
    let wall = started.elapsed();
    let cpu = mark.stop(Duration::ZERO)?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    // Work the broker deferred past the clients' view of a connection:
    // wait until its sockets are back to where they were.
    let (_, sockets_at_end) = sys::fds(pid)?;
    let drain_started = Instant::now();
    let mut sockets_left = sockets_at_end;
    while sockets_left > sockets0 && drain_started.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sockets_left = sys::fds(pid)?.1;
    }
    let drain = drain_started.elapsed();
    let cpu_with_drain = mark.stop(Duration::ZERO)?;
    let peak_rss_kib = sys::status_kib(pid, "VmHWM")?;
    let mut failures = BTreeMap::new();
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| match &s.outcome {
            Ok(()) => true,
            Err(why) => {
                *failures.entry(why.clone()).or_insert(0) += 1;
                false
            }
        })
        .collect();
    let of = |f: fn(&Sample) -> Duration| Latency::of(ok.iter().map(|s| f(s)).collect());
    Ok(Outcome {
        attempted: samples.len(),
        connected: ok.len(),
        failures,
        wall,
        latency: of(|s| s.latency),
        tcp: of(|s| s.tcp),
        tls: of(|s| s.tls),
        mqtt: of(|s| s.mqtt),
        cycle: of(|s| s.cycle),
        cpu,
        cpu_with_drain,
        peak_rss_kib,
        tls_params,
        sockets0,
        max_sockets: max_sockets.load(Ordering::Relaxed),
        sockets_at_end,
        sockets_left,
        drain,
    })
}

/// `concurrency` tasks take the next connection until `n` are done.
async fn connect_all(
    dialer: &Dialer,
    n: usize,
    concurrency: usize,
) -> Result<(Vec<Sample>, String)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let dialer = dialer.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(n / concurrency + 1);
            let mut tls_params = String::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                samples.push(one(&dialer, i, &mut tls_params).await);
            }
            (samples, tls_params)
        });
    }
    let mut samples = Vec::with_capacity(n);
    let mut tls_params = String::new();
    while let Some(joined) = tasks.join_next().await {
        let (s, t) = joined.context("a connecting task failed")?;
        samples.extend(s);
        if tls_params.is_empty() {
            tls_params = t;
        }
    }
    Ok((samples, tls_params))
}

async fn one(dialer: &Dialer, i: usize, tls_params: &mut String) -> Sample {
    let started = Instant::now();
    let mut sample = Sample {
        latency: Duration::ZERO,
        tcp: Duration::ZERO,
        tls: Duration::ZERO,
        mqtt: Duration::ZERO,
        cycle: Duration::ZERO,
        outcome: Ok(()),
    };
    let attempt = async {
        let opened = dialer.open(None, &format!("bench-connect-{i}"), 60).await?;
        sample.latency = started.elapsed();
        sample.tcp = opened.tcp;
        sample.tls = opened.tls;
        sample.mqtt = opened.mqtt;
        if tls_params.is_empty() {
            *tls_params = client::tls_params(opened.conn.get_ref());
        }
        client::disconnect(opened.conn).await
    };
    sample.outcome = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Err(_) => Err(format!("not done within {CONNECT_TIMEOUT:?}")),
        // The phase that failed and why, without the whole chain.
        Ok(Err(e)) => Err(match e.chain().nth(1) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        }),
        Ok(Ok(())) => Ok(()),
    };
    sample.cycle = started.elapsed();
    sample
}

fn summarise(args: &ConnectArgs, setup: &Setup, results: &[(&'static str, Outcome)]) -> Report {
    let mut rows = setup.describe(&args.mqtt);
    rows.push(("concurrency".into(), args.concurrency.to_string()));
    rows.push((
        "connections per broker".into(),
        args.connections.to_string(),
    ));
    let row = |label: &str, f: &dyn Fn(&Outcome) -> String| side_by_side(results, label, f);
    rows.push(row("connected / failed", &|o| {
        format!("{} / {}", o.connected, o.attempted - o.connected)
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
    rows.push(row("duration", &|o| {
        format!("{:.2} s", o.wall.as_secs_f64())
    }));
    rows.push(row("connects/s", &|o| format!("{:.1}", o.rate())));
    rows.push(row("latency ms (p50/p90/p99/max)", &|o| o.latency.line()));
    rows.push(row("  TCP connect ms", &|o| o.tcp.line()));
    rows.push(row("  TLS handshake ms", &|o| o.tls.line()));
    rows.push(row("  CONNECT-CONNACK ms", &|o| o.mqtt.line()));
    rows.push(row("cycle incl. DISCONNECT ms", &|o| o.cycle.line()));
    rows.push(row("CPU cores server/bench/other", &|o| o.cpu.line()));
    rows.push(row("server CPU ms / connection", &|o| {
        format!("{:.3}", o.server_ms_per_connection())
    }));
    rows.push(row("  incl. closing after the run", &|o| {
        format!("{:.3}", o.server_ms_per_connection_with_drain())
    }));
    rows.push(row("server sockets before/max/end", &|o| {
        format!("{} / {} / {}", o.sockets0, o.max_sockets, o.sockets_at_end)
    }));
    rows.push(row("closing after the run", &|o| {
        format!(
            "{:.2} s ({} sockets left)",
            o.drain.as_secs_f64(),
            o.sockets_left.saturating_sub(o.sockets0)
        )
    }));
    rows.push(row("server peak RSS", &|o| {
        format!("{:.1} MiB", o.peak_rss_kib as f64 / 1024.0)
    }));
    rows.push(row("TLS", &|o| o.tls_params.clone()));
    let pair = match results {
        [(_, o), (_, m)] => Some((o, m)),
        _ => None,
    };
    let rate_ratio = pair.and_then(|(o, m)| ratio(o.rate(), m.rate()));
    let p50_ratio = pair.and_then(|(o, m)| ratio(ms(o.latency.p50), ms(m.latency.p50)));
    let p99_ratio = pair.and_then(|(o, m)| ratio(ms(o.latency.p99), ms(m.latency.p99)));
    if pair.is_some() {
        rows.push((
            "onramp / mosquitto".into(),
            format!(
                "connects/s {}, p50 latency {}, p99 latency {}",
                ratio_text(rate_ratio),
                ratio_text(p50_ratio),
                ratio_text(p99_ratio)
            ),
        ));
    }
    let mut json = serde_json::json!({
        "scenario": SCENARIO,
        "concurrency": args.concurrency,
        "connections": args.connections,
        "kx": format!("{:?}", args.mqtt.kx).to_lowercase(),
        "mosquitto_version": setup.mosquitto_version,
        "ratio_connects_per_s": rate_ratio,
        "ratio_p50": p50_ratio,
        "ratio_p99": p99_ratio,
    });
    for (name, o) in results {
        json[*name] = o.json();
    }
    Report {
        title: "MQTT connect (onramp-bench mqtt-connect)".into(),
        rows,
        json,
        failed: results.iter().map(|(_, o)| o.attempted - o.connected).sum(),
    }
}
