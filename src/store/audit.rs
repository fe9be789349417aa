//! The audit log as a hash chain, independent of the database that keeps it.
//!
//! A backend stores rows (`id`, the event's fields, `prev_hash`, `hash`) and answers two questions: the rows
//! in id order, and the highest id it ever issued (SQLite: `sqlite_sequence`). Everything else lives here:
//! the event type, the bytes that are hashed, how an event is sealed onto the chain, and verification.
//!
//! Rules a backend must keep (the verifier checks them):
//! - ids are consecutive from 1: an event's id is the highest id ever issued + 1 ([`seal`]), taken inside the
//!   same exclusive transaction that reads the previous event, so a rolled-back append issues no id;
//! - the highest issued id survives the deletion of rows (deleting the newest events is then visible).
//!
//! Hash formats, told apart by their prefix:
//! - `hmac-sha256:<hex>`: HMAC-SHA256 with `store.audit_key` over [`canonical_bytes`] (id included);
//! - `sha256:<hex>`: SHA-256 over the same bytes, when no key is configured;
//! - plain `<hex>`: the first release's rule (SHA-256 over `prev_hash`, a newline and the event's JSON, id
//!   not included). Such events are accepted only as the oldest part of the chain, before the first event
//!   in one of the formats above (the migration point).

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secrets::SecretRef;

/// An audit event: who asked, which identity acted, on what, with which outcome.
///
/// The field order is part of the first release's hash rule (the event's JSON): do not reorder. `identity`
/// and `target` are typed; they are stored and hashed as their text ([`Identity`], [`Target`]'s `Display`),
/// exactly the strings earlier releases wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at_ms: i64,
    /// Who asked: `cli`, `mcp:<host>`, `agentgate` (the gateway itself).
    pub actor: String,
    /// Who acted.
    pub identity: Identity,
    /// What was done (an outbox `op`, a Graph action…).
    pub action: String,
    /// On what.
    pub target: Target,
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
}

/// Who acted: `bot:<app id>` or `agent_user:<id>`. Text in another form (written by hand, or by a future
/// release) is kept as it is ([`Identity::Other`]), so that every stored event reads back to the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Identity {
    /// A bot acting as itself (its app id).
    Bot(String),
    /// The Agent User (its object id or user principal name).
    AgentUser(String),
    /// Any other text, as stored.
    Other(String),
}

impl Identity {
    pub fn bot(app_id: impl fmt::Display) -> Self {
        Self::Bot(app_id.to_string())
    }

    pub fn agent_user(id: impl fmt::Display) -> Self {
        Self::AgentUser(id.to_string())
    }

    /// The bot's app id when a bot acted.
    pub fn bot_app_id(&self) -> Option<&str> {
        match self {
            Self::Bot(b) => Some(b),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bot(b) => write!(f, "bot:{b}"),
            Self::AgentUser(u) => write!(f, "agent_user:{u}"),
            Self::Other(t) => f.write_str(t),
        }
    }
}

impl From<String> for Identity {
    fn from(text: String) -> Self {
        if let Some(b) = text.strip_prefix("bot:") {
            Self::Bot(b.to_owned())
        } else if let Some(u) = text.strip_prefix("agent_user:") {
            Self::AgentUser(u.to_owned())
        } else {
            Self::Other(text)
        }
    }
}

impl From<Identity> for String {
    fn from(i: Identity) -> Self {
        i.to_string()
    }
}

/// On what an identity acted. Stored as text: `tenant:<tenant> conversation:<conversation>` for a Connector
/// conversation, `tenant:<tenant> bot:<app id> <what>` for something reached through Graph. Text that does not
/// read back to the same bytes in one of those forms is kept as it is ([`Target::Other`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Target {
    /// A conversation reached through the Bot Connector.
    Conversation { tenant: String, conversation: String },
    /// A chat, message or person reached through Microsoft Graph as the bot's Agent User.
    Graph { tenant: String, bot: String, what: String },
    /// Any other text, as stored.
    Other(String),
}

