//! `onramp-bench rotate`: connected devices rotate their certificates over
//! MQTT all at once, keeping their things.
//!
//! Before the clock starts: the server is started on a fresh data directory
//! (the onboard scenario's settings); `--devices` devices are onboarded by
//! claim (template `storm` without a policy of its own, so each thing gets
//! the default device policy, which allows the certificate topics); one
//! P-256 key and CSR per device is generated; every device connects with its
//! certificate (MQTT 3.1.1, mutual TLS, client id = thing name) and
//! subscribes to `$aws/certificates/create-from-csr/json/accepted` and
//! `/rejected`. All connections are held open.
//!
//! Timed, every device at once: publish (QoS 1) its CSR to
//! `$aws/certificates/create-from-csr/json`, wait for the accepted reply,
//! send DISCONNECT, connect with the new certificate and key (the
//! connection that activates it) and disconnect. The rate is completed
//! rotations over the wall clock from the first publish to the last
//! disconnect; latency is per device, from its publish to its new CONNACK;
//! server CPU is the server process's CPU time over the timed phase.

use crate::mqtt::client::{self, Conn, Dialer, Kx, Publisher};
use crate::mqtt::{CpuMark, progress, round3};
use crate::onboard::{
    DeviceIdentity, Failure, Step, certificates, connect, field, make_csrs, provision_devices,
    request_reply, server_env,
};
use crate::report::{Latency, Report, ms};
use crate::server::{Server, ServerArgs};
use crate::sys;
use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use clap::Args;
use rmqtt_codec::v3::QoS;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const SCENARIO: &str = "rotate";
const TOPIC: &str = "$aws/certificates/create-from-csr/json";
/// Onboarding's template without a policy: things get the default device
/// policy, which allows the certificate-rotation topics.
const TEMPLATE_BODY: &str = r#"{
  "Parameters": {
    "SerialNumber": { "Type": "String" },
    "AWS::IoT::Certificate::Id": { "Type": "String" }
  },
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": { "Fn::Join": ["", ["storm-", { "Ref": "SerialNumber" }]] }
      }
    },
    "certificate": {
      "Type": "AWS::IoT::Certificate",
      "Properties": {
        "CertificateId": { "Ref": "AWS::IoT::Certificate::Id" },
        "Status": "ACTIVE"
      }
    }
  }
}"#;

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Connected devices, all rotating at once.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Devices onboarded and connected at once before the clock starts.
    #[arg(long, default_value_t = 128)]
    setup_concurrency: usize,
    /// A rotation not done within this many seconds counts as failed.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Key exchange groups the devices offer.
    #[arg(long, value_enum, default_value_t = Kx::X25519)]
    kx: Kx,
    #[command(flatten)]
    server: ServerArgs,
}

struct Sample {
    started: Instant,
    ended: Instant,
    /// Publish until the accepted reply.
    request: Duration,
    /// Publish until the new certificate's CONNACK.
    total: Duration,
    outcome: Result<(), Failure>,
}

