//! The certificates mail clients are shown: the default one (`[tls] cert`) and any more
//! (`[[tls.certificates]]`), chosen at each handshake by the name the client asks for
//! (SNI) and the signature schemes it offers. So an RSA and an ECDSA certificate for the
//! same name are served side by side (old Outlook on Windows 7 speaks TLS 1.2 with RSA
//! only), and names with certificates of their own get them.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{provider, trust, TlsError};

/// One certificate with its key, and the names it is for.
#[derive(Debug)]
struct Entry {
    key: Arc<CertifiedKey>,
    /// Lowercase DNS names (`*.example.com` for a wildcard) and addresses, sorted.
    names: Vec<String>,
}

/// Every certificate postern serves, in order of preference; the first is the default.
#[derive(Debug)]
pub struct Certificates {
    entries: Vec<Entry>,
}

impl Certificates {
    /// Builds the set from (chain, key) pairs, the default first; `source` names each
    /// pair in errors (its file, say). Fails when a key does not fit its certificate.
    pub fn new(
        pairs: Vec<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Certificates, TlsError> {
        let provider = provider();
        let mut entries = Vec::with_capacity(pairs.len());
        for (source, chain, key) in pairs {
            let mut names: Vec<String> = trust::subject_names(&chain[0])
                .unwrap_or_default()
                .into_iter()
                .map(|name| name.to_ascii_lowercase())
                .collect();
            names.sort();
            names.dedup();
            let key = CertifiedKey::from_der(chain, key, &provider)
                .map_err(|error| TlsError::Mismatch(source, error))?;
            entries.push(Entry {
                key: Arc::new(key),
                names,
            });
        }
        if entries.is_empty() {
            return Err(TlsError::NoCertificate {
                path: "[tls]".into(),
            });
        }
        Ok(Certificates { entries })
    }

    /// The certificates for `name`, or, when the client named none or a name no
    /// certificate is for, the default certificate and those for exactly its names.
    fn for_name(&self, name: Option<&str>) -> Vec<&Entry> {
        if let Some(name) = name.map(|name| name.to_ascii_lowercase()) {
            let named: Vec<&Entry> = self
                .entries
                .iter()
                .filter(|entry| entry.names.iter().any(|n| covers(n, &name)))
                .collect();
            if !named.is_empty() {
                return named;
            }
        }
        let default = &self.entries[0].names;
        self.entries
            .iter()
            .filter(|entry| &entry.names == default)
            .collect()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let candidates = self.for_name(hello.server_name());
        let schemes = hello.signature_schemes();
        // The first the client can verify; if none, the first (the handshake then fails
        // as it would have with a single certificate).
        candidates
            .iter()
            .find(|entry| entry.key.key.choose_scheme(schemes).is_some())
            .or(candidates.first())
            .map(|entry| entry.key.clone())
    }
}

/// Whether a certificate name (lowercase; `*.` for a wildcard of one label) covers a
/// requested name (lowercase).
fn covers(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(covers("mail.example.com", "mail.example.com"));
        assert!(covers("*.example.com", "mail.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.mail.example.com"));
        assert!(!covers("*.example.com", ".example.com"));
        assert!(!covers("mail.example.com", "mail.example.org"));
    }

    fn pair(names: &[&str]) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
        ("test".into(), vec![generated.cert.der().clone()], key)
    }

    #[test]
    fn names_choose_and_unknown_names_get_the_default() {
        let set = Certificates::new(vec![
            pair(&["mail.example.com"]),
            pair(&["*.example.org"]),
            pair(&["mail.example.com"]),
        ])
        .unwrap();
        let names = |name| -> Vec<&str> {
            set.for_name(name)
                .iter()
                .map(|e| e.names[0].as_str())
                .collect()
        };
        assert_eq!(names(Some("imap.Example.ORG")), ["*.example.org"]);
        assert_eq!(names(Some("MAIL.example.com")).len(), 2);
        assert_eq!(names(None), ["mail.example.com", "mail.example.com"]);
        assert_eq!(
            names(Some("unknown.test")),
            ["mail.example.com", "mail.example.com"]
        );
    }

    #[test]
    fn a_key_for_another_certificate_is_refused_by_name() {
        let (_, chain, _) = pair(&["a.test"]);
        let (_, _, other_key) = pair(&["a.test"]);
        let error = Certificates::new(vec![("certs/a.pem".into(), chain, other_key)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("certs/a.pem"), "{error}");
    }
}