impl Target {
    pub fn conversation(tenant: impl fmt::Display, conversation: impl fmt::Display) -> Self {
        Self::Conversation { tenant: tenant.to_string(), conversation: conversation.to_string() }
    }

    pub fn graph(tenant: impl fmt::Display, bot: impl fmt::Display, what: impl Into<String>) -> Self {
        Self::Graph { tenant: tenant.to_string(), bot: bot.to_string(), what: what.into() }
    }

    /// The tenant the target is in, when it names one.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Conversation { tenant, .. } | Self::Graph { tenant, .. } => Some(tenant),
            Self::Other(_) => None,
        }
    }

    /// The bot whose Agent User acted, for a Graph target.
    pub fn bot(&self) -> Option<&str> {
        match self {
            Self::Graph { bot, .. } => Some(bot),
            _ => None,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("tenant:")?;
        let (tenant, rest) = rest.split_once(' ')?;
        if let Some(conversation) = rest.strip_prefix("conversation:") {
            return Some(Self::conversation(tenant, conversation));
        }
        let rest = rest.strip_prefix("bot:")?;
        let (bot, what) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Self::graph(tenant, bot, what))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conversation { tenant, conversation } => write!(f, "tenant:{tenant} conversation:{conversation}"),
            Self::Graph { tenant, bot, what } if what.is_empty() => write!(f, "tenant:{tenant} bot:{bot}"),
            Self::Graph { tenant, bot, what } => write!(f, "tenant:{tenant} bot:{bot} {what}"),
            Self::Other(t) => f.write_str(t),
        }
    }
}

impl From<String> for Target {
    /// Typed when the text reads back to the same bytes; [`Target::Other`] otherwise.
    fn from(text: String) -> Self {
        match Self::parse(&text) {
            Some(t) if t.to_string() == text => t,
            _ => Self::Other(text),
        }
    }
}

impl From<Target> for String {
    fn from(t: Target) -> Self {
        t.to_string()
    }
}

impl AuditEvent {
    /// The one constructor: an event without detail (add one with [`AuditEvent::with_detail`]).
    pub fn new(
        at_ms: i64,
        actor: impl Into<String>,
        identity: Identity,
        action: impl Into<String>,
        target: Target,
        outcome: impl Into<String>,
    ) -> Self {
        Self { at_ms, actor: actor.into(), identity, action: action.into(), target, outcome: outcome.into(), detail: String::new() }
    }

    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A stored audit event with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
    pub prev_hash: String,
    pub hash: String,
}

const KEYED: &str = "hmac-sha256:";
const UNKEYED: &str = "sha256:";
/// Shortest accepted key (bytes of the secret as configured).
const MIN_KEY_BYTES: usize = 16;

/// The HMAC key of the chain (`store.audit_key`). Never printed.
pub struct AuditKey(SecretBox<[u8]>);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// Why `store.audit_key` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuditKeyError {
    #[error("store.audit_key: {0}")]
    Load(#[from] crate::secrets::SecretError),
    #[error("store.audit_key: the key is shorter than {MIN_KEY_BYTES} bytes; use a random one, e.g. `openssl rand -hex 32`")]
    TooShort,
}

