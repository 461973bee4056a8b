//! The ledger: the node's durable record of units, made of the DATI daily logs (the write-ahead
//! log) and the store (the indexed copy).
//!
//! Write path, per batch (group commit):
//! 1. validate, deduplicate, allocate own sequence numbers and physkeys;
//! 2. append every new unit to its origin's daily log and fdatasync the touched files: from
//!    here the batch survives kill -9 and power loss;
//! 3. insert the batch into the store in one atomic store batch;
//! 4. acknowledge.
//!
//! A node pipelines step 2 for its local submits ([`Ledger::pipeline_syncs`]): the fdatasync
//! runs on a thread of its own while the next batch is numbered and appended, and steps 3-4
//! wait until [`Ledger::sync_state`] says the batch is durable, batches in order. Units received
//! from peers go the same way ([`Ledger::receive_logged`]); the node may hand those to the
//! application and pass them on before its own sync, because their origin made them durable
//! before sending them (a crash here loses only this copy, which peers hand back).
//!
//! The store is flushed only on a checkpoint schedule; after each flush the log positions it
//! covers (the end of what is indexed, not the logs' end) are recorded in the store's meta.
//! Opening replays every log record after the last recorded checkpoint, so units the store lost in a crash come back, and (because step 2 comes
//! before step 3) the store never holds a unit the logs lack. Sequence numbers are never reused:
//! the next own seq is one past the highest held after replay, and nothing leaves the node
//! before step 2 (a seq allocated by a batch that crashed before its sync was never
//! acknowledged nor sent, so it is free again).
//!
//! This module reads no clock: callers pass `now_ms`. It does not talk to the network.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
use crate::dati::{
    self, DatiBodies, DatiConfig, DatiError, DatiPosition, DatiWriter, RecordLocation, SyncJob,
    SyncStart,
};
use crate::id::{DatabaseId, InstanceId, Physkey, PhyskeyClock};
use crate::store::{
    BodyError, BodyRef, BodySource, Checkpointer, InsertOutcome, SledStore, Store, StoreError,
    VersionVector,
};
use crate::unit::{FileScopes, TransferUnit, UnitError, UnitKind, Urgency};

const META_CHECKPOINT: &str = "dati_checkpoint";
const META_NNNN: &str = "dati_nnnn";
const REPLAY_BATCH: usize = 4096;

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A daily log failed.
    #[error(transparent)]
    Dati(#[from] DatiError),
    /// An earlier write failed part way; this ledger refuses further writes.
    #[error("an earlier write failed; reopen the data directory (restart meshnode) before writing again")]
    Poisoned,
    /// A meta value written by meshnode does not decode.
    #[error("store meta value {name:?} is damaged; run `meshnode rebuild` to rebuild the store from the daily logs")]
    BadMeta {
        /// The meta key.
        name: &'static str,
    },
    /// A submission that cannot be accepted.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// The origin has used every sequence number a physkey can carry.
    #[error("origin {0} has used every sequence number; allocate a new data directory")]
    SeqExhausted(DatabaseId),
}

/// One unit an application hands in.
#[derive(Clone, PartialEq, Eq)]
pub struct Submission {
    /// TUBT, TUEV or TUST.
    pub kind: UnitKind,
    /// How soon it must travel.
    pub urgency: Urgency,
    /// TUBT file scopes.
    pub scopes: FileScopes,
    /// The application's own record key; makes resubmission idempotent. Generated if absent.
    pub physkey: Option<Physkey>,
    /// The opaque payload.
    pub payload: Vec<u8>,
    /// The sensitive part (seed: passwords), usually empty: never multicast, and over relays
    /// only under a one-time pad (see [`crate::unit::TransferUnit::sensitive`]).
    pub sensitive: Vec<u8>,
}

impl std::fmt::Debug for Submission {
    /// The sensitive part shows only as its length (see [`TransferUnit`]'s `Debug`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submission")
            .field("kind", &self.kind)
            .field("urgency", &self.urgency)
            .field("scopes", &self.scopes)
            .field("physkey", &self.physkey)
            .field("payload", &self.payload)
            .field("sensitive_len", &self.sensitive.len())
            .finish()
    }
}

/// What the application is told about an accepted submission, once it is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The origin (this node's dbid, or another's for an earlier unit with the same physkey).
    pub origin: DatabaseId,
    /// Its sequence number.
    pub seq: u64,
    /// Its physkey.
    pub physkey: Physkey,
    /// True when the physkey was already held: nothing new was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

/// A batch in the daily logs (durable once [`Ledger::sync_state`] says so) and not yet in the
/// store's index (see [`Ledger::submit_logged`]).
#[derive(Debug)]
#[must_use = "a logged batch must be indexed with Ledger::index"]
pub struct Logged {
    /// Own units in seq order; received units in (origin, seq) order.
    units: Vec<TransferUnit>,
    /// How many of [`Ledger`]'s `receiving` batches this is ([`Ledger::receive_logged`]: one;
    /// more once joined with [`Logged::join`]); 0 for own units.
    received: usize,
    /// Where each unit's record is; `None` when there are no logs (the store wrote them).
    refs: Option<Vec<BodyRef>>,
    now_ms: u64,
    /// The sync that makes the batch durable, when it runs on the sync thread
    /// ([`Ledger::pipeline_syncs`]); `None`: durable already.
    ticket: Option<u64>,
}

/// Whether a logged batch is durable yet (see [`Ledger::sync_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    /// Its fdatasync is still running.
    Pending,
    /// It survives kill -9 and power loss: index it and tell the application.
    Durable,
    /// Its sync, or an earlier one, failed: it is not known to be durable (the ledger is
    /// poisoned; reopening replays whatever reached the disk).
    Failed(String),
}

impl Logged {
    /// The new units, in seq order (received ones: by origin, then seq).
    pub fn units(&self) -> &[TransferUnit] {
        &self.units
    }

    /// Appends `next`, logged after this batch, so both are indexed in one store batch (a
    /// receiver that takes many small bursts while the disk syncs indexes them together). Only
    /// for received batches (or batches without logs), both durable, indexed next:
    /// `Ledger::index` takes them as one.
    pub fn join(&mut self, next: Logged) {
        self.units.extend(next.units);
        match (&mut self.refs, next.refs) {
            (Some(refs), Some(more)) => refs.extend(more),
            (refs, more) => debug_assert!(refs.is_none() && more.is_none()),
        }
        self.now_ms = self.now_ms.max(next.now_ms);
        self.ticket = self.ticket.max(next.ticket);
        self.received += next.received;
    }

    /// The unit `seq` of `origin`, if this batch has it (not for a joined batch, whose units
    /// need not be in order).
    pub fn unit(&self, origin: &DatabaseId, seq: u64) -> Option<&TransferUnit> {
        let found = self.units.binary_search_by(|u| (&u.origin, u.seq).cmp(&(origin, seq)));
        found.ok().and_then(|i| self.units.get(i))
    }
}

/// A batch of received units in the logs and not yet in the store's index
/// ([`Ledger::receive_logged`]).
#[derive(Debug)]
struct Receiving {
    /// Per origin, where the batch's first record starts: a checkpoint stops there (records of
    /// the batch, not indexed, must be replayed after a crash).
    starts: BTreeMap<DatabaseId, DatiPosition>,
    /// The batch's units, so a copy arriving meanwhile is not logged a second time.
    units: Vec<(DatabaseId, u64)>,
    /// Their payload bytes (the caller keeps the units in memory meanwhile).
    bytes: u64,
}

/// A numbered batch, not yet written (`Ledger::prepare`).
struct Prepared {
    receipts: Vec<Receipt>,
    /// The new units, in seq order.
    units: Vec<TransferUnit>,
    /// The next own seq once they are written.
    next: u64,
    /// Where the units with application physkeys are.
    keyed: BTreeMap<Physkey, usize>,
}

/// What happened while opening, for the operator's log.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Log records replayed into the store after the last checkpoint.
    pub replayed: u64,
    /// Human-readable notes from repairing the logs (torn tails cut, files skipped).
    pub repairs: Vec<String>,
}

/// The durable record of one data directory.
pub struct Ledger<S: Store = SledStore> {
    store: S,
    /// The daily logs; `None` for a ledger without logs (the simulator's in-memory nodes),
    /// where durability is the store's own `flush`.
    dati: Option<DatiWriter>,
    own: DatabaseId,
    clock: PhyskeyClock,
    next_own_seq: u64,
    payload_limit: usize,
    checkpoint_interval_ms: u64,
    last_checkpoint_ms: Option<u64>,
    /// Where checkpoints run when the store can be flushed from another thread.
    background: Option<BackgroundCheckpoints>,
    /// Checkpoints that failed after a write (the write itself stood).
    checkpoint_failures: u64,
    /// Why the ledger refuses all writes: a write, sync or index failed part way, so what is
    /// durable is not known here. Only a reopen (which replays what reached the disk) clears it.
    failure: Option<String>,
    /// Per origin, the end of the last record indexed: what a checkpoint may record. Not the
    /// logs' own end: with syncs pipelined a batch can be in the logs (even durable) and not yet
    /// in the store, and a checkpoint past it would skip its replay after a crash and hand its
    /// seqs out again.
    covered: BTreeMap<DatabaseId, DatiPosition>,
    /// Per own batch logged and not yet indexed, oldest first: its first seq and where its
    /// first record starts. A checkpoint never records the own log past that start.
    own_syncing: std::collections::VecDeque<(u64, DatiPosition)>,
    /// Received batches logged and not yet indexed, oldest first.
    receiving: std::collections::VecDeque<Receiving>,
    /// The units of `receiving`.
    receiving_units: VersionVector,
    /// The application physkeys of logged batches not yet indexed (the index cannot find them
    /// yet), so a resubmission meanwhile is still answered as existing.
    pending_keys: std::collections::HashMap<Physkey, (DatabaseId, u64)>,
    /// Where log syncs run when pipelined.
    syncer: Option<LogSyncer>,
    /// Received batches were logged while a sync job was out, and were promised the next job's
    /// ticket: at most one job of received units is out at a time (a burst per job kept a
    /// duplicated file handle each, and a stalled disk ran the node out of them).
    owed: bool,
    /// What peers were seen to hold of the own origin, and seqs skipped ([`OwnRecord`]).
    own_record: OwnRecord,
    /// `own_record` changed since it was last written (it is written with checkpoints).
    own_record_dirty: bool,
    /// The own head when this ledger was opened (see [`Ledger::reissue_floor`]).
    opened_own_head: u64,
    /// Received units whose `(origin, seq)` is held here as another unit, not yet taken by
    /// the caller ([`Ledger::take_rivals`]); at most [`RIVALS_MAX`].
    rivals: Vec<Rival>,
}

/// A received unit of our own origin under a seq this store holds as another unit (another
/// physkey): this origin handed the seq out twice, because its data directory was rolled back
/// in place (a VM snapshot reverted) or is in use on two machines. Neither unit can reach the
/// nodes holding the other under that seq; only this origin can issue them again, under new
/// seqs (`crate::proto::node::own_origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rival {
    /// What this store holds under the seq.
    pub held: TransferUnit,
    /// What arrived under it.
    pub received: TransferUnit,
}

/// Rivals kept for the caller at most; more are dropped until the caller takes them (a peer
/// sends back what differs of one offer, at most this many units).
pub const RIVALS_MAX: usize = 1024;
/// Their payload bytes, at most (and of what [`Ledger::differing`] returns).
pub const RIVALS_MAX_BYTES: usize = 32 << 20;

/// Store meta entry: the [`OwnRecord`], postcard.
const OWN_RECORD: &str = "own_origin";

/// How far beyond this node's head a peer may show our origin and be believed: more units than
/// a rollback plausibly lost. A larger claim (a broken peer) would move the next own seq towards
/// the end of the seq space; such units are not taken either.
pub const OWN_PLAUSIBLE_AHEAD: u64 = 1 << 24;

