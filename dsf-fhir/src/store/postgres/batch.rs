//! Point lookups gathered into batches on a shared connection.
//!
//! A lookup joins its slot's queue. Up to [`BATCHES_OUT`] batches per shared connection are on
//! the wire at once; lookups that arrive meanwhile wait and leave together with the next
//! batch. Lookups of one statement text in a batch become one statement: the text runs once
//! per row of its parameters, unnested from arrays (`CROSS JOIN LATERAL`), and each answer row
//! carries the number of the lookup it belongs to. So a burst of reads by id costs the database
//! one statement (one executor start, one snapshot, one answer) instead of one per read, which
//! on a host where PostgreSQL shares the cores with the FHIR server is what limits reads
//! (docs/performance.md). A lone lookup goes out as it is, so light load pays nothing for this.

use super::{storage_error, timed_out, Pool, SharedConnection, SharedSlot, STATEMENT_CACHE};
use crate::store::sql::{Sql, SqlValue};
use crate::{Error, Result};
use dsf_core::ErrorChain;
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// How many batches one shared connection has on the wire at once: while one is answered,
/// the next gathers and goes out, so the database never waits for the FHIR server to collect.
/// On two cores, one batch out served no more reads than no batching at all, and three or
/// four no more than two, with a longer tail (docs/performance.md).
const BATCHES_OUT: usize = 2;

/// How many lookups one batch takes at most; more wait for the next batch.
const MAX_BATCH: usize = 256;

pub(super) struct Lookup {
    sql: Sql,
    reply: oneshot::Sender<Result<Vec<Row>>>,
}

/// A shared connection's waiting lookups and how many batches are out.
#[derive(Default)]
pub(super) struct Queue {
    waiting: Vec<Lookup>,
    out: usize,
}

/// The batched form of a statement text, for parameters of these kinds (its arrays are cast
/// to them).
pub(super) struct BatchedText {
    text: Arc<str>,
    kinds: Box<[Kind]>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Text,
    Int,
    Bytes,
}

fn kind(value: &SqlValue) -> Kind {
    match value {
        SqlValue::Text(_) => Kind::Text,
        SqlValue::Int(_) => Kind::Int,
        SqlValue::Bytes(_) => Kind::Bytes,
    }
}

/// Runs `sql`, a point lookup, on one of the pool's shared connections.
pub(super) async fn lookup(pool: &Arc<Pool>, sql: Sql) -> Result<Vec<Row>> {
    let index = pool.next_shared.fetch_add(1, Ordering::Relaxed) % pool.shared.len();
    let slot = &pool.shared[index];
    let (reply, answer) = oneshot::channel();
    let start = {
        let mut queue = slot.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.waiting.push(Lookup { sql, reply });
        let start = queue.out < BATCHES_OUT;
        if start {
            queue.out += 1;
        }
        start
    };
    if start {
        // Its own task, so that a caller that goes away does not take its batch mates'
        // answers with it.
        tokio::spawn(drain(pool.clone(), index));
    }
    // The batch's statement is bounded; this bounds the wait for a turn behind batches that
    // hang on a database that stopped answering, too.
    let limit = pool.options.answer_timeout();
    tokio::time::timeout(limit, answer)
        .await
        .map_err(|_| timed_out("a point lookup", limit))?
        .map_err(|_| Error::storage_fault("a point lookup was dropped unanswered"))?
}

/// Sends batches from the slot's queue until it is empty.
async fn drain(pool: Arc<Pool>, index: usize) {
    let slot = &pool.shared[index];
    let mut out = Out { slot, done: false };
    loop {
        let batch = {
            let mut queue = slot.queue.lock().unwrap_or_else(|p| p.into_inner());
            if queue.waiting.is_empty() {
                queue.out -= 1;
                out.done = true;
                return;
            }
            if queue.waiting.len() <= MAX_BATCH {
                std::mem::take(&mut queue.waiting)
            } else {
                queue.waiting.drain(..MAX_BATCH).collect()
            }
        };
        send(&pool, slot, batch).await;
    }
}

/// Counts a batch sender out of its slot however it ends. Ended by anything but an empty
/// queue (its task was dropped with the runtime), it fails the lookups still waiting if no
/// other sender is left to take them.
struct Out<'a> {
    slot: &'a SharedSlot,
    done: bool,
}

impl Drop for Out<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.slot.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.out -= 1;
        if queue.out == 0 {
            // Dropping the senders answers their callers with an error.
            queue.waiting.clear();
        }
    }
}

