//! The packaging in `deploy/` checked against the real server: the systemd
//! unit and its user, the configuration examples and the Compose and
//! Dockerfile settings through the server's own configuration loader, the
//! Grafana dashboard's metric names against a running server's `/metrics`,
//! and the examples of docs/deploy.md.

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::*;

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// A systemd tool, or a failure that says how to get it.
fn systemd_tool(name: &str) -> Command {
    let probe = Command::new(name).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "`{name}` is not installed: install systemd (`apt-get install systemd`) to check \
         deploy/systemd"
    );
    Command::new(name)
}

/// `systemd-analyze verify` on a copy of `unit` in `dir`: its exit status
/// and what it printed. It exits 0 on unknown keys and unparsable values,
/// only printing them, so both are returned.
fn verify_unit(dir: &Path, unit: &str) -> (bool, String) {
    let path = dir.join("onramp.service");
    std::fs::write(&path, unit).unwrap();
    let out = systemd_tool("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read(&deploy("systemd/onramp.service"));
    let exec = "ExecStart=/usr/local/bin/onramp serve --config /etc/onramp/onramp.toml";
    assert_eq!(unit.matches(exec).count(), 1, "{unit}");
    for setting in [
        "User=onramp",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=\n",
        "ReadWritePaths=/var/lib/onramp",
        "StateDirectory=onramp",
        "StateDirectoryMode=0700",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "UMask=0077",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting:?}");
    }
    // verify insists that the ExecStart binary exists: point it at the one
    // under test.
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace(
        "ExecStart=/usr/local/bin/onramp ",
        &format!("ExecStart={} ", bin()),
    );
    let (ok, said) = verify_unit(dir.path(), &local);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The control: a misspelt option is reported, so silence above means
    // every line was understood.
    let (_, said) = verify_unit(
        dir.path(),
        &local.replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes"),
    );
    assert!(said.contains("ProtectHomes"), "{said}");
    // And the real path is what verify would refuse if it were missing.
    let (ok, said) = verify_unit(
        dir.path(),
        &unit.replace(
            "ExecStart=/usr/local/bin/onramp ",
            "ExecStart=/nonexistent/onramp ",
        ),
    );
    assert!(!ok && said.contains("/nonexistent/onramp"), "{said}");
}

