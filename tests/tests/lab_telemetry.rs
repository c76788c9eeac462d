//! The lab page's API: `Lab.telemetry` (live heater and pump readings through the gateway,
//! cached per lab, the latest stored temperature when the agent cannot answer, nothing for
//! another organisation) and `Device.methods` (from the capability descriptor), against the
//! real server and a real agent driving the virtual lab, on every database backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use maosic_e2e::{
    backends, mark_ran, virtual_lab_config, wait_for, Backend, Session, TestAgent, TestDatabase,
    TestServer,
};
use serde_json::{json, Value};

const OPERATOR_TOKEN: &str = "telemetry-operator-token-0123456789abcdef";
const TELEMETRY: &str = "query($l: ID!) { lab(id: $l) { telemetry { state readAt detail \
    heaters { device source at pvC setpointC outputPct enabled } \
    pumps { device state rateUlMin flowUlMin infusedUl alarm } } } }";

fn telemetry(server: &TestServer, s: &Session, lab: &str) -> Value {
    let body = server
        .graphql_as(&s.access_token, TELEMETRY, json!({ "l": lab }))
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["lab"]["telemetry"].clone()
}

fn heater(t: &Value) -> Value {
    t["heaters"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h["device"] == "H"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn instruction(server: &TestServer, s: &Session, lab: &str, method: &str, params: Value) {
    let body = server
        .graphql_as(
            &s.access_token,
            "mutation($l: ID!, $m: String!, $p: JSON) { sendInstruction(labId: $l, method: $m, params: $p) }",
            json!({ "l": lab, "m": method, "p": params }),
        )
        .unwrap();
    assert!(body.get("errors").is_none(), "{method}: {body}");
}

async fn lab_page_api(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", OPERATOR_TOKEN)]).unwrap();
    let owner = server
        .sign_up("owner@telemetry.example", "Telemetry Lab")
        .unwrap();
    let lab = server.create_enrolled_lab(&owner, "virtual").unwrap();

    // Before any agent: offline, quietly, with nothing to show.
    let t = telemetry(&server, &owner, &lab.id);
    assert_eq!(t["state"], "OFFLINE", "{t}");
    assert_eq!(t["heaters"], json!([]), "{t}");

    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), 300.0, 7).unwrap();
    let mut agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    let (live, took) = wait_for(Duration::from_secs(60), "live readings", || {
        let t = telemetry(&server, &owner, &lab.id);
        Ok((t["state"] == "LIVE").then_some(t))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    println!(
        "[{}] live readings {} ms after the agent started: {live}",
        backend.name(),
        took.as_millis()
    );
    let h = heater(&live);
    assert_eq!(h["source"], "AGENT", "{live}");
    let ambient = h["pvC"].as_f64().expect("a process value");
    let pumps: BTreeSet<&str> = live["pumps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device"].as_str().unwrap())
        .collect();
    assert_eq!(pumps, BTreeSet::from(["P1", "P2", "P3"]), "{live}");
    assert!(live["pumps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["flowUlMin"] == 0.0 && p["state"] == "stopped"));

    // The method list is the agent's capability descriptor.
    let devices = server
        .graphql_as(
            &owner.access_token,
            "query($l: ID!) { lab(id: $l) { devices { name kind methods { name description measurements setpoint \
               params { name unit min max step required default } } } } }",
            json!({ "l": lab.id }),
        )
        .unwrap();
    let devices = devices["data"]["lab"]["devices"]
        .as_array()
        .unwrap()
        .clone();
    let method = |dev: &str, m: &str| -> Value {
        devices
            .iter()
            .find(|d| d["name"] == dev)
            .and_then(|d| d["methods"].as_array())
            .and_then(|ms| ms.iter().find(|x| x["name"] == m))
            .cloned()
            .unwrap_or_else(|| panic!("no {dev}.{m} in {devices:?}"))
    };
    let set = method("H", "set_temperature");
    assert_eq!(set["setpoint"], true);
    assert_eq!(set["measurements"], json!(["temperature"]));
    let t_param = &set["params"][0];
    assert_eq!(
        (&t_param["name"], &t_param["unit"], &t_param["required"]),
        (&json!("T"), &json!("°C"), &json!(true))
    );
    // The limits of examples/agent-lab-virtual.toml's heater.
    assert_eq!(
        (&t_param["min"], &t_param["max"]),
        (&json!(20.0), &json!(200.0))
    );
    assert_eq!(t_param["step"], 0.1);
    let rate = method("P1", "set_rate");
    assert_eq!(rate["params"][1]["name"], "volume");
    assert!(rate["params"][1]["default"].as_f64().is_some());
    method("P1", "status");
    assert_eq!(
        method("UV", "acquire")["measurements"],
        json!(["absorption_spectrum"])
    );

    // Many readers in a burst share one read per lab and second.
    let started = Instant::now();
    let stamps: BTreeSet<String> = (0..10)
        .map(|_| {
            telemetry(&server, &owner, &lab.id)["readAt"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let elapsed = started.elapsed();
    println!(
        "[{}] 10 reads in {} ms saw {} distinct readings",
        backend.name(),
        elapsed.as_millis(),
        stamps.len()
    );
    assert!(
        stamps.len() as u64 <= elapsed.as_secs() + 2,
        "{} distinct readings in {elapsed:?}: the cache did not hold",
        stamps.len()
    );

    // A console instruction changes what the readings show.
    instruction(
        &server,
        &owner,
        &lab.id,
        "H.set_temperature",
        json!({ "T": 60 }),
    );
    instruction(
        &server,
        &owner,
        &lab.id,
        "P1.set_rate",
        json!({ "rate": 30 }),
    );
    let (after, _) = wait_for(Duration::from_secs(20), "the new setpoint and flow", || {
        let t = telemetry(&server, &owner, &lab.id);
        let h = heater(&t);
        let p1 = t["pumps"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["device"] == "P1"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok((h["setpointC"] == 60.0 && p1["flowUlMin"] == 30.0).then_some(t))
    })
    .unwrap();
    let pv = heater(&after)["pvC"].as_f64().unwrap();
    println!(
        "[{}] after H.set_temperature 60: pv {pv:.1} °C (was {ambient:.1})",
        backend.name()
    );
    assert!((pv - 60.0).abs() < 2.0, "{after}");
    assert_eq!(heater(&after)["enabled"], true);
    instruction(&server, &owner, &lab.id, "P1.stop", json!({}));

    // Another organisation: not even the lab; an organisation it is shared with: the lab and
    // its methods, but not the live readings of someone else's lab.
    let outsider = server
        .sign_up("outsider@else.example", "Elsewhere")
        .unwrap();
    let seen = server
        .graphql_as(&outsider.access_token, TELEMETRY, json!({ "l": lab.id }))
        .unwrap();
    assert_eq!(seen["data"]["lab"], Value::Null, "{seen}");
    let partner = server
        .sign_up("partner@partner.example", "Partner")
        .unwrap();
    let shared = server
        .graphql_as(
            &owner.access_token,
            "mutation($l: ID!, $o: ID!) { shareLab(labId: $l, organizationId: $o, dailyQuota: 5) { dailyQuota } }",
            json!({ "l": lab.id, "o": partner.organization_id }),
        )
        .unwrap();
    assert!(shared.get("errors").is_none(), "{shared}");
    let t = telemetry(&server, &partner, &lab.id);
    assert_eq!(t["state"], "RESTRICTED", "{t}");
    assert_eq!((&t["heaters"], &t["pumps"]), (&json!([]), &json!([])));
    let their_devices = server
        .graphql_as(
            &partner.access_token,
            "query($l: ID!) { lab(id: $l) { devices { name methods { name } } } }",
            json!({ "l": lab.id }),
        )
        .unwrap();
    assert!(
        their_devices["data"]["lab"]["devices"]
            .as_array()
            .is_some_and(|d| d
                .iter()
                .any(|d| d["methods"].as_array().is_some_and(|m| !m.is_empty()))),
        "{their_devices}"
    );

    // A program's temperature measurement is stored; with the agent gone, that is what shows.
    let program = json!({
        "format": 1, "recipe": null, "lab": "paper-lab", "variables": {},
        "steps": [{ "id": 1, "request": { "jsonrpc": "2.0", "id": 1, "method": "H.set_temperature",
                    "params": { "T": 70.0 } }, "after": [], "start_ms": 0, "duration_ms": 120000,
                    "yields": ["temperature"], "line": 1 }],
        "estimated_duration_ms": 120000
    });
    let ran = ureq::post(format!("{}/operator/v1/labs/{}/call", server.url(), lab.id))
        .header("authorization", &format!("Bearer {OPERATOR_TOKEN}"))
        .send_json(json!({
            "method": "program.run",
            "params": { "program_id": "telemetry-run", "program": program },
            "timeout_ms": 60000
        }))
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(ran.contains("succeeded"), "{ran}\n{}", agent.log());
    let stored = |t: &Value| {
        let h = heater(t);
        (h["source"] == "RECORD" && h["setpointC"] == 70.0).then_some(h)
    };
    agent.kill();
    let (offline, _) = wait_for(
        Duration::from_secs(20),
        "offline with the stored reading",
        || {
            let t = telemetry(&server, &owner, &lab.id);
            Ok((t["state"] == "OFFLINE" && stored(&t).is_some()).then_some(t))
        },
    )
    .unwrap();
    println!("[{}] agent gone: {offline}", backend.name());
    let h = heater(&offline);
    assert!(
        (h["pvC"].as_f64().unwrap() - 70.0).abs() <= 1.5,
        "{offline}"
    );
    assert!(h["at"].as_str().is_some_and(|a| a.ends_with('Z')));
    assert!(offline["detail"]
        .as_str()
        .is_some_and(|d| d.contains("not connected")));
    mark_ran(backend, "lab_telemetry_and_methods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_telemetry_and_methods_on_every_backend() {
    for backend in backends() {
        lab_page_api(backend).await;
    }
}
