//! The listener and each connection: admission, the TLS handshake, hyper's
//! HTTP/1.1 connection, and a close that does not destroy the response.

use std::{
    future::poll_fn,
    io,
    net::{SocketAddr, TcpListener, ToSocketAddrs},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{watch, Semaphore},
};

use super::{
    io::{Prepend, WriteDeadline},
    limits::{self, Limits, PeerKey, Refusal},
    respond::{self, Shared},
    Handler, ServeError, ServerConfig,
};
use crate::export::webconfig::{Security, WebConfigWatcher};

/// How long a closing connection is drained of what the client still
/// sends, so that unread request bytes do not turn the close into a reset
/// that destroys the response in flight.
const LINGER: Duration = Duration::from_millis(200);
/// At most this much is drained.
const LINGER_BYTES: usize = 64 * 1024;
/// How often the accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long a stopping server waits for requests in progress.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The listening socket's accept queue.
const ACCEPT_BACKLOG: libc::c_int = 4096;
/// Refusals and accept errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
        // std listens with a backlog of 128: a burst of reconnecting
        // clients (a thousand stalled ones cut at the same deadline) would
        // overflow it, and a scrape's SYN dropped then waits for the 1 s
        // retransmit. Listening again only raises the backlog (the kernel
        // caps it at net.core.somaxconn); failing, 128 stays.
        // SAFETY: listen(2) on a socket this function owns.
        unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), ACCEPT_BACKLOG) };
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

    /// Serves until `stop` is set, then lets requests in progress finish
    /// (for up to two seconds) and returns.
    ///
    /// The server's threads start here (two tokio workers for the
    /// connections, at most `max_renders` blocking threads for the
    /// routes): a caller that drops privileges first keeps them all
    /// unprivileged. The soft descriptor limit is raised to the hard one.
    pub fn run(self, handler: Arc<dyn Handler>, stop: &AtomicBool) -> Result<(), ServeError> {
        let nofile = limits::raise_nofile_limit();
        let cfg = self.config;
        let max_connections = cfg.max_connections.unwrap_or_else(|| limits::connections_for(nofile));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(cfg.max_renders.max(1))
            .thread_name("gupwatch-http")
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServeError::Runtime)?;
        let shared = Arc::new(Shared {
            handler,
            limits: Limits::new(max_connections, cfg.max_connections_per_peer, cfg.max_requests_per_peer),
            renders: Arc::new(Semaphore::new(cfg.max_renders.max(1))),
            cfg,
            flights: Default::default(),
        });
        tracing::debug!(max_connections, nofile, "http: connection budget");
        let served = rt.block_on(self.serve(shared, stop));
        // Connections still open after the grace period are dropped.
        rt.shutdown_timeout(Duration::from_secs(1));
        served
    }

    async fn serve(self, shared: Arc<Shared>, stop: &AtomicBool) -> Result<(), ServeError> {
        let listener = tokio::net::TcpListener::from_std(self.listener).map_err(ServeError::Listener)?;
        let (shutdown, stopping) = watch::channel(false);
        let mut tick = tokio::time::interval(STOP_POLL);
        let mut log = Throttle::default();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let security = self.web.as_ref().map(|w| w.current());
                        if let Err(why) = spawn_connection(stream, peer, &shared, security, stopping.clone()) {
                            log.refused(why, peer);
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off rather than spin; the
                        // connection waits in the backlog meanwhile.
                        log.accept_error(&e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = tick.tick() => if stop.load(Ordering::Relaxed) { break },
            }
        }
        drop(listener);
        let _ = shutdown.send(true);
        let deadline = Instant::now() + STOP_GRACE;
        while shared.limits.open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Counts refusals and accept errors between two log lines, so a flood
/// does not flood the log too.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    full: u64,
    peer_full: u64,
    errors: u64,
}

impl Throttle {
    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    fn refused(&mut self, why: Refusal, peer: SocketAddr) {
        match why {
            Refusal::Full => self.full += 1,
            Refusal::PeerFull => self.peer_full += 1,
        }
        if self.due() {
            tracing::warn!(
                last_peer = %peer.ip(),
                connection_budget_full = self.full,
                per_peer_cap_reached = self.peer_full,
                "http: connections refused (counts since the last such line)"
            );
            (self.full, self.peer_full) = (0, 0);
        }
    }

    fn accept_error(&mut self, e: &io::Error) {
        self.errors += 1;
        if self.due() {
            tracing::warn!(error = %e, errors = self.errors, "http: accept failed (count since the last such line)");
            self.errors = 0;
        }
    }
}

/// Admits the connection and starts its task, or refuses it at once.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    security: Option<Arc<Security>>,
    stopping: watch::Receiver<bool>,
) -> Result<(), Refusal> {
    let key = PeerKey::of(peer.ip());
    let tls = security.as_ref().is_some_and(|s| s.tls().is_some());
    let guard = match shared.limits.admit_connection(key) {
        Ok(g) => g,
        Err(why) => {
            if !tls {
                // Best effort, without waiting: the socket buffer is empty.
                let _ = stream.try_write(&canned("503 Service Unavailable", "busy: too many connections; retry later\n"));
            }
            return Err(why);
        }
    };
    let conn = Arc::new(respond::Connection { shared: Arc::clone(shared), security, peer: key });
    tokio::spawn(async move {
        let _counted = guard;
        let _ = stream.set_nodelay(true);
        connection(stream, conn, stopping).await;
    });
    Ok(())
}

