//! Helpers for tests that need a real database of each kind.

/// The PostgreSQL server tests use: `ONRAMP_TEST_DATABASE_URL`, or the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("ONRAMP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Creates an empty PostgreSQL database for one test and returns its URL.
/// Fails loudly when PostgreSQL cannot be reached: a store test never skips.
pub async fn scratch_postgres() -> String {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let name = format!("onramp_t_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is required for this test: {e}"));
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
    pool.close().await;
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("database URL {admin} has no database name"),
    }
}

/// A SQLite database file in `dir`.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("onramp.db").display())
}
