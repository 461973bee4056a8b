//! Appending to DATI files: one current file per origin, rotation by day and size, group commit,
//! and the repair of torn tails when the logs are opened.
//!
//! `append` only seals into a per-file buffer (a write happens when a buffer passes 512 KiB);
//! `sync` writes the buffers and fdatasyncs each touched file once, so the cost of durability
//! is shared by every record of a batch. After a failed write or fsync the writer refuses all
//! work until it is reopened: the kernel may have dropped the unwritten pages, so a retried
//! fsync could report success for data that is gone; reopening rescans the tail instead.
//!
//! This module does not read records back (see `reader.rs`) and does not decide when to sync
//! (the ledger does).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;

use crate::crypto::{EpochKey, KeySchedule, NonceSequence, Purpose};
use crate::dati::format::{self, DatiHeader, RecordSeal, FRAME_OVERHEAD, HEADER_LEN};
use crate::dati::reader::DatiReader;
use crate::dati::RecordLocation;
use crate::dati::{
    len64, list_files, parse_file_name, utc_date, DatiConfig, DatiError, DatiFileInfo,
    DatiPosition, MAX_RECORD_BODY,
};
use crate::id::{DatabaseId, InstanceId};
use crate::unit::TransferUnit;

/// A file buffer is written (without fsync) once it holds this many bytes.
const FLUSH_AT: usize = 512 << 10;
/// Open file handles kept between syncs; the least recently used beyond it are closed.
const MAX_OPEN_FILES: usize = 64;
/// fdatasyncs run at the same time by one `sync`.
const PARALLEL_SYNCS: usize = 16;

/// What [`DatiWriter::open`] found and repaired. The caller logs each repair.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct OpenReport {
    /// DATI files found in the directory.
    pub files: usize,
    /// What was repaired or left damaged.
    pub repairs: Vec<Repair>,
}

/// One thing [`DatiWriter::open`] did about damage.
#[derive(Debug)]
#[non_exhaustive]
pub enum Repair {
    /// The newest file of an origin ended in a partial or damaged record with nothing good
    /// after it (a write cut short by a crash or power loss); it was cut back to `offset`, the
    /// end of its last good record.
    TornTailCut {
        /// The file.
        path: PathBuf,
        /// Its new length.
        offset: u64,
        /// Bytes removed.
        cut_bytes: u64,
        /// The first problem in the removed bytes.
        cause: DatiError,
    },
    /// The newest file of an origin is damaged before good records, or its header is bad. It was
    /// left as it is; the next unit of that origin starts a new file.
    DamagedFileKept {
        /// The file.
        path: PathBuf,
        /// The first problem.
        cause: DatiError,
    },
    /// A file no `sync` completed (`.<name>.tmp`) held only records never confirmed durable; it
    /// was removed.
    UnsyncedFileRemoved {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repair::TornTailCut { path, offset, cut_bytes, cause } => write!(
                f,
                "cut a torn tail of {cut_bytes} bytes from {} at offset {offset}: {cause}",
                path.display()
            ),
            Repair::DamagedFileKept { path, cause } => write!(
                f,
                "kept damaged {} as it is and started a new file for its origin: {cause}",
                path.display()
            ),
            Repair::UnsyncedFileRemoved { path, bytes } => write!(
                f,
                "removed {} ({bytes} bytes never confirmed durable by a sync)",
                path.display()
            ),
        }
    }
}

/// Appends units to the logs of their origins. One writer per directory (the data directory
/// lock ensures it); not shared between threads without a lock.
pub struct DatiWriter {
    dir: PathBuf,
    size_limit: u64,
    keys: KeySchedule,
    /// The static log key, for the header key check.
    header_key: EpochKey,
    /// The log key of the last epoch written.
    record_key: Option<EpochKey>,
    nonces: NonceSequence,
    /// The file each origin appends to; absent: the next unit starts a new file.
    current: BTreeMap<DatabaseId, LogFile>,
    /// Files rotated out that still need a write, fsync or name.
    closing: Vec<LogFile>,
    /// Highest NNNN used per origin, including files not yet named.
    allocated: BTreeMap<DatabaseId, u32>,
    /// Highest NNNN per origin among the floor and the named files.
    high_water: BTreeMap<DatabaseId, u32>,
    /// End of each origin's log after the last whole sync (at open: the logs' end). Jobs of
    /// [`DatiWriter::start_sync`] do not move it.
    synced: BTreeMap<DatabaseId, DatiPosition>,
    appends: u64,
    /// Record bytes appended since the last sync job or whole sync started.
    unsynced_bytes: u64,
    failed: Option<PathBuf>,
    /// How long fdatasyncs take, here and in the jobs handed out.
    times: std::sync::Arc<crate::dati::SyncTimes>,
}