impl AuditKey {
    pub fn new(bytes: &[u8]) -> Result<Self, AuditKeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(AuditKeyError::TooShort);
        }
        Ok(Self(SecretBox::new(bytes.into())))
    }

    /// Load the configured key, if there is one.
    pub async fn load(reference: Option<&SecretRef>) -> Result<Option<Self>, AuditKeyError> {
        let Some(reference) = reference else { return Ok(None) };
        let secret = reference.load().await?;
        Self::new(secret.expose_secret().as_bytes()).map(Some)
    }

    fn mac(&self, bytes: &[u8]) -> String {
        // An HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret()).unwrap_or_else(|_| unreachable!());
        mac.update(bytes);
        format!("{KEYED}{}", hex(&mac.finalize().into_bytes()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes an event's hash covers: a version tag, then each field as a 4-byte big-endian length and its
/// UTF-8 bytes, in a fixed order: id, prev_hash, at_ms, actor, identity, action, target, outcome, detail.
/// Lengths make the encoding unambiguous (no field can spill into the next).
pub fn canonical_bytes(id: i64, prev_hash: &str, e: &AuditEvent) -> Vec<u8> {
    let (id, at) = (id.to_string(), e.at_ms.to_string());
    let (identity, target) = (e.identity.to_string(), e.target.to_string());
    let fields: [&str; 9] = [&id, prev_hash, &at, &e.actor, &identity, &e.action, &target, &e.outcome, &e.detail];
    let mut out = Vec::with_capacity(64 + fields.iter().map(|f| f.len() + 4).sum::<usize>());
    out.extend_from_slice(b"agentgate-audit/2\n");
    for f in fields {
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// The hash of event `id` after `prev_hash`: keyed when a key is given.
pub fn link_hash(key: Option<&AuditKey>, id: i64, prev_hash: &str, e: &AuditEvent) -> String {
    let bytes = canonical_bytes(id, prev_hash, e);
    match key {
        Some(k) => k.mac(&bytes),
        None => format!("{UNKEYED}{}", hex(&Sha256::digest(&bytes))),
    }
}

/// The first release's rule: SHA-256 over the previous hash, a newline and the event's JSON.
pub fn legacy_hash(prev_hash: &str, e: &AuditEvent) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(e).unwrap_or_default());
    hex(&h.finalize())
}

/// Where a new event goes: its id, the hash it links to, its own hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub id: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// Seal `event` onto the chain whose newest stored event is `last` (id, hash) and whose highest issued id
/// is `highest_issued` (0 when none). Call inside the transaction that inserts the row.
pub fn seal(key: Option<&AuditKey>, highest_issued: i64, last: Option<(i64, &str)>, event: &AuditEvent) -> Sealed {
    let last_id = last.map_or(0, |(id, _)| id);
    let id = highest_issued.max(last_id) + 1;
    let prev_hash = last.map_or("", |(_, h)| h).to_owned();
    let hash = link_hash(key, id, &prev_hash, event);
    Sealed { id, prev_hash, hash }
}

/// A summary of the chain an operator can keep elsewhere: how many events, the newest id, its hash.
/// Written `count/last_id/hash` (`0/0/` for an empty chain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditHead {
    pub count: u64,
    pub last_id: i64,
    pub hash: String,
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.count, self.last_id, self.hash)
    }
}

/// Why a head could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not an audit head: expected COUNT/LAST_ID/HASH as printed by `agentgate audit --verify`")]
pub struct BadHead;

impl FromStr for AuditHead {
    type Err = BadHead;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, '/');
        let count = parts.next().and_then(|c| c.parse().ok()).ok_or(BadHead)?;
        let last_id = parts.next().and_then(|c| c.parse().ok()).ok_or(BadHead)?;
        let hash = parts.next().ok_or(BadHead)?.to_owned();
        let well_formed = hash.chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-');
        if !well_formed || (count == 0) != hash.is_empty() || (count == 0) != (last_id == 0) {
            return Err(BadHead);
        }
        Ok(Self { count, last_id, hash })
    }
}

/// A chain that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub head: AuditHead,
    /// The newest event checked with the first release's rule (the migration point), if any.
    pub legacy_through: Option<i64>,
    /// The first event signed with the key, if any.
    pub signed_from: Option<i64>,
}

/// Why the chain does not check out. Each names the first event found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("event #{id} does not match its hash or its link to the previous event: it or an earlier event was altered or removed")]
    Altered { id: i64 },
    #[error("event #{id} follows event #{after}: the events between were removed, or events were renumbered")]
    Gap { id: i64, after: i64 },
    #[error("events after #{last_id} were removed: the store issued ids up to #{highest}")]
    Truncated { last_id: i64, highest: i64 },
    #[error("event #{id} is not signed with store.audit_key (an earlier event is): it was rewritten without the key")]
    Unsigned { id: i64 },
    #[error("the newest events (from #{id}) are not signed with store.audit_key: they were written or rewritten without the key")]
    UnsignedTail { id: i64 },
    #[error("event #{id} is signed with store.audit_key, which is not configured here; verify with the key")]
    KeyNeeded { id: i64 },
    #[error("the expected head {expected} is not part of this chain")]
    HeadMismatch { expected: AuditHead },
}

