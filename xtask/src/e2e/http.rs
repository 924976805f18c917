//! A minimal HTTP client (std only): enough to talk to Prometheus and to
//! gupwatch's own endpoints through a forwarded port.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Percent-encodes a query-string component.
pub fn url_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// Decodes a `Transfer-Encoding: chunked` body.
pub fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = std::str::from_utf8(&body[..eol]).context("chunk size is not text")?;
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size `{size_hex}`"))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

/// `GET target` from `127.0.0.1:port` (HTTP/1.0, so the server closes the
/// connection after the body); returns the status and body. Bounded by
/// `timeout` overall.
pub fn http_get(port: u16, target: &str, timeout: Duration) -> Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: `write!` on a socket sends each formatted piece apart.
    let request = format!(
        "GET {target} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: text/plain, application/json\r\nUser-Agent: gupwatch-xtask\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "GET {target} on port {port}: no complete answer within {} s",
                timeout.as_secs()
            );
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(anyhow!(e)
                    .context(format!("reading the answer to GET {target} on port {port}")))
            }
        }
        if raw.len() > 64 << 20 {
            bail!("GET {target}: answer larger than 64 MiB");
        }
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "GET {target} on port {port}: no HTTP header in the answer ({} bytes)",
            raw.len()
        );
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| {
            format!(
                "GET {target}: bad status line `{}`",
                head.lines().next().unwrap_or("")
            )
        })?;
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    ))
}

/// A free TCP port on 127.0.0.1 (free when asked; bound by someone else
/// later only in a race).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn encoding_and_chunks() {
        assert_eq!(
            url_encode("sum(x{a=\"b\"})[5m] +1"),
            "sum%28x%7Ba%3D%22b%22%7D%29%5B5m%5D%20%2B1"
        );
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").unwrap(),
            b"hello world"
        );
        assert!(dechunk(b"5\r\nhel").is_err());
    }

    #[test]
    fn http_get_against_a_local_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // The request may arrive in pieces: read up to its blank line.
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before its request ended");
                req.extend_from_slice(&buf[..n]);
            }
            assert!(req.starts_with(b"GET /x?q=1 HTTP/1.0\r\n"));
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .unwrap();
        });
        let (st, body) = http_get(port, "/x?q=1", Duration::from_secs(5)).unwrap();
        h.join().unwrap();
        assert_eq!((st, body.as_slice()), (200, b"abc".as_slice()));
    }
}
