//! File bytes to and from SharePoint and OneDrive without a bearer token: pre-authenticated download
//! links (a Teams file's `downloadUrl`, the redirect of a driveItem's `/content`) and OneDrive upload
//! sessions (the file consent flow's `uploadUrl`, Graph's `createUploadSession`).
//!
//! * Every URL passes [`FileHosts::check`] first (https SharePoint hosts, or a configured loopback fake):
//!   these URLs arrive in activities and answers, so they are an SSRF surface. Redirects are never
//!   followed, and no token of ours is ever attached.
//! * Downloads are bounded: a `Content-Length` over the bound is refused before the body is read, and a
//!   body that grows past it is cut off and refused.
//! * Uploads go in fragments of `chunk` bytes (a multiple of 320 KiB, below 60 MiB), each with
//!   `Content-Range: bytes {first}-{last}/{total}`, in order. A fragment that fails after it may have
//!   landed (5xx, a lost answer, `416`) is not blindly sent again: the session is asked where it stands
//!   (`GET uploadUrl` → `nextExpectedRanges`) and the upload goes on from there. A 429 or 503 waits its
//!   `Retry-After` (at most [`MAX_WAIT`]) and sends the same fragment again.
//! * Errors name the host at most: the URLs carry credentials in their query.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::ids::file_url::{FileHosts, FileUrlError};

/// The longest `Retry-After` waited for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Times an upload resumes after a failed fragment.
const MAX_RESUMES: u32 = 3;
/// Times one request is sent again after a 429/503 (or a download after a 5xx or a network failure).
const MAX_RETRIES: u32 = 4;

/// Why a transfer failed. Never holds a URL's query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The URL is not a file host: nothing was sent.
    #[error(transparent)]
    NotAllowed(#[from] FileUrlError),
    /// Larger than allowed: refused (nothing kept).
    #[error("the file is larger than {limit} bytes; refused")]
    TooLarge { limit: u64 },
    /// Throttled past the retries (or asked to wait longer than [`MAX_WAIT`]).
    #[error("throttled by the file host{}", .retry_after.map(|d| format!(" (retry after {} s)", d.as_secs())).unwrap_or_default())]
    Throttled { retry_after: Option<Duration> },
    /// The host answered with an error.
    #[error("the file host answered HTTP {status}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Http { status: u16, detail: String },
    /// No answer (timeout, connection failure).
    #[error("the file host could not be reached: {0}")]
    Unavailable(String),
    /// An upload session that does not behave (an answer without the expected ranges, a range that
    /// goes backwards).
    #[error("the upload session answered unexpectedly: {0}")]
    BadResponse(String),
}

/// What a download brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: Vec<u8>,
    /// The `Content-Type` the host sent.
    pub content_type: Option<String>,
}

/// Downloads and uploads against [`FileHosts`].
#[derive(Debug, Clone)]
pub struct FileTransfer {
    http: reqwest::Client,
    hosts: FileHosts,
}

