//! The production store: one sled tree, keys by prefix (layout in the module doc of
//! `crate::store`).
//!
//! Each insert batch writes the unit runs, the version vector entries of the origins it adds
//! to, new physkey index entries and the caller's meta writes after an intent record, so a
//! crash keeps all of it or none (`intent.rs`; open undoes a batch left half written). Entries
//! of one origin with contiguous seqs are stored as one value
//! (a run, at most [`RUN_MAX_BYTES`] and [`RUN_MAX_INLINE`] or [`RUN_MAX_LOCATED`] entries)
//! because sled costs several µs per key. The version vector is loaded whole at open, so
//! duplicates and `contains` never read sled.
//!
//! # Key-value separation
//!
//! An entry is either the whole encoded unit (inline, from [`Store::insert_batch`]) or a
//! [`BodyRef`] to the daily log record holding it (located, from [`Store::insert_located`]).
//! The ledger inserts located: the tree then holds about 17 bytes per unit instead of ~300,
//! and since sled 0.34 keeps in memory about as much of its tree as has been touched (whatever
//! `cache_capacity` says), that is what bounds memory for a node reading across its whole store.
//! Reads of a located entry go to the [`BodySource`] given to [`SledStore::open_with_bodies`],
//! and the unit that comes back must be the one asked for, or the read fails as corruption.
//! So the daily log files must stay where the source finds them: a store whose logs were
//! archived away still answers counts, `contains`, cursors and application physkeys, but reads
//! of those units fail with [`StoreError::Body`] until the files are back.
//!
//! If applying a batch fails, sled may hold part of it in memory; this store then refuses
//! further batches until it is reopened (which undoes the half-written batch), so that no run
//! can be written over a stale half-written one.
//!
//! This store does not fsync on insert (see [`Store::flush`]) and does not compact runs later: a
//! unit stays in the run it arrived in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use sled::IVec;

use super::intent::{self, Write};
use super::plan::{self, BatchUnit, OriginTags};
use super::{
    BodyRef, BodySource, Checkpointer, Corruption, InsertOutcome, MetaWrite, OriginRange,
    SledFiles, Store, StoreError, StoreKey, VersionVector, MAX_APP_NAME,
};
use crate::id::{DatabaseId, Physkey};
use crate::unit::TransferUnit;

/// A run with an inline entry holds at most this many entries.
pub(crate) const RUN_MAX_INLINE: u32 = 64;
/// A run of located entries only (17 bytes each) holds at most this many: 4.3 KiB, under
/// [`RUN_MAX_BYTES`].
pub(crate) const RUN_MAX_LOCATED: u32 = 256;
/// A run grows past this many bytes only to hold its first entry.
///
/// Kept small on purpose: sled 0.34 keeps up to 17 values in a leaf and writes any page over a
/// quarter of its 512 KiB segment (128 KiB) as a separate blob file, created on every rewrite
/// of that leaf. 17 runs of 7 KiB stay under that; 64-unit runs of 256-byte payloads (21 KiB)
/// did not, and measured about twice the CPU per unit.
pub(crate) const RUN_MAX_BYTES: usize = 7 << 10;

/// Entry tag: length (u32 BE) and the encoded unit follow.
const ENTRY_INLINE: u8 = 0;
/// Entry tag: a [`BodyRef`] follows.
const ENTRY_LOCATED: u8 = 1;
/// Bytes of a located entry, tag included.
const LOCATED_ENTRY_LEN: usize = 1 + BodyRef::LEN;

const UNIT: u8 = b'u';
const VECTOR: u8 = b'v';
const PHYSKEY: u8 = b'p';
const CURSOR: u8 = b'c';
const META: u8 = b'm';
const UNIT_KEY_LEN: usize = 1 + DatabaseId::LEN + 8;
const INDEX_VALUE_LEN: usize = DatabaseId::LEN + 8;

/// The sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    vector: VersionVector,
    tags: OriginTags,
    /// Where located entries are read from; `None` makes reading one an error.
    bodies: Option<Arc<dyn BodySource>>,
    /// An earlier batch failed part way: refuse batches until reopened.
    poisoned: bool,
    /// sled's files its flush leaves unsynced (see [`flush_durably`]).
    files: Arc<SledFiles>,
    /// Test failpoint: the next batch stops after this many writes, as a crash would.
    #[cfg(test)]
    pub(crate) interrupt_after: Option<usize>,
}

