//! End-to-end test harness: fresh databases per test (SQLite always, PostgreSQL when
//! `MAOSIC_TEST_POSTGRES_URL` is set), the real `maosic-server` on port 0, real `maosic-agent`
//! processes, and a small GraphQL client. Waiting is always on a condition with a deadline.

pub mod chaos;
pub mod streams;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

/// Environment variable naming the PostgreSQL server used by the PostgreSQL variants.
pub const POSTGRES_URL_ENV: &str = "MAOSIC_TEST_POSTGRES_URL";
/// Environment variable naming a directory where each backend variant that ran leaves a mark.
pub const REPORT_DIR_ENV: &str = "MAOSIC_TEST_REPORT_DIR";

/// A database backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server from `MAOSIC_TEST_POSTGRES_URL`.
    Postgres,
}

impl Backend {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The backends to run: SQLite always, PostgreSQL when its URL is set.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    if std::env::var(POSTGRES_URL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        all.push(Backend::Postgres);
    }
    all
}

/// Records that `test` ran on `backend` (CI checks that the PostgreSQL variants ran).
pub fn mark_ran(backend: Backend, test: &str) {
    if let Ok(dir) = std::env::var(REPORT_DIR_ENV) {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}--{test}", backend.name())), b"ran\n");
    }
}

/// A fresh database for one test, removed when dropped.
pub struct TestDatabase {
    /// Which backend.
    pub backend: Backend,
    /// Connection URL for the server.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

impl TestDatabase {
    /// Creates a fresh, empty database (not migrated).
    pub async fn create(backend: Backend) -> anyhow::Result<TestDatabase> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("maosic.db").display());
                Ok(TestDatabase {
                    backend,
                    url,
                    _dir: Some(dir),
                    pg_admin: None,
                })
            }
            Backend::Postgres => {
                let admin_url = std::env::var(POSTGRES_URL_ENV)
                    .with_context(|| format!("{POSTGRES_URL_ENV} is not set"))?;
                let name = format!("maosic_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnection::connect(&admin_url)
                    .await
                    .with_context(|| format!("cannot reach PostgreSQL at {admin_url}"))?;
                conn.execute(format!("CREATE DATABASE {name}").as_str())
                    .await?;
                conn.close().await?;
                let url = replace_database(&admin_url, &name)?;
                Ok(TestDatabase {
                    backend,
                    url,
                    _dir: None,
                    pg_admin: Some((admin_url, name)),
                })
            }
        }
    }
}

