//! A chaos proxy for fault-injection tests (docs/reliability.md, "Fault scenarios"): a TCP relay on
//! `127.0.0.1:0` in front of a server's address. The agent connects to the proxy instead of the
//! server; the test then injects faults on command:
//!
//! - [`ChaosProxy::reset`]: every open connection is reset (SO_LINGER 0, then closed: both the
//!   agent and the server see an RST, not a clean close);
//! - [`ChaosProxy::blackhole`]: nothing is forwarded either way, connections stay open (a
//!   half-open link); [`ChaosProxy::hold_current`] does the same for the connections open now
//!   only, so new connections pass;
//! - [`ChaosProxy::set_faults`]: a delay added to every chunk, a throttle in bytes per second.
//!
//! With several upstreams ([`ChaosProxy::start_balanced`]) it is also the harness's round-robin
//! load balancer: each new connection goes to the next upstream in turn, and
//! [`ChaosProxy::set_upstreams`] takes a dead replica out of the rotation, as a health-checked
//! balancer would.
//!
//! Held data is forwarded when the fault is healed, as TCP would retransmit it after a network
//! outage. Duplication is not offered: duplicated bytes would corrupt the WebSocket framing, so
//! duplicate deliveries are tested at the application level (the same request sent twice).
//!
//! The proxy runs on its own small runtime, so its control methods are plain synchronous calls
//! that work from synchronous and asynchronous tests alike.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Faults applied to all traffic through the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Forward nothing either way; keep connections open.
    pub blackhole: bool,
    /// Added to every chunk before it is forwarded.
    pub delay: Duration,
    /// Most bytes per second forwarded per direction and connection.
    pub throttle_bytes_per_s: Option<u64>,
}

/// Counters of the proxy since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections reset by [`ChaosProxy::reset`].
    pub resets: u64,
    /// Bytes forwarded client → server.
    pub bytes_up: u64,
    /// Bytes forwarded server → client.
    pub bytes_down: u64,
}

struct Connection {
    client: Arc<TcpStream>,
    upstream: Arc<TcpStream>,
    held: watch::Sender<bool>,
    task: tokio::task::AbortHandle,
}

