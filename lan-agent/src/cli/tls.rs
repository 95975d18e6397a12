//! `cairn tls ca create` and `cairn tls cert create`: a private CA and the certificates
//! servers, clients and WAN routers use, written in the current directory under Consul's
//! file names (`consul-agent-ca.pem`, `dc1-server-consul-0.pem`, ...).
//!
//! Keys are ECDSA P-256. A server certificate names `server.<dc>.<domain>` (and
//! `<node>.server.<dc>.<domain>` with `-node`); that name is what WAN routers check, so only
//! holders of a server certificate from the one CA join the WAN pool. Existing files are
//! never overwritten: a CA refuses to be recreated and certificates take the next free
//! number, as Consul's command does.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::fail;

#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Certificate authorities
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificates signed by the CA
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a self-signed CA
    Create(CaArgs),
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a certificate for a server, a client or the CLI
    Create(CertArgs),
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Days the CA is valid for
    #[arg(long, default_value_t = 1825)]
    days: u32,
    /// The cluster's DNS domain (names the files)
    #[arg(long, default_value = "consul")]
    domain: String,
    /// Common name of the CA
    #[arg(long = "common-name", default_value = "")]
    common_name: String,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// A server certificate (also what a WAN router presents)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    server: bool,
    /// A client agent certificate
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    client: bool,
    /// A certificate for the CLI
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    cli: bool,
    /// Datacenter the certificate is for
    #[arg(long, default_value = "dc1")]
    dc: String,
    #[arg(long, default_value = "consul")]
    domain: String,
    /// Also name NODE.server.DC.DOMAIN (servers)
    #[arg(long, default_value = "")]
    node: String,
    /// Days the certificate is valid for
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// The CA certificate (default DOMAIN-agent-ca.pem)
    #[arg(long, default_value = "")]
    ca: String,
    /// The CA key (default DOMAIN-agent-ca-key.pem)
    #[arg(long, default_value = "")]
    key: String,
    /// Another DNS name for the certificate (repeatable; localhost is always included)
    #[arg(long = "additional-dnsname")]
    additional_dnsname: Vec<String>,
    /// Another IP address for the certificate (repeatable; 127.0.0.1 is always included)
    #[arg(long = "additional-ipaddress")]
    additional_ipaddress: Vec<String>,
}

pub fn run(cmd: TlsCommand) -> u8 {
    let dir = Path::new(".");
    let outcome = match cmd {
        TlsCommand::Ca(CaCommand::Create(a)) => create_ca(dir, &a),
        TlsCommand::Cert(CertCommand::Create(a)) => create_cert(dir, &a),
    };
    match outcome {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => fail(format!("==> {e}")),
    }
}

/// `DOMAIN-agent-ca.pem` and `DOMAIN-agent-ca-key.pem`.
pub fn ca_file_names(domain: &str) -> (String, String) {
    (
        format!("{domain}-agent-ca.pem"),
        format!("{domain}-agent-ca-key.pem"),
    )
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks a little behind.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Writes a new CA; refuses when either file exists. Returns what to print.
pub fn create_ca(dir: &Path, a: &CaArgs) -> Result<Vec<String>, String> {
    if a.days == 0 {
        return Err("-days must be at least 1".into());
    }
    let (cert_name, key_name) = ca_file_names(&a.domain);
    for f in [&cert_name, &key_name] {
        if dir.join(f).exists() {
            return Err(format!("CA file {f} already exists"));
        }
    }
    let key = KeyPair::generate().map_err(|e| format!("generating the CA key: {e}"))?;
    let mut params = CertificateParams::default();
    let cn = if a.common_name.is_empty() {
        format!("Cairn Agent CA {}", rand::random::<u64>())
    } else {
        a.common_name.clone()
    };
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, a.days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("signing the CA: {e}"))?;
    write_new(&dir.join(&cert_name), &cert.pem(), false)?;
    write_new(&dir.join(&key_name), &key.serialize_pem(), true)?;
    Ok(vec![
        format!("==> Saved {cert_name}"),
        format!("==> Saved {key_name}"),
    ])
}

