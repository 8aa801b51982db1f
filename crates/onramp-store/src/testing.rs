//! Helpers for tests that need a real database of each kind.
//!
//! PostgreSQL scratch databases are named `onramp_t_<run>_<uuid>`, where
//! `<run>` is `<unix seconds>_<random>`: `scripts/test` drops exactly its own
//! run's databases when it ends and `scripts/services.sh` drops only those
//! whose run started more than a day ago, so two runs sharing one server
//! never delete each other's databases.

use std::sync::OnceLock;
use std::time::Duration;

/// The one place that says how to get a test database.
const FIX_HINT: &str = "run `scripts/services.sh` (it installs and starts PostgreSQL and creates \
     the test role and database; `scripts/test` runs it for you) and export the \
     ONRAMP_TEST_DATABASE_URL it prints, or point ONRAMP_TEST_DATABASE_URL at a PostgreSQL \
     server where that role may create databases";

/// How long the reachability check waits before it calls PostgreSQL unreachable.
/// Far shorter than the pool's 30 s default, which made every PostgreSQL test
/// hang that long before failing.
pub const REACHABILITY_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL server tests use: `ONRAMP_TEST_DATABASE_URL`, or the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("ONRAMP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// `url` with any password replaced, fit for a failure message.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The userinfo ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => {
                format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Connects once and runs `SELECT 1`, giving up after `timeout`.
/// The error names the server (without its password) and the fix.
pub async fn check_postgres(url: &str, timeout: Duration) -> Result<(), String> {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let shown = redact_url(url);
    // One plain connection, no pool: a pool retries a refused connection
    // until its timeout and then reports only that it timed out.
    let attempt = async {
        let mut conn = sqlx::AnyConnection::connect(url).await?;
        conn.execute("SELECT 1").await?;
        conn.close().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "PostgreSQL at {shown} is required for this test and refused it: {e}; {FIX_HINT}"
        )),
        Err(_) => Err(format!(
            "PostgreSQL at {shown} is required for this test and did not answer within {}s; {FIX_HINT}",
            timeout.as_secs()
        )),
    }
}

/// Checks a server once per process: the first caller connects, every later
/// caller gets the same answer at once, so an unreachable server fails a
/// whole test binary within seconds instead of once per test.
pub struct ReachabilityGate {
    answer: tokio::sync::OnceCell<Result<(), String>>,
}

impl ReachabilityGate {
    pub const fn new() -> Self {
        ReachabilityGate {
            answer: tokio::sync::OnceCell::const_new(),
        }
    }

    pub async fn check(&self, url: &str, timeout: Duration) -> Result<(), String> {
        self.answer
            .get_or_init(|| check_postgres(url, timeout))
            .await
            .clone()
    }
}

impl Default for ReachabilityGate {
    fn default() -> Self {
        Self::new()
    }
}

static GATE: ReachabilityGate = ReachabilityGate::new();

/// This process's run id: `ONRAMP_TEST_RUN_ID` (set by `scripts/test`), or
/// one made up now.
pub fn run_id() -> &'static str {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| match std::env::var("ONRAMP_TEST_RUN_ID") {
        Ok(id) => match valid_run_id(&id) {
            true => id,
            false => panic!(
                "ONRAMP_TEST_RUN_ID must be `<unix seconds>_<up to 8 of a-z0-9>`, got {id:?}"
            ),
        },
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("{now}_{}", &random[..8])
        }
    })
}

/// `<unix seconds>_<1 to 8 of a-z0-9>`: what scripts/services.sh can age and
/// what keeps every scratch name within PostgreSQL's 63-byte identifiers.
pub fn valid_run_id(id: &str) -> bool {
    match id.split_once('_') {
        Some((secs, tag)) => {
            (1..=12).contains(&secs.len())
                && secs.bytes().all(|b| b.is_ascii_digit())
                && (1..=8).contains(&tag.len())
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        }
        None => false,
    }
}

