//! `agentgate send`: a request from the command line validated against the configuration and the
//! stored references, then queued in the outbox.

use serde_json::Value;

use crate::cli::SendArgs;
use crate::config::{BotConfig, Config};
use crate::connector::send::{default_proactive_service_url, message, pick_bot, stream_chunks};
use crate::store::{NewOutbound, OutboundOp, Store, now_ms};

/// Validate the request against the configuration and the stored references, then queue it.
pub async fn queue_from_cli(cfg: &Config, store: &dyn Store, args: &SendArgs) -> anyhow::Result<i64> {
    let bot = match (args.bot.as_deref(), &args.conversation, &args.tenant) {
        (Some(_), _, _) => pick_bot(cfg, args.bot.as_deref())?,
        // The bot that has seen the conversation.
        (None, Some(conv), _) if cfg.bots.len() > 1 => {
            let mut seen = Vec::new();
            for b in &cfg.bots {
                if store.conversation_ref(&b.app_id, conv).await?.is_some() {
                    seen.push(b);
                }
            }
            match seen.as_slice() {
                [one] => *one,
                [] => {
                    anyhow::bail!("no configured bot has seen conversation {conv}: a bot can only write where it was messaged or installed")
                }
                _ => anyhow::bail!("several bots have seen conversation {conv}: say which with --bot APP_ID"),
            }
        }
        // The bot that serves the tenant.
        (None, None, Some(tenant)) if cfg.bots.len() > 1 => {
            let serving: Vec<_> = cfg.bots.iter().filter(|b| b.allowed_tenants.iter().any(|t| t.eq_ignore_ascii_case(tenant))).collect();
            match serving.as_slice() {
                [one] => *one,
                [] => anyhow::bail!("tenant {tenant} is not in any bot's allowed_tenants"),
                _ => anyhow::bail!("several bots serve tenant {tenant}: say which with --bot APP_ID"),
            }
        }
        _ => pick_bot(cfg, None)?,
    };
    let card = match &args.card {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the card {}: {e}", path.display()))?;
            let card: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the card {} is not JSON: {e}", path.display()))?;
            crate::teams::validate_card(&card)
                .map_err(|e| anyhow::anyhow!("the card {} is not a valid Adaptive Card: {e}", path.display()))?;
            if crate::bridge::approval::uses_reserved_verb(&card) {
                anyhow::bail!("the card {}: {}", path.display(), crate::bridge::approval::RESERVED_VERB_ERROR);
            }
            Some(card)
        }
        None => None,
    };
    if let Some(card) = &card {
        crate::teams::check_activity_size(&message(None, Some(card.clone())))
            .map_err(|e| anyhow::anyhow!("the card is too large for Teams: {e}"))?;
    }
    let file_text = match &args.text_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the text {}: {e}", path.display()))?),
        None => None,
    };
    let text = args.text.as_deref().or(file_text.as_deref());
    // Long text goes out as several messages, cut by its UTF-16 size without losing a character.
    let mut parts = match text {
        Some(t) if crate::teams::utf16_len(t) > crate::teams::MAX_TEXT_UTF16 && args.update.is_none() => {
            crate::teams::split_text(t, crate::teams::MAX_TEXT_UTF16)
        }
        _ => Vec::new(),
    };
    let activity = if parts.is_empty() { message(text, card) } else { message(Some(&parts.remove(0)), card) };
    let (conversation_id, tenant_id, service_url, op) = match (&args.conversation, &args.user) {
        (Some(conv), _) => {
            let r = store.conversation_ref(&bot.app_id, conv).await?.ok_or_else(|| {
                anyhow::anyhow!(
                    "bot {} has never seen conversation {conv}: it can only write where it was messaged or installed",
                    bot.app_id
                )
            })?;
            if !r.usable {
                anyhow::bail!("bot {} was removed from conversation {conv}; reinstall the app there first", bot.app_id);
            }
            if args.typing && r.conversation_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("channel")) {
                anyhow::bail!("Teams shows no typing indicator in channels; send one in a 1:1 or group chat");
            }
            let activity = if args.typing { crate::teams::typing_activity() } else { activity };
            if args.stream {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| anyhow::anyhow!("reading the reply from standard input: {e}"))?;
                if text.trim().is_empty() {
                    anyhow::bail!("--stream reads the reply from standard input, and it was empty");
                }
                let op = OutboundOp::Stream {
                    chunks: stream_chunks(&text),
                    interval_ms: args.stream_interval_ms,
                    conversation_type: r.conversation_type.clone(),
                };
                return enqueue(store, bot, conv.clone(), r.tenant_id, r.service_url, op).await;
            }
            let op = match (&args.reply_to, &args.update, &args.delete) {
                (Some(reply_to), _, _) => OutboundOp::Reply { reply_to: reply_to.clone(), activity },
                (_, Some(id), _) => OutboundOp::Update { activity_id: id.clone(), activity },
                (_, _, Some(id)) => OutboundOp::Delete { activity_id: id.clone() },
                _ => OutboundOp::Send { activity },
            };
            if !parts.is_empty() {
                // Queue every part in order (one conversation's entries are delivered in order).
                let first = enqueue(store, bot, conv.clone(), r.tenant_id.clone(), r.service_url.clone(), op).await?;
                for part in parts {
                    let next = OutboundOp::Send { activity: message(Some(&part), None) };
                    enqueue(store, bot, conv.clone(), r.tenant_id.clone(), r.service_url.clone(), next).await?;
                }
                return Ok(first);
            }
            (conv.clone(), r.tenant_id, r.service_url, op)
        }
        (None, Some(user)) => {
            let tenant = args.tenant.clone().unwrap_or_default();
            if !bot.allowed_tenants.iter().any(|t| t.eq_ignore_ascii_case(&tenant)) {
                anyhow::bail!("tenant {tenant} is not in bot {}'s allowed_tenants", bot.app_id);
            }
            let service_url = match store.tenant_service_url(&bot.app_id, &tenant).await? {
                Some(u) => u,
                None => default_proactive_service_url(bot.cloud)
                    .ok_or_else(|| {
                        anyhow::anyhow!("no known service URL for tenant {tenant} in cloud {}: message the bot once first", bot.cloud)
                    })?
                    .to_owned(),
            };
            (format!("user:{user}"), tenant, service_url, OutboundOp::CreatePersonal { user_id: user.clone(), activity })
        }
        (None, None) => anyhow::bail!("say where: --conversation ID or --user ID --tenant ID"),
    };
    enqueue(store, bot, conversation_id, tenant_id, service_url, op).await
}

async fn enqueue(
    store: &dyn Store,
    bot: &BotConfig,
    conversation_id: String,
    tenant_id: String,
    service_url: String,
    op: OutboundOp,
) -> anyhow::Result<i64> {
    let id = store
        .enqueue_outbound(NewOutbound {
            bot_app_id: bot.app_id.clone(),
            tenant_id,
            conversation_id,
            service_url,
            op,
            requested_by: "cli".into(),
            now_ms: now_ms(),
        })
        .await?;
    Ok(id)
}
