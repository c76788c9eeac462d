//! Issue 15, "one tenant cannot hurt another" (account guards): log-in and password-change
//! throttles that concurrent bursts and several replicas cannot overrun, `X-Forwarded-For`
//! believed only from trusted proxies, sign-up that reveals no registered address and cannot
//! starve log-ins, organisations that keep an owner under concurrent demotions, and the browser
//! refresh token in an httpOnly cookie behind a CSRF check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use maosic_e2e::{backends, error_code, mark_ran, Backend, Session, TestDatabase, TestServer};
use serde_json::{json, Value};

/// These tests fire bursts at argon2: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PASSWORD: &str = "correct horse battery";

fn log_in(server: &TestServer, email: &str, password: &str, headers: &[(&str, &str)]) -> Value {
    let body = json!({
        "query": "mutation($e: String!, $p: String!) { logIn(email: $e, password: $p) { accessToken refreshToken } }",
        "variables": { "e": email, "p": password },
    });
    server.graphql_with(None, headers, &body).unwrap().1
}

fn count(codes: &[Option<String>], code: &str) -> usize {
    codes.iter().filter(|c| c.as_deref() == Some(code)).count()
}

/// Runs `n` calls of `f` at once (one thread each) and returns their error codes.
fn burst(n: usize, f: impl Fn(usize) -> Value + Sync) -> Vec<Option<String>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let f = &f;
                scope.spawn(move || error_code(&f(i)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_log_ins_never_exceed_the_limit_even_across_two_servers() {
    let _serial = SERIAL.lock().await;
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let env = [
            ("MAOSIC_AUTH__MAX_FAILURES_PER_ACCOUNT", "5"),
            ("MAOSIC_AUTH__MAX_FAILURES_PER_ADDRESS", "100000"),
        ];
        // Two replicas on one database: the count is in the database, so they share it.
        let one = TestServer::spawn(&db, &env).unwrap();
        let two = TestServer::spawn(&db, &env).unwrap();
        one.sign_up("victim@v.example", "V").unwrap();
        let started = Instant::now();
        let codes = burst(50, |i| {
            let server = if i % 2 == 0 { &one } else { &two };
            log_in(
                server,
                "victim@v.example",
                &format!("guess {i:03}!!!!"),
                &[],
            )
        });
        let (checked, limited) = (
            count(&codes, "INVALID_CREDENTIALS"),
            count(&codes, "RATE_LIMITED"),
        );
        println!(
            "[{}] 50 concurrent wrong log-ins over 2 servers, limit 5: {checked} checked (argon2), \
             {limited} refused before hashing, in {} ms",
            backend.name(),
            started.elapsed().as_millis()
        );
        assert!(checked <= 5, "{checked} verifications: {codes:?}");
        assert_eq!(checked + limited, 50, "{codes:?}");
        // The account is locked for the window on both replicas, even for the right password.
        for server in [&one, &two] {
            let locked = log_in(server, "victim@v.example", PASSWORD, &[]);
            assert_eq!(
                error_code(&locked).as_deref(),
                Some("RATE_LIMITED"),
                "{locked}"
            );
        }
        mark_ran(backend, "login_throttle_shared");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_password_is_throttled_like_log_in() {
    let _serial = SERIAL.lock().await;
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let server =
            TestServer::spawn(&db, &[("MAOSIC_AUTH__MAX_FAILURES_PER_ACCOUNT", "5")]).unwrap();
        let s = server.sign_up("pw@p.example", "P").unwrap();
        let change = |current: &str| {
            server
                .graphql_as(
                    &s.access_token,
                    "mutation($c: String!) { changePassword(currentPassword: $c, newPassword: \"another long password\") }",
                    json!({ "c": current }),
                )
                .unwrap()
        };
        let codes = burst(20, |i| change(&format!("wrong guess {i:02}")));
        let (checked, limited) = (
            count(&codes, "INVALID_CREDENTIALS"),
            count(&codes, "RATE_LIMITED"),
        );
        println!(
            "[{}] 20 concurrent changePassword guesses with a stolen access token, limit 5: \
             {checked} checked, {limited} refused",
            backend.name()
        );
        assert!(checked <= 5, "{codes:?}");
        assert_eq!(checked + limited, 20, "{codes:?}");
        let locked = change(PASSWORD);
        assert_eq!(
            error_code(&locked).as_deref(),
            Some("RATE_LIMITED"),
            "{locked}"
        );
        // Log-in has its own count: the owner can still log in.
        let ok = log_in(&server, "pw@p.example", PASSWORD, &[]);
        assert!(ok["data"]["logIn"]["accessToken"].is_string(), "{ok}");
        mark_ran(backend, "change_password_throttle");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies_and_only_its_rightmost_hop() {
    let _serial = SERIAL.lock().await;
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let limits = [
        ("MAOSIC_AUTH__MAX_FAILURES_PER_ACCOUNT", "1000"),
        ("MAOSIC_AUTH__MAX_FAILURES_PER_ADDRESS", "3"),
    ];
    let mut env = limits.to_vec();
    env.push(("MAOSIC_AUTH__TRUSTED_PROXIES", "[\"127.0.0.1\"]"));
    let behind_proxy = TestServer::spawn(&db, &env).unwrap();
    // The client forges a fresh leftmost entry each time; our proxy (127.0.0.1, trusted)
    // appends the address it saw, 198.51.100.4: that is the one counted.
    let codes: Vec<Option<String>> = (0..8)
        .map(|i| {
            let xff = format!("10.66.0.{i}, 198.51.100.4");
            error_code(&log_in(
                &behind_proxy,
                &format!("spray{i}@x.example"),
                "pw pw pw pw pw",
                &[("x-forwarded-for", &xff)],
            ))
        })
        .collect();
    println!("8 guesses with forged leftmost X-Forwarded-For entries, address limit 3: {codes:?}");
    assert_eq!(count(&codes, "RATE_LIMITED"), 5, "{codes:?}");
    // Another real client behind the same proxy is not affected.
    let other = log_in(
        &behind_proxy,
        "spray0@x.example",
        "pw pw pw pw pw",
        &[("x-forwarded-for", "198.51.100.5")],
    );
    assert_eq!(error_code(&other).as_deref(), Some("INVALID_CREDENTIALS"));
    drop(behind_proxy);

    // No trusted proxy: the header is ignored, the peer (127.0.0.1) is the client.
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let direct = TestServer::spawn(&db, &limits).unwrap();
    let codes: Vec<Option<String>> = (0..5)
        .map(|i| {
            let xff = format!("10.77.0.{i}");
            error_code(&log_in(
                &direct,
                &format!("spray{i}@x.example"),
                "pw pw pw pw pw",
                &[("x-forwarded-for", &xff)],
            ))
        })
        .collect();
    assert_eq!(count(&codes, "RATE_LIMITED"), 2, "{codes:?}");
    drop(direct);

    // The old switch is refused with a message naming its replacement.
    let out = maosic_e2e::run_bin(
        "maosic-server",
        &["migrate", "--database", &db.url],
        &[("MAOSIC_AUTH__TRUST_FORWARDED_FOR", "true")],
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("auth.trusted_proxies"),
        "{}",
        out.stderr
    );
}

fn sign_up_raw(server: &TestServer, email: &str, headers: &[(&str, &str)]) -> Value {
    let body = json!({
        "query": "mutation($e: String!) { signUp(email: $e, password: \"correct horse battery\", displayName: \"X\") }",
        "variables": { "e": email },
    });
    server.graphql_with(None, headers, &body).unwrap().1
}

fn verify(server: &TestServer, token: &str) -> Value {
    server
        .graphql(
            "mutation($t: String!) { verifyEmail(token: $t) { accessToken user { email } } }",
            json!({ "t": token }),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_reveals_no_registered_address_and_verifies_by_mail() {
    let _serial = SERIAL.lock().await;
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let server =
            TestServer::spawn(&db, &[("MAOSIC_AUTH__MAX_SIGNUPS_PER_EMAIL", "3")]).unwrap();
        server.sign_up("known@k.example", "K").unwrap();
        let known = sign_up_raw(&server, "known@k.example", &[]);
        let fresh = sign_up_raw(&server, "fresh@f.example", &[]);
        println!("signUp answers: registered {known}, new {fresh}");
        assert_eq!(known, fresh, "the answers must not differ");
        assert_eq!(fresh, json!({ "data": { "signUp": true } }));
        // The owner of the registered address gets a notice, the new one a token.
        maosic_e2e::wait_for(Duration::from_secs(10), "the notice", || {
            Ok((server.mails_to("known@k.example").len() == 2).then_some(()))
        })
        .unwrap();
        assert_eq!(server.verification_tokens("known@k.example").len(), 1);
        let token = server
            .wait_verification_token("fresh@f.example", 0)
            .unwrap();
        // No account before verification: the log-in answer is the unknown account's.
        let early = log_in(&server, "fresh@f.example", PASSWORD, &[]);
        assert_eq!(
            error_code(&early).as_deref(),
            Some("INVALID_CREDENTIALS"),
            "{early}"
        );
        let wrong = verify(&server, &format!("{}x", &token[..token.len() - 1]));
        assert_eq!(error_code(&wrong).as_deref(), Some("INVALID_TOKEN"));
        let verified = verify(&server, &token);
        assert_eq!(
            verified["data"]["verifyEmail"]["user"]["email"], "fresh@f.example",
            "{verified}"
        );
        assert_eq!(
            error_code(&verify(&server, &token)).as_deref(),
            Some("INVALID_TOKEN"),
            "single use"
        );
        let later = log_in(&server, "fresh@f.example", PASSWORD, &[]);
        assert!(later["data"]["logIn"]["accessToken"].is_string(), "{later}");
        // Sign-up is limited per e-mail address (3 within the window here).
        let codes: Vec<Option<String>> = (0..4)
            .map(|_| error_code(&sign_up_raw(&server, "spam@s.example", &[])))
            .collect();
        assert_eq!(codes, vec![None, None, None, Some("RATE_LIMITED".into())]);
        mark_ran(backend, "sign_up_verification");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_up_flood_does_not_starve_log_ins() {
    let _serial = SERIAL.lock().await;
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    server.sign_up("regular@r.example", "R").unwrap();
    let one_login = {
        let started = Instant::now();
        let r = log_in(&server, "regular@r.example", PASSWORD, &[]);
        assert!(r["data"]["logIn"]["accessToken"].is_string(), "{r}");
        started.elapsed()
    };
    let (flood, login) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| {
            let started = Instant::now();
            let codes = burst(40, |i| {
                sign_up_raw(&server, &format!("flood{i}@f.example"), &[])
            });
            assert!(codes.iter().all(Option::is_none), "{codes:?}");
            started.elapsed()
        });
        // Let the flood fill the queue first.
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let r = log_in(&server, "regular@r.example", PASSWORD, &[]);
        assert!(r["data"]["logIn"]["accessToken"].is_string(), "{r}");
        let login = started.elapsed();
        (flood.join().unwrap(), login)
    });
    println!(
        "40 concurrent sign-ups took {} ms; a log-in meanwhile took {} ms (alone {} ms)",
        flood.as_millis(),
        login.as_millis(),
        one_login.as_millis()
    );
    // With one shared FIFO queue the log-in, arriving 100 ms into the flood, would wait behind
    // most of it; with its own budget it waits for no sign-up.
    assert!(
        login < flood / 4,
        "the log-in waited behind the sign-ups: {login:?} vs {flood:?}"
    );
}

fn owners(server: &TestServer, s: &Session) -> usize {
    let body = server
        .graphql_as(
            &s.access_token,
            "query($o: ID!) { organization(id: $o) { members { userId role } } }",
            json!({ "o": s.organization_id }),
        )
        .unwrap();
    body["data"]["organization"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .filter(|m| m["role"] == "OWNER")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_organisation_keeps_an_owner_under_concurrent_demotions_and_removals() {
    let _serial = SERIAL.lock().await;
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let server = TestServer::spawn(&db, &[]).unwrap();
        let first = server.sign_up("o0@own.example", "Owned").unwrap();
        let mut all = vec![first.clone()];
        for i in 1..6 {
            let s = server
                .sign_up(&format!("o{i}@own.example"), &format!("Own {i}"))
                .unwrap();
            let inv = server
                .graphql_as(
                    &first.access_token,
                    "mutation($o: ID!, $e: String!) { inviteMember(organizationId: $o, email: $e, role: OWNER) { token } }",
                    json!({ "o": first.organization_id, "e": s.email }),
                )
                .unwrap();
            let token = inv["data"]["inviteMember"]["token"].as_str().unwrap();
            let ok = server
                .graphql_as(
                    &s.access_token,
                    "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
                    json!({ "t": token }),
                )
                .unwrap();
            assert!(ok["data"]["acceptInvitation"]["id"].is_string(), "{ok}");
            all.push(Session {
                organization_id: first.organization_id.clone(),
                ..s
            });
        }
        assert_eq!(owners(&server, &first), 6);
        for round in ["demote", "remove"] {
            // Every owner steps down at the same moment.
            let codes = burst(all.len(), |i| {
                let s = &all[i];
                let query = if round == "demote" {
                    "mutation($o: ID!, $u: ID!) { r: setMemberRole(organizationId: $o, userId: $u, role: ADMIN) }"
                } else {
                    "mutation($o: ID!, $u: ID!) { r: removeMember(organizationId: $o, userId: $u) }"
                };
                server
                    .graphql_as(
                        &s.access_token,
                        query,
                        json!({ "o": s.organization_id, "u": s.user_id }),
                    )
                    .unwrap()
            });
            let kept: Vec<&Session> = all
                .iter()
                .zip(&codes)
                .filter(|(_, c)| c.is_some())
                .map(|(s, _)| s)
                .collect();
            println!(
                "[{}] 6 owners {round} themselves at once: {} applied, refused {:?}",
                backend.name(),
                codes.iter().filter(|c| c.is_none()).count(),
                codes.iter().flatten().collect::<Vec<_>>()
            );
            assert_eq!(kept.len(), 1, "{codes:?}");
            assert_eq!(
                codes.iter().flatten().next().map(String::as_str),
                Some("CONFLICT")
            );
            let last = kept[0].clone();
            assert_eq!(owners(&server, &last), 1);
            if round == "demote" {
                // Promote everyone back for the removal round.
                for s in &all {
                    if s.user_id != last.user_id {
                        let r = server
                            .graphql_as(
                                &last.access_token,
                                "mutation($o: ID!, $u: ID!) { setMemberRole(organizationId: $o, userId: $u, role: OWNER) }",
                                json!({ "o": s.organization_id, "u": s.user_id }),
                            )
                            .unwrap();
                        assert_eq!(r["data"]["setMemberRole"], true, "{r}");
                    }
                }
                assert_eq!(owners(&server, &last), 6);
            } else {
                // Accepting an invitation with a lower role does not demote the last owner.
                let inv = server
                    .graphql_as(
                        &last.access_token,
                        "mutation($o: ID!, $e: String!) { inviteMember(organizationId: $o, email: $e, role: VIEWER) { token } }",
                        json!({ "o": last.organization_id, "e": last.email }),
                    )
                    .unwrap();
                let token = inv["data"]["inviteMember"]["token"].as_str().unwrap();
                let ok = server
                    .graphql_as(
                        &last.access_token,
                        "mutation($t: String!) { acceptInvitation(token: $t) { id } }",
                        json!({ "t": token }),
                    )
                    .unwrap();
                assert!(ok["data"]["acceptInvitation"]["id"].is_string(), "{ok}");
                assert_eq!(owners(&server, &last), 1);
            }
        }
        mark_ran(backend, "last_owner");
    }
}

/// POSTs with headers; returns status, the `Set-Cookie` values and the JSON body.
fn post(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Vec<String>, Value) {
    let mut request = ureq::post(format!("{}{path}", server.url()))
        .config()
        .http_status_as_error(false)
        .build()
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body.to_string()).unwrap();
    let status = response.status().as_u16();
    let cookies = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        cookies,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn cookie_value<'a>(cookies: &'a [String], name: &str) -> Option<&'a str> {
    cookies.iter().find_map(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.trim().strip_prefix(&format!("{name}=")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_refresh_token_is_an_httponly_cookie_behind_a_csrf_check() {
    let _serial = SERIAL.lock().await;
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    server.sign_up("browser@b.example", "B").unwrap();
    let login = json!({
        "query": "mutation { logIn(email: \"browser@b.example\", password: \"correct horse battery\") { accessToken refreshToken } }",
    });
    let (status, cookies, body) = post(&server, "/graphql", &[("x-session-cookie", "1")], &login);
    assert_eq!(status, 200);
    assert!(body["data"]["logIn"]["accessToken"].is_string(), "{body}");
    assert_eq!(
        body["data"]["logIn"]["refreshToken"],
        Value::Null,
        "not readable by scripts"
    );
    let refresh_cookie = cookies
        .iter()
        .find(|c| c.starts_with("maosic_refresh="))
        .unwrap_or_else(|| panic!("{cookies:?}"));
    println!(
        "refresh cookie attributes: {}",
        refresh_cookie.split_once(';').unwrap().1
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/auth"] {
        assert!(refresh_cookie.contains(attribute), "{refresh_cookie}");
    }
    let refresh = cookie_value(&cookies, "maosic_refresh").unwrap().to_owned();
    let csrf = cookie_value(&cookies, "maosic_csrf").unwrap().to_owned();
    assert!(refresh.starts_with("mrt_"));
    let jar = format!("maosic_refresh={refresh}; maosic_csrf={csrf}");

    // Without the CSRF header (what a cross-site form could send): refused.
    let (status, _, body) = post(&server, "/auth/refresh", &[("cookie", &jar)], &json!({}));
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "CSRF_FAILED");
    let (status, _, _) = post(
        &server,
        "/auth/refresh",
        &[("cookie", &jar), ("x-csrf-token", "not-the-cookie")],
        &json!({}),
    );
    assert_eq!(status, 403);
    let (status, _, _) = post(
        &server,
        "/auth/refresh",
        &[
            ("cookie", &jar),
            ("x-csrf-token", &csrf),
            ("origin", "https://evil.example"),
        ],
        &json!({}),
    );
    assert_eq!(status, 403, "cross-site origin");
    // With it: a new access token and a rotated cookie.
    let (status, rotated, body) = post(
        &server,
        "/auth/refresh",
        &[("cookie", &jar), ("x-csrf-token", &csrf)],
        &json!({}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["accessToken"].is_string(), "{body}");
    assert_eq!(body["user"]["email"], "browser@b.example");
    let new_refresh = cookie_value(&rotated, "maosic_refresh").unwrap();
    assert_ne!(new_refresh, refresh);
    let me = server
        .graphql_as(
            body["accessToken"].as_str().unwrap(),
            "{ me { email } }",
            json!({}),
        )
        .unwrap();
    assert_eq!(me["data"]["me"]["email"], "browser@b.example");
    // The old cookie again: reuse, the session is revoked and the cookies cleared.
    let (status, cleared, body) = post(
        &server,
        "/auth/refresh",
        &[("cookie", &jar), ("x-csrf-token", &csrf)],
        &json!({}),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "REFRESH_TOKEN_REUSED");
    assert_eq!(
        cookie_value(&cleared, "maosic_refresh"),
        Some(""),
        "cleared"
    );
    assert!(cleared.iter().any(|c| c.starts_with("maosic_refresh=;")));
    // Non-browser clients still get the token in the body.
    let plain = log_in(&server, "browser@b.example", PASSWORD, &[]);
    assert!(
        plain["data"]["logIn"]["refreshToken"].is_string(),
        "{plain}"
    );
}
