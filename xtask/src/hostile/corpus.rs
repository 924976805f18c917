//! Malformed and unwelcome requests, each with the answer the daemon must
//! give: huge heads, many headers, long paths, other methods, bodies,
//! traversal, NUL bytes, other protocols.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf};

use super::net::{self, read_response, Io, Target};

/// What a case must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A response with this status.
    Status(u16),
    /// The connection closed without a response.
    Closed,
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Status(s) => write!(f, "{s}"),
            Expect::Closed => write!(f, "closed"),
        }
    }
}

/// One case.
pub struct Case {
    /// What it is.
    pub name: &'static str,
    /// The bytes sent.
    pub bytes: Vec<u8>,
    /// The answer it must get.
    pub expect: Expect,
    /// Sent over plain TCP even when the daemon serves TLS.
    pub plain: bool,
}

fn case(name: &'static str, bytes: Vec<u8>, expect: u16) -> Case {
    Case { name, bytes, expect: Expect::Status(expect), plain: false }
}

/// The cases; `auth` is the `Authorization` line the requests carry (so
/// that with basic auth on they reach the method and route checks), and
/// `tls` adds the cases only a TLS port has.
pub fn cases(auth: &str, tls: bool) -> Vec<Case> {
    let req = |line: &str, extra: &str| format!("{line}\r\nHost: localhost\r\n{auth}{extra}Connection: close\r\n\r\n").into_bytes();
    let mut many = String::with_capacity(1_300_000);
    for i in 0..100_000 {
        many += &format!("X-H{i}: v\r\n");
    }
    let mut body = req("POST /metrics HTTP/1.1", "Content-Length: 1048576\r\n");
    body.extend(std::iter::repeat_n(b'b', 1 << 20));
    let mut with_body = req("GET /healthz HTTP/1.1", "Content-Length: 5\r\n");
    with_body.extend_from_slice(b"hello");
    let mut put = req("PUT /metrics HTTP/1.1", "Content-Length: 5\r\n");
    put.extend_from_slice(b"hello");
    let mut v = vec![
        case("1 MiB header", req("GET /metrics HTTP/1.1", &format!("X-Big: {}\r\n", "a".repeat(1 << 20))), 431),
        case("100,000 headers", req("GET /metrics HTTP/1.1", &many), 431),
        case("200 kB path", req(&format!("GET /{} HTTP/1.1", "p".repeat(200_000)), ""), 431),
        case("POST with a 1 MiB body", body, 405),
        case("PUT with a body", put, 405),
        case("DELETE", req("DELETE /metrics HTTP/1.1", ""), 405),
        case("OPTIONS", req("OPTIONS /metrics HTTP/1.1", ""), 405),
        case("unknown method BREW", req("BREW /metrics HTTP/1.1", ""), 405),
        case("CONNECT (authority form)", req("CONNECT localhost:443 HTTP/1.1", ""), 400),
        case("GET with a body", with_body, 200),
        case("traversal /../../etc/passwd", req("GET /../../etc/passwd HTTP/1.1", ""), 404),
        case("encoded traversal /%2e%2e/etc/passwd", req("GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1", ""), 404),
        case("traversal /metrics/../metrics", req("GET /metrics/../metrics HTTP/1.1", ""), 404),
        case("encoded NUL /metrics%00", req("GET /metrics%00 HTTP/1.1", ""), 404),
        case("raw NUL in the path", req("GET /metr\0ics HTTP/1.1", ""), 400),
        case("NUL in a header", req("GET /metrics HTTP/1.1", "X-Nul: a\0b\r\n"), 400),
        case("folded header", req("GET /metrics HTTP/1.1", "X-A: a\r\n folded\r\n"), 400),
        case("HTTP/2.0 request line", req("GET /metrics HTTP/2.0", ""), 400),
        case("garbage", b"\x01\x02\x03 not http\r\n\r\n".to_vec(), 400),
        case("unknown path", req("GET /nope HTTP/1.1", ""), 404),
        // /healthz: answered without a render slot, so never shed by
        // the flood running meanwhile.
        case("GET /healthz (control)", req("GET /healthz HTTP/1.1", ""), 200),
        case("HEAD /healthz (control)", req("HEAD /healthz HTTP/1.1", ""), 200),
        Case {
            name: "HTTP/2 prior-knowledge preface",
            bytes: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            expect: Expect::Closed,
            plain: false,
        },
    ];
    if tls {
        let bare = |line: &str, extra: &str| format!("{line}\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n").into_bytes();
        v.push(case("no credentials", bare("GET /metrics HTTP/1.1", ""), 401));
        v.push(case("wrong password", bare("GET /metrics HTTP/1.1", "Authorization: Basic cHJvbWV0aGV1czpub3Bl\r\n"), 401));
        v.push(case("POST without credentials (401 before 405)", bare("POST /metrics HTTP/1.1", ""), 401));
        v.push(Case { name: "plain HTTP to the TLS port", bytes: bare("GET /metrics HTTP/1.1", ""), expect: Expect::Status(400), plain: true });
    }
    v
}

/// What a case got: a status, `Closed`, or the client's error.
pub async fn run_case(t: &Target, c: &Case) -> Result<Expect, String> {
    let target = if c.plain { Target { tls: None, ..t.clone() } } else { t.clone() };
    let io = target.open(net::source(4, 0), None, super::load::STEP_LIMIT).await.map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr): (ReadHalf<Box<dyn Io>>, _) = tokio::io::split(io);
    // Writing and reading at once: the daemon answers a huge head after
    // its first 8 KiB and stops reading, so the rest cannot be written.
    let write = async {
        let _ = wr.write_all(&c.bytes).await;
        let _ = wr.flush().await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = read_response(&mut rd, c.bytes.starts_with(b"HEAD "), 16 * 1024, Duration::ZERO) => match r {
            Ok(Some(a)) => Ok(Expect::Status(a.status)),
            Ok(None) => Ok(Expect::Closed),
            Err(e) => Err(format!("read: {e}")),
        },
        _ = write => Err("unreachable".into()),
        _ = tokio::time::sleep(Duration::from_secs(15)) => Err("no answer in 15 s".into()),
    }
}