impl FileTransfer {
    /// A client for `hosts`; each request may take `timeout`.
    pub fn new(hosts: FileHosts, timeout: Duration) -> Result<Self, TransferError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransferError::Unavailable(format!("building the HTTP client: {}", crate::http_util::error_chain(&e))))?;
        Ok(Self { http, hosts })
    }

    /// The file-host policy.
    pub fn hosts(&self) -> &FileHosts {
        &self.hosts
    }

    /// GET `url` (no token), at most `limit` bytes. A 429 or 503 waits its `Retry-After`; a 5xx or a
    /// network failure is tried again after a short backoff.
    pub async fn download(&self, url: &str, limit: u64) -> Result<Downloaded, TransferError> {
        let url = self.hosts.check_str(url)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let resp = match self.http.get(url.clone()).send().await {
                Ok(r) => r,
                Err(e) if tries <= MAX_RETRIES => {
                    tracing::debug!(host = url.host_str().unwrap_or(""), error = %e.without_url(), "download failed; trying again");
                    tokio::time::sleep(backoff(tries)).await;
                    continue;
                }
                Err(e) => return Err(TransferError::Unavailable(crate::http_util::error_chain(&e.without_url()))),
            };
            let status = resp.status().as_u16();
            if let Some(wait) = wait_for(&resp, status, tries)? {
                tokio::time::sleep(wait).await;
                continue;
            }
            if (500..=599).contains(&status) && tries <= MAX_RETRIES {
                tokio::time::sleep(backoff(tries)).await;
                continue;
            }
            if !(200..=299).contains(&status) {
                return Err(TransferError::Http { status, detail: String::new() });
            }
            let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let bytes = read_bounded(resp, limit).await?;
            return Ok(Downloaded { bytes, content_type });
        }
    }

    /// Upload `bytes` into the upload session at `upload_url` in fragments of `chunk` bytes; the session's
    /// final answer (the driveItem, when it sends one).
    pub async fn upload(&self, upload_url: &str, bytes: &[u8], chunk: u64) -> Result<Value, TransferError> {
        let url = self.hosts.check_str(upload_url)?;
        let total = bytes.len() as u64;
        if total == 0 {
            return Err(TransferError::BadResponse("an upload session takes no empty file".into()));
        }
        let chunk = chunk.max(1);
        let mut next: u64 = 0;
        let mut resumes = 0;
        let mut tries = 0;
        loop {
            let end = (next + chunk).min(total);
            let fragment = &bytes[usize::try_from(next).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(usize::MAX)];
            let range = format!("bytes {next}-{}/{total}", end - 1);
            let sent = self
                .http
                .put(url.clone())
                .header(reqwest::header::CONTENT_LENGTH, fragment.len())
                .header(reqwest::header::CONTENT_RANGE, &range)
                .body(fragment.to_vec())
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    // It may have landed: ask the session where it stands.
                    tracing::warn!(error = %e.without_url(), range, "an upload fragment failed; asking the session where it stands");
                    next = self.resume(&url, &mut resumes, total).await?;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            tries += 1;
            if let Some(wait) = wait_for(&resp, status, tries)? {
                tokio::time::sleep(wait).await;
                continue;
            }
            tries = 0;
            let body = read_bounded(resp, 1024 * 1024).await.unwrap_or_default();
            match status {
                200 | 201 => return Ok(serde_json::from_slice(&body).unwrap_or(Value::Null)),
                202 => {
                    let said = next_expected(&body).ok_or_else(|| TransferError::BadResponse("202 without nextExpectedRanges".into()))?;
                    if said <= next || said > total {
                        return Err(TransferError::BadResponse(format!("the session expects byte {said} after {range}")));
                    }
                    next = said;
                }
                416 | 500..=599 => {
                    tracing::warn!(status, range, "an upload fragment was refused; asking the session where it stands");
                    next = self.resume(&url, &mut resumes, total).await?;
                }
                _ => return Err(TransferError::Http { status, detail: error_detail(&body) }),
            }
        }
    }

    /// Where an upload session stands: the start of its first expected range (`GET uploadUrl`).
    async fn resume(&self, url: &Url, resumes: &mut u32, total: u64) -> Result<u64, TransferError> {
        *resumes += 1;
        if *resumes > MAX_RESUMES {
            return Err(TransferError::Unavailable(format!("the upload failed {MAX_RESUMES} times in a row")));
        }
        tokio::time::sleep(backoff(*resumes)).await;
        let resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| TransferError::Unavailable(crate::http_util::error_chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        let body = read_bounded(resp, 1024 * 1024).await?;
        if status != 200 {
            return Err(TransferError::Http { status, detail: error_detail(&body) });
        }
        let next = next_expected(&body).ok_or_else(|| TransferError::BadResponse("the session names no next expected range".into()))?;
        if next >= total {
            return Err(TransferError::BadResponse(format!("the session expects byte {next} of {total}")));
        }
        Ok(next)
    }
}

/// For a 429 or 503: how long to wait before the same request again (`Retry-After`, else 1 s), or the
/// error when the wait is too long or the retries are spent. `None` for any other status.
fn wait_for(resp: &reqwest::Response, status: u16, tries: u32) -> Result<Option<Duration>, TransferError> {
    if status != 429 && status != 503 {
        return Ok(None);
    }
    let retry_after =
        resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(crate::http_util::parse_retry_after);
    let wait = retry_after.unwrap_or(Duration::from_secs(1));
    if wait > MAX_WAIT || tries > MAX_RETRIES {
        return Err(TransferError::Throttled { retry_after });
    }
    Ok(Some(wait))
}

fn backoff(n: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << n.min(5)))
}

/// The first byte of `nextExpectedRanges[0]` (`"26-"` or `"26-127"`).
fn next_expected(body: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let first = v.get("nextExpectedRanges")?.as_array()?.first()?.as_str()?;
    first.split('-').next()?.trim().parse().ok()
}

/// `error.code: error.message` of an error body, shortened.
fn error_detail(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = &v["error"];
    let text = format!("{} {}", e["code"].as_str().unwrap_or(""), e["message"].as_str().unwrap_or(""));
    text.trim().chars().take(200).collect()
}

async fn read_bounded(mut resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, TransferError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(TransferError::TooLarge { limit });
    }
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                out.extend_from_slice(&c);
                if out.len() as u64 > limit {
                    return Err(TransferError::TooLarge { limit });
                }
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(TransferError::Unavailable(format!("reading the file: {}", crate::http_util::error_chain(&e.without_url()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_expected_ranges() {
        assert_eq!(next_expected(br#"{"nextExpectedRanges":["26-"]}"#), Some(26));
        assert_eq!(next_expected(br#"{"nextExpectedRanges":["12345-55232","77829-99375"]}"#), Some(12345));
        assert_eq!(next_expected(br#"{"nextExpectedRanges":[]}"#), None);
        assert_eq!(next_expected(b"nope"), None);
    }

    #[tokio::test]
    async fn refused_hosts_get_no_request() {
        let t = FileTransfer::new(FileHosts::default(), Duration::from_secs(1)).unwrap();
        for url in ["http://127.0.0.1:9/x", "https://169.254.169.254/latest", "https://evil.test/?tempauth=SECRET"] {
            let e = t.download(url, 10).await.unwrap_err();
            assert!(matches!(e, TransferError::NotAllowed(_)), "{url}: {e}");
            assert!(!e.to_string().contains("SECRET"));
            assert!(matches!(t.upload(url, b"x", 320 * 1024).await.unwrap_err(), TransferError::NotAllowed(_)));
        }
    }
}