impl SledStore {
    /// Opens (or creates) the store in directory `path` with a page cache of
    /// `cache_capacity_bytes` (see [`super::DEFAULT_CACHE_CAPACITY`]), and loads the version
    /// vector. sled also writes back on its own every 500 ms.
    ///
    /// Without a [`BodySource`], reading a unit inserted with [`Store::insert_located`] fails
    /// with [`StoreError::NoBodySource`]; everything else works (see
    /// [`SledStore::open_with_bodies`]).
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Self, StoreError> {
        Self::open_inner(path, cache_capacity_bytes, None)
    }

    /// [`SledStore::open`] with the source that loads units inserted with
    /// [`Store::insert_located`] (the ledger's reader of the daily logs).
    pub fn open_with_bodies(
        path: &Path,
        cache_capacity_bytes: u64,
        source: Arc<dyn BodySource>,
    ) -> Result<Self, StoreError> {
        Self::open_inner(path, cache_capacity_bytes, Some(source))
    }

    fn open_inner(
        path: &Path,
        cache_capacity_bytes: u64,
        bodies: Option<Arc<dyn BodySource>>,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .flush_every_ms(Some(500))
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let files = Arc::new(SledFiles::open(path)?);
        // Blobs an earlier run left may never have been synced.
        files.sync()?;
        if intent::rollback(&db)? {
            flush_durably(&db, &files)?;
            tracing::info!(path = %path.display(), "undid a store batch a crash left half written");
        }
        let mut vector = VersionVector::new();
        for item in db.scan_prefix([VECTOR]) {
            let (key, value) = item?;
            let origin = key
                .get(1..)
                .and_then(|b| DatabaseId::from_bytes(b).ok())
                .ok_or_else(|| corrupt(&key, Corruption::Key))?;
            let range = OriginRange::decode(&origin, &value).map_err(|e| corrupt(&key, e))?;
            vector.replace(origin, Some(range));
        }
        let tags = OriginTags::from_vector(&vector);
        Ok(SledStore {
            db,
            vector,
            tags,
            bodies,
            poisoned: false,
            files,
            #[cfg(test)]
            interrupt_after: None,
        })
    }

