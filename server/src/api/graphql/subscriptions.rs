//! GraphQL subscriptions (graphql-ws over WebSocket at `/graphql/ws`): campaign events,
//! experiment state changes, new measurements and lab status, live.
//!
//! The socket is authenticated at `connection_init` (payload `{"authorization": "Bearer …"}`);
//! every subscription checks access when it starts (another organisation's ids are `NOT_FOUND`)
//! and filters the in-process event bus by the ids it was granted, so nothing of another tenant
//! is ever sent. A revocation of the socket's session or token closes it (code 4401).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use async_graphql::http::{WebSocketProtocols as Protocols, WsMessage};
use async_graphql::parser::types::OperationType;
use async_graphql::{Context, Data, SimpleObject, Subscription, ID};
use futures_util::stream::{BoxStream, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::access::{lab_with_access, org_role, LabAccess};
use super::budget::{BudgetError, Caller, QueryBudget};
use super::campaigns::ExperimentNode;
use super::{fail, parse_id, principal, state, ApiError, ApiResult, ApiSchema, RequestInfo};
use crate::auth::Principal;
use crate::events::Event;
use crate::state::AppState;
use crate::storage::tenant::{self, TenantScope};
use crate::storage::{CampaignId, CampaignState, ExperimentState, OrganizationId};

/// Something happened in a campaign.
#[derive(SimpleObject, Clone)]
pub struct CampaignEvent {
    /// The campaign.
    pub campaign_id: ID,
    /// `state` (the campaign changed state), `queued` (new proposals), `result` (an experiment
    /// was told to the optimizer), `experiment` (an experiment changed state), `measurement` (an
    /// experiment streamed a new measurement), `resync` (this subscriber fell behind and events
    /// were skipped: the campaign's state now; re-read anything else you show).
    pub kind: String,
    /// The campaign's state, on the campaign's own events (`state`, `queued`, `result`,
    /// `resync`); null on an experiment's.
    pub campaign_state: Option<CampaignState>,
    /// The experiment's state, on an experiment's events (`experiment`, `measurement`); null
    /// on the campaign's own.
    pub experiment_state: Option<ExperimentState>,
    /// The experiment concerned, if any.
    pub experiment_id: Option<ID>,
}

/// A lab's agent connected or disconnected.
#[derive(SimpleObject, Clone)]
pub struct LabStatusEvent {
    /// The lab.
    pub lab_id: ID,
    /// Whether its agent is connected now.
    pub online: bool,
}

/// The subscriptions.
#[derive(Default)]
pub struct SubscriptionRoot;

/// The tenant scope the subscription's storage calls run in (row-level security on PostgreSQL).
fn scope(ctx: &Context<'_>) -> TenantScope {
    ctx.data::<TenantScope>()
        .cloned()
        .unwrap_or_else(|_| TenantScope::nobody())
}

/// How long a graphql-ws client may stay silent (its pongs count) before it is closed.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// What a subscription reads from the bus.
#[derive(Debug, Clone, PartialEq)]
enum Bus {
    Event(Event),
    /// The subscriber fell behind and this many events were skipped.
    Lagged(u64),
}

/// The bus as a stream, skipping ahead when the subscriber lags and saying so.
fn bus_items(
    rx: tokio::sync::broadcast::Receiver<Event>,
) -> impl Stream<Item = Bus> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(ev) => Some((Bus::Event(ev), rx)),
            Err(RecvError::Lagged(n)) => Some((Bus::Lagged(n), rx)),
            Err(RecvError::Closed) => None,
        }
    })
}

/// The bus as a stream of events only, for subscriptions where a skipped event needs no
/// repair.
fn bus(state: &AppState) -> impl Stream<Item = Event> + Send + 'static {
    bus_items(state.events.subscribe()).filter_map(|item| async move {
        match item {
            Bus::Event(ev) => Some(ev),
            Bus::Lagged(_) => None,
        }
    })
}

/// The campaign's organisation, its id and the state, for a subscriber who may read it; checked
/// in the subscriber's tenant scope (row-level security applies, as for queries).
async fn campaign_access(
    ctx: &Context<'_>,
    campaign_id: &ID,
) -> ApiResult<(OrganizationId, CampaignId, AppState)> {
    let setup = async {
        let p = principal(ctx)?;
        let org = campaign_org(ctx, p, campaign_id).await?;
        Ok((org, parse_id(campaign_id)?, state(ctx)?.clone()))
    };
    tenant::scoped(scope(ctx), setup).await
}

