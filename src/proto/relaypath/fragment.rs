//! Splitting a message (one core frame's plaintext) into fragments, and putting it back
//! together (design §2.3).
//!
//! Fragments are at most [`MAX_FRAGMENT`] bytes; a message of [`SPLIT_FROM`] bytes or more is
//! split into at least two, so no payload holds a whole message of any size. Pieces are of
//! equal length but the last (as equal as the count allows).
//!
//! This module does not number, acknowledge or resend messages (see `session`).

/// Largest fragment.
pub const MAX_FRAGMENT: usize = 1_000;

/// Messages of this length or more are split into at least two fragments.
pub const SPLIT_FROM: usize = 128;

/// Most fragments of one message: a message of up to 4 MiB (far over `batch_bytes`).
pub const MAX_COUNT: u16 = 4_200;

/// Splits `message` into fragments (one empty fragment for an empty message). `None` if it
/// needs more than [`MAX_COUNT`].
pub fn split(message: &[u8]) -> Option<Vec<Vec<u8>>> {
    let min = if message.len() >= SPLIT_FROM { 2 } else { 1 };
    let count = message.len().div_ceil(MAX_FRAGMENT).max(min);
    if count > usize::from(MAX_COUNT) {
        return None;
    }
    let size = message.len().div_ceil(count).max(1);
    let mut out: Vec<Vec<u8>> = message.chunks(size).map(<[u8]>::to_vec).collect();
    if out.is_empty() {
        out.push(Vec::new());
    }
    Some(out)
}

/// Why a fragment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FragmentError {
    /// Index not below count, a count of 0 or over [`MAX_COUNT`], a count that differs from
    /// earlier fragments of the message, or a piece over [`MAX_FRAGMENT`].
    #[error("inconsistent fragment")]
    Inconsistent,
}

/// Checks piece `index` of `count` (`len` bytes) before anything is allocated for it: the
/// index below the count, the count in `1..=MAX_COUNT`, the piece at most [`MAX_FRAGMENT`].
pub fn check(index: u16, count: u16, len: usize) -> Result<(), FragmentError> {
    if count == 0 || count > MAX_COUNT || index >= count || len > MAX_FRAGMENT {
        return Err(FragmentError::Inconsistent);
    }
    Ok(())
}

/// The pieces of one message received so far.
#[derive(Debug, Clone)]
pub struct Reassembly {
    pieces: Vec<Option<Vec<u8>>>,
    held: usize,
    bytes: usize,
}

impl Reassembly {
    /// Bytes of the piece table of a message of `count` fragments, allocated by
    /// [`Reassembly::new`] before any piece arrives (part of [`Reassembly::memory`]).
    pub fn table_bytes(count: u16) -> usize {
        usize::from(count).saturating_mul(std::mem::size_of::<Option<Vec<u8>>>())
    }

    /// An empty reassembly for a message of `count` fragments.
    pub fn new(count: u16) -> Result<Reassembly, FragmentError> {
        if count == 0 || count > MAX_COUNT {
            return Err(FragmentError::Inconsistent);
        }
        Ok(Reassembly { pieces: vec![None; usize::from(count)], held: 0, bytes: 0 })
    }

    /// Adds piece `index` of `count`; returns the bytes it added to memory (0 for a
    /// duplicate).
    pub fn insert(&mut self, index: u16, count: u16, bytes: &[u8]) -> Result<usize, FragmentError> {
        check(index, count, bytes.len())?;
        if usize::from(count) != self.pieces.len() {
            return Err(FragmentError::Inconsistent);
        }
        let slot = self.pieces.get_mut(usize::from(index)).ok_or(FragmentError::Inconsistent)?;
        if slot.is_some() {
            return Ok(0);
        }
        *slot = Some(bytes.to_vec());
        self.held += 1;
        self.bytes += bytes.len();
        Ok(bytes.len())
    }

    /// Whether every piece is here.
    pub fn is_complete(&self) -> bool {
        self.held == self.pieces.len()
    }

    /// Bytes held: the pieces and the piece table.
    pub fn memory(&self) -> usize {
        self.bytes.saturating_add(self.pieces.len().saturating_mul(Self::table_bytes(1)))
    }

