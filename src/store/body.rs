//! Where a unit's bytes live when the store keeps only its index entry: [`BodyRef`] names a
//! record in one of the origin's DATI daily log files, and a [`BodySource`] (implemented by the
//! ledger over those files) loads the unit back.
//!
//! This is key-value separation (WiscKey, Bitcask): every unit is appended and synced to a daily
//! log before it is inserted into the store, so the logs already are a durable value log and the
//! store need not hold a second copy. The store treats a [`BodyRef`] as opaque: it stores it,
//! hands it back to the source, and checks that what comes back is the unit asked for. This
//! module does not read files and does not know the DATI format.

use serde::{Deserialize, Serialize};

use crate::id::DatabaseId;
use crate::unit::TransferUnit;

/// Where a unit's bytes live outside the store: a record in one of its origin's daily log
/// files (file number NNNN, byte offset, record length). Opaque to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BodyRef {
    /// The daily log file number (NNNN) of the unit's origin.
    pub file: u32,
    /// Byte offset of the record in that file.
    pub offset: u64,
    /// Length of the record in bytes.
    pub len: u32,
}

impl BodyRef {
    /// Length of [`BodyRef::to_bytes`].
    pub(crate) const LEN: usize = 4 + 8 + 4;

    /// file (u32 BE), offset (u64 BE), len (u32 BE): the form kept in store runs.
    pub(crate) fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..4].copy_from_slice(&self.file.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The inverse of [`BodyRef::to_bytes`]; `None` unless `bytes` is exactly [`BodyRef::LEN`]
    /// long.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::LEN {
            return None;
        }
        Some(BodyRef {
            file: u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?),
            offset: u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?),
            len: u32::from_be_bytes(bytes.get(12..)?.try_into().ok()?),
        })
    }
}

/// Why a [`BodySource`] could not load a unit: whatever the source's own error is (IO, a
/// damaged or missing log file). The store wraps it in [`super::StoreError::Body`] with the
/// unit's name.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Loads a unit from where a [`BodyRef`] says it is (implemented by the ledger over the daily
/// logs).
///
/// Contract: return the unit stored at `at`, decoded, or an error. The source need not check
/// that it is unit `seq` of `origin` (the store does, and reports a mismatch as corruption);
/// `origin` and `seq` are given so that the source can find the origin's files and name the
/// unit in its errors. Called from any thread that reads the store, possibly concurrently.
pub trait BodySource: Send + Sync {
    /// The unit at `at`, which the store's index says is `seq` of `origin`.
    fn load(&self, origin: &DatabaseId, seq: u64, at: BodyRef) -> Result<TransferUnit, BodyError>;
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn known_bytes() {
        let at = BodyRef { file: 7, offset: 0x0102_0304_0506, len: 300 };
        let bytes = at.to_bytes();
        assert_eq!(hex::encode(bytes), "00000007_0000010203040506_0000012c".replace('_', ""));
        assert_eq!(BodyRef::from_bytes(&bytes), Some(at));
        assert_eq!(BodyRef::from_bytes(&bytes[1..]), None);
        assert_eq!(BodyRef::from_bytes(&[0; 17]), None);
    }

    proptest! {
        #[test]
        fn round_trip(file: u32, offset: u64, len: u32) {
            let at = BodyRef { file, offset, len };
            prop_assert_eq!(at.to_bytes().len(), BodyRef::LEN);
            prop_assert_eq!(BodyRef::from_bytes(&at.to_bytes()), Some(at));
        }
    }
}
