//! The `tracing` subscribers: `gupwatch run`'s (text or JSON lines, its
//! filter changed on SIGHUP) and the other commands' (only when
//! `GUPWATCH_LOG` asks for one).

use crate::config::LogFormat;

/// Why a logger could not be installed or changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("bad {what} {level:?}: {reason}")]
    BadFilter { what: &'static str, level: String, reason: String },
    #[error("cannot install the logger: {0}")]
    Install(String),
    #[error("cannot install the logger")]
    Init(#[source] tracing_subscriber::util::TryInitError),
    // The cause in the message: the SIGHUP log line prints this error alone.
    #[error("cannot change the log filter: {0}")]
    Reload(#[source] tracing_subscriber::reload::Error),
}

fn filter(what: &'static str, level: &str) -> Result<tracing_subscriber::EnvFilter, LogError> {
    crate::args::log_filter(level).map_err(|reason| LogError::BadFilter { what, level: level.to_string(), reason })
}

/// Changes the running logger's filter (SIGHUP).
pub struct LogHandle(tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>);

impl LogHandle {
    pub fn set_level(&self, level: &str) -> Result<(), LogError> {
        let filter = filter("log filter", level)?;
        self.0.reload(filter).map_err(LogError::Reload)
    }
}

/// The modes other than `run` log through `tracing` only when
/// `GUPWATCH_LOG` holds a filter (as `--log-level`: `debug`,
/// `gupwatch::ebpf=debug`): text lines on stderr. Its use is the eBPF
/// side's debug logs in `gupwatch check`, `leaks` and the summary mode.
pub fn init_env_logging() -> Result<(), LogError> {
    let Some(level) = std::env::var_os("GUPWATCH_LOG") else { return Ok(()) };
    let level = level.to_string_lossy();
    let filter = filter("GUPWATCH_LOG", &level)?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))
}

/// Installs the `tracing` subscriber for `gupwatch run`: text or JSON lines
/// on stderr (journald takes stderr under systemd and stamps each line, so
/// text lines carry no time of their own there).
pub fn init_logging(format: LogFormat, level: &str) -> Result<LogHandle, LogError> {
    use tracing_subscriber::{fmt, layer::SubscriberExt, reload, util::SubscriberInitExt};
    let filter = filter("--log-level", level)?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_current_span(false).with_span_list(false).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Text if journald => {
            registry.with(fmt::layer().without_time().with_ansi(false).with_writer(std::io::stderr)).try_init()
        }
        LogFormat::Text => registry.with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).try_init(),
    };
    installed.map_err(LogError::Init)?;
    Ok(LogHandle(handle))
}
