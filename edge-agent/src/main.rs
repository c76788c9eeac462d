//! `maosic-agent`: the command line of the MAOSIC edge agent.

mod enroll;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use maosic_agent::link::{self, LinkConfig};
use maosic_lab::cli::{DevicesArgs, RunProgramArgs, VirtualLabArgs};
use maosic_lab::lab::Lab;
use maosic_schema::capability::LabDescriptor;
use maosic_schema::protocol::AgentCredentialFile;
use tracing_subscriber::EnvFilter;

/// MAOSIC edge agent: runs a lab's instruments for the cloud, safely.
#[derive(Parser)]
#[command(name = "maosic-agent", version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
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
    },
    /// The virtual lab (digital twin of the paper's setup).
    VirtualLab(VirtualLabArgs),
    /// Run a compiled program locally, without the cloud.
    RunProgram(RunProgramArgs),
    /// List and ping the lab's devices.
    Devices(DevicesArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cli.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
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
        } => {
            let credential = enroll::exchange(&server, &token, Duration::from_secs(30))?;
            enroll::write_credential(&credential_out, &credential)?;
            println!(
                "enrolled lab {}; credential written to {}",
                credential.lab_id,
                credential_out.display()
            );
            return Ok(ExitCode::SUCCESS);
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
            descriptor,
            backoff_base_ms,
            backoff_cap_ms,
            spool,
        } => {
            let credential = read_credential(&credential)?;
            let spool = runtime
                .block_on(maosic_agent::spool::Spool::open(&spool, Default::default()))
                .with_context(|| format!("cannot open the spool {}", spool.display()))?;
            let lab = match lab {
                Some(path) => {
                    let lab = runtime
                        .block_on(Lab::from_file(&path))
                        .with_context(|| format!("cannot start the lab from {}", path.display()))?;
                    lab.kernel().install_panic_hook();
                    Some(std::sync::Arc::new(lab))
                }
                None => None,
            };
            let config = LinkConfig {
                server,
                credential,
                descriptor: descriptor.as_deref().map(read_descriptor).transpose()?,
                lab: lab.clone(),
                spool,
                backoff_base: Duration::from_millis(backoff_base_ms.max(1)),
                backoff_cap: Duration::from_millis(backoff_cap_ms.max(backoff_base_ms)),
                connect_timeout: Duration::from_secs(10),
            };
            runtime.block_on(async {
                let (stop_tx, stop_rx) = link::stop_signal();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    let _ = stop_tx.send(true);
                });
                let result = link::run(config, stop_rx).await;
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
