//! Where a relay keeps payloads: the [`RelayStore`] trait, [`SledRelayStore`] in production
//! and [`MemoryRelayStore`] for tests and netsim.
//!
//! Payloads are keyed by (scope, mailbox, id): a scope is one admitted RmSystem and
//! environment, so one system's mailboxes are invisible to another whatever ids they pick.
//! Ids are monotonic across restarts (sled's `generate_id`), so key order within a mailbox is
//! posting order (FIFO delivery).
//!
//! Sled layout (one tree, so one `sled::Batch` makes a post or a removal atomic):
//!
//! ```text
//! p scope[20] mailbox[16] id[8 BE]  -> expires_ms u64 BE | posted_ms u64 BE | flags u8 | payload
//! e expires_ms[8 BE] id[8 BE]        -> scope[20] mailbox[16] | len u32 BE | posted_ms u64 BE
//!                                       | flags u8
//! flags: bit 0 = broadcast (presence, design §2.6: kept until it expires, not taken)
//! ```
//!
//! The `e` index gives the TTL sweep its order and lets [`SledRelayStore::open`] rebuild the
//! per-scope [`Usage`] (count, bytes, oldest) from keys and small values only, never reading a
//! body. (The design's `e` value had no posting time; it is added so `oldest` survives a
//! restart without reading bodies.) Usage lives in memory: one small map entry per payload.
//!
//! Nothing is durable before [`RelayStore::flush`]; the server flushes before it answers
//! `Posted`. A flush is sled's flush, then an fsync of the files sled's flush leaves unsynced
//! (`crate::store::SledFiles`): its data file, and the blob files it writes for records over
//! 128 KiB, which a leaf of a mailbox's adjacent 16 KiB payloads reaches. Without them a power
//! cut could lose payloads already answered `Posted`.
//!
//! This module decides nothing: quotas, TTL limits and delivery are `super::core`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use crate::id::RmSystem;
use crate::wire::relay::Mailbox;

/// sled's page cache for a relay: sled's 1 GiB default would break the relay's memory target.
pub const RELAY_CACHE_CAPACITY: u64 = 16 << 20;

/// One admitted system at a relay: RmSystem and environment tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    /// The system.
    pub rmsystem: RmSystem,
    /// Its environment's tag.
    pub env_tag: [u8; 4],
}

impl Scope {
    /// Bytes in keys.
    pub const LEN: usize = 20;

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..16].copy_from_slice(&self.rmsystem.to_bytes());
        out[16..].copy_from_slice(&self.env_tag);
        out
    }

    fn from_bytes(bytes: &[u8]) -> Option<Scope> {
        let rmsystem: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
        let env_tag: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
        Some(Scope { rmsystem: RmSystem::from_bytes(rmsystem), env_tag })
    }
}

/// A stored payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPayload {
    /// The relay's id (for `Deliver` and `Taken`).
    pub id: u64,
    /// Its mailbox.
    pub mailbox: Mailbox,
    /// When it was posted (Unix ms).
    pub posted_ms: u64,
    /// When the TTL sweep removes it (Unix ms).
    pub expires_ms: u64,
    /// A broadcast (presence): `Taken` does not delete it.
    pub broadcast: bool,
    /// The bytes.
    pub payload: Vec<u8>,
}

/// What one scope holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Payloads.
    pub count: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Posting time of the oldest payload (Unix ms).
    pub oldest_posted_ms: Option<u64>,
}

