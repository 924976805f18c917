//! The client groups: stalled and reconnecting clients, a flood, slow
//! readers, one client over the per-address cap, and the scraper whose
//! answers decide the test. Every loop is bounded in count or by a
//! deadline.

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, io::AsyncWriteExt, task::JoinSet};

use super::net::{self, read_response, Answer, Target};

/// Each step of a client (connect, handshake, a whole response) gives up
/// after this.
pub const STEP_LIMIT: Duration = Duration::from_secs(10);

/// One request on a new connection: the answer and how long it took.
pub async fn request(t: &Target, from: Ipv4Addr, req: &[u8]) -> (Duration, Result<Answer, String>) {
    let t0 = Instant::now();
    let r = async {
        let mut io = t.open(from, None, STEP_LIMIT).await.map_err(|e| format!("connect: {e}"))?;
        let connect = t0.elapsed();
        io.write_all(req).await.map_err(|e| format!("write: {e}"))?;
        match tokio::time::timeout(STEP_LIMIT, read_response(&mut *io, false, 16 * 1024, Duration::ZERO)).await {
            Err(_) => Err("no response in time".to_string()),
            Ok(Err(e)) => Err(format!("read: {e}")),
            Ok(Ok(None)) => Err("closed without a response".to_string()),
            Ok(Ok(Some(a))) => Ok(Answer { connect, ..a }),
        }
    }
    .await;
    (t0.elapsed(), r)
}

/// What the stalled clients saw.
#[derive(Debug, Default)]
pub struct StallStats {
    /// Connected and stalled now.
    pub connected: AtomicU64,
    /// Most connected at once.
    pub peak: AtomicU64,
    /// Connections the server ended (at its head deadline).
    pub cut: AtomicU64,
    /// Longest time from the stalled head to the server's close, ms.
    pub longest_ms: AtomicU64,
    /// Connections refused or failed.
    pub failed: AtomicU64,
    /// Connections still open at the client's own 30 s bound.
    pub never_cut: AtomicU64,
}

