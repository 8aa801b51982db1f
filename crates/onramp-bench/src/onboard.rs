//! `onramp-bench onboard`: fleet provisioning by claim, as a fleet of
//! devices does it on its first boot, over the AWS IoT Core MQTT API.
//!
//! Before the clock starts: the server is started on a fresh data directory
//! with its MQTT gateway on an ephemeral port, the MQTT CONNECT limits and
//! the provisioning rate limits out of the way (see [`server_env`]); the
//! provisioning template `storm` is created with the CLI
//! (`onramp template create storm --body FILE`, body [`TEMPLATE_BODY`]) and a
//! claim certificate for it (`onramp claim create --template storm
//! --validity-days 30 --out DIR`); one connection with the claim
//! certificate checks that it is accepted. With `--flow csr`, every device's
//! P-256 key and CSR are generated too.
//!
//! Timed: `--concurrency` tasks share `--devices` devices. Each device, over
//! MQTT 3.1.1 and mutual TLS (full handshakes, no session resumption):
//!
//! 1. connects with the claim certificate, client id `claim-<i>`;
//! 2. subscribes (one SUBSCRIBE, QoS 1) to the `accepted` and `rejected`
//!    topics of its create call (`$aws/certificates/create/json/…` or
//!    `$aws/certificates/create-from-csr/json/…`) and of
//!    `$aws/provisioning-templates/storm/provision/json/…`;
//! 3. publishes (QoS 1) `{}` to `$aws/certificates/create/json`, or
//!    `{"certificateSigningRequest": "<PEM>"}` to
//!    `$aws/certificates/create-from-csr/json`, and waits for the reply;
//! 4. publishes `{"certificateOwnershipToken": …, "parameters":
//!    {"SerialNumber": "<run id>-<i>"}}` to the template's `provision/json`
//!    and waits for the reply, which names the thing;
//! 5. sends DISCONNECT and waits until the server closes;
//! 6. connects with its new certificate and key, client id = thing name,
//!    waits for a successful CONNACK, and disconnects the same way.
//!
//! A rejected reply, a refused CONNACK or SUBSCRIBE, a reply without the
//! fields the API documents, an I/O error or a device not done within
//! `--timeout-secs` counts as a failed onboarding, by kind. The rate is
//! completed onboardings over the wall clock from the first device's start
//! to the last device's end.

use crate::est::csr_with_key;
use crate::mqtt::client::{self, Conn, Dialer, Kx, Publisher};
use crate::mqtt::{CpuMark, ONRAMP_MQTT_ENV, progress, round3};
use crate::report::{Latency, Report, ms};
use crate::server::{Server, ServerArgs};
use crate::sys;
use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures_util::SinkExt;
use rmqtt_codec::v3::{ConnectAckReason, Packet, QoS};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