/// Why the relay store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayStoreError {
    /// sled failed (IO, or its own corruption check).
    #[error("relay store: {0}")]
    Sled(#[from] sled::Error),
    /// The fsync of sled's data file failed.
    #[error("relay store: cannot sync sled's data file: {0}")]
    Io(#[from] std::io::Error),
    /// An entry that does not have the layout of this module.
    #[error("relay store entry damaged ({what}); move the store directory away to start empty")]
    Corrupt {
        /// Which entry.
        what: &'static str,
    },
}

/// Storage of a relay's payloads. Contract: ids are unique and increase; `remove` and the
/// sweep are idempotent; `usage` is exact after any sequence of calls (and after reopening).
pub trait RelayStore {
    /// Stores a payload; returns its id.
    fn insert(
        &mut self,
        scope: Scope,
        mailbox: Mailbox,
        posted_ms: u64,
        expires_ms: u64,
        broadcast: bool,
        payload: &[u8],
    ) -> Result<u64, RelayStoreError>;

    /// Up to `limit` payloads of `mailbox` with ids above `after`, oldest first.
    fn pending(
        &self,
        scope: Scope,
        mailbox: Mailbox,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredPayload>, RelayStoreError>;

    /// Removes a payload; `false` if it was not there (already taken or expired).
    fn remove(&mut self, scope: Scope, mailbox: Mailbox, id: u64) -> Result<bool, RelayStoreError>;

    /// Removes every payload that expires at or before `now_ms`; returns how many per scope.
    fn expire(&mut self, now_ms: u64) -> Result<BTreeMap<Scope, u64>, RelayStoreError>;

    /// When the next payload expires, if any.
    fn next_expiry(&self) -> Option<u64>;

    /// What `scope` holds.
    fn usage(&self, scope: Scope) -> Usage;

    /// Broadcasts `scope` holds, and the oldest one's mailbox and id.
    fn broadcasts(&self, scope: Scope) -> (u64, Option<(Mailbox, u64)>);

    /// What every scope with payloads holds.
    fn usage_all(&self) -> BTreeMap<Scope, Usage>;

    /// Makes everything so far durable.
    fn flush(&mut self) -> Result<(), RelayStoreError>;
}

/// One scope's payloads in memory: id -> (posted, len), and their total bytes.
#[derive(Debug, Default)]
struct ScopeUsage {
    bytes: u64,
    ids: BTreeMap<u64, (u64, u32)>,
    broadcasts: BTreeMap<u64, Mailbox>,
}

/// Per-scope usage kept in memory. Ids increase with posting time, so the first entry of a
/// scope is its oldest payload.
#[derive(Debug, Default)]
struct UsageIndex {
    scopes: BTreeMap<Scope, ScopeUsage>,
}

impl UsageIndex {
    fn add(&mut self, scope: Scope, id: u64, posted_ms: u64, len: u32, broadcast: Option<Mailbox>) {
        let usage = self.scopes.entry(scope).or_default();
        if usage.ids.insert(id, (posted_ms, len)).is_none() {
            usage.bytes = usage.bytes.saturating_add(u64::from(len));
        }
        if let Some(mailbox) = broadcast {
            usage.broadcasts.insert(id, mailbox);
        }
    }

    fn broadcasts(&self, scope: Scope) -> (u64, Option<(Mailbox, u64)>) {
        match self.scopes.get(&scope) {
            Some(usage) => (
                u64::try_from(usage.broadcasts.len()).unwrap_or(u64::MAX),
                usage.broadcasts.iter().next().map(|(id, mailbox)| (*mailbox, *id)),
            ),
            None => (0, None),
        }
    }

    fn remove(&mut self, scope: Scope, id: u64) {
        if let Some(usage) = self.scopes.get_mut(&scope) {
            if let Some((_, len)) = usage.ids.remove(&id) {
                usage.bytes = usage.bytes.saturating_sub(u64::from(len));
            }
            usage.broadcasts.remove(&id);
            if usage.ids.is_empty() {
                self.scopes.remove(&scope);
            }
        }
    }

    fn usage(&self, scope: Scope) -> Usage {
        match self.scopes.get(&scope) {
            Some(usage) => Usage {
                count: u64::try_from(usage.ids.len()).unwrap_or(u64::MAX),
                bytes: usage.bytes,
                oldest_posted_ms: usage.ids.values().next().map(|(posted, _)| *posted),
            },
            None => Usage::default(),
        }
    }

    fn usage_all(&self) -> BTreeMap<Scope, Usage> {
        self.scopes.keys().map(|scope| (*scope, self.usage(*scope))).collect()
    }
}

fn len_u32(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).unwrap_or(u32::MAX)
}

/// The relay store in memory (tests, netsim). Loses everything when dropped.
#[derive(Debug, Default)]
pub struct MemoryRelayStore {
    payloads: BTreeMap<(Scope, Mailbox, u64), StoredPayload>,
    expiry: BTreeSet<(u64, u64, Scope, Mailbox)>,
    usage: UsageIndex,
    next_id: u64,
}

impl MemoryRelayStore {
    /// An empty store.
    pub fn new() -> MemoryRelayStore {
        MemoryRelayStore::default()
    }
}

impl RelayStore for MemoryRelayStore {
    fn insert(
        &mut self,
        scope: Scope,
        mailbox: Mailbox,
        posted_ms: u64,
        expires_ms: u64,
        broadcast: bool,
        payload: &[u8],
    ) -> Result<u64, RelayStoreError> {
        self.next_id = self.next_id.saturating_add(1);
        let id = self.next_id;
        let payload = payload.to_vec();
        let stored = StoredPayload { id, mailbox, posted_ms, expires_ms, broadcast, payload };
        self.usage.add(
            scope,
            id,
            posted_ms,
            len_u32(&stored.payload),
            broadcast.then_some(mailbox),
        );
        self.payloads.insert((scope, mailbox, id), stored);
        self.expiry.insert((expires_ms, id, scope, mailbox));
        Ok(id)
    }

    fn pending(
        &self,
        scope: Scope,
        mailbox: Mailbox,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredPayload>, RelayStoreError> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        Ok(self
            .payloads
            .range((scope, mailbox, from)..=(scope, mailbox, u64::MAX))
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect())
    }

    fn remove(&mut self, scope: Scope, mailbox: Mailbox, id: u64) -> Result<bool, RelayStoreError> {
        let Some(stored) = self.payloads.remove(&(scope, mailbox, id)) else { return Ok(false) };
        self.expiry.remove(&(stored.expires_ms, id, scope, mailbox));
        self.usage.remove(scope, id);
        Ok(true)
    }

    fn expire(&mut self, now_ms: u64) -> Result<BTreeMap<Scope, u64>, RelayStoreError> {
        let mut expired = BTreeMap::new();
        while let Some(&(expires, id, scope, mailbox)) = self.expiry.first() {
            if expires > now_ms {
                break;
            }
            self.expiry.pop_first();
            self.payloads.remove(&(scope, mailbox, id));
            self.usage.remove(scope, id);
            *expired.entry(scope).or_insert(0u64) += 1;
        }
        Ok(expired)
    }

    fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|(expires, ..)| *expires)
    }

    fn usage(&self, scope: Scope) -> Usage {
        self.usage.usage(scope)
    }

    fn broadcasts(&self, scope: Scope) -> (u64, Option<(Mailbox, u64)>) {
        self.usage.broadcasts(scope)
    }

    fn usage_all(&self) -> BTreeMap<Scope, Usage> {
        self.usage.usage_all()
    }

    fn flush(&mut self) -> Result<(), RelayStoreError> {
        Ok(())
    }
}

