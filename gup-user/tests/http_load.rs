//! The real `gupwatch run` under a bounded hostile load on loopback: many
//! concurrent scrapes, unknown paths, oversized heads and stalled clients
//! at once. It must answer every request it accepts with a proper status,
//! shed the excess with 503, keep its memory, threads and descriptors
//! bounded, and still be healthy afterwards. (On this project's host the
//! daemon runs in reduced mode, which serves the same endpoint.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Fields of /proc/<pid>/status, in kB or counts.
fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Sends `req`, returns the status code (0 when the connection failed or
/// the server closed it without a response).
fn request(addr: SocketAddr, req: &[u8]) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    if s.write_all(req).is_err() {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn run_survives_a_bounded_hostile_load() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gupwatch"))
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes();
    let deadline = Instant::now() + Duration::from_secs(60);
    while request(addr, &get("/healthz")) != 200 {
        assert!(Instant::now() < deadline, "gupwatch run never became healthy: {}", std::fs::read_to_string(log.path()).unwrap());
        thread::sleep(Duration::from_millis(200));
    }
    // A few scrapes first, so the baseline includes the warmed-up state.
    for _ in 0..5 {
        assert_eq!(request(addr, &get("/metrics")), 200);
    }
    let rss_before = status_field(pid, "VmRSS:");
    let fds_before = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    // Stalled clients: send half a head and wait (each is cut off by the
    // head timeout and reconnects), the whole time the load runs.
    let stallers: Vec<_> = (0..6)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut cut = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf);
                        cut += 1;
                    }
                }
                cut
            })
        })
        .collect();
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u32>::new()));
    let huge = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024)).into_bytes();
    let kinds: Vec<Vec<u8>> = vec![get("/metrics"), get("/api/snapshot"), get("/no/such/path"), huge, get("/")];
    let workers: Vec<_> = (0..24)
        .map(|i| {
            let (statuses, kinds) = (Arc::clone(&statuses), kinds.clone());
            thread::spawn(move || {
                for j in 0..60 {
                    let code = request(addr, &kinds[(i + j) % kinds.len()]);
                    *statuses.lock().unwrap().entry(code).or_default() += 1;
                }
            })
        })
        .collect();
    let mut peak_threads = 0;
    let mut peak_fds = 0;
    // VmHWM would include start-up's peak (BTF parsing), which the heap
    // then gives back: the load's own peak is sampled.
    let mut peak_rss = rss_before;
    while workers.iter().any(|w| !w.is_finished()) {
        peak_threads = peak_threads.max(status_field(pid, "Threads:"));
        peak_rss = peak_rss.max(status_field(pid, "VmRSS:"));
        peak_fds = peak_fds.max(open_fds(pid));
        thread::sleep(Duration::from_millis(20));
    }
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let cut: u32 = stallers.into_iter().map(|s| s.join().unwrap()).sum();

    let statuses = statuses.lock().unwrap().clone();
    let rss_after = status_field(pid, "VmRSS:");
    // Afterwards: healthy, and back to its descriptors.
    assert_eq!(request(addr, &get("/healthz")), 200, "healthy after the load");
    thread::sleep(Duration::from_millis(300));
    let fds_after = open_fds(pid);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    eprintln!(
        "statuses {statuses:?}; stalled clients cut off {cut} times; RSS {rss_before} kB -> {rss_after} kB (peak under load {peak_rss} kB); \
         threads peak {peak_threads}; fds {fds_before} -> peak {peak_fds} -> {fds_after}"
    );

    let total: u32 = statuses.values().sum();
    assert_eq!(total, 24 * 60);
    // 24 clients + 6 stalled ones, all from 127.0.0.1, stay under the
    // per-address caps (32 requests waiting or running, 256 connections),
    // so nothing is shed: every request gets its own answer.
    let n = 24 * 60 / kinds.len() as u32;
    let want: std::collections::BTreeMap<u16, u32> = [(200, 3 * n), (404, n), (431, n)].into_iter().collect();
    assert_eq!(statuses, want, "{log_text}");
    assert!(cut > 0, "stalled clients were cut off by the head timeout");
    // Bounded: two tokio workers, at most 4 render threads and the
    // daemon's own few, whatever the clients do; a descriptor per client
    // connection (30 clients, each with one at a time, plus closes
    // lingering for 200 ms).
    assert!(peak_threads <= 16, "{peak_threads} threads");
    assert!(peak_fds <= fds_before + 4 + 60 + 8, "{peak_fds} descriptors (from {fds_before})");
    assert!(fds_after <= fds_before + 1, "descriptors leaked: {fds_before} -> {fds_after}");
    assert!(peak_rss - rss_before < 48 * 1024, "RSS grew {} kB under load", peak_rss - rss_before);
    assert!(rss_after < rss_before + 16 * 1024, "RSS stayed {} kB higher after the load", rss_after - rss_before);
    assert!(exit.success(), "SIGTERM ends it cleanly: {exit:?}\n{log_text}");
}