#[test]
fn the_sysusers_and_tmpfiles_snippets_create_the_user_and_config_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = systemd_tool("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy("systemd/onramp.sysusers.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let passwd = read(&root.path().join("etc/passwd"));
    let user = passwd
        .lines()
        .find(|l| l.starts_with("onramp:"))
        .unwrap_or_else(|| panic!("no onramp user in\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], "/var/lib/onramp", "{user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{user}");
    let out = systemd_tool("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy("systemd/onramp.tmpfiles.conf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.path().join("etc/onramp")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o750);
    let gid: u32 = fields[3].parse().unwrap();
    assert_eq!(meta.gid(), gid, "/etc/onramp belongs to the onramp group");
}

// ---- the configuration loader ----

/// `onramp config check` with exactly these variables (nothing inherited).
fn config_check(env: &[(String, String)], config: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin());
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.args(["config", "check"])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap()
}

fn effective(env: &[(String, String)], config: Option<&Path>) -> Value {
    let out = config_check(env, config);
    assert!(
        out.status.success(),
        "onramp config check refused {env:?} {config:?}: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The setting an `ONRAMP_*` variable names in the effective configuration:
/// `ONRAMP_MQTT__MAX_CONNECTIONS` is `mqtt.max_connections`. The loader
/// ignores an `ONRAMP_` name that is no setting at all (a shell may have
/// such variables), so a misspelt top-level name is caught here.
fn setting<'a>(cfg: &'a Value, var: &str) -> Option<&'a Value> {
    let path = var.strip_prefix("ONRAMP_")?.to_ascii_lowercase();
    path.split("__").try_fold(cfg, |v, key| v.get(key))
}

/// Every variable took effect with the value given.
fn assert_applied(cfg: &Value, env: &[(String, String)], source: &str) {
    for (var, value) in env {
        if var == "ONRAMP_CONFIG" {
            continue;
        }
        let got = setting(cfg, var)
            .unwrap_or_else(|| panic!("{source}: {var} is not a setting: the server ignores it"));
        let got = match got {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // The configuration check hides database passwords.
        let want = value.replace(":test-password@", ":***@");
        assert_eq!(got, want, "{source}: {var}");
    }
}

/// One Dockerfile instruction (`ENV`, `HEALTHCHECK`, ...) of the final stage,
/// each with its continuation lines joined.
fn instructions(dockerfile: &str, name: &str) -> Vec<String> {
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in last_stage.lines() {
        let line = line.trim();
        match current.as_mut() {
            Some(text) => text.push_str(line.trim_end_matches('\\')),
            None => match line.strip_prefix(name).and_then(|l| l.strip_prefix(' ')) {
                Some(rest) => current = Some(rest.trim_end_matches('\\').to_string()),
                None => continue,
            },
        }
        if !line.ends_with('\\') {
            found.extend(current.take());
        }
    }
    found
}

/// `ENV` settings of the Dockerfile's final stage.
fn dockerfile_env(dockerfile: &str) -> Vec<(String, String)> {
    instructions(dockerfile, "ENV")
        .iter()
        .flat_map(|i| i.split_whitespace())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The lines of one service in compose.yaml, without the service's own key.
fn compose_service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("  {name}:");
    compose
        .lines()
        .skip_while(|l| *l != start)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("   "))
        .collect()
}

/// A block of a service (`environment`, `ports`, `volumes`): its entries.
fn compose_block<'a>(service: &[&'a str], block: &str) -> Vec<&'a str> {
    let head = format!("    {block}:");
    service
        .iter()
        .skip_while(|l| **l != head)
        .skip(1)
        .take_while(|l| l.starts_with("      ") || l.trim_start().starts_with('#'))
        .map(|l| l.trim())
        .filter(|l| !l.starts_with('#'))
        .collect()
}

/// `${VAR:?message}` and `${VAR}` as Compose would fill them in.
fn interpolate(value: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('}').expect("a closed ${...}") + at;
        let name = rest[at + 2..end]
            .split([':', '-', '?'])
            .next()
            .unwrap_or_default();
        out.push_str(
            vars.get(name)
                .unwrap_or_else(|| panic!("compose.yaml uses ${{{name}}}, unknown to the test")),
        );
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn unquote(v: &str) -> String {
    let v = v.split(" #").next().unwrap_or(v).trim();
    v.trim_matches('"').to_string()
}

fn port_of(listen: &Value) -> u16 {
    listen
        .as_str()
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("not host:port: {listen}"))
}

