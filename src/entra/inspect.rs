//! `agentgate token graph|agentic|bot`: acquire a fresh token and describe it without showing it.
//!
//! The JWT payload is decoded **without verifying** the signature (it is our own, fresh token, shown
//! for diagnosis only), and only a fixed list of claims is printed. The token itself is printed only on
//! request.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{AccessToken, AgentUserTokens, Authority, BotTokenProvider, TokenClient, TokenClientSettings};
use crate::config::Config;

/// Which token `agentgate token` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenKind {
    /// The Agent User's Graph token (three hops, `graph_scope`).
    Graph,
    /// The Agent User's Bot Connector token (three hops, `agentic_scope`).
    Agentic,
    /// The bot's own Bot Connector token (client credentials).
    Bot,
}

/// The claims printed, in this order (anything else in the token is left out).
const SHOWN: [(&str, &str); 17] = [
    ("aud", "audience"),
    ("iss", "issuer"),
    ("tid", "tenant"),
    ("oid", "object id"),
    ("sub", "subject"),
    ("upn", "UPN"),
    ("preferred_username", "username"),
    ("name", "name"),
    ("appid", "app id"),
    ("azp", "authorized party"),
    ("app_displayname", "app name"),
    ("xms_par_app_azp", "parent app (Blueprint)"),
    ("idtyp", "identity type"),
    ("scp", "delegated scopes"),
    ("roles", "app roles"),
    ("iat", "issued at"),
    ("exp", "expires"),
];

/// Acquire the `kind` token for `cfg.bots[index]` and describe it; with `show_token`, print it too.
/// Errors name the config field or the hop that failed, and how to fix it.
pub async fn token_report(cfg: &Config, index: usize, kind: TokenKind, show_token: bool) -> anyhow::Result<String> {
    let bot = cfg.bots.get(index).context("no such bot")?;
    let authority = match &cfg.clouds.get(bot.cloud).token_authority {
        Some(a) => {
            Authority::parse(a).map_err(|e| anyhow::anyhow!("configuration error in `clouds.{}.token_authority`: {e}", bot.cloud))?
        }
        None => Authority::for_cloud(bot.cloud),
    };
    let client = Arc::new(TokenClient::new(TokenClientSettings::default())?);
    let (what, scope, token) = match kind {
        TokenKind::Bot => {
            let provider = BotTokenProvider::from_config(bot, Some(&authority), client)
                .await
                .map_err(|e| anyhow::anyhow!("configuration error in `bots[{index}]`: {e}"))?;
            let token = provider.bot_token().await.with_context(|| format!("bot {}: getting its Bot Connector token", bot.app_id))?;
            ("the bot's Bot Connector token (client credentials)", provider.request().scope.clone(), token)
        }
        TokenKind::Graph | TokenKind::Agentic => {
            let Some(tokens) =
                AgentUserTokens::for_bot(cfg, index, client).await.map_err(|e| anyhow::anyhow!("configuration error in {e}"))?
            else {
                anyhow::bail!(
                    "`bots[{index}].agent_user` is not set: add a [bots.agent_user] table (blueprint_app_id, agent_identity_id, agent_user_id, tenant_id, certificate, key; see docs/configuration.md)"
                );
            };
            let (scope, what) = match kind {
                TokenKind::Graph => (tokens.graph_scope().to_owned(), "the Agent User's Graph token (three hops)"),
                _ => (tokens.agentic_scope().to_owned(), "the Agent User's Bot Connector token (three hops)"),
            };
            let token = tokens.token(&scope).await.with_context(|| format!("bot {}: Agent User token for {scope}", bot.app_id))?;
            (what, scope, token)
        }
    };
    Ok(describe(&bot.app_id, what, &scope, &token, show_token, SystemTime::now()))
}

/// The report: what was asked for, the selected claims, and the token only with `show_token`.
#[must_use]
pub fn describe(app_id: &str, what: &str, scope: &str, token: &AccessToken, show_token: bool, now: SystemTime) -> String {
    let mut out = format!("{what} for bot {app_id}\n  scope: {scope}\n");
    match decode_claims(token.value.expose_secret()) {
        Some(claims) => {
            for (name, label) in SHOWN {
                let Some(v) = claims.get(name) else { continue };
                let shown = match (name, v) {
                    ("iat" | "exp" | "nbf", Value::Number(n)) => n.as_u64().map_or_else(|| n.to_string(), |s| time(s, now)),
                    (_, Value::String(s)) => s.clone(),
                    (_, Value::Array(a)) => {
                        a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect::<Vec<_>>().join(" ")
                    }
                    (_, other) => other.to_string(),
                };
                out.push_str(&format!("  {name} ({label}): {shown}\n"));
            }
        }
        None => out.push_str("  (the token is not a JWT: no claims to show)\n"),
    }
    if show_token {
        out.push_str(&format!("  token: {}\n", token.value.expose_secret()));
    } else {
        out.push_str("  token: <redacted> (pass --show-token to print it; it is a credential)\n");
    }
    out
}

/// The payload of a JWT, decoded without verification.
fn decode_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A Unix time as an HTTP date, and how far from `now`.
fn time(secs: u64, now: SystemTime) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let rel = match t.duration_since(now) {
        Ok(d) => format!("in {} min", d.as_secs() / 60),
        Err(e) => format!("{} min ago", e.duration().as_secs() / 60),
    };
    format!("{} ({rel})", httpdate::fmt_http_date(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use serde_json::json;

    fn jwt(claims: &Value) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#), URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn claims_are_listed_and_the_token_redacted() {
        let now = SystemTime::now();
        let exp = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let raw = jwt(
            &json!({"aud": "https://graph.microsoft.com", "oid": "o-1", "scp": "Chat.ReadWrite User.Read", "roles": ["A", "B"], "exp": exp, "secret_claim": "zzz"}),
        );
        let t = AccessToken { value: SecretString::from(raw.clone()), expires_at: now };
        let out = describe("app", "the Graph token", "https://graph.microsoft.com/.default", &t, false, now);
        assert!(out.contains("aud (audience): https://graph.microsoft.com"), "{out}");
        assert!(out.contains("scp (delegated scopes): Chat.ReadWrite User.Read"), "{out}");
        assert!(out.contains("roles (app roles): A B"), "{out}");
        assert!(out.contains("(in 59 min)") || out.contains("(in 60 min)"), "{out}");
        assert!(!out.contains(&raw) && !out.contains("zzz") && out.contains("<redacted>"), "{out}");
        let shown = describe("app", "x", "s", &t, true, now);
        assert!(shown.contains(&raw));
    }

    #[test]
    fn opaque_tokens_have_no_claims() {
        let t = AccessToken { value: SecretString::from("opaque-token"), expires_at: SystemTime::now() };
        let out = describe("app", "x", "s", &t, false, SystemTime::now());
        assert!(out.contains("not a JWT") && !out.contains("opaque-token"), "{out}");
        assert!(decode_claims("a.!!!.c").is_none());
        assert!(decode_claims("a.b").is_none());
    }
}