/// A whole `Connection: close` response, for the answers given outside
/// hyper (before or after its connection).
fn canned(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One connection: TLS first if configured, then HTTP/1.1.
pub(super) async fn connection(stream: TcpStream, conn: Arc<respond::Connection>, stopping: watch::Receiver<bool>) {
    match conn.security.as_ref().and_then(|s| s.tls().cloned()) {
        None => serve_http(stream, conn, stopping).await,
        // Boxed: rustls' connection state inline would make every plain
        // connection's task as large as a TLS one's.
        Some(tls) => Box::pin(serve_tls(stream, tls, conn, stopping)).await,
    }
}

async fn serve_tls(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    conn: Arc<respond::Connection>,
    stopping: watch::Receiver<bool>,
) {
    let cfg = conn.shared.cfg;
    // The handshake has the head deadline; each request head then has its
    // own.
    let deadline = tokio::time::Instant::now() + cfg.head_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        // A TLS record starts with a binary content type, never a letter.
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            let mut stream = stream;
            let _ = tokio::time::timeout(
                cfg.write_timeout,
                stream.write_all(&canned("400 Bad Request", "Client sent an HTTP request to an HTTPS server.\n")),
            )
            .await;
            return linger_close(stream).await;
        }
        Ok(Ok(1)) => {}
        _ => return,
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // On failure (wrong protocol, a refused client certificate, too slow)
    // the alert, if any, has been sent; there is no channel for a response.
    if let Ok(Ok(tls_stream)) = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        serve_http(tls_stream, conn, stopping).await;
    }
}

/// How the first request head ended, read before hyper takes over.
enum FirstHead {
    /// Complete (or past the size limit, for hyper to answer 431).
    Read(Vec<u8>),
    /// The client closed, or the server is stopping.
    Closed,
    /// The head deadline passed; `true` if part of a head had come.
    TimedOut(bool),
}

/// Reads the first request head into a buffer the size of what came.
/// hyper allocates some 16 KiB of buffers per connection as it starts
/// serving it; read first, a connection that stalls before its first
/// whole head (the cheapest attack: thousands of them) costs its socket,
/// a small task and the bytes it sent, never those buffers.
async fn first_head<I: AsyncRead + Unpin>(io: &mut I, max: usize, limit: Duration) -> FirstHead {
    let deadline = tokio::time::Instant::now() + limit;
    let mut head = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Err(_) => return FirstHead::TimedOut(!head.is_empty()),
            Ok(Ok(0) | Err(_)) => return FirstHead::Closed,
            Ok(Ok(n)) => n,
        };
        // The end may straddle two reads.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        let tail = &head[from..];
        // httparse, like the hand-written server before it, accepts bare
        // LF line ends.
        if head.len() > max || tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return FirstHead::Read(head);
        }
    }
}

/// Resolves when the server stops (or its stop signal is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if !*stopping.borrow() {
        let _ = stopping.changed().await;
    }
}

/// hyper's HTTP/1.1 on an established connection, until either side ends
/// it, the server stops, or a limit is hit.
async fn serve_http<I>(mut io: I, conn: Arc<respond::Connection>, mut stopping: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = conn.shared.cfg;
    let first = tokio::select! {
        h = first_head(&mut io, cfg.max_head_bytes, cfg.head_timeout) => h,
        _ = stopped(&mut stopping) => FirstHead::Closed,
    };
    let head = match first {
        FirstHead::Read(head) => head,
        FirstHead::Closed | FirstHead::TimedOut(false) => return,
        FirstHead::TimedOut(true) => {
            let _ = tokio::time::timeout(cfg.write_timeout, io.write_all(&canned("408 Request Timeout", HEAD_LATE))).await;
            return linger_close(io).await;
        }
    };
    // Boxed: hyper's connection state is kilobytes, and inline it would
    // be part of every connection's task from the accept on.
    Box::pin(serve_hyper(Prepend::new(head, io), conn, stopping)).await;
}

/// hyper's part: from the first whole head to the end of the connection.
async fn serve_hyper<I>(io: Prepend<I>, conn: Arc<respond::Connection>, mut stopping: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = conn.shared.cfg;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.head_timeout)
        .max_header_size(cfg.max_head_bytes)
        .max_buf_size(cfg.max_head_bytes.max(8192))
        .keep_alive(true)
        // `Content-Type`, not `content-type`: as the server always wrote
        // them, for clients (and scripts) that match names exactly.
        .title_case_headers(true);
    let svc = hyper::service::service_fn(move |req| respond::service(req, Arc::clone(&conn)));
    let io = WriteDeadline::new(io, cfg.write_timeout);
    let mut http = builder.serve_connection(TokioIo::new(io), svc);
    let mut graceful = false;
    let result = loop {
        tokio::select! {
            r = poll_fn(|cx| http.poll_without_shutdown(cx)) => break r,
            _ = stopped(&mut stopping), if !graceful => {
                // Idle connections close now, a request in progress ends
                // with its response.
                graceful = true;
                std::pin::Pin::new(&mut http).graceful_shutdown();
            }
        }
    };
    let parts = http.into_parts();
    let mut io = parts.io.into_inner().into_inner().into_inner();
    if let Err(e) = &result {
        // hyper closes silently at the head deadline; a client that had
        // started a head learns why.
        if e.is_timeout() && !parts.read_buf.is_empty() {
            let _ = tokio::time::timeout(cfg.write_timeout, io.write_all(&canned("408 Request Timeout", HEAD_LATE))).await;
        }
    }
    linger_close(io).await;
}

const HEAD_LATE: &str = "request head not received in time\n";

/// Ends our side, then reads and discards what the client still sends,
/// briefly and up to a bound, before dropping the socket.
async fn linger_close<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = io.shutdown().await;
        // On the heap and only now: the connection's task does not carry
        // this buffer while it serves.
        let mut sink = vec![0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}
