//! The mail protocols postern speaks, as named in configuration, metric labels and scopes.

use serde::Deserialize;

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Imap,
    Smtp,
    Pop3,
}

impl Protocol {
    /// The name used in metric labels, logs and scopes.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Smtp => "smtp",
            Protocol::Pop3 => "pop3",
        }
    }
}
