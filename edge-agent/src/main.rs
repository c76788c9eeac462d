//! `maosic-agent`: the command line of the MAOSIC edge agent.

mod enroll;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use maosic_agent::link::{self, LinkConfig};
use maosic_agent::spool::SpoolCaps;
use maosic_agent::transport::{self, TlsSettings};
use maosic_lab::cli::{DevicesArgs, RunProgramArgs, VirtualLabArgs};
use maosic_lab::lab::Lab;
use maosic_schema::capability::LabDescriptor;
use maosic_schema::protocol::AgentCredentialFile;

/// MAOSIC edge agent: runs a lab's instruments for the cloud, safely.
#[derive(Parser)]
#[command(name = "maosic-agent", version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    /// Export OpenTelemetry traces to this OTLP/HTTP collector (base URL, e.g.
    /// http://127.0.0.1:4318). A program run or device call continues the trace the cloud
    /// started (W3C traceparent in the request). Off unless set.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "MAOSIC_AGENT_OTLP_ENDPOINT"
    )]
    otlp_endpoint: Option<String>,
    /// Fraction of traces the agent starts itself that are sampled (0-1).
    #[arg(long, global = true, default_value_t = 1.0, value_name = "RATIO")]
    trace_sample_ratio: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size of `Run`'s flags costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Connect to the cloud and serve the lab until stopped (SIGINT/SIGTERM say goodbye).
    Run {
        /// Server base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "MAOSIC_AGENT_SERVER")]
        server: String,
        /// The lab credential file (from enrollment or `maosic-server admin create-lab`).
        #[arg(long, value_name = "FILE", env = "MAOSIC_AGENT_CREDENTIAL")]
        credential: PathBuf,
        /// The lab configuration (TOML: devices, drivers, ports, limits; see
        /// examples/agent-lab-virtual.toml). Without it the agent only keeps presence.
        #[arg(long, value_name = "LAB.toml", conflicts_with = "descriptor")]
        lab: Option<PathBuf>,
        /// The virtual lab's clock speed, overriding the lab file's: `max` (as fast as the CPU
        /// allows; lab time stands still between programs) or a factor N (paced to N× the wall
        /// clock).
        #[arg(long, value_name = "max|N", requires = "lab", value_parser = maosic_lab::config::parse_speed)]
        speed: Option<f64>,
        /// A capability descriptor (TOML) to announce when no lab is run.
        #[arg(long, value_name = "FILE")]
        descriptor: Option<PathBuf>,
        /// First reconnect delay in ms.
        #[arg(long, default_value_t = 1000)]
        backoff_base_ms: u64,
        /// Largest reconnect delay in ms.
        #[arg(long, default_value_t = 60_000)]
        backoff_cap_ms: u64,
        /// The durable outbox (SQLite file): records wait here until the cloud has stored them.
        /// Keep it across restarts; deleting it starts a new record epoch.
        #[arg(long, value_name = "FILE", default_value = "maosic-agent-spool.db")]
        spool: PathBuf,
        #[command(flatten)]
        spool_caps: SpoolCapsArgs,
        /// The local control socket (`maosic-agent faults`, `maosic-agent reset-faults`);
        /// default: the spool's path with `.sock`. Served only when a lab is run.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        ssh: SshArgs,
    },
    /// Exchange a one-time enrollment token (from the lab's page or `createEnrollmentToken`)
    /// for this lab's agent credential, written to a file readable only by its owner.
    Enroll {
        /// Server base URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "MAOSIC_AGENT_SERVER")]
        server: String,
        /// The enrollment token (single use).
        #[arg(long)]
        token: String,
        /// Where to write the credential file.
        #[arg(long, value_name = "FILE")]
        credential_out: PathBuf,
        /// How an https:// server is verified (as for `run`).
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// The safety faults latched in the agent running on this machine (via its control socket).
    Faults {
        /// The running agent's control socket (the default is that of the default spool).
        #[arg(long, value_name = "PATH", default_value = "maosic-agent-spool.sock")]
        control: PathBuf,
    },
    /// Operator fault reset of the agent running on this machine: clears its latched safety
    /// faults (nothing restarts; a condition that persists latches again) and records who and
    /// why in the lab's record stream. Exits 2 when faults are still latched after the reset.
    ResetFaults {
        /// Why, in your words (kept with the reset).
        #[arg(long)]
        reason: String,
        /// The running agent's control socket (the default is that of the default spool).
        #[arg(long, value_name = "PATH", default_value = "maosic-agent-spool.sock")]
        control: PathBuf,
    },
    /// The virtual lab (digital twin of the paper's setup).
    VirtualLab(VirtualLabArgs),
    /// Run a compiled program locally, without the cloud.
    RunProgram(RunProgramArgs),
    /// List and ping the lab's devices.
    Devices(DevicesArgs),
}

