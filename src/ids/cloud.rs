//! The sovereign clouds a bot can live in, and what is fixed per cloud.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The sovereign clouds a bot can live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Public,
    Usgov,
    China,
}

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Public, Cloud::Usgov, Cloud::China];

    /// The only `iss` accepted on the Bot Framework channel path of this cloud.
    pub fn issuer(self) -> &'static str {
        match self {
            Cloud::Public => "https://api.botframework.com",
            Cloud::Usgov => "https://api.botframework.us",
            Cloud::China => "https://api.botframework.azure.cn",
        }
    }

    pub fn default_metadata_url(self) -> &'static str {
        match self {
            Cloud::Public => "https://login.botframework.com/v1/.well-known/openidconfiguration",
            Cloud::Usgov => "https://login.botframework.azure.us/v1/.well-known/openidconfiguration",
            Cloud::China => "https://login.botframework.azure.cn/v1/.well-known/openidconfiguration",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Cloud::Public => "public",
            Cloud::Usgov => "usgov",
            Cloud::China => "china",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
