//! The welcome message: sent once per conversation when the app is installed there (a 1:1 chat, a team,
//! a group chat), from `installationUpdate` `add` or `conversationUpdate` with the bot among
//! `membersAdded` (Teams sends both for one installation; a redelivery is another of them).
//!
//! "Once" is kept in the store, as a provisioning record `welcome:{bot}:{conversation}` written before the
//! message is queued: a second installation activity, a redelivery or another replica finds it and sends
//! nothing (checked and recorded under one lock per process; two replicas racing may both send). The message goes through the outbox (retried, audited as `send` by `agentgate:welcome`).

use std::collections::HashMap;

use serde_json::Value;

use crate::config::BotConfig;
use crate::store::{NewOutbound, OutboundOp, ProvisioningRecord, Store, now_ms};

/// Who queues the welcome (the audit's actor).
pub(crate) const REQUESTER: &str = "agentgate:welcome";

/// Each bot's welcome activity, by lower-case app id: the text, the card, or both; bots without one are
/// absent. A card that is not a valid Adaptive Card (or a card file that cannot be read) is an error.
pub(crate) fn activities(bots: &[BotConfig]) -> anyhow::Result<HashMap<String, Value>> {
    let mut out = HashMap::new();
    for b in bots {
        let card = match &b.welcome_card {
            Some(path) => {
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("bot {}: cannot read welcome_card {}: {e}", b.app_id, path.display()))?;
                let card: Value = serde_json::from_str(&raw)
                    .map_err(|e| anyhow::anyhow!("bot {}: welcome_card {} is not JSON: {e}", b.app_id, path.display()))?;
                Some(card)
            }
            None => None,
        };
        let text = b.welcome_text.as_deref().filter(|t| !t.trim().is_empty());
        let activity = match (text, card) {
            (None, None) => continue,
            (text, Some(card)) => {
                super::deliver::card_message(text, card).map_err(|e| anyhow::anyhow!("bot {}: welcome_card: {e}", b.app_id))?
            }
            (Some(text), None) => {
                let mut parts =
                    super::deliver::text_messages(text, &[]).map_err(|e| anyhow::anyhow!("bot {}: welcome_text: {e}", b.app_id))?;
                if parts.len() != 1 {
                    anyhow::bail!("bot {}: welcome_text must fit in one Teams message", b.app_id);
                }
                parts.remove(0)
            }
        };
        out.insert(b.app_id.to_ascii_lowercase(), activity);
    }
    Ok(out)
}

/// The provisioning key that records the welcome of `conversation`.
fn key(bot_app_id: &str, conversation_id: &str) -> String {
    format!("welcome:{}:{conversation_id}", bot_app_id.to_ascii_lowercase())
}

/// Queue the welcome into a conversation the bot was just installed in, unless it was welcomed before.
/// Returns the outbox id when one was queued. Failures are logged: a welcome never refuses an activity.
pub(crate) async fn welcome(
    store: &dyn Store,
    activity: &Value,
    bot_app_id: &str,
    tenant_id: &str,
    conversation_id: &str,
    service_url: &str,
) -> Option<i64> {
    // Teams sends the two installation activities at once: checking and recording is one step in this
    // process (replicas may still race; then the conversation is welcomed twice at worst).
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = ONE_AT_A_TIME.lock().await;
    let key = key(bot_app_id, conversation_id);
    match store.provisioning(&key).await {
        Ok(Some(_)) => {
            tracing::debug!(conversation_id, "already welcomed");
            return None;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether the conversation was welcomed; no welcome sent");
            return None;
        }
    }
    let now = now_ms();
    if let Err(e) = store.save_provisioning(ProvisioningRecord { key, state: "sent".into(), updated_at_ms: now }).await {
        tracing::warn!(error = %e, "cannot record the welcome; none sent");
        return None;
    }
    let item = NewOutbound {
        bot_app_id: bot_app_id.into(),
        tenant_id: tenant_id.into(),
        conversation_id: conversation_id.into(),
        service_url: service_url.to_owned(),
        op: OutboundOp::Send { activity: activity.clone() },
        requested_by: REQUESTER.into(),
        now_ms: now,
    };
    match store.enqueue_outbound(item).await {
        Ok(id) => {
            tracing::info!(conversation_id, outbox_id = id, "welcome message queued");
            Some(id)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the welcome message could not be queued");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot(extra: &str) -> BotConfig {
        toml::from_str(&format!("app_id = \"APP-1\"\nallowed_tenants = [\"t\"]\n{extra}")).unwrap()
    }

    #[test]
    fn welcome_activities_are_checked_at_start() {
        let list = activities(&[bot("welcome_text = \"Hi, I am the team's agent.\""), bot("")]).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list["app-1"]["text"], "Hi, I am the team's agent.");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("card.json");
        std::fs::write(&bad, r#"{"type": "NotACard"}"#).unwrap();
        let err = activities(&[bot(&format!("welcome_card = {:?}", bad.display().to_string()))]).unwrap_err().to_string();
        assert!(err.contains("welcome_card"), "{err}");
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Hi"}]}"#).unwrap();
        let list = activities(&[bot(&format!("welcome_card = {:?}\nwelcome_text = \"Hi\"", good.display().to_string()))]).unwrap();
        assert_eq!(list["app-1"]["attachments"][0]["contentType"], "application/vnd.microsoft.card.adaptive");
    }

    #[tokio::test]
    async fn a_conversation_is_welcomed_once() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("w.db"), crate::config::Synchronous::Normal, 64, metrics)
            .expect("store");
        let activity = serde_json::json!({"type": "message", "text": "Hi"});
        let first = welcome(&store, &activity, "APP-1", "t", "19:c@thread.v2", "https://smba.trafficmanager.net/amer/").await;
        assert!(first.is_some());
        let again = welcome(&store, &activity, "app-1", "t", "19:c@thread.v2", "https://smba.trafficmanager.net/amer/").await;
        assert_eq!(again, None, "the second installation activity");
        assert!(welcome(&store, &activity, "app-1", "t", "19:other@thread.v2", "https://smba.trafficmanager.net/amer/").await.is_some());
        let queued = store.outbox(None, 10).await.unwrap();
        assert_eq!(queued.len(), 2);
    }
}
