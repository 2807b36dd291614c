//! 20-byte values as WebTorrent sends them: a JSON string of 20 characters,
//! each one byte (U+0000..=U+00FF, what JavaScript calls a "binary string").

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// 20 bytes carried as a binary string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Bin20(pub [u8; 20]);

/// Writes `bytes` as the UTF-8 text of their code points into `buf`
/// (at most two bytes each) and returns it: no allocation.
pub(crate) fn encode<'b>(bytes: &[u8; 20], buf: &'b mut [u8; 40]) -> &'b str {
    let mut len = 0;
    for &b in bytes {
        if b < 0x80 {
            buf[len] = b;
            len += 1;
        } else {
            buf[len] = 0xC0 | (b >> 6);
            buf[len + 1] = 0x80 | (b & 0x3F);
            len += 2;
        }
    }
    // Every byte written above is part of a valid one- or two-byte sequence.
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// Why a string is not a binary string of 20 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A character above U+00FF.
    NotByte,
    /// Not 20 characters.
    Length,
}

pub(crate) fn decode(s: &str) -> Result<[u8; 20], DecodeError> {
    let mut out = [0u8; 20];
    let mut n = 0;
    for c in s.chars() {
        let b = u8::try_from(u32::from(c)).map_err(|_| DecodeError::NotByte)?;
        *out.get_mut(n).ok_or(DecodeError::Length)? = b;
        n += 1;
    }
    if n != 20 {
        return Err(DecodeError::Length);
    }
    Ok(out)
}

impl Serialize for Bin20 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 40];
        serializer.serialize_str(encode(&self.0, &mut buf))
    }
}

impl<'de> Deserialize<'de> for Bin20 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Bin20;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string of 20 characters, each U+0000 to U+00FF")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Bin20, E> {
                match decode(s) {
                    Ok(bytes) => Ok(Bin20(bytes)),
                    Err(DecodeError::NotByte) => {
                        Err(E::custom("binary string with a character above U+00FF"))
                    }
                    Err(DecodeError::Length) => Err(E::custom("binary string is not 20 bytes")),
                }
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for start in (0u8..=255).step_by(20) {
            let mut bytes = [0u8; 20];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = start.wrapping_add(i as u8);
            }
            let mut buf = [0u8; 40];
            let text = encode(&bytes, &mut buf);
            assert_eq!(text.chars().count(), 20);
            assert_eq!(decode(text), Ok(bytes));
            let json = serde_json::to_string(&Bin20(bytes)).expect("serialize");
            let back: Bin20 = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back.0, bytes);
        }
    }

    #[test]
    fn wrong_lengths_and_wide_chars_are_refused() {
        assert_eq!(decode(&"a".repeat(19)), Err(DecodeError::Length));
        assert_eq!(decode(&"a".repeat(21)), Err(DecodeError::Length));
        assert_eq!(
            decode(&format!("{}Ā", "a".repeat(19))),
            Err(DecodeError::NotByte)
        );
        assert!(serde_json::from_str::<Bin20>("\"aaaaaaaaaaaaaaaaaaa\\u0100\"").is_err());
        let escaped: Bin20 =
            serde_json::from_str("\"\\u00ff\\u0001aaaaaaaaaaaaaaaaaa\"").expect("escapes");
        assert_eq!(escaped.0[..2], [0xff, 0x01]);
    }
}
