//! Reads: the queries behind `get`, `list`, `history`, `handoff`, `next_due`,
//! the directory's lookups and the diagnostics, each on a connection of the
//! deadpool read pool. Each query is one statement, so it reads one
//! snapshot; a failure (a lost connection, a timeout) is answered
//! `Unavailable` by the store, never with an older answer.

use crate::directory::{self, PRINCIPAL, PRINCIPALS, TOKEN, TOKENS};
use crate::error::StoreError;
use crate::leader::{self, Duty};
use crate::rows::{json, limit, task_and_head};
use baton_core::auth::{Principal, TokenRecord};
use baton_core::event::{decode_chain, decode_page, fold_base, handoff_from_history};
use baton_core::metrics::{Anomaly, Rollup};
use baton_core::store::{Delivery, Notice, PushConfig, StageGauge};
use baton_core::workflow::Workflow;
use baton_core::{Alert, Event, Handoff, HandoffId, Millis, Page, Task, TaskFilter, TaskId, TaskView};
use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;

async fn conn(pool: &Pool) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| StoreError::Disconnected(e.to_string()))
}

pub(crate) async fn get(pool: Pool, id: TaskId) -> Result<Option<TaskView>, StoreError> {
    let c = conn(&pool).await?;
    let st = c
        .prepare_cached(
            "SELECT t.body, t.head, p.body FROM tasks t JOIN payloads p ON p.task = t.id WHERE t.id = $1",
        )
        .await?;
    let Some(row) = c.query_opt(&st, &[&id.0]).await? else { return Ok(None) };
    let (task, head) = task_and_head(&row, 0)?;
    Ok(Some(TaskView { task, head, payload: row.try_get(2)? }))
}

/// A page of tasks in id order (oldest first), after the cursor.
pub(crate) async fn list(pool: Pool, filter: TaskFilter, page_size_max: usize) -> Result<Page, StoreError> {
    let size = match filter.limit {
        0 => page_size_max,
        n => n.min(page_size_max),
    };
    // Only the filters given appear in the SQL, so the planner can pick the
    // index for each combination; at most 16 texts, each prepared once.
    let stage = filter.stage.as_ref().map(|s| s.as_str().to_owned());
    let state = filter.state.map(|s| s.as_str().to_owned());
    let parent = filter.parent.map(|p| p.0);
    let after = filter.after.map(|a| a.0);
    let mut sql = String::from("SELECT body FROM tasks WHERE true");
    let mut args: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(5);
    if let Some(stage) = &stage {
        args.push(stage);
        sql.push_str(&format!(" AND stage = ${}", args.len()));
    }
    if let Some(state) = &state {
        args.push(state);
        sql.push_str(&format!(" AND state = ${}", args.len()));
    }
    if let Some(parent) = &parent {
        args.push(parent);
        sql.push_str(&format!(" AND parent = ${}", args.len()));
    }
    if let Some(after) = &after {
        args.push(after);
        sql.push_str(&format!(" AND id > ${}", args.len()));
    }
    // One row more than the page tells whether another page exists.
    let fetch = limit(size).saturating_add(1);
    args.push(&fetch);
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    let c = conn(&pool).await?;
    let st = c.prepare_cached(&sql).await?;
    let rows = c.query(&st, &args).await?;
    let more = rows.len() > size;
    let tasks = rows.iter().take(size).map(|row| json::<Task>(row, 0)).collect::<Result<Vec<_>, _>>()?;
    let next = if more { tasks.last().map(|t| t.id) } else { None };
    Ok(Page { tasks, next })
}

pub(crate) async fn history(pool: Pool, id: TaskId) -> Result<Vec<Event>, StoreError> {
    let c = conn(&pool).await?;
    let rows = event_rows(&c, id, 1, u64::MAX).await?;
    Ok(decode_chain(id, &rows)?)
}

/// The stored events of `id` with versions in `from..to`, oldest first.
async fn event_rows(c: &Object, id: TaskId, from: u64, to: u64) -> Result<Vec<(u64, String)>, StoreError> {
    let st = c
        .prepare_cached("SELECT version, body FROM events WHERE task = $1 AND version >= $2 AND version < $3 ORDER BY version")
        .await?;
    let bound = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    c.query(&st, &[&id.0, &bound(from), &bound(to)]).await?.iter().map(event_row).collect()
}

/// A stored event as `(version, body)`.
fn event_row(row: &tokio_postgres::Row) -> Result<(u64, String), StoreError> {
    let version: i64 = row.try_get(0)?;
    let version = u64::try_from(version).map_err(|e| StoreError::Row(format!("event version: {e}")))?;
    Ok((version, row.try_get(1)?))
}

