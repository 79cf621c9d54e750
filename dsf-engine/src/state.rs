//! The BPE's durable state in SQLite: process instances (as dsf-bpmn serialises them, with a
//! format version), the Tasks it claimed, the Tasks it sent or is about to send, the
//! QuestionnaireResponses of open user tasks and the last event time per subscription.
//!
//! Every call runs on the blocking pool; one connection, so writes never contend.

use crate::{Error, Result};
use dsf_bpmn::engine::Instance;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The version of the stored instance format. Bump it when [`Instance`] changes shape and
/// add the step from the previous version to `migrate_instance` (in this module).
pub const INSTANCE_FORMAT: i64 = 1;

/// A stored instance and what the BPE indexes it by.
#[derive(Debug, Clone)]
pub struct StoredInstance {
    /// `<process id>|<version>`.
    pub deployment: String,
    pub instance: Instance,
}

/// What became of a Task the BPE sends, by its send key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMark {
    /// Recorded before the request: it may or may not have reached the target.
    Pending,
    /// The target stored it.
    Sent,
}

/// The BPE's durable state in SQLite: stored instances, claimed Tasks, sends in flight, open
/// user tasks and the time of the last event seen per kind. Clones share the database.
#[derive(Clone)]
pub struct StateStore {
    connection: Arc<Mutex<Connection>>,
}

