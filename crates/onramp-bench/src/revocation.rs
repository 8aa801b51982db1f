//! `onramp-bench revocation`: how soon a revocation (or a suspension) cuts
//! the device's live MQTT connection once it has committed.
//!
//! Before the clock starts: the server is started on a fresh data directory
//! with its MQTT gateway on an ephemeral port and the per-source CONNECT
//! limit raised (every device connects from 127.0.0.1; client ids are still
//! checked against thing names); an operator API key is created with the CLI
//! (`onramp apikey create --role operator`); `--devices` +
//! `--idle-connections` devices `REV-<i>` are enrolled over EST (one token,
//! P-256 key and CSR each); each connects over MQTT 3.1.1 and mutual TLS with
//! its own certificate, client id = thing name, and stays connected, reading
//! its socket.
//!
//! Timed: `--revocations` of the first `--devices` devices, spread evenly
//! over them, are revoked one at a time over one keep-alive HTTPS connection
//! (`POST /api/v1/certificates/<serial>/revoke`, or with `--action suspend`
//! `POST /api/v1/devices/<thing>/suspend`), one every `--interval-ms` (or
//! right after the previous answer if that came later). For each, measured:
//! from the moment the API's 200 answer has been read (the change committed
//! before it was sent) to the moment the device's socket reports the end of
//! the stream or an error. A connection not cut within `--timeout-secs` of
//! its answer counts as never cut; a connection closed that was not revoked
//! counts as lost. At the end every connection that was not revoked must
//! answer a PINGREQ within [`PING_TIMEOUT`].

use crate::https::Client;
use crate::mqtt::client::{Conn, Dialer, Kx, root_store};
use crate::mqtt::{CpuMark, CpuUse, parse_counters, progress, round3};
use crate::report::{Latency, Report, ms};
use crate::server::{Server, ServerArgs};
use crate::sys;
use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use rmqtt_codec::v3::Packet;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

const SCENARIO: &str = "revocation";
/// The gateway on an ephemeral port, the per-source CONNECT limit and the
/// connection cap out of the way; client ids stay checked.
const SERVER_ENV: &[(&str, &str)] = &[
    ("ONRAMP_MQTT__LISTEN", "127.0.0.1:0"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__PER_SECOND", "10000000"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__BURST", "10000000"),
    ("ONRAMP_MQTT__MAX_CONNECTIONS", "1000000"),
];
/// Devices connecting to the gateway at once before the clock starts.
const CONNECT_CONCURRENCY: usize = 32;
/// Time allowed for one device's TCP, TLS and CONNECT before the clock.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than any run: the server must not drop an idle device.
const KEEP_ALIVE_SECS: u16 = 1200;
/// How long every connection that was not revoked has to answer PINGREQ.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between the last connection and the first revocation, so that the
/// connect burst's presence writes are done.
const SETTLE: Duration = Duration::from_secs(2);
/// Open files the bench wants beyond one per connection.
const FD_RESERVE: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Revoke the device's certificate.
    Revoke,
    /// Suspend the device.
    Suspend,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Revoke => "revoke",
            Action::Suspend => "suspend",
        }
    }
}

#[derive(Debug, Args)]
pub struct RevocationArgs {
    /// Connected devices among which the revoked ones are chosen.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Further connected devices that are never revoked.
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Devices revoked (or suspended), one at a time.
    #[arg(long, default_value_t = 200)]
    revocations: usize,
    /// Time between the starts of two revocations, in milliseconds.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// What the operator does to each chosen device.
    #[arg(long, value_enum, default_value_t = Action::Revoke)]
    action: Action,
    /// A connection not cut within this many seconds of its answer counts
    /// as never cut.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
    /// Key exchange groups the devices offer.
    #[arg(long, value_enum, default_value_t = Kx::X25519)]
    kx: Kx,
    #[command(flatten)]
    server: ServerArgs,
}

fn thing_name(i: usize) -> String {
    format!("REV-{i}")
}

/// A device's identity after enrolment.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    serial: String,
}

/// A connection the device task reports closed.
struct Closed {
    device: usize,
    at: Instant,
    why: String,
}

/// A request to a device task: send PINGREQ and answer when PINGRESP came.
type Ping = oneshot::Sender<Result<(), String>>;

