//! The files sled 0.34 writes and its own flush leaves unsynced.
//!
//! sled's `flush` writes its buffers with `sync_file_range`, which waits for the writes but
//! neither flushes the disk's write cache nor syncs the file's size (sled issue #1077; its own
//! flusher thread calls `sync_all` on the data file only every 500 ms), and it never syncs the
//! blob files it writes for records over a quarter of its segment (128 KiB by default). So a
//! store that answers "durable" after a flush (a checkpoint, a subscriber's acknowledgement, a
//! relay's `Posted`) also syncs these: the data file `db`, every blob file not yet synced as it
//! is now, and the blob directory when a blob was new.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file sled 0.34 keeps its log and pages in, inside its directory.
pub(crate) const SLED_DATA_FILE: &str = "db";

/// sled's data file and blob directory of one database.
#[derive(Debug)]
pub(crate) struct SledFiles {
    data: File,
    blobs: PathBuf,
    /// Per blob file, its length when it was synced: sled writes a blob file once and never
    /// changes it, so a file caught part-written is synced again once its length moved.
    synced_blobs: Mutex<HashMap<OsString, u64>>,
}

impl SledFiles {
    /// The files of the sled database open in `dir` (after `sled::Config::open`).
    pub(crate) fn open(dir: &Path) -> std::io::Result<SledFiles> {
        Ok(SledFiles {
            data: File::open(dir.join(SLED_DATA_FILE))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashMap::new()),
        })
    }

    /// Fsyncs the data file, every blob file sled wrote or finished since the last call, and
    /// the blob directory when there was one; forgets blob files sled removed. An fsync of
    /// another handle on the same file syncs the same inode.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.data.sync_all()?;
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        // One caller at a time: two could otherwise both skip a file the other is syncing.
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = HashMap::new();
        let mut new_blob = false;
        for entry in entries {
            // sled removes blob files on its own threads (`gc_blobs`): one gone since the
            // directory was read needs no sync.
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let name = entry.file_name();
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()).and_then(|f| f.sync_all()) {
                    Ok(()) => new_blob = true,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name, len);
        }
        if new_blob {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        Ok(())
    }

    /// The blob files synced, with their lengths then (tests).
    #[cfg(test)]
    pub(crate) fn synced_blobs(&self) -> HashMap<OsString, u64> {
        self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asserts that the data file synced is the file sled writes in `dir`, and the biggest
    /// file there, where the data went (tests: a sled upgrade moving its data elsewhere would
    /// break the sync).
    #[cfg(test)]
    pub(crate) fn assert_syncs_the_data_sled_writes(&self, dir: &Path) {
        use std::os::unix::fs::MetadataExt;
        let synced = self.data.metadata().unwrap();
        let path = dir.join(SLED_DATA_FILE);
        let on_disk = std::fs::metadata(&path).unwrap();
        assert_eq!((synced.dev(), synced.ino()), (on_disk.dev(), on_disk.ino()));
        let biggest = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.metadata().is_ok_and(|m| m.is_file()))
            .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .unwrap();
        assert_eq!(biggest.path(), path);
    }
}
