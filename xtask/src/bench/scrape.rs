//! The host side of C in wall-clock mode: a control listener the guest
//! tells when a C run starts and ends, and a scraper that fetches /metrics
//! once a second through the forwarded port meanwhile (so the scraper's own
//! cost stays outside the guest, as a real Prometheus server's would).

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::report::ScrapeSession;
use crate::e2e::http_get;

/// What the control listener and the scraper share.
#[derive(Default)]
pub struct Scraping {
    /// The C run in progress and when it started.
    pub active: Option<(ScrapeSession, Instant)>,
    /// Finished C runs.
    pub done: Vec<ScrapeSession>,
    /// Control messages received.
    pub messages: u32,
}

/// Listens for `scrape on TAG` / `scrape off` from the guest.
pub fn control_thread(
    listener: TcpListener,
    state: Arc<Mutex<Scraping>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = listener.set_nonblocking(true);
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 256];
                    while !buf.contains(&b'\n') && buf.len() < 4096 {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let msg = String::from_utf8_lossy(&buf).trim().to_string();
                    let Ok(mut st) = state.lock() else { return };
                    st.messages += 1;
                    if let Some(tag) = msg.strip_prefix("scrape on ") {
                        st.active = Some((
                            ScrapeSession {
                                tag: tag.to_string(),
                                ..Default::default()
                            },
                            Instant::now(),
                        ));
                    } else if msg.starts_with("scrape off") {
                        if let Some((s, _)) = st.active.take() {
                            st.done.push(s);
                        }
                    }
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    })
}

/// Scrapes `port` once a second while a C run is active.
pub fn scraper_thread(
    port: u16,
    state: Arc<Mutex<Scraping>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let active = state.lock().map(|s| s.active.is_some()).unwrap_or(false);
            if !active || Instant::now() < next {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            next = Instant::now() + Duration::from_secs(1);
            let t = Instant::now();
            let res = http_get(port, "/metrics", Duration::from_secs(5));
            let took = t.elapsed();
            if let Ok(mut st) = state.lock() {
                if let Some((s, _)) = st.active.as_mut() {
                    match res {
                        Ok((200, body)) => {
                            s.ok += 1;
                            s.latency += took;
                            s.bytes = body.len();
                        }
                        _ => s.failed += 1,
                    }
                }
            }
        }
    })
}
