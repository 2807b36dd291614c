//! Feeds arbitrary bytes to the request parser as one connection's input.
//!
//! Run with `cargo fuzz run request fuzz/seeds/request` from the crate
//! directory. Besides "no panic", it checks the properties the server's
//! read loop relies on: `consumed` moves forward and stays inside the
//! buffer, and every request that parses is written back to a target that
//! parses to the same request.
#![no_main]

use aquatic_http_protocol::{parse_request, ParseLimits, Parsed, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = ParseLimits {
        max_request_bytes: 2048,
        max_scrape_torrents: 8,
        max_headers: 16,
    };
    let mut rest = data;
    // Pipelined requests, as the server's connection loop would see them.
    while let Ok(Parsed::Complete(parsed)) = parse_request(rest, &limits) {
        assert!(parsed.consumed > 0 && parsed.consumed <= rest.len());
        let _ = parsed.forwarded_ip("x-forwarded-for");
        if let Ok(request) = &parsed.request {
            let mut target = Vec::new();
            request
                .write_target(&mut target)
                .expect("writing to a Vec cannot fail");
            assert_eq!(
                Request::parse_target(&target, limits.max_scrape_torrents).as_ref(),
                Ok(request)
            );
        }
        rest = &rest[parsed.consumed..];
    }
});
