//! `agentgate send` and `agentgate members`: the command line's side of the bridge. The bot, the
//! conversation and the message bodies are decided by the same bridge functions the MCP tools call
//! ([`crate::bridge::route`], [`crate::bridge::deliver`]); this file reads the flags and files, and builds a
//! [`Hub`] for one command (no outbound worker runs here: the gateway's worker delivers what is queued).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::bridge::deliver::{self, Change};
use crate::bridge::route::Personal;
use crate::bridge::{Approvals, Caller, Hub, Scope};
use crate::cli::SendArgs;
use crate::config::Config;
use crate::connector::ConnectorClient;
use crate::connector::outbox::{BotTokens, Outbound, RetryPolicy};
use crate::connector::send::stream_chunks;
use crate::connector::throttle::Throttle;
use crate::connector::tokens::ConfiguredTokens;
use crate::service_url::ConnectorPolicy;
use crate::store::{OutboundOp, Store};

/// How the audit log and the outbox name a request from the command line.
const REQUESTER: &str = "cli";

/// Whether a command acts in Teams (`members`: the bots' tokens and Agent Users are loaded) or only queues
/// (`send`: no credential is loaded; the gateway's worker uses its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Acting {
    QueueOnly,
    Live { dev: bool },
}

/// A hub over the configured store for one command.
pub(super) async fn command_hub(cfg: Config, store: Arc<dyn Store>, acting: Acting) -> anyhow::Result<Hub> {
    let dev = matches!(acting, Acting::Live { dev: true });
    let (tokens, agents): (Arc<dyn BotTokens>, _) = match acting {
        Acting::QueueOnly => (Arc::new(ConfiguredTokens::new(HashMap::new(), false)), HashMap::new()),
        Acting::Live { dev } => {
            (Arc::new(crate::connector::tokens::bot_tokens(&cfg, dev).await?), crate::bridge::agent::build(&cfg).await?)
        }
    };
    let connector =
        ConnectorClient::new(ConnectorPolicy::from_config(&cfg.clouds, dev), Duration::from_secs(cfg.outbound.request_timeout_secs))?;
    let clouds = cfg.bots.iter().map(|b| (b.app_id.clone(), b.cloud)).collect();
    let chains = crate::bridge::agent::agentic_chains(&cfg, &agents);
    let outbound =
        Outbound::new(Arc::clone(&store), connector, tokens, clouds, Throttle::new(), RetryPolicy::default(), Default::default())
            .with_agentic(chains);
    let (_, inbox) = watch::channel(0);
    Ok(Hub::new(Arc::new(cfg), store, Arc::new(outbound), inbox, Arc::new(Approvals::default()), dev, agents))
}

