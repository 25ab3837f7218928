//! TLS with rustls: the acceptor a listener terminates TLS with, and the connector lb uses
//! towards `https://` members.
//!
//! A listener holds one certificate per `[[listener.tls]]` block. The certificate for a handshake
//! is the first whose own names (wildcards included) cover the client's SNI; with no SNI, or none
//! that matches, the first block's. Towards members lb verifies against the configured CA (or the
//! system's roots), sends SNI, and presents a client certificate for mTLS when one is set.
use crate::config::MemberUrl;
use crate::config::tls::{ServerCert, UpstreamTls, provider};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no trusted root certificates: the system has none and no `ca` is set")]
    NoRoots,
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Picks a listener's certificate by SNI.
#[derive(Debug)]
struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
}

impl SniResolver {
    fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
        let Ok(der) = key.end_entity_cert() else { return false };
        let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return false };
        cert.verify_is_valid_for_subject_name(name).is_ok()
    }

    fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni.and_then(|s| ServerName::try_from(s).ok());
        name.and_then(|n| self.certs.iter().find(|k| Self::covers(k, &n)))
            .or_else(|| self.certs.first())
            .cloned()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

/// The server side of a listener's TLS; `alpn` lists the protocols offered, most preferred first.
pub fn acceptor(
    certs: &[Arc<ServerCert>],
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let resolver = SniResolver { certs: certs.iter().map(|c| Arc::clone(&c.key)).collect() };
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    if let Some(t) = tickets(certs) {
        cfg.ticketer = t;
    }
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

type Ticketer = Arc<dyn rustls::server::ProducesTickets>;

/// Session tickets (TLS 1.3, and TLS 1.2 for clients that ask), sealed with keys lb makes; rustls
/// rotates them every 6 hours and still accepts the previous one. A reload builds every
/// listener's TLS configuration anew, and without this rustls resumed only from a session cache
/// of 256 per configuration, which a reload emptied. So the ticketer outlives a configuration:
/// one per set of certificates, kept while lb runs (the last [`TICKETERS_KEPT`] sets). A reload
/// that keeps a listener's certificates keeps its sessions; one that changes them (a rotated
/// certificate) starts with new keys, so that every client sees the new certificate at once
/// rather than resuming a session the old one authenticated. None if the system gives no
/// randomness for keys: lb then falls back to that cache.
fn tickets(certs: &[Arc<ServerCert>]) -> Option<Ticketer> {
    type Kept = Vec<(Vec<Vec<u8>>, Ticketer)>;
    static KEPT: std::sync::Mutex<Kept> = std::sync::Mutex::new(Vec::new());
    let names: Vec<Vec<u8>> =
        certs.iter().flat_map(|c| c.key.cert.iter().map(|d| d.as_ref().to_vec())).collect();
    // Only configuration builds come here; a poisoned lock still holds a usable list.
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = kept.iter().find(|(n, _)| *n == names) {
        return Some(Arc::clone(t));
    }
    let t = rustls::crypto::ring::Ticketer::new().ok()?;
    if kept.len() >= TICKETERS_KEPT {
        kept.remove(0);
    }
    kept.push((names, Arc::clone(&t)));
    Some(t)
}

/// Sets of certificates whose ticket keys lb keeps (a few per listener, over reloads).
const TICKETERS_KEPT: usize = 64;

/// Terminate TLS on a client connection within `wait`. A failed or timed-out handshake is logged
/// with the client and the reason, and gives None: only that connection is closed.
pub async fn accept<S>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: S,
    client: std::net::SocketAddr,
    wait: std::time::Duration,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(wait, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::warn!(%client, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%client, "TLS handshake timed out after {wait:?}");
            None
        }
    }
}

/// The system's trusted roots, loaded once per process.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: std::sync::OnceLock<Arc<RootCertStore>> = std::sync::OnceLock::new();
    if let Some(r) = ROOTS.get() {
        return Ok(Arc::clone(r));
    }
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::NoRoots);
    }
    Ok(Arc::clone(ROOTS.get_or_init(|| Arc::new(store))))
}

/// How lb connects to one `https://` member: the connector and the name it sends and verifies.
#[derive(Clone)]
pub struct Upstream {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
    settings: Arc<UpstreamTls>,
}

impl Upstream {
    /// Whether both were made from the same settings (certificates compared by content).
    pub fn same_as(&self, other: &Upstream) -> bool {
        self.server_name == other.server_name && self.settings.same_as(&other.settings)
    }

    pub fn new(url: &MemberUrl, tls: &Arc<UpstreamTls>) -> Result<Upstream, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = if tls.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        } else {
            let roots = match &tls.ca {
                Some(ca) => {
                    let mut store = RootCertStore::empty();
                    for c in ca {
                        store.add(c.clone())?;
                    }
                    Arc::new(store)
                }
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut cfg = match &tls.client {
            Some(key) => {
                builder.with_client_cert_resolver(Arc::new(ClientCert(Some(Arc::clone(key)))))
            }
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = tls.server_name.clone().unwrap_or_else(|| url.host.clone());
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
        Ok(Upstream {
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            server_name,
            settings: Arc::clone(tls),
        })
    }
}

/// Presents the configured client certificate whenever a member asks for one.
#[derive(Debug)]
struct ClientCert(Option<Arc<CertifiedKey>>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

/// `insecure = true`: accept any member certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        Arc::new(CertifiedKey::from_der(vec![c.cert.der().clone()], der, &provider()).unwrap())
    }

    #[test]
    fn sni_picks_the_certificate_that_covers_the_name() {
        let (a, b) = (key(&["a.test"]), key(&["*.b.test"]));
        let r = SniResolver { certs: vec![Arc::clone(&a), Arc::clone(&b)] };
        assert!(Arc::ptr_eq(&r.choose(Some("x.b.test")).unwrap(), &b));
        assert!(Arc::ptr_eq(&r.choose(Some("a.test")).unwrap(), &a));
        // A wildcard covers one label only; unknown names and no SNI get the first block.
        assert!(Arc::ptr_eq(&r.choose(Some("x.y.b.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&r.choose(Some("other.test")).unwrap(), &a));
        assert!(Arc::ptr_eq(&r.choose(None).unwrap(), &a));
    }
}
