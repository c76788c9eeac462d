//! The SSH route, for labs whose firewall allows only outbound SSH: each connection of the link
//! opens an SSH connection (russh) to the server's SSH endpoint, verifies the server's host key
//! against the pinned one (an unknown or changed key is refused), authenticates with the lab's
//! private key, sets SSH keepalives, and opens one `direct-tcpip` channel. The channel is the
//! byte stream the usual WebSocket (and TLS, when configured) then runs over.
//!
//! One SSH connection per link connection, closed with it: a reconnect re-verifies the host key
//! and re-authenticates, a half-dead SSH connection never outlives the link's dead-peer
//! detection, and the link's backoff paces SSH connection attempts too. The extra cost is one
//! SSH handshake per reconnect (a few ms on a LAN; see `bench/RESULTS.md`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use russh::client::{self, Msg};
use russh::keys::ssh_key::Fingerprint;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{error, info};

use crate::transport::BoxIo;

/// Errors in the SSH settings (found at start-up, before any connection).
#[derive(Debug, thiserror::Error)]
pub enum SshSettingsError {
    /// `--ssh` is not HOST:PORT.
    #[error("--ssh must be HOST:PORT; got {0:?}")]
    BadAddress(String),
    /// The private key file is unusable.
    #[error("SSH key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The host-key pin is neither a key, a known_hosts line nor a fingerprint.
    #[error("--ssh-host-key must be the server's public key (\"ssh-ed25519 AAAA…\"), a known_hosts line, or its fingerprint (\"SHA256:…\"); {0}")]
    BadPin(String),
}

/// How the agent reaches and trusts the SSH endpoint (command-line flags of `run`).
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// The SSH endpoint, HOST:PORT.
    pub server: String,
    /// The SSH user (the server expects the lab id).
    pub user: String,
    /// The lab's private key (OpenSSH format, unencrypted).
    pub key: PathBuf,
    /// The pinned server host key: public key, known_hosts line or SHA-256 fingerprint.
    pub host_key: String,
    /// Send an SSH keepalive after this long without traffic from the server.
    pub keepalive: Duration,
}

/// The pinned host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPin {
    /// Exactly this public key.
    Key(Box<PublicKey>),
    /// A public key with this fingerprint.
    Fingerprint(Fingerprint),
}

impl HostKeyPin {
    /// Parses `ssh-ed25519 AAAA… [comment]`, a known_hosts line (`host[,host] ssh-ed25519
    /// AAAA…`; host names are not matched — the key is the pin) or `SHA256:…`.
    pub fn parse(text: &str) -> Result<HostKeyPin, SshSettingsError> {
        let text = text.trim();
        if text.starts_with("SHA256:") || text.starts_with("SHA512:") {
            return text
                .parse::<Fingerprint>()
                .map(HostKeyPin::Fingerprint)
                .map_err(|e| SshSettingsError::BadPin(format!("bad fingerprint ({e})")));
        }
        if text.starts_with('@') {
            return Err(SshSettingsError::BadPin(
                "known_hosts markers (@cert-authority, @revoked) are not supported".into(),
            ));
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        // A bare key starts with its algorithm; a known_hosts line has the host names first.
        let start = match words.first() {
            Some(first) if looks_like_algorithm(first) => 0,
            Some(_) if words.get(1).is_some_and(|w| looks_like_algorithm(w)) => 1,
            _ => return Err(SshSettingsError::BadPin(format!("cannot read {text:?}"))),
        };
        let key_text = words.get(start..).map(|w| w.join(" ")).unwrap_or_default();
        PublicKey::from_openssh(&key_text)
            .map(|key| HostKeyPin::Key(Box::new(key)))
            .map_err(|e| SshSettingsError::BadPin(format!("bad public key ({e})")))
    }

    /// Whether the server's key is the pinned one.
    pub fn matches(&self, key: &PublicKey) -> bool {
        match self {
            HostKeyPin::Key(pinned) => pinned.key_data() == key.key_data(),
            HostKeyPin::Fingerprint(pinned) => key.fingerprint(pinned.algorithm()) == *pinned,
        }
    }

    fn describe(&self) -> String {
        match self {
            HostKeyPin::Key(key) => key.fingerprint(HashAlg::Sha256).to_string(),
            HostKeyPin::Fingerprint(fp) => fp.to_string(),
        }
    }
}

fn looks_like_algorithm(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-sha2-") || word.starts_with("sk-")
}

/// Reads an unencrypted OpenSSH private key.
pub fn read_private_key(path: &Path) -> Result<PrivateKey, SshSettingsError> {
    let bad = |reason: String| SshSettingsError::Key {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read ({e})")))?;
    let key = PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| bad(format!("not an OpenSSH private key ({e})")))?;
    if key.is_encrypted() {
        return Err(bad(
            "the key is passphrase-protected; the agent needs it in clear (keep the file 0600)"
                .into(),
        ));
    }
    Ok(key)
}

/// Opens tunnels to the server through its SSH endpoint.
pub struct SshTunnel {
    host: String,
    port: u16,
    user: String,
    key: Arc<PrivateKey>,
    pin: HostKeyPin,
    config: Arc<client::Config>,
}

impl std::fmt::Debug for SshTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTunnel")
            .field("server", &format!("{}:{}", self.host, self.port))
            .field("user", &self.user)
            .field("pin", &self.pin.describe())
            .finish_non_exhaustive()
    }
}