struct Shared {
    /// Where new connections go, in turn (never empty).
    upstreams: Mutex<Vec<SocketAddr>>,
    /// Connections relayed so far (picks the next upstream).
    turns: AtomicU64,
    faults: watch::Sender<Faults>,
    open: Mutex<HashMap<u64, Connection>>,
    next_id: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Shared {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, Connection>> {
        // A panic while holding the lock cannot leave the map inconsistent: use it anyway.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running chaos proxy; stopped (and every connection dropped) when dropped.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ChaosProxy {
    /// Starts a proxy on `127.0.0.1:0` that relays every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> io::Result<ChaosProxy> {
        Self::start_balanced(vec![upstream])
    }

    /// Starts a proxy that relays each new connection to the next of `upstreams` in turn
    /// (round robin, as a load balancer in front of server replicas).
    pub fn start_balanced(upstreams: Vec<SocketAddr>) -> io::Result<ChaosProxy> {
        if upstreams.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no upstream"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chaos-proxy")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            upstreams: Mutex::new(upstreams),
            turns: AtomicU64::new(0),
            faults: watch::Sender::new(Faults::default()),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        runtime.spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(ChaosProxy {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// Relays the connections opened from now on to `upstream` (a load balancer moving on to
    /// another replica); open ones stay where they are.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.set_upstreams(vec![upstream]);
    }

    /// Relays the connections opened from now on to `upstreams` in turn; open ones stay where
    /// they are. An empty list is ignored.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        if upstreams.is_empty() {
            return;
        }
        *self
            .shared
            .upstreams
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = upstreams;
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` of the proxy (what the agent is given as its server).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every open connection (RST to both ends); returns how many.
    pub fn reset(&self) -> usize {
        let victims: Vec<Connection> = self.shared.open().drain().map(|(_, c)| c).collect();
        for c in &victims {
            linger_zero(&c.client);
            linger_zero(&c.upstream);
            c.task.abort();
        }
        let n = victims.len();
        self.shared.resets.fetch_add(n as u64, Ordering::Relaxed);
        // Dropping the last handles (here and in the aborted tasks) closes the sockets.
        drop(victims);
        n
    }

    /// Starts (`true`) or ends a blackhole of all traffic, on open and new connections.
    pub fn blackhole(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.blackhole = on);
    }

    /// Stops forwarding on the connections open now (new connections pass); returns how many.
    pub fn hold_current(&self) -> usize {
        let open = self.shared.open();
        for c in open.values() {
            c.held.send_replace(true);
        }
        open.len()
    }

    /// Replaces the faults applied to all traffic.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Ends every fault: no blackhole, no delay, no throttle, no held connection.
    pub fn heal(&self) {
        self.shared.faults.send_replace(Faults::default());
        for c in self.shared.open().values() {
            c.held.send_replace(false);
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open().len()
    }

    /// Counters since the start.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            connections: s.connections.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            bytes_up: s.bytes_up.load(Ordering::Relaxed),
            bytes_down: s.bytes_down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.shared.open().clear();
        if let Some(runtime) = self.runtime.take() {
            // Allowed inside another runtime (tests are often async), unlike a plain drop.
            runtime.shutdown_background();
        }
    }
}

/// SO_LINGER 0: closing the socket sends an RST and discards unsent data.
fn linger_zero(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(open(Arc::clone(&shared), client));
            }
            // E.g. out of file descriptors: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Connects upstream and registers the relay of one accepted connection.
async fn open(shared: Arc<Shared>, client: TcpStream) {
    let to = {
        let upstreams = shared.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let turn = shared.turns.fetch_add(1, Ordering::Relaxed);
        upstreams[usize::try_from(turn).unwrap_or(0) % upstreams.len()]
    };
    let upstream = match TcpStream::connect(to).await {
        Ok(s) => s,
        Err(_) => {
            // The server is not there: the client sees a reset, as it would without a proxy.
            linger_zero(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let client = Arc::new(client);
    let upstream = Arc::new(upstream);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (held, held_rx) = watch::channel(false);
    // Registered under the lock before the relay runs, so a reset cannot miss it and the
    // relay's own removal cannot come first.
    let mut open = shared.open();
    let task = tokio::spawn(relay(
        Arc::clone(&shared),
        id,
        Arc::clone(&client),
        Arc::clone(&upstream),
        held_rx,
    ));
    open.insert(
        id,
        Connection {
            client,
            upstream,
            held,
            task: task.abort_handle(),
        },
    );
}

/// Relays both directions until both ends closed; an error on either end resets both.
async fn relay(
    shared: Arc<Shared>,
    id: u64,
    client: Arc<TcpStream>,
    upstream: Arc<TcpStream>,
    held: watch::Receiver<bool>,
) {
    let up = pump(&shared, &client, &upstream, held.clone(), &shared.bytes_up);
    let down = pump(&shared, &upstream, &client, held, &shared.bytes_down);
    if tokio::try_join!(up, down).is_err() {
        linger_zero(&client);
        linger_zero(&upstream);
    }
    shared.open().remove(&id);
}

/// One direction: a reader stamps each chunk with its due time, a writer forwards it then,
/// honouring blackhole, hold and throttle. End of stream is passed on as a half-close.
async fn pump(
    shared: &Shared,
    from: &TcpStream,
    to: &TcpStream,
    held: watch::Receiver<bool>,
    forwarded: &AtomicU64,
) -> io::Result<()> {
    let (chunks, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let (mut faults_r, mut held_r) = (shared.faults.subscribe(), held.clone());
    let (mut faults_w, mut held_w) = (shared.faults.subscribe(), held);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            open_gate(&mut faults_r, &mut held_r).await;
            let n = read_some(from, &mut buf).await?;
            let at = Instant::now() + faults_r.borrow().delay;
            // An empty chunk marks the end of the stream.
            if chunks.send((at, buf[..n].to_vec())).await.is_err() || n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            open_gate(&mut faults_w, &mut held_w).await;
            if chunk.is_empty() {
                socket2::SockRef::from(to).shutdown(Shutdown::Write)?;
                return Ok(());
            }
            write_all(to, &chunk).await?;
            forwarded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            let throttle = faults_w.borrow().throttle_bytes_per_s;
            if let Some(rate) = throttle.filter(|r| *r > 0) {
                let pause = Duration::from_secs_f64(chunk.len() as f64 / rate as f64);
                tokio::time::sleep(pause).await;
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Returns once neither a blackhole nor a hold stops this connection.
async fn open_gate(faults: &mut watch::Receiver<Faults>, held: &mut watch::Receiver<bool>) {
    loop {
        if !faults.borrow_and_update().blackhole && !*held.borrow_and_update() {
            return;
        }
        let changed = tokio::select! {
            r = faults.changed() => r,
            r = held.changed() => r,
        };
        if changed.is_err() {
            // The proxy is going away.
            return;
        }
    }
}

async fn read_some(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::{Read, Write};
    use std::time::Instant as StdInstant;

    /// An echo server on its own thread; returns its address.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn client(proxy: &ChaosProxy) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(proxy.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn round_trip(s: &mut std::net::TcpStream, bytes: &[u8]) -> Vec<u8> {
        s.write_all(bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        s.read_exact(&mut back).unwrap();
        back
    }

    fn wait_open(proxy: &ChaosProxy, n: usize) {
        crate::wait_for(Duration::from_secs(5), "proxy connections", || {
            Ok((proxy.open_connections() == n).then_some(()))
        })
        .unwrap();
    }

    #[test]
    fn relays_then_resets_with_an_rst() {
        let proxy = ChaosProxy::start(echo_server()).unwrap();
        let mut s = client(&proxy);
        assert_eq!(round_trip(&mut s, b"hello"), b"hello");
        wait_open(&proxy, 1);
        assert_eq!(proxy.reset(), 1);
        let mut buf = [0u8; 8];
        let err = s.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        assert_eq!(proxy.stats().resets, 1);
        // New connections still work.
        let mut s = client(&proxy);
        assert_eq!(round_trip(&mut s, b"again"), b"again");
    }

    #[test]
    fn blackhole_holds_traffic_without_closing_and_heal_releases_it() {
        let proxy = ChaosProxy::start(echo_server()).unwrap();
        let mut s = client(&proxy);
        assert_eq!(round_trip(&mut s, b"a"), b"a");
        proxy.blackhole(true);
        s.write_all(b"held").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4];
        let err = s.read(&mut buf).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "neither data nor a close while blackholed: {err}"
        );
        proxy.heal();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"held");
    }

    #[test]
    fn hold_current_spares_new_connections() {
        let proxy = ChaosProxy::start(echo_server()).unwrap();
        let mut old = client(&proxy);
        assert_eq!(round_trip(&mut old, b"x"), b"x");
        wait_open(&proxy, 1);
        assert_eq!(proxy.hold_current(), 1);
        let mut new = client(&proxy);
        assert_eq!(round_trip(&mut new, b"y"), b"y");
        old.write_all(b"z").unwrap();
        old.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        assert!(old.read(&mut [0u8; 1]).is_err(), "the old one is held");
    }

    #[test]
    fn delay_and_throttle_slow_the_stream() {
        let proxy = ChaosProxy::start(echo_server()).unwrap();
        let mut s = client(&proxy);
        proxy.set_faults(Faults {
            delay: Duration::from_millis(100),
            ..Faults::default()
        });
        let started = StdInstant::now();
        assert_eq!(round_trip(&mut s, b"slow"), b"slow");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200),
            "two delayed hops: {took:?}"
        );

        proxy.set_faults(Faults {
            throttle_bytes_per_s: Some(200_000),
            ..Faults::default()
        });
        let payload = vec![7u8; 100_000];
        let started = StdInstant::now();
        let writer = {
            let mut w = s.try_clone().unwrap();
            let payload = payload.clone();
            std::thread::spawn(move || w.write_all(&payload).unwrap())
        };
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).unwrap();
        writer.join().unwrap();
        let took = started.elapsed();
        assert_eq!(back, payload);
        // 100 kB at 200 kB/s each way, pipelined: at least 0.5 s.
        assert!(took >= Duration::from_millis(450), "throttled: {took:?}");
    }
}
