//! The upstream's EHLO reply, as `Capabilities::from_ehlo` reads it. postern's reply
//! framing (`smtp::upstream::parse_reply`) is private, so the `Reply` is built directly:
//! the code from the first three bytes when they are digits, the raw bytes as received.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::smtp::upstream::{Capabilities, Reply};

fuzz_target!(|data: &[u8]| {
    let code = match data.get(..3) {
        Some(digits) if digits.iter().all(u8::is_ascii_digit) => digits
            .iter()
            .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0')),
        _ => 250,
    };
    let reply = Reply {
        code,
        raw: data.to_vec(),
    };
    let capabilities = Capabilities::from_ehlo(&reply);
    let _ = capabilities.offers_auth("PLAIN");
    let _ = capabilities.offers_auth("LOGIN");
    let _ = reply.lines().count();
    let _ = reply.text();
    let _ = reply.is_positive_completion();
    let _ = reply.is_intermediate();
});