fn replace_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base
        .find("://")
        .ok_or_else(|| anyhow!("not a URL: {url}"))?
        + 3;
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.pg_admin.take() {
            // Drop runs inside async tests: use a private runtime on a separate thread.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(async {
                        if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                            let _ = conn
                                .execute(
                                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                                )
                                .await;
                            let _ = conn.close().await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MAOSIC_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/debug/deps/<test-binary> → target/debug
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of one of the workspace binaries; fails with a hint when it was not built.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (`cargo build --workspace --bins`), as scripts/test does",
            path.display()
        );
    }
    Ok(path)
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs a workspace binary to completion.
pub fn run_bin(name: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Finished> {
    let out = Command::new(bin(name)?)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()?;
    Ok(Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A lab created with `maosic-server admin create-lab`.
pub struct TestLab {
    /// The lab's id.
    pub id: String,
    /// Path of its credential file.
    pub credential: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestLab {
    /// A lab whose credential file is `credential`, kept alive with `dir` (which holds it).
    pub fn with_credential(id: String, credential: PathBuf, dir: tempfile::TempDir) -> TestLab {
        TestLab {
            id,
            credential,
            _dir: dir,
        }
    }
}

/// Creates a lab (and organisation) in `db` through the real CLI.
pub fn create_lab(db: &TestDatabase, org: &str, name: &str) -> anyhow::Result<TestLab> {
    let dir = tempfile::tempdir()?;
    let credential = dir.path().join("credential.json");
    let cred = credential.to_string_lossy().into_owned();
    let out = run_bin(
        "maosic-server",
        &[
            "admin",
            "create-lab",
            "--org",
            org,
            "--name",
            name,
            "--credential-out",
            &cred,
            "--database",
            &db.url,
        ],
        &[],
    )?;
    if !out.status.success() {
        bail!("create-lab failed: {}", out.stderr);
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&credential)?)?;
    let id = file["lab_id"]
        .as_str()
        .ok_or_else(|| anyhow!("credential without lab_id"))?
        .to_owned();
    Ok(TestLab {
        id,
        credential,
        _dir: dir,
    })
}

/// A logged-in account made with [`TestServer::sign_up`].
#[derive(Debug, Clone)]
pub struct Session {
    /// JWT access token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: String,
    /// The user's id.
    pub user_id: String,
    /// The organisation created with the account (the user owns it).
    pub organization_id: String,
    /// The e-mail address.
    pub email: String,
}

/// The `extensions.code` of the first error of a GraphQL response, if any.
pub fn error_code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// The access-token key every test server gets unless a test sets its own.
pub const TEST_JWT_SECRET: &str = "maosic-test-jwt-secret-0123456789abcdef";

/// A running `maosic-server serve` on a free port.
pub struct TestServer {
    /// Bound address.
    pub addr: SocketAddr,
    /// The SSH endpoint's address, from its stdout line when `[ssh]` is enabled.
    ssh: std::sync::Arc<std::sync::OnceLock<SocketAddr>>,
    child: Child,
    log: PathBuf,
    outbox: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system, all threads) the server process has used so far, from Linux's
    /// `/proc/<pid>/stat`.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        process_cpu_seconds(self.child.id())
    }

    /// Starts the server on `db` with extra environment, and waits for its "listening" line.
    pub fn spawn(db: &TestDatabase, env: &[(&str, &str)]) -> anyhow::Result<TestServer> {
        Self::spawn_on(db, "127.0.0.1:0", env)
    }

    /// Like [`TestServer::spawn`], listening on `bind` (e.g. the address of a server this one
    /// replaces after a kill, so agents reconnect to it).
    pub fn spawn_on(
        db: &TestDatabase,
        bind: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<TestServer> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let outbox = dir.path().join("outbox.jsonl");
        let mut child = Command::new(bin("maosic-server")?)
            .args(["serve", "--bind", bind, "--database", &db.url])
            .current_dir(dir.path())
            // The development mailer, so sign-ups can be verified; tests sign up many accounts
            // from 127.0.0.1. Both can be overridden through `env`.
            .env("MAOSIC_MAIL__OUTBOX_FILE", &outbox)
            .env("MAOSIC_AUTH__MAX_SIGNUPS_PER_ADDRESS", "100000")
            // Replicas on one database share the key (required with PostgreSQL).
            .env("MAOSIC_AUTH__JWT_SECRET", TEST_JWT_SECRET)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from server"))?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("maosic-server listening on http://") {
                        break rest.trim().parse::<SocketAddr>()?;
                    }
                    if let Some(rest) = line.strip_prefix("maosic-server listening on https://") {
                        break rest.trim().parse::<SocketAddr>()?;
                    }
                }
                _ => {
                    let _ = child.wait();
                    bail!(
                        "server exited before listening:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe, and pick up the
        // SSH endpoint's line when it comes.
        let ssh = std::sync::Arc::new(std::sync::OnceLock::new());
        let ssh_seen = ssh.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("maosic-server ssh listening on ") {
                    if let Ok(addr) = rest.trim().parse::<SocketAddr>() {
                        let _ = ssh_seen.set(addr);
                    }
                }
            }
        });
        Ok(TestServer {
            addr,
            ssh,
            child,
            log,
            outbox,
            _dir: dir,
        })
    }

    /// The development mailer's file (`[mail] outbox_file`): one JSON object per mail.
    pub fn outbox_path(&self) -> &Path {
        &self.outbox
    }

    /// The mails delivered so far to `email`, oldest first.
    pub fn mails_to(&self, email: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.outbox)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|m| m["to"] == email)
            .collect()
    }

    /// The e-mail verification tokens (`mvt_…`) mailed to `email`, oldest first.
    pub fn verification_tokens(&self, email: &str) -> Vec<String> {
        self.mails_to(email)
            .iter()
            .filter_map(|m| {
                m["body"].as_str().and_then(|b| {
                    b.split_whitespace()
                        .find(|w| w.starts_with("mvt_"))
                        .map(str::to_owned)
                })
            })
            .collect()
    }

    /// Waits (up to 10 s) for the `n`-th (0-based) verification token mailed to `email`.
    pub fn wait_verification_token(&self, email: &str, n: usize) -> anyhow::Result<String> {
        wait_for(
            Duration::from_secs(10),
            &format!("verification mail {n} to {email}"),
            || Ok(self.verification_tokens(email).get(n).cloned()),
        )
        .map(|(t, _)| t)
        .map_err(|e| anyhow!("{e}\n{}", self.log()))
    }

    /// The SSH endpoint's address (the server must run with `MAOSIC_SSH__ENABLED=true`);
    /// waits up to 10 s for its stdout line.
    pub fn ssh_addr(&self) -> anyhow::Result<SocketAddr> {
        wait_for(Duration::from_secs(10), "the ssh listening line", || {
            Ok(self.ssh.get().copied())
        })
        .map(|(addr, _)| addr)
        .map_err(|e| anyhow!("{e}\n{}", self.log()))
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POSTs a GraphQL query and returns the whole response body.
    pub fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let body = json!({ "query": query, "variables": variables });
        let mut response = ureq::post(format!("{}/graphql", self.url()))
            .header("content-type", "application/json")
            .send_json(&body)?;
        Ok(response.body_mut().read_json::<Value>()?)
    }

    /// POSTs a GraphQL query with a bearer token (when given) and extra headers; returns the
    /// HTTP status and the JSON body (whatever the status).
    pub fn graphql_with(
        &self,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = ureq::post(format!("{}/graphql", self.url()))
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", &format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.send(body.to_string())?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// POSTs a GraphQL query as the holder of `token`; returns the whole response body.
    pub fn graphql_as(&self, token: &str, query: &str, variables: Value) -> anyhow::Result<Value> {
        let body = json!({ "query": query, "variables": variables });
        Ok(self.graphql_with(Some(token), &[], &body)?.1)
    }

    /// Signs up a new account (with its own organisation named `org`) through the API:
    /// `signUp`, the verification token from the development mailer's outbox, `verifyEmail`.
    pub fn sign_up(&self, email: &str, org: &str) -> anyhow::Result<Session> {
        let seen = self.verification_tokens(email).len();
        let body = self.graphql(
            "mutation($e: String!, $o: String!) { signUp(email: $e, password: \"correct horse battery\", \
             displayName: \"Test User\", organizationName: $o) }",
            json!({ "e": email, "o": org }),
        )?;
        if body["data"]["signUp"] != json!(true) {
            bail!("signUp failed: {body}");
        }
        let token = self.wait_verification_token(email, seen)?;
        let body = self.graphql(
            "mutation($t: String!) { verifyEmail(token: $t) { accessToken refreshToken \
             user { id memberships { organization { id } } } } }",
            json!({ "t": token }),
        )?;
        let s = &body["data"]["verifyEmail"];
        let text = |v: &Value| -> anyhow::Result<String> {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("verifyEmail failed: {body}"))
        };
        Ok(Session {
            access_token: text(&s["accessToken"])?,
            refresh_token: text(&s["refreshToken"])?,
            user_id: text(&s["user"]["id"])?,
            organization_id: text(&s["user"]["memberships"][0]["organization"]["id"])?,
            email: email.to_owned(),
        })
    }

    /// Creates a lab in the session's organisation and enrolls an agent credential for it
    /// with a one-time token and the real `maosic-agent enroll`.
    pub fn create_enrolled_lab(&self, session: &Session, name: &str) -> anyhow::Result<TestLab> {
        let body = self.graphql_as(
            &session.access_token,
            "mutation($o: ID!, $n: String!) { createLab(organizationId: $o, name: $n) { id } }",
            json!({ "o": session.organization_id, "n": name }),
        )?;
        let id = body["data"]["createLab"]["id"]
            .as_str()
            .ok_or_else(|| anyhow!("createLab failed: {body}"))?
            .to_owned();
        let token = self.enrollment_token(session, &id)?;
        let dir = tempfile::tempdir()?;
        let credential = dir.path().join("credential.json");
        let out = self.enroll(&token, &credential)?;
        if !out.status.success() {
            bail!("enroll failed: {}", out.stderr);
        }
        Ok(TestLab {
            id,
            credential,
            _dir: dir,
        })
    }

    /// A one-time enrollment token for a lab.
    pub fn enrollment_token(&self, session: &Session, lab_id: &str) -> anyhow::Result<String> {
        let body = self.graphql_as(
            &session.access_token,
            "mutation($l: ID!) { createEnrollmentToken(labId: $l) { token } }",
            json!({ "l": lab_id }),
        )?;
        Ok(body["data"]["createEnrollmentToken"]["token"]
            .as_str()
            .ok_or_else(|| anyhow!("createEnrollmentToken failed: {body}"))?
            .to_owned())
    }

    /// Runs `maosic-agent enroll` against this server.
    pub fn enroll(&self, token: &str, credential_out: &Path) -> anyhow::Result<Finished> {
        let out = credential_out.to_string_lossy().into_owned();
        run_bin(
            "maosic-agent",
            &[
                "enroll",
                "--server",
                &self.url(),
                "--token",
                token,
                "--credential-out",
                &out,
            ],
            &[],
        )
    }

    /// The values of `/metrics` (loopback scrape), by series: `name{labels}` as printed.
    pub fn metrics(&self) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
        let (status, text) = self.get("/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// GETs a path and returns status and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = ureq::get(format!("{}{path}", self.url()))
            .config()
            .http_status_as_error(false)
            .build()
            .call()?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string()?;
        Ok((status, body))
    }

    /// `GET path` with an `Authorization` header: status and body.
    pub fn get_as(&self, path: &str, authorization: &str) -> anyhow::Result<(u16, String)> {
        let response = ureq::get(format!("{}{path}", self.url()))
            .header("authorization", authorization)
            .config()
            .http_status_as_error(false)
            .build()
            .call()?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_string()?;
        Ok((status, body))
    }

    /// `GET path`: status and the response headers (lower-case names).
    pub fn get_with_headers(
        &self,
        path: &str,
    ) -> anyhow::Result<(u16, std::collections::HashMap<String, String>)> {
        let response = ureq::get(format!("{}{path}", self.url()))
            .config()
            .http_status_as_error(false)
            .build()
            .call()?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_lowercase(), v.to_str().ok()?.to_owned())))
            .collect();
        Ok((status, headers))
    }

    /// Stops the server hard (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How [`TestAgent::start`] runs `maosic-agent run`.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `--lab`: the lab configuration (e.g. the virtual lab); none = presence only.
    pub lab: Option<PathBuf>,
    /// `--descriptor`, announced when no lab is run.
    pub descriptor: Option<PathBuf>,
    /// `--spool`; none = a fresh spool in the agent's own temporary directory.
    pub spool: Option<PathBuf>,
    /// `--backoff-base-ms` and `--backoff-cap-ms` (default 100 ms and 1 s).
    pub backoff_ms: (u64, u64),
    /// `RUST_LOG` of the agent; none = its default (`info`).
    pub log_filter: Option<String>,
    /// Further arguments (e.g. `--spool-max-bytes N`).
    pub args: Vec<String>,
    /// Further environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            lab: None,
            descriptor: None,
            spool: None,
            backoff_ms: (100, 1000),
            log_filter: None,
            args: Vec::new(),
            env: Vec::new(),
        }
    }
}

