//! MQTT scenarios: the Onramp gateway and Mosquitto measured side by side in
//! the same run, both with mutual TLS against the same CA.
//!
//! Before the clock starts: `onramp serve` is started on a fresh data
//! directory with the gateway's connection limits raised (see
//! [`ONRAMP_MQTT_ENV`]); one bench device is enrolled over EST (an enrolment
//! token from the API, then `simpleenroll`) and given a policy that allows
//! connecting under any client id and publishing, subscribing and receiving
//! under `bench/`. Mosquitto is started on a free port with the Onramp
//! server certificate and key and the exported CA chain as its client trust
//! anchors. Every connection to either broker presents that one device
//! certificate, with its own client id.

pub mod churn;
pub mod client;
pub mod connect;
pub mod fanin;
pub mod idle;
mod mosquitto;

use crate::est::{ENROL_PATH, admin_api_key, create_token, csr_with_key};
use crate::https::Client;
use crate::server::{Server, ServerArgs, machine_cpu_time, own_cpu_time};
use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, ValueEnum};
use client::{ClientIdentity, Dialer, Kx};
use der::{Decode, Encode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use mosquitto::{Mosquitto, TlsFiles};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The bench device's serial number and thing name.
pub const THING: &str = "BENCH-MQTT";
/// The policy attached to it.
const POLICY_NAME: &str = "bench-mqtt";
const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    { "Effect": "Allow", "Action": "iot:Connect",
      "Resource": "arn:aws:iot:*:*:client/*" },
    { "Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
      "Resource": "arn:aws:iot:*:*:topic/bench/*" },
    { "Effect": "Allow", "Action": "iot:Subscribe",
      "Resource": "arn:aws:iot:*:*:topicfilter/bench/*" }
  ]
}"#;

/// Gateway settings for the bench: any client id for the one bench
/// certificate, and the per-identity and per-source CONNECT rate limits and
/// the connection cap out of the way (Mosquitto has none of them).
pub const ONRAMP_MQTT_ENV: [(&str, &str); 7] = [
    ("ONRAMP_MQTT__LISTEN", "127.0.0.1:0"),
    ("ONRAMP_MQTT__REQUIRE_CLIENT_ID_MATCH", "false"),
    ("ONRAMP_MQTT__RATE_PER_IDENTITY__PER_SECOND", "10000000"),
    ("ONRAMP_MQTT__RATE_PER_IDENTITY__BURST", "10000000"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__PER_SECOND", "10000000"),
    ("ONRAMP_MQTT__RATE_PER_SOURCE__BURST", "10000000"),
    ("ONRAMP_MQTT__MAX_CONNECTIONS", "1000000"),
];

/// Which brokers a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Both,
    Onramp,
    Mosquitto,
}

/// Options shared by the MQTT scenarios.
#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The Mosquitto binary measured alongside.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto_bin: PathBuf,
    /// Which brokers to measure (Onramp is started either way: it issues
    /// the bench certificate).
    #[arg(long, value_enum, default_value_t = Which::Both)]
    pub brokers: Which,
    /// Key exchange groups the client offers.
    #[arg(long, value_enum, default_value_t = Kx::X25519)]
    pub kx: Kx,
}

/// One broker under test.
pub struct Broker {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub pid: u32,
    pub dialer: Dialer,
}

/// Both brokers, running, and the identity clients present.
pub struct Setup {
    pub onramp: Server,
    mosquitto: Option<Mosquitto>,
    pub mosquitto_version: Option<String>,
    pub brokers: Vec<Broker>,
    /// The identity as files (for worker processes) and Mosquitto's CA file.
    pub files: tempfile::TempDir,
}

pub fn progress(scenario: &str, msg: &str) {
    eprintln!("onramp-bench {scenario}: {msg}");
}

/// What [`Setup::prepare`] adds to the running Onramp.
struct Prepared {
    mosquitto: Option<Mosquitto>,
    brokers: Vec<Broker>,
    files: tempfile::TempDir,
}

