//! `onramp-bench shadow`: device shadow updates over MQTT, and how long an
//! operator's desired-state change takes to reach the device under load.
//!
//! Before the clock starts: the server is started on a fresh data directory
//! with its MQTT gateway on an ephemeral port and the per-source CONNECT
//! limit raised; `--devices` devices are enrolled through EST (one token,
//! P-256 key and CSR each, `POST /.well-known/est/simpleenroll`); each device
//! connects over MQTT 3.1.1 and mutual TLS with its own certificate (client
//! id = thing name) and subscribes to its
//! `$aws/things/<thing>/shadow/update/accepted`, `/update/rejected` and
//! `/update/delta`.
//!
//! Throughput phase: for `--duration` seconds every device publishes QoS 1
//! updates `{"state":{"reported":{"seq":N,"t":<ns>}},"clientToken":"N"}` to
//! its `$aws/things/<thing>/shadow/update`, keeping `--window` updates
//! without an `/update/accepted` or `/update/rejected` reply in flight.
//! Counted: accepted replies per second (each is sent only after the durable
//! write), rejections, and the time from publishing an update to its reply.
//!
//! Delta phase: the devices publish `--rate` updates/s in all, paced; after
//! a second of warm-up an operator sends `--samples` desired-state changes
//! `{"state":{"desired":{"x":N}}}` to random devices with
//! `POST /api/v1/things/<thing>/shadow` over one keep-alive HTTPS connection,
//! `--spacing-ms` apart. Measured: from sending the POST to the first
//! `/update/delta` carrying that `x` on the device's MQTT connection. A device
//! reports the last `x` it received in its next update, as a device applies
//! and reports a delta, so the delta is not repeated after every update.
//! Desired-state changes still refused after the server's compare-and-set
//! retries (429) are counted as failures, with the time they took.
//!
//! With `--database-url` the database is given to the server and the CLI in a
//! configuration file (`ONRAMP_CONFIG`, `--config`), and the run stops if the
//! server's start-up log names another backend.

use crate::est::{ENROL_PATH, create_token, csr_with_key};
use crate::https::{Client, Connection};
use crate::report::{Latency, Report, ms};
use crate::server::{Server, ServerArgs, machine_cpu_time, own_cpu_time};
use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::{FutureExt, SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{Codec, Connect, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

/// Settings the server runs with: the gateway on an ephemeral port, and the
/// per-source CONNECT limit out of the way (every device connects from
/// 127.0.0.1).
const SERVER_ENV: &[(&str, &str)] = &[
    ("ONRAMP_MQTT__LISTEN", "127.0.0.1:0"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__PER_SECOND", "1000000"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__BURST", "1000000"),
];
/// Connections (and tasks) that create tokens and enrol before the clock starts.
const SETUP_CONNECTIONS: usize = 8;
/// Devices connecting to the gateway at once before the clock starts.
const CONNECT_CONCURRENCY: usize = 16;
/// Time allowed for each step of setting up an MQTT connection.
const MQTT_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// MQTT keep-alive: longer than any pause between the phases.
const KEEP_ALIVE_SECS: u16 = 600;
/// The name the server certificate is checked against.
const SERVER_NAME: &str = "localhost";
/// How long the devices keep waiting for replies once they stop publishing.
const DRAIN: Duration = Duration::from_secs(10);
/// Load before the delta phase's operator starts.
const WARMUP: Duration = Duration::from_secs(1);
/// How long the operator waits for the last deltas after its last request.
const DELTA_WAIT: Duration = Duration::from_secs(5);
/// Time between arranging a phase's start and the devices starting.
const START_DELAY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Only the throughput phase: closed-loop updates.
    Throughput,
    /// Only the delta phase: paced updates and desired-state changes over REST.
    Delta,
    /// Throughput, then delta, on the same server and connections.
    Both,
}

#[derive(Debug, Args)]
pub struct ShadowArgs {
    /// Devices: each enrols, keeps one MQTT connection and updates its own classic shadow.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Phase::Both)]
    phase: Phase,
    /// Length of the throughput phase, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Updates per device published but not yet answered on /update/accepted
    /// or /update/rejected (both phases).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Delta phase: updates per second from all devices together, paced.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Delta phase: desired-state changes the operator sends.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Delta phase: pause after each desired-state change's response, in ms.
    #[arg(long, default_value_t = 5)]
    spacing_ms: u64,
    /// Delta phase: send no further desired-state changes after this many
    /// seconds, even if fewer than --samples were sent (a saturated server
    /// answers each one slowly).
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// QoS of the devices' subscriptions to their reply and delta topics.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    sub_qos: u8,
    #[command(flatten)]
    server: ServerArgs,
}

fn thing_name(i: usize) -> String {
    format!("SHADOW-{i}")
}

fn progress(msg: &str) {
    eprintln!("onramp-bench shadow: {msg}");
}

pub async fn run(args: ShadowArgs) -> Result<Report> {
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(args.window > 0, "--window must be at least 1");
    ensure!(args.duration > 0, "--duration must be at least 1");
    ensure!(args.rate > 0, "--rate must be at least 1");
    // `onramp` reads from the environment only the settings its built-in
    // defaults name, and `database_url` has no default, so
    // `ONRAMP_DATABASE_URL` alone leaves the server on SQLite. A
    // configuration file carries the database to the server and the CLI.
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
    let result = measure(&args, &server, config_path.as_deref()).await;
    if result.is_err() {
        progress(&format!(
            "the run failed; the server's last log lines:\n{}",
            server.log_tail()
        ));
    }
    result
}

/// A configuration file naming `--database-url`, if one was given.
pub(crate) fn database_config(args: &ServerArgs) -> Result<Option<tempfile::NamedTempFile>> {
    let Some(url) = &args.database_url else {
        return Ok(None);
    };
    let mut file = tempfile::Builder::new()
        .prefix("onramp-bench-")
        .suffix(".toml")
        .tempfile()
        .context("creating a configuration file")?;
    let text = format!("database_url = {}\n", serde_json::Value::from(url.as_str()));
    std::io::Write::write_all(&mut file, text.as_bytes())
        .context("writing the configuration file")?;
    Ok(Some(file))
}

/// The registry backend the server's start-up log line names.
pub(crate) fn logged_backend(server: &Server) -> &'static str {
    let log = server.log_tail();
    match log.lines().find(|l| l.contains("serving HTTPS")) {
        Some(line) if line.contains("\"postgres\"") => "postgres",
        Some(line) if line.contains("\"sqlite\"") => "sqlite",
        _ => "unknown",
    }
}

