//! A small HTTP/1.1 server for the metrics endpoint.
//!
//! Hand-rolled on `std::net` so it has no dependencies and every limit is
//! explicit: a fixed pool of worker threads, a bounded queue of accepted
//! connections (the rest get 503), request heads of at most 8 KiB (431
//! beyond), a deadline for the whole request head (408 after it, so a client
//! trickling bytes cannot hold a worker), a write timeout, one request per
//! connection (`Connection: close`), GET and HEAD only.
//!
//! With a web configuration ([`Server::with_web_config`], from
//! `--web-config`, see [`crate::webconfig`]) connections are TLS (rustls)
//! and/or requests need basic-auth credentials (401 with
//! `WWW-Authenticate` without them). The TLS handshake counts against the
//! request-head deadline, each socket read of it bounded by what is left,
//! so a client trickling handshake bytes cannot hold a worker either. A
//! plain-HTTP request to the TLS port is answered 400 in plain text, as Go
//! servers do, so `curl http://` says what is wrong. Without a web
//! configuration nothing changes: plain HTTP, no authentication.
//!
//! Routes ([`App`]): `/metrics`, `/` (status page), `/healthz`,
//! `/api/snapshot` (JSON), anything else 404.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    metrics::{self, Collector, Format},
    webconfig::{Security, WebConfigWatcher},
};

/// Where `gupwatch run` listens by default.
///
/// 9483, the first choice, is taken in the Prometheus wiki's "Default port
/// allocations" (IBM App Connect Enterprise exporter), and the whole
/// exporter range 9100-9999 is allocated there; 10483 is past the
/// allocations that continue above 9999 and clear of the ephemeral range.
/// Loopback only: the page shows process names.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10483";

/// Server limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Largest request head (request line + headers) accepted.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    pub head_timeout: Duration,
    /// Time a client has to take the response.
    pub write_timeout: Duration,
    /// Requests handled (rendered) at once.
    pub workers: usize,
    /// Connections beyond `workers` that may be open at once, each reading
    /// its request head (or TLS handshake) on its own thread or waiting for
    /// a worker; beyond `workers + queue` open connections, new ones are
    /// refused with 503. Clients that stall mid-head hold only such a slot,
    /// never a worker, so a few of them cannot starve the scrapes.
    pub queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            workers: 4,
            queue: 60,
        }
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Header (name, value) pairs in order; names as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
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
    /// Body (not sent for HEAD).
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

    fn write_to(&self, w: &mut impl Write, head_only: bool) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        w.write_all(head.as_bytes())?;
        if !head_only {
            w.write_all(&self.body)?;
        }
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: &Request) -> Response;
}

impl<F: Fn(&Request) -> Response + Send + Sync + 'static> Handler for F {
    fn handle(&self, req: &Request) -> Response {
        self(req)
    }
}

/// Why a request head was refused.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The peer closed before sending anything (or mid-head): no answer.
    Closed,
    /// Too slow.
    Timeout,
    /// Too big.
    TooLarge,
    /// Not HTTP/1.x we understand.
    Bad(&'static str),
    /// HTTP/2 or later.
    Version,
}

fn read_head(stream: &mut impl ReadTimeout, max: usize, timeout: Duration) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > max {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        stream.set_timeout(left).map_err(|_| HeadError::Closed)?;
        // Never read more than one byte past the limit.
        let want = chunk.len().min(max + 1 - buf.len().min(max));
        match stream.read(&mut chunk[..want.max(1)]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(HeadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Parses a request head (the bytes before the blank line), as the server
/// does; the error is the reason a client would get with its 400/505. For
/// tests and fuzzing.
pub fn parse_request_head(head: &[u8]) -> Result<Request, String> {
    parse_head(head).map_err(|e| match e {
        HeadError::Bad(why) => why.to_string(),
        other => format!("{other:?}"),
    })
}

/// Where the head ends (exclusive of the blank line), tolerating bare LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    for i in 0..buf.len() {
        if buf[i..].starts_with(b"\r\n\r\n") || buf[i..].starts_with(b"\n\n") {
            return Some(i);
        }
    }
    None
}

/// A stream whose read timeout can be set (a seam for tests).
trait ReadTimeout: Read {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(d))
    }
}

fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Bad("request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Bad("malformed request line"));
    };
    if !version.starts_with("HTTP/") {
        return Err(HeadError::Bad("malformed request line"));
    }
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Version);
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Bad("malformed method"));
    }
    // origin-form, or absolute-form (http://host/path).
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') {
        return Err(HeadError::Bad("request target must be a path"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let mut headers = vec![];
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err(HeadError::Bad("obsolete header folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Bad("malformed header"));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return Err(HeadError::Bad("malformed header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(Request { method: method.to_string(), path: path.to_string(), query, headers })
}

/// Why `addr` could not be bound, and what to do: the message
/// `gupwatch run` prints for `--listen` (or `listen` in its config).
pub fn explain_bind_error(addr: &str, e: &io::Error) -> String {
    let fix = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "another process (another gupwatch?) listens there: stop it, or choose another port with --listen HOST:PORT"
        }
        io::ErrorKind::AddrNotAvailable => {
            "that address is not one of this host's: use one it has, 127.0.0.1 or 0.0.0.0, with --listen HOST:PORT"
        }
        io::ErrorKind::PermissionDenied => {
            "ports below 1024 need CAP_NET_BIND_SERVICE: choose a port above 1023 with --listen HOST:PORT"
        }
        _ => "--listen takes HOST:PORT, such as 127.0.0.1:10483, 0.0.0.0:10483 or [::1]:10483",
    };
    format!("cannot listen on {addr}: {e}; {fix}")
}

/// A bound listener, not yet serving.
pub struct Server {
    listener: TcpListener,
    config: ServerConfig,
    web: Option<Arc<WebConfigWatcher>>,
}

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:10483`, `[::1]:0`).
    pub fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Server { listener, config, web: None })
    }

    /// Serves with TLS and/or basic auth as this web configuration says.
    pub fn with_web_config(mut self, web: Arc<WebConfigWatcher>) -> Server {
        self.web = Some(web);
        self
    }

    /// `https` when connections are TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        self.web.as_ref().map_or("http", |w| w.scheme())
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` is set, then waits for requests in progress
    /// (each is bounded by the timeouts) and returns.
    ///
    /// At most `workers + queue` connections are open at once (counted from
    /// accept to close), each on its own short-lived thread bounded by the
    /// timeouts; more are answered 503 straight away. At most `workers`
    /// requests are rendered at once.
    pub fn run(self, handler: Arc<dyn Handler>, stop: &AtomicBool) -> io::Result<()> {
        let cfg = self.config;
        let limit = cfg.workers.max(1) + cfg.queue;
        let open = Arc::new(AtomicUsize::new(0));
        let handler: Arc<dyn Handler> = Arc::new(Limited { inner: handler, permits: Permits::new(cfg.workers.max(1)) });
        let mut threads: Vec<thread::JoinHandle<()>> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    threads.retain(|t| !t.is_finished());
                    if open.load(Ordering::Acquire) >= limit {
                        reject_busy(stream);
                        continue;
                    }
                    open.fetch_add(1, Ordering::AcqRel);
                    let (handler, open2, web) = (Arc::clone(&handler), Arc::clone(&open), self.web.clone());
                    // The stream moves into the closure; if the thread cannot
                    // start, it comes back through this slot to be refused.
                    let pending = Arc::new(Mutex::new(Some(stream)));
                    let taken = Arc::clone(&pending);
                    let spawned = thread::Builder::new().name("gupwatch-http".into()).spawn(move || {
                        let _slot = Slot(&open2);
                        let stream = taken.lock().unwrap_or_else(|e| e.into_inner()).take();
                        if let Some(stream) = stream {
                            serve_connection(stream, &*handler, &cfg, web.as_deref());
                        }
                    });
                    match spawned {
                        Ok(t) => threads.push(t),
                        Err(e) => {
                            open.fetch_sub(1, Ordering::AcqRel);
                            eprintln!("gupwatch: http: cannot start a connection thread: {e}");
                            if let Some(s) = pending.lock().unwrap_or_else(|e| e.into_inner()).take() {
                                reject_busy(s);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(25)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    eprintln!("gupwatch: http: accept: {e}");
                    thread::sleep(Duration::from_millis(200));
                }
            }
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

/// A counting semaphore: how many requests render at once.
struct Permits {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Permits {
    fn new(n: usize) -> Permits {
        Permits { free: Mutex::new(n), freed: std::sync::Condvar::new() }
    }

    fn acquire(&self) -> PermitGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        PermitGuard(self)
    }
}

struct PermitGuard<'a>(&'a Permits);

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

/// The handler behind the render limit: heads are read and TLS is
/// negotiated concurrently, rendering (which locks the collector and walks
/// the maps) is not.
struct Limited {
    inner: Arc<dyn Handler>,
    permits: Permits,
}

impl Handler for Limited {
    fn handle(&self, req: &Request) -> Response {
        let _permit = self.permits.acquire();
        self.inner.handle(req)
    }
}

/// One open connection in the count; released when dropped (also if the
/// connection's handling panics).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reject_busy(mut s: TcpStream) {
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let mut r = Response::text(503, "busy: too many concurrent connections\n");
    r.headers.push(("Retry-After", "1".into()));
    let _ = r.write_to(&mut s, false);
    close(s);
}

/// Closes gracefully: stop sending, then drain briefly so unread request
/// bytes do not turn the close into a reset that destroys the response.
fn close(mut s: TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn serve_connection(stream: TcpStream, handler: &dyn Handler, cfg: &ServerConfig, web: Option<&WebConfigWatcher>) {
    let _ = stream.set_write_timeout(Some(cfg.write_timeout));
    let _ = stream.set_nodelay(true);
    // The handshake and the request head share one deadline.
    let deadline = Instant::now() + cfg.head_timeout;
    let security = web.map(|w| w.current());
    let Some(tls) = security.as_ref().and_then(|s| s.tls().cloned()) else {
        let mut stream = stream;
        respond(&mut stream, handler, cfg, security.as_deref(), deadline);
        close(stream);
        return;
    };
    if sends_plain_http(&stream, deadline) {
        let mut stream = stream;
        let _ = Response::text(400, "Client sent an HTTP request to an HTTPS server.\n").write_to(&mut stream, false);
        close(stream);
        return;
    }
    let Ok(conn) = rustls::ServerConnection::new(tls) else { return };
    let mut conn = TlsStream { tls: conn, sock: stream, deadline };
    if conn.handshake().is_err() {
        // Wrong protocol, a refused client certificate, or too slow: the
        // alert (if any) has been sent; there is no channel for a response.
        return;
    }
    respond(&mut conn, handler, cfg, security.as_deref(), deadline);
    conn.close();
}

/// Reads, authorizes and answers one request on an established connection.
fn respond<C: ReadTimeout + Write>(
    conn: &mut C,
    handler: &dyn Handler,
    cfg: &ServerConfig,
    security: Option<&Security>,
    deadline: Instant,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    let (mut resp, head_only) = match read_head(conn, cfg.max_head_bytes, left).and_then(|h| parse_head(&h)) {
        Err(HeadError::Closed) => return,
        Err(HeadError::Timeout) => (Response::text(408, "request head not received in time\n"), false),
        Err(HeadError::TooLarge) => (
            Response::text(431, format!("request head larger than {} bytes\n", cfg.max_head_bytes)),
            false,
        ),
        Err(HeadError::Bad(why)) => (Response::text(400, format!("{why}\n")), false),
        Err(HeadError::Version) => (Response::text(505, "HTTP/1.x only\n"), false),
        // Credentials first: nothing about the server (not even which
        // methods it allows) before them.
        Ok(req) if !security.is_none_or(|s| s.authorize(req.header("authorization"))) => {
            let mut r = Response::text(401, "Unauthorized: this endpoint needs basic-auth credentials (see --web-config)\n");
            r.headers.push(("WWW-Authenticate", crate::webconfig::CHALLENGE.into()));
            (r, req.method == "HEAD")
        }
        Ok(req) if req.method != "GET" && req.method != "HEAD" => {
            let mut r = Response::text(405, "GET or HEAD only\n");
            r.headers.push(("Allow", "GET, HEAD".into()));
            (r, req.method == "HEAD")
        }
        Ok(req) => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.handle(&req)))
                .unwrap_or_else(|_| Response::text(500, "internal error\n"));
            (r, req.method == "HEAD")
        }
    };
    if let Some(s) = security {
        resp.headers.extend(s.headers().iter().cloned());
    }
    let _ = resp.write_to(conn, head_only);
}

