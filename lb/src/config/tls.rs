//! Certificates and keys, loaded and checked while the config is validated.
//!
//! `lb check` must say which file is missing, unreadable or does not match its key, so the files
//! are read here, once per load (a reload reads them again, which is how certificates rotate).
//! The result is plain DER plus rustls's checked [`CertifiedKey`]; building TLS configs from it
//! is the `tls` module's job.
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider lb uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One `[[listener.tls]]` block: a certificate chain and its key, checked to match.
#[derive(Debug)]
pub struct ServerCert {
    pub cert_path: PathBuf,
    pub key: Arc<CertifiedKey>,
}

/// TLS towards `https://` members: `[balancer.NAME.tls]` with a member's overrides.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Trusted roots; None = the system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// Name to send as SNI and verify; None = the member's host.
    pub server_name: Option<String>,
    /// Client certificate for mTLS.
    pub client: Option<Arc<CertifiedKey>>,
    /// Skip verification (lb warns at every start).
    pub insecure: bool,
}

impl UpstreamTls {
    /// Same settings, certificates compared by content (a reload re-reads the files).
    pub fn same_as(&self, o: &UpstreamTls) -> bool {
        let client = match (&self.client, &o.client) {
            (None, None) => true,
            (Some(a), Some(b)) => a.cert == b.cert,
            _ => false,
        };
        client
            && self.ca == o.ca
            && self.server_name == o.server_name
            && self.insecure == o.insecure
    }
}

/// Read every certificate in a PEM file (a chain, leaf first; or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Read a private key (PKCS#8, RSA or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| format!("{}: no PKCS#8, RSA or SEC1 private key: {e}", path.display()))
}

/// Which of the two files a problem is in.
#[derive(Debug, PartialEq, Eq)]
pub enum PairError {
    Cert(String),
    Chain(String),
    Key(String),
}

impl PairError {
    pub fn message(&self) -> &str {
        match self {
            PairError::Cert(m) | PairError::Chain(m) | PairError::Key(m) => m,
        }
    }
}

/// Load a chain and its key, and check that the key belongs to the leaf certificate.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, PairError> {
    certified_key_with_chain(cert, None, key)
}

/// [`certified_key`], with the intermediates in a file of their own appended after the
/// certificate file's (Apache's `SSLCertificateChainFile`).
pub fn certified_key_with_chain(
    cert: &Path,
    intermediates: Option<&Path>,
    key: &Path,
) -> Result<Arc<CertifiedKey>, PairError> {
    let mut chain = load_certs(cert).map_err(PairError::Cert)?;
    if let Some(path) = intermediates {
        chain.extend(load_certs(path).map_err(PairError::Chain)?);
    }
    let der = load_key(key).map_err(PairError::Key)?;
    CertifiedKey::from_der(chain, der, &provider()).map(Arc::new).map_err(|e| {
        PairError::Key(format!(
            "{} does not go with the certificate {}: {e}",
            key.display(),
            cert.display()
        ))
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_key_must_match_its_certificate() {
        let dir = std::env::temp_dir().join(format!("lb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".into()]).unwrap();
        let cert = write(&dir, "a.pem", &a.cert.pem());
        let key_a = write(&dir, "a.key", &a.signing_key.serialize_pem());
        let key_b = write(&dir, "b.key", &b.signing_key.serialize_pem());
        assert!(certified_key(&cert, &key_a).is_ok());
        let e = certified_key(&cert, &key_b).unwrap_err();
        assert!(
            matches!(&e, PairError::Key(m) if m.contains("b.key") && m.contains("a.pem")),
            "{e:?}"
        );
        let e = certified_key(&dir.join("missing.pem"), &key_a).unwrap_err();
        assert!(matches!(&e, PairError::Cert(m) if m.contains("missing.pem")), "{e:?}");
        let e = certified_key(&key_a, &key_a).unwrap_err();
        assert!(matches!(&e, PairError::Cert(m) if m.contains("a.key")), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