/// Creates an admin API key with the CLI (on the server's database) and
/// returns its secret.
pub(crate) async fn admin_api_key(server: &Server, config: Option<&str>) -> Result<String> {
    let mut args: Vec<&str> = Vec::new();
    if let Some(path) = config {
        args.extend(["--config", path]);
    }
    args.extend([
        "--json", "apikey", "create", "--name", "bench", "--role", "admin",
    ]);
    let key_json = server.admin(args).await?;
    let key: serde_json::Value =
        serde_json::from_str(&key_json).context("the output of `onramp apikey create`")?;
    Ok(key["secret"]
        .as_str()
        .context("`onramp apikey create` printed no secret")?
        .to_string())
}

async fn measure(args: &ShadowArgs, server: &Server, config: Option<&str>) -> Result<Report> {
    let n = args.devices;
    let mqtt_addr = server
        .mqtt_addr
        .context("the server did not print an MQTT address")?;
    let root_pem = server.admin(["ca", "export"]).await?;
    let client = Client::new(server.addr, &root_pem)?;
    let api_key = admin_api_key(server, config).await?;

    let started = Instant::now();
    let identities = enrol_devices(&client, &api_key, n, thing_name).await?;
    progress(&format!(
        "enrolled {n} devices through EST in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let started = Instant::now();
    let sub_qos = if args.sub_qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let (mut devices, tls) = connect_devices(mqtt_addr, &root_pem, identities, sub_qos).await?;
    progress(&format!(
        "connected and subscribed {n} devices over MQTT in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut throughput = None;
    if matches!(args.phase, Phase::Throughput | Phase::Both) {
        progress(&format!(
            "throughput: {n} devices, window {}, {} s",
            args.window, args.duration
        ));
        let (back, result) = throughput_phase(args, server, devices).await?;
        progress(&format!(
            "throughput: {:.1} accepted updates/s, p99 {:.2} ms",
            per_second(result.counts.accepted, result.cpu.wall),
            ms(result.latency.p99)
        ));
        devices = back;
        throughput = Some(result);
    }
    let mut delta = None;
    if matches!(args.phase, Phase::Delta | Phase::Both) {
        progress(&format!(
            "delta: {} updates/s from {n} devices, {} desired-state changes {} ms apart",
            args.rate, args.samples, args.spacing_ms
        ));
        let (back, result) = delta_phase(args, server, &client, &api_key, devices).await?;
        devices = back;
        delta = Some(result);
    }
    drop(devices);
    let peak_rss_kib = server.peak_rss_kib()?;
    Ok(summarise(
        args,
        throughput.as_ref(),
        delta.as_ref(),
        peak_rss_kib,
        &tls,
    ))
}

// ---------------------------------------------------------------------------
// Enrolment

/// A device's identity after enrolment.
pub(crate) struct Identity {
    pub(crate) thing: String,
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
}

/// Creates a token for each device through the API, then enrols it with its
/// own P-256 key and CSR, over a few keep-alive connections.
pub(crate) async fn enrol_devices(
    client: &Client,
    api_key: &str,
    n: usize,
    thing_name: fn(usize) -> String,
) -> Result<Vec<Identity>> {
    let bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .context("the API key is not a valid header value")?;
    let prepared = tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| {
                let (key, csr) = csr_with_key(&thing_name(i))?;
                Ok((key.serialize_der(), csr))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .context("generating keys and CSRs")??;
    let prepared = Arc::new(prepared);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..SETUP_CONNECTIONS.min(n) {
        let client = client.clone();
        let bearer = bearer.clone();
        let next = next.clone();
        let prepared = prepared.clone();
        tasks.spawn(async move {
            let mut conn = client.connect().await?;
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, csr)) = prepared.get(i) else {
                    break;
                };
                let thing = thing_name(i);
                let token = create_token(&mut conn, &bearer, &thing).await?;
                let cert = enrol(&mut conn, &thing, &token, csr).await?;
                done.push((
                    i,
                    Identity {
                        thing,
                        cert: CertificateDer::from(cert),
                        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.clone())),
                    },
                ));
            }
            anyhow::Ok(done)
        });
    }
    let mut slots: Vec<Option<Identity>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        for (i, identity) in joined.context("an enrolment task failed")?? {
            slots[i] = Some(identity);
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.with_context(|| format!("{} was not enrolled", thing_name(i))))
        .collect()
}

