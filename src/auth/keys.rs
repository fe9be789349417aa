//! Signing keys of one cloud's Bot Framework channel, fetched only from the `jwks_uri` of the pinned
//! OpenID metadata document (whose `issuer` must be the cloud's issuer).
//!
//! * a background task refreshes the keys routinely (24 h by default, with jitter) and retries with
//!   backoff while none could ever be loaded;
//! * an unknown `kid` triggers at most one on-demand refresh per cooldown, single-flight: a flood of
//!   random `kid`s costs at most one fetch per cooldown;
//! * when refreshes fail, the last good keys are served until `refresh + stale grace` has passed;
//! * with no usable keys, [`Lookup::NoKeys`] lets the caller answer 503.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;

use crate::config::check_fetch_url;
use crate::ids::Cloud;
use crate::metrics::Metrics;

/// Largest metadata or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One RSA signing key and the channels it is endorsed for.
pub struct SigningKey {
    pub kid: String,
    pub key: DecodingKey,
    pub endorsements: Vec<String>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("endorsements", &self.endorsements).finish()
    }
}

/// The result of asking for a key.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<SigningKey>),
    UnknownKid,
    NoKeys,
}

#[derive(Debug, Clone, Copy)]
pub struct KeyCacheSettings {
    pub refresh_every: Duration,
    pub unknown_kid_cooldown: Duration,
    pub stale_grace: Duration,
    pub fetch_timeout: Duration,
}

struct Loaded {
    keys: HashMap<String, Arc<SigningKey>>,
    fetched_at: Instant,
}

/// The key cache of one cloud.
pub struct KeyCache {
    cloud: Cloud,
    /// The `issuer` the metadata document must state.
    issuer: String,
    metadata_url: url::Url,
    http: reqwest::Client,
    settings: KeyCacheSettings,
    loaded: RwLock<Option<Arc<Loaded>>>,
    refresh_lock: tokio::sync::Mutex<()>,
    last_on_demand: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache").field("cloud", &self.cloud).field("metadata_url", &self.metadata_url.as_str()).finish()
    }
}

/// Why a refresh failed (logged; never sent to a client).
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error("fetching {url}: {reason}")]
    Http { url: String, reason: String },
    #[error("metadata issuer `{found}` is not the pinned issuer `{expected}`")]
    IssuerMismatch { found: String, expected: String },
    #[error("metadata jwks_uri rejected: {0}")]
    BadJwksUri(String),
    #[error("the key set holds no usable RS256 signing key")]
    NoUsableKeys,
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    endorsements: Vec<String>,
}

impl KeyCache {
    pub fn new(cloud: Cloud, metadata_url: url::Url, settings: KeyCacheSettings, metrics: Arc<Metrics>) -> Result<Self, reqwest::Error> {
        Self::with_issuer(cloud, cloud.issuer().to_owned(), metadata_url, settings, metrics)
    }

