//! Typed, layered configuration: embedded defaults → optional file → `MAOSIC_` environment →
//! command-line overrides; validated once at start-up into [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::storage::{DatabaseUrl, PoolSettings};

/// The commented defaults, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Errors loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or has the wrong shape.
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    /// A value is present but unusable.
    #[error("configuration: {key}: {reason}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// Why it is unusable.
        reason: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Load(Box::new(e))
    }
}

/// The configuration as written (strings, before validation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawConfig {
    /// Listen address.
    pub bind: String,
    /// Database URL.
    pub database: String,
    /// Apply migrations on `serve`.
    pub auto_migrate: bool,
    /// Pool size.
    pub max_connections: u32,
    /// Connection timeout in seconds.
    pub connect_timeout_secs: u64,
    /// Logging.
    pub log: LogConfig,
    /// Agent link.
    pub agent: AgentConfig,
    /// GraphQL endpoint.
    pub graphql: GraphqlConfig,
    /// Accounts, tokens and login limits.
    pub auth: AuthConfig,
    /// Outgoing mail.
    pub mail: MailConfig,
    /// The campaign engine.
    pub campaigns: CampaignsConfig,
    /// Bearer token of the operator API (`/operator/v1`); absent = the operator API is off.
    /// At least 32 characters.
    #[serde(default)]
    pub operator_token: Option<String>,
    /// Bearer token `/metrics` requires; absent = `/metrics` answers loopback clients only
    /// (a scraper on the same host or pod).
    #[serde(default)]
    pub metrics_token: Option<String>,
    /// TLS termination.
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
    /// The SSH endpoint for agents behind SSH-only firewalls.
    #[serde(default)]
    pub ssh: SshConfig,
}

/// Accounts, tokens and login limits (docs/reliability.md rule 8).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthConfig {
    /// HS256 key for access tokens, at least 32 bytes; empty = a random key per process
    /// (tokens then die with the process; a warning is logged).
    pub jwt_secret: String,
    /// Previous HS256 keys, still accepted for verification (not for signing) while the tokens
    /// they signed expire: the key set for rotation. Each at least 32 bytes.
    #[serde(default)]
    pub jwt_previous_secrets: Vec<String>,
    /// `iss` claim issued and required.
    pub issuer: String,
    /// `aud` claim issued and required.
    pub audience: String,
    /// Access-token lifetime in seconds.
    pub access_ttl_secs: u64,
    /// Refresh-token lifetime in seconds.
    pub refresh_ttl_secs: u64,
    /// Enrollment-token lifetime in seconds.
    pub enrollment_ttl_secs: u64,
    /// Invitation lifetime in seconds.
    pub invitation_ttl_secs: u64,
    /// argon2id memory in KiB (at least 19456).
    pub argon2_memory_kib: u32,
    /// argon2id iterations (at least 2).
    pub argon2_iterations: u32,
    /// Failed logins per account within the window before it is locked for the window.
    pub max_failures_per_account: u32,
    /// Failed logins per client address within the window before it is locked.
    pub max_failures_per_address: u32,
    /// The failure-counting window in seconds.
    pub failure_window_secs: u64,
    /// Replaced by `trusted_proxies` (issue 15): `true` is refused at start-up with a message
    /// naming the new key (it trusted the header from anyone); `false` is accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_forwarded_for: Option<bool>,
    /// Addresses or CIDR ranges of the reverse proxies whose `X-Forwarded-For` is believed;
    /// empty = the header is ignored and the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Shortest accepted password.
    pub min_password_len: usize,
    /// Sign-ups per e-mail address within the sign-up window.
    pub max_signups_per_email: u32,
    /// Sign-ups per client address within the sign-up window.
    pub max_signups_per_address: u32,
    /// The sign-up counting window in seconds.
    pub signup_window_secs: u64,
    /// argon2 hashes that log-in and password change may run at once.
    pub login_hash_slots: usize,
    /// argon2 hashes that sign-up may run at once (a separate budget: sign-ups cannot starve
    /// log-ins).
    pub signup_hash_slots: usize,
    /// Mark the refresh-token cookie `Secure` (set it when clients reach the server over HTTPS
    /// through a TLS-terminating proxy; with `[tls]` on it is always set).
    pub secure_cookies: bool,
}

