//! `onramp-bench rollout`: AWS IoT Jobs executed by a fleet of devices over
//! MQTT, first as fast as the server takes them, then paced by a rollout rate.
//!
//! Before the clock starts: the server is started on a fresh data directory
//! (the open-file limit raised for `--devices` connections first, which the
//! server inherits); `--devices` devices are enrolled through EST and each
//! connects over MQTT 3.1.1 and mutual TLS with its own certificate (client
//! id = thing name) and subscribes at QoS 1 to its
//! `$aws/things/<thing>/jobs/notify-next`, `/jobs/start-next/accepted`,
//! `/jobs/start-next/rejected`, `/jobs/+/update/accepted` and
//! `/jobs/+/update/rejected`.
//!
//! Every device runs each job it is told of the same way: on `notify-next`
//! naming the job it publishes `{"clientToken"}` to `/jobs/start-next`, then
//! `{"status":"IN_PROGRESS","expectedVersion":N,"includeJobExecutionState":true}`
//! and `{"status":"SUCCEEDED",...}` to `/jobs/<jobId>/update`, each only
//! after the previous request's `/accepted` reply. Replies are matched by
//! `clientToken`; every request is a QoS 1 PUBLISH.
//!
//! Unthrottled phase: one job without a rollout configuration targets every
//! device (`POST /api/v1/jobs`). Timed from sending the POST until every
//! device's SUCCEEDED update was accepted (or `--timeout-secs`). A device
//! that has no `notify-next` [`NOTIFY_GRACE`] after the POST's response
//! sends start-next anyway, as a device that missed the notification would.
//!
//! Paced phase: a second job with `jobExecutionsRolloutConfig.maximumPerMinute`
//! = `--rate` targets every device; it runs for `--minutes`. Each
//! `notify-next` naming it marks one execution released by the server's
//! scheduler; they are counted per 60 s from the POST and in the busiest
//! sliding 60 s, against the configured rate.

use crate::https::Client;
use crate::report::{Latency, Report};
use crate::server::{Server, ServerArgs};
use crate::shadow_bench::{
    Conn, CpuMark, CpuUse, Identity, admin_api_key, cpu_json, cpu_rows, database_config,
    enrol_devices, latency_line, logged_backend, map_line, per_second, read_packet,
};
use crate::sys;
use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use clap::Args;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

const SCENARIO: &str = "rollout";
/// Settings the server runs with: the gateway on an ephemeral port, and the
/// per-source CONNECT limit out of the way (every device connects from
/// 127.0.0.1).
const SERVER_ENV: &[(&str, &str)] = &[
    ("ONRAMP_MQTT__LISTEN", "127.0.0.1:0"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__PER_SECOND", "1000000"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__BURST", "1000000"),
];
/// Devices connecting to the gateway at once before the clock starts.
const CONNECT_CONCURRENCY: usize = 16;
/// Time allowed for each step of setting up an MQTT connection.
const MQTT_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// MQTT keep-alive: longer than any phase.
const KEEP_ALIVE_SECS: u16 = 3600;
/// The name the server certificate is checked against.
const SERVER_NAME: &str = "localhost";
/// Open files kept beyond one per device.
const FD_RESERVE: u64 = 1024;
/// How long after the create response a device without `notify-next`
/// starts the job anyway.
const NOTIFY_GRACE: Duration = Duration::from_secs(5);
/// Pause before a device asks again after start-next found nothing or was
/// rejected (unthrottled phase).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Time between spawning the devices' tasks and the POST.
const START_DELAY: Duration = Duration::from_millis(500);
/// Width of the paced phase's bins and of the rollout window.
const BIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Only the unthrottled job.
    Unthrottled,
    /// Only the paced job.
    Paced,
    /// Unthrottled, then paced, on the same server and connections.
    Both,
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Devices: each enrols, keeps one MQTT connection and runs every job.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Phase::Both)]
    phase: Phase,
    /// Unthrottled phase: give up waiting for every execution to succeed
    /// after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Paced phase: `maximumPerMinute` of the job's rollout (1-1000).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Paced phase: length, in minutes.
    #[arg(long, default_value_t = 3)]
    minutes: u64,
    /// Paced phase as an exponential rollout: `exponentialRate` with this
    /// `baseRatePerMinute` (0: a constant `maximumPerMinute`).
    #[arg(long, default_value_t = 0)]
    exponential_base: u32,
    /// Exponential rollout: `incrementFactor`.
    #[arg(long, default_value_t = 2.0)]
    increment_factor: f64,
    /// Exponential rollout: `rateIncreaseCriteria.numberOfNotifiedThings`.
    #[arg(long, default_value_t = 400)]
    notified_step: u32,
    #[command(flatten)]
    server: ServerArgs,
}

fn thing_name(i: usize) -> String {
    format!("ROLLOUT-{i}")
}

