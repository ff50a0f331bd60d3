//! The sender policy after AUTH: the envelope sender and every address in the message's
//! From: and Sender: headers must be one of the user's own addresses.

use mail_parser::{HeaderName, HeaderValue, MessageParser};

use crate::auth::Grant;

/// What the header block says about the message, for the policy and the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    /// Every address of every From: and Sender: header, lowercased.
    pub senders: Vec<String>,
    /// Whether a From: or Sender: header held something that is not an address.
    pub unparsable_sender: bool,
    pub message_id: Option<String>,
}

/// Whether `address` (an envelope sender as the client gave it) belongs to the user.
/// The null sender `<>` does not: a user's own submission always has a sender.
pub fn envelope_sender_allowed(grant: &Grant, address: &str) -> bool {
    !address.is_empty() && owns(grant, address)
}

/// Whether every header sender belongs to the user. A message without From: or Sender:
/// passes: the upstream adds From: from the envelope, which was already checked.
pub fn header_senders_allowed(grant: &Grant, facts: &HeaderFacts) -> bool {
    !facts.unparsable_sender && facts.senders.iter().all(|sender| owns(grant, sender))
}

fn owns(grant: &Grant, address: &str) -> bool {
    let address = address.trim().to_lowercase();
    grant.addresses.contains(&address)
}

/// Reads From:, Sender: and Message-ID: from a header block as received in DATA
/// (dot-stuffed, CRLF line ends, up to and including the empty line).
pub fn header_facts(header_block: &[u8]) -> HeaderFacts {
    let unstuffed = unstuff(header_block);
    let mut facts = HeaderFacts::default();
    let Some(message) = MessageParser::new().parse_headers(&unstuffed) else {
        facts.unparsable_sender = has_sender_header(&unstuffed);
        return facts;
    };
    for header in message.headers() {
        if !matches!(header.name, HeaderName::From | HeaderName::Sender) {
            continue;
        }
        match &header.value {
            HeaderValue::Address(address) => {
                let mut any = false;
                for addr in address.iter() {
                    match addr.address() {
                        Some(email) => {
                            facts.senders.push(email.trim().to_lowercase());
                            any = true;
                        }
                        None => facts.unparsable_sender = true,
                    }
                }
                if !any {
                    facts.unparsable_sender = true;
                }
            }
            _ => facts.unparsable_sender = true,
        }
    }
    facts.message_id = message
        .message_id()
        .map(|id| id.chars().take(256).collect());
    facts
}

/// A header line the parser could not read may still name a sender: treat it as one.
fn has_sender_header(block: &[u8]) -> bool {
    block.split(|&b| b == b'\n').any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with(b"from:") || line.starts_with(b"sender:")
    })
}

/// Removes SMTP dot-stuffing (RFC 5321 §4.5.2): a line starting with ".." starts with ".".
fn unstuff(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len());
    let mut at_line_start = true;
    let mut iter = block.iter().peekable();
    while let Some(&byte) = iter.next() {
        if at_line_start && byte == b'.' && iter.peek() == Some(&&b'.') {
            // Keep one dot of the two.
            iter.next();
        }
        out.push(byte);
        at_line_start = byte == b'\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            user_id: 1,
            login: "alice@example.com".into(),
            upstream_user: "alice".into(),
            addresses: vec!["alice@example.com".into(), "sales@example.com".into()],
            app_password_id: 1,
            scopes: vec![],
            expires_at: None,
        }
    }

    #[test]
    fn envelope_senders_are_matched_case_insensitively() {
        assert!(envelope_sender_allowed(&grant(), "Alice@Example.COM"));
        assert!(envelope_sender_allowed(&grant(), "sales@example.com"));
        assert!(!envelope_sender_allowed(&grant(), "ceo@example.com"));
        assert!(!envelope_sender_allowed(&grant(), ""));
    }

    #[test]
    fn every_from_and_sender_address_must_be_the_users() {
        let ok = header_facts(
            b"From: Alice <alice@example.com>\r\nSender: sales@example.com\r\n\
              Message-ID: <m1@example.com>\r\nSubject: hi\r\n\r\n",
        );
        assert_eq!(ok.senders, ["alice@example.com", "sales@example.com"]);
        assert_eq!(ok.message_id.as_deref(), Some("m1@example.com"));
        assert!(header_senders_allowed(&grant(), &ok));

        for spoof in [
            &b"From: The CEO <ceo@example.com>\r\n\r\n"[..],
            b"From: alice@example.com, ceo@example.com\r\n\r\n",
            b"From: alice@example.com\r\nSender: ceo@example.com\r\n\r\n",
            b"From: alice@example.com\r\nFrom: ceo@example.com\r\n\r\n",
            b"From: undisclosed:;\r\n\r\n",
            b"From: not an address\r\n\r\n",
        ] {
            let facts = header_facts(spoof);
            assert!(
                !header_senders_allowed(&grant(), &facts),
                "{:?} passed: {facts:?}",
                String::from_utf8_lossy(spoof)
            );
        }
    }

    #[test]
    fn a_message_without_sender_headers_passes_on_its_checked_envelope() {
        let facts = header_facts(b"Subject: no from\r\n\r\n");
        assert!(facts.senders.is_empty());
        assert!(header_senders_allowed(&grant(), &facts));
    }

    #[test]
    fn dot_stuffed_header_lines_are_read_unstuffed() {
        assert_eq!(
            unstuff(b"..hidden\r\nx\r\n..\r\n"),
            b".hidden\r\nx\r\n.\r\n"
        );
        // "..From:" on the wire is the header line ".From:", not a From: header.
        let facts = header_facts(b"Subject: x\r\n..From: ceo@example.com\r\n\r\n");
        assert!(facts.senders.is_empty(), "{facts:?}");
    }
}
