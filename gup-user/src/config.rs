//! The `gupwatch run` daemon's configuration: a TOML file whose keys are
//! the flags of `run` (flags given on the command line win), and what a
//! reload (SIGHUP) can change without a restart.
//!
//! ```toml
//! # /etc/gupwatch/gupwatch.toml (every key optional)
//! listen = "127.0.0.1:10483"   # restart needed
//! top_processes = 10           # live
//! long_held = 300              # seconds; live
//! weak_pin = 1                 # seconds; live
//! track_capacity = 65536       # folios; restart needed
//! log_format = "text"          # or "json"; restart needed
//! log_level = "info"           # tracing filter, e.g. "gupwatch=debug,info"; live
//! web_config = "/etc/gupwatch/web.yml"  # TLS/basic auth (exporter-toolkit
//!                                       # format); which file: restart needed,
//!                                       # its contents: re-read on change
//! max_connections_per_peer = 256  # open connections per client address
//!                                 # (IPv6: per /64); restart needed
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Where `gupwatch run` looks for its configuration when `--config` is
/// not given (used only if it exists).
pub const DEFAULT_PATH: &str = "/etc/gupwatch/gupwatch.toml";

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (no timestamps under journald, which adds them).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The settings of `run`, each optional: from the command line or the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Process names with their own per-process metric series.
    pub top_processes: Option<usize>,
    /// Pins held longer than this many seconds are long-held.
    pub long_held: Option<u64>,
    /// Short-term pins on ZONE_MOVABLE pages held longer than this many
    /// seconds are weak pins.
    pub weak_pin: Option<u64>,
    /// Capacity of the pin tracking map, in folios.
    pub track_capacity: Option<u32>,
    /// Log line format.
    pub log_format: Option<LogFormat>,
    /// Log filter (`tracing` directives: `info`, `gupwatch=debug,warn`).
    pub log_level: Option<String>,
    /// Web configuration file (TLS, basic auth) for the endpoint.
    pub web_config: Option<PathBuf>,
    /// Connections one client address may have open at once.
    pub max_connections_per_peer: Option<usize>,
    /// Write `/proc/sys/vm/stat_refresh` at most once per this many
    /// seconds (0: at every reading); absent: never.
    pub vmstat_refresh: Option<u64>,
}

/// The settings `run` uses, every one decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSettings {
    /// Address to listen on.
    pub listen: String,
    /// Per-process series.
    pub top_processes: usize,
    /// Long-held threshold.
    pub long_held: Duration,
    /// Weak-pin threshold.
    pub weak_pin: Duration,
    /// Tracking map capacity.
    pub track_capacity: u32,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Web configuration file, if any (plain HTTP without one).
    pub web_config: Option<PathBuf>,
    /// Connections one client address may have open at once.
    pub max_connections_per_peer: usize,
    /// Least time between `stat_refresh` writes; `None`: never.
    pub vmstat_refresh: Option<Duration>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown key or wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl RunOptions {
    /// Parses a configuration file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<RunOptions, ConfigError> {
        let o: RunOptions =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        if o.track_capacity == Some(0) {
            return Err(invalid("track_capacity must be at least 1".into()));
        }
        if o.max_connections_per_peer == Some(0) {
            return Err(invalid("max_connections_per_peer must be at least 1".into()));
        }
        if let Some(l) = &o.log_level {
            crate::args::log_filter(l).map_err(|e| invalid(format!("log_level {l:?}: {e}")))?;
        }
        Ok(o)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<RunOptions, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        RunOptions::parse(&text, path)
    }

    /// The file to read: `explicit` if given (it must exist), else
    /// [`DEFAULT_PATH`] if it exists, else none.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => Path::new(DEFAULT_PATH).exists().then(|| PathBuf::from(DEFAULT_PATH)),
        }
    }

    /// Command-line values over file values over defaults.
    pub fn resolve(cli: &RunOptions, file: &RunOptions) -> RunSettings {
        RunSettings {
            listen: listen_address(&cli.listen.clone().or(file.listen.clone()).unwrap_or_else(|| crate::export::http::DEFAULT_LISTEN.into())),
            top_processes: cli.top_processes.or(file.top_processes).unwrap_or(crate::collect::DEFAULT_TOP_PROCESSES),
            long_held: Duration::from_secs(
                cli.long_held.or(file.long_held).unwrap_or(crate::model::leaks::LeakPolicy::default().long_held.as_secs()),
            ),
            weak_pin: Duration::from_secs(
                cli.weak_pin.or(file.weak_pin).unwrap_or(crate::model::leaks::WEAK_PIN.as_secs()),
            ),
            track_capacity: cli.track_capacity.or(file.track_capacity).unwrap_or(gup_common::TRACK_CAPACITY),
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            log_level: cli.log_level.clone().or(file.log_level.clone()).unwrap_or_else(|| "info".into()),
            web_config: cli.web_config.clone().or(file.web_config.clone()),
            max_connections_per_peer: cli
                .max_connections_per_peer
                .or(file.max_connections_per_peer)
                .unwrap_or(crate::export::http::DEFAULT_MAX_CONNECTIONS_PER_PEER),
            vmstat_refresh: cli.vmstat_refresh.or(file.vmstat_refresh).map(Duration::from_secs),
        }
    }
}

