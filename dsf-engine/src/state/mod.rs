//! The BPE's durable state: process instances (as dsf-bpmn serialises them, with a format
//! version), the Tasks it claimed, the Tasks it sent or is about to send, the
//! QuestionnaireResponses of open user tasks and the last event time per subscription.
//!
//! It lives in SQLite (one BPE, the zero-setup default) or PostgreSQL (several BPEs sharing
//! the work). The schema is versioned (`migrations`). Several BPEs on one database
//! coordinate through it:
//!
//! - each BPE is a *node* with a lease it renews; a node whose lease ran out is dead, and
//!   its unfinished claims and interrupted instances are taken over by a live one;
//! - an instance is run under a *key lease* on its business key, so one BPE at a time
//!   advances it; a save is *fenced*: it commits only while the saver still holds that
//!   lease (and the Task claim it acts on), so a BPE that comes back after its lease was
//!   taken over cannot write over the new owner.
//!
//! Node ids are never reused (a BPE that lost its lease continues under a new one), so a
//! lease is identified by its key, its node and a fence number the node counts.

mod db;
mod migrations;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;

use crate::{Error, Result};
use db::{StateDb, Statement, Value};
use dsf_bpmn::engine::Instance;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The version of the stored instance format. Bump it when [`Instance`] changes shape and
/// add the step from the previous version to `migrate_instance` (in this module).
pub const INSTANCE_FORMAT: i64 = 1;

/// Where a BPE keeps its state (`DEV_DSF_BPE_DB_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateDatabase {
    /// In memory, lost on exit (`sqlite::memory:`): tests and throw-away runs.
    Memory,
    /// A SQLite file (`sqlite:<path>`), held by one BPE.
    Sqlite(PathBuf),
    /// PostgreSQL (`postgresql://user@host:port/db`), which several BPEs may share; with a
    /// schema, the tables live in it (created if missing).
    Postgres {
        /// The libpq-style URL.
        url: String,
        /// The schema of the tables, else the connection's default (`public`).
        schema: Option<String>,
    },
}

impl StateDatabase {
    /// Reads a `DEV_DSF_BPE_DB_URL` value: `sqlite:<path>`, `sqlite::memory:`,
    /// `postgresql://…` or `postgres://…`.
    pub fn from_url(url: &str) -> Result<Self> {
        if url == "sqlite::memory:" {
            Ok(StateDatabase::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite:") {
            Ok(StateDatabase::Sqlite(path.into()))
        } else if url.starts_with("postgresql://") || url.starts_with("postgres://") {
            Ok(StateDatabase::Postgres {
                url: url.to_owned(),
                schema: None,
            })
        } else {
            Err(Error::Config(format!(
                "BPE state database URL '{url}': use sqlite:<path>, sqlite::memory: or postgresql://user@host:port/database"
            )))
        }
    }
}

/// A stored instance and what the BPE indexes it by.
#[derive(Debug, Clone)]
pub struct StoredInstance {
    /// `<process id>|<version>`.
    pub deployment: String,
    /// The instance as saved.
    pub instance: Instance,
    /// Saved in the middle of a run (before a send) and not since: whoever holds its key's
    /// lease now finds a run that was cut short, and goes on with it first.
    pub interrupted: bool,
}

/// What became of a Task the BPE sends, by its send key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMark {
    /// Recorded before the request: it may or may not have reached the target.
    Pending,
    /// The target stored it.
    Sent,
}

/// The right to advance the instances of one business key, held by one node until
/// released or until the node's lease runs out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    key: String,
    node: String,
    fence: i64,
}

/// Work of dead nodes a live one took over.
#[derive(Debug, Default)]
pub struct TakenOver {
    /// Tasks claimed but not acted on, as claimed.
    pub claims: Vec<serde_json::Value>,
    /// Ids of instances saved in the middle of a run (before a send) and not since.
    pub interrupted: Vec<String>,
}

/// This BPE as a node among those sharing the database.
struct Node {
    id: RwLock<Arc<str>>,
    lease: Duration,
    fences: AtomicU64,
}

/// The BPE's durable state (see the module documentation). Clones share the database and
/// the node.
#[derive(Clone)]
pub struct StateStore {
    db: Arc<dyn StateDb>,
    node: Arc<Node>,
}

/// A node that missed its renewals for an hour is forgotten.
const FORGET_NODES_AFTER_MILLIS: i64 = 3_600_000;

impl StateStore {
    /// Opens (creating if needed) the SQLite state file at `path`, held by this BPE alone.
    pub async fn open(path: &Path) -> Result<Self> {
        Self::start(Arc::new(sqlite::SqliteDb::open(path)?), DEFAULT_LEASE).await
    }

    /// A state database in memory (lost on exit), for tests and throw-away runs.
    pub async fn in_memory() -> Result<Self> {
        Self::start(Arc::new(sqlite::SqliteDb::in_memory()?), DEFAULT_LEASE).await
    }

