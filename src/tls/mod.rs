//! rustls configurations, built once at start and shared by `Arc`: the server side that
//! mail clients see, and the client side postern uses towards the upstream.

pub mod alpn_challenge;
pub mod certificates;
pub mod stream;
pub mod trust;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::TlsConfig;
pub use certificates::Certificates;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {source}")]
    Certificates {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot read private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: certificate and key do not fit together: {1}")]
    Mismatch(String, rustls::Error),
    #[error("the TLS library refuses the configuration: {0}")]
    Provider(rustls::Error),
    #[error("cannot build the HTTPS client: {0}")]
    Http(String),
    #[error("cannot generate the development certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load the system's root certificates: {0}")]
    SystemRoots(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes a self-signed certificate for `localhost` at the configured paths when neither
/// file exists. Returns whether it did, so the caller can warn.
pub fn ensure_development_certificate(config: &TlsConfig) -> Result<bool, TlsError> {
    if config.cert.exists() || config.key.exists() {
        return Ok(false);
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_new_file(&config.cert, generated.cert.pem().as_bytes(), 0o644)?;
    write_new_file(
        &config.key,
        generated.key_pair.serialize_pem().as_bytes(),
        0o600,
    )?;
    Ok(true)
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let write_error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)
}

/// The configuration mail clients handshake with: TLS 1.2 and 1.3, no client certificates.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(config, None)
}

/// A certificate obtained at run time (ACME), served before the configured ones.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Issued {
    /// Reads a PEM chain and key.
    pub fn from_pem(chain: &str, key: &str) -> Result<Issued, TlsError> {
        let pem_error = |source| TlsError::Certificates {
            path: "the issued certificate".into(),
            source,
        };
        let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error)?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: "the issued certificate".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(pem_error)?;
        Ok(Issued { chain, key })
    }
}

/// Like [`server_config`], with `issued` served first (the default) when there is one.
pub fn server_config_with(
    config: &TlsConfig,
    issued: Option<&Issued>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut pairs = Vec::new();
    if let Some(issued) = issued {
        pairs.push((
            "the ACME certificate".to_string(),
            issued.chain.clone(),
            issued.key.clone_key(),
        ));
    }
    for (cert, key) in std::iter::once((&config.cert, &config.key)).chain(
        config
            .certificates
            .iter()
            .map(|pair| (&pair.cert, &pair.key)),
    ) {
        let chain = load_certificates(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
            path: key.clone(),
            source,
        })?;
        pairs.push((cert.display().to_string(), chain, key));
    }
    server_config_for(Certificates::new(pairs)?)
}

/// The configuration mail clients handshake with, serving `certificates`.
pub fn server_config_for(certificates: Certificates) -> Result<Arc<ServerConfig>, TlsError> {
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certificates));
    Ok(Arc::new(server))
}

/// An HTTPS client for postern's own requests (token endpoints, OpenID discovery, ACME):
/// verified against the system roots or `ca_file`, no redirects, `timeout` for each
/// request.
pub fn https_client(
    ca_file: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<reqwest::Client, TlsError> {
    let tls = client_config(ca_file, &[])?;
    reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| TlsError::Http(error.to_string()))
}

/// The configuration for connections to an upstream: trusted are the CAs in `ca_file`
/// (the system's roots when there is none), each certificate of `ca_file` exactly as it
/// is, and the certificates whose SHA-256 is in `pins` (see [`trust`]). Session
/// resumption is on (rustls' default cache).
pub fn client_config(
    ca_file: Option<&Path>,
    pins: &[[u8; 32]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    match ca_file {
        Some(path) => {
            pinned = load_certificates(path)?;
            // A certificate that cannot be an anchor (a server's own) is still a pin.
            roots.add_parsable_certificates(pinned.iter().cloned());
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            if roots.add_parsable_certificates(loaded.certs).0 == 0 && pins.is_empty() {
                let why = loaded
                    .errors
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "none found".into());
                return Err(TlsError::SystemRoots(why));
            }
        }
    }
    let verifier = trust::UpstreamTrust::new(roots, pinned, pins.to_vec(), provider())
        .map_err(TlsError::Provider)?;
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(client))
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_generates_a_usable_pair_and_second_start_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("certs/postern.crt"),
            key: dir.path().join("certs/postern.key"),
            certificates: Vec::new(),
            acme: None,
        };
        assert!(ensure_development_certificate(&config).unwrap());
        let first = std::fs::read(&config.cert).unwrap();
        assert!(!ensure_development_certificate(&config).unwrap());
        assert_eq!(std::fs::read(&config.cert).unwrap(), first);
        server_config(&config).unwrap();
        let client = client_config(Some(&config.cert), &[]).unwrap();
        assert!(client.enable_sni);
    }

    #[test]
    fn a_missing_key_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig {
            cert: dir.path().join("c.pem"),
            key: dir.path().join("k.pem"),
            certificates: Vec::new(),
            acme: None,
        };
        ensure_development_certificate(&config).unwrap();
        std::fs::remove_file(&config.key).unwrap();
        let error = server_config(&config).unwrap_err().to_string();
        assert!(error.contains("k.pem"), "{error}");
    }
}