const SCENARIO: &str = "onboard";
/// The provisioning template the devices register with.
const TEMPLATE: &str = "storm";
/// Its body: a thing named after the serial number, the certificate made
/// active, and a policy that lets the thing connect under its own name and
/// use `device/<thing>/…`.
const TEMPLATE_BODY: &str = r#"{
  "Parameters": {
    "SerialNumber": { "Type": "String" },
    "AWS::IoT::Certificate::Id": { "Type": "String" }
  },
  "Resources": {
    "thing": {
      "Type": "AWS::IoT::Thing",
      "Properties": {
        "ThingName": { "Fn::Join": ["", ["storm-", { "Ref": "SerialNumber" }]] },
        "AttributePayload": { "serial": { "Ref": "SerialNumber" } }
      }
    },
    "certificate": {
      "Type": "AWS::IoT::Certificate",
      "Properties": {
        "CertificateId": { "Ref": "AWS::IoT::Certificate::Id" },
        "Status": "ACTIVE"
      }
    },
    "policy": {
      "Type": "AWS::IoT::Policy",
      "Properties": {
        "PolicyDocument": {
          "Version": "2012-10-17",
          "Statement": [
            { "Effect": "Allow", "Action": ["iot:Connect"],
              "Resource": ["arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"] },
            { "Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
              "Resource": ["arn:aws:iot:*:*:topic/device/${iot:Connection.Thing.ThingName}/*"] },
            { "Effect": "Allow", "Action": ["iot:Subscribe"],
              "Resource": ["arn:aws:iot:*:*:topicfilter/device/${iot:Connection.Thing.ThingName}/*"] }
          ]
        }
      }
    }
  },
  "DeviceConfiguration": { "interval": "60" }
}"#;
const CLAIM_VALIDITY_DAYS: &str = "30";
/// Provisioning rate limits, per claim and per source address, out of the
/// way: every device uses the one claim and connects from 127.0.0.1.
const PROVISIONING_ENV: [(&str, &str); 8] = [
    ("ONRAMP_PROVISIONING__RATE_PER_CLAIM__PER_SECOND", "1000000"),
    ("ONRAMP_PROVISIONING__RATE_PER_CLAIM__BURST", "1000000"),
    (
        "ONRAMP_PROVISIONING__RATE_PER_SOURCE__PER_SECOND",
        "1000000",
    ),
    ("ONRAMP_PROVISIONING__RATE_PER_SOURCE__BURST", "1000000"),
    (
        "ONRAMP_MQTT__CLAIM_RATE_PER_CERTIFICATE__PER_SECOND",
        "1000000",
    ),
    ("ONRAMP_MQTT__CLAIM_RATE_PER_CERTIFICATE__BURST", "1000000"),
    ("ONRAMP_MQTT__CLAIM_RATE_PER_SOURCE__PER_SECOND", "1000000"),
    ("ONRAMP_MQTT__CLAIM_RATE_PER_SOURCE__BURST", "1000000"),
];
const KEEP_ALIVE_SECS: u16 = 60;
/// Packet ids of the two requests a device publishes.
const CREATE_PACKET_ID: u16 = 1;
const REGISTER_PACKET_ID: u16 = 2;

const CREATE_KEYS_TOPIC: &str = "$aws/certificates/create/json";
const CREATE_CSR_TOPIC: &str = "$aws/certificates/create-from-csr/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    /// CreateKeysAndCertificate: the server makes the key.
    Keys,
    /// CreateCertificateFromCsr: each device sends a CSR for its own key.
    Csr,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::Keys => "keys",
            Flow::Csr => "csr",
        }
    }

    fn create_topic(self) -> &'static str {
        match self {
            Flow::Keys => CREATE_KEYS_TOPIC,
            Flow::Csr => CREATE_CSR_TOPIC,
        }
    }
}

#[derive(Debug, Args)]
pub struct OnboardArgs {
    /// Devices to onboard, each with its own serial number.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Devices onboarding at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How each device gets its certificate.
    #[arg(long, value_enum, default_value_t = Flow::Keys)]
    flow: Flow,
    /// A device not onboarded within this many seconds counts as failed.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
    /// Serial numbers are `<run id>-<i>` [default: the start time, in hex].
    #[arg(long)]
    run_id: Option<String>,
    /// Key exchange groups the devices offer.
    #[arg(long, value_enum, default_value_t = Kx::X25519)]
    kx: Kx,
    #[command(flatten)]
    server: ServerArgs,
}

/// Server settings: the MQTT scenarios' (gateway on an ephemeral port,
/// CONNECT rate limits and the connection cap raised) except that client
/// ids are still checked against thing names, and the provisioning rate
/// limits raised.
pub(crate) fn server_env() -> Vec<(&'static str, &'static str)> {
    ONRAMP_MQTT_ENV
        .iter()
        .copied()
        .filter(|(key, _)| *key != "ONRAMP_MQTT__REQUIRE_CLIENT_ID_MATCH")
        .chain(PROVISIONING_ENV)
        .collect()
}

/// What every device task shares.
struct Ctx {
    flow: Flow,
    addr: SocketAddr,
    kx: Kx,
    roots: Arc<RootCertStore>,
    claim: Dialer,
    run_id: String,
    timeout: Duration,
    create: Publisher,
    register: Publisher,
    /// `accepted` and `rejected` of the create call, then of RegisterThing.
    filters: [String; 4],
    /// With `--flow csr`: each device's CSR (PEM) and key (PKCS#8 DER).
    csrs: Vec<(String, Vec<u8>)>,
}

