//! `maosic-server demo`: the product end to end on one machine. Runs the server (embedded SQLite
//! by default) with its campaign engine, signs up a demo account through the public GraphQL API,
//! creates a lab and enrolls a real `maosic-agent` that drives the virtual lab, starts the
//! paper's chirality campaign (T 90–180 °C step 0.5, C 0.2–1.2 mmol/ml step 0.01, maximise |CD|
//! at the first exciton, SNOBFIT) and follows it with a progress bar; at the end it prints a
//! summary (or one JSON object) and keeps serving unless told to exit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use crate::app::{build_server, open_storage};
use crate::config::Config;
use crate::state::AppState;

/// The paper's recipe and the virtual twin's agent configuration, shipped inside the binary so
/// the demo runs from any directory.
const RECIPE: &str = include_str!("../../examples/chirality.recipe");
const VIRTUAL_LAB: &str = include_str!("../../examples/agent-lab-virtual.toml");
const OBJECTIVE: &str = "maximize abs(cd_at_exciton)";
const EMAIL: &str = "demo@maosic.local";

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Working directory for the database, the agent's credential and spool (`.demo`).
    pub dir: PathBuf,
    /// Loops of the campaign.
    pub budget: u32,
    /// Optimizer seed (the virtual lab's seed is derived from it).
    pub seed: u64,
    /// Virtual lab clock speed (× real time).
    pub speed: f64,
    /// Optimizer (`snobfit`, the paper's, or `bo`, `random`, `sobol`, `grid`).
    pub optimizer: String,
    /// Exit when the campaign ends instead of serving on.
    pub exit_when_done: bool,
    /// Print one JSON summary on stdout (no progress bar).
    pub json: bool,
    /// The `maosic-agent` binary.
    pub agent_bin: PathBuf,
}

/// Runs the demo on the current actix system.
pub async fn run(mut config: Config, opts: DemoOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("cannot create {}", opts.dir.display()))?;
    if config.auth.jwt_secret.is_empty() {
        // Kept in the demo directory, so tokens outlive a restart of the demo.
        config.auth.jwt_secret = read_or_create_secret(&opts.dir.join("jwt-secret"), 32)?;
    }
    // A local development server: GraphiQL and introspection on (off by default elsewhere).
    config.graphql.graphiql = true;
    config.graphql.introspection = true;
    if config.mail.outbox_file.trim().is_empty() {
        // The demo owns its mailer: the sign-up's verification token is read back from here.
        config.mail.outbox_file = opts.dir.join("outbox.jsonl").display().to_string();
    }
    let outbox = PathBuf::from(config.mail.outbox_file.trim());
    let storage = open_storage(&config).await?;
    let state = AppState::new(storage, config);
    let engine = crate::engine::scheduler::spawn(state.clone());
    let _mailer = crate::auth::mail::spawn(state.clone());
    // Queued instructions from the portal reach the demo lab too.
    let _commands = crate::agents::commands::spawn(state.clone());
    let (server, addr) = build_server(state.clone())?;
    let handle = server.handle();
    let serving = actix_web::rt::spawn(server);
    let url = format!("http://{addr}");
    if !opts.json {
        println!("maosic-server listening on {url}");
    }
    let run_opts = opts.clone();
    let run_url = url.clone();
    let outcome = tokio::task::spawn_blocking(move || drive(&run_url, &run_opts, &outbox))
        .await
        .map_err(|e| anyhow!("demo task: {e}"))?;
    let (summary, mut agent, password) = match outcome {
        Ok(v) => v,
        Err(e) => {
            handle.stop(true).await;
            engine.abort();
            return Err(e);
        }
    };
    if opts.json {
        println!("{summary}");
    } else {
        print_summary(&summary);
    }
    if opts.exit_when_done {
        agent.stop();
        handle.stop(true).await;
        engine.abort();
        return Ok(());
    }
    if !opts.json {
        println!(
            "\nThe server keeps running: the portal at {url}/ and GraphiQL at {url}/graphql\n  account {EMAIL}, password {password}\n  \
             mutation {{ logIn(email: \"{EMAIL}\", password: \"{password}\") {{ accessToken }} }}\n\
             Press Ctrl-C to stop."
        );
    }
    let result = serving.await;
    agent.stop();
    engine.abort();
    result
        .map_err(|e| anyhow!("server task: {e}"))?
        .context("server stopped with an error")
}