fn progress(msg: &str) {
    eprintln!("onramp-bench {SCENARIO}: {msg}");
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

pub async fn run(args: RolloutArgs) -> Result<Report> {
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(
        (1..=1000).contains(&args.rate),
        "--rate must be between 1 and 1000"
    );
    ensure!(args.minutes > 0, "--minutes must be at least 1");
    ensure!(args.timeout_secs > 0, "--timeout-secs must be at least 1");
    let wanted = args.devices as u64 + FD_RESERVE;
    let nofile = sys::raise_nofile(wanted)?;
    progress(&format!("open files: {}", nofile.line()));
    ensure!(
        nofile.soft >= wanted,
        "{} devices need about {wanted} open files, the limit is {}; raise it (ulimit -n) or lower --devices",
        args.devices,
        nofile.soft
    );
    let config = database_config(&args.server)?;
    let config_path = match &config {
        Some(file) => Some(
            file.path()
                .to_str()
                .context("the configuration file's path is not UTF-8")?
                .to_string(),
        ),
        None => None,
    };
    let mut env = SERVER_ENV.to_vec();
    if let Some(path) = &config_path {
        env.push(("ONRAMP_CONFIG", path));
    }
    progress("starting the server");
    let server = Server::start_with(&args.server, &env)?;
    let backend = logged_backend(&server);
    progress(&format!(
        "server pid {} listening on {} ({backend})",
        server.pid(),
        server.addr,
    ));
    if backend != "unknown" && backend != args.server.backend() {
        bail!(
            "the server runs on {backend}, not {}",
            args.server.backend()
        );
    }
    let result = measure(&args, &server, config_path.as_deref(), &nofile).await;
    if result.is_err() {
        progress(&format!(
            "the run failed; the server's last log lines:\n{}",
            server.log_tail()
        ));
    }
    result
}

async fn measure(
    args: &RolloutArgs,
    server: &Server,
    config: Option<&str>,
    nofile: &sys::Nofile,
) -> Result<Report> {
    let n = args.devices;
    let mqtt_addr = server
        .mqtt_addr
        .context("the server did not print an MQTT address")?;
    let root_pem = server.admin(["ca", "export"]).await?;
    let client = Client::new(server.addr, &root_pem)?;
    let api_key = admin_api_key(server, config).await?;
    let bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .context("the API key is not a valid header value")?;

    let started = Instant::now();
    let identities = enrol_devices(&client, &api_key, n, thing_name).await?;
    progress(&format!(
        "enrolled {n} devices through EST in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    let (mut devices, tls) = connect_devices(mqtt_addr, &root_pem, identities).await?;
    progress(&format!(
        "connected and subscribed {n} devices over MQTT in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut unthrottled = None;
    if matches!(args.phase, Phase::Unthrottled | Phase::Both) {
        progress(&format!("unthrottled: one job to {n} devices"));
        let (back, result) = unthrottled_phase(args, server, &client, &bearer, devices).await?;
        progress(&format!(
            "unthrottled: {} of {n} succeeded in {:.2} s, {:.1} updates/s",
            result.succeeded,
            result.wall.as_secs_f64(),
            per_second(result.updates, result.wall)
        ));
        devices = back;
        unthrottled = Some(result);
    }
    let mut paced = None;
    if matches!(args.phase, Phase::Paced | Phase::Both) {
        progress(&format!(
            "paced: one job to {n} devices at maximumPerMinute {}, {} min",
            args.rate, args.minutes
        ));
        let (back, result) = paced_phase(args, server, &client, &bearer, devices).await?;
        devices = back;
        paced = Some(result);
    }
    drop(devices);
    let peak_rss_kib = server.peak_rss_kib()?;
    Ok(summarise(
        args,
        unthrottled.as_ref(),
        paced.as_ref(),
        peak_rss_kib,
        &tls,
        nofile,
    ))
}

// ---------------------------------------------------------------------------
// The operator

/// `POST /api/v1/jobs`; returns when it was sent and when it was answered.
async fn create_job(
    client: &Client,
    bearer: &HeaderValue,
    body: &Value,
) -> Result<(Instant, Instant)> {
    let mut conn = client.connect().await?;
    let body = Bytes::from(serde_json::to_vec(body).context("encoding the job")?);
    let request = Request::post("/api/v1/jobs")
        .header(HOST, "localhost")
        .header(AUTHORIZATION, bearer.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .context("building the job request")?;
    let sent = Instant::now();
    let response = conn.send(request).await.context("POST /api/v1/jobs")?;
    let answered = Instant::now();
    if response.status != StatusCode::CREATED {
        bail!(
            "POST /api/v1/jobs: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    Ok((sent, answered))
}

/// `executionCounts` of `GET /api/v1/jobs/<id>`.
async fn execution_counts(
    client: &Client,
    bearer: &HeaderValue,
    job_id: &str,
) -> Result<BTreeMap<String, u64>> {
    let mut conn = client.connect().await?;
    let request = Request::get(format!("/api/v1/jobs/{job_id}"))
        .header(HOST, "localhost")
        .header(AUTHORIZATION, bearer.clone())
        .body(Full::new(Bytes::new()))
        .context("building the job request")?;
    let response = conn.send(request).await.context("GET /api/v1/jobs/<id>")?;
    if response.status != StatusCode::OK {
        bail!(
            "GET /api/v1/jobs/{job_id}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    let job: Value = serde_json::from_slice(&response.body).context("the job description")?;
    let counts = match &job["executionCounts"] {
        Value::Null => &job["execution_counts"],
        counts => counts,
    };
    Ok(counts
        .as_object()
        .map(|counts| {
            counts
                .iter()
                .map(|(status, count)| (status.clone(), count.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

// ---------------------------------------------------------------------------
// The MQTT 3.1.1 device client

/// A connected, subscribed device.
struct Device {
    conn: Conn,
    thing: String,
    start_next: Publish,
    next_packet_id: u16,
    /// The last `clientToken` used.
    token: u64,
}

async fn connect_devices(
    addr: SocketAddr,
    root_pem: &str,
    identities: Vec<Identity>,
) -> Result<(Vec<Device>, String)> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        let cert = cert.map_err(|e| anyhow::anyhow!("the trust anchor PEM: {e:?}"))?;
        roots.add(cert).context("adding the trust anchor")?;
    }
    let roots = Arc::new(roots);
    let n = identities.len();
    let queue = Arc::new(Mutex::new(
        identities.into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let mut tasks = JoinSet::new();
    for _ in 0..CONNECT_CONCURRENCY.min(n) {
        let queue = queue.clone();
        let roots = roots.clone();
        tasks.spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                let Some((i, identity)) = next else { break };
                let device = Device::connect(addr, roots.clone(), identity)
                    .await
                    .with_context(|| format!("connecting {}", thing_name(i)))?;
                done.push((i, device));
            }
            anyhow::Ok(done)
        });
    }
    let mut slots: Vec<Option<(Device, String)>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        for (i, device) in joined.context("a connecting task failed")?? {
            slots[i] = Some(device);
        }
    }
    let mut tls = String::new();
    let mut devices = Vec::with_capacity(n);
    for (i, slot) in slots.into_iter().enumerate() {
        let (device, negotiated) =
            slot.with_context(|| format!("{} did not connect", thing_name(i)))?;
        tls = negotiated;
        devices.push(device);
    }
    Ok((devices, tls))
}

/// What a device is waiting for.
#[derive(Debug, Clone)]
enum Step {
    /// For `notify-next` naming the job (or for the time to ask anyway).
    Waiting,
    /// For the reply to start-next `token`.
    Starting { token: u64, sent: Instant },
    /// For the reply to an update; `last` for SUCCEEDED.
    Updating {
        token: u64,
        sent: Instant,
        version: u64,
        last: bool,
    },
    /// The execution succeeded.
    Done,
    /// An update was rejected; the device gives up on the job.
    Failed,
}

/// How a device runs one job.
#[derive(Clone)]
struct JobRun {
    job_id: Arc<str>,
    /// When the create request was answered, once it was.
    created: watch::Receiver<Option<Instant>>,
    /// Whether to start without `notify-next` after [`NOTIFY_GRACE`], and
    /// to ask again after start-next found nothing or was refused.
    fallback: bool,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
}

/// Counters every device adds to.
#[derive(Default)]
struct Shared {
    /// Accepted start-next and update replies.
    updates: AtomicU64,
    succeeded: AtomicU64,
    notified: AtomicU64,
}

/// What one device saw of one job.
#[derive(Default)]
struct DeviceResult {
    /// The first `notify-next` naming the job: when it arrived (monotonic
    /// and epoch seconds) and the execution's `queuedAt`.
    notified: Option<(Instant, f64, Option<u64>)>,
    /// Request → accepted reply.
    latencies: Vec<Duration>,
    rejections: BTreeMap<String, usize>,
    /// start-next replies without an execution.
    empty_starts: usize,
    /// start-next sent without a notification.
    fallbacks: usize,
    succeeded: bool,
    /// When the SUCCEEDED update was accepted.
    succeeded_at: Option<Instant>,
    failed: bool,
    /// A request still without a reply when the phase ended.
    unanswered: bool,
}

impl Device {
    /// TCP, TLS with the device's certificate, CONNECT (client id = thing
    /// name, clean session) and one SUBSCRIBE to its Jobs topics. Returns
    /// the device and the TLS version and group negotiated.
    async fn connect(
        addr: SocketAddr,
        roots: Arc<RootCertStore>,
        identity: Identity,
    ) -> Result<(Device, String)> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![identity.cert], identity.key)
            .context("the device certificate and key")?;
        let server_name = ServerName::try_from(SERVER_NAME)
            .context("the server name")?
            .to_owned();
        let tcp = timeout(MQTT_SETUP_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("TCP connect timed out")?
            .context("TCP connect")?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let tls = timeout(
            MQTT_SETUP_TIMEOUT,
            TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
        let (_, session) = tls.get_ref();
        let negotiated = format!(
            "{} {}",
            session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            session
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
        );
        let mut conn = Framed::new(tls, Codec::new(0));
        let thing = identity.thing;
        let connect = Connect {
            clean_session: true,
            keep_alive: KEEP_ALIVE_SECS,
            client_id: thing.as_str().into(),
            ..Default::default()
        };
        conn.send(Packet::Connect(Box::new(connect)))
            .await
            .context("sending CONNECT")?;
        match read_packet(&mut conn, "CONNACK").await? {
            Packet::ConnectAck(ack) if ack.return_code == ConnectAckReason::ConnectionAccepted => {}
            Packet::ConnectAck(ack) => bail!("CONNACK: {}", ack.return_code.reason()),
            other => bail!("expected CONNACK, got {other:?}"),
        }
        let suffixes = [
            "notify-next",
            "start-next/accepted",
            "start-next/rejected",
            "+/update/accepted",
            "+/update/rejected",
        ];
        let topic_filters = suffixes
            .iter()
            .map(|suffix| {
                (
                    format!("$aws/things/{thing}/jobs/{suffix}").into(),
                    QoS::AtLeastOnce,
                )
            })
            .collect();
        conn.send(Packet::Subscribe {
            packet_id: NonZeroU16::MIN,
            topic_filters,
        })
        .await
        .context("sending SUBSCRIBE")?;
        match read_packet(&mut conn, "SUBACK").await? {
            Packet::SubscribeAck { status, .. }
                if status.len() == suffixes.len()
                    && status
                        .iter()
                        .all(|s| matches!(s, SubscribeReturnCode::Success(_))) => {}
            other => bail!("the subscription was refused: {other:?}"),
        }
        let start_next = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: format!("$aws/things/{thing}/jobs/start-next").into(),
            packet_id: None,
            payload: Bytes::new(),
            properties: None,
        };
        Ok((
            Device {
                conn,
                thing,
                start_next,
                next_packet_id: 1,
                token: 0,
            },
            negotiated,
        ))
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        let id = NonZeroU16::new(self.next_packet_id).unwrap_or(NonZeroU16::MIN);
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    async fn publish(&mut self, topic: Option<String>, payload: String) -> Result<()> {
        let mut publish = self.start_next.clone();
        if let Some(topic) = topic {
            publish.topic = topic.into();
        }
        publish.packet_id = Some(self.packet_id());
        publish.payload = Bytes::from(payload);
        self.conn
            .feed(Packet::Publish(Box::new(publish)))
            .await
            .context("writing a request")
    }

    /// Queues a start-next request.
    async fn start(&mut self) -> Result<Step> {
        self.token += 1;
        let token = self.token;
        self.publish(None, format!(r#"{{"clientToken":"{token}"}}"#))
            .await?;
        Ok(Step::Starting {
            token,
            sent: Instant::now(),
        })
    }

    /// Queues an update of `job_id` to IN_PROGRESS, or to SUCCEEDED when `last`.
    async fn update(&mut self, job_id: &str, version: u64, last: bool) -> Result<Step> {
        self.token += 1;
        let token = self.token;
        let status = if last { "SUCCEEDED" } else { "IN_PROGRESS" };
        let topic = format!("$aws/things/{}/jobs/{job_id}/update", self.thing);
        let payload = format!(
            r#"{{"status":"{status}","expectedVersion":{version},"includeJobExecutionState":true,"clientToken":"{token}"}}"#
        );
        self.publish(Some(topic), payload).await?;
        Ok(Step::Updating {
            token,
            sent: Instant::now(),
            version,
            last,
        })
    }

    /// Runs one job until told to stop; returns the device and what it saw.
    async fn run_job(mut self, mut job: JobRun) -> Result<(Device, DeviceResult)> {
        let mut result = DeviceResult::default();
        let mut step = Step::Waiting;
        let mut retry_at: Option<Instant> = None;
        let mut created_open = true;
        loop {
            let ask_at = match step {
                Step::Waiting if job.fallback => {
                    retry_at.or_else(|| job.created.borrow().map(|at| at + NOTIFY_GRACE))
                }
                _ => None,
            };
            tokio::select! {
                frame = self.conn.next() => {
                    let was_waiting = matches!(step, Step::Waiting);
                    step = self.handle(frame, step, &job, &mut result).await?;
                    while let Some(frame) = self.conn.next().now_or_never() {
                        step = self.handle(frame, step, &job, &mut result).await?;
                    }
                    // start-next found nothing or was refused: ask again later.
                    if !was_waiting && matches!(step, Step::Waiting) {
                        retry_at = Some(Instant::now() + RETRY_AFTER);
                    }
                    self.conn.flush().await.context("writing to the server")?;
                }
                () = sleep_until(ask_at.unwrap_or_else(Instant::now).into()), if ask_at.is_some() => {
                    result.fallbacks += 1;
                    step = self.start().await?;
                    self.conn.flush().await.context("writing start-next")?;
                }
                changed = job.created.changed(), if created_open => {
                    if changed.is_err() {
                        created_open = false;
                    }
                }
                changed = job.stop.changed() => {
                    if changed.is_err() || *job.stop.borrow() {
                        break;
                    }
                }
            }
        }
        result.unanswered = matches!(step, Step::Starting { .. } | Step::Updating { .. });
        Ok((self, result))
    }

    /// One packet from the server; returns the next step.
    async fn handle(
        &mut self,
        frame: Option<Result<(Packet, u32), rmqtt_codec::error::DecodeError>>,
        step: Step,
        job: &JobRun,
        result: &mut DeviceResult,
    ) -> Result<Step> {
        let now = Instant::now();
        let (packet, _) = frame
            .with_context(|| format!("{}: the server closed the connection", self.thing))?
            .with_context(|| format!("{}: reading from the server", self.thing))?;
        let publish = match packet {
            Packet::Publish(publish) => publish,
            Packet::PublishAck { .. } | Packet::PingResponse => return Ok(step),
            Packet::Disconnect => bail!("{}: the server sent DISCONNECT", self.thing),
            other => bail!("{}: unexpected packet {other:?}", self.thing),
        };
        if publish.qos == QoS::AtLeastOnce
            && let Some(packet_id) = publish.packet_id
        {
            self.conn
                .feed(Packet::PublishAck { packet_id })
                .await
                .context("writing PUBACK")?;
        }
        let topic: &str = &publish.topic;
        let Ok(reply) = serde_json::from_slice::<Value>(&publish.payload) else {
            *result
                .rejections
                .entry(format!("unparseable payload on {topic}"))
                .or_default() += 1;
            return Ok(step);
        };
        let token = reply["clientToken"]
            .as_str()
            .and_then(|t| t.parse::<u64>().ok());
        let job_id: &str = &job.job_id;
        if topic.ends_with("/jobs/notify-next") {
            let execution = &reply["execution"];
            if execution["jobId"].as_str() != Some(job_id) || result.notified.is_some() {
                return Ok(step);
            }
            result.notified = Some((now, unix_now(), execution["queuedAt"].as_u64()));
            job.shared.notified.fetch_add(1, Ordering::Relaxed);
            if matches!(step, Step::Waiting) {
                return self.start().await;
            }
            return Ok(step);
        }
        match step {
            Step::Starting { token: want, sent } if token == Some(want) => {
                if topic.ends_with("/jobs/start-next/accepted") {
                    result.latencies.push(now - sent);
                    job.shared.updates.fetch_add(1, Ordering::Relaxed);
                    let execution = &reply["execution"];
                    match execution["jobId"].as_str() {
                        Some(id) if id == job_id => {
                            let version = execution["versionNumber"].as_u64().unwrap_or(1);
                            self.update(job_id, version, false).await
                        }
                        _ => {
                            result.empty_starts += 1;
                            Ok(Step::Waiting)
                        }
                    }
                } else if topic.ends_with("/jobs/start-next/rejected") {
                    *result.rejections.entry(rejection(&reply)).or_default() += 1;
                    Ok(Step::Waiting)
                } else {
                    Ok(step)
                }
            }
            Step::Updating {
                token: want,
                sent,
                version,
                last,
            } if token == Some(want) => {
                if topic.ends_with("/update/accepted") {
                    result.latencies.push(now - sent);
                    job.shared.updates.fetch_add(1, Ordering::Relaxed);
                    if last {
                        result.succeeded = true;
                        result.succeeded_at = Some(now);
                        job.shared.succeeded.fetch_add(1, Ordering::Relaxed);
                        Ok(Step::Done)
                    } else {
                        let next = reply["executionState"]["versionNumber"]
                            .as_u64()
                            .unwrap_or(version + 1);
                        self.update(job_id, next, true).await
                    }
                } else if topic.ends_with("/update/rejected") {
                    *result.rejections.entry(rejection(&reply)).or_default() += 1;
                    result.failed = true;
                    Ok(Step::Failed)
                } else {
                    Ok(step)
                }
            }
            other => Ok(other),
        }
    }
}

/// `code message` of a `/rejected` payload (Jobs codes are strings).
fn rejection(reply: &Value) -> String {
    let code = match &reply["code"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "no code".into(),
    };
    match reply["message"].as_str() {
        Some(message) if !message.is_empty() => format!("{code} ({message})"),
        _ => code,
    }
}

// ---------------------------------------------------------------------------
// Phases

/// All devices' results of one phase.
struct Phased {
    devices: Vec<Device>,
    results: Vec<DeviceResult>,
}

fn spawn_devices(
    devices: Vec<Device>,
    job: &JobRun,
) -> JoinSet<Result<(usize, Device, DeviceResult)>> {
    let mut tasks = JoinSet::new();
    for (i, device) in devices.into_iter().enumerate() {
        let job = job.clone();
        tasks.spawn(async move {
            let (device, result) = device.run_job(job).await?;
            anyhow::Ok((i, device, result))
        });
    }
    tasks
}

async fn join_devices(mut tasks: JoinSet<Result<(usize, Device, DeviceResult)>>) -> Result<Phased> {
    let mut slots = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        slots.push(joined.context("a device task failed")??);
    }
    slots.sort_by_key(|(i, _, _)| *i);
    let mut devices = Vec::with_capacity(slots.len());
    let mut results = Vec::with_capacity(slots.len());
    for (_, device, result) in slots {
        devices.push(device);
        results.push(result);
    }
    Ok(Phased { devices, results })
}

/// What every phase reports about its devices.
struct Tally {
    latency: Latency,
    samples: usize,
    rejections: BTreeMap<String, usize>,
    empty_starts: usize,
    fallbacks: usize,
    failed: usize,
    unanswered: usize,
}

fn tally(results: &mut [DeviceResult]) -> Tally {
    let mut latencies = Vec::new();
    let mut rejections: BTreeMap<String, usize> = BTreeMap::new();
    let (mut empty_starts, mut fallbacks, mut failed, mut unanswered) = (0, 0, 0, 0);
    for r in results.iter_mut() {
        latencies.append(&mut r.latencies);
        for (why, count) in std::mem::take(&mut r.rejections) {
            *rejections.entry(why).or_default() += count;
        }
        empty_starts += r.empty_starts;
        fallbacks += r.fallbacks;
        failed += usize::from(r.failed);
        unanswered += usize::from(r.unanswered);
    }
    let samples = latencies.len();
    Tally {
        latency: Latency::of(latencies),
        samples,
        rejections,
        empty_starts,
        fallbacks,
        failed,
        unanswered,
    }
}

struct UnthrottledResult {
    /// From sending the POST until every execution succeeded (or the timeout).
    wall: Duration,
    cpu: CpuUse,
    post: Duration,
    updates: u64,
    /// Accepted replies by the time the POST was answered.
    updates_at_response: u64,
    /// From the first `notify-next` to the last SUCCEEDED accepted.
    working: Duration,
    succeeded: u64,
    notified: usize,
    /// `notify-next` arrivals before the POST's response.
    notified_early: usize,
    /// From the POST's response to `notify-next`.
    notify_latency: Latency,
    /// From sending the POST to `notify-next`.
    notify_from_post: Latency,
    tally: Tally,
    counts: BTreeMap<String, u64>,
    timed_out: bool,
}

async fn unthrottled_phase(
    args: &RolloutArgs,
    server: &Server,
    client: &Client,
    bearer: &HeaderValue,
    devices: Vec<Device>,
) -> Result<(Vec<Device>, UnthrottledResult)> {
    let n = devices.len() as u64;
    let job_id = "rollout-unthrottled";
    let things: Vec<String> = devices.iter().map(|d| d.thing.clone()).collect();
    let shared = Arc::new(Shared::default());
    let (created_tx, created_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let job = JobRun {
        job_id: job_id.into(),
        created: created_rx,
        fallback: true,
        stop: stop_rx,
        shared: shared.clone(),
    };
    let tasks = spawn_devices(devices, &job);
    drop(job);
    sleep(START_DELAY).await;
    let body = json!({
        "jobId": job_id,
        "document": {"operation": "bench", "phase": "unthrottled"},
        "targets": things,
    });
    let cpu0 = CpuMark::now(server)?;
    let created = create_job(client, bearer, &body).await;
    let (sent, answered) = match created {
        Ok(times) => times,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    let _ = created_tx.send(Some(answered));
    let updates_at_response = shared.updates.load(Ordering::Relaxed);
    progress(&format!(
        "unthrottled: job created in {:.2} s",
        (answered - sent).as_secs_f64()
    ));
    let give_up = sent + Duration::from_secs(args.timeout_secs);
    let mut last_report = Instant::now();
    let timed_out = loop {
        if shared.succeeded.load(Ordering::Relaxed) >= n {
            break false;
        }
        if Instant::now() >= give_up {
            break true;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            progress(&format!(
                "unthrottled: {:.0} s, {} notified, {} updates accepted, {} succeeded",
                (Instant::now() - sent).as_secs_f64(),
                shared.notified.load(Ordering::Relaxed),
                shared.updates.load(Ordering::Relaxed),
                shared.succeeded.load(Ordering::Relaxed)
            ));
        }
        sleep(Duration::from_millis(5)).await;
    };
    let cpu1 = CpuMark::now(server)?;
    let wall = cpu1.at - sent;
    let updates = shared.updates.load(Ordering::Relaxed);
    let succeeded = shared.succeeded.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut phased = join_devices(tasks).await?;
    let counts = execution_counts(client, bearer, job_id).await?;
    let arrivals: Vec<Instant> = phased
        .results
        .iter()
        .filter_map(|r| r.notified.map(|(at, _, _)| at))
        .collect();
    let notified_early = arrivals.iter().filter(|&&at| at < answered).count();
    // Devices at work: from the first notify-next to the last SUCCEEDED accepted.
    let working = match (
        arrivals.iter().min(),
        phased.results.iter().filter_map(|r| r.succeeded_at).max(),
    ) {
        (Some(&first), Some(last)) => last.saturating_duration_since(first),
        _ => Duration::ZERO,
    };
    let notify_latency = Latency::of(
        arrivals
            .iter()
            .map(|&at| at.saturating_duration_since(answered))
            .collect(),
    );
    let notify_from_post = Latency::of(
        arrivals
            .iter()
            .map(|&at| at.saturating_duration_since(sent))
            .collect(),
    );
    let tally = tally(&mut phased.results);
    Ok((
        phased.devices,
        UnthrottledResult {
            wall,
            cpu: cpu1.since(cpu0),
            post: answered - sent,
            updates,
            updates_at_response,
            working,
            succeeded,
            notified: arrivals.len(),
            notified_early,
            notify_latency,
            notify_from_post,
            tally,
            counts,
            timed_out,
        },
    ))
}

struct PacedResult {
    cpu: CpuUse,
    post: Duration,
    /// Releases per 60 s from sending the POST.
    bins: Vec<u64>,
    /// Releases per 60 s by `queuedAt`, from the first release's second,
    /// beside what the configuration allows in the same spans.
    queued_bins: Vec<u64>,
    configured_bins: Vec<u64>,
    /// The most `notify-next` arrivals within any 60 s.
    busiest_window: u64,
    /// The most executions whose `queuedAt` falls within any 60 s.
    busiest_queued: u64,
    released: usize,
    succeeded: u64,
    /// Arrival (epoch seconds) minus the execution's `queuedAt` (whole seconds).
    notify_latency: Latency,
    notify_samples: usize,
    tally: Tally,
    counts: BTreeMap<String, u64>,
}

async fn paced_phase(
    args: &RolloutArgs,
    server: &Server,
    client: &Client,
    bearer: &HeaderValue,
    devices: Vec<Device>,
) -> Result<(Vec<Device>, PacedResult)> {
    let job_id = "rollout-paced";
    let things: Vec<String> = devices.iter().map(|d| d.thing.clone()).collect();
    let shared = Arc::new(Shared::default());
    let (created_tx, created_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let job = JobRun {
        job_id: job_id.into(),
        created: created_rx,
        fallback: false,
        stop: stop_rx,
        shared: shared.clone(),
    };
    let tasks = spawn_devices(devices, &job);
    drop(job);
    sleep(START_DELAY).await;
    let mut rollout = json!({"maximumPerMinute": args.rate});
    if args.exponential_base > 0 {
        rollout["exponentialRate"] = json!({
            "baseRatePerMinute": args.exponential_base,
            "incrementFactor": args.increment_factor,
            "rateIncreaseCriteria": {"numberOfNotifiedThings": args.notified_step},
        });
    }
    let targets = things.len() as u64;
    let body = json!({
        "jobId": job_id,
        "document": {"operation": "bench", "phase": "paced"},
        "targets": things,
        "jobExecutionsRolloutConfig": rollout,
    });
    let cpu0 = CpuMark::now(server)?;
    let sent_epoch = unix_now();
    let (sent, answered) = match create_job(client, bearer, &body).await {
        Ok(times) => times,
        Err(e) => {
            let _ = stop_tx.send(true);
            return Err(e);
        }
    };
    let _ = created_tx.send(Some(answered));
    let end = sent + BIN * u32::try_from(args.minutes).unwrap_or(u32::MAX);
    while Instant::now() < end {
        sleep_until(end.min(Instant::now() + Duration::from_secs(30)).into()).await;
        progress(&format!(
            "paced: {:.0} s, {} released, {} succeeded",
            (Instant::now() - sent).as_secs_f64(),
            shared.notified.load(Ordering::Relaxed),
            shared.succeeded.load(Ordering::Relaxed)
        ));
    }
    let cpu1 = CpuMark::now(server)?;
    let succeeded = shared.succeeded.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut phased = join_devices(tasks).await?;
    let counts = execution_counts(client, bearer, job_id).await?;
    let mut arrivals: Vec<Duration> = phased
        .results
        .iter()
        .filter_map(|r| {
            r.notified
                .map(|(at, _, _)| at.saturating_duration_since(sent))
        })
        .filter(|&d| d < end - sent)
        .collect();
    arrivals.sort_unstable();
    let mut bins = vec![0u64; usize::try_from(args.minutes).unwrap_or(usize::MAX)];
    for a in &arrivals {
        let i = (a.as_secs() / BIN.as_secs()) as usize;
        if let Some(bin) = bins.get_mut(i) {
            *bin += 1;
        }
    }
    let busiest_window = busiest(&arrivals, BIN);
    // The server's own release times: `queuedAt`, in whole epoch seconds.
    let mut queued: Vec<Duration> = phased
        .results
        .iter()
        .filter_map(|r| r.notified.and_then(|(_, _, q)| q))
        .map(Duration::from_secs)
        .collect();
    queued.sort_unstable();
    let busiest_queued = busiest(&queued, BIN);
    // Whole seconds from the first release to the end of the phase.
    let first = queued.first().map_or(0, Duration::as_secs);
    let phase_end = (sent_epoch as u64).saturating_add(BIN.as_secs() * args.minutes);
    let span = phase_end.saturating_sub(first);
    let schedule = configured_releases(args, targets, span);
    let mut queued_bins = Vec::new();
    let mut configured_bins = Vec::new();
    for start in (0..span).step_by(BIN.as_secs() as usize) {
        let stop = (start + BIN.as_secs()).min(span);
        queued_bins.push(
            queued
                .iter()
                .filter(|q| (first + start..first + stop).contains(&q.as_secs()))
                .count() as u64,
        );
        configured_bins.push(schedule[start as usize..stop as usize].iter().sum());
    }
    let latencies: Vec<Duration> = phased
        .results
        .iter()
        .filter_map(|r| match r.notified {
            Some((_, arrived, Some(queued))) => {
                Some(Duration::from_secs_f64((arrived - queued as f64).max(0.0)))
            }
            _ => None,
        })
        .collect();
    let notify_samples = latencies.len();
    let tally = tally(&mut phased.results);
    Ok((
        phased.devices,
        PacedResult {
            cpu: cpu1.since(cpu0),
            post: answered - sent,
            bins,
            queued_bins,
            configured_bins,
            busiest_window,
            busiest_queued,
            released: arrivals.len(),
            succeeded,
            notify_latency: Latency::of(latencies),
            notify_samples,
            tally,
            counts,
        },
    ))
}

/// Executions per minute once `increases` rate increases have applied:
/// each multiplies by the factor, rounds down and adds at least one, up to
/// `maximumPerMinute` (AWS IoT's exponential rollout).
fn configured_rate(args: &RolloutArgs, increases: u64) -> u64 {
    let max = u64::from(args.rate);
    if args.exponential_base == 0 {
        return max;
    }
    let mut rate = u64::from(args.exponential_base).clamp(1, max);
    for _ in 0..increases {
        if rate >= max {
            break;
        }
        let grown = (rate as f64 * args.increment_factor).floor() as u64;
        rate = grown.max(rate + 1).min(max);
    }
    rate
}

/// What the configuration releases in each of `seconds` seconds from the
/// first release, with a release opportunity every second and `targets`
/// things waiting: at each second, the rate minus what went out in the 60
/// seconds that end there.
fn configured_releases(args: &RolloutArgs, targets: u64, seconds: u64) -> Vec<u64> {
    let window = BIN.as_secs() as usize;
    let step = u64::from(args.notified_step.max(1));
    let mut releases = vec![0u64; seconds as usize];
    let mut notified = 0u64;
    for s in 0..releases.len() {
        let rate = configured_rate(args, notified / step);
        let recent: u64 = releases[(s + 1).saturating_sub(window)..s].iter().sum();
        let now = rate.saturating_sub(recent).min(targets - notified);
        releases[s] = now;
        notified += now;
    }
    releases
}

/// The most of the sorted `times` within any span of `width` (half-open).
fn busiest(times: &[Duration], width: Duration) -> u64 {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as u64
}

// ---------------------------------------------------------------------------
// Report

fn counts_line(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(status, count)| format!("{status} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn summarise(
    args: &RolloutArgs,
    unthrottled: Option<&UnthrottledResult>,
    paced: Option<&PacedResult>,
    peak_rss_kib: u64,
    tls: &str,
    nofile: &sys::Nofile,
) -> Report {
    let backend = args.server.backend();
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let n = args.devices;
    let mut failed = 0;
    let mut rows = vec![
        ("backend".into(), backend.to_string()),
        (
            "devices".into(),
            format!("{n} (MQTT 3.1.1, Jobs replies subscribed at QoS 1)"),
        ),
    ];
    let mut out = json!({
        "scenario": SCENARIO,
        "backend": backend,
        "devices": n,
    });
    if let Some(u) = unthrottled {
        let rate = per_second(u.updates, u.wall);
        let t = &u.tally;
        failed += t.failed + t.unanswered + n.saturating_sub(u.succeeded as usize);
        rows.push((
            "unthrottled: wall time".into(),
            format!(
                "{:.2} s from sending the POST to the last SUCCEEDED accepted{}",
                u.wall.as_secs_f64(),
                if u.timed_out { " (timed out)" } else { "" }
            ),
        ));
        rows.push((
            "unthrottled: POST /api/v1/jobs".into(),
            format!("answered in {:.2} s", u.post.as_secs_f64()),
        ));
        rows.push((
            "unthrottled: execution updates/s".into(),
            format!(
                "{rate:.1} ({} start-next + update accepted; {} of {n} succeeded)",
                u.updates, u.succeeded
            ),
        ));
        let rate_working = per_second(u.updates, u.working);
        rows.push((
            "unthrottled: updates/s from the first notify-next".into(),
            format!(
                "{rate_working:.1} (over {:.2} s, first notify-next to last SUCCEEDED accepted)",
                u.working.as_secs_f64()
            ),
        ));
        let after = u.wall.saturating_sub(u.post);
        let rate_after = per_second(u.updates - u.updates_at_response, after);
        rows.push((
            "unthrottled: updates/s after the POST's response".into(),
            format!(
                "{rate_after:.1} ({} accepted over {:.2} s; {} before the response)",
                u.updates - u.updates_at_response,
                after.as_secs_f64(),
                u.updates_at_response
            ),
        ));
        rows.push((
            "unthrottled: request→accepted ms (p50/p90/p99/max)".into(),
            latency_line(&t.latency, t.samples),
        ));
        rows.push((
            "unthrottled: notify-next after the POST's response ms".into(),
            format!(
                "{}; {} of the {} arrived before the response",
                latency_line(&u.notify_latency, u.notified),
                u.notified_early,
                u.notified
            ),
        ));
        rows.push((
            "unthrottled: notify-next after sending the POST ms".into(),
            latency_line(&u.notify_from_post, u.notified),
        ));
        rows.push((
            "unthrottled: rejections".into(),
            format!(
                "{}; {} start-next without execution, {} started without notify-next, {} failed, {} unanswered",
                map_line(&t.rejections),
                t.empty_starts,
                t.fallbacks,
                t.failed,
                t.unanswered
            ),
        ));
        rows.push((
            "unthrottled: executionCounts".into(),
            counts_line(&u.counts),
        ));
        rows.extend(cpu_rows("unthrottled: ", &u.cpu, u.updates));
        rows.push((
            "unthrottled: server CPU per execution".into(),
            format!(
                "{:.2} ms",
                u.cpu.server.as_secs_f64() * 1e3 / u.succeeded.max(1) as f64
            ),
        ));
        out["unthrottled"] = json!({
            "wall_s": u.wall.as_secs_f64(),
            "timed_out": u.timed_out,
            "post_s": u.post.as_secs_f64(),
            "updates": u.updates,
            "updates_per_s": (rate * 10.0).round() / 10.0,
            "updates_before_response": u.updates_at_response,
            "working_s": u.working.as_secs_f64(),
            "updates_per_s_from_first_notify": (rate_working * 10.0).round() / 10.0,
            "updates_per_s_after_response": (rate_after * 10.0).round() / 10.0,
            "succeeded": u.succeeded,
            "request_to_accepted_ms": t.latency.json(),
            "notified": u.notified,
            "notified_before_response": u.notified_early,
            "notify_after_response_ms": u.notify_latency.json(),
            "notify_after_post_sent_ms": u.notify_from_post.json(),
            "rejections": t.rejections,
            "empty_start_next": t.empty_starts,
            "started_without_notify": t.fallbacks,
            "failed": t.failed,
            "unanswered": t.unanswered,
            "execution_counts": u.counts,
            "server_cpu_ms_per_execution": u.cpu.server.as_secs_f64() * 1e3 / u.succeeded.max(1) as f64,
            "cpu": cpu_json(&u.cpu),
        });
    }
    if let Some(p) = paced {
        let t = &p.tally;
        failed += t.failed;
        let target = u64::from(args.rate);
        let bins = p
            .bins
            .iter()
            .map(|&b| {
                format!(
                    "{b} ({:+.1}%)",
                    (b as f64 - target as f64) * 100.0 / target as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push((
            "paced: configuration".into(),
            format!(
                "maximumPerMinute {}{}, {} min from sending the POST (answered in {:.2} s)",
                args.rate,
                if args.exponential_base > 0 {
                    format!(
                        ", exponentialRate base {} factor {} every {} notified",
                        args.exponential_base, args.increment_factor, args.notified_step
                    )
                } else {
                    String::new()
                },
                args.minutes,
                p.post.as_secs_f64()
            ),
        ));
        rows.push(("paced: released per 60 s".into(), bins));
        let against = p
            .queued_bins
            .iter()
            .zip(&p.configured_bins)
            .map(|(&m, &c)| {
                format!(
                    "{m} of {c} ({:+.1}%)",
                    (m as f64 - c as f64) * 100.0 / c.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        rows.push((
            "paced: per 60 s by queuedAt from the first release, of configured".into(),
            against,
        ));
        rows.push((
            "paced: busiest sliding 60 s".into(),
            format!(
                "{} by queuedAt (the server's release second), {} by notify-next arrival (configured {})",
                p.busiest_queued, p.busiest_window, args.rate
            ),
        ));
        rows.push((
            "paced: released / succeeded".into(),
            format!("{} / {}", p.released, p.succeeded),
        ));
        rows.push((
            "paced: notify-next after queuedAt ms (p50/p90/p99/max)".into(),
            format!(
                "{} — queuedAt is whole seconds, so up to 1000 ms too high",
                latency_line(&p.notify_latency, p.notify_samples)
            ),
        ));
        rows.push((
            "paced: request→accepted ms (p50/p90/p99/max)".into(),
            latency_line(&t.latency, t.samples),
        ));
        rows.push((
            "paced: rejections".into(),
            format!(
                "{}; {} failed, {} unanswered when the phase ended",
                map_line(&t.rejections),
                t.failed,
                t.unanswered
            ),
        ));
        rows.push(("paced: executionCounts".into(), counts_line(&p.counts)));
        rows.extend(cpu_rows("paced: ", &p.cpu, t.samples as u64));
        rows.push((
            "paced: server CPU per execution".into(),
            format!(
                "{:.2} ms (released executions)",
                p.cpu.server.as_secs_f64() * 1e3 / p.released.max(1) as f64
            ),
        ));
        out["paced"] = json!({
            "maximum_per_minute": args.rate,
            "minutes": args.minutes,
            "post_s": p.post.as_secs_f64(),
            "released_per_60s": p.bins,
            "exponential_base_rate_per_minute": args.exponential_base,
            "increment_factor": args.increment_factor,
            "number_of_notified_things": args.notified_step,
            "queued_at_per_60s_from_first_release": p.queued_bins,
            "configured_per_60s_from_first_release": p.configured_bins,
            "busiest_60s_arrivals": p.busiest_window,
            "busiest_60s_queued_at": p.busiest_queued,
            "released": p.released,
            "succeeded": p.succeeded,
            "notify_after_queued_at_ms": p.notify_latency.json(),
            "request_to_accepted_ms": t.latency.json(),
            "rejections": t.rejections,
            "failed": t.failed,
            "unanswered": t.unanswered,
            "execution_counts": p.counts,
            "server_cpu_ms_per_execution": p.cpu.server.as_secs_f64() * 1e3 / p.released.max(1) as f64,
            "cpu": cpu_json(&p.cpu),
        });
    }
    let rss_mib = peak_rss_kib as f64 / 1024.0;
    rows.push(("server peak RSS".into(), format!("{rss_mib:.1} MiB")));
    rows.push(("open files".into(), nofile.line()));
    rows.push(("MQTT TLS".into(), tls.to_string()));
    rows.push(("cores".into(), cores.to_string()));
    out["server_peak_rss_mib"] = json!((rss_mib * 10.0).round() / 10.0);
    out["tls"] = json!(tls);
    out["cores"] = json!(cores);
    out["failed"] = json!(failed);
    Report {
        title: "Jobs rollout (onramp-bench rollout)".into(),
        rows,
        json: out,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busiest_window_is_half_open() {
        let s = Duration::from_secs;
        assert_eq!(busiest(&[], s(60)), 0);
        assert_eq!(busiest(&[s(0), s(59), s(60), s(61)], s(60)), 3);
        assert_eq!(busiest(&[s(0), s(0), s(120)], s(60)), 2);
    }

    fn args(rate: u32, base: u32, factor: f64, step: u32) -> RolloutArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: RolloutArgs,
        }
        let mut a = Cli::parse_from(["bench"]).a;
        (
            a.rate,
            a.exponential_base,
            a.increment_factor,
            a.notified_step,
        ) = (rate, base, factor, step);
        a
    }

    #[test]
    fn a_constant_rate_releases_the_maximum_each_minute() {
        let r = configured_releases(&args(1000, 0, 2.0, 400), 10_000, 180);
        assert_eq!(r[0], 1000);
        assert_eq!(r[60], 1000);
        assert_eq!(r[120], 1000);
        assert_eq!(r.iter().sum::<u64>(), 3000);
    }

    #[test]
    fn an_exponential_rate_grows_with_the_notified_things() {
        // 200 at once; 200 more a minute later make 400 notified, one
        // increase (rate 400): another 200 fit the window at once.
        let r = configured_releases(&args(1000, 200, 2.0, 400), 10_000, 130);
        assert_eq!((r[0], r[59], r[60], r[61]), (200, 0, 200, 200));
        // Never more than the rate within any 60 s, never past the targets.
        for end in 0..r.len() {
            let window: u64 = r[(end + 1).saturating_sub(60)..=end].iter().sum();
            assert!(window <= 1000, "{window} in the 60 s ending at {end}");
        }
        let few = configured_releases(&args(1000, 200, 2.0, 400), 300, 130);
        assert_eq!(few.iter().sum::<u64>(), 300);
        assert_eq!(configured_rate(&args(1000, 200, 2.0, 400), 10), 1000);
        assert_eq!(configured_rate(&args(1000, 1, 1.1, 1), 1), 2);
    }

    #[test]
    fn rejections_name_the_code() {
        assert_eq!(
            rejection(&json!({"code": "VersionMismatch", "message": "x"})),
            "VersionMismatch (x)"
        );
        assert_eq!(rejection(&json!({"code": 409})), "409");
        assert_eq!(rejection(&json!({})), "no code");
    }
}