impl std::fmt::Debug for DatiWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatiWriter")
            .field("dir", &self.dir)
            .field("origins", &self.current.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl DatiWriter {
    /// Opens the logs in `cfg.dir` (creating it), removes leftover `.tmp` files, and scans the
    /// newest file of each origin: a torn tail is cut off; damage followed by good records, or a
    /// bad header, is left in place and that origin's next unit starts a new file. Both are in the
    /// report. A file whose key check fails stops the open with [`DatiError::WrongKey`]. Each
    /// origin's newest file is fdatasynced: what an earlier run wrote and never synced (it
    /// failed, or was killed) is durable before anyone counts it as held.
    ///
    /// `nnnn_floor` holds NNNN high-water marks kept elsewhere (files may have been archived
    /// away): an origin's next file is numbered `max(floor, highest file found) + 1`.
    ///
    /// Nonces: records are sealed under a writer id derived from `instance` and fresh random
    /// bytes, so reopening a writer in the same process never repeats a nonce.
    pub fn open(
        cfg: DatiConfig,
        keys: KeySchedule,
        instance: InstanceId,
        nnnn_floor: &BTreeMap<DatabaseId, u32>,
    ) -> Result<(Self, OpenReport), DatiError> {
        let dir = cfg.dir;
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(DatiError::io("create", &dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut report = OpenReport::default();
        let mut dir_changed = remove_temp_files(&dir, &mut report)?;
        let files = list_files(&dir)?;
        report.files = files.len();
        let mut high_water = nnnn_floor.clone();
        let mut newest: BTreeMap<DatabaseId, DatiFileInfo> = BTreeMap::new();
        for file in files {
            let mark = high_water.entry(file.origin).or_insert(file.nnnn);
            *mark = (*mark).max(file.nnnn);
            newest.insert(file.origin, file);
        }
        let mut current = BTreeMap::new();
        let mut synced = BTreeMap::new();
        // Records a failed run wrote but never synced may sit in the page cache: make them
        // durable before they count as held (a cut tail is synced by the cut).
        let mut unsynced = Vec::new();
        for (origin, info) in newest {
            let end = match inspect_tail(&info, &keys)? {
                Tail::Good { header, end, prev_hash } => {
                    current.insert(origin, LogFile::existing(header, &info.path, end, prev_hash));
                    unsynced.push(info.path.clone());
                    end
                }
                Tail::Torn { header, end, prev_hash, cause } => {
                    truncate(&info.path, end)?;
                    dir_changed = true;
                    current.insert(origin, LogFile::existing(header, &info.path, end, prev_hash));
                    let cut_bytes = info.size.saturating_sub(end);
                    let path = info.path.clone();
                    report.repairs.push(Repair::TornTailCut {
                        path,
                        offset: end,
                        cut_bytes,
                        cause,
                    });
                    end
                }
                Tail::Damaged { cause } => {
                    report.repairs.push(Repair::DamagedFileKept { path: info.path, cause });
                    info.size
                }
            };
            synced.insert(origin, DatiPosition { nnnn: info.nnnn, offset: end });
        }
        // A few at a time: a head office logs hundreds of origins.
        for group in unsynced.chunks(PARALLEL_SYNCS) {
            let handles: Vec<File> = group
                .iter()
                .map(|path| File::open(path).map_err(DatiError::io("open", path)))
                .collect::<Result<_, _>>()?;
            let files: Vec<(Option<&File>, &Path)> =
                handles.iter().zip(group).map(|(h, p)| (Some(h), p.as_path())).collect();
            fdatasync_all(&files)?;
        }
        if dir_changed {
            sync_dir(&dir)?;
        }
        let header_key = keys.static_key(Purpose::Log);
        let writer = DatiWriter {
            dir,
            size_limit: cfg.size_limit,
            keys,
            header_key,
            record_key: None,
            nonces: NonceSequence::new(writer_id(instance)),
            current,
            closing: Vec::new(),
            allocated: high_water.clone(),
            high_water,
            synced,
            appends: 0,
            unsynced_bytes: 0,
            failed: None,
            times: Default::default(),
        };
        Ok((writer, report))
    }

    /// Seals `unit` into a record in the buffer of its origin's current file, first starting a
    /// new file when the UTC day of `now_ms` differs from the current file's date or the record
    /// would take the file past the size limit. The record is durable after the next
    /// [`DatiWriter::sync`]; units appended but not synced are lost when the writer is dropped.
    /// Returns where the record is, for an index of the logs ([`crate::dati::DatiBodies`]).
    pub fn append(
        &mut self,
        unit: &TransferUnit,
        now_ms: u64,
    ) -> Result<RecordLocation, DatiError> {
        self.append_encoded(unit, &unit.encode(), now_ms)
    }

    /// [`DatiWriter::append`] with the unit's encoding at hand (a receiver has the bytes it
    /// decoded the unit from): `plain` must be byte for byte `unit.encode()`, which a record
    /// holds (checked in debug builds).
    pub fn append_encoded(
        &mut self,
        unit: &TransferUnit,
        plain: &[u8],
        now_ms: u64,
    ) -> Result<RecordLocation, DatiError> {
        debug_assert_eq!(plain, unit.encode(), "a record holds the canonical encoding");
        self.check_failed()?;
        let (origin, seq) = (unit.origin, unit.seq);
        unit.validate(MAX_RECORD_BODY).map_err(|source| DatiError::InvalidUnit {
            origin,
            seq,
            source,
        })?;
        let body_len = format::body_len(plain.len());
        if body_len > MAX_RECORD_BODY {
            return Err(DatiError::UnitTooLarge { origin, seq, len: plain.len() });
        }
        let record_len = len64(FRAME_OVERHEAD + body_len);
        let date = utc_date(now_ms);
        let epoch = self.keys.epoch_at(now_ms / 1000);
        if self.record_key.as_ref().is_some_and(|k| k.epoch() != epoch) {
            self.record_key = None;
        }
        let keys = &self.keys;
        let key = self.record_key.get_or_insert_with(|| keys.key(Purpose::Log, epoch));
        let nonce = self.nonces.next_nonce().map_err(|_| DatiError::NonceExhausted)?;
        let new_file = |allocated: &mut BTreeMap<DatabaseId, u32>| {
            let nnnn = allocated.get(&origin).copied().unwrap_or(0).checked_add(1);
            let nnnn = nnnn.ok_or(DatiError::NnnnExhausted { origin })?;
            let header = DatiHeader::new(origin, nnnn, date, now_ms, random_file_id());
            let file = LogFile::create(&self.dir, header, &self.header_key)?;
            allocated.insert(origin, nnnn);
            Ok::<_, DatiError>(file)
        };
        let file = match self.current.entry(origin) {
            Entry::Occupied(entry)
                if entry.get().date == date
                    && (entry.get().size() <= len64(HEADER_LEN)
                        || entry.get().size().saturating_add(record_len) <= self.size_limit) =>
            {
                entry.into_mut()
            }
            Entry::Occupied(mut entry) => {
                let old = entry.insert(new_file(&mut self.allocated)?);
                if old.unsynced {
                    self.closing.push(old);
                }
                entry.into_mut()
            }
            Entry::Vacant(entry) => entry.insert(new_file(&mut self.allocated)?),
        };
        let at = RecordLocation {
            nnnn: file.nnnn,
            offset: file.size(),
            len: u32::try_from(record_len).unwrap_or(u32::MAX),
        };
        let seal = RecordSeal {
            version: file.version,
            file_id: &file.file_id,
            prev_hash: &file.prev_hash,
            seq,
            nonce,
            key,
        };
        let hash = format::encode_record(&mut file.buf, seal, plain)
            .ok_or(DatiError::UnitTooLarge { origin, seq, len: plain.len() })?;
        file.prev_hash = hash;
        file.unsynced = true;
        self.appends += 1;
        self.unsynced_bytes = self.unsynced_bytes.saturating_add(record_len);
        file.last_used = self.appends;
        if file.buf.len() >= FLUSH_AT {
            if let Err(e) = file.write_out() {
                self.failed = Some(file.current_path().to_path_buf());
                return Err(e);
            }
        }
        debug_assert_eq!(file.size(), at.offset + u64::from(at.len));
        Ok(at)
    }

    /// Writes the buffers and fdatasyncs every file appended to since the last sync; names new
    /// files and fsyncs the directory when there are any. When it returns `Ok`, every appended
    /// record survives kill -9 and power loss. On `Err` the writer is failed (see the module
    /// doc) and must be reopened.
    pub fn sync(&mut self) -> Result<(), DatiError> {
        self.check_failed()?;
        match self.sync_files() {
            Ok(()) => {
                self.close_idle_handles();
                Ok(())
            }
            Err(e) => {
                let path = match &e {
                    DatiError::Io { path, .. } | DatiError::NameTaken { path } => path.clone(),
                    _ => self.dir.clone(),
                };
                self.failed = Some(path);
                Err(e)
            }
        }
    }

    /// Starts a sync whose fdatasyncs run elsewhere: writes the buffers to the OS and returns
    /// the fdatasyncs still to do as a [`SyncJob`] for another thread, so the caller can seal and
    /// write the next batch meanwhile (the fdatasync was half of a submitting node's loop time).
    /// The records appended so far are durable once the job's `run` returns `Ok`; its result
    /// must be handed back with [`DatiWriter::sync_failed`] when it is an error. A sync that must
    /// name a new file or finish a rotated one runs here, whole (`Done`): that happens once a
    /// file, and naming must follow the header's fdatasync.
    pub fn start_sync(&mut self) -> Result<SyncStart, DatiError> {
        self.check_failed()?;
        if self.needs_whole_sync() {
            return self.sync().map(|()| SyncStart::Done);
        }
        let mut files = Vec::new();
        for file in self.current.values_mut().filter(|f| f.unsynced) {
            let dup = file.write_out().and_then(|()| {
                let path = file.current_path().to_path_buf();
                let handle = file.handle()?.try_clone().map_err(DatiError::io("dup", &path))?;
                Ok(SyncFile { handle, path })
            });
            match dup {
                Ok(f) => files.push(f),
                Err(e) => {
                    self.failed = Some(file.current_path().to_path_buf());
                    return Err(e);
                }
            }
            file.unsynced = false;
        }
        self.close_idle_handles();
        let bytes = std::mem::take(&mut self.unsynced_bytes);
        Ok(if files.is_empty() {
            SyncStart::Done
        } else {
            SyncStart::Job(SyncJob { files, bytes, times: self.times.clone() })
        })
    }

    /// Whether the next sync must run whole: a new file waits for its name, or a rotated one
    /// for its last fdatasync. The caller waits for every [`SyncJob`] it started before (a
    /// newer file must never be named, nor a rotated one synced a second time, while an older
    /// job may still fail: a crash could then keep later records and lose earlier ones).
    pub fn needs_whole_sync(&self) -> bool {
        !self.closing.is_empty() || self.current.values().any(|f| f.unsynced && f.temp.is_some())
    }

    /// A [`SyncJob`] failed: the writer refuses all work until reopened, as after a failed
    /// `sync` (the kernel may have dropped the pages; see the module doc).
    pub fn sync_failed(&mut self, error: &DatiError) {
        let path = match error {
            DatiError::Io { path, .. } => path.clone(),
            _ => self.dir.clone(),
        };
        self.failed.get_or_insert(path);
    }

    /// How long the fdatasyncs took since open (here and in the jobs handed out).
    pub fn sync_times(&self) -> crate::dati::DiskSyncs {
        self.times.snapshot()
    }

    /// The end of each origin's log after the last whole sync (at open: what the logs hold).
    pub fn positions(&self) -> BTreeMap<DatabaseId, DatiPosition> {
        self.synced.clone()
    }

    /// Per origin, the highest NNNN of the floor given to `open` and of the files named since;
    /// the caller persists it as the next floor.
    pub fn nnnn_high_water(&self) -> BTreeMap<DatabaseId, u32> {
        self.high_water.clone()
    }

    /// The directory of the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_failed(&self) -> Result<(), DatiError> {
        match &self.failed {
            Some(path) => Err(DatiError::WriterFailed { path: path.clone() }),
            None => Ok(()),
        }
    }

    fn sync_files(&mut self) -> Result<(), DatiError> {
        self.unsynced_bytes = 0;
        // Hand every buffer to the OS first, so that the fdatasyncs can overlap.
        let pending = self.closing.iter_mut().chain(self.current.values_mut());
        for file in pending.filter(|f| f.unsynced) {
            file.write_out()?;
            file.handle()?;
        }
        let pending: Vec<(Option<&File>, &Path)> =
            (self.closing.iter().chain(self.current.values()))
                .filter(|f| f.unsynced)
                .map(|f| (f.handle.as_ref(), f.current_path()))
                .collect();
        let started = std::time::Instant::now();
        fdatasync_all(&pending)?;
        self.times.record(started.elapsed());
        let mut named = false;
        let mut touched = Vec::new();
        for file in self.closing.iter_mut().filter(|f| f.unsynced) {
            named |= file.publish()?;
        }
        for (origin, file) in self.current.iter_mut().filter(|(_, f)| f.unsynced) {
            named |= file.publish()?;
            touched.push((*origin, DatiPosition { nnnn: file.nnnn, offset: file.written }));
        }
        if named {
            sync_dir(&self.dir)?;
        }
        for file in self.closing.drain(..) {
            let mark = self.high_water.entry(file.origin).or_insert(file.nnnn);
            *mark = (*mark).max(file.nnnn);
        }
        for (origin, position) in touched {
            let mark = self.high_water.entry(origin).or_insert(position.nnnn);
            *mark = (*mark).max(position.nnnn);
            self.synced.insert(origin, position);
        }
        Ok(())
    }

    /// Keeps at most [`MAX_OPEN_FILES`] handles (a head office logs hundreds of origins).
    fn close_idle_handles(&mut self) {
        let mut open: Vec<(u64, DatabaseId)> = self
            .current
            .iter()
            .filter(|(_, f)| f.handle.is_some())
            .map(|(origin, f)| (f.last_used, *origin))
            .collect();
        if open.len() <= MAX_OPEN_FILES {
            return;
        }
        open.sort_unstable();
        let excess = open.len() - MAX_OPEN_FILES;
        for (_, origin) in open.into_iter().take(excess) {
            if let Some(file) = self.current.get_mut(&origin) {
                file.handle = None;
                file.buf = Vec::new();
            }
        }
    }
}

/// How [`DatiWriter::start_sync`] went.
#[derive(Debug)]
pub enum SyncStart {
    /// What was appended since the last sync is durable (nothing to sync, or a whole sync
    /// ran); jobs started before may still be running.
    Done,
    /// The fdatasyncs to run before the records appended are durable.
    Job(SyncJob),
}

/// The fdatasyncs of one started sync, over duplicates of the files' handles: they may run on
/// any thread, while the writer goes on appending (a later sync covers what comes after).
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<SyncFile>,
    /// Record bytes it makes durable (written since the job before).
    bytes: u64,
    times: std::sync::Arc<crate::dati::SyncTimes>,
}

#[derive(Debug)]
struct SyncFile {
    handle: File,
    path: PathBuf,
}

impl SyncJob {
    /// Takes `later`'s files into this job, one fdatasync per file: jobs queued behind a
    /// running sync then run as one, which covers everything each was started for (a file's
    /// fdatasync covers all that was written to it before).
    pub fn absorb(&mut self, later: SyncJob) {
        self.bytes = self.bytes.saturating_add(later.bytes);
        for file in later.files {
            if !self.files.iter().any(|f| f.path == file.path) {
                self.files.push(file);
            }
        }
    }

    /// A job with nothing to sync: it only hands out a ticket (for batches promised the next
    /// job when what they need was synced another way).
    pub fn nothing(writer: &DatiWriter) -> SyncJob {
        SyncJob { files: Vec::new(), bytes: 0, times: writer.times.clone() }
    }

    /// Record bytes it makes durable: a large job is worth its sync at once.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Runs the fdatasyncs (concurrently when there are several files).
    pub fn run(&self) -> Result<(), DatiError> {
        if self.files.is_empty() {
            return Ok(());
        }
        let files: Vec<(Option<&File>, &Path)> =
            self.files.iter().map(|f| (Some(&f.handle), f.path.as_path())).collect();
        let started = std::time::Instant::now();
        fdatasync_all(&files)?;
        self.times.record(started.elapsed());
        Ok(())
    }
}

/// One file being appended to.
struct LogFile {
    origin: DatabaseId,
    nnnn: u32,
    date: u32,
    file_id: [u8; 16],
    /// The file's name.
    path: PathBuf,
    /// While the file has no name yet: where it is written.
    temp: Option<PathBuf>,
    handle: Option<File>,
    /// Bytes handed to the OS.
    written: u64,
    /// Bytes not yet handed to the OS.
    buf: Vec<u8>,
    /// The chain hash of the last record (or the BLAKE3 hash of the header).
    prev_hash: [u8; 32],
    /// The file's format version: a file is continued with the chain rule it was created with.
    version: u8,
    /// Appended to since the last fdatasync.
    unsynced: bool,
    last_used: u64,
}

impl LogFile {
    /// A new file under its temporary name, with the header in its buffer.
    fn create(dir: &Path, header: DatiHeader, header_key: &EpochKey) -> Result<Self, DatiError> {
        let bytes = header.encode(header_key);
        let name = header.file_name();
        let temp = dir.join(format!(".{name}.tmp"));
        let handle = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(DatiError::io("create", &temp))?;
        let mut buf = Vec::with_capacity(64 << 10);
        buf.extend_from_slice(&bytes);
        Ok(LogFile {
            origin: header.origin,
            nnnn: header.nnnn,
            date: header.date,
            file_id: header.file_id,
            path: dir.join(name),
            temp: Some(temp),
            handle: Some(handle),
            written: 0,
            buf,
            prev_hash: *blake3::hash(&bytes).as_bytes(),
            version: header.version,
            unsynced: true,
            last_used: 0,
        })
    }

    /// A named file found at open, continued after its last good record.
    fn existing(header: DatiHeader, path: &Path, end: u64, prev_hash: [u8; 32]) -> Self {
        LogFile {
            origin: header.origin,
            nnnn: header.nnnn,
            date: header.date,
            file_id: header.file_id,
            path: path.to_path_buf(),
            temp: None,
            handle: None,
            written: end,
            buf: Vec::new(),
            prev_hash,
            version: header.version,
            unsynced: false,
            last_used: 0,
        }
    }

    fn size(&self) -> u64 {
        self.written + len64(self.buf.len())
    }

    fn current_path(&self) -> &Path {
        self.temp.as_deref().unwrap_or(&self.path)
    }

    fn handle(&mut self) -> Result<&mut File, DatiError> {
        let handle = match self.handle.take() {
            Some(handle) => handle,
            None => {
                let path = self.current_path();
                OpenOptions::new().append(true).open(path).map_err(DatiError::io("open", path))?
            }
        };
        Ok(self.handle.insert(handle))
    }

    /// Hands the buffer to the OS (no fsync).
    fn write_out(&mut self) -> Result<(), DatiError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.current_path().to_path_buf();
        let buf = std::mem::take(&mut self.buf);
        let result = self
            .handle()
            .and_then(|handle| handle.write_all(&buf).map_err(DatiError::io("write", &path)));
        self.buf = buf;
        result?;
        self.written += len64(self.buf.len());
        self.buf.clear();
        Ok(())
    }

    /// Marks the file synced and, for a new file, links it under its name. Returns whether it
    /// named the file (the directory then needs an fsync).
    fn publish(&mut self) -> Result<bool, DatiError> {
        self.unsynced = false;
        let Some(temp) = self.temp.take() else { return Ok(false) };
        if let Err(e) = publish(&temp, &self.path) {
            self.temp = Some(temp);
            return Err(e);
        }
        Ok(true)
    }
}

