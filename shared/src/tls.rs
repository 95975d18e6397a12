//! PEM files for TLS, read the same way by the agent's HTTPS listener, its RPC port, the
//! CLI and the WAN router: a certificate list (a CA file or a chain, never empty) and a
//! private key, with errors that name the file and what it was meant to be; and the
//! settings one TLS interface is configured with.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One interface's TLS settings (HTTPS or the RPC port), merged from Consul's layers:
/// the older top-level keys, `tls.defaults`, then `tls.https` or `tls.internal_rpc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Clients must present a certificate from `ca_file`.
    pub verify_incoming: bool,
    /// Outgoing connections use TLS and check the server's certificate against `ca_file`.
    pub verify_outgoing: bool,
    /// Outgoing RPC also checks the certificate names `server.<dc>.<domain>`.
    pub verify_server_hostname: bool,
}

/// `what path: reason`, e.g. `CA file /etc/ca.pem: no certificate in it`.
pub fn file_error(what: &str, path: &Path, reason: impl std::fmt::Display) -> String {
    format!("{what} {}: {reason}", path.display())
}

/// Every certificate in a PEM file; an empty file is an error.
pub fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in it"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("key file", path, e))
}

/// A root store of the certificates in a CA file.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates("CA file", path)? {
        roots.add(c).map_err(|e| file_error("CA file", path, e))?;
    }
    Ok(roots)
}