/// What this data directory knows of its own origin elsewhere, for conflicts after a rollback
/// (`crate::proto::node::own_origin`). Kept for one dbid: a copied directory, which takes a new
/// dbid with the same store, starts afresh.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct OwnRecord {
    dbid: Option<DatabaseId>,
    /// Per peer, the own seq it was seen to hold all of up to ([`Ledger::confirm_own`]).
    confirmed: BTreeMap<DatabaseId, u64>,
    /// The last own seq skipped for a conflict with nothing to issue again
    /// ([`Ledger::skip_own_past`]).
    skipped: u64,
}

fn encode_own_record(record: &OwnRecord) -> Result<Vec<u8>, LedgerError> {
    postcard::to_allocvec(record).map_err(|_| LedgerError::BadMeta { name: OWN_RECORD })
}

/// How the sync thread runs a job: [`SyncJob::run`], or a test's failing or gated disk.
pub(crate) type SyncRunner = Box<dyn Fn(&SyncJob) -> Result<(), DatiError> + Send>;

/// Calls its function when dropped (the sync thread's last word, whatever ends it).
struct NotifyOnExit(Box<dyn Fn() + Send>);

impl Drop for NotifyOnExit {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Log syncs on a thread of their own ([`Ledger::pipeline_syncs`]): a node seals and writes
/// the next batch while the last one's fdatasync runs. Jobs run one at a time, in order, so
/// results come back in ticket order; jobs queued behind a running one run as one (one
/// fdatasync per file covers them all), and a job of received units may wait for company
/// ([`Haste::Later`]).
struct LogSyncer {
    jobs: Option<std::sync::mpsc::Sender<(SyncJob, Haste)>>,
    done: std::sync::mpsc::Receiver<Result<(), DatiError>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The last ticket handed out.
    issued: u64,
    /// Results taken (tickets 1..=finished).
    finished: u64,
    /// The first ticket whose sync failed, and why: it and every later one are not durable.
    failed: Option<(u64, String)>,
}

/// How soon a sync job must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Haste {
    /// Someone waits for it: a local submit's receipt (and the unit's first send).
    Now,
    /// Only this node's index waits (received units, delivered and sent on already): it may
    /// wait up to [`RECEIVED_SYNC_GAP`] after the last sync ended, so units arriving meanwhile
    /// share it and the disk serves fewer syncs (the origins' syncs, which units wait for,
    /// share the device); not when it is large ([`RECEIVED_SYNC_ALONE_BYTES`]).
    Later,
}

/// How long after the last log sync ended a sync of received units waits for company. With a
/// sync per received burst, a receiver made as many syncs as the origin (three nodes made ~3,000
/// a second at 1,000 units/s), and the origin's syncs, which its units wait for, queued behind
/// theirs in the device: waiting this long cut a receiver's syncs about five-fold and the LAN
/// latency p99 by a third (docs/PERFORMANCE.md, session 12). It only delays when this node
/// claims the units in its vector.
const RECEIVED_SYNC_GAP: std::time::Duration = std::time::Duration::from_millis(5);

/// A job of received units this large syncs at once: it has company enough (a burst from a
/// peer), and waiting [`RECEIVED_SYNC_GAP`] would only hold back the index, and with it the
/// vector peers see, at the end of the burst. About a hundred units of 256 bytes; at 1,000
/// units/s a job holds a few, and waits.
const RECEIVED_SYNC_ALONE_BYTES: u64 = 32 << 10;

impl LogSyncer {
    /// `run` is [`SyncJob::run`] (tests put a failing one in its place); `gap` is
    /// [`RECEIVED_SYNC_GAP`].
    fn start(
        notify: Box<dyn Fn() + Send>,
        run: SyncRunner,
        gap: std::time::Duration,
    ) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::channel::<(SyncJob, Haste)>();
        let (tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("log-sync".into()).spawn(move || {
            // Also when `run` panics: the core then finds the results channel closed (`tx` is
            // dropped before the guard) and fails what waits, instead of waiting for ever.
            let notify = NotifyOnExit(notify);
            let tx = tx;
            let mut last_end = std::time::Instant::now();
            while let Ok((mut job, mut haste)) = rx.recv() {
                let mut count = 1;
                let until = last_end + gap;
                while haste == Haste::Later && job.bytes() < RECEIVED_SYNC_ALONE_BYTES {
                    let left = until.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let Ok((next, next_haste)) = rx.recv_timeout(left) else { break };
                    job.absorb(next);
                    count += 1;
                    haste = next_haste;
                }
                // Jobs queued behind the running one run as one.
                while let Ok((next, _)) = rx.try_recv() {
                    job.absorb(next);
                    count += 1;
                }
                let result = run(&job);
                last_end = std::time::Instant::now();
                // One result per ticket. After a failure the later tickets fail whatever their
                // result says (`LogSyncer::state`), so theirs is `Ok`.
                if tx.send(result).is_err() {
                    return;
                }
                for _ in 1..count {
                    if tx.send(Ok(())).is_err() {
                        return;
                    }
                }
                (notify.0)();
            }
        })?;
        Ok(LogSyncer {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            issued: 0,
            finished: 0,
            failed: None,
        })
    }

    /// Queues `job`; its ticket, or `None` when the thread is gone.
    fn send(&mut self, job: SyncJob, haste: Haste) -> Option<u64> {
        if self.jobs.as_ref()?.send((job, haste)).is_err() {
            self.jobs = None;
            return None;
        }
        self.issued += 1;
        Some(self.issued)
    }

