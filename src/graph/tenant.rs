//! A user's home tenant from their email domain, through Entra's public OpenID discovery document
//! (`{authority}/{domain}/v2.0/.well-known/openid-configuration`, no token sent). Cross-tenant chat
//! members are bound by email **with their home tenant id**; this finds it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::entra::Authority;

/// Why a home tenant could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantLookupError {
    /// Not an email address or a domain name.
    #[error("`{0}` is not an email address or a domain")]
    NotADomain(String),
    /// Entra does not know the domain (no Microsoft Entra tenant has it).
    #[error("no Microsoft Entra tenant has the domain `{0}` (HTTP {1}); check the address")]
    Unknown(String, u16),
    /// The discovery document could not be fetched or read.
    #[error("home tenant lookup for `{domain}` failed: {reason}")]
    Failed {
        /// The domain looked up.
        domain: String,
        /// What went wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

/// Finds and remembers home tenants by domain.
#[derive(Debug)]
pub struct TenantResolver {
    http: reqwest::Client,
    authority: Authority,
    cache: Mutex<HashMap<String, String>>,
}

impl TenantResolver {
    /// A resolver asking `authority` (such as `https://login.microsoftonline.com`).
    pub fn new(authority: Authority) -> Result<Self, TenantLookupError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TenantLookupError::Failed { domain: String::new(), reason: crate::http_util::error_chain(&e) })?;
        Ok(Self { http, authority, cache: Mutex::new(HashMap::new()) })
    }

    /// The tenant id (GUID) of `email_or_domain`'s domain.
    pub async fn home_tenant(&self, email_or_domain: &str) -> Result<String, TenantLookupError> {
        let domain = domain_of(email_or_domain).ok_or_else(|| TenantLookupError::NotADomain(email_or_domain.to_owned()))?;
        if let Some(t) = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&domain) {
            return Ok(t.clone());
        }
        let failed = |reason: String| TenantLookupError::Failed { domain: domain.clone(), reason };
        let url = format!("{}/{domain}/v2.0/.well-known/openid-configuration", self.authority.as_str());
        let resp = self.http.get(&url).send().await.map_err(|e| failed(crate::http_util::error_chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        if matches!(status, 400 | 404) {
            return Err(TenantLookupError::Unknown(domain, status));
        }
        if !(200..300).contains(&status) {
            return Err(failed(format!("HTTP {status}")));
        }
        let doc: Discovery = resp.json().await.map_err(|e| failed(format!("not a discovery document ({e})")))?;
        let tenant = tenant_of_issuer(&doc.issuer).ok_or_else(|| failed(format!("issuer `{}` names no tenant id", doc.issuer)))?;
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(domain, tenant.clone());
        Ok(tenant)
    }
}

/// The lower-case domain of an email address (the part after the last `@`) or of a bare domain.
fn domain_of(s: &str) -> Option<String> {
    let d = s.rsplit('@').next()?.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = d.contains('.')
        && d.len() <= 253
        && d.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    ok.then_some(d)
}

/// `https://login.microsoftonline.com/{tid}/v2.0` (or `https://sts.windows.net/{tid}/`) → `{tid}`.
fn tenant_of_issuer(issuer: &str) -> Option<String> {
    let t = issuer.split('/').nth(3)?;
    crate::ids::is_guid(t).then(|| t.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_issuers() {
        assert_eq!(domain_of("Bo@Fabrikam.COM").as_deref(), Some("fabrikam.com"));
        assert_eq!(domain_of("fabrikam.onmicrosoft.com").as_deref(), Some("fabrikam.onmicrosoft.com"));
        for bad in ["bo@", "nodot", "a@b/../c.com", "a@b?.com", "a@.com", "a@b..com"] {
            assert!(domain_of(bad).is_none(), "{bad}");
        }
        assert_eq!(
            tenant_of_issuer("https://login.microsoftonline.com/72F988BF-86F1-41AF-91AB-2D7CD011DB47/v2.0").as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert!(tenant_of_issuer("https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/").is_some());
        assert!(tenant_of_issuer("https://login.microsoftonline.com/{tenantid}/v2.0").is_none());
    }
}
