//! Durable acknowledgements off the node's thread.
//!
//! An application that must know its acknowledgement is durable (`Input::AcknowledgeBatch`)
//! waits for a store flush: sled's flush plus an fsync of its file, one or two device syncs.
//! Run on the node's loop, that flush held up every unit arriving meanwhile, and an application
//! acknowledging often (each unit, say) could keep the loop in flushes. Here the cursor moves
//! are written on the loop (into sled, in memory) and the flush runs on a thread of its own;
//! batches that come while one flush runs share the next one. Answers keep the order the
//! batches came in: the control socket answers its clients by that order.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::Arc;

use crate::id::DatabaseId;
use crate::store::Checkpointer;

/// One acknowledgement batch: per entry, every unit of `origin` up to `seq` is applied.
pub type AckBatch = Vec<(DatabaseId, u64)>;

/// An answered batch: its entries, and whether the cursor they moved is durable (else why not).
pub type AckOutcome = (AckBatch, Result<(), String>);

/// A batch waiting for its flush (or, already failed, for the batches before it).
struct Waiting {
    /// Durable once the flush thread has finished this ticket.
    ticket: u64,
    acks: AckBatch,
    /// Failed before any flush (the cursor write, or the thread gone).
    failed: Option<String>,
}

/// The flush thread and the batches waiting on it.
pub(super) struct AckFlushes {
    jobs: Option<mpsc::Sender<u64>>,
    /// Per flush: the last ticket it covers, and its result.
    done: mpsc::Receiver<(u64, Result<(), String>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    issued: u64,
    flushed: u64,
    waiting: VecDeque<Waiting>,
}

const STOPPED: &str = "the acknowledgement flush thread stopped; restart meshnode";

impl AckFlushes {
    /// Starts the thread; `notify` is called (from it) after each flush, and when it ends.
    pub(super) fn start(
        notify: Arc<dyn Fn() + Send + Sync>,
        store: Box<dyn Checkpointer>,
    ) -> std::io::Result<AckFlushes> {
        let (jobs, rx) = mpsc::channel::<u64>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("ack-flush".into()).spawn(move || {
            // Also when the flush panics: the loop then finds the results channel closed
            // (`tx` is dropped before the guard) and fails what waits.
            let notify = super::NotifyOnExit(Box::new(move || notify()));
            let tx = tx;
            while let Ok(mut upto) = rx.recv() {
                // Every batch queued by now is written: one flush makes them all durable.
                while let Ok(ticket) = rx.try_recv() {
                    upto = ticket;
                }
                let result = store.flush().map_err(|e| e.to_string());
                if tx.send((upto, result)).is_err() {
                    return;
                }
                (notify.0)();
            }
        })?;
        Ok(AckFlushes {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            issued: 0,
            flushed: 0,
            waiting: VecDeque::new(),
        })
    }

    /// Queues a batch whose cursor moves are written: it is answered after the next flush.
    pub(super) fn flush(&mut self, acks: AckBatch) {
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(self.issued + 1).is_ok());
        if !sent {
            self.jobs = None;
            self.refuse(acks, STOPPED.to_string());
            return;
        }
        self.issued += 1;
        self.waiting.push_back(Waiting { ticket: self.issued, acks, failed: None });
    }

    /// Queues a batch that failed before any flush: answered in its turn, after the batches
    /// before it.
    pub(super) fn refuse(&mut self, acks: AckBatch, reason: String) {
        self.waiting.push_back(Waiting { ticket: self.issued, acks, failed: Some(reason) });
    }

    /// Batches waiting for a flush.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The batches answered by the flushes ended so far, in the order they came.
    pub(super) fn take(&mut self) -> Vec<AckOutcome> {
        let mut answered = Vec::new();
        loop {
            let (upto, result) = match self.done.try_recv() {
                Ok(done) => done,
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    // Only a panic ends the thread while jobs are queued: nothing waiting is
                    // known durable.
                    self.jobs = None;
                    (self.issued, Err(STOPPED.to_string()))
                }
            };
            let stopped = self.jobs.is_none();
            while self.waiting.front().is_some_and(|w| w.ticket <= upto) {
                let Some(w) = self.waiting.pop_front() else { break };
                let outcome = match w.failed {
                    Some(reason) => Err(reason),
                    None => result.clone(),
                };
                answered.push((w.acks, outcome));
            }
            self.flushed = self.flushed.max(upto);
            if stopped {
                break;
            }
        }
        // Batches that failed at once, behind nothing unflushed.
        while self.waiting.front().is_some_and(|w| w.ticket <= self.flushed) {
            let Some(w) = self.waiting.pop_front() else { break };
            answered.push((w.acks, Err(w.failed.unwrap_or_else(|| STOPPED.to_string()))));
        }
        answered
    }
}

impl Drop for AckFlushes {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the flush it is running.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
