//! Inbound authentication of Bot Framework channel tokens.
//!
//! [`keys::KeyCache`] keeps each cloud's signing keys (OpenID metadata → `jwks_uri`), and
//! [`jwt::Verifier`] checks a token against them and binds it to the activity it came with.

pub(crate) mod jwt;
pub(crate) mod keys;

pub(crate) use jwt::{AgenticEntry, AuthError, BotEntry, Verifier};
pub(crate) use keys::{KeyCache, KeyCacheSettings};
