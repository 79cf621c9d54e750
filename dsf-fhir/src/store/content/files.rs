//! Content kept as files in a directory beside a database file, one file per content, named
//! by the content's id. A file is written once, synced before the create that claims it
//! commits, and removed once no Binary version owns it.
//!
//! SQLite would write content twice (its log, then the database) and sync each commit; a
//! file is written once and synced once, which is what lets an upload keep up with the
//! network (docs/performance.md).

use super::{Part, PART_BYTES};
use crate::{Error, Result};
use bytes::Bytes;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// The directory that keeps the content of the database file at `database`:
/// `<database>-binary`, beside it as SQLite's `-wal` file is.
pub fn directory_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-binary");
    PathBuf::from(name)
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::storage_fault(format!("cannot {what} {}: {e}", path.display()))
}

/// The file of content `id`. Ids are UUIDs the store makes; anything else names no file.
pub(super) fn path_of(directory: &Path, id: &str) -> Result<PathBuf> {
    uuid::Uuid::parse_str(id)
        .map(|_| directory.join(id))
        .map_err(|_| Error::storage_fault(format!("{id} is not a content id")))
}

/// Unsynced bytes after which a background sync starts: the disk writes while the upload
/// goes on, and the sync at the end has only the rest left to write.
const SYNC_EVERY: usize = 32 << 20;

/// Writes the parts `receiver` hands over into a new file at `path`, then syncs it and its
/// directory, so that the content is durable before a create claims it. Runs on a thread of
/// its own (the blocking pool); a second one syncs what is written as the upload goes on.
pub(super) fn store(path: &Path, mut receiver: mpsc::Receiver<Part>) -> Result<()> {
    let mut file = File::create_new(path).map_err(|e| io_error("create", path, e))?;
    let syncing = file.try_clone().map_err(|e| io_error("open", path, e))?;
    std::thread::scope(|scope| {
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let syncer = scope.spawn(move || {
            while asked.recv().is_ok() {
                syncing.sync_data()?;
            }
            Ok::<(), std::io::Error>(())
        });
        let mut unsynced = 0;
        while let Some(part) = receiver.blocking_recv() {
            for piece in &part.pieces {
                file.write_all(piece)
                    .map_err(|e| io_error("write", path, e))?;
            }
            unsynced += part.length;
            if unsynced >= SYNC_EVERY {
                // Skipped while a sync is still asked for: that one takes these bytes too.
                let _ = ask.try_send(());
                unsynced = 0;
            }
        }
        drop(ask);
        syncer
            .join()
            .map_err(|_| Error::storage_fault("the content sync thread failed"))?
            .map_err(|e| io_error("sync", path, e))
    })?;
    file.sync_all().map_err(|e| io_error("sync", path, e))?;
    sync_directory(path)
}

/// Makes the file's directory entry durable (a new file is lost in a crash without it).
fn sync_directory(path: &Path) -> Result<()> {
    let Some(directory) = path.parent() else {
        return Ok(());
    };
    #[cfg(unix)]
    File::open(directory)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync", directory, e))?;
    #[cfg(not(unix))]
    let _ = directory;
    Ok(())
}

/// Part `part` (from 0) of the file at `path`, which holds `size` bytes.
pub(super) fn read_part(path: &Path, size: u64, part: u64) -> Result<Bytes> {
    let offset = part * PART_BYTES as u64;
    let length = size.saturating_sub(offset).min(PART_BYTES as u64) as usize;
    let mut file = File::open(path).map_err(|e| io_error("open", path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error("seek in", path, e))?;
    let mut bytes = Vec::with_capacity(length);
    file.take(length as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("read", path, e))?;
    if bytes.len() != length {
        return Err(Error::storage_fault(format!(
            "{} is shorter than its recorded size",
            path.display()
        )));
    }
    Ok(Bytes::from(bytes))
}

/// Removes the file at `path`; one that is already gone is not an error.
pub(super) fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", path, e)),
        _ => Ok(()),
    }
}

/// The content ids of the files in `directory` last written more than `age` ago: the
/// candidates for removal if no Binary owns them. Files of other names are left alone.
pub(super) fn older_than(directory: &Path, age: Duration) -> Result<Vec<String>> {
    let cutoff = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let entries = std::fs::read_dir(directory).map_err(|e| io_error("list", directory, e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", directory, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let written = entry.metadata().and_then(|m| m.modified());
        if uuid::Uuid::parse_str(&name).is_ok() && written.is_ok_and(|w| w < cutoff) {
            ids.push(name);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_file_reads_back_part_by_part() {
        let directory = tempfile::tempdir().expect("directory");
        let id = uuid::Uuid::now_v7().to_string();
        let path = path_of(directory.path(), &id).expect("path");
        let content: Vec<u8> = (0..PART_BYTES + 10).map(|i| (i % 253) as u8).collect();
        let (sender, receiver) = mpsc::channel(4);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || store(&path, receiver))
        };
        for range in [
            0..PART_BYTES / 2,
            PART_BYTES / 2..PART_BYTES,
            PART_BYTES..content.len(),
        ] {
            let mut part = Part::default();
            part.push(Bytes::copy_from_slice(&content[range]));
            sender.blocking_send(part).expect("send");
        }
        drop(sender);
        writer.join().expect("thread").expect("stored");
        let size = content.len() as u64;
        assert_eq!(
            read_part(&path, size, 0).expect("part 0"),
            content[..PART_BYTES]
        );
        assert_eq!(
            read_part(&path, size, 1).expect("part 1"),
            content[PART_BYTES..]
        );
        assert_eq!(
            older_than(directory.path(), Duration::ZERO).expect("list"),
            [id]
        );
        assert!(older_than(directory.path(), Duration::from_secs(3600))
            .expect("list")
            .is_empty());
        remove(&path).expect("removed");
        remove(&path).expect("removing again is no error");
        assert!(path_of(directory.path(), "../fhir.sqlite").is_err());
    }
}