async fn campaign_org(
    ctx: &Context<'_>,
    p: &Principal,
    campaign_id: &str,
) -> ApiResult<OrganizationId> {
    let id: CampaignId = parse_id(campaign_id)?;
    let c = state(ctx)?
        .storage
        .campaign(&id)
        .await
        .map_err(|e| fail(ApiError::from(e)))?;
    if org_role(ctx, p, &c.organization_id).await?.is_none() {
        return Err(fail(ApiError::NotFound));
    }
    Ok(c.organization_id)
}

#[Subscription]
impl SubscriptionRoot {
    /// Everything that happens in one campaign: state changes, new proposals, results,
    /// experiment states and new measurements.
    async fn campaign_events(
        &self,
        ctx: &Context<'_>,
        campaign_id: ID,
    ) -> BoxStream<'static, ApiResult<CampaignEvent>> {
        let (org, id, st) = match campaign_access(ctx, &campaign_id).await {
            Ok(v) => v,
            Err(e) => return refused(e),
        };
        let scope = scope(ctx);
        // the campaign's lab: measurements of other labs are skipped without a lookup
        let lab = match tenant::scoped(scope.clone(), st.storage.campaign(&id)).await {
            Ok(c) => c.lab_id,
            Err(e) => return refused(fail(ApiError::from(e))),
        };
        bus_items(st.events.subscribe())
            .filter_map(move |item| {
                let (id, org, st, scope, lab) = (
                    id.clone(),
                    org.clone(),
                    st.clone(),
                    scope.clone(),
                    lab.clone(),
                );
                async move {
                    match item {
                        Bus::Event(ev) => campaign_event(&st, scope, &org, &id, &lab, ev)
                            .await
                            .map(Ok),
                        // Events were skipped, perhaps the last state change: say where the
                        // campaign is now, so no subscriber is left with a stale state.
                        Bus::Lagged(skipped) => {
                            tracing::info!(campaign.id = %id, skipped, "campaign subscriber lagged: resync sent");
                            let c = tenant::scoped(scope, st.storage.campaign(&id)).await.ok()?;
                            Some(Ok(CampaignEvent {
                                campaign_id: ID(c.id.into()),
                                kind: "resync".into(),
                                campaign_state: Some(c.state),
                                experiment_state: None,
                                experiment_id: None,
                            }))
                        }
                    }
                }
            })
            .boxed()
    }

    /// Experiments of one campaign as they change state (queued, running, completed, …).
    async fn experiment_updates(
        &self,
        ctx: &Context<'_>,
        campaign_id: ID,
    ) -> BoxStream<'static, ApiResult<ExperimentNode>> {
        let (org, id, st) = match campaign_access(ctx, &campaign_id).await {
            Ok(v) => v,
            Err(e) => return refused(e),
        };
        let scope = scope(ctx);
        bus(&st)
            .filter_map(move |ev| {
                let (id, org, st, scope) = (id.clone(), org.clone(), st.clone(), scope.clone());
                async move {
                    let Event::Experiment {
                        organization_id,
                        campaign_id,
                        experiment_id,
                        ..
                    } = ev
                    else {
                        return None;
                    };
                    if organization_id != org || campaign_id != id {
                        return None;
                    }
                    let e = tenant::scoped(scope, st.storage.experiment(&experiment_id))
                        .await
                        .ok()?;
                    (e.organization_id == org).then(|| Ok(ExperimentNode::new(e)))
                }
            })
            .boxed()
    }

    /// A lab's agent going online and offline (labs the caller may see).
    async fn lab_status(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
    ) -> BoxStream<'static, ApiResult<LabStatusEvent>> {
        let setup = async {
            let p = principal(ctx)?;
            let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Read).await?;
            Ok::<_, async_graphql::Error>((lab.id, state(ctx)?.clone()))
        };
        let (lab_id, st) = match tenant::scoped(scope(ctx), setup).await {
            Ok(v) => v,
            Err(e) => return refused(e),
        };
        bus(&st)
            .filter_map(move |ev| {
                let lab_id = lab_id.clone();
                async move {
                    match ev {
                        Event::LabStatus { lab_id: l, online } if l == lab_id => {
                            Some(Ok(LabStatusEvent {
                                lab_id: ID(l.into()),
                                online,
                            }))
                        }
                        _ => None,
                    }
                }
            })
            .boxed()
    }
}

