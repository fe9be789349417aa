//! Verification of Bot Framework channel tokens and their binding to the activity.
//!
//! Rules (docs/architecture.md, "Inbound authentication"): RS256 only; `exp` required, `nbf` honoured,
//! a bounded clock skew; `iss` is the bot's cloud's pinned issuer; `aud` is a configured bot's app id
//! (a string, never an array) and selects the bot; the key comes from that cloud's [`KeyCache`]; the
//! `serviceurl` claim is required and equals the activity's `serviceUrl` after normalisation; the
//! signing key's endorsements contain the activity's `channelId`.
//!
//! Verified tokens are remembered by the SHA-256 of the token until they expire. A remembered token is
//! still checked on every request for expiry and not-before against the current time, for its signing
//! key still being the current key for its `kid`, and for the `serviceurl` and endorsement bindings:
//! the cache only skips re-doing the RSA signature and claim parsing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::keys::{KeyCache, Lookup, SigningKey};
use crate::ids::Cloud;
use crate::metrics::{AuthReason, Metrics};
use crate::service_url;

/// Longest Authorization header value considered.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A configured bot, as the verifier and the intake need it.
#[derive(Debug, Clone)]
pub struct BotEntry {
    pub app_id: String,
    pub cloud: Cloud,
    pub require_endorsement: bool,
    /// Lower-cased tenant ids.
    pub allowed_tenants: HashSet<crate::ids::TenantId>,
    /// Agent 365: Entra-issued tokens for the bot's Agent Blueprint are accepted too.
    pub agentic: Option<AgenticEntry>,
}

/// How a bot accepts Entra-issued (agentic) tokens.
#[derive(Debug, Clone)]
pub struct AgenticEntry {
    /// The Agent Blueprint's app id: the tokens' audience.
    pub blueprint_app_id: String,
    /// Lower-cased `azp`/`appid` values accepted; empty: any.
    pub allowed_callers: Vec<String>,
    /// Each tenant's OpenID metadata URL, with `{tenant}`.
    pub metadata_template: String,
    /// The Agent Identity (instance) activities must be addressed to.
    pub agent_identity_id: String,
    /// The Agent User they must be addressed to, when configured by object id.
    pub agent_user_id: Option<String>,
}

impl AgenticEntry {
    /// Whether an agentic recipient is this bot's own Agent Identity (and Agent User) in tenant `tid`.
    pub fn owns(&self, r: &crate::activity::AgenticRecipient, tid: &str) -> bool {
        let same = |a: Option<&str>, b: &str| a.is_some_and(|a| a.eq_ignore_ascii_case(b));
        same(r.agentic_app_id.as_deref(), &self.agent_identity_id)
            && self.agent_user_id.as_deref().is_none_or(|u| same(r.agentic_user_id.as_deref(), u))
            && r.tenant_id.as_deref().is_none_or(|t| t.eq_ignore_ascii_case(tid))
    }
}

/// The Entra issuers of a tenant (v2 and v1 tokens).
pub(crate) fn entra_issuers(tid: &str) -> [String; 2] {
    [format!("https://login.microsoftonline.com/{tid}/v2.0"), format!("https://sts.windows.net/{tid}/")]
}

fn is_entra_issuer(iss: &str) -> bool {
    iss.starts_with("https://login.microsoftonline.com/") || iss.starts_with("https://sts.windows.net/")
}

impl BotEntry {
    pub fn allows_tenant(&self, tenant: &str) -> bool {
        self.allowed_tenants.contains(&crate::ids::TenantId::new(tenant))
    }
}

/// A token whose signature and claims were verified.
#[derive(Debug)]
pub struct VerifiedToken {
    /// Index of the bot in [`Verifier::bots`].
    pub bot: usize,
    /// The normalised `serviceurl` claim, if the token had one.
    pub service_url: Option<String>,
    pub key: Arc<SigningKey>,
    /// For an Entra-issued (agentic) token: its tenant (`tid`, lower case), to which the activity is bound.
    pub agentic_tenant: Option<String>,
    exp: i64,
    nbf: Option<i64>,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// 401, with the reason logged and counted.
    Refused(AuthReason),
    /// 503: no signing keys are usable for the token's cloud.
    NoKeys,
}

impl From<AuthReason> for AuthError {
    fn from(r: AuthReason) -> Self {
        Self::Refused(r)
    }
}