/// A running `maosic-agent run`.
pub struct TestAgent {
    child: Child,
    log: PathBuf,
    spool: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts an agent for `lab` against `server`, announcing `descriptor` when given.
    pub fn spawn(
        server: &str,
        credential: &Path,
        descriptor: Option<&Path>,
    ) -> anyhow::Result<TestAgent> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("agent.log");
        let mut cmd = Command::new(bin("maosic-agent")?);
        cmd.args(["run", "--server", server, "--credential"])
            .arg(credential)
            .args(["--backoff-base-ms", "100", "--backoff-cap-ms", "1000"])
            .arg("--spool")
            .arg(dir.path().join("spool.db"));
        let spool = dir.path().join("spool.db");
        if let Some(d) = descriptor {
            cmd.arg("--descriptor").arg(d);
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(TestAgent {
            child,
            log,
            spool,
            _dir: dir,
        })
    }

    /// Starts an agent that runs the lab configured in `lab_config` (e.g. the virtual lab),
    /// with a fresh spool.
    pub fn spawn_with_lab(
        server: &str,
        credential: &Path,
        lab_config: &Path,
    ) -> anyhow::Result<TestAgent> {
        Self::spawn_with_lab_and_spool(server, credential, lab_config, None)
    }

    /// Like [`TestAgent::spawn_with_lab`], with the spool at `spool` when given (so a restarted
    /// agent finds what its predecessor had not delivered).
    pub fn spawn_with_lab_and_spool(
        server: &str,
        credential: &Path,
        lab_config: &Path,
        spool: Option<&Path>,
    ) -> anyhow::Result<TestAgent> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("agent.log");
        let spool = spool.map_or_else(|| dir.path().join("spool.db"), Path::to_path_buf);
        let child = Command::new(bin("maosic-agent")?)
            .args(["run", "--server", server, "--credential"])
            .arg(credential)
            .arg("--lab")
            .arg(lab_config)
            .args(["--backoff-base-ms", "100", "--backoff-cap-ms", "1000"])
            .arg("--spool")
            .arg(&spool)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(TestAgent {
            child,
            log,
            spool,
            _dir: dir,
        })
    }

    /// Starts `maosic-agent run --server SERVER --credential CREDENTIAL` as `options` say.
    pub fn start(
        server: &str,
        credential: &Path,
        options: &AgentOptions,
    ) -> anyhow::Result<TestAgent> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("agent.log");
        let spool = options
            .spool
            .clone()
            .unwrap_or_else(|| dir.path().join("spool.db"));
        let (base, cap) = options.backoff_ms;
        let mut cmd = Command::new(bin("maosic-agent")?);
        cmd.args(["run", "--server", server, "--credential"])
            .arg(credential)
            .args(["--backoff-base-ms", &base.to_string()])
            .args(["--backoff-cap-ms", &cap.to_string()])
            .arg("--spool")
            .arg(&spool);
        if let Some(lab) = &options.lab {
            cmd.arg("--lab").arg(lab);
        }
        if let Some(descriptor) = &options.descriptor {
            cmd.arg("--descriptor").arg(descriptor);
        }
        if let Some(filter) = &options.log_filter {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(TestAgent {
            child,
            log,
            spool,
            _dir: dir,
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's local control socket (beside its spool, when it runs a lab).
    pub fn control_socket(&self) -> PathBuf {
        self.spool.with_extension("sock")
    }

    /// SIGKILL: the process dies without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: a clean stop (the agent says goodbye); waits for the exit.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        Ok(self.child.wait()?)
    }

    /// Waits for the agent to exit on its own, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A graphql-ws (graphql-transport-ws) client over a real WebSocket to `/graphql/ws`.
pub struct GraphqlWs {
    socket: tungstenite::WebSocket<std::net::TcpStream>,
}

impl GraphqlWs {
    /// Connects and sends `connection_init` with `{"authorization": "Bearer TOKEN"}`; returns
    /// the first server message (`connection_ack`, or why the server refused) with the client.
    pub fn connect(server: &TestServer, token: &str) -> anyhow::Result<(GraphqlWs, Value)> {
        let stream = std::net::TcpStream::connect(server.addr)?;
        let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/graphql/ws",
            server.addr
        ))?;
        let mut request = request;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            tungstenite::http::HeaderValue::from_static("graphql-transport-ws"),
        );
        let (socket, _) = tungstenite::client(request, stream)
            .map_err(|e| anyhow!("websocket handshake failed: {e}"))?;
        let mut ws = GraphqlWs { socket };
        ws.send(&json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }))?;
        let first = ws.next(Duration::from_secs(10))?.unwrap_or(Value::Null);
        Ok((ws, first))
    }

    /// Sends one protocol message.
    pub fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .map_err(|e| anyhow!("send failed: {e}"))
    }

    /// Starts subscription `id`.
    pub fn subscribe(&mut self, id: &str, query: &str, variables: Value) -> anyhow::Result<()> {
        self.send(&json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } }))
    }

    /// The next message within `timeout` (`None` on timeout); a close frame is returned as
    /// `{"type": "close", "code": N}`; pings are answered.
    pub fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.get_mut().set_read_timeout(Some(left))?;
            match self.socket.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["type"] == "ping" {
                        self.send(&json!({ "type": "pong" }))?;
                        continue;
                    }
                    return Ok(Some(v));
                }
                Ok(tungstenite::Message::Close(frame)) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    return Ok(Some(json!({ "type": "close", "code": code })));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Some(json!({ "type": "close", "code": 1006 })));
                }
                Err(e) => return Err(anyhow!("websocket read failed: {e}")),
            }
        }
    }
}

