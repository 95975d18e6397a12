//! TLS on the server RPC port, as Consul's `tls.internal_rpc` has it.
//!
//! A connection that opens with [`PROTO_TLS`](super::wire::PROTO_TLS) runs a TLS handshake
//! and then speaks the plain protocol inside it. A server with a certificate accepts such
//! connections; under `verify_incoming` it accepts nothing else and wants a client
//! certificate from its CA. A caller under `verify_outgoing` dials only with TLS and checks
//! the server's certificate against the CA; with `verify_server_hostname` the certificate
//! must also name `server.<dc>.<domain>`, so a client agent's certificate cannot pass for a
//! server's (without it, as in Consul, any certificate of the CA will do).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::TlsSettings;

/// The serving side: accepts TLS connections, and under `required` only those.
#[derive(Clone)]
pub struct ServerTls {
    pub(super) acceptor: TlsAcceptor,
    pub(super) required: bool,
}

/// The dialling side: every connection is TLS, checked against the CA.
#[derive(Clone)]
pub struct ClientTls {
    pub(super) connector: TlsConnector,
    pub(super) name: ServerName<'static>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_and_key(
    cert: &Path,
    key: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    String,
> {
    Ok((
        crate::tls::certificates("certificate file", cert)?,
        crate::tls::private_key(key)?,
    ))
}

impl ServerTls {
    /// What a server serves with these settings: `None` without a certificate (plain RPC
    /// only), an error when `verify_incoming` lacks what it needs.
    pub fn from_settings(s: &TlsSettings) -> Result<Option<Self>, String> {
        let (cert, key) = match (&s.cert_file, &s.key_file) {
            (Some(c), Some(k)) => (c, k),
            _ if s.verify_incoming => {
                return Err(
                    "verify_incoming on the RPC port needs tls cert_file and key_file".into(),
                );
            }
            _ => return Ok(None),
        };
        let (chain, key) = cert_and_key(cert, key)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &s.ca_file {
            Some(ca) => {
                let roots = Arc::new(crate::tls::roots(ca)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
                // Without verify_incoming a client may come without a certificate; one it
                // does present must still chain to the CA.
                let verifier = if s.verify_incoming {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
            }
            None if s.verify_incoming => {
                return Err("verify_incoming on the RPC port needs tls ca_file".into());
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key do not match: {e}"))?;
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            required: s.verify_incoming,
        }))
    }
}

impl ClientTls {
    /// What a caller in datacenter `dc` dials with: `None` without `verify_outgoing`
    /// (`verify_server_hostname` implies it, so the name check is never silently off).
    pub fn from_settings(s: &TlsSettings, dc: &str, domain: &str) -> Result<Option<Self>, String> {
        if !s.verify_outgoing && !s.verify_server_hostname {
            return Ok(None);
        }
        let Some(ca) = &s.ca_file else {
            return Err("verify_outgoing on the RPC port needs tls ca_file".into());
        };
        let roots = Arc::new(crate::tls::roots(ca)?);
        let name = format!("server.{dc}.{}", domain.trim_end_matches('.'));
        let name = ServerName::try_from(name.clone())
            .map_err(|_| format!("{name:?} is not a valid server name"))?;
        let provider = provider();
        let verifier: Arc<dyn ServerCertVerifier> = if s.verify_server_hostname {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?
        } else {
            Arc::new(AnyNameFromCa {
                roots,
                provider: provider.clone(),
            })
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&s.cert_file, &s.key_file) {
            (Some(c), Some(k)) => {
                let (chain, key) = cert_and_key(c, k)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("certificate and key do not match: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Some(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        }))
    }
}

/// Chain to the CA, validity and key usage, but any name: Consul's `verify_outgoing`
/// without `verify_server_hostname`.
#[derive(Debug)]
struct AnyNameFromCa {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyNameFromCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use async_trait::async_trait;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::rpc::RpcError;
    use crate::rpc::client::{CallError, RpcClient};
    use crate::rpc::server::{Handler, serve};
    use crate::rpc::wire::{Body, Reply};

    struct Echo;

    #[async_trait]
    impl Handler for Echo {
        async fn handle(&self, _: IpAddr, body: Body) -> Result<Reply, RpcError> {
            match body {
                Body::Raft(b) => Ok(Reply::Raft(b)),
                _ => Err(RpcError::internal("unexpected")),
            }
        }
    }

    /// A CA in `dir` (`ca.pem`) that issues leaf certificates for DNS names.
    struct Ca {
        dir: std::path::PathBuf,
        issuer: Issuer<'static, KeyPair>,
    }

    impl Ca {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("cairn-rpc-tls-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "test CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            std::fs::write(dir.join("ca.pem"), p.self_signed(&key).unwrap().pem()).unwrap();
            Self {
                dir,
                issuer: Issuer::new(p, key),
            }
        }

        /// Settings with a new leaf for `name`, trusting this CA.
        fn settings(&self, name: &str) -> TlsSettings {
            let p = CertificateParams::new(vec![name.to_string()]).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            let (c, k) = (
                self.dir.join(format!("{name}.pem")),
                self.dir.join(format!("{name}-key.pem")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            TlsSettings {
                ca_file: Some(self.dir.join("ca.pem")),
                cert_file: Some(c),
                key_file: Some(k),
                ..TlsSettings::default()
            }
        }
    }

    impl Drop for Ca {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn serving(s: &TlsSettings) -> std::net::SocketAddr {
        let tls = ServerTls::from_settings(s).unwrap().expect("a certificate");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::new(Echo),
            Some(tls),
            TaskTracker::new(),
            CancellationToken::new(),
        ));
        addr
    }

    async fn call(tls: Option<ClientTls>, addr: std::net::SocketAddr) -> Result<Reply, CallError> {
        RpcClient::default()
            .with_tls(tls)
            .call(addr, Body::Raft(vec![5]), Duration::from_secs(5))
            .await
    }

    /// `verify_server_hostname` refuses a server whose certificate is the CA's but names
    /// no `server.<dc>.<domain>` (a client agent's, say); `verify_outgoing` alone takes
    /// it, as Consul's does; a real server certificate passes both.
    #[tokio::test]
    async fn verify_server_hostname_refuses_a_client_certificate_posing_as_a_server() {
        let ca = Ca::new("hostname");
        let impostor = serving(&TlsSettings {
            verify_incoming: true,
            ..ca.settings("client.dc1.consul")
        })
        .await;
        let server = serving(&TlsSettings {
            verify_incoming: true,
            ..ca.settings("server.dc1.consul")
        })
        .await;
        let caller = ca.settings("client.dc1.consul");
        let checked = ClientTls::from_settings(
            &TlsSettings {
                verify_outgoing: true,
                verify_server_hostname: true,
                ..caller.clone()
            },
            "dc1",
            "consul.",
        )
        .unwrap();
        let chain_only = ClientTls::from_settings(
            &TlsSettings {
                verify_outgoing: true,
                ..caller.clone()
            },
            "dc1",
            "consul",
        )
        .unwrap();
        let refused = call(checked.clone(), impostor).await;
        assert!(matches!(refused, Err(CallError::NotSent(_))), "{refused:?}");
        assert!(matches!(call(chain_only.clone(), impostor).await, Ok(Reply::Raft(b)) if b == [5]));
        assert!(matches!(call(checked.clone(), server).await, Ok(Reply::Raft(b)) if b == [5]));
        // A server of another datacenter is no server of this one.
        let dc2 = ClientTls::from_settings(
            &TlsSettings {
                verify_outgoing: true,
                verify_server_hostname: true,
                ..caller
            },
            "dc2",
            "consul",
        )
        .unwrap();
        assert!(matches!(
            call(dc2, server).await,
            Err(CallError::NotSent(_))
        ));
        // Plain RPC to a port under verify_incoming gets nothing.
        assert!(call(None, server).await.is_err());
    }

    /// Without `verify_incoming`, the port takes plain RPC and TLS without a client
    /// certificate; `verify_outgoing` without a CA, or `verify_incoming` without a
    /// certificate, is an error at start, not a port that fails every handshake.
    #[tokio::test]
    async fn tls_is_optional_without_verify_incoming_and_settings_are_checked() {
        let ca = Ca::new("optional");
        let server = serving(&ca.settings("server.dc1.consul")).await;
        assert!(call(None, server).await.is_ok());
        let anonymous = ClientTls::from_settings(
            &TlsSettings {
                ca_file: ca.settings("x").ca_file,
                verify_outgoing: true,
                ..TlsSettings::default()
            },
            "dc1",
            "consul",
        )
        .unwrap();
        assert!(call(anonymous, server).await.is_ok());
        let no_ca = ClientTls::from_settings(
            &TlsSettings {
                verify_server_hostname: true,
                ..TlsSettings::default()
            },
            "dc1",
            "consul",
        );
        assert!(no_ca.unwrap_err().contains("ca_file"));
        let no_cert = ServerTls::from_settings(&TlsSettings {
            verify_incoming: true,
            ..TlsSettings::default()
        });
        assert!(no_cert.unwrap_err().contains("cert_file"));
        assert!(
            ClientTls::from_settings(&TlsSettings::default(), "dc1", "consul")
                .unwrap()
                .is_none()
        );
    }
}
