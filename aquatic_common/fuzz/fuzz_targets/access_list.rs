//! Access-list files from arbitrary bytes: an error or a list, never a
//! panic; a parsed list's hashes are all allowed in allow mode.
#![no_main]

use aquatic_common::access_list::{AccessList, AccessListMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(list) = AccessList::parse(AccessListMode::Allow, text) {
        for line in text.lines() {
            let line = line.trim();
            if let Ok(hash) = aquatic_common::InfoHash::from_hex(line) {
                assert!(list.allows(&hash), "listed hash refused: {line}");
            }
        }
    }
});