pub(crate) async fn history_before(
    pool: Pool,
    id: TaskId,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<Event>, StoreError> {
    let c = conn(&pool).await?;
    let st = c
        .prepare_cached(
            "SELECT version, body FROM events WHERE task = $1 AND version < $2 ORDER BY version DESC LIMIT $3",
        )
        .await?;
    let before = before.map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let page = c
        .query(&st, &[&id.0, &before, &limit])
        .await?
        .iter()
        .map(event_row)
        .collect::<Result<Vec<_>, _>>()?;
    let base = match page.last().and_then(|(v, body)| fold_base(*v, body)) {
        Some(range) => event_rows(&c, id, range.start, range.end).await?,
        None => Vec::new(),
    };
    Ok(decode_page(id, &base, &page)?)
}

pub(crate) async fn handoff(pool: Pool, id: HandoffId) -> Result<Option<Handoff>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached("SELECT task FROM handoff_tasks WHERE id = $1").await?;
    let Some(row) = c.query_opt(&st, &[&id.0]).await? else { return Ok(None) };
    let task = TaskId(row.try_get(0)?);
    let events = decode_chain(task, &event_rows(&c, task, 1, u64::MAX).await?)?;
    Ok(handoff_from_history(&events, id))
}

pub(crate) async fn next_due(pool: Pool) -> Result<Option<Millis>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached("SELECT min(due_at) FROM tasks WHERE due_at IS NOT NULL").await?;
    Ok(c.query_one(&st, &[]).await?.try_get(0)?)
}

/// Alerts in the order they were raised, after the `after` cursor (an alert
/// sequence number), at most `max`.
pub(crate) async fn alerts(pool: Pool, after: i64, max: usize) -> Result<Vec<(i64, Alert)>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached("SELECT id, body FROM alerts WHERE id > $1 ORDER BY id LIMIT $2").await?;
    let rows = c.query(&st, &[&after, &limit(max)]).await?;
    rows.iter().map(|row| Ok((row.try_get(0)?, json(row, 1)?))).collect()
}

pub(crate) async fn duties(pool: Pool) -> Result<Vec<Duty>, StoreError> {
    let c = conn(&pool).await?;
    let rows = c.query(leader::LIST, &[]).await?;
    rows.iter().map(leader::duty).collect()
}

/// Takes or renews one duty; true if this replica holds it.
pub(crate) async fn hold_duty(
    pool: Pool,
    duty: &'static str,
    replica: String,
    now: Option<Millis>,
    lease_ms: Millis,
) -> Result<bool, StoreError> {
    let c = conn(&pool).await?;
    leader::hold(&c, duty, &replica, now, lease_ms).await
}

/// Live tasks per stage, by name, at most `max` stages, from the counters the
/// writers keep (`stage_counts`, summed over each stage's slot rows) and, for
/// the oldest ready task, one seek per stage into `tasks_ready_since`:
/// O(stages) whatever the backlog. One statement, so one snapshot.
pub(crate) async fn stage_gauges(pool: Pool, max: usize) -> Result<Vec<StageGauge>, StoreError> {
    gauges(
        pool,
        "SELECT c.stage, c.ready, c.held, c.blocked, \
         (SELECT t.ready_since FROM tasks t WHERE t.ready AND t.stage = c.stage \
          ORDER BY t.ready_since LIMIT 1) \
         FROM (SELECT stage, sum(live)::bigint AS live, sum(ready)::bigint AS ready, \
               sum(held)::bigint AS held, sum(blocked)::bigint AS blocked \
               FROM stage_counts GROUP BY stage) c \
         WHERE c.live > 0 ORDER BY c.stage LIMIT $1",
        max,
    )
    .await
}

/// The same answer counted afresh from every live task (`tasks_due` holds
/// exactly them): O(live tasks), for checks against the counters. The oldest
/// ready task's `since` is read from the row's body, not the extracted column,
/// so the check covers that column too.
pub(crate) async fn stage_gauges_recount(pool: Pool, max: usize) -> Result<Vec<StageGauge>, StoreError> {
    gauges(
        pool,
        "SELECT stage, count(*) FILTER (WHERE ready), count(*) FILTER (WHERE state = 'held'), \
         count(*) FILTER (WHERE state = 'blocked'), \
         min(((body::jsonb) -> 'state' ->> 'since')::bigint) FILTER (WHERE ready) \
         FROM tasks WHERE due_at IS NOT NULL GROUP BY stage ORDER BY stage LIMIT $1",
        max,
    )
    .await
}