/// A subscription refused at its start: one error, then the end.
fn refused<T: Send + 'static>(e: async_graphql::Error) -> BoxStream<'static, ApiResult<T>> {
    futures_util::stream::once(async move { Err(e) }).boxed()
}

/// Maps a bus event to the campaign's event, if it belongs to it.
async fn campaign_event(
    st: &AppState,
    scope: TenantScope,
    org: &OrganizationId,
    campaign: &CampaignId,
    lab: &crate::storage::LabId,
    ev: Event,
) -> Option<CampaignEvent> {
    match ev {
        Event::Campaign {
            organization_id,
            campaign_id,
            state,
            kind,
        } if organization_id == org && campaign_id == campaign => Some(CampaignEvent {
            campaign_id: ID(campaign_id.into()),
            kind,
            campaign_state: Some(state),
            experiment_state: None,
            experiment_id: None,
        }),
        Event::Experiment {
            organization_id,
            campaign_id,
            experiment_id,
            state,
        } if organization_id == org && campaign_id == campaign => Some(CampaignEvent {
            campaign_id: ID(campaign_id.into()),
            kind: "experiment".into(),
            campaign_state: None,
            experiment_state: Some(state),
            experiment_id: Some(ID(experiment_id.into())),
        }),
        Event::RecordStored {
            lab_id,
            program_id: Some(program_id),
            kind,
        } if kind == "measurement" && lab_id == lab => {
            // Records carry the experiment id as their program id; look it up in the
            // subscriber's own scope.
            let e = tenant::scoped(scope, st.storage.experiment(&program_id.into()))
                .await
                .ok()?;
            (e.organization_id == org && e.campaign_id == campaign).then(|| CampaignEvent {
                campaign_id: ID(e.campaign_id.into()),
                kind: "measurement".into(),
                campaign_state: None,
                experiment_state: Some(e.state),
                experiment_id: Some(ID(e.id.into())),
            })
        }
        _ => None,
    }
}

/// A browser sends `Origin`: it must be this server's own (scheme-less host:port match with
/// `Host`), so another site's page cannot open a socket in the user's name. Non-browser clients
/// send no `Origin` and authenticate with their token at `connection_init`.
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get("origin") else {
        return true;
    };
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    match (
        origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()),
        host,
    ) {
        (Some(o), Some(host)) => {
            let authority = match (o.host_str(), o.port()) {
                (Some(h), Some(p)) => format!("{h}:{p}"),
                (Some(h), None) => h.to_owned(),
                _ => return false,
            };
            authority.eq_ignore_ascii_case(host)
        }
        _ => false,
    }
}