/// Outgoing mail (e-mail verification). Mail is queued in the database (`mail_outbox`) and
/// delivered by a background task; the development mailer appends each mail to a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailConfig {
    /// Development mailer: append each mail as one JSON line to this file. Empty = no mailer
    /// in this process (mail stays queued in the outbox for another deliverer).
    pub outbox_file: String,
    /// Sender address written in each mail.
    pub from: String,
    /// How long a sign-up's verification token stays valid, in seconds.
    pub verification_ttl_secs: u64,
    /// Longest pause between two looks at the outbox, in ms (a queued mail wakes it sooner).
    pub poll_ms: u64,
}

/// Log output settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    /// tracing env-filter directives.
    pub filter: String,
    /// Output format.
    pub format: LogFormat,
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`): spans are exported as
    /// OpenTelemetry traces. Unset: traces are off.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled (0–1); a trace continued from a caller's `traceparent`
    /// follows the caller's decision.
    #[serde(default = "default_trace_sample_ratio")]
    pub trace_sample_ratio: f64,
}

fn default_trace_sample_ratio() -> f64 {
    1.0
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The campaign engine: how often it looks at the queue, how long a claim waits for the agent
/// to start, and how long a reconnected agent has to replay a program's end before the
/// experiment is reported as interrupted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignsConfig {
    /// Run the engine in this process.
    pub engine: bool,
    /// Longest pause between two engine passes, ms (mutations wake it sooner; program records
    /// are acted on as they are stored, without a pass).
    pub tick_ms: u64,
    /// A claimed experiment with no record from the agent after this long may be claimed again, ms.
    pub lease_ms: u64,
    /// How long a replica's hold on a lab's campaigns lasts without renewal, ms (renewed every
    /// fifth of it): a dead replica's labs are taken over by another within about this long.
    #[serde(default = "default_engine_lease_ms")]
    pub engine_lease_ms: u64,
    /// After an agent reconnects without a running experiment, wait this long for the end of the
    /// program to be replayed from its spool before reporting it interrupted, ms.
    pub interrupted_grace_ms: u64,
    /// Time budget of one campaign step (an ask, or the analysis of one experiment), ms. A step
    /// over it counts as a failure; the engine goes on with the other campaigns meanwhile.
    #[serde(default = "default_step_timeout_ms")]
    pub step_timeout_ms: u64,
    /// Consecutive failed steps (error, panic, timeout) after which a campaign is paused with
    /// the reason.
    #[serde(default = "default_max_step_failures")]
    pub max_step_failures: u32,
    /// Most records of one experiment the engine reads to conclude it (and an export per
    /// experiment); more are reported in the experiment's error.
    #[serde(default = "default_max_records_per_experiment")]
    pub max_records_per_experiment: usize,
}

fn default_max_records_per_experiment() -> usize {
    20_000
}

fn default_engine_lease_ms() -> u64 {
    5_000
}

fn default_step_timeout_ms() -> u64 {
    20_000
}

fn default_max_step_failures() -> u32 {
    3
}

/// Agent link settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Heartbeat period in ms.
    pub heartbeat_ms: u64,
    /// Largest accepted WebSocket message in bytes.
    pub max_message_bytes: usize,
    /// Seconds allowed before `hello`.
    pub hello_timeout_secs: u64,
    /// Records per second one lab may store (sustained); over it the agent is throttled and
    /// its records wait in its spool.
    #[serde(default = "default_records_per_second")]
    pub max_records_per_second: u32,
    /// Records a lab may send at once above the sustained rate.
    #[serde(default = "default_record_burst")]
    pub record_burst: u32,
    /// Bytes of records one lab may store per UTC day; over it the agent is throttled until
    /// the next day (its records wait in its spool).
    #[serde(default = "default_bytes_per_day")]
    pub max_bytes_per_day: u64,
    /// Most points of one spectrum (any array in a measurement); a longer one is stored as a
    /// `rejected` record saying why, never as data.
    #[serde(default = "default_spectrum_points")]
    pub max_spectrum_points: usize,
}

fn default_records_per_second() -> u32 {
    1_000
}

fn default_record_burst() -> u32 {
    20_000
}

fn default_bytes_per_day() -> u64 {
    2 * 1024 * 1024 * 1024
}

fn default_spectrum_points() -> usize {
    16_384
}

impl AgentConfig {
    /// The heartbeat period.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Silence after which a peer is dead: three heartbeat periods (docs/reliability.md rule 3).
    pub fn dead_after(&self) -> Duration {
        self.heartbeat() * 3
    }
}

/// GraphQL endpoint settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphqlConfig {
    /// Serve GraphiQL on `GET /graphql`.
    pub graphiql: bool,
    /// Answer introspection queries.
    pub introspection: bool,
    /// Operations (subscriptions, queries, mutations) one `/graphql/ws` socket may run at once.
    #[serde(default = "default_max_ws_operations")]
    pub max_ws_operations: usize,
    /// Deepest accepted selection nesting.
    pub max_depth: usize,
    /// Highest accepted query complexity (one per field, lists count their limit).
    pub max_complexity: usize,
    /// Most aliases in one document.
    pub max_aliases: usize,
    /// Most operations in one batch request.
    pub max_batch: usize,
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Bytes of GraphQL documents one caller may make this replica parse per second, refilled
    /// into a bucket of `query_burst_bytes` (each operation costs at least 1 KiB).
    #[serde(default = "default_query_bytes_per_second")]
    pub query_bytes_per_second: usize,
    /// The bucket of `query_bytes_per_second`: at least `max_body_bytes`.
    #[serde(default = "default_query_burst_bytes")]
    pub query_burst_bytes: usize,
    /// Time limit of one request's execution in ms.
    pub timeout_ms: u64,
    /// TESTS ONLY: skip the resolvers' authorisation checks so that PostgreSQL row-level
    /// security alone must hold (the tenant-isolation sweep). Never set in production.
    #[serde(default)]
    pub test_disable_app_filter: bool,
}

/// Command-line values that override every other layer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    /// `--database`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub bind: SocketAddr,
    /// Database.
    pub database: DatabaseUrl,
    /// Apply migrations on `serve`.
    pub auto_migrate: bool,
    /// Pool settings.
    pub pool: PoolSettings,
    /// Logging.
    pub log: LogConfig,
    /// Agent link.
    pub agent: AgentConfig,
    /// GraphQL.
    pub graphql: GraphqlConfig,
    /// Accounts and tokens.
    pub auth: AuthConfig,
    /// The reverse proxies whose `X-Forwarded-For` is believed (from `auth.trusted_proxies`).
    pub trusted_proxies: crate::api::forwarded::TrustedProxies,
    /// Outgoing mail.
    pub mail: MailConfig,
    /// The campaign engine.
    pub campaigns: CampaignsConfig,
    /// Operator API token; `None` disables the operator API.
    pub operator_token: Option<String>,
    /// `/metrics` token; `None` = loopback clients only.
    pub metrics_token: Option<String>,
    /// TLS termination (plain HTTP when not enabled).
    pub tls: crate::tls::TlsConfig,
    /// The SSH endpoint (off unless `ssh.enabled`).
    pub ssh: SshConfig,
}

impl Config {
    /// Loads all layers. `file` is an explicit `--config`; without it `./maosic.toml` is read
    /// when it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid {
                        key: "--config",
                        reason: format!("file {} does not exist", path.display()),
                    });
                }
                figment = figment.merge(Toml::file(path));
            }
            None => {
                let default_path = PathBuf::from("maosic.toml");
                if default_path.exists() {
                    figment = figment.merge(Toml::file(default_path));
                }
            }
        }
        let raw: RawConfig = figment
            .merge(
                Env::prefixed("MAOSIC_")
                    .split("__")
                    .ignore(&["test_postgres_url"]),
            )
            .merge(Serialized::defaults(overrides))
            .extract()?;
        Config::validate(raw)
    }

    /// Turns the raw values into typed ones, refusing unusable values.
    pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let bind: SocketAddr = raw.bind.parse().map_err(|e| ConfigError::Invalid {
            key: "bind",
            reason: format!("{:?} is not ADDRESS:PORT ({e})", raw.bind),
        })?;
        let database = DatabaseUrl::parse(&raw.database).map_err(|e| ConfigError::Invalid {
            key: "database",
            reason: e.to_string(),
        })?;
        if raw.agent.heartbeat_ms < 50 {
            return Err(ConfigError::Invalid {
                key: "agent.heartbeat_ms",
                reason: "must be at least 50".into(),
            });
        }
        if raw.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                reason: "must be at least 1".into(),
            });
        }
        if raw.auth.argon2_memory_kib < 19_456 || raw.auth.argon2_iterations < 2 {
            return Err(ConfigError::Invalid {
                key: "auth.argon2_memory_kib",
                reason: "argon2id needs at least 19456 KiB and 2 iterations".into(),
            });
        }
        if !raw.auth.jwt_secret.is_empty() && raw.auth.jwt_secret.len() < 32 {
            return Err(ConfigError::Invalid {
                key: "auth.jwt_secret",
                reason: "must be at least 32 bytes (or empty for a random per-process key)".into(),
            });
        }
        if raw.auth.jwt_previous_secrets.iter().any(|s| s.len() < 32) {
            return Err(ConfigError::Invalid {
                key: "auth.jwt_previous_secrets",
                reason: "every previous key must be at least 32 bytes".into(),
            });
        }
        if raw.auth.access_ttl_secs == 0
            || raw.auth.issuer.is_empty()
            || raw.auth.audience.is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "auth",
                reason: "access_ttl_secs, issuer and audience must be set".into(),
            });
        }
        if raw.auth.trust_forwarded_for == Some(true) {
            return Err(ConfigError::Invalid {
                key: "auth.trust_forwarded_for",
                reason: "was replaced by auth.trusted_proxies: list the addresses or CIDR ranges \
                         of your reverse proxies (e.g. trusted_proxies = [\"10.0.0.0/8\"], or \
                         MAOSIC_AUTH__TRUSTED_PROXIES='[\"10.0.0.5\"]'); X-Forwarded-For is only \
                         read from those peers"
                    .into(),
            });
        }
        let trusted_proxies = crate::api::forwarded::TrustedProxies::parse(
            &raw.auth.trusted_proxies,
        )
        .map_err(|reason| ConfigError::Invalid {
            key: "auth.trusted_proxies",
            reason,
        })?;
        if raw.auth.login_hash_slots == 0 || raw.auth.signup_hash_slots == 0 {
            return Err(ConfigError::Invalid {
                key: "auth.login_hash_slots",
                reason: "login_hash_slots and signup_hash_slots must be at least 1".into(),
            });
        }
        if raw.graphql.query_bytes_per_second == 0
            || raw.graphql.query_burst_bytes < raw.graphql.max_body_bytes
        {
            return Err(ConfigError::Invalid {
                key: "graphql.query_burst_bytes",
                reason: format!(
                    "query_bytes_per_second must be positive and query_burst_bytes at least \
                     max_body_bytes ({}), or the largest accepted request could never run",
                    raw.graphql.max_body_bytes
                ),
            });
        }
        // The pass renews this replica's hold on its labs: a tick as long as the hold would
        // let it lapse between two passes (another replica takes the labs, or none holds them).
        if raw.campaigns.engine
            && raw.campaigns.tick_ms.saturating_mul(2) > raw.campaigns.engine_lease_ms
        {
            return Err(ConfigError::Invalid {
                key: "campaigns.tick_ms",
                reason: format!(
                    "{} ms is more than half of campaigns.engine_lease_ms ({} ms): each engine \
                     pass renews the replica's hold on its labs, so passes must come at least \
                     twice per hold; lower tick_ms or raise engine_lease_ms",
                    raw.campaigns.tick_ms, raw.campaigns.engine_lease_ms
                ),
            });
        }
        if raw.ssh.enabled {
            raw.ssh
                .validate()
                .map_err(|reason| ConfigError::Invalid { key: "ssh", reason })?;
        }
        let operator_token = raw.operator_token.filter(|t| !t.trim().is_empty());
        let metrics_token = raw.metrics_token.filter(|t| !t.trim().is_empty());
        for (key, token) in [
            ("operator_token", &operator_token),
            ("metrics_token", &metrics_token),
        ] {
            if token
                .as_ref()
                .is_some_and(|t| t.trim().len() < MIN_TOKEN_CHARS)
            {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be at least {MIN_TOKEN_CHARS} characters"),
                });
            }
        }
        Ok(Config {
            bind,
            database,
            auto_migrate: raw.auto_migrate,
            pool: PoolSettings {
                max_connections: raw.max_connections,
                acquire_timeout: Duration::from_secs(raw.connect_timeout_secs.max(1)),
            },
            log: raw.log,
            agent: raw.agent,
            campaigns: raw.campaigns,
            graphql: raw.graphql,
            auth: raw.auth,
            trusted_proxies,
            mail: raw.mail,
            operator_token,
            metrics_token,
            tls: raw.tls,
            ssh: raw.ssh,
        })
    }
}

/// Shortest operator or metrics token accepted (a guessable token is a configuration error).
pub const MIN_TOKEN_CHARS: usize = 32;

fn default_max_ws_operations() -> usize {
    32
}

fn default_query_bytes_per_second() -> usize {
    256 * 1024
}

fn default_query_burst_bytes() -> usize {
    1024 * 1024
}

/// The `[ssh]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SshConfig {
    /// Run the SSH endpoint.
    pub enabled: bool,
    /// Listen address, ADDRESS:PORT (port 0 picks a free port).
    pub bind: String,
    /// The host key (OpenSSH private key, unencrypted); generated (Ed25519, mode 0600) when the
    /// file does not exist.
    pub host_key: PathBuf,
    /// Seconds without traffic from a client before the server sends an SSH keepalive.
    pub keepalive_secs: u64,
    /// Unanswered keepalives after which the connection is closed.
    pub keepalive_max: usize,
    /// Seconds without any traffic after which a connection is closed.
    pub inactivity_timeout_secs: u64,
    /// Seconds a client has to authenticate after connecting.
    pub login_grace_secs: u64,
    /// Constant delay of every refused authentication, in ms (no timing oracle on keys).
    pub auth_rejection_ms: u64,
    /// Connections one client address may hold before authenticating (more are closed at once),
    /// so one host cannot fill the endpoint with idle handshakes.
    pub max_unauthenticated_per_address: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            enabled: false,
            bind: "127.0.0.1:2222".into(),
            host_key: PathBuf::from("maosic-ssh-host-key"),
            keepalive_secs: 15,
            keepalive_max: 3,
            inactivity_timeout_secs: 120,
            login_grace_secs: 10,
            auth_rejection_ms: 500,
            max_unauthenticated_per_address: 8,
        }
    }
}