/// What a reload changes: settings applied live, and keys whose new value
/// waits for a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// `key: old -> new` for each live change.
    pub applied: Vec<String>,
    /// Keys that changed but need a restart.
    pub needs_restart: Vec<&'static str>,
}

impl RunSettings {
    /// Compares the settings in force with reloaded ones.
    pub fn reload_plan(&self, new: &RunSettings) -> ReloadPlan {
        let mut p = ReloadPlan::default();
        if self.top_processes != new.top_processes {
            p.applied.push(format!("top_processes: {} -> {}", self.top_processes, new.top_processes));
        }
        if self.long_held != new.long_held {
            p.applied.push(format!("long_held: {}s -> {}s", self.long_held.as_secs(), new.long_held.as_secs()));
        }
        if self.weak_pin != new.weak_pin {
            p.applied.push(format!("weak_pin: {}s -> {}s", self.weak_pin.as_secs(), new.weak_pin.as_secs()));
        }
        if self.log_level != new.log_level {
            p.applied.push(format!("log_level: {} -> {}", self.log_level, new.log_level));
        }
        if self.vmstat_refresh != new.vmstat_refresh {
            p.applied.push(format!("vmstat_refresh: {} -> {}", refresh_name(self.vmstat_refresh), refresh_name(new.vmstat_refresh)));
        }
        // The socket is bound, the maps are created and the subscriber is
        // installed once, at start.
        if self.listen != new.listen {
            p.needs_restart.push("listen");
        }
        if self.track_capacity != new.track_capacity {
            p.needs_restart.push("track_capacity");
        }
        if self.log_format != new.log_format {
            p.needs_restart.push("log_format");
        }
        // The watcher follows the chosen file's contents, not the choice.
        if self.web_config != new.web_config {
            p.needs_restart.push("web_config");
        }
        // The server's limits are fixed when it starts.
        if self.max_connections_per_peer != new.max_connections_per_peer {
            p.needs_restart.push("max_connections_per_peer");
        }
        p
    }

    /// The settings after a reload: live keys from `new`, the rest as they
    /// are.
    pub fn reloaded(&self, new: &RunSettings) -> RunSettings {
        RunSettings {
            top_processes: new.top_processes,
            long_held: new.long_held,
            weak_pin: new.weak_pin,
            log_level: new.log_level.clone(),
            vmstat_refresh: new.vmstat_refresh,
            ..self.clone()
        }
    }

    /// For logs: `key=value ...`.
    pub fn describe(&self) -> String {
        format!(
            "listen={} top_processes={} long_held={}s weak_pin={}s track_capacity={} log_format={} log_level={} web_config={} max_connections_per_peer={} vmstat_refresh={}",
            self.listen,
            self.top_processes,
            self.long_held.as_secs(),
            self.weak_pin.as_secs(),
            self.track_capacity,
            self.log_format.as_str(),
            self.log_level,
            self.web_config.as_ref().map_or_else(|| "none".into(), |p| p.display().to_string()),
            self.max_connections_per_peer,
            refresh_name(self.vmstat_refresh)
        )
    }
}

fn refresh_name(r: Option<Duration>) -> String {
    r.map_or("off".into(), |d| format!("{}s", d.as_secs()))
}