#[derive(Deserialize)]
struct UnverifiedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The claims read before the signature is checked, as JSON values: their types are checked here, since
/// `jsonwebtoken` accepts an array `iss` (or `aud`) that merely contains an expected value.
#[derive(Deserialize)]
struct UnverifiedClaims {
    #[serde(default)]
    iss: Option<serde_json::Value>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    tid: Option<serde_json::Value>,
}

/// A claim that must be a single string (RFC 7519: `iss` is one StringOrURI; Bot Framework and Entra
/// tokens carry one `aud` string too): an array or an object is refused with `wrong`, absence is
/// `missing_claim`.
fn single_string(claim: Option<serde_json::Value>, wrong: AuthReason) -> Result<String, AuthReason> {
    match claim {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(_) => Err(wrong),
        None => Err(AuthReason::MissingClaim),
    }
}

#[derive(Deserialize)]
struct EntraClaims {
    // Typed again after the signature check: a non-string fails the decode.
    #[serde(rename = "iss")]
    _iss: String,
    #[serde(rename = "aud")]
    _aud: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    appid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    // Typed again after the signature check: a non-string fails the decode.
    #[serde(rename = "iss")]
    _iss: String,
    #[serde(rename = "aud")]
    _aud: String,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    serviceurl: Option<String>,
}

/// Verifies inbound Bot Framework tokens for every configured bot.
#[derive(Debug)]
pub struct Verifier {
    bots: Vec<BotEntry>,
    validations: Vec<Validation>,
    by_app_id: HashMap<String, usize>,
    keys: [Option<Arc<KeyCache>>; 3],
    skew: i64,
    cache: TokenCache,
    metrics: Arc<Metrics>,
    /// Agentic bots by lower-cased Blueprint app id.
    by_blueprint: HashMap<String, usize>,
    /// Entra key caches by (bot, tenant), made when a tenant's first token arrives.
    entra_keys: Mutex<HashMap<(usize, String), Arc<KeyCache>>>,
    key_settings: Option<super::KeyCacheSettings>,
}

impl Verifier {
    /// `keys` must hold a cache for every cloud a bot uses.
    pub fn new(bots: Vec<BotEntry>, keys: [Option<Arc<KeyCache>>; 3], skew_secs: u64, cache_entries: usize, metrics: Arc<Metrics>) -> Self {
        let validations = bots
            .iter()
            .map(|b| {
                let mut v = Validation::new(Algorithm::RS256);
                v.leeway = skew_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                v.set_issuer(&[b.cloud.issuer()]);
                // App ids are GUIDs, compared case-insensitively when the bot is looked up; accept the
                // usual spellings here too (the lookup already refused anything else).
                v.set_audience(&[b.app_id.clone(), b.app_id.to_ascii_lowercase(), b.app_id.to_ascii_uppercase()]);
                v
            })
            .collect();
        let by_app_id = bots.iter().enumerate().map(|(i, b)| (b.app_id.to_ascii_lowercase(), i)).collect();
        let by_blueprint =
            bots.iter().enumerate().filter_map(|(i, b)| b.agentic.as_ref().map(|a| (a.blueprint_app_id.to_ascii_lowercase(), i))).collect();
        Self {
            bots,
            validations,
            by_app_id,
            keys,
            skew: i64::try_from(skew_secs).unwrap_or(300),
            cache: TokenCache::new(cache_entries),
            metrics,
            by_blueprint,
            entra_keys: Mutex::new(HashMap::new()),
            key_settings: None,
        }
    }

    /// How Entra key caches (agentic tokens) fetch and refresh.
    pub fn with_key_settings(mut self, settings: super::KeyCacheSettings) -> Self {
        self.key_settings = Some(settings);
        self
    }