impl StateStore {
    /// Opens (creating if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let connection = Connection::open(path)?;
        Self::init(connection)
    }

    /// A state database in memory (lost on exit), for tests and throw-away runs.
    pub fn in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(connection: Connection) -> Result<Self> {
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL;
                 PRAGMA synchronous=NORMAL;
                 PRAGMA busy_timeout=5000;
                 CREATE TABLE IF NOT EXISTS instances(
                     id TEXT PRIMARY KEY,
                     deployment TEXT NOT NULL,
                     business_key TEXT,
                     alternative_key TEXT,
                     finished INTEGER NOT NULL,
                     next_due INTEGER,
                     signals TEXT NOT NULL,
                     format INTEGER NOT NULL,
                     data TEXT NOT NULL,
                     mid_run INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX IF NOT EXISTS instances_key ON instances(business_key) WHERE finished = 0;
                 CREATE INDEX IF NOT EXISTS instances_alternative ON instances(alternative_key) WHERE finished = 0;
                 CREATE INDEX IF NOT EXISTS instances_due ON instances(next_due) WHERE finished = 0;
                 CREATE TABLE IF NOT EXISTS sent(
                     key TEXT PRIMARY KEY,
                     state TEXT NOT NULL,
                     task TEXT NOT NULL,
                     target_url TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS claimed(
                     task_id TEXT PRIMARY KEY,
                     task TEXT NOT NULL,
                     done INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS user_tasks(
                     questionnaire_response TEXT PRIMARY KEY,
                     instance_id TEXT NOT NULL,
                     node TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS last_events(
                     kind TEXT PRIMARY KEY,
                     millis INTEGER NOT NULL);",
            )
            ?;
        Ok(StateStore {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = self.connection.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            work(&mut connection)
        })
        .await??;
        Ok(result)
    }

    /// Writes an instance as it is now, and marks `claimed_task` (the Task whose handling
    /// led here) done in the same transaction. An instance saved in the middle of a run
    /// (`mid_run`) is resumed when the BPE starts again, in case it stopped before the run
    /// ended.
    pub async fn save(
        &self,
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
        let row = (
            instance.id.clone(),
            deployment.to_owned(),
            instance.business_key.clone(),
            alternative,
            instance.is_finished(),
            instance.next_due(),
            signals,
            data,
            claimed_task.map(str::to_owned),
            mid_run,
        );
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO instances(id, deployment, business_key, alternative_key, finished, next_due, signals, format, data, mid_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(id) DO UPDATE SET alternative_key = excluded.alternative_key,
                     finished = excluded.finished, next_due = excluded.next_due,
                     signals = excluded.signals, format = excluded.format, data = excluded.data,
                     mid_run = excluded.mid_run",
                params![row.0, row.1, row.2, row.3, row.4, row.5, row.6, INSTANCE_FORMAT, row.7, row.9],
            )?;
            if let Some(task) = row.8 {
                tx.execute("UPDATE claimed SET done = 1 WHERE task_id = ?1", params![task])?;
            }
            tx.commit()
        })
        .await
    }

    /// Running instances whose business key or alternative business key is `key`.
    pub async fn running_by_key(&self, key: &str) -> Result<Vec<StoredInstance>> {
        let key = key.to_owned();
        let rows = self
            .with(move |c| {
                let mut statement = c.prepare_cached(
                    "SELECT deployment, format, data FROM instances
                     WHERE finished = 0 AND (business_key = ?1 OR alternative_key = ?1)",
                )?;
                let rows = statement
                    .query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<(String, i64, String)>>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter().map(decode).collect()
    }

    /// The stored instance `id`, if there is one.
    pub async fn load(&self, id: &str) -> Result<Option<StoredInstance>> {
        let id = id.to_owned();
        let row = self
            .with(move |c| {
                c.query_row(
                    "SELECT deployment, format, data FROM instances WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })
            .await?;
        row.map(decode).transpose()
    }

    /// Ids of running instances with a timer or job due at or before `now`, and the
    /// earliest due time after it.
    pub async fn due(&self, now: i64) -> Result<(Vec<String>, Option<i64>)> {
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT id FROM instances WHERE finished = 0 AND next_due <= ?1 ORDER BY next_due LIMIT 1000",
            )?;
            let due = statement
                .query_map(params![now], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            let next = c.query_row(
                "SELECT MIN(next_due) FROM instances WHERE finished = 0 AND next_due > ?1",
                params![now],
                |r| r.get(0),
            )?;
            Ok((due, next))
        })
        .await
    }

    /// Ids of instances saved in the middle of a run and not since (the BPE stopped during
    /// the run).
    pub async fn interrupted(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT id FROM instances WHERE finished = 0 AND mid_run = 1")?;
            let ids = statement
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }

    /// Ids of running instances waiting for the signal `name`.
    pub async fn waiting_for_signal(&self, name: &str) -> Result<Vec<String>> {
        let pattern = format!("%|{}|%", name.replace('%', "\\%").replace('_', "\\_"));
        self.with(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT id FROM instances WHERE finished = 0 AND signals LIKE ?1 ESCAPE '\\'",
            )?;
            let ids = statement
                .query_map(params![pattern], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(ids)
        })
        .await
    }

    /// How many stored instances have not finished.
    pub async fn running_count(&self) -> Result<u64> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM instances WHERE finished = 0",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n.max(0) as u64)
    }

    /// Records that the BPE claimed `task_id` (set it in progress) and has yet to act on it.
    pub async fn claim(&self, task_id: &str, task: &serde_json::Value) -> Result<()> {
        let (id, task) = (task_id.to_owned(), task.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO claimed(task_id, task, done) VALUES (?1, ?2, 0)
                 ON CONFLICT(task_id) DO UPDATE SET task = excluded.task, done = 0",
                params![id, task],
            )
        })
        .await
        .map(|_| ())
    }

    /// Records that the BPE acted on the claimed `task_id`.
    pub async fn claim_done(&self, task_id: &str) -> Result<()> {
        let id = task_id.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE claimed SET done = 1 WHERE task_id = ?1",
                params![id],
            )
        })
        .await
        .map(|_| ())
    }

    /// Tasks claimed but not acted on (the BPE stopped in between), as claimed.
    pub async fn unfinished_claims(&self) -> Result<Vec<serde_json::Value>> {
        let rows = self
            .with(|c| {
                let mut statement =
                    c.prepare("SELECT task FROM claimed WHERE done = 0 ORDER BY rowid")?;
                let rows = statement
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                Ok(rows)
            })
            .await?;
        rows.iter()
            .map(|t| serde_json::from_str(t).map_err(Error::stored_data("claimed Task")))
            .collect()
    }

    /// The mark of the send `key` and the Task it sends (JSON), if it was recorded.
    pub async fn send_mark(&self, key: &str) -> Result<Option<(SendMark, String)>> {
        let key = key.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT state, task FROM sent WHERE key = ?1",
                params![key],
                |r| {
                    let state: String = r.get(0)?;
                    let mark = if state == "sent" {
                        SendMark::Sent
                    } else {
                        SendMark::Pending
                    };
                    Ok((mark, r.get(1)?))
                },
            )
            .optional()
        })
        .await
    }

    /// Records that the Task `task` is about to be created at `target_url` for the send `key`.
    pub async fn mark_pending(&self, key: &str, task: &str, target_url: &str) -> Result<()> {
        let (key, task, url) = (key.to_owned(), task.to_owned(), target_url.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO sent(key, state, task, target_url) VALUES (?1, 'pending', ?2, ?3)",
                params![key, task, url],
            )
        })
        .await
        .map(|_| ())
    }

    /// Records that the target stored the Task of the send `key`.
    pub async fn mark_sent(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.with(move |c| {
            c.execute(
                "UPDATE sent SET state = 'sent' WHERE key = ?1",
                params![key],
            )
        })
        .await
        .map(|_| ())
    }

    /// Forgets a pending send that certainly did not reach the target (it refused it).
    pub async fn forget_send(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.with(move |c| c.execute("DELETE FROM sent WHERE key = ?1", params![key]))
            .await
            .map(|_| ())
    }

    /// Records the QuestionnaireResponse `questionnaire_response` of the user task `node` of
    /// `instance_id`.
    pub async fn add_user_task(
        &self,
        questionnaire_response: &str,
        instance_id: &str,
        node: &str,
    ) -> Result<()> {
        let row = (
            questionnaire_response.to_owned(),
            instance_id.to_owned(),
            node.to_owned(),
        );
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO user_tasks(questionnaire_response, instance_id, node) VALUES (?1, ?2, ?3)",
                params![row.0, row.1, row.2],
            )
        })
        .await
        .map(|_| ())
    }

    /// The instance and node of the open user task answered by this QuestionnaireResponse.
    pub async fn take_user_task(
        &self,
        questionnaire_response: &str,
    ) -> Result<Option<(String, String)>> {
        let id = questionnaire_response.to_owned();
        self.with(move |c| {
            let found = c
                .query_row(
                    "SELECT instance_id, node FROM user_tasks WHERE questionnaire_response = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(found)
        })
        .await
    }

    /// Forgets a user task once its QuestionnaireResponse was answered.
    pub async fn remove_user_task(&self, questionnaire_response: &str) -> Result<()> {
        let id = questionnaire_response.to_owned();
        self.with(move |c| {
            c.execute(
                "DELETE FROM user_tasks WHERE questionnaire_response = ?1",
                params![id],
            )
        })
        .await
        .map(|_| ())
    }

    /// Whether a user task of this instance and node already has its QuestionnaireResponse.
    pub async fn has_user_task(&self, instance_id: &str, node: &str) -> Result<bool> {
        let (id, node) = (instance_id.to_owned(), node.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM user_tasks WHERE instance_id = ?1 AND node = ?2",
                params![id, node],
                |r| r.get::<_, i64>(0),
            )
        })
        .await
        .map(|n| n > 0)
    }

    /// When the last event of `kind` was seen (Unix milliseconds), for catching up after a
    /// restart.
    pub async fn last_event(&self, kind: &str) -> Result<Option<i64>> {
        let kind = kind.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT millis FROM last_events WHERE kind = ?1",
                params![kind],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// Moves the last event time of `kind` forward (never back).
    pub async fn set_last_event(&self, kind: &str, millis: i64) -> Result<()> {
        let kind = kind.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO last_events(kind, millis) VALUES (?1, ?2)
                 ON CONFLICT(kind) DO UPDATE SET millis = MAX(millis, excluded.millis)",
                params![kind, millis],
            )
        })
        .await
        .map(|_| ())
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

    #[tokio::test]
    async fn instances_round_trip_and_are_found_by_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.sqlite");
        let stored = instance().await;
        {
            let state = StateStore::open(&path).expect("open");
            state
                .save("t_p|1.0", &stored, None, false)
                .await
                .expect("save");
        }
        let state = StateStore::open(&path).expect("reopen");
        let found = state.running_by_key("bk").await.expect("by key");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].deployment, "t_p|1.0");
        assert_eq!(found[0].instance, stored);
        assert!(state
            .running_by_key("other")
            .await
            .expect("by key")
            .is_empty());
        assert!(state.interrupted().await.expect("interrupted").is_empty());
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
        let state = StateStore::in_memory().expect("state");
        let error = state
            .with(|c| c.execute("INSERT INTO no_such_table VALUES (1)", []))
            .await
            .expect_err("no such table");
        assert_eq!(error.to_string(), "BPE state database");
        let source = std::error::Error::source(&error).expect("the database error is kept");
        assert!(source.is::<rusqlite::Error>());
        let chain = dsf_core::ErrorChain(&error).to_string();
        assert!(chain.contains("no such table: no_such_table"), "{chain}");
    }

    #[tokio::test]
    async fn send_marks_and_claims() {
        let state = StateStore::in_memory().expect("state");
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
        let task = serde_json::json!({"resourceType": "Task", "id": "t1"});
        state.claim("t1", &task).await.expect("claim");
        assert_eq!(state.unfinished_claims().await.expect("claims"), vec![task]);
        state.claim_done("t1").await.expect("done");
        assert!(state.unfinished_claims().await.expect("claims").is_empty());
        state.set_last_event("task", 10).await.expect("event");
        state.set_last_event("task", 5).await.expect("event");
        assert_eq!(state.last_event("task").await.expect("event"), Some(10));
    }
}
