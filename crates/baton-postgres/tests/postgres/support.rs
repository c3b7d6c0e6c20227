//! Test support: the database from `BATON_TEST_DATABASE_URL`, a schema of
//! its own per test (created empty, dropped at the end, so runs and parallel
//! tests never meet), store options that keep connections few, and a small
//! current-thread runtime for the tests' own SQL.

use baton_postgres::PostgresOptions;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_postgres::NoTls;

/// The variable that names the test database.
pub const URL_VAR: &str = "BATON_TEST_DATABASE_URL";

/// The test database's URL; fails the test (never skips it) when unset.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set. The PostgreSQL tests need a database: start PostgreSQL and set, \
             for example, {URL_VAR}=postgres://postgres@127.0.0.1:5432/test (.ci/run does both)"
        )
    })
}

/// Runs SQL on a fresh connection to the test database (outside any store).
pub fn admin(sql: &str) {
    let sql = sql.to_owned();
    runtime().block_on(async move {
        let client = connect(None).await;
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Runs a query returning one bigint on a fresh connection in `schema`.
pub fn scalar(schema: &str, sql: &str) -> i64 {
    let sql = sql.to_owned();
    let schema = schema.to_owned();
    runtime().block_on(async move {
        let client = connect(Some(&schema)).await;
        client.query_one(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
    })
}

pub async fn connect(schema: Option<&str>) -> tokio_postgres::Client {
    let mut config: tokio_postgres::Config = url().parse().expect("a valid database URL");
    if let Some(schema) = schema {
        config.options(format!("-c search_path={schema}"));
    }
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {} ({e}); is PostgreSQL running?", url()));
    tokio::spawn(connection);
    client
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// A schema of this test's own, dropped (with everything in it) on drop.
pub struct Schema {
    pub name: String,
}

impl Schema {
    /// A fresh, unique, not yet existing schema name (the store creates it).
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let random = uuid::Uuid::now_v7().simple().to_string();
        let name = format!(
            "baton_t{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            &random[random.len() - 6..]
        );
        Self { name }
    }

    /// Store options on this schema: a small read pool, a short timeout,
    /// no LISTEN unless a test asks for it.
    pub fn options(&self) -> PostgresOptions {
        let mut options = PostgresOptions::new(&url())
            .expect("a valid database URL")
            .schema(self.name.clone())
            .readers(2)
            .listen(false)
            .io_timeout(Duration::from_secs(20));
        options.config.application_name(&self.name);
        options
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
        let done = runtime().block_on(async move {
            let client = connect(None).await;
            client.batch_execute(&sql).await
        });
        if let Err(e) = done {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}
