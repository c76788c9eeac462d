//! The closed loop end to end: a researcher creates the paper's chirality campaign through the
//! public API on a lab whose agent drives the virtual lab; the server's engine asks SNOBFIT,
//! compiles, queues, dispatches, analyses the streamed spectra and tells the optimizer, until the
//! budget is used — on both database backends. Then the same with the server killed (SIGKILL)
//! mid-campaign and restarted: nothing lost, nothing run twice, and the optimizer's proposals are
//! exactly those of an uninterrupted optimizer told the same results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use maosic_e2e::{
    backends, mark_ran, param, repo_root, virtual_lab_config, wait_for, Backend, Session,
    TestAgent, TestDatabase, TestServer,
};
use maosic_optimizer::{Algorithm, Goal, Observation, Optimizer, OptimizerSpec, Space};
use serde_json::{json, Value};

/// Lab clock speed of the virtual lab in these tests: its default, `max` (the discrete-event
/// clock as fast as the CPU allows; machine load slows a loop down but changes nothing in it, so
/// the tests of this file run at once, several labs side by side).
const SPEED: f64 = f64::INFINITY;
const SEED: i64 = 7;
const ENV: &[(&str, &str)] = &[("MAOSIC_CAMPAIGNS__TICK_MS", "100")];

fn recipe() -> String {
    std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap()
}

