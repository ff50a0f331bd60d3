//! SASL decoding: the base64 response line, then PLAIN on what it decodes to, and PLAIN
//! on the raw bytes too (so the fuzzer need not find valid base64 to reach it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::sasl::{decode_base64, decode_plain, MAX_FIELD_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = decode_base64(data) {
        check_plain(&decoded);
    }
    check_plain(data);
});

fn check_plain(message: &[u8]) {
    if let Ok(credentials) = decode_plain(message) {
        assert!(!credentials.login.is_empty());
        assert!(credentials.login.len() <= MAX_FIELD_LEN);
        if let Some(authzid) = &credentials.authzid {
            assert!(!authzid.is_empty());
        }
    }
}
