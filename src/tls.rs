//! TLS for clients (`listen.tls`): the certificate the TLS listeners present, and its renewal
//! without a restart.
//!
//! Pingora's rustls backend (ring) performs the handshake before keygate sees the connection;
//! it offers TLS 1.2 and 1.3 only, and ALPN `h2` then `http/1.1`. Pingora reads a certificate
//! file once, when the listener starts; keygate instead hands it a resolver ([`Certificates`])
//! that serves whichever pair was loaded last. A background service ([`CertificateWatch`])
//! re-reads the two files every `watch_interval` and swaps a changed pair in, so that the
//! next handshake presents it. A pair that does not load (half-written, mismatched, expired
//! key) is refused with its reason in the log, and the last good one keeps serving.

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `listen.tls`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListenConfig {
    pub addresses: Vec<std::net::SocketAddr>,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the two files are read again for a renewed pair.
    pub watch_interval: Duration,
}

/// Why a certificate pair was not loaded; names the file at fault and what would fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: cannot read it: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate in it; give the certificate chain, leaf first")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey(PathBuf),
    #[error("{0}: the private key is not one rustls can sign with: {1}")]
    UnusableKey(PathBuf, String),
    #[error("{key}: this key does not belong to the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// SHA-256 of each file of a pair: tells a renewal from an unchanged read without keeping a
/// second copy of the private key.
type Fingerprint = [[u8; 32]; 2];

fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> Fingerprint {
    use sha2::{Digest, Sha256};
    [
        Sha256::digest(cert_pem).into(),
        Sha256::digest(key_pem).into(),
    ]
}

/// Reads and checks a pair: the chain parses, the key parses and belongs to the leaf.
fn load(cert_file: &Path, key_file: &Path) -> Result<(Arc<CertifiedKey>, Fingerprint), TlsError> {
    let (cert_pem, key_pem) = read_files(cert_file, key_file)?;
    let key = certified_key(&cert_pem, &key_pem, cert_file, key_file)?;
    Ok((key, fingerprint(&cert_pem, &key_pem)))
}

/// Both files of a pair, as read; an error names the one that could not be read.
fn read_files(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let cert_pem = std::fs::read(cert_file).map_err(|e| TlsError::Read(cert_file.into(), e))?;
    let key_pem = std::fs::read(key_file).map_err(|e| TlsError::Read(key_file.into(), e))?;
    Ok((cert_pem, key_pem))
}

/// The leaf certificate's notAfter, in seconds since the epoch (0 when unreadable).
fn not_after(key: &CertifiedKey) -> i64 {
    key.end_entity_cert()
        .ok()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .unwrap_or(0)
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    use rustls_pemfile::Item;
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.into()));
    }
    let private_key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls_pemfile::read_all(&mut &key_pem[..])
            .filter_map(Result::ok)
            .find_map(|item| match item {
                Item::Pkcs8Key(k) => Some(k.into()),
                Item::Pkcs1Key(k) => Some(k.into()),
                Item::Sec1Key(k) => Some(k.into()),
                _ => None,
            })
            .ok_or_else(|| TlsError::NoKey(key_file.into()))?;
    // ring, as Pingora's rustls backend uses.
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&private_key)
        .map_err(|e| TlsError::UnusableKey(key_file.into(), e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert_file.into(),
        key: key_file.into(),
    })?;
    Ok(Arc::new(certified))
}

/// Checks a pair as `keygate check` and the start do: the error says which file and why.
pub fn check(cert_file: &Path, key_file: &Path) -> Result<(), TlsError> {
    load(cert_file, key_file).map(|_| ())
}

/// Reads a pair, checked as [`check`] does, and returns both files' PEM: for a TLS client that
/// takes its identity as PEM (keygate's connection to Redis).
pub fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let (cert_pem, key_pem) = read_files(cert_file, key_file)?;
    certified_key(&cert_pem, &key_pem, cert_file, key_file)?;
    Ok((cert_pem, key_pem))
}

impl TlsError {
    /// Whether the certificate file is at fault (otherwise the key file is): the config field
    /// to name.
    pub fn is_about_cert_file(&self, cert_file: &Path) -> bool {
        match self {
            TlsError::Read(p, _) => p == cert_file,
            TlsError::NoCertificate(_) => true,
            _ => false,
        }
    }
}