    /// The Entra key cache of a bot's tenant, made (and kept fresh) on first use.
    fn entra_cache(&self, bot: usize, tid: &str) -> Result<Arc<KeyCache>, AuthError> {
        let mut caches = self.entra_keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = caches.get(&(bot, tid.to_owned())) {
            return Ok(Arc::clone(c));
        }
        let b = &self.bots[bot];
        let agentic = b.agentic.as_ref().ok_or(AuthError::Refused(AuthReason::WrongAudience))?;
        let url = url::Url::parse(&agentic.metadata_template.replace("{tenant}", tid)).map_err(|_| AuthError::NoKeys)?;
        let settings = self.key_settings.unwrap_or(super::KeyCacheSettings {
            refresh_every: std::time::Duration::from_secs(24 * 3600),
            unknown_kid_cooldown: std::time::Duration::from_secs(300),
            stale_grace: std::time::Duration::from_secs(48 * 3600),
            fetch_timeout: std::time::Duration::from_secs(10),
        });
        let [issuer, _] = entra_issuers(tid);
        let cache =
            Arc::new(KeyCache::with_issuer(b.cloud, issuer, url, settings, Arc::clone(&self.metrics)).map_err(|_| AuthError::NoKeys)?);
        // Refreshed like the Bot Framework keys; the task lives as long as the process.
        drop(Arc::clone(&cache).spawn_background());
        caches.insert((bot, tid.to_owned()), Arc::clone(&cache));
        Ok(cache)
    }

    pub fn bots(&self) -> &[BotEntry] {
        &self.bots
    }

    pub fn bot(&self, index: usize) -> &BotEntry {
        &self.bots[index]
    }

    /// The bot whose app id is `app_id` (case-insensitive).
    pub fn bot_by_app_id(&self, app_id: &str) -> Option<usize> {
        self.by_app_id.get(&app_id.to_ascii_lowercase()).copied()
    }

    /// Key caches in use (readiness).
    pub fn key_caches(&self) -> impl Iterator<Item = &Arc<KeyCache>> {
        self.keys.iter().flatten()
    }

