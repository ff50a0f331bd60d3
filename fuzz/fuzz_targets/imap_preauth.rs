//! The IMAP pre-auth state machine on arbitrary client bytes.
//!
//! Input: byte 0 picks the options and how verdicts are given, byte 1 seeds the split of
//! the rest into reads, and the rest is what the client sends. Each read is fed and the
//! machine is driven until it has nothing to do, answering every action as a session
//! would. Besides not panicking, every reply must be complete lines and the machine must
//! never loop.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/splitter.rs"]
mod splitter;
use postern::imap::preauth::{Action, PreAuth, PreAuthOptions};
use splitter::Splitter;

/// More actions than any input this size can cause: more means a loop.
const MAX_ACTIONS_PER_BYTE: usize = 64;

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
        ..PreAuthOptions::default()
    };
    let mut refuse = flags & 8 != 0;
    let mut machine = PreAuth::new(options);
    let greeting = machine.greeting();
    assert!(greeting.ends_with(b"\r\n"));

    let mut budget = MAX_ACTIONS_PER_BYTE * (client.len() + 4);
    let mut reads = Splitter::new(*split, client);
    let mut closed = false;
    while let Some(read) = reads.next() {
        machine.feed(read);
        while let Some(action) = machine.next_action() {
            budget = budget
                .checked_sub(1)
                .expect("next_action keeps returning actions");
            assert!(!closed, "an action after Close: {action:?}");
            match action {
                Action::Send(bytes) => {
                    assert!(bytes.ends_with(b"\r\n"), "a reply that is not whole lines");
                }
                Action::StartTls => machine.tls_established(),
                Action::Login { tag, credentials } => {
                    assert!(!credentials.login.is_empty());
                    assert!(machine.is_awaiting_verdict(), "Login for tag {tag:?}");
                    if refuse {
                        machine.login_refused();
                    } else {
                        machine.login_unavailable();
                    }
                    refuse = !refuse;
                }
                Action::Close => closed = true,
            }
        }
        let _ = machine.wants_input();
        let _ = machine.client_id();
    }
    let _ = machine.into_authenticated();
});
