//! The metrics endpoint's HTTP/1.1 server: hyper on tokio.
//!
//! An open connection is a small tokio task, not a thread or one of a few
//! slots, so idle and stalled clients cannot starve the scrapes (issue 22:
//! 64 stalled connections used to take the endpoint down). What is bounded,
//! and by what (see docs/http.md for the numbers and the worst-case memory):
//!
//! - **Open connections**: by file descriptors. `run` raises the soft
//!   `RLIMIT_NOFILE` to the hard limit and keeps a reserve for the rest of
//!   the daemon; beyond that, and beyond [`ServerConfig::max_connections_per_peer`]
//!   connections from one client address (IPv6: one /64), new connections
//!   are closed at once (plain HTTP gets a 503 first).
//! - **Time**: the request head (and before it, the TLS handshake) must
//!   arrive within [`ServerConfig::head_timeout`]; the same deadline closes
//!   idle keep-alive connections. A partial head past it gets 408, an idle
//!   connection is closed silently. A response the client does not take
//!   for [`ServerConfig::write_timeout`] ends the connection.
//! - **Heads**: at most [`ServerConfig::max_head_bytes`] and 100 header
//!   lines (431 beyond); request bodies are never read.
//! - **Work**: at most [`ServerConfig::max_renders`] requests are handled
//!   at once, on tokio's blocking threads (rendering reads the BPF maps and
//!   basic auth runs bcrypt, both synchronous). A request whose client
//!   address already has [`ServerConfig::max_requests_per_peer`] requests
//!   waiting or running is answered 503 with `Retry-After: 1` at once, one
//!   that cannot start within [`ServerConfig::render_wait`] when that wait
//!   is over: load shedding, as node_exporter's `--web.max-requests`. The wait is first come, first
//!   served, so a scraper waits behind at most that many requests of each
//!   other client; requests for a page being rendered (`/metrics` in one
//!   format, see [`Handler::coalesce`]) share that render and do not wait
//!   for a slot at all. Answers that need no work (`/healthz`, 404s,
//!   refusals) are given at once and never shed.
//!
//! GET and HEAD only (405 otherwise, with `Allow`). HTTP/1.1 keep-alive.
//! Every response carries `Content-Length` (never chunked), so simple
//! clients such as `top --connect` read it whole.
//!
//! With a web configuration ([`Server::with_web_config`], from
//! `--web-config`, see [`crate::export::webconfig`]) connections are TLS (rustls
//! through tokio-rustls) and/or requests need basic-auth credentials (401
//! with `WWW-Authenticate` without them, checked before anything else). A
//! plain-HTTP request to the TLS port is answered 400 in plain text, as Go
//! servers do, so `curl http://` says what is wrong.
//!
//! Routes ([`App`]): `/metrics`, `/` (status page), `/healthz`,
//! `/api/snapshot` (JSON), anything else 404.

mod flights;
mod gzip;
mod io;
mod limits;
mod respond;
mod routes;
mod serve;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use limits::raise_nofile_limit;
pub use routes::App;
pub use serve::Server;

/// Where `gupwatch run` listens by default.
///
/// 9483, the first choice, is taken in the Prometheus wiki's "Default port
/// allocations" (IBM App Connect Enterprise exporter), and the whole
/// exporter range 9100-9999 is allocated there; 10483 is past the
/// allocations that continue above 9999 and clear of the ephemeral range.
/// Loopback only: the page shows process names.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10483";

/// Default of [`ServerConfig::max_connections_per_peer`] (and of `run
/// --max-connections-per-peer`).
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Largest request head (request line + headers) accepted; 431 beyond.
    /// At least 8 KiB (hyper's smallest buffer).
    pub max_head_bytes: usize,
    /// Time a client has for the TLS handshake, and then for each request
    /// head, counted from when the server starts waiting for it (so it is
    /// also the idle keep-alive timeout).
    pub head_timeout: Duration,
    /// Time a response write may make no progress before the connection
    /// is dropped (a client that does not read).
    pub write_timeout: Duration,
    /// Requests handled (rendered, or their credentials checked) at once.
    pub max_renders: usize,
    /// Longest wait for a render slot before the answer is 503.
    pub render_wait: Duration,
    /// Requests one client address may have waiting or running at once;
    /// more get 503 at once.
    pub max_requests_per_peer: usize,
    /// Connections one client address may have open at once; more are
    /// closed at once.
    pub max_connections_per_peer: usize,
    /// Connections open at once; `None`: as many as the descriptor limit
    /// allows, less a reserve (see [`raise_nofile_limit`]).
    pub max_connections: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_renders: 4,
            render_wait: Duration::from_secs(1),
            max_requests_per_peer: 32,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_connections: None,
        }
    }
}

