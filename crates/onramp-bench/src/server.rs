//! The Onramp server under test: a real `onramp serve` on a fresh data
//! directory, killed when the run ends (or fails), and its admin CLI run
//! against the same data directory and database.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the server may take to create its CA, migrate and listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// What `onramp serve` prints once it accepts connections.
const LISTENING: &str = "onramp listening on https://";
/// What `onramp serve` prints once its MQTT gateway accepts connections.
const MQTT_LISTENING: &str = "onramp mqtt listening on ";
/// What `onramp serve` prints once its operations listener (plain HTTP:
/// health, readiness, metrics) accepts connections.
const OPS_LISTENING: &str = "onramp ops listening on http://";

/// Which of the server's listeners a printed line announced.
enum Listener {
    Https,
    Mqtt,
    Ops,
}
/// Linux reports process CPU times in USER_HZ ticks, 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// Options shared by every scenario: which server binary and which database.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The `onramp` binary to benchmark [default: `onramp` next to this executable].
    #[arg(long)]
    pub onramp_bin: Option<PathBuf>,
    /// Registry database (`postgres://…`); default: SQLite in the run's data
    /// directory. Use an empty database: the run creates fixed serial numbers.
    #[arg(long)]
    pub database_url: Option<String>,
}

impl ServerArgs {
    pub fn backend(&self) -> &'static str {
        match &self.database_url {
            Some(url) if url.starts_with("postgres") => "postgres",
            Some(_) => "other",
            None => "sqlite",
        }
    }

    fn binary(&self) -> Result<PathBuf> {
        let bin = match &self.onramp_bin {
            Some(bin) => bin.clone(),
            None => {
                let exe = std::env::current_exe().context("locating onramp-bench itself")?;
                exe.parent()
                    .context("onramp-bench has no parent directory")?
                    .join("onramp")
            }
        };
        if !bin.is_file() {
            bail!(
                "{} does not exist; build it (`cargo build --release -p onramp`) or pass --onramp-bin",
                bin.display()
            );
        }
        Ok(bin)
    }
}

/// A running `onramp serve`. Dropping it kills the server.
pub struct Server {
    child: Child,
    bin: PathBuf,
    database_url: Option<String>,
    /// Holds the data directory and the server log; removed on drop.
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The MQTT gateway's address, when it printed one.
    pub mqtt_addr: Option<SocketAddr>,
    /// The operations listener's address, where `/metrics` is served.
    pub ops_addr: Option<SocketAddr>,
}

impl Server {
    /// Starts the server with enrolment rate limits raised out of the way,
    /// and waits until it listens.
    pub fn start(args: &ServerArgs) -> Result<Server> {
        Server::start_with(args, &[])
    }

    /// Like [`Server::start`], with further `ONRAMP_*` settings.
    pub fn start_with(args: &ServerArgs, env: &[(&str, &str)]) -> Result<Server> {
        let bin = args.binary()?;
        let dir = tempfile::Builder::new()
            .prefix("onramp-bench-")
            .tempdir()
            .context("creating a temporary directory")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve").arg("--data-dir").arg(&data_dir);
        clean_env(&mut cmd, args.database_url.as_deref());
        cmd.env("ONRAMP_HTTP__LISTEN", "127.0.0.1:0")
            .env("ONRAMP_OPS__LISTEN", "127.0.0.1:0")
            .env("ONRAMP_ENROLMENT__RATE_PER_SOURCE__PER_SECOND", "1000000")
            .env("ONRAMP_ENROLMENT__RATE_PER_SOURCE__BURST", "1000000")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the server's standard output is not piped")?;
        let mut server = Server {
            child,
            bin,
            database_url: args.database_url.clone(),
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_addr: None,
            ops_addr: None,
        };
        server.addr = server.wait_listening(stdout)?;
        Ok(server)
    }

