//! Where bot tokens come from: the Entra authority of each cloud, the token endpoint of a tenant,
//! and the Bot Framework scope.
//!
//! | cloud | authority | legacy multi-tenant tenant | bot scope |
//! |---|---|---|---|
//! | public | `https://login.microsoftonline.com` | `botframework.com` | `https://api.botframework.com/.default` |
//! | usgov | `https://login.microsoftonline.us` | `MicrosoftServices.onmicrosoft.us` | `https://api.botframework.us/.default` |
//! | china | `https://login.partner.microsoftonline.cn` | `0b4a31a2-c1a0-475d-b363-5f26668660a3` | `https://api.botframework.azure.cn/.default` |
//!
//! (China's legacy tenant is botbuilder-dotnet's `ChinaAuthenticationConstants.ToChannelFromBotLoginUrl`.)

use std::fmt;

use super::error::SetupError;
use crate::config::{BotConfig, check_fetch_url};
use crate::ids::Cloud;

/// The Entra sign-in authority of a cloud (scheme and host, no tenant).
pub fn default_authority(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Public => "https://login.microsoftonline.com",
        Cloud::Usgov => "https://login.microsoftonline.us",
        Cloud::China => "https://login.partner.microsoftonline.cn",
    }
}

/// The scope a bot asks for to call the Bot Connector of its cloud.
pub fn bot_scope(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Public => "https://api.botframework.com/.default",
        Cloud::Usgov => "https://api.botframework.us/.default",
        Cloud::China => "https://api.botframework.azure.cn/.default",
    }
}

/// The tenant legacy multi-tenant bots get their tokens from (a bot without `tenant_id`).
pub fn legacy_bot_tenant(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Public => "botframework.com",
        Cloud::Usgov => "MicrosoftServices.onmicrosoft.us",
        Cloud::China => "0b4a31a2-c1a0-475d-b363-5f26668660a3",
    }
}

/// The tenant a bot's outbound tokens come from: its `tenant_id` (single-tenant bots), or the cloud's
/// legacy Bot Framework tenant.
pub fn bot_tenant(bot: &BotConfig) -> &str {
    bot.tenant_id.as_deref().unwrap_or_else(|| legacy_bot_tenant(bot.cloud))
}

/// An Entra authority such as `https://login.microsoftonline.com`: https, or plain http on loopback
/// (local fakes). Credentials are only ever sent to token endpoints built from one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Authority(url::Url);

impl Authority {
    /// Parse an authority: scheme and host (and port), nothing else. A trailing `/` is ignored.
    pub fn parse(s: &str) -> Result<Self, SetupError> {
        let url = check_fetch_url(s.trim_end_matches('/')).map_err(SetupError::Authority)?;
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() || url.password().is_some()
        {
            return Err(SetupError::Authority(format!(
                "`{s}` must be just the scheme and host, such as https://login.microsoftonline.com (the tenant and path are added)"
            )));
        }
        Ok(Self(url))
    }

    /// The cloud's public authority.
    pub fn for_cloud(cloud: Cloud) -> Self {
        // The built-in authorities are valid https URLs.
        Self(url::Url::parse(default_authority(cloud)).unwrap_or_else(|_| unreachable!("built-in authority")))
    }

    /// The token endpoint of `tenant` under this authority.
    pub fn token_endpoint(&self, tenant: &str) -> Result<TokenEndpoint, SetupError> {
        let valid = !tenant.is_empty()
            && tenant.len() <= 253
            && tenant.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !tenant.starts_with('.')
            && !tenant.contains("..");
        if !valid {
            return Err(SetupError::Tenant(tenant.to_owned()));
        }
        let base = self.0.as_str().trim_end_matches('/');
        let url = url::Url::parse(&format!("{base}/{tenant}/oauth2/v2.0/token")).map_err(|e| SetupError::Authority(e.to_string()))?;
        Ok(TokenEndpoint { url, tenant: tenant.to_owned() })
    }

    /// The authority as text, without a trailing slash.
    pub fn as_str(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authority({})", self.as_str())
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A v2 token endpoint, `{authority}/{tenant}/oauth2/v2.0/token`. Only constructible from an
/// [`Authority`], so it is always https (or loopback http).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenEndpoint {
    url: url::Url,
    tenant: String,
}

impl TokenEndpoint {
    /// The cloud's public endpoint for `tenant`.
    pub fn for_cloud(cloud: Cloud, tenant: &str) -> Result<Self, SetupError> {
        Authority::for_cloud(cloud).token_endpoint(tenant)
    }

    /// The endpoint URL; also the `aud` of client assertions sent to it.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// The endpoint URL as text.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The tenant in the path.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenEndpoint({})", self.url)
    }
}

impl fmt::Display for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_cloud_endpoint_and_scope() {
        let ep = TokenEndpoint::for_cloud(Cloud::Public, "botframework.com").unwrap();
        assert_eq!(ep.as_str(), "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token");
        assert_eq!(ep.tenant(), "botframework.com");
        assert_eq!(bot_scope(Cloud::Public), "https://api.botframework.com/.default");
    }

    #[test]
    fn sovereign_clouds() {
        let gov = TokenEndpoint::for_cloud(Cloud::Usgov, legacy_bot_tenant(Cloud::Usgov)).unwrap();
        assert_eq!(gov.as_str(), "https://login.microsoftonline.us/MicrosoftServices.onmicrosoft.us/oauth2/v2.0/token");
        assert_eq!(bot_scope(Cloud::Usgov), "https://api.botframework.us/.default");
        let cn = TokenEndpoint::for_cloud(Cloud::China, "aaaaaaaa-0000-0000-0000-000000000001").unwrap();
        assert_eq!(cn.as_str(), "https://login.partner.microsoftonline.cn/aaaaaaaa-0000-0000-0000-000000000001/oauth2/v2.0/token");
        assert_eq!(bot_scope(Cloud::China), "https://api.botframework.azure.cn/.default");
    }

    #[test]
    fn authority_override_is_https_or_loopback_only() {
        let a = Authority::parse("http://127.0.0.1:4567/").unwrap();
        assert_eq!(a.token_endpoint("t1").unwrap().as_str(), "http://127.0.0.1:4567/t1/oauth2/v2.0/token");
        assert!(Authority::parse("https://login.example.test").is_ok());
        for bad in
            ["http://login.example.test", "http://10.0.0.1", "ftp://127.0.0.1", "https://h/x", "https://h?q=1", "https://u:p@h", "nope"]
        {
            assert!(Authority::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_cannot_change_the_path() {
        let a = Authority::for_cloud(Cloud::Public);
        for bad in ["", "a/b", "..", "a?b", "a#b", "a%2Fb", " x", ".x"] {
            assert!(a.token_endpoint(bad).is_err(), "{bad:?}");
        }
    }
}
