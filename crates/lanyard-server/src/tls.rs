//! HTTPS: a rustls server configuration (aws-lc-rs, the same crypto provider as the CA) and an
//! axum [`Listener`] that completes TLS handshakes off the accept loop, so a client that stalls
//! mid-handshake delays nobody else.

use axum::serve::Listener;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;
/// Connections handshaken but not yet taken by the HTTP server.
const READY_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server configuration for `chain` (leaf first, then intermediates) and its PKCS#8 key.
/// TLS 1.2 and 1.3 only; ALPN offers HTTP/1.1 (the server is built without HTTP/2).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from DER parts as the CA produces them.
pub fn server_config_der(chain: &[Vec<u8>], pkcs8_key: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key.to_vec()));
    server_config(chain, key)
}

/// [`server_config`] from PEM files: a certificate chain and a private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config_from_files(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_owned(),
        message: match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            other => format!("not a valid PEM file ({other:?})"),
        },
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| pem_err(cert_file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert_file, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert_file.to_owned(), message: "holds no CERTIFICATE".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| pem_err(key_file, e))?;
    server_config(chain, key)
}

/// The certificate a running server presents, replaceable without a restart: the
/// configuration made by [`server_config_reloadable`] asks it on every handshake, and
/// [`ReloadableCert::replace`] swaps in a renewed chain for the handshakes that follow.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadableCert {
    fn certified(chain: &[Vec<u8>], pkcs8_key: &[u8]) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let chain = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key.to_vec()));
        Ok(Arc::new(rustls::sign::CertifiedKey::from_der(chain, key, &provider())?))
    }

    /// Presents `chain` (leaf first) with its PKCS#8 key from the next handshake on.
    pub fn replace(&self, chain: &[Vec<u8>], pkcs8_key: &[u8]) -> Result<(), TlsError> {
        let certified = Self::certified(chain, pkcs8_key)?;
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = certified;
        Ok(())
    }

    /// The leaf certificate presented now (DER).
    pub fn leaf(&self) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        current.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }
}

/// [`server_config_der`] whose certificate can be replaced while the server runs.
pub fn server_config_reloadable(
    chain: &[Vec<u8>],
    pkcs8_key: &[u8],
) -> Result<(Arc<ServerConfig>, Arc<ReloadableCert>), TlsError> {
    let cert = Arc::new(ReloadableCert {
        current: std::sync::RwLock::new(ReloadableCert::certified(chain, pkcs8_key)?),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&cert) as Arc<dyn rustls::server::ResolvesServerCert>);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), cert))
}

/// A listener that hands axum connections whose TLS handshake has completed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; handshakes run as separate tasks, at most [`MAX_HANDSHAKES`] at
    /// once, each bounded by [`HANDSHAKE_TIMEOUT`].
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Typically EMFILE; back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only stops when this listener is dropped, so this never resolves
            // while anyone awaits it.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The client's address, for handlers that need it (`ConnectInfo<ClientAddr>`): serve the router
/// with `into_make_service_with_connect_info::<ClientAddr>()` on a [`TlsListener`] or a plain
/// `TcpListener`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}
