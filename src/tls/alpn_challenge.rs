//! TLS-ALPN-01 (RFC 8737): while an ACME order waits, a CA connecting with ALPN
//! `acme-tls/1` and a domain's name is shown a self-signed certificate carrying the
//! challenge's digest; nothing else happens on that connection. Ordinary clients never
//! see this configuration: [`offers_acme_alpn`] looks at the ClientHello (without
//! consuming it) before the handshake chooses between the two.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::{provider, TlsError};

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How many times a partly arrived ClientHello is looked at again.
const PEEKS: usize = 20;

/// The challenge certificates of the orders under way, by domain (lowercase).
#[derive(Debug, Default)]
pub struct Challenges(RwLock<HashMap<String, Arc<CertifiedKey>>>);

impl Challenges {
    /// Answers `domain`'s challenge with a certificate carrying `digest` (the SHA-256 of
    /// the key authorization) until [`Challenges::clear`].
    pub fn add(&self, domain: &str, digest: &[u8]) -> Result<(), TlsError> {
        let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(generate)?;
        let mut params =
            rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(generate)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let certificate = params.self_signed(&key).map_err(generate)?;
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        // Not `CertifiedKey::from_der`: its check parses the certificate, and refuses the
        // critical acmeIdentifier extension that is the point of this one.
        let signing_key = provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|error| TlsError::Mismatch("the TLS-ALPN-01 certificate".into(), error))?;
        let certified = CertifiedKey::new(
            vec![CertificateDer::from(certificate.der().to_vec())],
            signing_key,
        );
        self.write()
            .insert(domain.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    /// Forgets every challenge (the order is over).
    pub fn clear(&self) {
        self.write().clear();
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CertifiedKey>>> {
        // Each operation leaves the map whole; a poisoned lock is still consistent.
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let map = self.0.read().unwrap_or_else(|p| p.into_inner());
        map.get(&name).cloned()
    }
}

/// The configuration a CA's TLS-ALPN-01 validation handshakes with.
pub fn challenge_config(challenges: Arc<Challenges>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_no_client_auth()
        .with_cert_resolver(challenges);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// Whether the ClientHello waiting on `tcp` offers `acme-tls/1`, read
/// without consuming it. Anything unreadable (not TLS, too slow, too large) is `false`:
/// the ordinary handshake then deals with it.
pub async fn offers_acme_alpn(tcp: &TcpStream) -> bool {
    let mut buffer = vec![0u8; 16 * 1024];
    let mut seen = 0;
    for _ in 0..PEEKS {
        let Ok(read) = tcp.peek(&mut buffer).await else {
            return false;
        };
        if read == 0 {
            return false;
        }
        if read > seen {
            seen = read;
            let mut acceptor = Acceptor::default();
            let mut rest = &buffer[..read];
            while !rest.is_empty() {
                if !matches!(acceptor.read_tls(&mut rest), Ok(n) if n > 0) {
                    return false;
                }
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    return accepted
                        .client_hello()
                        .alpn()
                        .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
                }
                Ok(None) if read < buffer.len() => {}
                _ => return false,
            }
        }
        // Part of the ClientHello is here; the rest is on its way.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
