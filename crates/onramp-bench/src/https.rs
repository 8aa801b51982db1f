//! The HTTPS client side: TCP, TLS (rustls, trusting only the server's
//! exported root) and HTTP/1.1 (hyper), timed phase by phase.

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The name the server certificate is checked against.
const SERVER_NAME: &str = "localhost";

/// Opens connections to one server.
#[derive(Clone)]
pub struct Client {
    connector: TlsConnector,
    addr: SocketAddr,
    server_name: ServerName<'static>,
}

/// An open HTTP/1.1 connection and what it took to open it.
pub struct Connection {
    pub sender: SendRequest<Full<Bytes>>,
    /// TCP connect.
    pub connect: Duration,
    /// TLS handshake, after the TCP connect.
    pub handshake: Duration,
    /// Protocol version and key exchange group the handshake settled on.
    pub tls: String,
}

/// A response read to its end.
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Client {
    /// A client that trusts only the certificates in `root_pem`. Every
    /// connection makes a full handshake: session resumption is off, as a
    /// device enrolling for the first time has no session to resume.
    pub fn new(addr: SocketAddr, root_pem: &str) -> Result<Client> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            let cert = cert.map_err(|e| anyhow::anyhow!("the trust anchor PEM: {e:?}"))?;
            roots.add(cert).context("adding the trust anchor")?;
        }
        if roots.is_empty() {
            anyhow::bail!("the trust anchor PEM holds no certificate");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Client {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
            server_name: ServerName::try_from(SERVER_NAME)
                .context("the server name")?
                .to_owned(),
        })
    }

    /// A fresh TCP connection, TLS handshake and HTTP/1.1 handshake.
    pub async fn connect(&self) -> Result<Connection> {
        let started = Instant::now();
        let tcp = TcpStream::connect(self.addr).await.context("TCP connect")?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let connected = Instant::now();
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let handshaken = Instant::now();
        let (_, session) = tls.get_ref();
        let tls_name = format!(
            "{} {}",
            session
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            session
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
        );
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        // Drives the connection; it ends when the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            connect: connected - started,
            handshake: handshaken - connected,
            tls: tls_name,
        })
    }
}

impl Connection {
    /// Sends one request and reads the whole response.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response> {
        self.sender
            .ready()
            .await
            .context("HTTP connection closed")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("HTTP request")?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("HTTP response body")?
            .to_bytes();
        Ok(Response { status, body })
    }
}