impl SshConfig {
    /// The parsed listen address.
    pub fn bind_addr(&self) -> Result<SocketAddr, String> {
        self.bind
            .parse()
            .map_err(|e| format!("{:?} is not ADDRESS:PORT ({e})", self.bind))
    }

    /// Checks the values (called by `Config::validate` when the endpoint is enabled).
    pub fn validate(&self) -> Result<(), String> {
        self.bind_addr()?;
        if self.host_key.as_os_str().is_empty() {
            return Err("host_key must name a file".into());
        }
        if self.keepalive_secs == 0 || self.inactivity_timeout_secs == 0 {
            return Err("keepalive_secs and inactivity_timeout_secs must be at least 1".into());
        }
        if self.inactivity_timeout_secs <= self.keepalive_secs {
            return Err("inactivity_timeout_secs must exceed keepalive_secs".into());
        }
        if self.max_unauthenticated_per_address == 0 {
            return Err("max_unauthenticated_per_address must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap()
    }

    #[test]
    fn embedded_defaults_validate() {
        let config = Config::validate(raw()).unwrap();
        assert_eq!(config.bind.port(), 8080);
        assert_eq!(config.database.backend(), crate::storage::Backend::Sqlite);
    }

    #[test]
    fn malformed_values_are_refused_with_the_key_named() {
        let mut bad = raw();
        bad.database = "mysql://x".into();
        let err = Config::validate(bad).unwrap_err().to_string();
        assert!(err.contains("database"), "{err}");
        let mut bad = raw();
        bad.bind = "localhost".into();
        assert!(Config::validate(bad)
            .unwrap_err()
            .to_string()
            .contains("bind"));
    }

    #[test]
    fn an_engine_tick_too_long_to_renew_the_lab_holds_is_refused() {
        let mut slow = raw();
        slow.campaigns.engine_lease_ms = 5_000;
        slow.campaigns.tick_ms = 2_500;
        assert!(Config::validate(slow.clone()).is_ok());
        slow.campaigns.tick_ms = 2_501;
        let err = Config::validate(slow.clone()).unwrap_err().to_string();
        assert!(err.contains("campaigns.tick_ms"), "{err}");
        assert!(err.contains("engine_lease_ms (5000 ms)"), "{err}");
        // Without an engine in this process there is nothing to renew.
        slow.campaigns.engine = false;
        assert!(Config::validate(slow).is_ok());
    }

    #[test]
    fn the_old_trust_forwarded_for_key_is_refused_when_true_and_ignored_when_false() {
        let mut old = raw();
        old.auth.trust_forwarded_for = Some(true);
        let err = Config::validate(old).unwrap_err().to_string();
        assert!(err.contains("auth.trusted_proxies"), "{err}");
        let mut old = raw();
        old.auth.trust_forwarded_for = Some(false);
        assert!(Config::validate(old).unwrap().trusted_proxies.is_empty());
        let mut bad = raw();
        bad.auth.trusted_proxies = vec!["10.0.0.0/33".into()];
        let err = Config::validate(bad).unwrap_err().to_string();
        assert!(err.contains("auth.trusted_proxies"), "{err}");
        let from_toml: RawConfig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(
                "[auth]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n",
            ))
            .extract()
            .unwrap();
        let config = Config::validate(from_toml).unwrap();
        assert!(config.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(!config.trusted_proxies.contains("11.1.2.3".parse().unwrap()));
    }

    #[test]
    fn previous_jwt_keys_come_from_the_environment_as_a_list_and_short_ones_are_refused() {
        // A prefix of its own: no other test reads it.
        std::env::set_var(
            "MAOSIC_CFGTEST_AUTH__JWT_PREVIOUS_SECRETS",
            "[\"old-key-old-key-old-key-old-key-1\", \"old-key-old-key-old-key-old-key-2\"]",
        );
        std::env::set_var(
            "MAOSIC_CFGTEST_AUTH__JWT_SECRET",
            "new-key-new-key-new-key-new-key-0",
        );
        let raw: RawConfig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Env::prefixed("MAOSIC_CFGTEST_").split("__"))
            .extract()
            .unwrap();
        assert_eq!(raw.auth.jwt_previous_secrets.len(), 2);
        let config = Config::validate(raw).unwrap();
        assert_eq!(
            config.auth.jwt_previous_secrets[1],
            "old-key-old-key-old-key-old-key-2"
        );
        let mut short = raw_with_secret();
        short.auth.jwt_previous_secrets = vec!["short".into()];
        let err = Config::validate(short).unwrap_err().to_string();
        assert!(err.contains("auth.jwt_previous_secrets"), "{err}");
    }

    fn raw_with_secret() -> RawConfig {
        let mut r = raw();
        r.auth.jwt_secret = "new-key-new-key-new-key-new-key-0".into();
        r
    }

    #[test]
    fn overrides_win_over_defaults() {
        let overrides = Overrides {
            bind: Some("127.0.0.1:0".into()),
            database: Some("sqlite://x.db".into()),
        };
        let raw: RawConfig = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Serialized::defaults(&overrides))
            .extract()
            .unwrap();
        assert_eq!(raw.bind, "127.0.0.1:0");
        assert_eq!(raw.database, "sqlite://x.db");
    }
}
