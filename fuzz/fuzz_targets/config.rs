//! The configuration loader on arbitrary UTF-8: parse, then every check `validate` runs.
//! (`deferred_problems` is left out: it only asks the file system whether a path exists.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let problems = config.problems();
        assert_eq!(config.validate().is_ok(), problems.is_empty());
    }
});
