//! Client messages from arbitrary bytes: never a panic, and whatever parses
//! writes back into something that parses again.
#![no_main]

use aquatic_ws_protocol::InMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = InMessage::parse(data) {
        let mut out = Vec::new();
        message.write(&mut out).expect("a parsed message serializes");
        InMessage::parse(&out).expect("a written message parses");
    }
});