/// One revocation as the operator saw it.
#[derive(Debug, Clone)]
struct Revocation {
    device: usize,
    sent: Instant,
    /// When the whole answer had been read, and its status.
    answered: Instant,
    status: u16,
    /// The answer's body when it was not a 200.
    error: Option<String>,
}

pub async fn run(args: RevocationArgs) -> Result<Report> {
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(
        args.revocations > 0 && args.revocations <= args.devices,
        "--revocations must be between 1 and --devices"
    );
    ensure!(args.timeout_secs > 0, "--timeout-secs must be at least 1");
    let total = args.devices + args.idle_connections;
    let nofile = sys::raise_nofile(total as u64 + FD_RESERVE)?;
    progress(SCENARIO, &format!("open files: {}", nofile.line()));
    ensure!(
        nofile.soft >= total as u64 + FD_RESERVE / 2,
        "{total} connections need about {} open files, the limit is {}; raise it (ulimit -n)",
        total as u64 + FD_RESERVE,
        nofile.soft
    );
    progress(SCENARIO, "starting onramp");
    let server = Server::start_with(&args.server, SERVER_ENV)?;
    progress(
        SCENARIO,
        &format!(
            "onramp pid {} mqtt {} https {} ({})",
            server.pid(),
            server
                .mqtt_addr
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            server.addr,
            args.server.backend()
        ),
    );
    let result = measure(&args, &server).await;
    if result.is_err() {
        progress(
            SCENARIO,
            &format!(
                "the run failed; the server's last log lines:\n{}",
                server.log_tail()
            ),
        );
    }
    result
}

