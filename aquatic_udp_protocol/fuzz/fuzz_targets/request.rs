#![no_main]

use aquatic_udp_protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data, 74) {
        let mut written = Vec::new();
        request.write(&mut written).expect("writing to a Vec cannot fail");
        // BEP 41 options after an announce are dropped by parsing, so compare
        // the re-parsed request, not the bytes.
        assert_eq!(Request::parse(&written, 74), Ok(request));
    }
});
