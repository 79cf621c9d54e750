//! Binary content kept apart from the resource rows, in parts of [`PART_BYTES`], so that a
//! Binary of any size is written and read a part at a time and never held in memory whole
//! (the Java DSF keeps it in a PostgreSQL large object for the same reason).
//!
//! Where the parts are kept is the backend's choice ([`ContentPlace`]): files beside a
//! SQLite database file ([`files`]), rows of the database otherwise (PostgreSQL, an
//! in-memory SQLite database).
//!
//! Content is written first, under an id of its own ([`ContentWriter`]); the create that
//! makes it a Binary's data attaches it in the create's transaction
//! ([`super::WriteOp::CreateWithContent`]). Content that no Binary claims (an upload
//! refused or broken off) is removed by [`ResourceStore::remove_unclaimed_content`].

mod files;

pub(super) use files::directory_for;

use super::sql::{Dialect, Sql, SqlValue};
use super::{ResourceStore, Session};
use crate::{Error, Result};
use bytes::Bytes;
use dsf_core::ErrorChain;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
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

/// Content is unclaimed once this long without a write and without a Binary that owns it.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(60 * 60);

/// Where a store keeps Binary content.
#[derive(Debug, Clone)]
pub(super) enum ContentPlace {
    /// Rows of `binary_parts`, in the database's own transactions.
    Database,
    /// One file per content in this directory (see [`files`]).
    Directory(Arc<Path>),
}

/// Content written ahead of the Binary that will own it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedContent {
    id: String,
    size: u64,
}

impl StagedContent {
    /// Bytes in all.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Where a Binary version's content is kept, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredContent {
    pub(crate) id: String,
    /// The content's length in bytes.
    pub size: u64,
}

impl StoredContent {
    /// How many parts hold the content.
    pub fn parts(&self) -> u64 {
        parts_of(self.size)
    }
}

/// Writes content a part at a time. Parts are stored by a task of their own while the next
/// ones arrive (in a file, or several in one short transaction when they queue up), so that
/// neither the upload waits for the storage nor the database writer is held while the upload
/// waits for the network.
pub struct ContentWriter {
    store: ResourceStore,
    id: String,
    /// The part filling, as the pieces of the request body it is made of (not copied).
    filling: Part,
    /// Bytes handed to the storing task.
    handed: u64,
    parts: Option<mpsc::Sender<Part>>,
    storing: Option<tokio::task::JoinHandle<Result<()>>>,
}

/// Parts that may wait for the storing task: the memory an upload holds is about this many
/// parts, plus the one filling.
const QUEUED_PARTS: usize = 4;

/// A part of content: [`PART_BYTES`] (the last one fewer) in the pieces it arrived in.
#[derive(Debug, Default)]
pub(super) struct Part {
    pieces: Vec<Bytes>,
    length: usize,
}

impl Part {
    fn push(&mut self, piece: Bytes) {
        self.length += piece.len();
        self.pieces.push(piece);
    }

    /// The part in one piece (a database row takes it so).
    fn joined(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.length);
        for piece in &self.pieces {
            bytes.extend_from_slice(piece);
        }
        bytes
    }
}

impl ContentWriter {
    fn new(store: ResourceStore) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let (sender, receiver) = mpsc::channel(QUEUED_PARTS);
        let storing = match &store.content {
            ContentPlace::Database => tokio::spawn(store_rows(store.clone(), id.clone(), receiver)),
            ContentPlace::Directory(directory) => {
                let path = files::path_of(directory, &id);
                tokio::task::spawn_blocking(move || files::store(&path?, receiver))
            }
        };
        ContentWriter {
            store,
            id,
            filling: Part::default(),
            handed: 0,
            parts: Some(sender),
            storing: Some(storing),
        }
    }

    /// Appends `data`, handing each part over to be stored as it fills. The bytes are not
    /// copied here: the part keeps the pieces it is made of.
    pub async fn write(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let room = PART_BYTES - self.filling.length;
            self.filling.push(data.split_to(room.min(data.len())));
            if self.filling.length == PART_BYTES {
                self.hand_over().await?;
            }
        }
        Ok(())
    }

    async fn hand_over(&mut self) -> Result<()> {
        if self.filling.length == 0 {
            return Ok(());
        }
        let part = std::mem::take(&mut self.filling);
        let length = part.length as u64;
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
            Some(task) => finished(task).await,
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
        self.handed + self.filling.length as u64
    }
}