/// `--listen` as the socket takes it: the Go exporters' `:PORT` (every
/// address) is `0.0.0.0:PORT`; anything else as given.
pub fn listen_address(given: &str) -> String {
    match given.strip_prefix(':') {
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => format!("0.0.0.0:{port}"),
        _ => given.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_the_go_exporters_form() {
        for (given, address) in [
            (":10483", "0.0.0.0:10483"),
            ("127.0.0.1:10483", "127.0.0.1:10483"),
            ("[::1]:10483", "[::1]:10483"),
            // Not a port: left for the socket to refuse with its own message.
            (":http", ":http"),
            (":", ":"),
        ] {
            assert_eq!(listen_address(given), address, "{given}");
        }
    }

    fn p() -> &'static Path {
        Path::new("/etc/gupwatch/gupwatch.toml")
    }

    #[test]
    fn every_key_parses() {
        let o = RunOptions::parse(
            "listen = \"0.0.0.0:9000\"\ntop_processes = 3\nlong_held = 60\nweak_pin = 2\ntrack_capacity = 1024\nlog_format = \"json\"\nlog_level = \"gupwatch=debug,warn\"\nweb_config = \"/etc/gupwatch/web.yml\"\nmax_connections_per_peer = 64\nvmstat_refresh = 10\n",
            p(),
        )
        .unwrap();
        assert_eq!(
            o,
            RunOptions {
                listen: Some("0.0.0.0:9000".into()),
                top_processes: Some(3),
                long_held: Some(60),
                weak_pin: Some(2),
                track_capacity: Some(1024),
                log_format: Some(LogFormat::Json),
                log_level: Some("gupwatch=debug,warn".into()),
                web_config: Some("/etc/gupwatch/web.yml".into()),
                max_connections_per_peer: Some(64),
                vmstat_refresh: Some(10),
            }
        );
        // Off unless asked for; then applied live.
        let off = RunOptions::resolve(&RunOptions::default(), &RunOptions::default());
        assert_eq!(off.vmstat_refresh, None);
        let on = RunOptions::resolve(&RunOptions::default(), &o);
        assert_eq!(on.vmstat_refresh, Some(Duration::from_secs(10)));
        assert!(off.reload_plan(&on).applied.contains(&"vmstat_refresh: off -> 10s".to_string()));
        assert_eq!(off.reloaded(&on).vmstat_refresh, Some(Duration::from_secs(10)));
        assert_eq!(RunOptions::parse("", p()).unwrap(), RunOptions::default());
        // The example in the packaging directory is valid.
        let example = include_str!("../../packaging/gupwatch.toml");
        RunOptions::parse(example, p()).expect("packaging/gupwatch.toml parses");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = RunOptions::parse("top_procesess = 3\n", p()).unwrap_err().to_string();
        assert!(e.starts_with("/etc/gupwatch/gupwatch.toml:") && e.contains("top_procesess"), "{e}");
        let e = RunOptions::parse("top_processes = \"many\"\n", p()).unwrap_err().to_string();
        assert!(e.contains("top_processes"), "{e}");
        let e = RunOptions::parse("log_format = \"xml\"\n", p()).unwrap_err().to_string();
        assert!(e.contains("xml"), "{e}");
        assert!(RunOptions::parse("track_capacity = 0\n", p()).is_err());
        let e = RunOptions::parse("max_connections_per_peer = 0\n", p()).unwrap_err().to_string();
        assert!(e.contains("max_connections_per_peer must be at least 1"), "{e}");
        assert!(RunOptions::parse("log_level = \"[[[\"\n", p()).is_err());
        assert!(RunOptions::parse("listen = \n", p()).is_err());
        let e = RunOptions::load(Path::new("/nonexistent/gupwatch.toml")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read /nonexistent/gupwatch.toml"), "{e}");
    }

    #[test]
    fn command_line_wins_over_file_over_defaults() {
        let file = RunOptions { listen: Some("0.0.0.0:1".into()), top_processes: Some(3), ..Default::default() };
        let cli = RunOptions { top_processes: Some(7), log_level: Some("debug".into()), ..Default::default() };
        let s = RunOptions::resolve(&cli, &file);
        assert_eq!(s.listen, "0.0.0.0:1");
        assert_eq!(s.top_processes, 7);
        assert_eq!(s.long_held, Duration::from_secs(300));
        assert_eq!(s.weak_pin, Duration::from_secs(1));
        assert_eq!(s.track_capacity, gup_common::TRACK_CAPACITY);
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.web_config, None, "plain HTTP unless a web config is named");
        assert_eq!(s.max_connections_per_peer, 256);
        let cli = RunOptions { max_connections_per_peer: Some(9), ..Default::default() };
        let file = RunOptions { max_connections_per_peer: Some(5), ..Default::default() };
        assert_eq!(RunOptions::resolve(&cli, &file).max_connections_per_peer, 9);
        assert_eq!(RunOptions::resolve(&RunOptions::default(), &file).max_connections_per_peer, 5);
        let cli = RunOptions { web_config: Some("/a.yml".into()), ..Default::default() };
        let file = RunOptions { web_config: Some("/b.yml".into()), ..Default::default() };
        assert_eq!(RunOptions::resolve(&cli, &file).web_config, Some("/a.yml".into()));
        assert_eq!(RunOptions::resolve(&RunOptions::default(), &file).web_config, Some("/b.yml".into()));
        assert_eq!(RunOptions::resolve(&RunOptions::default(), &RunOptions::default()).listen, crate::export::http::DEFAULT_LISTEN);
    }

    #[test]
    fn reload_applies_live_keys_and_lists_the_rest() {
        let old = RunOptions::resolve(&RunOptions::default(), &RunOptions::default());
        let new = RunOptions::resolve(
            &RunOptions::default(),
            &RunOptions {
                listen: Some("0.0.0.0:2".into()),
                top_processes: Some(2),
                long_held: Some(5),
                log_format: Some(LogFormat::Json),
                log_level: Some("info".into()),
                web_config: Some("/etc/gupwatch/web.yml".into()),
                max_connections_per_peer: Some(8),
                ..Default::default()
            },
        );
        let plan = old.reload_plan(&new);
        assert_eq!(plan.applied, ["top_processes: 10 -> 2", "long_held: 300s -> 5s"]);
        assert_eq!(plan.needs_restart, ["listen", "log_format", "web_config", "max_connections_per_peer"]);
        let after = old.reloaded(&new);
        assert_eq!((after.top_processes, after.long_held.as_secs()), (2, 5));
        assert_eq!((after.listen.as_str(), after.log_format), (old.listen.as_str(), LogFormat::Text), "restart keys stay");
        assert_eq!(old.reload_plan(&old), ReloadPlan::default());
    }
}