    /// The held pieces as inclusive index ranges, ascending.
    pub fn held_ranges(&self) -> Vec<(u16, u16)> {
        let mut out: Vec<(u16, u16)> = Vec::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            let Ok(i) = u16::try_from(i) else { break };
            if piece.is_none() {
                continue;
            }
            match out.last_mut() {
                Some((_, end)) if *end + 1 == i => *end = i,
                _ => out.push((i, i)),
            }
        }
        out
    }

    /// The message, once complete.
    pub fn into_message(self) -> Option<Vec<u8>> {
        if !self.is_complete() {
            return None;
        }
        Some(self.pieces.into_iter().flatten().flatten().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_and_counts() {
        let counts = |n: usize| split(&vec![1u8; n]).unwrap().len();
        assert_eq!(counts(0), 1);
        assert_eq!(counts(127), 1);
        assert_eq!(counts(128), 2, "from 128 bytes no payload holds a whole message");
        assert_eq!(counts(2_000), 2);
        assert_eq!(counts(2_001), 3);
        assert_eq!(counts(256 << 10), 263, "a full batch");
        assert!(split(&vec![0u8; 5 << 20]).is_none());
        assert!(split(&vec![0u8; 3_333]).unwrap().iter().all(|f| f.len() <= MAX_FRAGMENT));
    }

    #[test]
    fn check_refuses_before_anything_is_allocated() {
        assert_eq!(check(0, 1, 0), Ok(()));
        assert_eq!(check(MAX_COUNT - 1, MAX_COUNT, MAX_FRAGMENT), Ok(()));
        for (index, count, len) in
            [(3, 3, 1), (0, 0, 1), (0, MAX_COUNT + 1, 1), (u16::MAX, u16::MAX, 1), (0, 1, 1_001)]
        {
            assert_eq!(check(index, count, len), Err(FragmentError::Inconsistent));
        }
        let r = Reassembly::new(MAX_COUNT).unwrap();
        assert_eq!(r.memory(), Reassembly::table_bytes(MAX_COUNT), "the table is counted");
        assert!(Reassembly::table_bytes(MAX_COUNT) > 4_200 * 8);
    }

    #[test]
    fn inconsistent_fragments_are_refused() {
        assert!(Reassembly::new(0).is_err());
        assert!(Reassembly::new(MAX_COUNT + 1).is_err());
        let mut r = Reassembly::new(3).unwrap();
        assert_eq!(r.insert(3, 3, b"x"), Err(FragmentError::Inconsistent));
        assert_eq!(r.insert(0, 2, b"x"), Err(FragmentError::Inconsistent));
        assert_eq!(r.insert(0, 3, &[0; MAX_FRAGMENT + 1]), Err(FragmentError::Inconsistent));
        assert_eq!(r.insert(2, 3, b"c"), Ok(1));
        assert_eq!(r.insert(2, 3, b"c"), Ok(0), "a duplicate adds nothing");
        assert_eq!(r.insert(0, 3, b"a"), Ok(1));
        assert_eq!(r.held_ranges(), vec![(0, 0), (2, 2)]);
        assert!(!r.is_complete());
        assert!(r.clone().into_message().is_none());
        assert_eq!(r.insert(1, 3, b"b"), Ok(1));
        assert_eq!(r.held_ranges(), vec![(0, 2)]);
        assert_eq!(r.into_message().unwrap(), b"abc");
    }

    proptest! {
        #[test]
        fn split_then_reassemble_in_any_order(
            message in proptest::collection::vec(any::<u8>(), 0..5_000),
            seed in any::<u64>(),
        ) {
            let pieces = split(&message).unwrap();
            prop_assert!(pieces.iter().all(|p| p.len() <= MAX_FRAGMENT));
            prop_assert!(message.len() < SPLIT_FROM || pieces.len() >= 2);
            let count = u16::try_from(pieces.len()).unwrap();
            let mut order: Vec<usize> = (0..pieces.len()).collect();
            // A cheap deterministic shuffle.
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                order.swap(i, usize::try_from(s % (i as u64 + 1)).unwrap());
            }
            let mut r = Reassembly::new(count).unwrap();
            for i in order {
                r.insert(u16::try_from(i).unwrap(), count, &pieces[i]).unwrap();
            }
            prop_assert_eq!(r.into_message().unwrap(), message);
        }

        #[test]
        fn reassembly_never_panics(count in 0u16..10, ops in proptest::collection::vec(
            (any::<u16>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 0..1_100)), 0..20)) {
            if let Ok(mut r) = Reassembly::new(count) {
                for (index, count, bytes) in ops {
                    let _ = r.insert(index % 12, count % 12, &bytes);
                }
                let _ = r.held_ranges();
                let _ = r.into_message();
            }
        }
    }
}