impl Setup {
    pub async fn start(args: &MqttArgs, scenario: &str) -> Result<Setup> {
        progress(scenario, "starting onramp");
        let onramp = Server::start_with(&args.server, &ONRAMP_MQTT_ENV)?;
        let prepared = match Setup::prepare(args, scenario, &onramp).await {
            Ok(p) => p,
            Err(e) => {
                progress(
                    scenario,
                    &format!(
                        "setup failed; onramp's last log lines:\n{}",
                        onramp.log_tail()
                    ),
                );
                return Err(e);
            }
        };
        let setup = Setup {
            onramp,
            mosquitto_version: prepared.mosquitto.as_ref().map(|m| m.version.clone()),
            mosquitto: prepared.mosquitto,
            brokers: prepared.brokers,
            files: prepared.files,
        };
        // One connection to each broker before anything is timed: the
        // identity, the policy and both TLS configurations work.
        for b in &setup.brokers {
            if let Err(e) = check_broker(b).await {
                return Err(e.context(format!(
                    "a first connection to {}; its last log lines:\n{}",
                    b.name,
                    setup.log_tail(b.name)
                )));
            }
        }
        Ok(setup)
    }

    async fn prepare(args: &MqttArgs, scenario: &str, onramp: &Server) -> Result<Prepared> {
        let mqtt_addr = onramp
            .mqtt_addr
            .context("the server printed no MQTT address")?;
        progress(
            scenario,
            &format!(
                "onramp pid {} mqtt {} https {} ({})",
                onramp.pid(),
                mqtt_addr,
                onramp.addr,
                args.server.backend()
            ),
        );
        let files = tempfile::Builder::new()
            .prefix("onramp-bench-mqtt-")
            .tempdir()
            .context("creating a temporary directory")?;
        let identity = enrol_bench_device(onramp, files.path()).await?;
        progress(
            scenario,
            &format!("enrolled {THING} over EST; policy {POLICY_NAME} attached"),
        );
        let mut brokers = Vec::new();
        if args.brokers != Which::Mosquitto {
            brokers.push(Broker {
                name: "onramp",
                addr: mqtt_addr,
                pid: onramp.pid(),
                dialer: Dialer::new(mqtt_addr, &identity, args.kx)?,
            });
        }
        let mut mosquitto = None;
        if args.brokers != Which::Onramp {
            let tls = TlsFiles {
                cafile: files.path().join("ca-chain.pem"),
                certfile: onramp.data_dir().join("tls").join("server.pem"),
                keyfile: onramp.data_dir().join("tls").join("server.key"),
            };
            let m = Mosquitto::start(&args.mosquitto_bin, &tls)?;
            progress(
                scenario,
                &format!("{} pid {} on {}", m.version, m.pid(), m.addr),
            );
            brokers.push(Broker {
                name: "mosquitto",
                addr: m.addr,
                pid: m.pid(),
                dialer: Dialer::new(m.addr, &identity, args.kx)?,
            });
            mosquitto = Some(m);
        }
        Ok(Prepared {
            mosquitto,
            brokers,
            files,
        })
    }

    /// The last log lines of a broker, for error messages.
    pub fn log_tail(&self, name: &str) -> String {
        match (name, &self.mosquitto) {
            ("mosquitto", Some(m)) => m.log_tail(),
            _ => self.onramp.log_tail(),
        }
    }

    /// Onramp's MQTT counters from `/metrics` (`onramp_mqtt_*` samples, by
    /// series name with labels).
    pub async fn onramp_counters(&self) -> Result<BTreeMap<String, f64>> {
        Ok(parse_counters(&self.onramp.metrics().await?))
    }

