//! Secret references and redaction.
//!
//! Configuration never holds a secret value itself: a bot's `credential` is a *reference* that says
//! where the secret lives (`env:NAME`, `file:/path`, `credential:NAME` for systemd `LoadCredential`,
//! `keyring:service/user`). Values, once loaded, live in [`secrecy::SecretString`] so that `Debug`
//! output and logs never show them.

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keyring_core::CredentialStore;
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

/// The largest secret accepted from a file or a systemd credential (a PEM key plus a chain is a few KB).
const MAX_SECRET_BYTES: u64 = 1024 * 1024;

/// How long an OS keyring lookup may take (a D-Bus service activation can hang for a long time).
const KEYRING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a secret could not be loaded. Every message names the reference and how to fix it, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `env:NAME` where the variable is not set.
    #[error("env:{name}: the environment variable is not set; export it, or use file:/path (mode 0600) or credential:NAME")]
    EnvMissing { name: String },
    /// `env:NAME` where the variable is set but empty.
    #[error("env:{name}: the environment variable is empty")]
    EnvEmpty { name: String },
    /// `env:NAME` where the variable is not UTF-8.
    #[error("env:{name}: the environment variable is not valid UTF-8")]
    EnvNotUnicode { name: String },
    /// A file or credential that cannot be opened or read.
    #[error("{reference}: cannot read {path}: {reason}")]
    Unreadable { reference: String, path: String, reason: String },
    /// A file or credential path that is a directory, device, FIFO…
    #[error("{reference}: {path} is not a regular file")]
    NotAFile { reference: String, path: String },
    /// A secret file that group or others may read or write.
    #[error("{reference}: {path} can be read or written by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    TooOpen { reference: String, path: String, mode: u32 },
    /// A secret file larger than any secret.
    #[error("{reference}: {path} is larger than 1 MiB, which is not a secret")]
    TooLarge { reference: String, path: String },
    /// A secret that is not UTF-8 text (PEM and client secrets are ASCII).
    #[error("{reference}: {path} is not UTF-8 text (PEM files and client secrets are plain text)")]
    NotText { reference: String, path: String },
    /// A secret that is empty (after removing a trailing newline).
    #[error("{reference}: the secret is empty")]
    Empty { reference: String },
    /// `credential:NAME` outside a systemd service with `LoadCredential=`.
    #[error(
        "credential:{name}: $CREDENTIALS_DIRECTORY is not set, so agentgate is not running under systemd LoadCredential= \
         (add `LoadCredential={name}:/path/to/secret` to the unit, or use file:/path (mode 0600) or env:VAR)"
    )]
    NotUnderSystemd { name: String },
    /// `credential:NAME` with a name that would leave the credentials directory.
    #[error("credential:{name}: not a credential name")]
    BadCredentialName { name: String },
    /// No OS keyring can be reached (headless machine, container, no D-Bus session bus).
    #[error(
        "keyring:{service}/{user}: the OS keyring is unavailable here ({reason}); on a headless server or in a container \
         use file:/path (mode 0600), env:VAR or credential:NAME (systemd LoadCredential=) instead"
    )]
    KeyringUnavailable { service: String, user: String, reason: String },
    /// The keyring works but holds no such entry.
    #[error(
        "keyring:{service}/{user}: no such entry in the OS keyring ({searched}); store it with \
         `secret-tool store --label=agentgate service {service} username {user}`, or use file:/path, env:VAR or credential:NAME"
    )]
    KeyringNoEntry { service: String, user: String, searched: String },
    /// The lookup itself failed (a panic in the blocking task, a timeout).
    #[error("{reference}: {reason}")]
    Failed { reference: String, reason: String },
    /// Any other keyring failure (locked collection, ambiguous entries, bad encoding, timeout…).
    #[error("keyring:{service}/{user}: {reason}")]
    Keyring { service: String, user: String, reason: String },
}