/// Stores parts as rows as they come, each batch that waits in one transaction.
async fn store_rows(
    store: ResourceStore,
    id: String,
    mut receiver: mpsc::Receiver<Part>,
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
                .bind(crate::date::unix_millis_now())
                .push(", ")
                .bind(SqlValue::Bytes(part.joined()))
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

/// Claims staged content for a Binary version, in the create's transaction. The content is
/// complete: a [`StagedContent`] comes only from [`ContentWriter::finish`].
pub(super) async fn attach(
    session: &mut dyn Session,
    dialect: Dialect,
    id: &str,
    version: i64,
    content: &StagedContent,
) -> Result<()> {
    if session.count(&claimed_by(dialect, &content.id)).await? != 0 {
        return Err(Error::storage_fault(format!(
            "staged content {} is already claimed",
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

/// Removes the content of every version of Binary `id` (permanent delete); files go once
/// the delete is committed ([`ResourceStore::remove_content_files`]).
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

/// Runs file work on the blocking pool; a task that panicked is a storage fault.
async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    finished(tokio::task::spawn_blocking(work)).await
}

/// What a content task returned; one that panicked is a storage fault.
async fn finished<T>(task: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    task.await
        .map_err(|e| Error::storage_fault(format!("content task failed: {e}")))?
}

fn content_ids_of(dialect: Dialect, binary_id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT content_id FROM binary_contents WHERE res_id = ")
        .bind(binary_id);
    sql
}

impl ResourceStore {
    /// Starts writing content for a Binary that does not exist yet.
    pub fn write_content(&self) -> ContentWriter {
        ContentWriter::new(self.clone())
    }

    /// Removes staged content no create claimed (the create failed or was refused).
    pub async fn discard_content(&self, content: &StagedContent) {
        let result = match &self.content {
            ContentPlace::Database => {
                async {
                    let mut session = self.backend.write().await?;
                    session
                        .execute(&delete_parts(self.dialect(), &content.id))
                        .await?;
                    session.commit().await
                }
                .await
            }
            ContentPlace::Directory(directory) => {
                self.remove_content_files(directory, vec![content.id.clone()])
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(content = %content.id, error = %ErrorChain(&e), "cannot remove unclaimed Binary content");
        }
    }

    async fn remove_content_files(&self, directory: &Arc<Path>, ids: Vec<String>) -> Result<()> {
        let directory = directory.clone();
        on_blocking_pool(move || {
            ids.iter()
                .try_for_each(|id| files::remove(&files::path_of(&directory, id)?))
        })
        .await
    }

    /// The content files of the Binaries `binary_ids` (about to be deleted permanently).
    /// Read before the write: a deleted Binary gains no content.
    pub(super) async fn content_files_of(&self, binary_ids: &[&str]) -> Result<Vec<String>> {
        let ContentPlace::Directory(_) = &self.content else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::new();
        for id in binary_ids {
            let mut session = self.backend.read().await?;
            ids.extend(session.strings(&content_ids_of(self.dialect(), id)).await?);
        }
        Ok(ids)
    }

    /// Removes the files of content that a committed permanent delete released.
    pub(super) async fn content_files_released(&self, ids: Vec<String>) {
        let ContentPlace::Directory(directory) = &self.content else {
            return;
        };
        if ids.is_empty() {
            return;
        }
        if let Err(e) = self.remove_content_files(directory, ids).await {
            tracing::warn!(error = %ErrorChain(&e), "cannot remove the content of a deleted Binary");
        }
    }

    /// Tidies content at start. Content that no Binary claimed within an hour is what an
    /// upload left behind when the server stopped during it, and goes. Where content is kept
    /// in files, parts an earlier version kept in the database move into files. Returns how
    /// many parts (or files) went.
    pub async fn remove_unclaimed_content(&self) -> Result<u64> {
        match &self.content {
            ContentPlace::Database => {
                let mut sql = Sql::new(self.dialect());
                let cutoff = crate::date::unix_millis_now() - UNCLAIMED_AFTER.as_millis() as i64;
                sql.push("DELETE FROM binary_parts WHERE written < ")
                    .bind(cutoff)
                    .push(" AND content_id NOT IN (SELECT content_id FROM binary_contents)");
                let mut session = self.backend.write().await?;
                let removed = session.execute(&sql).await?;
                session.commit().await?;
                Ok(removed)
            }
            ContentPlace::Directory(directory) => {
                self.move_rows_into_files().await?;
                let listed = directory.clone();
                let candidates =
                    on_blocking_pool(move || files::older_than(&listed, UNCLAIMED_AFTER)).await?;
                let mut unclaimed = Vec::new();
                let mut session = self.backend.read().await?;
                for id in candidates {
                    if session.count(&claimed_by(self.dialect(), &id)).await? == 0 {
                        unclaimed.push(id);
                    }
                }
                drop(session);
                let removed = unclaimed.len() as u64;
                self.remove_content_files(directory, unclaimed).await?;
                Ok(removed)
            }
        }
    }

    /// Moves content kept as rows into files, one content at a time: its rows are written
    /// out as a new upload would be, and the Binary version is pointed at the file in the
    /// transaction that removes the rows. Rows no Binary claims just go.
    async fn move_rows_into_files(&self) -> Result<()> {
        let mut listed = Sql::new(self.dialect());
        listed.push("SELECT DISTINCT content_id FROM binary_parts");
        let ids = self.backend.read().await?.strings(&listed).await?;
        for id in ids {
            let mut counted = Sql::new(self.dialect());
            counted
                .push("SELECT COUNT(*) FROM binary_parts WHERE content_id = ")
                .bind(id.as_str());
            let (claimed, parts) = {
                let mut session = self.backend.read().await?;
                let claimed = session.count(&claimed_by(self.dialect(), &id)).await? > 0;
                (claimed, session.count(&counted).await?)
            };
            let moved = if claimed {
                let mut writer = self.write_content();
                for part in 0..parts as u64 {
                    writer.write(self.part_row(&id, part).await?).await?;
                }
                Some(writer.finish().await?)
            } else {
                None
            };
            let mut session = self.backend.write().await?;
            if let Some(moved) = &moved {
                let mut repointed = Sql::new(self.dialect());
                repointed
                    .push("UPDATE binary_contents SET content_id = ")
                    .bind(moved.id.as_str())
                    .push(" WHERE content_id = ")
                    .bind(id.as_str());
                session.execute(&repointed).await?;
            }
            session.execute(&delete_parts(self.dialect(), &id)).await?;
            session.commit().await?;
            tracing::info!(content = %id, claimed, "moved Binary content out of the database");
        }
        Ok(())
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
        if let ContentPlace::Directory(directory) = &self.content {
            let path = files::path_of(directory, &content.id)?;
            let size = content.size;
            return on_blocking_pool(move || files::read_part(&path, size, part)).await;
        }
        self.part_row(&content.id, part).await
    }

    /// Part `part` of content `content_id` kept as rows.
    async fn part_row(&self, content_id: &str, part: u64) -> Result<Bytes> {
        let mut sql = Sql::new(self.dialect());
        sql.push("SELECT bytes FROM binary_parts WHERE content_id = ")
            .bind(content_id)
            .push(" AND part = ")
            .bind(part as i64);
        let mut session = self.backend.read().await?;
        session
            .blobs(&sql)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::storage_fault(format!("part {part} of content {content_id} is missing"))
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

fn claimed_by(dialect: Dialect, content_id: &str) -> Sql {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM binary_contents WHERE content_id = ")
        .bind(content_id);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, SqliteBackend};

    fn insert(dialect: Dialect, table_and_columns: &str, values: Vec<SqlValue>) -> Sql {
        let mut sql = Sql::new(dialect);
        sql.push("INSERT INTO ")
            .push(table_and_columns)
            .push(" VALUES (");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(value);
        }
        sql.push(")");
        sql
    }

    /// Content an earlier version kept as rows of a database file moves into a file at
    /// start; rows no Binary claims go.
    #[tokio::test]
    async fn rows_of_a_database_file_move_into_files() {
        let directory = tempfile::tempdir().expect("directory");
        let backend = Arc::new(
            SqliteBackend::open(&directory.path().join("fhir.sqlite")).expect("SQLite file"),
        );
        let files = backend.content_directory().expect("directory").to_owned();
        let dialect = backend.dialect();
        let (claimed, unclaimed) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let mut session = backend.write().await.expect("session");
        let rows = [
            (claimed, 0, vec![1u8; PART_BYTES]),
            (claimed, 1, vec![2u8; 5]),
            (unclaimed, 0, vec![3u8; 5]),
        ];
        for (id, part, bytes) in rows {
            let values = vec![
                SqlValue::from(id.to_string()),
                SqlValue::from(part as i64),
                SqlValue::from(0i64),
                SqlValue::Bytes(bytes),
            ];
            let sql = insert(
                dialect,
                "binary_parts (content_id, part, written, bytes)",
                values,
            );
            session.execute(&sql).await.expect("part");
        }
        let values = vec![
            SqlValue::from("b1".to_owned()),
            SqlValue::from(1i64),
            SqlValue::from(claimed.to_string()),
            SqlValue::from(PART_BYTES as i64 + 5),
        ];
        let sql = insert(
            dialect,
            "binary_contents (res_id, version, content_id, size)",
            values,
        );
        session.execute(&sql).await.expect("content");
        session.commit().await.expect("commit");

        let store = ResourceStore::new(backend, "https://dsf.test/fhir");
        store.remove_unclaimed_content().await.expect("tidied");
        let stored = store
            .binary_content("b1", 1)
            .await
            .expect("row")
            .expect("content");
        let moved = std::fs::read(files.join(&stored.id)).expect("file");
        assert_eq!(moved.len(), PART_BYTES + 5);
        assert_eq!((moved[0], moved[PART_BYTES]), (1, 2));
        assert!(!files.join(unclaimed.to_string()).exists());
        let mut left = Sql::new(dialect);
        left.push("SELECT COUNT(*) FROM binary_parts");
        let mut session = store.backend.read().await.expect("session");
        assert_eq!(session.count(&left).await.expect("count"), 0);
        assert_eq!(
            store.content_part(&stored, 1).await.expect("part"),
            vec![2u8; 5]
        );
    }
}
