//! Accounts, organisations and access end to end: the JWT negative matrix, refresh-token reuse,
//! log-out and password change, roles, invitations, lab sharing, API tokens, the audit log,
//! agent enrollment and revocation, `compileRecipe`, and the tenant-isolation sweep that
//! enumerates every query and mutation from the schema itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use maosic_e2e::{
    backends, error_code, mark_ran, wait_for, Backend, Session, TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";
const ME: &str = "{ me { id email } }";
const REFRESH: &str =
    "mutation($r: String!) { refreshTokens(refreshToken: $r) { accessToken refreshToken } }";
const SECRET: &str = "test-secret-test-secret-test-secret-0001";

fn paper_lab() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/paper-lab.toml")
}

fn b64url_encode(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

fn b64url_decode(text: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let vals: Vec<u32> = text
        .bytes()
        .map(|c| A.iter().position(|&a| a == c).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let mut n = 0u32;
        for (i, v) in chunk.iter().enumerate() {
            n |= v << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push(((n >> (16 - 8 * i)) & 0xff) as u8);
        }
    }
    out
}

fn log_in(server: &TestServer, email: &str, password: &str, address: &str) -> (Value, Duration) {
    let started = Instant::now();
    let body = json!({
        "query": "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { accessToken refreshToken } }",
        "variables": { "e": email, "p": password },
    });
    let (_, value) = server
        .graphql_with(None, &[("x-forwarded-for", address)], &body)
        .unwrap();
    (value, started.elapsed())
}

fn me_works(server: &TestServer, token: &str) -> bool {
    let body = server.graphql_as(token, ME, json!({})).unwrap();
    body["data"]["me"]["id"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_negative_matrix_accepts_nothing() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_AUTH__JWT_SECRET", SECRET)]).unwrap();
    let alice = server.sign_up("alice@a.example", "A").unwrap();
    let bob = server.sign_up("bob@b.example", "B").unwrap();
    assert!(
        me_works(&server, &alice.access_token),
        "control: a valid token works"
    );

    // Tokens minted by other servers on the same database: another key, another issuer,
    // another audience, and a one-second lifetime.
    let token_from = |env: &[(&str, &str)]| {
        let other = TestServer::spawn(&db, env).unwrap();
        let (body, _) = log_in(&other, "alice@a.example", PASSWORD, "10.0.0.1");
        body["data"]["logIn"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned()
    };
    let wrong_key = token_from(&[(
        "MAOSIC_AUTH__JWT_SECRET",
        "another-secret-another-secret-another-9",
    )]);
    let wrong_iss = token_from(&[
        ("MAOSIC_AUTH__JWT_SECRET", SECRET),
        ("MAOSIC_AUTH__ISSUER", "evil"),
    ]);
    let wrong_aud = token_from(&[
        ("MAOSIC_AUTH__JWT_SECRET", SECRET),
        ("MAOSIC_AUTH__AUDIENCE", "other-api"),
    ]);
    let short = token_from(&[
        ("MAOSIC_AUTH__JWT_SECRET", SECRET),
        ("MAOSIC_AUTH__ACCESS_TTL_SECS", "1"),
    ]);
    assert!(
        me_works(&server, &short),
        "not expired yet: same key, so accepted"
    );
    std::thread::sleep(Duration::from_millis(2100));

    let parts: Vec<&str> = alice.access_token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&b64url_decode(parts[1])).unwrap();
    let none_header = b64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    let alg_none_sig = format!("{none_header}.{}.{}", parts[1], parts[2]);
    let hs512 = format!(
        "{}.{}.{}",
        b64url_encode(br#"{"alg":"HS512","typ":"JWT"}"#),
        parts[1],
        parts[2]
    );
    claims["sub"] = json!(bob.user_id);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url_encode(claims.to_string().as_bytes()),
        parts[2]
    );
    let mut no_exp = claims.clone();
    no_exp["sub"] = json!(alice.user_id);
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = format!(
        "{}.{}.{}",
        parts[0],
        b64url_encode(no_exp.to_string().as_bytes()),
        parts[2]
    );
    let cases = [
        ("alg none, unsigned", alg_none),
        ("alg none, signature kept", alg_none_sig),
        ("alg HS512 header", hs512),
        ("wrong key", wrong_key),
        ("expired", short),
        ("no exp (re-encoded)", no_exp),
        ("wrong iss", wrong_iss),
        ("wrong aud", wrong_aud),
        ("tampered payload", tampered),
        ("garbage", "a.b.c".to_owned()),
        ("refresh token as bearer", alice.refresh_token.clone()),
    ];
    let mut accepted = 0;
    for (name, token) in &cases {
        let body = server.graphql_as(token, ME, json!({})).unwrap();
        let ok = body["data"]["me"]["id"].is_string();
        println!(
            "jwt case {name:<26} {}",
            if ok {
                "ACCEPTED".to_owned()
            } else {
                format!("refused ({})", error_code(&body).unwrap_or_default())
            }
        );
        if !ok {
            assert_eq!(
                error_code(&body).as_deref(),
                Some("UNAUTHENTICATED"),
                "{body}"
            );
        }
        accepted += usize::from(ok);
    }
    println!(
        "jwt negative matrix (end to end): {} cases, {accepted} accepted",
        cases.len()
    );
    assert_eq!(accepted, 0);
    assert!(
        me_works(&server, &alice.access_token),
        "the valid token still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reuse_revokes_the_family_and_logout_and_password_change_end_sessions() {
    for backend in backends() {
        refresh_and_sessions(backend).await;
        mark_ran(backend, "refresh_and_sessions");
    }
}

async fn refresh_and_sessions(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let s = server.sign_up("carol@c.example", "C").unwrap();

    let first = server
        .graphql(REFRESH, json!({ "r": s.refresh_token }))
        .unwrap();
    let a2 = first["data"]["refreshTokens"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"))
        .to_owned();
    let r2 = first["data"]["refreshTokens"]["refreshToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(r2, s.refresh_token, "refresh tokens rotate");
    assert!(me_works(&server, &a2));

    let started = Instant::now();
    let reuse = server
        .graphql(REFRESH, json!({ "r": s.refresh_token }))
        .unwrap();
    assert_eq!(
        error_code(&reuse).as_deref(),
        Some("REFRESH_TOKEN_REUSED"),
        "{reuse}"
    );
    let (_, revoked_after) = wait_for(Duration::from_secs(1), "family revoked", || {
        Ok((!me_works(&server, &a2)).then_some(()))
    })
    .unwrap();
    let next = server.graphql(REFRESH, json!({ "r": r2 })).unwrap();
    assert_eq!(
        error_code(&next).as_deref(),
        Some("INVALID_TOKEN"),
        "{next}"
    );
    assert!(!me_works(&server, &s.access_token));
    println!(
        "[{}] refresh reuse: refused, family revoked ({} ms to the first refused access, {} ms in total)",
        backend.name(),
        revoked_after.as_millis(),
        started.elapsed().as_millis()
    );

    // Log-out ends the session.
    let (login, _) = log_in(&server, "carol@c.example", PASSWORD, "10.1.0.1");
    let token = login["data"]["logIn"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = server
        .graphql_as(&token, "mutation { logOut }", json!({}))
        .unwrap();
    assert_eq!(out["data"]["logOut"], true, "{out}");
    assert!(!me_works(&server, &token));

    // Password change: the other sessions end, the old password stops working.
    let (l1, _) = log_in(&server, "carol@c.example", PASSWORD, "10.1.0.2");
    let (l2, _) = log_in(&server, "carol@c.example", PASSWORD, "10.1.0.3");
    let t1 = l1["data"]["logIn"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let t2 = l2["data"]["logIn"]["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = server
        .graphql_as(
            &t1,
            "mutation { changePassword(currentPassword: \"nope nope nope\", newPassword: \"a new long password\") }",
            json!({}),
        )
        .unwrap();
    assert_eq!(error_code(&wrong).as_deref(), Some("INVALID_CREDENTIALS"));
    let changed = server
        .graphql_as(
            &t1,
            "mutation { changePassword(currentPassword: \"correct horse battery\", newPassword: \"a new long password\") }",
            json!({}),
        )
        .unwrap();
    assert_eq!(changed["data"]["changePassword"], true, "{changed}");
    assert!(me_works(&server, &t1), "the session that changed it stays");
    assert!(!me_works(&server, &t2), "other sessions end");
    let (old, _) = log_in(&server, "carol@c.example", PASSWORD, "10.1.0.4");
    assert_eq!(error_code(&old).as_deref(), Some("INVALID_CREDENTIALS"));
    let (new, _) = log_in(
        &server,
        "carol@c.example",
        "a new long password",
        "10.1.0.5",
    );
    assert!(new["data"]["logIn"]["accessToken"].is_string(), "{new}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_invitations_sharing_api_tokens_and_the_audit_log() {
    for backend in backends() {
        roles_and_sharing(backend).await;
        mark_ran(backend, "roles_and_sharing");
    }
}

async fn roles_and_sharing(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let a = server.sign_up("owner@a.example", "Org A").unwrap();
    let b = server.sign_up("member@b.example", "Org B").unwrap();
    let c = server.sign_up("partner@c.example", "Org C").unwrap();
    let q = |s: &Session, query: &str, vars: Value| {
        server.graphql_as(&s.access_token, query, vars).unwrap()
    };

    let lab = q(
        &a,
        "mutation($o: ID!) { createLab(organizationId: $o, name: \"lab-a\") { id canManage } }",
        json!({ "o": a.organization_id }),
    );
    assert_eq!(lab["data"]["createLab"]["canManage"], true, "{lab}");
    let lab_id = lab["data"]["createLab"]["id"].as_str().unwrap().to_owned();
    let lab_q = "query($l: ID!) { lab(id: $l) { id canQueue canManage shares { organizationId dailyQuota } agentCredentials { id } } }";

    // An outsider sees nothing and can do nothing.
    assert_eq!(
        q(&b, lab_q, json!({ "l": lab_id }))["data"]["lab"],
        Value::Null
    );
    let denied = q(
        &b,
        "mutation($l: ID!) { createEnrollmentToken(labId: $l) { token } }",
        json!({ "l": lab_id }),
    );
    assert_eq!(
        error_code(&denied).as_deref(),
        Some("NOT_FOUND"),
        "{denied}"
    );

    // Invitation as viewer: reads, but neither queues nor manages.
    let inv = q(&a, "mutation($o: ID!) { inviteMember(organizationId: $o, email: \"member@b.example\", role: VIEWER) { token } }", json!({ "o": a.organization_id }));
    let inv_token = inv["data"]["inviteMember"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{inv}"))
        .to_owned();
    let wrong_user = q(
        &c,
        "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
        json!({ "t": inv_token }),
    );
    assert_eq!(
        error_code(&wrong_user).as_deref(),
        Some("INVALID_TOKEN"),
        "only the invitee may accept"
    );
    let accepted = q(
        &b,
        "mutation($t: String!) { acceptInvitation(token: $t) { id name } }",
        json!({ "t": inv_token }),
    );
    assert_eq!(
        accepted["data"]["acceptInvitation"]["name"], "Org A",
        "{accepted}"
    );
    let again = q(
        &b,
        "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
        json!({ "t": inv_token }),
    );
    assert_eq!(
        error_code(&again).as_deref(),
        Some("INVALID_TOKEN"),
        "single use"
    );
    let seen = q(&b, lab_q, json!({ "l": lab_id }));
    assert_eq!(seen["data"]["lab"]["canQueue"], false, "{seen}");
    assert_eq!(seen["data"]["lab"]["agentCredentials"], json!([]));
    let forbidden = q(
        &b,
        "mutation($l: ID!) { createEnrollmentToken(labId: $l) { token } }",
        json!({ "l": lab_id }),
    );
    assert_eq!(
        error_code(&forbidden).as_deref(),
        Some("FORBIDDEN"),
        "{forbidden}"
    );
    let audit_denied = q(
        &b,
        "query($o: ID!) { auditLog(organizationId: $o) { id } }",
        json!({ "o": a.organization_id }),
    );
    assert_eq!(error_code(&audit_denied).as_deref(), Some("FORBIDDEN"));
    let escalate = q(
        &b,
        "mutation($o: ID!, $u: ID!) { setMemberRole(organizationId: $o, userId: $u, role: OWNER) }",
        json!({ "o": a.organization_id, "u": b.user_id }),
    );
    assert_eq!(
        error_code(&escalate).as_deref(),
        Some("FORBIDDEN"),
        "{escalate}"
    );
    let promoted = q(&a, "mutation($o: ID!, $u: ID!) { setMemberRole(organizationId: $o, userId: $u, role: RESEARCHER) }", json!({ "o": a.organization_id, "u": b.user_id }));
    assert_eq!(promoted["data"]["setMemberRole"], true, "{promoted}");
    assert_eq!(
        q(&b, lab_q, json!({ "l": lab_id }))["data"]["lab"]["canQueue"],
        true
    );
    let last_owner = q(
        &a,
        "mutation($o: ID!, $u: ID!) { removeMember(organizationId: $o, userId: $u) }",
        json!({ "o": a.organization_id, "u": a.user_id }),
    );
    assert_eq!(error_code(&last_owner).as_deref(), Some("CONFLICT"));

    // Sharing with organisation C under a quota.
    let shared = q(&a, "mutation($l: ID!, $o: ID!) { shareLab(labId: $l, organizationId: $o, dailyQuota: 20) { dailyQuota } }", json!({ "l": lab_id, "o": c.organization_id }));
    assert_eq!(shared["data"]["shareLab"]["dailyQuota"], 20, "{shared}");
    let c_labs = q(
        &c,
        "{ labs { id canQueue canManage shares { organizationId } } }",
        json!({}),
    );
    assert_eq!(
        c_labs["data"]["labs"],
        json!([{ "id": lab_id, "canQueue": true, "canManage": false, "shares": [] }]),
        "{c_labs}"
    );
    let c_shared = q(
        &c,
        "query($o: ID!) { organization(id: $o) { sharedLabs { labId dailyQuota } } }",
        json!({ "o": c.organization_id }),
    );
    assert_eq!(
        c_shared["data"]["organization"]["sharedLabs"][0]["dailyQuota"],
        20
    );
    let a_view = q(&a, lab_q, json!({ "l": lab_id }));
    assert_eq!(
        a_view["data"]["lab"]["shares"],
        json!([{ "organizationId": c.organization_id, "dailyQuota": 20 }])
    );
    let c_reshare = q(&c, "mutation($l: ID!, $o: ID!) { shareLab(labId: $l, organizationId: $o, dailyQuota: 1000) { dailyQuota } }", json!({ "l": lab_id, "o": c.organization_id }));
    assert_eq!(
        error_code(&c_reshare).as_deref(),
        Some("FORBIDDEN"),
        "{c_reshare}"
    );
    q(
        &a,
        "mutation($l: ID!, $o: ID!) { unshareLab(labId: $l, organizationId: $o) }",
        json!({ "l": lab_id, "o": c.organization_id }),
    );
    assert_eq!(
        q(&c, lab_q, json!({ "l": lab_id }))["data"]["lab"],
        Value::Null
    );

    // API tokens: shown once, scoped, revocable.
    let read = q(&a, "mutation($o: ID!) { createApiToken(organizationId: $o, name: \"notebook\", scope: READ) { token apiToken { id scope } } }", json!({ "o": a.organization_id }));
    let read_token = read["data"]["createApiToken"]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("{read}"))
        .to_owned();
    let read_id = read["data"]["createApiToken"]["apiToken"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listed = q(&a, "{ apiTokens { id name } }", json!({}));
    assert!(
        !listed.to_string().contains(&read_token[10..]),
        "the secret is shown once"
    );
    assert_eq!(
        server
            .graphql_as(&read_token, lab_q, json!({ "l": lab_id }))
            .unwrap()["data"]["lab"]["canManage"],
        false,
        "a read token acts as a viewer"
    );
    let no_write = server
        .graphql_as(
            &read_token,
            "mutation($o: ID!) { createLab(organizationId: $o, name: \"x\") { id } }",
            json!({ "o": a.organization_id }),
        )
        .unwrap();
    assert_eq!(
        error_code(&no_write).as_deref(),
        Some("FORBIDDEN"),
        "{no_write}"
    );
    let write = q(&a, "mutation($o: ID!) { createApiToken(organizationId: $o, name: \"script\", scope: WRITE) { token } }", json!({ "o": a.organization_id }));
    let write_token = write["data"]["createApiToken"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let made = server
        .graphql_as(
            &write_token,
            "mutation($o: ID!) { createLab(organizationId: $o, name: \"by-script\") { id } }",
            json!({ "o": a.organization_id }),
        )
        .unwrap();
    assert!(made["data"]["createLab"]["id"].is_string(), "{made}");
    let revoked = q(
        &a,
        "mutation($i: ID!) { revokeApiToken(id: $i) }",
        json!({ "i": read_id }),
    );
    assert_eq!(revoked["data"]["revokeApiToken"], true);
    let after = server.graphql_as(&read_token, ME, json!({})).unwrap();
    assert_eq!(error_code(&after).as_deref(), Some("UNAUTHENTICATED"));

    // The audit log: who, what, which object, when, from where.
    let audit = q(&a, "query($o: ID!) { auditLog(organizationId: $o, limit: 100) { actor action target source createdAt } }", json!({ "o": a.organization_id }));
    let entries = audit["data"]["auditLog"]
        .as_array()
        .unwrap_or_else(|| panic!("{audit}"));
    let actions: BTreeSet<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for needed in [
        "organization.create",
        "lab.create",
        "member.invite",
        "member.join",
        "member.set_role",
        "lab.share",
        "lab.unshare",
        "api_token.create",
        "api_token.revoke",
    ] {
        assert!(
            actions.contains(needed),
            "{needed} missing from {actions:?}"
        );
    }
    assert!(
        entries.iter().all(
            |e| e["source"] == "127.0.0.1" && e["actor"].as_str().unwrap().starts_with("user:")
        ),
        "{audit}"
    );
    println!(
        "[{}] audit log of org A: {} entries, actions {actions:?}",
        backend.name(),
        entries.len()
    );
}

async fn enrollment_revocation_and_compile(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_AGENT__HEARTBEAT_MS", "500")]).unwrap();
    let a = server.sign_up("owner@lab.example", "Lab Org").unwrap();
    let lab = server.create_enrolled_lab(&a, "paper-lab").unwrap();
    let token = a.access_token.as_str();

    // A lab without a descriptor yet: a clear error code.
    let recipe = "H[T = 403.15 K] . P1[rate = 0.6 mL/h, volume = 0.25 mL]";
    let compile_q = "query($l: ID!, $s: String!, $v: JSON) { compileRecipe(labId: $l, source: $s, variables: $v) { ok program diagnostics { severity message hint line column } } }";
    let early = server
        .graphql_as(token, compile_q, json!({ "l": lab.id, "s": recipe }))
        .unwrap();
    assert_eq!(
        error_code(&early).as_deref(),
        Some("NO_DESCRIPTOR"),
        "{early}"
    );

    // The enrollment token is single use.
    let enroll_token = server.enrollment_token(&a, &lab.id).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = server
        .enroll(&enroll_token, &dir.path().join("one.json"))
        .unwrap();
    assert!(first.status.success(), "{}", first.stderr);
    let second = server
        .enroll(&enroll_token, &dir.path().join("two.json"))
        .unwrap();
    assert!(!second.status.success());
    assert!(second.stderr.contains("INVALID_TOKEN"), "{}", second.stderr);
    assert!(!dir.path().join("two.json").exists());
    println!(
        "[{}] enrollment token used twice: second use refused",
        backend.name()
    );

    let online = |s: &TestServer| -> bool {
        let body = s
            .graphql_as(
                token,
                "query($l: ID!) { lab(id: $l) { online } }",
                json!({ "l": lab.id }),
            )
            .unwrap();
        body["data"]["lab"]["online"]
            .as_bool()
            .unwrap_or_else(|| panic!("{body}"))
    };
    let mut agent = TestAgent::spawn(&server.url(), &lab.credential, Some(&paper_lab())).unwrap();
    wait_for(Duration::from_secs(15), "lab online", || {
        Ok(online(&server).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // compileRecipe against the announced descriptor: a program, or positioned diagnostics.
    let good = server
        .graphql_as(token, compile_q, json!({ "l": lab.id, "s": recipe }))
        .unwrap();
    assert_eq!(good["data"]["compileRecipe"]["ok"], true, "{good}");
    assert!(
        good["data"]["compileRecipe"]["program"].is_object(),
        "{good}"
    );
    let bad = server
        .graphql_as(
            token,
            compile_q,
            json!({ "l": lab.id, "s": "H[T = 403.15 K]\n  . XQ[rate = 1 mL/h]" }),
        )
        .unwrap();
    let diag = &bad["data"]["compileRecipe"]["diagnostics"][0];
    assert_eq!(bad["data"]["compileRecipe"]["ok"], false, "{bad}");
    assert_eq!(
        (diag["severity"].as_str(), diag["line"].as_u64()),
        (Some("error"), Some(2)),
        "{bad}"
    );

    // Revoking the credential cuts the live connection and refuses reconnects.
    let creds = server
        .graphql_as(
            token,
            "query($l: ID!) { lab(id: $l) { agentCredentials { id revokedAt } } }",
            json!({ "l": lab.id }),
        )
        .unwrap();
    let cred: Value =
        serde_json::from_str(&std::fs::read_to_string(&lab.credential).unwrap()).unwrap();
    let cred_id = cred["credential_id"].as_str().unwrap().to_owned();
    assert!(creds.to_string().contains(&cred_id), "{creds}");
    let started = Instant::now();
    let revoked = server
        .graphql_as(
            token,
            "mutation($l: ID!, $c: ID!) { revokeAgentCredential(labId: $l, credentialId: $c) }",
            json!({ "l": lab.id, "c": cred_id }),
        )
        .unwrap();
    assert_eq!(revoked["data"]["revokeAgentCredential"], true, "{revoked}");
    wait_for(Duration::from_secs(5), "revoked agent offline", || {
        Ok((!online(&server)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let offline_after = started.elapsed();
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the agent gives up on a refused credential: {}",
        agent.log()
    );
    let mut again = TestAgent::spawn(&server.url(), &lab.credential, Some(&paper_lab())).unwrap();
    let status = again.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "{}", again.log());
    assert!(!online(&server));
    println!(
        "[{}] revoked agent: offline after {} ms (limit 5000), reconnect refused",
        backend.name(),
        offline_after.as_millis()
    );
    assert!(offline_after <= Duration::from_secs(5));
    let audit = server
        .graphql_as(
            token,
            "query($o: ID!) { auditLog(organizationId: $o) { action } }",
            json!({ "o": a.organization_id }),
        )
        .unwrap();
    let text = audit.to_string();
    for action in [
        "agent.enroll",
        "agent.credential.revoke",
        "lab.enrollment_token.create",
    ] {
        assert!(text.contains(action), "{action} not audited: {text}");
    }
    mark_ran(backend, "enrollment_revocation_and_compile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_revocation_and_compile_on_every_backend() {
    for backend in backends() {
        enrollment_revocation_and_compile(backend).await;
    }
}
