//! Group commit for backends with a single writer (SQLite): one thread takes every write that
//! is waiting, runs each in its own SAVEPOINT (so each stays all-or-nothing on its own),
//! commits them together, and only then answers them, so an acknowledged write is durable.
//! Concurrent writers then share one commit instead of queueing for one each.

use super::feed::ChangeFeed;
use super::sql::{Dialect, Sql};
use super::{write, Backend, WriteOp, WriteOutcome};
use crate::{Error, Result};
use dsf_core::ErrorChain;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// How many waiting writes one commit takes at most.
const MAX_BATCH: usize = 128;

pub(super) struct Job {
    pub ops: Vec<WriteOp>,
    pub label: Box<dyn Fn(usize) -> String + Send>,
    pub guard: Option<Arc<dyn super::WriteGuard>>,
    pub reply: oneshot::Sender<Result<Vec<WriteOutcome>>>,
}

pub(super) type GroupWriter = mpsc::UnboundedSender<Job>;

pub(super) fn spawn(
    backend: Arc<dyn Backend>,
    base_url: Arc<str>,
    feed: Arc<ChangeFeed>,
) -> std::io::Result<GroupWriter> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("dsf-store-writer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %ErrorChain(&e), "store writer cannot start");
                    return;
                }
            };
            runtime.block_on(run(backend, base_url, feed, rx));
        })?;
    Ok(tx)
}

fn statement(dialect: Dialect, text: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push(text);
    sql
}

async fn run(
    backend: Arc<dyn Backend>,
    base_url: Arc<str>,
    feed: Arc<ChangeFeed>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    let dialect = backend.dialect();
    let savepoint = statement(dialect, "SAVEPOINT dsf_write");
    let release = statement(dialect, "RELEASE SAVEPOINT dsf_write");
    let rollback = statement(dialect, "ROLLBACK TO SAVEPOINT dsf_write");
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut session = match backend.write().await {
            Ok(s) => s,
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
                continue;
            }
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut broken = None;
        for job in &mut batch {
            if let Err(e) = session.execute(&savepoint).await {
                broken = Some(e);
                break;
            }
            let ops = std::mem::take(&mut job.ops);
            match write::execute(&mut *session, dialect, &base_url, ops, job.guard.as_deref()).await
            {
                Ok(outcomes) => {
                    if let Err(e) = session.execute(&release).await {
                        broken = Some(e);
                        break;
                    }
                    results.push(Ok(outcomes));
                }
                Err((index, e)) => {
                    let undone = session
                        .execute(&rollback)
                        .await
                        .and(session.execute(&release).await);
                    if let Err(e) = undone {
                        broken = Some(e);
                        break;
                    }
                    results.push(Err(e.context(&(job.label)(index))));
                }
            }
        }
        let committed = match broken {
            Some(e) => Err(e),
            None => session.commit().await,
        };
        match committed {
            Ok(()) => {
                // Announced before any writer hears back, so a writer that waits for its
                // own event cannot miss it.
                let written: Vec<_> = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .flat_map(|outcomes| super::feed::written(outcomes))
                    .collect();
                feed.publish(written);
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                // Nothing of the batch is stored; every writer in it hears so.
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(Error::storage_fault(format!("commit failed: {e}"))));
                }
            }
        }
    }
}
