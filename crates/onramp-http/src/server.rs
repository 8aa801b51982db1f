//! TLS termination and the accept loop. The client certificate chain and the
//! source address of each connection are handed to handlers as extensions.
//!
//! The edge defends itself before any handler runs: connections over the
//! global or per-address cap are closed before TLS, the TLS handshake, the
//! request head and the request body each have a deadline, idle connections
//! are closed, and a request body a handler did not read is drained (up to a
//! bound) before the response goes out, so that an early refusal reaches the
//! client intact over HTTP/1.1 and HTTP/2 alike.

use axum::Router;
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The verified client certificate chain of the connection (leaf first), if one was presented.
#[derive(Debug, Clone, Default)]
pub struct ClientChain(pub Arc<Vec<Vec<u8>>>);

/// The peer address of the connection.
#[derive(Debug, Clone, Copy)]
pub struct SourceAddr(pub SocketAddr);

const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Time an idle connection gets to finish after GOAWAY / close before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How much the HTTPS edge lets one client hold.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// The TLS handshake must complete within this.
    pub handshake_timeout: Duration,
    /// A request head must arrive within this (HTTP/1.1: each request, counted
    /// from when the server starts waiting for it; HTTP/2: the first request
    /// after the connection opens).
    pub header_read_timeout: Duration,
    /// A request body must arrive completely within this of its head.
    pub body_read_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Live HTTPS connections, all sources together.
    pub max_connections: usize,
    /// Live HTTPS connections from one IP address.
    pub max_connections_per_source: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Largest request head: HTTP/1.1 read buffer and HTTP/2 header list.
    pub max_header_bytes: u32,
    /// HTTP/2 PING interval; a peer that does not answer within it is dropped.
    pub h2_keep_alive_interval: Duration,
    /// The unread body of a refused request is read and discarded up to this
    /// many bytes before the refusal is sent; beyond it the connection closes.
    pub max_discard_bytes: u64,
    /// The body deadline of an artifact upload (`POST /api/v1/artifacts`),
    /// which may be gigabytes, instead of `body_read_timeout`.
    pub upload_body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_source: 256,
            h2_max_concurrent_streams: 32,
            max_header_bytes: 64 * 1024,
            h2_keep_alive_interval: Duration::from_secs(30),
            max_discard_bytes: 16 * 1024 * 1024,
            upload_body_read_timeout: Duration::from_secs(3600),
        }
    }
}

/// Server TLS: our certificate chain and key; client certificates optional
/// (EST token enrolment has none) but, when presented, verified against
/// `client_roots` (the issuing CA and any bootstrap CAs).
pub fn tls_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: &[Vec<u8>],
) -> Result<rustls::ServerConfig, String> {
    tls_config_renewing(chain_pem, key_pem, client_roots, None)
}