/// Checks a chain event by event, oldest first; then [`ChainVerifier::finish`].
#[derive(Debug)]
pub struct ChainVerifier<'a> {
    key: Option<&'a AuditKey>,
    expect: Option<&'a AuditHead>,
    expect_seen: bool,
    prev_hash: String,
    prev_id: i64,
    count: u64,
    legacy_through: Option<i64>,
    in_legacy: bool,
    signed_from: Option<i64>,
    /// The first event of the newest run of events not signed with the key.
    unsigned_run: Option<i64>,
}

impl<'a> ChainVerifier<'a> {
    /// `expect`: a head recorded earlier, which must be part of the chain.
    pub fn new(key: Option<&'a AuditKey>, expect: Option<&'a AuditHead>) -> Self {
        Self {
            key,
            expect,
            expect_seen: false,
            prev_hash: String::new(),
            prev_id: 0,
            count: 0,
            legacy_through: None,
            in_legacy: true,
            signed_from: None,
            unsigned_run: None,
        }
    }

    /// The next event, in id order.
    pub fn push(&mut self, rec: &AuditRecord) -> Result<(), Broken> {
        let id = rec.id;
        if id != self.prev_id + 1 {
            return Err(Broken::Gap { id, after: self.prev_id });
        }
        if rec.prev_hash != self.prev_hash {
            return Err(Broken::Altered { id });
        }
        let expected = if rec.hash.starts_with(KEYED) {
            let Some(key) = self.key else { return Err(Broken::KeyNeeded { id }) };
            self.signed_from.get_or_insert(id);
            self.in_legacy = false;
            self.unsigned_run = None;
            link_hash(Some(key), id, &rec.prev_hash, &rec.event)
        } else if rec.hash.starts_with(UNKEYED) {
            if self.key.is_some() && self.signed_from.is_some() {
                return Err(Broken::Unsigned { id });
            }
            self.in_legacy = false;
            self.unsigned_run.get_or_insert(id);
            link_hash(None, id, &rec.prev_hash, &rec.event)
        } else if self.in_legacy {
            self.legacy_through = Some(id);
            self.unsigned_run.get_or_insert(id);
            legacy_hash(&rec.prev_hash, &rec.event)
        } else {
            // The first release's format after the migration point.
            return Err(Broken::Altered { id });
        };
        if expected != rec.hash {
            return Err(Broken::Altered { id });
        }
        self.count += 1;
        self.prev_id = id;
        self.prev_hash.clone_from(&rec.hash);
        if let Some(e) = self.expect.filter(|e| e.last_id == id) {
            if e.count != self.count || e.hash != rec.hash {
                return Err(Broken::HeadMismatch { expected: e.clone() });
            }
            self.expect_seen = true;
        }
        Ok(())
    }

    /// After the last event: `highest_issued` is the highest id the store ever issued (0 when none).
    pub fn finish(self, highest_issued: i64) -> Result<Verified, Broken> {
        if highest_issued > self.prev_id {
            return Err(Broken::Truncated { last_id: self.prev_id, highest: highest_issued });
        }
        if let Some(e) = self.expect.filter(|e| e.count > 0 && !self.expect_seen) {
            return Err(Broken::HeadMismatch { expected: e.clone() });
        }
        // With a key, the newest events must be signed: an unsigned tail was written, or rewritten, without
        // the key (an unsigned run before the first signed event is covered by that event's link).
        if let Some(id) = self.unsigned_run.filter(|_| self.key.is_some()) {
            return Err(Broken::UnsignedTail { id });
        }
        Ok(Verified {
            head: AuditHead { count: self.count, last_id: self.prev_id, hash: self.prev_hash },
            legacy_through: self.legacy_through,
            signed_from: self.signed_from,
        })
    }
}

