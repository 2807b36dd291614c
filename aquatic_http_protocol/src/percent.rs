//! Percent-decoding of query values without allocating, and the matching
//! encoder used by the client-side request writer.

use std::io::{self, Write};

/// A `%` not followed by two hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InvalidPercent;

/// Decodes `raw` byte by byte.
///
/// `plus_as_space` is the form-encoding rule for text values; binary values
/// (`info_hash`, `peer_id`, `key`) keep a raw `+` as the byte 0x2B, because
/// a client that sent `+` unescaped in a hash meant that byte.
pub(crate) fn decode(
    raw: &[u8],
    plus_as_space: bool,
) -> impl Iterator<Item = Result<u8, InvalidPercent>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *raw.get(i)?;
        i += 1;
        Some(match b {
            b'%' => {
                let hi = raw.get(i).copied().and_then(hex_value);
                let lo = raw.get(i + 1).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => {
                        i += 2;
                        Ok(hi << 4 | lo)
                    }
                    _ => {
                        // Stop here: the rest of the value is meaningless.
                        i = raw.len();
                        Err(InvalidPercent)
                    }
                }
            }
            b'+' if plus_as_space => Ok(b' '),
            b => Ok(b),
        })
    })
}

/// What went wrong decoding into a fixed-size buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FixedError {
    Percent,
    /// More or fewer bytes than the buffer holds (for [`decode_exact`]), or
    /// more than it holds (for [`decode_into`]).
    Length,
}

/// Decodes into `out`, returning how many bytes were written.
pub(crate) fn decode_into(
    raw: &[u8],
    plus_as_space: bool,
    out: &mut [u8],
) -> Result<usize, FixedError> {
    let mut n = 0;
    for b in decode(raw, plus_as_space) {
        let b = b.map_err(|InvalidPercent| FixedError::Percent)?;
        *out.get_mut(n).ok_or(FixedError::Length)? = b;
        n += 1;
    }
    Ok(n)
}

/// Decodes a binary value that must be exactly `N` bytes long.
pub(crate) fn decode_exact<const N: usize>(raw: &[u8]) -> Result<[u8; N], FixedError> {
    let mut out = [0u8; N];
    match decode_into(raw, false, &mut out)? {
        n if n == N => Ok(out),
        _ => Err(FixedError::Length),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes `bytes` percent-encoded, leaving only RFC 3986 unreserved
/// characters as they are (what libtorrent does).
pub(crate) fn encode(w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            w.write_all(&[b])?;
        } else {
            w.write_all(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(raw: &[u8], plus: bool) -> Result<Vec<u8>, InvalidPercent> {
        decode(raw, plus).collect()
    }

    #[test]
    fn decodes_escapes_and_plus() {
        assert_eq!(decoded(b"a%20b%2fc%2F", false), Ok(b"a b/c/".to_vec()));
        assert_eq!(decoded(b"a+b", true), Ok(b"a b".to_vec()));
        assert_eq!(decoded(b"a+b", false), Ok(b"a+b".to_vec()));
    }

    #[test]
    fn rejects_bad_escapes() {
        for raw in [&b"%"[..], b"%4", b"%zz", b"%4g", b"ab%"] {
            assert_eq!(decoded(raw, false), Err(InvalidPercent), "{raw:?}");
        }
    }

    #[test]
    fn exact_length() {
        assert_eq!(decode_exact::<2>(b"%01b"), Ok([1, b'b']));
        assert_eq!(decode_exact::<2>(b"abc"), Err(FixedError::Length));
        assert_eq!(decode_exact::<2>(b"a"), Err(FixedError::Length));
        assert_eq!(decode_exact::<2>(b"a%"), Err(FixedError::Percent));
    }

    #[test]
    fn encode_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        encode(&mut out, &all).expect("vec write");
        assert_eq!(decoded(&out, true), Ok(all));
    }
}
