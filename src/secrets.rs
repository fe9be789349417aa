//! Secret references and redaction.
//!
//! Configuration never holds a secret value itself: a bot's `credential` is a *reference* that says
//! where the secret lives (`env:NAME`, `file:/path`, `credential:NAME` for systemd `LoadCredential`,
//! `keyring:service/user`). Values, once loaded, live in [`secrecy::SecretString`] so that `Debug`
//! output and logs never show them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

pub use secrecy::{ExposeSecret, SecretString};

/// Where a secret comes from. Holds no secret material, so it may be printed.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable, read at start-up.
    Env(String),
    /// A file; it must not be readable by group or others (mode 0600 or stricter).
    File(std::path::PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
    /// An OS keyring entry (desktops only).
    Keyring { service: String, user: String },
}

/// Why a secret reference could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "not a secret reference (the value is not shown in case it is the secret itself); use env:VAR_NAME, file:/absolute/path, credential:NAME or keyring:service/user"
)]
pub struct BadSecretRef;

impl FromStr for SecretRef {
    type Err = BadSecretRef;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadSecretRef;
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        if rest.is_empty() {
            return Err(bad());
        }
        match kind {
            "env" if rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => Ok(Self::Env(rest.to_owned())),
            "file" if rest.starts_with('/') => Ok(Self::File(rest.into())),
            "credential" if !rest.contains('/') => Ok(Self::Credential(rest.to_owned())),
            "keyring" => {
                let (service, user) = rest.split_once('/').ok_or_else(bad)?;
                if service.is_empty() || user.is_empty() {
                    return Err(bad());
                }
                Ok(Self::Keyring { service: service.to_owned(), user: user.to_owned() })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Credential(name) => write!(f, "credential:{name}"),
            Self::Keyring { service, user } => write!(f, "keyring:{service}/{user}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!("env:BOT_SECRET".parse(), Ok(SecretRef::Env("BOT_SECRET".into())));
        assert_eq!("file:/etc/agentgate/bot.pem".parse(), Ok(SecretRef::File("/etc/agentgate/bot.pem".into())));
        assert_eq!("credential:bot".parse(), Ok(SecretRef::Credential("bot".into())));
        assert_eq!("keyring:agentgate/contoso".parse(), Ok(SecretRef::Keyring { service: "agentgate".into(), user: "contoso".into() }));
    }

    #[test]
    fn rejects_values_that_look_like_secrets() {
        for bad in ["hunter2", "env:", "env:A-B", "file:relative", "keyring:svc", "keyring:/u", "plain:x"] {
            assert!(bad.parse::<SecretRef>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn secret_string_debug_is_redacted() {
        let s = SecretString::from("super-secret-value".to_owned());
        let shown = format!("{s:?}");
        assert!(!shown.contains("super-secret-value"), "{shown}");
    }
}