/// The agent child process, stopped with SIGTERM (it says goodbye and makes the lab safe).
struct AgentProcess(Child);

impl AgentProcess {
    fn stop(&mut self) {
        let pid = self.0.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// GraphQL over HTTP, as any client would call it.
fn gql(url: &str, token: Option<&str>, query: &str, variables: Value) -> anyhow::Result<Value> {
    let mut req = ureq::post(format!("{url}/graphql"));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let body: Value = req
        .send_json(json!({ "query": query, "variables": variables }))
        .context("GraphQL request failed")?
        .into_body()
        .read_json()
        .context("GraphQL answer is not JSON")?;
    if let Some(errors) = body.get("errors") {
        bail!("GraphQL error: {errors}");
    }
    Ok(body["data"].clone())
}

/// The e-mail verification tokens mailed to `email`, oldest first, from a development outbox
/// file (one JSON object per line, as `[mail] outbox_file` writes them).
pub fn verification_tokens(outbox: &Path, email: &str) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(outbox) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|mail| mail["to"] == email)
        .filter_map(|mail| {
            mail["body"].as_str().and_then(|body| {
                body.split_whitespace()
                    .find(|w| w.starts_with(crate::auth::token::VERIFY_PREFIX))
                    .map(str::to_owned)
            })
        })
        .collect()
}

fn text(v: &Value, what: &str) -> anyhow::Result<String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("missing {what} in the server's answer"))
}

