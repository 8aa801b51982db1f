//! `onramp-bench mqtt-idle`: memory per idle connection. For each broker in
//! turn, idle MQTT connections (keep-alive 600 s, nothing sent after
//! CONNACK) are opened in steps of `--step` up to `--connections`; after
//! each step the bench waits `--settle-secs` and reads the broker's resident
//! memory (`VmRSS`) and open descriptors from `/proc`.
//!
//! One process can hold only as many connections as its open-file limit
//! allows, so the connections are held by worker processes (copies of this
//! binary, `mqtt-idle-worker`), each filled up to its limit before the next
//! is started. Connections bind source addresses 127.0.0.2 and up,
//! `--per-source` connections per address, so that the local ports of one
//! address do not run out; each broker gets addresses of its own.

use super::client::{Dialer, Kx};
use super::{CpuMark, MqttArgs, Setup, progress, ratio, ratio_text, read_identity, side_by_side};
use crate::report::Report;
use crate::sys;
use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SCENARIO: &str = "mqtt-idle";
/// The open-file limit the bench asks for (the 100,000 connections
/// and some room).
const WANTED_NOFILE: u64 = 1_048_576;
/// Descriptors a worker keeps free for itself (runtime, pipes, files).
const WORKER_RESERVE: u64 = 64;
/// A connection not done within this counts as failed.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// The first source address; each broker gets its own addresses.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Connections to open per broker.
    #[arg(long, default_value_t = 100_000)]
    connections: usize,
    /// Connections added per step.
    #[arg(long, default_value_t = 5_000)]
    step: usize,
    /// Connections bound to one source address. Binding to port 0 gets
    /// slower as an address's ports fill up, which would slow the ramp.
    #[arg(long, default_value_t = 5_000)]
    per_source: usize,
    /// Connections being opened at once (per worker).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// MQTT keep-alive of every connection, seconds.
    #[arg(long, default_value_t = 600)]
    keep_alive: u16,
    /// Wait after each step before reading the broker's memory, seconds.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// After all connections closed, read the broker's memory again this
    /// many seconds later (does its allocator give freed memory back?).
    #[arg(long, default_value_t = 60)]
    after_close_secs: u64,
    #[command(flatten)]
    mqtt: MqttArgs,
}

/// Holds idle connections for `mqtt-idle`; driven through standard input
/// (`open N`, `alive`, `quit`), answering one line each on standard output.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long, value_enum)]
    kx: Kx,
    /// Client ids are `<prefix>-<index>`.
    #[arg(long)]
    prefix: String,
    /// Index of this worker's first connection (over all workers).
    #[arg(long)]
    base_index: usize,
    /// Source address of connection 0; connection i uses first + i / per-source.
    #[arg(long)]
    first_source: Ipv4Addr,
    #[arg(long)]
    per_source: usize,
    #[arg(long)]
    concurrency: usize,
    #[arg(long)]
    keep_alive: u16,
}

/// One step of the ramp, as measured.
#[derive(Debug, Clone)]
struct Step {
    target: usize,
    /// Connections that got a CONNACK so far.
    opened: usize,
    /// Of those, still open after the settle time.
    alive: usize,
    failed: usize,
    /// Connections opened per second during the step.
    rate: f64,
    rss_kib: u64,
    fds: usize,
    sockets: usize,
}

struct Outcome {
    rss0_kib: u64,
    fds0: usize,
    steps: Vec<Step>,
    /// Why the ramp stopped before the target, if it did.
    stopped: Option<String>,
    nofile: (String, String),
    rss_after_close_kib: u64,
    /// RSS `--after-close-secs` after all connections closed.
    rss_later_kib: u64,
    workers: usize,
    cpu: super::CpuUse,
}

impl Outcome {
    fn last(&self) -> Option<&Step> {
        self.steps.last()
    }

    fn held(&self) -> usize {
        self.last().map_or(0, |s| s.alive)
    }

