//! Server-side TLS over a TCP stream that holds buffers only while they hold
//! bytes.
//!
//! rustls's buffered connection keeps a 4 KiB receive buffer for the
//! connection's whole life; with tens of thousands of idle devices that was
//! the largest single cost of a connection. This stream drives rustls's
//! unbuffered connection instead and keeps its own buffers: received TLS
//! bytes are read into a stack buffer and processed there, and only a
//! partial record is copied to the heap; decrypted data waiting to be read
//! and encrypted data waiting to be sent are held in buffers freed as soon as
//! they are empty. An idle connection holds no buffer at all.
//!
//! The TLS work itself (handshake, record protection, alerts, tickets, key
//! updates) is rustls's; this module only moves bytes between it and the
//! socket.

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most read from the socket at once: one full TLS record (16 KiB of
/// data plus header and protection overhead).
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Application data encrypted per write call; more waits for the next call.
const WRITE_CHUNK: usize = 64 * 1024;
/// Encrypted bytes held unsent before a write waits for the socket.
const OUTGOING_HIGH_WATER: usize = 64 * 1024;

/// A server TLS connection over TCP, after its handshake.
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed: a partial record, or none.
    incoming: Vec<u8>,
    /// Decrypted application data not yet read, from `plaintext_read` on.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// TLS bytes to send, from `outgoing_sent` on.
    outgoing: Vec<u8>,
    outgoing_sent: usize,
    /// The peer sent close_notify or closed the socket: reads end.
    read_closed: bool,
    /// close_notify was queued: nothing more is encrypted.
    write_closed: bool,
    /// A reader waiting for data the writer side may process.
    read_waker: Option<Waker>,
    /// rustls reported an error: the connection is over, and rustls is
    /// not called again (it has sent its alert).
    failed: bool,
}

/// Where processing the received bytes stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Waiting for more bytes from the peer (also the idle state of an
    /// established connection).
    NeedData,
    /// Both sides sent close_notify.
    Closed,
}