    /// A cache whose metadata must state `issuer` (an Entra tenant's, for agentic tokens).
    pub fn with_issuer(
        cloud: Cloud,
        issuer: String,
        metadata_url: url::Url,
        settings: KeyCacheSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            cloud,
            issuer,
            metadata_url,
            http,
            settings,
            loaded: RwLock::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            last_on_demand: Mutex::new(None),
            metrics,
        })
    }

    /// A cache holding `keys` already, as if just fetched, that will not fetch on demand for an hour
    /// (its metadata URL is a closed loopback port besides): for tests of the verifier alone.
    #[cfg(test)]
    pub(crate) fn preloaded(cloud: Cloud, keys: Vec<SigningKey>, metrics: Arc<Metrics>) -> Self {
        let hour = Duration::from_secs(3600);
        let settings = KeyCacheSettings { refresh_every: hour, unknown_kid_cooldown: hour, stale_grace: hour, fetch_timeout: hour };
        let url = url::Url::parse("http://127.0.0.1:9/metadata").unwrap();
        let cache = Self::new(cloud, url, settings, metrics).unwrap();
        let keys = keys.into_iter().map(|k| (k.kid.clone(), Arc::new(k))).collect();
        *cache.loaded.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(Loaded { keys, fetched_at: Instant::now() }));
        *cache.last_on_demand.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        cache
    }

    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    fn usable(&self) -> Option<Arc<Loaded>> {
        let guard = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        let l = guard.as_ref()?;
        (l.fetched_at.elapsed() <= self.settings.refresh_every + self.settings.stale_grace).then(|| Arc::clone(l))
    }

    /// Whether keys are loaded and within their bound (readiness).
    pub fn has_keys(&self) -> bool {
        self.usable().is_some()
    }

    /// The current key for `kid`, without any refresh (used to re-check cached verifications).
    pub fn current(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.usable()?.keys.get(kid).cloned()
    }

    /// The key for `kid`, refreshing on demand (rate-limited) when it is unknown or no keys are usable.
    pub async fn key(&self, kid: &str) -> Lookup {
        if let Some(k) = self.current(kid) {
            return Lookup::Found(k);
        }
        self.refresh_on_demand(kid).await;
        match self.usable() {
            None => Lookup::NoKeys,
            Some(l) => l.keys.get(kid).cloned().map_or(Lookup::UnknownKid, Lookup::Found),
        }
    }

    async fn refresh_on_demand(&self, kid: &str) {
        let _guard = self.refresh_lock.lock().await;
        // Another refresh (start-up, background or on demand) may have finished while we waited.
        if self.current(kid).is_some() {
            return;
        }
        {
            let mut last = self.last_on_demand.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.settings.unknown_kid_cooldown) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.fetch_and_store().await {
            tracing::warn!(cloud = %self.cloud, error = %e, "on-demand signing key refresh failed");
        }
    }

    /// Refresh now (start-up and the background task); single-flight with on-demand refreshes.
    pub async fn refresh(&self) -> Result<(), KeyFetchError> {
        let _guard = self.refresh_lock.lock().await;
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<(), KeyFetchError> {
        let result = self.fetch().await;
        self.metrics.key_refresh(self.cloud, result.is_ok());
        let keys = result?;
        tracing::info!(cloud = %self.cloud, keys = keys.len(), "signing keys loaded");
        let loaded = Arc::new(Loaded { keys, fetched_at: Instant::now() });
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Some(loaded);
        Ok(())
    }

    async fn get_document<T: serde::de::DeserializeOwned>(&self, url: &url::Url) -> Result<T, KeyFetchError> {
        let err = |reason: String| KeyFetchError::Http { url: url.to_string(), reason };
        let resp = self.http.get(url.clone()).send().await.map_err(|e| err(crate::http_util::error_chain(&e.without_url())))?;
        if !resp.status().is_success() {
            return Err(err(format!("status {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
            return Err(err("document too large".into()));
        }
        let body = resp.bytes().await.map_err(|e| err(crate::http_util::error_chain(&e.without_url())))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(err("document too large".into()));
        }
        serde_json::from_slice(&body).map_err(|e| err(format!("invalid JSON document: {e}")))
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<SigningKey>>, KeyFetchError> {
        let meta: Metadata = self.get_document(&self.metadata_url).await?;
        if meta.issuer != self.issuer {
            return Err(KeyFetchError::IssuerMismatch { found: meta.issuer, expected: self.issuer.clone() });
        }
        let jwks_url = check_fetch_url(&meta.jwks_uri).map_err(KeyFetchError::BadJwksUri)?;
        let set: RawJwks = self.get_document(&jwks_url).await?;
        let mut keys = HashMap::new();
        for k in set.keys {
            let usable = k.kty == "RSA" && k.use_.as_deref().is_none_or(|u| u == "sig") && k.alg.as_deref().is_none_or(|a| a == "RS256");
            let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else { continue };
            if !usable || kid.is_empty() {
                continue;
            }
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(key) => {
                    keys.insert(kid.clone(), Arc::new(SigningKey { kid, key, endorsements: k.endorsements }));
                }
                Err(e) => tracing::warn!(cloud = %self.cloud, kid = %kid, error = %e, "skipping unusable signing key"),
            }
        }
        if keys.is_empty() {
            return Err(KeyFetchError::NoUsableKeys);
        }
        Ok(keys)
    }

    /// Keep the keys fresh: load at once, then refresh every `refresh_every` (minus up to 10 % jitter).
    /// After a failure, retry with backoff from 2 s, up to 60 s while no keys are usable and up to
    /// 5 minutes while the last good keys are still served.
    pub fn spawn_background(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(2);
            loop {
                let ok = match self.refresh().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(cloud = %self.cloud, error = %e, "signing key refresh failed; serving the last good keys if any");
                        false
                    }
                };
                let wait = if ok {
                    backoff = Duration::from_secs(2);
                    let base = self.settings.refresh_every;
                    base - base.mul_f64(fastrand::f64() * 0.1)
                } else {
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(if self.has_keys() { 300 } else { 60 }));
                    w
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}