    /// Opens `database`, migrating its schema, and joins it as a node whose lease lasts
    /// `lease` (renewed by [`StateStore::renew`]).
    pub async fn connect(database: &StateDatabase, lease: Duration) -> Result<Self> {
        let db: Arc<dyn StateDb> = match database {
            StateDatabase::Memory => Arc::new(sqlite::SqliteDb::in_memory()?),
            StateDatabase::Sqlite(path) => Arc::new(sqlite::SqliteDb::open(path)?),
            #[cfg(feature = "postgres")]
            StateDatabase::Postgres { url, schema } => {
                Arc::new(postgres::PostgresDb::connect(url, schema.as_deref()).await?)
            }
            #[cfg(not(feature = "postgres"))]
            StateDatabase::Postgres { .. } => {
                return Err(Error::Config(
                    "this BPE was built without PostgreSQL (dsf-engine's `postgres` feature)"
                        .into(),
                ))
            }
        };
        Self::start(db, lease).await
    }

    async fn start(db: Arc<dyn StateDb>, lease: Duration) -> Result<Self> {
        db.migrate(migrations::MIGRATIONS).await?;
        let store = StateStore {
            db,
            node: Arc::new(Node {
                id: RwLock::new(new_node_id()),
                lease,
                fences: AtomicU64::new(0),
            }),
        };
        if store.db.exclusive() {
            // Nobody else can hold this database: whoever held it before has stopped.
            store
                .db
                .execute("DELETE FROM bpe_nodes", Vec::new())
                .await?;
        }
        store.join().await?;
        Ok(store)
    }