/// `POST /.well-known/est/simpleenroll` with HTTP Basic; returns the
/// certificate (DER).
pub(crate) async fn enrol(
    conn: &mut Connection,
    thing: &str,
    token: &str,
    csr: &[u8],
) -> Result<Vec<u8>> {
    let basic = STANDARD.encode(format!("{thing}:{token}"));
    let body = Bytes::from(STANDARD.encode(csr));
    let request = Request::post(ENROL_PATH)
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/pkcs10")
        .header(AUTHORIZATION, format!("Basic {basic}"))
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .context("building the enrolment request")?;
    let response = conn.send(request).await?;
    if response.status != StatusCode::OK {
        bail!(
            "enrolling {thing}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        );
    }
    let compact: Vec<u8> = response
        .body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let p7 = STANDARD
        .decode(compact)
        .with_context(|| format!("enrolling {thing}: the response is not base64"))?;
    first_certificate(&p7).with_context(|| format!("enrolling {thing}: the PKCS#7 response"))
}

/// One DER element at the start of `der`: its tag, header length and total length.
fn der_element(der: &[u8]) -> Result<(u8, usize, usize)> {
    let (&tag, rest) = der.split_first().context("truncated DER")?;
    let (&first, rest) = rest.split_first().context("truncated DER")?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        ensure!((1..=4).contains(&count), "unsupported DER length");
        let bytes = rest.get(..count).context("truncated DER")?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, 2 + count)
    };
    ensure!(der.len() >= header + len, "truncated DER");
    Ok((tag, header, header + len))
}

/// The first certificate of a PKCS#7 certs-only SignedData (RFC 2315):
/// `ContentInfo { contentType, [0] SignedData { version, digestAlgorithms,
/// contentInfo, [0] certificates, ... } }`.
fn first_certificate(p7: &[u8]) -> Result<Vec<u8>> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const INTEGER: u8 = 0x02;
    const OID: u8 = 0x06;
    const CONTEXT_0: u8 = 0xa0;
    let enter = |der: &[u8], want: u8| -> Result<usize> {
        let (tag, header, _) = der_element(der)?;
        ensure!(tag == want, "expected tag {want:#04x}, found {tag:#04x}");
        Ok(header)
    };
    let skip = |der: &[u8], want: u8| -> Result<usize> {
        let (tag, _, end) = der_element(der)?;
        ensure!(tag == want, "expected tag {want:#04x}, found {tag:#04x}");
        Ok(end)
    };
    let mut at = p7;
    at = &at[enter(at, SEQUENCE)?..];
    at = &at[skip(at, OID)?..];
    at = &at[enter(at, CONTEXT_0)?..];
    at = &at[enter(at, SEQUENCE)?..];
    for tag in [INTEGER, SET, SEQUENCE] {
        at = &at[skip(at, tag)?..];
    }
    at = &at[enter(at, CONTEXT_0)?..];
    let end = skip(at, SEQUENCE)?;
    Ok(at[..end].to_vec())
}

// ---------------------------------------------------------------------------
// The MQTT 3.1.1 device client

pub(crate) type Conn = Framed<TlsStream<TcpStream>, Codec>;

/// A connected, subscribed device.
struct Device {
    conn: Conn,
    thing: String,
    /// A QoS 1 PUBLISH to the device's `/shadow/update`, without id and payload.
    template: Publish,
    next_packet_id: u16,
    /// Sequence number of the device's last update; also its `clientToken`.
    seq: u64,
    /// The last desired `x` a delta brought, reported with every later update.
    last_x: Option<u64>,
}