/// fdatasyncs `files` (a handle, or none for a file not open, and its path), at most
/// [`PARALLEL_SYNCS`] at a time: concurrent flushes of several files cost little more than one.
fn fdatasync_all(files: &[(Option<&File>, &Path)]) -> Result<(), DatiError> {
    let sync = |(handle, path): &(Option<&File>, &Path)| match handle {
        Some(handle) => handle.sync_data().map_err(DatiError::io("fdatasync", path)),
        None => Ok(()),
    };
    if let [file] = files {
        return sync(file);
    }
    for group in files.chunks(PARALLEL_SYNCS) {
        std::thread::scope(|scope| {
            let running: Vec<_> = group.iter().map(|f| (f, scope.spawn(|| sync(f)))).collect();
            for ((_, path), thread) in running {
                thread.join().unwrap_or_else(|_| {
                    let source = std::io::Error::other("fdatasync thread panicked");
                    Err(DatiError::Io { op: "fdatasync", path: path.to_path_buf(), source })
                })?;
            }
            Ok::<_, DatiError>(())
        })?;
    }
    Ok(())
}

/// Gives the file at `temp` its name without ever replacing an existing file.
fn publish(temp: &Path, path: &Path) -> Result<(), DatiError> {
    match fs::hard_link(temp, path) {
        Ok(()) => fs::remove_file(temp).map_err(DatiError::io("remove", temp)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(DatiError::NameTaken { path: path.to_path_buf() })
        }
        // File systems without hard links: check, then rename.
        Err(_) => {
            if path.exists() {
                return Err(DatiError::NameTaken { path: path.to_path_buf() });
            }
            fs::rename(temp, path).map_err(DatiError::io("rename", temp))
        }
    }
}