async fn measure(args: &RevocationArgs, server: &Server) -> Result<Report> {
    let total = args.devices + args.idle_connections;
    let addr = server
        .mqtt_addr
        .context("the server printed no MQTT address")?;
    let root_pem = server.admin(["ca", "export"]).await?;
    let client = Client::new(server.addr, &root_pem)?;
    let api_key = operator_api_key(server).await?;
    let bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .context("the API key is not a valid header value")?;

    let started = Instant::now();
    let identities = enrol_devices(&client, &api_key, total).await?;
    progress(
        SCENARIO,
        &format!(
            "enrolled {total} devices through EST in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );

    let started = Instant::now();
    let roots = Arc::new(root_store(&root_pem)?);
    let serials: Vec<String> = identities.iter().map(|id| id.serial.clone()).collect();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let pings = connect_all(addr, roots, identities, args.kx, closed_tx).await?;
    progress(
        SCENARIO,
        &format!(
            "connected {total} devices over MQTT in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    tokio::time::sleep(SETTLE).await;
    // Nothing may have closed while the run was being set up.
    if let Ok(c) = closed_rx.try_recv() {
        bail!(
            "{} was closed before the first revocation: {}",
            thing_name(c.device),
            c.why
        );
    }

    let targets = targets(args.devices, args.revocations);
    progress(
        SCENARIO,
        &format!(
            "{} {} of {} devices ({} connections in all), one every {} ms",
            match args.action {
                Action::Revoke => "revoking the certificates of",
                Action::Suspend => "suspending",
            },
            targets.len(),
            args.devices,
            total,
            args.interval_ms
        ),
    );
    let pid = server.pid();
    sys::reset_peak_rss(pid)?;
    let mark = CpuMark::start(pid)?;
    let mut api = client.connect().await?;
    let interval = Duration::from_millis(args.interval_ms);
    let first = Instant::now();
    let mut revocations = Vec::with_capacity(targets.len());
    for (k, &device) in targets.iter().enumerate() {
        let at = first + interval * u32::try_from(k).unwrap_or(u32::MAX);
        tokio::time::sleep_until(at.into()).await;
        let request = match args.action {
            Action::Revoke => revoke_request(&serials[device], &bearer)?,
            Action::Suspend => suspend_request(&thing_name(device), &bearer)?,
        };
        let sent = Instant::now();
        let response = api.send(request).await;
        let answered = Instant::now();
        let (status, error) = match response {
            Ok(r) if r.status == StatusCode::OK => (200, None),
            Ok(r) => (
                r.status.as_u16(),
                Some(String::from_utf8_lossy(&r.body).trim().to_string()),
            ),
            Err(e) => {
                // The API connection broke: a fresh one for the next request.
                api = client.connect().await?;
                (0, Some(format!("{e:#}")))
            }
        };
        revocations.push(Revocation {
            device,
            sent,
            answered,
            status,
            error,
        });
    }
    let last_answer = revocations.last().map_or(first, |r| r.answered);
    progress(
        SCENARIO,
        &format!(
            "{} requests answered in {:.1} s; waiting for the cuts",
            revocations.len(),
            (last_answer - first).as_secs_f64()
        ),
    );

    // Every close reported until each revoked connection is closed or its
    // time is up.
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut closed: BTreeMap<usize, (Instant, String)> = BTreeMap::new();
    let is_target = {
        let mut v = vec![false; total];
        for &t in &targets {
            v[t] = true;
        }
        v
    };
    let deadline = last_answer + timeout;
    loop {
        let pending = targets.iter().any(|t| !closed.contains_key(t));
        if !pending {
            break;
        }
        match tokio::time::timeout_at(deadline.into(), closed_rx.recv()).await {
            Ok(Some(c)) => {
                closed.insert(c.device, (c.at, c.why));
            }
            Ok(None) | Err(_) => break,
        }
    }
    let cpu = mark.stop(Duration::ZERO)?;
    let peak_rss_kib = sys::status_kib(pid, "VmHWM")?;
    while let Ok(c) = closed_rx.try_recv() {
        closed.insert(c.device, (c.at, c.why));
    }

    // Every connection that was not revoked must still answer.
    let mut asked = JoinSet::new();
    for (i, ping) in pings.iter().enumerate() {
        if is_target[i] {
            continue;
        }
        let (tx, rx) = oneshot::channel();
        let sent = ping.send(tx).is_ok();
        asked.spawn(async move {
            if !sent {
                return (i, Err("the connection had ended".to_string()));
            }
            let answer = match tokio::time::timeout(PING_TIMEOUT, rx).await {
                Err(_) => Err(format!("no PINGRESP within {PING_TIMEOUT:?}")),
                Ok(Err(_)) => Err("the connection ended".to_string()),
                Ok(Ok(answer)) => answer,
            };
            (i, answer)
        });
    }
    let mut dead: BTreeMap<String, usize> = BTreeMap::new();
    let mut alive = 0;
    while let Some(joined) = asked.join_next().await {
        let (i, answer) = joined.context("a ping task failed")?;
        match answer {
            Ok(()) => alive += 1,
            Err(why) => {
                let why = match closed.get(&i) {
                    Some((_, closed_why)) => format!("closed: {closed_why}"),
                    None => why,
                };
                *dead.entry(why).or_default() += 1;
            }
        }
    }
    drop(pings);
    let counters = match feed_counters(server).await {
        Ok(c) => Some(c),
        Err(e) => {
            progress(SCENARIO, &format!("reading /metrics failed: {e:#}"));
            None
        }
    };

    let outcome = Outcome::of(&revocations, &closed, &is_target, timeout);
    progress(
        SCENARIO,
        &format!(
            "{} cut, {} never cut, {} refused by the API; {alive} of {} others alive",
            outcome.cut.len(),
            outcome.never_cut,
            outcome.refused,
            total - targets.len()
        ),
    );
    Ok(summarise(
        args,
        &outcome,
        &revocations,
        Survivors {
            expected: total - targets.len(),
            alive,
            dead,
        },
        cpu,
        peak_rss_kib,
        counters.as_ref(),
    ))
}

/// `k` of the first `n` devices, spread evenly over them.
fn targets(n: usize, k: usize) -> Vec<usize> {
    (0..k.min(n)).map(|j| j * n / k).collect()
}

/// Creates an operator API key with the CLI and returns its secret.
async fn operator_api_key(server: &Server) -> Result<String> {
    let key_json = server
        .admin([
            "--json", "apikey", "create", "--name", "bench", "--role", "operator",
        ])
        .await?;
    let key: serde_json::Value =
        serde_json::from_str(&key_json).context("the output of `onramp apikey create`")?;
    Ok(key["secret"]
        .as_str()
        .context("`onramp apikey create` printed no secret")?
        .to_string())
}

/// Enrols `n` devices over EST (see the shadow scenario) and notes each
/// certificate's serial, which revocation names.
async fn enrol_devices(client: &Client, api_key: &str, n: usize) -> Result<Vec<Identity>> {
    crate::shadow_bench::enrol_devices(client, api_key, n, thing_name)
        .await?
        .into_iter()
        .map(|d| {
            let serial = onramp_pki::parse_cert(&d.cert)
                .with_context(|| format!("the certificate of {}", d.thing))?
                .serial;
            Ok(Identity {
                chain: vec![d.cert],
                key: d.key,
                serial,
            })
        })
        .collect()
}

/// Connects every device (client id = thing name) and leaves a task reading
/// each connection; returns the channels that ask each task for a PINGREQ.
async fn connect_all(
    addr: SocketAddr,
    roots: Arc<RootCertStore>,
    identities: Vec<Identity>,
    kx: Kx,
    closed: mpsc::UnboundedSender<Closed>,
) -> Result<Vec<mpsc::UnboundedSender<Ping>>> {
    let n = identities.len();
    let queue = Arc::new(std::sync::Mutex::new(
        identities
            .into_iter()
            .enumerate()
            .collect::<std::collections::VecDeque<_>>(),
    ));
    let mut tasks = JoinSet::new();
    for _ in 0..CONNECT_CONCURRENCY.min(n) {
        let queue = queue.clone();
        let roots = roots.clone();
        let closed = closed.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some((i, identity)) = next else { break };
                let thing = thing_name(i);
                let dialer =
                    Dialer::with_roots(addr, roots.clone(), identity.chain, identity.key, kx)?;
                let opened = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    dialer.open(None, &thing, KEEP_ALIVE_SECS),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!("connecting {thing}: no CONNACK within {CONNECT_TIMEOUT:?}")
                })?
                .with_context(|| format!("connecting {thing}"))?;
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(hold(i, opened.conn, rx, closed.clone()));
                done.push((i, tx));
            }
            anyhow::Ok(done)
        });
    }
    let mut slots: Vec<Option<mpsc::UnboundedSender<Ping>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        for (i, tx) in joined.context("a connecting task failed")?? {
            slots[i] = Some(tx);
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.with_context(|| format!("{} did not connect", thing_name(i))))
        .collect()
}