    /// Bytes sled uses on disk, for status output.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// The application index entry for `physkey`.
    fn index_get(&self, physkey: &Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError> {
        let key = physkey_key(physkey);
        let Some(value) = self.db.get(key)? else {
            return Ok(None);
        };
        let origin = value.get(..DatabaseId::LEN).and_then(|b| DatabaseId::from_bytes(b).ok());
        let seq = value.get(DatabaseId::LEN..).and_then(be_u64);
        match (origin, seq) {
            (Some(origin), Some(seq)) => Ok(Some((origin, seq))),
            _ => Err(corrupt(&key, Corruption::Index)),
        }
    }

    /// The unit an entry of run `key` stands for, which is `seq` of `origin`.
    fn load(
        &self,
        key: &[u8],
        origin: &DatabaseId,
        seq: u64,
        entry: Entry<'_>,
    ) -> Result<TransferUnit, StoreError> {
        let at = match entry {
            Entry::Inline(bytes) => return decode_unit(key, origin, seq, bytes),
            Entry::Located(at) => at,
        };
        let Some(source) = &self.bodies else {
            return Err(StoreError::NoBodySource { origin: *origin, seq });
        };
        let unit = source.load(origin, seq, at).map_err(|source| StoreError::Body {
            origin: *origin,
            seq,
            at,
            source,
        })?;
        if unit.origin != *origin || unit.seq != seq {
            let why =
                Corruption::WrongBody { seq, at, found_origin: unit.origin, found_seq: unit.seq };
            return Err(corrupt(key, why));
        }
        Ok(unit)
    }

    /// [`Store::insert_batch`] and [`Store::insert_located`]: each unit is written as the
    /// entry [`BatchUnit::body`] asks for.
    fn insert<U: BatchUnit>(
        &mut self,
        units: &[U],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let plan = {
            let this = &*self;
            plan::plan_batch(&this.vector, units, &mut |key| this.find_physkey(key))?
        };
        if plan.accepted.is_empty() && meta.is_empty() {
            return Ok(plan.outcomes);
        }
        let mut batch: Vec<Write> = Vec::new();
        let mut accepted: Vec<&U> = plan.accepted.iter().filter_map(|&i| units.get(i)).collect();
        accepted.sort_unstable_by_key(|u| (u.unit().origin, u.unit().seq));
        let mut run: Option<RunBuilder> = None;
        for item in accepted {
            let unit = item.unit();
            let entry = match item.body() {
                Some(at) => NewEntry::Located(at),
                None => NewEntry::Inline(unit.encode()),
            };
            if !run.as_ref().is_some_and(|r| r.continues_with(unit, &entry)) {
                if let Some(done) = run.take() {
                    done.finish(&mut batch);
                }
                run = Some(RunBuilder::new(unit, &entry));
            }
            if let Some(r) = run.as_mut() {
                r.push(&entry);
            }
        }
        if let Some(done) = run {
            done.finish(&mut batch);
        }
        for (physkey, (origin, seq)) in &plan.index {
            let mut value = Vec::with_capacity(INDEX_VALUE_LEN);
            value.extend_from_slice(origin.as_bytes());
            value.extend_from_slice(&seq.to_be_bytes());
            batch.push((physkey_key(physkey).to_vec(), Some(value)));
        }
        for (name, value) in meta {
            batch.push((meta_key(name), value.clone()));
        }
        for (origin, range) in &plan.touched {
            batch.push((vector_key(origin).to_vec(), Some(range.encode())));
        }
        // What each key held: runs and physkey entries are new keys (a run starts at a seq not
        // held, and the plan indexes only physkeys it did not find); vector entries are in
        // memory; meta values are read.
        let vector = &self.vector;
        let db = &self.db;
        let before = |key: &[u8]| -> Result<Option<Vec<u8>>, StoreError> {
            match key.split_first() {
                Some((&UNIT | &PHYSKEY, _)) => Ok(None),
                Some((&VECTOR, origin)) => Ok(DatabaseId::from_bytes(origin)
                    .ok()
                    .and_then(|origin| vector.get(&origin))
                    .map(OriginRange::encode)),
                _ => Ok(db.get(key)?.map(|v| v.to_vec())),
            }
        };
        #[cfg(test)]
        let interrupt = self.interrupt_after.take();
        #[cfg(not(test))]
        let interrupt = None;
        if let Err(e) = intent::apply(&self.db, batch, before, interrupt) {
            self.poisoned = true;
            return Err(e);
        }
        for (origin, range) in plan.touched {
            self.tags.add(origin);
            self.vector.replace(origin, Some(range));
        }
        Ok(plan.outcomes)
    }

    /// The run holding `seq` of `origin` would be the last run starting at or before it.
    fn run_at_or_before(
        &self,
        origin: &DatabaseId,
        seq: u64,
    ) -> Result<Option<(IVec, IVec)>, StoreError> {
        Ok(self.db.range(unit_key(origin, 0)..=unit_key(origin, seq)).next_back().transpose()?)
    }
}

impl Store for SledStore {
    fn insert_batch(
        &mut self,
        units: &[TransferUnit],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.insert(units, meta)
    }

    fn insert_located(
        &mut self,
        units: &[(TransferUnit, BodyRef)],
        meta: &[MetaWrite],
    ) -> Result<Vec<InsertOutcome>, StoreError> {
        self.insert(units, meta)
    }

    fn contains(&self, origin: &DatabaseId, seq: u64) -> bool {
        self.vector.contains(origin, seq)
    }

    fn get(&self, origin: &DatabaseId, seq: u64) -> Result<Option<TransferUnit>, StoreError> {
        if !self.vector.contains(origin, seq) {
            return Ok(None);
        }
        let missing = || corrupt(&unit_key(origin, seq), Corruption::Missing { seq });
        let (key, value) = self.run_at_or_before(origin, seq)?.ok_or_else(missing)?;
        for entry in Run::parse(&key, &value)?.entries() {
            let (at, entry) = entry?;
            if at == seq {
                return self.load(&key, origin, seq, entry).map(Some);
            }
        }
        Err(missing())
    }

