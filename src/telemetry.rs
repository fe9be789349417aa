//! Logging set-up: one subscriber, to stderr (stdout carries only the `listening on` line).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. `RUST_LOG` overrides `level`. Safe to call once.
///
/// Unless `RUST_LOG` says otherwise, rmcp logs warnings only: at INFO it logs every notification a host
/// sends (a permission request's tool input, which may hold a secret) and every session id.
pub(crate) fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter(level)))
        .unwrap_or_else(|_| EnvFilter::new(default_filter("info")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    // Colours only on a terminal: log files and journald get plain text.
    let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The filter without `RUST_LOG`: `level`, with rmcp held at `warn` unless `level` names rmcp itself.
fn default_filter(level: &str) -> String {
    if level.contains("rmcp") { level.to_owned() } else { format!("{level},rmcp=warn") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmcp_is_held_at_warn_by_default() {
        assert_eq!(default_filter("info"), "info,rmcp=warn");
        assert_eq!(default_filter("debug"), "debug,rmcp=warn");
        assert_eq!(default_filter("info,rmcp=debug"), "info,rmcp=debug");
        assert!(EnvFilter::try_new(default_filter("agentgate=debug,info")).is_ok());
    }
}
