//! Browser sessions without a readable refresh token (issue 15): a client that sends
//! `X-Session-Cookie: 1` with `logIn`/`verifyEmail`/`refreshTokens` gets its refresh token as
//! an httpOnly, `SameSite=Strict` cookie scoped to `/auth`, which only `POST /auth/refresh`
//! reads. That endpoint also requires the double-submit CSRF token: the header
//! `X-CSRF-Token` must equal the (script-readable, `SameSite=Strict`) `maosic_csrf` cookie set
//! with the session, which another site can neither read nor send as a header; a cross-site
//! `Origin` is refused as well. Non-browser clients keep the GraphQL `refreshTokens` mutation.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::auth::{self, token, RefreshOutcome};
use crate::config::Config;
use crate::state::AppState;

/// Request header asking for a cookie session.
pub const COOKIE_SESSION_HEADER: &str = "x-session-cookie";
/// Request header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The refresh-token cookie (httpOnly, path `/auth`).
pub const REFRESH_COOKIE: &str = "maosic_refresh";
/// The CSRF cookie (readable by the portal's script, path `/`).
pub const CSRF_COOKIE: &str = "maosic_csrf";
/// The path the refresh cookie is scoped to.
pub const REFRESH_PATH: &str = "/auth";

fn secure(config: &Config) -> &'static str {
    if config.tls.enabled() || config.auth.secure_cookies {
        "; Secure"
    } else {
        ""
    }
}

/// The `Set-Cookie` values of a cookie session holding `refresh_token`: the httpOnly refresh
/// cookie and a fresh CSRF cookie.
pub fn set_cookies(config: &Config, refresh_token: &str) -> Vec<String> {
    let max_age = config.auth.refresh_ttl_secs;
    let secure = secure(config);
    vec![
        format!(
            "{REFRESH_COOKIE}={refresh_token}; Path={REFRESH_PATH}; Max-Age={max_age}; HttpOnly; \
             SameSite=Strict{secure}"
        ),
        format!(
            "{CSRF_COOKIE}={}; Path=/; Max-Age={max_age}; SameSite=Strict{secure}",
            token::new_secret()
        ),
    ]
}