/// The certificate every TLS handshake presents: the pair loaded last.
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for Certificates {
    // No key material, not even its type: only that there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Failed client handshakes, over the process. Pingora reports each only as an ERROR log line,
/// which `logging` drops (any client can cause one per connection) and counts here.
pub static HANDSHAKE_FAILURES: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| {
        prometheus::IntCounter::new(
            "keygate_tls_handshake_failures_total",
            "Client TLS handshakes that failed: no common version or cipher, a distrusted \
             certificate, or not TLS at all.",
        )
        .expect("valid metric")
    });

/// `keygate_tls_certificate_reloads_total{result}`,
/// `keygate_tls_certificate_expiry_timestamp_seconds` and
/// `keygate_tls_handshake_failures_total`.
#[derive(Clone)]
pub struct TlsMetrics {
    reloads: prometheus::IntCounterVec,
    expiry: prometheus::IntGauge,
}

impl TlsMetrics {
    pub fn register(registry: &prometheus::Registry) -> TlsMetrics {
        let reloads = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "keygate_tls_certificate_reloads_total",
                "Changed listen.tls certificate pairs read: result=ok (now served) or \
                 error (refused, the last good pair still served; the reason is in the log).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let expiry = prometheus::IntGauge::new(
            "keygate_tls_certificate_expiry_timestamp_seconds",
            "When the served listen.tls certificate expires (its notAfter), in Unix seconds.",
        )
        .expect("valid metric");
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        registry
            .register(Box::new(reloads.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(expiry.clone()))
            .expect("unique metric");
        registry
            .register(Box::new(HANDSHAKE_FAILURES.clone()))
            .expect("unique metric");
        TlsMetrics { reloads, expiry }
    }
}

/// Loads the configured pair for the listeners, and the watch that renews it.
pub fn start(
    config: &TlsListenConfig,
    metrics: TlsMetrics,
) -> Result<(Arc<Certificates>, CertificateWatch), TlsError> {
    let (key, seen) = load(&config.cert_file, &config.key_file)?;
    metrics.expiry.set(not_after(&key));
    let certificates = Arc::new(Certificates {
        current: ArcSwap::new(key),
    });
    let watch = CertificateWatch {
        certificates: certificates.clone(),
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
        interval: config.watch_interval,
        metrics,
        seen: std::sync::Mutex::new(seen),
    };
    Ok((certificates, watch))
}

/// Pingora's settings for one TLS listener: TLS 1.2 and 1.3 (all its rustls backend offers),
/// ALPN `h2` then `http/1.1`, and the certificate from `certificates`.
pub fn settings(certificates: &Arc<Certificates>) -> anyhow::Result<TlsSettings> {
    // The paths are not read: a resolver, once set, supplies every certificate.
    let mut settings = TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(certificates.clone());
    settings.enable_h2();
    Ok(settings)
}

/// Re-reads the certificate files and swaps a renewed, valid pair in.
pub struct CertificateWatch {
    certificates: Arc<Certificates>,
    cert_file: PathBuf,
    key_file: PathBuf,
    interval: Duration,
    metrics: TlsMetrics,
    /// The files last seen (served, or refused: a refused pair is not retried until it
    /// changes again, so that a broken renewal is logged once, not every interval).
    seen: std::sync::Mutex<Fingerprint>,
}

impl CertificateWatch {
    /// One look at the files: `Some(result)` when they changed since the last look.
    fn check_once(&self) -> Option<Result<(), TlsError>> {
        // Compared by content, not by time: a renewal by `mv` or a symlink swap (certbot) may
        // keep a modification time, and files are a few kilobytes.
        let cert_pem = std::fs::read(&self.cert_file).ok()?;
        let key_pem = std::fs::read(&self.key_file).ok()?;
        let now = fingerprint(&cert_pem, &key_pem);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == now {
                return None;
            }
            *seen = now;
        }
        let result = certified_key(&cert_pem, &key_pem, &self.cert_file, &self.key_file);
        Some(result.map(|key| {
            self.metrics.expiry.set(not_after(&key));
            self.certificates.current.store(key);
        }))
    }
}

#[async_trait]
impl BackgroundService for CertificateWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            match self.check_once() {
                None => {}
                Some(Ok(())) => {
                    self.metrics.reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert_file = %self.cert_file.display(), "TLS certificate renewed: new handshakes present it");
                }
                Some(Err(e)) => {
                    self.metrics.reloads.with_label_values(&["error"]).inc();
                    tracing::error!(
                        "TLS certificate not renewed, the last good one is still served: {e}"
                    );
                }
            }
        }
    }
}
