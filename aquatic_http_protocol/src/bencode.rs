//! A small, strict bencode decoder (and encoder) for reading tracker
//! responses in tests and clients.
//!
//! The server never decodes bencode; it writes responses directly (see
//! [`AnnounceResponse::write_bencode`](crate::AnnounceResponse::write_bencode)).
//! This module lets tests check those bytes field by field. It accepts only
//! canonical bencode — integers without leading zeros or `-0`, dictionary
//! keys in strictly increasing byte order — so a test that decodes a
//! response also checks that the writer sorted its keys. Decoding never
//! panics, nests at most [`MAX_DEPTH`] lists and dictionaries, and never
//! allocates more than the input's length for a string.
//!
//! ```
//! use aquatic_http_protocol::bencode::{decode, Value};
//!
//! let value = decode(b"d8:intervali1800e5:peers0:e").unwrap();
//! assert_eq!(value.get(b"interval").and_then(Value::as_int), Some(1800));
//! assert_eq!(value.get(b"peers").and_then(Value::as_bytes), Some(&b""[..]));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};

/// How deeply lists and dictionaries may nest before [`decode`] gives up.
pub const MAX_DEPTH: usize = 64;

/// A decoded bencode value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// `i<n>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(Vec<u8>),
    /// `l<values>e`
    List(Vec<Value>),
    /// `d<key><value>…e`, keys in sorted order.
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Bytes(b) => write!(f, "b{:?}", String::from_utf8_lossy(b)),
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => f
                .debug_map()
                .entries(d.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
                .finish(),
        }
    }
}

impl Value {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The list, if this is one.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The value under `key`, if this is a dictionary that has it.
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.as_dict()?.get(key)
    }

    /// Writes the canonical encoding of this value.
    pub fn write_bencode(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Value::Int(n) => write!(w, "i{n}e"),
            Value::Bytes(b) => write_bytes(w, b),
            Value::List(l) => {
                w.write_all(b"l")?;
                for v in l {
                    v.write_bencode(w)?;
                }
                w.write_all(b"e")
            }
            Value::Dict(d) => {
                w.write_all(b"d")?;
                for (k, v) in d {
                    write_bytes(w, k)?;
                    v.write_bencode(w)?;
                }
                w.write_all(b"e")
            }
        }
    }
}

/// Writes a bencode byte string: `<len>:<bytes>`.
pub(crate) fn write_bytes(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    write!(w, "{}:", bytes.len())?;
    w.write_all(bytes)
}

/// Why bytes are not canonical bencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a value.
    #[error("unexpected end of input")]
    UnexpectedEnd,
    /// A byte that cannot start a value, or a bad byte inside a length.
    #[error("unexpected byte at offset {0}")]
    UnexpectedByte(usize),
    /// An integer that is empty, has leading zeros, is `-0` or overflows `i64`.
    #[error("invalid integer at offset {0}")]
    InvalidInteger(usize),
    /// A string length with leading zeros or beyond the input.
    #[error("invalid string length at offset {0}")]
    InvalidLength(usize),
    /// A dictionary key that is not greater than the key before it.
    #[error("dictionary key out of order at offset {0}")]
    UnsortedKey(usize),
    /// Lists and dictionaries nested deeper than [`MAX_DEPTH`].
    #[error("nested too deeply")]
    TooDeep,
    /// Bytes after the first complete value.
    #[error("trailing bytes at offset {0}")]
    TrailingBytes(usize),
}

/// Decodes exactly one value that spans all of `input`.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut decoder = Decoder { input, pos: 0 };
    let value = decoder.value(0)?;
    if decoder.pos != input.len() {
        return Err(DecodeError::TrailingBytes(decoder.pos));
    }
    Ok(value)
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::UnexpectedEnd)
    }

    /// The bytes up to (not including) `end`, moving past `end`.
    fn until(&mut self, end: u8) -> Result<&'a [u8], DecodeError> {
        let input: &'a [u8] = self.input;
        let rest = &input[self.pos..];
        let len = rest
            .iter()
            .position(|&b| b == end)
            .ok_or(DecodeError::UnexpectedEnd)?;
        self.pos += len + 1;
        Ok(&rest[..len])
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        match self.peek()? {
            b'i' => {
                let start = self.pos;
                self.pos += 1;
                let digits = self.until(b'e')?;
                parse_int(digits)
                    .map(Value::Int)
                    .ok_or(DecodeError::InvalidInteger(start))
            }
            b'0'..=b'9' => self.bytes().map(|b| Value::Bytes(b.to_vec())),
            b'l' => {
                let depth = enter(depth)?;
                self.pos += 1;
                let mut list = Vec::new();
                while self.peek()? != b'e' {
                    list.push(self.value(depth)?);
                }
                self.pos += 1;
                Ok(Value::List(list))
            }
            b'd' => {
                let depth = enter(depth)?;
                self.pos += 1;
                let mut dict = BTreeMap::new();
                let mut last: Option<&[u8]> = None;
                while self.peek()? != b'e' {
                    let key_pos = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(DecodeError::UnexpectedByte(key_pos));
                    }
                    let key = self.bytes()?;
                    if last.is_some_and(|last| last >= key) {
                        return Err(DecodeError::UnsortedKey(key_pos));
                    }
                    last = Some(key);
                    let value = self.value(depth)?;
                    dict.insert(key.to_vec(), value);
                }
                self.pos += 1;
                Ok(Value::Dict(dict))
            }
            _ => Err(DecodeError::UnexpectedByte(self.pos)),
        }
    }

    /// A byte string; `self.pos` is at its first length digit.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let input = self.input;
        let digits = self.until(b':')?;
        if digits.len() > 1 && digits[0] == b'0' {
            return Err(DecodeError::InvalidLength(start));
        }
        let mut len: usize = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(DecodeError::UnexpectedByte(start));
            }
            len = len
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(d - b'0')))
                .ok_or(DecodeError::InvalidLength(start))?;
        }
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= input.len())
            .ok_or(DecodeError::InvalidLength(start))?;
        let bytes = &input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }
}

