//! `maosic-agent enroll`: exchanges a one-time enrollment token for the lab's own agent
//! credential (GraphQL `enrollAgent`) and writes the credential file (mode 0600).
//!
//! The exchange is one small HTTP/1.1 request, so the agent needs no HTTP client library: over
//! a plain socket for `http://`, and for `https://` through rustls with the same verification
//! as the agent's link (`--tls-ca`, `--tls-pin-sha256` or the public web roots, and a client
//! certificate for mutual TLS).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use maosic_schema::protocol::AgentCredentialFile;
use serde_json::{json, Value};

/// Largest response accepted from the server.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Exchanges `token` at `server` and returns the credential. `tls` is the client
/// configuration for an `https://` server (required there, refused for `http://`).
pub fn exchange(
    server: &str,
    token: &str,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<AgentCredentialFile> {
    let url =
        url::Url::parse(server).with_context(|| format!("--server {server:?} is not a URL"))?;
    let tls = match (url.scheme(), tls) {
        ("http", None) => None,
        ("http", Some(_)) => {
            bail!("TLS options were given for the plain-text server {server}; use its https:// URL")
        }
        ("https", Some(tls)) => Some(tls),
        ("https", None) => bail!("an https:// server needs a TLS client configuration"),
        (other, _) => bail!("--server must be an http:// or https:// URL, not {other}://"),
    };
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("--server has no host"))?;
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {host}"))?;
    let body = json!({
        "query": "mutation($t: String!) { enrollAgent(token: $t) { labId credentialId secret } }",
        "variables": { "t": token.trim() },
    })
    .to_string();
    let base_path = url.path().trim_end_matches('/');
    let request = format!(
        "POST {base_path}/graphql HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {server}"))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let raw = match tls {
        None => round_trip(tcp, &request)?,
        Some(config) => {
            // the URL's host: a DNS name or an IP address, verified against the certificate
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| anyhow!("--server host {host:?}: {e}"))?;
            let conn = rustls::ClientConnection::new(config, name)?;
            round_trip(rustls::StreamOwned::new(conn, tcp), &request)
                .with_context(|| format!("TLS exchange with {server}"))?
        }
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed answer from the server"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!("the server answered HTTP {status}");
    }
    parse_answer(payload)
}

/// Writes `request` and reads the whole answer (the request asks the server to close). A
/// close without TLS close_notify after a complete answer is accepted: the answer's length is
/// checked against its Content-Length.
fn round_trip<S: Read + Write>(mut stream: S, request: &str) -> anyhow::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    let read = stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw);
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && complete(&raw) => {}
        Err(e) => return Err(anyhow::Error::new(e).context("no answer from the server")),
    }
    Ok(raw)
}

/// Whether `raw` holds a whole HTTP answer with a Content-Length.
fn complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// Reads the credential out of the GraphQL answer, or the server's error code and message.
pub fn parse_answer(payload: &str) -> anyhow::Result<AgentCredentialFile> {
    let value: Value =
        serde_json::from_str(payload.trim()).context("the server's answer is not JSON")?;
    if let Some(err) = value["errors"].as_array().and_then(|e| e.first()) {
        let code = err["extensions"]["code"].as_str().unwrap_or("ERROR");
        let message = err["message"].as_str().unwrap_or("");
        bail!("enrollment refused ({code}): {message}");
    }
    let e = &value["data"]["enrollAgent"];
    let field = |name: &str| {
        e[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the server's answer lacks {name}"))
    };
    Ok(AgentCredentialFile {
        lab_id: field("labId")?,
        credential_id: field("credentialId")?,
        secret: field("secret")?,
    })
}

/// Writes the credential file readable only by its owner.
pub fn write_credential(path: &Path, credential: &AgentCredentialFile) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(credential)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(text.as_bytes())?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_or_their_error_code_reported() {
        let ok = r#"{"data":{"enrollAgent":{"labId":"l","credentialId":"c","secret":"s"}}}"#;
        let cred = parse_answer(ok).unwrap();
        assert_eq!((cred.lab_id.as_str(), cred.secret.as_str()), ("l", "s"));
        let refused = r#"{"data":null,"errors":[{"message":"invalid or expired token","extensions":{"code":"INVALID_TOKEN"}}]}"#;
        let err = parse_answer(refused).unwrap_err().to_string();
        assert!(err.contains("INVALID_TOKEN"), "{err}");
        assert!(parse_answer("<html>").is_err());
    }

    #[test]
    fn other_schemes_and_mismatched_tls_options_are_refused_clearly() {
        let t = Duration::from_millis(10);
        let tls =
            crate::transport::client_config(&crate::transport::TlsSettings::default()).unwrap();
        let err = exchange("https://x.example", "t", t, None).unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
        let err = exchange("http://x.example", "t", t, Some(tls.clone())).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
        let err = exchange("ftp://x", "t", t, Some(tls)).unwrap_err();
        assert!(err.to_string().contains("ftp://"), "{err}");
    }

    #[test]
    fn an_answer_cut_before_its_content_length_is_incomplete() {
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert!(complete(whole));
        assert!(!complete(&whole[..whole.len() - 1]));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\nhello"));
    }
}
