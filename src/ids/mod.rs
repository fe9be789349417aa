//! The bottom of the module graph: typed identifiers and what is fixed per cloud. Imports nothing from
//! the crate.
//!
//! Microsoft treats GUID-shaped ids (app ids, tenant ids, AAD object ids) case-insensitively: they
//! arrive in either case from Teams, Entra and configuration files. Those newtypes compare, hash and
//! order by the ASCII-lowercase form and keep the text as received for display. Conversation ids are
//! opaque and compared exactly.

pub(crate) mod cloud;
pub(crate) mod file_url;
pub(crate) mod graph_url;

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use cloud::Cloud;

/// Whether `s` is a GUID in its usual hyphenated form (`8-4-4-4-12` hex digits, either case).
pub fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// An id Microsoft compares case-insensitively. Equality, hashing and ordering use the
/// ASCII-lowercase form; [`fmt::Display`] shows the text as received.
macro_rules! case_insensitive_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            text: Box<str>,
            key: Box<str>,
        }

        impl $name {
            /// Wrap `text` (surrounding whitespace removed).
            pub fn new(text: impl AsRef<str>) -> Self {
                let text = text.as_ref().trim();
                Self { text: text.into(), key: text.to_ascii_lowercase().into() }
            }

            /// The text as received.
            pub fn as_str(&self) -> &str {
                &self.text
            }

            /// Whether `other` names the same id (ASCII case ignored).
            pub fn matches(&self, other: &str) -> bool {
                self.key.eq_ignore_ascii_case(other.trim())
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.key == other.key
            }
        }

        impl Eq for $name {}

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.key.hash(state);
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.key.cmp(&other.key)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.matches(other)
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.matches(other)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            /// The text as received (compare with [`Self::matches`] or `==`, which ignore ASCII case).
            fn deref(&self) -> &str {
                &self.text
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.text)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.text)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::new)
            }
        }
    };
}

case_insensitive_id!(
    /// A bot's Microsoft App id (its Entra application's client id; an inbound token's `aud`).
    AppId
);
case_insensitive_id!(
    /// An Entra tenant id (`tid`, `channelData.tenant.id`) or a tenant's domain name.
    TenantId
);
case_insensitive_id!(
    /// A person's (or an Agent User's) Entra object id: `from.aadObjectId`. Policy matches on it, never
    /// on names.
    AadObjectId
);

/// A Teams conversation id (`19:…@thread.v2`, `a:1…`, `29:…`, or `user:<aad id>` for a proactive 1:1 not
/// created yet). Opaque and compared exactly: Teams issues ids whose case matters (base64 in `a:` ids).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ConversationId(Box<str>);