fn enter(depth: usize) -> Result<usize, DecodeError> {
    if depth >= MAX_DEPTH {
        Err(DecodeError::TooDeep)
    } else {
        Ok(depth + 1)
    }
}

/// Canonical integer digits: `0`, or an optional `-` and digits without a
/// leading zero.
fn parse_int(digits: &[u8]) -> Option<i64> {
    let magnitude = digits.strip_prefix(b"-").unwrap_or(digits);
    let canonical = match magnitude {
        [] => false,
        [b'0'] => magnitude.len() == digits.len(),
        [b'0', ..] => false,
        _ => magnitude.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_each_kind() {
        assert_eq!(decode(b"i-42e"), Ok(Value::Int(-42)));
        assert_eq!(decode(b"i0e"), Ok(Value::Int(0)));
        assert_eq!(decode(b"3:abc"), Ok(Value::Bytes(b"abc".to_vec())));
        assert_eq!(decode(b"0:"), Ok(Value::Bytes(Vec::new())));
        assert_eq!(
            decode(b"li1e1:xe"),
            Ok(Value::List(vec![
                Value::Int(1),
                Value::Bytes(b"x".to_vec())
            ]))
        );
        let dict = decode(b"d1:ai1e1:bi2ee").expect("valid");
        assert_eq!(dict.get(b"b"), Some(&Value::Int(2)));
    }

    #[test]
    fn rejects_non_canonical() {
        for (input, err) in [
            (&b""[..], DecodeError::UnexpectedEnd),
            (b"i01e", DecodeError::InvalidInteger(0)),
            (b"i-0e", DecodeError::InvalidInteger(0)),
            (b"ie", DecodeError::InvalidInteger(0)),
            (b"i-e", DecodeError::InvalidInteger(0)),
            (b"i99999999999999999999e", DecodeError::InvalidInteger(0)),
            (b"01:a", DecodeError::InvalidLength(0)),
            (b"5:abc", DecodeError::InvalidLength(0)),
            (b"99999999999999999999999:a", DecodeError::InvalidLength(0)),
            (b"d1:bi1e1:ai2ee", DecodeError::UnsortedKey(7)),
            (b"d1:ai1e1:ai2ee", DecodeError::UnsortedKey(7)),
            (b"di1ei2ee", DecodeError::UnexpectedByte(1)),
            (b"i1ei2e", DecodeError::TrailingBytes(3)),
            (b"x", DecodeError::UnexpectedByte(0)),
            (b"l", DecodeError::UnexpectedEnd),
        ] {
            assert_eq!(
                decode(input),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn depth_limit() {
        let ok = format!("{}{}", "l".repeat(MAX_DEPTH), "e".repeat(MAX_DEPTH));
        assert!(decode(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "l".repeat(MAX_DEPTH + 1), "e".repeat(MAX_DEPTH + 1));
        assert_eq!(decode(deep.as_bytes()), Err(DecodeError::TooDeep));
        // Far deeper than the stack would allow without the limit.
        assert_eq!(decode(&[b'l'; 1_000_000]), Err(DecodeError::TooDeep));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..4),
                    inner,
                    0..4
                )
                .prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(value in arb_value()) {
            let mut buf = Vec::new();
            value.write_bencode(&mut buf).expect("vec write");
            prop_assert_eq!(decode(&buf), Ok(value));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_bencode_alphabet(
            bytes in proptest::collection::vec(
                proptest::sample::select(b"ilde0123456789:-x".to_vec()),
                0..64,
            )
        ) {
            let _ = decode(&bytes);
        }
    }
}
