//! The server with raw sockets: what each kind of client gets.

use std::{
    io::{self, BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    collect::{self, Collector},
};
use gup_report::{Mode, SnapshotReport};

fn test_config() -> ServerConfig {
    ServerConfig { head_timeout: Duration::from_millis(300), max_renders: 2, ..ServerConfig::default() }
}

struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<(), ServeError>>>,
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

/// Reads one response (head, then `Content-Length` bytes of body unless
/// `head_only`); "" when the server closed first.
fn read_response(s: &mut TcpStream, head_only: bool) -> String {
    let (head, body) = read_response_bytes(s, head_only);
    head + &String::from_utf8_lossy(&body)
}

/// [`read_response`] with the body as bytes (gzip is not text).
fn read_response_bytes(s: &mut TcpStream, head_only: bool) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return (String::from_utf8_lossy(&buf).into_owned(), vec![]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("every response has Content-Length");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

/// Sends raw bytes on a new connection, returns (status, head+body).
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let out = read_response(&mut s, request.starts_with(b"HEAD "));
    (status(&out), out)
}

fn status(out: &str) -> u16 {
    out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
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
    assert!(body.contains("\r\nContent-Length: "), "{body}");
    assert!(body.contains("\r\nCache-Control: no-store\r\n"), "{body}");
    // HEAD: headers with the body's length, no body.
    let (st, body) = raw(srv.addr, b"HEAD /x HTTP/1.0\r\n\r\n");
    assert_eq!(st, 200);
    assert!(body.ends_with("\r\n\r\n") && !body.contains("Content-Length: 0\r\n"), "{body:?}");
    // Absolute-form target and bare-LF line ends.
    let (st, body) = raw(srv.addr, b"GET http://h:1/abs HTTP/1.1\nHost: h\n\n");
    assert_eq!(st, 200);
    assert!(body.contains("GET /abs"), "{body}");
    let (st, body) = raw(srv.addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(st, 405);
    assert!(body.contains("Allow: GET, HEAD\r\n"));
    assert_eq!(raw(srv.addr, b"get / HTTP/1.1\r\n\r\n").0, 405, "methods are case-sensitive");
    assert_eq!(raw(srv.addr, b"GARBAGE\r\n\r\n").0, 400);
    assert_eq!(raw(srv.addr, b"GET noslash HTTP/1.1\r\n\r\n").0, 400);
    assert_eq!(raw(srv.addr, b"GET / HTTP/1.1\r\nno colon\r\n\r\n").0, 400);
    // httparse knows HTTP/1.x only: 400 (the hand-written server said 505).
    assert_eq!(raw(srv.addr, b"GET / HTTP/2.0\r\n\r\n").0, 400);
    assert_eq!(raw(srv.addr, b"GET /\xff HTTP/1.1\r\n\r\n").0, 400);
    assert_eq!(raw(srv.addr, b"GET /a\0b HTTP/1.1\r\n\r\n").0, 400, "a raw NUL is not a request");
    assert_eq!(get(srv.addr, "/a%00b").1.lines().last(), Some("GET /a%00b None None"), "routes see it encoded");
    // A handler panic answers 500 and the server goes on.
    assert_eq!(get(srv.addr, "/panic").0, 500);
    assert_eq!(get(srv.addr, "/ok").0, 200);
    assert_eq!(get(srv.addr, "/ok").0, 200);
}

#[test]
fn keep_alive_serves_several_requests_per_connection() {
    let srv = start(test_config(), echo());
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..3 {
        s.write_all(format!("GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let out = read_response(&mut s, false);
        assert!(out.starts_with("HTTP/1.1 200 ") && out.ends_with(&format!("GET /n{i} None None\n")), "{out}");
    }
    // Asked to close: it says so and does.
    s.write_all(b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let out = read_response(&mut s, false);
    assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
    // A partial second head gets 408 at the deadline (hyper's timeout).
    let mut s2 = TcpStream::connect(srv.addr).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s2.write_all(b"GET /one HTTP/1.1\r\n\r\n").unwrap();
    assert!(read_response(&mut s2, false).starts_with("HTTP/1.1 200 "));
    s2.write_all(b"GET /two HTTP/1.1\r\nX-Slow: ").unwrap();
    let mut out = String::new();
    let _ = s2.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    // An idle keep-alive connection is closed at the head deadline.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut s, false);
    let t0 = Instant::now();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "closed without another response");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn oversized_heads_get_431() {
    let srv = start(test_config(), echo());
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let (st, body) = raw(srv.addr, big.as_bytes());
    assert_eq!(st, 431, "{body}");
    // Many small headers count too (more than 100 is too many).
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..1000 {
        many += &format!("X-H{i}: v\r\n");
    }
    many += "\r\n";
    assert_eq!(raw(srv.addr, many.as_bytes()).0, 431);
    let path = format!("GET /{} HTTP/1.1\r\n\r\n", "p".repeat(20_000));
    assert_eq!(raw(srv.addr, path.as_bytes()).0, 431);
    // Just under the limit is fine.
    let ok = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(8000));
    assert_eq!(raw(srv.addr, ok.as_bytes()).0, 200);
}

#[test]
fn slow_clients_time_out() {
    let srv = start(test_config(), echo());
    // Sends part of a head, then stalls: 408 at the deadline.
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
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
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
    // A client that connects and says nothing is closed, silently.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    assert_eq!(s.read_to_end(&mut out).unwrap_or(0), 0);
    // One that connects and closes hurts nothing.
    drop(TcpStream::connect(srv.addr).unwrap());
    assert_eq!(get(srv.addr, "/").0, 200);
}

#[test]
fn a_client_that_does_not_read_is_dropped() {
    // 32 MiB: more than the socket buffers on both sides hold.
    let big: Arc<dyn Handler> = Arc::new(|_: &Request| Response::new(200, "application/octet-stream", vec![b'x'; 32 << 20]));
    let srv = start(ServerConfig { write_timeout: Duration::from_millis(300), ..test_config() }, big);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    // Not reading for well past the write timeout.
    thread::sleep(Duration::from_millis(1500));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 32 << 20, "the whole response came ({got} bytes): the stalled write was not cut");
    assert!(t0.elapsed() < Duration::from_secs(10), "the connection stayed open");
}

#[test]
fn many_stalled_connections_do_not_block_requests() {
    // More than the old server's 64 slots, each stalled mid-head.
    let srv = start(ServerConfig { head_timeout: Duration::from_secs(3), ..test_config() }, echo());
    let stalled: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let t0 = Instant::now();
    assert_eq!(get(srv.addr, "/ok").0, 200);
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    drop(stalled);
}

#[test]
fn load_is_shed_with_503() {
    // One render at a time, waited for 150 ms: the third of three
    // concurrent slow requests from one client cannot start in time.
    let cfg = ServerConfig { max_renders: 1, render_wait: Duration::from_millis(150), ..test_config() };
    let srv = start(cfg, echo());
    let addr = srv.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let h = thread::spawn(move || get(addr, "/slow").0);
            thread::sleep(Duration::from_millis(40));
            h
        })
        .collect();
    let (st, body) = get(addr, "/slow");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("Retry-After: 1\r\n"), "{body}");
    let codes: Vec<u16> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{codes:?}");
    assert_eq!(get(addr, "/ok").0, 200, "free again");
}

