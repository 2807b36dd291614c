//! Config files from arbitrary bytes: an error or a config, never a
//! panic; a config that parses prints and parses back to itself.
#![no_main]

use std::path::Path;

use aquatic::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_toml(text, Path::new("fuzz.toml")) {
        let printed = toml::to_string(&config).expect("a valid config serializes");
        let again = Config::from_toml(&printed, Path::new("printed.toml")).expect("printed config parses");
        assert_eq!(again, config);
    }
});
