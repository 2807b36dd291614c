//! The HTTP client side of the end-to-end tests: percent-encoding and
//! reading pipelined responses.

use std::io::Read;

use aquatic_http_protocol::{
    bencode::{self, Value},
    parse_http_response,
};

/// Every byte percent-encoded (info hashes and peer ids in a query).
pub fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// Reads `count` responses from `stream`: (status, decoded body).
pub fn read_responses(stream: &mut impl Read, count: usize) -> Vec<(u16, Value)> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < count {
        match parse_http_response(&buf).expect("well-formed response") {
            Some(response) => {
                let body = bencode::decode(response.body).expect("bencoded body");
                out.push((response.status, body));
                let consumed = response.consumed;
                buf.drain(..consumed);
            }
            None => {
                let n = stream.read(&mut chunk).expect("read response");
                assert!(n > 0, "connection closed after {} responses", out.len());
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    out
}