/// The lookups of one statement text in a batch.
struct Group {
    lookups: Vec<Lookup>,
    /// The text they go out as, one statement over arrays of their parameters; `None` for
    /// a lookup that goes alone.
    batched: Option<Arc<str>>,
}

impl Group {
    /// The statement this group sends.
    fn text(&self) -> &str {
        match &self.batched {
            Some(text) => text,
            None => &self.lookups[0].sql.text,
        }
    }
}

/// One batch: every group's statement pipelined on the shared connection, under one time
/// limit, and each answer row handed to its lookup.
async fn send(pool: &Pool, slot: &SharedSlot, batch: Vec<Lookup>) {
    let conn = match pool.shared_connection(slot).await {
        Ok(conn) => conn,
        Err(e) => return fail(batch, &e),
    };
    let groups = group(slot, batch);
    let prepared = match prepare(&conn, &groups, pool).await {
        Ok(prepared) => prepared,
        Err(e) => {
            slot.retire(&conn);
            return groups.into_iter().for_each(|g| fail(g.lookups, &e));
        }
    };
    let mut ready = Vec::with_capacity(groups.len());
    let mut again = Vec::new();
    for (group, statement) in groups.into_iter().zip(prepared) {
        match statement {
            Ok(statement) => ready.push((group, statement)),
            // The batched form of a text the database takes alone: send its lookups again,
            // one by one. (A connection that failed says nothing about the text.)
            Err(e) if group.batched.is_some() && e.refused => {
                tracing::warn!(error = %ErrorChain(&e.error), "PostgreSQL refused a batched point lookup; sending them one by one");
                slot.never_batch(&group.lookups[0].sql);
                again.extend(group.lookups);
            }
            Err(e) => fail(group.lookups, &e.error),
        }
    }
    if !again.is_empty() {
        let mut queue = slot.queue.lock().unwrap_or_else(|p| p.into_inner());
        again.append(&mut queue.waiting);
        queue.waiting = again;
    }
    let columns: Vec<Vec<Column<'_>>> = ready.iter().map(|(group, _)| columns(group)).collect();
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = ready
        .iter()
        .zip(&columns)
        .map(|((group, _), columns)| {
            if group.batched.is_some() {
                columns.iter().map(Column::as_sql).collect()
            } else {
                group.lookups[0]
                    .sql
                    .params
                    .iter()
                    .map(super::as_sql)
                    .collect()
            }
        })
        .collect();
    let limit = pool.options.answer_timeout();
    let answers = tokio::time::timeout(
        limit,
        join_all(
            ready
                .iter()
                .zip(&params)
                .map(|((_, statement), params)| conn.client.query(statement, params)),
        ),
    )
    .await;
    drop(params);
    drop(columns);
    let answers = match answers {
        Ok(answers) => answers,
        Err(_) => {
            slot.retire(&conn);
            let e = timed_out("a statement", limit);
            return ready.into_iter().for_each(|(g, _)| fail(g.lookups, &e));
        }
    };
    for ((group, _), answer) in ready.into_iter().zip(answers) {
        match answer {
            Err(e) => fail(group.lookups, &storage_error(e)),
            Ok(rows) if group.batched.is_some() => hand_out(group.lookups, rows),
            Ok(rows) => {
                if let Some(lookup) = group.lookups.into_iter().next() {
                    let _ = lookup.reply.send(Ok(rows));
                }
            }
        }
    }
}

/// Splits a batch by statement text. Lookups of a text that cannot be batched, or whose
/// parameters differ in kind, each go alone.
fn group(slot: &SharedSlot, batch: Vec<Lookup>) -> Vec<Group> {
    let mut by_text: Vec<Vec<Lookup>> = Vec::new();
    for lookup in batch {
        match by_text
            .iter_mut()
            .find(|g| g[0].sql.text == lookup.sql.text)
        {
            Some(group) => group.push(lookup),
            None => by_text.push(vec![lookup]),
        }
    }
    let mut groups = Vec::with_capacity(by_text.len());
    for lookups in by_text {
        let batched = match lookups.len() {
            1 => None,
            _ if same_kinds(&lookups) => slot.batched_text(&lookups[0].sql),
            _ => None,
        };
        match batched {
            Some(text) => groups.push(Group {
                lookups,
                batched: Some(text),
            }),
            None => groups.extend(lookups.into_iter().map(|lookup| Group {
                lookups: vec![lookup],
                batched: None,
            })),
        }
    }
    groups
}

fn same_kinds(lookups: &[Lookup]) -> bool {
    let first = &lookups[0].sql.params;
    lookups.iter().all(|l| {
        l.sql.params.len() == first.len()
            && l.sql
                .params
                .iter()
                .zip(first)
                .all(|(a, b)| kind(a) == kind(b))
    })
}

