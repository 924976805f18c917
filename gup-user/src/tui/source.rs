//! Where the live view's readings come from: this process's own probes
//! ([`LocalSource`]) or a `gupwatch run` daemon's `/api/snapshot`
//! ([`RemoteSource`], over a small blocking HTTP/1.1 GET on `std::net`).

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use super::sample::{Sample, SampleError};
use crate::{
    collect::{Collector, Reading},
    report::{LeakReport, SnapshotReport},
};

/// Why a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The HTTP request failed.
    #[error(transparent)]
    Http(#[from] HttpError),
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
    addr: String,
    timeout: Duration,
}

impl RemoteSource {
    /// `addr` is `HOST:PORT`; each request gives up after `timeout`.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> RemoteSource {
        RemoteSource { addr: addr.into(), timeout }
    }
}

impl Source for RemoteSource {
    fn read(&mut self, with_outstanding: bool) -> Result<(Sample, Option<LeakReport>), SourceError> {
        let path = if with_outstanding { "/api/snapshot?callers=1&leaks=1" } else { "/api/snapshot?callers=1" };
        let body = http_get(&self.addr, path, self.timeout)?;
        let mut doc: SnapshotReport = serde_json::from_str(&body).map_err(SampleError::from)?;
        // `leaks` is there (maybe null) only when asked for.
        let outstanding = doc.leaks.take().flatten();
        Ok((Sample::from_report(doc), outstanding))
    }
}

/// Largest response body accepted (a snapshot with every caller row is a
/// few MiB at most).
pub const MAX_RESPONSE: usize = 64 << 20;

/// Why an HTTP GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address did not resolve.
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// `HOST:PORT`.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// No address accepted the connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// The last connection error.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed (or timed out).
    #[error("{addr}: {source}")]
    Io {
        /// `HOST:PORT`.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not an HTTP/1.x response gupwatch understands.
    #[error("{addr}: bad HTTP response: {why}")]
    Malformed {
        /// `HOST:PORT`.
        addr: String,
        /// What was wrong.
        why: String,
    },
    /// A status other than 200.
    #[error("{addr}{path}: HTTP {status}: {body}")]
    Status {
        /// `HOST:PORT`.
        addr: String,
        /// The path asked for.
        path: String,
        /// The status code.
        status: u16,
        /// The first line of the body.
        body: String,
    },
}

/// A blocking `GET path` on `addr` (`HOST:PORT`), one request per
/// connection (`Connection: close`), returning the body of a 200 answer.
/// `timeout` bounds the connect and each read and write.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<String, HttpError> {
    let io = |source| HttpError::Io { addr: addr.to_string(), source };
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve { addr: addr.to_string(), source })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = stream.ok_or_else(|| HttpError::Connect { addr: addr.to_string(), source: last })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gupwatch/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE as u64 + 1).read_to_end(&mut raw).map_err(io)?;
    if raw.len() > MAX_RESPONSE {
        return Err(HttpError::Malformed { addr: addr.into(), why: format!("response larger than {MAX_RESPONSE} bytes") });
    }
    parse_response(&raw).map_err(|why| HttpError::Malformed { addr: addr.into(), why }).and_then(|(status, body)| {
        if status == 200 {
            Ok(body)
        } else {
            Err(HttpError::Status {
                addr: addr.into(),
                path: path.into(),
                status,
                body: body.lines().next().unwrap_or("").chars().take(200).collect(),
            })
        }
    })
}

/// Splits a whole `Connection: close` response into status and body.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code.parse().map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut body = &raw[split + 4..];
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            return Err(format!("transfer-encoding {value} is not supported"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| format!("bad content-length {value:?}"))?;
            if body.len() < n {
                return Err(format!("body cut short: {} of {n} bytes", body.len()));
            }
            body = &body[..n];
        }
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8")?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn responses_parse() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi there"), Ok((200, "hi".into())));
        assert_eq!(parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope\n"), Ok((404, "nope\n".into())));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi").unwrap_err().contains("cut short"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK").is_err());
    }

    /// The whole remote path against gupwatch's own HTTP server over a
    /// reduced-mode collector (no privileges needed).
    #[test]
    fn remote_source_reads_the_daemon() {
        let kallsyms = crate::kallsyms::Kallsyms::parse("ffffffff81000000 T pin_user_pages_fast\n");
        let plan = crate::plan::ProbePlan::resolve("6.1.0-test".into(), Err("no BTF".into()), &kallsyms);
        let collector = Collector::new(None, &plan, crate::collect::Settings::default());
        let server = crate::http::Server::bind("127.0.0.1:0", crate::http::ServerConfig::default()).unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let t = std::thread::spawn(move || server.run(Arc::new(crate::http::App::new(collector)), &s));
        let mut src = RemoteSource::new(addr.clone(), Duration::from_secs(5));
        let (sample, outstanding) = src.read(true).expect("reads");
        assert_eq!(sample.kernel, "6.1.0-test");
        assert_eq!(sample.mode, super::super::sample::Mode::Reduced);
        assert_eq!(outstanding, None);
        let err = http_get(&addr, "/nope", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HttpError::Status { status: 404, .. }), "{err}");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap().unwrap();
        // Nothing listens there any more.
        let err = RemoteSource::new(addr, Duration::from_secs(1)).read(false).unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