/// Validate the request against the configuration and the stored references, then queue it; returns
/// the outbox id to follow (the last entry when the text was split).
pub(super) async fn queue_from_cli(hub: &Hub, args: &SendArgs) -> anyhow::Result<i64> {
    let scope = Scope::command_line();
    let caller = Caller::new(&scope, REQUESTER);
    let card = match &args.card {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the card {}: {e}", path.display()))?;
            let card: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the card {} is not JSON: {e}", path.display()))?;
            // Checked before anything else, as the bridge checks it again where it is used.
            deliver::card_message(None, card.clone()).map_err(|e| anyhow::anyhow!("the card {}: {e}", path.display()))?;
            Some(card)
        }
        None => None,
    };
    let file_text = match &args.text_file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the text {}: {e}", path.display()))?),
        None => None,
    };
    let text = args.text.clone().or(file_text);
    let bot = args.bot.as_deref();
    let Some(conversation) = &args.conversation else {
        let (Some(user), Some(tenant)) = (&args.user, &args.tenant) else {
            anyhow::bail!("say where: --conversation ID or --user ID --tenant ID");
        };
        return queue_personal(hub, caller, user, tenant, bot, text.as_deref(), card).await;
    };
    let change = match (&args.delete, &args.update, &card) {
        _ if args.typing => Some(Change::Typing),
        (Some(id), _, _) => Some(Change::Delete { message_id: id.clone() }),
        (None, Some(id), Some(c)) => Some(Change::UpdateCard { message_id: id.clone(), card: c.clone(), text: text.clone() }),
        (None, Some(id), None) => Some(Change::UpdateText { message_id: id.clone(), text: text.clone().unwrap_or_default() }),
        (None, None, _) => None,
    };
    if let Some(change) = change {
        return Ok(hub.queue_change(caller, conversation, bot, change).await?.outbox_id);
    }
    let quote = args.quote.as_deref().map(deliver::quote_id).transpose()?;
    if quote.is_some() && text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        anyhow::bail!("--quote needs the text that answers the quoted message (--text or --text-file)");
    }
    let (bot, r) = match &args.thread {
        Some(root) => {
            let (b, r) = hub.thread_conversation(&scope, conversation, bot, root).await?;
            if !r.usable {
                anyhow::bail!("bot {} was removed from conversation {conversation}; reinstall the app there first", b.app_id);
            }
            (b, r)
        }
        None => hub.conversation(&scope, conversation, bot).await?,
    };
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
        return Ok(hub.enqueue(REQUESTER, &bot, &r, op).await?);
    }
    // Long text goes out as several messages, cut by its UTF-16 size without losing a character; one
    // conversation's entries are delivered in order.
    let text = text.map(|t| deliver::quoted_text(&t, quote.as_ref()));
    let mut messages = deliver::messages(text.as_deref(), card)?;
    if let Some(q) = &quote {
        deliver::add_quote(&mut messages, q);
    }
    let ai = ai_marks(args)?;
    if !ai.is_empty() || bot.feedback {
        deliver::mark_messages(&mut messages, &ai, bot.feedback)?;
    }
    Ok(hub.enqueue_messages(REQUESTER, &bot, &r, messages, args.reply_to.as_deref()).await?)
}

/// `--ai-generated` and `--citation` as the bridge takes them.
fn ai_marks(args: &SendArgs) -> anyhow::Result<crate::teams::ai::AiMarks> {
    let mut citations = Vec::with_capacity(args.citation.len());
    for raw in &args.citation {
        let v: Value = serde_json::from_str(raw).map_err(|e| anyhow::anyhow!("--citation is not a JSON object: {e}"))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        citations.push(crate::teams::ai::Citation {
            position: v.get("position").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            name: text("name").unwrap_or_default(),
            abstract_text: text("abstract").unwrap_or_default(),
            url: text("url"),
            icon: text("icon"),
            keywords: v
                .get("keywords")
                .and_then(Value::as_array)
                .map(|ks| ks.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
        });
    }
    Ok(crate::teams::ai::AiMarks { ai_generated: args.ai_generated, citations })
}

/// A proactive 1:1 message: in the bot's chat with the person, or a new one.
async fn queue_personal(
    hub: &Hub,
    caller: Caller<'_>,
    user: &str,
    tenant: &str,
    bot: Option<&str>,
    text: Option<&str>,
    card: Option<Value>,
) -> anyhow::Result<i64> {
    let activity = deliver::person_activity(text, card.as_ref())?;
    let target = hub.person_target(caller.scope, user, bot, Some(tenant)).await?;
    let (r, op) = match hub.personal(&target, user).await? {
        Personal::Chat(r) => (r, OutboundOp::Send { activity }),
        Personal::Create(r) => (r, OutboundOp::CreatePersonal { user_id: user.to_owned(), activity }),
        Personal::Unknown(why) => anyhow::bail!("{why}: message the bot once from that tenant first"),
    };
    Ok(hub.enqueue(caller.requester, target.bot, &r, op).await?)
}

/// Every member of a conversation a configured bot has seen, paged through the Connector as whoever acts
/// there (the Agent User in an agentic conversation). Reads are not side effects: no outbox, no audit.
pub(super) async fn members(hub: &Hub, conversation: &str, bot: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let (_, r) = hub.conversation_any(&Scope::command_line(), conversation, bot).await?;
    hub.outbound.list_members(&r).await.map_err(|e| anyhow::anyhow!("{e}"))
}