impl SecretRef {
    /// Load the secret. Runs on a blocking thread (the keyring talks D-Bus synchronously, and zbus must not
    /// be driven from inside the tokio runtime); a keyring that does not answer within 10 s is an error.
    pub async fn load(&self) -> Result<SecretString, SecretError> {
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || this.load_blocking());
        match tokio::time::timeout(KEYRING_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(self.failed(format!("the lookup failed unexpectedly ({join})"))),
            Err(_) => Err(self.failed(format!("no answer within {} s", KEYRING_TIMEOUT.as_secs()))),
        }
    }

    /// Load material that is not secret but lives in the same kinds of places (a certificate): like
    /// [`SecretRef::load`], without the file permission check.
    pub async fn load_public(&self) -> Result<SecretString, SecretError> {
        if let Self::File(path) = self {
            let (reference, path) = (self.to_string(), path.clone());
            return tokio::task::spawn_blocking(move || read_secret_file(&reference, &path, false))
                .await
                .unwrap_or_else(|join| Err(self.failed(format!("the read failed unexpectedly ({join})"))));
        }
        self.load().await
    }

    /// Load the secret on the current thread. Do not call from inside a tokio task: use [`SecretRef::load`].
    pub fn load_blocking(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::Env(name) => load_env(name),
            Self::File(path) => read_secret_file(&self.to_string(), path, true),
            Self::Credential(name) => load_credential(std::env::var_os("CREDENTIALS_DIRECTORY").as_deref().map(Path::new), name),
            Self::Keyring { service, user } => keyring_lookup(OS_KEYRING_STORES, service, user),
        }
    }

    fn failed(&self, reason: String) -> SecretError {
        match self {
            Self::Keyring { service, user } => SecretError::Keyring { service: service.clone(), user: user.clone(), reason },
            other => SecretError::Failed { reference: other.to_string(), reason },
        }
    }
}

fn load_env(name: &str) -> Result<SecretString, SecretError> {
    match std::env::var(name) {
        Ok(v) if v.is_empty() => Err(SecretError::EnvEmpty { name: name.to_owned() }),
        Ok(v) => Ok(SecretString::from(v)),
        Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing { name: name.to_owned() }),
        Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode { name: name.to_owned() }),
    }
}

/// `credential:NAME` read from `dir` (the value of `$CREDENTIALS_DIRECTORY`).
fn load_credential(dir: Option<&Path>, name: &str) -> Result<SecretString, SecretError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(SecretError::BadCredentialName { name: name.to_owned() });
    }
    let dir = dir.filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| SecretError::NotUnderSystemd { name: name.to_owned() })?;
    // systemd owns the directory and sets the file modes itself, so no permission check here.
    read_secret_file(&format!("credential:{name}"), &dir.join(name), false)
}

/// Read a secret file: a regular file (symlinks followed), at most 1 MiB, UTF-8, trailing newline removed.
/// With `private`, refuse a file that group or others can read or write.
fn read_secret_file(reference: &str, path: &Path, private: bool) -> Result<SecretString, SecretError> {
    let shown = path.display().to_string();
    let unreadable =
        |e: std::io::Error| SecretError::Unreadable { reference: reference.to_owned(), path: shown.clone(), reason: e.to_string() };
    // Open first and check the open file's metadata, so the checked file is the file read.
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { reference: reference.to_owned(), path: shown });
    }
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretError::TooOpen { reference: reference.to_owned(), path: shown, mode });
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    if meta.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge { reference: reference.to_owned(), path: shown });
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge { reference: reference.to_owned(), path: shown });
    }
    let mut text = String::from_utf8(bytes).map_err(|_| SecretError::NotText { reference: reference.to_owned(), path: shown })?;
    let kept = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(kept);
    if text.is_empty() {
        return Err(SecretError::Empty { reference: reference.to_owned() });
    }
    Ok(SecretString::from(text))
}

/// A keyring store, named for error messages, created on demand (connecting may fail).
type StoreFactory = (&'static str, fn() -> keyring_core::Result<Arc<CredentialStore>>);

/// The OS stores, in order: the desktop Secret Service (D-Bus), then the kernel keyring (keyutils).
const OS_KEYRING_STORES: &[StoreFactory] = &[("Secret Service", secret_service_store), ("kernel keyring", keyutils_store)];

fn secret_service_store() -> keyring_core::Result<Arc<CredentialStore>> {
    let store: Arc<CredentialStore> = zbus_secret_service_keyring_store::Store::new()?;
    Ok(store)
}

fn keyutils_store() -> keyring_core::Result<Arc<CredentialStore>> {
    let store: Arc<CredentialStore> = linux_keyutils_keyring_store::Store::new()?;
    Ok(store)
}

/// A keyring error as text that holds no secret material (never the raw bytes some variants carry).
fn describe_keyring_error(e: &keyring_core::Error) -> String {
    use keyring_core::Error as E;
    match e {
        E::PlatformFailure(p) | E::NoStorageAccess(p) => {
            // zbus repeats itself down the chain; keep each distinct message once.
            let mut s = p.to_string();
            let mut source = p.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                source = cause.source();
            }
            s
        }
        E::NoEntry => "no entry".to_owned(),
        E::BadEncoding(_) => "the stored value is not UTF-8 text".to_owned(),
        E::BadDataFormat(..) => "the stored value is malformed".to_owned(),
        E::Ambiguous(items) => format!("{} entries match; remove the duplicates", items.len()),
        other => other.to_string(),
    }
}

