//! Upstream SMTP replies through `postern::smtp::upstream::parse_reply`, the framing postern
//! reads every upstream reply with, and each complete reply through what postern does with
//! an EHLO reply (`Capabilities::from_ehlo`) and with any reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::smtp::upstream::{parse_reply, Capabilities};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((reply, used))) = parse_reply(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "a reply takes bytes it was given"
        );
        let capabilities = Capabilities::from_ehlo(&reply);
        let _ = capabilities.offers_auth("PLAIN");
        let _ = capabilities.offers_auth("LOGIN");
        let _ = reply.lines().count();
        let _ = reply.text();
        let _ = reply.is_positive_completion();
        let _ = reply.is_intermediate();
        rest = &rest[used..];
    }
});
