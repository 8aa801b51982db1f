//! The MQTT 3.1.1 client side: TCP (optionally from a chosen source
//! address), TLS with a client certificate (rustls, no session resumption),
//! and the packets the scenarios need, encoded and decoded by rmqtt-codec.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::Publish;
use rmqtt_codec::v3::{self, ConnectAckReason, Packet, QoS, SubscribeReturnCode};
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

/// The name both brokers' certificate is checked against.
const SERVER_NAME: &str = "localhost";
/// Largest packet the client accepts.
pub const MAX_PACKET: u32 = 1024 * 1024;
/// How long the server may take to close after DISCONNECT.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub type Stream = tokio_rustls::client::TlsStream<TcpStream>;
pub type Conn = Framed<Stream, v3::Codec>;

/// Key exchange groups the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kx {
    /// X25519 only: both brokers settle on the same key exchange.
    X25519,
    /// rustls's default list (X25519MLKEM768 first, then X25519, P-256,
    /// P-384): each broker picks what it supports.
    Default,
}

/// The device identity every bench connection presents.
#[derive(Clone)]
pub struct ClientIdentity {
    /// Trust anchor for the server certificate (PEM).
    pub root_pem: String,
    /// The device certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its P-256 key (PKCS#8 DER).
    pub key_der: Vec<u8>,
}

/// Opens TLS connections to one broker.
#[derive(Clone)]
pub struct Dialer {
    connector: TlsConnector,
    pub addr: SocketAddr,
    server_name: ServerName<'static>,
}

/// A connection after CONNACK, and what each phase took.
pub struct Opened {
    pub conn: Conn,
    /// TCP connect.
    pub tcp: Duration,
    /// TLS handshake, after the TCP connect (client side: until its Finished).
    pub tls: Duration,
    /// CONNECT written until CONNACK read.
    pub mqtt: Duration,
}

impl Dialer {
    pub fn new(addr: SocketAddr, id: &ClientIdentity, kx: Kx) -> Result<Dialer> {
        let roots = Arc::new(root_store(&id.root_pem)?);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone()));
        let chain = vec![CertificateDer::from(id.cert_der.clone())];
        Dialer::with_roots(addr, roots, chain, key, kx)
    }

    /// A dialer for a certificate chain and key of any format rustls reads,
    /// with trust anchors parsed once ([`root_store`]) and shared.
    pub fn with_roots(
        addr: SocketAddr,
        roots: Arc<RootCertStore>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        kx: Kx,
    ) -> Result<Dialer> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if kx == Kx::X25519 {
            provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("the client certificate and key")?;
        // Every connection is a full handshake, as for a device that boots.
        config.resumption = Resumption::disabled();
        Ok(Dialer {
            connector: TlsConnector::from(Arc::new(config)),
            addr,
            server_name: ServerName::try_from(SERVER_NAME)
                .context("the server name")?
                .to_owned(),
        })
    }

    /// TCP connect (from `source` if given) and TLS handshake. With
    /// `send_buffer`, the socket's send buffer is fixed at that size (the
    /// kernel doubles it) instead of growing with the load.
    pub async fn tls(
        &self,
        source: Option<IpAddr>,
        send_buffer: Option<u32>,
    ) -> Result<(Stream, Duration, Duration)> {
        let started = Instant::now();
        let socket = TcpSocket::new_v4().context("TCP socket")?;
        if let Some(bytes) = send_buffer {
            socket.set_send_buffer_size(bytes).context("SO_SNDBUF")?;
        }
        if let Some(ip) = source {
            // Ports held in TIME_WAIT by an earlier run may be reused.
            socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("binding to {ip}"))?;
        }
        let tcp = socket.connect(self.addr).await.context("TCP connect")?;
        tcp.set_nodelay(true).context("TCP_NODELAY")?;
        let connected = Instant::now();
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        Ok((tls, connected - started, connected.elapsed()))
    }

    /// TCP, TLS, then CONNECT (MQTT 3.1.1, clean session) and its CONNACK.
    pub async fn open(
        &self,
        source: Option<IpAddr>,
        client_id: &str,
        keep_alive: u16,
    ) -> Result<Opened> {
        self.open_with(source, None, client_id, keep_alive).await
    }

    /// [`Dialer::open`] with a fixed socket send buffer.
    pub async fn open_with(
        &self,
        source: Option<IpAddr>,
        send_buffer: Option<u32>,
        client_id: &str,
        keep_alive: u16,
    ) -> Result<Opened> {
        self.open_session(source, send_buffer, client_id, keep_alive, true)
            .await
    }

    /// [`Dialer::open_with`], with a persistent session when `clean` is
    /// false (MQTT 3.1.1 cleanSession=0).
    pub async fn open_session(
        &self,
        source: Option<IpAddr>,
        send_buffer: Option<u32>,
        client_id: &str,
        keep_alive: u16,
        clean: bool,
    ) -> Result<Opened> {
        let (stream, tcp, tls) = self.tls(source, send_buffer).await?;
        let mut conn = Framed::new(stream, v3::Codec::new(MAX_PACKET));
        let sent = Instant::now();
        let mut connect = connect_packet(client_id, keep_alive);
        if let Packet::Connect(c) = &mut connect {
            c.clean_session = clean;
        }
        conn.send(connect).await.context("CONNECT")?;
        match next(&mut conn).await.context("CONNACK")? {
            Packet::ConnectAck(ack) if ack.return_code == ConnectAckReason::ConnectionAccepted => {}
            Packet::ConnectAck(ack) => bail!("CONNACK: {}", ack.return_code.reason()),
            other => bail!("CONNACK: got {:?} instead", other.packet_type()),
        }
        Ok(Opened {
            conn,
            tcp,
            tls,
            mqtt: sent.elapsed(),
        })
    }
}