#[test]
fn the_example_configuration_files_load_and_unknown_keys_are_refused() {
    for (file, ops) in [
        ("onramp.toml", "127.0.0.1:9464"),
        ("onramp.container.toml", "0.0.0.0:9464"),
    ] {
        let cfg = effective(&[], Some(&deploy(file)));
        assert_eq!(cfg["data_dir"], "/var/lib/onramp", "{file}");
        assert_eq!(cfg["ops"]["listen"], ops, "{file}");
        assert_eq!(cfg["http"]["metrics"], false, "{file}");
        assert_eq!(cfg["log"]["format"], "json", "{file}");
    }
    // The control: the loader refuses a misspelt key in a file, so loading
    // above means every key of the examples is a setting.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    let example = read(&deploy("onramp.toml"));
    std::fs::write(
        &typo,
        example.replace("[ops]\n", "[ops]\nlisten_addr = \"x\"\n"),
    )
    .unwrap();
    let out = config_check(&[], Some(&typo));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("listen_addr"),
        "{}",
        text(&out.stderr)
    );
    // A misspelt variable inside a section is refused too.
    let out = config_check(&[("ONRAMP_MQTT__MAX_CONECTIONS".into(), "5".into())], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max_conections"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_compose_and_dockerfile_settings_are_accepted_by_the_configuration_loader() {
    let compose = read(&deploy("compose.yaml"));
    let dockerfile = read(&deploy("Dockerfile"));
    let vars = BTreeMap::from([("ONRAMP_DB_PASSWORD", "test-password")]);
    let service = compose_service(&compose, "onramp");
    assert!(!service.is_empty(), "compose.yaml has no onramp service");

    let image_env = dockerfile_env(&dockerfile);
    assert!(
        image_env.iter().any(|(k, _)| k == "ONRAMP_OPS__LISTEN"),
        "{image_env:?}"
    );
    let compose_env: Vec<(String, String)> = compose_block(&service, "environment")
        .into_iter()
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("KEY: value");
            (k.to_string(), interpolate(&unquote(v), &vars))
        })
        .collect();
    assert!(compose_env.len() >= 3, "{compose_env:?}");
    for (k, _) in &compose_env {
        assert!(k.starts_with("ONRAMP_"), "{k}");
    }

    // ONRAMP_CONFIG names a file mounted into the container: use the
    // repository file that is mounted there.
    let mounted: &str = &compose_env
        .iter()
        .find(|(k, _)| k == "ONRAMP_CONFIG")
        .expect("compose.yaml sets ONRAMP_CONFIG")
        .1;
    let source = compose_block(&service, "volumes")
        .into_iter()
        .find_map(|v| {
            let v = v.trim_start_matches("- ");
            let mut parts = v.split(':');
            let (from, to) = (parts.next()?, parts.next()?);
            (to == mounted).then(|| deploy(from.trim_start_matches("./")))
        })
        .unwrap_or_else(|| panic!("no volume mounts {mounted}"));

    // The container's environment: the image's, then Compose's.
    let mut env: Vec<(String, String)> = image_env.clone();
    env.retain(|(k, _)| !compose_env.iter().any(|(c, _)| c == k));
    env.extend(
        compose_env
            .iter()
            .filter(|(k, _)| k != "ONRAMP_CONFIG")
            .cloned(),
    );
    let cfg = effective(&env, Some(&source));
    assert_applied(&cfg, &image_env, "deploy/Dockerfile");
    assert_applied(&cfg, &compose_env, "deploy/compose.yaml");
    assert_eq!(
        cfg["database_url"],
        "postgres://onramp:***@postgres:5432/onramp"
    );

    // Compose publishes exactly the device ports the server listens on there;
    // the ops port stays on the Compose network.
    let published: BTreeSet<u16> = compose_block(&service, "ports")
        .into_iter()
        .map(|p| {
            let p = unquote(p.trim_start_matches("- "));
            p.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        published,
        BTreeSet::from([
            port_of(&cfg["http"]["listen"]),
            port_of(&cfg["mqtt"]["listen"])
        ])
    );
    assert!(!published.contains(&port_of(&cfg["ops"]["listen"])));
    // Prometheus scrapes the ops listener by its Compose service name.
    let prometheus = read(&deploy("prometheus/prometheus.yml"));
    assert!(
        prometheus.contains(&format!("\"onramp:{}\"", port_of(&cfg["ops"]["listen"]))),
        "{prometheus}"
    );
    // Onramp waits for a healthy PostgreSQL, which has a health check.
    let postgres = compose_service(&compose, "postgres");
    assert!(postgres.iter().any(|l| l.contains("image: postgres:16")));
    assert!(postgres.iter().any(|l| l.trim() == "healthcheck:"));
    assert!(
        service
            .windows(2)
            .any(|w| w[0].trim() == "postgres:" && w[1].trim() == "condition: service_healthy"),
        "{service:?}"
    );
}