/// Why a statement was not prepared: the error, and whether the database refused the text
/// itself (SQLSTATE class 42: syntax, types, names), as against failing to answer.
#[derive(Clone)]
struct NotPrepared {
    error: Error,
    refused: bool,
}

/// Each group's prepared statement, from the connection's cache or prepared now in one round
/// trip, or why not. Only running out of time fails them all.
async fn prepare(
    conn: &SharedConnection,
    groups: &[Group],
    pool: &Pool,
) -> Result<Vec<Result<Statement, NotPrepared>>> {
    let cached: Vec<Option<Statement>> = {
        let statements = conn.statements.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .iter()
            .map(|g| statements.get(g.text()).cloned())
            .collect()
    };
    let mut missing: Vec<&str> = groups
        .iter()
        .zip(&cached)
        .filter(|(_, statement)| statement.is_none())
        .map(|(g, _)| g.text())
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let mut fresh: HashMap<&str, Result<Statement, NotPrepared>> = HashMap::new();
    if !missing.is_empty() {
        let limit = pool.options.answer_timeout();
        let prepared = tokio::time::timeout(
            limit,
            join_all(missing.iter().map(|text| conn.client.prepare(text))),
        )
        .await
        .map_err(|_| timed_out("preparing a statement", limit))?;
        let mut statements = conn.statements.lock().unwrap_or_else(|p| p.into_inner());
        if statements.len() + missing.len() > STATEMENT_CACHE {
            statements.clear();
        }
        for (text, statement) in missing.into_iter().zip(prepared) {
            if let Ok(statement) = &statement {
                statements.insert(text.to_owned(), statement.clone());
            }
            fresh.insert(
                text,
                statement.map_err(|e| NotPrepared {
                    refused: e.code().is_some_and(|c| c.code().starts_with("42")),
                    error: storage_error(e),
                }),
            );
        }
    }
    Ok(groups
        .iter()
        .zip(cached)
        .map(|(g, cached)| match cached {
            Some(statement) => Ok(statement),
            None => fresh.get(g.text()).cloned().unwrap_or_else(|| {
                Err(NotPrepared {
                    error: Error::storage_fault("prepared statement missing"),
                    refused: false,
                })
            }),
        })
        .collect())
}

fn fail(lookups: Vec<Lookup>, e: &Error) {
    for lookup in lookups {
        let _ = lookup.reply.send(Err(e.clone()));
    }
}

/// Hands each row of a batched statement to its lookup: the last column is the lookup's
/// number in the group, counted from 1.
fn hand_out(lookups: Vec<Lookup>, rows: Vec<Row>) {
    let mut answers: Vec<Vec<Row>> = lookups.iter().map(|_| Vec::new()).collect();
    for row in rows {
        let number = row
            .len()
            .checked_sub(1)
            .and_then(|last| row.try_get::<_, i64>(last).ok())
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| n.checked_sub(1))
            .filter(|n| *n < answers.len());
        match number {
            Some(n) => answers[n].push(row),
            None => {
                return fail(
                    lookups,
                    &Error::storage_fault("a batched lookup answered a row without its number"),
                )
            }
        }
    }
    for (lookup, rows) in lookups.into_iter().zip(answers) {
        let _ = lookup.reply.send(Ok(rows));
    }
}

/// One parameter position of a batched group, as an array.
enum Column<'a> {
    Text(Vec<Option<&'a str>>),
    Int(Vec<Option<i64>>),
}

impl Column<'_> {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Text(values) => values,
            Column::Int(values) => values,
        }
    }
}

/// A batched group's parameters as arrays, one per position (none for a lone lookup).
fn columns(group: &Group) -> Vec<Column<'_>> {
    if group.batched.is_none() {
        return Vec::new();
    }
    let count = group.lookups[0].sql.params.len();
    (0..count)
        .map(|i| match group.lookups[0].sql.params[i] {
            SqlValue::Text(_) => Column::Text(
                group
                    .lookups
                    .iter()
                    .map(|l| match &l.sql.params[i] {
                        SqlValue::Text(v) => v.as_deref(),
                        _ => None,
                    })
                    .collect(),
            ),
            // Never Bytes: a group with content parts is not batched (see batched_text).
            SqlValue::Int(_) | SqlValue::Bytes(_) => Column::Int(
                group
                    .lookups
                    .iter()
                    .map(|l| match l.sql.params[i] {
                        SqlValue::Int(v) => v,
                        _ => None,
                    })
                    .collect(),
            ),
        })
        .collect()
}

