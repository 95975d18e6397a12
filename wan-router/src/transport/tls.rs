//! Mutual TLS for the WAN: both ends of every QUIC connection present a certificate from
//! the configured CA that names `server.<dc>.<domain>` (what `cairn tls cert create
//! -server` makes), and nothing else gets through the handshake.
//!
//! Routers join by address, so the name to check is not known before the handshake. Both
//! verifiers therefore take the candidate name from the certificate's own SANs (the first
//! `server.<dc>.<domain>` for this domain) and then run rustls' WebPKI verifiers with that
//! name: chain to the CA, validity, key usage and the name check itself are rustls'. A
//! client certificate (`client.dc1.consul`), one for another domain, or one from another
//! CA fails the handshake.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

/// The ALPN protocol routers speak.
pub const ALPN: &[u8] = b"cairn-wan/1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be read as what it should be (names both).
    #[error("{0}")]
    File(String),
    #[error(
        "{path} is not a server certificate of datacenter {dc:?} (it must name server.{dc}.{domain}; make one with `cairn tls cert create -server -dc {dc}`)"
    )]
    NotAServerCertificate {
        path: String,
        dc: String,
        domain: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the CA, this router's certificate and its key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: std::path::PathBuf,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

/// The two halves of the QUIC crypto configuration.
#[derive(Debug)]
pub struct Crypto {
    pub server: rustls::ServerConfig,
    pub client: rustls::ClientConfig,
}

/// The datacenter a certificate is a server certificate of, for `domain`, and the name it
/// is claimed under. Only a candidate: the verifiers then check the name properly.
pub fn server_identity(cert: &CertificateDer<'_>, domain: &str) -> Option<(String, String)> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let suffix = format!(".{domain}");
    ee.valid_dns_names().find_map(|name| {
        let dc = name
            .strip_prefix("server.")?
            .strip_suffix(suffix.as_str())?;
        (!dc.is_empty() && !dc.contains('.') && !dc.contains('*'))
            .then(|| (dc.to_string(), name.to_string()))
    })
}

fn server_name_of(
    cert: &CertificateDer<'_>,
    domain: &str,
) -> Result<ServerName<'static>, rustls::Error> {
    let (_, name) = server_identity(cert, domain).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::NotValidForName,
    ))?;
    ServerName::try_from(name)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
}

/// Loads the files and builds both sides' configuration, checking first that this
/// router's own certificate is a server certificate of `dc`.
pub fn load(files: &TlsFiles, dc: &str, domain: &str) -> Result<Crypto, TlsError> {
    let ca = cairn_shared::tls::certificates("CA file", &files.ca_file).map_err(TlsError::File)?;
    let chain = cairn_shared::tls::certificates("certificate file", &files.cert_file)
        .map_err(TlsError::File)?;
    let key = cairn_shared::tls::private_key(&files.key_file).map_err(TlsError::File)?;
    let own_dc = chain
        .first()
        .and_then(|c| server_identity(c, domain))
        .map(|(dc, _)| dc);
    if own_dc.as_deref() != Some(dc) {
        return Err(TlsError::NotAServerCertificate {
            path: files.cert_file.display().to_string(),
            dc: dc.to_string(),
            domain: domain.to_string(),
        });
    }
    build(ca, chain, key, domain)
}

/// Both configurations from certificates in memory.
pub fn build(
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    domain: &str,
) -> Result<Crypto, TlsError> {
    let cfg = |e: String| TlsError::Config(e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| cfg(format!("CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);

    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| cfg(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cfg(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ServerRoleClients {
            inner: clients,
            domain: domain.to_string(),
        }))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| cfg(format!("certificate and key: {e}")))?;
    server.alpn_protocols = vec![ALPN.to_vec()];

    let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| cfg(e.to_string()))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cfg(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerRoleServers {
            inner: servers,
            domain: domain.to_string(),
        }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| cfg(format!("certificate and key: {e}")))?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Crypto { server, client })
}

/// Accepts a connecting router only with a server certificate of this domain.
#[derive(Debug)]
struct ServerRoleClients {
    inner: Arc<dyn ClientCertVerifier>,
    domain: String,
}

impl ClientCertVerifier for ServerRoleClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let name = server_name_of(end_entity, &self.domain)?;
        webpki::EndEntityCert::try_from(end_entity)
            .and_then(|ee| ee.verify_is_valid_for_subject_name(&name))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts the router dialled only with a server certificate of this domain, whatever
/// address it was dialled at.
#[derive(Debug)]
struct ServerRoleServers {
    inner: Arc<WebPkiServerVerifier>,
    domain: String,
}

impl ServerCertVerifier for ServerRoleServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name_of(end_entity, &self.domain)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The provider the router uses everywhere (ring; no aws-lc).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}