/// Look `service`/`user` up in each store in turn: the first value found wins. The first store is the
/// desktop keyring: when it cannot be reached (no D-Bus session bus: a headless server or a container),
/// the error says the OS keyring is unavailable here, whatever the fallbacks say.
fn keyring_lookup(stores: &[StoreFactory], service: &str, user: &str) -> Result<SecretString, SecretError> {
    let mut notes = Vec::new();
    let mut desktop_reachable = false;
    for (i, (name, factory)) in stores.iter().enumerate() {
        let store = match factory() {
            Ok(s) => s,
            Err(e) => {
                notes.push(format!("{name}: unavailable ({})", describe_keyring_error(&e)));
                continue;
            }
        };
        let got = store.build(service, user, None).and_then(|entry| entry.get_password());
        match got {
            Ok(v) if v.is_empty() => return Err(SecretError::Empty { reference: format!("keyring:{service}/{user}") }),
            Ok(v) => return Ok(SecretString::from(v)),
            Err(keyring_core::Error::NoEntry) => {
                desktop_reachable |= i == 0;
                notes.push(format!("{name}: no entry"));
            }
            Err(e @ (keyring_core::Error::PlatformFailure(_) | keyring_core::Error::NoStorageAccess(_))) => {
                notes.push(format!("{name}: unavailable ({})", describe_keyring_error(&e)));
            }
            Err(e) => {
                return Err(SecretError::Keyring {
                    service: service.to_owned(),
                    user: user.to_owned(),
                    reason: format!("{name}: {}", describe_keyring_error(&e)),
                });
            }
        }
    }
    let (service, user) = (service.to_owned(), user.to_owned());
    if desktop_reachable {
        return Err(SecretError::KeyringNoEntry { service, user, searched: notes.join("; ") });
    }
    let reason = if notes.is_empty() { "no keyring store is built in".to_owned() } else { notes.join("; ") };
    Err(SecretError::KeyringUnavailable { service, user, reason })
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

    fn write_secret(dir: &Path, name: &str, content: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn private_file_loads_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_secret(dir.path(), "secret", "s3cr3t-value\n", 0o600);
        let got = SecretRef::File(path).load_blocking().unwrap();
        assert_eq!(got.expose_secret(), "s3cr3t-value");
        let path = write_secret(dir.path(), "crlf", "value\r\n", 0o400);
        assert_eq!(SecretRef::File(path).load_blocking().unwrap().expose_secret(), "value");
    }

    #[test]
    fn file_readable_by_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o660] {
            let path = write_secret(dir.path(), "open", "hunter2-do-not-show", mode);
            let e = SecretRef::File(path.clone()).load_blocking().unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, SecretError::TooOpen { .. }), "{mode:o}: {msg}");
            assert!(msg.contains(&format!("chmod 600 {}", path.display())), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
            assert!(!format!("{e:?}").contains("hunter2"));
        }
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = SecretRef::File(missing.clone()).load_blocking().unwrap_err();
        assert!(matches!(e, SecretError::Unreadable { .. }) && e.to_string().contains(&missing.display().to_string()), "{e}");
        let e = SecretRef::File(dir.path().to_owned()).load_blocking().unwrap_err();
        assert!(matches!(e, SecretError::NotAFile { .. }), "{e}");
        let empty = write_secret(dir.path(), "empty", "\n", 0o600);
        assert!(matches!(SecretRef::File(empty).load_blocking(), Err(SecretError::Empty { .. })));
    }

    #[test]
    fn env_reference_names_the_missing_variable() {
        let e = SecretRef::Env("AGENTGATE_TEST_SURELY_UNSET_VARIABLE".into()).load_blocking().unwrap_err();
        assert!(matches!(e, SecretError::EnvMissing { .. }));
        assert!(e.to_string().contains("AGENTGATE_TEST_SURELY_UNSET_VARIABLE"), "{e}");
        // PATH is always set: the success path without touching the process environment.
        assert!(!SecretRef::Env("PATH".into()).load_blocking().unwrap().expose_secret().is_empty());
    }

    #[test]
    fn credential_reads_the_systemd_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        // systemd sets the modes itself (0400 or 0440 with a group): no permission check.
        write_secret(dir.path(), "bot-secret", "from-systemd\n", 0o440);
        assert_eq!(load_credential(Some(dir.path()), "bot-secret").unwrap().expose_secret(), "from-systemd");
        let e = load_credential(Some(dir.path()), "absent").unwrap_err();
        assert!(e.to_string().starts_with("credential:absent: cannot read"), "{e}");
        let e = load_credential(None, "bot-secret").unwrap_err();
        assert!(e.to_string().contains("not running under systemd LoadCredential"), "{e}");
        assert!(matches!(load_credential(Some(dir.path()), ".."), Err(SecretError::BadCredentialName { .. })));
    }

    fn mock_store() -> keyring_core::Result<Arc<CredentialStore>> {
        static STORE: std::sync::OnceLock<Arc<keyring_core::mock::Store>> = std::sync::OnceLock::new();
        let store: Arc<CredentialStore> = STORE.get_or_init(|| keyring_core::mock::Store::new().unwrap()).clone();
        Ok(store)
    }

    fn no_bus() -> keyring_core::Result<Arc<CredentialStore>> {
        Err(keyring_core::Error::PlatformFailure("cannot connect to the D-Bus session bus".into()))
    }

    #[test]
    fn keyring_value_is_found_in_the_first_store_that_has_it() {
        mock_store().unwrap().build("agentgate", "contoso", None).unwrap().set_password("from-keyring").unwrap();
        let stores: &[StoreFactory] = &[("Secret Service", no_bus), ("mock", mock_store)];
        assert_eq!(keyring_lookup(stores, "agentgate", "contoso").unwrap().expose_secret(), "from-keyring");
        // The desktop keyring is unreachable, so a miss in a fallback store is still "unavailable here".
        let e = keyring_lookup(stores, "agentgate", "nobody").unwrap_err();
        assert!(matches!(e, SecretError::KeyringUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("Secret Service: unavailable (cannot connect"), "{e}");
        assert!(e.to_string().contains("mock: no entry"), "{e}");
        // A reachable desktop keyring without the entry says how to add it.
        let stores: &[StoreFactory] = &[("mock", mock_store)];
        let e = keyring_lookup(stores, "agentgate", "nobody").unwrap_err();
        assert!(matches!(e, SecretError::KeyringNoEntry { .. }), "{e}");
        assert!(e.to_string().contains("secret-tool store"), "{e}");
    }

    #[test]
    fn keyring_without_any_reachable_store_says_so() {
        let e = keyring_lookup(&[("Secret Service", no_bus)], "agentgate", "contoso").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, SecretError::KeyringUnavailable { .. }), "{msg}");
        assert!(msg.contains("OS keyring is unavailable here") && msg.contains("file:/path"), "{msg}");
    }

    #[tokio::test]
    async fn os_keyring_on_this_machine_fails_clearly() {
        // Called from inside the tokio runtime on purpose (zbus must not panic there). Without a D-Bus
        // session bus (headless, containers, CI) this is the clear "unavailable here" error; on a desktop
        // the entry simply does not exist.
        let r = SecretRef::Keyring { service: "agentgate-test".into(), user: "surely-absent".into() }.load().await;
        let headless = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
            && !Path::new(&format!(
                "/run/user/{}/bus",
                std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
            ))
            .exists();
        match r {
            Err(e @ SecretError::KeyringUnavailable { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("the OS keyring is unavailable here") && msg.contains("file:/path") && msg.contains("env:VAR"),
                    "{msg}"
                );
            }
            Err(e @ SecretError::KeyringNoEntry { .. }) if !headless => assert!(e.to_string().contains("file:/path"), "{e}"),
            other => panic!("unexpected (headless: {headless}): {other:?}"),
        }
    }

    #[test]
    fn secret_string_debug_is_redacted() {
        let s = SecretString::from("super-secret-value".to_owned());
        let shown = format!("{s:?}");
        assert!(!shown.contains("super-secret-value"), "{shown}");
    }
}
