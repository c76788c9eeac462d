//! The campaign API as collaborators use it: live subscriptions over graphql-ws (authenticated
//! at connection init, filtered by tenant, closed on revocation), roles (a viewer reads but
//! cannot start or stop), manual experiments told to the optimizer, experiment detail with raw
//! spectra, fitted peaks and provenance, CSV/JSON export authorised like the API, and manual
//! instructions checked against the capability descriptor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use maosic_e2e::{
    error_code, mark_ran, repo_root, virtual_lab_config, wait_for, Backend, GraphqlWs, Session,
    TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};

fn q(server: &TestServer, s: &Session, query: &str, vars: Value) -> Value {
    server.graphql_as(&s.access_token, query, vars).unwrap()
}

fn ok(server: &TestServer, s: &Session, query: &str, vars: Value) -> Value {
    let body = q(server, s, query, vars);
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

fn get(server: &TestServer, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(format!("{}{path}", server.url()));
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let response = req
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.into_body().read_to_string().unwrap())
}

const EVENTS: &str = "subscription($c: ID!) { campaignEvents(campaignId: $c) { campaignId kind campaignState experimentState experimentId } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collaborators_watch_control_and_export_a_campaign_and_nobody_else_sees_it() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_CAMPAIGNS__TICK_MS", "100")]).unwrap();
    let a = server.sign_up("owner@a.example", "Org A").unwrap();
    let b = server.sign_up("outsider@b.example", "Org B").unwrap();
    let v = server.sign_up("viewer@v.example", "Org V").unwrap();
    let inv = ok(&server, &a, "mutation($o: ID!) { inviteMember(organizationId: $o, email: \"viewer@v.example\", role: VIEWER) { token } }", json!({ "o": a.organization_id }));
    ok(
        &server,
        &v,
        "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
        json!({ "t": inv["inviteMember"]["token"] }),
    );

    let lab = server.create_enrolled_lab(&a, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), f64::INFINITY, 42).unwrap();
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    wait_for(Duration::from_secs(30), "lab online", || {
        let d = ok(
            &server,
            &a,
            "query($l: ID!) { lab(id: $l) { online devices { name } } }",
            json!({ "l": lab.id }),
        );
        Ok((d["lab"]["online"] == true
            && d["lab"]["devices"]
                .as_array()
                .is_some_and(|x| !x.is_empty()))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // Bad definitions are refused with a clear error and create nothing.
    let recipe = std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap();
    let create = "mutation($o: ID!, $l: ID!, $r: String!, $obj: String!, $opt: String!, $b: Int!) { createCampaign(organizationId: $o, labId: $l, name: \"c\", recipe: $r, objective: $obj, optimizer: $opt, seed: 3, budget: $b) { id state canControl } }";
    for (r, obj, opt, budget, needle) in [
        (
            "not a recipe (",
            "maximize abs(cd_at_exciton)",
            "snobfit",
            5,
            "recipe",
        ),
        (
            recipe.as_str(),
            "maximize nonsense",
            "snobfit",
            5,
            "objective",
        ),
        (
            recipe.as_str(),
            "maximize abs(cd_at_exciton)",
            "annealing",
            5,
            "optimizer",
        ),
        (
            recipe.as_str(),
            "maximize abs(cd_at_exciton)",
            "snobfit",
            0,
            "budget",
        ),
    ] {
        let body = q(
            &server,
            &a,
            create,
            json!({ "o": a.organization_id, "l": lab.id, "r": r, "obj": obj, "opt": opt, "b": budget }),
        );
        assert_eq!(
            error_code(&body).as_deref(),
            Some("BAD_USER_INPUT"),
            "{body}"
        );
        assert!(body.to_string().contains(needle), "{body}");
    }
    let listed = ok(
        &server,
        &a,
        "query($o: ID!) { campaigns(organizationId: $o) { id } }",
        json!({ "o": a.organization_id }),
    );
    assert_eq!(
        listed["campaigns"].as_array().unwrap().len(),
        0,
        "refused definitions created nothing"
    );
    // An outsider cannot create a campaign on A's lab.
    let body = q(
        &server,
        &b,
        create,
        json!({ "o": b.organization_id, "l": lab.id, "r": recipe, "obj": "maximize abs(cd_at_exciton)", "opt": "snobfit", "b": 5 }),
    );
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"), "{body}");

    let budget = 6;
    let created = ok(
        &server,
        &a,
        create,
        json!({ "o": a.organization_id, "l": lab.id, "r": recipe, "obj": "maximize abs(cd_at_exciton)", "opt": "snobfit", "b": budget }),
    );
    let campaign = created["createCampaign"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["createCampaign"]["state"], "DRAFT");

    // States and the objective's direction are enums: the filter takes one, and a value that
    // names none (a literal, or the old lower-case text in a variable) is refused with a
    // validation error that names the enum.
    let typed = ok(
        &server,
        &a,
        "query($c: ID!) { campaign(id: $c) { objectiveDirection experiments(state: COMPLETED) { totalCount nodes { id } } } }",
        json!({ "c": campaign }),
    );
    assert_eq!(
        typed["campaign"]["objectiveDirection"], "MAXIMIZE",
        "{typed}"
    );
    assert_eq!(
        typed["campaign"]["experiments"]["nodes"],
        json!([]),
        "{typed}"
    );
    for (query, vars) in [
        (
            "query($c: ID!) { campaign(id: $c) { experiments(state: FINISHED) { totalCount } } }",
            json!({ "c": campaign }),
        ),
        (
            "query($c: ID!, $s: ExperimentState) { campaign(id: $c) { experiments(state: $s) { totalCount } } }",
            json!({ "c": campaign, "s": "completed" }),
        ),
    ] {
        let body = q(&server, &a, query, vars);
        assert_eq!(
            error_code(&body).as_deref(),
            Some("GRAPHQL_VALIDATION_FAILED"),
            "{body}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(message.contains("ExperimentState"), "{body}");
        assert!(body["data"].is_null(), "nothing is answered: {body}");
    }

    // The viewer reads it but may not start or stop it; the outsider does not see it at all.
    let seen = ok(
        &server,
        &v,
        "query($c: ID!) { campaign(id: $c) { id canControl } }",
        json!({ "c": campaign }),
    );
    assert_eq!(seen["campaign"]["canControl"], false);
    for m in ["startCampaign", "cancelCampaign", "pauseCampaign"] {
        let body = q(
            &server,
            &v,
            &format!("mutation($c: ID!) {{ {m}(id: $c) {{ id }} }}"),
            json!({ "c": campaign }),
        );
        assert_eq!(
            error_code(&body).as_deref(),
            Some("FORBIDDEN"),
            "{m}: {body}"
        );
        let body = q(
            &server,
            &b,
            &format!("mutation($c: ID!) {{ {m}(id: $c) {{ id }} }}"),
            json!({ "c": campaign }),
        );
        assert_eq!(
            error_code(&body).as_deref(),
            Some("NOT_FOUND"),
            "{m}: {body}"
        );
    }
    let body = q(
        &server,
        &v,
        "mutation($l: ID!) { stopLab(labId: $l) }",
        json!({ "l": lab.id }),
    );
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    let hidden = ok(
        &server,
        &b,
        "query($c: ID!) { campaign(id: $c) { id } }",
        json!({ "c": campaign }),
    );
    assert!(hidden["campaign"].is_null());

    // Live: A subscribes; B's subscription to A's campaign is refused and receives nothing.
    let (mut ws_a, ack) = GraphqlWs::connect(&server, &a.access_token).unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws_a.subscribe("events", EVENTS, json!({ "c": campaign }))
        .unwrap();
    let (mut ws_b, ack_b) = GraphqlWs::connect(&server, &b.access_token).unwrap();
    assert_eq!(ack_b["type"], "connection_ack");
    ws_b.subscribe("spy", EVENTS, json!({ "c": campaign }))
        .unwrap();
    let refused = ws_b.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(refused["type"], "next", "{refused}");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );
    assert_eq!(
        ws_b.next(Duration::from_secs(5)).unwrap().unwrap()["type"],
        "complete"
    );
    ws_b.subscribe(
        "spy-lab",
        "subscription($l: ID!) { labStatus(labId: $l) { online } }",
        json!({ "l": lab.id }),
    )
    .unwrap();
    let refused = ws_b.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );
    assert_eq!(
        ws_b.next(Duration::from_secs(5)).unwrap().unwrap()["type"],
        "complete"
    );
    let (_, anonymous) = GraphqlWs::connect(&server, "not-a-token").unwrap();
    assert_ne!(
        anonymous["type"], "connection_ack",
        "an invalid token is refused at connection init: {anonymous}"
    );

    ok(
        &server,
        &a,
        "mutation($c: ID!) { startCampaign(id: $c) { state } }",
        json!({ "c": campaign }),
    );
    // A person's own conditions join the same campaign and are told to the optimizer.
    let manual = ok(&server, &a, "mutation($c: ID!) { queueExperiment(campaignId: $c, parameters: {T: 130, C: 0.8}, name: \"my point\") { id source state } }", json!({ "c": campaign }));
    assert_eq!(manual["queueExperiment"]["source"], "manual");
    let bad = q(&server, &a, "mutation($c: ID!) { queueExperiment(campaignId: $c, parameters: {T: 400, C: 0.8}) { id } }", json!({ "c": campaign }));
    assert_eq!(error_code(&bad).as_deref(), Some("BAD_USER_INPUT"), "{bad}");

    let started = Instant::now();
    let (mut completed, mut measurements, mut kinds) = (0, 0, std::collections::BTreeSet::new());
    let mut seen = Vec::new();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "campaign did not finish live\n{}",
            server.log()
        );
        let Some(msg) = ws_a.next(Duration::from_secs(30)).unwrap() else {
            continue;
        };
        assert_eq!(msg["type"], "next", "{msg}");
        let ev = &msg["payload"]["data"]["campaignEvents"];
        seen.push(ev.clone());
        kinds.insert(ev["kind"].as_str().unwrap().to_owned());
        match ev["kind"].as_str() {
            Some("experiment") if ev["experimentState"] == "COMPLETED" => completed += 1,
            Some("measurement") => measurements += 1,
            Some("state") if ev["campaignState"] == "COMPLETED" => break,
            _ => {}
        }
    }
    let live_s = started.elapsed().as_secs_f64();
    assert_eq!(
        completed,
        budget + 1,
        "every experiment's completion arrived live (kinds {kinds:?})"
    );
    assert!(
        measurements >= 3 * (budget + 1),
        "{measurements} measurement events"
    );
    assert!(
        ws_b.next(Duration::from_millis(300)).unwrap().is_none(),
        "the outsider received nothing"
    );

    let c = ok(&server, &a, "query($c: ID!) { campaign(id: $c) { state results proposals bestValue experiments(first: 20) { nodes { id seq source state objectiveValue features { excitonWavelengthNm peakCount } fittedPeaks { shape peaks { index exciton centerNm } curve { wavelengthNm absorbance } } measurements(first: 50) { kind name data } provenance } totalCount } } }", json!({ "c": campaign }));
    let c = &c["campaign"];
    assert_eq!(c["results"], budget + 1, "manual result told too: {c}");
    assert_eq!(c["proposals"], budget);
    let nodes = c["experiments"]["nodes"].as_array().unwrap();
    let m = nodes.iter().find(|e| e["source"] == "manual").unwrap();
    assert_eq!(m["state"], "COMPLETED");
    // The first of the optimizer's experiments (the manual one may have run first).
    let e = nodes
        .iter()
        .find(|e| e["source"] == "optimizer")
        .unwrap_or_else(|| panic!("an optimizer experiment: {c}"));
    let abs = e["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "absorption_spectrum")
        .unwrap();
    assert_eq!(abs["data"]["absorbance"].as_array().unwrap().len(), 2048);
    assert!(e["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["kind"] == "cd_spectrum"));
    let peaks = e["fittedPeaks"]["peaks"].as_array().unwrap();
    assert!(
        peaks.iter().any(|p| p["exciton"] == true),
        "{}",
        e["fittedPeaks"]
    );
    assert_eq!(
        e["fittedPeaks"]["peaks"].as_array().map(Vec::len),
        e["features"]["peakCount"].as_u64().map(|n| n as usize),
        "{e}"
    );
    assert_eq!(e["fittedPeaks"]["shape"], "GAUSSIAN", "{e}");
    let lambda = e["features"]["excitonWavelengthNm"].as_f64().unwrap();
    assert!((400.0..500.0).contains(&lambda), "exciton at {lambda}");
    assert!(e["provenance"]["program"]["steps"].is_array());
    assert_eq!(e["provenance"]["proposal"]["optimizer"], "snobfit");

    // Export: authorised like the API.
    let (status, csv) = get(
        &server,
        &format!("/api/v1/campaigns/{campaign}/export.csv"),
        Some(&a.access_token),
    );
    assert_eq!(status, 200, "{csv}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), budget as usize + 2, "{csv}");
    assert!(
        lines[0].starts_with("seq,experiment_id,name,source,state,T,C,objective"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1..].iter().all(|l| l.contains(",completed,")),
        "{csv}"
    );
    let (status, body) = get(
        &server,
        &format!("/api/v1/campaigns/{campaign}/export.json?measurements=true"),
        Some(&v.access_token),
    );
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["experiments"].as_array().unwrap().len(),
        budget as usize + 1
    );
    assert!(
        json["experiments"][0]["measurements"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    assert_eq!(
        get(
            &server,
            &format!("/api/v1/campaigns/{campaign}/export.csv"),
            Some(&b.access_token)
        )
        .0,
        404
    );
    assert_eq!(
        get(
            &server,
            &format!("/api/v1/campaigns/{campaign}/export.csv"),
            None
        )
        .0,
        401
    );

    // Manual instructions are checked against the descriptor before anything is sent.
    for (method, params, needle) in [
        ("H.set_temperature", json!({ "T": 500 }), "20"),
        ("H.explode", json!({}), "unknown method"),
        ("P1.set_rate", json!({ "speed": 1 }), "no parameter"),
    ] {
        let body = q(&server, &a, "mutation($l: ID!, $m: String!, $p: JSON) { sendInstruction(labId: $l, method: $m, params: $p) }", json!({ "l": lab.id, "m": method, "p": params }));
        assert_eq!(
            error_code(&body).as_deref(),
            Some("BAD_USER_INPUT"),
            "{body}"
        );
        assert!(body.to_string().contains(needle), "{body}");
    }
    let done = ok(
        &server,
        &a,
        "mutation($l: ID!) { sendInstruction(labId: $l, method: \"P1.stop\") }",
        json!({ "l": lab.id }),
    );
    assert!(!done["sendInstruction"].is_null());
    let stopped = ok(
        &server,
        &a,
        "mutation($l: ID!) { stopLab(labId: $l) }",
        json!({ "l": lab.id }),
    );
    assert!(!stopped["stopLab"].is_null());
    let body = q(&server, &a, "mutation($c: ID!) { queueExperiment(campaignId: $c, parameters: {T: 130, C: 0.8}) { id } }", json!({ "c": campaign }));
    assert_eq!(
        error_code(&body).as_deref(),
        Some("CONFLICT"),
        "a finished campaign takes nothing more: {body}"
    );
    let audit = ok(
        &server,
        &a,
        "query($o: ID!) { auditLog(organizationId: $o, limit: 100) { action } }",
        json!({ "o": a.organization_id }),
    );
    let actions = audit["auditLog"].to_string();
    for action in [
        "campaign.create",
        "campaign.start",
        "experiment.queue",
        "lab.instruction",
        "lab.stop",
    ] {
        assert!(actions.contains(action), "{action} audited: {actions}");
    }
    let clone = ok(
        &server,
        &a,
        "mutation($c: ID!) { cloneCampaign(id: $c) { id state name budget } }",
        json!({ "c": campaign }),
    );
    assert_eq!(clone["cloneCampaign"]["state"], "DRAFT");
    assert_eq!(clone["cloneCampaign"]["budget"], budget);

    // Logging out closes A's socket.
    let out = Instant::now();
    ok(&server, &a, "mutation { logOut }", json!({}));
    let closed = ws_a.next(Duration::from_secs(5)).unwrap().unwrap();
    let close_ms = out.elapsed().as_millis();
    assert_eq!(closed["type"], "close", "{closed}");
    assert_eq!(closed["code"], 4401);
    assert!(close_ms < 1000, "socket closed after {close_ms} ms");
    println!(
        "campaign API: {} experiments streamed live in {live_s:.1} s ({completed} completions, {measurements} measurement events, kinds {kinds:?}); outsider received 0 events; socket closed {close_ms} ms after log-out",
        budget + 1
    );
    mark_ran(Backend::Sqlite, "campaign_api");
}

/// A collaborator's campaign on a shared lab queues no more than the share's daily quota; the
/// campaign says why it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_labs_daily_quota_caps_what_a_collaborator_queues() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_CAMPAIGNS__TICK_MS", "100")]).unwrap();
    let owner = server.sign_up("owner@a.example", "Lab owners").unwrap();
    let guest = server.sign_up("guest@b.example", "Collaborators").unwrap();
    let lab = server.create_enrolled_lab(&owner, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), f64::INFINITY, 5).unwrap();
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    wait_for(Duration::from_secs(30), "lab online", || {
        let d = ok(
            &server,
            &owner,
            "query($l: ID!) { lab(id: $l) { online devices { name } } }",
            json!({ "l": lab.id }),
        );
        Ok((d["lab"]["online"] == true
            && d["lab"]["devices"]
                .as_array()
                .is_some_and(|x| !x.is_empty()))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    ok(&server, &owner, "mutation($l: ID!, $o: ID!) { shareLab(labId: $l, organizationId: $o, dailyQuota: 2) { dailyQuota } }", json!({ "l": lab.id, "o": guest.organization_id }));
    let recipe = std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap();
    let created = ok(&server, &guest, "mutation($o: ID!, $l: ID!, $r: String!) { createCampaign(organizationId: $o, labId: $l, name: \"guest\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", optimizer: \"sobol\", seed: 2, budget: 5, start: true) { id } }", json!({ "o": guest.organization_id, "l": lab.id, "r": recipe }));
    let id = created["createCampaign"]["id"].as_str().unwrap().to_owned();
    let (c, _) = wait_for(Duration::from_secs(60), "the quota to be used", || {
        let c = ok(
            &server,
            &guest,
            "query($c: ID!) { campaign(id: $c) { results proposals stateDetail state } }",
            json!({ "c": id }),
        );
        Ok(
            (c["campaign"]["results"] == 2 && c["campaign"]["stateDetail"].is_string())
                .then_some(c),
        )
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    // Give the engine several passes: nothing more is queued today.
    std::thread::sleep(Duration::from_millis(800));
    let later = ok(
        &server,
        &guest,
        "query($c: ID!) { campaign(id: $c) { results proposals stateDetail state } }",
        json!({ "c": id }),
    );
    assert_eq!(later["campaign"]["proposals"], 2, "{later}");
    assert_eq!(later["campaign"]["state"], "RUNNING");
    assert!(
        later["campaign"]["stateDetail"]
            .as_str()
            .unwrap()
            .contains("quota"),
        "{c}"
    );
    let manual = q(&server, &guest, "mutation($c: ID!) { queueExperiment(campaignId: $c, parameters: {T: 130, C: 0.8}) { id } }", json!({ "c": id }));
    assert_eq!(error_code(&manual).as_deref(), Some("CONFLICT"), "{manual}");
    println!(
        "shared lab quota 2/day: the collaborator's 5-loop campaign queued 2 and waits ({})",
        later["campaign"]["stateDetail"]
    );
    mark_ran(Backend::Sqlite, "shared_lab_quota");
}

/// Presenting a refresh token twice revokes its family and closes that session's sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_reuse_closes_the_sessions_websockets_within_a_second() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let s = server.sign_up("reuse@a.example", "Org R").unwrap();
    let (mut ws, ack) = GraphqlWs::connect(&server, &s.access_token).unwrap();
    assert_eq!(ack["type"], "connection_ack");
    let refresh = "mutation($r: String!) { refreshTokens(refreshToken: $r) { accessToken } }";
    let first = server
        .graphql(refresh, json!({ "r": s.refresh_token }))
        .unwrap();
    assert!(first.get("errors").is_none(), "{first}");
    let reused_at = Instant::now();
    let again = server
        .graphql(refresh, json!({ "r": s.refresh_token }))
        .unwrap();
    assert_eq!(
        error_code(&again).as_deref(),
        Some("REFRESH_TOKEN_REUSED"),
        "{again}"
    );
    let closed = ws.next(Duration::from_secs(5)).unwrap().unwrap();
    let ms = reused_at.elapsed().as_millis();
    assert_eq!(closed["code"], 4401, "{closed}");
    assert!(ms < 1000, "closed after {ms} ms");
    println!("refresh-token reuse: family revoked, socket closed {ms} ms later");
}