    /// The identity files a worker process reads: (root PEM, cert DER, key DER).
    pub fn identity_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.files.path().join("root.pem"),
            self.files.path().join("device.der"),
            self.files.path().join("device.key.der"),
        )
    }

    /// What the run compared, for the report.
    pub fn describe(&self, args: &MqttArgs) -> Vec<(String, String)> {
        let mut rows = vec![(
            "brokers".to_string(),
            self.brokers
                .iter()
                .map(|b| format!("{} (pid {}, {})", b.name, b.pid, b.addr))
                .collect::<Vec<_>>()
                .join(", "),
        )];
        if let Some(v) = &self.mosquitto_version {
            rows.push(("mosquitto".into(), v.clone()));
        }
        rows.push((
            "client key exchange".into(),
            format!("{:?}", args.kx).to_lowercase(),
        ));
        rows
    }
}

async fn check_broker(b: &Broker) -> Result<()> {
    let opened = b.dialer.open(None, "bench-check", 60).await?;
    client::disconnect(opened.conn).await
}

/// Enrols the bench device over EST and attaches the bench policy; writes
/// the CA chain (for Mosquitto) and the identity (for worker processes)
/// into `dir`.
async fn enrol_bench_device(server: &Server, dir: &Path) -> Result<ClientIdentity> {
    let root_pem = server.admin(["ca", "export"]).await?;
    let chain_pem = server.admin(["ca", "export", "--chain"]).await?;
    let api_key = admin_api_key(server).await?;
    let https = Client::new(server.addr, &root_pem)?;
    let mut conn = https.connect().await?;
    let bearer = HeaderValue::from_str(&format!("Bearer {api_key}"))
        .context("the API key is not a valid header value")?;
    let token = create_token(&mut conn, &bearer, THING).await?;
    let (key, csr) = csr_with_key(THING)?;
    let basic = STANDARD.encode(format!("{THING}:{token}"));
    let body = Bytes::from(STANDARD.encode(&csr));
    let request = Request::post(ENROL_PATH)
        .header(HOST, "localhost")
        .header(CONTENT_TYPE, "application/pkcs10")
        .header(AUTHORIZATION, format!("Basic {basic}"))
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
        .context("building the enrolment request")?;
    let mut conn = https.connect().await?;
    let response = conn.send(request).await?;
    if response.status != StatusCode::OK {
        bail!(
            "enrolling {THING}: {} {}",
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
        .context("the enrolment response is not base64")?;
    let cert_der = pkcs7_certificates(&p7)?
        .into_iter()
        .next()
        .context("the enrolment response holds no certificate")?;

    let policy_path = dir.join("policy.json");
    write(&policy_path, POLICY.as_bytes())?;
    server
        .admin([
            "policy".as_ref(),
            "create".as_ref(),
            POLICY_NAME.as_ref(),
            "--document".as_ref(),
            policy_path.as_os_str(),
        ])
        .await?;
    server
        .admin(["policy", "attach", POLICY_NAME, "--device", THING])
        .await?;

    let identity = ClientIdentity {
        root_pem,
        cert_der,
        key_der: key.serialize_der(),
    };
    write(&dir.join("ca-chain.pem"), chain_pem.as_bytes())?;
    write(&dir.join("root.pem"), identity.root_pem.as_bytes())?;
    write(&dir.join("device.der"), &identity.cert_der)?;
    write(&dir.join("device.key.der"), &identity.key_der)?;
    Ok(identity)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Reads the identity files [`Setup::identity_files`] wrote.
pub fn read_identity(root: &Path, cert: &Path, key: &Path) -> Result<ClientIdentity> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    Ok(ClientIdentity {
        root_pem: String::from_utf8(read(root)?).context("the root PEM")?,
        cert_der: read(cert)?,
        key_der: read(key)?,
    })
}

/// `onramp_mqtt_*` samples of a Prometheus text exposition.
pub(crate) fn parse_counters(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("onramp_mqtt_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The certificates of a PKCS#7 certs-only SignedData (DER), in order.
fn pkcs7_certificates(p7: &[u8]) -> Result<Vec<Vec<u8>>> {
    let ci = cms::content_info::ContentInfo::from_der(p7).context("PKCS#7 ContentInfo")?;
    let sd: cms::signed_data::SignedData = ci.content.decode_as().context("PKCS#7 SignedData")?;
    let mut certs = Vec::new();
    for choice in sd.certificates.iter().flat_map(|set| set.0.iter()) {
        if let cms::cert::CertificateChoices::Certificate(c) = choice {
            certs.push(c.to_der().context("re-encoding a certificate")?);
        }
    }
    Ok(certs)
}

/// CPU used while something ran: by the broker under test, by the bench
/// and by every other process on the machine.
pub struct CpuMark {
    pid: u32,
    server: Duration,
    own: Duration,
    machine: Duration,
    at: Instant,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub wall: Duration,
    pub server: Duration,
    pub bench: Duration,
    pub other: Duration,
}

impl CpuMark {
    pub fn start(pid: u32) -> Result<CpuMark> {
        Ok(CpuMark {
            pid,
            server: crate::server::cpu_time(&format!("/proc/{pid}/stat"))?,
            own: own_cpu_time()?,
            machine: machine_cpu_time()?,
            at: Instant::now(),
        })
    }

    /// `extra_bench` is CPU used by bench worker processes meanwhile.
    pub fn stop(&self, extra_bench: Duration) -> Result<CpuUse> {
        let wall = self.at.elapsed();
        let server = crate::server::cpu_time(&format!("/proc/{}/stat", self.pid))?
            .saturating_sub(self.server);
        let bench = own_cpu_time()?.saturating_sub(self.own) + extra_bench;
        let machine = machine_cpu_time()?.saturating_sub(self.machine);
        Ok(CpuUse {
            wall,
            server,
            bench,
            other: machine.saturating_sub(server + bench),
        })
    }
}

impl CpuUse {
    fn cores(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// `server / bench / other` in cores.
    pub fn line(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2}",
            self.cores(self.server),
            self.cores(self.bench),
            self.cores(self.other)
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "wall_s": round3(self.wall.as_secs_f64()),
            "server_cpu_s": round3(self.server.as_secs_f64()),
            "bench_cpu_s": round3(self.bench.as_secs_f64()),
            "other_cpu_s": round3(self.other.as_secs_f64()),
        })
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `a / b`, or `-` when it means nothing.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

pub fn ratio_text(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

/// One row per figure: each broker's value side by side.
pub fn side_by_side<T>(
    results: &[(&'static str, T)],
    label: &str,
    f: impl Fn(&T) -> String,
) -> (String, String) {
    (
        label.to_string(),
        results
            .iter()
            .map(|(name, r)| format!("{name} {}", f(r)))
            .collect::<Vec<_>>()
            .join(" | "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs7_certificates_round_trip() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let p7 = onramp_pki::certs_only_pkcs7(&[cert.der()]).expect("p7");
        assert_eq!(
            pkcs7_certificates(&p7).expect("parsed"),
            vec![cert.der().to_vec()]
        );
    }

    #[test]
    fn the_bench_policy_parses() {
        let v: serde_json::Value = serde_json::from_str(POLICY).expect("JSON");
        assert_eq!(v["Statement"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn counters_are_read_by_series() {
        let c = parse_counters(
            "# TYPE onramp_mqtt_messages_in_total counter\n\
             onramp_mqtt_messages_in_total{qos=\"0\"} 12\n\
             onramp_mqtt_messages_dropped_total 3\n\
             onramp_enrolments_total 9\n",
        );
        assert_eq!(
            c.get("onramp_mqtt_messages_in_total{qos=\"0\"}"),
            Some(&12.0)
        );
        assert_eq!(c.get("onramp_mqtt_messages_dropped_total"), Some(&3.0));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(2.0, 4.0), Some(0.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio_text(None), "-");
    }
}
