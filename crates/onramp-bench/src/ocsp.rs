//! `onramp-bench ocsp`: OCSP responses per second, as relying parties ask.
//!
//! Before the clock starts: the server is started on a fresh data directory;
//! a claim certificate is created with the CLI (any certificate of the
//! issuing CA will do) and `openssl ocsp -reqout` writes one DER OCSP
//! request about it, without a nonce (as most relying parties send it).
//!
//! Timed: `--clients` clients, each on its own HTTPS keep-alive connection
//! (TLS 1.3, HTTP/1.1), POST the request to `/ocsp` back to back for
//! `--seconds`. Every answer must be HTTP 200 with a successful
//! `OCSPResponse` (responseStatus 0); the registry is read and the answer
//! signed for every request. Server CPU is the server process's CPU time
//! over the timed phase.

use crate::https::Client;
use crate::mqtt::{CpuMark, progress, round3};
use crate::report::{Latency, Report, ms};
use crate::server::{Server, ServerArgs};
use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use std::ffi::OsStr;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const SCENARIO: &str = "ocsp";

#[derive(Debug, Args)]
pub struct OcspArgs {
    /// Relying parties asking at once, one connection each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long they ask.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[command(flatten)]
    server: ServerArgs,
}

/// A successful OCSPResponse starts SEQUENCE, then ENUMERATED 0.
fn successful(body: &[u8]) -> bool {
    let Some(&first) = body.first() else {
        return false;
    };
    if first != 0x30 || body.len() < 5 {
        return false;
    }
    // Skip the outer length (short or long form).
    let len_octets = if body[1] & 0x80 == 0 {
        1
    } else {
        1 + usize::from(body[1] & 0x7f)
    };
    let at = 1 + len_octets;
    body.get(at..at + 3) == Some(&[0x0a, 0x01, 0x00])
}

pub async fn run(args: OcspArgs) -> Result<Report> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.seconds > 0, "--seconds must be at least 1");
    progress(SCENARIO, "starting onramp");
    let server = Server::start(&args.server)?;
    let dir = tempfile::Builder::new()
        .prefix("onramp-bench-ocsp-")
        .tempdir()
        .context("creating a temporary directory")?;
    let claim_dir = dir.path().join("claim");
    std::fs::create_dir_all(&claim_dir)?;
    let body = dir.path().join("t.json");
    std::fs::write(
        &body,
        r#"{"Parameters": {"SerialNumber": {"Type": "String"}},
            "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "SerialNumber"}}}}}"#,
    )?;
    server
        .admin([
            OsStr::new("template"),
            OsStr::new("create"),
            OsStr::new("ocsp"),
            OsStr::new("--body"),
            body.as_os_str(),
        ])
        .await?;
    server
        .admin([
            OsStr::new("claim"),
            OsStr::new("create"),
            OsStr::new("--template"),
            OsStr::new("ocsp"),
            OsStr::new("--out"),
            claim_dir.as_os_str(),
        ])
        .await?;
    let chain = server.admin(["ca", "export", "--chain"]).await?;
    let issuing = chain
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .context("no issuing CA in the chain")?;
    let issuing_path = dir.path().join("issuing.pem");
    std::fs::write(&issuing_path, issuing)?;
    let req_path = dir.path().join("req.der");
    let out = std::process::Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(&issuing_path)
        .arg("-cert")
        .arg(claim_dir.join("claim.pem"))
        .arg("-reqout")
        .arg(&req_path)
        .output()
        .context("running openssl ocsp -reqout")?;
    if !out.status.success() {
        bail!(
            "openssl ocsp -reqout: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let request = Bytes::from(std::fs::read(&req_path)?);
    let root = server.admin(["ca", "export"]).await?;
    let client = Client::new(server.addr, &root)?;

    progress(
        SCENARIO,
        &format!("{} clients asking for {} s", args.clients, args.seconds),
    );
    let pid = server.pid();
    let mark = CpuMark::start(pid)?;
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = JoinSet::new();
    for _ in 0..args.clients {
        let client = client.clone();
        let request = request.clone();
        tasks.spawn(async move {
            let mut conn = client.connect().await?;
            let mut latencies = Vec::new();
            let mut bad = 0usize;
            while Instant::now() < until {
                let req = Request::builder()
                    .method(Method::POST)
                    .uri("/ocsp")
                    .header("host", "localhost")
                    .header("content-type", "application/ocsp-request")
                    .body(Full::new(request.clone()))
                    .context("building the request")?;
                let sent = Instant::now();
                let resp = conn.send(req).await?;
                if resp.status == StatusCode::OK && successful(&resp.body) {
                    latencies.push(sent.elapsed());
                } else {
                    bad += 1;
                }
            }
            anyhow::Ok((latencies, bad))
        });
    }
    let mut latencies = Vec::new();
    let mut bad = 0;
    while let Some(joined) = tasks.join_next().await {
        let (l, b) = joined.context("a client task failed")??;
        latencies.extend(l);
        bad += b;
    }
    let cpu = mark.stop(Duration::ZERO)?;
    let answered = latencies.len();
    let secs = cpu.wall.as_secs_f64();
    let rate = answered as f64 / secs.max(f64::MIN_POSITIVE);
    let latency = Latency::of(latencies);
    let server_ms = ms(cpu.server) / answered.max(1) as f64;
    let rows = vec![
        ("backend".into(), args.server.backend().to_string()),
        ("clients".into(), args.clients.to_string()),
        ("answered / bad".into(), format!("{answered} / {bad}")),
        ("duration".into(), format!("{secs:.2} s")),
        ("responses/s".into(), format!("{rate:.1}")),
        ("latency ms (p50/p90/p99/max)".into(), latency.line()),
        ("CPU cores server/bench/other".into(), cpu.line()),
        ("server CPU ms / response".into(), format!("{server_ms:.3}")),
    ];
    let json = serde_json::json!({
        "scenario": SCENARIO,
        "backend": args.server.backend(),
        "clients": args.clients,
        "answered": answered,
        "bad": bad,
        "duration_s": round3(secs),
        "responses_per_s": (rate * 10.0).round() / 10.0,
        "latency_ms": latency.json(),
        "cpu": cpu.json(),
        "server_cpu_ms_per_response": round3(server_ms),
    });
    Ok(Report {
        title: "OCSP responder (onramp-bench ocsp)".into(),
        rows,
        json,
        failed: bad,
    })
}

#[cfg(test)]
mod tests {
    use super::successful;

    #[test]
    fn a_successful_response_is_recognised() {
        assert!(successful(&[0x30, 0x03, 0x0a, 0x01, 0x00]));
        assert!(successful(&[0x30, 0x82, 0x01, 0x00, 0x0a, 0x01, 0x00]));
        assert!(!successful(&[0x30, 0x03, 0x0a, 0x01, 0x01]));
        assert!(!successful(&[]));
    }
}
