//! The `log:` section every component's config has, and the one tracing set-up: a filter that
//! does not parse is an error naming the key, never a silent fallback.

use std::io::IsTerminal;

use serde::Deserialize;

/// Logging settings (`log:`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, `dragonfly_scheduler=debug,info`, ... Unless it
    /// names `fuser` or asks for `debug`/`trace` somewhere, fuser's "Failed to send FUSE
    /// reply" errors are left out: the kernel had interrupted the request (a process exiting
    /// mid-read, runc's exec), which is routine.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `log.level` is not a tracing filter.
#[derive(Debug, thiserror::Error)]
#[error("invalid log.level {level:?}: use a tracing filter such as `info` or `dragonfly_snapshotter=debug,info`")]
pub struct BadFilter {
    /// The configured filter.
    pub level: String,
    /// Why it does not parse.
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// Installs the global subscriber: lines (or JSON) on stderr, colours only on a terminal.
pub fn init(config: &LogConfig) -> Result<(), BadFilter> {
    let filter = filter(config)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

fn filter(config: &LogConfig) -> Result<tracing_subscriber::EnvFilter, BadFilter> {
    tracing_subscriber::EnvFilter::try_new(directives(&config.level)).map_err(|source| BadFilter {
        level: config.level.clone(),
        source,
    })
}

/// `level`, with fuser's reply errors left out unless it asks for them (see
/// [`LogConfig::level`]).
fn directives(level: &str) -> String {
    let verbose = ["fuser", "debug", "trace"]
        .iter()
        .any(|w| level.contains(w));
    if verbose || level.trim().is_empty() {
        level.to_owned()
    } else {
        format!("{level},fuser::reply=off")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_an_error_naming_the_key() {
        let bad = LogConfig {
            level: "dragonfly=[".into(),
            ..LogConfig::default()
        };
        let e = filter(&bad).unwrap_err();
        assert!(e.to_string().contains("invalid log.level"), "{e}");
        assert!(filter(&LogConfig::default()).is_ok());
    }

    #[test]
    fn fuser_reply_errors_are_shown_only_when_asked_for() {
        assert_eq!(directives("info"), "info,fuser::reply=off");
        assert_eq!(
            directives("dragonfly_snapshotter=debug,info"),
            "dragonfly_snapshotter=debug,info"
        );
        assert_eq!(directives("info,fuser=warn"), "info,fuser=warn");
        assert!(filter(&LogConfig::default()).is_ok());
    }

    #[test]
    fn format_is_text_or_json_and_nothing_else() {
        let c: LogConfig = serde_yaml_ng::from_str("format: json").unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.level, "info");
        assert!(serde_yaml_ng::from_str::<LogConfig>("format: xml").is_err());
    }
}