    /// Growth of the resident set per held connection, in KiB.
    fn kib_per_connection(&self) -> Option<f64> {
        let s = self.last()?;
        (s.alive > 0).then(|| (s.rss_kib as f64 - self.rss0_kib as f64) / s.alive as f64)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "held": self.held(),
            "rss0_kib": self.rss0_kib,
            "fds0": self.fds0,
            "kib_per_connection": self.kib_per_connection(),
            "stopped": self.stopped,
            "nofile": [self.nofile.0, self.nofile.1],
            "rss_after_close_kib": self.rss_after_close_kib,
            "rss_later_kib": self.rss_later_kib,
            "rss_later_over_rss0": super::round3(self.rss_later_kib as f64 / self.rss0_kib.max(1) as f64),
            "workers": self.workers,
            "cpu": self.cpu.json(),
            "steps": self.steps.iter().map(|s| serde_json::json!({
                "target": s.target,
                "opened": s.opened,
                "alive": s.alive,
                "failed": s.failed,
                "connects_per_s": (s.rate * 10.0).round() / 10.0,
                "rss_kib": s.rss_kib,
                "fds": s.fds,
                "sockets": s.sockets,
                "kib_per_connection": (s.alive > 0).then(|| super::round3((s.rss_kib as f64 - self.rss0_kib as f64) / s.alive as f64)),
            })).collect::<Vec<_>>(),
        })
    }
}

pub async fn run(args: IdleArgs) -> Result<Report> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.step > 0, "--step must be at least 1");
    ensure!(args.per_source > 0, "--per-source must be at least 1");
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    // Raised before the brokers start, so that they inherit it.
    let nofile = sys::raise_nofile(WANTED_NOFILE)?;
    progress(SCENARIO, &format!("open files: {}", nofile.line()));
    let setup = Setup::start(&args.mqtt, SCENARIO).await?;
    let capacity = nofile.soft.saturating_sub(WORKER_RESERVE) as usize;
    ensure!(
        capacity > 0,
        "the open-file limit ({}) leaves no room for connections",
        nofile.soft
    );
    let sources_per_broker = args.connections.div_ceil(args.per_source);
    let mut results = Vec::new();
    for (k, broker) in setup.brokers.iter().enumerate() {
        let first = Ipv4Addr::from(u32::from(FIRST_SOURCE) + (k * sources_per_broker) as u32);
        let outcome = measure(&args, &setup, broker, capacity, first).await?;
        results.push((broker.name, outcome));
    }
    Ok(summarise(&args, &setup, &nofile, capacity, &results))
}

