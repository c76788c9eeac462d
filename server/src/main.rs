//! `maosic-server`: the command line of the MAOSIC cloud server.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use maosic_server::api::graphql;
use maosic_server::config::{Config, Overrides};
use maosic_server::storage::tenant;
use maosic_server::{admin, app, telemetry};

/// MAOSIC cloud server: GraphQL API, experiment queue, optimizer and agent gateway.
#[derive(Parser)]
#[command(name = "maosic-server", version, about)]
struct Cli {
    /// Configuration file (default: ./maosic.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone, Default)]
struct DatabaseArg {
    /// Database URL: sqlite://PATH (default sqlite://maosic.db) or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Listen address, ADDRESS:PORT (port 0 picks a free port).
        #[arg(long, value_name = "ADDR:PORT")]
        bind: Option<String>,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Print the GraphQL schema (SDL) to stdout.
    PrintSchema,
    /// Operator commands on the database.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The instruction language: check, compile and format recipes.
    Lang {
        #[command(subcommand)]
        command: cli::lang::LangCommand,
    },
    /// Discovery-efficiency benchmark of the optimizers on a noisy landscape.
    OptimizeBench(cli::optimize_bench::OptimizeBenchArgs),
    /// Fit the peaks of an absorption spectrum (CSV) and, with `--cd`, read the CD at the
    /// first exciton peak; no server needed.
    Analyze(cli::analyze::AnalyzeArgs),
    /// TLS: development certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// The product end to end: server, demo account, a virtual-lab agent and the paper's
    /// chirality campaign with a progress bar and a summary.
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Listen address, ADDRESS:PORT.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Database URL (default: sqlite://DIR/maosic.db).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// Working directory: database, demo password, agent credential, spool and log.
    #[arg(long, value_name = "DIR", default_value = ".demo")]
    dir: PathBuf,
    /// Loops of the campaign.
    #[arg(long, default_value_t = 250)]
    budget: u32,
    /// Optimizer seed (also the virtual lab's seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual lab clock speed (x real time).
    #[arg(long, default_value_t = 2500.0)]
    speed: f64,
    /// Optimizer: snobfit (the paper's), bo, portfolio, random, sobol or grid.
    #[arg(long, default_value = "snobfit")]
    optimizer: String,
    /// Exit when the campaign ends (default: keep serving).
    #[arg(long)]
    exit_when_done: bool,
    /// Print one JSON summary instead of the progress bar and text.
    #[arg(long)]
    json: bool,
    /// The maosic-agent binary (default: next to this one).
    #[arg(long, value_name = "FILE")]
    agent_bin: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a development CA and a server certificate + key it signs (ECDSA P-256), and
    /// optionally a client certificate for mutual TLS. Not for production.
    DevCert {
        /// Output directory (ca.pem, ca-key.pem, server.pem, server-key.pem[, client*.pem]).
        #[arg(long, value_name = "DIR", default_value = "tls")]
        out: PathBuf,
        /// Host name or IP address the server certificate is valid for (repeatable;
        /// default: localhost and 127.0.0.1).
        #[arg(long = "host", value_name = "NAME|IP")]
        hosts: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Also issue a client certificate with this common name.
        #[arg(long, value_name = "CN")]
        client: Option<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a lab (and its organisation when missing) with an agent credential file.
    CreateLab {
        /// Organisation name.
        #[arg(long)]
        org: String,
        /// Lab name, unique in the organisation.
        #[arg(long)]
        name: String,
        /// Where to write the agent's credential file (mode 0600).
        #[arg(long, value_name = "FILE")]
        credential_out: PathBuf,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Register an SSH public key for a lab: the SSH endpoint (`[ssh]`) then accepts it, for
    /// the SSH user named like the lab id.
    AddLabSshKey {
        /// The lab's id.
        #[arg(long, value_name = "LAB_ID")]
        lab: String,
        /// One OpenSSH public key line, e.g. "ssh-ed25519 AAAA… lab@host" (Ed25519 or ECDSA).
        #[arg(long, value_name = "KEY")]
        public_key: String,
        #[command(flatten)]
        db: DatabaseArg,
    },
    /// Revoke a lab's SSH key: the SSH endpoint refuses it from the next authentication on.
    RevokeLabSshKey {
        /// The lab's id.
        #[arg(long, value_name = "LAB_ID")]
        lab: String,
        /// The key's fingerprint, SHA256:… (as `ssh-keygen -lf KEY.pub` prints it).
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: String,
        #[command(flatten)]
        db: DatabaseArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, with the cause chain, and never a panic.
            eprintln!("maosic-server: error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Flush the spans not yet exported.
    if let Ok(mut slot) = TELEMETRY.lock() {
        drop(slot.take());
    }
    code
}

fn load(config: Option<&PathBuf>, bind: Option<String>, db: DatabaseArg) -> anyhow::Result<Config> {
    let config = Config::load(
        config.map(PathBuf::as_path),
        &Overrides {
            bind,
            database: db.database,
        },
    )?;
    start_telemetry(&config)?;
    Ok(config)
}

/// The trace exporter of this process, flushed when `main` returns.
static TELEMETRY: std::sync::Mutex<Option<telemetry::Guard>> = std::sync::Mutex::new(None);

fn start_telemetry(config: &Config) -> anyhow::Result<()> {
    let guard = telemetry::init(&config.log).context("log.otlp_endpoint")?;
    if let Ok(mut slot) = TELEMETRY.lock() {
        *slot = Some(guard);
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let system = actix_web::rt::System::new();
    match cli.command {
        Command::PrintSchema => {
            print!("{}", graphql::sdl());
        }
        Command::Lang { command } => {
            let code = cli::lang::run(command)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::OptimizeBench(args) => cli::optimize_bench::run(args)?,
        Command::Analyze(args) => cli::analyze::run(args)?,
        Command::Tls {
            command:
                TlsCommand::DevCert {
                    out,
                    hosts,
                    days,
                    client,
                },
        } => {
            let dev = maosic_server::tls::dev_cert(
                &out,
                &maosic_server::tls::DevCertOptions {
                    hosts,
                    days,
                    client,
                },
            )?;
            println!("wrote {} (CA: give it to agents)", dev.ca.display());
            println!("wrote {} and {}", dev.cert.display(), dev.key.display());
            if let Some((cert, key)) = &dev.client {
                println!("wrote {} and {} (client)", cert.display(), key.display());
            }
            println!("server certificate SHA-256: {}", dev.server_sha256);
            println!();
            println!("# maosic.toml");
            println!("[tls]");
            println!("cert = {:?}", dev.cert.display().to_string());
            println!("key = {:?}", dev.key.display().to_string());
            println!();
            println!(
                "# agent: maosic-agent run --server https://HOST:PORT --tls-ca {}   (or --tls-pin-sha256 {})",
                dev.ca.display(),
                dev.server_sha256
            );
        }
        Command::Serve { bind, db } => {
            let config = load(cli.config.as_ref(), bind, db)?;
            system.block_on(app::serve(config))?;
        }
        Command::Demo(args) => {
            let dir = std::path::absolute(&args.dir)
                .with_context(|| format!("bad --dir {}", args.dir.display()))?;
            let database = args
                .database
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("maosic.db").display()));
            let mut config = Config::load(
                cli.config.as_deref(),
                &Overrides {
                    bind: Some(args.bind.clone()),
                    database: Some(database),
                },
            )?;
            if std::env::var_os("RUST_LOG").is_none() {
                config.log.filter = "warn".into();
            }
            start_telemetry(&config)?;
            let agent_bin = match args.agent_bin {
                Some(p) => p,
                None => std::env::current_exe()
                    .context("cannot find this executable")?
                    .with_file_name("maosic-agent"),
            };
            let opts = maosic_server::demo::DemoOptions {
                dir,
                budget: args.budget,
                seed: args.seed,
                speed: args.speed,
                optimizer: args.optimizer,
                exit_when_done: args.exit_when_done,
                json: args.json,
                agent_bin,
            };
            system.block_on(maosic_server::demo::run(config, opts))?;
        }
        Command::Migrate { db } => {
            let mut config = load(cli.config.as_ref(), None, db)?;
            config.auto_migrate = true;
            system.block_on(app::open_storage(&config))?;
            println!("migrations applied to {}", config.database);
        }
        Command::Admin { command } => match command {
            AdminCommand::CreateLab {
                org,
                name,
                credential_out,
                db,
            } => {
                let config = load(cli.config.as_ref(), None, db)?;
                let created = system.block_on(tenant::system(async {
                    let storage = app::open_storage(&config).await?;
                    admin::create_lab(storage.as_ref(), &org, &name).await
                }))?;
                admin::write_credential_file(&credential_out, &created.credential)
                    .context("lab created, but its credential file could not be written")?;
                println!(
                    "lab {} created in organisation {}; agent credential written to {}",
                    created.lab_id,
                    created.organization_id,
                    credential_out.display()
                );
            }
            AdminCommand::AddLabSshKey {
                lab,
                public_key,
                db,
            } => {
                let config = load(cli.config.as_ref(), None, db)?;
                let key = system.block_on(tenant::system(async {
                    let storage = app::open_storage(&config).await?;
                    admin::add_lab_ssh_key(storage.as_ref(), &lab, &public_key).await
                }))?;
                println!(
                    "ssh key {} ({}) registered for lab {}; the agent connects as SSH user {}",
                    key.fingerprint, key.algorithm, key.lab_id, key.lab_id
                );
            }
            AdminCommand::RevokeLabSshKey {
                lab,
                fingerprint,
                db,
            } => {
                let config = load(cli.config.as_ref(), None, db)?;
                let revoked = system.block_on(tenant::system(async {
                    let storage = app::open_storage(&config).await?;
                    admin::revoke_lab_ssh_key(storage.as_ref(), &lab, &fingerprint).await
                }))?;
                if !revoked {
                    anyhow::bail!("lab {lab} has no SSH key {fingerprint} in force");
                }
                println!("ssh key {fingerprint} of lab {lab} revoked");
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