    fn range(
        &self,
        origin: &DatabaseId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<TransferUnit>, StoreError> {
        let from = from.max(1);
        let mut out = Vec::new();
        if limit == 0 || from > self.vector.highest(origin) {
            return Ok(out);
        }
        out.reserve(limit.min(1024));
        let start = match self.run_at_or_before(origin, from)? {
            Some((key, _)) => key,
            None => IVec::from(&unit_key(origin, from)[..]),
        };
        for item in self.db.range(start..=IVec::from(&unit_key(origin, u64::MAX)[..])) {
            let (key, value) = item?;
            for entry in Run::parse(&key, &value)?.entries() {
                let (seq, entry) = entry?;
                if seq < from {
                    continue;
                }
                out.push(self.load(&key, origin, seq, entry)?);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn find_physkey(&self, physkey: &Physkey) -> Result<Option<(DatabaseId, u64)>, StoreError> {
        plan::find_physkey(
            physkey,
            &self.tags,
            &self.vector,
            |origin, seq| self.get(origin, seq),
            |key| self.index_get(key),
        )
    }

    fn version_vector(&self) -> &VersionVector {
        &self.vector
    }

    fn meta_get(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(meta_key(name))?.map(|v| v.to_vec()))
    }

    fn meta_put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        // A half-written batch may have written this name too; its undo at the next open
        // would put the old value back over this one.
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        self.db.insert(meta_key(name), value)?;
        Ok(())
    }

    fn cursor(&self, app: &str) -> Result<BTreeMap<DatabaseId, u64>, StoreError> {
        let prefix = cursor_prefix(app)?;
        let mut out = BTreeMap::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, value) = item?;
            let origin = key.get(prefix.len()..).and_then(|b| DatabaseId::from_bytes(b).ok());
            match (origin, be_u64(&value)) {
                (Some(origin), Some(seq)) => out.insert(origin, seq),
                _ => return Err(corrupt(&key, Corruption::Index)),
            };
        }
        Ok(out)
    }

    fn set_cursor(&mut self, app: &str, origin: &DatabaseId, seq: u64) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut key = cursor_prefix(app)?;
        key.extend_from_slice(origin.as_bytes());
        self.db.insert(key, &seq.to_be_bytes()[..])?;
        Ok(())
    }

