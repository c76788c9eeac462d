//! The HTTP application: routes (`/graphql`, `/healthz`, `/readyz`, `/metrics`, the agent
//! gateway), the metrics middleware, and start-up (connect, migrate, bind, announce).

use std::net::TcpListener;
use std::time::{Duration, Instant};

use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use futures_util::FutureExt;
use maosic_schema::protocol::AGENT_WS_PATH;
use tracing::info;

use crate::api::graphql::build_schema;
use crate::config::Config;
use crate::metrics::HttpLabels;
use crate::state::AppState;
use crate::storage::{self, Storage as _};

async fn graphiql(state: web::Data<AppState>) -> HttpResponse {
    if !state.config.graphql.graphiql {
        return HttpResponse::NotFound().finish();
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(GraphiQLSource::build().endpoint("/graphql").finish())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match tokio::time::timeout(Duration::from_secs(2), state.storage.ping()).await {
        Ok(Ok(())) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("database unreachable\n")
        }
        Err(_) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("database timed out\n"),
    }
}

/// `/metrics`: with `metrics_token` set, only with that bearer token; without, only to
/// loopback clients (a scraper on the same host or pod). Anyone else gets 404.
async fn metrics_text(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let allowed = match state.config.metrics_token.as_deref() {
        Some(expected) => req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            // Digests compared, so the time taken says nothing about a common prefix.
            .is_some_and(|given| {
                crate::agents::hash_secret(given.trim()) == crate::agents::hash_secret(expected)
            }),
        None => req.peer_addr().is_some_and(|p| p.ip().is_loopback()),
    };
    if !allowed {
        return HttpResponse::NotFound().finish();
    }
    // The gauges the database holds are read now (bounded: a slow database leaves the last
    // values in place rather than stalling the scrape).
    let counts = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::storage::tenant::system(state.storage.experiment_counts()),
    )
    .await;
    match counts {
        Ok(Ok(experiments)) => {
            let (pool_size, pool_idle, pool_max) = state.storage.pool_use();
            state.metrics.set_store(&crate::metrics::StoreSnapshot {
                experiments: experiments
                    .into_iter()
                    .map(|(lab, st, n)| (lab.to_string(), st, n))
                    .collect(),
                pool_size,
                pool_idle,
                pool_max,
            });
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: experiment counts not read"),
        Err(_) => tracing::warn!("metrics: experiment counts timed out"),
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}

/// Connects to the configured database and applies migrations when configured to.
pub async fn open_storage(config: &Config) -> anyhow::Result<std::sync::Arc<storage::SqlStorage>> {
    let storage = storage::SqlStorage::connect(&config.database, &config.pool)
        .await
        .map(std::sync::Arc::new)
        .with_context(|| format!("cannot open database {}", config.database))?;
    if config.auto_migrate {
        storage
            .migrate()
            .await
            .with_context(|| format!("cannot migrate database {}", config.database))?;
    }
    Ok(storage)
}

/// Binds the listener and builds the server; returns it with the bound address.
pub fn build_server(state: AppState) -> anyhow::Result<(Server, std::net::SocketAddr)> {
    let bind = state.config.bind;
    let listener = TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    let tls = crate::tls::server_config(&state.config.tls)?;
    let schema = build_schema(Some(state.clone()));
    // One shared handle: the request middleware clones a pointer, not every metric family.
    let http_metrics = std::sync::Arc::new(state.metrics.clone());
    let server = HttpServer::new(move || {
        let metrics = http_metrics.clone();
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(schema.clone()))
            // Security headers on every response; the portal adds its Content-Security-Policy.
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("Referrer-Policy", "no-referrer"))
                    .add(("X-Frame-Options", "DENY")),
            )
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let method = req.method().to_string();
                let metrics = metrics.clone();
                srv.call(req).map(move |res| {
                    if let Ok(res) = &res {
                        let route = res
                            .request()
                            .match_pattern()
                            .unwrap_or_else(|| "unmatched".to_owned());
                        metrics.observe(
                            HttpLabels {
                                method,
                                route,
                                status: res.status().as_u16(),
                            },
                            started.elapsed().as_secs_f64(),
                        );
                    }
                    res
                })
            })
            .route(
                "/graphql",
                web::post().to(crate::api::graphql::graphql_handler),
            )
            .route("/graphql", web::get().to(graphiql))
            .route(
                "/graphql/ws",
                web::get().to(crate::api::graphql::subscriptions::graphql_ws),
            )
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
            .route(
                AGENT_WS_PATH,
                web::get().to(crate::agents::gateway::agent_ws),
            )
            .configure(crate::auth::session_cookie::configure)
            .configure(crate::api::operator::configure)
            .configure(crate::api::export::configure)
            .configure(|cfg| crate::api::portal::configure(cfg, crate::api::portal::resolve_dir()))
    });
    // Small messages go out at once: without it, a `program.run` written while the agent's
    // delayed ACK of the previous frame (a record `ack`) is pending waits up to 40 ms (Nagle).
    let server = server.tcp_nodelay(true);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    }
    .shutdown_timeout(5)
    .run();
    Ok((server, addr))
}

/// `maosic-server serve`: runs until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let storage = open_storage(&config).await?;
    // Replicas on one PostgreSQL must accept each other's access tokens.
    if storage.postgres_pool().is_some() && config.auth.jwt_secret.is_empty() {
        anyhow::bail!(
            "auth.jwt_secret is required with PostgreSQL: every replica must sign and verify \
             access tokens with the same key (set MAOSIC_AUTH__JWT_SECRET to at least 32 bytes)"
        );
    }
    let pg = storage.postgres_pool().cloned();
    let state = AppState::new(storage, config);
    // On PostgreSQL, events and revocations reach the other replicas (LISTEN/NOTIFY).
    let cluster = pg.map(|pool| crate::cluster::spawn(state.clone(), pool));
    let engine = state
        .config
        .campaigns
        .engine
        .then(|| crate::engine::scheduler::spawn(state.clone()));
    let commands = crate::agents::commands::spawn(state.clone());
    let presence = crate::agents::presence::spawn(state.clone());
    let mailer = crate::auth::mail::spawn(state.clone());
    let scheme = if state.config.tls.enabled() {
        "https"
    } else {
        "http"
    };
    let (server, addr) = build_server(state.clone())?;
    info!(%addr, scheme, "listening");
    // The line on stdout: tools and tests read the bound address from it.
    println!("maosic-server listening on {scheme}://{addr}");
    // With `[ssh] enabled`, a second line gives the SSH endpoint's address.
    let ssh = if state.config.ssh.enabled {
        let (task, ssh_addr) = crate::agents::ssh::spawn(state.clone(), addr).await?;
        println!("maosic-server ssh listening on {ssh_addr}");
        Some(task)
    } else {
        None
    };
    let result = server.await.context("server stopped with an error");
    if let Some(engine) = engine {
        engine.abort();
    }
    commands.abort();
    presence.abort();
    mailer.abort();
    if let Some((notifier, listener)) = cluster {
        notifier.abort();
        listener.abort();
    }
    if let Some(ssh) = ssh {
        ssh.abort();
    }
    result
}
