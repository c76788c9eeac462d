//! The SSH endpoint, for labs whose firewall allows only outbound SSH (issue #10).
//!
//! An agent opens an SSH connection (russh), authenticates with a public key registered for its
//! lab (`maosic-server admin add-lab-ssh-key`), and opens one `direct-tcpip` channel, through
//! which it speaks the usual agent WebSocket protocol — still authenticated by the lab's agent
//! credential at the gateway. The endpoint is deliberately narrow:
//! - public-key authentication only; a key is accepted only while it is registered, not revoked,
//!   and its lab has an agent credential in force, and only for the SSH user named like its lab;
//! - only `direct-tcpip` channels, and every one goes to this server's own HTTP listener,
//!   whatever host and port the client names (never an open proxy); sessions, exec, shells,
//!   X11, agent forwarding and remote port forwarding are refused;
//! - a login grace period, keepalives and an inactivity timeout bound every connection, and a
//!   failed or refused connection never affects the process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, MethodKind, MethodSet};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

pub use crate::config::SshConfig;
use crate::state::AppState;
use crate::storage::{tenant, LabId, NewLabSshKey, Storage};

/// Most tunnels one SSH connection may hold open at once (an agent needs one).
const MAX_CHANNELS_PER_CONNECTION: usize = 4;
/// Most SSH connections at once (authenticated or not): a flood of idle handshakes cannot
/// exhaust the server; connections beyond it are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// Errors of the SSH endpoint and of SSH key handling.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host key file is unusable.
    #[error("SSH host key {path}: {reason}")]
    HostKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A public key given for registration is unusable.
    #[error("invalid SSH public key: {0}")]
    PublicKey(String),
    /// The SSH protocol layer failed.
    #[error("ssh: {0}")]
    Protocol(#[from] russh::Error),
}

/// Reads the host key, or generates an Ed25519 key and writes it (mode 0600) when `path`
/// does not exist.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, SshError> {
    let bad = |reason: String| SshError::HostKey {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = PrivateKey::from_openssh(text.as_bytes())
                .map_err(|e| bad(format!("not an OpenSSH private key ({e})")))?;
            if key.is_encrypted() {
                return Err(bad(
                    "the key is passphrase-protected; the server needs it in clear (mode 0600)"
                        .into(),
                ));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
            let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            seed.fill(0);
            key.set_comment("maosic-server host key");
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| bad(format!("cannot encode the generated key ({e})")))?;
            write_private(path, text.as_bytes())
                .map_err(|e| bad(format!("cannot write the generated key ({e})")))?;
            info!(
                path = %path.display(),
                fingerprint = %key.fingerprint(HashAlg::Sha256),
                "no SSH host key found: generated a new Ed25519 host key (mode 0600); agents must pin it"
            );
            Ok(key)
        }
        Err(e) => Err(bad(format!("cannot read ({e})"))),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The host key's public half as one OpenSSH line (what agents pin with `--ssh-host-key`).
pub fn host_public_line(key: &PrivateKey) -> String {
    key.public_key()
        .to_openssh()
        .unwrap_or_else(|_| key.fingerprint(HashAlg::Sha256).to_string())
}

/// Parses a public key given for registration (`ssh-ed25519 AAAA… comment`, as in a `.pub`
/// file or an `authorized_keys` line) into the row to store. Ed25519 and ECDSA keys only.
pub fn new_lab_key(lab_id: &LabId, text: &str) -> Result<NewLabSshKey, SshError> {
    let text = text.trim();
    if text.is_empty() || text.contains('\n') {
        return Err(SshError::PublicKey(
            "give exactly one key line, e.g. the content of id_ed25519.pub".into(),
        ));
    }
    let key = PublicKey::from_openssh(text).map_err(|e| {
        SshError::PublicKey(format!("{e} (expected \"ssh-ed25519 AAAA… comment\")"))
    })?;
    match key.algorithm() {
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. } => {}
        other => {
            return Err(SshError::PublicKey(format!(
                "{} keys are not accepted; use Ed25519 (ssh-keygen -t ed25519)",
                other.as_str()
            )))
        }
    }
    let comment = key.comment().to_owned();
    let mut bare = key.clone();
    bare.set_comment("");
    let public_key = bare
        .to_openssh()
        .map_err(|e| SshError::PublicKey(e.to_string()))?
        .trim()
        .to_owned();
    Ok(NewLabSshKey {
        lab_id: lab_id.clone(),
        algorithm: key.algorithm().as_str().to_owned(),
        public_key,
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        comment,
    })
}