/// Reads one device's connection until the server closes it (reported with
/// the instant it was seen), and sends PINGREQ when asked.
async fn hold(
    device: usize,
    mut conn: Conn,
    mut asks: mpsc::UnboundedReceiver<Ping>,
    closed: mpsc::UnboundedSender<Closed>,
) {
    let mut waiting: Option<Ping> = None;
    let why = loop {
        tokio::select! {
            packet = conn.next() => match packet {
                None => break "end of stream".to_string(),
                Some(Err(e)) => break format!("{e}"),
                Some(Ok((Packet::PingResponse, _))) => {
                    if let Some(reply) = waiting.take() {
                        let _ = reply.send(Ok(()));
                    }
                }
                Some(Ok(_)) => {}
            },
            ask = asks.recv(), if waiting.is_none() => match ask {
                Some(reply) => match conn.send(Packet::PingRequest).await {
                    Ok(()) => waiting = Some(reply),
                    Err(e) => {
                        let _ = reply.send(Err(format!("PINGREQ: {e}")));
                        break format!("PINGREQ: {e}");
                    }
                },
                // The run is over.
                None => return,
            },
        }
    };
    let at = Instant::now();
    if let Some(reply) = waiting.take() {
        let _ = reply.send(Err(format!("closed: {why}")));
    }
    let _ = closed.send(Closed { device, at, why });
}

