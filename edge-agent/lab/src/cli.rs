//! Operator commands of the agent's lab side as clap 4 derive structs and async run functions:
//! `virtual-lab probe`, `run-program`, `devices`. The `maosic-agent` binary wires them in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{LabConfig, LinkLossPolicy};
use crate::executor::ExecOptions;
use crate::lab::Lab;
use crate::probe::{probe, ProbeSpec};
use crate::record::{Outcome, RecordBody};

/// `maosic-agent virtual-lab …`
#[derive(Debug, Args)]
pub struct VirtualLabArgs {
    #[command(subcommand)]
    pub command: VirtualLabCommand,
}

#[derive(Debug, Subcommand)]
pub enum VirtualLabCommand {
    /// Run one synthesis + measurement on the virtual paper lab and print what it measured.
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// A variable, `T=130` (°C) or `C=0.8` (mmol/ml); repeat for both.
    #[arg(long = "set", value_name = "NAME=VALUE", required = true)]
    pub set: Vec<String>,
    /// Landscape TOML file (default: the paper's).
    #[arg(long)]
    pub landscape: Option<PathBuf>,
    /// Seed of the twin (handedness, noise).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Irradiate before the CD scan, e.g. `800nm:300s`.
    #[arg(long, value_name = "WAVELENGTHnm:DURATIONs")]
    pub laser: Option<String>,
    /// Lab-time speed factor, or `max` (as fast as the CPU allows).
    #[arg(long, default_value = "max", value_parser = crate::config::parse_speed)]
    pub speed: f64,
    /// Print one JSON object (with the raw spectra).
    #[arg(long)]
    pub json: bool,
}

/// `maosic-agent run-program PROGRAM.json --lab LAB.toml`
#[derive(Debug, Args)]
pub struct RunProgramArgs {
    /// Compiled program (JSON).
    pub program: PathBuf,
    /// Lab configuration (TOML).
    #[arg(long)]
    pub lab: PathBuf,
    /// Print every record as one JSON line (spectra included).
    #[arg(long)]
    pub json: bool,
    /// Link-loss policy for this run.
    #[arg(long, value_enum)]
    pub link_loss: Option<LinkLossArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LinkLossArg {
    Continue,
    Hold,
    SafeStop,
}

impl From<LinkLossArg> for LinkLossPolicy {
    fn from(a: LinkLossArg) -> Self {
        match a {
            LinkLossArg::Continue => LinkLossPolicy::Continue,
            LinkLossArg::Hold => LinkLossPolicy::Hold,
            LinkLossArg::SafeStop => LinkLossPolicy::SafeStop,
        }
    }
}

/// `maosic-agent devices --lab LAB.toml`
#[derive(Debug, Args)]
pub struct DevicesArgs {
    #[arg(long)]
    pub lab: PathBuf,
    /// Print JSON (with the capability descriptor).
    #[arg(long)]
    pub json: bool,
}

/// Parse `800nm:300s` → (800, 300).
pub fn parse_laser(s: &str) -> anyhow::Result<(f64, f64)> {
    let (wl, dur) = s
        .split_once(':')
        .context("expected WAVELENGTHnm:DURATIONs, e.g. 800nm:300s")?;
    let wl: f64 = wl
        .trim()
        .trim_end_matches("nm")
        .trim()
        .parse()
        .context("wavelength is not a number")?;
    let dur = dur.trim();
    let (num, scale) = if let Some(m) = dur.strip_suffix("min") {
        (m, 60.0)
    } else if let Some(s) = dur.strip_suffix('s') {
        (s, 1.0)
    } else {
        (dur, 1.0)
    };
    let d: f64 = num
        .trim()
        .parse::<f64>()
        .context("duration is not a number")?
        * scale;
    anyhow::ensure!(
        wl.is_finite() && d.is_finite() && d > 0.0,
        "laser wavelength and duration must be positive"
    );
    Ok((wl, d))
}

/// Parse `--set` pairs into (T, C).
pub fn parse_sets(sets: &[String]) -> anyhow::Result<(f64, f64)> {
    let mut m = BTreeMap::new();
    for s in sets {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected NAME=VALUE"))?;
        let v: f64 = v
            .trim()
            .parse()
            .with_context(|| format!("--set {s}: value is not a number"))?;
        anyhow::ensure!(v.is_finite(), "--set {s}: value must be finite");
        m.insert(k.trim().to_ascii_uppercase(), v);
    }
    let t = *m.get("T").context("--set T=<°C> is required")?;
    let c = *m.get("C").context("--set C=<mmol/ml> is required")?;
    anyhow::ensure!(
        (20.0..=200.0).contains(&t),
        "T = {t} °C is outside the heater's 20–200 °C"
    );
    anyhow::ensure!(
        (0.0..=1.5).contains(&c),
        "C = {c} mmol/ml is outside 0–1.5 (the Cs stock)"
    );
    Ok((t, c))
}

/// Run `virtual-lab …`; returns the process exit code.
pub async fn run_virtual_lab(args: VirtualLabArgs) -> anyhow::Result<i32> {
    match args.command {
        VirtualLabCommand::Probe(a) => {
            let (t, c) = parse_sets(&a.set)?;
            let laser = a.laser.as_deref().map(parse_laser).transpose()?;
            let spec = ProbeSpec {
                t_c: t,
                c,
                seed: a.seed,
                landscape: a
                    .landscape
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "paper".into()),
                laser,
                speed: a.speed,
            };
            let r = probe(&spec).await?;
            if a.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "T set {:.1} °C (measured {:?}), C {:.2} mmol/ml, seed {}",
                    r.t_set_c, r.t_measured_c, r.c_set_mmol_per_ml, r.seed
                );
                println!(
                    "first exciton {:.1} nm, absorbance {:.4}",
                    r.exciton_nm, r.absorbance
                );
                if let Some(b) = r.cd_mdeg_before_laser {
                    println!(
                        "CD before laser {b:+.3} mdeg; after {}: {:+.3} mdeg",
                        r.laser.clone().unwrap_or_default(),
                        r.cd_mdeg
                    );
                } else {
                    println!("CD at the exciton {:+.3} mdeg", r.cd_mdeg);
                }
                println!("lab time {:.0} s", r.lab_time_s);
            }
            Ok(0)
        }
    }
}

