//! Message bodies and helpers shared by every way of sending (the command line, MCP tools).

use serde_json::{Value, json};

use crate::config::{BotConfig, Config};
use crate::ids::Cloud;
use crate::store::Store;

/// Where proactive messages go when the bot has no reference in the tenant yet.
pub fn default_proactive_service_url(cloud: Cloud) -> Option<&'static str> {
    match cloud {
        Cloud::Public => Some("https://smba.trafficmanager.net/teams/"),
        Cloud::Usgov => Some("https://smba.infra.gov.teams.microsoft.us/teams"),
        Cloud::China => None,
    }
}

/// A message activity with text and/or an Adaptive Card.
pub fn message(text: Option<&str>, card: Option<Value>) -> Value {
    let mut a = json!({"type": "message"});
    if let Some(t) = text {
        a["text"] = json!(t);
    }
    if let Some(c) = card {
        a["attachments"] = json!([{"contentType": "application/vnd.microsoft.card.adaptive", "content": c}]);
    }
    a
}

/// The configured bot with app id `wanted`, or the only one.
pub(crate) fn pick_bot<'a>(cfg: &'a Config, wanted: Option<&str>) -> anyhow::Result<&'a BotConfig> {
    match wanted {
        Some(id) => cfg
            .bots
            .iter()
            .find(|b| b.app_id.eq_ignore_ascii_case(id))
            .ok_or_else(|| anyhow::anyhow!("no configured bot has app id {id}; see `agentgate check`")),
        None if cfg.bots.len() == 1 => Ok(&cfg.bots[0]),
        None if cfg.bots.is_empty() => anyhow::bail!("no bot is configured: pass the gateway's configuration with --config FILE"),
        None => anyhow::bail!("several bots are configured: say which with --bot APP_ID"),
    }
}

/// Every member of a conversation the bot has seen, paged through the Connector as whoever acts there
/// (the Agent User in an agentic conversation, with `chains`; reads are not side effects: no outbox, no
/// audit).
pub async fn list_members(
    cfg: &Config,
    store: &dyn Store,
    chains: &super::acting::AgenticChains,
    conversation: &str,
    bot: Option<&str>,
    dev: bool,
) -> anyhow::Result<Vec<Value>> {
    let candidates: Vec<&BotConfig> = match bot {
        Some(_) => vec![pick_bot(cfg, bot)?],
        None => cfg.bots.iter().collect(),
    };
    let mut found = None;
    for b in candidates {
        if let Some(r) = store.conversation_ref(&b.app_id, conversation).await? {
            found = Some((b, r));
            break;
        }
    }
    let (bot, r) = found.ok_or_else(|| anyhow::anyhow!("no configured bot has seen conversation {conversation}"))?;
    let tokens = super::tokens::bot_tokens(cfg, dev).await?;
    let who = super::acting::acting(store, &tokens, chains, &bot.app_id, conversation)
        .await
        .map_err(|f| anyhow::anyhow!("no token: {}", f.message))?;
    let client = super::ConnectorClient::new(
        crate::service_url::ConnectorPolicy::from_config(&cfg.clouds, dev),
        std::time::Duration::from_secs(cfg.outbound.request_timeout_secs),
    )?;
    let ep = super::Endpoint { cloud: bot.cloud, service_url: &r.service_url };
    Ok(super::outbox::list_members(&client, &ep, &who, conversation).await?)
}

/// The text cut into chunks of about three words, keeping every character (the chunks concatenate to
/// the input).
pub fn stream_chunks(text: &str) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for (i, word) in text.split_inclusive(char::is_whitespace).enumerate() {
        current.push_str(word);
        if i % 3 == 2 {
            chunks.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_chunks_keep_every_character() {
        let text = "Hello there, this is a reply 🙂 with 漢字 and\nnew lines.  ";
        let chunks = stream_chunks(text);
        assert!(chunks.len() > 2);
        assert_eq!(chunks.concat(), text);
    }
}