/// How the agent verifies an https:// server (default: the public web roots) and identifies
/// itself with a client certificate when the server asks for one (mutual TLS).
#[derive(clap::Args)]
struct TlsArgs {
    /// Trust only the CA certificate(s) in this PEM file (e.g. `ca.pem` from
    /// `maosic-server tls dev-cert`).
    #[arg(long, value_name = "CA.pem", env = "MAOSIC_AGENT_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Trust exactly one server certificate: the hex SHA-256 of its DER (printed by
    /// `maosic-server tls dev-cert`).
    #[arg(
        long,
        value_name = "HEX",
        env = "MAOSIC_AGENT_TLS_PIN_SHA256",
        conflicts_with = "tls_ca"
    )]
    tls_pin_sha256: Option<String>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[arg(long, value_name = "CERT.pem", requires = "tls_client_key")]
    tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "KEY.pem", requires = "tls_client_cert")]
    tls_client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The rustls configuration for `server`, or `None` for a plain-text server.
    fn client_config(
        self,
        server: &str,
    ) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        let settings = TlsSettings {
            ca: self.tls_ca,
            pin_sha256: self.tls_pin_sha256,
            client_cert: self.tls_client_cert,
            client_key: self.tls_client_key,
        };
        let url = link::gateway_url(server)?;
        if url.starts_with("wss://") || settings.is_set() {
            Ok(Some(transport::client_config(&settings)?))
        } else {
            Ok(None)
        }
    }
}

/// The SSH route, for labs whose firewall allows only outbound SSH: the WebSocket to
/// `--server` then runs through a `direct-tcpip` channel of an SSH connection to `--ssh`.
#[derive(clap::Args)]
struct SshArgs {
    /// Reach the server through its SSH endpoint at HOST:PORT (`[ssh]` of the server).
    #[arg(long, value_name = "HOST:PORT", requires_all = ["ssh_key", "ssh_host_key"])]
    ssh: Option<String>,
    /// SSH user (default: the lab id from the credential, which the server expects).
    #[arg(long, value_name = "USER", requires = "ssh")]
    ssh_user: Option<String>,
    /// The lab's SSH private key (OpenSSH format, unencrypted, mode 0600), whose public half
    /// was registered with `maosic-server admin add-lab-ssh-key`.
    #[arg(long, value_name = "FILE", requires = "ssh")]
    ssh_key: Option<PathBuf>,
    /// The server's pinned host key: its public key ("ssh-ed25519 AAAA…"), a known_hosts line,
    /// or its fingerprint ("SHA256:…"). Any other host key is refused.
    #[arg(long, value_name = "KEY|SHA256:…", requires = "ssh")]
    ssh_host_key: Option<String>,
    /// Seconds without traffic from the SSH server before an SSH keepalive is sent (three
    /// unanswered ones close the connection).
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    ssh_keepalive_secs: u64,
}

