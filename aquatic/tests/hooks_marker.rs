//! The binary operators run carries no test hook; the hooks build does.
//!
//! `cargo test` builds the binary with default features, so every
//! end-to-end test exercises what operators run; the few tests that need
//! a fault run in a second pass with `--features test-hooks`, where the
//! other half of this check runs.

mod common;

/// What every hook trigger starts with (`aquatic/src/hooks.rs`).
const MARKER: &[u8] = b"aquatic-test-hook";

fn binary_contains_marker() -> bool {
    let bytes = std::fs::read(env!("CARGO_BIN_EXE_aquatic")).expect("read the binary");
    bytes.windows(MARKER.len()).any(|w| w == MARKER)
}

#[cfg(not(feature = "test-hooks"))]
#[test]
fn the_default_build_has_no_test_hooks() {
    assert!(
        !binary_contains_marker(),
        "test hooks compiled into the default build"
    );
}

#[cfg(feature = "test-hooks")]
#[test]
fn the_hooks_build_has_them() {
    assert!(binary_contains_marker(), "the hooks build lacks its hooks");
}
