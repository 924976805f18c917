//! What the tests of the endpoint's TLS and basic auth share: certificates
//! made by rcgen and bcrypt hashes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
};

use gupwatch::{
    export::http::{Handler, Server, ServerConfig},
    export::webconfig::WebConfigWatcher,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A CA, a server certificate for localhost/127.0.0.1 and two client
/// certificates (client.crt without SANs, client-san.crt with the DNS SAN
/// prometheus.example), written as PEM files into a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "gupwatch test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.extended_key_usages = vec![usage];
            p.distinguished_name.push(DnType::CommonName, cn);
            (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
        };
        let (srv, srv_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth, "gupwatch");
        let (cli, cli_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth, "prometheus");
        // For client_allowed_sans.
        let (san, san_key) = leaf(vec!["prometheus.example".into()], ExtendedKeyUsagePurpose::ClientAuth, "prometheus");
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w("ca.crt", &ca.pem());
        w("tls.crt", &srv);
        w("tls.key", &srv_key);
        w("client.crt", &cli);
        w("client.key", &cli_key);
        w("client-san.crt", &san);
        w("client-san.key", &san_key);
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a web config (relative file names resolve against its dir).
    pub fn config(&self, text: &str) -> PathBuf {
        let p = self.path("web.yml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn bcrypt_of(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}


/// A server on a thread, stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// The real server on 127.0.0.1, with the web configuration `web`.
pub fn serve(web: &Path, cfg: ServerConfig, handler: Arc<dyn Handler>) -> Running {
    let watcher = Arc::new(WebConfigWatcher::load(web).unwrap());
    let server = Server::bind("127.0.0.1:0", cfg).unwrap().with_web_config(watcher);
    let addr = server.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let thread = Some(thread::spawn(move || server.run(handler, &s).unwrap()));
    Running { addr, stop, thread }
}
