//! TLS termination (rustls) for the whole HTTP listener — GraphQL, the portal, `/graphql/ws`
//! and the agent gateway — and the development certificate generator behind
//! `maosic-server tls dev-cert`. Only TLS 1.2 and 1.3 are offered (rustls implements nothing
//! older), so a TLS 1.0/1.1 client gets a `protocol_version` alert and no session.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[tls]` of the configuration. Empty `cert` and `key`: plain HTTP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    #[serde(default)]
    pub cert: String,
    /// PEM private key of the leaf certificate.
    #[serde(default)]
    pub key: String,
    /// PEM CA bundle; when set, every client must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca: String,
}

impl TlsConfig {
    /// Whether TLS is configured.
    pub fn enabled(&self) -> bool {
        !self.cert.trim().is_empty() || !self.key.trim().is_empty()
    }
}

/// Errors building the TLS configuration or the development certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("tls: {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Only one of `cert` and `key` is set.
    #[error("tls: cert and key must both be set (or both empty for plain HTTP)")]
    Incomplete,
    /// rustls refused the certificate, key or CA.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used to verify clients.
    #[error("tls: client_ca: {0}")]
    ClientCa(String),
    /// Certificate generation failed.
    #[error("tls dev-cert: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a generated file failed.
    #[error("tls dev-cert: cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(format!("malformed certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The rustls server configuration for `[tls]`, or `None` for plain HTTP.
pub fn server_config(config: &TlsConfig) -> Result<Option<ServerConfig>, TlsError> {
    if !config.enabled() {
        return Ok(None);
    }
    if config.cert.trim().is_empty() || config.key.trim().is_empty() {
        return Err(TlsError::Incomplete);
    }
    let cert_path = Path::new(config.cert.trim());
    let key_path = Path::new(config.key.trim());
    let certs = read_certs(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Pem {
        path: key_path.to_owned(),
        reason: format!("no usable private key: {e}"),
    })?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if config.client_ca.trim().is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in read_certs(Path::new(config.client_ca.trim()))? {
            roots.add(cert)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::ClientCa(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder.with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(server))
}

/// The SHA-256 fingerprint of a DER certificate (what `maosic-agent --tls-pin-sha256` takes).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What [`dev_cert`] wrote.
#[derive(Debug, Clone)]
pub struct DevCert {
    /// The CA certificate (give it to agents: `--tls-ca`).
    pub ca: PathBuf,
    /// The server certificate chain (`tls.cert`).
    pub cert: PathBuf,
    /// The server key (`tls.key`).
    pub key: PathBuf,
    /// A client certificate and key signed by the same CA (for mutual TLS), when asked for.
    pub client: Option<(PathBuf, PathBuf)>,
    /// SHA-256 of the server certificate (`--tls-pin-sha256`).
    pub server_sha256: String,
}

/// Options of [`dev_cert`].
#[derive(Debug, Clone)]
pub struct DevCertOptions {
    /// Host names and IP addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Validity in days from now.
    pub days: u32,
    /// Also issue a client certificate with this common name (for mutual TLS).
    pub client: Option<String>,
}

fn san(host: &str) -> Result<SanType, rcgen::Error> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(host.try_into()?)),
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let io = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        // Created private: a key is never readable by others, not even for a moment.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    Ok(())
}

/// Generates a development CA and a server certificate it signs (ECDSA P-256), and optionally
/// a client certificate, into `dir`. Not for production: the CA key is written next to them.
pub fn dev_cert(dir: &Path, options: &DevCertOptions) -> Result<DevCert, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(options.days.max(1)));

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "MAOSIC development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = now - time::Duration::minutes(5);
    ca_params.not_after = until;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let leaf = |cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = until;
        let cert = params.signed_by(&key, &issuer)?;
        Ok::<_, rcgen::Error>((cert, key))
    };
    let hosts = if options.hosts.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        options.hosts.clone()
    };
    let sans = hosts
        .iter()
        .map(|h| san(h))
        .collect::<Result<Vec<_>, _>>()?;
    let (server_cert, server_key) = leaf(&hosts[0], sans, ExtendedKeyUsagePurpose::ServerAuth)?;

    let out = DevCert {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        client: None,
        server_sha256: fingerprint(server_cert.der()),
    };
    write(&out.ca, &ca_cert.pem(), false)?;
    write(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;
    write(&out.cert, &server_cert.pem(), false)?;
    write(&out.key, &server_key.serialize_pem(), true)?;
    let client = match &options.client {
        None => None,
        Some(cn) => {
            let (cert, key) = leaf(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
            let paths = (dir.join("client.pem"), dir.join("client-key.pem"));
            write(&paths.0, &cert.pem(), false)?;
            write(&paths.1, &key.serialize_pem(), true)?;
            Some(paths)
        }
    };
    Ok(DevCert { client, ..out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_without_cert_and_key_and_an_error_with_only_one() {
        assert!(server_config(&TlsConfig::default()).unwrap().is_none());
        let half = TlsConfig {
            cert: "server.pem".into(),
            ..Default::default()
        };
        assert!(matches!(server_config(&half), Err(TlsError::Incomplete)));
    }

    #[test]
    fn a_generated_pair_loads_with_and_without_client_verification() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dev_cert(
            dir.path(),
            &DevCertOptions {
                hosts: vec!["localhost".into(), "127.0.0.1".into()],
                days: 2,
                client: Some("lab-agent".into()),
            },
        )
        .unwrap();
        assert_eq!(dev.server_sha256.len(), 64);
        let mut config = TlsConfig {
            cert: dev.cert.display().to_string(),
            key: dev.key.display().to_string(),
            client_ca: String::new(),
        };
        assert!(server_config(&config).unwrap().is_some());
        config.client_ca = dev.ca.display().to_string();
        assert!(server_config(&config).unwrap().is_some());
        let der = CertificateDer::from_pem_file(&dev.cert).unwrap();
        assert_eq!(fingerprint(der.as_ref()), dev.server_sha256);
    }

    #[test]
    fn a_missing_or_empty_pem_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let config = TlsConfig {
            cert: empty.display().to_string(),
            key: empty.display().to_string(),
            client_ca: String::new(),
        };
        let e = server_config(&config).unwrap_err().to_string();
        assert!(e.contains("empty.pem"), "{e}");
    }
}