#[test]
fn work_free_answers_are_not_shed() {
    /// `/slow` renders; `/healthz` and unknown paths need no slot.
    struct Routes;
    impl Handler for Routes {
        fn handle(&self, req: &Request) -> Response {
            if req.path == "/slow" {
                thread::sleep(Duration::from_millis(600));
            }
            Response::text(if req.path == "/nope" { 404 } else { 200 }, "x\n")
        }
        fn renders(&self, req: &Request) -> bool {
            req.path == "/slow"
        }
    }
    let cfg = ServerConfig { max_renders: 1, render_wait: Duration::from_millis(100), ..test_config() };
    let srv = start(cfg, Arc::new(Routes));
    let addr = srv.addr;
    let slow = thread::spawn(move || get(addr, "/slow").0);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(get(addr, "/slow").0, 503, "the one slot is taken");
    let t0 = Instant::now();
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/nope").0, 404);
    assert_eq!(raw(addr, b"DELETE /slow HTTP/1.1\r\n\r\n").0, 405);
    assert!(t0.elapsed() < Duration::from_millis(300), "{:?}", t0.elapsed());
    assert_eq!(slow.join().unwrap(), 200);
}

#[test]
fn requests_for_one_page_share_its_render() {
    /// `/shared` takes 300 ms and may be shared; counts its renders.
    struct Counting(std::sync::atomic::AtomicUsize);
    impl Handler for Counting {
        fn handle(&self, _: &Request) -> Response {
            let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            thread::sleep(Duration::from_millis(300));
            Response::text(200, format!("render {n}\n"))
        }
        fn coalesce(&self, req: &Request) -> Option<String> {
            (req.path == "/shared").then(|| req.path.clone())
        }
    }
    // One slot, 100 ms of wait: ten requests rendering each their own
    // would mostly be shed.
    let handler = Arc::new(Counting(Default::default()));
    let cfg = ServerConfig { max_renders: 1, render_wait: Duration::from_millis(100), ..test_config() };
    let srv = start(cfg, Arc::clone(&handler) as Arc<dyn Handler>);
    let addr = srv.addr;
    let clients: Vec<_> = (0..10).map(|_| thread::spawn(move || get(addr, "/shared"))).collect();
    let answers: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(answers.iter().all(|(st, _)| *st == 200), "{answers:?}");
    let renders = handler.0.load(Ordering::SeqCst);
    assert!(renders <= 3, "{renders} renders for 10 requests");
    // Afterwards a new request renders anew.
    let (_, body) = get(addr, "/shared");
    assert!(body.ends_with(&format!("render {}\n", renders + 1)), "{body}");
}