/// Whether the first bytes on a TLS port are a plain-HTTP request line
/// (a TLS record starts with a binary content type, never a letter).
fn sends_plain_http(stream: &TcpStream, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first), Ok(1) if first[0].is_ascii_uppercase())
}

/// A TLS connection whose every socket read is bounded by one deadline
/// (set through [`ReadTimeout`]), so a slow peer cannot stretch it.
struct TlsStream {
    tls: rustls::ServerConnection,
    sock: TcpStream,
    deadline: Instant,
}

impl TlsStream {
    fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            self.flush_tls()?;
            if !self.tls.is_handshaking() {
                break;
            }
            self.read_tls_once()?;
        }
        self.flush_tls()
    }

    /// Sends whatever TLS records are pending.
    fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock)?;
        }
        Ok(())
    }

    /// One socket read, bounded by the deadline, and its processing.
    fn read_tls_once(&mut self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.sock.set_read_timeout(Some(left))?;
        if self.tls.read_tls(&mut self.sock)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Err(e) = self.tls.process_new_packets() {
            // Send the alert rustls queued, so the peer learns why.
            let _ = self.flush_tls();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.flush_tls();
        close(self.sock);
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.flush_tls()?;
            match self.read_tls_once() {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                r => r?,
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut n = self.tls.writer().write(buf)?;
        self.flush_tls()?;
        if n == 0 && !buf.is_empty() {
            // The plaintext buffer was full; it has just been sent.
            n = self.tls.writer().write(buf)?;
            self.flush_tls()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()?;
        self.sock.flush()
    }
}

impl ReadTimeout for TlsStream {
    fn set_timeout(&mut self, d: Duration) -> io::Result<()> {
        self.deadline = Instant::now() + d;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// gupwatch's routes

/// gupwatch's HTTP front end over a [`Collector`].
pub struct App {
    collector: Mutex<Collector>,
}

impl App {
    /// Serves this collector.
    pub fn new(collector: Collector) -> App {
        App { collector: Mutex::new(collector) }
    }

    fn collector(&self) -> std::sync::MutexGuard<'_, Collector> {
        // A panic in one scrape must not take the endpoint down for good.
        self.collector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the collector while serving (a configuration reload),
    /// between two requests.
    pub fn update(&self, f: impl FnOnce(&mut Collector)) {
        f(&mut self.collector());
    }
}

/// Whether a query string (`a=1&b`) turns a flag on: `name`, `name=1`,
/// `name=true` or `name=yes`.
fn query_flag(query: Option<&str>, name: &str) -> bool {
    query.unwrap_or("").split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
        k == name && matches!(v, "1" | "true" | "yes")
    })
}

impl Handler for App {
    fn handle(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/metrics" => {
                let format = Format::negotiate(req.header("Accept"));
                let body = self.collector().scrape(format);
                Response::new(200, format.content_type(), body)
            }
            "/healthz" => Response::text(200, "ok\n"),
            "/api/snapshot" => {
                // Opt-in extras for `gupwatch top --connect`: `callers=1`
                // adds the attribution rows, `leaks=1` the leak report
                // (which reads the whole pin tracking map).
                let flag = |name: &str| query_flag(req.query.as_deref(), name);
                let mut c = self.collector();
                let top = c.settings().top_processes;
                let data = c.gather();
                // The report gather() made: analysing again would count the
                // same reading twice in the growth tracker.
                let leaks = if flag("leaks") { Some(c.last_leak_report().cloned()) } else { None };
                drop(c);
                let mut doc = metrics::snapshot_json(&data, top);
                if flag("callers") {
                    let (rows, truncated) = metrics::callers_json(&data, metrics::MAX_JSON_CALLERS);
                    doc["callers"] = rows;
                    doc["callers_truncated"] = truncated.into();
                }
                if let Some(report) = leaks {
                    doc["leaks"] = serde_json::to_value(report).unwrap_or_default();
                }
                let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
                Response::new(200, "application/json", body + "\n")
            }
            "/" => Response::new(200, "text/html; charset=utf-8", self.index()),
            _ => Response::text(404, "not found: try /metrics, /healthz, /api/snapshot or /\n"),
        }
    }
}

