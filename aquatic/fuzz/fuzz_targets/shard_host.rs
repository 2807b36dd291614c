//! The shard host under arbitrary sequences of UDP/HTTP and WebTorrent
//! announces, stops and connection closes from several clients: every
//! invariant of `aquatic::invariants` holds after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = aquatic::invariants::check_sequence(data) {
        panic!("invariant broken: {broken}");
    }
});
