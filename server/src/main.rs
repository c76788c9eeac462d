//! `maosic-server`: the command line of the MAOSIC cloud server.

mod cli_lang;
mod cli_optimize_bench;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use maosic_server::config::{Config, Overrides};
use maosic_server::{admin, app, graphql, telemetry};

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
        command: cli_lang::LangCommand,
    },
    /// Discovery-efficiency benchmark of the optimizers on a noisy landscape.
    OptimizeBench(cli_optimize_bench::OptimizeBenchArgs),
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
    /// Optimizer: snobfit (the paper's), bo, random, sobol or grid.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line, with the cause chain, and never a panic.
            eprintln!("maosic-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&PathBuf>, bind: Option<String>, db: DatabaseArg) -> anyhow::Result<Config> {
    let config = Config::load(
        config.map(PathBuf::as_path),
        &Overrides {
            bind,
            database: db.database,
        },
    )?;
    telemetry::init(&config.log);
    Ok(config)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let system = actix_web::rt::System::new();
    match cli.command {
        Command::PrintSchema => {
            print!("{}", graphql::sdl());
        }
        Command::Lang { command } => {
            let code = cli_lang::run(command)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::OptimizeBench(args) => cli_optimize_bench::run(args)?,
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
            telemetry::init(&config.log);
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
                let created = system.block_on(async {
                    let storage = app::open_storage(&config).await?;
                    admin::create_lab(storage.as_ref(), &org, &name).await
                })?;
                admin::write_credential_file(&credential_out, &created.credential)
                    .context("lab created, but its credential file could not be written")?;
                println!(
                    "lab {} created in organisation {}; agent credential written to {}",
                    created.lab_id,
                    created.organization_id,
                    credential_out.display()
                );
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}