impl SshArgs {
    /// The route connections take.
    fn route(self, lab_id: &str) -> anyhow::Result<transport::Route> {
        let (Some(server), Some(key), Some(host_key)) = (self.ssh, self.ssh_key, self.ssh_host_key)
        else {
            return Ok(transport::Route::Direct);
        };
        let settings = maosic_agent::ssh::SshSettings {
            server,
            user: self.ssh_user.unwrap_or_else(|| lab_id.to_owned()),
            key,
            host_key,
            keepalive: Duration::from_secs(self.ssh_keepalive_secs.max(1)),
        };
        let tunnel = maosic_agent::ssh::SshTunnel::new(&settings)?;
        Ok(transport::Route::Ssh(std::sync::Arc::new(tunnel)))
    }
}

/// The spool's caps (docs/reliability.md rule 2): above 90 % of either, measurements are refused with a
/// `buffer_full` alarm; status, safety and result events use the reserved 10 % and are never
/// refused.
#[derive(clap::Args)]
struct SpoolCapsArgs {
    /// Most records waiting in the spool for acknowledgement.
    #[arg(long, value_name = "N", default_value_t = SpoolCaps::default().max_rows,
          value_parser = clap::value_parser!(u64).range(10..))]
    spool_max_rows: u64,
    /// Most bytes of records waiting in the spool for acknowledgement.
    #[arg(long, value_name = "BYTES", default_value_t = SpoolCaps::default().max_bytes,
          value_parser = clap::value_parser!(u64).range(1024..))]
    spool_max_bytes: u64,
}

