//! A throw-away certificate authority for tests: one CA per peer, leaves for
//! "localhost" / 127.0.0.1.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub struct TestCa {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// Where `ca_pem` was written (`<dir>/ca.pem`).
    pub ca_path: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// Creates a new CA and writes its certificate to `<dir>/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "postern test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_pem = cert.pem();
        let ca_path = dir.join("ca.pem");
        write(&ca_path, ca_pem.as_bytes(), 0o644);
        TestCa {
            ca_pem,
            ca_path,
            cert,
            key,
        }
    }

    /// Issues a server/client leaf for `sans` (default "localhost" and "127.0.0.1" when
    /// empty). Writes `<dir>/<name>.pem` (leaf followed by the CA: a full chain) and
    /// `<dir>/<name>-key.pem` (PKCS#8), and returns (chain path, key path).
    pub fn issue(&self, dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        self.issue_with(dir, name, sans, |_| {})
    }

    /// Like [`TestCa::issue`], with the leaf's parameters changed by `edit` first (its
    /// validity dates, say).
    pub fn issue_with(
        &self,
        dir: &Path,
        name: &str,
        sans: &[&str],
        edit: impl FnOnce(&mut CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let sans: Vec<String> = if sans.is_empty() {
            vec!["localhost".into(), "127.0.0.1".into()]
        } else {
            sans.iter().map(|s| s.to_string()).collect()
        };
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(sans).expect("leaf params (bad SAN?)");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        edit(&mut params);
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        write(
            &cert_path,
            format!("{}{}", leaf.pem(), self.ca_pem).as_bytes(),
            0o644,
        );
        write(&key_path, key.serialize_pem().as_bytes(), 0o600);
        (cert_path, key_path)
    }
}

fn write(path: &Path, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