/// `n` clients, each sending `GET /metrics HTTP/1.1\r\n` and nothing
/// more, waiting for the server to drop it, and reconnecting, until
/// `stop` (or `deadline`).
pub fn stallers(
    set: &mut JoinSet<()>,
    t: &Target,
    n: usize,
    stats: &Arc<StallStats>,
    stop: &Arc<AtomicBool>,
    deadline: Instant,
) {
    for i in 0..n {
        let (t, stats, stop) = (t.clone(), Arc::clone(stats), Arc::clone(stop));
        // 250 per address: under the daemon's per-address cap (256), so
        // all of them are held, as from 8 hosts.
        let from = net::source(1, i);
        set.spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok(mut io) = t.open(from, None, STEP_LIMIT).await else {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if io.write_all(b"GET /metrics HTTP/1.1\r\n").await.is_err() {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = stats.connected.fetch_add(1, Ordering::Relaxed) + 1;
                stats.peak.fetch_max(now, Ordering::Relaxed);
                let t0 = Instant::now();
                // Until the server closes (its 408, then EOF or reset).
                let ended = until_closed(&mut io, Duration::from_secs(30)).await;
                stats.connected.fetch_sub(1, Ordering::Relaxed);
                if ended {
                    stats.cut.fetch_add(1, Ordering::Relaxed);
                    stats.longest_ms.fetch_max(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                } else {
                    stats.never_cut.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Every request's outcome, for the flood and the slow readers.
pub type Outcomes = Vec<(Duration, Result<Answer, String>)>;

/// `clients` × `requests` GETs of /metrics, each client from its own
/// address (so no per-address limit spares the scraper: only the
/// server's first-come-first-served render slots do), back to back on a
/// keep-alive connection as HTTP/1.1 clients do, reconnecting after an
/// error. (New connections by the thousand are the stalled clients' part.)
pub async fn flood(t: &Target, clients: usize, requests: usize) -> Outcomes {
    let mut set = JoinSet::new();
    for i in 0..clients {
        let t = t.clone();
        set.spawn(async move {
            let req = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{}\r\n", t.auth).into_bytes();
            let mut conn: Option<Box<dyn net::Io>> = None;
            let mut out = Vec::with_capacity(requests);
            for _ in 0..requests {
                let t0 = Instant::now();
                let r = keep_alive_request(&t, net::source(2, i), &mut conn, &req).await;
                if r.is_err() {
                    conn = None;
                }
                out.push((t0.elapsed(), r));
            }
            out
        });
    }
    let mut all = Vec::with_capacity(clients * requests);
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap_or_default());
    }
    all
}

/// One request on `conn`, opened first if there is none.
async fn keep_alive_request(
    t: &Target,
    from: Ipv4Addr,
    conn: &mut Option<Box<dyn net::Io>>,
    req: &[u8],
) -> Result<Answer, String> {
    if conn.is_none() {
        *conn = Some(t.open(from, None, STEP_LIMIT).await.map_err(|e| format!("connect: {e}"))?);
    }
    let Some(io) = conn.as_mut() else { return Err("no connection".into()) };
    io.write_all(req).await.map_err(|e| format!("write: {e}"))?;
    match tokio::time::timeout(STEP_LIMIT, read_response(&mut **io, false, 16 * 1024, Duration::ZERO)).await {
        Err(_) => Err("no response in time".to_string()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(None)) => Err("closed without a response".to_string()),
        Ok(Ok(Some(a))) => Ok(a),
    }
}

/// Clients with a 4 KiB receive buffer that read the response 256 bytes
/// at a time, 50 ms apart.
pub async fn slow_readers(t: &Target, n: usize) -> Outcomes {
    let mut set = JoinSet::new();
    for i in 0..n {
        let t = t.clone();
        set.spawn(async move {
            let t0 = Instant::now();
            let r = async {
                let mut io = t.open(net::source(3, i), Some(4096), STEP_LIMIT).await.map_err(|e| format!("connect: {e}"))?;
                io.write_all(&t.get("/api/snapshot?callers=1")).await.map_err(|e| format!("write: {e}"))?;
                match tokio::time::timeout(Duration::from_secs(60), read_response(&mut *io, false, 256, Duration::from_millis(50))).await {
                    Err(_) => Err("not read in 60 s".to_string()),
                    Ok(Err(e)) => Err(format!("read: {e}")),
                    Ok(Ok(None)) => Err("closed without a response".to_string()),
                    Ok(Ok(Some(a))) => Ok(a),
                }
            }
            .await;
            (t0.elapsed(), r)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        if let Ok(r) = r {
            all.push(r);
        }
    }
    all
}

/// One scrape of /metrics a second, `n` times, each on a new connection
/// (connect and handshake included in the time), from an address of its
/// own: Prometheus.
pub async fn scraper(t: &Target, n: u32) -> Outcomes {
    let start = tokio::time::Instant::now();
    let req = t.get("/metrics");
    let mut out = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs(u64::from(i))).await;
        out.push(request(t, Ipv4Addr::new(127, 0, 0, 2), &req).await);
    }
    out
}

/// Opens `n` idle connections from one address (plain TCP, nothing sent)
/// and counts those the server refuses at once: (held, refused).
///
/// Told apart by when the daemon ends them: a refused connection is
/// closed (after a 503 on plain HTTP) as soon as it is accepted, a held
/// one at the daemon's 5 s deadline. The line between is drawn at 2.5 s,
/// so a busy accept loop, or a client runtime slow to notice a close,
/// moves neither across it.
pub async fn hog(t: &Target, n: usize) -> (usize, usize) {
    let from = net::source(5, 0);
    let mut set = JoinSet::new();
    for _ in 0..n {
        // One after the other, so the count the server sees only grows.
        let Ok(mut s) = net::connect_from(from, t.addr, None).await else { continue };
        let t0 = Instant::now();
        set.spawn(async move {
            // Until the daemon closes it (bounded: held ones close at 5 s).
            until_closed(&mut s, Duration::from_secs(15)).await;
            t0.elapsed() >= Duration::from_millis(2500)
        });
    }
    let (mut held, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(true) => held += 1,
            _ => refused += 1,
        }
    }
    (held, refused)
}

/// The `q` quantile (0..=1) of the durations, in ms.
pub fn quantile_ms(d: &mut [Duration], q: f64) -> f64 {
    if d.is_empty() {
        return 0.0;
    }
    d.sort();
    let i = ((d.len() as f64 - 1.0) * q).round() as usize;
    d[i.min(d.len() - 1)].as_secs_f64() * 1000.0
}

/// Reads and drops what the peer sends until it closes the connection
/// (EOF or an error); false when `limit` passed first.
async fn until_closed<R: tokio::io::AsyncRead + Unpin>(io: &mut R, limit: Duration) -> bool {
    let mut sink = [0u8; 256];
    tokio::time::timeout(limit, async {
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
    .is_ok()
}
