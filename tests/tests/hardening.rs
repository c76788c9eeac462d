//! One tenant cannot hurt another (issue 15): each attack a review found, run against the real
//! server (and agent where the attack needs one), with the behaviour it must show now.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use maosic_e2e::{
    backends, error_code, mark_ran, repo_root, virtual_lab_config, wait_for, Backend, GraphqlWs,
    Session, TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};

fn recipe() -> String {
    std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap()
}

fn gql(server: &TestServer, s: &Session, query: &str, vars: Value) -> Value {
    let body = server.graphql_as(&s.access_token, query, vars).unwrap();
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

const CREATE: &str = "mutation($o: ID!, $l: ID!, $r: String!, $opt: String!, $set: JSON, $b: Int!, $start: Boolean) { \
    createCampaign(organizationId: $o, labId: $l, name: \"c\", recipe: $r, \
    objective: \"maximize abs(cd_at_exciton)\", optimizer: $opt, optimizerSettings: $set, \
    budget: $b, start: $start) { id state } }";

fn create_lab(server: &TestServer, s: &Session, name: &str) -> String {
    let d = gql(
        server,
        s,
        "mutation($o: ID!, $n: String!) { createLab(organizationId: $o, name: $n) { id } }",
        json!({ "o": s.organization_id, "n": name }),
    );
    d["createLab"]["id"].as_str().unwrap().to_owned()
}

/// Item 1: settings outside their documented bounds never reach the engine; the error names the
/// field and its range (before: `candidates: 1e10` aborted the whole server on allocation).
#[tokio::test]
async fn optimizer_settings_out_of_bounds_are_refused_naming_the_field() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let s = server.sign_up("a@example.org", "A").unwrap();
    let lab = create_lab(&server, &s, "lab");
    for (optimizer, settings, budget, needle) in [
        (
            "bo",
            json!({ "candidates": 10_000_000_000u64 }),
            10,
            "bo.candidates must be between 16 and 8192",
        ),
        ("bo", json!({ "restarts": 1000 }), 10, "bo.restarts"),
        (
            "snobfit",
            json!({ "p": 7.5 }),
            10,
            "snobfit.p must be between 0 and 1",
        ),
        ("grid", json!({ "levels": 100000 }), 10, "grid.levels"),
        (
            "bo",
            json!({ "candidate": 64 }),
            10,
            "unknown setting \"candidate\"",
        ),
        (
            "bo",
            json!({}),
            5000,
            "budget must be between 1 and 1000 for bo",
        ),
    ] {
        let body = server
            .graphql_as(
                &s.access_token,
                CREATE,
                json!({ "o": s.organization_id, "l": lab, "r": recipe(), "opt": optimizer,
                        "set": settings, "b": budget }),
            )
            .unwrap();
        assert_eq!(
            error_code(&body).as_deref(),
            Some("BAD_USER_INPUT"),
            "{body}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{needle}: {body}");
    }
    // Nothing was created, and the server is healthy.
    let list = gql(
        &server,
        &s,
        "query($o: ID!) { campaigns(organizationId: $o) { id } }",
        json!({ "o": s.organization_id }),
    );
    assert_eq!(list["campaigns"], json!([]), "{list}");
    assert_eq!(server.get("/readyz").unwrap().0, 200);
}

/// Item 1: a campaign whose step keeps failing (here: an optimizer state stored before the
/// bounds existed, with `candidates: 1e10`) is paused with the reason after three tries, while
/// another organisation's campaign on the same lab runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_whose_steps_keep_failing_is_paused_while_others_run() {
    for backend in backends() {
        poisoned_campaign(backend).await;
        mark_ran(backend, "poisoned_campaign");
    }
}

