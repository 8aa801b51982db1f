//! Drives the real `onramp` binary and real clients (openssl, curl) in tests.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The variable that picks the store of the server suites' default backend.
pub const STORE_VAR: &str = "ONRAMP_TEST_STORE";

impl Backend {
    /// Reads a value of `ONRAMP_TEST_STORE`: unset or empty is SQLite. Any
    /// other value is refused, so that a typo cannot quietly test SQLite twice.
    pub fn parse(value: Option<&std::ffi::OsStr>) -> Result<Backend, String> {
        let Some(value) = value else {
            return Ok(Backend::Sqlite);
        };
        match value.to_str() {
            Some("" | "sqlite") => Ok(Backend::Sqlite),
            Some("postgres") => Ok(Backend::Postgres),
            _ => Err(format!(
                "{STORE_VAR}={value:?} is not a store: use `sqlite` (the default) or `postgres`"
            )),
        }
    }
}

/// The backend for tests that hold for every store: SQLite, or with
/// `ONRAMP_TEST_STORE=postgres` (as the second pass of `scripts/test` sets)
/// PostgreSQL, each server on a scratch database of its own. One build of
/// the test binaries serves both passes.
pub fn backend() -> Backend {
    Backend::parse(std::env::var_os(STORE_VAR).as_deref()).unwrap_or_else(|why| panic!("{why}"))
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub addr: String,
    pub mqtt_port: u16,
    /// The operations listener (plain HTTP), unless the test turned it off.
    pub ops_addr: Option<String>,
    pub root_pem: PathBuf,
    pub database_url: Option<String>,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    stderr_log: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_onramp")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Server {
    pub fn start(backend: Backend) -> Server {
        Server::start_with(backend, &[], None)
    }

    /// Starts `onramp serve` on an ephemeral port with extra environment and
    /// an optional TOML configuration file.
    pub fn start_with(backend: Backend, env: &[(&str, &str)], config_toml: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                Some(runtime().block_on(onramp_store::testing::scratch_postgres()))
            }
        };
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(cfg) = config_toml {
            let path = dir.path().join("onramp.toml");
            std::fs::write(&path, cfg).unwrap();
            env.push(("ONRAMP_CONFIG".into(), path.display().to_string()));
        }
        let mut s = Server {
            root_pem: dir.path().join("root.pem"),
            stderr_log: dir.path().join("server.log"),
            dir,
            data,
            addr: String::new(),
            mqtt_port: 0,
            ops_addr: None,
            database_url,
            env,
            child: None,
        };
        s.spawn();
        let out = s.cli(&["ca", "export", "--out", s.root_pem.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--data-dir").arg(&self.data);
        c.env_remove("RUST_LOG");
        // Admin commands stay local: no operator's `onramp login` file is read.
        c.env(
            "ONRAMP_CREDENTIALS",
            self.dir.path().join("no-credentials.toml"),
        );
        for var in ["ONRAMP_SERVER", "ONRAMP_API_KEY", "ONRAMP_CA_FILE"] {
            c.env_remove(var);
        }
        if let Some(url) = &self.database_url {
            c.env("ONRAMP_DATABASE_URL", url);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.stderr_log).unwrap();
        let mut command = self.command();
        // Tests run side by side: every listener on an ephemeral port, unless
        // the test chose the operations listener's address itself.
        if !self.env.iter().any(|(k, _)| k == "ONRAMP_OPS__LISTEN") {
            command.env("ONRAMP_OPS__LISTEN", "127.0.0.1:0");
        }
        self.ops_addr = None;
        let mut child = command
            .arg("serve")
            .env("ONRAMP_HTTP__LISTEN", "127.0.0.1:0")
            .env("ONRAMP_MQTT__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "debug,sqlx=warn,hyper=info,rustls=info,h2=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "server did not start");
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("onramp ops listening on http://") {
                        self.ops_addr = Some(addr.trim().to_string());
                    }
                    if let Some(addr) = line.strip_prefix("onramp mqtt listening on ") {
                        self.mqtt_port = addr.rsplit(':').next().unwrap().trim().parse().unwrap();
                    }
                    if let Some(url) = line.strip_prefix("onramp listening on https://") {
                        self.addr = url.trim().to_string();
                        break;
                    }
                }
                _ => panic!(
                    "server exited: {}",
                    std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
                ),
            }
        }
        self.child = Some(child);
        // The server must run on the backend the test asked for.
        let want = if self.database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        let log = self.server_log();
        let line = log
            .lines()
            .find(|l| l.contains("serving HTTPS"))
            .unwrap_or_default();
        assert!(
            line.contains(&format!("\"{want}\"")),
            "the server is not on {want}: {line}"
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data directory.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The URL of this server's store, for a test that writes to it directly.
    pub fn store_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => onramp_store::testing::sqlite_url(&self.data),
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The server log once a line satisfies `line`, or as it stands after
    /// `within`. The server writes a line after the event it reports, so a
    /// client can see a refusal before the refusal is logged.
    pub fn server_log_once(&self, line: impl Fn(&str) -> bool, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.server_log();
            if log.lines().any(&line) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        let port = self.addr.rsplit(':').next().unwrap();
        format!("https://localhost:{port}{path}")
    }

    /// A URL on the operations listener (plain HTTP).
    pub fn ops_url(&self, path: &str) -> String {
        let addr = self
            .ops_addr
            .as_deref()
            .expect("the operations listener is on");
        format!("http://{addr}{path}")
    }

    /// The Prometheus text of the operations listener's `/metrics`.
    pub fn metrics(&self) -> String {
        let r = self.curl(&[&self.ops_url("/metrics")]);
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs an admin command against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "onramp {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Creates an enrolment token for `serial`; returns the secret.
    pub fn token(&self, serial: &str) -> String {
        self.cli_json(&["token", "create", "--serial", serial])["secret"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn api_key(&self, role: &str) -> String {
        self.cli_json(&["apikey", "create", "--name", "test", "--role", role])["secret"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn curl(&self, args: &[&str]) -> Curl {
        let body = self.dir.path().join(format!("body-{}", uuid_like()));
        let headers = self.dir.path().join(format!("headers-{}", uuid_like()));
        let out = Command::new("curl")
            .args(["-s", "-S", "--cacert"])
            .arg(&self.root_pem)
            .arg("-o")
            .arg(&body)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        Curl {
            status,
            body: std::fs::read(&body).unwrap_or_default(),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// A management API call with a bearer key.
    pub fn api(&self, method: &str, path: &str, key: &str, body: Option<&str>) -> Curl {
        let auth = format!("Authorization: Bearer {key}");
        let url = self.url(path);
        let mut args = vec!["-X", method, "-H", &auth, &url];
        if let Some(b) = body {
            args.extend_from_slice(&["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        self.curl(&args)
    }

    /// Enrols with a token: `openssl req` for the CSR, `curl` for EST.
    pub fn enrol(&self, device: &Device, serial: &str, token: &str) -> Curl {
        let url = self.url("/.well-known/est/simpleenroll");
        let user = format!("{serial}:{token}");
        let data = format!("@{}", device.csr_b64.display());
        self.curl(&[
            "-u",
            &user,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data,
            &url,
        ])
    }

    /// Re-enrols presenting `cert`/`key` as TLS client identity.
    pub fn reenrol(&self, cert: &Path, key: &Path, csr_b64: &Path) -> Curl {
        let url = self.url("/.well-known/est/simplereenroll");
        let data = format!("@{}", csr_b64.display());
        self.curl(&[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data,
            &url,
        ])
    }

    pub fn devices_json(&self, thing: &str) -> Value {
        self.cli_json(&["device", "show", thing])
    }

    pub fn certs_of(&self, thing: &str) -> Vec<Value> {
        self.cli_json(&["cert", "list", "--thing-name", thing])["items"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Curl {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: String,
    pub stderr: String,
}

impl Curl {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON ({}): {}", self.status, self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// The value of one series (`name{labels}` exactly as exported) in a
/// Prometheus text, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A device's key and CSR made by `openssl req`.
pub struct Device {
    pub key: PathBuf,
    pub csr_der: PathBuf,
    pub csr_b64: PathBuf,
}

pub fn openssl(args: &[&str]) -> Output {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A new P-256 key and a CSR with the given subject (e.g. `/CN=SN-1`).
pub fn device_csr(dir: &Path, name: &str, subject: &str) -> Device {
    let key = dir.join(format!("{name}.key"));
    let csr_der = dir.join(format!("{name}.csr.der"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        key.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        csr_der.to_str().unwrap(),
    ]);
    with_csr_der(dir, name, key, csr_der)
}

/// A CSR for an existing key.
pub fn csr_for_key(dir: &Path, name: &str, key: &Path, subject: &str) -> Device {
    let csr_der = dir.join(format!("{name}.csr.der"));
    openssl(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        subject,
        "-outform",
        "DER",
        "-out",
        csr_der.to_str().unwrap(),
    ]);
    with_csr_der(dir, name, key.to_path_buf(), csr_der)
}

pub fn with_csr_der(dir: &Path, name: &str, key: PathBuf, csr_der: PathBuf) -> Device {
    let csr_b64 = dir.join(format!("{name}.csr.b64"));
    openssl(&[
        "base64",
        "-in",
        csr_der.to_str().unwrap(),
        "-out",
        csr_b64.to_str().unwrap(),
    ]);
    Device {
        key,
        csr_der,
        csr_b64,
    }
}

/// Turns an EST certs-only response (base64 PKCS#7) into PEM with openssl.
pub fn pkcs7_to_pem(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let b64 = dir.join(format!("{name}.p7.b64"));
    let der = dir.join(format!("{name}.p7.der"));
    let pem = dir.join(format!("{name}.pem"));
    std::fs::write(&b64, body).unwrap();
    openssl(&[
        "base64",
        "-d",
        "-in",
        b64.to_str().unwrap(),
        "-out",
        der.to_str().unwrap(),
    ]);
    openssl(&[
        "pkcs7",
        "-inform",
        "DER",
        "-in",
        der.to_str().unwrap(),
        "-print_certs",
        "-out",
        pem.to_str().unwrap(),
    ]);
    pem
}

/// `openssl x509 -noout -subject` etc.
pub fn x509_field(pem: &Path, field: &str) -> String {
    let out = openssl(&["x509", "-in", pem.to_str().unwrap(), "-noout", field]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A device's certificate and key, enrolled through EST.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Server {
    /// Enrols `serial` with a fresh token and returns its identity files.
    pub fn device(&self, serial: &str) -> Identity {
        let token = self.token(serial);
        self.device_with_token(serial, &token)
    }

    pub fn device_with_token(&self, serial: &str, token: &str) -> Identity {
        let d = device_csr(self.dir.path(), serial, &format!("/CN={serial}"));
        let r = self.enrol(&d, serial, token);
        assert_eq!(r.status, 200, "{}", r.text());
        let cert = pkcs7_to_pem(self.dir.path(), &format!("{serial}-cert"), &r.body);
        Identity {
            name: serial.to_string(),
            cert,
            key: d.key,
        }
    }

    /// A back-end service identity: a device whose policy reads every
    /// device's topics and events and may join shared subscriptions.
    pub fn service(&self, serial: &str) -> Identity {
        let id = self.device(serial);
        let policy = self.path("backend-policy.json");
        std::fs::write(&policy, BACKEND_POLICY).unwrap();
        let out = self.cli(&[
            "policy",
            "create",
            "backend",
            "--document",
            policy.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.cli(&["policy", "attach", "backend", "--device", serial]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        id
    }

    fn mosquitto_args(&self, id: &Identity, client_id: &str) -> Vec<String> {
        vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            self.mqtt_port.to_string(),
            "--cafile".into(),
            self.root_pem.display().to_string(),
            "--cert".into(),
            id.cert.display().to_string(),
            "--key".into(),
            id.key.display().to_string(),
            "-i".into(),
            client_id.into(),
        ]
    }

    /// `mosquitto_pub` as `id`; returns its exit status and stderr.
    pub fn mosquitto_pub(&self, id: &Identity, extra: &[&str]) -> (bool, String) {
        let out = Command::new("mosquitto_pub")
            .args(self.mosquitto_args(id, &id.name))
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Publishes each line of `lines` as one QoS 1 message over one connection.
    pub fn mosquitto_pub_lines(&self, id: &Identity, topic: &str, lines: &str) -> bool {
        use std::io::Write;
        let mut child = Command::new("mosquitto_pub")
            .args(self.mosquitto_args(id, &id.name))
            .args(["-t", topic, "-q", "1", "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        child.wait().unwrap().success()
    }

    /// Starts `mosquitto_sub` as `id` (printing `topic payload` lines).
    pub fn mosquitto_sub(&self, id: &Identity, client_id: &str, extra: &[&str]) -> Subscriber {
        let out_path = self.path(&format!("sub-{}-{}", client_id, uuid_like()));
        let child = Command::new("mosquitto_sub")
            .args(self.mosquitto_args(id, client_id))
            .arg("-v")
            .args(extra)
            .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Subscriber { child, out_path }
    }
}

pub struct Subscriber {
    pub child: Child,
    out_path: PathBuf,
}

impl Subscriber {
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits for the process to end (its -C count or -W timeout); returns (success, stderr).
    pub fn wait(mut self) -> (bool, Vec<String>, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.success(), self.lines(), err)
    }

    /// Waits until at least `n` lines arrived or `timeout` passed.
    pub fn wait_for_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.lines();
            if l.len() >= n || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gives a subscriber time to have its SUBACK before the test publishes.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

pub const BACKEND_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": [
      "arn:aws:iot:*:*:topicfilter/things/*",
      "arn:aws:iot:*:*:topicfilter/$share/*",
      "arn:aws:iot:*:*:topicfilter/$aws/events/*"]},
    {"Effect": "Allow", "Action": ["iot:Receive", "iot:Publish"], "Resource": [
      "arn:aws:iot:*:*:topic/things/*",
      "arn:aws:iot:*:*:topic/$aws/events/*"]}
  ]
}"#;

impl Server {
    /// A second `onramp serve` node of the same deployment: a copy of this
    /// node's data directory (the same CA and secrets) and the same
    /// PostgreSQL database, on its own ports.
    pub fn another_node(&self) -> Server {
        let url = self
            .database_url
            .clone()
            .expect("several nodes share a PostgreSQL database");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new("cp")
            .arg("-a")
            .arg(&self.data)
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root_pem = dir.path().join("root.pem");
        std::fs::copy(&self.root_pem, &root_pem).unwrap();
        let mut s = Server {
            root_pem,
            stderr_log: dir.path().join("server.log"),
            dir,
            data,
            addr: String::new(),
            mqtt_port: 0,
            ops_addr: None,
            database_url: Some(url),
            env: self.env.clone(),
            child: None,
        };
        s.spawn();
        s
    }
}

/// What to do when a Python test client cannot run.
pub const PYTHON_FIX: &str = "run `scripts/services.sh` (it installs tests/requirements.txt into \
     the project's virtual environment, .venv/; `scripts/test` runs it for you), or set \
     ONRAMP_TEST_PYTHON to an interpreter that has those packages";

/// The modules the paho-mqtt clients import.
pub const PAHO: &[&str] = &["paho.mqtt.client", "paho.mqtt.enums"];
/// The modules the AWS IoT Device SDK clients import.
pub const AWS_SDK: &[&str] = &["awscrt.mqtt5", "awsiot.iotshadow", "awsiot.iotidentity"];

/// The repository's root, where `.venv/` lives.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python interpreter the tests run their clients with: `ONRAMP_TEST_PYTHON`
/// (exported by `scripts/test`), else the project venv's, else `python3`.
pub fn python() -> PathBuf {
    choose_python(
        std::env::var_os("ONRAMP_TEST_PYTHON"),
        &repo_root().join(".venv/bin/python"),
    )
}

/// The choice `python()` makes, given the variable's value and the venv path.
pub fn choose_python(from_env: Option<std::ffi::OsString>, venv_python: &Path) -> PathBuf {
    match from_env {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if venv_python.exists() => venv_python.to_path_buf(),
        _ => PathBuf::from("python3"),
    }
}

/// Whether `py` starts and imports `modules`; the error says which failed and
/// how to fix it.
pub fn check_python_modules(py: &Path, modules: &[&str]) -> Result<(), String> {
    let import = format!("import {}", modules.join(", "));
    match Command::new(py).args(["-c", &import]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("no error output");
            Err(format!(
                "{} cannot `{import}` ({last}); {PYTHON_FIX}",
                py.display()
            ))
        }
        Err(e) => Err(format!(
            "{} could not be started ({e}); {PYTHON_FIX}",
            py.display()
        )),
    }
}

/// `python()`, once it is known to import `modules` (checked once per set of
/// modules); panics with the fix otherwise, rather than letting a test fail
/// later on a client's missing output.
pub fn python_with(modules: &[&str]) -> PathBuf {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CHECKED: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let py = python();
    let key = format!("{}|{}", py.display(), modules.join(","));
    let answer = {
        let mut checked = CHECKED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        checked
            .entry(key)
            .or_insert_with(|| check_python_modules(&py, modules))
            .clone()
    };
    if let Err(why) = answer {
        panic!("{why}");
    }
    py
}
