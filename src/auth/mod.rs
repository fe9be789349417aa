//! Inbound authentication of Bot Framework channel tokens.
//!
//! [`keys::KeyCache`] keeps each cloud's signing keys (OpenID metadata → `jwks_uri`), and
//! [`jwt::Verifier`] checks a token against them and binds it to the activity it came with.

pub mod jwt;
pub mod keys;

pub use jwt::{AgenticEntry, AuthError, BotEntry, VerifiedToken, Verifier, entra_issuers};
pub use keys::{KeyCache, KeyCacheSettings, Lookup, SigningKey};
