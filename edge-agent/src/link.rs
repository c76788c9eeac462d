//! The agent's link to the cloud: one event loop that owns the WebSocket. It connects with the
//! lab credential, says `hello` (version + the lab's devices), sends a heartbeat every period,
//! treats three silent periods as a dead link, reconnects with jittered exponential backoff, and
//! says `goodbye` on a clean shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::protocol::{
    error_code, method, AgentCredentialFile, DeviceSummary, GoodbyeParams, HeartbeatParams,
    HelloParams, HelloResult, Id, Message, AGENT_WS_PATH,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;

/// Errors that end the link for good (retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server URL is unusable.
    #[error("invalid server URL {0:?}: expected http(s)://HOST[:PORT] or ws(s)://HOST[:PORT]")]
    BadUrl(String),
    /// The server refused the credential.
    #[error("the server refused this agent's credential (HTTP {0}); re-enroll the agent")]
    Refused(u16),
}

/// Why one connection ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown requested; goodbye sent.
    Shutdown,
    /// The link failed; reconnect.
    Lost(String),
}

/// Settings of the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Server base URL (http(s):// or ws(s)://).
    pub server: String,
    /// The lab credential.
    pub credential: AgentCredentialFile,
    /// The lab's capability descriptor, announced in `hello`.
    pub descriptor: Option<LabDescriptor>,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Time allowed for connect + hello.
    pub connect_timeout: Duration,
}

/// Turns the configured server URL into the gateway's WebSocket URL.
pub fn gateway_url(server: &str) -> Result<String, LinkError> {
    let bad = || LinkError::BadUrl(server.to_owned());
    let mut url = url::Url::parse(server.trim()).map_err(|_| bad())?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(bad()),
    };
    if url.host_str().is_none() {
        return Err(bad());
    }
    url.set_scheme(scheme).map_err(|_| bad())?;
    url.set_path(AGENT_WS_PATH);
    url.set_query(None);
    Ok(url.to_string())
}

