//! The tenant-isolation sweep: every query and mutation of the schema (found by introspection,
//! so new fields are covered automatically) is called as organisation B with organisation A's
//! ids; nothing of A may appear in the answers and nothing of A may change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use maosic_e2e::{
    backends, mark_ran, repo_root, wait_for, Backend, GraphqlWs, Session, TestAgent, TestDatabase,
    TestServer,
};
use serde_json::{json, Map, Value};

const INTROSPECT: &str = "{ __schema { queryType { name } mutationType { name } subscriptionType { name } \
  types { name kind enumValues { name } fields { name \
    args { name type { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } \
    type { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } } } }";

/// Everything of A that B must never see.
struct Secrets {
    org: String,
    lab: String,
    user: String,
    credential: String,
    api_token: String,
    campaign: String,
    experiment: String,
    words: Vec<String>,
}

impl Secrets {
    fn ids(&self) -> [&String; 7] {
        [
            &self.org,
            &self.lab,
            &self.user,
            &self.credential,
            &self.api_token,
            &self.campaign,
            &self.experiment,
        ]
    }
}

fn named_type(t: &Value) -> (String, bool) {
    // (name, non-null at the top)
    let non_null = t["kind"] == "NON_NULL";
    let mut t = t;
    while t["name"].is_null() {
        t = &t["ofType"];
    }
    (t["name"].as_str().unwrap_or("").to_owned(), non_null)
}