const PAYLOAD: u8 = b'p';
const EXPIRY: u8 = b'e';
const PAYLOAD_KEY_LEN: usize = 1 + Scope::LEN + 16 + 8;
const EXPIRY_VALUE_LEN: usize = Scope::LEN + 16 + 4 + 8 + 1;
/// Flag bit of a broadcast payload.
const BROADCAST: u8 = 1;

/// The relay store on sled (`R/store`).
#[derive(Debug)]
pub struct SledRelayStore {
    db: sled::Db,
    /// sled's files its flush leaves unsynced, synced by each flush (see the module doc).
    files: crate::store::SledFiles,
    usage: UsageIndex,
    next_expiry: BTreeSet<(u64, u64)>,
}

impl SledRelayStore {
    /// Opens (or creates) the store in `path` and rebuilds usage from the expiry index.
    pub fn open(path: &Path) -> Result<SledRelayStore, RelayStoreError> {
        let db = sled::Config::new().path(path).cache_capacity(RELAY_CACHE_CAPACITY).open()?;
        let files = crate::store::SledFiles::open(path)?;
        // Blobs an earlier run left may never have been synced.
        files.sync()?;
        let mut usage = UsageIndex::default();
        let mut next_expiry = BTreeSet::new();
        for entry in db.scan_prefix([EXPIRY]) {
            let (key, value) = entry?;
            let (expires, id) = parse_expiry_key(&key)?;
            let (scope, mailbox, len, posted, flags) = parse_expiry_value(&value)?;
            usage.add(scope, id, posted, len, (flags & BROADCAST != 0).then_some(mailbox));
            next_expiry.insert((expires, id));
        }
        Ok(SledRelayStore { db, files, usage, next_expiry })
    }
}

