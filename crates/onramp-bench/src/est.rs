//! `onramp-bench est`: EST token enrolment throughput and latency.
//!
//! Before the clock starts: the server is started on a fresh data directory,
//! an admin API key is created with the CLI, one enrolment token per device
//! is created through `POST /api/v1/tokens`, and one P-256 CSR per device is
//! generated. Timed: `--clients` tasks share `--enrolments` devices; each
//! enrolment opens a fresh TCP connection, makes a full TLS handshake and
//! sends one `POST /.well-known/est/simpleenroll` with HTTP Basic
//! (serial number : token). Latency runs from the TCP connect to the last
//! byte of the response.

use crate::https::{Client, Connection};
use crate::report::{Latency, Report, ms};
use crate::server::{Server, ServerArgs, machine_cpu_time, own_cpu_time};
use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub(crate) const ENROL_PATH: &str = "/.well-known/est/simpleenroll";
const TOKENS_PATH: &str = "/api/v1/tokens";
/// Connections used to create the tokens before the timed phase.
const SETUP_CONNECTIONS: usize = 8;
/// An enrolment that takes longer than this counts as failed.
const ENROL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct EstArgs {
    /// Concurrent clients, each enrolling one device after another.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Enrolments in the timed phase: one device, token and CSR each.
    #[arg(long, default_value_t = 10_000)]
    enrolments: usize,
    #[command(flatten)]
    server: ServerArgs,
}

/// One device's prepared request.
struct Device {
    authorization: HeaderValue,
    /// Base64 of the CSR's DER (RFC 7030 §4.2.1).
    body: Bytes,
}

enum Outcome {
    Enrolled,
    Failed(String),
}

struct Sample {
    total: Duration,
    connect: Duration,
    handshake: Duration,
    request: Duration,
    outcome: Outcome,
}

fn serial(i: usize) -> String {
    format!("BENCH-{i}")
}

fn progress(msg: &str) {
    eprintln!("onramp-bench est: {msg}");
}

pub async fn run(args: EstArgs) -> Result<Report> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.enrolments > 0, "--enrolments must be at least 1");
    progress("starting the server");
    let server = Server::start(&args.server)?;
    progress(&format!(
        "server pid {} listening on {} ({})",
        server.pid(),
        server.addr,
        args.server.backend()
    ));
    let result = measure(&args, &server).await;
    if result.is_err() {
        progress(&format!(
            "the run failed; the server's last log lines:\n{}",
            server.log_tail()
        ));
    }
    result
}