/// Where a device was when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    ClaimConnect,
    Subscribe,
    Create,
    Register,
    ClaimDisconnect,
    DeviceConnect,
    DeviceDisconnect,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::ClaimConnect => "claim connect",
            Step::Subscribe => "subscribe",
            Step::Create => "create certificate",
            Step::Register => "register thing",
            Step::ClaimDisconnect => "claim disconnect",
            Step::DeviceConnect => "device connect",
            Step::DeviceDisconnect => "device disconnect",
        }
    }
}

/// Why an onboarding failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// A reply on a `/rejected` topic.
    Rejected {
        step: Step,
        status: i64,
        code: String,
    },
    /// CONNACK or SUBACK refused.
    Refused {
        step: Step,
        reason: String,
    },
    /// An accepted reply without the fields the API documents.
    Invalid {
        step: Step,
        why: String,
    },
    Timeout {
        step: Step,
    },
    Io {
        step: Step,
        error: String,
    },
}

impl Failure {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Failure::Rejected { .. } => "rejected",
            Failure::Refused { .. } => "refused",
            Failure::Invalid { .. } => "invalid reply",
            Failure::Timeout { .. } => "timeout",
            Failure::Io { .. } => "I/O error",
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            Failure::Rejected { step, status, code } => {
                format!("{} rejected: {status} {code}", step.name())
            }
            Failure::Refused { step, reason } => format!("{} refused: {reason}", step.name()),
            Failure::Invalid { step, why } => format!("{}: {why}", step.name()),
            Failure::Timeout { step } => format!("timed out in {}", step.name()),
            Failure::Io { step, error } => format!("{}: {error}", step.name()),
        }
    }

    pub(crate) fn io(step: Step, e: anyhow::Error) -> Failure {
        // The phase that failed and why, without the whole chain.
        let error = match e.chain().nth(1) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        Failure::Io { step, error }
    }

    pub(crate) fn invalid(step: Step, why: impl Into<String>) -> Failure {
        Failure::Invalid {
            step,
            why: why.into(),
        }
    }
}

/// One device's onboarding.
struct Sample {
    started: Instant,
    ended: Instant,
    /// TCP connect with the claim certificate until SUBACK.
    claim_connect: Duration,
    /// Create request published until its reply.
    create: Duration,
    /// RegisterThing published until its reply.
    register: Duration,
    /// TCP connect with the new certificate until CONNACK.
    device_connect: Duration,
    outcome: Result<(), Failure>,
    /// The onboarded device: thing name, certificate chain and key.
    identity: Option<DeviceIdentity>,
}

