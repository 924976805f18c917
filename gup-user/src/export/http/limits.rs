//! What one client, or all of them, may hold: open connections (in all,
//! and per client address) and requests waiting or running (per client
//! address). Counted from admission to drop of the guard, so a panicking
//! task gives its share back too.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
};

/// Descriptors kept for the rest of the daemon (BPF maps and programs,
/// /proc and /sys files, the log, the web configuration's files, the
/// listening socket), out of the soft `RLIMIT_NOFILE`.
pub const FD_RESERVE: u64 = 128;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (each open connection
/// holds one descriptor: the soft default of 1024 would cap the server at
/// a few hundred clients, where the hard limit, 524288 under systemd,
/// bounds nothing an attacker can reach first). Returns the soft limit now
/// in force; on failure the old one, which stays.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// The connection budget that a soft descriptor limit leaves.
pub fn connections_for(nofile: u64) -> usize {
    usize::try_from(nofile.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX)
}

/// Whom a limit per client applies to: the IPv4 address, or the IPv6 /64
/// (one host usually has a whole /64 to pick source addresses from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey(IpAddr);

impl PeerKey {
    /// The key of a client address.
    pub fn of(ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => PeerKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => PeerKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    PeerKey(IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)))
                }
            },
        }
    }
}

#[derive(Debug, Default)]
struct PeerCounts {
    connections: usize,
    requests: usize,
}

/// Why a connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// All connections the descriptor budget allows are open.
    Full,
    /// This client address has its share open.
    PeerFull,
}

/// The counts and their limits.
#[derive(Debug)]
pub struct Limits {
    max_connections: usize,
    max_connections_per_peer: usize,
    max_requests_per_peer: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    open: usize,
    /// Only peers with something open: bounded by the open connections.
    peers: HashMap<PeerKey, PeerCounts>,
}

impl Limits {
    /// Limits as configured.
    pub fn new(max_connections: usize, max_connections_per_peer: usize, max_requests_per_peer: usize) -> Arc<Limits> {
        Arc::new(Limits {
            max_connections: max_connections.max(1),
            max_connections_per_peer: max_connections_per_peer.max(1),
            max_requests_per_peer: max_requests_per_peer.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters only: a panic elsewhere leaves them consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new connection from `peer`, or says why not.
    pub fn admit_connection(self: &Arc<Self>, peer: PeerKey) -> Result<Admitted, Refusal> {
        let mut st = self.state();
        if st.open >= self.max_connections {
            return Err(Refusal::Full);
        }
        let counts = st.peers.entry(peer).or_default();
        if counts.connections >= self.max_connections_per_peer {
            if counts.connections == 0 && counts.requests == 0 {
                st.peers.remove(&peer);
            }
            return Err(Refusal::PeerFull);
        }
        counts.connections += 1;
        st.open += 1;
        Ok(Admitted { limits: Arc::clone(self), peer, connection: true })
    }

    /// Admits a request of `peer` to wait for (or take) a render slot;
    /// `None` when that client already has its share waiting or running.
    pub fn admit_request(self: &Arc<Self>, peer: PeerKey) -> Option<Admitted> {
        let mut st = self.state();
        let counts = st.peers.entry(peer).or_default();
        if counts.requests >= self.max_requests_per_peer {
            return None;
        }
        counts.requests += 1;
        Some(Admitted { limits: Arc::clone(self), peer, connection: false })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.state().open
    }

    fn release(&self, peer: PeerKey, connection: bool) {
        let mut st = self.state();
        if connection {
            st.open = st.open.saturating_sub(1);
        }
        if let Some(c) = st.peers.get_mut(&peer) {
            if connection {
                c.connections = c.connections.saturating_sub(1);
            } else {
                c.requests = c.requests.saturating_sub(1);
            }
            if c.connections == 0 && c.requests == 0 {
                st.peers.remove(&peer);
            }
        }
    }
}

/// One open connection (in the total and its client's count) or one
/// admitted request (in its client's count), until dropped.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
    peer: PeerKey,
    connection: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.release(self.peer, self.connection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> PeerKey {
        PeerKey::of(s.parse().unwrap())
    }

    #[test]
    fn peers_are_addresses_and_v6_prefixes() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:127.0.0.1"), key("127.0.0.1"));
        assert_ne!(key("127.0.0.1"), key("127.0.0.2"));
    }

    #[test]
    fn caps_per_peer_and_in_all() {
        let l = Limits::new(5, 2, 1);
        let a = key("10.0.0.1");
        let b = key("10.0.0.2");
        let a1 = l.admit_connection(a).unwrap();
        let _a2 = l.admit_connection(a).unwrap();
        assert_eq!(l.admit_connection(a).unwrap_err(), Refusal::PeerFull);
        let b1 = l.admit_connection(b).unwrap();
        let _b2 = l.admit_connection(b).unwrap();
        let _c = l.admit_connection(key("10.0.0.3")).unwrap();
        assert_eq!(l.admit_connection(key("10.0.0.4")).unwrap_err(), Refusal::Full);
        assert_eq!(l.open(), 5);
        drop(a1);
        assert_eq!(l.open(), 4);
        let _a3 = l.admit_connection(a).expect("a slot came back");
        // Requests: one per peer at once.
        let r = l.admit_request(b).unwrap();
        assert!(l.admit_request(b).is_none());
        assert!(l.admit_request(a).is_some());
        drop(r);
        assert!(l.admit_request(b).is_some());
        drop(b1);
        // Nothing is kept for peers with nothing open.
        drop(_b2);
        assert!(!l.state().peers.contains_key(&b));
    }

    #[test]
    fn budget_from_descriptors() {
        assert_eq!(connections_for(1024), 1024 - FD_RESERVE as usize);
        assert_eq!(connections_for(10), 16);
        assert!(raise_nofile_limit() >= 16);
    }
}