impl SshTunnel {
    /// Checks the settings and reads the key (no I/O on the network).
    pub fn new(settings: &SshSettings) -> Result<SshTunnel, SshSettingsError> {
        let (host, port) = split_host_port(&settings.server)
            .ok_or_else(|| SshSettingsError::BadAddress(settings.server.clone()))?;
        let key = read_private_key(&settings.key)?;
        let pin = HostKeyPin::parse(&settings.host_key)?;
        let config = client::Config {
            keepalive_interval: Some(settings.keepalive.max(Duration::from_secs(1))),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        Ok(SshTunnel {
            host,
            port,
            user: settings.user.clone(),
            key: Arc::new(key),
            pin,
            config: Arc::new(config),
        })
    }

    /// Opens an SSH connection, verifies the host key, authenticates, and opens a
    /// `direct-tcpip` channel to `host:port` (the server's HTTP listener: the endpoint connects
    /// every tunnel there whatever is asked). The returned stream closes the SSH connection
    /// when dropped.
    pub async fn open(&self, host: &str, port: u16) -> std::io::Result<BoxIo> {
        let endpoint = format!("{}:{}", self.host, self.port);
        let started = std::time::Instant::now();
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let refused_key = Arc::new(Mutex::new(None));
        let checker = HostKeyCheck {
            pin: self.pin.clone(),
            refused: refused_key.clone(),
        };
        let mut session = match client::connect_stream(self.config.clone(), tcp, checker).await {
            Ok(session) => session,
            Err(e) => {
                let refused = refused_key.lock().ok().and_then(|mut seen| seen.take());
                return Err(match refused {
                    Some(seen) => {
                        error!(%endpoint, presented = %seen, pinned = %self.pin.describe(),
                            "SSH host key mismatch: refusing to connect");
                        std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!(
                                "the SSH server {endpoint} presented host key {seen}, not the pinned {}: refusing to connect (if the server's key changed on purpose, update --ssh-host-key)",
                                self.pin.describe()
                            ),
                        )
                    }
                    None => std::io::Error::other(format!("SSH connection to {endpoint}: {e}")),
                });
            }
        };
        let auth = session
            .authenticate_publickey(
                self.user.clone(),
                PrivateKeyWithHashAlg::new(self.key.clone(), None),
            )
            .await
            .map_err(|e| std::io::Error::other(format!("SSH authentication at {endpoint}: {e}")))?;
        if !auth.success() {
            let fingerprint = self.key.fingerprint(HashAlg::Sha256);
            error!(%endpoint, user = %self.user, %fingerprint, "the SSH server refused this agent's key");
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the SSH server {endpoint} refused key {fingerprint} for user {}; register it with `maosic-server admin add-lab-ssh-key`",
                    self.user
                ),
            ));
        }
        let channel = session
            .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| {
                std::io::Error::other(format!("SSH tunnel through {endpoint} refused: {e}"))
            })?;
        info!(
            %endpoint,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "ssh tunnel open"
        );
        Ok(Box::new(Tunnel {
            stream: channel.into_stream(),
            session: Some(session),
        }))
    }
}

fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port.parse().ok()?))
}

/// Verifies the server's host key against the pin; remembers a refused key for the error.
struct HostKeyCheck {
    pin: HostKeyPin,
    refused: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKey,
    ) -> Result<bool, Self::Error> {
        if self.pin.matches(server_public_key) {
            info!(fingerprint = %server_public_key.fingerprint(HashAlg::Sha256), "SSH host key matches the pin");
            Ok(true)
        } else {
            if let Ok(mut refused) = self.refused.lock() {
                *refused = Some(server_public_key.fingerprint(HashAlg::Sha256).to_string());
            }
            Ok(false)
        }
    }
}

/// The tunnel's byte stream; owns its SSH connection and closes it when dropped.
struct Tunnel {
    stream: ChannelStream<Msg>,
    session: Option<client::Handle<HostKeyCheck>>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let (Some(session), Ok(runtime)) =
            (self.session.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(async move {
                let _ = session
                    .disconnect(russh::Disconnect::ByApplication, "link closed", "")
                    .await;
            });
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti foo@bar.com";

    #[test]
    fn pins_parse_as_keys_known_hosts_lines_or_fingerprints() {
        let key = PublicKey::from_openssh(KEY).unwrap();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        for pin in [
            KEY.to_owned(),
            format!("[127.0.0.1]:2222,lab.example {KEY}"),
            fingerprint.clone(),
        ] {
            let parsed = HostKeyPin::parse(&pin).unwrap();
            assert!(parsed.matches(&key), "{pin}");
        }
        assert!(HostKeyPin::parse("SHA256:nope!").is_err());
        assert!(HostKeyPin::parse("hello").is_err());
        assert!(HostKeyPin::parse(&format!("@cert-authority * {KEY}")).is_err());
        assert!(HostKeyPin::parse("ssh-ed25519 AAAAnotakey").is_err());
    }

    #[test]
    fn a_different_key_does_not_match_the_pin() {
        let pinned = HostKeyPin::parse(KEY).unwrap();
        let other = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[7; 32],
        ));
        assert!(!pinned.matches(other.public_key()));
        let by_fingerprint =
            HostKeyPin::parse(&other.public_key().fingerprint(HashAlg::Sha256).to_string())
                .unwrap();
        assert!(by_fingerprint.matches(other.public_key()));
        assert!(!by_fingerprint.matches(&PublicKey::from_openssh(KEY).unwrap()));
    }

    #[test]
    fn ssh_addresses_are_host_and_port() {
        assert_eq!(
            split_host_port("127.0.0.1:2222"),
            Some(("127.0.0.1".into(), 2222))
        );
        assert_eq!(split_host_port("[::1]:22"), Some(("::1".into(), 22)));
        assert_eq!(split_host_port("lab.example"), None);
        assert_eq!(split_host_port(":22"), None);
        assert_eq!(split_host_port("host:99999"), None);
    }
}
