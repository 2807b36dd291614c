//! The 20-byte identities that travel on every protocol's wire.

use std::fmt;

/// SHA-1 info hash of a torrent (BitTorrent v1), or a truncated v2 hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

/// A peer's self-chosen 20-byte id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PeerId(pub [u8; 20]);

/// A string that is not 40 hexadecimal characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expected 40 hexadecimal characters")]
pub struct InvalidHex;

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8; 20]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex(s: &str) -> Result<[u8; 20], InvalidHex> {
    let s = s.as_bytes();
    if s.len() != 40 {
        return Err(InvalidHex);
    }
    let mut out = [0u8; 20];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or(InvalidHex)?;
        let lo = (pair[1] as char).to_digit(16).ok_or(InvalidHex)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Ok(out)
}

impl InfoHash {
    /// Parses 40 hexadecimal characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, InvalidHex> {
        parse_hex(s).map(Self)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerId(")?;
        write_hex(f, &self.0)?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = InfoHash([0xab; 20]);
        assert_eq!(InfoHash::from_hex(&h.to_string()), Ok(h));
        assert_eq!(
            InfoHash::from_hex("ABABABABABABABABABABABABABABABABABABABAB"),
            Ok(h)
        );
    }

    #[test]
    fn bad_hex() {
        assert_eq!(InfoHash::from_hex("ab"), Err(InvalidHex));
        assert_eq!(InfoHash::from_hex(&"zz".repeat(20)), Err(InvalidHex));
        assert_eq!(InfoHash::from_hex(&"é".repeat(20)), Err(InvalidHex));
    }
}
