//! Replay protection: each sender's nonce counter must be new.
//!
//! A sliding window per sender (like IPsec/WireGuard): counters within 1024 of the highest seen
//! are checked against a bitmap, older ones are refused. Check only after authentication
//! succeeded, so forgeries cannot move a window. The sender table is bounded: when full, the
//! sender not heard from longest is forgotten (its old packets could then be replayed once,
//! but they are duplicates the store ignores anyway).

use std::collections::BTreeMap;

use super::CryptoError;
use crate::id::InstanceId;

const WINDOW_BITS: u64 = 1024;
const WORDS: usize = (WINDOW_BITS / 64) as usize;

/// The replay window of one sender.
#[derive(Debug, Clone, Default)]
pub struct ReplayWindow {
    highest: u64,
    bits: [u64; WORDS],
}

impl ReplayWindow {
    /// Accepts `counter` if it was not seen and is not too old, and records it.
    pub fn check_and_record(&mut self, counter: u64) -> Result<(), CryptoError> {
        if counter == 0 {
            return Err(CryptoError::Replay { counter });
        }
        if counter > self.highest {
            let shift = counter - self.highest;
            if shift >= WINDOW_BITS {
                self.bits = [0; WORDS];
            } else {
                for c in (self.highest + 1)..counter {
                    self.clear(c);
                }
            }
            self.highest = counter;
            self.set(counter);
            return Ok(());
        }
        if self.highest - counter >= WINDOW_BITS {
            return Err(CryptoError::Replay { counter });
        }
        if self.is_set(counter) {
            return Err(CryptoError::Replay { counter });
        }
        self.set(counter);
        Ok(())
    }

    fn slot(counter: u64) -> (usize, u64) {
        let bit = counter % WINDOW_BITS;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn set(&mut self, counter: u64) {
        let (w, m) = Self::slot(counter);
        self.bits[w] |= m;
    }

    fn clear(&mut self, counter: u64) {
        let (w, m) = Self::slot(counter);
        self.bits[w] &= !m;
    }

    fn is_set(&self, counter: u64) -> bool {
        let (w, m) = Self::slot(counter);
        self.bits[w] & m != 0
    }
}

/// Replay windows for many senders, bounded in memory.
#[derive(Debug)]
pub struct ReplayGuard {
    senders: BTreeMap<InstanceId, (u64, ReplayWindow)>,
    capacity: usize,
    tick: u64,
}

impl ReplayGuard {
    /// Tracks at most `capacity` senders (at least 1).
    pub fn new(capacity: usize) -> Self {
        ReplayGuard { senders: BTreeMap::new(), capacity: capacity.max(1), tick: 0 }
    }

    /// Accepts a message of `sender` with nonce `counter` once.
    pub fn check_and_record(
        &mut self,
        sender: InstanceId,
        counter: u64,
    ) -> Result<(), CryptoError> {
        self.tick += 1;
        if !self.senders.contains_key(&sender) && self.senders.len() >= self.capacity {
            // Forget the least recently heard sender (deterministic: BTreeMap order breaks ties).
            if let Some(oldest) = self.senders.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k)
            {
                self.senders.remove(&oldest);
            }
        }
        let tick = self.tick;
        let entry = self.senders.entry(sender).or_default();
        entry.1.check_and_record(counter)?;
        entry.0 = tick;
        Ok(())
    }

    /// Number of senders tracked.
    pub fn len(&self) -> usize {
        self.senders.len()
    }

    /// Whether no sender is tracked.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn window_semantics() {
        let mut w = ReplayWindow::default();
        assert!(w.check_and_record(1).is_ok());
        assert!(w.check_and_record(1).is_err());
        assert!(w.check_and_record(3).is_ok());
        assert!(w.check_and_record(2).is_ok());
        assert!(w.check_and_record(2).is_err());
        assert!(w.check_and_record(5000).is_ok());
        assert!(w.check_and_record(3).is_err(), "too old");
        assert!(w.check_and_record(4999).is_ok());
        assert!(w.check_and_record(0).is_err());
    }

    #[test]
    fn guard_is_bounded_and_per_sender() {
        let mut g = ReplayGuard::new(2);
        let a = InstanceId([1; 16]);
        let b = InstanceId([2; 16]);
        let c = InstanceId([3; 16]);
        g.check_and_record(a, 1).unwrap();
        g.check_and_record(b, 1).unwrap();
        assert!(g.check_and_record(a, 1).is_err());
        g.check_and_record(c, 1).unwrap();
        assert_eq!(g.len(), 2);
    }

    proptest! {
        /// Every counter is accepted at most once, whatever the order.
        #[test]
        fn each_counter_at_most_once(counters in proptest::collection::vec(1u64..3000, 0..500)) {
            let mut w = ReplayWindow::default();
            let mut accepted = std::collections::HashSet::new();
            for c in counters {
                if w.check_and_record(c).is_ok() {
                    prop_assert!(accepted.insert(c), "counter {} accepted twice", c);
                }
            }
        }
    }
}