fn gql(server: &TestServer, s: &Session, query: &str, vars: Value) -> Value {
    let body = server.graphql_as(&s.access_token, query, vars).unwrap();
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

fn wait_online(server: &TestServer, s: &Session, lab: &str, agent: &TestAgent) {
    wait_for(Duration::from_secs(30), "the virtual lab online", || {
        let d = gql(
            server,
            s,
            "query($l: ID!) { lab(id: $l) { online devices { name } } }",
            json!({ "l": lab }),
        );
        Ok((d["lab"]["online"] == true
            && d["lab"]["devices"]
                .as_array()
                .is_some_and(|a| !a.is_empty()))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

fn create_campaign(server: &TestServer, s: &Session, lab: &str, budget: i64) -> String {
    let d = gql(
        server,
        s,
        "mutation($o: ID!, $l: ID!, $r: String!, $b: Int!, $seed: Int!) { createCampaign(organizationId: $o, \
           labId: $l, name: \"chirality\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", \
           optimizer: \"snobfit\", seed: $seed, budget: $b, start: true) { id state parameters { name lower upper step } } }",
        json!({ "o": s.organization_id, "l": lab, "r": recipe(), "b": budget, "seed": SEED }),
    );
    assert_eq!(d["createCampaign"]["state"], "RUNNING", "{d}");
    let params = &d["createCampaign"]["parameters"];
    assert_eq!(params[0]["name"], "T");
    assert_eq!(params[0]["step"], 0.5);
    assert_eq!(params[1]["name"], "C");
    d["createCampaign"]["id"].as_str().unwrap().to_owned()
}

fn campaign(server: &TestServer, s: &Session, id: &str) -> Value {
    gql(
        server,
        s,
        "query($c: ID!) { campaign(id: $c) { state stateDetail proposals results bestValue bestParameters { name value } } }",
        json!({ "c": id }),
    )["campaign"]
        .clone()
}

/// Every experiment of the campaign, paging through the cursor API.
fn experiments(server: &TestServer, s: &Session, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let d = gql(
            server,
            s,
            "query($c: ID!, $a: String) { campaign(id: $c) { experiments(first: 50, after: $a) { \
               nodes { id seq source state outcome error parameters { name value } objectiveValue attempts provenance } \
               pageInfo { hasNextPage endCursor } totalCount } } }",
            json!({ "c": id, "a": after }),
        );
        let page = &d["campaign"]["experiments"];
        out.extend(page["nodes"].as_array().unwrap().iter().cloned());
        if page["pageInfo"]["hasNextPage"] != true {
            // (Counted a moment later: a running campaign may have queued one more since.)
            assert!(page["totalCount"].as_u64().unwrap() as usize >= out.len());
            return out;
        }
        after = page["pageInfo"]["endCursor"].as_str().unwrap().to_owned();
    }
}

fn wait_done(
    server: &TestServer,
    s: &Session,
    id: &str,
    timeout: Duration,
    agent: &TestAgent,
) -> Value {
    let mut last = 0;
    wait_for(timeout, "the campaign to complete", || {
        let c = campaign(server, s, id);
        let results = c["results"].as_i64().unwrap_or(0);
        if results >= last + 10 {
            last = results;
            println!("  … {results} results, best {}", c["bestValue"]);
        }
        if c["state"] == "FAILED" {
            panic!(
                "campaign failed: {c}\nagent:\n{}\nserver:\n{}",
                agent.log(),
                server.log()
            );
        }
        Ok((c["state"] == "COMPLETED").then_some(c))
    })
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nserver:\n{}", agent.log(), server.log()))
    .0
}

/// Replays the stored history into a fresh SNOBFIT with the campaign's seed: each stored
/// proposal must be exactly what the uninterrupted optimizer proposes after the same results.
fn replay_matches(exps: &[Value]) -> usize {
    let space = Space::new([
        ("T".to_owned(), 90.0, 180.0, Some(0.5)),
        ("C".to_owned(), 0.2, 1.2, Some(0.01)),
    ]);
    let mut opt = Optimizer::new(OptimizerSpec {
        space,
        goal: Goal::Maximize,
        seed: SEED as u64,
        algorithm: Algorithm::from_name("snobfit").unwrap(),
    })
    .unwrap();
    let mut matched = 0;
    for e in exps {
        let told_before = e["provenance"]["proposal"]["told_before"].as_u64().unwrap();
        assert_eq!(opt.observations(), told_before, "{e}");
        let p = opt.ask(1).remove(0);
        let x = [
            param(&e["parameters"], "T").unwrap(),
            param(&e["parameters"], "C").unwrap(),
        ];
        assert_eq!(
            p.x,
            x.to_vec(),
            "proposal {} differs from an uninterrupted run",
            e["seq"]
        );
        matched += 1;
        let obs = e["objectiveValue"]
            .as_f64()
            .map_or_else(Observation::failed, Observation::new);
        opt.tell(&x, obs).unwrap();
    }
    matched
}

fn check_complete(exps: &[Value], budget: usize) {
    assert_eq!(exps.len(), budget, "experiments stored = budget");
    let mut seqs: Vec<i64> = exps.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    seqs.dedup();
    assert_eq!(
        seqs,
        (1..=budget as i64).collect::<Vec<_>>(),
        "each loop once, in order"
    );
    for e in exps {
        assert_eq!(e["state"], "COMPLETED", "{e}");
        assert_eq!(e["outcome"], "succeeded", "{e}");
        assert!(e["objectiveValue"].is_number(), "{e}");
        assert!(e["provenance"]["program"]["steps"].is_array(), "{e}");
    }
}

fn in_global_region(c: &Value) -> bool {
    let t = param(&c["bestParameters"], "T").unwrap();
    let conc = param(&c["bestParameters"], "C").unwrap();
    let cd = c["bestValue"].as_f64().unwrap();
    (125.0..=137.0).contains(&t) && conc >= 0.7 && cd >= 0.9
}

/// After a finished campaign of `budget` loops, `/metrics` shows the engine's work: every
/// experiment completed and dispatched once, asks, tells and analyses timed, no queue left on
/// the lab, record lag observed, and the database pool.
fn check_engine_metrics(server: &TestServer, lab: &str, budget: i64) {
    let m = server.metrics().unwrap();
    let get = |series: &str| m.get(series).copied().unwrap_or(0.0);
    let budget = budget as f64;
    println!(
        "metrics: {} asks ({:.1} ms mean), {} tells, {} analyses ({:.1} ms mean), {} dispatches \
         ({:.1} ms mean delay), {} asks or tells discarded, {} records (lag {:.1} ms mean), pool {}/{}",
        get("maosic_optimizer_duration_seconds_count{phase=\"ask\"}"),
        1e3 * get("maosic_optimizer_duration_seconds_sum{phase=\"ask\"}")
            / get("maosic_optimizer_duration_seconds_count{phase=\"ask\"}").max(1.0),
        get("maosic_optimizer_duration_seconds_count{phase=\"tell\"}"),
        get("maosic_analysis_duration_seconds_count"),
        1e3 * get("maosic_analysis_duration_seconds_sum")
            / get("maosic_analysis_duration_seconds_count").max(1.0),
        get("maosic_experiment_dispatch_delay_seconds_count"),
        1e3 * get("maosic_experiment_dispatch_delay_seconds_sum")
            / get("maosic_experiment_dispatch_delay_seconds_count").max(1.0),
        get("maosic_engine_discarded_total{work=\"ask\"}")
            + get("maosic_engine_discarded_total{work=\"tell\"}"),
        get("maosic_agent_record_lag_seconds_count"),
        1e3 * get("maosic_agent_record_lag_seconds_sum")
            / get("maosic_agent_record_lag_seconds_count").max(1.0),
        get("maosic_db_pool_connections{state=\"busy\"}"),
        get("maosic_db_pool_max_connections"),
    );
    assert_eq!(
        get("maosic_experiments{state=\"completed\"}"),
        budget,
        "{m:?}"
    );
    assert_eq!(get("maosic_experiments{state=\"queued\"}"), 0.0);
    assert_eq!(
        get(&format!("maosic_lab_queue_depth{{lab=\"{lab}\"}}")),
        0.0
    );
    // every experiment was dispatched exactly once (a re-dispatch is not counted again)
    assert_eq!(
        get("maosic_experiment_dispatch_delay_seconds_count"),
        budget
    );
    assert!(get("maosic_optimizer_duration_seconds_count{phase=\"ask\"}") >= 1.0);
    // a tell (and its analysis) is computed again only when its store conflicted
    assert!(get("maosic_optimizer_duration_seconds_count{phase=\"tell\"}") >= budget);
    assert!(get("maosic_analysis_duration_seconds_count") >= budget);
    assert!(get("maosic_engine_pass_duration_seconds_count") >= 1.0);
    assert!(get("maosic_engine_campaign_step_duration_seconds_count") >= 1.0);
    // each experiment streams several records (started, steps, spectra, finished)
    assert!(get("maosic_agent_record_lag_seconds_count") >= 5.0 * budget);
    assert!(get("maosic_db_pool_max_connections") >= 1.0);
    // one engine, one step at a time per campaign: nothing computed twice
    assert_eq!(get("maosic_engine_discarded_total{work=\"ask\"}"), 0.0);
    assert_eq!(get("maosic_engine_discarded_total{work=\"tell\"}"), 0.0);
    assert!(m.contains_key("maosic_db_pool_connections{state=\"idle\"}"));
}

/// A fresh server on `backend` with a researcher, and the paper lab enrolled and online behind
/// an agent on the virtual lab (seed 42, max speed). Dropped agent first, database last.
struct PaperLab {
    agent: TestAgent,
    _dir: tempfile::TempDir,
    lab: maosic_e2e::TestLab,
    s: Session,
    server: TestServer,
    _db: TestDatabase,
}

impl PaperLab {
    async fn online(backend: Backend) -> Self {
        Self::online_with(backend, ENV).await
    }

    /// The same, with the server's environment `env` (configuration overrides).
    async fn online_with(backend: Backend, env: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create(backend).await.unwrap();
        let server = TestServer::spawn(&db, env).unwrap();
        let s = server
            .sign_up("researcher@lab.example", "Chirality Group")
            .unwrap();
        let lab = server.create_enrolled_lab(&s, "paper-lab").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = virtual_lab_config(dir.path(), SPEED, 42).unwrap();
        let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
        wait_online(&server, &s, &lab.id, &agent);
        Self {
            agent,
            _dir: dir,
            lab,
            s,
            server,
            _db: db,
        }
    }
}

async fn paper_campaign(backend: Backend) {
    let PaperLab {
        agent,
        _dir,
        lab,
        s,
        server,
        _db,
    } = PaperLab::online(backend).await;
    let budget = 60;
    let started = Instant::now();
    let id = create_campaign(&server, &s, &lab.id, budget);
    let c = wait_done(&server, &s, &id, Duration::from_secs(600), &agent);
    let took = started.elapsed();
    let exps = experiments(&server, &s, &id);
    check_complete(&exps, budget as usize);
    let matched = replay_matches(&exps);
    println!(
        "[{}] paper campaign: {budget} loops in {:.1} s ({:.0} ms/loop) at max speed; best |CD| {:.3} mdeg at T = {} °C, C = {} mmol/ml; {matched} proposals equal a fresh optimizer's",
        backend.name(),
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / budget as f64,
        c["bestValue"].as_f64().unwrap(),
        param(&c["bestParameters"], "T").unwrap(),
        param(&c["bestParameters"], "C").unwrap(),
    );
    assert!(in_global_region(&c), "not the global region: {c}");
    check_engine_metrics(&server, &lab.id, budget);
    mark_ran(backend, "paper_campaign_finds_the_global_region");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paper_campaign_finds_the_global_region_on_every_backend() {
    for backend in backends() {
        paper_campaign(backend).await;
    }
}

/// The engine's pass runs only every 2 s here, yet each experiment's end concludes it, asks
/// SNOBFIT and dispatches the next at once: the `program_finished` record does it as it is
/// stored, for that experiment alone, and the pass (the catch-all) finds nothing left to do.
async fn record_driven(backend: Backend) {
    let env = [("MAOSIC_CAMPAIGNS__TICK_MS", "2000")];
    let PaperLab {
        agent,
        _dir,
        lab,
        s,
        server,
        _db,
    } = PaperLab::online_with(backend, &env).await;
    let budget = 12;
    let id = create_campaign(&server, &s, &lab.id, budget);
    let c = wait_done(&server, &s, &id, Duration::from_secs(300), &agent);
    check_complete(&experiments(&server, &s, &id), budget as usize);
    check_engine_metrics(&server, &lab.id, budget);
    let by_record = metric(&server, "maosic_engine_concluded_total{by=\"record\"}");
    let by_pass = metric(&server, "maosic_engine_concluded_total{by=\"pass\"}");
    let passes = metric(&server, "maosic_engine_pass_duration_seconds_count");
    println!(
        "[{}] {budget} loops: {by_record} concluded by their record, {by_pass} by a pass; \
         {passes} passes; best {}",
        backend.name(),
        c["bestValue"]
    );
    assert_eq!(by_record + by_pass, budget as f64);
    // A pass may win the race for an experiment whose end arrives while it looks at the lab,
    // but the loop does not wait for passes: nearly every end was acted on by its record.
    assert!(by_record >= budget as f64 - 2.0, "{by_record} of {budget}");
    mark_ran(backend, "record_driven_campaign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiments_end_moves_its_campaign_on_without_waiting_for_an_engine_pass() {
    for backend in backends() {
        record_driven(backend).await;
    }
}

async fn restart(backend: Backend) {
    let PaperLab {
        agent,
        _dir,
        lab,
        s,
        mut server,
        _db: db,
    } = PaperLab::online(backend).await;
    let addr = server.addr.to_string();
    let budget = 30;
    let id = create_campaign(&server, &s, &lab.id, budget);
    let (killed_at, _) = wait_for(
        Duration::from_secs(120),
        "10 results before the kill",
        || {
            let n = campaign(&server, &s, &id)["results"].as_i64().unwrap_or(0);
            Ok((n >= 10).then_some(n))
        },
    )
    .unwrap();
    server.kill();
    let server = TestServer::spawn_on(&db, &addr, ENV).unwrap();
    // The access token stays valid only with the same JWT key: log in again.
    let again = server
        .graphql(
            "mutation { logIn(email: \"researcher@lab.example\", password: \"correct horse battery\") { accessToken } }",
            json!({}),
        )
        .unwrap();
    let s = Session {
        access_token: again["data"]["logIn"]["accessToken"]
            .as_str()
            .unwrap()
            .to_owned(),
        ..s
    };
    let c = wait_done(&server, &s, &id, Duration::from_secs(300), &agent);
    let exps = experiments(&server, &s, &id);
    check_complete(&exps, budget as usize);
    let matched = replay_matches(&exps);
    let reclaimed = exps
        .iter()
        .filter(|e| e["attempts"].as_i64().unwrap_or(0) > 1)
        .count();
    println!(
        "[{}] server SIGKILL after {killed_at} results: campaign completed; experiments stored {} (budget {budget}), lost 0, duplicated 0, re-dispatched {reclaimed}; {matched}/{budget} proposals equal an uninterrupted optimizer's; best |CD| {:.3}",
        backend.name(),
        exps.len(),
        c["bestValue"].as_f64().unwrap(),
    );
    mark_ran(backend, "campaign_survives_server_kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_completes_after_server_kill_with_nothing_lost_or_repeated() {
    for backend in backends() {
        restart(backend).await;
    }
}

/// An agent killed in the middle of an experiment: the restarted agent does not have it, so the
/// experiment is reported `interrupted` (with what was measured) and never run again; the
/// campaign goes on with the next proposals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_lost_with_its_agent_is_interrupted_not_rerun() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let env = [
        ("MAOSIC_CAMPAIGNS__TICK_MS", "100"),
        ("MAOSIC_CAMPAIGNS__INTERRUPTED_GRACE_MS", "1000"),
    ];
    let server = TestServer::spawn(&db, &env).unwrap();
    let s = server
        .sign_up("researcher@lab.example", "Chirality Group")
        .unwrap();
    let lab = server.create_enrolled_lab(&s, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Slow enough (one loop ≈ 1.4 s of wall time) to kill the agent mid-experiment.
    let config = virtual_lab_config(dir.path(), 300.0, 42).unwrap();
    let spool = dir.path().join("spool.db");
    let mut agent =
        TestAgent::spawn_with_lab_and_spool(&server.url(), &lab.credential, &config, Some(&spool))
            .unwrap();
    wait_online(&server, &s, &lab.id, &agent);
    let budget = 3;
    let id = create_campaign(&server, &s, &lab.id, budget);
    let (victim, _) = wait_for(Duration::from_secs(60), "an experiment running", || {
        Ok(experiments(&server, &s, &id)
            .into_iter()
            .find(|e| e["state"] == "RUNNING")
            .map(|e| e["id"].as_str().unwrap().to_owned()))
    })
    .unwrap();
    agent.kill();
    let killed = Instant::now();
    let again =
        TestAgent::spawn_with_lab_and_spool(&server.url(), &lab.credential, &config, Some(&spool))
            .unwrap();
    let (state, _) = wait_for(
        Duration::from_secs(30),
        "the lost experiment to be reported",
        || {
            let e = gql(
                &server,
                &s,
                "query($e: ID!) { experiment(id: $e) { state error attempts } }",
                json!({ "e": victim }),
            );
            let st = e["experiment"]["state"].as_str().unwrap_or("").to_owned();
            Ok((st != "RUNNING" && st != "LEASED").then_some(e))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let reported_s = killed.elapsed().as_secs_f64();
    assert_eq!(state["experiment"]["state"], "INTERRUPTED", "{state}");
    assert_eq!(
        state["experiment"]["attempts"], 1,
        "never dispatched again: {state}"
    );
    let c = wait_done(&server, &s, &id, Duration::from_secs(120), &again);
    let exps = experiments(&server, &s, &id);
    assert_eq!(exps.len(), budget as usize);
    let interrupted = exps.iter().filter(|e| e["state"] == "INTERRUPTED").count();
    let completed = exps.iter().filter(|e| e["state"] == "COMPLETED").count();
    assert_eq!(
        (interrupted, completed),
        (1, budget as usize - 1),
        "{exps:?}"
    );
    assert!(
        !again.log().contains(&victim),
        "the restarted agent never saw the lost program:\n{}",
        again.log()
    );
    println!(
        "agent SIGKILL mid-experiment: reported interrupted {reported_s:.1} s after the kill (grace 1 s), re-run 0 times; campaign completed ({completed} completed, {interrupted} interrupted), best {}",
        c["bestValue"]
    );
    mark_ran(Backend::Sqlite, "interrupted_experiment");
}

/// One series of a replica's `/metrics` (0 when absent).
fn metric(server: &TestServer, series: &str) -> f64 {
    server
        .metrics()
        .unwrap()
        .get(series)
        .copied()
        .unwrap_or(0.0)
}

const ASKS: &str = "maosic_optimizer_duration_seconds_count{phase=\"ask\"}";
const TELLS: &str = "maosic_optimizer_duration_seconds_count{phase=\"tell\"}";

/// Two replicas on one PostgreSQL, the agent behind a proxy on replica 2: only the replica
/// holding the lab's engine lease (the one with the agent) asks and tells; replica 1 computes
/// nothing in steady state. Then replica 2 is killed (SIGKILL) mid-campaign and the proxy
/// sends the agent's reconnect to replica 1, which takes the lab's lease over within 10 s and
/// finishes the campaign: every loop once, none lost, none repeated, and the proposals are
/// an uninterrupted optimizer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_advance_a_campaign_once_and_a_killed_replicas_lab_moves_on() {
    if !backends().contains(&Backend::Postgres) {
        eprintln!("skipped: MAOSIC_TEST_POSTGRES_URL is not set");
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await.unwrap();
    let r1 = TestServer::spawn(&db, ENV).unwrap();
    let mut r2 = TestServer::spawn(&db, ENV).unwrap();
    let proxy = maosic_e2e::chaos::ChaosProxy::start(r2.addr).unwrap();
    let s = r1
        .sign_up("researcher@lab.example", "Chirality Group")
        .unwrap();
    let lab = r1.create_enrolled_lab(&s, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), SPEED, 42).unwrap();
    let agent = TestAgent::spawn_with_lab(&proxy.url(), &lab.credential, &config).unwrap();
    wait_online(&r1, &s, &lab.id, &agent);
    let budget = 30;
    let id = create_campaign(&r1, &s, &lab.id, budget);
    let results = |n: i64| {
        wait_for(Duration::from_secs(180), "results", || {
            let c = campaign(&r1, &s, &id);
            Ok((c["results"].as_i64().unwrap_or(0) >= n).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", r1.log(), agent.log()));
    };
    // Steady state: replica 1 (no agent) computes nothing while replica 2 advances.
    results(5);
    let r1_before = (metric(&r1, ASKS), metric(&r1, TELLS));
    let r2_before = metric(&r2, TELLS);
    results(15);
    let r1_after = (metric(&r1, ASKS), metric(&r1, TELLS));
    let r2_after = metric(&r2, TELLS);
    assert_eq!(metric(&r2, "maosic_engine_labs_held"), 1.0);
    assert_eq!(metric(&r1, "maosic_engine_labs_held"), 0.0);
    assert_eq!(
        r1_before, r1_after,
        "replica 1 asked or told while replica 2 held the lab"
    );
    assert!(r2_after >= r2_before + 9.0, "{r2_before} → {r2_after}");

    // Kill replica 2; the balancer sends new connections to replica 1.
    proxy.set_upstream(r1.addr);
    let killed = Instant::now();
    r2.kill();
    wait_for(Duration::from_secs(30), "replica 1 holds the lab", || {
        Ok((metric(&r1, "maosic_engine_labs_held") == 1.0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", r1.log()));
    let took_over = killed.elapsed();
    let c = wait_done(&r1, &s, &id, Duration::from_secs(300), &agent);
    let exps = experiments(&r1, &s, &id);
    check_complete(&exps, budget as usize);
    let matched = replay_matches(&exps);
    let discarded = metric(&r1, "maosic_engine_discarded_total{work=\"ask\"}")
        + metric(&r1, "maosic_engine_discarded_total{work=\"tell\"}");
    println!(
        "replicas: replica 1 computed {} asks / {} tells while replica 2 held the lab (15 results); \
         replica 2 SIGKILLed, replica 1 held the lab {:.1} s later; campaign {} with {} experiments \
         (budget {budget}), lost 0, duplicated 0; {matched}/{budget} proposals an uninterrupted \
         optimizer's; replica 1 discarded {discarded} asks/tells",
        r1_after.0 - r1_before.0,
        r1_after.1 - r1_before.1,
        took_over.as_secs_f64(),
        c["state"],
        exps.len(),
    );
    assert!(
        took_over < Duration::from_secs(10),
        "took over after {took_over:?}"
    );
    mark_ran(Backend::Postgres, "engine_leases");
}

/// A subscriber to several campaigns' events on one replica, read on its own thread (so the
/// server never sees a slow reader): events seen per campaign, and whether each was seen
/// completing.
struct Watcher {
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (usize, bool)>>>,
    /// How the socket ended, if it did (a close frame, an error, a read failure).
    ended: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(server: &TestServer, s: &Session, campaigns: &[&str]) -> Watcher {
        use std::sync::atomic::Ordering;
        let (mut ws, ack) = maosic_e2e::GraphqlWs::connect(server, &s.access_token).unwrap();
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        for id in campaigns {
            ws.subscribe(
                id,
                "subscription($c: ID!) { campaignEvents(campaignId: $c) { kind campaignState } }",
                json!({ "c": id }),
            )
            .unwrap();
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (seen_w, stop_w, ended_w) = (seen.clone(), stop.clone(), ended.clone());
        let thread = std::thread::spawn(move || {
            while !stop_w.load(Ordering::Relaxed) {
                let m = match ws.next(Duration::from_millis(200)) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(e) => {
                        *ended_w.lock().unwrap() = Some(format!("read failed: {e}"));
                        return;
                    }
                };
                match m["type"].as_str() {
                    Some("next") => {
                        let id = m["id"].as_str().unwrap_or("").to_owned();
                        let done =
                            m["payload"]["data"]["campaignEvents"]["campaignState"] == "COMPLETED";
                        let mut seen = seen_w.lock().unwrap();
                        let e = seen.entry(id).or_insert((0, false));
                        e.0 += 1;
                        e.1 |= done;
                    }
                    Some("ping") | Some("pong") => {}
                    _ => {
                        *ended_w.lock().unwrap() = Some(m.to_string());
                        if m["type"] == "close" {
                            return;
                        }
                    }
                }
            }
        });
        Watcher {
            seen,
            ended,
            stop,
            thread: Some(thread),
        }
    }

    /// (events, saw it complete) for a campaign.
    fn of(&self, id: &str) -> (usize, bool) {
        self.seen
            .lock()
            .unwrap()
            .get(id)
            .copied()
            .unwrap_or((0, false))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Issue #17's three-replica scenario: three replicas on one PostgreSQL behind a round-robin
/// balancer (the harness's proxy), two labs whose agents the balancer spreads over the
/// replicas, a 60-loop campaign on each, and a subscriber to both campaigns on every replica.
/// Mid-campaign the replica holding lab A's agent is killed (SIGKILL) and taken out of the
/// rotation; A's agent reconnects through the balancer to another replica. Both campaigns
/// finish with every loop run exactly once (none lost, none repeated, the proposals an
/// uninterrupted optimizer's), and every replica's subscriber saw both campaigns' events (the
/// survivors up to both completions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_a_round_robin_balancer_finish_two_campaigns_through_a_kill_9() {
    if !backends().contains(&Backend::Postgres) {
        eprintln!("skipped: MAOSIC_TEST_POSTGRES_URL is not set");
        return;
    }
    const AGENTS: &str = "maosic_agents_connected";
    let budget = 60;
    let db = TestDatabase::create(Backend::Postgres).await.unwrap();
    let mut replicas: Vec<TestServer> = (0..3)
        .map(|_| TestServer::spawn(&db, ENV).unwrap())
        .collect();
    let balancer =
        maosic_e2e::chaos::ChaosProxy::start_balanced(replicas.iter().map(|r| r.addr).collect())
            .unwrap();
    let s = replicas[0]
        .sign_up("researcher@replicas.example", "Chirality Group")
        .unwrap();
    let labs: Vec<_> = ["paper-lab-a", "paper-lab-b"]
        .iter()
        .map(|n| replicas[1].create_enrolled_lab(&s, n).unwrap())
        .collect();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Lab A's agent first: the replica it lands on is the one killed later.
    let mut agents = Vec::new();
    let mut victim = None;
    for (i, lab) in labs.iter().enumerate() {
        let config = virtual_lab_config(dirs[i].path(), SPEED, 42 + i as u64).unwrap();
        let agent = TestAgent::spawn_with_lab(&balancer.url(), &lab.credential, &config).unwrap();
        wait_online(&replicas[2], &s, &lab.id, &agent);
        agents.push(agent);
        if i == 0 {
            victim = (0..3).find(|&r| metric(&replicas[r], AGENTS) == 1.0);
        }
    }
    let victim = victim.expect("a replica holds lab A's agent");
    let held: Vec<f64> = replicas.iter().map(|r| metric(r, AGENTS)).collect();
    assert_eq!(held.iter().sum::<f64>(), 2.0, "{held:?}");
    assert!(
        held.iter().all(|h| *h <= 1.0),
        "the balancer spread the agents over the replicas: {held:?}"
    );
    let ids: Vec<String> = labs
        .iter()
        .enumerate()
        .map(|(i, lab)| create_campaign(&replicas[i], &s, &lab.id, budget))
        .collect();
    let watchers: Vec<Watcher> = replicas
        .iter()
        .map(|r| Watcher::start(r, &s, &[&ids[0], &ids[1]]))
        .collect();
    let survivor = (victim + 1) % 3;

    // Mid-campaign on lab A: the balancer stops sending to the victim, which is killed.
    wait_for(Duration::from_secs(300), "20 results on lab A", || {
        let c = campaign(&replicas[survivor], &s, &ids[0]);
        Ok((c["results"].as_i64().unwrap_or(0) >= 20).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agents[0].log()));
    let before_kill = watchers[victim].of(&ids[0]).0 + watchers[victim].of(&ids[1]).0;
    balancer.set_upstreams(
        (0..3)
            .filter(|&i| i != victim)
            .map(|i| replicas[i].addr)
            .collect(),
    );
    let killed = Instant::now();
    replicas[victim].kill();
    wait_for(Duration::from_secs(30), "lab A's agent back online", || {
        let online = (0..3)
            .filter(|&i| i != victim)
            .map(|i| metric(&replicas[i], AGENTS))
            .sum::<f64>();
        Ok((online == 2.0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agents[0].log()));
    let reconnected = killed.elapsed();

    let mut summary = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let c = wait_done(
            &replicas[survivor],
            &s,
            id,
            Duration::from_secs(600),
            &agents[i],
        );
        let exps = experiments(&replicas[survivor], &s, id);
        check_complete(&exps, budget as usize);
        let matched = replay_matches(&exps);
        assert_eq!(matched, budget as usize);
        summary.push(format!("{} {}", c["state"], exps.len()));
    }
    // Every surviving replica's subscriber saw both campaigns through to completion; the
    // victim's saw both campaigns' events until it died.
    wait_for(
        Duration::from_secs(10),
        "completions seen everywhere",
        || {
            Ok((0..3)
                .filter(|&i| i != victim)
                .all(|i| ids.iter().all(|id| watchers[i].of(id).1))
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| {
        let seen: Vec<_> = watchers
            .iter()
            .map(|w| {
                (
                    w.of(&ids[0]),
                    w.of(&ids[1]),
                    w.ended.lock().unwrap().clone(),
                )
            })
            .collect();
        panic!("{e}: {seen:?}")
    });
    for id in &ids {
        assert!(
            watchers[victim].of(id).0 > 0,
            "the killed replica's subscriber saw {id}"
        );
    }
    let seen: Vec<_> = watchers
        .iter()
        .map(|w| (w.of(&ids[0]).0, w.of(&ids[1]).0))
        .collect();
    println!(
        "replicas: 3 on one PostgreSQL behind a round-robin balancer, 2 labs x {budget} loops; \
         replica {} (holding lab A) SIGKILLed after 20 results, lab A's agent back online via \
         another replica {:.1} s later; campaigns {summary:?}, lost 0, duplicated 0, every \
         proposal an uninterrupted optimizer's; events seen per replica (A, B): {seen:?} \
         ({before_kill} on the killed one before the kill)",
        victim + 1,
        reconnected.as_secs_f64()
    );
    mark_ran(Backend::Postgres, "three_replicas_campaigns");
}

/// Processes that keep `n` cores busy until dropped.
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start(n: usize) -> Self {
        Self(
            (0..n)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One experiment as the table compares it: sequence number, parameters and the exact bits of
/// the objective measured.
type Row = (i64, String, String, Option<u64>);

/// A fresh server, lab and agent (seed 42, max speed) run a `budget`-loop paper campaign; its
/// experiment table.
async fn campaign_table(budget: i64) -> Vec<Row> {
    let PaperLab {
        agent,
        _dir,
        lab,
        s,
        server,
        _db,
    } = PaperLab::online(Backend::Sqlite).await;
    let id = create_campaign(&server, &s, &lab.id, budget);
    wait_done(&server, &s, &id, Duration::from_secs(900), &agent);
    let exps = experiments(&server, &s, &id);
    check_complete(&exps, budget as usize);
    exps.iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["parameters"].to_string(),
                e["outcome"].to_string(),
                e["objectiveValue"].as_f64().map(f64::to_bits),
            )
        })
        .collect()
}

/// Lab time moves by events, not by the wall clock: a 30-loop campaign run on a quiet machine
/// and again with both cores saturated by other processes gives the same experiment table, bit
/// for bit (proposals, and the objective measured from the spectra of each loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_gives_the_same_experiments_with_both_cores_saturated() {
    let quiet_started = Instant::now();
    let quiet = campaign_table(30).await;
    let quiet_s = quiet_started.elapsed().as_secs_f64();
    let loaded_started = Instant::now();
    let loaded = {
        let _hogs = CpuHogs::start(2);
        campaign_table(30).await
    };
    let loaded_s = loaded_started.elapsed().as_secs_f64();
    let distinct: std::collections::BTreeSet<_> = quiet.iter().map(|r| r.3).collect();
    assert!(
        distinct.len() > 20,
        "the loops measured different things: {quiet:?}"
    );
    for (a, b) in quiet.iter().zip(&loaded) {
        assert_eq!(a, b, "experiment {} differs under load", a.0);
    }
    assert_eq!(quiet.len(), loaded.len());
    println!(
        "determinism: 30 loops quiet in {quiet_s:.1} s and with 2 cores saturated in {loaded_s:.1} s: \
         identical experiment tables ({} distinct objective values)",
        distinct.len()
    );
}

/// The paper's pipelined recipe with the optimizer proposing ahead (`batchSize: 3`: SNOBFIT
/// asks with the points still in the lab pending): the agent runs up to three loops at once,
/// each queued behind the one before for the devices they share, so a loop is synthesised
/// while the one before is measured (the lab times of its records show it: how often depends
/// on the server keeping ahead of a lab at max speed); every loop completes with a result,
/// and most proposals were made before the previous result was in.
/// (That each loop measures its own cuvette is checked spectrum by spectrum in the lab's
/// `ownership` tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_campaign_proposes_ahead_and_overlaps_loops_in_the_lab() {
    let PaperLab {
        agent,
        _dir,
        lab,
        s,
        server,
        _db,
    } = PaperLab::online(Backend::Sqlite).await;
    let budget = 30;
    let recipe =
        std::fs::read_to_string(repo_root().join("examples/chirality-pipelined.recipe")).unwrap();
    let d = gql(
        &server,
        &s,
        "mutation($o: ID!, $l: ID!, $r: String!, $b: Int!, $seed: Int!) { createCampaign(organizationId: $o, \
           labId: $l, name: \"chirality, pipelined\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", \
           optimizer: \"snobfit\", seed: $seed, budget: $b, batchSize: 3, start: true) { id state } }",
        json!({ "o": s.organization_id, "l": lab.id, "r": recipe, "b": budget, "seed": SEED }),
    );
    let id = d["createCampaign"]["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let c = wait_done(&server, &s, &id, Duration::from_secs(600), &agent);
    let exps = experiments(&server, &s, &id);
    assert_eq!(exps.len(), budget as usize);
    for e in &exps {
        assert_eq!(e["state"], "COMPLETED", "{e}");
        assert!(e["objectiveValue"].is_number(), "{e}");
    }
    // proposed ahead: asked while earlier points were still in the lab
    let ahead = exps
        .iter()
        .filter(|e| {
            let seq = e["seq"].as_u64().unwrap();
            e["provenance"]["proposal"]["told_before"].as_u64().unwrap() + 1 < seq
        })
        .count();
    assert!(
        ahead >= 20,
        "only {ahead} of {budget} proposals were made ahead"
    );
    // overlapped in the lab: loop k+1's heater had settled (its temperature record) before
    // loop k's CD spectrum was taken
    let at = |e: &Value, kind: &str| -> f64 {
        let d = gql(
            &server,
            &s,
            "query($e: ID!) { experiment(id: $e) { measurements(first: 20) { kind labTimeS } } }",
            json!({ "e": e["id"] }),
        );
        d["experiment"]["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["kind"] == kind)
            .and_then(|m| m["labTimeS"].as_f64())
            .unwrap_or_else(|| panic!("no {kind} in {d}"))
    };
    let overlapped = exps
        .windows(2)
        .filter(|w| at(&w[1], "temperature") < at(&w[0], "cd_spectrum"))
        .count();
    // How many overlap depends on the server keeping ahead of a lab at max speed (its
    // proposals arrive in wall time, the lab runs as fast as the CPU allows): some must.
    assert!(
        overlapped >= 5,
        "only {overlapped} of {} loops synthesised while the one before was measured",
        budget - 1
    );
    let span = at(&exps[exps.len() - 1], "cd_spectrum") - at(&exps[0], "temperature");
    println!(
        "pipelined campaign: {budget} loops in {:.1} s wall, {:.2} lab-h ({:.1} loops per lab-hour);          {ahead} proposed with earlier points pending, {overlapped} synthesised while the one before          was measured; best |CD| {}",
        started.elapsed().as_secs_f64(),
        span / 3600.0,
        f64::from(budget - 1) / (span / 3600.0),
        c["bestValue"]
    );
}
