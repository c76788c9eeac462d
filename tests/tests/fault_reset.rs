//! Operator fault reset (issue 18): a latched fault (here the software stop) blocks the lab
//! until someone with the right resets it — a lab admin through the cloud (`resetLabFaults`,
//! audited) or an operator at the lab's machine (`maosic-agent reset-faults` on the agent's
//! control socket) — and every reset is kept in the lab's record stream with who and why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use maosic_e2e::{
    backends, bin, error_code, mark_ran, virtual_lab_config, wait_for, Backend, Session, TestAgent,
    TestDatabase, TestServer,
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

const RESET: &str = "mutation($l: ID!, $r: String!) { resetLabFaults(labId: $l, reason: $r) }";
const INSTRUCT: &str = "mutation($l: ID!) { sendInstruction(labId: $l, method: \"P1.stop\") }";

/// The safety records the lab's agent delivered (no program: they are the lab's own).
async fn safety_records(db: &TestDatabase, lab_id: &str) -> Vec<Value> {
    let rows: Vec<(String,)> = match db.backend {
        Backend::Sqlite => {
            use sqlx::Connection as _;
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(
                "SELECT body FROM agent_records WHERE lab_id = $1 AND kind = 'safety' ORDER BY seq",
            )
            .bind(lab_id)
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
        Backend::Postgres => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(
                "SELECT body::text FROM agent_records WHERE lab_id = $1 AND kind = 'safety' ORDER BY seq",
            )
            .bind(lab_id)
            .fetch_all(&mut conn)
            .await
            .unwrap()
        }
    };
    rows.into_iter()
        .map(|(body,)| serde_json::from_str(&body).unwrap())
        .collect()
}

/// Waits for a delivered safety record whose detail contains `needle`.
async fn wait_for_safety_record(db: &TestDatabase, lab_id: &str, needle: &str) -> Value {
    for _ in 0..100 {
        if let Some(r) = safety_records(db, lab_id)
            .await
            .into_iter()
            .find(|r| r.to_string().contains(needle))
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no safety record with {needle:?}: {:?}",
        safety_records(db, lab_id).await
    );
}

fn stop_lab(server: &TestServer, s: &Session, lab_id: &str) {
    ok(
        server,
        s,
        "mutation($l: ID!) { stopLab(labId: $l) }",
        json!({ "l": lab_id }),
    );
    // Latched: instructions are refused until a reset.
    let refused = q(server, s, INSTRUCT, json!({ "l": lab_id }));
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("BAD_USER_INPUT"),
        "{refused}"
    );
    assert!(refused.to_string().contains("latched"), "{refused}");
}

async fn fault_reset(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let owner = server.sign_up("owner@a.example", "Org A").unwrap();
    let researcher = server.sign_up("researcher@a.example", "Org R").unwrap();
    let outsider = server.sign_up("outsider@b.example", "Org B").unwrap();
    let inv = ok(&server, &owner, "mutation($o: ID!) { inviteMember(organizationId: $o, email: \"researcher@a.example\", role: RESEARCHER) { token } }", json!({ "o": owner.organization_id }));
    ok(
        &server,
        &researcher,
        "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
        json!({ "t": inv["inviteMember"]["token"] }),
    );
    let lab = server.create_enrolled_lab(&owner, "lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), 100.0, 7).unwrap();
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    wait_for(Duration::from_secs(30), "the lab online", || {
        let d = ok(
            &server,
            &owner,
            "query($l: ID!) { lab(id: $l) { online } }",
            json!({ "l": lab.id }),
        );
        Ok((d["lab"]["online"] == true).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // Through the cloud: only the lab's owners and admins, with a reason.
    stop_lab(&server, &owner, &lab.id);
    let by_researcher = q(
        &server,
        &researcher,
        RESET,
        json!({ "l": lab.id, "r": "I think it is fine" }),
    );
    assert_eq!(
        error_code(&by_researcher).as_deref(),
        Some("FORBIDDEN"),
        "{by_researcher}"
    );
    let by_outsider = q(
        &server,
        &outsider,
        RESET,
        json!({ "l": lab.id, "r": "let me" }),
    );
    assert_eq!(
        error_code(&by_outsider).as_deref(),
        Some("NOT_FOUND"),
        "{by_outsider}"
    );
    let no_reason = q(&server, &owner, RESET, json!({ "l": lab.id, "r": "   " }));
    assert_eq!(
        error_code(&no_reason).as_deref(),
        Some("BAD_USER_INPUT"),
        "{no_reason}"
    );
    // Still latched after the refusals.
    let refused = q(&server, &owner, INSTRUCT, json!({ "l": lab.id }));
    assert!(refused.to_string().contains("latched"), "{refused}");

    let reset = ok(
        &server,
        &owner,
        RESET,
        json!({ "l": lab.id, "r": "stopped by mistake, lab checked" }),
    )["resetLabFaults"]
        .clone();
    assert_eq!(reset["cleared"][0]["kind"], "e_stop", "{reset}");
    assert_eq!(reset["latched"], json!([]), "{reset}");
    let done = ok(&server, &owner, INSTRUCT, json!({ "l": lab.id }));
    assert!(!done["sendInstruction"].is_null(), "{done}");
    let audit = ok(
        &server,
        &owner,
        "query($o: ID!) { auditLog(organizationId: $o, limit: 100) { action actor detail } }",
        json!({ "o": owner.organization_id }),
    );
    let entry = audit["auditLog"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "lab.faults_reset")
        .unwrap_or_else(|| panic!("audited: {audit}"))
        .clone();
    assert!(
        entry
            .to_string()
            .contains("stopped by mistake, lab checked"),
        "{entry}"
    );
    let record = wait_for_safety_record(&db, &lab.id, "stopped by mistake, lab checked").await;
    assert_eq!(record["body"]["event"], "reset", "{record}");
    assert!(
        record["body"]["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("user:{}", owner.user_id)),
        "{record}"
    );

    // At the lab's machine: the control socket beside the agent's spool.
    stop_lab(&server, &owner, &lab.id);
    let socket = agent.control_socket();
    let cli = |args: &[&str]| {
        std::process::Command::new(bin("maosic-agent").unwrap())
            .args(args)
            .arg("--control")
            .arg(&socket)
            .output()
            .unwrap()
    };
    let listed = cli(&["faults"]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    assert_eq!(listed.status.code(), Some(2), "{text}");
    assert!(
        text.contains("1 fault(s) latched") && text.contains("EStop"),
        "{text}"
    );
    let reset = cli(&["reset-faults", "--reason", "checked at the bench"]);
    let text = String::from_utf8_lossy(&reset.stdout).to_string();
    assert_eq!(
        reset.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert!(text.contains("cleared 1 fault(s)"), "{text}");
    let listed = cli(&["faults"]);
    assert_eq!(listed.status.code(), Some(0));
    let done = ok(&server, &owner, INSTRUCT, json!({ "l": lab.id }));
    assert!(!done["sendInstruction"].is_null(), "{done}");
    let record = wait_for_safety_record(&db, &lab.id, "checked at the bench").await;
    assert!(
        record["body"]["detail"]
            .as_str()
            .unwrap()
            .contains("local operator (uid "),
        "{record}"
    );
    // A reset without a reason is refused by the agent.
    let refused = cli(&["reset-faults", "--reason", " "]);
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("needs a reason"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    mark_ran(backend, "fault_reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latched_faults_are_reset_by_lab_admins_or_at_the_lab_and_each_reset_is_kept() {
    for backend in backends() {
        fault_reset(backend).await;
    }
}
