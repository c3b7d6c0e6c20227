//! PostgreSQL out of disk space under a running `baton serve`.
//!
//! Goal: when PostgreSQL cannot extend Baton's tables (SQLSTATE 53100,
//! `disk_full`), writes are answered 507 `storage_full`, never ok; reads
//! keep serving; once space is freed, writes succeed again without a
//! restart; every acknowledged submit is there at the end, and nothing
//! refused is.
//!
//! Method: a private cluster (`Cluster` of `cli/postgres.rs`) whose
//! database's `default_tablespace` is a tablespace on a small tmpfs the test
//! mounts (and unmounts on drop, also when the test fails), so Baton's
//! schema is created there while the WAL stays on the ordinary disk (a
//! full WAL disk makes PostgreSQL PANIC, which is another fault). A filler
//! file leaves little room; submits of incompressible 64 KiB payloads then
//! fill the rest. The evidence is the 507 answers and the tmpfs's usage
//! (statfs, through `stat -f`) when the first one came; without them the
//! test fails. The tmpfs is the test kit's `SmallDisk`, as in the SQLite
//! store's disk-full test.

use super::postgres::{Cluster, Replica, Schema};
use baton_core::{Store, TaskFilter};
use baton_testkit::disk::SmallDisk;
use baton_testkit::{block_on, check_store};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

/// The tmpfs holding Baton's tablespace.
const DISK: &str = "8m";
/// The room the filler leaves for Baton's tables to grow into.
const ROOM: u64 = 768 * 1024;
/// Each payload: base64-alphabet noise, which PostgreSQL's TOAST
/// compression cannot shrink, so every submit takes its size on disk.
const PAYLOAD_BYTES: usize = 64 * 1024;
/// Refusals to see before freeing space.
const REFUSALS: usize = 3;
/// Submits tried before the test gives up on filling the disk.
const SUBMITS_MAX: usize = 400;

/// Hands the disk to the `postgres` user (a tablespace's directory must
/// belong to the server's user).
fn give_to_postgres(disk: &SmallDisk) {
    let owned = Command::new("chown").arg("postgres").arg(disk.path()).status().expect("chown");
    assert!(owned.success(), "chown the tmpfs to postgres");
}

/// Runs one statement on the cluster (outside a transaction block, as
/// `CREATE TABLESPACE` needs).
fn sql(url: &str, statement: &str) -> Vec<tokio_postgres::SimpleQueryMessage> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.simple_query(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"))
    })
}

/// `len` characters of base64-alphabet noise (xorshift; no two calls alike).
fn noise(len: usize, seed: &mut u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ALPHABET[(*seed >> 58) as usize] as char
        })
        .collect()
}

#[test]
fn a_full_postgresql_disk_answers_507_until_space_returns_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Dropped in reverse: the replica, the schema, the cluster, then the disk.
    let disk = SmallDisk::mount(DISK);
    let cluster = Cluster::start();
    if cluster.as_postgres {
        give_to_postgres(&disk);
    }
    let location = disk.path().display().to_string();
    sql(&cluster.url(), &format!("CREATE TABLESPACE small LOCATION '{location}'"));
    sql(&cluster.url(), "ALTER DATABASE postgres SET default_tablespace = small");
    let schema = Schema::on(cluster.url(), "full");
    let serve = Replica::start(dir, &schema, &[]);
    let query = format!(
        "SELECT count(*) FILTER (WHERE tablespace = 'small') || ' of ' || count(*) FROM pg_tables \
         WHERE schemaname = '{}'",
        schema.0
    );
    let placed = sql(&cluster.url(), &query)
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row");
    let (small, all) = placed.split_once(" of ").expect("N of M");
    assert!(all != "0" && small == all, "every table of Baton's schema is on the small tablespace: {placed}");

    let token = serve.admin_token.clone().expect("an empty schema gets an admin token");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let call = |path: &str, body: Option<Value>| {
        let url = format!("{}{path}", serve.address);
        let request = match body {
            Some(body) => http.post(&url).json(&body),
            None => http.get(&url),
        };
        rt.block_on(async {
            let response = request.bearer_auth(&token).send().await.expect("baton serve answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut submit = |acked: &mut Vec<(String, String)>| {
        let payload = noise(PAYLOAD_BYTES, &mut seed);
        let (status, body) = call("/v1/tasks", Some(json!({"stage": "s", "payload": payload})));
        if status == 201 {
            acked.push((body["id"].as_str().expect("an id").to_owned(), payload));
        }
        (status, body)
    };
    for _ in 0..4 {
        let (status, body) = submit(&mut acked);
        assert_eq!(status, 201, "room to start: {body}");
    }

    let (_, available) = disk.usage();
    let filler = disk.path().join("filler");
    let room = ROOM.min(available);
    std::fs::write(&filler, vec![0u8; (available - room) as usize]).expect("write the filler");

    let mut refusals = Vec::new();
    let mut full_at = None;
    for _ in 0..SUBMITS_MAX {
        let (status, body) = submit(&mut acked);
        match status {
            201 => {}
            507 => {
                assert_eq!(body["code"], "storage_full", "{body}");
                full_at.get_or_insert_with(|| disk.usage());
                refusals.push(body);
                if refusals.len() == REFUSALS {
                    break;
                }
            }
            _ => panic!("a full disk answers 201 or 507 storage_full, not {status}: {body}"),
        }
    }
    assert_eq!(refusals.len(), REFUSALS, "the disk never filled: no 507 in {SUBMITS_MAX} submits");
    let (total, free) = full_at.expect("usage at the first refusal");
    eprintln!(
        "first 507 after {} acknowledged submits: tmpfs {} of {} bytes used ({} free); {}",
        acked.len(),
        total - free,
        total,
        free,
        refusals[0]
    );
    assert!(free < PAYLOAD_BYTES as u64, "the refusals came with the disk full: {free} bytes free");
    let (first, _) = &acked[0];
    let (status, body) = call(&format!("/v1/tasks/{first}"), None);
    assert_eq!(status, 200, "reads serve on a full disk: {body}");
    assert_eq!(call("/readyz", None).0, 200, "a full disk is not an outage");

    std::fs::remove_file(&filler).expect("free the space");
    let (status, body) = submit(&mut acked);
    assert_eq!(status, 201, "writes succeed again once space is freed, without a restart: {body}");

    for (id, payload) in &acked {
        let (status, body) = call(&format!("/v1/tasks/{id}"), None);
        assert_eq!(status, 200, "acknowledged {id} lost: {body}");
        assert_eq!(body["payload"].as_str(), Some(payload.as_str()), "task {id}");
    }
    serve.stop();
    let store = schema.store();
    let all = block_on(store.list(TaskFilter { limit: 1_000, ..TaskFilter::default() })).expect("list");
    assert_eq!(all.tasks.len(), acked.len(), "nothing refused was committed");
    check_store(&store).unwrap_or_else(|problems| panic!("{}", problems.join("\n")));
}
