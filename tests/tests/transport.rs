//! The TLS transport (docs/reliability.md, "transport" row): the real server terminating TLS with the
//! certificates `maosic-server tls dev-cert` writes, and real agents that verify it against a
//! CA or a pinned certificate — and refuse untrusted, wrong-host and expired certificates; a
//! TLS 1.1 ClientHello is refused; mutual TLS refuses an agent without a client certificate.
//! After every refusal the server still answers and a trusted agent still connects. Figures
//! are printed (bench/RESULTS.md, "Reliability: transport"). `maosic-agent enroll` verifies an
//! https:// server the same way before it sends the enrollment token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maosic_e2e::{
    create_lab, mark_ran, run_bin, wait_for, AgentOptions, Backend, TestAgent, TestDatabase,
    TestLab, TestServer,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use sqlx::{Connection, SqliteConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Files written by `maosic-server tls dev-cert`.
struct DevCert {
    dir: tempfile::TempDir,
    pin: String,
}

impl DevCert {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn dev_cert(hosts: &[&str], client: bool) -> DevCert {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let mut args = vec!["tls", "dev-cert", "--out", out.as_str(), "--days", "2"];
    for h in hosts {
        args.extend(["--host", h]);
    }
    if client {
        args.extend(["--client", "lab-agent"]);
    }
    let done = run_bin("maosic-server", &args, &[]).unwrap();
    assert!(done.status.success(), "dev-cert failed: {}", done.stderr);
    let pin = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("server certificate SHA-256: "))
        .expect("dev-cert prints the pin")
        .trim()
        .to_owned();
    DevCert { dir, pin }
}

/// An expired server certificate for localhost, signed by a fresh CA (written as ca.pem,
/// server.pem, server-key.pem like dev-cert's).
fn expired_cert() -> DevCert {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server-key.pem"), key.serialize_pem()).unwrap();
    DevCert {
        dir,
        pin: String::new(),
    }
}

fn tls_server(db: &TestDatabase, cert: &DevCert, client_ca: Option<&Path>) -> TestServer {
    let cert_path = cert.path("server.pem").display().to_string();
    let key_path = cert.path("server-key.pem").display().to_string();
    let ca = client_ca
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let server = TestServer::spawn(
        db,
        &[
            ("MAOSIC_TLS__CERT", cert_path.as_str()),
            ("MAOSIC_TLS__KEY", key_path.as_str()),
            ("MAOSIC_TLS__CLIENT_CA", ca.as_str()),
            ("MAOSIC_AGENT__HEARTBEAT_MS", "500"),
        ],
    )
    .unwrap();
    assert!(
        server.log().contains("scheme=\"https\"") || server.log().contains("https"),
        "the server says it serves https:\n{}",
        server.log()
    );
    server
}

/// (online, connection generation) of the lab, from the database.
async fn presence(db: &TestDatabase, lab: &str) -> (bool, i64) {
    let mut conn = SqliteConnection::connect(&db.url).await.unwrap();
    let (online, generation): (i64, i64) =
        sqlx::query_as("SELECT online, connection_generation FROM labs WHERE id = $1")
            .bind(lab)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    (online != 0, generation)
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn wait_online(db: &TestDatabase, lab: &TestLab, agent: &TestAgent) -> Duration {
    let started = Instant::now();
    wait_for(Duration::from_secs(30), "agent online over TLS", || {
        Ok(block(presence(db, &lab.id)).0.then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    started.elapsed()
}

/// Waits until the agent has logged `needle` at least `times` times (each a refused
/// connection attempt), then checks that the lab never came online. Returns the reason the
/// agent logged last.
fn wait_refused(
    db: &TestDatabase,
    lab: &TestLab,
    agent: &TestAgent,
    needle: &str,
    times: usize,
) -> String {
    wait_for(Duration::from_secs(30), needle, || {
        Ok((agent.log().matches(needle).count() >= times).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (online, generation) = block(presence(db, &lab.id));
    assert!(!online, "refused agent came online:\n{}", agent.log());
    assert_eq!(generation, 0, "no connection was ever accepted");
    let log = agent.log();
    assert!(!log.contains("connected to the cloud"), "{log}");
    log.lines()
        .rev()
        .find_map(|l| {
            let at = l.find("reason=")?;
            let reason = &l[at + 7..];
            Some(
                reason
                    .split(" delay_ms=")
                    .next()
                    .unwrap_or(reason)
                    .to_owned(),
            )
        })
        .unwrap_or_default()
}

fn agent(server: &TestServer, host: &str, lab: &TestLab, args: &[&OsStr]) -> TestAgent {
    let url = format!("https://{host}:{}", server.addr.port());
    spawn(&url, lab, args)
}

fn spawn(url: &str, lab: &TestLab, args: &[&OsStr]) -> TestAgent {
    let options = AgentOptions {
        args: args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        ..Default::default()
    };
    TestAgent::start(url, &lab.credential, &options).unwrap()
}

fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// `GET /healthz` over TLS; the HTTP status, or the error.
async fn https_healthz(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<u16, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))
}

/// A ClientHello that offers only TLS 1.1 (legacy version 0x0302, no supported_versions
/// extension) and TLS 1.0/1.1 cipher suites, as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x5a; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc014, 0xc013, 0x0035, 0x002f];
    body.extend(u16::try_from(suites.len() * 2).unwrap().to_be_bytes());
    for suite in suites {
        body.extend(suite.to_be_bytes());
    }
    body.extend([1, 0]); // compression: null
    let host = b"localhost";
    let mut sni = Vec::new();
    sni.extend(u16::try_from(host.len() + 3).unwrap().to_be_bytes());
    sni.push(0);
    sni.extend(u16::try_from(host.len()).unwrap().to_be_bytes());
    sni.extend(host);
    let mut extensions = vec![0, 0];
    extensions.extend(u16::try_from(sni.len()).unwrap().to_be_bytes());
    extensions.extend(sni);
    body.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![1];
    handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// What the server answers a TLS 1.1 ClientHello: the bytes it sent before closing.
async fn answer_to_tls11(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    answer
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connect_over_tls_only_to_servers_they_trust() {
    let trusted = dev_cert(&["localhost", "127.0.0.1"], false);
    let stranger = dev_cert(&["localhost", "127.0.0.1"], false);
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = tls_server(&db, &trusted, None);
    let health = client_config(&trusted.path("ca.pem"), None);
    assert_eq!(
        https_healthz(server.addr, health.clone(), "localhost").await,
        Ok(200)
    );

    // Verified against the development CA, by host name and by IP address.
    let lab = create_lab(&db, "Chirality Group", "tls-ca").unwrap();
    let ca = trusted.path("ca.pem");
    let good = agent(
        &server,
        "localhost",
        &lab,
        &[OsStr::new("--tls-ca"), ca.as_os_str()],
    );
    let ca_online = wait_online(&db, &lab, &good);
    drop(good);
    let lab_ip = create_lab(&db, "Chirality Group", "tls-ip").unwrap();
    let by_ip = agent(
        &server,
        "127.0.0.1",
        &lab_ip,
        &[OsStr::new("--tls-ca"), ca.as_os_str()],
    );
    wait_online(&db, &lab_ip, &by_ip);

    // Pinned: the right fingerprint connects, another one is refused.
    let lab_pin = create_lab(&db, "Chirality Group", "tls-pin").unwrap();
    let pinned = agent(
        &server,
        "localhost",
        &lab_pin,
        &[OsStr::new("--tls-pin-sha256"), OsStr::new(&trusted.pin)],
    );
    let pin_online = wait_online(&db, &lab_pin, &pinned);
    drop(pinned);

    let refused = [
        ("untrusted CA", "invalid peer certificate", "localhost", {
            let lab = create_lab(&db, "Chirality Group", "tls-untrusted").unwrap();
            let a = agent(
                &server,
                "localhost",
                &lab,
                &[OsStr::new("--tls-ca"), stranger.path("ca.pem").as_os_str()],
            );
            (lab, a)
        }),
        (
            "another pin",
            "does not match the pinned SHA-256",
            "localhost",
            {
                let lab = create_lab(&db, "Chirality Group", "tls-wrong-pin").unwrap();
                let a = agent(
                    &server,
                    "localhost",
                    &lab,
                    &[OsStr::new("--tls-pin-sha256"), OsStr::new(&stranger.pin)],
                );
                (lab, a)
            },
        ),
        ("plain WebSocket to the TLS port", "link lost", "", {
            let lab = create_lab(&db, "Chirality Group", "tls-plain").unwrap();
            let url = format!("http://127.0.0.1:{}", server.addr.port());
            let a = spawn(&url, &lab, &[]);
            (lab, a)
        }),
    ];
    for (what, needle, _, (lab, a)) in &refused {
        let reason = wait_refused(&db, lab, a, needle, 3);
        println!("[tls] {what}: refused ≥ 3× ({reason}), lab never online");
    }

    // A TLS 1.1 client gets a fatal alert (record type 21, level 2 — not a silent close; rustls answers
    // handshake_failure, 40, when nothing offered is TLS 1.2+) and no session.
    let answer = answer_to_tls11(server.addr).await;
    assert!(
        answer.first() == Some(&21) && answer.get(5) == Some(&2),
        "TLS 1.1 must be refused with a fatal alert, got {answer:02x?}"
    );
    assert_ne!(answer.first(), Some(&22), "no ServerHello for TLS 1.1");
    // And a real TLS 1.1 client, when this machine has one (Debian's openssl does).
    let openssl = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-connect",
        ])
        .arg(server.addr.to_string())
        .stdin(std::process::Stdio::null())
        .output();
    let openssl_verdict = match openssl {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "openssl -tls1_1 connected:\n{text}");
            assert!(
                text.contains("Cipher is (NONE)") && text.contains("alert"),
                "no session, a fatal alert: {text}"
            );
            "openssl s_client -tls1_1: handshake failed"
        }
        Err(_) => "openssl not installed: skipped",
    };

    // Still healthy: /healthz answers and the trusted agent stays connected.
    assert_eq!(
        https_healthz(server.addr, health.clone(), "localhost").await,
        Ok(200)
    );
    assert!(block(presence(&db, &lab_ip.id)).0, "{}", by_ip.log());

    // Handshake cost: TLS /healthz against a plain server's, same machine, same run.
    let plain_db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let plain = TestServer::spawn(&plain_db, &[]).unwrap();
    let mut tls_times = Vec::new();
    let mut plain_times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        assert_eq!(
            https_healthz(server.addr, health.clone(), "localhost").await,
            Ok(200)
        );
        tls_times.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(plain.get("/healthz").unwrap().0, 200);
        plain_times.push(t.elapsed());
    }
    let (tls_ms, plain_ms) = (
        median(tls_times).as_secs_f64() * 1e3,
        median(plain_times).as_secs_f64() * 1e3,
    );
    println!(
        "[tls] agent online with --tls-ca in {:.0} ms, with --tls-pin-sha256 in {:.0} ms (from process start); \
         TLS 1.1 ClientHello answered {:02x?} ({openssl_verdict}); GET /healthz median of 21: TLS {tls_ms:.2} ms vs plain {plain_ms:.2} ms ({:.1}×)",
        ca_online.as_secs_f64() * 1e3,
        pin_online.as_secs_f64() * 1e3,
        answer,
        tls_ms / plain_ms
    );
    mark_ran(Backend::Sqlite, "tls_transport");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_and_expired_certificates_are_refused() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    // A certificate valid for another host, from a CA the agent trusts.
    let other_host = dev_cert(&["lab.example.org"], false);
    let server = tls_server(&db, &other_host, None);
    let lab = create_lab(&db, "Chirality Group", "wrong-host").unwrap();
    let a = agent(
        &server,
        "localhost",
        &lab,
        &[
            OsStr::new("--tls-ca"),
            other_host.path("ca.pem").as_os_str(),
        ],
    );
    let reason = wait_refused(&db, &lab, &a, "not valid for name", 3);
    println!("[tls] certificate for lab.example.org, agent dials localhost: refused ({reason})");

    let expired = expired_cert();
    let db2 = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server2 = tls_server(&db2, &expired, None);
    let lab2 = create_lab(&db2, "Chirality Group", "expired").unwrap();
    let b = agent(
        &server2,
        "localhost",
        &lab2,
        &[OsStr::new("--tls-ca"), expired.path("ca.pem").as_os_str()],
    );
    let reason = wait_refused(&db2, &lab2, &b, "invalid peer certificate", 3);
    assert!(reason.to_lowercase().contains("expired"), "{reason}");
    println!("[tls] certificate expired 2021-01-01, CA trusted: refused ({reason})");
    // Both servers still serve: the wrong-host one under its own name, the expired one up to
    // the certificate check of a client that trusts its CA.
    let other_ca = client_config(&other_host.path("ca.pem"), None);
    assert_eq!(
        https_healthz(server.addr, other_ca, "lab.example.org").await,
        Ok(200)
    );
    let expired_ca = client_config(&expired.path("ca.pem"), None);
    let answer = https_healthz(server2.addr, expired_ca, "localhost").await;
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.to_lowercase().contains("expired")),
        "{answer:?}"
    );
    mark_ran(Backend::Sqlite, "tls_wrong_host_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_agents_with_a_client_certificate() {
    let pki = dev_cert(&["localhost", "127.0.0.1"], true);
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let ca = pki.path("ca.pem");
    let server = tls_server(&db, &pki, Some(&ca));

    let lab = create_lab(&db, "Chirality Group", "mtls-good").unwrap();
    let (cert, key) = (pki.path("client.pem"), pki.path("client-key.pem"));
    let good = agent(
        &server,
        "localhost",
        &lab,
        &[
            OsStr::new("--tls-ca"),
            ca.as_os_str(),
            OsStr::new("--tls-client-cert"),
            cert.as_os_str(),
            OsStr::new("--tls-client-key"),
            key.as_os_str(),
        ],
    );
    let online = wait_online(&db, &lab, &good);
    mark_ran(Backend::Sqlite, "mutual_tls");

    let lab2 = create_lab(&db, "Chirality Group", "mtls-none").unwrap();
    let without = agent(
        &server,
        "localhost",
        &lab2,
        &[OsStr::new("--tls-ca"), ca.as_os_str()],
    );
    let reason = wait_refused(&db, &lab2, &without, "link lost", 3);
    let health_without = https_healthz(server.addr, client_config(&ca, None), "localhost").await;
    assert!(health_without.is_err(), "{health_without:?}");
    let health_with = https_healthz(
        server.addr,
        client_config(&ca, Some((&cert, &key))),
        "localhost",
    )
    .await;
    assert_eq!(health_with, Ok(200));
    assert!(block(presence(&db, &lab.id)).0, "{}", good.log());
    println!(
        "[tls] mutual TLS: agent with a client certificate online in {:.0} ms; without one refused \
         (agent: {reason}; /healthz without a certificate: {})",
        online.as_secs_f64() * 1e3,
        health_without.unwrap_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_over_https_only_with_a_server_it_trusts() {
    let pki = dev_cert(&["localhost", "127.0.0.1"], false);
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    // the account, the lab and its one-time token through a plain-text server on the same
    // database, stopped before the TLS server starts
    let (lab_id, token) = {
        let plain = TestServer::spawn(&db, &[]).unwrap();
        let session = plain
            .sign_up("enroll@example.org", "Chirality Group")
            .unwrap();
        let body = plain
            .graphql_as(
                &session.access_token,
                "mutation($o: ID!, $n: String!) { createLab(organizationId: $o, name: $n) { id } }",
                json!({ "o": session.organization_id, "n": "tls-enroll" }),
            )
            .unwrap();
        let id = body["data"]["createLab"]["id"].as_str().unwrap().to_owned();
        let token = plain.enrollment_token(&session, &id).unwrap();
        (id, token)
    };
    let server = tls_server(&db, &pki, None);
    let dir = tempfile::tempdir().unwrap();
    let credential = dir.path().join("credential.json");
    let url = format!("https://localhost:{}", server.addr.port());
    let enroll = |extra: &[&str]| {
        let out = credential.display().to_string();
        let mut args = vec![
            "enroll",
            "--server",
            url.as_str(),
            "--token",
            token.as_str(),
            "--credential-out",
            out.as_str(),
        ];
        args.extend_from_slice(extra);
        run_bin("maosic-agent", &args, &[]).unwrap()
    };
    let ca = pki.path("ca.pem").display().to_string();

    // Not trusted: the public web roots do not hold the development CA, and a wrong pin is
    // refused; the token never leaves the agent, so it stays valid, and no file is written.
    let untrusted = enroll(&[]);
    assert!(!untrusted.status.success(), "{}", untrusted.stdout);
    assert!(
        untrusted.stderr.contains("certificate") || untrusted.stderr.contains("UnknownIssuer"),
        "{}",
        untrusted.stderr
    );
    let wrong_pin = "00".repeat(32);
    let pinned_wrong = enroll(&["--tls-pin-sha256", &wrong_pin]);
    assert!(!pinned_wrong.status.success());
    assert!(!credential.exists(), "a refused enrollment wrote a file");

    // Trusted by its CA: the same token gives the credential, readable only by its owner.
    let enrolled = enroll(&["--tls-ca", &ca]);
    assert!(enrolled.status.success(), "{}", enrolled.stderr);
    assert!(credential.exists(), "enrolled over https with --tls-ca");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&credential).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // single use, over TLS too
    let again = enroll(&["--tls-ca", &ca]);
    assert!(!again.status.success());
    assert!(
        again.stderr.contains("enrollment refused"),
        "{}",
        again.stderr
    );
    // TLS options with a plain-text URL are refused before anything is sent
    let plain_url = format!("http://localhost:{}", server.addr.port());
    let mixed = run_bin(
        "maosic-agent",
        &[
            "enroll",
            "--server",
            &plain_url,
            "--token",
            "x",
            "--credential-out",
            "/nonexistent/c",
            "--tls-ca",
            &ca,
        ],
        &[],
    )
    .unwrap();
    assert!(!mixed.status.success());
    assert!(mixed.stderr.contains("https://"), "{}", mixed.stderr);

    // The enrolled credential brings the agent online over the verified link.
    let lab = TestLab::with_credential(lab_id, credential.clone(), dir);
    let online = agent(
        &server,
        "localhost",
        &lab,
        &[OsStr::new("--tls-ca"), OsStr::new(&ca)],
    );
    let took = wait_online(&db, &lab, &online);
    mark_ran(Backend::Sqlite, "enroll_over_https");
    println!(
        "[tls] enrollment over https: refused without the CA ({}) and with a wrong pin; with \
         --tls-ca enrolled, the token then spent, the agent online in {:.0} ms",
        untrusted.stderr.lines().last().unwrap_or("").trim(),
        took.as_secs_f64() * 1e3
    );
}