fn revoke_request(serial: &str, bearer: &HeaderValue) -> Result<Request<Full<Bytes>>> {
    let body = r#"{"reason":"keyCompromise"}"#;
    Request::post(format!("/api/v1/certificates/{serial}/revoke"))
        .header(HOST, "localhost")
        .header(AUTHORIZATION, bearer.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .context("building the revocation request")
}

fn suspend_request(thing: &str, bearer: &HeaderValue) -> Result<Request<Full<Bytes>>> {
    Request::post(format!("/api/v1/devices/{thing}/suspend"))
        .header(HOST, "localhost")
        .header(AUTHORIZATION, bearer.clone())
        .header(CONTENT_LENGTH, 0)
        .body(Full::new(Bytes::new()))
        .context("building the suspension request")
}

/// The identity-feed counters from `/metrics`.
async fn feed_counters(server: &Server) -> Result<BTreeMap<String, f64>> {
    Ok(parse_counters(&server.metrics().await?)
        .into_iter()
        .filter(|(k, _)| k.starts_with("onramp_mqtt_identity_"))
        .collect())
}

/// What became of the revoked connections.
#[derive(Debug, Default)]
struct Outcome {
    /// From the API's answer to the cut, per cut connection.
    cut: Vec<Duration>,
    /// From sending the request to the cut.
    cut_since_sent: Vec<Duration>,
    /// Cuts seen before the answer had been read (counted as 0 in `cut`).
    before_answer: usize,
    /// Answered 200 but not cut within the timeout.
    never_cut: usize,
    /// Requests the API did not answer with 200.
    refused: usize,
    /// Connections that closed although they were not revoked.
    lost: usize,
}

impl Outcome {
    /// Pure: pairs each answered revocation with its device's close.
    fn of(
        revocations: &[Revocation],
        closed: &BTreeMap<usize, (Instant, String)>,
        is_target: &[bool],
        timeout: Duration,
    ) -> Outcome {
        let mut o = Outcome::default();
        for r in revocations {
            if r.status != 200 {
                o.refused += 1;
                continue;
            }
            match closed.get(&r.device) {
                Some((at, _)) if at.saturating_duration_since(r.answered) <= timeout => {
                    if *at < r.answered {
                        o.before_answer += 1;
                    }
                    o.cut.push(at.saturating_duration_since(r.answered));
                    o.cut_since_sent.push(at.saturating_duration_since(r.sent));
                }
                _ => o.never_cut += 1,
            }
        }
        o.lost = closed
            .keys()
            .filter(|&&i| !is_target.get(i).copied().unwrap_or(false))
            .count();
        o
    }
}

/// The connections that were not revoked, at the end.
struct Survivors {
    expected: usize,
    alive: usize,
    dead: BTreeMap<String, usize>,
}

fn summarise(
    args: &RevocationArgs,
    o: &Outcome,
    revocations: &[Revocation],
    survivors: Survivors,
    cpu: CpuUse,
    peak_rss_kib: u64,
    counters: Option<&BTreeMap<String, f64>>,
) -> Report {
    let cut = Latency::of(o.cut.clone());
    let since_sent = Latency::of(o.cut_since_sent.clone());
    let api = Latency::of(
        revocations
            .iter()
            .map(|r| r.answered.saturating_duration_since(r.sent))
            .collect(),
    );
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for r in revocations {
        if let Some(e) = &r.error {
            *errors.entry(format!("HTTP {}: {e}", r.status)).or_default() += 1;
        }
    }
    let dead_count: usize = survivors.dead.values().sum();
    let failed = o.never_cut + o.refused + o.lost.max(dead_count);
    let total = args.devices + args.idle_connections;
    let server_ms_per = ms(cpu.server) / revocations.len().max(1) as f64;
    let rss_mib = peak_rss_kib as f64 / 1024.0;
    // A counter not yet incremented is not exported: zero, if /metrics was read.
    let counter = |name: &str| counters.map(|c| c.get(name).copied().unwrap_or(0.0));
    let shown = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let cuts_total = counter("onramp_mqtt_identity_cuts_total");
    let feed_errors = counter("onramp_mqtt_identity_feed_errors_total");
    let mut rows: Vec<(String, String)> = vec![
        ("backend".into(), args.server.backend().to_string()),
        ("action".into(), args.action.name().to_string()),
        (
            "connections".into(),
            format!(
                "{total} ({} revocable, {} idle)",
                args.devices, args.idle_connections
            ),
        ),
        (
            "revocations".into(),
            format!("{} ({} ms apart)", revocations.len(), args.interval_ms),
        ),
        (
            "cut / never cut / refused".into(),
            format!("{} / {} / {}", o.cut.len(), o.never_cut, o.refused),
        ),
        ("cut after answer ms (p50/p90/p99/max)".into(), cut.line()),
        (
            "  cut before the answer was read".into(),
            o.before_answer.to_string(),
        ),
        ("cut after request ms".into(), since_sent.line()),
        ("API answer ms".into(), api.line()),
        (
            "others alive at the end".into(),
            format!("{} / {}", survivors.alive, survivors.expected),
        ),
        ("others closed during the run".into(), o.lost.to_string()),
    ];
    for (why, count) in &survivors.dead {
        rows.push(("  not alive".into(), format!("{count} × {why}")));
    }
    for (why, count) in &errors {
        rows.push(("  API error".into(), format!("{count} × {why}")));
    }
    rows.extend([
        ("CPU cores server/bench/other".into(), cpu.line()),
        (
            "server CPU ms / revocation".into(),
            format!("{server_ms_per:.3}"),
        ),
        ("server peak RSS".into(), format!("{rss_mib:.1} MiB")),
        (
            "identity cuts / feed errors (metrics)".into(),
            format!("{} / {}", shown(cuts_total), shown(feed_errors)),
        ),
    ]);
    let json = serde_json::json!({
        "scenario": SCENARIO,
        "backend": args.server.backend(),
        "action": args.action.name(),
        "devices": args.devices,
        "idle_connections": args.idle_connections,
        "connections": total,
        "revocations": revocations.len(),
        "interval_ms": args.interval_ms,
        "timeout_s": args.timeout_secs,
        "cut": o.cut.len(),
        "never_cut": o.never_cut,
        "refused": o.refused,
        "api_errors": errors,
        "cut_before_answer": o.before_answer,
        "cut_ms": cut.json(),
        "cut_since_request_ms": since_sent.json(),
        "api_ms": api.json(),
        "others": survivors.expected,
        "others_alive": survivors.alive,
        "others_closed": o.lost,
        "others_not_alive": survivors.dead,
        "failed": failed,
        "cpu": cpu.json(),
        "server_cpu_ms_per_revocation": round3(server_ms_per),
        "server_peak_rss_kib": peak_rss_kib,
        "identity_cuts_total": cuts_total,
        "identity_feed_errors_total": feed_errors,
    });
    Report {
        title: format!(
            "Revocation reaches live connections (onramp-bench revocation --action {})",
            args.action.name()
        ),
        rows,
        json,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_spread_and_distinct() {
        assert_eq!(targets(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(targets(3, 3), vec![0, 1, 2]);
        let t = targets(1000, 200);
        assert_eq!(t.len(), 200);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(t.iter().all(|&i| i < 1000));
        assert_eq!(targets(7, 1), vec![0]);
    }

    fn revocation(device: usize, sent: Instant, answered_ms: u64, status: u16) -> Revocation {
        Revocation {
            device,
            sent,
            answered: sent + Duration::from_millis(answered_ms),
            status,
            error: None,
        }
    }

    #[test]
    fn cuts_are_paired_with_their_answers() {
        let t0 = Instant::now();
        let revocations = vec![
            revocation(0, t0, 10, 200),
            // Cut before its answer was read.
            revocation(1, t0, 10, 200),
            // Never cut.
            revocation(2, t0, 10, 200),
            // Refused by the API.
            revocation(3, t0, 10, 409),
            // Cut too late.
            revocation(4, t0, 10, 200),
        ];
        let mut closed = BTreeMap::new();
        closed.insert(0, (t0 + Duration::from_millis(260), "eof".to_string()));
        closed.insert(1, (t0 + Duration::from_millis(5), "eof".to_string()));
        closed.insert(4, (t0 + Duration::from_secs(20), "eof".to_string()));
        // Not revoked, yet closed.
        closed.insert(7, (t0, "reset".to_string()));
        let mut is_target = vec![false; 8];
        is_target[..5].fill(true);
        let o = Outcome::of(&revocations, &closed, &is_target, Duration::from_secs(10));
        assert_eq!(o.cut, vec![Duration::from_millis(250), Duration::ZERO]);
        assert_eq!(
            o.cut_since_sent,
            vec![Duration::from_millis(260), Duration::from_millis(5)]
        );
        assert_eq!(o.before_answer, 1);
        assert_eq!(o.never_cut, 2);
        assert_eq!(o.refused, 1);
        assert_eq!(o.lost, 1);
    }
}