/// What to do when rustls is ready to encrypt application data.
enum Encrypt<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The room an encoding asked for, if too little was given.
fn encode_room(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// The room an encryption asked for, if too little was given.
fn encrypt_room(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Appends what `produce` writes to `out`, growing it as far as asked.
fn append<E>(
    out: &mut Vec<u8>,
    mut produce: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = 512;
    loop {
        out.resize(start + room, 0);
        match produce(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match required(&e) {
                Some(size) if size > room => room = size,
                _ => {
                    out.truncate(start);
                    return Err(e);
                }
            },
        }
    }
}

impl TlsStream {
    /// Performs the server handshake on `io`. The client's certificate, if
    /// the configuration asks for one, is verified by then.
    pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut tls = TlsStream {
            io,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plaintext_read: 0,
            outgoing: Vec::new(),
            outgoing_sent: 0,
            read_closed: false,
            write_closed: false,
            read_waker: None,
            failed: false,
        };
        loop {
            let mut incoming = std::mem::take(&mut tls.incoming);
            let processed = tls.process(&mut incoming, Encrypt::Nothing);
            tls.keep_unprocessed(incoming, processed.as_ref().map_or(0, |p| p.0));
            // Whatever rustls queued, an alert with an error included, goes out.
            let flushed = tls.flush_outgoing().await;
            let (_, stop) = processed?;
            flushed?;
            if !tls.conn.is_handshaking() {
                return Ok(tls);
            }
            if matches!(stop, Stop::Closed) || tls.read_closed {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut chunk = [0u8; READ_CHUNK];
            let n = tokio::io::AsyncReadExt::read(&mut tls.io, &mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            tls.incoming.extend_from_slice(&chunk[..n]);
        }
    }

    /// The client's certificate chain, leaf first.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Bytes this stream holds in buffers now (0 when idle).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plaintext.capacity() + self.outgoing.capacity()
    }

    /// Lets rustls process `buf` (received bytes, oldest first) until it
    /// needs more, queueing what it has to send and the data it decrypted.
    /// Returns how many bytes of `buf` it consumed.
    fn process(&mut self, buf: &mut [u8], encrypt: Encrypt<'_>) -> io::Result<(usize, Stop)> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed",
            ));
        }
        let processed = self.process_records(buf, encrypt);
        self.failed = processed.is_err();
        processed
    }

    fn process_records(
        &mut self,
        buf: &mut [u8],
        mut encrypt: Encrypt<'_>,
    ) -> io::Result<(usize, Stop)> {
        let mut start = 0;
        loop {
            let status = self.conn.process_tls_records(&mut buf[start..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    start += discard;
                    self.queue_alert(buf, start);
                    return Err(tls_error(e));
                }
            };
            let mut stop = None;
            match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        if self.plaintext_read == self.plaintext.len() {
                            self.plaintext.clear();
                            self.plaintext_read = 0;
                        }
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    if let Some(waker) = self.read_waker.take() {
                        waker.wake();
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    append(&mut self.outgoing, |out| data.encode(out), encode_room)
                        .map_err(tls_error)?;
                }
                // Queued in `outgoing`; it is sent by whoever flushes next.
                ConnectionState::TransmitTlsData(data) => data.done(),
                ConnectionState::PeerClosed => self.read_closed = true,
                ConnectionState::Closed => {
                    self.read_closed = true;
                    stop = Some(Stop::Closed);
                }
                ConnectionState::BlockedHandshake => stop = Some(Stop::NeedData),
                ConnectionState::WriteTraffic(mut traffic) => {
                    match std::mem::replace(&mut encrypt, Encrypt::Nothing) {
                        Encrypt::Data(data) if !self.write_closed => append(
                            &mut self.outgoing,
                            |out| traffic.encrypt(data, out),
                            encrypt_room,
                        )
                        .map_err(tls_error)?,
                        Encrypt::CloseNotify if !self.write_closed => {
                            append(
                                &mut self.outgoing,
                                |out| traffic.queue_close_notify(out),
                                encrypt_room,
                            )
                            .map_err(tls_error)?;
                            self.write_closed = true;
                        }
                        Encrypt::Data(_) => {
                            return Err(io::Error::new(
                                io::ErrorKind::BrokenPipe,
                                "the TLS connection is closed for writing",
                            ));
                        }
                        Encrypt::CloseNotify | Encrypt::Nothing => {}
                    }
                    stop = Some(Stop::NeedData);
                }
                ConnectionState::ReadEarlyData(_) => {
                    // Early data is never offered (`max_early_data_size` is 0).
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS early data",
                    ));
                }
                _ => {
                    return Err(io::Error::other("unknown TLS connection state"));
                }
            }
            start += discard;
            if let Some(stop) = stop {
                return Ok((start, stop));
            }
        }
    }

    /// After an error rustls may have queued a fatal alert: it is queued
    /// for sending, best effort. Processing stops once nothing is left to
    /// send, before rustls would read the offending bytes again.
    fn queue_alert(&mut self, buf: &mut [u8], start: usize) {
        for _ in 0..4 {
            if !self.conn.wants_write() {
                return;
            }
            let status = self.conn.process_tls_records(&mut buf[start..]);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    let _ = append(&mut self.outgoing, |out| data.encode(out), encode_room);
                }
                _ => return,
            }
        }
    }

    /// Keeps `buf[consumed..]` as the unprocessed received bytes, in a heap
    /// buffer only if there are any.
    fn keep_unprocessed(&mut self, mut buf: Vec<u8>, consumed: usize) {
        if consumed >= buf.len() {
            buf = Vec::new();
        } else if consumed > 0 {
            buf.drain(..consumed);
        }
        self.incoming = buf;
    }

    /// Writes queued TLS bytes until none are left or the socket is full.
    fn poll_flush_outgoing(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.outgoing_sent < self.outgoing.len() {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.outgoing_sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += n;
        }
        // Sent: the buffer is freed, not kept for the next write.
        self.outgoing = Vec::new();
        self.outgoing_sent = 0;
        Poll::Ready(Ok(()))
    }

    async fn flush_outgoing(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush_outgoing(cx)).await?;
        self.io.flush().await
    }

    /// Processes the received bytes held on the heap, then `encrypt`s:
    /// false if rustls was not ready to (still handshaking, or closed).
    fn process_held(&mut self, encrypt: Encrypt<'_>) -> io::Result<bool> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let wanted = !matches!(encrypt, Encrypt::Nothing);
        let before = self.outgoing.len();
        let processed = self.process(&mut incoming, encrypt);
        let consumed = processed.as_ref().map_or(incoming.len(), |p| p.0);
        self.keep_unprocessed(incoming, consumed);
        let (_, stop) = processed?;
        Ok(!wanted || (stop == Stop::NeedData && self.encrypted_since(before)))
    }

    /// Whether `outgoing` grew past `len` (encrypting always adds bytes).
    fn encrypted_since(&self, len: usize) -> bool {
        self.outgoing.len() > len
    }

    /// Copies held plaintext into `out`; true if there was any.
    fn take_plaintext(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let held = &self.plaintext[self.plaintext_read..];
        if held.is_empty() {
            return false;
        }
        let n = held.len().min(out.remaining());
        out.put_slice(&held[..n]);
        self.plaintext_read += n;
        if self.plaintext_read == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_read = 0;
        }
        true
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the TLS connection failed",
                )));
            }
            if out.remaining() == 0 || this.take_plaintext(out) || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // Alerts or key-update answers queued by earlier processing go
            // out when the socket takes them; a write flushes them otherwise.
            if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
                return Poll::Ready(Err(e));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut stack);
            this.read_waker = Some(cx.waker().clone());
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut chunk))?;
            this.read_waker = None;
            if chunk.filled().is_empty() {
                // The socket closed without close_notify: the end of input
                // all the same (a device losing power sends no alert).
                this.read_closed = true;
                continue;
            }
            let stop = if this.incoming.is_empty() {
                // The common case: whole records, processed where they were read.
                let filled = chunk.filled_mut();
                let processed = this.process(filled, Encrypt::Nothing);
                let consumed = processed.as_ref().map_or(filled.len(), |p| p.0);
                if consumed < filled.len() {
                    this.incoming.extend_from_slice(&filled[consumed..]);
                }
                processed.map(|(_, stop)| stop)?
            } else {
                this.incoming.extend_from_slice(chunk.filled());
                let mut incoming = std::mem::take(&mut this.incoming);
                let processed = this.process(&mut incoming, Encrypt::Nothing);
                let consumed = processed.as_ref().map_or(incoming.len(), |p| p.0);
                this.keep_unprocessed(incoming, consumed);
                processed?.1
            };
            if stop == Stop::Closed {
                this.read_closed = true;
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.outgoing.len() - this.outgoing_sent >= OUTGOING_HIGH_WATER {
            ready!(this.poll_flush_outgoing(cx))?;
        }
        let take = buf.len().min(WRITE_CHUNK);
        if !this.process_held(Encrypt::Data(&buf[..take]))? {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection cannot send application data",
            )));
        }
        // Sent as far as the socket takes it now; the rest on flush.
        if let Poll::Ready(Err(e)) = this.poll_flush_outgoing(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            // A connection that failed is shut down without close_notify.
            if this.process_held(Encrypt::CloseNotify).is_err() {
                this.write_closed = true;
            }
        }
        ready!(this.poll_flush_outgoing(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use rustls::server::WebPkiClientVerifier;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Pki {
        server: Arc<ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        stranger: Arc<rustls::ClientConfig>,
    }

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA");
        (cert, rcgen::Issuer::new(params, key))
    }

    fn leaf(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        name: &str,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        let cert = params.signed_by(&key, issuer).expect("leaf");
        (
            cert.der().clone(),
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }

    fn pki() -> Pki {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let (ca_cert, issuer) = ca("test CA");
        let (other_ca_cert, other_issuer) = ca("another CA");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("root");
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots.clone()))
            .build()
            .expect("verifier");
        let (server_cert, server_key) = leaf(&issuer, "localhost");
        let mut server = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert], server_key)
            .expect("server config");
        server.send_tls13_tickets = 1;
        let (client_cert, client_key) = leaf(&issuer, "device-1");
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(vec![client_cert], client_key)
            .expect("client config");
        let (stranger_cert, stranger_key) = leaf(&other_issuer, "device-2");
        let _ = other_ca_cert;
        let stranger = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![stranger_cert], stranger_key)
            .expect("client config");
        Pki {
            server: Arc::new(server),
            client: Arc::new(client),
            stranger: Arc::new(stranger),
        }
    }

    /// A listener whose first connection is handed to `TlsStream::accept`.
    async fn serve_one(
        pki: &Pki,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<io::Result<TlsStream>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = pki.server.clone();
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            TlsStream::accept(tcp, server).await
        });
        (addr, accepted)
    }

    /// A server stream and a client connected to it, the handshake done.
    async fn pair(
        pki: &Pki,
        client: Arc<rustls::ClientConfig>,
    ) -> (
        io::Result<TlsStream>,
        io::Result<tokio_rustls::client::TlsStream<TcpStream>>,
    ) {
        let (addr, accepted) = serve_one(pki).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let connector = tokio_rustls::TlsConnector::from(client);
        let name = ServerName::try_from("localhost").expect("name");
        let mut client = connector.connect(name, tcp).await;
        if let Ok(c) = client.as_mut() {
            // TLS 1.3 checks the client's certificate after the client's
            // handshake ended: a refusal shows on the first read.
            c.write_all(b"hello").await.expect("write");
            c.flush().await.expect("flush");
        }
        let server = accepted.await.expect("task");
        (server, client)
    }

    #[tokio::test]
    async fn data_flows_both_ways_and_an_idle_stream_holds_no_buffer() {
        let pki = pki();
        let (server, client) = pair(&pki, pki.client.clone()).await;
        let (mut server, mut client) = (server.expect("server"), client.expect("client"));
        let chain = server.peer_certificates().expect("client chain");
        assert_eq!(chain.len(), 1);

        let mut hello = [0u8; 5];
        server.read_exact(&mut hello).await.expect("read");
        assert_eq!(&hello, b"hello");

        // Larger than a record and than one read, both ways.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let to_server = big.clone();
        let sent = tokio::spawn(async move {
            client.write_all(&to_server).await.expect("client write");
            client.flush().await.expect("client flush");
            let mut back = vec![0u8; to_server.len()];
            client.read_exact(&mut back).await.expect("client read");
            (client, back)
        });
        let mut got = vec![0u8; big.len()];
        server.read_exact(&mut got).await.expect("server read");
        assert_eq!(got, big);
        server.write_all(&got).await.expect("server write");
        server.flush().await.expect("server flush");
        let (mut client, back) = sent.await.expect("task");
        assert_eq!(back, big);
        assert_eq!(
            server.buffered_capacity(),
            0,
            "an idle stream holds no buffer"
        );

        // close_notify from the server ends the client's reading cleanly.
        server.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("clean end");
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_client_closing_ends_the_servers_reading() {
        let pki = pki();
        let (server, client) = pair(&pki, pki.client.clone()).await;
        let (mut server, mut client) = (server.expect("server"), client.expect("client"));
        client.shutdown().await.expect("close_notify");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("end");
        assert_eq!(rest, b"hello");
        // Writing after the peer closed is still allowed by TLS.
        server.write_all(b"bye").await.expect("write");
        server.flush().await.expect("flush");
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_refused_with_an_alert() {
        let pki = pki();
        let (server, client) = pair(&pki, pki.stranger.clone()).await;
        let err = server.err().expect("the server refuses the handshake");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // The client hears why: an alert, not a bare reset.
        let mut client = client.expect("the client's side of the handshake ended");
        let mut buf = [0u8; 1];
        let read = client.read(&mut buf).await;
        let text = format!("{read:?}");
        assert!(
            text.contains("UnknownCA") || text.contains("unknown"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_an_error_not_a_panic() {
        let pki = pki();
        let (addr, accepted) = serve_one(&pki).await;
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"CONNECT MQTT please\r\n\r\n")
            .await
            .expect("write");
        let result = accepted.await.expect("task");
        assert!(result.is_err());
        // And a client that hangs up half way is an error too.
        let (addr, accepted) = serve_one(&pki).await;
        let tcp = TcpStream::connect(addr).await.expect("connect");
        drop(tcp);
        let err = accepted.await.expect("task").err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn garbage_after_the_handshake_fails_the_stream_for_good() {
        let pki = pki();
        let (server, client) = pair(&pki, pki.client.clone()).await;
        let (mut server, client) = (server.expect("server"), client.expect("client"));
        let mut hello = [0u8; 5];
        server.read_exact(&mut hello).await.expect("read");
        // A record whose protection does not check out.
        let (mut tcp, _) = client.into_inner();
        tcp.write_all(&[23, 3, 3, 0, 40]).await.expect("header");
        tcp.write_all(&[0x5a; 40]).await.expect("body");
        let mut buf = [0u8; 16];
        let err = tokio::time::timeout(std::time::Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("read A")
            .expect_err("a bad record");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // Nothing works on it afterwards, and nothing panics.
        assert!(server.read(&mut buf).await.is_err());
        assert!(server.write_all(b"x").await.is_err());
        let _ = server.shutdown().await;
        // The peer was told: a bad_record_mac alert came before the close.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_end(&mut rest),
        )
        .await
        .expect("read B");
        assert!(
            rest.first() == Some(&21) || rest.first() == Some(&23),
            "{rest:?}"
        );
    }
}