    fn for_each_unit(&self, f: &mut dyn FnMut(&TransferUnit) -> bool) -> Result<(), StoreError> {
        for item in self.db.scan_prefix([UNIT]) {
            let (key, value) = item?;
            let run = Run::parse(&key, &value)?;
            for entry in run.entries() {
                let (seq, entry) = entry?;
                if !f(&self.load(&key, &run.origin, seq, entry)?) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        flush_durably(&self.db, &self.files)
    }

    fn checkpointer(&self) -> Option<Box<dyn Checkpointer>> {
        Some(Box::new(SledCheckpointer(self.db.clone(), self.files.clone())))
    }
}

/// sled is safe to flush and write from several threads: a clone of the handle is enough.
struct SledCheckpointer(sled::Db, Arc<SledFiles>);

impl Checkpointer for SledCheckpointer {
    fn meta_put(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0.insert(meta_key(name), value)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        flush_durably(&self.0, &self.1)
    }
}

/// `Db::flush` and then an fsync of the files sled's flush leaves unsynced ([`SledFiles`]). A
/// checkpoint records log positions right after a flush and trusts the index below them:
/// without the fsync a power cut could keep the record and lose index pages before it, and the
/// replay would skip units the index lacks.
fn flush_durably(db: &sled::Db, files: &SledFiles) -> Result<(), StoreError> {
    db.flush()?;
    files.sync()?;
    Ok(())
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("db", &self.db)
            .field("origins", &self.vector.len())
            .field("units", &self.vector.total())
            .field("bodies", &self.bodies.is_some())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// A run entry to write.
enum NewEntry {
    /// The encoded unit.
    Inline(Vec<u8>),
    /// Where the unit is.
    Located(BodyRef),
}

impl NewEntry {
    fn len(&self) -> usize {
        match self {
            NewEntry::Inline(encoded) => 1 + 4 + encoded.len(),
            NewEntry::Located(_) => LOCATED_ENTRY_LEN,
        }
    }
}

/// Builds one run value: count, then tagged entries.
struct RunBuilder {
    key: [u8; UNIT_KEY_LEN],
    origin: DatabaseId,
    next_seq: Option<u64>,
    count: u32,
    /// Holds an inline entry, so [`RUN_MAX_INLINE`] applies.
    inline: bool,
    buf: Vec<u8>,
}

impl RunBuilder {
    fn new(first: &TransferUnit, entry: &NewEntry) -> Self {
        let capacity = match entry {
            NewEntry::Inline(_) => 64 * (first.encoded_len_hint() + 5),
            NewEntry::Located(_) => 4 + RUN_MAX_LOCATED as usize * LOCATED_ENTRY_LEN,
        };
        let mut buf = Vec::with_capacity(RUN_MAX_BYTES.min(capacity));
        buf.extend_from_slice(&[0; 4]);
        RunBuilder {
            key: unit_key(&first.origin, first.seq),
            origin: first.origin,
            next_seq: Some(first.seq),
            count: 0,
            inline: false,
            buf,
        }
    }

    fn continues_with(&self, unit: &TransferUnit, entry: &NewEntry) -> bool {
        let inline = self.inline || matches!(entry, NewEntry::Inline(_));
        let max = if inline { RUN_MAX_INLINE } else { RUN_MAX_LOCATED };
        self.origin == unit.origin
            && self.next_seq == Some(unit.seq)
            && self.count < max
            && self.buf.len() + entry.len() <= RUN_MAX_BYTES
    }

    fn push(&mut self, entry: &NewEntry) {
        match entry {
            NewEntry::Inline(encoded) => {
                // A unit is at most the payload limit (MiBs), far below u32::MAX.
                let len = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
                self.buf.push(ENTRY_INLINE);
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(encoded);
                self.inline = true;
            }
            NewEntry::Located(at) => {
                self.buf.push(ENTRY_LOCATED);
                self.buf.extend_from_slice(&at.to_bytes());
            }
        }
        self.count += 1;
        self.next_seq = self.next_seq.and_then(|s| s.checked_add(1));
    }

    fn finish(self, batch: &mut Vec<Write>) {
        let (key, value) = self.into_value();
        batch.push((key.to_vec(), Some(value)));
    }

    fn into_value(mut self) -> ([u8; UNIT_KEY_LEN], Vec<u8>) {
        // buf starts with the 4 bytes reserved in `new`.
        self.buf[..4].copy_from_slice(&self.count.to_be_bytes());
        (self.key, self.buf)
    }
}

/// A run value read from disk, checked as it is walked.
struct Run<'a> {
    key: &'a [u8],
    origin: DatabaseId,
    first_seq: u64,
    count: u32,
    body: &'a [u8],
}

impl<'a> Run<'a> {
    fn parse(key: &'a [u8], value: &'a [u8]) -> Result<Self, StoreError> {
        let origin = key.get(1..1 + DatabaseId::LEN).and_then(|b| DatabaseId::from_bytes(b).ok());
        let first_seq = key.get(1 + DatabaseId::LEN..).and_then(be_u64);
        let (Some(origin), Some(first_seq)) = (origin, first_seq) else {
            return Err(corrupt(key, Corruption::Key));
        };
        let count =
            value.get(..4).and_then(be_u32).ok_or_else(|| corrupt(key, Corruption::Truncated))?;
        if count == 0 {
            return Err(corrupt(key, Corruption::EmptyRun));
        }
        Ok(Run { key, origin, first_seq, count, body: value.get(4..).unwrap_or_default() })
    }

    fn entries(&self) -> RunEntries<'a> {
        RunEntries {
            key: self.key,
            next_seq: Some(self.first_seq),
            left: self.count,
            rest: self.body,
        }
    }
}

/// A run entry read from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry<'a> {
    /// The encoded unit (not yet decoded).
    Inline(&'a [u8]),
    /// Where the unit is.
    Located(BodyRef),
}

/// `(seq, entry)` of each entry in a run, in order.
struct RunEntries<'a> {
    key: &'a [u8],
    next_seq: Option<u64>,
    left: u32,
    rest: &'a [u8],
}

