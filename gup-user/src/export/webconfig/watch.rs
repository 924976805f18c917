//! Following the web configuration's files: reload on change, keep the
//! configuration in force when a change does not load.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use super::{Security, WebConfig, WebConfigError};

/// A file's identity for change detection.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

struct WatchState {
    active: Arc<Security>,
    config: WebConfig,
    stamps: Vec<(PathBuf, Stamp)>,
    checked: Instant,
}

/// A loaded web configuration that follows changes to its files.
pub struct WebConfigWatcher {
    path: PathBuf,
    interval: Duration,
    state: Mutex<WatchState>,
}

impl WebConfigWatcher {
    /// Loads and builds the configuration; any error is returned (at start
    /// a bad configuration must stop the daemon, not open the endpoint).
    pub fn load(path: &Path) -> Result<WebConfigWatcher, WebConfigError> {
        let config = WebConfig::load(path)?;
        let active = Arc::new(config.build()?);
        let stamps = Self::stamps(path, &config);
        Ok(WebConfigWatcher {
            path: path.to_path_buf(),
            interval: Duration::from_secs(1),
            state: Mutex::new(WatchState { active, config, stamps, checked: Instant::now() }),
        })
    }

    fn stamps(path: &Path, config: &WebConfig) -> Vec<(PathBuf, Stamp)> {
        std::iter::once(path.to_path_buf()).chain(config.files()).map(|p| {
            let s = stamp(&p);
            (p, s)
        }).collect()
    }

    /// The configuration in force (as loaded first).
    pub fn config(&self) -> WebConfig {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).config.clone()
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.current().tls().is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// What applies to a new connection: reloads first if a file changed
    /// (checked at most once per interval). A change that fails to load is
    /// logged; the configuration in force stays.
    pub fn current(&self) -> Arc<Security> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= self.interval {
            st.checked = Instant::now();
            let now: Vec<(PathBuf, Stamp)> = st.stamps.iter().map(|(p, _)| (p.clone(), stamp(p))).collect();
            if now != st.stamps {
                match WebConfig::load(&self.path).and_then(|c| c.build().map(|s| (c, s))) {
                    Ok((config, security)) => {
                        tracing::info!(path = %self.path.display(), settings = %config.describe(), "web config reloaded");
                        st.stamps = Self::stamps(&self.path, &config);
                        st.active = Arc::new(security);
                        st.config = config;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "web config changed but does not load; the one in force stays");
                        st.stamps = now;
                    }
                }
            }
        }
        Arc::clone(&st.active)
    }
}