    /// Verify the `Authorization` header value: signature, algorithm, issuer, audience and lifetime.
    pub async fn verify(&self, authorization: &[u8]) -> Result<Arc<VerifiedToken>, AuthError> {
        let token = bearer_token(authorization)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&digest) {
            self.check_lifetime(&hit)?;
            let bot = &self.bots[hit.bot];
            let cache = match &hit.agentic_tenant {
                Some(tid) => self.entra_keys.lock().unwrap_or_else(PoisonError::into_inner).get(&(hit.bot, tid.clone())).cloned(),
                None => self.keys[bot.cloud.index()].clone(),
            };
            let still_current = cache.and_then(|c| c.current(&hit.key.kid)).is_some_and(|k| Arc::ptr_eq(&k, &hit.key));
            if still_current {
                self.metrics.token_cache_hit();
                return Ok(hit);
            }
            self.cache.remove(&digest);
        }
        let verified = Arc::new(self.verify_fully(token).await?);
        self.cache.insert(digest, Arc::clone(&verified));
        Ok(verified)
    }

    fn check_lifetime(&self, t: &VerifiedToken) -> Result<(), AuthReason> {
        let now = now_secs();
        if now > t.exp + self.skew {
            return Err(AuthReason::Expired);
        }
        if t.nbf.is_some_and(|nbf| nbf > now + self.skew) {
            return Err(AuthReason::NotYetValid);
        }
        Ok(())
    }

    async fn verify_fully(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(AuthReason::Malformed.into());
        };
        let header: UnverifiedHeader = decode_segment(h).ok_or(AuthReason::Malformed)?;
        if header.alg != "RS256" {
            return Err(AuthReason::BadAlgorithm.into());
        }
        let kid = header.kid.filter(|k| !k.is_empty()).ok_or(AuthReason::MissingKid)?;
        let claims: UnverifiedClaims = decode_segment(p).ok_or(AuthReason::Malformed)?;
        // One string, never an array or object (jsonwebtoken would accept an array holding the issuer).
        let iss = single_string(claims.iss, AuthReason::WrongIssuer)?;
        if !self.by_blueprint.is_empty() && is_entra_issuer(&iss) {
            return self.verify_entra(token, &kid, &iss, claims.aud, claims.tid).await;
        }
        // The audience selects the bot (and so the cloud and its keys) before the signature is checked;
        // the signature check below then pins `aud` and `iss` for real.
        let aud = single_string(claims.aud, AuthReason::WrongAudience)?;
        let bot_index = self.bot_by_app_id(&aud).ok_or(AuthReason::WrongAudience)?;
        let bot = &self.bots[bot_index];
        let cache = self.keys[bot.cloud.index()].as_ref().ok_or(AuthError::NoKeys)?;
        let key = match cache.key(&kid).await {
            Lookup::Found(k) => k,
            Lookup::UnknownKid => return Err(AuthReason::UnknownKid.into()),
            Lookup::NoKeys => return Err(AuthError::NoKeys),
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validations[bot_index]).map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;
        let service_url = match claims.serviceurl {
            Some(s) => Some(service_url::normalize(&s).ok_or(AuthReason::ServiceUrlMismatch)?),
            None => None,
        };
        Ok(VerifiedToken { bot: bot_index, service_url, key, agentic_tenant: None, exp: claims.exp, nbf: claims.nbf })
    }

    /// An Entra-issued token (Agent 365): `tid` required and bound to `iss`; `aud` a configured Agent
    /// Blueprint (which selects the bot); the tenant on the bot's allow-list before any key is fetched;
    /// keys from that tenant's metadata; the caller allow-list when configured. No `serviceurl` claim.
    async fn verify_entra(
        &self,
        token: &str,
        kid: &str,
        iss: &str,
        aud: Option<serde_json::Value>,
        tid: Option<serde_json::Value>,
    ) -> Result<VerifiedToken, AuthError> {
        let tid = single_string(tid, AuthReason::Malformed)?;
        if tid.is_empty() {
            return Err(AuthReason::MissingClaim.into());
        }
        let tid = tid.to_ascii_lowercase();
        if !tid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(AuthReason::Malformed.into());
        }
        let issuers = entra_issuers(&tid);
        if !issuers.iter().any(|i| i.eq_ignore_ascii_case(iss)) {
            return Err(AuthReason::WrongIssuer.into());
        }
        let aud = single_string(aud, AuthReason::WrongAudience)?;
        let blueprint = aud.strip_prefix("api://").unwrap_or(&aud).to_ascii_lowercase();
        let bot_index = *self.by_blueprint.get(&blueprint).ok_or(AuthReason::WrongAudience)?;
        let bot = &self.bots[bot_index];
        if !bot.allows_tenant(&tid) {
            return Err(AuthReason::TenantNotAllowed.into());
        }
        let agentic = bot.agentic.as_ref().ok_or(AuthReason::WrongAudience)?;
        let cache = self.entra_cache(bot_index, &tid)?;
        let key = match cache.key(kid).await {
            Lookup::Found(k) => k,
            Lookup::UnknownKid => return Err(AuthReason::UnknownKid.into()),
            Lookup::NoKeys => return Err(AuthError::NoKeys),
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.leeway = u64::try_from(self.skew).unwrap_or(300);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&issuers);
        let bp = &agentic.blueprint_app_id;
        v.set_audience(&[bp.clone(), bp.to_ascii_lowercase(), format!("api://{bp}"), format!("api://{}", bp.to_ascii_lowercase())]);
        let data = jsonwebtoken::decode::<EntraClaims>(token, &key.key, &v).map_err(|e| map_jwt_error(e.kind()))?;
        let c = data.claims;
        if !agentic.allowed_callers.is_empty() {
            let caller = c.azp.as_deref().or(c.appid.as_deref()).unwrap_or("").to_ascii_lowercase();
            if !agentic.allowed_callers.contains(&caller) {
                return Err(AuthReason::CallerNotAllowed.into());
            }
        }
        Ok(VerifiedToken { bot: bot_index, service_url: None, key, agentic_tenant: Some(tid), exp: c.exp, nbf: c.nbf })
    }

    /// Bind a verified token to the activity it came with: its `serviceUrl` (already normalised with
    /// [`service_url::normalize`]) and its `channelId` (endorsement).
    pub fn bind(&self, token: &VerifiedToken, activity_service_url: &str, channel_id: Option<&str>) -> Result<(), AuthReason> {
        bind_service_url(token.service_url.as_deref(), activity_service_url)?;
        let bot = &self.bots[token.bot];
        let channel = channel_id.unwrap_or("");
        let endorsed = !channel.is_empty() && token.key.endorsements.iter().any(|e| e.eq_ignore_ascii_case(channel));
        if !endorsed && (bot.require_endorsement || !token.key.endorsements.is_empty()) {
            return Err(AuthReason::EndorsementMissing);
        }
        Ok(())
    }
}

/// The `serviceurl` half of [`Verifier::bind`]: the token's claim (normalised when it was verified) must be
/// present and equal the activity's `serviceUrl`, normalised with [`service_url::normalize`] too.
pub(crate) fn bind_service_url(claim: Option<&str>, activity_service_url: &str) -> Result<(), AuthReason> {
    let claim = claim.ok_or(AuthReason::MissingServiceUrl)?;
    if claim != activity_service_url {
        return Err(AuthReason::ServiceUrlMismatch);
    }
    Ok(())
}

