//! The SSH transport (issue #10, docs/reliability.md rule 10): an agent whose lab allows only outbound
//! SSH reaches the server's SSH endpoint, and its WebSocket runs through a `direct-tcpip`
//! channel. On both backends: the agent comes online over SSH and a program's records are
//! stored exactly like a direct agent's; an unknown client key, a key used for another SSH user
//! and a wrong pinned host key (key or fingerprint) are all refused; the server stays healthy
//! and good agents still connect. Prints connect times over SSH and direct.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use maosic_e2e::{
    backends, create_lab, mark_ran, run_bin, virtual_lab_config, wait_for, AgentOptions, Backend,
    TestAgent, TestDatabase, TestLab, TestServer,
};
use serde_json::{json, Value};

const TOKEN: &str = "operator-test-token-0123456789abcdef";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn operator(server: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/operator/v1/{path}", server.url());
    let auth = format!("Bearer {TOKEN}");
    let response = match body {
        Some(body) => ureq::post(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body),
        None => ureq::get(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Whether the lab's agent is connected: the operator API answers anything but LAB_OFFLINE.
fn online(server: &TestServer, lab: &TestLab) -> bool {
    let (status, _) = operator(
        server,
        &format!("labs/{}/call", lab.id),
        Some(json!({ "method": "program.cancel", "params": { "program_id": "none" } })),
    );
    // The agent answered (a presence-only agent refuses the method: 422) or the lab is offline.
    match status {
        200 | 422 => true,
        409 => false,
        other => panic!("operator call answered HTTP {other}"),
    }
}

/// An OpenSSH Ed25519 key pair made by `ssh-keygen`: (private key file, public key line).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen is installed");
    assert!(status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_owned())
}

/// `ssh-keygen -lf`: the SHA256 fingerprint of a public key file.
fn fingerprint(private: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(private.with_extension("pub"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(1).unwrap().to_owned()
}

fn add_key(db: &TestDatabase, lab: &str, public: &str) -> maosic_e2e::Finished {
    run_bin(
        "maosic-server",
        &[
            "admin",
            "add-lab-ssh-key",
            "--lab",
            lab,
            "--public-key",
            public,
            "--database",
            &db.url,
        ],
        &[],
    )
    .unwrap()
}

fn ssh_args(ssh: &str, key: &Path, host_key: &str, user: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--ssh".to_owned(),
        ssh.to_owned(),
        "--ssh-key".to_owned(),
        key.display().to_string(),
        "--ssh-host-key".to_owned(),
        host_key.to_owned(),
    ];
    if let Some(user) = user {
        args.extend(["--ssh-user".to_owned(), user.to_owned()]);
    }
    args
}

fn compile_paper_recipe(t: f64, c: f64) -> Value {
    let out = run_bin(
        "maosic-server",
        &[
            "lang",
            "compile",
            repo("examples/chirality.recipe").to_str().unwrap(),
            "--lab",
            repo("examples/paper-lab.toml").to_str().unwrap(),
            "--set",
            &format!("T={t}"),
            "--set",
            &format!("C={c}"),
        ],
        &[],
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// Runs the paper recipe on the lab's agent and returns the stored records' kinds, checking
/// that they arrived once each and in order.
fn run_program(server: &TestServer, lab: &TestLab, agent: &TestAgent, id: &str) -> Vec<String> {
    let (status, answer) = operator(
        server,
        &format!("labs/{}/call", lab.id),
        Some(json!({
            "method": "program.run",
            "params": { "program_id": id, "program": compile_paper_recipe(130.0, 0.8) },
            "timeout_ms": 120000
        })),
    );
    assert_eq!(status, 200, "{answer}\nagent:\n{}", agent.log());
    assert_eq!(answer["result"]["outcome"], "succeeded", "{answer}");
    let (status, stored) = operator(
        server,
        &format!("labs/{}/programs/{id}/records", lab.id),
        None,
    );
    assert_eq!(status, 200);
    let records = stored["records"].as_array().unwrap();
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as i64).collect::<Vec<_>>());
    records
        .iter()
        .map(|r| {
            let kind = r["kind"].as_str().unwrap().to_owned();
            match r["record"]["body"]["measurement"]["kind"].as_str() {
                Some(measurement) => format!("{kind}:{measurement}"),
                None => kind,
            }
        })
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn ssh_transport(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let tunneled = create_lab(&db, "Remote Group", "ssh-lab").unwrap();
    let direct = create_lab(&db, "Remote Group", "direct-lab").unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (host_key, host_public) = keygen(keys.path(), "host_key");
    let (lab_key, lab_public) = keygen(keys.path(), "lab_key");
    let (stranger_key, _) = keygen(keys.path(), "stranger_key");
    let (_, other_host_public) = keygen(keys.path(), "other_host_key");
    let other_host_fingerprint = fingerprint(&keys.path().join("other_host_key"));

    // Registration: the key goes to one lab; a second lab cannot take it; junk is refused.
    let added = add_key(&db, &tunneled.id, &lab_public);
    assert!(added.status.success(), "{}", added.stderr);
    assert!(
        added.stdout.contains(&fingerprint(&lab_key)),
        "{}",
        added.stdout
    );
    let again = add_key(&db, &direct.id, &lab_public);
    assert!(!again.status.success());
    assert!(
        again.stderr.contains("already registered"),
        "{}",
        again.stderr
    );
    let junk = add_key(&db, &tunneled.id, "ssh-ed25519 not-a-key");
    assert!(!junk.status.success());
    let nolab = add_key(&db, "no-such-lab", &lab_public);
    assert!(!nolab.status.success());

    let host_key_path = host_key.display().to_string();
    let server = TestServer::spawn(
        &db,
        &[
            ("MAOSIC_OPERATOR_TOKEN", TOKEN),
            ("MAOSIC_SSH__ENABLED", "true"),
            ("MAOSIC_SSH__BIND", "127.0.0.1:0"),
            ("MAOSIC_SSH__HOST_KEY", &host_key_path),
            ("MAOSIC_SSH__AUTH_REJECTION_MS", "200"),
        ],
    )
    .unwrap();
    let ssh = server.ssh_addr().unwrap().to_string();
    println!("[{}] ssh endpoint on {ssh}", backend.name());

    // 1. The agent over SSH comes online and runs a program on the virtual lab; its records
    //    are stored once each, in order, and are those a direct agent's run stores.
    let labs = tempfile::tempdir().unwrap();
    let lab_config = virtual_lab_config(labs.path(), 1000.0, 42).unwrap();
    let started = Instant::now();
    let agent = TestAgent::start(
        &server.url(),
        &tunneled.credential,
        &AgentOptions {
            lab: Some(lab_config.clone()),
            args: ssh_args(&ssh, &lab_key, &host_public, None),
            ..Default::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "the agent online over SSH", || {
        Ok(online(&server, &tunneled).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nserver:\n{}", agent.log(), server.log()));
    println!(
        "[{}] virtual-lab agent online over SSH after {} ms",
        backend.name(),
        started.elapsed().as_millis()
    );
    let log = server.log();
    assert!(log.contains("ssh agent authenticated"), "{log}");
    assert!(log.contains("ssh tunnel opened"), "{log}");
    let over_ssh = run_program(&server, &tunneled, &agent, "ssh-run-1");

    let direct_agent = TestAgent::start(
        &server.url(),
        &direct.credential,
        &AgentOptions {
            lab: Some(lab_config.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "the direct agent online", || {
        Ok(online(&server, &direct).then_some(()))
    })
    .unwrap();
    let direct_records = run_program(&server, &direct, &direct_agent, "direct-run-1");
    // The same records (parallel steps may interleave differently from run to run).
    let sorted = |records: &[String]| {
        let mut sorted = records.to_vec();
        sorted.sort();
        sorted
    };
    assert_eq!(sorted(&over_ssh), sorted(&direct_records));
    assert_eq!(
        over_ssh.first().map(String::as_str),
        Some("program_started")
    );
    assert_eq!(
        over_ssh.last().map(String::as_str),
        Some("program_finished")
    );
    println!(
        "[{}] program over SSH: {} records stored once each in order, the same records as direct",
        backend.name(),
        over_ssh.len()
    );
    drop(direct_agent);

    // 2. Refusals, all at once: an unregistered key, a registered key offered for another SSH
    //    user, and a wrong pinned host key (as a key and as a fingerprint).
    let refused = |key: &Path, pin: &str, user: Option<&str>| {
        TestAgent::start(
            &server.url(),
            &direct.credential,
            &AgentOptions {
                args: ssh_args(&ssh, key, pin, user),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let stranger = refused(&stranger_key, &host_public, None);
    let wrong_user = refused(&lab_key, &host_public, Some(&direct.id));
    let wrong_host = refused(&lab_key, &other_host_public, None);
    let wrong_fingerprint = refused(&lab_key, &other_host_fingerprint, None);
    for (agent, what, says) in [
        (&stranger, "unknown client key", "refused key"),
        (&wrong_user, "key for another user", "refused key"),
        (&wrong_host, "changed host key", "not the pinned"),
        (&wrong_fingerprint, "host key fingerprint", "not the pinned"),
    ] {
        // Refused on several attempts (backoff 100 ms → 1 s), not just the first.
        wait_for(Duration::from_secs(20), what, || {
            Ok((agent.log().matches(says).count() >= 3).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    }
    assert!(!online(&server, &direct), "a refused agent got online");
    let log = server.log();
    assert!(log.contains("ssh key refused: not registered"), "{log}");
    assert!(
        log.contains("the SSH user must be the key's lab id"),
        "{log}"
    );
    assert_eq!(
        log.matches("ssh agent authenticated").count(),
        1,
        "only the good agent authenticated:\n{log}"
    );
    assert!(wrong_host.log().contains(&fingerprint(&host_key)));
    println!(
        "[{}] refused: unknown client key, key for another SSH user, changed host key (key and fingerprint pins)",
        backend.name()
    );
    drop((stranger, wrong_user, wrong_host, wrong_fingerprint));

    // A tunnel opened with lab A's key cannot carry lab B's credential: the gateway refuses
    // it (403) and the agent stops with one error (retrying cannot help).
    let mut crossed = TestAgent::start(
        &server.url(),
        &direct.credential,
        &AgentOptions {
            args: ssh_args(&ssh, &lab_key, &host_public, Some(&tunneled.id)),
            ..Default::default()
        },
    )
    .unwrap();
    let exit = crossed.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(exit.is_some_and(|s| !s.success()), "{}", crossed.log());
    assert!(crossed.log().contains("HTTP 403"), "{}", crossed.log());
    assert!(server.log().contains("opened with another lab's key"));
    assert!(
        !online(&server, &direct),
        "the crossed credential got online"
    );
    println!(
        "[{}] refused: lab B's credential through a tunnel opened with lab A's key (HTTP 403, agent exits)",
        backend.name()
    );

    // 3. The process is healthy: /healthz answers, the SSH agent is still connected, and new
    //    agents still connect over SSH and directly.
    assert_eq!(server.get("/healthz").unwrap().0, 200);
    assert!(online(&server, &tunneled));
    drop(agent);
    let (mut ssh_ms, mut direct_ms, mut tunnel_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        for (via_ssh, lab, times) in [
            (true, &tunneled, &mut ssh_ms),
            (false, &direct, &mut direct_ms),
        ] {
            wait_for(Duration::from_secs(10), "the previous agent gone", || {
                Ok((!online(&server, lab)).then_some(()))
            })
            .unwrap();
            let args = if via_ssh {
                ssh_args(&ssh, &lab_key, &host_public, None)
            } else {
                Vec::new()
            };
            let started = Instant::now();
            let agent = TestAgent::start(
                &server.url(),
                &lab.credential,
                &AgentOptions {
                    args,
                    ..Default::default()
                },
            )
            .unwrap();
            wait_for(Duration::from_secs(20), "agent online", || {
                Ok(online(&server, lab).then_some(()))
            })
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            if via_ssh {
                // The agent logs how long TCP + key exchange + authentication + channel took.
                let log = agent.log();
                let line = log.lines().find(|l| l.contains("ssh tunnel open")).unwrap();
                let ms = line.split("elapsed_ms=").nth(1).unwrap();
                let ms: f64 = ms.split_whitespace().next().unwrap().parse().unwrap();
                tunnel_ms.push(ms);
            }
            drop(agent);
        }
    }
    assert_eq!(server.get("/healthz").unwrap().0, 200);
    println!(
        "[{}] agent start to online, median of 7: over SSH {:.0} ms, direct {:.0} ms; SSH tunnel set-up (TCP + key exchange + auth + channel) median {:.0} ms, max {:.0} ms",
        backend.name(),
        median(ssh_ms),
        median(direct_ms),
        median(tunnel_ms.clone()),
        tunnel_ms.iter().copied().fold(0.0, f64::max)
    );
    mark_ran(backend, "ssh_transport");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reach_the_server_over_ssh_and_wrong_keys_are_refused_on_every_backend() {
    for backend in backends() {
        ssh_transport(backend).await;
    }
}

#[tokio::test]
async fn the_ssh_endpoint_generates_a_missing_host_key_and_refuses_sessions() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(
        &db,
        &[
            ("MAOSIC_SSH__ENABLED", "true"),
            ("MAOSIC_SSH__BIND", "127.0.0.1:0"),
        ],
    )
    .unwrap();
    let ssh = server.ssh_addr().unwrap();
    let log = server.log();
    assert!(log.contains("generated a new Ed25519 host key"), "{log}");
    // Whatever an SSH client (here: OpenSSH's, when installed) tries, nothing is granted
    // without a registered key; the process stays up.
    if let Ok(out) = std::process::Command::new("ssh")
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=5",
            "-p",
            &ssh.port().to_string(),
            "nobody@127.0.0.1",
            "true",
        ])
        .output()
    {
        assert!(!out.status.success());
    }
    // A client that never says anything is not a problem either.
    let silent = std::net::TcpStream::connect(ssh).unwrap();
    assert_eq!(server.get("/healthz").unwrap().0, 200);
    drop(silent);
}

/// Issue 15, item 8: one address cannot fill the SSH endpoint with unauthenticated
/// connections: past `max_unauthenticated_per_address` a connection is closed at once, and a
/// client that never completes its handshake is cut after the login grace.
#[tokio::test]
async fn one_address_cannot_fill_the_ssh_endpoint_with_idle_handshakes() {
    use std::io::Read as _;
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(
        &db,
        &[
            ("MAOSIC_SSH__ENABLED", "true"),
            ("MAOSIC_SSH__BIND", "127.0.0.1:0"),
            ("MAOSIC_SSH__MAX_UNAUTHENTICATED_PER_ADDRESS", "4"),
            ("MAOSIC_SSH__LOGIN_GRACE_SECS", "2"),
        ],
    )
    .unwrap();
    let ssh = server.ssh_addr().unwrap();
    // Each reads the server's identification line, then stays silent.
    let banner = |stream: &mut std::net::TcpStream| -> usize {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut buf = [0_u8; 256];
        stream.read(&mut buf).unwrap_or(0)
    };
    let mut idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(ssh).unwrap())
        .collect();
    for s in &mut idle {
        assert!(banner(s) > 0, "the first 4 get the SSH banner");
    }
    let mut fifth = std::net::TcpStream::connect(ssh).unwrap();
    assert_eq!(
        banner(&mut fifth),
        0,
        "the 5th from the same address is closed at once"
    );
    assert!(server
        .log()
        .contains("too many unauthenticated connections from this address"));
    // The silent ones are cut after the 2 s login grace, and the address may connect again.
    let started = Instant::now();
    for s in &mut idle {
        let mut buf = [0_u8; 256];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut within the grace"
    );
    let mut again = std::net::TcpStream::connect(ssh).unwrap();
    assert!(banner(&mut again) > 0, "a new connection is served again");
    assert_eq!(server.get("/healthz").unwrap().0, 200);
}
