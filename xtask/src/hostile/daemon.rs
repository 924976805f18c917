//! The daemon under test: a throwaway CA and web configuration for the
//! TLS run, `gupwatch run` itself, and its RSS, threads and descriptors
//! sampled from /proc while the clients work.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{pem::PemObject, CertificateDer};

/// The basic-auth user of the TLS run; its password is `secret`.
pub const USER: &str = "prometheus";
/// bcrypt of `secret` at cost 4 (cheap: the test is about the
/// connections, not bcrypt; a successful check is cached anyway).
const PASSWORD_HASH: &str = "$2b$04$u6rvD30jTCUjsr.w1c1EzeBNL7PAt2gcDesLfNQqo.Ko9fxaDHv3m";

/// Writes a CA, a server certificate for localhost and 127.0.0.1, and a
/// web configuration with TLS and basic auth into `dir`; returns the web
/// configuration's path and a client configuration trusting the CA.
pub fn tls_setup(dir: &Path) -> Result<(PathBuf, Arc<rustls::ClientConfig>)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "gupwatch hostile-test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.distinguished_name.push(DnType::CommonName, "gupwatch");
    let cert = p.signed_by(&key, &ca)?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("tls.crt", &cert.pem())?;
    write("tls.key", &key.serialize_pem())?;
    write(
        "web.yml",
        &format!("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  {USER}: {PASSWORD_HASH}\n"),
    )?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes())?)?;
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((dir.join("web.yml"), Arc::new(client)))
}

/// A free loopback port (bound and released; nothing else on this host
/// races for it in practice).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `gupwatch run --listen 127.0.0.1:PORT [--web-config FILE]`, its log
/// in `log`.
pub fn start(gupwatch: &Path, port: u16, web: Option<&Path>, log: &Path) -> Result<Child> {
    let log_file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(gupwatch);
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")]);
    if let Some(w) = web {
        cmd.arg("--web-config").arg(w);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
    cmd.spawn().with_context(|| format!("cannot start {}", gupwatch.display()))
}

/// Peaks seen while sampling.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peaks {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open descriptors.
    pub fds: u64,
    /// Samples taken.
    pub samples: u64,
}

/// A `/proc/PID/status` field (KiB or a count).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok())
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// Samples the daemon every 50 ms on a thread of its own (so a busy
/// client runtime cannot make it miss the peak) until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Peaks>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(Peaks::default()));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peaks));
        let thread = thread::spawn(move || {
            // Bounded by the stop flag, and by the daemon's end.
            while !s.load(Ordering::Relaxed) {
                let Some(rss) = status_field(pid, "VmRSS:") else { break };
                let threads = status_field(pid, "Threads:").unwrap_or(0);
                let fds = open_fds(pid);
                if let Ok(mut pk) = p.lock() {
                    pk.rss_kib = pk.rss_kib.max(rss);
                    pk.threads = pk.threads.max(threads);
                    pk.fds = pk.fds.max(fds);
                    pk.samples += 1;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler { stop, peaks, thread: Some(thread) }
    }

    /// Stops and returns the peaks.
    pub fn finish(mut self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peaks.lock().map(|p| *p).unwrap_or_default()
    }
}

/// SIGTERM, then waits up to `limit` for the exit; the status (None when
/// it had to be killed) and how long it took.
pub fn terminate(child: &mut Child, limit: Duration) -> (Option<std::process::ExitStatus>, Duration) {
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    while t0.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            return (Some(st), t0.elapsed());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, t0.elapsed())
}

/// Raises this process's soft descriptor limit to the hard one: thousands
/// of client sockets. Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