async fn measure(args: &EstArgs, server: &Server) -> Result<Report> {
    let n = args.enrolments;
    let root_pem = server.admin(["ca", "export"]).await?;
    let client = Client::new(server.addr, &root_pem)?;
    let api_key = admin_api_key(server).await?;

    let started = Instant::now();
    let (tokens, tls) = create_tokens(&client, &api_key, n).await?;
    progress(&format!(
        "created {n} tokens in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let started = Instant::now();
    let csrs = tokio::task::spawn_blocking(move || make_csrs(n))
        .await
        .context("generating CSRs")??;
    progress(&format!(
        "generated {n} P-256 CSRs in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let devices = tokens
        .iter()
        .zip(&csrs)
        .enumerate()
        .map(|(i, (token, csr))| {
            let basic = STANDARD.encode(format!("{}:{token}", serial(i)));
            Ok(Device {
                authorization: HeaderValue::from_str(&format!("Basic {basic}"))
                    .context("the Authorization header")?,
                body: Bytes::from(STANDARD.encode(csr)),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    drop(csrs);

    progress(&format!(
        "enrolling {n} devices with {} clients",
        args.clients
    ));
    let server_cpu = server.cpu_time()?;
    let own_cpu = own_cpu_time()?;
    let machine_cpu = machine_cpu_time()?;
    let switches = server.context_switches()?;
    let started = Instant::now();
    let samples = enrol_all(&client, Arc::new(devices), args.clients).await?;
    let wall = started.elapsed();
    let server_cpu = server.cpu_time()?.saturating_sub(server_cpu);
    let own_cpu = own_cpu_time()?.saturating_sub(own_cpu);
    let machine_cpu = machine_cpu_time()?.saturating_sub(machine_cpu);
    let switches = server.context_switches()?.saturating_sub(switches);
    // What the rest of the machine used meanwhile: on a shared machine the
    // figures only mean something next to this.
    let other_cpu = machine_cpu.saturating_sub(server_cpu + own_cpu);
    let peak_rss_kib = server.peak_rss_kib()?;
    let service = parse_service_time(&server.metrics().await?);

    Ok(summarise(
        args,
        &samples,
        Totals {
            wall,
            server_cpu,
            own_cpu,
            other_cpu,
            switches,
            peak_rss_kib,
            tls,
            service,
        },
    ))
}

/// Creates an admin API key with the CLI and returns its secret.
pub(crate) async fn admin_api_key(server: &Server) -> Result<String> {
    let key_json = server
        .admin([
            "--json", "apikey", "create", "--name", "bench", "--role", "admin",
        ])
        .await?;
    let key: serde_json::Value =
        serde_json::from_str(&key_json).context("the output of `onramp apikey create`")?;
    Ok(key["secret"]
        .as_str()
        .context("`onramp apikey create` printed no secret")?
        .to_string())
}

/// Creates one token per device through the management API, over a few
/// keep-alive connections. Returns the tokens (index = device) and the TLS
/// parameters the server negotiated.
async fn create_tokens(client: &Client, api_key: &str, n: usize) -> Result<(Vec<String>, String)> {
    let bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .context("the API key is not a valid header value")?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..SETUP_CONNECTIONS.min(n) {
        let client = client.clone();
        let bearer = bearer.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut conn = client.connect().await?;
            let mut created = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                created.push((i, create_token(&mut conn, &bearer, &serial(i)).await?));
            }
            anyhow::Ok((created, conn.tls))
        });
    }
    let mut tokens = vec![String::new(); n];
    let mut tls = String::new();
    while let Some(joined) = tasks.join_next().await {
        let (created, conn_tls) = joined.context("a token task failed")??;
        for (i, token) in created {
            tokens[i] = token;
        }
        tls = conn_tls;
    }
    Ok((tokens, tls))
}

pub(crate) async fn create_token(
    conn: &mut Connection,
    bearer: &HeaderValue,
    serial: &str,
) -> Result<String> {
    let body = serde_json::json!({ "serial_number": serial }).to_string();
    let request = Request::post(TOKENS_PATH)
        .header(HOST, "localhost")
        .header(AUTHORIZATION, bearer.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body)))
        .context("building the token request")?;
    let response = conn.send(request).await?;
    if response.status != StatusCode::CREATED {
        bail!(
            "POST {TOKENS_PATH} for {serial}: {} {}{}",
            response.status,
            String::from_utf8_lossy(&response.body).trim(),
            if response.status == StatusCode::CONFLICT {
                " (use an empty database)"
            } else {
                ""
            }
        );
    }
    let created: serde_json::Value = serde_json::from_slice(&response.body)
        .with_context(|| format!("POST {TOKENS_PATH} for {serial}: the response is not JSON"))?;
    created["secret"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("POST {TOKENS_PATH} for {serial}: no `secret` in the response"))
}

/// One P-256 key and CSR (DER, CN = serial number) per device, on every core.
fn make_csrs(n: usize) -> Result<Vec<Vec<u8>>> {
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(n);
    let per_thread = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = t * per_thread..((t + 1) * per_thread).min(n);
                scope.spawn(move || range.map(csr).collect::<Result<Vec<_>>>())
            })
            .collect();
        let mut csrs = Vec::with_capacity(n);
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow::anyhow!("a CSR thread panicked"))??;
            csrs.extend(part);
        }
        Ok(csrs)
    })
}

fn csr(i: usize) -> Result<Vec<u8>> {
    Ok(csr_with_key(&serial(i))?.1)
}

/// A fresh P-256 key and a CSR (DER) for it with `common_name` as subject.
pub(crate) fn csr_with_key(common_name: &str) -> Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate().context("generating a P-256 key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CSR parameters")?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    let request = params.serialize_request(&key).context("signing the CSR")?;
    let der = request.der().to_vec();
    Ok((key, der))
}

/// The timed phase: `clients` tasks take the next device until none is left.
async fn enrol_all(
    client: &Client,
    devices: Arc<Vec<Device>>,
    clients: usize,
) -> Result<Vec<Sample>> {
    let n = devices.len();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..clients.min(n) {
        let client = client.clone();
        let devices = devices.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(n / clients + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(device) = devices.get(i) else { break };
                samples.push(enrol(&client, device).await);
            }
            samples
        });
    }
    let mut samples = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.context("an enrolment task failed")?);
    }
    Ok(samples)
}

