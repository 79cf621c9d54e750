//! Binary content kept apart from the resource rows, in parts of [`PART_BYTES`], so that a
//! Binary of any size is written and read a part at a time and never held in memory whole
//! (the Java DSF keeps it in a PostgreSQL large object for the same reason).
//!
//! Content is written first, under an id of its own ([`ContentWriter`]); the create that
//! makes it a Binary's data attaches it in the create's transaction
//! ([`super::WriteOp::CreateWithContent`]). Content that no Binary claims (an upload
//! refused or broken off) is removed by [`ResourceStore::remove_unclaimed_content`].

use super::sql::{Dialect, Sql, SqlValue};
use super::{ResourceStore, Session};
use crate::{Error, Result};
use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// The size of each stored part: large enough that a 1 GiB Binary is a thousand rows, small
/// enough that a reader holds little at a time.
pub const PART_BYTES: usize = 1 << 20;

/// How many parts hold `size` bytes.
fn parts_of(size: u64) -> u64 {
    size.div_ceil(PART_BYTES as u64)
}

/// The refusal of a Binary too large to embed in a Bundle (as base64 in its `data`).
pub(crate) fn too_large_to_embed(size: u64, limit: u64) -> Error {
    Error::NotAcceptable(format!(
        "a Binary of {size} bytes is more than the {limit} a Bundle embeds; read the Binary itself"
    ))
}

/// Content is unclaimed once this old without a Binary that owns it.
const UNCLAIMED_AFTER_MILLIS: i64 = 60 * 60 * 1000;

/// Content written ahead of the Binary that will own it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedContent {
    pub(crate) id: String,
    /// Bytes in all.
    pub size: u64,
}

/// Where a Binary version's content is kept, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredContent {
    pub(crate) id: String,
    pub size: u64,
}

impl StoredContent {
    /// How many parts hold the content.
    pub fn parts(&self) -> u64 {
        parts_of(self.size)
    }
}

/// Writes content a part at a time. Parts are stored by a task of their own while the next
/// ones arrive, several in one short transaction when they queue up, so that neither the
/// upload waits for the database nor the writer is held while the upload waits for the
/// network.
pub struct ContentWriter {
    store: ResourceStore,
    id: String,
    buffer: BytesMut,
    /// Bytes handed to the storing task.
    handed: u64,
    parts: Option<mpsc::Sender<Bytes>>,
    storing: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// Parts that may wait for the storing task: the memory an upload holds is about this many
/// parts, plus the one filling.
const QUEUED_PARTS: usize = 4;

impl ContentWriter {
    fn new(store: ResourceStore) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let (sender, receiver) = mpsc::channel(QUEUED_PARTS);
        let storing = tokio::spawn(store_parts(store.clone(), id.clone(), receiver));
        ContentWriter {
            store,
            id,
            buffer: BytesMut::new(),
            handed: 0,
            parts: Some(sender),
            storing: Some(storing),
        }
    }

    /// Appends `data`, handing each part over to be stored as it fills.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let room = PART_BYTES - self.buffer.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.buffer.extend_from_slice(now);
            data = rest;
            if self.buffer.len() == PART_BYTES {
                self.hand_over().await?;
            }
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let part = self.buffer.split().freeze();
        let length = part.len() as u64;
        let sent = match &self.parts {
            Some(parts) => parts.send(part).await.is_ok(),
            None => false,
        };
        if !sent {
            // The storing task stopped: its error says why.
            return Err(self
                .stored()
                .await
                .err()
                .unwrap_or_else(|| Error::storage_fault("Binary content stopped being stored")));
        }
        self.handed += length;
        Ok(())
    }

    /// Waits for the storing task to store every part handed over.
    async fn stored(&mut self) -> Result<()> {
        self.parts = None;
        match self.storing.take() {
            Some(task) => task
                .await
                .map_err(|e| Error::storage_fault(format!("content task failed: {e}")))?,
            None => Ok(()),
        }
    }

    /// Stores what is left and hands the content over for a create to claim.
    pub async fn finish(mut self) -> Result<StagedContent> {
        self.hand_over().await?;
        self.stored().await?;
        Ok(StagedContent {
            id: std::mem::take(&mut self.id),
            size: self.handed,
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.handed + self.buffer.len() as u64
    }
}

/// Stores parts as they come, each batch that waits in one transaction.
async fn store_parts(
    store: ResourceStore,
    id: String,
    mut receiver: mpsc::Receiver<Bytes>,
) -> Result<()> {
    let mut next_part = 0i64;
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = receiver.try_recv() {
            batch.push(more);
        }
        let mut session = store.backend.write().await?;
        for part in batch {
            let mut sql = Sql::new(store.dialect());
            sql.push("INSERT INTO binary_parts (content_id, part, written, bytes) VALUES (")
                .bind(id.as_str())
                .push(", ")
                .bind(next_part)
                .push(", ")
                .bind(super::write::now_millis())
                .push(", ")
                .bind(SqlValue::Bytes(part.to_vec()))
                .push(")");
            session.execute(&sql).await?;
            next_part += 1;
        }
        session.commit().await?;
    }
    Ok(())
}

impl Drop for ContentWriter {
    /// An upload given up on removes what it stored, in the background, once the parts
    /// handed over are stored.
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        self.parts = None;
        let storing = self.storing.take();
        let store = self.store.clone();
        let staged = StagedContent {
            id: std::mem::take(&mut self.id),
            size: self.handed,
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Some(storing) = storing {
                    let _ = storing.await;
                }
                store.discard_content(&staged).await;
            });
        }
    }
}

