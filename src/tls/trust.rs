//! Whether postern trusts the upstream's certificate, and why not in one plain sentence.
//!
//! A certificate is trusted when it chains to a CA in `ca_file` (or the system's roots),
//! or when it is pinned: exactly one of the certificates in `ca_file`, or one whose
//! SHA-256 fingerprint is in `pin_sha256`. A pinned certificate is trusted as it is,
//! whoever signed it and whatever its basic constraints say (set-up guides make the
//! upstream's certificate with `openssl req -x509`, which marks it a CA, and curl, Python
//! and Thunderbird accept it when the user trusts it explicitly); its validity dates and
//! names are still checked.
//!
//! Every refusal becomes a [`CertificateProblem`], whose text says what is wrong and what
//! to set: it reaches the log and `postern check-config --probe` through [`describe`].

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

/// A certificate the upstream presented and postern refused, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateProblem(pub String);

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertificateProblem {}

/// The verifier of upstream certificates: chains to the trusted CAs, or pins.
#[derive(Debug)]
pub struct UpstreamTrust {
    /// `None` when there is no CA to chain to (only pins).
    chains: Option<Arc<WebPkiServerVerifier>>,
    /// Certificates trusted exactly as they are: those of `ca_file`.
    pinned: Vec<CertificateDer<'static>>,
    /// SHA-256 of certificates trusted exactly as they are (`pin_sha256`).
    fingerprints: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl UpstreamTrust {
    /// Trusts what chains to `roots`, each certificate of `pinned` as it is, and each
    /// certificate whose SHA-256 is in `fingerprints`.
    pub fn new(
        roots: RootCertStore,
        pinned: Vec<CertificateDer<'static>>,
        fingerprints: Vec<[u8; 32]>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let chains = if roots.is_empty() {
            None
        } else {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(roots.into(), provider.clone())
                    .build()
                    .map_err(|e| Error::General(e.to_string()))?;
            Some(verifier)
        };
        Ok(Self {
            chains,
            pinned,
            fingerprints,
            provider,
        })
    }

    fn is_pinned(&self, certificate: &CertificateDer<'_>) -> bool {
        self.pinned
            .iter()
            .any(|pin| pin.as_ref() == certificate.as_ref())
            || self.fingerprints.contains(&fingerprint(certificate))
    }
}

impl ServerCertVerifier for UpstreamTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verdict = if self.is_pinned(end_entity) {
            check_pinned(end_entity, server_name, now)
        } else {
            match &self.chains {
                Some(chains) => chains
                    .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                    .map(|_| ()),
                None => Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            }
        };
        verdict
            .map(|()| ServerCertVerified::assertion())
            .map_err(|error| explained(&error, end_entity, server_name))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A pinned certificate is trusted as it is, but only between its validity dates and for
/// the name postern connects to.
fn check_pinned(
    certificate: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = parsed.validity();
    let time = now.as_secs() as i64;
    let as_unix = |seconds: i64| {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds.max(0) as u64))
    };
    if time < validity.not_before.timestamp() {
        return Err(Error::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: now,
                not_before: as_unix(validity.not_before.timestamp()),
            },
        ));
    }
    if time > validity.not_after.timestamp() {
        return Err(Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: now,
                not_after: as_unix(validity.not_after.timestamp()),
            },
        ));
    }
    let end_entity = ParsedCertificate::try_from(certificate)?;
    rustls::client::verify_server_name(&end_entity, server_name)
}

/// The SHA-256 fingerprint of a certificate, as `pin_sha256` takes it.
pub fn fingerprint(certificate: &[u8]) -> [u8; 32] {
    Sha256::digest(certificate).into()
}

/// A fingerprint as `openssl x509 -noout -fingerprint -sha256` prints it: `AB:CD:…`.
pub fn fingerprint_text(fingerprint: &[u8; 32]) -> String {
    fingerprint
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads a `pin_sha256` value: 64 hex digits, colons and case as you like.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// `error` about `certificate` as a [`CertificateProblem`] (the TLS alert stays the one
/// rustls would send for a bad certificate).
fn explained(
    error: &Error,
    certificate: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Error {
    let sentence = explain(error, certificate, server_name);
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        CertificateProblem(sentence),
    ))))
}

fn explain(
    error: &Error,
    certificate: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> String {
    let expected = server_name.to_str();
    let names = names(certificate);
    let pin = format!(
        "pin_sha256 = \"{}\"",
        fingerprint_text(&fingerprint(certificate))
    );
    let Error::InvalidCertificate(problem) = error else {
        return format!("the upstream's certificate was refused: {error}");
    };
    match problem {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the upstream's certificate is for {names}, not {expected}: set server_name to one of those names"
            )
        }
        // BadSignature: a trusted CA of the same name did not sign it.
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the upstream's certificate (for {names}) is signed by a CA that is not trusted: set ca_file to that CA's certificate, or to this certificate itself, or pin it with {pin}"
        ),
        CertificateError::Expired => "the upstream's certificate has expired".to_string(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("the upstream's certificate expired on {}", date(*not_after))
        }
        CertificateError::NotValidYet => "the upstream's certificate is not valid yet".to_string(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the upstream's certificate is not valid before {}",
            date(*not_before)
        ),
        CertificateError::Revoked => "the upstream's certificate has been revoked".to_string(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            format!("the upstream's certificate (for {names}) is not for TLS servers")
        }
        CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
            format!(
                "the upstream's certificate (for {names}) is a CA certificate used as a server's: to trust it, put exactly this certificate in ca_file, or pin it with {pin}"
            )
        }
        other => format!("the upstream's certificate was refused: {other}"),
    }
}

/// The DNS names and addresses a certificate is for (its subject alternative names, or
/// its common name when it has none), for the sentence.
fn names(certificate: &CertificateDer<'_>) -> String {
    match subject_names(certificate) {
        None => "an unreadable certificate".to_string(),
        Some(names) if names.is_empty() => "no name".to_string(),
        Some(names) => names.join(", "),
    }
}

/// The DNS names and addresses a certificate is for: its subject alternative names, or its
/// common name when it has none. `None` when the certificate cannot be read.
pub(super) fn subject_names(certificate: &CertificateDer<'_>) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let mut names: Vec<String> = Vec::new();
    if let Ok(Some(alternative)) = parsed.subject_alternative_name() {
        for name in &alternative.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_owned),
        );
    }
    Some(names)
}

/// A validity date for people: `2026-01-31`.
fn date(time: UnixTime) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(time.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()[..10].to_string()
}

/// What went wrong in a TLS handshake with the upstream, in one sentence: the
/// [`CertificateProblem`] when postern refused the certificate, else the error.
pub fn describe(error: &io::Error) -> String {
    let rustls_error = error.get_ref().and_then(|e| e.downcast_ref::<Error>());
    match rustls_error {
        Some(Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) => {
            match other.downcast_ref::<CertificateProblem>() {
                Some(problem) => problem.0.clone(),
                None => error.to_string(),
            }
        }
        Some(Error::AlertReceived(alert)) => {
            format!("the upstream ended the handshake with the alert {alert:?}")
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_with_or_without_colons_in_any_case() {
        let fp = fingerprint(b"certificate");
        let text = fingerprint_text(&fp);
        assert_eq!(text.len(), 95);
        assert_eq!(parse_fingerprint(&text), Some(fp));
        assert_eq!(
            parse_fingerprint(&text.replace(':', "").to_lowercase()),
            Some(fp)
        );
        assert_eq!(parse_fingerprint("AB:CD"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }
}