/// A request as the routes see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, ... (the server refuses the others before a handler
    /// sees them).
    pub method: String,
    /// The path, without the query string (still percent-encoded).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Header (name, value) pairs in order; names in lower case.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The request hyper parsed, as the routes see it. Header values that
    /// are not UTF-8 are taken lossily: no route needs their bytes.
    pub fn from_parts(method: &hyper::Method, uri: &hyper::Uri, headers: &hyper::HeaderMap) -> Request {
        Request {
            method: method.as_str().to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
        }
    }
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body (not sent for HEAD; its length is, as `Content-Length`).
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, headers: vec![], body: body.into() }
    }

    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }
}

/// Something that answers requests. Called on a blocking thread: it may
/// take locks and read maps.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: &Request) -> Response;

    /// Whether answering `req` is work that must wait for a render slot
    /// (and may be shed with 503). `false` only for answers that take no
    /// lock and no I/O, given at once on the server's own threads: so
    /// `/healthz` answers a liveness probe even while scrapes are shed.
    fn renders(&self, _req: &Request) -> bool {
        true
    }

    /// Requests with the same key may share one render (see
    /// `flights.rs`): the key names the page, e.g. `/metrics` and its
    /// format. `None`: each renders its own.
    fn coalesce(&self, _req: &Request) -> Option<String> {
        None
    }

    /// Whether the answer to `req` is sent gzip-encoded to clients whose
    /// `Accept-Encoding` allows it (with `Vary: Accept-Encoding`).
    fn compresses(&self, _req: &Request) -> bool {
        false
    }
}

impl<F: Fn(&Request) -> Response + Send + Sync + 'static> Handler for F {
    fn handle(&self, req: &Request) -> Response {
        self(req)
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The tokio runtime could not start (threads, epoll).
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The bound socket could not be handed to tokio.
    #[error("cannot serve on the bound socket: {0}")]
    Listener(#[source] std::io::Error),
}

/// Parses a request head (the bytes up to and including the blank line)
/// with the parser the server uses (httparse, through hyper's types), into
/// what the routes see; the error says why the server would answer 400.
/// For tests and fuzzing.
pub fn parse_request_head(head: &[u8]) -> Result<Request, String> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".into()),
        Err(e) => return Err(e.to_string()),
    }
    let method = hyper::Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|e| e.to_string())?;
    let uri: hyper::Uri = req.path.unwrap_or("").parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    if uri.path().is_empty() || !uri.path().starts_with('/') {
        return Err("request target must be a path".into());
    }
    let mut map = hyper::HeaderMap::new();
    for h in req.headers.iter() {
        let name = hyper::header::HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
        let value = hyper::header::HeaderValue::from_bytes(h.value).map_err(|e| e.to_string())?;
        map.append(name, value);
    }
    Ok(Request::from_parts(&method, &uri, &map))
}

/// Why `addr` could not be bound, and what to do: the message
/// `gupwatch run` prints for `--listen` (or `listen` in its config).
pub fn explain_bind_error(addr: &str, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let fix = match e.kind() {
        ErrorKind::AddrInUse => {
            "another process (another gupwatch?) listens there: stop it, or choose another port with --listen HOST:PORT"
        }
        ErrorKind::AddrNotAvailable => {
            "that address is not one of this host's: use one it has, 127.0.0.1 or 0.0.0.0, with --listen HOST:PORT"
        }
        ErrorKind::PermissionDenied => {
            "ports below 1024 need CAP_NET_BIND_SERVICE: choose a port above 1023 with --listen HOST:PORT"
        }
        _ => "--listen takes HOST:PORT, such as 127.0.0.1:10483, 0.0.0.0:10483 or [::1]:10483",
    };
    format!("cannot listen on {addr}: {e}; {fix}")
}