/// Run `run-program …`; exit code 0 on success, 1 on failure, 2 when refused.
pub async fn run_program_cmd(args: RunProgramArgs) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(&args.program)
        .with_context(|| format!("cannot read {}", args.program.display()))?;
    let program = maosic_schema::program::Program::from_json(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.program.display()))?;
    let cfg = LabConfig::from_file(&args.lab)?;
    let mut lab = Lab::build(cfg).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::record::Record>(256);
    let json = args.json;
    let printer = tokio::spawn(async move {
        while let Some(r) = rx.recv().await {
            if json {
                if let Ok(s) = serde_json::to_string(&r) {
                    println!("{s}");
                }
            } else {
                let what = match &r.body {
                    RecordBody::Measurement { name, .. } => format!("measurement {name}"),
                    RecordBody::StepSucceeded {
                        result,
                        lab_duration_s,
                    } => format!("ok in {lab_duration_s:.1} s: {result}"),
                    RecordBody::StepFailed { message, .. } => format!("FAILED: {message}"),
                    other => format!("{other:?}"),
                };
                println!(
                    "[{:>9.1} s] {:>3} {:<20} {what}",
                    r.lab_time_s,
                    r.step.map(|s| s.to_string()).unwrap_or_default(),
                    r.method.clone().unwrap_or_default()
                );
            }
        }
    });
    let opts = ExecOptions {
        program_id: None,
        link_loss: args.link_loss.map(Into::into),
    };
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c2.cancel();
        }
    });
    let report = lab.run_program(&program, opts, tx, cancel).await;
    ctrl_c.abort();
    let _ = printer.await;
    lab.shutdown().await;
    eprintln!(
        "{:?}: {}/{} steps, {:.1} s of lab time{}",
        report.outcome,
        report.steps_succeeded,
        report.steps_total,
        report.lab_duration_s,
        report.error.map(|e| format!(" — {e}")).unwrap_or_default()
    );
    Ok(match report.outcome {
        Outcome::Succeeded => 0,
        Outcome::Refused => 2,
        _ => 1,
    })
}

/// Run `devices …`: list and ping every device; exit 1 if any does not answer.
pub async fn run_devices(args: DevicesArgs) -> anyhow::Result<i32> {
    let cfg = LabConfig::from_file(&args.lab)?;
    let mut lab = Lab::build(cfg).await?;
    let list = lab.device_list();
    let pings = lab.ping().await;
    let ok = pings.iter().all(|(_, r)| r.is_ok());
    if args.json {
        let devices: Vec<_> = list
            .iter()
            .zip(&pings)
            .map(|((s, k, d, p), (_, r))| {
                serde_json::json!({"symbol": s, "kind": k, "driver": d, "port": p,
                    "ok": r.is_ok(), "reply": match r { Ok(x) => x.clone(), Err(e) => e.to_string() }})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"lab": lab.config.lab.name, "devices": devices, "descriptor": lab.descriptor()})
        );
    } else {
        println!("lab {}", lab.config.lab.name);
        for ((s, k, d, p), (_, r)) in list.iter().zip(&pings) {
            let reply = match r {
                Ok(x) => format!("ok  {x}"),
                Err(e) => format!("ERR {e}"),
            };
            println!(
                "  {s:<4} {k:<24} {d:<10} {:<28} {reply}",
                p.clone().unwrap_or_else(|| "-".into()),
                k = format!("{k:?}"),
                d = format!("{d:?}")
            );
        }
    }
    lab.shutdown().await;
    Ok(if ok { 0 } else { 1 })
}