    /// Takes the results that are in (with `wait`, every result, waiting for the jobs still
    /// running); returns the errors, for the writer.
    fn collect(&mut self, wait: bool) -> Vec<DatiError> {
        let mut errors = Vec::new();
        while self.finished < self.issued {
            let next = if wait {
                self.done.recv().map_err(|_| std::sync::mpsc::TryRecvError::Disconnected)
            } else {
                self.done.try_recv()
            };
            match next {
                Ok(result) => {
                    self.finished += 1;
                    if let Err(e) = result {
                        self.failed.get_or_insert((self.finished, e.to_string()));
                        errors.push(e);
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    // Only a panic ends the thread early: nothing after is known durable.
                    let reason = "the log sync thread stopped".to_string();
                    self.failed.get_or_insert((self.finished + 1, reason));
                    self.finished = self.issued;
                }
            }
        }
        errors
    }

    fn state(&self, ticket: u64) -> SyncState {
        match &self.failed {
            Some((at, reason)) if ticket >= *at => SyncState::Failed(reason.clone()),
            _ if self.finished >= ticket => SyncState::Durable,
            _ => SyncState::Pending,
        }
    }
}

impl Drop for LogSyncer {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the jobs queued (their records are in the
        // logs either way; reopening replays what is durable).
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Checkpoints on a thread of their own: the store's two flushes (each an fsync, 2-20 ms)
/// used to run on the loop thread once a round and held up every unit arriving meanwhile,
/// which was the tail of the LAN latency (docs/PERFORMANCE.md). At most one is in flight; a
/// round that finds one still running skips its own.
struct BackgroundCheckpoints {
    jobs: Option<std::sync::mpsc::SyncSender<CheckpointJob>>,
    done: std::sync::mpsc::Receiver<Result<(), StoreError>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The log positions (and NNNN high-water marks) a checkpoint records, encoded; taken on the
/// loop thread before the flush starts, so they never claim more than the flush covers.
struct CheckpointJob {
    positions: Vec<u8>,
    nnnn: Vec<u8>,
}

/// One store operation of a checkpoint (one closure does both, so it may borrow the store
/// mutably).
enum Step<'a> {
    Flush,
    Put(&'static str, &'a [u8]),
}

impl CheckpointJob {
    /// What the store holds of the logs now (see `Ledger::checkpoint_positions`).
    fn of(positions: &BTreeMap<DatabaseId, DatiPosition>, dati: &DatiWriter) -> Self {
        CheckpointJob {
            positions: postcard::to_stdvec(positions).expect("encode"),
            nnnn: postcard::to_stdvec(&dati.nnnn_high_water()).expect("encode"),
        }
    }

    /// Flushes the store, then records the positions and flushes again: recorded after the
    /// flush, a checkpoint on disk never claims more than the store holds.
    fn record(
        &self,
        mut store: impl FnMut(Step<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        store(Step::Flush)?;
        store(Step::Put(META_CHECKPOINT, &self.positions))?;
        store(Step::Put(META_NNNN, &self.nnnn))?;
        store(Step::Flush)
    }
}

impl BackgroundCheckpoints {
    fn start(checkpointer: Box<dyn Checkpointer>) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<CheckpointJob>(1);
        let (tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("checkpoint".into()).spawn(move || {
            for job in rx {
                let result = job.record(|step| match step {
                    Step::Flush => checkpointer.flush(),
                    Step::Put(name, value) => checkpointer.meta_put(name, value),
                });
                if tx.send(result).is_err() {
                    return;
                }
            }
        })?;
        Ok(BackgroundCheckpoints { jobs: Some(jobs), done, in_flight: false, thread: Some(thread) })
    }

    /// Takes the result of a finished checkpoint; `wait` blocks until the one in flight ends.
    fn collect(&mut self, wait: bool) -> Result<(), StoreError> {
        if !self.in_flight {
            return Ok(());
        }
        let result = if wait { self.done.recv().ok() } else { self.done.try_recv().ok() };
        match result {
            Some(r) => {
                self.in_flight = false;
                r
            }
            // Still running; or (wait) the thread is gone, which only a panic in sled can do.
            None if wait => {
                self.in_flight = false;
                Err(StoreError::Io(std::io::Error::other("the checkpoint thread stopped")))
            }
            None => Ok(()),
        }
    }
}

impl Drop for BackgroundCheckpoints {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the checkpoint it is running.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Ledger<SledStore> {
    /// Opens the ledger of a locked data directory, repairing and replaying the logs.
    ///
    /// The sled store keeps an index entry per unit that points into the daily logs
    /// (key-value separation): the logs already hold every unit durably, so a second copy in
    /// sled would double the disk use, and sled 0.34 keeps in memory about as much as it has
    /// read, whatever its cache setting. Index entries are ~17 bytes a unit.
    pub fn open(dir: &DataDir, instance: InstanceId) -> Result<(Self, OpenReport), LedgerError> {
        let cache = dir.config.store.cache_mb.saturating_mul(1 << 20);
        let bodies = LogBodies(DatiBodies::new(&dir.dati_path(), dir.key_schedule()));
        let store = SledStore::open_with_bodies(&dir.store_path(), cache, Arc::new(bodies))?;
        Ledger::with_store(store, dir, instance)
    }
}

/// Loads units for the store from the daily logs.
struct LogBodies(DatiBodies);

impl BodySource for LogBodies {
    fn load(&self, origin: &DatabaseId, _seq: u64, at: BodyRef) -> Result<TransferUnit, BodyError> {
        let at = RecordLocation { nnnn: at.file, offset: at.offset, len: at.len };
        Ok(self.0.load(origin, at)?)
    }
}

/// What a checkpoint may record: `covered`, with the own log stopped at the first record of
/// the oldest own batch still waiting for its sync, and each origin's log at the first record
/// of a received batch not yet indexed (records appended after it, indexed already, are
/// replayed once more; records of it, not indexed, must be).
fn checkpoint_positions(
    covered: &BTreeMap<DatabaseId, DatiPosition>,
    own: DatabaseId,
    own_syncing: &std::collections::VecDeque<(u64, DatiPosition)>,
    receiving: &std::collections::VecDeque<Receiving>,
) -> BTreeMap<DatabaseId, DatiPosition> {
    let mut positions = covered.clone();
    let own_start = own_syncing.front().map(|&(_, start)| (own, start));
    let received_starts = receiving.iter().flat_map(|r| r.starts.iter().map(|(o, p)| (*o, *p)));
    for (origin, start) in own_start.into_iter().chain(received_starts) {
        if let Some(at) = positions.get_mut(&origin) {
            if (start.nnnn, start.offset) < (at.nnnn, at.offset) {
                *at = start;
            }
        }
    }
    positions
}

fn body_ref(at: RecordLocation) -> BodyRef {
    BodyRef { file: at.nnnn, offset: at.offset, len: at.len }
}

impl<S: Store> Ledger<S> {
    /// Opens the ledger over `store` (any implementation) with the logs of `dir`.
    pub fn with_store(
        mut store: S,
        dir: &DataDir,
        instance: InstanceId,
    ) -> Result<(Self, OpenReport), LedgerError> {
        let keys = dir.key_schedule();
        let nnnn_floor: BTreeMap<DatabaseId, u32> =
            meta_decode(&store, META_NNNN)?.unwrap_or_default();
        let cfg = DatiConfig { dir: dir.dati_path(), size_limit: dir.config.dati.file_size_limit };
        let (writer, dati_report) = DatiWriter::open(cfg, keys.clone(), instance, &nnnn_floor)?;
        let mut report = OpenReport {
            repairs: dati_report.repairs.iter().map(|r| r.to_string()).collect(),
            ..OpenReport::default()
        };

        // Replay everything after the checkpoint; the store ignores what it already holds.
        let checkpoint: BTreeMap<DatabaseId, DatiPosition> =
            meta_decode(&store, META_CHECKPOINT)?.unwrap_or_default();
        let mut batch = Vec::with_capacity(REPLAY_BATCH);
        let replay = dati::read_from_located(&dir.dati_path(), &keys, &checkpoint, |unit, at| {
            if store.contains(&unit.origin, unit.seq) {
                return Ok(());
            }
            batch.push((unit, body_ref(at)));
            report.replayed += 1;
            if batch.len() >= REPLAY_BATCH {
                store.insert_located(&batch, &[])?;
                batch.clear();
            }
            Ok::<(), LedgerError>(())
        })?;
        report
            .repairs
            .extend(replay.problems.iter().map(|p| format!("skipped during replay: {p}")));
        if !batch.is_empty() {
            store.insert_located(&batch, &[])?;
        }

        let mut ledger =
            Ledger::without_logs(store, dir.identity.dbid, dir.config.payload_limit())?;
        // After the replay the store holds everything the logs hold.
        ledger.covered = writer.positions();
        ledger.dati = Some(writer);
        ledger.checkpoint_interval_ms = dir.config.store.checkpoint_interval_ms;
        if report.replayed > 0 {
            ledger.checkpoint_now()?;
        }
        if let Some(checkpointer) = ledger.store.checkpointer() {
            let background = BackgroundCheckpoints::start(checkpointer)
                .map_err(|e| LedgerError::Store(StoreError::Io(e)))?;
            ledger.background = Some(background);
        }
        Ok((ledger, report))
    }

    /// A ledger without daily logs over `store`, writing as `own`: each batch is made durable
    /// by the store's `flush`. For the simulator's in-memory nodes, whose crash semantics are
    /// the store's (`MemoryStore::crash`).
    pub fn without_logs(
        store: S,
        own: DatabaseId,
        payload_limit: usize,
    ) -> Result<Self, LedgerError> {
        // One that does not decode (damaged, or an older format) is dropped: a lost skip is seen
        // again as a conflict, lost confirmations cost duplicates.
        let own_record = match meta_decode::<S, OwnRecord>(&store, OWN_RECORD) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(%e, "own-origin record dropped");
                None
            }
        };
        let own_record = own_record
            .filter(|r| r.dbid == Some(own))
            .unwrap_or(OwnRecord { dbid: Some(own), ..OwnRecord::default() });
        // Seqs skipped for a conflict are taken, whether or not their units came back yet.
        let next_own_seq = store.next_seq(&own).max(own_record.skipped.saturating_add(1));
        let floor = match next_own_seq.checked_sub(1).filter(|s| *s > 0) {
            Some(last) => store.get(&own, last)?.map(|u| {
                u.physkey.generated_parts().map_or(u.created_ms, |p| p.time_ms.max(u.created_ms))
            }),
            None => None,
        };
        Ok(Ledger {
            store,
            dati: None,
            own,
            clock: PhyskeyClock::new(floor.unwrap_or(0)),
            next_own_seq,
            payload_limit,
            checkpoint_interval_ms: u64::MAX,
            last_checkpoint_ms: None,
            background: None,
            checkpoint_failures: 0,
            failure: None,
            covered: BTreeMap::new(),
            pending_keys: std::collections::HashMap::new(),
            own_syncing: std::collections::VecDeque::new(),
            receiving: std::collections::VecDeque::new(),
            receiving_units: VersionVector::new(),
            syncer: None,
            owed: false,
            own_record,
            own_record_dirty: false,
            opened_own_head: next_own_seq.saturating_sub(1),
            rivals: Vec::new(),
        })
    }

    /// Checkpoints that failed after an accepted write since open (each only lengthens the
    /// replay at the next open).
    pub fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures
    }

    /// Why this ledger refuses all writes, if it does: the first failure that left what is
    /// durable unknown. The node stops on it and `meshnode run` reopens the data directory.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Refuses every write from now on, keeping the first cause for the operator. Batches
    /// promised the next sync job (`owed`) fail with it: nothing issues that job any more, and
    /// a node stopping on the failure waits until every batch is answered.
    pub(crate) fn poison(&mut self, cause: impl std::fmt::Display) {
        if self.failure.is_some() {
            return;
        }
        let cause = cause.to_string();
        tracing::error!(%cause, "the store failed; it accepts nothing until reopened");
        if let Some(syncer) = self.syncer.as_mut() {
            syncer.failed.get_or_insert((syncer.issued + 1, cause.clone()));
        }
        self.owed = false;
        self.failure = Some(cause);
    }

    /// The store, for reads.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back (the simulator takes it out of a crashed node).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Records that the application applied every unit of `origin` up to `seq` (durable with
    /// the next batch or checkpoint).
    pub fn acknowledge(
        &mut self,
        app: &str,
        origin: &DatabaseId,
        seq: u64,
    ) -> Result<(), LedgerError> {
        self.store.set_cursor(app, origin, seq)?;
        Ok(())
    }

    /// Records acknowledgements (each: every unit of `origin` up to `seq` is applied; a cursor
    /// never moves back) and makes the cursor durable with one store flush before returning.
    pub fn acknowledge_durably(
        &mut self,
        app: &str,
        acks: &[(DatabaseId, u64)],
    ) -> Result<(), LedgerError> {
        if acks.is_empty() {
            return Ok(());
        }
        // A unit delivered before its log sync failed is gone until a restart brings it back:
        // a cursor moved past it now would skip it for good.
        if self.failure.is_some() {
            return Err(LedgerError::Poisoned);
        }
        let mut cursor = self.store.cursor(app)?;
        for (origin, seq) in acks {
            let at = cursor.entry(*origin).or_insert(0);
            if *seq > *at {
                *at = *seq;
                self.store.set_cursor(app, origin, *seq)?;
            }
        }
        self.store.flush()?;
        Ok(())
    }

    /// How long the daily logs' fdatasyncs took since open; `None` without logs.
    pub fn disk_syncs(&self) -> Option<dati::DiskSyncs> {
        self.dati.as_ref().map(DatiWriter::sync_times)
    }

    /// This node's dbid.
    pub fn own_dbid(&self) -> DatabaseId {
        self.own
    }

    /// The payload limit in force.
    pub fn payload_limit(&self) -> usize {
        self.payload_limit
    }

    /// Validates one submission without writing anything.
    pub fn check(&self, sub: &Submission) -> Result<(), UnitError> {
        if sub.payload.len() > self.payload_limit {
            return Err(UnitError::PayloadTooLarge {
                len: sub.payload.len(),
                limit: self.payload_limit,
            });
        }
        if sub.sensitive.len() > crate::unit::MAX_SENSITIVE_BYTES {
            return Err(UnitError::SensitiveTooLarge(sub.sensitive.len()));
        }
        Ok(())
    }

    /// Writes store metadata entries and makes them durable before returning (one store flush):
    /// the one-time pad book ([`crate::proto::pads`]) reserves pad bytes this way before it
    /// uses them, so a crash can waste pad material but never reuse it.
    pub fn meta_put_durably(&mut self, entries: &[(&str, &[u8])]) -> Result<(), LedgerError> {
        for (name, value) in entries {
            self.store.meta_put(name, value)?;
        }
        self.store.flush()?;
        Ok(())
    }

    /// Submits local units as one group commit. Returns one receipt per submission, in order,
    /// after all of them are durable. Submissions must have passed [`Ledger::check`]; one that
    /// did not makes the whole call fail before anything is written.
    pub fn submit_batch(
        &mut self,
        subs: Vec<Submission>,
        now_ms: u64,
    ) -> Result<Vec<Receipt>, LedgerError> {
        let Prepared { receipts, units, next, .. } = self.prepare(subs, now_ms)?;
        self.write(units, now_ms)?;
        self.next_own_seq = next;
        Ok(receipts)
    }

    /// Like [`Ledger::submit_batch`], and also returns the units it wrote (the new ones, in
    /// seq order), so the caller can send them on without reading them back.
    pub fn submit_batch_units(
        &mut self,
        subs: Vec<Submission>,
        now_ms: u64,
    ) -> Result<(Vec<Receipt>, Vec<TransferUnit>), LedgerError> {
        let Prepared { receipts, units, next, .. } = self.prepare(subs, now_ms)?;
        let units = self.write(units, now_ms)?;
        self.next_own_seq = next;
        Ok((receipts, units))
    }

    /// Steps 1 and 2 of [`Ledger::submit_batch_units`]: the batch is numbered and in the daily
    /// logs, not yet in the store's index; the caller hands it to [`Ledger::index`] once
    /// [`Ledger::sync_state`] says it is durable (at once, unless syncs are pipelined), batches
    /// in the order they were logged. From then on the units survive a crash (a reopen replays
    /// them), so they are accepted whatever happens to the index. Further batches may be logged
    /// meanwhile.
    pub fn submit_logged(
        &mut self,
        subs: Vec<Submission>,
        now_ms: u64,
    ) -> Result<(Vec<Receipt>, Logged), LedgerError> {
        let Prepared { receipts, units, next, keyed } = self.prepare(subs, now_ms)?;
        let logged = self.log(units, &[], now_ms, Some(Haste::Now))?;
        self.next_own_seq = next;
        if self.own_logged(&logged) {
            for (key, i) in keyed {
                if let Some(unit) = logged.units.get(i) {
                    self.pending_keys.insert(key, (unit.origin, unit.seq));
                }
            }
        }
        Ok((receipts, logged))
    }

    /// The highest seq this data directory has handed out as origin (or taken back from a peer);
    /// 0 before the first.
    pub fn own_head(&self) -> u64 {
        self.next_own_seq.saturating_sub(1)
    }

    /// The highest own seq `peer` was seen to hold all of up to ([`Ledger::confirm_own`]; kept
    /// across restarts as of the last checkpoint); 0 when none was.
    pub fn confirmed_own(&self, peer: &DatabaseId) -> u64 {
        self.own_record.confirmed.get(peer).copied().unwrap_or(0)
    }

    /// Records that `peer` holds every own unit up to `seq` (a no-op unless it raises the
    /// record), as far as this store holds them too: never past seqs skipped for a conflict and
    /// not back yet. Written with the next checkpoint: a lost update only lowers it, which
    /// costs duplicates, never units. A data directory rolled back to a snapshot rolls this
    /// back with it, to at most the head it had then (see [`Ledger::reissue_floor`]).
    pub fn confirm_own(&mut self, peer: DatabaseId, seq: u64) {
        let held = self.store.version_vector().get(&self.own).map_or(0, |r| r.contiguous());
        let seq = seq.min(held);
        if seq > self.confirmed_own(&peer) {
            self.own_record.confirmed.insert(peer, seq);
            self.own_record_dirty = true;
        }
    }

    /// Below which own units cannot collide with units peers hold after a rollback of this
    /// data directory: the lowest confirmation recorded for any peer (rolled back with the
    /// directory; a peer that missed the rollback holds other units under the seqs sold since,
    /// so it cannot have confirmed them), and the head at this open (at most the rollback's
    /// head when this process started after the revert or was reverted with it). Not the
    /// confirmation of the peer that shows the conflict: it may report what another holds.
    pub fn reissue_floor(&self) -> u64 {
        let confirmed = self.own_record.confirmed.values().copied().min().unwrap_or(0);
        confirmed.min(self.opened_own_head)
    }

    /// Writes the own-origin record if it changed (durable with the flush that follows).
    fn put_own_record(&mut self) -> Result<(), LedgerError> {
        if self.own_record_dirty {
            self.store.meta_put(OWN_RECORD, &encode_own_record(&self.own_record)?)?;
            self.own_record_dirty = false;
        }
        Ok(())
    }

    /// Moves the next own seq past `seq`: a peer holds own units up to `seq` that this data
    /// directory does not know it handed out (it was rolled back, or is in use on another
    /// machine too), and new units must not take those seqs again. With `durable` the skip
    /// holds across a restart before those units come back from the peer; without (units are
    /// issued again above `seq`), their seqs hold it once synced, and if they are lost in a
    /// crash, the conflict is seen again.
    pub fn skip_own_past(&mut self, seq: u64, durable: bool) -> Result<(), LedgerError> {
        if self.failure.is_some() {
            return Err(LedgerError::Poisoned);
        }
        let next = seq.saturating_add(1);
        if next <= self.next_own_seq {
            return Ok(());
        }
        if durable {
            let mut record = self.own_record.clone();
            record.skipped = seq;
            self.meta_put_durably(&[(OWN_RECORD, &encode_own_record(&record)?)])?;
            self.own_record = record;
            self.own_record_dirty = false;
        }
        self.next_own_seq = next;
        Ok(())
    }

    /// Issues `units` (own units already held) again under new own seqs, unchanged otherwise
    /// (kind, physkey, times, payloads): their seqs were found to be held elsewhere by other
    /// units ([`Ledger::skip_own_past`]), so the mesh would never take them under those. The
    /// business record keeps its physkey, so an application sees a duplicate, never a loss.
    /// Steps 1 and 2 like [`Ledger::submit_logged`], without receipts (nobody waits for them).
    pub fn reissue_logged(
        &mut self,
        units: Vec<TransferUnit>,
        now_ms: u64,
    ) -> Result<Logged, LedgerError> {
        if self.failure.is_some() {
            return Err(LedgerError::Poisoned);
        }
        let mut seq = self.next_own_seq;
        let mut fresh = Vec::with_capacity(units.len());
        for unit in units {
            fresh.push(TransferUnit { origin: self.own, seq, ..unit });
            seq = seq.checked_add(1).ok_or(LedgerError::SeqExhausted(self.own))?;
        }
        let logged = self.log(fresh, &[], now_ms, Some(Haste::Now))?;
        self.next_own_seq = seq;
        self.own_logged(&logged);
        Ok(logged)
    }

    /// Notes an own batch just logged (not yet indexed), so checkpoints stop before it; false
    /// when it is not waiting (empty, or written without logs).
    fn own_logged(&mut self, logged: &Logged) -> bool {
        let (Some(first), Some(at)) =
            (logged.units.first(), logged.refs.as_ref().and_then(|r| r.first()))
        else {
            return false;
        };
        self.own_syncing.push_back((first.seq, DatiPosition { nnnn: at.file, offset: at.offset }));
        true
    }

    /// Runs the fdatasyncs of [`Ledger::submit_logged`] on a thread of their own, calling
    /// `notify` after each (from that thread): the caller then asks [`Ledger::sync_state`].
    /// Without daily logs this changes nothing.
    pub fn pipeline_syncs(&mut self, notify: Box<dyn Fn() + Send>) -> std::io::Result<()> {
        self.pipeline_syncs_with(notify, Box::new(SyncJob::run))
    }

    /// [`Ledger::pipeline_syncs`] with another way to run the jobs (tests: a failing disk).
    pub(crate) fn pipeline_syncs_with(
        &mut self,
        notify: Box<dyn Fn() + Send>,
        run: SyncRunner,
    ) -> std::io::Result<()> {
        self.pipeline_syncs_gap(notify, run, RECEIVED_SYNC_GAP)
    }

    /// [`Ledger::pipeline_syncs_with`], received units' syncs waiting up to `gap`.
    fn pipeline_syncs_gap(
        &mut self,
        notify: Box<dyn Fn() + Send>,
        run: SyncRunner,
        gap: std::time::Duration,
    ) -> std::io::Result<()> {
        if self.dati.is_some() && self.syncer.is_none() {
            self.syncer = Some(LogSyncer::start(notify, run, gap)?);
        }
        Ok(())
    }

    /// Whether `logged` is durable yet. A failed sync poisons the ledger; it and every batch
    /// logged after it are `Failed`.
    pub fn sync_state(&mut self, logged: &Logged) -> SyncState {
        let Some(ticket) = logged.ticket else { return SyncState::Durable };
        if self.syncer.is_none() {
            return SyncState::Failed("no log sync thread".into());
        }
        self.collect_syncs(false);
        self.syncer.as_ref().map_or(SyncState::Pending, |s| s.state(ticket))
    }

    /// Takes the sync thread's results (with `wait`, all of them); a failure poisons the
    /// ledger and fails the writer. Returns whether every sync so far succeeded.
    fn collect_syncs(&mut self, wait: bool) -> bool {
        let Some(syncer) = self.syncer.as_mut() else { return true };
        let errors = syncer.collect(wait);
        if let Some(dati) = self.dati.as_mut() {
            for e in &errors {
                dati.sync_failed(e);
            }
        }
        let failed = syncer.failed.as_ref().map(|(_, why)| why.clone());
        let ok = failed.is_none();
        if let Some(why) = failed {
            self.poison(format_args!("a daily log sync failed: {why}"));
        } else if self.owed && syncer.issued == syncer.finished {
            // The job the promised batches wait for.
            if let Err(e) = self.issue_owed() {
                self.poison(format_args!("a daily log sync could not start: {e}"));
                return false;
            }
        }
        ok
    }

    /// Starts the job promised to received batches (an empty one when what they need is
    /// durable already, so their ticket is handed out).
    fn issue_owed(&mut self) -> Result<(), LedgerError> {
        let (Some(dati), Some(syncer)) = (self.dati.as_mut(), self.syncer.as_mut()) else {
            return Ok(());
        };
        self.owed = false;
        let job = match dati.start_sync()? {
            SyncStart::Done => SyncJob::nothing(dati),
            SyncStart::Job(job) => job,
        };
        syncer.send(job, Haste::Later).map(|_| ()).ok_or(LedgerError::Poisoned)
    }

    /// Step 3: puts a durable logged batch into the store's index (and checkpoints on
    /// schedule); returns its units. A failure here poisons the ledger (no more writes until
    /// reopened), but the batch stays durable: the logs have it, and reopening replays it.
    pub fn index(&mut self, logged: Logged) -> Result<Vec<TransferUnit>, LedgerError> {
        let Logged { units, received, refs, now_ms, ticket: _ } = logged;
        let Some(refs) = refs else {
            // Without logs the store itself wrote the batch.
            return Ok(units);
        };
        if received > 0 {
            let taken = received.min(self.receiving.len());
            self.receiving.drain(..taken);
            self.receiving_units = VersionVector::new();
            for batch in &self.receiving {
                for &(origin, seq) in &batch.units {
                    self.receiving_units.insert(origin, seq);
                }
            }
        }
        if let (false, Some(first), Some(&(seq, _))) =
            (received > 0, units.first(), self.own_syncing.front())
        {
            if first.origin == self.own && first.seq == seq {
                self.own_syncing.pop_front();
            }
        }
        if !self.pending_keys.is_empty() {
            for unit in &units {
                if self.pending_keys.get(&unit.physkey) == Some(&(unit.origin, unit.seq)) {
                    self.pending_keys.remove(&unit.physkey);
                }
            }
        }
        let located: Vec<(TransferUnit, BodyRef)> = units.into_iter().zip(refs).collect();
        if let Err(e) = self.store.insert_located(&located, &[]) {
            self.poison(format_args!("indexing units in the store failed: {e}"));
            return Err(e.into());
        }
        self.cover(&located);
        self.after_write(now_ms);
        Ok(located.into_iter().map(|(unit, _)| unit).collect())
    }

    /// Moves `covered` past the records of an indexed batch.
    fn cover(&mut self, located: &[(TransferUnit, BodyRef)]) {
        let mut last: Option<(DatabaseId, DatiPosition)> = None;
        let settle = |covered: &mut BTreeMap<DatabaseId, DatiPosition>, (origin, end)| {
            let at = covered.entry(origin).or_insert(end);
            if (end.nnnn, end.offset) > (at.nnnn, at.offset) {
                *at = end;
            }
        };
        for (unit, at) in located {
            let end = DatiPosition { nnnn: at.file, offset: at.offset + u64::from(at.len) };
            match &mut last {
                Some((origin, position)) if *origin == unit.origin => *position = end,
                _ => {
                    if let Some(done) = last.replace((unit.origin, end)) {
                        settle(&mut self.covered, done);
                    }
                }
            }
        }
        if let Some(done) = last {
            settle(&mut self.covered, done);
        }
    }

    /// Appends `units` to the daily logs and syncs them (without logs: writes them to the
    /// store, which is then durable); with `pipelined` and a sync thread, the sync may be left
    /// to it (the batch's ticket). `plains[i]`, where given, is `units[i].encode()`.
    fn log(
        &mut self,
        units: Vec<TransferUnit>,
        plains: &[Option<&[u8]>],
        now_ms: u64,
        pipelined: Option<Haste>,
    ) -> Result<Logged, LedgerError> {
        if units.is_empty() {
            return Ok(Logged { units, received: 0, refs: None, now_ms, ticket: None });
        }
        let Some(dati) = self.dati.as_mut() else {
            self.write_without_logs(&units)?;
            return Ok(Logged { units, received: 0, refs: None, now_ms, ticket: None });
        };
        let appended = (|| {
            let mut refs = Vec::with_capacity(units.len());
            for (i, unit) in units.iter().enumerate() {
                let at = match plains.get(i).copied().flatten() {
                    Some(plain) => dati.append_encoded(unit, plain, now_ms)?,
                    None => dati.append(unit, now_ms)?,
                };
                refs.push(body_ref(at));
            }
            Ok::<_, LedgerError>(refs)
        })();
        let result = appended.and_then(|refs| Ok((refs, self.sync_logs(pipelined)?)));
        match result {
            Ok((refs, ticket)) => {
                Ok(Logged { units, received: 0, refs: Some(refs), now_ms, ticket })
            }
            Err(e) => {
                // Part of the batch may be in the logs; a retry with the same seqs would write
                // different units under them. Refuse until reopened (which replays the logs).
                self.poison(format_args!("writing the daily logs failed: {e}"));
                Err(e)
            }
        }
    }

    /// Makes what was appended durable: here, or (`pipelined`, with a sync thread) by a job on
    /// the sync thread, whose ticket is returned.
    fn sync_logs(&mut self, pipelined: Option<Haste>) -> Result<Option<u64>, LedgerError> {
        let Some(dati) = self.dati.as_mut() else { return Ok(None) };
        let (Some(haste), true) = (pipelined, self.syncer.is_some()) else {
            dati.sync()?;
            return Ok(None);
        };
        // A new or rotated file is synced whole, only once every job started before it is
        // done and succeeded (see `DatiWriter::needs_whole_sync`).
        if dati.needs_whole_sync() && !self.wait_for_syncs() {
            return Err(LedgerError::Poisoned);
        }
        if haste == Haste::Later && !self.collect_syncs(false) {
            return Err(LedgerError::Poisoned);
        }
        let (Some(dati), Some(syncer)) = (self.dati.as_mut(), self.syncer.as_mut()) else {
            return Ok(None);
        };
        if haste == Haste::Later && (syncer.issued > syncer.finished || self.owed) {
            // The next job covers this batch (it was written before that job starts).
            self.owed = true;
            return Ok(Some(syncer.issued + 1));
        }
        let job = match dati.start_sync()? {
            SyncStart::Done if self.owed => SyncJob::nothing(dati),
            SyncStart::Done => return Ok(None),
            SyncStart::Job(job) => job,
        };
        self.owed = false;
        // Without the thread (only a panic ends it), what it had is not known durable.
        syncer.send(job, haste).map(Some).ok_or(LedgerError::Poisoned)
    }

    /// The checkpoint schedule after a durable write.
    fn after_write(&mut self, now_ms: u64) {
        // The units are durable in the logs whatever happens to the checkpoint: a failed one
        // only means a longer replay at the next open, so it must not turn this accepted batch
        // into a refused one.
        if let Err(e) = self.maybe_checkpoint(now_ms) {
            self.checkpoint_failures += 1;
            tracing::warn!(%e, "checkpoint failed; the next start replays more of the logs");
        }
    }

    /// Validates, deduplicates and numbers a batch. Writes nothing.
    fn prepare(&mut self, subs: Vec<Submission>, now_ms: u64) -> Result<Prepared, LedgerError> {
        if self.failure.is_some() {
            return Err(LedgerError::Poisoned);
        }
        for sub in &subs {
            self.check(sub)?;
        }
        let mut receipts = Vec::with_capacity(subs.len());
        let mut units = Vec::with_capacity(subs.len());
        let mut batch_keys: BTreeMap<Physkey, usize> = BTreeMap::new();
        let mut seq = self.next_own_seq;
        for sub in subs {
            if let Some(key) = sub.physkey {
                let held = match self.pending_keys.get(&key) {
                    Some(&found) => Some(found),
                    None => self.store.find_physkey(&key)?,
                };
                if let Some((origin, existing)) = held {
                    receipts.push(Receipt { origin, seq: existing, physkey: key, existing: true });
                    continue;
                }
                if let Some(first) = batch_keys.get(&key).and_then(|&i| units.get(i)) {
                    let first: &TransferUnit = first;
                    receipts.push(Receipt {
                        origin: first.origin,
                        seq: first.seq,
                        physkey: key,
                        existing: true,
                    });
                    continue;
                }
            }
            let time = self.clock.next(now_ms);
            let physkey = match sub.physkey {
                Some(key) => key,
                None => Physkey::generate(time, &self.own, seq)
                    .ok_or(LedgerError::SeqExhausted(self.own))?,
            };
            if sub.physkey.is_some() {
                batch_keys.insert(physkey, units.len());
            }
            units.push(TransferUnit {
                kind: sub.kind,
                physkey,
                origin: self.own,
                seq,
                created_ms: now_ms,
                urgency: sub.urgency,
                scopes: sub.scopes,
                payload: sub.payload,
                sensitive: sub.sensitive,
            });
            receipts.push(Receipt { origin: self.own, seq, physkey, existing: false });
            seq = seq.checked_add(1).ok_or(LedgerError::SeqExhausted(self.own))?;
        }
        Ok(Prepared { receipts, units, next: seq, keyed: batch_keys })
    }

    /// Accepts units that arrived from elsewhere (a peer, a carried log file): skips what is
    /// held, logs and stores the rest durably. Returns the new ones, in the order given.
    pub fn accept_batch(
        &mut self,
        units: Vec<TransferUnit>,
        now_ms: u64,
    ) -> Result<Vec<TransferUnit>, LedgerError> {
        self.accept(units, &[], now_ms)
    }

    /// [`Ledger::accept_batch`] for units as received: `encoded[i]` holds the bytes `units[i]`
    /// was decoded from. A log record holds a unit's canonical encoding; where the received
    /// bytes are that (always, from a meshnode sender), they are logged as they are instead of
    /// encoding the unit again (an encode was ~5 % of a receiving node's instructions).
    pub fn accept_received(
        &mut self,
        units: Vec<TransferUnit>,
        encoded: &[Vec<u8>],
        now_ms: u64,
    ) -> Result<Vec<TransferUnit>, LedgerError> {
        let encoded = if encoded.len() == units.len() { encoded } else { &[] };
        self.accept(units, encoded, now_ms)
    }

    fn accept(
        &mut self,
        units: Vec<TransferUnit>,
        encoded: &[Vec<u8>],
        now_ms: u64,
    ) -> Result<Vec<TransferUnit>, LedgerError> {
        let (fresh, plains) = self.fresh(units, encoded)?;
        let logged = self.log(fresh, &plains, now_ms, None)?;
        let fresh = self.index(logged)?;
        self.next_own_seq = self.next_own_seq.max(self.store.next_seq(&self.own));
        Ok(fresh)
    }

    /// Steps 1 and 2 of [`Ledger::accept_received`]: the new units are in the daily logs, not
    /// yet in the store's index; the caller hands the batch to [`Ledger::index`] once
    /// [`Ledger::sync_state`] says it is durable, in the order batches were logged (own and
    /// received alike). Meanwhile a copy that arrives again is not new, the units are in
    /// [`Ledger::receiving`], and a checkpoint stops short of them. The caller may use the
    /// units at once (deliver them, send them on): their origin made them durable before
    /// sending them, so a crash before this node's sync loses only this copy, and peers hand it
    /// back after the restart (this node's vector never claimed it).
    pub fn receive_logged(
        &mut self,
        units: Vec<TransferUnit>,
        encoded: &[Vec<u8>],
        now_ms: u64,
    ) -> Result<Logged, LedgerError> {
        let encoded = if encoded.len() == units.len() { encoded } else { &[] };
        let (fresh, plains) = self.fresh(units, encoded)?;
        // (origin, seq) order: per-origin runs in each log, and `Logged::unit` searches.
        let mut pairs: Vec<(TransferUnit, Option<&[u8]>)> = if plains.is_empty() {
            fresh.into_iter().map(|u| (u, None)).collect()
        } else {
            fresh.into_iter().zip(plains).collect()
        };
        if !pairs.windows(2).all(|w| (w[0].0.origin, w[0].0.seq) < (w[1].0.origin, w[1].0.seq)) {
            pairs.sort_unstable_by_key(|(u, _)| (u.origin, u.seq));
        }
        let (fresh, plains): (Vec<TransferUnit>, Vec<Option<&[u8]>>) = pairs.into_iter().unzip();
        // A unit of our own origin from elsewhere (a restored directory's, from a peer) takes its
        // seq now: the next submit must not reuse it while the batch syncs.
        if let Some(last) = fresh.iter().filter(|u| u.origin == self.own).map(|u| u.seq).max() {
            self.next_own_seq = self.next_own_seq.max(last.saturating_add(1));
        }
        let mut logged = self.log(fresh, &plains, now_ms, Some(Haste::Later))?;
        if let Some(refs) = &logged.refs {
            let mut starts = BTreeMap::new();
            for (unit, at) in logged.units.iter().zip(refs) {
                starts
                    .entry(unit.origin)
                    .or_insert(DatiPosition { nnnn: at.file, offset: at.offset });
            }
            let units: Vec<(DatabaseId, u64)> =
                logged.units.iter().map(|u| (u.origin, u.seq)).collect();
            for &(origin, seq) in &units {
                self.receiving_units.insert(origin, seq);
            }
            // An application physkey is found while its unit waits for the sync, so a
            // resubmission meanwhile (the application saw the unit delivered) is `existing`.
            for unit in
                logged.units.iter().filter(|u| !u.physkey.is_generated_for(&u.origin, u.seq))
            {
                self.pending_keys.insert(unit.physkey, (unit.origin, unit.seq));
            }
            let bytes = logged.units.iter().map(|u| (u.payload.len() + u.sensitive.len()) as u64);
            self.receiving.push_back(Receiving { starts, units, bytes: bytes.sum() });
            logged.received = 1;
        }
        Ok(logged)
    }

    /// Received units logged and not yet indexed ([`Ledger::receive_logged`]): held, but not
    /// in the store's vector yet.
    pub fn receiving(&self) -> &VersionVector {
        &self.receiving_units
    }

    /// The payload bytes of [`Ledger::receiving`].
    pub fn receiving_bytes(&self) -> u64 {
        self.receiving.iter().map(|r| r.bytes).sum()
    }

    /// Waits for every log sync started so far (a node whose received batches pile up while
    /// the disk is slow: their units wait in memory). Returns whether all succeeded.
    pub fn wait_for_syncs(&mut self) -> bool {
        // A promised job starts once the others are done: wait for it too.
        while self.collect_syncs(true) {
            if !self.owed {
                return true;
            }
        }
        false
    }

    /// What of `units` is new: not held, not being received, not our own from a batch still
    /// syncing, not repeated. `plains[i]`, where given, is the new unit's canonical encoding.
    /// Own units held here as another unit (another physkey under the same seq) are kept for
    /// [`Ledger::take_rivals`].
    #[allow(clippy::type_complexity)]
    fn fresh<'a>(
        &mut self,
        units: Vec<TransferUnit>,
        encoded: &'a [Vec<u8>],
    ) -> Result<(Vec<TransferUnit>, Vec<Option<&'a [u8]>>), LedgerError> {
        if self.failure.is_some() {
            return Err(LedgerError::Poisoned);
        }
        // While own batches wait for their sync (pipelined), units of our own origin from
        // elsewhere (a peer holding a restored directory's units) with seqs from the oldest
        // waiting batch on wait too (they would collide with seqs being written); anti-entropy
        // offers them again. Those below are taken (the checkpoint stops short of the waiting
        // batches whatever is appended after them).
        let defer_own_from = self.own_syncing.front().map(|&(seq, _)| seq);
        let receiving = !self.receiving_units.is_empty();
        // A batch in strictly increasing (origin, seq) order, as a burst of one sender's
        // datagrams is, repeats no unit; only another order needs the set (a set insert per unit
        // was ~6 % of a receiving node's instructions).
        let ordered = units.windows(2).all(|w| (w[0].origin, w[0].seq) < (w[1].origin, w[1].seq));
        let mut seen = BTreeSet::new();
        let mut fresh = Vec::with_capacity(units.len());
        let mut plains = Vec::with_capacity(if encoded.is_empty() { 0 } else { units.len() });
        for (i, unit) in units.into_iter().enumerate() {
            if self.store.contains(&unit.origin, unit.seq) {
                // An own unit from elsewhere is rare (a peer sends back what it holds under our
                // seqs as other units): worth one read to tell it from a copy of ours. Other
                // origins' units are compared only when offered ([`Ledger::differing`]).
                if unit.origin == self.own {
                    self.note_rival(unit);
                }
                continue;
            }
            if (unit.origin == self.own
                && (defer_own_from.is_some_and(|from| unit.seq >= from)
                    || unit.seq > self.own_head().saturating_add(OWN_PLAUSIBLE_AHEAD)))
                || (receiving && self.receiving_units.contains(&unit.origin, unit.seq))
                || !(ordered || seen.insert((unit.origin, unit.seq)))
            {
                continue;
            }
            if let Some(bytes) = encoded.get(i) {
                plains.push(Some(bytes.as_slice()).filter(|b| is_canonical_encoding(&unit, b)));
            }
            fresh.push(unit);
        }
        Ok((fresh, plains))
    }