/// A device onboarded by [`provision_devices`].
pub(crate) struct DeviceIdentity {
    pub thing: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Sample {
    fn total(&self) -> Duration {
        self.ended - self.started
    }
}

pub async fn run(args: OnboardArgs) -> Result<Report> {
    ensure!(args.devices > 0, "--devices must be at least 1");
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.timeout_secs > 0, "--timeout-secs must be at least 1");
    progress(SCENARIO, "starting onramp");
    let server = Server::start_with(&args.server, &server_env())?;
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

async fn measure(args: &OnboardArgs, server: &Server) -> Result<Report> {
    let n = args.devices;
    let addr = server
        .mqtt_addr
        .context("the server printed no MQTT address")?;
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        format!("{secs:x}")
    });
    ensure!(
        !run_id.is_empty()
            && run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "--run-id may hold only letters, digits and `-`"
    );

    let files = tempfile::Builder::new()
        .prefix("onramp-bench-onboard-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (claim_chain, claim_key) =
        create_template_and_claim(server, files.path(), TEMPLATE_BODY).await?;
    progress(
        SCENARIO,
        &format!("template {TEMPLATE} and a claim certificate for it created"),
    );
    let root_pem = server.admin(["ca", "export"]).await?;
    let roots = Arc::new(client::root_store(&root_pem)?);
    let claim = Dialer::with_roots(addr, roots.clone(), claim_chain, claim_key, args.kx)?;
    check_claim(&claim).await.with_context(|| {
        format!(
            "a first connection with the claim certificate; the server's last log lines:\n{}",
            server.log_tail()
        )
    })?;

    let csrs = if args.flow == Flow::Csr {
        let started = Instant::now();
        let ids: Vec<String> = (0..n).map(|i| serial(&run_id, i)).collect();
        let csrs = tokio::task::spawn_blocking(move || make_csrs(&ids))
            .await
            .context("generating keys and CSRs")??;
        progress(
            SCENARIO,
            &format!(
                "generated {n} P-256 keys and CSRs in {:.1} s",
                started.elapsed().as_secs_f64()
            ),
        );
        csrs
    } else {
        Vec::new()
    };

    let provision = format!("$aws/provisioning-templates/{TEMPLATE}/provision/json");
    let create_topic = args.flow.create_topic();
    let ctx = Arc::new(Ctx {
        flow: args.flow,
        addr,
        kx: args.kx,
        roots,
        claim,
        run_id: run_id.clone(),
        timeout: Duration::from_secs(args.timeout_secs),
        create: Publisher::new(create_topic, QoS::AtLeastOnce),
        register: Publisher::new(&provision, QoS::AtLeastOnce),
        filters: [
            format!("{create_topic}/accepted"),
            format!("{create_topic}/rejected"),
            format!("{provision}/accepted"),
            format!("{provision}/rejected"),
        ],
        csrs,
    });

    progress(
        SCENARIO,
        &format!(
            "onboarding {n} devices ({} flow), {} at a time, run id {run_id}",
            args.flow.name(),
            args.concurrency
        ),
    );
    let pid = server.pid();
    sys::reset_peak_rss(pid)?;
    let mark = CpuMark::start(pid)?;
    let samples = onboard_all(&ctx, n, args.concurrency).await?;
    let cpu = mark.stop(Duration::ZERO)?;
    let peak_rss_kib = sys::status_kib(pid, "VmHWM")?;
    let failed = samples.iter().filter(|s| s.outcome.is_err()).count();
    progress(
        SCENARIO,
        &format!("{} onboarded, {failed} failed", samples.len() - failed),
    );
    Ok(summarise(args, &run_id, &samples, cpu, peak_rss_kib))
}

fn serial(run_id: &str, i: usize) -> String {
    format!("{run_id}-{i}")
}

/// Creates the template and a claim with the CLI; returns the claim's
/// certificate chain and key.
async fn create_template_and_claim(
    server: &Server,
    dir: &Path,
    template_body: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let body = dir.join("template.json");
    std::fs::write(&body, template_body).with_context(|| format!("writing {}", body.display()))?;
    let body = body.as_os_str();
    server
        .admin([
            OsStr::new("template"),
            OsStr::new("create"),
            OsStr::new(TEMPLATE),
            OsStr::new("--body"),
            body,
        ])
        .await?;
    let out = dir.join("claim");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    server
        .admin([
            OsStr::new("claim"),
            OsStr::new("create"),
            OsStr::new("--template"),
            OsStr::new(TEMPLATE),
            OsStr::new("--validity-days"),
            OsStr::new(CLAIM_VALIDITY_DAYS),
            OsStr::new("--out"),
            out.as_os_str(),
        ])
        .await?;
    let cert_path = out.join("claim.pem");
    let key_path = out.join("claim.key");
    let cert_pem =
        std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
    let key_pem =
        std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let chain = certificates(&cert_pem).with_context(|| cert_path.display().to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("{}: no private key ({e:?})", key_path.display()))?;
    Ok((chain, key))
}

/// The certificates of a PEM text; an error if there are none.
pub(crate) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("unreadable certificate PEM: {e:?}"))?;
    if chain.is_empty() {
        bail!("no certificate in the PEM text");
    }
    Ok(chain)
}

/// One connection with the claim certificate before the clock starts.
async fn check_claim(claim: &Dialer) -> Result<()> {
    let opened = claim.open(None, "claim-check", KEEP_ALIVE_SECS).await?;
    client::disconnect(opened.conn).await
}