/// `text` run once per row of parameter arrays: each `$n` outside quotes becomes column `pn`
/// of the unnested arrays, and the row's number is appended as the last column. `None` for a
/// text without parameters.
pub(super) fn batched_text(text: &str, params: &[SqlValue]) -> Option<String> {
    // Content parts are written one at a time, never looked up in batches.
    if params.is_empty() || params.iter().any(|p| kind(p) == Kind::Bytes) {
        return None;
    }
    let mut body = String::with_capacity(text.len() + 8 * params.len());
    let mut chars = text.char_indices().peekable();
    let mut quoted = false;
    while let Some((_, c)) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '$' || quoted {
            body.push(c);
            continue;
        }
        let mut number = String::new();
        while let Some((_, d)) = chars.next_if(|(_, d)| d.is_ascii_digit()) {
            number.push(d);
        }
        match number.parse::<usize>() {
            Ok(n) if (1..=params.len()).contains(&n) => {
                body.push_str("dsf_batch.p");
                body.push_str(&number);
            }
            _ => return None,
        }
    }
    let mut batched = String::with_capacity(body.len() + 64 + 16 * params.len());
    batched.push_str("SELECT dsf_found.*, dsf_batch.dsf_n FROM unnest(");
    for (i, param) in params.iter().enumerate() {
        if i > 0 {
            batched.push_str(", ");
        }
        let array = match kind(param) {
            Kind::Text => "text",
            Kind::Int => "int8",
            Kind::Bytes => return None,
        };
        batched.push_str(&format!("${}::{array}[]", i + 1));
    }
    batched.push_str(") WITH ORDINALITY AS dsf_batch(");
    for i in 1..=params.len() {
        batched.push_str(&format!("p{i}, "));
    }
    batched.push_str("dsf_n) CROSS JOIN LATERAL (");
    batched.push_str(&body);
    batched.push_str(") AS dsf_found");
    Some(batched)
}

impl SharedSlot {
    /// The batched form of `sql`'s text, worked out once per text; `None` when lookups of
    /// it go one by one.
    fn batched_text(&self, sql: &Sql) -> Option<Arc<str>> {
        let fits = |b: &BatchedText| b.kinds.iter().copied().eq(sql.params.iter().map(kind));
        let mut known = self.batched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = known.get(sql.text.as_str()) {
            return entry.as_ref().filter(|b| fits(b)).map(|b| b.text.clone());
        }
        let entry = batched_text(&sql.text, &sql.params).map(|text| BatchedText {
            text: Arc::from(text),
            kinds: sql.params.iter().map(kind).collect(),
        });
        let text = entry.as_ref().map(|b| b.text.clone());
        if known.len() >= STATEMENT_CACHE {
            known.clear();
        }
        known.insert(sql.text.clone(), entry);
        text
    }

    fn never_batch(&self, sql: &Sql) {
        let mut known = self.batched.lock().unwrap_or_else(|p| p.into_inner());
        known.insert(sql.text.clone(), None);
    }
}

/// The texts a slot has worked out how to batch (`None`: one by one).
pub(super) type KnownTexts = HashMap<String, Option<BatchedText>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &str) -> SqlValue {
        SqlValue::Text(Some(v.to_owned()))
    }

    #[test]
    fn parameters_become_columns_of_the_unnested_arrays() {
        let params: Vec<SqlValue> = (1..=10)
            .map(|_| text("x"))
            .chain([SqlValue::Int(Some(1))])
            .collect();
        let batched = batched_text(
            "SELECT r.a FROM t r WHERE r.x = $1 AND r.y IN ($2, $10) AND r.z = '$3' AND r.v = $11",
            &params,
        )
        .expect("batched");
        assert!(batched.starts_with(
            "SELECT dsf_found.*, dsf_batch.dsf_n FROM unnest($1::text[], $2::text[], "
        ));
        assert!(batched.contains("$10::text[], $11::int8[]) WITH ORDINALITY AS dsf_batch(p1, p2, "));
        assert!(batched.ends_with(
            "CROSS JOIN LATERAL (SELECT r.a FROM t r WHERE r.x = dsf_batch.p1 AND r.y IN (dsf_batch.p2, dsf_batch.p10) AND r.z = '$3' AND r.v = dsf_batch.p11) AS dsf_found"
        ));
    }

    #[test]
    fn texts_that_cannot_be_batched() {
        assert_eq!(batched_text("SELECT 1", &[]), None);
        // A placeholder beyond the parameters, or a bare `$`.
        assert_eq!(batched_text("SELECT $2", &[text("a")]), None);
        assert_eq!(batched_text("SELECT $", &[text("a")]), None);
    }
}
