//! The clients' side of a connection: from a chosen loopback source
//! address, plain or TLS, and reading one HTTP/1.1 response with bounds.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpSocket, TcpStream},
};

/// A client connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where and how the clients connect.
#[derive(Clone)]
pub struct Target {
    /// The daemon's address (loopback).
    pub addr: SocketAddr,
    /// TLS client configuration when the daemon serves TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `Authorization` header line (with CRLF) when basic auth is on.
    pub auth: String,
}

/// Source addresses: client groups are told apart by address, as the
/// daemon's per-address limits see them. All in 127.0.0.0/8 (loopback).
pub fn source(group: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, group, (index / 250) as u8, (index % 250) as u8 + 1)
}

/// A TCP connection from `from` (port chosen by the kernel).
pub async fn connect_from(from: Ipv4Addr, to: SocketAddr, rcvbuf: Option<u32>) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n)?;
    }
    s.bind(SocketAddr::new(from.into(), 0))?;
    s.connect(to).await
}

impl Target {
    /// Connects from `from` and, with TLS, completes the handshake; each
    /// step bounded by `limit`.
    pub async fn open(&self, from: Ipv4Addr, rcvbuf: Option<u32>, limit: Duration) -> std::io::Result<Box<dyn Io>> {
        let timeout = |e| std::io::Error::new(std::io::ErrorKind::TimedOut, e);
        let tcp = tokio::time::timeout(limit, connect_from(from, self.addr, rcvbuf))
            .await
            .map_err(|_| timeout("connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid DNS name");
                let tls = tokio::time::timeout(limit, tokio_rustls::TlsConnector::from(Arc::clone(cfg)).connect(name, tcp))
                    .await
                    .map_err(|_| timeout("TLS handshake timed out"))??;
                Ok(Box::new(tls))
            }
        }
    }

    /// A GET with the credentials (if any), closing after the response.
    pub fn get(&self, path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{}Connection: close\r\n\r\n", self.auth).into_bytes()
    }
}

/// A response's status, and how much of the body arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Body bytes read.
    pub body: usize,
    /// Time to connect (and complete the TLS handshake), when measured.
    pub connect: Duration,
}

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body read.
const MAX_BODY: usize = 32 << 20;

/// Reads one response: the head, then `Content-Length` bytes of body
/// (`None` when the connection ended before a whole head, which is how a
/// server refuses without a word); no body after a HEAD (`head_only`).
/// `chunk` and `pause` make a slow reader.
pub async fn read_response<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    head_only: bool,
    chunk: usize,
    pause: Duration,
) -> std::io::Result<Option<Answer>> {
    let mut buf = Vec::with_capacity(1024);
    let mut one = vec![0u8; chunk.max(1)];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("response head too long"));
        }
        match io.read(&mut one).await {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&one[..n]),
            // A reset after nothing is a refusal too.
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
        .ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
    if len > MAX_BODY {
        return Err(std::io::Error::other(format!("body of {len} bytes")));
    }
    let mut got = buf.len() - end;
    while got < len && !head_only {
        let want = one.len().min(len - got);
        match io.read(&mut one[..want]).await? {
            0 => return Err(std::io::Error::other(format!("body cut at {got} of {len} bytes"))),
            n => got += n,
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(Some(Answer { status, body: got, connect: Duration::ZERO }))
}