/// `Set-Cookie` values that delete both cookies.
pub fn clear_cookies(config: &Config) -> Vec<String> {
    let secure = secure(config);
    vec![
        format!(
            "{REFRESH_COOKIE}=; Path={REFRESH_PATH}; Max-Age=0; HttpOnly; SameSite=Strict{secure}"
        ),
        format!("{CSRF_COOKIE}=; Path=/; Max-Age=0; SameSite=Strict{secure}"),
    ]
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request passes the CSRF checks: same-origin `Origin` when present, and the
/// `X-CSRF-Token` header equal to the CSRF cookie.
fn csrf_ok(req: &HttpRequest) -> bool {
    let headers = req.headers();
    if let Some(origin) = headers.get(actix_web::http::header::ORIGIN) {
        let host = headers
            .get(actix_web::http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .map(|u| match u.port() {
                Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            });
        if host.is_none() || origin_host.as_deref() != host {
            return false;
        }
    }
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match (sent, cookie(req, CSRF_COOKIE)) {
        (Some(sent), Some(expected)) => {
            // constant time: compare the hashes
            token::secret_matches(sent, &token::hash_secret(expected))
        }
        _ => false,
    }
}

fn refused(
    config: &Config,
    status: StatusCode,
    code: &str,
    message: &str,
    clear: bool,
) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if clear {
        for c in clear_cookies(config) {
            response.append_header(("set-cookie", c));
        }
    }
    response.json(json!({ "error": { "code": code, "message": message } }))
}

/// `POST /auth/refresh`: exchanges the refresh cookie for a new access token and rotates the
/// cookie. Answers `{accessToken, expiresIn, user: {id, email, displayName}}`; 403
/// `CSRF_FAILED` without a matching CSRF header, 401 `INVALID_TOKEN` or
/// `REFRESH_TOKEN_REUSED` (the session is then revoked) with both cookies cleared.
async fn refresh(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let config = &state.config;
    if !csrf_ok(&req) {
        return refused(
            config,
            StatusCode::FORBIDDEN,
            "CSRF_FAILED",
            "missing or wrong CSRF token",
            false,
        );
    }
    let Some(presented) = cookie(&req, REFRESH_COOKIE).map(str::to_owned) else {
        return refused(
            config,
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "no session",
            true,
        );
    };
    let outcome = crate::storage::tenant::system(async {
        let outcome = auth::refresh(&state.auth, state.storage.as_ref(), &presented).await?;
        let user = match &outcome {
            RefreshOutcome::Rotated(pair) => match state.auth.jwt.verify(&pair.access_token) {
                Ok(claims) => state.storage.user(&claims.sub.into()).await?,
                Err(_) => None,
            },
            _ => None,
        };
        Ok::<_, auth::AuthFailure>((outcome, user))
    })
    .await;
    match outcome {
        Ok((RefreshOutcome::Rotated(pair), Some(user))) => {
            let mut response = HttpResponse::Ok();
            for c in set_cookies(config, &pair.refresh_token) {
                response.append_header(("set-cookie", c));
            }
            response.append_header(("cache-control", "no-store"));
            response.json(json!({
                "accessToken": pair.access_token,
                "expiresIn": pair.expires_in,
                "user": { "id": user.id, "email": user.email, "displayName": user.display_name },
            }))
        }
        Ok((RefreshOutcome::Rotated(_), None)) | Ok((RefreshOutcome::Invalid, _)) => refused(
            config,
            StatusCode::UNAUTHORIZED,
            "INVALID_TOKEN",
            "invalid or expired session",
            true,
        ),
        Ok((
            RefreshOutcome::ReuseDetected {
                session_id,
                user_id,
            },
            _,
        )) => {
            tracing::warn!(session.id = %session_id, user.id = %user_id, "refresh cookie reuse: session revoked");
            state
                .auth
                .announce(auth::Revocation::Session { session_id });
            refused(
                config,
                StatusCode::UNAUTHORIZED,
                "REFRESH_TOKEN_REUSED",
                "refresh token reused; the session has been revoked",
                true,
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cookie refresh failed");
            refused(
                config,
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
                false,
            )
        }
    }
}

/// Mounts `POST /auth/refresh`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/refresh", web::post().to(refresh));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn csrf_needs_the_header_to_match_the_cookie_and_a_same_origin() {
        let ok = TestRequest::post()
            .insert_header(("host", "127.0.0.1:8080"))
            .insert_header(("origin", "http://127.0.0.1:8080"))
            .insert_header(("cookie", "a=b; maosic_csrf=abc123"))
            .insert_header((CSRF_HEADER, "abc123"))
            .to_http_request();
        assert!(csrf_ok(&ok));
        let no_header = TestRequest::post()
            .insert_header(("cookie", "maosic_csrf=abc123"))
            .to_http_request();
        assert!(!csrf_ok(&no_header));
        let wrong = TestRequest::post()
            .insert_header(("cookie", "maosic_csrf=abc123"))
            .insert_header((CSRF_HEADER, "abc124"))
            .to_http_request();
        assert!(!csrf_ok(&wrong));
        let no_cookie = TestRequest::post()
            .insert_header((CSRF_HEADER, "abc123"))
            .to_http_request();
        assert!(!csrf_ok(&no_cookie));
        let cross_site = TestRequest::post()
            .insert_header(("host", "127.0.0.1:8080"))
            .insert_header(("origin", "https://evil.example"))
            .insert_header(("cookie", "maosic_csrf=abc123"))
            .insert_header((CSRF_HEADER, "abc123"))
            .to_http_request();
        assert!(!csrf_ok(&cross_site));
    }
}
