//! The bridge's one error type: what went wrong with an agent's request, in words the agent can act on.
//! Transports show the message as it is (MCP: a tool error; the command line: an error line).

/// Why a bridge operation did nothing (or could not finish).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request is wrong: the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// Nothing within the caller's scope matches (an unknown chat, bot, tenant or stream).
    #[error("{0}")]
    NotFound(String),
    /// The target refused for good (the bot was removed, the Connector refused): nothing was sent.
    #[error("{0}")]
    Refused(String),
    /// The store, the audit log or another dependency is unavailable: nothing was done; try again.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self::Refused(message.into())
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable(message.into())
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Unavailable(format!("the store is unavailable: {e}"))
    }
}

/// A bridge result.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