    /// This node's id.
    pub fn node(&self) -> Arc<str> {
        self.node
            .id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long this node's lease lasts without a renewal.
    pub fn lease_duration(&self) -> Duration {
        self.node.lease
    }

    /// Runs a statement whose count of changed rows nobody needs.
    async fn exec(&self, sql: &'static str, params: Vec<Value>) -> Result<()> {
        self.db.execute(sql, params).await.map(|_| ())
    }

    fn lease_millis(&self) -> i64 {
        i64::try_from(self.node.lease.as_millis()).unwrap_or(i64::MAX)
    }

    async fn join(&self) -> Result<()> {
        let node = self.node();
        self.db
            .execute(
                "INSERT INTO bpe_nodes(id, lease_until, started) VALUES ($1, {now} + $2, {now})",
                vec![node.as_ref().into(), self.lease_millis().into()],
            )
            .await?;
        tracing::info!(node = %node, "BPE joined its state database");
        Ok(())
    }

    /// Renews this node's lease. When it had already run out (the BPE stalled for longer
    /// than the lease), others may have taken over its work: the node continues under a
    /// new id, and whatever was under way under the old one is fenced out. Answers whether
    /// the lease was still held.
    pub async fn renew(&self) -> Result<bool> {
        let node = self.node();
        let renewed = self
            .db
            .execute(
                "UPDATE bpe_nodes SET lease_until = {now} + $2 WHERE id = $1 AND lease_until > {now}",
                vec![node.as_ref().into(), self.lease_millis().into()],
            )
            .await?;
        if renewed > 0 {
            return Ok(true);
        }
        tracing::warn!(node = %node, "BPE lease ran out; continuing as a new node");
        *self.node.id.write().unwrap_or_else(|p| p.into_inner()) = new_node_id();
        self.join().await?;
        Ok(false)
    }

    /// Leaves the database at an orderly stop: the node's work is free to take over at
    /// once instead of when its lease runs out.
    pub async fn leave(&self) -> Result<()> {
        let node = self.node();
        self.exec(
            "DELETE FROM bpe_nodes WHERE id = $1",
            vec![node.as_ref().into()],
        )
        .await
    }

    /// Takes the lease on `key` if it is free, held by this node, or held by a dead node;
    /// `None` while another live node holds it.
    pub async fn acquire(&self, key: &str) -> Result<Option<Lease>> {
        let lease = Lease {
            key: key.to_owned(),
            node: self.node().to_string(),
            fence: self.node.fences.fetch_add(1, Ordering::Relaxed) as i64 + 1,
        };
        let taken = self
            .db
            .execute(
                "INSERT INTO key_leases(lease_key, owner, fence) VALUES ($1, $2, $3)
                 ON CONFLICT(lease_key) DO UPDATE SET owner = excluded.owner, fence = excluded.fence
                 WHERE key_leases.owner = excluded.owner
                    OR key_leases.owner NOT IN (SELECT id FROM bpe_nodes WHERE lease_until > {now})",
                vec![
                    lease.key.as_str().into(),
                    lease.node.as_str().into(),
                    lease.fence.into(),
                ],
            )
            .await?;
        Ok((taken > 0).then_some(lease))
    }

    /// Gives up `lease` (a lease since taken over is left alone).
    pub async fn release(&self, lease: &Lease) -> Result<()> {
        self.exec(
            "DELETE FROM key_leases WHERE lease_key = $1 AND owner = $2 AND fence = $3",
            lease_params(lease),
        )
        .await
    }

    /// Whether `lease` is still held (not taken over).
    pub async fn holds(&self, lease: &Lease) -> Result<bool> {
        let rows = self
            .db
            .query(
                "SELECT 1 FROM key_leases WHERE lease_key = $1 AND owner = $2 AND fence = $3",
                lease_params(lease),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Writes an instance as it is now under `lease`, and marks `claimed_task` (the Task
    /// whose handling led here) done in the same transaction. An instance saved in the
    /// middle of a run (`mid_run`) is resumed by whichever BPE takes over if this one stops
    /// before the run ends. Refused with [`Error::Fenced`] when the lease or the claim was
    /// taken over.
    pub async fn save(
        &self,
        lease: &Lease,
        deployment: &str,
        instance: &Instance,
        claimed_task: Option<&str>,
        mid_run: bool,
    ) -> Result<()> {
        let data = serde_json::to_string(instance).map_err(Error::stored_data("instance"))?;
        let signals: String = instance
            .waiting()
            .iter()
            .filter_map(|w| match w {
                dsf_bpmn::engine::Waiting::Signal { name, .. } => Some(format!("|{name}|")),
                _ => None,
            })
            .collect();
        let alternative = instance
            .variable(dsf_bpmn::engine::ALTERNATIVE_BUSINESS_KEY)
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let mut statements = vec![
            Statement::required(
                "SELECT 1 FROM key_leases WHERE lease_key = $1 AND owner = $2 AND fence = $3{lock}",
                lease_params(lease),
            ),
            Statement::new(
                "INSERT INTO instances(id, deployment, business_key, alternative_key, finished, next_due, signals, format, data, mid_run, owner)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT(id) DO UPDATE SET alternative_key = excluded.alternative_key,
                     finished = excluded.finished, next_due = excluded.next_due,
                     signals = excluded.signals, format = excluded.format, data = excluded.data,
                     mid_run = excluded.mid_run, owner = excluded.owner",
                vec![
                    instance.id.as_str().into(),
                    deployment.into(),
                    instance.business_key.clone().into(),
                    alternative.into(),
                    instance.is_finished().into(),
                    instance.next_due().into(),
                    signals.into(),
                    INSTANCE_FORMAT.into(),
                    data.into(),
                    mid_run.into(),
                    lease.node.as_str().into(),
                ],
            ),
        ];
        if let Some(task) = claimed_task {
            statements.push(Statement::required(
                "UPDATE claimed SET done = 1 WHERE task_id = $1 AND owner = $2",
                vec![task.into(), lease.node.as_str().into()],
            ));
        }
        self.db.transaction(statements).await
    }

    /// Running instances whose business key or alternative business key is `key`.
    pub async fn running_by_key(&self, key: &str) -> Result<Vec<StoredInstance>> {
        let rows = self
            .db
            .query(
                "SELECT deployment, format, data, mid_run FROM instances
                 WHERE finished = 0 AND (business_key = $1 OR alternative_key = $1)",
                vec![key.into()],
            )
            .await?;
        rows.into_iter().map(instance_row).collect()
    }

    /// The stored instance `id`, if there is one.
    pub async fn load(&self, id: &str) -> Result<Option<StoredInstance>> {
        let rows = self
            .db
            .query(
                "SELECT deployment, format, data, mid_run FROM instances WHERE id = $1",
                vec![id.into()],
            )
            .await?;
        rows.into_iter().next().map(instance_row).transpose()
    }

    /// Ids of running instances with a timer or job due at or before `now`, and the
    /// earliest due time after it.
    pub async fn due(&self, now: i64) -> Result<(Vec<String>, Option<i64>)> {
        let due = self
            .db
            .query(
                "SELECT id FROM instances WHERE finished = 0 AND next_due <= $1 ORDER BY next_due LIMIT 1000",
                vec![now.into()],
            )
            .await?;
        let next = self
            .db
            .query(
                "SELECT MIN(next_due) FROM instances WHERE finished = 0 AND next_due > $1",
                vec![now.into()],
            )
            .await?;
        let next = next.into_iter().next().and_then(|row| row.first()?.int());
        Ok((texts(due), next))
    }

    /// Ids of running instances waiting for the signal `name`.
    pub async fn waiting_for_signal(&self, name: &str) -> Result<Vec<String>> {
        let pattern = format!(
            "%|{}|%",
            name.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let rows = self
            .db
            .query(
                "SELECT id FROM instances WHERE finished = 0 AND signals LIKE $1 ESCAPE '\\'",
                vec![pattern.into()],
            )
            .await?;
        Ok(texts(rows))
    }

    /// How many stored instances have not finished.
    pub async fn running_count(&self) -> Result<u64> {
        let rows = self
            .db
            .query(
                "SELECT COUNT(*) FROM instances WHERE finished = 0",
                Vec::new(),
            )
            .await?;
        let count = rows.first().and_then(|r| r.first()?.int()).unwrap_or(0);
        Ok(count.max(0) as u64)
    }

    /// Records that this node claims `task_id` and has yet to act on it. Answers false when
    /// the Task was claimed before: by another node, which handles it (or, if it died,
    /// whoever takes its work over, [`StateStore::take_over`]), by this node in another
    /// handling of it, or already acted on. A Task is claimed once in its life; hearing of
    /// it again (websocket catch-ups replay versions) changes nothing.
    pub async fn claim(&self, task_id: &str, task: &serde_json::Value) -> Result<bool> {
        let node = self.node();
        let claimed = self
            .db
            .execute(
                "INSERT INTO claimed(task_id, task, done, owner, claimed_at) VALUES ($1, $2, 0, $3, {now})
                 ON CONFLICT(task_id) DO NOTHING",
                vec![task_id.into(), task.to_string().into(), node.as_ref().into()],
            )
            .await?;
        Ok(claimed > 0)
    }

    /// Records the claimed Task as the server stored it (in progress).
    pub async fn record_claimed(&self, task_id: &str, task: &serde_json::Value) -> Result<()> {
        let node = self.node();
        self.exec(
            "UPDATE claimed SET task = $2 WHERE task_id = $1 AND owner = $3 AND done = 0",
            vec![
                task_id.into(),
                task.to_string().into(),
                node.as_ref().into(),
            ],
        )
        .await
    }

    /// Withdraws this node's open claim of `task_id`: the server did not take it (the Task
    /// changed meanwhile, or the request failed), so a later sighting may claim it anew.
    pub async fn forget_claim(&self, task_id: &str) -> Result<()> {
        let node = self.node();
        self.exec(
            "DELETE FROM claimed WHERE task_id = $1 AND owner = $2 AND done = 0",
            vec![task_id.into(), node.as_ref().into()],
        )
        .await
    }

    /// Whether this node's claim of `task_id` is open (not acted on, not taken over).
    pub async fn owns_claim(&self, task_id: &str) -> Result<bool> {
        let node = self.node();
        let rows = self
            .db
            .query(
                "SELECT 1 FROM claimed WHERE task_id = $1 AND owner = $2 AND done = 0",
                vec![task_id.into(), node.as_ref().into()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Records that this node acted on its claim of `task_id`.
    pub async fn claim_done(&self, task_id: &str) -> Result<()> {
        let node = self.node();
        self.exec(
            "UPDATE claimed SET done = 1 WHERE task_id = $1 AND owner = $2",
            vec![task_id.into(), node.as_ref().into()],
        )
        .await
    }

    /// Takes over the unfinished claims and interrupted instances of dead nodes (all of
    /// them when this BPE holds the database alone and has just started), and forgets
    /// nodes long dead.
    pub async fn take_over(&self) -> Result<TakenOver> {
        let node = self.node();
        let claims = self
            .db
            .query(
                "UPDATE claimed SET owner = $1
                 WHERE done = 0 AND (owner IS NULL OR owner NOT IN (SELECT id FROM bpe_nodes WHERE lease_until > {now}))
                 RETURNING task, claimed_at",
                vec![node.as_ref().into()],
            )
            .await?;
        let interrupted = self
            .db
            .query(
                "UPDATE instances SET owner = $1
                 WHERE finished = 0 AND mid_run = 1
                   AND (owner IS NULL OR owner NOT IN (SELECT id FROM bpe_nodes WHERE lease_until > {now}))
                 RETURNING id",
                vec![node.as_ref().into()],
            )
            .await?;
        self.db
            .execute(
                "DELETE FROM bpe_nodes WHERE lease_until < {now} - $1",
                vec![FORGET_NODES_AFTER_MILLIS.into()],
            )
            .await?;
        let mut claims: Vec<(i64, String)> = claims
            .into_iter()
            .filter_map(|row| {
                let mut row = row.into_iter();
                let task = row.next()?.text()?;
                let at = row.next().and_then(|v| v.int()).unwrap_or(0);
                Some((at, task))
            })
            .collect();
        claims.sort();
        let claims = claims
            .iter()
            .map(|(_, t)| serde_json::from_str(t).map_err(Error::stored_data("claimed Task")))
            .collect::<Result<_>>()?;
        Ok(TakenOver {
            claims,
            interrupted: texts(interrupted),
        })
    }

    /// The mark of the send `key` and the Task it sends (JSON), if it was recorded.
    pub async fn send_mark(&self, key: &str) -> Result<Option<(SendMark, String)>> {
        let rows = self
            .db
            .query(
                "SELECT state, task FROM sent WHERE key = $1",
                vec![key.into()],
            )
            .await?;
        Ok(rows.into_iter().next().and_then(|row| {
            let mut row = row.into_iter();
            let state = row.next()?.text()?;
            let task = row.next()?.text()?;
            let mark = if state == "sent" {
                SendMark::Sent
            } else {
                SendMark::Pending
            };
            Some((mark, task))
        }))
    }

    /// Records that the Task `task` is about to be created at `target_url` for the send `key`.
    pub async fn mark_pending(&self, key: &str, task: &str, target_url: &str) -> Result<()> {
        self.exec(
                "INSERT INTO sent(key, state, task, target_url) VALUES ($1, 'pending', $2, $3)
                 ON CONFLICT(key) DO UPDATE SET state = 'pending', task = excluded.task, target_url = excluded.target_url",
                vec![key.into(), task.into(), target_url.into()],
            ).await
    }

    /// Records that the target stored the Task of the send `key`.
    pub async fn mark_sent(&self, key: &str) -> Result<()> {
        self.exec(
            "UPDATE sent SET state = 'sent' WHERE key = $1",
            vec![key.into()],
        )
        .await
    }

    /// Forgets a pending send that certainly did not reach the target (it refused it).
    pub async fn forget_send(&self, key: &str) -> Result<()> {
        self.exec("DELETE FROM sent WHERE key = $1", vec![key.into()])
            .await
    }

    /// Records the QuestionnaireResponse `questionnaire_response` of the user task `node` of
    /// `instance_id`.
    pub async fn add_user_task(
        &self,
        questionnaire_response: &str,
        instance_id: &str,
        node: &str,
    ) -> Result<()> {
        self.exec(
                "INSERT INTO user_tasks(questionnaire_response, instance_id, node) VALUES ($1, $2, $3)
                 ON CONFLICT(questionnaire_response) DO UPDATE SET instance_id = excluded.instance_id, node = excluded.node",
                vec![questionnaire_response.into(), instance_id.into(), node.into()],
            ).await
    }

    /// The instance and node of the open user task answered by this QuestionnaireResponse.
    pub async fn take_user_task(
        &self,
        questionnaire_response: &str,
    ) -> Result<Option<(String, String)>> {
        let rows = self
            .db
            .query(
                "SELECT instance_id, node FROM user_tasks WHERE questionnaire_response = $1",
                vec![questionnaire_response.into()],
            )
            .await?;
        Ok(rows.into_iter().next().and_then(|row| {
            let mut row = row.into_iter();
            Some((row.next()?.text()?, row.next()?.text()?))
        }))
    }

    /// Forgets a user task once its QuestionnaireResponse was answered.
    pub async fn remove_user_task(&self, questionnaire_response: &str) -> Result<()> {
        self.exec(
            "DELETE FROM user_tasks WHERE questionnaire_response = $1",
            vec![questionnaire_response.into()],
        )
        .await
    }

    /// Whether a user task of this instance and node already has its QuestionnaireResponse.
    pub async fn has_user_task(&self, instance_id: &str, node: &str) -> Result<bool> {
        let rows = self
            .db
            .query(
                "SELECT 1 FROM user_tasks WHERE instance_id = $1 AND node = $2",
                vec![instance_id.into(), node.into()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// When the last event of `kind` was seen (Unix milliseconds), for catching up after a
    /// restart.
    pub async fn last_event(&self, kind: &str) -> Result<Option<i64>> {
        let rows = self
            .db
            .query(
                "SELECT millis FROM last_events WHERE kind = $1",
                vec![kind.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.first()?.int()))
    }

    /// Moves the last event time of `kind` forward (never back).
    pub async fn set_last_event(&self, kind: &str, millis: i64) -> Result<()> {
        self.exec(
            "INSERT INTO last_events(kind, millis) VALUES ($1, $2)
                 ON CONFLICT(kind) DO UPDATE SET millis = excluded.millis
                 WHERE excluded.millis > last_events.millis",
            vec![kind.into(), millis.into()],
        )
        .await
    }
}

/// How long a node's lease lasts without renewal unless configured: a BPE that dies has its
/// work taken over within this time and one renewal interval.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(3);

fn new_node_id() -> Arc<str> {
    uuid::Uuid::new_v4().to_string().into()
}

fn lease_params(lease: &Lease) -> Vec<Value> {
    vec![
        lease.key.as_str().into(),
        lease.node.as_str().into(),
        lease.fence.into(),
    ]
}

fn texts(rows: Vec<Vec<Value>>) -> Vec<String> {
    rows.into_iter()
        .filter_map(|row| row.into_iter().next()?.text())
        .collect()
}

fn instance_row(row: Vec<Value>) -> Result<StoredInstance> {
    let mut row = row.into_iter();
    let deployment = row.next().and_then(Value::text);
    let format = row.next().and_then(|v| v.int());
    let data = row.next().and_then(Value::text);
    let interrupted = row.next().and_then(|v| v.int()) == Some(1);
    match (deployment, format, data) {
        (Some(deployment), Some(format), Some(data)) => {
            let mut stored = decode((deployment, format, data))?;
            stored.interrupted = interrupted;
            Ok(stored)
        }
        _ => Err(Error::State("a stored instance row is incomplete".into())),
    }
}

fn decode((deployment, format, data): (String, i64, String)) -> Result<StoredInstance> {
    let value: serde_json::Value =
        serde_json::from_str(&data).map_err(Error::stored_data("stored instance"))?;
    let value = migrate_instance(format, value)?;
    let instance = serde_json::from_value(value).map_err(Error::stored_data("stored instance"))?;
    Ok(StoredInstance {
        deployment,
        instance,
        interrupted: false,
    })
}

/// Brings a stored instance of format `format` to [`INSTANCE_FORMAT`].
pub fn migrate_instance(format: i64, value: serde_json::Value) -> Result<serde_json::Value> {
    match format {
        INSTANCE_FORMAT => Ok(value),
        other => Err(Error::State(format!(
            "stored instance has format {other}; this BPE reads format {INSTANCE_FORMAT} (no migration from {other} exists)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsf_bpmn::engine::{Engine, Registry, VirtualClock};

    async fn instance() -> Instance {
        let xml = r#"<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">
  <bpmn:process id="t_p" isExecutable="true">
    <bpmn:startEvent id="s"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>
    <bpmn:sequenceFlow id="f" sourceRef="s" targetRef="c"/>
    <bpmn:intermediateCatchEvent id="c"><bpmn:messageEventDefinition messageRef="n"/></bpmn:intermediateCatchEvent>
  </bpmn:process>
  <bpmn:message id="m" name="go"/><bpmn:message id="n" name="next"/>
</bpmn:definitions>"#;
        let definitions = dsf_bpmn::parse(xml.as_bytes(), "t.bpmn").expect("parses");
        let engine = Engine::deploy(
            definitions,
            Registry::new(),
            std::sync::Arc::new(VirtualClock::at(0)),
        )
        .expect("deploys");
        let mut instance = engine
            .correlate(&mut [], "go", Some("bk"), None, serde_json::Map::new())
            .expect("starts")
            .expect("new");
        engine.run(&mut instance).await.expect("runs");
        instance
    }

    /// A fresh PostgreSQL state database (a schema of its own), or `None` with the reason
    /// printed when no PostgreSQL answers outside CI; under `CI=true` it must answer.
    async fn postgres() -> Option<StateStore> {
        let url = std::env::var("DSF_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("dsf_bpe_test_{}", uuid::Uuid::new_v4().simple());
        let database = StateDatabase::Postgres {
            url: url.clone(),
            schema: Some(schema),
        };
        match StateStore::connect(&database, DEFAULT_LEASE).await {
            Ok(store) => Some(store),
            Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!(
                    "skipped on PostgreSQL: {url} unreachable ({})",
                    dsf_core::ErrorChain(&error)
                );
                None
            }
            Err(error) => panic!("PostgreSQL at {url}: {}", dsf_core::ErrorChain(&error)),
        }
    }

    /// The store on SQLite in memory, then on PostgreSQL when there is one.
    async fn both() -> Vec<StateStore> {
        let mut stores = vec![StateStore::in_memory().await.expect("SQLite")];
        stores.extend(postgres().await);
        stores
    }

    impl StateStore {
        /// Another BPE on the same database.
        async fn another_node(&self) -> StateStore {
            let other = StateStore {
                db: self.db.clone(),
                node: Arc::new(Node {
                    id: RwLock::new(new_node_id()),
                    lease: self.node.lease,
                    fences: AtomicU64::new(0),
                }),
            };
            other.join().await.expect("join");
            other
        }

        /// As if this BPE had stalled past its lease.
        async fn expire(&self) {
            self.db
                .execute(
                    "UPDATE bpe_nodes SET lease_until = 0 WHERE id = $1",
                    vec![self.node().as_ref().into()],
                )
                .await
                .expect("expire");
        }
    }

    #[tokio::test]
    async fn instances_round_trip_and_are_found_by_key() {
        for state in both().await {
            let stored = instance().await;
            let lease = state.acquire("bk").await.expect("lease").expect("free");
            state
                .save(&lease, "t_p|1.0", &stored, None, false)
                .await
                .expect("save");
            let found = state.running_by_key("bk").await.expect("by key");
            assert_eq!(found.len(), 1);
            assert_eq!(found[0].deployment, "t_p|1.0");
            assert_eq!(found[0].instance, stored);
            let loaded = state.load(&stored.id).await.expect("load").expect("found");
            assert_eq!(loaded.instance, stored);
            assert!(state
                .running_by_key("other")
                .await
                .expect("by key")
                .is_empty());
            assert_eq!(state.running_count().await.expect("count"), 1);
            assert!(state
                .waiting_for_signal("s")
                .await
                .expect("signal")
                .is_empty());
            assert_eq!(state.due(i64::MAX).await.expect("due"), (Vec::new(), None));
        }
    }

    #[tokio::test]
    async fn a_sqlite_file_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.sqlite");
        let stored = instance().await;
        {
            let state = StateStore::open(&path).await.expect("open");
            let lease = state.acquire("bk").await.expect("lease").expect("free");
            state
                .save(&lease, "t_p|1.0", &stored, None, true)
                .await
                .expect("save");
        }
        let state = StateStore::open(&path).await.expect("reopen");
        let found = state.running_by_key("bk").await.expect("by key");
        assert_eq!(found[0].instance, stored);
        // The BPE before the restart stopped mid-run: its instance is this one's now.
        let taken = state.take_over().await.expect("take over");
        assert_eq!(taken.interrupted, vec![stored.id.clone()]);
        assert!(state
            .take_over()
            .await
            .expect("again")
            .interrupted
            .is_empty());
    }

    #[tokio::test]
    async fn a_state_file_from_before_versioned_schemas_is_migrated() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.sqlite");
        {
            let old = rusqlite::Connection::open(&path).expect("open");
            old.execute_batch(migrations::MIGRATIONS[0].sql)
                .expect("old schema");
            old.execute(
                "INSERT INTO claimed(task_id, task, done) VALUES ('t1', '{\"id\":\"t1\"}', 0)",
                [],
            )
            .expect("old claim");
        }
        let state = StateStore::open(&path).await.expect("migrates");
        let rows = state
            .db
            .query("SELECT MAX(version) FROM schema_migrations", Vec::new())
            .await
            .expect("versions");
        assert_eq!(rows, vec![vec![Value::Int(2)]]);
        // A claim written before there were nodes belongs to nobody: it is taken over.
        let taken = state.take_over().await.expect("take over");
        assert_eq!(taken.claims, vec![serde_json::json!({"id": "t1"})]);
    }

    #[tokio::test]
    async fn a_database_a_newer_bpe_migrated_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.sqlite");
        drop(StateStore::open(&path).await.expect("open"));
        {
            let c = rusqlite::Connection::open(&path).expect("open");
            c.execute(
                "INSERT INTO schema_migrations(version, name, applied) VALUES (99, 'future', 0)",
                [],
            )
            .expect("future version");
        }
        let Err(error) = StateStore::open(&path).await else {
            panic!("a newer schema is refused");
        };
        assert!(error.to_string().contains("schema version 99"), "{error}");
    }

    #[test]
    fn state_database_urls_are_read_as_dev_dsf_bpe_db_url_takes_them() {
        assert_eq!(
            StateDatabase::from_url("sqlite::memory:").expect("memory"),
            StateDatabase::Memory
        );
        assert_eq!(
            StateDatabase::from_url("sqlite:/var/lib/dsf/bpe.sqlite").expect("file"),
            StateDatabase::Sqlite("/var/lib/dsf/bpe.sqlite".into())
        );
        for url in ["postgresql://bpe@db:5432/dsf", "postgres://bpe@db/dsf"] {
            assert_eq!(
                StateDatabase::from_url(url).expect("postgres"),
                StateDatabase::Postgres {
                    url: url.into(),
                    schema: None
                }
            );
        }
        let error = StateDatabase::from_url("jdbc:postgresql://db/dsf")
            .expect_err("not a URL this BPE reads")
            .to_string();
        assert!(error.contains("postgresql://"), "{error}");
    }

    #[test]
    fn a_stored_instance_of_an_unknown_format_is_refused_with_the_reason() {
        let value = serde_json::json!({"id": "x"});
        assert!(migrate_instance(INSTANCE_FORMAT, value.clone()).is_ok());
        let error = migrate_instance(INSTANCE_FORMAT + 1, value)
            .unwrap_err()
            .to_string();
        assert!(error.contains("format"), "{error}");
    }

    #[test]
    fn a_stored_instance_that_is_not_json_keeps_the_parser_error_as_its_cause() {
        let Err(error) = decode(("d".into(), INSTANCE_FORMAT, "{not json".into())) else {
            panic!("not JSON is refused");
        };
        assert!(matches!(error, Error::StoredData { .. }), "{error:?}");
        assert_eq!(error.to_string(), "BPE state: stored instance");
        let source = std::error::Error::source(&error).expect("the JSON error is kept");
        assert!(source.is::<serde_json::Error>());
        let chain = dsf_core::ErrorChain(&error).to_string();
        assert!(
            chain.starts_with("BPE state: stored instance: key must be a string"),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn a_database_fault_keeps_the_database_error_as_its_cause() {
        let state = StateStore::in_memory().await.expect("state");
        let error = state
            .db
            .execute("INSERT INTO no_such_table VALUES (1)", Vec::new())
            .await
            .expect_err("no such table");
        assert_eq!(error.to_string(), "BPE state database");
        let source = std::error::Error::source(&error).expect("the database error is kept");
        assert!(source.is::<rusqlite::Error>());
        let chain = dsf_core::ErrorChain(&error).to_string();
        assert!(chain.contains("no such table: no_such_table"), "{chain}");
    }

    #[tokio::test]
    async fn send_marks_user_tasks_and_event_times() {
        for state in both().await {
            assert_eq!(state.send_mark("i/1").await.expect("mark"), None);
            state
                .mark_pending("i/1", "{}", "https://a/fhir")
                .await
                .expect("pending");
            assert_eq!(
                state.send_mark("i/1").await.expect("mark"),
                Some((SendMark::Pending, "{}".into()))
            );
            state.mark_sent("i/1").await.expect("sent");
            assert_eq!(
                state.send_mark("i/1").await.expect("mark"),
                Some((SendMark::Sent, "{}".into()))
            );
            state.forget_send("i/1").await.expect("forget");
            assert_eq!(state.send_mark("i/1").await.expect("mark"), None);
            state.add_user_task("qr1", "i", "ask").await.expect("add");
            assert!(state.has_user_task("i", "ask").await.expect("has"));
            assert_eq!(
                state.take_user_task("qr1").await.expect("take"),
                Some(("i".into(), "ask".into()))
            );
            state.remove_user_task("qr1").await.expect("remove");
            assert!(!state.has_user_task("i", "ask").await.expect("has"));
            state.set_last_event("task", 10).await.expect("event");
            state.set_last_event("task", 5).await.expect("event");
            assert_eq!(state.last_event("task").await.expect("event"), Some(10));
        }
    }

    #[tokio::test]
    async fn one_node_at_a_time_holds_a_key_and_a_late_one_is_fenced_out() {
        for a in both().await {
            let b = a.another_node().await;
            let stored = instance().await;
            a.acquire("bk").await.expect("lease").expect("free");
            assert_eq!(b.acquire("bk").await.expect("lease"), None, "A holds it");
            // A's own next run takes it over from itself.
            let lease_a = a.acquire("bk").await.expect("lease").expect("own");
            a.save(&lease_a, "t_p|1.0", &stored, None, true)
                .await
                .expect("A saves");
            // A stalls past its lease: B takes the key and A's interrupted instance.
            a.expire().await;
            let lease_b = b.acquire("bk").await.expect("lease").expect("A is dead");
            let taken = b.take_over().await.expect("take over");
            assert_eq!(taken.interrupted, vec![stored.id.clone()]);
            let Err(Error::Fenced(reason)) =
                a.save(&lease_a, "t_p|1.0", &stored, None, false).await
            else {
                panic!("A's late save is refused");
            };
            assert!(reason.contains("lease"), "{reason}");
            assert!(!a.holds(&lease_a).await.expect("holds"));
            b.save(&lease_b, "t_p|1.0", &stored, None, false)
                .await
                .expect("B saves");
            // A comes back under a new node id; its old work stays B's.
            let old = a.node();
            assert!(!a.renew().await.expect("renew"));
            assert_ne!(a.node(), old);
            assert!(a.renew().await.expect("renewed"));
            assert_eq!(a.acquire("bk").await.expect("lease"), None, "B holds it");
            b.release(&lease_b).await.expect("release");
            assert!(a.acquire("bk").await.expect("lease").is_some());
        }
    }

    #[tokio::test]
    async fn a_task_is_claimed_by_one_node_and_taken_over_when_it_dies() {
        for a in both().await {
            let b = a.another_node().await;
            let task = serde_json::json!({"resourceType": "Task", "id": "t1"});
            assert!(a.claim("t1", &task).await.expect("claim"));
            assert!(!b.claim("t1", &task).await.expect("claim"), "A has it");
            assert!(
                !a.claim("t1", &task).await.expect("again"),
                "A handles it already"
            );
            a.record_claimed("t1", &task).await.expect("recorded");
            assert!(a.owns_claim("t1").await.expect("owns"));
            // B's attempts do not end A's claim.
            b.claim_done("t1").await.expect("done");
            b.forget_claim("t1").await.expect("forget");
            assert!(a.owns_claim("t1").await.expect("owns"));
            assert!(b.take_over().await.expect("none").claims.is_empty());
            a.expire().await;
            // Hearing of the Task again (a replayed event) does not take a dead node's claim:
            // the take-over does, and then resumes it as the server now has it.
            assert!(!b.claim("t1", &task).await.expect("claim"));
            let taken = b.take_over().await.expect("take over");
            assert_eq!(taken.claims, vec![task.clone()]);
            assert!(!a.owns_claim("t1").await.expect("owns"));
            // A's save for the Task it no longer owns is refused, even under a fresh key lease.
            let stored = instance().await;
            a.renew().await.expect("renew");
            let lease = a.acquire("other").await.expect("lease").expect("free");
            assert!(matches!(
                a.save(&lease, "t_p|1.0", &stored, Some("t1"), false).await,
                Err(Error::Fenced(_))
            ));
            assert!(
                a.load(&stored.id).await.expect("load").is_none(),
                "rolled back"
            );
            let lease = b.acquire("bk").await.expect("lease").expect("free");
            b.save(&lease, "t_p|1.0", &stored, Some("t1"), false)
                .await
                .expect("B's save");
            assert!(!b.owns_claim("t1").await.expect("done"));
            // A Task acted on is not claimed again, by anyone.
            assert!(!b.claim("t1", &task).await.expect("claim"));
            assert!(!a.claim("t1", &task).await.expect("claim"));
            // A claim the server refused is withdrawn: the Task may be claimed anew.
            assert!(b.claim("t3", &task).await.expect("claim"));
            b.forget_claim("t3").await.expect("forget");
            assert!(a.claim("t3", &task).await.expect("claim again"));
            // A node that leaves frees its work at once.
            assert!(b.claim("t2", &task).await.expect("claim"));
            b.leave().await.expect("leave");
            let c = a.another_node().await;
            assert_eq!(c.take_over().await.expect("take over").claims.len(), 1);
        }
    }
}