/// One P-256 key and CSR (PEM, CN = serial number) per device, on every core.
pub(crate) fn make_csrs(serials: &[String]) -> Result<Vec<(String, Vec<u8>)>> {
    let n = serials.len();
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .clamp(1, n.max(1));
    let per_thread = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = serials
            .chunks(per_thread.max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|s| {
                            let (key, der) = csr_with_key(s)?;
                            Ok((pem("CERTIFICATE REQUEST", &der), key.serialize_der()))
                        })
                        .collect::<Result<Vec<_>>>()
                })
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

/// PEM armour (RFC 7468) around DER.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `concurrency` tasks take the next device until `n` are done.
async fn onboard_all(ctx: &Arc<Ctx>, n: usize, concurrency: usize) -> Result<Vec<Sample>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let ctx = ctx.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(n / concurrency + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                samples.push(onboard(&ctx, i).await);
            }
            samples
        });
    }
    let mut samples = Vec::with_capacity(n);
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.context("an onboarding task failed")?);
    }
    Ok(samples)
}

/// One device, from its first TCP connect with the claim to the close
/// after its DISCONNECT as itself.
async fn onboard(ctx: &Ctx, i: usize) -> Sample {
    let started = Instant::now();
    let mut sample = Sample {
        started,
        ended: started,
        claim_connect: Duration::ZERO,
        create: Duration::ZERO,
        register: Duration::ZERO,
        device_connect: Duration::ZERO,
        outcome: Ok(()),
        identity: None,
    };
    let mut step = Step::ClaimConnect;
    let attempt = async {
        // 1-2: the claim connection and its subscriptions.
        let mut conn = connect(&ctx.claim, &format!("claim-{i}"), Step::ClaimConnect).await?;
        step = Step::Subscribe;
        let filters: Vec<&str> = ctx.filters.iter().map(String::as_str).collect();
        client::subscribe_all(&mut conn, &filters, QoS::AtLeastOnce)
            .await
            .map_err(|e| {
                if e.to_string().starts_with("SUBACK refused") {
                    Failure::Refused {
                        step: Step::Subscribe,
                        reason: e.to_string(),
                    }
                } else {
                    Failure::io(Step::Subscribe, e)
                }
            })?;
        sample.claim_connect = started.elapsed();

        // 3: a certificate.
        step = Step::Create;
        let request = match ctx.flow {
            Flow::Keys => "{}".to_string(),
            Flow::Csr => {
                serde_json::json!({ "certificateSigningRequest": ctx.csrs[i].0 }).to_string()
            }
        };
        let sent = Instant::now();
        let created = request_reply(
            &mut conn,
            ctx.create.packet(CREATE_PACKET_ID, Bytes::from(request)),
            &ctx.filters[0],
            &ctx.filters[1],
            Step::Create,
        )
        .await?;
        sample.create = sent.elapsed();
        let token = field(&created, "certificateOwnershipToken", Step::Create)?;
        field(&created, "certificateId", Step::Create)?;
        let chain = certificates(field(&created, "certificatePem", Step::Create)?.as_bytes())
            .map_err(|e| Failure::invalid(Step::Create, format!("certificatePem: {e}")))?;
        let key = match ctx.flow {
            Flow::Keys => {
                let pem = field(&created, "privateKey", Step::Create)?;
                PrivateKeyDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| Failure::invalid(Step::Create, format!("privateKey: {e:?}")))?
            }
            Flow::Csr => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ctx.csrs[i].1.clone())),
        };

        // 4: the thing.
        step = Step::Register;
        let request = serde_json::json!({
            "certificateOwnershipToken": token,
            "parameters": { "SerialNumber": serial(&ctx.run_id, i) },
        })
        .to_string();
        let sent = Instant::now();
        let registered = request_reply(
            &mut conn,
            ctx.register
                .packet(REGISTER_PACKET_ID, Bytes::from(request)),
            &ctx.filters[2],
            &ctx.filters[3],
            Step::Register,
        )
        .await?;
        sample.register = sent.elapsed();
        let thing = field(&registered, "thingName", Step::Register)?.to_string();

        // 5: done with the claim.
        step = Step::ClaimDisconnect;
        client::disconnect(conn)
            .await
            .map_err(|e| Failure::io(Step::ClaimDisconnect, e))?;

        // 6: the device as itself.
        step = Step::DeviceConnect;
        sample.identity = Some(DeviceIdentity {
            thing: thing.clone(),
            chain: chain.clone(),
            key: key.clone_key(),
        });
        let dialer = Dialer::with_roots(ctx.addr, ctx.roots.clone(), chain, key, ctx.kx)
            .map_err(|e| Failure::invalid(Step::DeviceConnect, format!("{e:#}")))?;
        let connecting = Instant::now();
        let conn = connect(&dialer, &thing, Step::DeviceConnect).await?;
        sample.device_connect = connecting.elapsed();
        step = Step::DeviceDisconnect;
        client::disconnect(conn)
            .await
            .map_err(|e| Failure::io(Step::DeviceDisconnect, e))
    };
    sample.outcome = match tokio::time::timeout(ctx.timeout, attempt).await {
        Err(_) => Err(Failure::Timeout { step }),
        Ok(outcome) => outcome,
    };
    sample.ended = Instant::now();
    sample
}