/// Runs a gauge query whose rows are (stage, ready, held, blocked, oldest).
async fn gauges(pool: Pool, sql: &str, max: usize) -> Result<Vec<StageGauge>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached(sql).await?;
    let rows = c.query(&st, &[&limit(max)]).await?;
    let count = |row: &tokio_postgres::Row, i| -> Result<u64, StoreError> {
        Ok(u64::try_from(row.try_get::<_, i64>(i)?).unwrap_or(0))
    };
    rows.iter()
        .map(|row| {
            Ok(StageGauge {
                stage: baton_core::StageName::new(row.try_get::<_, String>(0)?),
                ready: count(row, 1)?,
                held: count(row, 2)?,
                blocked: count(row, 3)?,
                oldest_ready_since: row.try_get(4)?,
            })
        })
        .collect()
}

/// Takes or renews every duty (the store's renewal loop).
pub(crate) async fn hold_duties(
    pool: Pool,
    replica: String,
    now: Option<Millis>,
    lease_ms: Millis,
) -> Result<(), StoreError> {
    let c = conn(&pool).await?;
    for duty in leader::DUTIES {
        leader::hold(&c, duty, &replica, now, lease_ms).await?;
    }
    Ok(())
}

pub(crate) async fn principal(pool: Pool, name: String) -> Result<Option<Principal>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached(PRINCIPAL).await?;
    c.query_opt(&st, &[&name]).await?.map(|row| directory::principal_row(&row)).transpose()
}

pub(crate) async fn principals(pool: Pool) -> Result<Vec<Principal>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached(PRINCIPALS).await?;
    c.query(&st, &[]).await?.iter().map(directory::principal_row).collect()
}

pub(crate) async fn token(pool: Pool, id: String) -> Result<Option<TokenRecord>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached(TOKEN).await?;
    c.query_opt(&st, &[&id]).await?.map(|row| directory::token_row(&row)).transpose()
}

pub(crate) async fn tokens(pool: Pool) -> Result<Vec<TokenRecord>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached(TOKENS).await?;
    c.query(&st, &[]).await?.iter().map(directory::token_row).collect()
}

pub(crate) async fn workflow(
    pool: Pool,
    name: String,
    version: Option<u32>,
) -> Result<Option<Workflow>, StoreError> {
    let c = conn(&pool).await?;
    let row = match version {
        Some(v) => {
            let st = c.prepare_cached(crate::tx::WORKFLOW_VERSION).await?;
            c.query_opt(&st, &[&name, &i64::from(v)]).await?
        }
        None => {
            let st = c.prepare_cached(crate::tx::WORKFLOW_LATEST).await?;
            c.query_opt(&st, &[&name]).await?
        }
    };
    row.map(|r| json(&r, 0)).transpose()
}

/// The latest version of every workflow, by name, at most `max`.
pub(crate) async fn workflows(pool: Pool, max: usize) -> Result<Vec<Workflow>, StoreError> {
    let c = conn(&pool).await?;
    let st = c
        .prepare_cached("SELECT DISTINCT ON (name) body FROM workflows ORDER BY name, version DESC LIMIT $1")
        .await?;
    c.query(&st, &[&limit(max)]).await?.iter().map(|row| json(row, 0)).collect()
}

/// Live tasks due at or before `before`, earliest first.
pub(crate) async fn overdue(pool: Pool, before: Millis, max: usize) -> Result<Vec<Task>, StoreError> {
    let c = conn(&pool).await?;
    let st = c
        .prepare_cached(
            "SELECT body FROM tasks WHERE due_at IS NOT NULL AND due_at <= $1 ORDER BY due_at LIMIT $2",
        )
        .await?;
    c.query(&st, &[&before, &limit(max)]).await?.iter().map(|row| json(row, 0)).collect()
}

/// Rows `(id, body)` after `after`, in id order, with their JSON bodies parsed.
async fn sequence<T: serde::de::DeserializeOwned>(
    pool: Pool,
    sql: &'static str,
    after: u64,
    max: usize,
) -> Result<Vec<(u64, T)>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached(sql).await?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = c.query(&st, &[&after, &limit(max)]).await?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get(0)?;
            Ok((id.max(0).unsigned_abs(), json(row, 1)?))
        })
        .collect()
}

pub(crate) async fn notices(pool: Pool, after: u64, max: usize) -> Result<Vec<(u64, Notice)>, StoreError> {
    sequence(pool, "SELECT id, body FROM notices WHERE id > $1 ORDER BY id LIMIT $2", after, max).await
}