fn bearer_token(value: &[u8]) -> Result<&str, AuthReason> {
    let value = std::str::from_utf8(value).map_err(|_| AuthReason::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthReason::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthReason::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(AuthReason::Malformed);
    }
    Ok(token)
}

fn decode_segment<T: serde::de::DeserializeOwned>(segment: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    let reason = match kind {
        ErrorKind::InvalidSignature => AuthReason::BadSignature,
        ErrorKind::ExpiredSignature => AuthReason::Expired,
        ErrorKind::ImmatureSignature => AuthReason::NotYetValid,
        ErrorKind::InvalidIssuer => AuthReason::WrongIssuer,
        ErrorKind::InvalidAudience => AuthReason::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => AuthReason::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthReason::BadAlgorithm,
        _ => AuthReason::Malformed,
    };
    AuthError::Refused(reason)
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Verified tokens by SHA-256, bounded; entries leave when they expire or when the cache is full.
#[derive(Debug)]
struct TokenCache {
    max: usize,
    map: Mutex<HashMap<[u8; 32], Arc<VerifiedToken>>>,
}

impl TokenCache {
    fn new(max: usize) -> Self {
        Self { max, map: Mutex::new(HashMap::new()) }
    }

    fn get(&self, k: &[u8; 32]) -> Option<Arc<VerifiedToken>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).get(k).cloned()
    }

    fn remove(&self, k: &[u8; 32]) {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(k);
    }

    fn insert(&self, k: [u8; 32], v: Arc<VerifiedToken>) {
        if self.max == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.max {
            let now = now_secs();
            map.retain(|_, t| t.exp >= now);
            if map.len() >= self.max {
                return;
            }
        }
        map.insert(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Ok("abc"));
        assert_eq!(bearer_token(b"Basic abc"), Err(AuthReason::NotBearer));
        assert_eq!(bearer_token(b"abc"), Err(AuthReason::NotBearer));
        assert_eq!(bearer_token(b"Bearer "), Err(AuthReason::NotBearer));
    }

    #[test]
    fn iss_and_aud_must_be_single_strings() {
        use serde_json::json;
        let claims = |v: serde_json::Value| serde_json::from_value::<UnverifiedClaims>(v).unwrap();
        let c = claims(json!({"iss": ["https://api.botframework.com"], "aud": {"id": "x"}}));
        assert_eq!(single_string(c.iss, AuthReason::WrongIssuer), Err(AuthReason::WrongIssuer));
        assert_eq!(single_string(c.aud, AuthReason::WrongAudience), Err(AuthReason::WrongAudience));
        let c = claims(json!({"iss": {"0": "https://api.botframework.com"}}));
        assert_eq!(single_string(c.iss, AuthReason::WrongIssuer), Err(AuthReason::WrongIssuer));
        assert_eq!(single_string(c.aud, AuthReason::WrongAudience), Err(AuthReason::MissingClaim));
        let c = claims(json!({"iss": "https://api.botframework.com", "aud": "app"}));
        assert_eq!(single_string(c.iss, AuthReason::WrongIssuer).as_deref(), Ok("https://api.botframework.com"));
        assert_eq!(single_string(c.aud, AuthReason::WrongAudience).as_deref(), Ok("app"));
    }
}

#[cfg(test)]
mod proptests {
    //! Properties of token parsing and of the token/activity binding: nothing that was not signed with the
    //! key verifies (with a signed token as the control that verification works at all), and the
    //! `serviceurl` binding compares normalised forms.

    use std::sync::OnceLock;