/// `GET /graphql/ws`: graphql-ws (or the older subscriptions-transport-ws) over WebSocket.
pub async fn graphql_ws(
    req: HttpRequest,
    body: web::Payload,
    schema: web::Data<ApiSchema>,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let protocol = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().parse::<Protocols>().ok())
        })
        .unwrap_or(Protocols::GraphQLWS);
    if !same_origin(&req) {
        return Ok(HttpResponse::Forbidden().json(serde_json::json!({
            "errors": [{ "message": "cross-origin WebSocket refused", "extensions": { "code": "FORBIDDEN" } }]
        })));
    }
    let (mut response, mut session, incoming) = actix_ws::handle(&req, body)?;
    // Frames are capped like request bodies.
    let mut incoming = incoming.max_frame_size(state.config.graphql.max_body_bytes);
    if let Ok(value) =
        actix_web::http::header::HeaderValue::from_str(protocol.sec_websocket_protocol())
    {
        response
            .headers_mut()
            .insert(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    let source = super::handler::client_address(&req, &state.config.trusted_proxies);
    let state = state.into_inner();
    let schema = schema.into_inner();
    actix_web::rt::spawn(async move {
        // Frames for the protocol. Bounded, and never awaited: a client that sends faster than
        // the protocol reads (e.g. pings behind a pending connection_init) is closed, never
        // allowed to stall this loop.
        let (to_graphql, from_client) = tokio::sync::mpsc::channel::<Vec<u8>>(256);
        // Who the socket authenticated as, and its tenant scope (nobody until `connection_init`).
        let (authed_tx, authed_rx) =
            tokio::sync::watch::channel::<Option<(Principal, TenantScope)>>(None);
        // Frames of queries and mutations run here, sent back through the socket loop.
        let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<String>(64);
        let init_state = (*state).clone();
        let init_source = source.clone();
        let input = futures_util::stream::unfold(from_client, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        });
        // A client silent for KEEPALIVE is gone (closed with 3008). On graphql-ws the server
        // pings every KEEPALIVE / 3 and a live client's pong (the protocol requires one) counts
        // as its message, so a subscriber that only listens is never closed; the older protocol
        // has no client answer, so it gets no time-out.
        let keepalive = matches!(protocol, Protocols::GraphQLWS).then_some(KEEPALIVE);
        let mut pings =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE / 3, KEEPALIVE / 3);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let protocol_ws = async_graphql::http::WebSocket::new((*schema).clone(), input, protocol)
            .keepalive_timeout(keepalive)
            .on_connection_init(move |payload| async move {
                let token = payload
                    .get("authorization")
                    .or_else(|| payload.get("Authorization"))
                    .and_then(|v| v.as_str())
                    .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_owned())
                    .ok_or_else(|| async_graphql::Error::new("authentication required"))?;
                // Finding who calls is platform work, explicitly (the socket's own scope is
                // nobody until this succeeds).
                let (principal, scope) = tenant::system(async {
                    let principal = init_state
                        .auth
                        .authenticate(init_state.storage.as_ref(), &token)
                        .await
                        .map_err(|_| async_graphql::Error::new("invalid credentials"))?;
                    let scope = super::handler::scope_of(&init_state, Some(&principal))
                        .await
                        .map_err(|_| async_graphql::Error::new("unavailable"))?;
                    Ok::<_, async_graphql::Error>((principal, scope))
                })
                .await?;
                let _ = authed_tx.send(Some((principal.clone(), scope.clone())));
                let mut data = Data::default();
                data.insert(RequestInfo {
                    principal: Some(principal),
                    source: init_source,
                    cookie_session: false,
                });
                data.insert(scope);
                Ok(data)
            });
        // Every poll of the protocol (connection_init, subscription resolvers and their event
        // streams) runs in the socket's tenant scope.
        let mut ws = ScopedStream {
            inner: Box::pin(protocol_ws),
            authed: authed_rx.clone(),
        };
        let mut operations = Operations::default();
        let mut revocations = state.auth.revocations();
        let mut revocations_open = true;
        loop {
            tokio::select! {
                frame = incoming.next() => {
                    let bytes = match frame {
                        Some(Ok(actix_ws::Message::Text(t))) => t.as_bytes().to_vec(),
                        Some(Ok(actix_ws::Message::Binary(b))) => b.to_vec(),
                        Some(Ok(actix_ws::Message::Ping(b))) => {
                            if session.pong(&b).await.is_err() { break; }
                            continue;
                        }
                        Some(Err(actix_ws::ProtocolError::Overflow)) => {
                            tracing::info!(
                                max_bytes = state.config.graphql.max_body_bytes,
                                "subscription frame over the size limit refused"
                            );
                            let _ = session.close(Some(actix_ws::CloseReason {
                                code: actix_ws::CloseCode::Size,
                                description: Some("frame too large".into()),
                            })).await;
                            return;
                        }
                        Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => continue,
                    };
                    let authed = authed_rx.borrow().clone();
                    let caller = authed.as_ref().map(|(p, _)| super::handler::caller_of(Some(p), None));
                    match classify(&bytes, protocol, &state.config.graphql, &mut operations, caller.as_ref().map(|c| (&state.query_budget, c))) {
                        Frame::Forward => match to_graphql.try_send(bytes) {
                            Ok(()) => {}
                            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                                tracing::info!("graphql-ws client sends faster than it is served: closed");
                                let _ = session.close(Some(actix_ws::CloseReason {
                                    code: actix_ws::CloseCode::Policy,
                                    description: Some("too many frames in flight".into()),
                                })).await;
                                return;
                            }
                            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
                        },
                        Frame::Reply(text) => {
                            if session.text(text).await.is_err() { break; }
                        }
                        Frame::Execute { id, request } => {
                            let Some((principal, scope)) = authed else { continue };
                            let (schema, state, out) = (schema.clone(), state.clone(), out_tx.clone());
                            let source = source.clone();
                            actix_web::rt::spawn(async move {
                                let info = RequestInfo { principal: Some(principal), source, cookie_session: false };
                                let response = super::handler::execute_one(
                                    &schema, &state.config.graphql, &info, &scope, None, *request,
                                ).await;
                                for frame in result_frames(protocol, &id, &response) {
                                    if out.send(frame).await.is_err() { return; }
                                }
                            });
                        }
                    }
                },
                Some(text) = out_rx.recv() => {
                    operations.observe_outgoing(&text);
                    if session.text(text).await.is_err() { break; }
                }
                _ = pings.tick(), if keepalive.is_some() => {
                    if session.text(r#"{"type":"ping"}"#).await.is_err() { break; }
                }
                out = ws.next() => match out {
                    Some(WsMessage::Text(text)) => {
                        operations.observe_outgoing(&text);
                        if session.text(text).await.is_err() { break; }
                    }
                    Some(WsMessage::Close(code, reason)) => {
                        let _ = session.close(Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Other(code),
                            description: Some(reason),
                        })).await;
                        return;
                    }
                    None => break,
                },
                revoked = revocations.recv(), if revocations_open => {
                    let applies = match &revoked {
                        Ok(r) => authed_rx.borrow().as_ref().is_some_and(|(p, _)| r.applies_to(p)),
                        Err(RecvError::Lagged(_)) => false,
                        Err(RecvError::Closed) => {
                            revocations_open = false;
                            false
                        }
                    };
                    if applies {
                        let _ = session.close(Some(actix_ws::CloseReason {
                            code: actix_ws::CloseCode::Other(4401),
                            description: Some("credentials revoked".into()),
                        })).await;
                        return;
                    }
                }
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

/// The protocol stream of one socket, polled in the socket's tenant scope: nobody until the
/// connection is initialised, then the authenticated principal's.
struct ScopedStream<S> {
    inner: std::pin::Pin<Box<S>>,
    authed: tokio::sync::watch::Receiver<Option<(Principal, TenantScope)>>,
}

impl<S: Stream> Stream for ScopedStream<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let scope = self
            .authed
            .borrow()
            .as_ref()
            .map_or_else(TenantScope::nobody, |(_, scope)| scope.clone());
        let inner = self.inner.as_mut();
        tenant::sync_scoped(scope, move || inner.poll_next(cx))
    }
}