fn selection(types: &[Value], type_name: &str) -> String {
    let Some(t) = types.iter().find(|t| t["name"] == type_name) else {
        return String::new();
    };
    if t["kind"] != "OBJECT" {
        return String::new();
    }
    let mut fields = vec!["__typename".to_owned()];
    for f in t["fields"].as_array().into_iter().flatten() {
        let has_required_args = f["args"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["type"]["kind"] == "NON_NULL"));
        if has_required_args {
            continue;
        }
        let (inner, _) = named_type(&f["type"]);
        let kind = types
            .iter()
            .find(|t| t["name"] == inner.as_str())
            .map(|t| t["kind"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        let name = f["name"].as_str().unwrap();
        if kind == "OBJECT" {
            // One level of nesting: the nested object's scalar fields.
            let nested: Vec<String> = types
                .iter()
                .find(|t| t["name"] == inner.as_str())
                .and_then(|t| t["fields"].as_array())
                .into_iter()
                .flatten()
                .filter(|f| {
                    let (n, _) = named_type(&f["type"]);
                    types
                        .iter()
                        .find(|t| t["name"] == n.as_str())
                        .is_some_and(|t| t["kind"] == "SCALAR" || t["kind"] == "ENUM")
                        && f["args"].as_array().is_none_or(Vec::is_empty)
                })
                .map(|f| f["name"].as_str().unwrap().to_owned())
                .collect();
            fields.push(format!("{name} {{ __typename {} }}", nested.join(" ")));
        } else {
            fields.push(name.to_owned());
        }
    }
    format!("{{ {} }}", fields.join(" "))
}

/// Argument values: A's ids for ids (chosen by the argument's name), probes for the rest.
fn argument_sets(types: &[Value], field: &Value, s: &Secrets) -> Vec<Map<String, Value>> {
    let mut sets = vec![Map::new()];
    for arg in field["args"].as_array().into_iter().flatten() {
        let name = arg["name"].as_str().unwrap();
        let (ty, _) = named_type(&arg["type"]);
        let lname = name.to_lowercase();
        let candidates: Vec<Value> = match ty.as_str() {
            "ID" => {
                let ids: Vec<&String> = if lname.contains("campaign") {
                    vec![&s.campaign]
                } else if lname.contains("experiment") {
                    vec![&s.experiment]
                } else if lname.contains("lab") {
                    vec![&s.lab]
                } else if lname.contains("organization") {
                    vec![&s.org]
                } else if lname.contains("credential") {
                    vec![&s.credential]
                } else if lname.contains("user") {
                    vec![&s.user]
                } else {
                    s.ids().to_vec()
                };
                ids.into_iter().map(|i| json!(i)).collect()
            }
            "String" => vec![json!(match lname.as_str() {
                "email" => "probe-b@b.example".to_owned(),
                n if n.contains("password") => "probe password 123".to_owned(),
                n if n.contains("token") => format!("mrt_{}.probe", s.org),
                _ => "probe".to_owned(),
            })],
            "Int" => vec![json!(5)],
            "Float" => vec![json!(130.5)],
            "Boolean" => vec![json!(true)],
            "JSON" => vec![json!({})],
            other => {
                let t = types.iter().find(|t| t["name"] == other).unwrap();
                // Enums: the most powerful value first (e.g. OWNER), an escalation attempt.
                vec![t["enumValues"][0]["name"].clone()]
            }
        };
        let mut next = Vec::new();
        for set in &sets {
            for c in &candidates {
                let mut set = set.clone();
                set.insert(name.to_owned(), c.clone());
                next.push(set);
            }
        }
        sets = next;
    }
    sets
}

fn literal(v: &Value, types: &[Value], arg_type: &str) -> String {
    let is_enum = types
        .iter()
        .any(|t| t["name"] == arg_type && t["kind"] == "ENUM");
    if is_enum {
        v.as_str().unwrap().to_owned()
    } else if arg_type == "JSON" {
        "{}".to_owned()
    } else {
        v.to_string()
    }
}

fn snapshot(server: &TestServer, a: &Session, lab: &str) -> Value {
    let body = server
        .graphql_as(
            &a.access_token,
            "query($o: ID!, $l: ID!) { organization(id: $o) { name members { userId role } \
               labs { id name shares { organizationId dailyQuota } agentCredentials { id revokedAt } } \
               sharedLabs { labId dailyQuota } } \
             lab(id: $l) { id name } auditLog(organizationId: $o, limit: 500) { id action } \
             apiTokens { id revokedAt } me { email memberships { role organization { id } } } \
             campaigns(organizationId: $o) { id name state budget priority proposals \
               experiments(first: 100) { nodes { id state name parameters { name value } } totalCount } } }",
            json!({ "o": a.organization_id, "l": lab }),
        )
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"].clone()
}

async fn sweep(backend: Backend, app_filter: bool) {
    let db = TestDatabase::create(backend).await.unwrap();
    // The sweep finds the schema by introspection (off by default in production).
    let env: &[(&str, &str)] = if app_filter {
        &[("MAOSIC_GRAPHQL__INTROSPECTION", "true")]
    } else {
        &[
            ("MAOSIC_GRAPHQL__INTROSPECTION", "true"),
            ("MAOSIC_GRAPHQL__TEST_DISABLE_APP_FILTER", "true"),
        ]
    };
    let server = TestServer::spawn(&db, env).unwrap();
    let label = if app_filter {
        backend.name().to_owned()
    } else {
        format!(
            "{}, application filter OFF: row-level security alone",
            backend.name()
        )
    };
    let a = server
        .sign_up("alpha-owner@a.example", "Alpha Secret Org")
        .unwrap();
    let lab = server.create_enrolled_lab(&a, "alpha-secret-lab").unwrap();
    let tok = server
        .graphql_as(
            &a.access_token,
            "mutation($o: ID!) { createApiToken(organizationId: $o, name: \"alpha-secret-token\", scope: WRITE) { apiToken { id } } \
             inviteMember(organizationId: $o, email: \"alpha-invitee@a.example\", role: ADMIN) { invitation { id } } }",
            json!({ "o": a.organization_id }),
        )
        .unwrap();
    let cred: Value =
        serde_json::from_str(&std::fs::read_to_string(&lab.credential).unwrap()).unwrap();
    // An agent announcing the paper lab's descriptor (no instruments: programs are refused).
    let agent = TestAgent::spawn(
        &server.url(),
        &lab.credential,
        Some(&repo_root().join("examples/paper-lab.toml")),
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "A's lab online", || {
        let d = server
            .graphql_as(
                &a.access_token,
                "query($l: ID!) { lab(id: $l) { online devices { name } } }",
                json!({ "l": lab.id }),
            )
            .unwrap();
        Ok((d["data"]["lab"]["online"] == true
            && d["data"]["lab"]["devices"]
                .as_array()
                .is_some_and(|x| !x.is_empty()))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let recipe = std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap();
    let made = server
        .graphql_as(
            &a.access_token,
            "mutation($o: ID!, $l: ID!, $r: String!) { createCampaign(organizationId: $o, labId: $l, \
               name: \"alpha-secret-campaign\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", \
               optimizer: \"snobfit\", budget: 3) { id } }",
            json!({ "o": a.organization_id, "l": lab.id, "r": recipe }),
        )
        .unwrap();
    let campaign = made["data"]["createCampaign"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{made}"))
        .to_owned();
    let queued = server
        .graphql_as(
            &a.access_token,
            "mutation($c: ID!) { queueExperiment(campaignId: $c, parameters: {T: 130, C: 0.8}, name: \"alpha-secret-experiment\") { id } }",
            json!({ "c": campaign }),
        )
        .unwrap();
    let experiment = queued["data"]["queueExperiment"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{queued}"))
        .to_owned();
    // It waits in the queue while the campaign is a draft (nothing changes during the sweep);
    // starting the campaign after the sweep makes the engine dispatch it (events for B to miss).
    let secrets = Secrets {
        org: a.organization_id.clone(),
        lab: lab.id.clone(),
        user: a.user_id.clone(),
        credential: cred["credential_id"].as_str().unwrap().to_owned(),
        api_token: tok["data"]["createApiToken"]["apiToken"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{tok}"))
            .to_owned(),
        campaign,
        experiment,
        words: vec![
            "alpha-secret-campaign".into(),
            "alpha-secret-experiment".into(),
            "Alpha Secret Org".into(),
            "alpha-secret-lab".into(),
            "alpha-owner@a.example".into(),
            "alpha-secret-token".into(),
            "alpha-invitee".into(),
        ],
    };
    let mut b = server.sign_up("bravo@b.example", "Bravo Org").unwrap();

    let schema = server
        .graphql_as(&b.access_token, INTROSPECT, json!({}))
        .unwrap();
    let s = &schema["data"]["__schema"];
    let types = s["types"]
        .as_array()
        .unwrap_or_else(|| panic!("{schema}"))
        .clone();
    // The lab page's live readings and method list: A reads its own (the readings are cached
    // per lab right after, so a cache keyed or checked wrongly would hand them to B next).
    let page =
        "query($l: ID!) { lab(id: $l) { telemetry { state readAt detail heaters { device source } \
                pumps { device } } devices { name methods { name params { name } } } } }";
    let own_page = server
        .graphql_as(&a.access_token, page, json!({ "l": lab.id }))
        .unwrap();
    let own_telemetry = &own_page["data"]["lab"]["telemetry"];
    assert!(
        own_telemetry["state"].is_string() && own_telemetry["state"] != "RESTRICTED",
        "{own_page}"
    );
    assert!(
        own_page["data"]["lab"]["devices"][0]["methods"]
            .as_array()
            .is_some_and(|m| !m.is_empty()),
        "{own_page}"
    );
    let b_page = server
        .graphql_as(&b.access_token, page, json!({ "l": lab.id }))
        .unwrap();
    assert_eq!(b_page["data"]["lab"], Value::Null, "{b_page}");
    assert!(
        !b_page.to_string().contains("readAt") && !b_page.to_string().contains("set_temperature"),
        "{b_page}"
    );
    let before = snapshot(&server, &a, &lab.id);
    // Positive control: the leak detector fires on A's own view of its data.
    let own = before.to_string();
    assert!(
        secrets.words.iter().any(|w| own.contains(w.as_str())) && own.contains(&secrets.lab),
        "the detector would not see a leak: {own}"
    );

    let mut counts = [0usize; 3]; // query, mutation, subscription fields
    let mut sockets: Vec<(String, GraphqlWs)> = Vec::new();
    // Positive control for events: A's own subscription must see what A does later.
    let (mut own_ws, own_ack) = GraphqlWs::connect(&server, &a.access_token).unwrap();
    assert_eq!(own_ack["type"], "connection_ack");
    own_ws
        .subscribe(
            "own",
            "subscription($c: ID!) { campaignEvents(campaignId: $c) { kind campaignState experimentState } }",
            json!({ "c": secrets.campaign }),
        )
        .unwrap();
    let (mut calls, mut leaked, mut applied) = (0usize, 0usize, 0usize);
    for (slot, (op, root)) in [
        ("query", &s["queryType"]),
        ("mutation", &s["mutationType"]),
        ("subscription", &s["subscriptionType"]),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(root_name) = root["name"].as_str() else {
            continue;
        };
        let root_type = types.iter().find(|t| t["name"] == root_name).unwrap();
        for field in root_type["fields"].as_array().unwrap() {
            counts[slot] += 1;
            let name = field["name"].as_str().unwrap();
            let (ret, _) = named_type(&field["type"]);
            let sel = selection(&types, &ret);
            for args in argument_sets(&types, field, &secrets) {
                let arg_text: Vec<String> = field["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|arg| {
                        let an = arg["name"].as_str().unwrap();
                        let (at, _) = named_type(&arg["type"]);
                        format!("{an}: {}", literal(&args[an], &types, &at))
                    })
                    .collect();
                let call = if arg_text.is_empty() {
                    format!("{op} {{ {name} {sel} }}")
                } else {
                    format!("{op} {{ {name}({}) {sel} }}", arg_text.join(", "))
                };
                let body = if op == "subscription" {
                    // Over the real WebSocket: the first answer (a refusal, or nothing yet);
                    // the socket stays open to catch events later.
                    let (mut ws, ack) = GraphqlWs::connect(&server, &b.access_token).unwrap();
                    assert_eq!(ack["type"], "connection_ack", "{ack}");
                    ws.subscribe("probe", &call, json!({})).unwrap();
                    let first = ws
                        .next(Duration::from_secs(3))
                        .unwrap()
                        .unwrap_or(Value::Null);
                    sockets.push((call.clone(), ws));
                    first["payload"].clone()
                } else {
                    server
                        .graphql_as(&b.access_token, &call, json!({}))
                        .unwrap()
                };
                calls += 1;
                let text = body.to_string();
                // Leaks: any of A's names, or any of A's ids in the data (ids B sent may be
                // echoed nowhere either).
                let data = body["data"].to_string();
                let leak = secrets.words.iter().any(|w| text.contains(w.as_str()))
                    || secrets.ids().iter().any(|id| data.contains(id.as_str()));
                if leak {
                    println!("LEAK via {call}: {body}");
                    leaked += 1;
                }
                if op == "mutation" {
                    let now = snapshot(&server, &a, &lab.id);
                    if now != before {
                        println!("APPLIED via {call}: {body}");
                        applied += 1;
                    }
                    // Keep B logged in (logOut ends its session).
                    let me = server
                        .graphql_as(&b.access_token, "{ me { id } }", json!({}))
                        .unwrap();
                    if me["data"]["me"].is_null() {
                        let again = server
                            .graphql(
                                "mutation { logIn(email: \"bravo@b.example\", password: \"correct horse battery\") { accessToken } }",
                                json!({}),
                            )
                            .unwrap();
                        b.access_token = again["data"]["logIn"]["accessToken"]
                            .as_str()
                            .unwrap_or_else(|| panic!("{again}"))
                            .to_owned();
                    }
                }
            }
        }
    }
    // A acts (its campaign starts, the engine queues and dispatches): events flow on the bus.
    let started = server
        .graphql_as(
            &a.access_token,
            "mutation($c: ID!) { startCampaign(id: $c) { state } }",
            json!({ "c": secrets.campaign }),
        )
        .unwrap();
    assert!(started.get("errors").is_none(), "{started}");
    let mut own_events = 0;
    while let Some(m) = own_ws.next(Duration::from_secs(2)).unwrap() {
        if m["type"] == "next" && !m["payload"]["data"].is_null() {
            own_events += 1;
        }
    }
    assert!(
        own_events > 0,
        "the positive control saw no event: the event check would be blind"
    );
    let mut events_leaked = 0;
    for (call, ws) in &mut sockets {
        while let Some(m) = ws.next(Duration::from_millis(200)).unwrap() {
            let text = m.to_string();
            let data_event = m["type"] == "next" && !m["payload"]["data"].is_null();
            if data_event
                || secrets.words.iter().any(|w| text.contains(w.as_str()))
                || secrets
                    .ids()
                    .iter()
                    .any(|id| m["payload"]["data"].to_string().contains(id.as_str()))
            {
                println!("EVENT LEAK via {call}: {m}");
                events_leaked += 1;
            }
        }
    }
    println!(
        "[{label}] tenancy sweep: {} queries, {} mutations, {} subscriptions in the schema; {calls} calls as org B with org A's ids; rows leaked {leaked}, mutations applied {applied}, events leaked {events_leaked} ({} subscriptions open while A's campaign ran; A's own subscription saw {own_events} events)",
        counts[0],
        counts[1],
        counts[2],
        sockets.len(),
    );
    assert_eq!(events_leaked, 0);
    assert!(
        counts[2] >= 3,
        "the sweep found too few subscriptions: {counts:?}"
    );
    assert!(
        counts[0] >= 7 && counts[1] >= 15,
        "the sweep found too few fields: {counts:?}"
    );
    assert_eq!(leaked, 0);
    assert_eq!(applied, 0);
    mark_ran(
        backend,
        if app_filter {
            "tenant_isolation_sweep"
        } else {
            "tenant_isolation_sweep_rls_alone"
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation_sweep_on_every_backend() {
    for backend in backends() {
        sweep(backend, true).await;
    }
}

/// PostgreSQL only: with the resolvers' checks switched off by a test-only flag, row-level
/// security alone must keep organisation B out of organisation A's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_isolation_sweep_with_row_level_security_alone() {
    if backends().contains(&Backend::Postgres) {
        sweep(Backend::Postgres, false).await;
    } else {
        println!("PostgreSQL not configured: the row-level-security-only sweep did not run");
    }
}