    use jsonwebtoken::{DecodingKey, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
    const KID: &str = "kid-1";
    const SERVICE_URL: &str = "https://smba.trafficmanager.net/amer/";

    struct Fixture {
        rt: tokio::runtime::Runtime,
        verifier: Verifier,
        encoding: EncodingKey,
        key: Arc<SigningKey>,
    }

    /// One bot of the public cloud whose key cache holds one fresh RSA key (endorsed for `msteams`).
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
            let encoding = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).unwrap();
            let decoding = DecodingKey::from_rsa_pem(pair.public_key_pem().as_bytes()).unwrap();
            let metrics = Arc::new(Metrics::new());
            let signing = SigningKey { kid: KID.to_owned(), key: decoding, endorsements: vec!["msteams".to_owned()] };
            let cache = Arc::new(KeyCache::preloaded(Cloud::Public, vec![signing], Arc::clone(&metrics)));
            let key = cache.current(KID).unwrap();
            let bot = BotEntry {
                app_id: APP_ID.to_owned(),
                cloud: Cloud::Public,
                require_endorsement: true,
                allowed_tenants: HashSet::new(),
                agentic: None,
            };
            let mut keys = [None, None, None];
            keys[Cloud::Public.index()] = Some(cache);
            let verifier = Verifier::new(vec![bot], keys, 300, 1000, metrics);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            Fixture { rt, verifier, encoding, key }
        })
    }

    fn verify(authorization: &[u8]) -> Result<Arc<VerifiedToken>, AuthError> {
        let f = fixture();
        f.rt.block_on(f.verifier.verify(authorization))
    }

    fn good_claims() -> Value {
        let now = now_secs();
        json!({"iss": Cloud::Public.issuer(), "aud": APP_ID, "exp": now + 3600, "nbf": now - 60, "serviceurl": SERVICE_URL})
    }

    fn signed(claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KID.to_owned());
        jsonwebtoken::encode(&header, claims, &fixture().encoding).unwrap()
    }

    fn segment(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// Headers and claims near the valid ones, so that forged tokens get as far as the signature check.
    fn forged_header() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!({"alg": "RS256", "kid": KID, "typ": "JWT"})),
            Just(json!({"alg": "RS256", "kid": KID})),
            Just(json!({"alg": "HS256", "kid": KID})),
            Just(json!({"alg": "none", "kid": KID})),
            Just(json!({"alg": "RS256"})),
            Just(json!({"alg": "RS256", "kid": "other"})),
            Just(json!({"alg": ["RS256"], "kid": KID})),
        ]
    }

    fn forged_claims() -> impl Strategy<Value = Value> {
        let now = now_secs();
        (
            proptest::sample::select(vec![json!(Cloud::Public.issuer()), json!([Cloud::Public.issuer()]), json!("https://evil")]),
            proptest::sample::select(vec![json!(APP_ID), json!(APP_ID.to_uppercase()), json!([APP_ID]), json!("other")]),
            proptest::sample::select(vec![json!(now + 3600), json!(now - 3600), json!("never"), Value::Null]),
            proptest::option::of(".{0,30}"),
        )
            .prop_map(|(iss, aud, exp, serviceurl)| json!({"iss": iss, "aud": aud, "exp": exp, "serviceurl": serviceurl}))
    }

    /// The parts of a service URL; two are the same endpoint when [`Parts::same_endpoint`] says so.
    #[derive(Debug, Clone)]
    struct Parts {
        https: bool,
        labels: Vec<String>,
        port: Option<u16>,
        segments: Vec<String>,
        trailing_slashes: usize,
    }

    impl Parts {
        fn render(&self, upper_host: &[bool]) -> String {
            let scheme = if self.https { "https" } else { "http" };
            let host: String = self
                .labels
                .join(".")
                .chars()
                .zip(upper_host.iter().chain(std::iter::repeat(&false)))
                .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{host}{port}/{}{}", self.segments.join("/"), "/".repeat(self.trailing_slashes))
        }

        /// The model: same scheme, host equal ignoring ASCII case, same effective port, same path segments
        /// (case-sensitive); trailing slashes do not count.
        fn same_endpoint(&self, other: &Self) -> bool {
            let port = |p: &Self| p.port.unwrap_or(if p.https { 443 } else { 80 });
            self.https == other.https
                && self.labels.join(".").eq_ignore_ascii_case(&other.labels.join("."))
                && port(self) == port(other)
                && self.segments == other.segments
        }
    }

    fn parts() -> impl Strategy<Value = Parts> {
        (
            any::<bool>(),
            proptest::collection::vec(proptest::sample::select(vec!["smba", "trafficmanager", "net", "Amer", "x1"]), 1..4),
            proptest::option::of(proptest::sample::select(vec![80u16, 443, 8443])),
            proptest::collection::vec(proptest::sample::select(vec!["amer", "Amer", "emea", "_connector", "a b", "x%41"]), 0..3),
            0usize..3,
        )
            .prop_map(|(https, labels, port, segments, trailing_slashes)| Parts {
                https,
                labels: labels.into_iter().map(str::to_owned).collect(),
                port,
                segments: segments.into_iter().map(str::to_owned).collect(),
                trailing_slashes,
            })
    }

    /// A pair of service URLs: often one endpoint written two ways, otherwise two independent ones.
    fn url_pair() -> impl Strategy<Value = (Parts, Parts)> {
        prop_oneof![
            (parts(), 0usize..3, any::<bool>()).prop_map(|(a, slashes, default_port)| {
                let mut b = a.clone();
                b.trailing_slashes = slashes;
                if default_port && b.port.is_none() {
                    b.port = Some(if b.https { 443 } else { 80 });
                }
                (a, b)
            }),
            (parts(), parts()),
        ]
    }

    fn url_ish() -> impl Strategy<Value = String> {
        prop_oneof![
            "(https?|ftp|HTTPS)://[a-zA-Z0-9.\\-\\[\\]:@%_]{0,20}(/[a-zA-Z0-9.%/_]{0,12})?([?#][a-z=]{0,4})?/{0,2}",
            " ?https://[a-z.]{0,6}(:[0-9]{1,5})?/[a-z./]{0,8} ?",
            ".{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn bearer_parsing_never_panics_and_yields_a_trimmed_token(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(token) = bearer_token(&bytes) {
                prop_assert!(!token.is_empty() && token.len() <= MAX_TOKEN_BYTES);
                prop_assert_eq!(token, token.trim());
                let text = std::str::from_utf8(&bytes).unwrap().trim();
                prop_assert!(text.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")), "{text:?}");
            }
        }

        #[test]
        fn arbitrary_authorization_values_never_verify(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert!(verify(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bearer_strings_never_verify(token in "[A-Za-z0-9_\\-.= ]{0,300}|.{0,100}") {
            let header = format!("Bearer {token}");
            prop_assert!(verify(header.as_bytes()).is_err());
        }

        #[test]
        fn forged_tokens_never_verify(
            header in forged_header(),
            claims in forged_claims(),
            signature in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let token = format!("{}.{}.{}", segment(&header), segment(&claims), URL_SAFE_NO_PAD.encode(signature));
            let header = format!("Bearer {token}");
            prop_assert!(verify(header.as_bytes()).is_err(), "{}", token);
        }

        #[test]
        fn a_signed_token_verifies_and_no_one_character_change_does(at in any::<prop::sample::Index>(), with in "[A-Za-z0-9_\\-.]") {
            let token = signed(&good_claims());
            let header = format!("Bearer {token}");
            prop_assert!(verify(header.as_bytes()).is_ok(), "the control: a signed token verifies");
            let i = at.index(token.len());
            let replacement = with.chars().next().unwrap();
            prop_assume!(token.as_bytes()[i] != replacement as u8);
            let mut mutated = token.clone();
            mutated.replace_range(i..=i, &with);
            let header = format!("Bearer {mutated}");
            prop_assert!(verify(header.as_bytes()).is_err(), "{}", mutated);
        }

        #[test]
        fn service_url_normalisation_is_idempotent(raw in url_ish()) {
            if let Some(n) = service_url::normalize(&raw) {
                let again = service_url::normalize(&n);
                prop_assert_eq!(again.as_deref(), Some(n.as_str()), "{:?}", raw);
            }
        }

        #[test]
        fn the_binding_compares_normalised_service_urls(
            (claim, activity) in url_pair(),
            claim_case in proptest::collection::vec(any::<bool>(), 0..40),
            activity_case in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let f = fixture();
            let (claim_url, activity_url) = (claim.render(&claim_case), activity.render(&activity_case));
            let token = VerifiedToken {
                bot: 0,
                service_url: Some(service_url::normalize(&claim_url).unwrap()),
                key: Arc::clone(&f.key),
                agentic_tenant: None,
                exp: now_secs() + 3600,
                nbf: None,
            };
            // As the intake does: parse the activity's serviceUrl once, normalise the parsed URL.
            let parsed = url::Url::parse(activity_url.trim()).unwrap();
            let normalized = service_url::normalize_url(&parsed).unwrap();
            let bound = f.verifier.bind(&token, &normalized, Some("msteams"));
            if claim.same_endpoint(&activity) {
                prop_assert_eq!(bound, Ok(()), "{} / {}", claim_url, activity_url);
            } else {
                prop_assert_eq!(bound, Err(AuthReason::ServiceUrlMismatch), "{} / {}", claim_url, activity_url);
            }
        }
    }
}
