//! The POP3 pre-auth state machine on arbitrary client bytes.
//!
//! Input: byte 0 picks the options and how verdicts are given, byte 1 seeds the split of
//! the rest into reads, and the rest is what the client sends. Each read is fed and the
//! machine is driven as the session driver would, answering every step. Besides not
//! panicking, every reply must be complete lines, nothing may follow a close, and the
//! machine must never loop.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/splitter.rs"]
mod splitter;
use postern::pop3::preauth::{PreAuth, PreAuthOptions};
use postern::session::{Machine, Step};
use splitter::Splitter;

/// More steps than any input this size can cause: more means a loop.
const MAX_STEPS_PER_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [flags, split, client @ ..] = data else {
        return;
    };
    let options = PreAuthOptions {
        tls_active: flags & 1 != 0,
        starttls_available: flags & 2 != 0,
        // Small limits reach the too-long paths within a short input.
        max_line: if flags & 4 != 0 {
            16 + usize::from(flags >> 4) * 8
        } else {
            8 * 1024
        },
        max_failures: 3,
        max_bad_commands: 10,
    };
    let mut refuse = flags & 8 != 0;
    let mut machine = PreAuth::new(options);
    assert!(machine.greeting().ends_with(b"\r\n"));

    let mut budget = MAX_STEPS_PER_BYTE * (client.len() + 4);
    let mut reads = Splitter::new(*split, client);
    let mut closed = false;
    while let Some(read) = reads.next() {
        machine.feed(read);
        while let Some(step) = machine.next_step() {
            budget = budget
                .checked_sub(1)
                .expect("next_step keeps returning steps");
            assert!(!closed, "a step after Close");
            match step {
                Step::Send(bytes) => {
                    assert!(bytes.ends_with(b"\r\n"), "a reply that is not whole lines");
                }
                Step::StartTls => machine.tls_established(),
                Step::LogIn(credentials) => {
                    assert!(!credentials.login.is_empty());
                    assert!(!machine.between_commands());
                    if refuse {
                        machine.login_refused();
                    } else {
                        machine.login_unavailable();
                    }
                    refuse = !refuse;
                }
                Step::Close => closed = true,
                Step::Protocol(never) => match never {},
            }
        }
    }
    let _ = machine.into_authenticated();
});