async fn connect_devices(
    addr: SocketAddr,
    root_pem: &str,
    identities: Vec<Identity>,
    sub_qos: QoS,
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
                let device = Device::connect(addr, roots.clone(), identity, sub_qos)
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

impl Device {
    /// TCP, TLS with the device's certificate, CONNECT (client id = thing
    /// name, clean session) and one SUBSCRIBE to its reply and delta topics.
    /// Returns the device and the TLS version and group negotiated.
    async fn connect(
        addr: SocketAddr,
        roots: Arc<RootCertStore>,
        identity: Identity,
        sub_qos: QoS,
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
        let topic_filters = ["accepted", "rejected", "delta"]
            .iter()
            .map(|suffix| {
                (
                    format!("$aws/things/{thing}/shadow/update/{suffix}").into(),
                    sub_qos,
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
                if status.len() == 3
                    && status
                        .iter()
                        .all(|s| matches!(s, SubscribeReturnCode::Success(_))) => {}
            other => bail!("the subscription was refused: {other:?}"),
        }
        let template = Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: format!("$aws/things/{thing}/shadow/update").into(),
            packet_id: None,
            payload: Bytes::new(),
            properties: None,
        };
        Ok((
            Device {
                conn,
                thing,
                template,
                next_packet_id: 1,
                seq: 0,
                last_x: None,
            },
            negotiated,
        ))
    }

    fn packet_id(&mut self) -> NonZeroU16 {
        let id = NonZeroU16::new(self.next_packet_id).unwrap_or(NonZeroU16::MIN);
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Queues one reported-state update (written out by the next flush).
    async fn feed_update(&mut self, in_flight: &mut VecDeque<(u64, Instant)>) -> Result<()> {
        self.seq += 1;
        let seq = self.seq;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let payload = match self.last_x {
            Some(x) => format!(
                r#"{{"state":{{"reported":{{"seq":{seq},"t":{t},"x":{x}}}}},"clientToken":"{seq}"}}"#
            ),
            None => format!(
                r#"{{"state":{{"reported":{{"seq":{seq},"t":{t}}}}},"clientToken":"{seq}"}}"#
            ),
        };
        let mut publish = self.template.clone();
        publish.packet_id = Some(self.packet_id());
        publish.payload = Bytes::from(payload);
        in_flight.push_back((seq, Instant::now()));
        self.conn
            .feed(Packet::Publish(Box::new(publish)))
            .await
            .context("writing an update")
    }

    /// Publishes updates for one phase until it ends, then waits up to
    /// [`DRAIN`] for the replies still due. Returns the device for the next
    /// phase and what it saw.
    async fn drive(
        mut self,
        load: Load,
        window: usize,
        shared: Arc<Shared>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(Device, DeviceResult)> {
        let mut result = DeviceResult::default();
        let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
        let (start, until, mut next_tick, period) = match load {
            Load::Closed { start, until } => (start, Some(until), None, Duration::ZERO),
            Load::Paced {
                start,
                first,
                period,
            } => (start, None, Some(first), period),
        };
        sleep_until(start.into()).await;
        // Once set, no more updates are sent and replies are awaited until then.
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if drain_until.is_none() && until.is_some_and(|u| now >= u) {
                drain_until = Some(now + DRAIN);
            }
            if let Some(limit) = drain_until
                && (in_flight.is_empty() || now >= limit)
            {
                result.unanswered = in_flight.len();
                break;
            }
            if drain_until.is_none() && until.is_some() && in_flight.len() < window {
                while in_flight.len() < window {
                    self.feed_update(&mut in_flight).await?;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                self.conn.flush().await.context("writing updates")?;
            }
            let tick = next_tick.filter(|_| drain_until.is_none() && in_flight.len() < window);
            let timer = drain_until.or(until);
            tokio::select! {
                frame = self.conn.next() => {
                    self.handle(frame, &mut in_flight, &mut result, &shared).await?;
                    // Whatever else has already arrived, before one flush.
                    while let Some(frame) = self.conn.next().now_or_never() {
                        self.handle(frame, &mut in_flight, &mut result, &shared).await?;
                    }
                    self.conn.flush().await.context("writing acknowledgements")?;
                }
                () = sleep_until(tick.unwrap_or(now).into()), if tick.is_some() => {
                    self.feed_update(&mut in_flight).await?;
                    self.conn.flush().await.context("writing an update")?;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    // Ticks missed while the window was full are not made up.
                    let mut next = tick.unwrap_or(now) + period;
                    let now = Instant::now();
                    while next <= now {
                        next += period;
                        shared.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    next_tick = Some(next);
                }
                () = sleep_until(timer.unwrap_or(now).into()), if timer.is_some() => {}
                changed = stop.changed(), if drain_until.is_none() && until.is_none() => {
                    if changed.is_err() || *stop.borrow() {
                        drain_until = Some(Instant::now() + DRAIN);
                    }
                }
            }
        }
        Ok((self, result))
    }

    /// One packet from the server.
    async fn handle(
        &mut self,
        frame: Option<Result<(Packet, u32), rmqtt_codec::error::DecodeError>>,
        in_flight: &mut VecDeque<(u64, Instant)>,
        result: &mut DeviceResult,
        shared: &Shared,
    ) -> Result<()> {
        let now = Instant::now();
        let (packet, _) = frame
            .with_context(|| format!("{}: the server closed the connection", self.thing))?
            .with_context(|| format!("{}: reading from the server", self.thing))?;
        let publish = match packet {
            Packet::Publish(publish) => publish,
            Packet::PublishAck { .. } | Packet::PingResponse => return Ok(()),
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
        if topic.ends_with("/update/accepted") {
            // Accepted updates made over REST carry no token of this device.
            if let Some(sent) = client_token(&publish.payload).and_then(|t| take(in_flight, t)) {
                result.latencies.push(now - sent);
                shared.accepted.fetch_add(1, Ordering::Relaxed);
            }
        } else if topic.ends_with("/update/rejected") {
            if client_token(&publish.payload)
                .and_then(|t| take(in_flight, t))
                .is_some()
            {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
                *result
                    .rejections
                    .entry(rejection(&publish.payload))
                    .or_default() += 1;
            }
        } else if topic.ends_with("/update/delta") {
            let delta: serde_json::Value = serde_json::from_slice(&publish.payload)
                .with_context(|| format!("{}: a delta that is not JSON", self.thing))?;
            if let Some(x) = delta["state"]["x"].as_u64() {
                shared
                    .deltas
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(x)
                    .or_insert(now);
                self.last_x = Some(x);
            }
        }
        Ok(())
    }
}

pub(crate) async fn read_packet(conn: &mut Conn, what: &str) -> Result<Packet> {
    match timeout(MQTT_SETUP_TIMEOUT, conn.next()).await {
        Err(_) => bail!("no {what} within {MQTT_SETUP_TIMEOUT:?}"),
        Ok(None) => bail!("the server closed the connection instead of sending {what}"),
        Ok(Some(Err(e))) => bail!("reading {what}: {e}"),
        Ok(Some(Ok((packet, _)))) => Ok(packet),
    }
}

/// The `clientToken` of a reply, when it is one of this bench's sequence numbers.
fn client_token(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""clientToken":""#;
    let at = payload.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let rest = &payload[at..];
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// Removes the update with this token from the in-flight window and returns
/// when it was sent.
fn take(in_flight: &mut VecDeque<(u64, Instant)>, token: u64) -> Option<Instant> {
    let i = in_flight.iter().position(|&(seq, _)| seq == token)?;
    in_flight.remove(i).map(|(_, sent)| sent)
}

/// `code message` of a `/rejected` payload.
fn rejection(payload: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(v) => format!(
            "{} {}",
            v["code"].as_i64().unwrap_or(0),
            v["message"].as_str().unwrap_or("")
        ),
        Err(_) => "unparseable rejection".into(),
    }
}

// ---------------------------------------------------------------------------
// Phases

#[derive(Debug, Clone, Copy)]
enum Load {
    /// Keep the window full from `start` until `until`.
    Closed { start: Instant, until: Instant },
    /// One update every `period` from `first`, until told to stop.
    Paced {
        start: Instant,
        first: Instant,
        period: Duration,
    },
}

/// Counters every device adds to.
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    /// Paced ticks dropped because the device's window was full.
    skipped: AtomicU64,
    /// When the first delta carrying each desired `x` arrived.
    deltas: Mutex<HashMap<u64, Instant>>,
}

impl Shared {
    fn counts(&self) -> Counts {
        Counts {
            sent: self.sent.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    sent: u64,
    accepted: u64,
    rejected: u64,
    skipped: u64,
}

impl Counts {
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            sent: self.sent - earlier.sent,
            accepted: self.accepted - earlier.accepted,
            rejected: self.rejected - earlier.rejected,
            skipped: self.skipped - earlier.skipped,
        }
    }
}

#[derive(Default)]
struct DeviceResult {
    latencies: Vec<Duration>,
    rejections: BTreeMap<String, usize>,
    unanswered: usize,
}

/// CPU used by the server, the bench and the whole machine, at one moment.
#[derive(Clone, Copy)]
pub(crate) struct CpuMark {
    pub(crate) at: Instant,
    server: Duration,
    own: Duration,
    machine: Duration,
    switches: u64,
}

impl CpuMark {
    pub(crate) fn now(server: &Server) -> Result<CpuMark> {
        Ok(CpuMark {
            at: Instant::now(),
            server: server.cpu_time()?,
            own: own_cpu_time()?,
            machine: machine_cpu_time()?,
            switches: server.context_switches()?,
        })
    }

    pub(crate) fn since(self, earlier: CpuMark) -> CpuUse {
        let server = self.server.saturating_sub(earlier.server);
        let own = self.own.saturating_sub(earlier.own);
        CpuUse {
            wall: self.at - earlier.at,
            server,
            own,
            // What the rest of the machine used meanwhile: on a shared
            // machine the figures only mean something next to this.
            other: self
                .machine
                .saturating_sub(earlier.machine)
                .saturating_sub(server + own),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

pub(crate) struct CpuUse {
    pub(crate) wall: Duration,
    pub(crate) server: Duration,
    own: Duration,
    other: Duration,
    switches: u64,
}

/// All devices' results of one phase.
struct Phased {
    devices: Vec<Device>,
    latencies: Vec<Duration>,
    rejections: BTreeMap<String, usize>,
    unanswered: usize,
}

async fn join_devices(mut tasks: JoinSet<Result<(usize, Device, DeviceResult)>>) -> Result<Phased> {
    let mut slots: Vec<(usize, Device)> = Vec::new();
    let mut latencies = Vec::new();
    let mut rejections: BTreeMap<String, usize> = BTreeMap::new();
    let mut unanswered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, device, result) = joined.context("a device task failed")??;
        slots.push((i, device));
        latencies.extend(result.latencies);
        for (why, count) in result.rejections {
            *rejections.entry(why).or_default() += count;
        }
        unanswered += result.unanswered;
    }
    slots.sort_by_key(|(i, _)| *i);
    Ok(Phased {
        devices: slots.into_iter().map(|(_, d)| d).collect(),
        latencies,
        rejections,
        unanswered,
    })
}

fn spawn_devices(
    devices: Vec<Device>,
    window: usize,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    load: impl Fn(usize) -> Load,
) -> JoinSet<Result<(usize, Device, DeviceResult)>> {
    let mut tasks = JoinSet::new();
    for (i, device) in devices.into_iter().enumerate() {
        let shared = shared.clone();
        let stop = stop.clone();
        let load = load(i);
        tasks.spawn(async move {
            let (device, result) = device.drive(load, window, shared, stop).await?;
            anyhow::Ok((i, device, result))
        });
    }
    tasks
}

struct ThroughputResult {
    counts: Counts,
    cpu: CpuUse,
    latency: Latency,
    replies: usize,
    rejections: BTreeMap<String, usize>,
    unanswered: usize,
}

async fn throughput_phase(
    args: &ShadowArgs,
    server: &Server,
    devices: Vec<Device>,
) -> Result<(Vec<Device>, ThroughputResult)> {
    let shared = Arc::new(Shared::default());
    let (_stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now() + START_DELAY;
    let until = start + Duration::from_secs(args.duration);
    let tasks = spawn_devices(devices, args.window, &shared, &stop_rx, |_| Load::Closed {
        start,
        until,
    });
    // Nothing is sent before `start`.
    let counts0 = shared.counts();
    sleep_until(start.into()).await;
    let cpu0 = CpuMark::now(server)?;
    sleep_until(until.into()).await;
    let cpu1 = CpuMark::now(server)?;
    let counts1 = shared.counts();
    let phased = join_devices(tasks).await?;
    let replies = phased.latencies.len();
    Ok((
        phased.devices,
        ThroughputResult {
            counts: counts1.since(counts0),
            cpu: cpu1.since(cpu0),
            latency: Latency::of(phased.latencies),
            replies,
            rejections: phased.rejections,
            unanswered: phased.unanswered,
        },
    ))
}

struct DeltaResult {
    /// Load during the operator's requests.
    counts: Counts,
    cpu: CpuUse,
    update_latency: Latency,
    rejections: BTreeMap<String, usize>,
    unanswered: usize,
    samples: usize,
    posts_ok: usize,
    post_failures: BTreeMap<String, usize>,
    post_latency: Latency,
    /// Time until a refused desired-state change was answered.
    failed_post_latency: Latency,
    delta_latency: Latency,
    deltas_received: usize,
}

/// SplitMix64: enough randomness to pick devices.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct OperatorSample {
    x: u64,
    sent: Instant,
    post: Duration,
    ok: bool,
}

async fn delta_phase(
    args: &ShadowArgs,
    server: &Server,
    client: &Client,
    api_key: &str,
    devices: Vec<Device>,
) -> Result<(Vec<Device>, DeltaResult)> {
    let n = devices.len();
    let things: Vec<String> = devices.iter().map(|d| d.thing.clone()).collect();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now() + START_DELAY;
    // Each device publishes every n / rate seconds, the devices evenly staggered.
    let period = Duration::from_secs_f64(n as f64 / args.rate as f64);
    let tasks = spawn_devices(devices, args.window, &shared, &stop_rx, |i| Load::Paced {
        start,
        first: start + period.mul_f64(i as f64 / n as f64),
        period,
    });
    let mut conn = client.connect().await?;
    let bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .context("the API key is not a valid header value")?;
    sleep_until((start + WARMUP).into()).await;

    let cpu0 = CpuMark::now(server)?;
    let counts0 = shared.counts();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut rng = SplitMix(seed);
    let mut samples = Vec::with_capacity(args.samples);
    let mut post_failures: BTreeMap<String, usize> = BTreeMap::new();
    let give_up = cpu0.at + Duration::from_secs(args.max_secs);
    for i in 0..args.samples {
        if Instant::now() >= give_up {
            progress(&format!(
                "delta: stopped after {i} desired-state changes (--max-secs {})",
                args.max_secs
            ));
            break;
        }
        let thing = &things[(rng.next() % n as u64) as usize];
        let x = i as u64 + 1;
        let body = Bytes::from(format!(r#"{{"state":{{"desired":{{"x":{x}}}}}}}"#));
        let request = Request::post(format!("/api/v1/things/{thing}/shadow"))
            .header(HOST, "localhost")
            .header(AUTHORIZATION, bearer.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .context("building the shadow request")?;
        let sent = Instant::now();
        let response = conn.send(request).await;
        let post = sent.elapsed();
        let ok = match response {
            Ok(r) if r.status == StatusCode::OK => true,
            Ok(r) => {
                let why = serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_default();
                *post_failures
                    .entry(format!("HTTP {} {why}", r.status.as_u16()))
                    .or_default() += 1;
                false
            }
            Err(e) => {
                *post_failures.entry(e.to_string()).or_default() += 1;
                conn = client.connect().await?;
                false
            }
        };
        samples.push(OperatorSample { x, sent, post, ok });
        sleep(Duration::from_millis(args.spacing_ms)).await;
    }
    let cpu1 = CpuMark::now(server)?;
    let counts1 = shared.counts();

    // The last deltas may still be on their way.
    let waited = Instant::now();
    loop {
        let arrived = shared
            .deltas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if arrived >= samples.iter().filter(|s| s.ok).count() || waited.elapsed() > DELTA_WAIT {
            break;
        }
        sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let phased = join_devices(tasks).await?;

    let deltas = std::mem::take(&mut *shared.deltas.lock().unwrap_or_else(|e| e.into_inner()));
    let delta_latencies: Vec<Duration> = samples
        .iter()
        .filter(|s| s.ok)
        .filter_map(|s| {
            deltas
                .get(&s.x)
                .map(|&at| at.saturating_duration_since(s.sent))
        })
        .collect();
    let ok: Vec<&OperatorSample> = samples.iter().filter(|s| s.ok).collect();
    Ok((
        phased.devices,
        DeltaResult {
            counts: counts1.since(counts0),
            cpu: cpu1.since(cpu0),
            update_latency: Latency::of(phased.latencies),
            rejections: phased.rejections,
            unanswered: phased.unanswered,
            samples: samples.len(),
            posts_ok: ok.len(),
            post_failures,
            post_latency: Latency::of(ok.iter().map(|s| s.post).collect()),
            failed_post_latency: Latency::of(
                samples.iter().filter(|s| !s.ok).map(|s| s.post).collect(),
            ),
            deltas_received: delta_latencies.len(),
            delta_latency: Latency::of(delta_latencies),
        },
    ))
}

// ---------------------------------------------------------------------------
// Report

pub(crate) fn per_second(count: u64, wall: Duration) -> f64 {
    count as f64 / wall.as_secs_f64().max(f64::MIN_POSITIVE)
}

pub(crate) fn latency_line(latency: &Latency, samples: usize) -> String {
    if samples == 0 {
        "no samples".into()
    } else {
        format!("{} ({samples} samples)", latency.line())
    }
}

pub(crate) fn map_line(map: &BTreeMap<String, usize>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(why, count)| format!("{why}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn cpu_rows(prefix: &str, cpu: &CpuUse, updates: u64) -> Vec<(String, String)> {
    let secs = cpu.wall.as_secs_f64().max(f64::MIN_POSITIVE);
    let line = |used: Duration| {
        format!(
            "{:.1} s ({:.2} cores, {:.1} µs per update)",
            used.as_secs_f64(),
            used.as_secs_f64() / secs,
            used.as_secs_f64() * 1e6 / updates.max(1) as f64
        )
    };
    vec![
        (format!("{prefix}server CPU"), line(cpu.server)),
        (format!("{prefix}bench CPU"), line(cpu.own)),
        (
            format!("{prefix}other processes' CPU"),
            format!(
                "{:.1} s ({:.2} cores)",
                cpu.other.as_secs_f64(),
                cpu.other.as_secs_f64() / secs
            ),
        ),
        (
            format!("{prefix}server context switches"),
            format!(
                "{} ({:.1} per update)",
                cpu.switches,
                cpu.switches as f64 / updates.max(1) as f64
            ),
        ),
    ]
}

pub(crate) fn cpu_json(cpu: &CpuUse) -> serde_json::Value {
    serde_json::json!({
        "wall_s": cpu.wall.as_secs_f64(),
        "server_cpu_s": cpu.server.as_secs_f64(),
        "bench_cpu_s": cpu.own.as_secs_f64(),
        "other_cpu_s": cpu.other.as_secs_f64(),
        "server_context_switches": cpu.switches,
    })
}

fn summarise(
    args: &ShadowArgs,
    throughput: Option<&ThroughputResult>,
    delta: Option<&DeltaResult>,
    peak_rss_kib: u64,
    tls: &str,
) -> Report {
    let backend = args.server.backend();
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let mut failed = 0;
    let mut rows = vec![
        ("backend".into(), backend.to_string()),
        (
            "devices".into(),
            format!(
                "{} (MQTT 3.1.1, replies and deltas subscribed at QoS {})",
                args.devices, args.sub_qos
            ),
        ),
        (
            "window".into(),
            format!("{} updates in flight per device", args.window),
        ),
    ];
    let mut json = serde_json::json!({
        "scenario": "shadow",
        "backend": backend,
        "devices": args.devices,
        "window": args.window,
        "sub_qos": args.sub_qos,
    });
    if let Some(t) = throughput {
        let rate = per_second(t.counts.accepted, t.cpu.wall);
        failed += t.counts.rejected as usize + t.unanswered;
        rows.push((
            "throughput: duration".into(),
            format!("{:.2} s", t.cpu.wall.as_secs_f64()),
        ));
        rows.push((
            "throughput: accepted updates/s".into(),
            format!("{rate:.1}"),
        ));
        rows.push((
            "throughput: updates sent / accepted / rejected".into(),
            format!(
                "{} / {} / {} in the timed window; {} replies in all, {} unanswered after {DRAIN:?}",
                t.counts.sent, t.counts.accepted, t.counts.rejected, t.replies, t.unanswered
            ),
        ));
        rows.push(("throughput: rejections".into(), map_line(&t.rejections)));
        rows.push((
            "throughput: update→accepted ms (p50/p90/p99/max)".into(),
            t.latency.line(),
        ));
        rows.extend(cpu_rows("throughput: ", &t.cpu, t.counts.accepted));
        json["throughput"] = serde_json::json!({
            "duration_s": args.duration,
            "accepted_per_s": (rate * 10.0).round() / 10.0,
            "sent": t.counts.sent,
            "accepted": t.counts.accepted,
            "rejected": t.counts.rejected,
            "rejections": t.rejections,
            "unanswered": t.unanswered,
            "update_to_accepted_ms": t.latency.json(),
            "cpu": cpu_json(&t.cpu),
        });
    }
    if let Some(d) = delta {
        let wall = d.cpu.wall;
        let sent_rate = per_second(d.counts.sent, wall);
        let accepted_rate = per_second(d.counts.accepted, wall);
        let missing = d.posts_ok - d.deltas_received;
        failed += d.counts.rejected as usize + d.unanswered + (d.samples - d.posts_ok) + missing;
        rows.push((
            "delta: background load".into(),
            format!(
                "target {} updates/s; sent {sent_rate:.1}/s, accepted {accepted_rate:.1}/s over {:.2} s; {} ticks skipped (window full)",
                args.rate,
                wall.as_secs_f64(),
                d.counts.skipped
            ),
        ));
        rows.push((
            "delta: update→accepted ms (p50/p90/p99/max)".into(),
            d.update_latency.line(),
        ));
        rows.push((
            "delta: rejections".into(),
            format!(
                "{}; {} unanswered after {DRAIN:?}",
                map_line(&d.rejections),
                d.unanswered
            ),
        ));
        rows.push((
            "delta: desired-state changes".into(),
            format!(
                "{} of {} sent {} ms apart, {} answered 200, {} deltas received; failures: {}",
                d.samples,
                args.samples,
                args.spacing_ms,
                d.posts_ok,
                d.deltas_received,
                map_line(&d.post_failures)
            ),
        ));
        rows.push((
            "delta: POST→delta ms (p50/p90/p99/max)".into(),
            latency_line(&d.delta_latency, d.deltas_received),
        ));
        rows.push((
            "delta: POST response ms (p50/p90/p99/max)".into(),
            latency_line(&d.post_latency, d.posts_ok),
        ));
        rows.push((
            "delta: refused POST response ms".into(),
            latency_line(&d.failed_post_latency, d.samples - d.posts_ok),
        ));
        rows.extend(cpu_rows("delta: ", &d.cpu, d.counts.accepted));
        json["delta"] = serde_json::json!({
            "target_updates_per_s": args.rate,
            "sent_per_s": (sent_rate * 10.0).round() / 10.0,
            "accepted_per_s": (accepted_rate * 10.0).round() / 10.0,
            "skipped_ticks": d.counts.skipped,
            "rejected": d.counts.rejected,
            "rejections": d.rejections,
            "unanswered": d.unanswered,
            "update_to_accepted_ms": d.update_latency.json(),
            "samples": d.samples,
            "samples_requested": args.samples,
            "max_secs": args.max_secs,
            "spacing_ms": args.spacing_ms,
            "posts_ok": d.posts_ok,
            "post_failures": d.post_failures,
            "deltas_received": d.deltas_received,
            "post_to_delta_ms": d.delta_latency.json(),
            "post_response_ms": d.post_latency.json(),
            "refused_post_response_ms": d.failed_post_latency.json(),
            "cpu": cpu_json(&d.cpu),
        });
    }
    let rss_mib = peak_rss_kib as f64 / 1024.0;
    rows.push(("server peak RSS".into(), format!("{rss_mib:.1} MiB")));
    rows.push(("MQTT TLS".into(), tls.to_string()));
    rows.push(("cores".into(), cores.to_string()));
    json["server_peak_rss_mib"] = serde_json::json!((rss_mib * 10.0).round() / 10.0);
    json["tls"] = serde_json::json!(tls);
    json["cores"] = serde_json::json!(cores);
    json["failed"] = serde_json::json!(failed);
    Report {
        title: "Device shadows (onramp-bench shadow)".into(),
        rows,
        json,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_comes_out_of_the_pkcs7() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["SHADOW-0".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let p7 = onramp_pki::certs_only_pkcs7(&[cert.der().as_ref()]).expect("PKCS#7");
        assert_eq!(first_certificate(&p7).expect("parsed"), cert.der().to_vec());
        assert!(first_certificate(&p7[..p7.len() - 1]).is_err());
        assert!(first_certificate(cert.der()).is_err());
    }

    #[test]
    fn replies_are_matched_by_client_token() {
        let accepted = br#"{"state":{"reported":{"seq":7,"t":1}},"metadata":{},"version":3,"timestamp":1,"clientToken":"7"}"#;
        assert_eq!(client_token(accepted), Some(7));
        assert_eq!(client_token(br#"{"state":{"desired":{"x":1}}}"#), None);
        assert_eq!(client_token(br#"{"clientToken":"abc"}"#), None);
        let t0 = Instant::now();
        let mut in_flight: VecDeque<(u64, Instant)> = [(6, t0), (7, t0), (8, t0)].into();
        assert_eq!(take(&mut in_flight, 7), Some(t0));
        assert_eq!(take(&mut in_flight, 7), None);
        assert_eq!(in_flight.len(), 2);
    }

    #[test]
    fn rejections_name_code_and_message() {
        assert_eq!(
            rejection(br#"{"code":409,"message":"Version conflict","timestamp":1}"#),
            "409 Version conflict"
        );
        assert_eq!(rejection(b"nope"), "unparseable rejection");
    }
}