/// Where tunnels go: the HTTP listener, reached on loopback when it listens on every address.
fn tunnel_target(http_addr: SocketAddr) -> SocketAddr {
    match http_addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), http_addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), http_addr.port())
        }
        _ => http_addr,
    }
}

/// Starts the SSH endpoint (when `[ssh] enabled`): binds, loads or creates the host key, and
/// accepts connections on a background task whose tunnels all lead to `http_addr`.
pub async fn spawn(
    state: AppState,
    http_addr: SocketAddr,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let settings = state.config.ssh.clone();
    let bind = settings
        .bind_addr()
        .map_err(|reason| anyhow::anyhow!("configuration: ssh.bind: {reason}"))?;
    let host_key = load_or_create_host_key(&settings.host_key)?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen for SSH on {bind}"))?;
    let addr = listener.local_addr()?;
    info!(
        %addr,
        host_key = %host_public_line(&host_key),
        fingerprint = %host_key.fingerprint(HashAlg::Sha256),
        "ssh endpoint listening"
    );
    let config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard(format!("SSH-2.0-maosic_{}", env!("CARGO_PKG_VERSION"))),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(settings.auth_rejection_ms),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        max_auth_attempts: 3,
        inactivity_timeout: Some(Duration::from_secs(settings.inactivity_timeout_secs)),
        keepalive_interval: Some(Duration::from_secs(settings.keepalive_secs)),
        keepalive_max: settings.keepalive_max,
        nodelay: true,
        ..Default::default()
    });
    let endpoint = Endpoint {
        storage: state.storage.clone(),
        tunnels: state.ssh_tunnels.clone(),
        target: tunnel_target(http_addr),
        config,
        login_grace: Duration::from_secs(settings.login_grace_secs.max(1)),
        per_address: settings.max_unauthenticated_per_address.max(1),
    };
    let task = tokio::spawn(endpoint.accept_loop(listener));
    Ok((task, addr))
}

/// The open SSH tunnels by their source address on the server's own listener, with the lab
/// whose key opened each: the gateway requires the WebSocket's credential to be of that lab.
#[derive(Clone, Default)]
pub struct Tunnels(Arc<std::sync::Mutex<std::collections::HashMap<SocketAddr, LabId>>>);

impl Tunnels {
    /// Records a tunnel; the returned guard forgets it when dropped.
    fn bind(&self, local: SocketAddr, lab: &LabId) -> TunnelBinding {
        if let Ok(mut map) = self.0.lock() {
            map.insert(local, lab.clone());
        }
        TunnelBinding {
            tunnels: self.clone(),
            local,
        }
    }

    /// The lab whose SSH key opened the tunnel a connection from `peer` comes through, if it
    /// comes through one.
    pub fn lab_of(&self, peer: &SocketAddr) -> Option<LabId> {
        self.0.lock().ok().and_then(|map| map.get(peer).cloned())
    }
}

/// Forgets a tunnel's binding when the tunnel ends.
struct TunnelBinding {
    tunnels: Tunnels,
    local: SocketAddr,
}

impl Drop for TunnelBinding {
    fn drop(&mut self) {
        if let Ok(mut map) = self.tunnels.0.lock() {
            map.remove(&self.local);
        }
    }
}

struct Endpoint {
    storage: Arc<dyn Storage>,
    tunnels: Tunnels,
    target: SocketAddr,
    config: Arc<russh::server::Config>,
    login_grace: Duration,
    per_address: usize,
}

/// Connections not yet authenticated, per client address.
#[derive(Clone, Default)]
struct PreAuth(Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>);

/// One unauthenticated connection of an address; released when dropped.
struct PreAuthSlot {
    pre_auth: PreAuth,
    ip: IpAddr,
}