fn hello_params(descriptor: Option<&LabDescriptor>) -> HelloParams {
    let devices = descriptor
        .map(|d| {
            d.devices
                .iter()
                .map(|dev| DeviceSummary {
                    name: dev.symbol.clone(),
                    kind: dev.kind.as_str().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    HelloParams {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        devices,
        descriptor: descriptor
            .and_then(|d| serde_json::to_value(d).ok())
            .unwrap_or(serde_json::Value::Null),
    }
}

/// A handle that asks the link to stop: the connected link says `goodbye` first.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Runs the link until `stop` turns true. Returns `Err` only for permanent failures.
pub async fn run(config: LinkConfig, mut stop: watch::Receiver<bool>) -> Result<(), LinkError> {
    let url = gateway_url(&config.server)?;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut rng = rand::rng();
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match connect_and_serve(&url, &config, &mut backoff, stop.clone()).await? {
            Ended::Shutdown => return Ok(()),
            Ended::Lost(reason) => {
                let delay = backoff.next_delay(&mut rng);
                warn!(%reason, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "link lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(socket: &mut Socket, message: &Message) -> Result<(), tungstenite::Error> {
    socket.send(WsMessage::text(message.to_json())).await
}

/// Connects, says hello, and serves the connection until it is lost or `stop` turns true.
async fn connect_and_serve(
    url: &str,
    config: &LinkConfig,
    backoff: &mut Backoff,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, LinkError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| LinkError::BadUrl(url.to_owned()))?;
    let token = HeaderValue::from_str(&format!("Bearer {}", config.credential.bearer_token()))
        .map_err(|_| LinkError::Refused(401))?;
    request.headers_mut().insert("authorization", token);

    let connect = tokio::select! {
        connect = tokio::time::timeout(
            config.connect_timeout,
            tokio_tungstenite::connect_async(request),
        ) => connect,
        _ = stop.changed() => return Ok(Ended::Shutdown),
    };
    let mut socket = match connect {
        Err(_) => return Ok(Ended::Lost("connect timed out".into())),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(LinkError::Refused(status.as_u16()));
            }
            return Ok(Ended::Lost(format!("server answered HTTP {status}")));
        }
        Ok(Err(e)) => return Ok(Ended::Lost(format!("connect failed: {e}"))),
        Ok(Ok((socket, _))) => socket,
    };

    let hello = Message::request(
        Id::Number(1),
        method::HELLO,
        hello_params(config.descriptor.as_ref()),
    );
    if let Err(e) = send(&mut socket, &hello).await {
        return Ok(Ended::Lost(format!("hello not sent: {e}")));
    }
    let welcome = match tokio::time::timeout(config.connect_timeout, wait_hello(&mut socket)).await
    {
        Ok(Ok(welcome)) => welcome,
        Ok(Err(reason)) => return Ok(Ended::Lost(reason)),
        Err(_) => return Ok(Ended::Lost("no answer to hello".into())),
    };
    backoff.reset();
    info!(
        lab.id = %welcome.lab_id,
        generation = welcome.generation,
        heartbeat_ms = welcome.heartbeat_ms,
        "connected to the cloud"
    );
    serve(&mut socket, &welcome, stop).await
}

async fn wait_hello(socket: &mut Socket) -> Result<HelloResult, String> {
    while let Some(frame) = socket.next().await {
        let frame = frame.map_err(|e| format!("link error before hello: {e}"))?;
        let WsMessage::Text(text) = frame else {
            continue;
        };
        match Message::parse(text.as_str()) {
            Ok(Message::Response(r)) if r.id == Some(Id::Number(1)) => {
                if let Some(err) = r.error {
                    return Err(format!("hello refused: {}", err.message));
                }
                return serde_json::from_value(r.result.unwrap_or_default())
                    .map_err(|e| format!("malformed hello result: {e}"));
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "ignoring malformed message before hello"),
        }
    }
    Err("connection closed before hello".into())
}

async fn serve(
    socket: &mut Socket,
    welcome: &HelloResult,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, LinkError> {
    let period = Duration::from_millis(welcome.heartbeat_ms.max(50));
    let dead_after = period * 3;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = socket.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Some(reply) = handle_text(text.as_str()) {
                            if let Err(e) = send(socket, &reply).await {
                                return Ok(Ended::Lost(format!("send failed: {e}")));
                            }
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Ok(Ended::Lost(format!("server closed the link: {frame:?}")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ok(Ended::Lost(format!("link error: {e}"))),
                    None => return Ok(Ended::Lost("link closed".into())),
                }
            }
            _ = heartbeat.tick() => {
                let note = Message::notification(method::HEARTBEAT, HeartbeatParams { time_ms: crate::now_ms() });
                if let Err(e) = send(socket, &note).await {
                    return Ok(Ended::Lost(format!("heartbeat not sent: {e}")));
                }
            }
            () = tokio::time::sleep_until(last_heard + dead_after) => {
                return Ok(Ended::Lost(format!("no traffic from the server for {} ms", dead_after.as_millis())));
            }
            _ = stop.changed() => {
                let bye = Message::notification(method::GOODBYE, GoodbyeParams { reason: "agent shutting down".into() });
                let _ = send(socket, &bye).await;
                let _ = socket.close(None).await;
                // Drain until the server closes so the goodbye is processed before we exit.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = socket.next().await {}
                }).await;
                info!("said goodbye to the cloud");
                return Ok(Ended::Shutdown);
            }
        }
    }
}

/// Answers one text frame from the cloud; returns the reply to send, if any.
fn handle_text(text: &str) -> Option<Message> {
    match Message::parse(text) {
        Ok(Message::Request(r)) => Some(Message::error(
            Some(r.id),
            error_code::METHOD_NOT_FOUND,
            format!("this agent does not offer {}", r.method),
        )),
        Ok(Message::Notification(_)) | Ok(Message::Response(_)) => None,
        Err(e) => {
            debug!(error = %e, "malformed message from the cloud");
            Some(Message::error(None, error_code::PARSE_ERROR, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_map_to_the_gateway() {
        assert_eq!(
            gateway_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/agent/v1/ws"
        );
        assert_eq!(
            gateway_url("https://lab.example.org/").unwrap(),
            "wss://lab.example.org/agent/v1/ws"
        );
        assert!(gateway_url("ftp://x").is_err());
        assert!(gateway_url("not a url").is_err());
    }

    #[test]
    fn requests_for_unknown_methods_get_an_error_reply() {
        let reply = handle_text(r#"{"jsonrpc":"2.0","id":3,"method":"nope"}"#).unwrap();
        assert!(matches!(reply, Message::Response(r) if r.error.is_some()));
        assert!(handle_text(r#"{"jsonrpc":"2.0","method":"ping"}"#).is_none());
    }
}