impl App {
    fn index(&self) -> String {
        let c = self.collector();
        let plan = c.plan();
        let mode = if c.has_probes() && plan.attached() > 0 {
            format!("{} of {} hooks attached", plan.attached(), plan.hooks.len())
        } else {
            "reduced mode: no probe attached; only the kernel's /proc/vmstat counters are exported".to_string()
        };
        let mut rows = String::new();
        for h in &plan.hooks {
            rows += &format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>\n",
                html(h.function),
                html(h.kind),
                html(h.mechanism),
                if h.attached { "ok" } else { "no" },
                html(h.status),
                html(&h.reason)
            );
        }
        format!(
            r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>gupwatch</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}}.ok{{color:#080}}.no{{color:#a00}}</style>
</head><body>
<h1>gupwatch {version}</h1>
<p>Kernel {kernel}: {mode}.</p>
<ul>
<li><a href="/metrics">/metrics</a> &mdash; Prometheus / OpenMetrics exposition</li>
<li><a href="/api/snapshot">/api/snapshot</a> &mdash; current totals as JSON</li>
<li><a href="/healthz">/healthz</a> &mdash; liveness</li>
</ul>
<h2>Probe plan</h2>
<table><tr><th>function</th><th>kind</th><th>mechanism</th><th>status</th><th>why</th></tr>
{rows}</table>
</body></html>
"#,
            version = html(env!("CARGO_PKG_VERSION")),
            kernel = html(&plan.kernel),
            mode = html(&mode),
        )
    }
}