/// What the socket loop does with a client frame.
enum Frame {
    /// Hand it to the protocol (connection_init, ping, complete, subscriptions).
    Forward,
    /// Answer it directly (a refusal).
    Reply(String),
    /// A query or mutation: run it through the HTTP execution pipeline.
    Execute {
        id: String,
        request: Box<async_graphql::Request>,
    },
}

/// The operations a socket has started and not yet seen end, capped per socket.
#[derive(Default)]
struct Operations {
    active: std::collections::HashSet<String>,
    /// Queries and mutations running here: they end when their result is sent, whatever the
    /// client says (a client `complete` cannot free their slot while they still run).
    executing: std::collections::HashSet<String>,
}

impl Operations {
    /// Notes the end of an operation the server announced (`complete`, `error`).
    fn observe_outgoing(&mut self, text: &str) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if matches!(v["type"].as_str(), Some("complete" | "error")) {
                if let Some(id) = v["id"].as_str() {
                    self.active.remove(id);
                    self.executing.remove(id);
                }
            }
        }
    }
}

fn protocol_error_frame(protocol: Protocols, id: &str, code: &str, message: &str) -> String {
    let error = serde_json::json!({ "message": message, "extensions": { "code": code } });
    match protocol {
        Protocols::GraphQLWS => {
            serde_json::json!({ "type": "error", "id": id, "payload": [error] }).to_string()
        }
        Protocols::SubscriptionsTransportWS => {
            serde_json::json!({ "type": "error", "id": id, "payload": error }).to_string()
        }
    }
}

