//! `maosic-agent enroll`: exchanges a one-time enrollment token for the lab's own agent
//! credential (GraphQL `enrollAgent`) and writes the credential file (mode 0600).
//!
//! The exchange is one small HTTP/1.1 request over a plain socket, so the agent needs no HTTP
//! client library; `https://` servers are refused until the agent has a TLS HTTP client (the
//! WebSocket link itself uses rustls).

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use maosic_schema::protocol::AgentCredentialFile;
use serde_json::{json, Value};

/// Largest response accepted from the server.
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// Exchanges `token` at `server` and returns the credential.
pub fn exchange(
    server: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<AgentCredentialFile> {
    let url =
        url::Url::parse(server).with_context(|| format!("--server {server:?} is not a URL"))?;
    match url.scheme() {
        "http" => {}
        "https" => bail!(
            "enrollment over https is not supported by this agent yet; enroll over http on a \
             trusted network or copy the credential file"
        ),
        other => bail!("--server must be an http:// URL, not {other}://"),
    }
    let host = url
        .host_str()
        .ok_or_else(|| anyhow!("--server has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
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
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {server}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .context("no answer from the server")?;
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
    fn https_and_other_schemes_are_refused_clearly() {
        let err = exchange("https://x.example", "t", Duration::from_millis(10)).unwrap_err();
        assert!(err.to_string().contains("https"));
        assert!(exchange("ftp://x", "t", Duration::from_millis(10)).is_err());
    }
}