#[test]
fn the_dockerfile_health_check_and_ports_match_the_server_defaults() {
    let dockerfile = read(&deploy("Dockerfile"));
    let defaults = effective(&[], None);
    let in_image = effective(&dockerfile_env(&dockerfile), None);

    let exposed: BTreeSet<u16> = instructions(&dockerfile, "EXPOSE")
        .iter()
        .flat_map(|ports| ports.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    let listeners = ["http", "mqtt", "ops"].map(|l| port_of(&defaults[l]["listen"]));
    assert_eq!(exposed, BTreeSet::from(listeners));
    for l in ["http", "mqtt", "ops"] {
        assert_eq!(
            port_of(&in_image[l]["listen"]),
            port_of(&defaults[l]["listen"]),
            "{l}"
        );
    }

    // The check runs inside the container: loopback reaches the ops listener
    // when it listens on the container's loopback or on every address.
    let checks = instructions(&dockerfile, "HEALTHCHECK");
    assert_eq!(checks.len(), 1, "{checks:?}");
    let check = &checks[0];
    let url = check
        .split('"')
        .find(|w| w.starts_with("http://"))
        .expect("the HEALTHCHECK requests a URL");
    let ops_port = port_of(&in_image["ops"]["listen"]);
    assert_eq!(url, format!("http://127.0.0.1:{ops_port}/readyz"));
    let ops_host = in_image["ops"]["listen"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0;
    assert!(["0.0.0.0", "127.0.0.1"].contains(&ops_host), "{ops_host}");

    // Non-root, with the data directory as a volume.
    assert!(dockerfile.contains("\nUSER onramp\n"));
    let volume = format!("VOLUME [\"{}\"]", in_image["data_dir"].as_str().unwrap());
    assert!(dockerfile.contains(&volume), "{volume}");
    assert!(dockerfile.starts_with("# syntax=") && dockerfile.contains("FROM rust:1.95"));
    let ignore = read(&repo_root().join(".dockerignore"));
    for excluded in ["target/", ".venv/", "fuzz/target/", ".git"] {
        assert!(ignore.lines().any(|l| l == excluded), "{excluded}");
    }
}

#[test]
fn the_binary_needs_no_library_the_runtime_image_lacks() {
    // debian:bookworm-slim has glibc and libgcc; anything else (libssl, say)
    // would have to be installed in the Dockerfile's runtime stage.
    let out = Command::new("ldd").arg(bin()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let libs = text(&out.stdout);
    let provided = [
        "linux-vdso.so",
        "libgcc_s.so",
        "libm.so",
        "libc.so",
        "ld-linux",
    ];
    let extra: Vec<&str> = libs
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !provided.iter().any(|p| l.contains(p)))
        .collect();
    assert!(extra.is_empty(), "not in the runtime image: {extra:?}");
    assert!(libs.contains("libc.so"), "{libs}");
}

// ---- the dashboard ----

/// Every `onramp_*` name in the dashboard's queries (panel targets and
/// template variables).
fn dashboard_metrics(dashboard: &Value) -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if let (true, Value::String(s)) =
                        (["expr", "query", "definition"].contains(&k.as_str()), v)
                    {
                        out.push(s.clone());
                    }
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut queries = Vec::new();
    walk(dashboard, &mut queries);
    let mut names = BTreeSet::new();
    for q in queries {
        for (at, _) in q.match_indices("onramp_") {
            // Only whole identifiers: not `xonramp_`.
            if q[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let name: String = q[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_dashboard_metric_is_exported_by_a_running_server() {
    let dashboard: Value =
        serde_json::from_str(&read(&deploy("grafana/onramp-dashboard.json"))).unwrap();
    let wanted = dashboard_metrics(&dashboard);
    assert!(wanted.len() >= 25, "{wanted:?}");

    let s = Server::start(Backend::Sqlite);
    // Real activity: an EST enrolment and an MQTT connection with a message.
    let device = s.device("DASH-1");
    let (ok, err) = s.mosquitto_pub(&device, &["-t", "things/DASH-1/t", "-m", "x"]);
    assert!(ok, "{err}");
    let metrics = s.metrics();
    assert!(
        metric_value(
            &metrics,
            "onramp_enrolments_total{operation=\"simpleenroll\",outcome=\"success\"}"
        ) == Some(1.0)
            && metric_value(&metrics, "onramp_mqtt_connects_total{outcome=\"accepted\"}")
                .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the server does not export: {missing:?}\n{metrics}"
    );
    // And the other way: every metric family the server exports has a panel.
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() >= 25, "{metrics}");
    let unshown: Vec<&&str> = families
        .iter()
        .filter(|f| !wanted.iter().any(|w| w.starts_with(**f)))
        .collect();
    assert!(unshown.is_empty(), "no dashboard panel shows {unshown:?}");
}

// ---- docs/deploy.md ----

const GUIDE: &str = include_str!("../../../docs/deploy.md");

/// The fenced block after `<!-- example: NAME -->`.
fn example(name: &str) -> String {
    let marker = format!("<!-- example: {name} -->");
    let rest = GUIDE
        .split(&marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/deploy.md has no example {name}"));
    let body = rest.split("```").nth(1).expect("a fenced block");
    body.split_once('\n')
        .map(|(_, b)| b)
        .unwrap_or("")
        .to_string()
}

fn bash(script: &str, cwd: &Path, env: &[(&str, &str)]) -> String {
    let bin_dir = Path::new(bin()).parent().unwrap();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(cwd)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn the_deploy_guide_examples_work() {
    // The configuration check, from the repository root as written.
    let shown = bash(&example("config-check"), &repo_root(), &[]);
    let cfg: Value = serde_json::from_str(&shown).expect("config check prints JSON");
    assert_eq!(cfg["data_dir"], "/var/lib/onramp");

    // Probing the ops listener, against a running server's address.
    let s = Server::start(Backend::Sqlite);
    let _ = s.device("DOC-1");
    let ops = s.ops_addr.clone().unwrap();
    let probe = example("ops-probe");
    assert!(probe.contains("127.0.0.1:9464"), "{probe}");
    let out = bash(&probe.replace("127.0.0.1:9464", &ops), s.dir.path(), &[]);
    assert!(out.contains("\"status\":\"ready\""), "{out}");
    assert!(out.contains("onramp_devices{status=\"active\"} 1"), "{out}");

    // The Prometheus scrape job shown is the one shipped.
    let scrape = example("prometheus-scrape");
    let shipped = read(&deploy("prometheus/prometheus.yml"));
    for line in scrape.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            shipped.contains(line),
            "{line:?} is not in deploy/prometheus/prometheus.yml"
        );
    }
}

// ---- Prometheus alert rules ----

/// promtool from PATH, or the file `ONRAMP_PROMTOOL` names.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ONRAMP_PROMTOOL") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    })
}

#[test]
fn the_alert_rules_check_and_use_only_exported_metrics() {
    let path = deploy("prometheus/onramp-alerts.yml");
    let rules = read(&path);
    match promtool() {
        Some(tool) => {
            let out = Command::new(&tool)
                .args(["check", "rules"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool check rules: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        None => eprintln!(
            "promtool not found (Debian package `prometheus`, or set ONRAMP_PROMTOOL): \
             the rules' syntax is not checked, only their metric names"
        ),
    }
    let mut names = BTreeSet::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find("onramp_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    // Group names and alert names are not metrics.
    names.retain(|n| n.ends_with("_total") || !n.contains('-'));
    names.retain(|n| !n.starts_with("onramp-"));
    assert!(names.len() >= 8, "{names:?}");
    let s = Server::start(Backend::Sqlite);
    let metrics = s.metrics();
    let families: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !families.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the alert rules use metrics the server does not export: {missing:?}"
    );
}