/// What the scan of an origin's newest file found.
enum Tail {
    /// Good to the end.
    Good { header: DatiHeader, end: u64, prev_hash: [u8; 32] },
    /// Good up to `end`, then nothing good.
    Torn { header: DatiHeader, end: u64, prev_hash: [u8; 32], cause: DatiError },
    /// A bad header, or damage before good records.
    Damaged { cause: DatiError },
}

/// Walks the records of `info` checking checksums and the hash chain (units are not opened: the
/// key check and the checksums suffice to find the tail, and this runs for every origin at open).
fn inspect_tail(info: &DatiFileInfo, keys: &KeySchedule) -> Result<Tail, DatiError> {
    let mut reader = match DatiReader::open(&info.path, keys) {
        Ok(reader) => reader,
        Err(cause @ DatiError::BadHeader { .. }) => return Ok(Tail::Damaged { cause }),
        Err(e) => return Err(e),
    };
    let (mut end, mut prev_hash) = (reader.offset(), reader.header_hash());
    let mut first_error = None;
    while let Some(item) = reader.next_frame() {
        match item {
            Ok(frame) => {
                if let Some(cause) = first_error.take() {
                    return Ok(Tail::Damaged { cause });
                }
                (end, prev_hash) = (frame.end(), frame.hash);
            }
            Err(e @ DatiError::Io { .. }) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let header = reader.header().clone();
    Ok(match first_error {
        None => Tail::Good { header, end, prev_hash },
        Some(cause) => Tail::Torn { header, end, prev_hash, cause },
    })
}

/// Removes `.TUBT_*.DATI.tmp` files; returns whether any was removed.
fn remove_temp_files(dir: &Path, report: &mut OpenReport) -> Result<bool, DatiError> {
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(DatiError::io("list", dir))? {
        let entry = entry.map_err(DatiError::io("list", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let inner = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp"));
        if inner.is_none_or(|n| parse_file_name(n).is_none()) {
            continue;
        }
        let path = entry.path();
        let bytes = fs::metadata(&path).map_err(DatiError::io("stat", &path))?.len();
        fs::remove_file(&path).map_err(DatiError::io("remove", &path))?;
        report.repairs.push(Repair::UnsyncedFileRemoved { path, bytes });
        removed = true;
    }
    Ok(removed)
}

fn truncate(path: &Path, len: u64) -> Result<(), DatiError> {
    let file = OpenOptions::new().write(true).open(path).map_err(DatiError::io("open", path))?;
    file.set_len(len).map_err(DatiError::io("truncate", path))?;
    file.sync_all().map_err(DatiError::io("fsync", path))
}

/// Makes new and removed names in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), DatiError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(DatiError::io("fsync directory", dir))
}

fn random_file_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    id
}

/// The nonce sender of one writer: the process's instance id mixed with fresh random bytes, so
/// two writers opened by one process (a reopen after an error) never share nonces under the log
/// key (see the nonce argument in `crate::crypto::seal`).
fn writer_id(instance: InstanceId) -> InstanceId {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let mut hasher = blake3::Hasher::new_derive_key("meshnode v1 dati writer nonce sender");
    hasher.update(&instance.0);
    hasher.update(&salt);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    InstanceId(id)
}