/// Calls `f` until `done` holds of its result or 10 s pass; the last result.
fn poll<T>(mut f: impl FnMut() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = f();
        if done(&v) || std::time::Instant::now() > deadline {
            return v;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn per_client_caps() {
    // A head deadline far beyond the test's waits: the held connections
    // send no head, and must not be cut before the fourth one is refused.
    let cfg = ServerConfig {
        max_connections_per_peer: 3,
        max_requests_per_peer: 1,
        head_timeout: Duration::from_secs(10),
        ..test_config()
    };
    let srv = start(cfg, echo());
    let addr = srv.addr;
    // Requests: a second one from the same address while the first runs.
    let first = thread::spawn(move || get(addr, "/slow").0);
    thread::sleep(Duration::from_millis(100));
    let (st, body) = get(addr, "/ok");
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("from your address"), "{body}");
    assert_eq!(first.join().unwrap(), 200);
    // Connections: the fourth from one address is refused at once, with a
    // 503 (other addresses: see limits.rs's tests).
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The server accepts them in its own time (slow on a loaded machine):
    // until it has, a fourth connection may still be served.
    let (st, body) = poll(|| get(addr, "/ok"), |(st, _)| *st == 503);
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("too many connections"), "{body}");
    drop(held);
    let (st, _) = poll(|| get(addr, "/ok"), |(st, _)| *st == 200);
    assert_eq!(st, 200, "slots come back when connections close");
}

#[test]
fn stops_promptly() {
    let srv = start(test_config(), echo());
    // An idle keep-alive connection and a stalled one do not hold it up.
    let _idle = TcpStream::connect(srv.addr).unwrap();
    let mut stalled = TcpStream::connect(srv.addr).unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    drop(srv);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}

#[test]
fn head_parser_edge_cases() {
    let req = parse_request_head(b"GET /p?q=1 HTTP/1.1\r\nA: b\r\n\r\n").unwrap();
    assert_eq!((req.path.as_str(), req.query.as_deref(), req.header("a")), ("/p", Some("q=1"), Some("b")));
    assert!(parse_request_head(b"GET / HTTP/1.1\r\n").is_err(), "incomplete");
    assert!(parse_request_head(b"GET / HTTP/1.1\r\n folded\r\n\r\n").is_err());
    assert!(parse_request_head(b"GET * HTTP/1.1\r\n\r\n").is_err());
    assert_eq!(parse_request_head(b"get / HTTP/1.1\r\n\r\n").unwrap().method, "get");
}

#[test]
fn query_flags() {
    use super::routes::query_flag;
    assert!(query_flag(Some("leaks=1&callers"), "callers"));
    assert!(query_flag(Some("leaks=1&callers"), "leaks"));
    assert!(!query_flag(Some("leaks=0"), "leaks"));
    assert!(!query_flag(Some("leaksx=1"), "leaks"));
    assert!(!query_flag(None, "leaks"));
}