impl<'a> Iterator for RunEntries<'a> {
    type Item = Result<(u64, Entry<'a>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            if self.rest.is_empty() {
                return None;
            }
            let len = self.rest.len();
            self.rest = &[];
            return Some(Err(corrupt(self.key, Corruption::Trailing { len })));
        }
        let parsed = (|| {
            let seq = self.next_seq.ok_or(Corruption::Truncated)?;
            let (&tag, body) = self.rest.split_first().ok_or(Corruption::Truncated)?;
            let (entry, used) = match tag {
                ENTRY_INLINE => {
                    let len = body.get(..4).and_then(be_u32).ok_or(Corruption::Truncated)?;
                    let len = usize::try_from(len).map_err(|_| Corruption::Truncated)?;
                    let bytes = body.get(4..).and_then(|b| b.get(..len));
                    (Entry::Inline(bytes.ok_or(Corruption::Truncated)?), 1 + 4 + len)
                }
                ENTRY_LOCATED => {
                    let at = body.get(..BodyRef::LEN).and_then(BodyRef::from_bytes);
                    (Entry::Located(at.ok_or(Corruption::Truncated)?), LOCATED_ENTRY_LEN)
                }
                tag => return Err(Corruption::EntryTag { tag }),
            };
            Ok((seq, entry, used))
        })();
        let (seq, entry, used) = match parsed {
            Ok(parsed) => parsed,
            Err(why) => {
                self.left = 0;
                self.rest = &[];
                return Some(Err(corrupt(self.key, why)));
            }
        };
        self.rest = self.rest.get(used..).unwrap_or_default();
        self.left -= 1;
        self.next_seq = seq.checked_add(1);
        Some(Ok((seq, entry)))
    }
}

fn decode_unit(
    key: &[u8],
    origin: &DatabaseId,
    seq: u64,
    bytes: &[u8],
) -> Result<TransferUnit, StoreError> {
    // The payload cannot be longer than the encoding; the ledger checked the real limit.
    let unit = TransferUnit::decode(bytes, bytes.len()).map_err(|e| corrupt(key, e))?;
    if unit.origin != *origin || unit.seq != seq {
        return Err(corrupt(key, Corruption::Misplaced { origin: unit.origin, seq: unit.seq }));
    }
    Ok(unit)
}

fn corrupt(key: &[u8], why: impl Into<Corruption>) -> StoreError {
    StoreError::Corrupt { key: StoreKey(key.to_vec()), why: why.into() }
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

fn unit_key(origin: &DatabaseId, seq: u64) -> [u8; UNIT_KEY_LEN] {
    let mut key = [0u8; UNIT_KEY_LEN];
    key[0] = UNIT;
    key[1..1 + DatabaseId::LEN].copy_from_slice(origin.as_bytes());
    key[1 + DatabaseId::LEN..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn vector_key(origin: &DatabaseId) -> [u8; 1 + DatabaseId::LEN] {
    let mut key = [0u8; 1 + DatabaseId::LEN];
    key[0] = VECTOR;
    key[1..].copy_from_slice(origin.as_bytes());
    key
}

fn physkey_key(physkey: &Physkey) -> [u8; 1 + Physkey::LEN] {
    let mut key = [0u8; 1 + Physkey::LEN];
    key[0] = PHYSKEY;
    key[1..].copy_from_slice(physkey.as_bytes());
    key
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(META);
    key.extend_from_slice(name.as_bytes());
    key
}

/// `c`, the name length, the name: a length prefix so no name is a prefix of another's keys.
fn cursor_prefix(app: &str) -> Result<Vec<u8>, StoreError> {
    let len = u8::try_from(app.len()).map_err(|_| StoreError::AppNameTooLong { len: app.len() })?;
    debug_assert!(usize::from(len) <= MAX_APP_NAME);
    let mut key = Vec::with_capacity(2 + app.len() + DatabaseId::LEN);
    key.push(CURSOR);
    key.push(len);
    key.extend_from_slice(app.as_bytes());
    Ok(key)
}

#[cfg(test)]
#[path = "sled_tests.rs"]
mod tests;