/// A bare agent-protocol client over a real WebSocket (no spool, no executor, no backoff): what
/// tests and benches use to drive the agent gateway frame by frame.
pub struct RawAgent {
    socket: tungstenite::WebSocket<std::net::TcpStream>,
    /// The server's answer to `hello` (`lab_id`, `generation`, `heartbeat_ms`).
    pub hello: Value,
}

impl RawAgent {
    /// Connects to `addr` with the credential file `credential` (from `create_lab` or
    /// enrollment) and completes `hello`.
    pub fn connect(addr: SocketAddr, credential: &Path) -> anyhow::Result<RawAgent> {
        let token = agent_token(credential)?;
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{addr}/agent/v1/ws"
        ))?;
        request.headers_mut().insert(
            "authorization",
            tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let (socket, _) = tungstenite::client(request, stream)
            .map_err(|e| anyhow!("agent handshake failed: {e}"))?;
        let mut agent = RawAgent {
            socket,
            hello: Value::Null,
        };
        agent.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "hello",
            "params": {"agent_version": "raw", "devices": []}}))?;
        loop {
            let m = agent
                .next(Duration::from_secs(10))?
                .ok_or_else(|| anyhow!("no answer to hello"))?;
            if m["id"] == json!(1) {
                agent.hello = m
                    .get("result")
                    .cloned()
                    .ok_or_else(|| anyhow!("hello refused: {m}"))?;
                return Ok(agent);
            }
        }
    }

    /// Queues one message (sent at the next [`RawAgent::flush`] or [`RawAgent::send`]).
    pub fn write(&mut self, message: &Value) -> anyhow::Result<()> {
        self.socket
            .write(tungstenite::Message::text(message.to_string()))
            .map_err(|e| anyhow!("write failed: {e}"))
    }

    /// Sends what was queued.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.socket
            .flush()
            .map_err(|e| anyhow!("flush failed: {e}"))
    }

    /// Sends one message now.
    pub fn send(&mut self, message: &Value) -> anyhow::Result<()> {
        self.write(message)?;
        self.flush()
    }

    /// The next JSON message within `timeout` (`None` on timeout); a close frame is returned as
    /// `{"type": "close", "code": N, "reason": "..."}`.
    pub fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        self.socket
            .get_mut()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        loop {
            match self.socket.read() {
                Ok(tungstenite::Message::Text(t)) => return Ok(Some(serde_json::from_str(&t)?)),
                Ok(tungstenite::Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    return Ok(Some(
                        json!({ "type": "close", "code": code, "reason": reason }),
                    ));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Some(json!({ "type": "close", "code": 1006, "reason": "" })));
                }
                Err(e) => return Err(anyhow!("websocket read failed: {e}")),
            }
        }
    }

    /// Closes the connection.
    pub fn close(mut self) {
        let _ = self.socket.close(None);
        let _ = self.socket.flush();
    }
}