/// TCP, TLS, CONNECT (MQTT 3.1.1, clean session) and a successful CONNACK.
pub(crate) async fn connect(dialer: &Dialer, client_id: &str, step: Step) -> Result<Conn, Failure> {
    let (stream, _, _) = dialer
        .tls(None, None)
        .await
        .map_err(|e| Failure::io(step, e))?;
    let mut conn = Conn::new(stream, rmqtt_codec::v3::Codec::new(client::MAX_PACKET));
    conn.send(client::connect_packet(client_id, KEEP_ALIVE_SECS))
        .await
        .map_err(|e| Failure::io(step, anyhow::anyhow!("CONNECT: {e}")))?;
    match client::next(&mut conn)
        .await
        .map_err(|e| Failure::io(step, e.context("CONNACK")))?
    {
        Packet::ConnectAck(ack) if ack.return_code == ConnectAckReason::ConnectionAccepted => {
            Ok(conn)
        }
        Packet::ConnectAck(ack) => Err(Failure::Refused {
            step,
            reason: format!("CONNACK {}", ack.return_code.reason()),
        }),
        other => Err(Failure::io(
            step,
            anyhow::anyhow!("CONNACK: got {:?} instead", other.packet_type()),
        )),
    }
}

/// Publishes a request and waits for the reply on `accepted` or `rejected`,
/// acknowledging QoS 1 deliveries on the way.
pub(crate) async fn request_reply(
    conn: &mut Conn,
    request: Packet,
    accepted: &str,
    rejected: &str,
    step: Step,
) -> Result<serde_json::Value, Failure> {
    conn.send(request)
        .await
        .map_err(|e| Failure::io(step, anyhow::anyhow!("PUBLISH: {e}")))?;
    loop {
        let packet = client::next(conn).await.map_err(|e| Failure::io(step, e))?;
        let publish = match packet {
            Packet::Publish(publish) => publish,
            Packet::PublishAck { .. } | Packet::PingResponse => continue,
            other => {
                return Err(Failure::io(
                    step,
                    anyhow::anyhow!("unexpected {:?}", other.packet_type()),
                ));
            }
        };
        if publish.qos == QoS::AtLeastOnce
            && let Some(packet_id) = publish.packet_id
        {
            conn.send(Packet::PublishAck { packet_id })
                .await
                .map_err(|e| Failure::io(step, anyhow::anyhow!("PUBACK: {e}")))?;
        }
        let topic: &str = &publish.topic;
        if topic != accepted && topic != rejected {
            continue;
        }
        let body: serde_json::Value = serde_json::from_slice(&publish.payload)
            .map_err(|e| Failure::invalid(step, format!("a reply that is not JSON ({e})")))?;
        if topic == accepted {
            return Ok(body);
        }
        return Err(Failure::Rejected {
            step,
            status: body["statusCode"].as_i64().unwrap_or(0),
            code: body["errorCode"]
                .as_str()
                .unwrap_or("(no errorCode)")
                .to_string(),
        });
    }
}