/// The scratch database name for one test of run `run`.
pub fn scratch_name(run: &str, unique: uuid::Uuid) -> String {
    format!("onramp_t_{run}_{}", unique.simple())
}

/// Creates an empty PostgreSQL database for one test and returns its URL.
/// Fails loudly, and within seconds, when PostgreSQL cannot be reached:
/// a store test never skips.
pub async fn scratch_postgres() -> String {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    if let Err(why) = GATE.check(&admin, REACHABILITY_TIMEOUT).await {
        panic!("{why}");
    }
    let name = scratch_name(run_id(), uuid::Uuid::new_v4());
    let shown = redact_url(&admin);
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {shown}: {e}; {FIX_HINT}"));
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name} on {shown}: {e}"));
    pool.close().await;
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("database URL {shown} has no database name"),
    }
}

/// A SQLite database file in `dir`.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("onramp.db").display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A port nothing listens on: bound, then released.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported_with_its_fix_and_without_the_password() {
        let url = format!(
            "postgres://tester:s3cret-pw@127.0.0.1:{}/test",
            closed_port()
        );
        let err = check_postgres(&url, Duration::from_secs(3))
            .await
            .expect_err("nothing listens there");
        assert!(err.contains("refused it"), "{err}");
        assert!(err.contains("scripts/services.sh"), "{err}");
        assert!(err.contains("ONRAMP_TEST_DATABASE_URL"), "{err}");
        assert!(err.contains("tester:***@127.0.0.1"), "{err}");
        assert!(!err.contains("s3cret-pw"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_given_up_on_after_the_timeout() {
        // Accepts TCP and then says nothing, as a hung or firewalled server would.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                open.push(sock);
            }
        });
        let url = format!("postgres://postgres@127.0.0.1:{port}/test");
        let timeout = Duration::from_secs(2);
        let started = Instant::now();
        let err = check_postgres(&url, timeout)
            .await
            .expect_err("a silent server");
        // It did wait for the server (not a refusal)...
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
        assert!(err.contains("did not answer within 2s"), "{err}");
        assert!(err.contains("scripts/services.sh"), "{err}");
        held.abort();
    }

    #[tokio::test]
    async fn the_gate_asks_the_server_once_and_repeats_a_failure_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = accepted.clone();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(sock);
            }
        });
        let url = format!("postgres://postgres@127.0.0.1:{port}/test");
        let gate = ReachabilityGate::new();
        let first = gate.check(&url, Duration::from_secs(1)).await;
        assert!(first.is_err());
        let connections = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(connections >= 1, "the first check connected");
        let second = gate.check(&url, Duration::from_secs(1)).await;
        assert_eq!(first, second);
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            connections,
            "the second check must not connect again"
        );
        held.abort();
    }

    /// The positive control: the server the suite uses passes the same check.
    #[tokio::test]
    async fn the_test_server_passes_the_check() {
        check_postgres(&postgres_admin_url(), REACHABILITY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn passwords_are_redacted_and_nothing_else_changes() {
        assert_eq!(
            redact_url("postgres://u:p@w:rd@db.example:5432/test"),
            "postgres://u:***@db.example:5432/test"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn scratch_names_carry_the_run_and_fit_postgres_identifiers() {
        let run = "1765000000_ab12cd34";
        assert!(valid_run_id(run));
        let name = scratch_name(run, uuid::Uuid::new_v4());
        assert!(name.starts_with("onramp_t_1765000000_ab12cd34_"), "{name}");
        assert!(name.len() <= 63, "{} bytes: {name}", name.len());
        assert!(valid_run_id(run_id()), "{}", run_id());
    }

    #[test]
    fn run_ids_that_could_not_be_aged_or_quoted_are_refused() {
        for bad in [
            "",
            "1765000000",
            "abc_def",
            "1765000000_",
            "1765000000_TOO",
            "1765000000_toolongtag",
            "1765000000_a;drop",
            "1765000000_a_b",
        ] {
            assert!(!valid_run_id(bad), "{bad:?}");
        }
    }
}