impl SpoolCapsArgs {
    fn caps(&self) -> SpoolCaps {
        SpoolCaps {
            max_rows: self.spool_max_rows,
            max_bytes: self.spool_max_bytes,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = maosic_telemetry::init(&maosic_telemetry::Settings {
        service: "maosic-agent",
        instance: None,
        filter: "info".into(),
        json: cli.log_json,
        otlp_endpoint: cli.otlp_endpoint.clone(),
        sample_ratio: cli.trace_sample_ratio,
    });
    let _telemetry = match telemetry {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("maosic-agent: error: --otlp-endpoint: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("maosic-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_credential(path: &Path) -> anyhow::Result<AgentCredentialFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read credential file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("credential file {} is malformed", path.display()))
}

fn read_descriptor(path: &Path) -> anyhow::Result<LabDescriptor> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read descriptor {}", path.display()))?;
    let descriptor = LabDescriptor::from_toml_str(&text)
        .with_context(|| format!("descriptor {} is invalid", path.display()))?;
    descriptor
        .validate()
        .with_context(|| format!("descriptor {} is invalid", path.display()))?;
    Ok(descriptor)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Enroll {
            server,
            token,
            credential_out,
            tls,
        } => {
            let tls = tls.client_config(&server)?;
            let credential = enroll::exchange(&server, &token, Duration::from_secs(30), tls)?;
            enroll::write_credential(&credential_out, &credential)?;
            println!(
                "enrolled lab {}; credential written to {}",
                credential.lab_id,
                credential_out.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Faults { control } => {
            let reply = runtime.block_on(maosic_agent::control::request(
                &control,
                &maosic_agent::control::ControlRequest::Faults,
            ))?;
            return print_control_reply(&reply);
        }
        Command::ResetFaults { reason, control } => {
            let reply = runtime.block_on(maosic_agent::control::request(
                &control,
                &maosic_agent::control::ControlRequest::Reset { reason },
            ))?;
            return print_control_reply(&reply);
        }
        Command::VirtualLab(args) => {
            return exit(runtime.block_on(maosic_lab::cli::run_virtual_lab(args))?)
        }
        Command::RunProgram(args) => {
            return exit(runtime.block_on(maosic_lab::cli::run_program_cmd(args))?)
        }
        Command::Devices(args) => {
            return exit(runtime.block_on(maosic_lab::cli::run_devices(args))?)
        }
        Command::Run {
            server,
            credential,
            lab,
            speed,
            descriptor,
            backoff_base_ms,
            backoff_cap_ms,
            spool,
            spool_caps,
            control,
            tls,
            ssh,
        } => {
            let control = control.unwrap_or_else(|| maosic_agent::control::default_path(&spool));
            let credential = read_credential(&credential)?;
            let tls = tls.client_config(&server)?;
            let route = ssh.route(&credential.lab_id)?;
            let spool = runtime
                .block_on(maosic_agent::spool::Spool::open(&spool, spool_caps.caps()))
                .with_context(|| format!("cannot open the spool {}", spool.display()))?;
            let lab = match lab {
                Some(path) => {
                    let mut config = maosic_lab::config::LabConfig::from_file(&path)
                        .with_context(|| format!("cannot read the lab {}", path.display()))?;
                    if let Some(speed) = speed {
                        config.twin.speed = speed;
                    }
                    let lab = runtime
                        .block_on(Lab::build(config))
                        .with_context(|| format!("cannot start the lab from {}", path.display()))?;
                    lab.kernel().install_panic_hook();
                    Some(std::sync::Arc::new(lab))
                }
                None => None,
            };
            let spooled = std::sync::Arc::new(tokio::sync::Notify::new());
            if let Some(lab) = &lab {
                let _guard = runtime.enter();
                match maosic_agent::control::bind(&control) {
                    Ok(listener) => {
                        tracing::info!(socket = %control.display(), "control socket ready");
                        runtime.spawn(maosic_agent::control::serve(
                            listener,
                            control.clone(),
                            lab.clone(),
                            spool.clone(),
                            spooled.clone(),
                        ));
                    }
                    // Two agents on one spool: a configuration error.
                    Err(e @ maosic_agent::control::ControlError::InUse(_)) => return Err(e.into()),
                    // The lab runs without the local socket (faults can still be reset through
                    // the cloud); said loudly.
                    Err(e) => tracing::error!(error = %e, "no local control socket"),
                }
            }
            let config = LinkConfig {
                server,
                credential,
                descriptor: descriptor.as_deref().map(read_descriptor).transpose()?,
                lab: lab.clone(),
                spool,
                backoff_base: Duration::from_millis(backoff_base_ms.max(1)),
                backoff_cap: Duration::from_millis(backoff_cap_ms.max(backoff_base_ms)),
                connect_timeout: Duration::from_secs(10),
                tls,
                route,
                spooled,
            };
            runtime.block_on(async {
                let (stop_tx, stop_rx) = link::stop_signal();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = stop_tx.send(true);
                });
                let result = link::run(config, stop_rx).await;
                if lab.is_some() {
                    let _ = std::fs::remove_file(&control);
                }
                if let Some(lab) = &lab {
                    // Leave the hardware safe whatever ended the link.
                    let report = lab.estop().await;
                    tracing::info!(?report, "lab left in the safe state");
                }
                result
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a control-socket answer for a person; exit 0, or 2 when faults are latched.
fn print_control_reply(reply: &maosic_agent::control::ControlReply) -> anyhow::Result<ExitCode> {
    use maosic_agent::control::ControlReply;
    let show = |faults: &[maosic_lab::safety::Fault]| {
        for f in faults {
            println!(
                "  {:?} at lab time {:.1} s: {}",
                f.kind, f.lab_time_s, f.detail
            );
        }
    };
    match reply {
        ControlReply::Faults { latched } => {
            println!("{} fault(s) latched", latched.len());
            show(latched);
            exit(if latched.is_empty() { 0 } else { 2 })
        }
        ControlReply::Reset(reset) => {
            println!("cleared {} fault(s)", reset.cleared.len());
            show(&reset.cleared);
            if reset.latched.is_empty() {
                println!("no fault is latched; nothing was restarted");
                exit(0)
            } else {
                println!(
                    "{} fault(s) latched again (the condition persists):",
                    reset.latched.len()
                );
                show(&reset.latched);
                exit(2)
            }
        }
        ControlReply::Error { message } => anyhow::bail!("the agent refused: {message}"),
    }
}

fn exit(code: i32) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
