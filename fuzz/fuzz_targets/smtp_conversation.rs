//! The SMTP submission conversation on arbitrary client bytes.
//!
//! Input: byte 0 picks the options and how verdicts are given, byte 1 seeds the split of
//! the rest into reads, and the rest is what the client sends. Each read is fed and the
//! machine is driven until it has nothing to do, answering every action as a session
//! would (the upstream says yes to everything but alternates on AUTH and on the sender
//! check). Besides not panicking, every reply must be complete lines and the machine must
//! never loop. Each header block also goes through the sender policy's header parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/splitter.rs"]
mod splitter;
use postern::smtp::conversation::{Action, Conversation, ConversationOptions};
use splitter::Splitter;

/// More actions than any input this size can cause: more means a loop.
const MAX_ACTIONS_PER_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [flags, split, client @ ..] = data else {
        return;
    };
    let small = flags & 4 != 0;
    let options = ConversationOptions {
        tls_active: flags & 1 != 0,
        starttls_available: flags & 2 != 0,
        hostname: "mx.example.org".to_owned(),
        // Small limits reach the too-long and too-large paths within a short input.
        max_line: if small { 64 } else { 8 * 1024 },
        max_header_bytes: if small { 128 } else { 64 * 1024 },
        max_message_size: if small { 256 } else { 25 * 1024 * 1024 },
        smtputf8: flags & 16 != 0,
        dsn: flags & 32 != 0,
        ..ConversationOptions::default()
    };
    let mut grant = flags & 8 == 0;
    let mut accept = flags & 64 == 0;
    let mut refuse_data = flags & 128 != 0;
    let mut machine = Conversation::new(options);
    assert!(machine.greeting().ends_with(b"\r\n"));

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
                Action::Authenticate(credentials) => {
                    assert!(!credentials.login.is_empty());
                    if grant {
                        machine.auth_granted();
                    } else {
                        machine.auth_refused();
                    }
                    grant = !grant;
                }
                Action::MailFrom { line, .. } | Action::RcptTo { line, .. } => {
                    assert!(line.ends_with(b"\r\n"));
                    machine.reply(b"250 2.0.0 OK\r\n".to_vec());
                }
                Action::Data => {
                    if refuse_data {
                        machine.reply(b"451 4.7.1 Try later\r\n".to_vec());
                    } else {
                        machine.data_accepted();
                    }
                    refuse_data = !refuse_data;
                }
                Action::MessageHeader(header) => {
                    // Whole lines, or nothing: an empty message ("DATA", then ".").
                    assert!(
                        header.is_empty() || header.ends_with(b"\r\n"),
                        "a header that is not whole lines"
                    );
                    // What the session reads from it for the sender policy and the log.
                    let _ = postern::smtp::policy::header_facts(&header);
                    if accept {
                        machine.accept_message();
                    } else {
                        machine.reject_message(b"553 5.7.1 Sender not allowed\r\n".to_vec());
                    }
                    accept = !accept;
                }
                Action::MessageBody(_) | Action::MessageTooLarge | Action::Quit => {}
                Action::MessageEnd | Action::Reset => {
                    machine.reply(b"250 2.0.0 OK\r\n".to_vec());
                }
                Action::Close => closed = true,
            }
        }
        let _ = machine.wants_input();
        let _ = machine.between_commands();
        let _ = machine.helo();
        let _ = machine.login();
        let _ = machine.recipients();
    }
});