/// Writes a certificate signed by the CA under the first free `DC-KIND-DOMAIN-N.pem`.
pub fn create_cert(dir: &Path, a: &CertArgs) -> Result<Vec<String>, String> {
    let kind = match (a.server, a.client, a.cli) {
        (true, false, false) => "server",
        (false, true, false) => "client",
        (false, false, true) => "cli",
        _ => return Err("Please provide either -server, -client, or -cli".into()),
    };
    if a.days == 0 {
        return Err("-days must be at least 1".into());
    }
    if !a.node.is_empty() && kind != "server" {
        return Err("-node requires -server".into());
    }
    let (default_ca, default_key) = ca_file_names(&a.domain);
    let ca_name = if a.ca.is_empty() { &default_ca } else { &a.ca };
    let key_name = if a.key.is_empty() {
        &default_key
    } else {
        &a.key
    };
    let (ca_path, key_path) = (dir.join(ca_name), dir.join(key_name));
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
    };
    let ca_key = KeyPair::from_pem(&read(&key_path)?)
        .map_err(|e| format!("{} is not a private key: {e}", key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_path)?, ca_key)
        .map_err(|e| format!("{} is not a CA certificate: {e}", ca_path.display()))?;

    let (common_name, mut dns): (String, Vec<String>) = match kind {
        "server" => {
            let name = format!("server.{}.{}", a.dc, a.domain);
            let mut names = vec![name.clone()];
            if !a.node.is_empty() {
                names.push(format!("{}.{name}", a.node));
            }
            (name, names)
        }
        "client" => {
            let name = format!("client.{}.{}", a.dc, a.domain);
            (name.clone(), vec![name])
        }
        _ => {
            let name = format!("cli.client.{}.{}", a.dc, a.domain);
            (name.clone(), vec![name])
        }
    };
    dns.push("localhost".into());
    dns.extend(a.additional_dnsname.iter().cloned());
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into()];
    for raw in &a.additional_ipaddress {
        let ip: IpAddr = raw
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let mut params = CertificateParams::new(dns).map_err(|e| format!("bad DNS name: {e}"))?;
    params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match kind {
        "cli" => vec![ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, a.days);
    let key = KeyPair::generate().map_err(|e| format!("generating a key: {e}"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("signing the certificate: {e}"))?;

    let prefix = format!("{}-{kind}-{}", a.dc, a.domain);
    let n = (0..)
        .find(|n| {
            !dir.join(format!("{prefix}-{n}.pem")).exists()
                && !dir.join(format!("{prefix}-{n}-key.pem")).exists()
        })
        .expect("invariant: some number is free");
    let cert_file = format!("{prefix}-{n}.pem");
    let key_file = format!("{prefix}-{n}-key.pem");
    write_new(&dir.join(&cert_file), &cert.pem(), false)?;
    write_new(&dir.join(&key_file), &key.serialize_pem(), true)?;
    let mut out = Vec::new();
    if kind == "server" {
        out.push(
            "==> WARNING: Server Certificates grants authority to become a\n    server and \
             join the WAN pool. Do not distribute them to hosts that are not\n    servers or \
             their WAN routers."
                .to_string(),
        );
    }
    out.push(format!("==> Using {ca_name} and {key_name}"));
    out.push(format!("==> Saved {cert_file}"));
    out.push(format!("==> Saved {key_file}"));
    Ok(out)
}

/// Creates `path` (never replacing a file); keys are readable by their owner only.
fn write_new(path: &Path, body: &str, secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(body.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_args() -> CaArgs {
        CaArgs {
            days: 30,
            domain: "consul".into(),
            common_name: String::new(),
        }
    }

    fn cert_args(kind: &str) -> CertArgs {
        CertArgs {
            server: kind == "server",
            client: kind == "client",
            cli: kind == "cli",
            dc: "dc2".into(),
            domain: "consul".into(),
            node: String::new(),
            days: 30,
            ca: String::new(),
            key: String::new(),
            additional_dnsname: vec![],
            additional_ipaddress: vec!["127.0.0.11".into()],
        }
    }

    #[test]
    fn files_have_consuls_names_and_are_never_overwritten() {
        let dir = tempdir();
        let out = create_ca(&dir, &ca_args()).unwrap();
        assert_eq!(
            out,
            vec![
                "==> Saved consul-agent-ca.pem",
                "==> Saved consul-agent-ca-key.pem"
            ]
        );
        assert!(
            create_ca(&dir, &ca_args())
                .unwrap_err()
                .contains("already exists")
        );
        create_cert(&dir, &cert_args("server")).unwrap();
        create_cert(&dir, &cert_args("server")).unwrap();
        create_cert(&dir, &cert_args("client")).unwrap();
        for f in [
            "dc2-server-consul-0.pem",
            "dc2-server-consul-0-key.pem",
            "dc2-server-consul-1.pem",
            "dc2-client-consul-0.pem",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("dc2-server-consul-0-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(create_cert(&dir, &cert_args("none")).is_err());
    }

    #[test]
    fn a_server_certificate_chains_to_the_ca_and_names_the_server() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let dir = tempdir();
        create_ca(&dir, &ca_args()).unwrap();
        let mut a = cert_args("server");
        a.node = "server1".into();
        create_cert(&dir, &a).unwrap();
        let ca = CertificateDer::from_pem_file(dir.join("consul-agent-ca.pem")).unwrap();
        let leaf = CertificateDer::from_pem_file(dir.join("dc2-server-consul-0.pem")).unwrap();
        let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        ee.verify_for_usage(
            algs.all,
            &[anchor],
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .expect("chains to the CA");
        for name in [
            "server.dc2.consul",
            "server1.server.dc2.consul",
            "localhost",
        ] {
            let n = ServerName::try_from(name).unwrap();
            ee.verify_is_valid_for_subject_name(&n).expect(name);
        }
        let ip = ServerName::try_from("127.0.0.11").unwrap();
        ee.verify_is_valid_for_subject_name(&ip).unwrap();
        let other = ServerName::try_from("server.dc1.consul").unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cairn-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