/// Escapes text for HTML element content and attribute values.
fn html(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o += "&amp;",
            '<' => o += "&lt;",
            '>' => o += "&gt;",
            '"' => o += "&quot;",
            '\'' => o += "&#39;",
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn test_config() -> ServerConfig {
        ServerConfig { head_timeout: Duration::from_millis(300), workers: 2, queue: 1, ..ServerConfig::default() }
    }

    struct Running {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<thread::JoinHandle<io::Result<()>>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().unwrap().unwrap();
            }
        }
    }

    fn start(cfg: ServerConfig, handler: Arc<dyn Handler>) -> Running {
        let server = Server::bind("127.0.0.1:0", cfg).unwrap();
        let addr = server.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = Some(thread::spawn(move || server.run(handler, &s)));
        Running { addr, stop, thread }
    }

    fn echo() -> Arc<dyn Handler> {
        Arc::new(|req: &Request| match req.path.as_str() {
            "/slow" => {
                thread::sleep(Duration::from_millis(400));
                Response::text(200, "slow\n")
            }
            "/panic" => panic!("handler panic (expected in this test)"),
            p => Response::text(200, format!("{} {} {:?} {:?}\n", req.method, p, req.query, req.header("accept"))),
        })
    }

    /// Sends raw bytes, returns (status, headers+body text).
    fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = io::BufReader::new(&s).read_to_string(&mut out);
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, out)
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        raw(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
    }

    #[test]
    fn routes_methods_and_parsing() {
        let srv = start(test_config(), echo());
        let (st, body) = raw(srv.addr, b"GET /a/b?x=1&y HTTP/1.1\r\nHost: h\r\nAccept: text/plain\r\n\r\n");
        assert_eq!(st, 200);
        assert!(body.ends_with("GET /a/b Some(\"x=1&y\") Some(\"text/plain\")\n"), "{body}");
        assert!(body.contains("Connection: close\r\n"));
        assert!(body.contains("Content-Length: "));
        // HEAD: headers, no body.
        let (st, body) = raw(srv.addr, b"HEAD /x HTTP/1.0\r\n\r\n");
        assert_eq!(st, 200);
        assert!(body.ends_with("\r\n\r\n"), "{body:?}");
        // Absolute-form target and bare-LF line ends.
        let (st, body) = raw(srv.addr, b"GET http://h:1/abs HTTP/1.1\nHost: h\n\n");
        assert_eq!(st, 200);
        assert!(body.contains("GET /abs"), "{body}");
        let (st, body) = raw(srv.addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(st, 405);
        assert!(body.contains("Allow: GET, HEAD\r\n"));
        assert_eq!(raw(srv.addr, b"GARBAGE\r\n\r\n").0, 400);
        assert_eq!(raw(srv.addr, b"GET noslash HTTP/1.1\r\n\r\n").0, 400);
        assert_eq!(raw(srv.addr, b"GET / HTTP/1.1\r\nno colon\r\n\r\n").0, 400);
        assert_eq!(raw(srv.addr, b"GET / HTTP/2.0\r\n\r\n").0, 505);
        assert_eq!(raw(srv.addr, b"GET /\xff HTTP/1.1\r\n\r\n").0, 400);
        // A handler panic answers 500 and the worker survives.
        assert_eq!(get(srv.addr, "/panic").0, 500);
        assert_eq!(get(srv.addr, "/ok").0, 200);
        assert_eq!(get(srv.addr, "/ok").0, 200);
    }

    #[test]
    fn oversized_heads_get_431() {
        let srv = start(test_config(), echo());
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
        let (st, body) = raw(srv.addr, big.as_bytes());
        assert_eq!(st, 431, "{body}");
        // Many small headers count too.
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..1000 {
            many += &format!("X-H{i}: v\r\n");
        }
        many += "\r\n";
        assert_eq!(raw(srv.addr, many.as_bytes()).0, 431);
        // Just under the limit is fine.
        let ok = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(8000));
        assert_eq!(raw(srv.addr, ok.as_bytes()).0, 200);
    }

    #[test]
    fn slow_clients_time_out() {
        let srv = start(test_config(), echo());
        // Sends part of a head, then stalls.
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let t0 = Instant::now();
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(t0.elapsed() < Duration::from_secs(2));
        // Trickling a byte at a time does not reset the deadline.
        let mut s = TcpStream::connect(srv.addr).unwrap();
        let t0 = Instant::now();
        for b in b"GET / HTTP/1.1\r\nX: yyyyyyyyyyyyyyyy" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(30));
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
        assert!(t0.elapsed() < Duration::from_secs(3));
        // A client that connects and closes gets nothing and hurts nothing.
        drop(TcpStream::connect(srv.addr).unwrap());
        assert_eq!(get(srv.addr, "/").0, 200);
    }

    #[test]
    fn excess_connections_get_503() {
        // 2 workers + a queue of 1: the 4th concurrent connection is refused.
        let srv = start(test_config(), echo());
        let addr = srv.addr;
        let slow: Vec<_> = (0..3)
            .map(|_| {
                let h = thread::spawn(move || get(addr, "/slow").0);
                thread::sleep(Duration::from_millis(40));
                h
            })
            .collect();
        let (st, body) = get(addr, "/slow");
        assert_eq!(st, 503, "{body}");
        assert!(body.contains("Retry-After: 1"));
        for h in slow {
            assert_eq!(h.join().unwrap(), 200);
        }
        assert_eq!(get(addr, "/ok").0, 200);
    }

    #[test]
    fn stops_promptly() {
        let srv = start(test_config(), echo());
        let t0 = Instant::now();
        drop(srv);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn head_parser_edge_cases() {
        struct Slow(Vec<u8>, usize);
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len() - self.1).min(3);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        impl ReadTimeout for Slow {
            fn set_timeout(&mut self, _: Duration) -> io::Result<()> {
                Ok(())
            }
        }
        let mut s = Slow(b"GET / HTTP/1.1\r\nA: b\r\n\r\nBODY".to_vec(), 0);
        let head = read_head(&mut s, 8192, Duration::from_secs(1)).unwrap();
        assert_eq!(head, b"GET / HTTP/1.1\r\nA: b");
        let req = parse_head(&head).unwrap();
        assert_eq!(req.header("a"), Some("b"));
        let mut s = Slow(b"GET / HTTP/1.1\r\n".to_vec(), 0);
        assert_eq!(read_head(&mut s, 8192, Duration::from_secs(1)), Err(HeadError::Closed));
        let mut s = Slow(vec![b'a'; 100], 0);
        assert_eq!(read_head(&mut s, 10, Duration::from_secs(1)), Err(HeadError::TooLarge));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n folded").unwrap_err(), HeadError::Bad("obsolete header folding"));
        assert_eq!(parse_head(b"get / HTTP/1.1").unwrap_err(), HeadError::Bad("malformed method"));
    }

    #[test]
    fn query_flags() {
        assert!(query_flag(Some("leaks=1&callers"), "callers"));
        assert!(query_flag(Some("leaks=1&callers"), "leaks"));
        assert!(!query_flag(Some("leaks=0"), "leaks"));
        assert!(!query_flag(Some("leaksx=1"), "leaks"));
        assert!(!query_flag(None, "leaks"));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(html(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    /// The real routes over a reduced-mode collector (no probes: this
    /// needs no privileges and reads this host's /proc/vmstat).
    #[test]
    fn app_routes() {
        let kallsyms = crate::kallsyms::Kallsyms::parse(
            "ffffffff81000000 T pin_user_pages_fast\nffffffff81000100 T unpin_user_pages\n",
        );
        let plan = crate::plan::ProbePlan::resolve("6.1.0-<test>".into(), Err("no BTF".into()), &kallsyms);
        let collector = Collector::new(None, &plan, metrics::Settings::default());
        let srv = start(test_config(), Arc::new(App::new(collector)));
        let (st, body) = get(srv.addr, "/healthz");
        assert_eq!(st, 200);
        assert!(body.ends_with("\r\n\r\nok\n"));
        let (st, body) = get(srv.addr, "/metrics");
        assert_eq!(st, 200);
        assert!(body.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{body}");
        assert!(body.contains(r#"gupwatch_probe_attached{function="pin_user_pages_fast",mechanism="kprobe"} 0"#), "{body}");
        assert!(body.contains(r#"gupwatch_probe_attached{function="memfd_pin_folios",mechanism="none"} 0"#), "{body}");
        let metrics_text = body.split("\r\n\r\n").nth(1).unwrap();
        crate::metrics::tests::promtool_check(metrics_text);
        let (st, body) = raw(
            srv.addr,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
        );
        assert_eq!(st, 200);
        assert!(body.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"));
        assert!(body.ends_with("# EOF\n"));
        let (st, body) = get(srv.addr, "/api/snapshot");
        assert_eq!(st, 200);
        assert!(body.contains("Content-Type: application/json\r\n"));
        let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["mode"], "reduced");
        assert_eq!(json["kernel"], "6.1.0-<test>");
        assert!(json.get("callers").is_none() && json.get("leaks").is_none(), "extras are opt-in");
        let (st, body) = get(srv.addr, "/api/snapshot?callers=1&leaks=1");
        assert_eq!(st, 200);
        let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["callers"], serde_json::json!([]));
        assert_eq!(json["callers_truncated"], false);
        assert!(json["leaks"].is_null(), "no leak report without probes");
        let (st, body) = get(srv.addr, "/");
        assert_eq!(st, 200);
        assert!(body.contains("text/html"));
        assert!(body.contains("6.1.0-&lt;test&gt;"), "kernel string escaped");
        assert!(body.contains("<a href=\"/metrics\">"));
        assert!(body.contains("<code>pin_user_pages_fast</code>"));
        assert_eq!(get(srv.addr, "/nope").0, 404);
        assert_eq!(get(srv.addr, "/metrics/").0, 404);
        // Each response line of the head is CRLF-terminated.
        let (_, body) = get(srv.addr, "/healthz");
        let head = body.split("\r\n\r\n").next().unwrap();
        assert!(io::BufReader::new(head.as_bytes()).lines().all(|l| !l.unwrap().contains('\r')));
    }
}