pub async fn run(args: RotateArgs) -> Result<Report> {
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(
        args.setup_concurrency > 0,
        "--setup-concurrency must be at least 1"
    );
    let nofile = sys::raise_nofile(args.devices as u64 * 2 + 256)?;
    progress(SCENARIO, &format!("open files: {}", nofile.line()));
    progress(SCENARIO, "starting onramp");
    let mut env = server_env();
    // The rotation rate per certificate is the per-claim provisioning rate.
    env.push(("ONRAMP_PKI__ROTATION_GRACE_SECS", "86400"));
    let server = Server::start_with(&args.server, &env)?;
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

async fn measure(args: &RotateArgs, server: &Server) -> Result<Report> {
    let n = args.devices;
    let addr = server
        .mqtt_addr
        .context("the server printed no MQTT address")?;
    let started = Instant::now();
    let (roots, devices) =
        provision_devices(server, n, args.setup_concurrency, args.kx, TEMPLATE_BODY).await?;
    progress(
        SCENARIO,
        &format!(
            "{n} devices onboarded in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    let things: Vec<String> = devices.iter().map(|d| d.thing.clone()).collect();
    let csrs = tokio::task::spawn_blocking(move || make_csrs(&things))
        .await
        .context("generating keys and CSRs")??;
    // Connect and subscribe every device, `setup_concurrency` at a time.
    let started = Instant::now();
    let devices: Vec<(DeviceIdentity, (String, Vec<u8>))> = devices.into_iter().zip(csrs).collect();
    let mut pending = devices.into_iter();
    let mut connected: Vec<(DeviceIdentity, (String, Vec<u8>), Conn)> = Vec::with_capacity(n);
    let filters = [format!("{TOPIC}/accepted"), format!("{TOPIC}/rejected")];
    loop {
        let mut batch = JoinSet::new();
        for (d, csr) in pending.by_ref().take(args.setup_concurrency) {
            let roots = roots.clone();
            let kx = args.kx;
            let filters = filters.clone();
            batch.spawn(async move {
                let dialer =
                    Dialer::with_roots(addr, roots, d.chain.clone(), d.key.clone_key(), kx)?;
                let mut conn = connect(&dialer, &d.thing, Step::DeviceConnect)
                    .await
                    .map_err(|f| anyhow::anyhow!(f.detail()))?;
                let f: Vec<&str> = filters.iter().map(String::as_str).collect();
                client::subscribe_all(&mut conn, &f, QoS::AtLeastOnce).await?;
                anyhow::Ok((d, csr, conn))
            });
        }
        if batch.is_empty() {
            break;
        }
        while let Some(joined) = batch.join_next().await {
            connected.push(joined.context("a connecting task failed")??);
        }
    }
    progress(
        SCENARIO,
        &format!(
            "{n} devices connected and subscribed in {:.1} s; rotating all at once",
            started.elapsed().as_secs_f64()
        ),
    );
    let pid = server.pid();
    let mark = CpuMark::start(pid)?;
    let publisher = Arc::new(Publisher::new(TOPIC, QoS::AtLeastOnce));
    let timeout = Duration::from_secs(args.timeout_secs);
    let gate = Arc::new(tokio::sync::Barrier::new(connected.len() + 1));
    let mut tasks = JoinSet::new();
    for (d, csr, conn) in connected {
        let publisher = publisher.clone();
        let roots = roots.clone();
        let gate = gate.clone();
        let kx = args.kx;
        let filters = filters.clone();
        tasks.spawn(async move {
            gate.wait().await;
            let started = Instant::now();
            let mut sample = Sample {
                started,
                ended: started,
                request: Duration::ZERO,
                total: Duration::ZERO,
                outcome: Ok(()),
            };
            let attempt = async {
                let mut conn = conn;
                let body = serde_json::json!({ "certificateSigningRequest": csr.0 }).to_string();
                let reply = request_reply(
                    &mut conn,
                    publisher.packet(1, Bytes::from(body)),
                    &filters[0],
                    &filters[1],
                    Step::Create,
                )
                .await?;
                sample.request = started.elapsed();
                let chain = certificates(field(&reply, "certificatePem", Step::Create)?.as_bytes())
                    .map_err(|e| Failure::invalid(Step::Create, format!("certificatePem: {e}")))?;
                client::disconnect(conn)
                    .await
                    .map_err(|e| Failure::io(Step::ClaimDisconnect, e))?;
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(csr.1));
                let dialer = Dialer::with_roots(addr, roots, chain, key, kx)
                    .map_err(|e| Failure::invalid(Step::DeviceConnect, format!("{e:#}")))?;
                let conn = connect(&dialer, &d.thing, Step::DeviceConnect).await?;
                sample.total = started.elapsed();
                client::disconnect(conn)
                    .await
                    .map_err(|e| Failure::io(Step::DeviceDisconnect, e))
            };
            sample.outcome = match tokio::time::timeout(timeout, attempt).await {
                Err(_) => Err(Failure::Timeout { step: Step::Create }),
                Ok(o) => o,
            };
            sample.ended = Instant::now();
            sample
        });
    }
    gate.wait().await;
    let mut samples = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        samples.push(joined.context("a rotating task failed")?);
    }
    let cpu = mark.stop(Duration::ZERO)?;
    let peak_rss_kib = sys::status_kib(pid, "VmHWM")?;
    Ok(summarise(args, &samples, cpu, peak_rss_kib))
}

fn summarise(
    args: &RotateArgs,
    samples: &[Sample],
    cpu: crate::mqtt::CpuUse,
    peak_rss_kib: u64,
) -> Report {
    let mut details: BTreeMap<String, usize> = BTreeMap::new();
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| match &s.outcome {
            Ok(()) => true,
            Err(f) => {
                *details.entry(f.detail()).or_default() += 1;
                false
            }
        })
        .collect();
    let completed = ok.len();
    let failed = samples.len() - completed;
    let wall = match (
        samples.iter().map(|s| s.started).min(),
        samples.iter().map(|s| s.ended).max(),
    ) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let secs = wall.as_secs_f64();
    let rate = completed as f64 / secs.max(f64::MIN_POSITIVE);
    let total = Latency::of(ok.iter().map(|s| s.total).collect());
    let request = Latency::of(ok.iter().map(|s| s.request).collect());
    let server_ms = ms(cpu.server) / completed.max(1) as f64;
    let mut rows: Vec<(String, String)> = vec![
        ("backend".into(), args.server.backend().to_string()),
        ("devices".into(), args.devices.to_string()),
        ("rotated / failed".into(), format!("{completed} / {failed}")),
    ];
    for (detail, count) in &details {
        rows.push(("  failure".into(), format!("{count} × {detail}")));
    }
    rows.extend([
        ("duration".into(), format!("{secs:.2} s")),
        ("rotations/s".into(), format!("{rate:.1}")),
        (
            "request → new CONNACK ms (p50/p90/p99/max)".into(),
            total.line(),
        ),
        ("  request → reply ms".into(), request.line()),
        ("CPU cores server/bench/other".into(), cpu.line()),
        ("server CPU ms / rotation".into(), format!("{server_ms:.3}")),
        (
            "server peak RSS".into(),
            format!("{:.1} MiB", peak_rss_kib as f64 / 1024.0),
        ),
    ]);
    let json = serde_json::json!({
        "scenario": SCENARIO,
        "backend": args.server.backend(),
        "devices": args.devices,
        "rotated": completed,
        "failed": failed,
        "failure_details": details,
        "duration_s": round3(secs),
        "rotations_per_s": (rate * 10.0).round() / 10.0,
        "latency_ms": total.json(),
        "request_ms": request.json(),
        "cpu": cpu.json(),
        "server_cpu_ms_per_rotation": round3(server_ms),
        "server_peak_rss_kib": peak_rss_kib,
    });
    Report {
        title: "Certificate rotation over MQTT (onramp-bench rotate)".into(),
        rows,
        json,
        failed,
    }
}
