//! Generated messages: a streamed body of CRLF lines (for big messages, produced chunk by
//! chunk and checksummed), and small realistic messages for mailboxes.

use std::path::Path;

use sha2::{Digest, Sha256};

/// A message whose body is exactly `body_len` bytes of CRLF lines of 76 printable
/// characters (none starting with a dot), produced chunk by chunk from a seeded xorshift.
pub struct Generator {
    pub body_len: u64,
    from: String,
    to: String,
    produced: u64,
    state: u64,
    column: usize,
}

const LINE: usize = 76;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

impl Generator {
    pub fn new(body_len: u64, from: &str, to: &str) -> Generator {
        Generator {
            body_len,
            from: from.to_string(),
            to: to.to_string(),
            produced: 0,
            state: 0x9e37_79b9_7f4a_7c15 ^ body_len,
            column: 0,
        }
    }

    pub fn header(&self) -> Vec<u8> {
        format!(
            "From: <{}>\r\n\
             To: <{}>\r\n\
             Subject: {} bytes\r\n\
             Message-ID: <bench-{}@example.test>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n",
            self.from, self.to, self.body_len, self.body_len
        )
        .into_bytes()
    }

    /// Header plus body length.
    pub fn total_len(&self) -> u64 {
        self.header().len() as u64 + self.body_len
    }

    /// Appends up to `max` body bytes to `out`; false when the body is complete.
    pub fn next_chunk(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        let remaining = self.body_len - self.produced;
        if remaining == 0 {
            return false;
        }
        let n = (max as u64).min(remaining) as usize;
        for i in 0..n {
            let left = remaining - i as u64;
            let byte = if left <= 2 {
                // The body ends with CRLF.
                if left == 2 {
                    b'\r'
                } else {
                    b'\n'
                }
            } else if self.column == LINE {
                b'\r'
            } else if self.column == LINE + 1 {
                b'\n'
            } else {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                ALPHABET[(self.state % ALPHABET.len() as u64) as usize]
            };
            self.column = if byte == b'\n' { 0 } else { self.column + 1 };
            out.push(byte);
        }
        self.produced += n as u64;
        true
    }

    /// The whole message (header and body) in memory.
    pub fn into_bytes(mut self) -> Vec<u8> {
        let mut out = self.header();
        while self.next_chunk(&mut out, 1 << 20) {}
        out
    }

    /// The SHA-256 of the body this generator will produce.
    pub fn body_sha256(&self) -> String {
        let mut copy = Generator::new(self.body_len, &self.from, &self.to);
        let mut hasher = Sha256::new();
        let mut chunk = Vec::with_capacity(1 << 20);
        while copy.next_chunk(&mut chunk, 1 << 20) {
            hasher.update(&chunk);
            chunk.clear();
        }
        hex(&hasher.finalize())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of everything after the first empty line of a stored message.
pub fn stored_body_sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let start = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header block")
        + 4;
    hex(&Sha256::digest(&bytes[start..]))
}

/// The `n`-th message of a generated mailbox: 1-3 KiB, with the headers ENVELOPE
/// reports (Date, Subject, From, Sender, Reply-To, To, Cc, In-Reply-To, Message-ID)
/// varied from message to message.
pub fn mailbox_message(n: usize, to: &str) -> Vec<u8> {
    let senders = [
        "\"Alice Example\" <alice@example.test>",
        "Bob <bob@example.org>",
        "\"Carol Q. Public\" <carol@lists.example.net>",
        "dave@example.com",
        "\"Éva Kovács\" <eva@example.hu>",
    ];
    let subjects = [
        "Quarterly report",
        "Re: lunch on Friday?",
        "[dev] Build failures on main",
        "Invoice 2024-0042",
        "Fwd: Photos from the trip",
    ];
    let from = senders[n % senders.len()];
    let subject = subjects[(n / 5) % subjects.len()];
    let day = 1 + n % 28;
    let hour = n % 24;
    let mut message = format!(
        "Date: Mon, {day:02} Jan 2024 {hour:02}:{:02}:00 +0000\r\n\
         From: {from}\r\n\
         To: <{to}>\r\n\
         Cc: \"Team\" <team@example.test>, frank@example.test\r\n\
         Subject: {subject} #{n}\r\n\
         Message-ID: <msg-{n}@bench.example.test>\r\n\
         In-Reply-To: <msg-{}@bench.example.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n",
        n % 60,
        n.saturating_sub(1)
    )
    .into_bytes();
    let lines = 12 + n % 30;
    for i in 0..lines {
        message.extend_from_slice(
            format!("Line {i} of message {n}: the quick brown fox jumps over the lazy dog.\r\n")
                .as_bytes(),
        );
    }
    message
}