    /// Keeps `received` as a [`Rival`] if this store holds another unit under its seq.
    fn note_rival(&mut self, received: TransferUnit) {
        let bytes = |u: &TransferUnit| u.payload.len() + u.sensitive.len();
        let kept: usize = self.rivals.iter().map(|r| bytes(&r.held) + bytes(&r.received)).sum();
        if self.rivals.len() >= RIVALS_MAX || kept >= RIVALS_MAX_BYTES {
            return;
        }
        // A unit that cannot be read is not compared: the store's own errors surface elsewhere.
        if let Ok(Some(held)) = self.store.get(&received.origin, received.seq) {
            if held.physkey != received.physkey {
                self.rivals.push(Rival { held, received });
            }
        }
    }

    /// The units held under the seqs of `origin` in `offered` with other physkeys than offered
    /// (that origin handed those seqs out twice), in order, at most [`RIVALS_MAX_BYTES`] of
    /// payload; and the last offered seq compared (all of them unless that bound cut it short).
    /// Costs one store read per offered seq held.
    #[allow(clippy::type_complexity)]
    pub fn differing(
        &self,
        origin: &DatabaseId,
        offered: &[(u64, Physkey)],
    ) -> Result<(Vec<TransferUnit>, Option<u64>), LedgerError> {
        let mut differing = Vec::new();
        let mut bytes = 0;
        let mut upto = None;
        for (seq, physkey) in offered {
            if self.store.contains(origin, *seq) {
                if let Some(held) = self.store.get(origin, *seq)? {
                    if held.physkey != *physkey {
                        bytes += held.payload.len() + held.sensitive.len();
                        if bytes > RIVALS_MAX_BYTES && !differing.is_empty() {
                            break;
                        }
                        differing.push(held);
                    }
                }
            }
            upto = Some(*seq);
        }
        Ok((differing, upto))
    }