/// Check a whole chain (oldest first) against the highest id the store issued.
pub fn verify<'r>(
    key: Option<&AuditKey>,
    expect: Option<&AuditHead>,
    records: impl IntoIterator<Item = &'r AuditRecord>,
    highest_issued: i64,
) -> Result<Verified, Broken> {
    let mut v = ChainVerifier::new(key, expect);
    for r in records {
        v.push(r)?;
    }
    v.finish(highest_issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_and_targets_are_typed_and_stored_as_the_same_text() {
        assert_eq!(Identity::bot("B1").to_string(), "bot:B1");
        assert_eq!(Identity::agent_user("u@x").to_string(), "agent_user:u@x");
        assert_eq!(Identity::from("bot:B1".to_owned()), Identity::Bot("B1".into()));
        assert_eq!(Identity::from("agent_user:u".to_owned()).bot_app_id(), None);
        assert_eq!(Target::conversation("t", "19:a;messageid=1").to_string(), "tenant:t conversation:19:a;messageid=1");
        assert_eq!(Target::graph("t", "b", "chat:c1").to_string(), "tenant:t bot:b chat:c1");
        let conv = Target::from("tenant:t conversation:a:b c".to_owned());
        assert_eq!((conv.tenant(), conv.bot()), (Some("t"), None));
        let graph = Target::from("tenant:T bot:B chat:1 member:m".to_owned());
        assert_eq!(graph, Target::graph("T", "B", "chat:1 member:m"));
        assert_eq!((graph.tenant(), graph.bot()), (Some("T"), Some("B")));
        // Whatever was stored reads back to the same bytes, typed or not.
        for text in [
            "tenant:t conversation:c",
            "tenant:t bot:b",
            "tenant:t bot:b x y",
            "x",
            "",
            "tenant:",
            "tenant:t  conversation:c",
            "tenant:t bot:b ",
        ] {
            assert_eq!(Target::from(text.to_owned()).to_string(), text, "{text:?}");
            assert_eq!(Identity::from(text.to_owned()).to_string(), text, "{text:?}");
        }
        assert!(matches!(Target::from("tenant:t bot:b ".to_owned()), Target::Other(_)), "a form that would not read back stays text");
        // The JSON (the first release's hash input) holds the same strings as before.
        let e = AuditEvent::new(1, "cli", Identity::bot("b"), "send", Target::conversation("t", "c"), "queued");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["identity"], "bot:b");
        assert_eq!(json["target"], "tenant:t conversation:c");
        assert_eq!(serde_json::from_value::<AuditEvent>(json).unwrap(), e);
    }

    fn event(n: i64) -> AuditEvent {
        AuditEvent::new(n, "mcp:test", Identity::bot("bot"), "send", Target::conversation("t", format!("c{n}")), "queued")
    }

    fn key(k: &str) -> AuditKey {
        AuditKey::new(k.as_bytes()).unwrap()
    }

    /// Build a chain the way a store does.
    fn chain(key: Option<&AuditKey>, n: i64) -> Vec<AuditRecord> {
        let mut out: Vec<AuditRecord> = Vec::new();
        for i in 1..=n {
            let e = event(i);
            let last = out.last().map(|r| (r.id, r.hash.as_str()));
            let s = seal(key, last.map_or(0, |l| l.0), last, &e);
            out.push(AuditRecord { id: s.id, event: e, prev_hash: s.prev_hash, hash: s.hash });
        }
        out
    }

    #[test]
    fn legacy_rule_matches_the_first_release() {
        // Computed by the first release's `audit_hash` for this event.
        let e = AuditEvent::new(5, "mcp:test", Identity::bot("bot"), "ack", Target::conversation("t", "c1"), "ok").with_detail("d \"q\" é");
        assert_eq!(legacy_hash("", &e), "88a9f03fb0e2a33a565fc8efeecacdd2aa1d3487e70bff80e7f895eac00a3440");
    }

    #[test]
    fn canonical_bytes_cover_the_id_and_separate_fields() {
        let e = event(1);
        assert_ne!(canonical_bytes(1, "", &e), canonical_bytes(2, "", &e));
        let a = AuditEvent::new(1, "ab", Identity::from("c".to_owned()), "x", Target::from("y".to_owned()), "z");
        let b = AuditEvent::new(1, "a", Identity::from("bc".to_owned()), "x", Target::from("y".to_owned()), "z");
        assert_ne!(canonical_bytes(1, "", &a), canonical_bytes(1, "", &b));
    }

    #[test]
    fn a_sealed_chain_verifies_and_reports_its_head() {
        let k = key("0123456789abcdef0123");
        for key in [None, Some(&k)] {
            let c = chain(key, 3);
            let v = verify(key, None, &c, 3).unwrap();
            assert_eq!(v.head, AuditHead { count: 3, last_id: 3, hash: c[2].hash.clone() });
            assert_eq!(v.signed_from, key.map(|_| 1));
            // The head round-trips through its text form and is accepted as expected.
            let head: AuditHead = v.head.to_string().parse().unwrap();
            assert!(verify(key, Some(&head), &c, 3).is_ok());
        }
        assert_eq!(verify(None, None, &[], 0).unwrap().head.to_string(), "0/0/");
    }

    #[test]
    fn keyed_chain_refuses_the_wrong_key_a_missing_key_and_an_unkeyed_rewrite() {
        let k = key("0123456789abcdef0123");
        let c = chain(Some(&k), 3);
        assert_eq!(verify(Some(&key("another key, also long")), None, &c, 3), Err(Broken::Altered { id: 1 }));
        assert_eq!(verify(None, None, &c, 3), Err(Broken::KeyNeeded { id: 1 }));
        // Rewrite from event 2 on with the unkeyed rule: event 2 follows a signed event.
        let mut forged = c.clone();
        for i in 1..3 {
            let prev = forged[i - 1].hash.clone();
            forged[i].prev_hash.clone_from(&prev);
            forged[i].hash = link_hash(None, forged[i].id, &prev, &forged[i].event);
        }
        assert_eq!(verify(Some(&k), None, &forged, 3), Err(Broken::Unsigned { id: 2 }));
        // Rewrite all of it: nothing is signed any more.
        let unkeyed = chain(None, 3);
        assert_eq!(verify(Some(&k), None, &unkeyed, 3), Err(Broken::UnsignedTail { id: 1 }));
    }

    #[test]
    fn a_wrong_expected_head_is_reported() {
        let c = chain(None, 3);
        let mut head = verify(None, None, &c, 3).unwrap().head;
        head.count = 2;
        assert!(matches!(verify(None, Some(&head), &c, 3), Err(Broken::HeadMismatch { .. })));
        // A head beyond the end (the chain was cut back).
        let later = AuditHead { count: 4, last_id: 4, hash: "sha256:00".into() };
        assert!(matches!(verify(None, Some(&later), &c, 3), Err(Broken::HeadMismatch { .. })));
        assert!("3/3".parse::<AuditHead>().is_err());
        assert!("0/0/sha256:00".parse::<AuditHead>().is_err());
    }

    #[test]
    fn legacy_events_only_before_the_migration_point() {
        let mut c: Vec<AuditRecord> = Vec::new();
        for i in 1..=2 {
            let prev = c.last().map_or(String::new(), |r| r.hash.clone());
            let e = event(i);
            c.push(AuditRecord { id: i, hash: legacy_hash(&prev, &e), event: e, prev_hash: prev });
        }
        let e = event(3);
        let s = seal(None, 2, Some((2, &c[1].hash)), &e);
        c.push(AuditRecord { id: s.id, event: e, prev_hash: s.prev_hash, hash: s.hash });
        let v = verify(None, None, &c, 3).unwrap();
        assert_eq!((v.legacy_through, v.head.count), (Some(2), 3));
        // A legacy-format event after the migration point is refused.
        let e = event(4);
        c.push(AuditRecord { id: 4, hash: legacy_hash(&c[2].hash, &e), prev_hash: c[2].hash.clone(), event: e });
        assert_eq!(verify(None, None, &c, 4), Err(Broken::Altered { id: 4 }));
    }

    #[test]
    fn the_key_is_never_printed() {
        let k = key("super-secret-audit-key");
        assert!(!format!("{k:?}").contains("super-secret"));
        assert!(matches!(AuditKey::new(b"short"), Err(AuditKeyError::TooShort)));
    }
}