#[test]
fn html_is_escaped() {
    assert_eq!(super::routes::html(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
}

/// The real routes over a reduced-mode collector (no probes: this needs
/// no privileges and reads this host's /proc/vmstat).
#[test]
fn app_routes() {
    let kallsyms = crate::kernel::kallsyms::Kallsyms::parse(
        "ffffffff81000000 T pin_user_pages_fast\nffffffff81000100 T unpin_user_pages\n",
    );
    let plan = crate::kernel::plan::ProbePlan::resolve("6.1.0-<test>".into(), Err("no BTF".into()), &kallsyms);
    let collector = Collector::new(None, &plan, collect::Settings::default());
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
    crate::export::prometheus::tests::promtool_check(metrics_text);
    let (st, body) = raw(
        srv.addr,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n",
    );
    assert_eq!(st, 200);
    assert!(body.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"));
    assert!(body.ends_with("# EOF\n"));
    metrics_gzip(srv.addr);
    let (st, body) = get(srv.addr, "/api/snapshot");
    assert_eq!(st, 200);
    assert!(body.contains("Content-Type: application/json\r\n"));
    let doc: SnapshotReport = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(doc.mode, Mode::Reduced);
    assert_eq!(doc.kernel, "6.1.0-<test>");
    assert!(doc.callers.is_none() && doc.leaks.is_none(), "extras are opt-in");
    let (st, body) = get(srv.addr, "/api/snapshot?callers=1&leaks=1");
    assert_eq!(st, 200);
    let doc: SnapshotReport = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!((doc.callers, doc.callers_truncated), (Some(vec![]), Some(false)));
    assert_eq!(doc.leaks, Some(None), "leaks is there, null: no leak report without probes");
    let (st, body) = get(srv.addr, "/");
    assert_eq!(st, 200);
    assert!(body.contains("text/html"));
    assert!(body.contains("6.1.0-&lt;test&gt;"), "kernel string escaped");
    assert!(body.contains("<a href=\"/metrics\">"));
    assert!(body.contains("<code>pin_user_pages_fast</code>"));
    assert_eq!(get(srv.addr, "/nope").0, 404);
    assert_eq!(get(srv.addr, "/metrics/").0, 404);
    assert_eq!(get(srv.addr, "/../metrics").0, 404, "no path normalisation, no traversal");
    assert_eq!(get(srv.addr, "/metrics%00").0, 404);
    // Each response line of the head is CRLF-terminated.
    let (_, body) = get(srv.addr, "/healthz");
    let head = body.split("\r\n\r\n").next().unwrap();
    assert!(io::BufReader::new(head.as_bytes()).lines().all(|l| !l.unwrap().contains('\r')));
}

/// `/metrics` gzip-encoded when the client accepts gzip, plain when not,
/// `Vary: Accept-Encoding` on both; the decoded body is the plain one.
fn metrics_gzip(addr: SocketAddr) {
    let fetch = |accept_encoding: &str| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept_encoding}\r\n").as_bytes()).unwrap();
        read_response_bytes(&mut s, false)
    };
    let (plain_head, plain) = fetch("");
    let (zhead, zbody) = fetch("Accept-Encoding: gzip\r\n");
    let (refused_head, _) = fetch("Accept-Encoding: gzip;q=0, identity\r\n");
    let [plain_head, zhead, refused_head] = [plain_head, zhead, refused_head].map(|h| h.to_ascii_lowercase());
    for h in [&plain_head, &zhead, &refused_head] {
        assert!(status(h) == 200 && h.contains("\r\nvary: accept-encoding\r\n"), "{h}");
    }
    assert!(zhead.contains("\r\ncontent-encoding: gzip\r\n"), "{zhead}");
    assert!(!plain_head.contains("content-encoding") && !refused_head.contains("content-encoding"), "{plain_head}");
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&zbody[..]).read_to_string(&mut decoded).unwrap();
    assert!(zbody.len() < plain.len() && decoded.contains("gupwatch_probe_attached{"), "{} vs {}", zbody.len(), plain.len());
    // Two renders a moment apart differ only in values that change on
    // their own (scrape duration, vmstat): the families are the same.
    let names = |t: &str| t.lines().filter(|l| l.starts_with("# TYPE")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(names(&decoded), names(&String::from_utf8(plain).unwrap()));
}

/// What every connection's task costs from the accept on, before its
/// first whole head: the reason thousands of stalled clients are cheap.
/// hyper's and rustls' state are boxed only once needed.
#[test]
fn a_waiting_connection_is_a_small_task() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let cfg = ServerConfig::default();
        let shared = Arc::new(super::respond::Shared {
            handler: echo(),
            limits: super::limits::Limits::new(10, 10, 10),
            renders: Arc::new(tokio::sync::Semaphore::new(1)),
            cfg,
            flights: Default::default(),
        });
        let conn = Arc::new(super::respond::Connection {
            shared,
            security: None,
            peer: super::limits::PeerKey::of("127.0.0.1".parse().unwrap()),
        });
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let fut = super::serve::connection(stream, conn, rx);
        let size = std::mem::size_of_val(&fut);
        eprintln!("a connection's future: {size} bytes");
        assert!(size < 2048, "{size} bytes");
    });
}