    /// Own units received under a seq held here as another unit, since the last call.
    pub fn take_rivals(&mut self) -> Vec<Rival> {
        std::mem::take(&mut self.rivals)
    }

    /// Logs and stores `units` durably; hands them back, so callers can send them on without
    /// copying or reading them back.
    fn write(
        &mut self,
        units: Vec<TransferUnit>,
        now_ms: u64,
    ) -> Result<Vec<TransferUnit>, LedgerError> {
        // Indexed at once, these own units would move `covered` past batches still syncing.
        debug_assert!(self.own_syncing.is_empty(), "submit_batch while submit_logged batches wait");
        let logged = self.log(units, &[], now_ms, None)?;
        self.index(logged)
    }

    /// Without logs the store's batch is atomic: a refused batch (disk full) is not in the store
    /// (the sled store refuses further batches until it is reopened, which undoes a batch cut
    /// part way). A failed flush leaves durability unknown, so that poisons.
    fn write_without_logs(
        &mut self,
        units: &[TransferUnit],
    ) -> Result<Vec<InsertOutcome>, LedgerError> {
        let outcomes = self.store.insert_batch(units, &[])?;
        if let Err(e) = self.store.flush() {
            self.poison(format_args!("flushing the store failed: {e}"));
            return Err(e.into());
        }
        Ok(outcomes)
    }