async fn enrol(client: &Client, device: &Device) -> Sample {
    let started = Instant::now();
    let mut sample = Sample {
        total: Duration::ZERO,
        connect: Duration::ZERO,
        handshake: Duration::ZERO,
        request: Duration::ZERO,
        outcome: Outcome::Enrolled,
    };
    let attempt = async {
        let mut conn = client.connect().await?;
        sample.connect = conn.connect;
        sample.handshake = conn.handshake;
        let request = Request::post(ENROL_PATH)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/pkcs10")
            .header(AUTHORIZATION, device.authorization.clone())
            .header(CONTENT_LENGTH, device.body.len())
            .body(Full::new(device.body.clone()))
            .context("building the enrolment request")?;
        let sent = Instant::now();
        let response = conn.send(request).await?;
        sample.request = sent.elapsed();
        anyhow::Ok(response)
    };
    let outcome = match tokio::time::timeout(ENROL_TIMEOUT, attempt).await {
        Err(_) => Outcome::Failed(format!("no response within {ENROL_TIMEOUT:?}")),
        // Only the outermost context: the phase that failed.
        Ok(Err(e)) => Outcome::Failed(e.to_string()),
        Ok(Ok(response)) if response.status != StatusCode::OK => {
            Outcome::Failed(format!("HTTP {}", response.status.as_u16()))
        }
        Ok(Ok(response)) => match check_pkcs7(&response.body) {
            Ok(()) => Outcome::Enrolled,
            Err(why) => Outcome::Failed(why.to_string()),
        },
    };
    sample.total = started.elapsed();
    sample.outcome = outcome;
    sample
}

/// The server's own view of its enrolments, from `/metrics`: the time
/// `simple_enroll` took (credential check, issuance, registry commit), without
/// TLS and HTTP.
#[derive(Debug, Default, PartialEq)]
struct ServiceTime {
    count: u64,
    mean: Duration,
    /// Upper bound of the histogram bucket holding the 99th percentile.
    p99_at_most: Option<f64>,
}

