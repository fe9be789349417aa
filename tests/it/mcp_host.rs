//! A scripted MCP host (rmcp's client) for the MCP tests: over the stdio of a spawned `agentgate mcp`,
//! or over Streamable HTTP. It records every custom notification the server sends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, CustomNotification, Implementation, ProtocolVersion, ServerNotification,
    ServerPeerInfo,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::helpers::*;

/// Records custom notifications (method, params).
pub struct Recorder {
    tx: mpsc::UnboundedSender<(String, Value)>,
    name: String,
}

impl Recorder {
    pub fn new(tx: mpsc::UnboundedSender<(String, Value)>, name: &str) -> Self {
        Self { tx, name: name.to_owned() }
    }
}

impl ClientHandler for Recorder {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(ClientCapabilities::default(), Implementation::new(self.name.clone(), "1.0"))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    async fn on_custom_notification(&self, n: CustomNotification, _ctx: NotificationContext<RoleClient>) {
        let _ = self.tx.send((n.method, n.params.unwrap_or(Value::Null)));
    }
}

pub struct Host {
    pub client: RunningService<RoleClient, Recorder>,
    pub notes: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Host {
    pub async fn over<T, E, A>(transport: T, name: &str) -> Self
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (tx, notes) = mpsc::unbounded_channel();
        let client = Recorder { tx, name: name.to_owned() }.serve(transport).await.expect("MCP handshake");
        Self { client, notes }
    }

    pub fn server_info(&self) -> ServerPeerInfo {
        self.client.peer_info().map(|i| (*i).clone()).expect("server info")
    }

    /// Call a tool: (is_error, structured content or text).
    pub async fn call(&self, tool: &str, args: Value) -> (bool, Value) {
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(args.as_object().cloned().unwrap_or_default());
        let r = self.client.call_tool(params).await.unwrap_or_else(|e| panic!("{tool}: {e}"));
        let text = r.content.first().and_then(|c| c.as_text()).map(|t| t.text.clone()).unwrap_or_default();
        let value = r.structured_content.clone().unwrap_or(Value::String(text));
        (r.is_error.unwrap_or(false), value)
    }

    /// A tool call that must succeed.
    pub async fn ok(&self, tool: &str, args: Value) -> Value {
        let (err, v) = self.call(tool, args).await;
        assert!(!err, "{tool} failed: {v}");
        v
    }

    /// The next notification with this method, within `wait`.
    pub async fn next(&mut self, method: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                Ok(Some((m, p))) if m == method => return Some(p),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    pub async fn notify(&self, method: &str, params: Value) {
        let n = CustomNotification::new(method, Some(params));
        self.client.send_notification(rmcp::model::ClientNotification::CustomNotification(n)).await.expect("send notification");
    }
}

/// Keep the type reachable for servers (unused variant otherwise).
#[allow(dead_code)]
fn _server_notification(_: ServerNotification) {}

/// `agentgate mcp` as a child process; killed on drop.
pub struct StdioGateway {
    pub child: tokio::process::Child,
    pub url: String,
    pub stderr: PathBuf,
    pub config: PathBuf,
}

impl Drop for StdioGateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl StdioGateway {
    /// Spawn `agentgate mcp --config <dir>/agentgate.toml` (the file must exist) and connect a host.
    pub async fn start(dir: &Path, dev: bool, extra_args: &[&str], name: &str) -> (Self, Host) {
        Self::start_logging(dir, dev, extra_args, name, Some("agentgate=debug,info")).await
    }

    /// Like [`StdioGateway::start`], with `RUST_LOG` set to `rust_log` (or unset: the default filter).
    pub async fn start_logging(dir: &Path, dev: bool, extra_args: &[&str], name: &str, rust_log: Option<&str>) -> (Self, Host) {
        Self::start_env(dir, dev, extra_args, name, rust_log, &[]).await
    }

    /// Like [`StdioGateway::start_logging`], with extra environment variables for the gateway.
    pub async fn start_env(
        dir: &Path,
        dev: bool,
        extra_args: &[&str],
        name: &str,
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> (Self, Host) {
        let config = dir.join("agentgate.toml");
        let stderr = dir.join(format!("mcp-stderr-{}.log", unique_id("run")));
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("mcp").arg("--config").arg(&config).args(extra_args);
        if dev {
            cmd.arg("--dev");
        }
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        cmd.envs(env.iter().copied());
        cmd.env("AGENTGATE_TEST_SECRET", "s3cr3t-value-that-must-never-be-logged")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        // The listening line is on stderr (stdout is the protocol).
        let mut url = None;
        for _ in 0..600 {
            let log = std::fs::read_to_string(&stderr).unwrap_or_default();
            if let Some(rest) = log.split("agentgate listening on ").nth(1) {
                url = rest.split_whitespace().next().map(str::to_owned);
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agentgate mcp exited with {status}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = url.unwrap_or_else(|| panic!("agentgate mcp never listened:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default()));
        let host = Host::over((stdout, stdin), name).await;
        (Self { child, url, stderr, config }, host)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// POST an activity (dev mode: no token).
    pub async fn post(&self, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/api/messages", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// POST an activity with a Bot Framework token (an authenticated activity, also in dev mode).
    pub async fn post_as(&self, token: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/api/messages", self.url))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

/// A valid Bot Framework token for `APP_ID`, bound to `service_url`, signed with the tests' usual key
/// (`TestKey::teams("kid", 0)`).
pub fn bf_token(service_url: &str) -> String {
    let mut claims = good_claims();
    claims["serviceurl"] = json!(service_url);
    TestKey::teams("kid", 0).mint(&claims)
}

/// A message from `aad` in `conversation`, through the fake Connector (dev mode).
pub fn inbound(service_url: &str, conversation: &str, conversation_type: &str, aad: &str, text: &str) -> Value {
    let mut m = message(&unique_id("in"));
    m["serviceUrl"] = json!(service_url);
    m["conversation"]["id"] = json!(conversation);
    m["conversation"]["conversationType"] = json!(conversation_type);
    m["from"]["aadObjectId"] = json!(aad);
    m["text"] = json!(text);
    m
}
