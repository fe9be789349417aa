//! The welcome message: sent once per conversation when the app is installed there (a 1:1 chat, a team,
//! a group chat), from `installationUpdate` `add` or `conversationUpdate` with the bot among
//! `membersAdded` (Teams sends both for one installation; a redelivery is another of them).
//!
//! "Once" is kept in the store (`welcomes`, [`Store::record_welcome`]), recorded before the message is
//! queued with one conditional insert: a second installation activity, a redelivery or another replica finds
//! it recorded and sends nothing. The message goes through the outbox (retried, audited as `send` by
//! `agentgate:welcome`).

use std::collections::HashMap;

use serde_json::Value;

use crate::config::BotConfig;
use crate::store::{NewOutbound, OutboundOp, Store, now_ms};

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
    // Teams sends the two installation activities at once, maybe to two replicas: the insert-if-absent
    // lets exactly one of them through.
    let now = now_ms();
    match store.record_welcome(bot_app_id, conversation_id, now).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(conversation_id, "already welcomed");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the welcome; none sent");
            return None;
        }
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
        assert!(store.welcomed_at("app-1", "19:c@thread.v2").await.unwrap().is_some());
        assert_eq!(store.provisioning("welcome:app-1:19:c@thread.v2").await.unwrap(), None, "not a provisioning record");
    }

    /// The two installation activities at once on two gateways sharing the store (two handles on one file, no
    /// lock in common but the store's): one welcome.
    #[tokio::test]
    async fn two_gateways_at_once_send_one_welcome() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
            std::sync::Arc::new(
                crate::store::sqlite::SqliteStore::open(&dir.path().join("w.db"), crate::config::Synchronous::Normal, 64, metrics)
                    .expect("store"),
            )
        };
        let (one, two) = (open(), open());
        let activity = serde_json::json!({"type": "message", "text": "Hi"});
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = std::sync::Arc::clone(if i % 2 == 0 { &one } else { &two });
            let activity = activity.clone();
            tasks.push(tokio::spawn(async move {
                welcome(store.as_ref(), &activity, "app-1", "t", "a:1x", "https://smba.trafficmanager.net/amer/").await
            }));
        }
        let mut sent = 0;
        for t in tasks {
            sent += usize::from(t.await.unwrap().is_some());
        }
        assert_eq!(sent, 1);
        assert_eq!(one.outbox(None, 10).await.unwrap().len(), 1);
    }
}
