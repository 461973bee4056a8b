//! Random access to single records: the store keeps only an index of where each unit's record
//! is (see `crate::store::BodyRef`), and loads units through [`DatiBodies`].
//!
//! Each file is opened once and kept (its header checked, its key check verified); records are
//! read with positioned reads, so any number of threads can load at once. This module does not
//! check the hash chain (a single record has no neighbour to check against): the record's two
//! checksums and its AEAD tag, which binds the file id, seq and prev hash, say it is the record
//! that was written there.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::format::{self, Body, DatiHeader, FRAME_HEAD, FRAME_OVERHEAD, HEADER_LEN, MIN_BODY};
use super::{list_files, DatiError, RecordProblem, MAX_RECORD_BODY};
use crate::crypto::{EpochKey, KeySchedule, Purpose};
use crate::id::DatabaseId;
use crate::unit::TransferUnit;

/// Open files kept; beyond this the cache starts over (files are reopened on demand).
const MAX_OPEN: usize = 256;

/// Where one record is: file NNNN of its origin, byte offset, record length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordLocation {
    /// The file's NNNN.
    pub nnnn: u32,
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// Bytes the record takes (head, body and checksum).
    pub len: u32,
}

/// Loads single records from the daily logs of one data directory.
pub struct DatiBodies {
    dir: PathBuf,
    keys: KeySchedule,
    header_key: EpochKey,
    files: Mutex<BTreeMap<(DatabaseId, u32), Arc<OpenLog>>>,
    record_keys: Mutex<Vec<EpochKey>>,
}

struct OpenLog {
    file: File,
    header: DatiHeader,
    path: PathBuf,
}

impl std::fmt::Debug for DatiBodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatiBodies").field("dir", &self.dir).finish()
    }
}

impl DatiBodies {
    /// Loads from the logs in `dir`, sealed under `keys`.
    pub fn new(dir: &Path, keys: KeySchedule) -> Self {
        let header_key = keys.static_key(Purpose::Log);
        DatiBodies {
            dir: dir.to_path_buf(),
            keys,
            header_key,
            files: Mutex::new(BTreeMap::new()),
            record_keys: Mutex::new(Vec::new()),
        }
    }

    /// The unit of the record at `at` in `origin`'s logs.
    pub fn load(&self, origin: &DatabaseId, at: RecordLocation) -> Result<TransferUnit, DatiError> {
        let log = self.file(origin, at.nnnn)?;
        let bad = |why| DatiError::BadRecord { path: log.path.clone(), offset: at.offset, why };
        let len = usize::try_from(at.len).unwrap_or(usize::MAX);
        if !(FRAME_OVERHEAD + MIN_BODY..=FRAME_OVERHEAD + MAX_RECORD_BODY).contains(&len) {
            return Err(bad(RecordProblem::TooLong { len: at.len }));
        }
        let mut frame = vec![0u8; len];
        log.file.read_exact_at(&mut frame, at.offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(RecordProblem::Truncated { needed: u64::from(at.len), available: 0 })
            } else {
                DatiError::io("read", &log.path)(e)
            }
        })?;
        let head = frame.first_chunk::<FRAME_HEAD>().copied().unwrap_or([0; FRAME_HEAD]);
        let body_len = format::frame_len(head).map_err(bad)?;
        if body_len + FRAME_OVERHEAD != len || !format::frame_checksum_ok(&frame) {
            return Err(bad(RecordProblem::Checksum));
        }
        let body = frame
            .get(FRAME_HEAD..FRAME_HEAD + body_len)
            .and_then(Body::parse)
            .ok_or_else(|| bad(RecordProblem::Checksum))?;
        let key = self.record_key(body.epoch);
        body.open(&log.header, &key).map_err(bad)
    }

    fn record_key(&self, epoch: crate::crypto::Epoch) -> EpochKey {
        let mut keys = self.record_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.iter().find(|k| k.epoch() == epoch) {
            return k.clone();
        }
        let key = self.keys.key(Purpose::Log, epoch);
        if keys.len() >= 8 {
            keys.remove(0);
        }
        keys.push(key.clone());
        key
    }

    fn file(&self, origin: &DatabaseId, nnnn: u32) -> Result<Arc<OpenLog>, DatiError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = files.get(&(*origin, nnnn)) {
            return Ok(log.clone());
        }
        let info = list_files(&self.dir)?
            .into_iter()
            .find(|f| f.origin == *origin && f.nnnn == nnnn)
            .ok_or_else(|| DatiError::MissingLog {
                origin: *origin,
                nnnn,
                dir: self.dir.clone(),
            })?;
        let file = File::open(&info.path).map_err(DatiError::io("open", &info.path))?;
        let mut bytes = [0u8; HEADER_LEN];
        file.read_exact_at(&mut bytes, 0).map_err(DatiError::io("read", &info.path))?;
        let header = DatiHeader::decode(&bytes)
            .map_err(|why| DatiError::BadHeader { path: info.path.clone(), why })?;
        if !DatiHeader::key_matches(&bytes, &self.header_key) {
            let offset = super::len64(format::KEY_CHECK_OFFSET);
            return Err(DatiError::WrongKey { path: info.path, offset });
        }
        if files.len() >= MAX_OPEN {
            files.clear();
        }
        let log = Arc::new(OpenLog { file, header, path: info.path });
        files.insert((*origin, nnnn), log.clone());
        Ok(log)
    }
}