/// CPU time (user + system, all threads) process `pid` has used so far, from Linux's
/// `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // the first is field 3 (state), so utime and stime (fields 14 and 15) are at 11 and 12.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc stat: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc stat: {stat}"))?
            .parse::<f64>()?)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// A bench program's command line: `--name N` options (unsigned integers) and `--flag`
/// switches, each from the lists it accepts; `--bench`, which `cargo bench` passes to every
/// bench program, is ignored, anything else refused.
pub struct BenchArgs {
    values: std::collections::HashMap<String, u64>,
    switches: std::collections::HashSet<String>,
}

impl BenchArgs {
    /// Parses this process's arguments.
    pub fn parse(values: &[&str], switches: &[&str]) -> anyhow::Result<BenchArgs> {
        let mut out = BenchArgs {
            values: std::collections::HashMap::new(),
            switches: std::collections::HashSet::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            if values.contains(&a.as_str()) {
                let v = args
                    .next()
                    .ok_or_else(|| anyhow!("{a} needs a value"))?
                    .parse::<u64>()
                    .map_err(|e| anyhow!("{a}: {e}"))?;
                out.values.insert(a, v);
            } else if switches.contains(&a.as_str()) {
                out.switches.insert(a);
            } else if a != "--bench" {
                bail!("unknown argument {a}");
            }
        }
        Ok(out)
    }