impl PreAuth {
    /// Takes a slot for `ip`, unless it already holds `limit`.
    fn take(&self, ip: IpAddr, limit: usize) -> Option<PreAuthSlot> {
        let mut map = self.0.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PreAuthSlot {
            pre_auth: self.clone(),
            ip,
        })
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.pre_auth.0.lock() {
            if let Some(n) = map.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}

impl Endpoint {
    async fn accept_loop(self, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let pre_auth = PreAuth::default();
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, never end the endpoint.
                    warn!(error = %e, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(unauthenticated) = pre_auth.take(peer.ip(), self.per_address) else {
                warn!(%peer, limit = self.per_address,
                    "ssh connection refused: too many unauthenticated connections from this address");
                drop(socket);
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                warn!(%peer, limit = MAX_CONNECTIONS, "ssh connection refused: too many open");
                drop(socket);
                continue;
            };
            let _ = socket.set_nodelay(true);
            let authenticated = Arc::new(AtomicBool::new(false));
            let connection = Connection {
                storage: self.storage.clone(),
                tunnels: self.tunnels.clone(),
                target: self.target,
                peer,
                lab_id: None,
                key: None,
                authenticated: authenticated.clone(),
                unauthenticated: Arc::new(std::sync::Mutex::new(Some(unauthenticated))),
                channels: Arc::new(AtomicUsize::new(0)),
            };
            let config = self.config.clone();
            let grace = self.login_grace;
            tokio::spawn(async move {
                let _slot = slot;
                let started = tokio::time::Instant::now();
                // The handshake itself is bounded by the login grace too (a client that sends
                // nothing never holds a slot longer).
                let session = match tokio::time::timeout(
                    grace,
                    russh::server::run_stream(config, socket, connection),
                )
                .await
                {
                    Ok(Ok(session)) => session,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "ssh connection failed before key exchange");
                        return;
                    }
                    Err(_) => {
                        info!(%peer, "ssh client did not complete its handshake within the login grace period");
                        return;
                    }
                };
                let grace = grace.saturating_sub(started.elapsed());
                let handle = session.handle();
                tokio::pin!(session);
                tokio::select! {
                    result = &mut session => {
                        log_end(peer, result);
                        return;
                    }
                    _ = tokio::time::sleep(grace) => {}
                }
                if !authenticated.load(Ordering::Acquire) {
                    info!(%peer, "ssh client did not authenticate within the login grace period");
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "login grace period over".into(),
                            String::new(),
                        )
                        .await;
                }
                log_end(peer, session.await);
            });
        }
    }
}

fn log_end(peer: SocketAddr, result: Result<(), SshError>) {
    match result {
        Ok(()) => debug!(%peer, "ssh connection closed"),
        Err(e) => debug!(%peer, error = %e, "ssh connection ended"),
    }
}

/// One client connection's state (russh calls its handler methods).
struct Connection {
    storage: Arc<dyn Storage>,
    tunnels: Tunnels,
    target: SocketAddr,
    peer: SocketAddr,
    lab_id: Option<LabId>,
    /// The authenticated key, re-checked at every tunnel (a revoked key opens nothing more).
    key: Option<(String, PublicKey)>,
    authenticated: Arc<AtomicBool>,
    /// The address's pre-authentication slot, given back when the client authenticates.
    unauthenticated: Arc<std::sync::Mutex<Option<PreAuthSlot>>>,
    channels: Arc<AtomicUsize>,
}

impl Connection {
    /// The lab `key` authenticates `user` for, if any.
    async fn lab_for(&self, user: &str, key: &PublicKey) -> Option<LabId> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match tenant::system(self.storage.accepted_ssh_key(&fingerprint)).await {
            Ok(Some(row)) => {
                let same_key = PublicKey::from_openssh(&row.public_key)
                    .is_ok_and(|stored| stored.key_data() == key.key_data());
                if !same_key {
                    warn!(peer = %self.peer, %fingerprint, "ssh key refused: stored key does not match its fingerprint");
                    None
                } else if row.lab_id != user {
                    warn!(peer = %self.peer, user, %fingerprint, lab = %row.lab_id,
                        "ssh key refused: the SSH user must be the key's lab id");
                    None
                } else {
                    Some(row.lab_id)
                }
            }
            Ok(None) => {
                warn!(peer = %self.peer, user, %fingerprint, "ssh key refused: not registered for a lab in force");
                None
            }
            Err(e) => {
                warn!(peer = %self.peer, error = %e, "ssh key refused: storage unavailable");
                None
            }
        }
    }
}