async fn poisoned_campaign(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_CAMPAIGNS__TICK_MS", "100")]).unwrap();
    let a = server.sign_up("a@example.org", "A").unwrap();
    let lab = server.create_enrolled_lab(&a, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), 1000.0, 3).unwrap();
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    wait_for(Duration::from_secs(30), "the lab online", || {
        let d = gql(
            &server,
            &a,
            "query($l: ID!) { lab(id: $l) { online devices { name } } }",
            json!({ "l": lab.id }),
        );
        Ok((d["lab"]["online"] == true
            && d["lab"]["devices"]
                .as_array()
                .is_some_and(|v| !v.is_empty()))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let vars = |start: bool, budget: i64| {
        json!({ "o": a.organization_id, "l": lab.id, "r": recipe(), "opt": "bo",
                "set": {}, "b": budget, "start": start })
    };
    let poisoned = gql(&server, &a, CREATE, vars(false, 5))["createCampaign"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Write the state an unvalidated server would have stored.
    macro_rules! poison {
        ($pool:expr) => {{
            let pool = $pool;
            let (s,): (String,) =
                sqlx::query_as("SELECT optimizer_state FROM campaigns WHERE id = $1")
                    .bind(&poisoned)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            let bad = s.replace("\"candidates\":512", "\"candidates\":10000000000");
            assert_ne!(bad, s, "the stored state names candidates");
            sqlx::query("UPDATE campaigns SET optimizer_state = $1 WHERE id = $2")
                .bind(&bad)
                .bind(&poisoned)
                .execute(&pool)
                .await
                .unwrap();
            bad
        }};
    }
    let state: String = match backend {
        Backend::Sqlite => poison!(sqlx::SqlitePool::connect(&db.url).await.unwrap()),
        Backend::Postgres => poison!(sqlx::PgPool::connect(&db.url).await.unwrap()),
    };
    assert!(state.contains("10000000000"));
    gql(
        &server,
        &a,
        "mutation($c: ID!) { startCampaign(id: $c) { state } }",
        json!({ "c": poisoned }),
    );
    let healthy = gql(&server, &a, CREATE, vars(true, 3))["createCampaign"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let campaign = |id: &str| {
        gql(
            &server,
            &a,
            "query($c: ID!) { campaign(id: $c) { state stateDetail results } }",
            json!({ "c": id }),
        )["campaign"]
            .clone()
    };
    let paused = wait_for(
        Duration::from_secs(60),
        "the poisoned campaign paused",
        || {
            let c = campaign(&poisoned);
            Ok((c["state"] == "PAUSED").then_some(c))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()))
    .0;
    let detail = paused["stateDetail"].as_str().unwrap_or_default();
    assert!(detail.contains("3 times in a row"), "{paused}");
    assert!(detail.contains("bo.candidates"), "{paused}");
    let done = wait_for(
        Duration::from_secs(240),
        "the healthy campaign completed",
        || {
            let c = campaign(&healthy);
            Ok((c["state"] == "COMPLETED").then_some(c))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", server.log(), agent.log()))
    .0;
    assert_eq!(done["results"], 3, "{done}");
    assert_eq!(server.get("/readyz").unwrap().0, 200);
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// Item 3: queries and mutations over `/graphql/ws` pass the same checks as over HTTP: the
/// alias limit, the tenant scope, and (with the resolvers' filter switched off, PostgreSQL's
/// row-level security alone) another organisation's lab stays invisible.
#[tokio::test]
async fn queries_over_the_websocket_use_the_http_pipeline() {
    for backend in backends() {
        for app_filter in [true, false] {
            if !app_filter && backend == Backend::Sqlite {
                continue; // SQLite has no row-level security: the resolvers are its fence.
            }
            ws_pipeline(backend, app_filter).await;
        }
        mark_ran(backend, "ws_pipeline");
    }
}

async fn ws_pipeline(backend: Backend, app_filter: bool) {
    let db = TestDatabase::create(backend).await.unwrap();
    let env: &[(&str, &str)] = if app_filter {
        &[]
    } else {
        &[("MAOSIC_GRAPHQL__TEST_DISABLE_APP_FILTER", "true")]
    };
    let server = TestServer::spawn(&db, env).unwrap();
    let a = server.sign_up("a@example.org", "A").unwrap();
    let b = server.sign_up("b@example.org", "B").unwrap();
    let lab = create_lab(&server, &a, "a-secret-lab");
    let (mut ws, ack) = GraphqlWs::connect(&server, &b.access_token).unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");

    let aliases: String = (0..1000)
        .map(|i| format!("a{i}: serverInfo {{ name }} "))
        .collect();
    ws.subscribe("1", &format!("{{ {aliases} }}"), json!({}))
        .unwrap();
    let refused = ws
        .next(Duration::from_secs(10))
        .unwrap()
        .expect("an answer");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "TOO_MANY_ALIASES",
        "{refused}"
    );

    ws.subscribe(
        "2",
        "query($l: ID!) { lab(id: $l) { id name } }",
        json!({ "l": lab }),
    )
    .unwrap();
    let answer = ws
        .next(Duration::from_secs(10))
        .unwrap()
        .expect("an answer");
    assert_eq!(answer["type"], "next", "{answer}");
    assert!(
        answer["payload"]["data"]["lab"].is_null(),
        "B must not see A's lab over the socket: {answer}"
    );
    assert!(!answer.to_string().contains("a-secret-lab"), "{answer}");
    let complete = ws.next(Duration::from_secs(10)).unwrap().expect("complete");
    assert_eq!(complete["type"], "complete", "{complete}");

    // B's own data still answers (a positive control).
    ws.subscribe("3", "{ me { email } }", json!({})).unwrap();
    let me = ws
        .next(Duration::from_secs(10))
        .unwrap()
        .expect("an answer");
    assert_eq!(
        me["payload"]["data"]["me"]["email"], "b@example.org",
        "{me}"
    );
    let done = ws.next(Duration::from_secs(10)).unwrap().expect("complete");
    assert_eq!(done["type"], "complete", "{done}");

    // An id still in use cannot smuggle an unchecked operation past the pipeline.
    let own = create_lab(&server, &b, "b-lab");
    ws.subscribe(
        "s",
        "subscription($l: ID!) { labStatus(labId: $l) { online } }",
        json!({ "l": own }),
    )
    .unwrap();
    assert!(
        ws.next(Duration::from_millis(300)).unwrap().is_none(),
        "subscribed, quiet"
    );
    ws.subscribe("s", &format!("{{ {aliases} }}"), json!({}))
        .unwrap();
    let dup = ws
        .next(Duration::from_secs(10))
        .unwrap()
        .expect("an answer");
    assert_eq!(dup["type"], "error", "{dup}");
    assert!(dup.to_string().contains("still running"), "{dup}");
}

/// Item 6: a share says what the partner may do; instructions count against its daily quota;
/// its queued commands have their own cap, and the owner sees and cancels them.
#[tokio::test]
async fn sharees_instruct_only_with_the_right_within_quota_and_never_lock_the_owner_out() {
    for backend in backends() {
        share_rights(backend).await;
        mark_ran(backend, "share_rights");
    }
}

async fn share_rights(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let a = server.sign_up("a@example.org", "A").unwrap();
    let b = server.sign_up("b@example.org", "B").unwrap();
    // An enrolled lab whose agent announced the paper lab's descriptor, then went offline:
    // instructions are checked against the descriptor and queue while it is away.
    let lab = server.create_enrolled_lab(&a, "lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), 100.0, 1).unwrap();
    let mut agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    wait_for(Duration::from_secs(30), "a descriptor", || {
        let d = gql(
            &server,
            &a,
            "query($l: ID!) { lab(id: $l) { devices { name } } }",
            json!({ "l": lab.id }),
        );
        Ok(d["lab"]["devices"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
            .then_some(()))
    })
    .unwrap();
    agent.kill();
    let share = |rights: &str, quota: i64| {
        gql(
            &server,
            &a,
            &format!("mutation($l: ID!, $o: ID!, $q: Int!) {{ shareLab(labId: $l, organizationId: $o, dailyQuota: $q, rights: {rights}) {{ rights }} }}"),
            json!({ "l": lab.id, "o": b.organization_id, "q": quota }),
        )
    };
    let queue = |s: &Session| {
        server
            .graphql_as(
                &s.access_token,
                "mutation($l: ID!) { queueInstruction(labId: $l, method: \"H.set_temperature\", params: {T: 30}, deadlineSeconds: 600) { id organizationId } }",
                json!({ "l": lab.id }),
            )
            .unwrap()
    };
    let send = |s: &Session| {
        server
            .graphql_as(
                &s.access_token,
                "mutation($l: ID!) { sendInstruction(labId: $l, method: \"H.set_temperature\", params: {T: 30}) }",
                json!({ "l": lab.id }),
            )
            .unwrap()
    };
    // `run` does not give hardware control.
    assert_eq!(share("RUN", 100)["shareLab"]["rights"], "RUN");
    for attempt in [send(&b), queue(&b)] {
        assert_eq!(
            error_code(&attempt).as_deref(),
            Some("FORBIDDEN"),
            "{attempt}"
        );
    }
    let stop = server
        .graphql_as(
            &b.access_token,
            "mutation($l: ID!) { stopLab(labId: $l) }",
            json!({ "l": lab.id }),
        )
        .unwrap();
    assert_eq!(error_code(&stop).as_deref(), Some("FORBIDDEN"), "{stop}");

    // `instruct`: up to its own cap of open commands; the owner still queues.
    share("INSTRUCT", 100);
    let mut mine = Vec::new();
    for _ in 0..5 {
        let q = queue(&b);
        assert!(q.get("errors").is_none(), "{q}");
        assert_eq!(
            q["data"]["queueInstruction"]["organizationId"],
            b.organization_id.as_str()
        );
        mine.push(
            q["data"]["queueInstruction"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let capped = queue(&b);
    assert_eq!(error_code(&capped).as_deref(), Some("CONFLICT"), "{capped}");
    assert!(capped.to_string().contains("at most 5"), "{capped}");
    let owner = queue(&a);
    assert!(
        owner.get("errors").is_none(),
        "the owner is never locked out: {owner}"
    );

    // The owner sees every command on its lab and cancels the partner's.
    let listed = gql(
        &server,
        &a,
        "query($l: ID!) { labCommands(labId: $l) { id organizationId } }",
        json!({ "l": lab.id }),
    );
    let partner: Vec<&Value> = listed["labCommands"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["organizationId"] == b.organization_id.as_str())
        .collect();
    assert_eq!(partner.len(), 5, "{listed}");
    let cancelled = gql(
        &server,
        &a,
        "mutation($c: ID!) { cancelLabCommand(id: $c) { state } }",
        json!({ "c": mine[0] }),
    );
    assert_eq!(cancelled["cancelLabCommand"]["state"], "CANCELED");
    // B sees only its own.
    let theirs = gql(
        &server,
        &b,
        "query($l: ID!) { labCommands(labId: $l) { organizationId } }",
        json!({ "l": lab.id }),
    );
    assert!(
        theirs["labCommands"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["organizationId"] == b.organization_id.as_str()),
        "{theirs}"
    );

    // The daily quota counts instructions: 5 queued today, quota 6 → one more, then refused.
    share("INSTRUCT", 6);
    let offline = send(&b);
    assert_eq!(
        error_code(&offline).as_deref(),
        Some("CONFLICT"),
        "the agent is offline: {offline}"
    );
    assert!(offline.to_string().contains("offline"), "{offline}");
    let over = send(&b);
    assert_eq!(error_code(&over).as_deref(), Some("CONFLICT"), "{over}");
    assert!(over.to_string().contains("quota"), "{over}");
    // The quota binds the partner only.
    let owner_again = queue(&a);
    assert!(owner_again.get("errors").is_none(), "{owner_again}");
}

/// Item 8: a member removed from an organisation loses its open subscriptions at once.
#[tokio::test]
async fn a_removed_member_loses_its_open_subscriptions() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let a = server.sign_up("a@example.org", "A").unwrap();
    let b = server.sign_up("member@example.org", "B").unwrap();
    let lab = create_lab(&server, &a, "lab");
    let inv = gql(&server, &a, "mutation($o: ID!) { inviteMember(organizationId: $o, email: \"member@example.org\", role: RESEARCHER) { token } }", json!({ "o": a.organization_id }));
    let token = inv["inviteMember"]["token"].as_str().unwrap().to_owned();
    gql(
        &server,
        &b,
        "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
        json!({ "t": token }),
    );
    let (mut ws, ack) = GraphqlWs::connect(&server, &b.access_token).unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.subscribe(
        "s",
        "subscription($l: ID!) { labStatus(labId: $l) { online } }",
        json!({ "l": lab }),
    )
    .unwrap();
    assert!(
        ws.next(Duration::from_millis(300)).unwrap().is_none(),
        "subscribed, quiet"
    );
    let me = gql(&server, &b, "{ me { id } }", json!({}));
    gql(
        &server,
        &a,
        "mutation($o: ID!, $u: ID!) { removeMember(organizationId: $o, userId: $u) }",
        json!({ "o": a.organization_id, "u": me["me"]["id"] }),
    );
    let closed = ws
        .next(Duration::from_secs(2))
        .unwrap()
        .expect("closed within 2 s");
    assert_eq!(closed, json!({ "type": "close", "code": 4401 }), "{closed}");
}