impl ConversationId {
    pub fn new(text: impl Into<Box<str>>) -> Self {
        Self(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ConversationId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ConversationId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ConversationId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ConversationId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ConversationId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for ConversationId {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationId({:?})", &*self.0)
    }
}

impl From<&str> for ConversationId {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for ConversationId {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&String> for ConversationId {
    fn from(s: &String) -> Self {
        Self(s.as_str().into())
    }
}

impl Serialize for ConversationId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConversationId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

/// How an inbound activity was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthKind {
    /// A Bot Framework channel token (the Connector's `aud` = the bot's app id).
    BotFramework,
    /// An Entra-issued token for the bot's Agent Blueprint (Agent 365 agentic activities).
    Entra,
    /// No token: `serve --dev` and the Agents Playground only. Never authoritative.
    Anonymous,
    /// A chat message of the Agent User's, fetched by the gateway from Microsoft Graph with the Agent
    /// User's own token (a change notification only said where to look).
    Graph,
}

impl AuthKind {
    /// The stable name used in logs, metrics and the store (`inbox.auth`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BotFramework => "botframework",
            Self::Entra => "entra-agentic",
            Self::Anonymous => "dev-anonymous",
            Self::Graph => "graph",
        }
    }

    /// The kind a stored name stands for. A name this version does not know counts as
    /// [`AuthKind::Anonymous`]: never more trusted than what is certain.
    pub fn from_stored(name: &str) -> Self {
        match name {
            "botframework" => Self::BotFramework,
            "entra-agentic" => Self::Entra,
            "graph" => Self::Graph,
            _ => Self::Anonymous,
        }
    }

    /// Whether a Microsoft-signed token vouched for the activity.
    pub fn is_authenticated(self) -> bool {
        !matches!(self, Self::Anonymous)
    }
}

impl Serialize for AuthKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for AuthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn guids_only_in_hyphenated_form() {
        assert!(is_guid("8a1b2c3d-0000-4000-8000-00000000abcd"));
        assert!(is_guid("8A1B2C3D-0000-4000-8000-00000000ABCD"));
        for bad in [
            "",
            "8a1b2c3d00004000800000000000abcd",
            "{8a1b2c3d-0000-4000-8000-00000000abcd}",
            "urn:uuid:8a1b2c3d-0000-4000-8000-00000000abcd",
            "8a1b2c3d-0000-4000-8000-00000000abcg",
            "8a1b2c3d-0000-4000-8000-00000000abc",
            " 8a1b2c3d-0000-4000-8000-00000000abc",
        ] {
            assert!(!is_guid(bad), "{bad:?}");
        }
    }

    #[test]
    fn case_insensitive_ids_compare_and_hash_by_lowercase() {
        let a = AadObjectId::new("ABC-Def");
        let b = AadObjectId::from(" abc-def ");
        assert_eq!(a, b);
        assert!(a == "abc-DEF");
        assert!(a.matches(" ABC-DEF "));
        assert_eq!(a.to_string(), "ABC-Def", "display keeps the text as received");
        let set: HashSet<AadObjectId> = [a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert_ne!(a, AadObjectId::new("abc-deg"));
        let json = serde_json::to_string(&AadObjectId::new("X-Y")).unwrap_or_default();
        assert_eq!(json, "\"X-Y\"");
        let back: AadObjectId = serde_json::from_str("\"Q\"").unwrap_or_else(|_| AadObjectId::new(""));
        let tenants: HashSet<TenantId> = ["Contoso.onmicrosoft.com", "CONTOSO.ONMICROSOFT.COM"].into_iter().map(TenantId::new).collect();
        assert_eq!(tenants.len(), 1);
        assert!(back == "q");
    }

    #[test]
    fn conversation_ids_compare_exactly() {
        let a = ConversationId::from("a:1AbC");
        assert_ne!(a, ConversationId::from("a:1abc"), "case matters in conversation ids");
        assert!(a == "a:1AbC" && a != "a:1abc");
        assert_eq!(a.to_string(), "a:1AbC");
        assert_eq!(serde_json::to_string(&a).unwrap_or_default(), "\"a:1AbC\"");
        let set: HashSet<ConversationId> = ["x", "X", "x"].into_iter().map(ConversationId::from).collect();
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn auth_kinds() {
        assert!(AuthKind::BotFramework.is_authenticated());
        assert!(AuthKind::Entra.is_authenticated());
        assert!(!AuthKind::Anonymous.is_authenticated());
        assert_eq!(AuthKind::Entra.to_string(), "entra-agentic");
        assert!(AuthKind::Graph.is_authenticated());
        assert_eq!(AuthKind::from_stored("graph"), AuthKind::Graph);
        for kind in [AuthKind::BotFramework, AuthKind::Entra, AuthKind::Anonymous, AuthKind::Graph] {
            assert_eq!(AuthKind::from_stored(kind.as_str()), kind);
        }
        assert_eq!(AuthKind::from_stored("BOTFRAMEWORK"), AuthKind::Anonymous, "unknown names are never trusted");
        assert_eq!(AuthKind::from_stored(""), AuthKind::Anonymous);
    }
}
