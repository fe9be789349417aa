//! `agentgate mcp --connect URL`: a host that launches a stdio server reaches a running gateway's
//! `/mcp`. Messages pass through unchanged both ways (the gateway's channel notifications included);
//! the bearer token comes from a secret source and never reaches the host.

use rmcp::RoleServer;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{IntoTransport, StreamableHttpClientTransport, Transport};
use secrecy::{ExposeSecret as _, SecretString};

/// Pump messages between stdio and the gateway until either side closes.
pub async fn run(url: &str, token: SecretString) -> anyhow::Result<()> {
    let parsed = url::Url::parse(url).map_err(|e| anyhow::anyhow!("--connect {url}: not a URL ({e})"))?;
    let loopback = parsed.host().is_some_and(|h| match h {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    });
    if parsed.scheme() != "https" && !(parsed.scheme() == "http" && loopback) {
        anyhow::bail!("--connect {url}: the token would travel in clear text; use https, or http only to a loopback address");
    }
    let config = StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.expose_secret().to_owned());
    let mut upstream = StreamableHttpClientTransport::from_config(config);
    let mut host = IntoTransport::<RoleServer, _, _>::into_transport(rmcp::transport::stdio());
    loop {
        tokio::select! {
            from_host = host.receive() => match from_host {
                Some(m) => upstream.send(m).await.map_err(|e| explain(url, &e.to_string()))?,
                None => break,
            },
            from_gateway = upstream.receive() => match from_gateway {
                Some(m) => host.send(m).await.map_err(|e| anyhow::anyhow!("writing to the host: {e}"))?,
                None => anyhow::bail!("the gateway at {url} closed the session (is it running? is the token right?)"),
            },
        }
    }
    let _ = upstream.close().await;
    Ok(())
}

/// The transport's error, said so that the user knows what to fix.
fn explain(url: &str, error: &str) -> anyhow::Error {
    if error.contains("Auth") || error.contains("401") {
        anyhow::anyhow!("the gateway at {url} refused the token (401 Unauthorized): check --token and the gateway's mcp.tokens")
    } else if error.contains("onnect") {
        anyhow::anyhow!("cannot reach the gateway at {url} ({error}): is `agentgate serve` running with mcp.tokens set?")
    } else {
        anyhow::anyhow!("sending to {url}: {error}")
    }
}