impl SledRelayStore {
    /// Bytes sled uses on disk, if it can tell.
    pub fn size_on_disk(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }
}

fn payload_key(scope: Scope, mailbox: Mailbox, id: u64) -> [u8; PAYLOAD_KEY_LEN] {
    let mut key = [0u8; PAYLOAD_KEY_LEN];
    key[0] = PAYLOAD;
    key[1..21].copy_from_slice(&scope.to_bytes());
    key[21..37].copy_from_slice(&mailbox.0);
    key[37..].copy_from_slice(&id.to_be_bytes());
    key
}

fn expiry_key(expires: u64, id: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = EXPIRY;
    key[1..9].copy_from_slice(&expires.to_be_bytes());
    key[9..].copy_from_slice(&id.to_be_bytes());
    key
}

fn be_u64(bytes: Option<&[u8]>, what: &'static str) -> Result<u64, RelayStoreError> {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or(RelayStoreError::Corrupt { what })
}

fn parse_expiry_key(key: &[u8]) -> Result<(u64, u64), RelayStoreError> {
    Ok((be_u64(key.get(1..9), "expiry key")?, be_u64(key.get(9..17), "expiry key")?))
}

/// An expiry value: scope, mailbox, length, posting time, flags.
type ExpiryValue = (Scope, Mailbox, u32, u64, u8);

fn parse_expiry_value(value: &[u8]) -> Result<ExpiryValue, RelayStoreError> {
    let corrupt = || RelayStoreError::Corrupt { what: "expiry value" };
    if value.len() != EXPIRY_VALUE_LEN {
        return Err(corrupt());
    }
    let scope = value.get(..20).and_then(Scope::from_bytes).ok_or_else(corrupt)?;
    let mailbox: [u8; 16] =
        value.get(20..36).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let len: [u8; 4] = value.get(36..40).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?;
    let posted = be_u64(value.get(40..48), "expiry value")?;
    let flags = *value.get(48).ok_or_else(corrupt)?;
    Ok((scope, Mailbox(mailbox), u32::from_be_bytes(len), posted, flags))
}

impl RelayStore for SledRelayStore {
    fn insert(
        &mut self,
        scope: Scope,
        mailbox: Mailbox,
        posted_ms: u64,
        expires_ms: u64,
        broadcast: bool,
        payload: &[u8],
    ) -> Result<u64, RelayStoreError> {
        let id = self.db.generate_id()?;
        let flags = if broadcast { BROADCAST } else { 0 };
        let mut value = Vec::with_capacity(17 + payload.len());
        value.extend_from_slice(&expires_ms.to_be_bytes());
        value.extend_from_slice(&posted_ms.to_be_bytes());
        value.push(flags);
        value.extend_from_slice(payload);
        let mut index = Vec::with_capacity(EXPIRY_VALUE_LEN);
        index.extend_from_slice(&scope.to_bytes());
        index.extend_from_slice(&mailbox.0);
        index.extend_from_slice(&len_u32(payload).to_be_bytes());
        index.extend_from_slice(&posted_ms.to_be_bytes());
        index.push(flags);
        let mut batch = sled::Batch::default();
        batch.insert(&payload_key(scope, mailbox, id)[..], value);
        batch.insert(&expiry_key(expires_ms, id)[..], index);
        self.db.apply_batch(batch)?;
        self.usage.add(scope, id, posted_ms, len_u32(payload), broadcast.then_some(mailbox));
        self.next_expiry.insert((expires_ms, id));
        Ok(id)
    }

