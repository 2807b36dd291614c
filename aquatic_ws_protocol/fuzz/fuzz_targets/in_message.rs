//! Client messages from arbitrary bytes: never a panic, and whatever parses
//! writes back into something that parses again.
#![no_main]

use aquatic_ws_protocol::InMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = InMessage::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", InMessage::parse_text(text)),
            "bytes and text parse alike"
        );
    }
    if let Ok(message) = parsed {
        let mut out = Vec::new();
        message.write(&mut out).expect("a parsed message serializes");
        InMessage::parse(&out).expect("a written message parses");
    }
});