/// The frames that carry a query's or mutation's response, then its end.
fn result_frames(protocol: Protocols, id: &str, response: &async_graphql::Response) -> Vec<String> {
    let data_type = match protocol {
        Protocols::GraphQLWS => "next",
        Protocols::SubscriptionsTransportWS => "data",
    };
    vec![
        serde_json::json!({ "type": data_type, "id": id, "payload": response }).to_string(),
        serde_json::json!({ "type": "complete", "id": id }).to_string(),
    ]
}

/// Sorts a client frame: operations pass the same checks as over HTTP (aliases, introspection,
/// then the tenant scope and the time limit for queries and mutations), and each socket runs at
/// most `max_ws_operations` at once.
fn classify(
    bytes: &[u8],
    protocol: Protocols,
    limits: &crate::config::GraphqlConfig,
    operations: &mut Operations,
    payer: Option<(&QueryBudget, &Caller)>,
) -> Frame {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Frame::Forward; // The protocol answers malformed frames itself.
    };
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    match v["type"].as_str() {
        Some("subscribe" | "start") => {}
        Some("complete" | "stop") => {
            if !operations.executing.contains(&id) {
                operations.active.remove(&id);
            }
            return Frame::Forward;
        }
        _ => return Frame::Forward,
    }
    let Some((budget, caller)) = payer else {
        return Frame::Forward; // The protocol refuses operations before connection_init.
    };
    let Ok(mut request) = serde_json::from_value::<async_graphql::Request>(v["payload"].clone())
    else {
        return Frame::Forward;
    };
    if operations.active.contains(&id) {
        // An id still in use: refused here (the protocol would run the payload unchecked).
        return Frame::Reply(protocol_error_frame(
            protocol,
            &id,
            "BAD_REQUEST",
            "an operation with this id is still running",
        ));
    }
    if operations.active.len() >= limits.max_ws_operations {
        return Frame::Reply(protocol_error_frame(
            protocol,
            &id,
            "TOO_MANY_OPERATIONS",
            &format!(
                "a socket may run at most {} operations at once",
                limits.max_ws_operations
            ),
        ));
    }
    if let Err(e) = budget.charge(caller, request.query.len()) {
        return Frame::Reply(protocol_error_frame(
            protocol,
            &id,
            match e {
                BudgetError::RetryAfter(_) => "RATE_LIMITED",
                BudgetError::TooLarge => "PAYLOAD_TOO_LARGE",
            },
            &e.to_string(),
        ));
    }
    match super::handler::precheck(limits, &mut request) {
        Err(refused) => {
            let (code, message) = refused
                .errors
                .first()
                .map(|e| {
                    let code = e
                        .extensions
                        .as_ref()
                        .and_then(|x| x.get("code"))
                        .map(|c| c.to_string().trim_matches('"').to_owned())
                        .unwrap_or_else(|| "BAD_REQUEST".into());
                    (code, e.message.clone())
                })
                .unwrap_or_else(|| ("BAD_REQUEST".into(), "refused".into()));
            Frame::Reply(protocol_error_frame(protocol, &id, &code, &message))
        }
        Ok(OperationType::Subscription) => {
            operations.active.insert(id);
            Frame::Forward
        }
        Ok(_) => {
            operations.active.insert(id.clone());
            operations.executing.insert(id.clone());
            Frame::Execute {
                id,
                request: Box::new(request),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LabId;

    fn status(n: usize) -> Event {
        Event::LabStatus {
            lab_id: LabId::from(format!("lab-{n}").as_str()),
            online: true,
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_many_events_it_missed() {
        let (tx, rx) = tokio::sync::broadcast::channel(4);
        let items = bus_items(rx);
        futures_util::pin_mut!(items);
        tx.send(status(0)).unwrap();
        assert_eq!(items.next().await, Some(Bus::Event(status(0))));
        // ten more than the subscriber read: the oldest six are gone
        for n in 1..=10 {
            tx.send(status(n)).unwrap();
        }
        assert_eq!(items.next().await, Some(Bus::Lagged(6)));
        for n in 7..=10 {
            assert_eq!(items.next().await, Some(Bus::Event(status(n))));
        }
        drop(tx);
        assert_eq!(items.next().await, None);
    }
}
