//! `maosic-server lang ...`: check, compile and format instruction-language recipes from the
//! command line. Thin: reads files, calls `maosic_schema::lang::cli`, prints, returns the exit code.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::cli::{self, CliOutcome};

/// The recipe file, the lab it runs in and the variable values.
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Recipe (or bare formula) file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Lab capability descriptor (TOML, or JSON when the name ends in .json).
    #[arg(long, value_name = "LAB.toml")]
    pub lab: PathBuf,
    /// Bind a recipe variable, in the unit the recipe declares: --set T=130 --set C=0.8.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
}

/// `lang` subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum LangCommand {
    /// Check a recipe against a lab; print diagnostics. Unset variables are checked over their
    /// whole declared range. Exit code 1 when there is an error.
    Check {
        #[command(flatten)]
        args: RecipeArgs,
    },
    /// Compile a recipe with every variable set; print the program JSON on stdout.
    Compile {
        #[command(flatten)]
        args: RecipeArgs,
        /// Print a dry-run trace (timed steps) instead of JSON.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the canonically formatted recipe on stdout.
    Fmt {
        /// Recipe file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Run a `lang` subcommand; returns the process exit code (1 on error diagnostics).
pub fn run(cmd: LangCommand) -> anyhow::Result<i32> {
    let outcome = match cmd {
        LangCommand::Check { args } => {
            let (name, src, lab, vars) = load(&args)?;
            cli::check(&name, &src, &lab, &vars)
        }
        LangCommand::Compile { args, dry_run } => {
            let (name, src, lab, vars) = load(&args)?;
            cli::compile(&name, &src, &lab, &vars, dry_run)
        }
        LangCommand::Fmt { file } => {
            let src = read(&file)?;
            cli::fmt(&display(&file), &src)
        }
    };
    Ok(emit(outcome))
}

fn emit(o: CliOutcome) -> i32 {
    eprint!("{}", o.stderr);
    print!("{}", o.stdout);
    o.code
}

type Loaded = (String, String, LabDescriptor, maosic_schema::lang::Bindings);

fn load(args: &RecipeArgs) -> anyhow::Result<Loaded> {
    let src = read(&args.file)?;
    let lab_text = read(&args.lab)?;
    let lab = cli::load_lab(&display(&args.lab), &lab_text)
        .with_context(|| format!("lab descriptor {}", args.lab.display()))?;
    let vars = cli::parse_sets(&args.set).map_err(anyhow::Error::msg)?;
    Ok((display(&args.file), src, lab, vars))
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