/// Decrements a connection's open-channel count when a tunnel ends.
struct ChannelSlot(Arc<AtomicUsize>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl russh::server::Handler for Connection {
    type Error = SshError;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        public_key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.lab_for(user, public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        public_key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        // The signature is verified; check the key again (it may have been revoked meanwhile).
        match self.lab_for(user, public_key).await {
            Some(lab) => {
                info!(peer = %self.peer, lab = %lab,
                    fingerprint = %public_key.fingerprint(HashAlg::Sha256), "ssh agent authenticated");
                self.lab_id = Some(lab);
                self.key = Some((user.to_owned(), public_key.clone()));
                self.authenticated.store(true, Ordering::Release);
                if let Ok(mut slot) = self.unauthenticated.lock() {
                    slot.take();
                }
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        info!(peer = %self.peer, lab = ?self.lab_id, "ssh session channel refused (tunnels only)");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        info!(peer = %self.peer, lab = ?self.lab_id, address, port = *port, "ssh remote port forwarding refused");
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let (Some(lab), Some((user, key))) = (self.lab_id.clone(), self.key.clone()) else {
            return Ok(false);
        };
        // Still registered, still the same lab, its credentials still in force?
        if self.lab_for(&user, &key).await.as_deref() != Some(lab.as_str()) {
            warn!(peer = %self.peer, %lab, "ssh tunnel refused: the key is no longer accepted");
            return Ok(false);
        }
        if self.channels.fetch_add(1, Ordering::AcqRel) >= MAX_CHANNELS_PER_CONNECTION {
            self.channels.fetch_sub(1, Ordering::AcqRel);
            warn!(peer = %self.peer, %lab, "ssh tunnel refused: too many open on this connection");
            return Ok(false);
        }
        let slot = ChannelSlot(self.channels.clone());
        let target = self.target;
        let mut upstream = match tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                warn!(%lab, %target, error = %e, "ssh tunnel refused: the HTTP listener is unreachable");
                return Ok(false);
            }
            Err(_) => {
                warn!(%lab, %target, "ssh tunnel refused: the HTTP listener did not answer");
                return Ok(false);
            }
        };
        let _ = upstream.set_nodelay(true);
        // The gateway learns which lab this tunnel's key authenticated (by the tunnel's source
        // address on the loopback listener), and refuses another lab's credential through it.
        let binding = match upstream.local_addr() {
            Ok(local) => self.tunnels.bind(local, &lab),
            Err(e) => {
                warn!(%lab, error = %e, "ssh tunnel refused: no local address to bind it to its lab");
                return Ok(false);
            }
        };
        info!(peer = %self.peer, %lab, requested = %format!("{host_to_connect}:{port_to_connect}"),
            %target, "ssh tunnel opened to the server's own listener");
        tokio::spawn(async move {
            let _slot = slot;
            let _binding = binding;
            let mut stream = channel.into_stream();
            match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
                Ok((up, down)) => debug!(%lab, up, down, "ssh tunnel closed"),
                Err(e) => debug!(%lab, error = %e, "ssh tunnel ended"),
            }
        });
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_host_key_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        let first = load_or_create_host_key(&path).unwrap();
        assert_eq!(first.algorithm(), Algorithm::Ed25519);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = load_or_create_host_key(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            load_or_create_host_key(&path),
            Err(SshError::HostKey { .. })
        ));
    }

    #[test]
    fn registration_takes_one_ed25519_or_ecdsa_line_and_drops_the_comment() {
        let key = load_or_create_host_key(&tempfile::tempdir().unwrap().path().join("k")).unwrap();
        let public = host_public_line(&key);
        let bare: Vec<&str> = public.split_whitespace().take(2).collect();
        let line = format!("{} lab@bench", bare.join(" "));
        let row = new_lab_key(&"lab-1".into(), &line).unwrap();
        assert_eq!(row.algorithm, "ssh-ed25519");
        assert_eq!(row.comment, "lab@bench");
        assert!(row.public_key.starts_with("ssh-ed25519 AAAA"));
        assert!(!row.public_key.contains("lab@bench"));
        assert!(row.fingerprint.starts_with("SHA256:"));
        assert!(new_lab_key(&"lab-1".into(), "").is_err());
        assert!(new_lab_key(&"lab-1".into(), "ssh-ed25519 not-base64").is_err());
        assert!(new_lab_key(&"lab-1".into(), &format!("{line}\n{line}")).is_err());
    }

    #[test]
    fn tunnels_go_to_loopback_when_the_listener_binds_every_address() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(tunnel_target(any), "127.0.0.1:8080".parse().unwrap());
        let own: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(tunnel_target(own), own);
    }

    #[test]
    fn settings_are_checked() {
        assert!(SshConfig::default().validate().is_ok());
        let bad = SshConfig {
            bind: "localhost".into(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = SshConfig {
            keepalive_secs: 200,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