/// The trust anchors of a PEM bundle; an error if it holds no certificate.
pub fn root_store(pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| anyhow::anyhow!("the trust anchor PEM: {e:?}"))?;
        roots.add(cert).context("adding the trust anchor")?;
    }
    if roots.is_empty() {
        bail!("the trust anchor PEM holds no certificate");
    }
    Ok(roots)
}

/// The negotiated TLS version, key exchange and cipher suite.
pub fn tls_params(stream: &Stream) -> String {
    let (_, session) = stream.get_ref();
    format!(
        "{} {} {}",
        session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        session
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default(),
        session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
    )
}

pub fn connect_packet(client_id: &str, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(v3::Connect {
        clean_session: true,
        keep_alive,
        client_id: client_id.to_string().into(),
        ..Default::default()
    }))
}

pub fn qos_of(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// PUBLISH packets to one topic at one QoS. The topic text is shared, so
/// each packet clones a reference rather than the text.
#[derive(Clone)]
pub struct Publisher {
    template: Publish,
}

impl Publisher {
    pub fn new(topic: &str, qos: QoS) -> Publisher {
        Publisher {
            template: Publish {
                dup: false,
                retain: false,
                qos,
                topic: topic.to_string().into(),
                packet_id: None,
                payload: bytes::Bytes::new(),
                properties: None,
            },
        }
    }

    /// A PUBLISH; `packet_id` is used at QoS 1 and must not be zero there.
    pub fn packet(&self, packet_id: u16, payload: bytes::Bytes) -> Packet {
        let mut p = self.template.clone();
        if p.qos != QoS::AtMostOnce {
            p.packet_id = NonZeroU16::new(packet_id);
        }
        p.payload = payload;
        Packet::Publish(Box::new(p))
    }
}

/// SUBSCRIBE to one filter and wait for its SUBACK; returns the granted QoS.
pub async fn subscribe(conn: &mut Conn, filter: &str, qos: QoS) -> Result<QoS> {
    let granted = subscribe_all(conn, &[filter], qos).await?;
    Ok(granted[0])
}

/// One SUBSCRIBE to several filters, and its SUBACK; every filter must be
/// granted. Returns the granted QoS of each, in order.
pub async fn subscribe_all(conn: &mut Conn, filters: &[&str], qos: QoS) -> Result<Vec<QoS>> {
    let packet_id = NonZeroU16::MIN;
    conn.send(Packet::Subscribe {
        packet_id,
        topic_filters: filters
            .iter()
            .map(|f| (f.to_string().into(), qos))
            .collect(),
    })
    .await
    .context("SUBSCRIBE")?;
    loop {
        match next(conn).await.context("SUBACK")? {
            Packet::SubscribeAck {
                packet_id: id,
                status,
            } if id == packet_id => {
                if status.len() != filters.len() {
                    bail!(
                        "SUBACK with {} return codes for {} filters",
                        status.len(),
                        filters.len()
                    );
                }
                return filters
                    .iter()
                    .zip(&status)
                    .map(|(filter, code)| match code {
                        SubscribeReturnCode::Success(q) => Ok(*q),
                        _ => bail!("SUBACK refused {filter}"),
                    })
                    .collect();
            }
            Packet::SubscribeAck { .. } => bail!("SUBACK for another packet id"),
            // Nothing else should come before the SUBACK, but a PUBLISH may.
            Packet::Publish(_) => {}
            other => bail!("SUBACK: got {:?} instead", other.packet_type()),
        }
    }
}

/// The next packet; the end of the stream is an error.
pub async fn next(conn: &mut Conn) -> Result<Packet> {
    match conn.next().await {
        Some(Ok((packet, _))) => Ok(packet),
        Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
        None => bail!("the server closed the connection"),
    }
}

/// Sends DISCONNECT and waits until the server closes the connection
/// (end of stream or a reset), then closes the client side.
pub async fn disconnect(mut conn: Conn) -> Result<()> {
    conn.send(Packet::Disconnect).await.context("DISCONNECT")?;
    let closed = async { while let Some(Ok(_)) = conn.next().await {} };
    tokio::time::timeout(CLOSE_TIMEOUT, closed)
        .await
        .map_err(|_| anyhow::anyhow!("no close within {CLOSE_TIMEOUT:?} of DISCONNECT"))?;
    let mut stream = conn.into_inner();
    let _ = stream.shutdown().await;
    Ok(())
}
