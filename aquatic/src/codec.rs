//! The one place bincode is configured: snapshot files and cluster link
//! frames are encoded here and nowhere else.
//!
//! bincode 2 with its standard configuration (little-endian, variable-length
//! integers) and a decode limit on every read, so that a length field in a
//! hostile or corrupt input cannot make us allocate more than the caller
//! allows. Callers put their own version header in front of what they encode
//! (a snapshot header, a frame header) and choose the type to decode by it.

use bincode::{config, Decode, Encode};

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be written.
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a value of the expected type, or claim more than
    /// the limit.
    #[error("cannot decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The bytes hold a value followed by more bytes.
    #[error("{0} bytes left over after the value")]
    TrailingBytes(usize),
}

/// The largest value [`decode`] reads: 64 MiB. Snapshot slices and link
/// frames are far smaller; this bounds what a corrupt length can claim.
pub const DECODE_LIMIT_BYTES: usize = 64 << 20;

fn configuration(
) -> config::Configuration<config::LittleEndian, config::Varint, config::Limit<DECODE_LIMIT_BYTES>>
{
    config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Encode>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::encode_into_std_write(value, out, configuration())?;
    Ok(())
}

/// The encoding of `value`.
pub fn encode<T: Encode>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes one value from the front of `bytes`; returns it and how many
/// bytes it took.
pub fn decode_prefix<T: Decode<()>>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    Ok(bincode::decode_from_slice(bytes, configuration())?)
}

/// Decodes `bytes` as exactly one value.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Encode, Decode)]
    struct Sample {
        hash: [u8; 20],
        port: u16,
        peers: Vec<u32>,
    }

    #[test]
    fn round_trip() {
        let s = Sample {
            hash: [7; 20],
            port: 6881,
            peers: vec![1, 2, 3],
        };
        let bytes = encode(&s).expect("encodes");
        assert_eq!(decode::<Sample>(&bytes).expect("decodes"), s);
    }

    #[test]
    fn trailing_and_truncated_bytes_refused() {
        let s = Sample {
            hash: [1; 20],
            port: 1,
            peers: vec![9; 10],
        };
        let mut bytes = encode(&s).expect("encodes");
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(CodecError::TrailingBytes(1))
        ));
        bytes.truncate(bytes.len() - 3);
        assert!(decode::<Sample>(&bytes).is_err());
    }

    #[test]
    fn a_huge_length_is_refused_not_allocated() {
        // A Vec length of u64::MAX (varint: 0xff then 8 bytes).
        let mut bytes = vec![0u8; 20];
        bytes.push(1);
        bytes.push(0xff);
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Sample>(&bytes).is_err());
    }
}