fn parse_service_time(text: &str) -> ServiceTime {
    const NAME: &str = "onramp_enrolment_duration_seconds";
    const OP: &str = "operation=\"simpleenroll\"";
    let mut sum = 0.0;
    let mut count = 0u64;
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(NAME) else {
            continue;
        };
        if !rest.contains(OP) {
            continue;
        }
        let Some((series, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        if series.starts_with("_sum") {
            sum = value.parse().unwrap_or(0.0);
        } else if series.starts_with("_count") {
            count = value.parse().unwrap_or(0);
        } else if series.starts_with("_bucket") {
            let le = series
                .split_once("le=\"")
                .and_then(|(_, v)| v.split('"').next())
                .and_then(|v| v.parse::<f64>().ok());
            if let (Some(le), Ok(n)) = (le, value.parse::<u64>()) {
                buckets.push((le, n));
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let wanted = (count as f64 * 0.99).ceil() as u64;
    let p99_at_most = buckets
        .iter()
        .find(|(_, n)| count > 0 && *n >= wanted)
        .map(|(le, _)| le * 1000.0);
    ServiceTime {
        count,
        mean: if count > 0 {
            Duration::from_secs_f64(sum / count as f64)
        } else {
            Duration::ZERO
        },
        p99_at_most,
    }
}

/// A 200 must carry base64 (MIME line breaks allowed) of a DER structure.
fn check_pkcs7(body: &[u8]) -> Result<(), &'static str> {
    if body.is_empty() {
        return Err("HTTP 200 with an empty body");
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    match STANDARD.decode(compact) {
        Ok(der) if der.first() == Some(&0x30) => Ok(()),
        _ => Err("HTTP 200 with a body that is not base64 DER"),
    }
}

struct Totals {
    wall: Duration,
    server_cpu: Duration,
    own_cpu: Duration,
    other_cpu: Duration,
    switches: u64,
    peak_rss_kib: u64,
    tls: String,
    service: ServiceTime,
}

fn service_line(s: &ServiceTime) -> String {
    let p99 = match s.p99_at_most {
        Some(le) if le.is_finite() => format!("p99 <= {le}"),
        _ => "p99 above the largest bucket".into(),
    };
    format!(
        "mean {:.2}, {p99} (from /metrics, {} enrolments)",
        ms(s.mean),
        s.count
    )
}

fn summarise(args: &EstArgs, samples: &[Sample], t: Totals) -> Report {
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| match &s.outcome {
            Outcome::Enrolled => true,
            Outcome::Failed(why) => {
                *failures.entry(why.clone()).or_default() += 1;
                false
            }
        })
        .collect();
    let enrolled = ok.len();
    let failed = samples.len() - enrolled;
    let of = |f: fn(&Sample) -> Duration| Latency::of(ok.iter().map(|s| f(s)).collect());
    let total = of(|s| s.total);
    let connect = of(|s| s.connect);
    let handshake = of(|s| s.handshake);
    let request = of(|s| s.request);
    let secs = t.wall.as_secs_f64();
    let rate = if secs > 0.0 {
        enrolled as f64 / secs
    } else {
        0.0
    };
    let cores = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let per_enrolment = |cpu: Duration| {
        if samples.is_empty() {
            0.0
        } else {
            ms(cpu) / samples.len() as f64
        }
    };
    let rss_mib = t.peak_rss_kib as f64 / 1024.0;
    let switches_per = t.switches as f64 / samples.len().max(1) as f64;
    let backend = args.server.backend();

    let failures_line = if failures.is_empty() {
        "none".to_string()
    } else {
        failures
            .iter()
            .map(|(why, count)| format!("{why}: {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cpu_line = |cpu: Duration| {
        format!(
            "{:.1} s ({:.2} cores, {:.3} ms per enrolment)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() / secs.max(f64::MIN_POSITIVE),
            per_enrolment(cpu)
        )
    };
    let rows = vec![
        ("backend".into(), backend.to_string()),
        ("clients".into(), args.clients.to_string()),
        (
            "enrolments".into(),
            format!("{} ({enrolled} enrolled, {failed} failed)", samples.len()),
        ),
        ("failures".into(), failures_line),
        ("duration".into(), format!("{secs:.2} s")),
        ("throughput".into(), format!("{rate:.1} enrolments/s")),
        ("latency ms (p50/p90/p99/max)".into(), total.line()),
        ("  TCP connect ms".into(), connect.line()),
        ("  TLS handshake ms".into(), handshake.line()),
        ("  request ms".into(), request.line()),
        ("server enrolment time ms".into(), service_line(&t.service)),
        ("server CPU".into(), cpu_line(t.server_cpu)),
        ("bench CPU".into(), cpu_line(t.own_cpu)),
        (
            "other processes' CPU".into(),
            format!(
                "{:.1} s ({:.2} cores)",
                t.other_cpu.as_secs_f64(),
                t.other_cpu.as_secs_f64() / secs.max(f64::MIN_POSITIVE)
            ),
        ),
        (
            "server context switches".into(),
            format!("{} ({switches_per:.1} per enrolment)", t.switches),
        ),
        ("server peak RSS".into(), format!("{rss_mib:.1} MiB")),
        ("TLS".into(), t.tls.clone()),
        ("cores".into(), cores.to_string()),
    ];
    let json = serde_json::json!({
        "scenario": "est",
        "backend": backend,
        "clients": args.clients,
        "enrolments": samples.len(),
        "enrolled": enrolled,
        "failed": failed,
        "failures": failures,
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "enrolments_per_s": (rate * 10.0).round() / 10.0,
        "latency_ms": total.json(),
        "tcp_connect_ms": connect.json(),
        "tls_handshake_ms": handshake.json(),
        "request_ms": request.json(),
        "server_enrolment_ms": {
            "count": t.service.count,
            "mean": ms(t.service.mean),
            "p99_at_most": t.service.p99_at_most,
        },
        "server_cpu_s": t.server_cpu.as_secs_f64(),
        "bench_cpu_s": t.own_cpu.as_secs_f64(),
        "other_cpu_s": t.other_cpu.as_secs_f64(),
        "server_context_switches": t.switches,
        "server_peak_rss_mib": (rss_mib * 10.0).round() / 10.0,
        "tls": t.tls,
        "cores": cores,
    });
    Report {
        title: "EST enrolment (onramp-bench est)".into(),
        rows,
        json,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrs_name_their_serial() {
        let csrs = make_csrs(3).expect("CSRs");
        assert_eq!(csrs.len(), 3);
        for (i, der) in csrs.iter().enumerate() {
            let csr = onramp_pki::parse_csr(der).expect("a valid CSR");
            assert_eq!(csr.subject_cn.as_deref(), Some(serial(i).as_str()));
        }
    }

    #[test]
    fn service_time_comes_from_the_enrolment_histogram() {
        let text = "\
# TYPE onramp_enrolment_duration_seconds histogram
onramp_enrolment_duration_seconds_bucket{operation=\"simpleenroll\",le=\"0.001\"} 0
onramp_enrolment_duration_seconds_bucket{operation=\"simpleenroll\",le=\"0.01\"} 90
onramp_enrolment_duration_seconds_bucket{operation=\"simpleenroll\",le=\"0.05\"} 99
onramp_enrolment_duration_seconds_bucket{operation=\"simpleenroll\",le=\"+Inf\"} 100
onramp_enrolment_duration_seconds_sum{operation=\"simpleenroll\"} 0.5
onramp_enrolment_duration_seconds_count{operation=\"simpleenroll\"} 100
onramp_enrolment_duration_seconds_count{operation=\"simplereenroll\"} 7
";
        let s = parse_service_time(text);
        assert_eq!(s.count, 100);
        assert_eq!(s.mean, Duration::from_millis(5));
        assert_eq!(s.p99_at_most, Some(50.0));
        assert_eq!(parse_service_time(""), ServiceTime::default());
    }

    #[test]
    fn pkcs7_bodies_are_checked() {
        assert!(check_pkcs7(b"").is_err());
        assert!(check_pkcs7(b"not base64!").is_err());
        assert!(check_pkcs7(b"MAMCAQA=\r\n").is_ok());
        // Valid base64 but not DER.
        assert!(check_pkcs7(b"aGVsbG8=").is_err());
    }
}