/// Onramp's own heap figures (`onramp_heap_bytes`), in MiB, for telling
/// memory it still holds from memory freed but not yet returned.
async fn onramp_heap(setup: &Setup, broker: &super::Broker) -> Option<String> {
    if broker.name != "onramp" {
        return None;
    }
    // The figures are sampled every 5 s: wait for a fresh sample.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = setup.onramp.metrics().await.ok()?;
    let parts: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("onramp_heap_bytes{kind=\""))
        .filter_map(|l| {
            let (kind, rest) = l.split_once('"')?;
            let bytes: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            Some(format!("{kind} {:.1} MiB", bytes / 1_048_576.0))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

async fn measure(
    args: &IdleArgs,
    setup: &Setup,
    broker: &super::Broker,
    capacity: usize,
    first_source: Ipv4Addr,
) -> Result<Outcome> {
    let settle = Duration::from_secs(args.settle_secs);
    tokio::time::sleep(settle).await;
    let rss0_kib = sys::rss_kib(broker.pid)?;
    let heap0 = onramp_heap(setup, broker).await;
    let (fds0, _) = sys::fds(broker.pid)?;
    let nofile = sys::nofile_of(broker.pid)?;
    progress(
        SCENARIO,
        &format!(
            "{}: RSS {rss0_kib} KiB and {fds0} descriptors at 0 connections; open files soft {} / hard {}",
            broker.name, nofile.0, nofile.1
        ),
    );
    let cpu = CpuMark::start(broker.pid)?;
    let mut workers: Vec<Worker> = Vec::new();
    let mut steps = Vec::new();
    let mut stopped = None;
    let mut opened = 0usize;
    let mut failed = 0usize;
    let mut target = 0usize;
    while target < args.connections {
        target = (target + args.step).min(args.connections);
        let started = Instant::now();
        // Fill the workers in order, starting new ones as needed.
        let mut need = target - opened;
        let mut asked = Vec::new();
        for w in 0.. {
            if need == 0 {
                break;
            }
            if w == workers.len() {
                workers.push(Worker::spawn(args, setup, broker, w * capacity, first_source).await?);
            }
            let room = capacity - workers[w].used;
            let n = need.min(room);
            if n > 0 {
                workers[w].send(&format!("open {n}")).await?;
                asked.push((w, n));
                need -= n;
            }
        }
        let mut step_failed = 0;
        let mut first_error = None;
        for &(w, n) in &asked {
            let reply = workers[w].reply().await?;
            let (ok, bad, error) = parse_opened(&reply)?;
            workers[w].used += n;
            opened += ok;
            step_failed += bad;
            if first_error.is_none() && !error.is_empty() {
                first_error = Some(error);
            }
        }
        failed += step_failed;
        let elapsed = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
        let step_opened: usize = asked.iter().map(|(_, n)| *n).sum::<usize>() - step_failed;
        tokio::time::sleep(settle).await;
        let mut alive = 0;
        for w in &mut workers {
            w.send("alive").await?;
        }
        for w in &mut workers {
            alive += parse_alive(&w.reply().await?)?;
        }
        let rss_kib = sys::rss_kib(broker.pid)?;
        let (fds, sockets) = sys::fds(broker.pid)?;
        let step = Step {
            target,
            opened,
            alive,
            failed,
            rate: step_opened as f64 / elapsed,
            rss_kib,
            fds,
            sockets,
        };
        progress(
            SCENARIO,
            &format!(
                "{}: {} opened, {} alive, {} failed; RSS {} KiB ({:.2} KiB per connection), {} descriptors",
                broker.name,
                step.opened,
                step.alive,
                step.failed,
                rss_kib,
                (rss_kib as f64 - rss0_kib as f64) / alive.max(1) as f64,
                fds
            ),
        );
        steps.push(step);
        if step_failed > 0 {
            stopped = Some(format!(
                "stopped in the step to {target}: {step_failed} connections failed ({}); the broker had {fds} descriptors open, open-file limit {}",
                first_error.unwrap_or_default(),
                nofile.0
            ));
            break;
        }
        if alive < opened {
            stopped = Some(format!(
                "stopped in the step to {target}: {} of {opened} connections were closed by the broker",
                opened - alive
            ));
            break;
        }
    }
    let mut worker_cpu = Duration::ZERO;
    for w in &workers {
        worker_cpu += w.cpu_time();
    }
    let cpu = cpu.stop(worker_cpu)?;
    let n_workers = workers.len();
    for w in workers {
        w.quit().await;
    }
    let closed = Instant::now();
    tokio::time::sleep(settle).await;
    let rss_after_close_kib = sys::rss_kib(broker.pid)?;
    let later = Duration::from_secs(args.after_close_secs);
    tokio::time::sleep(later.saturating_sub(closed.elapsed())).await;
    let rss_later_kib = sys::rss_kib(broker.pid)?;
    let heap_later = onramp_heap(setup, broker).await;
    if let (Some(before), Some(after)) = (&heap0, &heap_later) {
        progress(
            SCENARIO,
            &format!(
                "{}: heap at 0 connections: {before}; after closing all: {after}",
                broker.name
            ),
        );
    }
    progress(
        SCENARIO,
        &format!(
            "{}: RSS {rss_after_close_kib} KiB {} s after closing all, {rss_later_kib} KiB after {} s ({:.2}x the RSS at 0 connections)",
            broker.name,
            args.settle_secs,
            args.after_close_secs,
            rss_later_kib as f64 / rss0_kib.max(1) as f64
        ),
    );
    Ok(Outcome {
        rss0_kib,
        fds0,
        steps,
        stopped,
        nofile,
        rss_after_close_kib,
        rss_later_kib,
        workers: n_workers,
        cpu,
    })
}

/// `opened OK FAILED ERROR...`
fn parse_opened(line: &str) -> Result<(usize, usize, String)> {
    let mut it = line.splitn(4, ' ');
    match (it.next(), it.next(), it.next()) {
        (Some("opened"), Some(ok), Some(bad)) => Ok((
            ok.parse().context("worker reply")?,
            bad.parse().context("worker reply")?,
            it.next().unwrap_or("").to_string(),
        )),
        _ => bail!("unexpected worker reply `{line}`"),
    }
}

/// `alive N`
fn parse_alive(line: &str) -> Result<usize> {
    match line.split_once(' ') {
        Some(("alive", n)) => n.trim().parse().context("worker reply"),
        _ => bail!("unexpected worker reply `{line}`"),
    }
}

/// A worker process and the pipes that drive it.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Connections asked of it so far.
    used: usize,
}

impl Worker {
    async fn spawn(
        args: &IdleArgs,
        setup: &Setup,
        broker: &super::Broker,
        base_index: usize,
        first_source: Ipv4Addr,
    ) -> Result<Worker> {
        // `/proc/self/exe` still runs this binary if the file was replaced
        // (rebuilt) since it started.
        let exe = match std::path::Path::new("/proc/self/exe") {
            p if p.exists() => p.to_path_buf(),
            _ => std::env::current_exe().context("locating onramp-bench itself")?,
        };
        let (root, cert, key) = setup.identity_files();
        let mut child = Command::new(exe)
            .arg("mqtt-idle-worker")
            .arg("--addr")
            .arg(broker.addr.to_string())
            .arg("--root")
            .arg(root)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--kx")
            .arg(format!("{:?}", args.mqtt.kx).to_lowercase())
            .arg("--prefix")
            .arg(format!("bench-idle-{}", broker.name))
            .arg("--base-index")
            .arg(base_index.to_string())
            .arg("--first-source")
            .arg(first_source.to_string())
            .arg("--per-source")
            .arg(args.per_source.to_string())
            .arg("--concurrency")
            .arg(args.concurrency.to_string())
            .arg("--keep-alive")
            .arg(args.keep_alive.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        progress(
            SCENARIO,
            &format!(
                "{}: worker {} started for connections {base_index}..",
                broker.name,
                child.id().unwrap_or(0)
            ),
        );
        Ok(Worker {
            child,
            stdin,
            stdout,
            used: 0,
        })
    }

    async fn send(&mut self, line: &str) -> Result<()> {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .context("writing to a worker")?;
        self.stdin.flush().await.context("writing to a worker")
    }

    async fn reply(&mut self) -> Result<String> {
        self.stdout
            .next_line()
            .await
            .context("reading from a worker")?
            .context("a worker exited")
    }

    fn cpu_time(&self) -> Duration {
        self.child
            .id()
            .and_then(|pid| crate::server::cpu_time(&format!("/proc/{pid}/stat")).ok())
            .unwrap_or_default()
    }

    async fn quit(mut self) {
        let _ = self.send("quit").await;
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The worker process: holds connections until told to quit.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    sys::raise_nofile(0)?;
    let identity = read_identity(&args.root, &args.cert, &args.key)?;
    let dialer = Dialer::new(args.addr, &identity, args.kx)?;
    let alive = Arc::new(AtomicUsize::new(0));
    let mut next_index = args.base_index;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["open", n] => {
                let n: usize = n.parse().context("open N")?;
                let (ok, failed, error) = open_many(&args, &dialer, &alive, next_index, n).await;
                next_index += n;
                println!("opened {ok} {failed} {}", error.replace('\n', " "));
            }
            ["alive"] => println!("alive {}", alive.load(Ordering::Relaxed)),
            ["quit"] => break,
            _ => bail!("unknown command `{line}`"),
        }
    }
    Ok(())
}

/// Opens connections `first..first + n`, `concurrency` at a time, and
/// leaves each held by a task. Stops early once as many have failed as run
/// at once: past a limit every further attempt would only wait out its
/// timeout. Returns (opened, failed, first error).
async fn open_many(
    args: &WorkerArgs,
    dialer: &Dialer,
    alive: &Arc<AtomicUsize>,
    first: usize,
    n: usize,
) -> (usize, usize, String) {
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + n;
    let failed = Arc::new(AtomicUsize::new(0));
    let give_up = args.concurrency.max(16);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(n) {
        let dialer = dialer.clone();
        let next = next.clone();
        let failed = failed.clone();
        let alive = alive.clone();
        let prefix = args.prefix.clone();
        let (first_source, per_source, keep_alive) =
            (args.first_source, args.per_source, args.keep_alive);
        tasks.spawn(async move {
            let mut ok = 0usize;
            let mut error = String::new();
            while failed.load(Ordering::Relaxed) < give_up {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let source = Ipv4Addr::from(u32::from(first_source) + (i / per_source) as u32);
                let client_id = format!("{prefix}-{i}");
                let attempt = dialer.open(Some(IpAddr::V4(source)), &client_id, keep_alive);
                match tokio::time::timeout(OPEN_TIMEOUT, attempt).await {
                    Ok(Ok(opened)) => {
                        ok += 1;
                        alive.fetch_add(1, Ordering::Relaxed);
                        let alive = alive.clone();
                        tokio::spawn(async move {
                            hold(opened.conn.into_inner(), keep_alive).await;
                            alive.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if error.is_empty() {
                            error = match e.chain().nth(1) {
                                Some(cause) => format!("{e}: {cause}"),
                                None => e.to_string(),
                            };
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if error.is_empty() {
                            error = format!("not connected within {OPEN_TIMEOUT:?}");
                        }
                    }
                }
            }
            (ok, error)
        });
    }
    let mut ok = 0;
    let mut error = String::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((o, e)) = joined {
            ok += o;
            if error.is_empty() {
                error = e;
            }
        }
    }
    (ok, failed.load(Ordering::Relaxed), error)
}

/// Keeps a connection open until the broker closes it, answering the
/// keep-alive with a PINGREQ every half period.
async fn hold(mut stream: super::client::Stream, keep_alive: u16) {
    const PINGREQ: [u8; 2] = [0xC0, 0x00];
    let period = Duration::from_secs(u64::from(keep_alive.max(2)) / 2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = ping.tick() => {
                if stream.write_all(&PINGREQ).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn summarise(
    args: &IdleArgs,
    setup: &Setup,
    nofile: &sys::Nofile,
    capacity: usize,
    results: &[(&'static str, Outcome)],
) -> Report {
    let mut rows = setup.describe(&args.mqtt);
    rows.push((
        "target".into(),
        format!(
            "{} connections per broker, steps of {}, keep-alive {} s",
            args.connections, args.step, args.keep_alive
        ),
    ));
    rows.push(("bench open files".into(), nofile.line()));
    rows.push((
        "connections per worker".into(),
        format!("{capacity} (open-file limit less {WORKER_RESERVE})"),
    ));
    if let Ok((lo, hi)) = sys::ephemeral_ports() {
        rows.push((
            "local ports".into(),
            format!(
                "{lo}-{hi}; {} connections per source address from {FIRST_SOURCE}",
                args.per_source
            ),
        ));
    }
    let row = |label: &str, f: &dyn Fn(&Outcome) -> String| side_by_side(results, label, f);
    rows.push(row("broker open files (soft/hard)", &|o| {
        format!("{} / {}", o.nofile.0, o.nofile.1)
    }));
    rows.push(row("RSS at 0 connections", &|o| {
        format!(
            "{:.1} MiB ({} descriptors)",
            o.rss0_kib as f64 / 1024.0,
            o.fds0
        )
    }));
    rows.push(row("connections held", &|o| o.held().to_string()));
    rows.push(row("RSS at held", &|o| {
        o.last().map_or("-".into(), |s| {
            format!(
                "{:.1} MiB ({} descriptors)",
                s.rss_kib as f64 / 1024.0,
                s.fds
            )
        })
    }));
    rows.push(row("RSS per connection", &|o| {
        o.kib_per_connection()
            .map_or("-".into(), |k| format!("{k:.2} KiB"))
    }));
    rows.push(row("RSS after closing all", &|o| {
        format!("{:.1} MiB", o.rss_after_close_kib as f64 / 1024.0)
    }));
    rows.push(row(
        &format!("RSS {} s after closing all", args.after_close_secs),
        &|o| {
            format!(
                "{:.1} MiB ({:.2}x the RSS at 0 connections)",
                o.rss_later_kib as f64 / 1024.0,
                o.rss_later_kib as f64 / o.rss0_kib.max(1) as f64
            )
        },
    ));
    rows.push(row("CPU cores server/bench/other", &|o| o.cpu.line()));
    rows.push(row("worker processes", &|o| o.workers.to_string()));
    for (name, o) in results {
        for s in &o.steps {
            rows.push((
                format!("  {name} step {}", s.target),
                format!(
                    "{} alive, {} failed, {:.0} connects/s, RSS {:.1} MiB, {:.2} KiB/connection, {} sockets",
                    s.alive,
                    s.failed,
                    s.rate,
                    s.rss_kib as f64 / 1024.0,
                    (s.rss_kib as f64 - o.rss0_kib as f64) / s.alive.max(1) as f64,
                    s.sockets
                ),
            ));
        }
        if let Some(why) = &o.stopped {
            rows.push((format!("  {name} stopped"), why.clone()));
        }
    }
    let pair = match results {
        [(_, o), (_, m)] => Some((o, m)),
        _ => None,
    };
    let kib_ratio = pair.and_then(|(o, m)| ratio(o.kib_per_connection()?, m.kib_per_connection()?));
    if pair.is_some() {
        rows.push((
            "onramp / mosquitto".into(),
            format!("RSS per connection {}", ratio_text(kib_ratio)),
        ));
    }
    let mut json = serde_json::json!({
        "scenario": SCENARIO,
        "connections": args.connections,
        "step": args.step,
        "keep_alive": args.keep_alive,
        "after_close_secs": args.after_close_secs,
        "bench_nofile": [nofile.soft, nofile.hard],
        "bench_nofile_refused": nofile.refused,
        "connections_per_worker": capacity,
        "kx": format!("{:?}", args.mqtt.kx).to_lowercase(),
        "mosquitto_version": setup.mosquitto_version,
        "ratio_kib_per_connection": kib_ratio,
    });
    for (name, o) in results {
        json[*name] = o.json();
    }
    Report {
        title: "MQTT idle connections (onramp-bench mqtt-idle)".into(),
        rows,
        json,
        // A ramp stopped by a limit is a finding, not a failed run.
        failed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_replies_parse() {
        assert_eq!(
            parse_opened("opened 10 2 TLS handshake: reset").expect("parsed"),
            (10, 2, "TLS handshake: reset".to_string())
        );
        assert_eq!(
            parse_opened("opened 5 0 ").expect("parsed"),
            (5, 0, String::new())
        );
        assert_eq!(parse_alive("alive 7").expect("parsed"), 7);
        assert!(parse_opened("alive 7").is_err());
    }
}