    fn wait_listening(&mut self, stdout: std::process::ChildStdout) -> Result<SocketAddr> {
        let (tx, rx) = mpsc::channel();
        // Reads stdout to the end so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.trim();
                if let Some(addr) = line.strip_prefix(LISTENING) {
                    let _ = tx.send((Listener::Https, addr.to_string()));
                } else if let Some(addr) = line.strip_prefix(MQTT_LISTENING) {
                    let _ = tx.send((Listener::Mqtt, addr.to_string()));
                } else if let Some(addr) = line.strip_prefix(OPS_LISTENING) {
                    let _ = tx.send((Listener::Ops, addr.to_string()));
                }
            }
        });
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((Listener::Mqtt, addr)) => {
                    self.mqtt_addr =
                        Some(self.check_address(MQTT_LISTENING, &addr, "mqtt.addr")?);
                }
                Ok((Listener::Ops, addr)) => {
                    self.ops_addr = Some(self.check_address(OPS_LISTENING, &addr, "ops.addr")?);
                }
                Ok((Listener::Https, addr)) => {
                    return self.check_address(LISTENING, &addr, "https.addr");
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().context("waiting for the server")?;
                    bail!(
                        "the server exited ({status}) before listening:\n{}",
                        self.log_tail()
                    );
                }
            }
            if let Some(status) = self.child.try_wait().context("polling the server")? {
                bail!(
                    "the server exited ({status}) before listening:\n{}",
                    self.log_tail()
                );
            }
            if started.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "the server did not listen within {STARTUP_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// The address the server printed, checked against the file it wrote.
    fn check_address(&self, printed: &str, addr: &str, file: &str) -> Result<SocketAddr> {
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("the server printed `{printed}{addr}`"))?;
        let file = self.data_dir().join(file);
        let written = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        if written.trim() != addr.to_string() {
            bail!(
                "the server printed {addr} but wrote {} to {}",
                written.trim(),
                file.display()
            );
        }
        Ok(addr)
    }

    /// The Prometheus text of `/metrics`, from the operations listener
    /// (plain HTTP/1.1, one connection per call).
    pub async fn metrics(&self) -> Result<String> {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        let addr = self
            .ops_addr
            .context("the server announced no operations listener")?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, addr.to_string())
            .body(Full::new(Bytes::new()))
            .context("building the metrics request")?;
        let response = sender.send_request(request).await.context("GET /metrics")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading /metrics")?
            .to_bytes();
        if status != hyper::StatusCode::OK {
            bail!("GET /metrics: {status}");
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `onramp --data-dir <dir> <args>` against the running server's
    /// data directory and database, and returns its standard output.
    pub async fn admin<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--data-dir").arg(self.data_dir()).args(&args);
        clean_env(&mut cmd, self.database_url.as_deref());
        let mut cmd = tokio::process::Command::from(cmd);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running onramp {shown}"))?;
        if !out.status.success() {
            bail!(
                "onramp {shown} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("output of onramp {shown}"))
    }

    /// The server's peak resident set size so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// CPU time the server has used so far (user + system, all threads).
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(&format!("/proc/{}/stat", self.pid()))
    }

    /// Context switches of all the server's threads so far (voluntary and not).
    pub fn context_switches(&self) -> Result<u64> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut total = 0;
        for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let path = task
                .with_context(|| format!("reading {dir}"))?
                .path()
                .join("status");
            // A thread may end between listing and reading.
            let Ok(status) = std::fs::read_to_string(&path) else {
                continue;
            };
            total += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
        Ok(total)
    }

    /// The last lines the server logged, for error messages.
    pub fn log_tail(&self) -> String {
        let path = self.dir.path().join("server.log");
        match std::fs::read_to_string(&path) {
            Ok(log) => {
                let lines = without_backtraces(&log);
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            Err(e) => format!("({}: {e})", path.display()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log without `Stack backtrace:` blocks (RUST_BACKTRACE), which would
/// crowd the error message out of a short tail.
fn without_backtraces(log: &str) -> Vec<&str> {
    let mut kept = Vec::new();
    let mut in_backtrace = false;
    for line in log.lines() {
        if line.trim() == "Stack backtrace:" {
            in_backtrace = true;
            continue;
        }
        if in_backtrace && is_frame(line) {
            continue;
        }
        in_backtrace = false;
        kept.push(line);
    }
    kept
}

fn is_frame(line: &str) -> bool {
    let t = line.trim_start();
    line.starts_with(' ')
        && (t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
}

/// Children see only the Onramp settings this run chooses, whatever the
/// caller's environment holds.
fn clean_env(cmd: &mut Command, database_url: Option<&str>) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ONRAMP_") {
            cmd.env_remove(key);
        }
    }
    if let Some(url) = database_url {
        cmd.env("ONRAMP_DATABASE_URL", url);
    }
}

/// User + system CPU time from a `/proc/<pid>/stat` file.
pub fn cpu_time(path: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses; fields follow the last `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("unexpected format of {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected format of {path}"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / TICKS_PER_SECOND))
}

/// CPU time all processes on the machine have used so far (every state but
/// idle and I/O wait, from `/proc/stat`).
pub fn machine_cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|v| v.parse().context("unexpected format of /proc/stat"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    Ok(Duration::from_secs_f64(busy as f64 / TICKS_PER_SECOND))
}

/// CPU time this process has used so far.
pub fn own_cpu_time() -> Result<Duration> {
    cpu_time("/proc/self/stat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_are_dropped_but_causes_kept() {
        let log = "\
Error: opening the registry database

Caused by:
    0: error returned from database: database \"x\" does not exist

Stack backtrace:
   0: anyhow::error::msg
             at ./src/main.rs:10:5
   1: main
";
        assert_eq!(
            without_backtraces(log),
            vec![
                "Error: opening the registry database",
                "",
                "Caused by:",
                "    0: error returned from database: database \"x\" does not exist",
                "",
            ]
        );
    }
}