/// Like [`tls_config`], letting recently expired certificates of Onramp's
/// own CA through for re-enrolment when `renewal` is set (the service
/// refuses them on every other path).
pub fn tls_config_renewing(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: &[Vec<u8>],
    renewal: Option<onramp_pki::ExpiredRenewal>,
) -> Result<rustls::ServerConfig, String> {
    use onramp_pki::tls::{ClientCerts, server_config_renewing};
    let mut config = server_config_renewing(
        chain_pem,
        key_pem,
        client_roots,
        ClientCerts::Optional,
        renewal,
    )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Like [`tls_config`], but client certificates are checked against the
/// anchors `roots` holds at each handshake: Onramp's issuing CAs follow a
/// CA rollover or retirement without a restart.
pub fn tls_config_with_roots(
    chain_pem: &[u8],
    key_pem: &[u8],
    roots: onramp_pki::ClientRoots,
) -> Result<rustls::ServerConfig, String> {
    use onramp_pki::tls::{ClientCerts, server_config_with_roots};
    let mut config = server_config_with_roots(chain_pem, key_pem, roots, ClientCerts::Optional)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

// ---- connection caps ----

/// Live connections, in total and per source IP.
struct ConnCounts {
    limits: HttpLimits,
    state: Mutex<CountState>,
    all_closed: tokio::sync::Notify,
}

#[derive(Default)]
struct CountState {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Holds one connection's place in the counts; releases it on drop.
struct ConnSlot {
    counts: Arc<ConnCounts>,
    ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OverCap {
    Global,
    PerSource,
}

impl ConnCounts {
    fn lock(&self) -> MutexGuard<'_, CountState> {
        // A panic elsewhere never leaves the counts half-updated: recover them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, OverCap> {
        let mut s = self.lock();
        if s.total >= self.limits.max_connections {
            return Err(OverCap::Global);
        }
        let n = s.per_source.entry(ip).or_insert(0);
        if *n >= self.limits.max_connections_per_source {
            return Err(OverCap::PerSource);
        }
        *n += 1;
        s.total += 1;
        metrics::gauge!("onramp_http_connections").set(s.total as f64);
        Ok(ConnSlot {
            counts: self.clone(),
            ip,
        })
    }

    fn total(&self) -> usize {
        self.lock().total
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut s = self.counts.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_source.remove(&self.ip);
            }
        }
        metrics::gauge!("onramp_http_connections").set(s.total as f64);
        if s.total == 0 {
            self.counts.all_closed.notify_waiters();
        }
    }
}

// ---- requests in progress, for the idle deadline ----

/// Requests in progress on one connection, and since when none has been.
struct Activity {
    in_flight: AtomicUsize,
    served_one: AtomicBool,
    idle_since: Mutex<Instant>,
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            served_one: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.served_one.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
        InFlight(self.clone())
    }

    /// Resolves when the connection has had no request in progress for the
    /// allowed time: `header_read_timeout` before its first request (a client
    /// that connects must ask something soon), `idle_timeout` after.
    async fn idle_expired(&self, limits: &HttpLimits) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            let allowed = if self.served_one.load(Ordering::SeqCst) {
                limits.idle_timeout
            } else {
                limits.header_read_timeout
            };
            let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            tokio::select! {
                () = tokio::time::sleep_until(since + allowed) => {
                    if self.in_flight.load(Ordering::SeqCst) == 0 {
                        let since_now = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
                        if since_now == since {
                            return;
                        }
                    }
                }
                () = changed => {}
            }
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted as in progress until the
/// body has been sent (or dropped).
struct Tracked {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// ---- the request body: deadline, and what is left after the handler ----

/// The request body did not arrive within `body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

struct BodyState {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    read: u64,
    ended: bool,
    polled: bool,
}

impl BodyState {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        self.polled = true;
        if self.ended {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            metrics::counter!("onramp_http_timeouts_total", "kind" => "body").increment(1);
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.ended = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The request body as handlers see it. The server keeps a second handle so
/// that it can drain what the handler left unread.
struct SharedBody(Arc<Mutex<BodyState>>);

fn lock_body(state: &Mutex<BodyState>) -> MutexGuard<'_, BodyState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl hyper::body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        lock_body(&self.0).poll_next(cx)
    }

    fn is_end_stream(&self) -> bool {
        let s = lock_body(&self.0);
        s.ended || s.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        lock_body(&self.0).inner.size_hint()
    }
}

/// Reads and discards the rest of the body, within the body deadline and
/// `max_discard_bytes` in all. True when the body was read to its end.
async fn drain(state: &Mutex<BodyState>, max_bytes: u64) -> bool {
    std::future::poll_fn(|cx| {
        let mut s = lock_body(state);
        loop {
            if s.ended || s.inner.is_end_stream() {
                return Poll::Ready(true);
            }
            if s.read > max_bytes {
                return Poll::Ready(false);
            }
            match s.poll_next(cx) {
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Runs one request through the app with the body deadline, then drains the
/// body the handler did not read. Answering an HTTP/2 request before its
/// body is complete makes the server reset the stream, and some clients
/// (curl 7.88) then lose the response; on HTTP/1.1 unread bytes turn the
/// close into a TCP reset that can destroy the response as well.
async fn handle(
    app: Router,
    limits: Arc<HttpLimits>,
    req: hyper::Request<Incoming>,
) -> Result<axum::response::Response, std::convert::Infallible> {
    let expects_continue = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let http1 = req.version() < hyper::Version::HTTP_2;
    let body_timeout =
        if req.method() == hyper::Method::POST && req.uri().path() == "/api/v1/artifacts" {
            limits.upload_body_read_timeout
        } else {
            limits.body_read_timeout
        };
    let (parts, incoming) = req.into_parts();
    let state = Arc::new(Mutex::new(BodyState {
        inner: incoming,
        deadline: Box::pin(tokio::time::sleep(body_timeout)),
        read: 0,
        ended: false,
        polled: false,
    }));
    let req = hyper::Request::from_parts(parts, axum::body::Body::new(SharedBody(state.clone())));
    let mut resp = app.oneshot(req).await?;
    // A client waiting for `100 Continue` has not sent its body; refusing
    // without asking for it is the point of the header.
    let untouched = !lock_body(&state).polled;
    let complete = if expects_continue && untouched {
        lock_body(&state).inner.is_end_stream()
    } else {
        drain(&state, limits.max_discard_bytes).await
    };
    if !complete && http1 {
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}

fn builder(limits: &HttpLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper refuses buffers under 8 KiB.
        .max_buf_size((limits.max_header_bytes as usize).max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes)
        .keep_alive_interval(Some(limits.h2_keep_alive_interval))
        .keep_alive_timeout(limits.h2_keep_alive_interval)
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(100));
    b
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish (up to a grace period).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let limits = Arc::new(limits);
    let counts = Arc::new(ConnCounts {
        limits: (*limits).clone(),
        state: Mutex::new(CountState::default()),
        all_closed: tokio::sync::Notify::new(),
    });
    let auto = builder(&limits);
    // The protocol is known from ALPN; serving it directly skips hyper's
    // version sniffing, which has no deadline of its own.
    let h1 = auto.clone().http1_only();
    let h2 = auto.clone().http2_only();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over the cap: close before spending a TLS handshake on it.
        let slot = match counts.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(over) => {
                let reason = match over {
                    OverCap::Global => "max_connections",
                    OverCap::PerSource => "max_connections_per_source",
                };
                metrics::counter!("onramp_http_connections_refused_total", "reason" => reason)
                    .increment(1);
                tracing::debug!(%addr, reason, "HTTPS connection refused");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let limits = limits.clone();
        let (auto, h1, h2) = (auto.clone(), h1.clone(), h2.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::counter!("onramp_http_timeouts_total", "kind" => "handshake")
                            .increment(1);
                        tracing::debug!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
            let session = tls.get_ref().1;
            let chain = ClientChain(Arc::new(
                session
                    .peer_certificates()
                    .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
                    .unwrap_or_default(),
            ));
            let builder = match session.alpn_protocol() {
                Some(b"h2") => h2,
                Some(b"http/1.1") => h1,
                _ => auto,
            };
            let activity = Activity::new();
            let service = {
                let activity = activity.clone();
                let limits = limits.clone();
                hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    let in_flight = activity.begin();
                    req.extensions_mut().insert(chain.clone());
                    req.extensions_mut().insert(SourceAddr(addr));
                    let (app, limits) = (app.clone(), limits.clone());
                    async move {
                        // The request stays in progress until its response
                        // body is sent: a long download is not idle.
                        handle(app, limits, req).await.map(|resp| {
                            resp.map(|body| {
                                axum::body::Body::new(Tracked {
                                    body,
                                    _in_flight: in_flight,
                                })
                            })
                        })
                    }
                })
            };
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let idle = activity.idle_expired(&limits);
            tokio::pin!(idle);
            let mut closing: Option<Instant> = None;
            loop {
                let grace_over = async {
                    match closing {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(e) = ended {
                            let timed_out = e
                                .downcast_ref::<hyper::Error>()
                                .is_some_and(hyper::Error::is_timeout);
                            if timed_out {
                                metrics::counter!("onramp_http_timeouts_total", "kind" => "header")
                                    .increment(1);
                            }
                            tracing::debug!(%addr, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut idle, if closing.is_none() => {
                        metrics::counter!("onramp_http_timeouts_total", "kind" => "idle").increment(1);
                        tracing::debug!(%addr, "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + CLOSE_GRACE);
                    }
                    _ = stop.wait_for(|s| *s), if closing.is_none() => {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(Instant::now() + SHUTDOWN_GRACE);
                    }
                    () = grace_over => break,
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let closed = async {
        loop {
            let notified = counts.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if counts.total() == 0 {
                return;
            }
            notified.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, closed).await.is_err() {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(max: usize, per_source: usize) -> Arc<ConnCounts> {
        Arc::new(ConnCounts {
            limits: HttpLimits {
                max_connections: max,
                max_connections_per_source: per_source,
                ..HttpLimits::default()
            },
            state: Mutex::new(CountState::default()),
            all_closed: tokio::sync::Notify::new(),
        })
    }

    #[test]
    fn the_per_source_cap_refuses_only_that_source_and_frees_on_close() {
        let c = counts(10, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = c.admit(a).unwrap();
        let _second = c.admit(a).unwrap();
        assert_eq!(c.admit(a).err(), Some(OverCap::PerSource));
        assert!(c.admit(b).is_ok(), "another source is not affected");
        drop(first);
        assert!(c.admit(a).is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn the_global_cap_refuses_every_source() {
        let c = counts(2, 5);
        let _a = c.admit("10.0.0.1".parse().unwrap()).unwrap();
        let _b = c.admit("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(
            c.admit("10.0.0.3".parse().unwrap()).err(),
            Some(OverCap::Global)
        );
        assert_eq!(c.total(), 2);
    }
}