/// A non-empty string field of an accepted reply.
pub(crate) fn field<'a>(
    reply: &'a serde_json::Value,
    name: &str,
    step: Step,
) -> Result<&'a str, Failure> {
    match reply[name].as_str() {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(Failure::invalid(step, format!("accepted without {name}"))),
    }
}

fn summarise(
    args: &OnboardArgs,
    run_id: &str,
    samples: &[Sample],
    cpu: crate::mqtt::CpuUse,
    peak_rss_kib: u64,
) -> Report {
    let mut by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut details: BTreeMap<String, usize> = BTreeMap::new();
    let ok: Vec<&Sample> = samples
        .iter()
        .filter(|s| match &s.outcome {
            Ok(()) => true,
            Err(f) => {
                *by_kind.entry(f.kind()).or_default() += 1;
                *details.entry(f.detail()).or_default() += 1;
                false
            }
        })
        .collect();
    let completed = ok.len();
    let failed = samples.len() - completed;
    // From the first device's start to the last device's end.
    let wall = match (
        samples.iter().map(|s| s.started).min(),
        samples.iter().map(|s| s.ended).max(),
    ) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let secs = wall.as_secs_f64();
    let rate = completed as f64 / secs.max(f64::MIN_POSITIVE);
    let of = |f: fn(&Sample) -> Duration| Latency::of(ok.iter().map(|s| f(s)).collect());
    let total = of(Sample::total);
    let claim_connect = of(|s| s.claim_connect);
    let create = of(|s| s.create);
    let register = of(|s| s.register);
    let device_connect = of(|s| s.device_connect);
    let server_ms_per_onboarding = ms(cpu.server) / completed.max(1) as f64;
    let rss_mib = peak_rss_kib as f64 / 1024.0;

    let failures_line = if by_kind.is_empty() {
        "none".to_string()
    } else {
        by_kind
            .iter()
            .map(|(kind, count)| format!("{kind}: {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows: Vec<(String, String)> = vec![
        ("backend".into(), args.server.backend().to_string()),
        ("flow".into(), args.flow.name().to_string()),
        ("devices".into(), args.devices.to_string()),
        ("concurrency".into(), args.concurrency.to_string()),
        ("run id".into(), run_id.to_string()),
        (
            "onboarded / failed".into(),
            format!("{completed} / {failed}"),
        ),
        ("failures".into(), failures_line),
    ];
    for (detail, count) in &details {
        rows.push(("  failure".into(), format!("{count} × {detail}")));
    }
    rows.extend([
        ("duration".into(), format!("{secs:.2} s")),
        ("onboardings/s".into(), format!("{rate:.1}")),
        ("end to end ms (p50/p90/p99/max)".into(), total.line()),
        ("  claim connect + SUBACK ms".into(), claim_connect.line()),
        ("  create certificate ms".into(), create.line()),
        ("  register thing ms".into(), register.line()),
        ("  device connect ms".into(), device_connect.line()),
        ("CPU cores server/bench/other".into(), cpu.line()),
        (
            "server CPU ms / onboarding".into(),
            format!("{server_ms_per_onboarding:.3}"),
        ),
        ("server peak RSS".into(), format!("{rss_mib:.1} MiB")),
    ]);
    let json = serde_json::json!({
        "scenario": SCENARIO,
        "backend": args.server.backend(),
        "flow": args.flow.name(),
        "devices": args.devices,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout_secs,
        "run_id": run_id,
        "onboarded": completed,
        "failed": failed,
        "failures": by_kind,
        "failure_details": details,
        "duration_s": round3(secs),
        "onboardings_per_s": (rate * 10.0).round() / 10.0,
        "latency_ms": total.json(),
        "claim_connect_ms": claim_connect.json(),
        "create_ms": create.json(),
        "register_ms": register.json(),
        "device_connect_ms": device_connect.json(),
        "cpu": cpu.json(),
        "server_cpu_ms_per_onboarding": round3(server_ms_per_onboarding),
        "server_peak_rss_kib": peak_rss_kib,
    });
    Report {
        title: format!(
            "Fleet provisioning by claim (onramp-bench onboard --flow {})",
            args.flow.name()
        ),
        rows,
        json,
        failed,
    }
}

/// Onboards `n` devices by claim (CreateKeysAndCertificate) before a
/// scenario's clock starts, with `template_body` as the template; returns
/// the trust anchors and every onboarded device.
pub(crate) async fn provision_devices(
    server: &Server,
    n: usize,
    concurrency: usize,
    kx: Kx,
    template_body: &str,
) -> Result<(Arc<RootCertStore>, Vec<DeviceIdentity>)> {
    let addr = server
        .mqtt_addr
        .context("the server printed no MQTT address")?;
    let files = tempfile::Builder::new()
        .prefix("onramp-bench-provision-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (claim_chain, claim_key) =
        create_template_and_claim(server, files.path(), template_body).await?;
    let root_pem = server.admin(["ca", "export"]).await?;
    let roots = Arc::new(client::root_store(&root_pem)?);
    let claim = Dialer::with_roots(addr, roots.clone(), claim_chain, claim_key, kx)?;
    let provision = format!("$aws/provisioning-templates/{TEMPLATE}/provision/json");
    let run_id = format!(
        "{:x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    );
    let ctx = Arc::new(Ctx {
        flow: Flow::Keys,
        addr,
        kx,
        roots: roots.clone(),
        claim,
        run_id,
        timeout: Duration::from_secs(120),
        create: Publisher::new(CREATE_KEYS_TOPIC, QoS::AtLeastOnce),
        register: Publisher::new(&provision, QoS::AtLeastOnce),
        filters: [
            format!("{CREATE_KEYS_TOPIC}/accepted"),
            format!("{CREATE_KEYS_TOPIC}/rejected"),
            format!("{provision}/accepted"),
            format!("{provision}/rejected"),
        ],
        csrs: Vec::new(),
    });
    let samples = onboard_all(&ctx, n, concurrency).await?;
    let mut devices = Vec::with_capacity(n);
    for s in samples {
        match (s.outcome, s.identity) {
            (Ok(()), Some(identity)) => devices.push(identity),
            (Err(f), _) => bail!("provisioning a device before the run: {}", f.detail()),
            (Ok(()), None) => bail!("provisioning a device before the run gave no identity"),
        }
    }
    Ok((roots, devices))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_body_parses() {
        let v: serde_json::Value = serde_json::from_str(TEMPLATE_BODY).expect("JSON");
        assert_eq!(v["Resources"].as_object().map(|r| r.len()), Some(3));
        assert_eq!(v["DeviceConfiguration"]["interval"], "60");
        assert_eq!(
            v["Resources"]["policy"]["Properties"]["PolicyDocument"]["Statement"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn csrs_are_pem() {
        let csrs =
            make_csrs(&["a-0".to_string(), "a-1".to_string(), "a-2".to_string()]).expect("CSRs");
        assert_eq!(csrs.len(), 3);
        for (pem, key) in &csrs {
            assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----\n"));
            assert!(pem.ends_with("-----END CERTIFICATE REQUEST-----\n"));
            assert!(pem.lines().all(|l| l.len() <= 64));
            assert!(!key.is_empty());
        }
    }

    #[test]
    fn the_server_keeps_checking_client_ids() {
        let env = server_env();
        assert!(
            env.iter()
                .all(|(k, _)| *k != "ONRAMP_MQTT__REQUIRE_CLIENT_ID_MATCH")
        );
        assert!(
            env.iter()
                .any(|(k, _)| *k == "ONRAMP_PROVISIONING__RATE_PER_CLAIM__BURST")
        );
        assert!(
            env.iter()
                .any(|(k, _)| *k == "ONRAMP_MQTT__RATE_PER_IDENTITY__BURST")
        );
    }

    #[test]
    fn failures_are_grouped_by_kind() {
        let f = Failure::Rejected {
            step: Step::Register,
            status: 400,
            code: "InvalidCertificateOwnershipToken".into(),
        };
        assert_eq!(f.kind(), "rejected");
        assert_eq!(
            f.detail(),
            "register thing rejected: 400 InvalidCertificateOwnershipToken"
        );
        assert_eq!(Failure::Timeout { step: Step::Create }.kind(), "timeout");
    }
}
