//! The integrity chain: a running hash over every stored message.
//!
//! `chain(n) = H(chain(n-1) || seq || user || device || id || H(body))`, truncated
//! to 16 bytes, with `chain(0)` all zeros. Lengths prefix the strings so that no
//! two different messages hash the same input. A client that holds `chain(w)` for
//! its watermark `w` can check every later message and detect a hole, a reorder,
//! a duplicate or a server whose history diverged from what it saw before.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::frame::Seq;

/// A chain value, shown on the wire as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChainHash(pub [u8; 16]);

impl ChainHash {
    /// The value before the first message.
    pub const GENESIS: ChainHash = ChainHash([0; 16]);

    /// The chain value after appending one message.
    pub fn next(&self, seq: Seq, user: &str, device: &str, id: &str, body: &str) -> ChainHash {
        let body_hash = Sha256::digest(body.as_bytes());
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(seq.to_be_bytes());
        for part in [user, device, id] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.update(body_hash);
        let full = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        ChainHash(out)
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<ChainHash> {
        let bytes = s.as_bytes();
        if bytes.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(ChainHash(out))
    }
}

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainHash({})", self.to_hex())
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ChainHash::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("chain must be 32 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        let c = ChainHash::GENESIS.next(1, "ann", "d1", "m1", "hello");
        assert_eq!(ChainHash::from_hex(&c.to_hex()), Some(c));
        assert_eq!(ChainHash::from_hex("zz"), None);
        assert_eq!(ChainHash::from_hex(&"g".repeat(32)), None);
        assert_eq!(ChainHash::from_hex("é".repeat(16).as_str()), None);
    }

    #[test]
    fn every_field_changes_the_chain() {
        let base = ChainHash::GENESIS.next(1, "ann", "d1", "m1", "hello");
        assert_ne!(base, ChainHash::GENESIS.next(2, "ann", "d1", "m1", "hello"));
        assert_ne!(base, ChainHash::GENESIS.next(1, "an", "nd1", "m1", "hello"));
        assert_ne!(base, ChainHash::GENESIS.next(1, "ann", "d1", "m2", "hello"));
        assert_ne!(
            base,
            ChainHash::GENESIS.next(1, "ann", "d1", "m1", "hello!")
        );
    }
}