fn read_or_create_secret(path: &Path, bytes: usize) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    let secret = hex::encode(
        (0..bytes)
            .map(|_| rand::random::<u8>())
            .collect::<Vec<u8>>(),
    );
    std::fs::write(path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

/// The demo's client side: account, lab, agent, campaign, progress. Returns the summary, the
/// agent process and the demo password.
fn drive(
    url: &str,
    opts: &DemoOptions,
    outbox: &Path,
) -> anyhow::Result<(Value, AgentProcess, String)> {
    let password = read_or_create_secret(&opts.dir.join("password"), 12)?;
    let credential = opts.dir.join("credential.json");
    let fields = "accessToken user { memberships { organization { id } } }";
    let vars = json!({ "e": EMAIL, "p": password });
    let auth = match gql(
        url,
        None,
        &format!("mutation($e: String!, $p: String!) {{ logIn(email: $e, password: $p) {{ {fields} }} }}"),
        vars.clone(),
    ) {
        Ok(d) => d["logIn"].clone(),
        Err(_) => {
            // A new account: sign up, then verify the address with the token the demo's own
            // mailer wrote to its outbox file.
            let seen = verification_tokens(outbox, EMAIL).len();
            gql(
                url,
                None,
                "mutation($e: String!, $p: String!) { signUp(email: $e, password: $p, \
                 displayName: \"Demo researcher\", organizationName: \"Demo group\") }",
                vars,
            )
            .context("cannot sign up the demo account")?;
            let started = Instant::now();
            let token = loop {
                if let Some(t) = verification_tokens(outbox, EMAIL).get(seen) {
                    break t.clone();
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "no verification mail for {EMAIL} in {} after 30 s",
                        outbox.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            gql(
                url,
                None,
                &format!("mutation($t: String!) {{ verifyEmail(token: $t) {{ {fields} }} }}"),
                json!({ "t": token }),
            )
            .context("cannot verify the demo account")?["verifyEmail"]
                .clone()
        }
    };
    let token = text(&auth["accessToken"], "access token")?;
    let org = text(
        &auth["user"]["memberships"][0]["organization"]["id"],
        "organisation",
    )?;
    let t = Some(token.as_str());

    // The lab and its agent credential (a one-time enrollment token, exchanged by the agent).
    let labs = gql(url, t, "{ labs { id name } }", json!({}))?;
    let existing = labs["labs"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["name"] == "paper-lab"))
        .map(|l| text(&l["id"], "lab id"))
        .transpose()?;
    let lab_id = match existing {
        Some(id) if credential.exists() => id,
        other => {
            let id = match other {
                Some(id) => id,
                None => text(
                    &gql(
                        url,
                        t,
                        "mutation($o: ID!) { createLab(organizationId: $o, name: \"paper-lab\") { id } }",
                        json!({ "o": org }),
                    )?["createLab"]["id"],
                    "lab id",
                )?,
            };
            let enroll = text(
                &gql(
                    url,
                    t,
                    "mutation($l: ID!) { createEnrollmentToken(labId: $l) { token } }",
                    json!({ "l": id }),
                )?["createEnrollmentToken"]["token"],
                "enrollment token",
            )?;
            let status = Command::new(&opts.agent_bin)
                .args([
                    "enroll",
                    "--server",
                    url,
                    "--token",
                    &enroll,
                    "--credential-out",
                ])
                .arg(&credential)
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("cannot run {}", opts.agent_bin.display()))?;
            if !status.success() {
                bail!("maosic-agent enroll failed");
            }
            id
        }
    };

    // The agent on the virtual lab at the demo's speed.
    let lab_config = opts.dir.join("agent-lab.toml");
    std::fs::write(&lab_config, virtual_lab_config(opts.speed, opts.seed))?;
    let log = std::fs::File::create(opts.dir.join("agent.log"))?;
    let agent = AgentProcess(
        Command::new(&opts.agent_bin)
            .args(["run", "--server", url, "--credential"])
            .arg(&credential)
            .arg("--lab")
            .arg(&lab_config)
            .arg("--spool")
            .arg(opts.dir.join("spool.db"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", opts.agent_bin.display()))?,
    );
    let online = Instant::now();
    loop {
        let lab = gql(
            url,
            t,
            "query($l: ID!) { lab(id: $l) { online } }",
            json!({ "l": lab_id }),
        )?;
        if lab["lab"]["online"] == true {
            break;
        }
        if online.elapsed() > Duration::from_secs(60) {
            bail!(
                "the virtual lab's agent did not come online (see {})",
                opts.dir.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let created = gql(
        url,
        t,
        "mutation($o: ID!, $l: ID!, $r: String!, $obj: String!, $opt: String!, $seed: Int!, $b: Int!) { \
           createCampaign(organizationId: $o, labId: $l, name: \"chirality (paper)\", recipe: $r, \
             objective: $obj, optimizer: $opt, seed: $seed, budget: $b, start: true) { id } }",
        json!({
            "o": org, "l": lab_id, "r": RECIPE, "obj": OBJECTIVE, "opt": opts.optimizer,
            "seed": opts.seed, "b": opts.budget,
        }),
    )?;
    let campaign_id = text(&created["createCampaign"]["id"], "campaign id")?;
    let started = Instant::now();
    let bar = (!opts.json).then(|| {
        let bar = indicatif::ProgressBar::new(u64::from(opts.budget));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "loop {pos:>3}/{len} [{bar:30}] {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let query = "query($c: ID!) { campaign(id: $c) { state stateDetail results bestValue \
                 bestParameters { name value } } }";
    let campaign = loop {
        let c = gql(url, t, query, json!({ "c": campaign_id }))?["campaign"].clone();
        if let Some(bar) = &bar {
            bar.set_position(c["results"].as_u64().unwrap_or(0));
            if let Some(best) = c["bestValue"].as_f64() {
                bar.set_message(format!(
                    "best |CD| {best:.3} mdeg at T = {} °C, C = {} mmol/ml",
                    best_parameter(&c, "T"),
                    best_parameter(&c, "C")
                ));
            }
        }
        match c["state"].as_str() {
            Some("COMPLETED") => break c,
            Some("FAILED") | Some("CANCELED") => {
                bail!("the campaign {}: {}", c["state"], c["stateDetail"])
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if let Some(bar) = &bar {
        bar.finish();
    }
    let wall_s = started.elapsed().as_secs_f64();
    let values = objective_values(url, t, &campaign_id)?;
    let summary = summarize(&campaign_id, &campaign, &values, wall_s, opts);
    Ok((summary, agent, password))
}

/// The value of variable `name` in a campaign's `bestParameters` (`null` when absent).
fn best_parameter(c: &Value, name: &str) -> Value {
    c["bestParameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .map_or(Value::Null, |p| p["value"].clone())
}

/// The objective values of every experiment, in loop order (`None` = no value).
fn objective_values(url: &str, t: Option<&str>, id: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let d = gql(
            url,
            t,
            "query($c: ID!, $a: String) { campaign(id: $c) { experiments(first: 500, after: $a) { \
               nodes { objectiveValue } pageInfo { hasNextPage endCursor } } } }",
            json!({ "c": id, "a": after }),
        )?;
        let page = &d["campaign"]["experiments"];
        for n in page["nodes"].as_array().into_iter().flatten() {
            out.push(n["objectiveValue"].as_f64());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            return Ok(out);
        }
        after = text(&page["pageInfo"]["endCursor"], "cursor")?;
    }
}

/// Loops needed until the best-so-far first reached `fraction` of the final best.
pub fn loops_to_fraction(values: &[Option<f64>], fraction: f64) -> Option<usize> {
    let best = values
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    if !best.is_finite() {
        return None;
    }
    values
        .iter()
        .position(|v| v.is_some_and(|v| v >= fraction * best))
        .map(|i| i + 1)
}

fn summarize(
    id: &str,
    c: &Value,
    values: &[Option<f64>],
    wall_s: f64,
    opts: &DemoOptions,
) -> Value {
    json!({
        "campaign_id": id,
        "optimizer": opts.optimizer,
        "seed": opts.seed,
        "speed": opts.speed,
        "experiments": values.len(),
        "best_t_c": best_parameter(c, "T"),
        "best_c_mmol_ml": best_parameter(c, "C"),
        "best_abs_cd_mdeg": c["bestValue"],
        "loops_to_95pct": loops_to_fraction(values, 0.95),
        "wall_s": (wall_s * 10.0).round() / 10.0,
    })
}

fn print_summary(s: &Value) {
    println!(
        "\nCampaign finished: {} experiments in {:.1} s (virtual lab at {}x).\n  \
         best |CD| {:.3} mdeg at T = {} °C, C = {} mmol/ml\n  \
         loops to reach 95 % of the final best: {}",
        s["experiments"],
        s["wall_s"].as_f64().unwrap_or(0.0),
        s["speed"],
        s["best_abs_cd_mdeg"].as_f64().unwrap_or(f64::NAN),
        s["best_t_c"],
        s["best_c_mmol_ml"],
        s["loops_to_95pct"],
    );
}

/// The virtual twin's configuration with the demo's clock speed and seed.
fn virtual_lab_config(speed: f64, seed: u64) -> String {
    VIRTUAL_LAB
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if t.starts_with("speed =") {
                format!("speed = {speed:.1}")
            } else if t.starts_with("seed =") {
                format!("seed = {seed}")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_to_95pct_counts_until_the_best_so_far_first_reaches_it() {
        let v = [Some(0.1), None, Some(0.5), Some(0.96), Some(0.9), Some(1.0)];
        assert_eq!(loops_to_fraction(&v, 0.95), Some(4));
        assert_eq!(loops_to_fraction(&[None, None], 0.95), None);
    }

    #[test]
    fn the_demo_lab_config_takes_the_speed_and_seed() {
        let c = virtual_lab_config(2500.0, 9);
        assert!(c.contains("speed = 2500.0"));
        assert!(c.contains("seed = 9"));
        assert!(!c.contains("speed = 1000.0"));
    }
}
