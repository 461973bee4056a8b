//! Crash-atomic insert batches for the sled store, without `sled::Batch`.
//!
//! sled 0.34 makes a `Batch` atomic with a batch manifest (`pin_log`): it rolls its log buffer
//! twice while reserving the manifest, so each `apply_batch` hands two log buffers to sled's IO
//! threads, each a `pwrite` and a `sync_file_range` wait. With the ledger indexing one group
//! commit per received datagram or submit, that was two device writes per unit per node at a
//! steady 1,000 units/s, and on a virtual disk those writes queued the daily logs'
//! `fdatasync`s behind them: the propagation p99 of `scripts/bench lan` went from ~2.5 ms to
//! ~14 ms with them (docs/PERFORMANCE.md, session 9).
//!
//! So the store makes a batch atomic itself, as a tiny undo log:
//!
//! 1. the **intent** (key `j`) is written first: every key the batch will write, with the value
//!    it had before (`None` for a key the batch creates);
//! 2. the batch's writes follow, as single-key inserts;
//! 3. the intent is removed.
//!
//! This relies on what sled does guarantee: single-key writes are atomic, and recovery after a
//! crash stops at the first log message that did not reach the disk, so it keeps a *prefix* of
//! the writes in the order they were made. An intent found at open therefore names a batch
//! that may be partly there, and [`rollback`] puts back every value it lists. A removed intent
//! means the whole batch is there. Either way, a batch is all there or not at all, which is the
//! [`super::Store`] contract; the ledger replays what is missing from its logs.
//!
//! A batch whose intent would pass [`MAX_INTENT_BYTES`] (thousands of application physkeys,
//! as in a replay) goes through `sled::Batch` instead: its two buffer rolls cost little spread
//! over that many units, and sled writes a value over 128 KiB as a separate blob file, which
//! sled itself never syncs (the store's flush does, [`super::SledFiles`], but a power cut
//! between flushes could keep the log record of a large intent and lose its blob while part
//! of its batch survives).

use serde::{Deserialize, Serialize};

use super::{Corruption, StoreError, StoreKey};

/// The key of the intent record. No other key of the layout starts with `j`.
pub(super) const INTENT_KEY: &[u8] = b"j";

/// The largest intent written; a larger batch uses `sled::Batch` (see the module doc).
pub(super) const MAX_INTENT_BYTES: usize = 64 << 10;

/// The key prefixes a batch writes (runs, physkey index, meta, version vector); an intent
/// naming another key is corrupt.
const BATCH_PREFIXES: &[u8] = b"upmv";

/// What one batch writes, with what each key held before.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Intent {
    /// `(key, previous value)`, in the order the batch writes them.
    pub before: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Intent {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard into Vec")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt =
            || StoreError::Corrupt { key: StoreKey(INTENT_KEY.to_vec()), why: Corruption::Intent };
        let (intent, rest) = postcard::take_from_bytes::<Intent>(bytes).map_err(|_| corrupt())?;
        let keys_ok = intent
            .before
            .iter()
            .all(|(key, _)| key.first().is_some_and(|p| BATCH_PREFIXES.contains(p)));
        if !rest.is_empty() || !keys_ok {
            return Err(corrupt());
        }
        Ok(intent)
    }
}

/// One write of a batch: a key and its new value (`None` removes it).
pub(super) type Write = (Vec<u8>, Option<Vec<u8>>);

/// Applies `writes` to `db` so that a crash keeps all of them or none (see the module doc).
/// `before` gives the value each key holds now; it is called once per write, before any write.
///
/// `interrupt` is a failpoint for tests: stop after that many writes (up to all of them, the
/// intent still there) and return `StoreError::Interrupted`, as a crash there would. Other
/// builds pass `None` and compile the failpoint out.
pub(super) fn apply(
    db: &sled::Db,
    writes: Vec<Write>,
    mut before: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, StoreError>,
    interrupt: Option<usize>,
) -> Result<(), StoreError> {
    let intent = Intent {
        before: writes
            .iter()
            .map(|(key, _)| Ok((key.clone(), before(key)?)))
            .collect::<Result<_, StoreError>>()?,
    };
    let encoded = intent.encode();
    if encoded.len() > MAX_INTENT_BYTES {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        db.apply_batch(batch)?;
        return Ok(());
    }
    db.insert(INTENT_KEY, encoded)?;
    let count = writes.len();
    for (done, (key, value)) in writes.into_iter().enumerate() {
        failpoint(interrupt, done)?;
        match value {
            Some(value) => db.insert(key, value)?,
            None => db.remove(key)?,
        };
    }
    failpoint(interrupt, count)?;
    db.remove(INTENT_KEY)?;
    Ok(())
}

/// The test failpoint of [`apply`]: an error, as a crash would leave, once `done` writes are in.
#[cfg(test)]
fn failpoint(interrupt: Option<usize>, done: usize) -> Result<(), StoreError> {
    match interrupt {
        Some(at) if at == done => Err(StoreError::Interrupted),
        _ => Ok(()),
    }
}

/// Outside tests there is no failpoint.
#[cfg(not(test))]
fn failpoint(_interrupt: Option<usize>, _done: usize) -> Result<(), StoreError> {
    Ok(())
}

/// Undoes the batch an intent left at open names, if any; returns whether there was one. The
/// caller makes the undo durable (a crash before that undoes it again at the next open).
pub(super) fn rollback(db: &sled::Db) -> Result<bool, StoreError> {
    let Some(bytes) = db.get(INTENT_KEY)? else {
        return Ok(false);
    };
    let intent = Intent::decode(&bytes)?;
    // Every previous value was read before the first write, so the order does not matter.
    for (key, value) in intent.before {
        match value {
            Some(value) => db.insert(key, value)?,
            None => db.remove(key)?,
        };
    }
    db.remove(INTENT_KEY)?;
    Ok(true)
}
