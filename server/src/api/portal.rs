//! The web portal: serves the built single-page app (`web/dist`) at `/`, with a fallback to
//! `index.html` for client-side routes (`/campaigns/…`, `/labs/…`), so a reload or a shared
//! link lands in the app. The API's own paths are never shadowed: routes registered before this
//! one win, and an unknown path under an API prefix is a plain 404, never the app's HTML.
//!
//! The directory comes from [`resolve_dir`]: `MAOSIC_PORTAL_DIR`, else `./web/dist` relative to
//! the working directory; the portal is off (nothing is mounted) when it has no `index.html`.

use std::path::{Path, PathBuf};

use actix_files::{Files, NamedFile};
use actix_web::dev::{fn_service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::http::Method;
use actix_web::{web, HttpResponse};

/// The environment variable naming the built portal's directory.
pub const PORTAL_DIR_ENV: &str = "MAOSIC_PORTAL_DIR";

/// The default directory, relative to the working directory.
pub const DEFAULT_PORTAL_DIR: &str = "web/dist";

/// The portal's Content-Security-Policy: its own scripts, styles (uPlot sets inline styles),
/// images and connections (the API and its WebSocket) only; never framed; no plugins.
pub const PORTAL_CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Path prefixes that belong to the server, never to the app (no fallback to `index.html`).
const RESERVED: &[&str] = &[
    "/graphql",
    "/api/",
    "/agent/",
    "/auth/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/operator",
    // a missing hashed asset is a 404, not HTML served as JavaScript
    "/assets/",
];

/// Whether `path` belongs to the server's own routes (or the app's asset folder).
pub fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|p| {
        let bare = p.trim_end_matches('/');
        path == bare
            || path
                .strip_prefix(bare)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The portal directory to serve: `MAOSIC_PORTAL_DIR` if set (and non-empty), else
/// `./web/dist`; `None` (portal off) when that directory has no `index.html`.
pub fn resolve_dir() -> Option<PathBuf> {
    let dir = std::env::var_os(PORTAL_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PORTAL_DIR));
    usable(&dir).then_some(dir)
}

fn usable(dir: &Path) -> bool {
    dir.join("index.html").is_file()
}

/// Mounts the portal at `/` (register it after every other route). `None`, or a directory
/// without `index.html`, mounts nothing.
pub fn configure(cfg: &mut web::ServiceConfig, dir: Option<PathBuf>) {
    let Some(dir) = dir.filter(|d| usable(d)) else {
        return;
    };
    let index = dir.join("index.html");
    cfg.service(
        web::scope("")
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Content-Security-Policy", PORTAL_CSP)),
            )
            .service(
                Files::new("/", &dir)
                    .index_file("index.html")
                    .use_etag(true)
                    .use_last_modified(true)
                    .default_handler(fn_service(move |req: ServiceRequest| {
                        let index = index.clone();
                        async move { fallback(req, &index).await }
                    })),
            ),
    );
}

/// Unknown path: the app's `index.html` for a GET/HEAD of a non-reserved path, else 404.
async fn fallback(req: ServiceRequest, index: &Path) -> Result<ServiceResponse, actix_web::Error> {
    let (req, _) = req.into_parts();
    let method_ok = matches!(*req.method(), Method::GET | Method::HEAD);
    if !method_ok || is_reserved(req.path()) {
        let res = HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("not found\n");
        return Ok(ServiceResponse::new(req, res));
    }
    match NamedFile::open(index) {
        Ok(file) => {
            let mut res = file.use_etag(true).into_response(&req);
            // the app shell must be revalidated so a new build is picked up at once
            res.headers_mut().insert(
                header::CACHE_CONTROL,
                CacheControl(vec![CacheDirective::NoCache])
                    .to_string()
                    .parse()
                    .map_err(actix_web::error::ErrorInternalServerError)?,
            );
            Ok(ServiceResponse::new(req, res))
        }
        Err(e) => {
            tracing::warn!(error = %e, "portal index.html unreadable");
            let res = HttpResponse::NotFound()
                .content_type("text/plain; charset=utf-8")
                .body("not found\n");
            Ok(ServiceResponse::new(req, res))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as atest, App};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "maosic-portal-{tag}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            std::fs::create_dir_all(&p).expect("mkdir");
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dist() -> TempDir {
        let d = TempDir::new("dist");
        std::fs::write(
            d.path().join("index.html"),
            "<!doctype html><title>app</title>",
        )
        .expect("write");
        std::fs::create_dir(d.path().join("assets")).expect("mkdir");
        std::fs::write(d.path().join("assets/app-1234.js"), "console.log(1)").expect("write");
        d
    }

    #[test]
    fn reserved_paths() {
        for p in [
            "/graphql",
            "/graphql/ws",
            "/api",
            "/api/v1/campaigns/x/export.csv",
            "/agent/v1/ws",
            "/healthz",
            "/readyz",
            "/metrics",
            "/operator/v1/labs",
            "/assets/missing.js",
        ] {
            assert!(is_reserved(p), "{p}");
        }
        for p in [
            "/",
            "/campaigns/abc",
            "/labs",
            "/apiary",
            "/graphqlx",
            "/metricsx",
        ] {
            assert!(!is_reserved(p), "{p}");
        }
    }

    #[actix_web::test]
    async fn serves_files_and_falls_back_without_shadowing_the_api() {
        let d = dist();
        let dir = d.path().to_path_buf();
        let app = atest::init_service(
            App::new()
                .route(
                    "/healthz",
                    web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                )
                .configure(|cfg| configure(cfg, Some(dir.clone()))),
        )
        .await;
        let get = |uri: &str| atest::TestRequest::get().uri(uri).to_request();

        let res = atest::call_service(&app, get("/")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get("content-security-policy")
                .and_then(|v| v.to_str().ok()),
            Some(PORTAL_CSP),
            "the portal carries its Content-Security-Policy"
        );
        let body = atest::read_body(res).await;
        assert!(std::str::from_utf8(&body)
            .unwrap_or("")
            .contains("<title>app</title>"));

        let res = atest::call_service(&app, get("/assets/app-1234.js")).await;
        assert_eq!(res.status(), 200);

        let res = atest::call_service(&app, get("/campaigns/some-id")).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get(header::CACHE_CONTROL).is_some());
        let body = atest::read_body(res).await;
        assert!(std::str::from_utf8(&body)
            .unwrap_or("")
            .contains("<title>app</title>"));

        let res = atest::call_service(&app, get("/healthz")).await;
        assert_eq!(atest::read_body(res).await, "ok");

        for uri in [
            "/api/v1/nope",
            "/graphql/nope",
            "/assets/missing.js",
            "/operator/v1",
        ] {
            let res = atest::call_service(&app, get(uri)).await;
            assert_eq!(res.status(), 404, "{uri}");
        }
        let res = atest::call_service(
            &app,
            atest::TestRequest::post().uri("/campaigns/x").to_request(),
        )
        .await;
        assert_ne!(res.status(), 200);
    }

    #[actix_web::test]
    async fn missing_dir_mounts_nothing() {
        let d = TempDir::new("missing");
        let dir = d.path().join("nope");
        let app =
            atest::init_service(App::new().configure(|cfg| configure(cfg, Some(dir.clone()))))
                .await;
        let res = atest::call_service(&app, atest::TestRequest::get().uri("/").to_request()).await;
        assert_eq!(res.status(), 404);
    }
}