    fn maybe_checkpoint(&mut self, now_ms: u64) -> Result<(), LedgerError> {
        match self.last_checkpoint_ms {
            None => self.last_checkpoint_ms = Some(now_ms),
            Some(last) if now_ms.saturating_sub(last) >= self.checkpoint_interval_ms => {
                self.checkpoint()?;
                self.last_checkpoint_ms = Some(now_ms);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Flushes the store and records the log positions it now covers, so a later open replays
    /// only what came after. With a background thread (the sled store with logs) this starts
    /// the checkpoint and returns at once (nothing if one is still running); an error of an
    /// earlier background checkpoint is returned here.
    pub fn checkpoint(&mut self) -> Result<(), LedgerError> {
        self.may_checkpoint()?;
        self.put_own_record()?;
        let (Some(background), Some(dati)) = (self.background.as_mut(), self.dati.as_ref()) else {
            return self.checkpoint_now();
        };
        background.collect(false)?;
        if background.in_flight {
            return Ok(());
        }
        let positions =
            checkpoint_positions(&self.covered, self.own, &self.own_syncing, &self.receiving);
        let job = CheckpointJob::of(&positions, dati);
        match background.jobs.as_ref().map(|jobs| jobs.try_send(job)) {
            Some(Ok(())) => {
                background.in_flight = true;
                Ok(())
            }
            // The thread is gone: checkpoint here.
            _ => {
                self.background = None;
                self.checkpoint_now()
            }
        }
    }

    /// A checkpoint records what the store covers of the logs (`covered`: the records
    /// indexed, not the logs' end, which may run ahead of the index while batches wait for their
    /// sync). Not once a write failed part way (poisoned): the store may lack units the logs
    /// have, and only a replay at the next open puts them back.
    fn may_checkpoint(&self) -> Result<(), LedgerError> {
        if self.failure.is_some() {
            Err(LedgerError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// The checkpoint, on this thread.
    fn checkpoint_now(&mut self) -> Result<(), LedgerError> {
        self.may_checkpoint()?;
        self.put_own_record()?;
        if let Some(background) = self.background.as_mut() {
            background.collect(true)?;
        }
        let Some(dati) = self.dati.as_ref() else {
            self.store.flush()?;
            return Ok(());
        };
        let store = &mut self.store;
        CheckpointJob::of(
            &checkpoint_positions(&self.covered, self.own, &self.own_syncing, &self.receiving),
            dati,
        )
        .record(|step| match step {
            Step::Flush => store.flush(),
            Step::Put(name, value) => store.meta_put(name, value),
        })?;
        Ok(())
    }

    /// Checkpoints and closes; the next open replays nothing.
    pub fn close(mut self) -> Result<(), LedgerError> {
        if self.failure.is_some() {
            return Err(LedgerError::Poisoned);
        }
        self.checkpoint_now()
    }
}

impl<S: Store> crate::proto::pads::PadStorage for Ledger<S> {
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        self.store.meta_get(name).map_err(|e| e.to_string())
    }

    fn put_durably(&mut self, entries: &[(&str, &[u8])]) -> Result<(), String> {
        self.meta_put_durably(entries).map_err(|e| e.to_string())
    }
}

/// Whether `bytes`, which decoded to `unit`, are its canonical encoding (`unit.encode()`).
/// postcard reads one value from its encoding or from longer ones (overlong varints) and
/// nothing else, so a decodable encoding of the canonical length is the canonical one.
fn is_canonical_encoding(unit: &TransferUnit, bytes: &[u8]) -> bool {
    // A unit with a sensitive part is never version 1: such bytes are never its encoding.
    unit.sensitive.is_empty()
        && bytes.first() == Some(&crate::unit::UNIT_FORMAT_VERSION)
        && postcard::experimental::serialized_size(unit).ok().and_then(|n| n.checked_add(1))
            == Some(bytes.len())
}

fn meta_decode<S: Store, T: for<'de> Deserialize<'de>>(
    store: &S,
    name: &'static str,
) -> Result<Option<T>, LedgerError> {
    match store.meta_get(name)? {
        None => Ok(None),
        Some(bytes) => {
            postcard::from_bytes(&bytes).map(Some).map_err(|_| LedgerError::BadMeta { name })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datadir::SystemSecrets;
    use crate::id::Environment;
    use rand::SeedableRng;

    fn data_dir(path: &std::path::Path) -> DataDir {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let secrets = SystemSecrets::generate(
            &mut rng,
            Some("77,123,89,201192".parse().unwrap()),
            Environment::live(),
        );
        DataDir::init(path, &secrets, &mut rng).unwrap()
    }

    /// A small TUBT submission with a generated physkey.
    pub(crate) fn sale(i: usize) -> Submission {
        Submission {
            kind: UnitKind::Tubt,
            urgency: Urgency::Normal,
            scopes: FileScopes::NONE,
            physkey: None,
            payload: format!("sale {i}").into_bytes(),
            sensitive: Vec::new(),
        }
    }

    /// A batch is durable once logged: a crash before its index is written (the ledger dropped
    /// without `index`) loses nothing, because opening replays it; the next own seq follows it.
    #[test]
    fn a_logged_batch_survives_a_crash_before_its_index() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (receipts, logged) = ledger.submit_logged((0..10).map(sale).collect(), now).unwrap();
        assert_eq!(logged.units().len(), 10);
        assert_eq!(ledger.store().units_total(), 0, "not indexed yet");
        assert_eq!(receipts[9].seq, 10);
        // Another batch may be logged meanwhile, and a checkpoint taken: it covers only what
        // is indexed, so neither batch escapes the replay.
        let (receipts, second) = ledger.submit_logged(vec![sale(10)], now).unwrap();
        assert_eq!(receipts[0].seq, 11);
        ledger.checkpoint_now().unwrap();
        drop((logged, second));
        drop(ledger); // the crash: no index
        let (mut ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
        assert_eq!(report.replayed, 11);
        assert_eq!(ledger.store().units_total(), 11);
        let (receipts, logged) = ledger.submit_logged(vec![sale(11)], now).unwrap();
        assert_eq!(receipts[0].seq, 12, "no seq handed out twice");
        assert_eq!(ledger.index(logged).unwrap().len(), 1);
        assert_eq!(ledger.store().units_total(), 12);
        ledger.checkpoint().unwrap();
    }

    /// A disk whose fdatasync fails (for `Ledger::pipeline_syncs_with`).
    pub(crate) fn failing_sync(_: &SyncJob) -> Result<(), DatiError> {
        let source = std::io::Error::other("injected");
        Err(DatiError::Io { op: "fdatasync", path: "log".into(), source })
    }

    /// A disk whose syncs wait until the gate opens: at [`Gate::open`], or when it is dropped
    /// (declared after the ledger or node, it is dropped first, so a failed assertion still
    /// lets the sync thread end and the test report). Counts the runs.
    pub(crate) struct Gate {
        open: std::sync::Arc<std::sync::atomic::AtomicBool>,
        runs: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Gate {
        /// A shut gate and the runner it holds back.
        pub(crate) fn shut() -> (Gate, SyncRunner) {
            let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let (o, r) = (open.clone(), runs.clone());
            let run: SyncRunner = Box::new(move |job| {
                while !o.load(std::sync::atomic::Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                job.run()
            });
            (Gate { open, runs }, run)
        }

        pub(crate) fn open(&self) {
            self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        }

        /// Jobs run so far.
        pub(crate) fn runs(&self) -> usize {
            self.runs.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for Gate {
        fn drop(&mut self) {
            self.open();
        }
    }

    /// Waits (with a deadline) until `logged` is no longer pending; its state.
    fn wait_synced(ledger: &mut Ledger, logged: &Logged) -> SyncState {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match ledger.sync_state(logged) {
                SyncState::Pending if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                state => return state,
            }
        }
    }

    fn keyed(i: usize, key: &str) -> Submission {
        Submission { physkey: Some(key.repeat(32).parse().unwrap()), ..sale(i) }
    }

    /// With syncs pipelined, a batch for an existing file is handed to the sync thread (a
    /// ticket, `notify` called when it is done) and is indexed only after; a resubmitted
    /// application physkey is found while its batch waits; a checkpoint meanwhile covers only
    /// what is indexed, so a crash before the index loses nothing and reuses no seq.
    #[test]
    fn pipelined_syncs_index_after_the_sync_and_checkpoints_cover_only_the_index() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let recorded = |ledger: &Ledger| -> Option<BTreeMap<DatabaseId, DatiPosition>> {
            meta_decode(ledger.store(), META_CHECKPOINT).unwrap()
        };
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (tx, notified) = std::sync::mpsc::channel();
        ledger
            .pipeline_syncs(Box::new(move || {
                let _ = tx.send(());
            }))
            .unwrap();
        // The first batch names a new file: synced whole, at once.
        let (_, first) = ledger.submit_logged((0..10).map(sale).collect(), now).unwrap();
        assert_eq!(first.ticket, None);
        assert_eq!(ledger.sync_state(&first), SyncState::Durable);
        // The second goes to the sync thread.
        let (receipts, second) = ledger.submit_logged(vec![sale(10), keyed(11, "K")], now).unwrap();
        assert_eq!(second.ticket, Some(1));
        assert_eq!(wait_synced(&mut ledger, &second), SyncState::Durable);
        notified.recv_timeout(std::time::Duration::from_secs(30)).expect("notified");
        // Both syncs were timed: the whole one here and the job on the sync thread.
        assert_eq!(ledger.disk_syncs().map(|d| d.log_syncs), Some(2));
        // Its physkey is found before it is indexed.
        let (again, third) = ledger.submit_logged(vec![keyed(12, "K"), sale(13)], now).unwrap();
        assert!(again[0].existing);
        assert_eq!(again[0].seq, receipts[1].seq);
        assert_eq!(again[1].seq, 13);
        // Index the first only, and checkpoint: it covers the first batch, nothing after.
        let first_end = {
            let last = ledger.index(first).unwrap().pop().unwrap();
            assert_eq!(last.seq, 10);
            ledger.covered[&ledger.own_dbid()]
        };
        ledger.checkpoint_now().unwrap();
        assert_eq!(recorded(&ledger).unwrap()[&ledger.own_dbid()], first_end);
        assert_eq!(wait_synced(&mut ledger, &third), SyncState::Durable);
        drop((second, third));
        drop(ledger); // the crash
        let (ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
        assert_eq!(report.replayed, 3, "the two batches not indexed");
        assert_eq!(ledger.store().units_total(), 13);
        assert_eq!(ledger.store().next_seq(&ledger.own_dbid()), 14);
    }

    /// A failed sync on the sync thread fails its batch and every batch after it, and poisons
    /// the ledger; reopening replays what reached the logs.
    #[test]
    fn a_failed_pipelined_sync_fails_it_and_what_follows() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        ledger.pipeline_syncs_with(Box::new(|| ()), Box::new(failing_sync)).unwrap();
        let (_, first) = ledger.submit_logged((0..3).map(sale).collect(), now).unwrap();
        assert_eq!(ledger.failure(), None);
        let first = ledger.index(first).unwrap();
        assert_eq!(first.len(), 3, "the first batch names its file: synced whole");
        let (_, second) = ledger.submit_logged(vec![sale(3)], now).unwrap();
        let (_, third) = ledger.submit_logged(vec![sale(4)], now).unwrap();
        assert!(
            matches!(wait_synced(&mut ledger, &second), SyncState::Failed(r) if r.contains("injected"))
        );
        assert!(matches!(ledger.sync_state(&third), SyncState::Failed(_)));
        assert!(matches!(ledger.submit_logged(vec![sale(5)], now), Err(LedgerError::Poisoned)));
        // The operator is told why (the node stops on it, and `meshnode run` reopens).
        let failure = ledger.failure().expect("a failed ledger says why");
        assert!(failure.starts_with("a daily log sync failed") && failure.contains("injected"));
        drop((second, third));
        drop(ledger);
        let (ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
        assert_eq!(report.replayed, 2);
        assert_eq!(ledger.store().next_seq(&ledger.own_dbid()), 6);
    }

    /// A pipelined batch that rotates the own log into a new file waits for the syncs started
    /// before it, and is refused if one failed: a newer file is never named while an older
    /// job may still fail (a crash would keep later seqs and lose earlier ones). With a disk
    /// that works, the rotating batch is durable once logged and the earlier one is too.
    #[test]
    fn a_rotating_batch_waits_for_the_syncs_before_it() {
        for failing in [true, false] {
            let root = tempfile::tempdir().unwrap();
            let mut dir = data_dir(root.path());
            dir.config.dati.file_size_limit = 4096;
            let now = 1_764_633_600_000;
            let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
            let run: SyncRunner =
                if failing { Box::new(failing_sync) } else { Box::new(SyncJob::run) };
            ledger.pipeline_syncs_with(Box::new(|| ()), run).unwrap();
            let (_, first) = ledger.submit_logged((0..3).map(sale).collect(), now).unwrap();
            ledger.index(first).unwrap();
            let (_, second) = ledger.submit_logged(vec![sale(3)], now).unwrap();
            assert_eq!(second.ticket, Some(1));
            let third = ledger.submit_logged((4..104).map(sale).collect(), now);
            let own = ledger.own_dbid();
            let named = || {
                let files = dati::list_files(&dir.dati_path()).unwrap();
                files.iter().filter(|f| f.origin == own).count()
            };
            if failing {
                assert!(matches!(third, Err(LedgerError::Poisoned)), "{third:?}");
                assert!(matches!(ledger.sync_state(&second), SyncState::Failed(_)));
                assert_eq!(named(), 1, "the new file is not named");
                drop((second, ledger));
                let (ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
                assert_eq!(report.replayed, 1, "what reached the first file");
                assert_eq!(ledger.store().next_seq(&own), 5, "no gap: the third never was");
            } else {
                let (_, third) = third.unwrap();
                assert_eq!(third.ticket, None, "synced whole, after the job before it");
                assert_eq!(ledger.sync_state(&second), SyncState::Durable);
                assert!(named() >= 2);
                ledger.index(second).unwrap();
                ledger.index(third).unwrap();
                assert_eq!(ledger.store().next_seq(&own), 105);
            }
        }
    }

    /// A sync thread that dies (a panic) still signals, and what waited on it is failed rather
    /// than left waiting for ever.
    #[test]
    fn a_sync_thread_that_dies_fails_what_waits() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (tx, notified) = std::sync::mpsc::channel();
        let notify = Box::new(move || {
            let _ = tx.send(());
        });
        ledger
            .pipeline_syncs_with(notify, Box::new(|_| panic!("injected panic in a sync job")))
            .unwrap();
        let (_, first) = ledger.submit_logged((0..3).map(sale).collect(), now).unwrap();
        ledger.index(first).unwrap();
        let (_, second) = ledger.submit_logged(vec![sale(3)], now).unwrap();
        notified.recv_timeout(std::time::Duration::from_secs(30)).expect("signalled");
        let state = ledger.sync_state(&second);
        assert!(matches!(&state, SyncState::Failed(r) if r.contains("stopped")), "{state:?}");
        assert!(matches!(ledger.submit_logged(vec![sale(4)], now), Err(LedgerError::Poisoned)));
    }

    /// While an own batch waits for its sync, units of the own origin from elsewhere with seqs
    /// from that batch on are not taken (they would collide with seqs being written), and a
    /// checkpoint stops the own log short of the waiting batch.
    #[test]
    fn own_units_from_elsewhere_wait_behind_a_syncing_batch() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (gate, gated) = Gate::shut();
        ledger.pipeline_syncs_with(Box::new(|| ()), gated).unwrap();
        let (_, first) = ledger.submit_logged((0..3).map(sale).collect(), now).unwrap();
        ledger.index(first).unwrap();
        let own = ledger.own_dbid();
        let first_end = ledger.covered[&own];
        let (_, second) = ledger.submit_logged(vec![sale(3), sale(4)], now).unwrap();
        let mut echo = crate::unit::tests::sample_unit(4, b"elsewhere");
        echo.origin = own;
        assert_eq!(ledger.accept_batch(vec![echo], now).unwrap(), []);
        ledger.checkpoint_now().unwrap();
        let recorded: BTreeMap<DatabaseId, DatiPosition> =
            meta_decode(ledger.store(), META_CHECKPOINT).unwrap().unwrap();
        assert_eq!(recorded[&own], first_end);
        gate.open();
        assert_eq!(wait_synced(&mut ledger, &second), SyncState::Durable);
        assert_eq!(ledger.index(second).unwrap().len(), 2);
        assert!(ledger.own_syncing.is_empty());
    }

    /// Received units logged with `receive_logged` wait for their sync before the index, like
    /// own batches: they are held (`receiving`, and their batch finds them) but not in the
    /// store's vector, a copy arriving meanwhile is not new, a checkpoint stops short of them
    /// even when a later batch of the same origin was indexed first, and a crash before their
    /// index loses nothing (the open replays them).
    #[test]
    fn received_units_wait_for_their_sync_and_survive_a_crash_before_the_index() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let unit = |seq| crate::unit::tests::sample_unit(seq, b"sale");
        let origin = unit(1).origin;
        let seqs = |logged: &Logged| logged.units().iter().map(|u| u.seq).collect::<Vec<_>>();
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (gate, gated) = Gate::shut();
        ledger.pipeline_syncs_with(Box::new(|| ()), gated).unwrap();
        // The first names the origin's log file: synced whole, durable at once.
        let first = ledger.receive_logged(vec![unit(1), unit(2)], &[], now).unwrap();
        assert_eq!(ledger.sync_state(&first), SyncState::Durable);
        assert_eq!(ledger.index(first).unwrap().len(), 2);
        let start = ledger.covered[&origin];
        // Out of order as it arrived, logged by seq, and waiting for the gated sync.
        let second = ledger.receive_logged(vec![unit(4), unit(3)], &[], now).unwrap();
        assert_eq!(seqs(&second), [3, 4]);
        assert_eq!(ledger.sync_state(&second), SyncState::Pending);
        assert!(ledger.receiving().contains(&origin, 3));
        assert!(!ledger.store().contains(&origin, 3));
        assert_eq!(second.unit(&origin, 4).map(|u| u.seq), Some(4));
        assert!(second.unit(&origin, 5).is_none());
        let third = ledger.receive_logged(vec![unit(3), unit(5), unit(4)], &[], now).unwrap();
        assert_eq!(seqs(&third), [5], "what is being received is not new");
        // A later unit of the origin indexed first (a synchronous accept): the checkpoint still
        // stops at the first record not indexed.
        assert_eq!(ledger.accept_batch(vec![unit(6)], now).unwrap().len(), 1);
        assert!(ledger.covered[&origin].offset > start.offset);
        ledger.checkpoint_now().unwrap();
        let recorded: BTreeMap<DatabaseId, DatiPosition> =
            meta_decode(ledger.store(), META_CHECKPOINT).unwrap().unwrap();
        assert_eq!(recorded[&origin], start);
        gate.open();
        assert_eq!(wait_synced(&mut ledger, &third), SyncState::Durable);
        drop((second, third));
        drop(ledger); // the crash: neither indexed
        let (ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
        assert_eq!(report.replayed, 3, "3, 4 and 5 come back from the logs");
        assert_eq!(ledger.store().units_total(), 6);
        assert!(ledger.receiving().is_empty());
    }

    /// On the sync thread, jobs queued behind a running one run as one fdatasync per file, and a
    /// job of received units waits (here: for as long as the test needs) until a job someone
    /// waits for comes, then runs with it: one run, both durable.
    #[test]
    fn queued_syncs_run_as_one_and_received_units_wait_for_company() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let unit = |seq| crate::unit::tests::sample_unit(seq, b"sale");
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let forever = std::time::Duration::from_secs(3600);
        let (gate, counted) = Gate::shut();
        ledger.pipeline_syncs_gap(Box::new(|| ()), counted, forever).unwrap();
        // New files are synced whole, here: one of each kind first.
        let (_, first) = ledger.submit_logged(vec![sale(0)], now).unwrap();
        let received = ledger.receive_logged(vec![unit(1)], &[], now).unwrap();
        ledger.index(first).unwrap();
        ledger.index(received).unwrap();
        // Three submits queue behind the gate: the first runs alone, the other two as one.
        let batches: Vec<Logged> =
            (1..4).map(|i| ledger.submit_logged(vec![sale(i)], now).unwrap().1).collect();
        gate.open();
        for logged in &batches {
            assert_eq!(wait_synced(&mut ledger, logged), SyncState::Durable);
        }
        assert!(gate.runs() <= 2, "queued jobs run as one");
        for logged in batches {
            ledger.index(logged).unwrap();
        }
        // Received units wait for company (the gap is an hour here)...
        let runs = gate.runs();
        let received = ledger.receive_logged(vec![unit(2)], &[], now).unwrap();
        assert_eq!(ledger.sync_state(&received), SyncState::Pending);
        // ...which a submit brings: one run makes both durable.
        let (_, submitted) = ledger.submit_logged(vec![sale(4)], now).unwrap();
        assert_eq!(wait_synced(&mut ledger, &submitted), SyncState::Durable);
        assert_eq!(ledger.sync_state(&received), SyncState::Durable);
        assert_eq!(gate.runs(), runs + 1);
        ledger.index(received).unwrap();
        ledger.index(submitted).unwrap();
        assert_eq!(ledger.store().units_total(), 7);
        // A large job has company enough: it syncs at once, within the hour-long gap.
        let runs = gate.runs();
        let big = crate::unit::tests::sample_unit(3, &[b'b'; RECEIVED_SYNC_ALONE_BYTES as usize]);
        let received = ledger.receive_logged(vec![big], &[], now).unwrap();
        assert_eq!(wait_synced(&mut ledger, &received), SyncState::Durable);
        assert_eq!(gate.runs(), runs + 1);
        ledger.index(received).unwrap();
        assert_eq!(ledger.store().units_total(), 8);
    }

    /// A failure while a received batch waits for the next job (its ticket promised, not
    /// issued) fails that batch: nothing would issue the job any more. Jobs already out finish.
    #[test]
    fn a_failure_fails_the_batches_promised_the_next_sync() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let unit = |seq| crate::unit::tests::sample_unit(seq, b"sale");
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (gate, counted) = Gate::shut();
        ledger.pipeline_syncs_gap(Box::new(|| ()), counted, std::time::Duration::ZERO).unwrap();
        // New files are synced whole, here.
        let (_, first) = ledger.submit_logged(vec![sale(0)], now).unwrap();
        let received = ledger.receive_logged(vec![unit(1)], &[], now).unwrap();
        ledger.index(first).unwrap();
        ledger.index(received).unwrap();
        // One received job out (held at the gate); the next batch is promised the job after it.
        let out = ledger.receive_logged(vec![unit(2)], &[], now).unwrap();
        let promised = ledger.receive_logged(vec![unit(3)], &[], now).unwrap();
        assert_eq!(promised.ticket, out.ticket.map(|t| t + 1));
        ledger.poison("the disk failed");
        assert!(
            matches!(ledger.sync_state(&promised), SyncState::Failed(r) if r == "the disk failed")
        );
        gate.open();
        assert_eq!(wait_synced(&mut ledger, &out), SyncState::Durable, "out before the failure");
        assert!(matches!(ledger.sync_state(&promised), SyncState::Failed(_)));
        assert_eq!(ledger.failure(), Some("the disk failed"));
    }

    /// Units already held and repeats within a batch are skipped, whether the batch is in
    /// (origin, seq) order or not; the fresh ones come back in the order given.
    #[test]
    fn accept_batch_skips_what_is_held_and_repeats() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let unit = |seq| crate::unit::tests::sample_unit(seq, b"sale");
        let mut accept = |seqs: &[u64]| -> Vec<u64> {
            let units = seqs.iter().map(|s| unit(*s)).collect();
            ledger.accept_batch(units, now).unwrap().iter().map(|u| u.seq).collect()
        };
        assert_eq!(accept(&[1, 2]), [1, 2]);
        assert_eq!(accept(&[2, 3, 4]), [3, 4], "in order, one held");
        assert_eq!(accept(&[7, 5, 7, 4, 6, 5]), [7, 5, 6], "out of order, repeats");
        assert_eq!(accept(&[8, 9, 9, 10]), [8, 9, 10], "in order but for a repeat");
        assert_eq!(ledger.store().units_total(), 10);
    }

    /// Received bytes are logged as they are only when they are the unit's canonical encoding:
    /// bytes with an overlong varint, which postcard reads as the same unit, are encoded again
    /// (a debug build checks that every record holds `unit.encode()`).
    #[test]
    fn only_canonical_received_bytes_are_logged_as_received() {
        let unit = crate::unit::tests::sample_unit(0x1234_5678, b"sale");
        let canonical = unit.encode();
        assert!(is_canonical_encoding(&unit, &canonical));
        let varint = postcard::to_stdvec(&unit.seq).unwrap();
        let (last, head) = varint.split_last().unwrap();
        let at = canonical.windows(varint.len()).position(|w| w == varint).unwrap();
        let mut overlong = canonical[..at].to_vec();
        overlong.extend_from_slice(head);
        overlong.extend_from_slice(&[last | 0x80, 0]);
        overlong.extend_from_slice(&canonical[at + varint.len()..]);
        assert_eq!(TransferUnit::decode(&overlong, 1 << 20).unwrap(), unit, "postcard reads it");
        assert!(!is_canonical_encoding(&unit, &overlong));
        let mut other_version = canonical.clone();
        other_version[0] ^= 0xff;
        assert!(!is_canonical_encoding(&unit, &other_version));

        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let next = crate::unit::tests::sample_unit(0x1234_5679, b"sale 2");
        let units = vec![unit.clone(), next.clone(), unit.clone()];
        let encoded = [overlong, next.encode(), canonical];
        assert_eq!(ledger.accept_received(units, &encoded, now).unwrap(), [unit.clone(), next]);
        // Encodings that do not pair up with the units are not used.
        let last = crate::unit::tests::sample_unit(0x1234_567a, b"sale 3");
        let fresh = ledger.accept_received(vec![last.clone()], &[], now).unwrap();
        assert_eq!(fresh, std::slice::from_ref(&last));
        for u in [&unit, &last] {
            assert_eq!(ledger.store().get(&u.origin, u.seq).unwrap().as_ref(), Some(u));
        }
    }

    /// A poisoned ledger (a write failed part way) records no checkpoint: what the logs hold
    /// beyond the store is replayed at the next open, so no seq is handed out twice.
    #[test]
    fn a_poisoned_ledger_does_not_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        let (_, logged) = ledger.submit_logged((0..5).map(sale).collect(), now).unwrap();
        // As if the index write failed: poisoned, the batch only in the logs.
        ledger.poison("test");
        drop(logged);
        assert!(matches!(ledger.checkpoint(), Err(LedgerError::Poisoned)));
        assert!(matches!(ledger.checkpoint_now(), Err(LedgerError::Poisoned)));
        drop(ledger);
        let (ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
        assert_eq!(report.replayed, 5);
        assert_eq!(ledger.store().next_seq(&ledger.own_dbid()), 6);
    }

    /// A checkpoint runs on its own thread: `checkpoint` returns without waiting, the thread
    /// records the log positions the flushed store covers, a round that finds one in flight
    /// starts nothing, and `close` waits for the one in flight before its own.
    #[test]
    fn checkpoints_run_in_the_background_and_are_recorded() {
        let root = tempfile::tempdir().unwrap();
        let dir = data_dir(root.path());
        let now = 1_764_633_600_000;
        let recorded = |ledger: &Ledger| -> Option<BTreeMap<DatabaseId, DatiPosition>> {
            meta_decode(ledger.store(), META_CHECKPOINT).unwrap()
        };
        let (mut ledger, _) = Ledger::open(&dir, InstanceId([1; 16])).unwrap();
        assert!(ledger.background.is_some(), "the sled store is flushed off the loop thread");
        ledger.submit_batch_units((0..100).map(sale).collect(), now).unwrap();
        assert_eq!(recorded(&ledger), None);
        let positions = ledger.dati.as_ref().unwrap().positions();
        ledger.checkpoint().unwrap();
        assert!(ledger.background.as_ref().unwrap().in_flight);
        // A second round while the first runs starts nothing and does not fail.
        ledger.checkpoint().unwrap();
        ledger.background.as_mut().unwrap().collect(true).unwrap();
        assert_eq!(recorded(&ledger), Some(positions));

        ledger.submit_batch_units((100..150).map(sale).collect(), now).unwrap();
        let positions = ledger.dati.as_ref().unwrap().positions();
        ledger.checkpoint().unwrap();
        ledger.close().unwrap();
        let (ledger, report) = Ledger::open(&dir, InstanceId([2; 16])).unwrap();
        assert_eq!(report.replayed, 0);
        assert_eq!(recorded(&ledger), Some(positions));
        assert_eq!(ledger.store().units_total(), 150);
    }
}

#[cfg(test)]
mod own_record_tests {
    use super::*;
    use crate::store::MemoryStore;

    fn own() -> DatabaseId {
        DatabaseId::from_bytes(b"OWNDB0000000001").unwrap()
    }

    /// An own unit received from elsewhere far beyond our head (a broken peer) is not taken: it
    /// would move the next own seq towards the end of the seq space for good.
    #[test]
    fn an_implausible_own_unit_from_elsewhere_is_not_taken() {
        let mut ledger = Ledger::without_logs(MemoryStore::new(), own(), 1 << 20).unwrap();
        ledger.submit_batch(vec![tests::sale(1)], 1_000).unwrap();
        let unit = |seq| TransferUnit { seq, ..ledger.store().get(&own(), 1).unwrap().unwrap() };
        let (far, near) = (unit(2 + OWN_PLAUSIBLE_AHEAD), unit(5));
        assert!(ledger.accept_batch(vec![far], 2_000).unwrap().is_empty());
        assert_eq!(ledger.own_head(), 1);
        assert_eq!(ledger.accept_batch(vec![near], 2_000).unwrap().len(), 1);
        assert_eq!(ledger.own_head(), 5);
    }

    /// A copy of a held unit is a duplicate; another unit under a held seq is a rival, kept
    /// with the unit held, and not taken.
    #[test]
    fn another_unit_under_a_held_seq_is_a_rival() {
        let mut ledger = Ledger::without_logs(MemoryStore::new(), own(), 1 << 20).unwrap();
        ledger.submit_batch(vec![tests::sale(1)], 1_000).unwrap();
        let held = ledger.store().get(&own(), 1).unwrap().unwrap();
        assert!(ledger.accept_batch(vec![held.clone()], 2_000).unwrap().is_empty());
        assert_eq!(ledger.take_rivals(), []);
        let other = TransferUnit { physkey: "P".repeat(32).parse().unwrap(), ..held.clone() };
        assert!(ledger.accept_batch(vec![other.clone()], 2_000).unwrap().is_empty());
        assert_eq!(ledger.take_rivals(), [Rival { held: held.clone(), received: other }]);
        assert_eq!(ledger.take_rivals(), [], "taken once");
        assert_eq!(ledger.store().get(&own(), 1).unwrap(), Some(held));
    }

    /// Offered `(seq, physkey)` pairs: what is held there under another physkey comes back;
    /// seqs not held and the same physkeys do not.
    #[test]
    fn an_offer_is_answered_with_what_differs() {
        let mut ledger = Ledger::without_logs(MemoryStore::new(), own(), 1 << 20).unwrap();
        ledger.submit_batch(vec![tests::sale(1), tests::sale(2)], 1_000).unwrap();
        let held = |seq| ledger.store().get(&own(), seq).unwrap().unwrap();
        let (one, two) = (held(1), held(2));
        let other: Physkey = "P".repeat(32).parse().unwrap();
        let offered = [(1, one.physkey), (2, other), (3, other)];
        assert_eq!(ledger.differing(&own(), &offered).unwrap(), (vec![two], Some(3)));
        let stranger = DatabaseId::from_bytes(b"PEER00000000001").unwrap();
        assert_eq!(ledger.differing(&stranger, &offered).unwrap(), (vec![], Some(3)));
    }

    /// The record of what peers confirmed belongs to one dbid: a copied directory (a new dbid,
    /// the same store) does not inherit the skip or the confirmations.
    #[test]
    fn the_own_record_is_not_taken_over_by_a_new_dbid() {
        let mut ledger = Ledger::without_logs(MemoryStore::new(), own(), 1 << 20).unwrap();
        ledger.submit_batch(vec![tests::sale(1)], 1_000).unwrap();
        let peer = DatabaseId::from_bytes(b"PEER00000000001").unwrap();
        ledger.confirm_own(peer, 9);
        assert_eq!(ledger.confirmed_own(&peer), 1, "never beyond what the store holds");
        ledger.skip_own_past(100, true).unwrap();
        let store = ledger.store().clone();
        let again = Ledger::without_logs(store.clone(), own(), 1 << 20).unwrap();
        assert_eq!((again.own_head(), again.confirmed_own(&peer)), (100, 1));
        let copy = DatabaseId::from_bytes(b"COPY00000000001").unwrap();
        let copied = Ledger::without_logs(store, copy, 1 << 20).unwrap();
        assert_eq!((copied.own_head(), copied.confirmed_own(&peer)), (0, 0));
    }
}
