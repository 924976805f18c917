//! Where the live view's readings come from: this process's own probes
//! ([`LocalSource`]) or a `gupwatch run` daemon's `/api/snapshot`
//! ([`RemoteSource`], through [`crate::export::client`]: TLS and basic auth as the
//! daemon's web config wants).

use std::sync::Arc;

use super::sample::{Sample, SampleError};
use crate::{
    export::client::{ClientError, Remote},
    collect::{Collector, Reading},
};
use gup_report::{LeakReport, SnapshotReport};

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The request to the daemon failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The answer was not a snapshot document.
    #[error(transparent)]
    Sample(#[from] SampleError),
}

/// A source of readings. `read` is called from the view's data thread,
/// once per interval.
pub trait Source: Send {
    /// Reads the counters, and the leak report too when
    /// `with_outstanding` (every few seconds: it reads the whole tracking
    /// map).
    fn read(&mut self, with_outstanding: bool) -> Result<(Sample, Option<LeakReport>), SourceError>;
}

/// This process's probes (or none: reduced mode), through the same
/// collector `gupwatch run` serves.
pub struct LocalSource {
    collector: Collector,
}

impl LocalSource {
    /// Reads through `collector`.
    pub fn new(collector: Collector) -> LocalSource {
        LocalSource { collector }
    }
}

impl Source for LocalSource {
    fn read(&mut self, with_outstanding: bool) -> Result<(Sample, Option<LeakReport>), SourceError> {
        // gather() also analyses the tracking map (for the leak metrics).
        let data: Arc<Reading> = self.collector.gather();
        let outstanding = if with_outstanding { self.collector.last_leak_report().cloned() } else { None };
        Ok((Sample::from_reading(&data), outstanding))
    }
}

/// A `gupwatch run` daemon.
pub struct RemoteSource {
    remote: Remote,
}

impl RemoteSource {
    /// Reads from `remote`.
    pub fn new(remote: Remote) -> RemoteSource {
        RemoteSource { remote }
    }
}

impl Source for RemoteSource {
    fn read(&mut self, with_outstanding: bool) -> Result<(Sample, Option<LeakReport>), SourceError> {
        let mut doc: SnapshotReport = self.remote.snapshot(true, with_outstanding)?;
        // `leaks` is there (maybe null) only when asked for.
        let outstanding = doc.leaks.take().flatten();
        Ok((Sample::from_report(doc), outstanding))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::client::ConnectOptions;
    use std::{
        sync::atomic::{AtomicBool, Ordering},
        time::Duration,
    };

    fn remote(addr: &str, secs: u64) -> Remote {
        Remote::new(&ConnectOptions { url: addr.into(), timeout: Duration::from_secs(secs), ..Default::default() }).unwrap()
    }

    /// The whole remote path against gupwatch's own HTTP server over a
    /// reduced-mode collector (no privileges needed).
    #[test]
    fn remote_source_reads_the_daemon() {
        let kallsyms = crate::kernel::kallsyms::Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
        let plan = crate::kernel::plan::ProbePlan::resolve("6.1.0-test".into(), Err("no BTF".into()), &kallsyms);
        let collector = Collector::new(None, &plan, crate::collect::Settings::default());
        let server = crate::export::http::Server::bind("127.0.0.1:0", crate::export::http::ServerConfig::default()).unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let t = std::thread::spawn(move || server.run(Arc::new(crate::export::http::App::new(collector)), &s));
        let mut src = RemoteSource::new(remote(&addr, 5));
        let (sample, outstanding) = src.read(true).expect("reads");
        assert_eq!(sample.kernel, "6.1.0-test");
        assert_eq!(sample.mode, super::super::sample::Mode::Reduced);
        assert_eq!(outstanding, None);
        let err = remote(&addr, 5).get("/nope").unwrap_err();
        assert!(matches!(err, ClientError::Status { status: 404, .. }), "{err}");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().unwrap();
        // Nothing listens there any more.
        let err = RemoteSource::new(remote(&addr, 1)).read(false).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