pub(crate) async fn task_notices(
    pool: Pool,
    task: TaskId,
    after: u64,
    max: usize,
) -> Result<Vec<(u64, Notice)>, StoreError> {
    let c = conn(&pool).await?;
    let st = c
        .prepare_cached("SELECT id, body FROM notices WHERE task = $1 AND id > $2 ORDER BY id LIMIT $3")
        .await?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = c.query(&st, &[&task.0, &after, &limit(max)]).await?;
    rows.iter()
        .map(|row| {
            let id: i64 = row.try_get(0)?;
            Ok((id.max(0).unsigned_abs(), json(row, 1)?))
        })
        .collect()
}

pub(crate) async fn deliveries(
    pool: Pool,
    after: u64,
    max: usize,
) -> Result<Vec<(u64, Delivery)>, StoreError> {
    sequence(pool, "SELECT id, body FROM deliveries WHERE id > $1 ORDER BY id LIMIT $2", after, max).await
}

pub(crate) async fn last_delivery(pool: Pool, webhook: String) -> Result<Option<Delivery>, StoreError> {
    let c = conn(&pool).await?;
    let st =
        c.prepare_cached("SELECT body FROM deliveries WHERE webhook = $1 ORDER BY id DESC LIMIT 1").await?;
    let body: Option<String> = c.query_opt(&st, &[&webhook]).await?.map(|r| r.try_get(0)).transpose()?;
    Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
}

/// Push configs of `task` (or every task), in (task, id) order, at most `max`.
pub(crate) async fn push_configs(
    pool: Pool,
    task: Option<TaskId>,
    max: usize,
) -> Result<Vec<PushConfig>, StoreError> {
    let c = conn(&pool).await?;
    let rows = match task {
        Some(task) => {
            let st = c
                .prepare_cached("SELECT body FROM push_configs WHERE task = $1 ORDER BY id LIMIT $2")
                .await?;
            c.query(&st, &[&task.0, &limit(max)]).await?
        }
        None => {
            let st = c.prepare_cached("SELECT body FROM push_configs ORDER BY task, id LIMIT $1").await?;
            c.query(&st, &[&limit(max)]).await?
        }
    };
    rows.iter()
        .map(|r| {
            let body: String = r.try_get(0)?;
            Ok(serde_json::from_str(&body)?)
        })
        .collect()
}

pub(crate) async fn delivery_cursor(pool: Pool, webhook: String) -> Result<Option<u64>, StoreError> {
    let c = conn(&pool).await?;
    let st = c.prepare_cached("SELECT max(notice) FROM deliveries WHERE webhook = $1 AND final").await?;
    let n: Option<i64> = c.query_one(&st, &[&webhook]).await?.try_get(0)?;
    Ok(n.and_then(|n| u64::try_from(n).ok()))
}

/// Rollups of buckets in `from..to`, by bucket then key, at most `limit`.
pub(crate) async fn rollups(
    pool: Pool,
    from: Millis,
    to: Millis,
    limit: usize,
) -> Result<Vec<Rollup>, StoreError> {
    let c = conn(&pool).await?;
    let st = c
        .prepare_cached(
            "SELECT bucket, key, body FROM rollups WHERE bucket >= $1 AND bucket < $2 ORDER BY bucket, key LIMIT $3",
        )
        .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for row in c.query(&st, &[&from, &to, &limit]).await? {
        let key: String = row.try_get(1)?;
        let body: String = row.try_get(2)?;
        out.push(Rollup {
            bucket: row.try_get(0)?,
            key: serde_json::from_str(&key)?,
            counts: serde_json::from_str(&body)?,
        });
    }
    Ok(out)
}

/// Anomalies after `after`, in order, only open ones when `open_only`.
pub(crate) async fn anomalies(
    pool: Pool,
    after: u64,
    limit: usize,
    open_only: bool,
) -> Result<Vec<(u64, Anomaly)>, StoreError> {
    let c = conn(&pool).await?;
    let sql = if open_only {
        "SELECT id, body FROM anomalies WHERE open AND id > $1 ORDER BY id LIMIT $2"
    } else {
        "SELECT id, body FROM anomalies WHERE id > $1 ORDER BY id LIMIT $2"
    };
    let st = c.prepare_cached(sql).await?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut out = Vec::new();
    for row in c.query(&st, &[&after, &limit]).await? {
        let id: i64 = row.try_get(0)?;
        out.push((id.unsigned_abs(), json(&row, 1)?));
    }
    Ok(out)
}