    /// The value of `--name`, or `default`.
    pub fn get(&self, name: &str, default: u64) -> u64 {
        self.values.get(name).copied().unwrap_or(default)
    }

    /// The value of `--name` as a count, or `default`.
    pub fn count(&self, name: &str, default: usize) -> anyhow::Result<usize> {
        self.values.get(name).map_or(Ok(default), |v| {
            usize::try_from(*v).map_err(|e| anyhow!("{name}: {e}"))
        })
    }

    /// Whether the switch `--name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.switches.contains(name)
    }
}

/// The bearer token (`<credential_id>.<secret>`) of an agent credential file.
pub fn agent_token(credential: &Path) -> anyhow::Result<String> {
    let file: Value = serde_json::from_str(&std::fs::read_to_string(credential)?)?;
    let part = |k: &str| {
        file[k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{} has no {k}", credential.display()))
    };
    Ok(format!("{}.{}", part("credential_id")?, part("secret")?))
}

/// The median of `v` (0 for none): what the benches report of their rounds.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of the virtual-lab agent configuration (`examples/agent-lab-virtual.toml`) with its
/// lab clock at `speed`× (`f64::INFINITY`: `max`, the file's default) and its seed set, written
/// into `dir`.
pub fn virtual_lab_config(dir: &Path, speed: f64, seed: u64) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(repo_root().join("examples/agent-lab-virtual.toml"))?;
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("speed =") {
            if speed.is_finite() {
                out.push_str(&format!("speed = {speed:.1}\n"));
            } else {
                out.push_str("speed = \"max\"\n");
            }
        } else if trimmed.starts_with("seed =") {
            out.push_str(&format!("seed = {seed}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join("agent-lab.toml");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// The example virtual lab (`examples/agent-lab-virtual.toml`, seed 42) paced at `speed`x the
/// wall clock, written once per process: for tests whose scenario needs records that flow for
/// seconds of wall time (a link cut, a server kill, an outage in the middle of a stream); the
/// file's default speed, `max`, runs such a stream in a moment.
pub fn paced_virtual_lab(speed: f64) -> PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"));
    let sub = dir.path().join(format!("paced-{speed}"));
    let _ = std::fs::create_dir_all(&sub);
    virtual_lab_config(&sub, speed, 42).expect("the paced lab configuration")
}

/// The value of variable `name` in a typed parameter list (`[{name, value}]`, as
/// `Experiment.parameters` and `Campaign.bestParameters` return it).
pub fn param(list: &serde_json::Value, name: &str) -> Option<f64> {
    list.as_array()?.iter().find(|p| p["name"] == name)?["value"].as_f64()
}

/// Polls `probe` until it returns `Some`, or fails after `timeout`. Returns the value and the
/// time it took.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    loop {
        if let Some(v) = probe()? {
            return Ok((v, started.elapsed()));
        }
        if started.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}