fn delete_parts(dialect: Dialect, content_id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM binary_parts WHERE content_id = ")
        .bind(content_id);
    sql
}

/// Claims staged content for a Binary version, in the create's transaction.
pub(super) async fn attach(
    session: &mut dyn Session,
    dialect: Dialect,
    id: &str,
    version: i64,
    content: &StagedContent,
) -> Result<()> {
    let mut present = Sql::new(dialect);
    present
        .push("SELECT COUNT(*) FROM binary_parts WHERE content_id = ")
        .bind(content.id.as_str());
    let mut claimed = Sql::new(dialect);
    claimed
        .push("SELECT COUNT(*) FROM binary_contents WHERE content_id = ")
        .bind(content.id.as_str());
    let expected = parts_of(content.size) as i64;
    if session.count(&present).await? != expected || session.count(&claimed).await? != 0 {
        return Err(Error::storage_fault(format!(
            "staged content {} is incomplete or already claimed",
            content.id
        )));
    }
    let mut sql = Sql::new(dialect);
    sql.push("INSERT INTO binary_contents (res_id, version, content_id, size) VALUES (")
        .bind(id)
        .push(", ")
        .bind(version)
        .push(", ")
        .bind(content.id.as_str())
        .push(", ")
        .bind(content.size as i64)
        .push(")");
    session.queue(sql).await
}

/// Removes the content of every version of Binary `id` (permanent delete).
pub(super) async fn purge(session: &mut dyn Session, dialect: Dialect, id: &str) -> Result<()> {
    let mut parts = Sql::new(dialect);
    parts
        .push("DELETE FROM binary_parts WHERE content_id IN (SELECT content_id FROM binary_contents WHERE res_id = ")
        .bind(id)
        .push(")");
    session.queue(parts).await?;
    let mut contents = Sql::new(dialect);
    contents
        .push("DELETE FROM binary_contents WHERE res_id = ")
        .bind(id);
    session.queue(contents).await
}

impl ResourceStore {
    /// Starts writing content for a Binary that does not exist yet.
    pub fn write_content(&self) -> ContentWriter {
        ContentWriter::new(self.clone())
    }

    /// Removes staged content no create claimed (the create failed or was refused).
    pub async fn discard_content(&self, content: &StagedContent) {
        let result = async {
            let mut session = self.backend.write().await?;
            session
                .execute(&delete_parts(self.dialect(), &content.id))
                .await?;
            session.commit().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(content = %content.id, error = %e, "cannot remove unclaimed Binary content");
        }
    }

    /// Removes content that no Binary claimed within an hour: what an upload left behind
    /// when the server stopped during it. Returns how many parts went.
    pub async fn remove_unclaimed_content(&self) -> Result<u64> {
        let mut sql = Sql::new(self.dialect());
        sql.push("DELETE FROM binary_parts WHERE written < ")
            .bind(super::write::now_millis() - UNCLAIMED_AFTER_MILLIS)
            .push(" AND content_id NOT IN (SELECT content_id FROM binary_contents)");
        let mut session = self.backend.write().await?;
        let removed = session.execute(&sql).await?;
        session.commit().await?;
        Ok(removed)
    }

    /// Where the content of Binary `id` in `version` is kept, if it is kept apart from the
    /// resource (it was uploaded raw, larger than one part).
    pub async fn binary_content(&self, id: &str, version: i64) -> Result<Option<StoredContent>> {
        // One round trip for both columns: `size content_id` as one text.
        let mut sql = Sql::new(self.dialect());
        sql.push(
            "SELECT CAST(size AS TEXT) || ' ' || content_id FROM binary_contents WHERE res_id = ",
        )
        .bind(id)
        .push(" AND version = ")
        .bind(version);
        let mut session = self.backend.read().await?;
        let Some(found) = session.strings(&sql).await?.into_iter().next() else {
            return Ok(None);
        };
        let (size, content_id) = found
            .split_once(' ')
            .ok_or_else(|| Error::storage_fault(format!("Binary/{id} content row: {found}")))?;
        Ok(Some(StoredContent {
            id: content_id.to_owned(),
            size: size.parse().map_err(Error::storage)?,
        }))
    }

    /// Part `part` (from 0) of stored content.
    pub async fn content_part(&self, content: &StoredContent, part: u64) -> Result<Bytes> {
        let mut sql = Sql::new(self.dialect());
        sql.push("SELECT bytes FROM binary_parts WHERE content_id = ")
            .bind(content.id.as_str())
            .push(" AND part = ")
            .bind(part as i64);
        let mut session = self.backend.content_read().await?;
        session
            .blobs(&sql)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::storage_fault(format!("part {part} of content {} is missing", content.id))
            })
    }

    /// The whole content in memory, for a Binary embedded in a Bundle (its `data`); refused
    /// above `limit` bytes.
    pub async fn content_bytes(&self, content: &StoredContent, limit: u64) -> Result<Vec<u8>> {
        if content.size > limit {
            return Err(too_large_to_embed(content.size, limit));
        }
        let mut data = Vec::with_capacity(content.size as usize);
        for part in 0..content.parts() {
            data.extend_from_slice(&self.content_part(content, part).await?);
        }
        Ok(data)
    }
}
