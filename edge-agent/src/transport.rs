//! How the agent reaches the server: a byte stream that the WebSocket protocol then runs over.
//! The stream is a TCP connection, optionally wrapped in TLS (rustls) that verifies the server
//! against the public web roots, a configured CA, or one pinned certificate; a client
//! certificate can be presented for mutual TLS. No I/O happens until [`Connector::connect`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to the server: what the WebSocket runs over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T> Io for T where T: AsyncRead + AsyncWrite + Unpin + Send {}

/// A boxed [`Io`], whatever the transport.
pub type BoxIo = Box<dyn Io>;

/// Errors in the transport settings (found at start-up, before any connection).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The pin is not a SHA-256 fingerprint.
    #[error("--tls-pin-sha256 must be the 64 hex digits of the SHA-256 of the server certificate (DER); got {0:?}")]
    BadPin(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// TLS settings given for a plain-text server URL, or a client certificate without its key.
    #[error("{0}")]
    Inconsistent(String),
}

/// How the agent verifies the server and identifies itself (command-line flags of `run`).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// Trust only the CA certificates in this PEM file (instead of the public web roots).
    pub ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this SHA-256 fingerprint (hex of the DER).
    pub pin_sha256: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key: Option<PathBuf>,
}

impl TlsSettings {
    /// True when any TLS option is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some()
            || self.pin_sha256.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem_error = |reason: String| TransportError::Pem {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("malformed certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TransportError::Pem {
        path: path.to_owned(),
        reason: format!("no usable private key: {e}"),
    })
}

/// Parses a SHA-256 pin (hex, colons allowed as in `openssl x509 -fingerprint`).
pub fn parse_pin(text: &str) -> Result<[u8; 32], TransportError> {
    let cleaned: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(cleaned.trim()).map_err(|_| TransportError::BadPin(text.into()))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| TransportError::BadPin(text.into()))
}

/// The SHA-256 fingerprint of a certificate, as the pin is written.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Builds the rustls client configuration (TLS 1.2 and 1.3 only).
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (&settings.pin_sha256, &settings.ca) {
        (Some(_), Some(_)) => {
            return Err(TransportError::Inconsistent(
                "give either --tls-ca or --tls-pin-sha256, not both".into(),
            ))
        }
        (Some(pin), None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                pin: parse_pin(pin)?,
                provider,
            })),
        (None, ca) => {
            let mut roots = RootCertStore::empty();
            match ca {
                Some(path) => {
                    for cert in read_certs(path)? {
                        roots.add(cert)?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots)
        }
    };
    let config = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(read_certs(cert)?, read_key(key)?)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TransportError::Inconsistent(
                "--tls-client-cert and --tls-client-key go together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// Accepts exactly one server certificate, by its SHA-256 fingerprint, and still checks that
/// the server holds its key (the handshake signature). Host name and dates are not checked: the
/// pin names the certificate itself, which is stronger than a name.
#[derive(Debug)]
struct PinnedServer {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate {} does not match the pinned SHA-256",
                hex::encode(seen)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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

/// The path a connection takes before TLS and the WebSocket.
#[derive(Clone)]
pub enum Route {
    /// A TCP connection to the server's host and port.
    Direct,
    /// A `direct-tcpip` channel of an SSH connection to the server's SSH endpoint.
    Ssh(Arc<crate::ssh::SshTunnel>),
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            Route::Ssh(tunnel) => write!(f, "Ssh({tunnel:?})"),
        }
    }
}

/// Opens byte streams to the server.
#[derive(Clone)]
pub struct Connector {
    host: String,
    port: u16,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    route: Route,
}

impl Connector {
    /// A connector for `url` (ws:// or wss://). `tls` is required for wss:// and refused for
    /// ws:// (a TLS option on a plain-text URL is a configuration mistake, not a downgrade).
    pub fn new(
        url: &url::Url,
        tls: Option<Arc<ClientConfig>>,
        route: Route,
    ) -> Result<Connector, TransportError> {
        let host = url
            .host_str()
            .ok_or_else(|| TransportError::Inconsistent(format!("{url} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let secure = url.scheme() == "wss";
        let port = url.port().unwrap_or(if secure { 443 } else { 80 });
        let tls = match (secure, tls) {
            (true, Some(config)) => {
                let name = ServerName::try_from(host.clone()).map_err(|_| {
                    TransportError::Inconsistent(format!("{host:?} is not a valid TLS server name"))
                })?;
                Some((config, name))
            }
            (true, None) => {
                return Err(TransportError::Inconsistent(
                    "a wss:// server needs a TLS configuration".into(),
                ))
            }
            (false, Some(_)) => {
                return Err(TransportError::Inconsistent(format!(
                    "TLS options given but the server URL {url} is not https:// or wss://"
                )))
            }
            (false, None) => None,
        };
        Ok(Connector {
            host,
            port,
            tls,
            route,
        })
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens one byte stream to the server (TCP or tunnel, then TLS when configured).
    pub async fn connect(&self) -> std::io::Result<BoxIo> {
        let stream: BoxIo = match &self.route {
            Route::Direct => {
                let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
                tcp.set_nodelay(true)?;
                Box::new(tcp)
            }
            Route::Ssh(tunnel) => tunnel.open(&self.host, self.port).await?,
        };
        match &self.tls {
            None => Ok(stream),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), stream)
                    .await?;
                Ok(Box::new(tls))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons_and_refuse_other_lengths() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn tls_options_must_match_the_url_scheme() {
        let config = client_config(&TlsSettings::default()).unwrap();
        let wss = url::Url::parse("wss://lab.example.org/agent/v1").unwrap();
        let ws = url::Url::parse("ws://127.0.0.1:8080/agent/v1").unwrap();
        assert!(Connector::new(&wss, Some(config.clone()), Route::Direct)
            .unwrap()
            .is_tls());
        assert!(Connector::new(&wss, None, Route::Direct).is_err());
        assert!(Connector::new(&ws, Some(config), Route::Direct).is_err());
        assert!(!Connector::new(&ws, None, Route::Direct).unwrap().is_tls());
    }

    #[test]
    fn a_pin_and_a_ca_together_are_refused() {
        let settings = TlsSettings {
            ca: Some("ca.pem".into()),
            pin_sha256: Some("ab".repeat(32)),
            ..Default::default()
        };
        assert!(matches!(
            client_config(&settings),
            Err(TransportError::Inconsistent(_))
        ));
    }
}