    fn pending(
        &self,
        scope: Scope,
        mailbox: Mailbox,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredPayload>, RelayStoreError> {
        let from = payload_key(scope, mailbox, after.map_or(0, |a| a.saturating_add(1)));
        let to = payload_key(scope, mailbox, u64::MAX);
        let mut out = Vec::new();
        for entry in self.db.range(from..=to).take(limit) {
            let (key, value) = entry?;
            let id = be_u64(key.get(37..45), "payload key")?;
            let expires_ms = be_u64(value.get(0..8), "payload value")?;
            let posted_ms = be_u64(value.get(8..16), "payload value")?;
            let flags = *value.get(16).ok_or(RelayStoreError::Corrupt { what: "payload value" })?;
            let broadcast = flags & BROADCAST != 0;
            let payload = value.get(17..).unwrap_or_default().to_vec();
            out.push(StoredPayload { id, mailbox, posted_ms, expires_ms, broadcast, payload });
        }
        Ok(out)
    }

    fn remove(&mut self, scope: Scope, mailbox: Mailbox, id: u64) -> Result<bool, RelayStoreError> {
        let key = payload_key(scope, mailbox, id);
        let Some(value) = self.db.get(key)? else { return Ok(false) };
        let expires = be_u64(value.get(0..8), "payload value")?;
        let mut batch = sled::Batch::default();
        batch.remove(&key[..]);
        batch.remove(&expiry_key(expires, id)[..]);
        self.db.apply_batch(batch)?;
        self.usage.remove(scope, id);
        self.next_expiry.remove(&(expires, id));
        Ok(true)
    }

    fn expire(&mut self, now_ms: u64) -> Result<BTreeMap<Scope, u64>, RelayStoreError> {
        let mut expired = BTreeMap::new();
        let end = expiry_key(now_ms, u64::MAX);
        let mut batch = sled::Batch::default();
        let mut gone = Vec::new();
        for entry in self.db.range(&[EXPIRY][..]..=&end[..]) {
            let (key, value) = entry?;
            let (expires, id) = parse_expiry_key(&key)?;
            let (scope, mailbox, ..) = parse_expiry_value(&value)?;
            batch.remove(key);
            batch.remove(&payload_key(scope, mailbox, id)[..]);
            gone.push((scope, expires, id));
        }
        self.db.apply_batch(batch)?;
        for (scope, expires, id) in gone {
            self.usage.remove(scope, id);
            self.next_expiry.remove(&(expires, id));
            *expired.entry(scope).or_insert(0u64) += 1;
        }
        Ok(expired)
    }

    fn next_expiry(&self) -> Option<u64> {
        self.next_expiry.first().map(|(expires, _)| *expires)
    }

    fn usage(&self, scope: Scope) -> Usage {
        self.usage.usage(scope)
    }

    fn broadcasts(&self, scope: Scope) -> (u64, Option<(Mailbox, u64)>) {
        self.usage.broadcasts(scope)
    }

    fn usage_all(&self) -> BTreeMap<Scope, Usage> {
        self.usage.usage_all()
    }

    fn flush(&mut self) -> Result<(), RelayStoreError> {
        self.db.flush()?;
        self.files.sync()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Scope = Scope { rmsystem: RmSystem([77, 123, 89, 201_192]), env_tag: [1; 4] };
    const B: Scope = Scope { rmsystem: RmSystem([1, 2, 3, 4]), env_tag: [1; 4] };
    const M: Mailbox = Mailbox([9; 16]);

    /// The suite every implementation passes.
    fn suite(store: &mut impl RelayStore) {
        // Post, FIFO order, pending after a cursor.
        let one = store.insert(A, M, 1_000, 10_000, false, b"one").unwrap();
        let two = store.insert(A, M, 2_000, 5_000, false, b"two!").unwrap();
        assert!(two > one);
        let all = store.pending(A, M, None, 10).unwrap();
        assert_eq!(
            all.iter().map(|p| &p.payload[..]).collect::<Vec<_>>(),
            [b"one" as &[u8], b"two!"]
        );
        assert_eq!(store.pending(A, M, Some(one), 10).unwrap().len(), 1);
        assert_eq!(store.pending(A, M, None, 1).unwrap().len(), 1);
        assert_eq!(store.usage(A), Usage { count: 2, bytes: 7, oldest_posted_ms: Some(1_000) });
        // Another system's mailbox of the same id is invisible.
        assert!(store.pending(B, M, None, 10).unwrap().is_empty());
        assert!(!store.remove(B, M, one).unwrap());
        assert_eq!(store.usage(B), Usage::default());
        // Take, idempotent.
        assert!(store.remove(A, M, one).unwrap());
        assert!(!store.remove(A, M, one).unwrap());
        assert_eq!(store.usage(A), Usage { count: 1, bytes: 4, oldest_posted_ms: Some(2_000) });
        // TTL.
        store.insert(B, M, 3_000, 20_000, false, b"b").unwrap();
        assert_eq!(store.next_expiry(), Some(5_000));
        assert!(store.expire(4_999).unwrap().is_empty());
        assert_eq!(store.expire(5_000).unwrap(), BTreeMap::from([(A, 1)]));
        assert_eq!(store.usage(A), Usage::default());
        assert_eq!(store.usage_all().len(), 1);
        assert_eq!(store.next_expiry(), Some(20_000));
        store.flush().unwrap();
    }

    #[test]
    fn memory_store_passes_the_suite() {
        suite(&mut MemoryRelayStore::new());
    }

    #[test]
    fn sled_store_passes_the_suite() {
        let dir = tempfile::tempdir().unwrap();
        suite(&mut SledRelayStore::open(dir.path()).unwrap());
    }

    /// A flush fsyncs the file sled writes payloads to (sled's own flush does not: see the
    /// module doc): the handle synced is that file, and it is where the payloads went.
    #[test]
    fn a_flush_syncs_the_file_sled_writes_to() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledRelayStore::open(dir.path()).unwrap();
        store.insert(A, M, 1_000, 9_000, false, &[7; 16 << 10]).unwrap();
        store.flush().unwrap();
        store.files.assert_syncs_the_data_sled_writes(dir.path());
    }

    /// A mailbox's adjacent payloads of the largest size make sled write blob files (records
    /// over 128 KiB), which sled never syncs: each flush fsyncs them, and a reopened store
    /// has them all.
    #[test]
    fn a_flush_syncs_the_blob_files_sled_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SledRelayStore::open(dir.path()).unwrap();
        let payload = vec![9u8; crate::wire::relay::MAX_RELAY_PAYLOAD];
        for i in 0..64 {
            store.insert(A, M, 1_000 + i, 90_000, false, &payload).unwrap();
            store.flush().unwrap();
        }
        let on_disk: std::collections::HashMap<std::ffi::OsString, u64> =
            std::fs::read_dir(dir.path().join("blobs"))
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| (e.file_name(), e.metadata().unwrap().len()))
                .collect();
        assert!(!on_disk.is_empty(), "this load makes sled write blob files");
        // sled's own threads may have removed or written a blob since the last flush: every
        // blob the flush saw was synced at its full length.
        let synced = store.files.synced_blobs();
        assert!(!synced.is_empty(), "the flushes synced the blob files");
        for (name, len) in &synced {
            if let Some(now) = on_disk.get(name) {
                assert_eq!(now, len, "{name:?} synced part-written");
            }
        }
        drop(store);
        let store = SledRelayStore::open(dir.path()).unwrap();
        assert_eq!(store.pending(A, M, None, 100).unwrap().len(), 64);
    }

    #[test]
    fn sled_reopen_keeps_payloads_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let mut store = SledRelayStore::open(dir.path()).unwrap();
            let id = store.insert(A, M, 1_000, 9_000, false, b"kept").unwrap();
            store.insert(B, M, 2_000, 9_000, true, b"presence").unwrap();
            store.flush().unwrap();
            id
        };
        let mut store = SledRelayStore::open(dir.path()).unwrap();
        let held = store.pending(A, M, None, 10).unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].id, &held[0].payload[..]), (first, &b"kept"[..]));
        assert_eq!(store.usage(A), Usage { count: 1, bytes: 4, oldest_posted_ms: Some(1_000) });
        assert_eq!(store.usage(B).count, 1);
        assert!(store.pending(B, M, None, 1).unwrap()[0].broadcast, "the flag is kept");
        assert_eq!(store.broadcasts(B).0, 1, "broadcasts are rebuilt at open");
        assert_eq!(store.broadcasts(A), (0, None));
        assert_eq!(store.next_expiry(), Some(9_000));
        let next = store.insert(A, M, 3_000, 9_000, false, b"new").unwrap();
        assert!(next > first, "ids keep increasing across a reopen");
        assert_eq!(store.expire(9_000).unwrap().values().sum::<u64>(), 3);
    }
}
