//! The TLS listener, connection limits and the gateway's background duties
//! (cutting revoked identities, expiring sessions, gauges).

use crate::hub::Hub;
use onramp_broker::SessionLimits;
use onramp_service::{Onramp, RateLimit, RateLimiter};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Gateway tunables; the defaults follow AWS IoT Core's documented limits.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub max_connections: usize,
    /// Largest MQTT packet accepted or sent.
    pub max_packet_bytes: u32,
    /// Largest PUBLISH payload (AWS: 128 KiB).
    pub max_payload_bytes: usize,
    /// Longest topic name (AWS: 256 bytes).
    pub max_topic_bytes: usize,
    /// Subscriptions one connection may hold (AWS: 50).
    pub max_subscriptions: usize,
    /// A connection whose certificate is bound to a thing must use the thing
    /// name as its client id (as on AWS IoT).
    pub require_client_id_match: bool,
    pub handshake_timeout: Duration,
    /// Time allowed between the TLS handshake and CONNECT.
    pub connect_timeout: Duration,
    /// How long an MQTT 3.1.1 persistent session outlives its connection.
    pub session_expiry_default: Duration,
    /// Upper bound for an MQTT 5 session expiry interval.
    pub session_expiry_max: Duration,
    pub session_limits: SessionLimits,
    /// CONNECT attempts per source address.
    pub rate_per_source: RateLimit,
    /// CONNECT attempts per thing (AWS: 1 per second per client id).
    pub rate_per_identity: RateLimit,
    /// Failed authentications per source address before answers slow down.
    pub auth_failures_per_source: RateLimit,
    /// How often the identity-change feed (revocations, suspensions) is read.
    pub revocation_poll: Duration,
    /// CONNECT attempts with one claim certificate (shared by a whole batch).
    pub claim_rate_per_certificate: RateLimit,
    /// CONNECT attempts with any claim certificate from one source address.
    pub claim_rate_per_source: RateLimit,
    /// Refuse QoS 2 as AWS IoT does (CONNACK maximum QoS 1, a QoS 2
    /// PUBLISH closes the connection, QoS 2 subscriptions granted QoS 1).
    pub aws_strict: bool,
    /// Largest keep-alive accepted; a larger one is lowered (MQTT 5:
    /// Server Keep Alive in CONNACK).
    pub max_keep_alive_secs: u16,
    /// Topic aliases a client may set towards Onramp (MQTT 5).
    pub topic_alias_max: u16,
    /// How long a publisher is held (its socket not read, its PUBACK or
    /// PUBREC not sent) while a receiving connection is behind, before the
    /// drop policy applies; zero drops at once.
    pub publisher_hold: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            max_connections: 500_000,
            max_packet_bytes: 256 * 1024,
            max_payload_bytes: 128 * 1024,
            max_topic_bytes: 256,
            max_subscriptions: 50,
            require_client_id_match: true,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            session_expiry_default: Duration::from_secs(3600),
            session_expiry_max: Duration::from_secs(7 * 86_400),
            session_limits: SessionLimits::default(),
            rate_per_source: RateLimit {
                per_second: 500,
                burst: 1000,
            },
            rate_per_identity: RateLimit {
                per_second: 1,
                burst: 5,
            },
            auth_failures_per_source: RateLimit {
                per_second: 1,
                burst: 10,
            },
            revocation_poll: Duration::from_millis(250),
            claim_rate_per_certificate: RateLimit {
                per_second: 200,
                burst: 1000,
            },
            claim_rate_per_source: RateLimit {
                per_second: 50,
                burst: 200,
            },
            aws_strict: false,
            max_keep_alive_secs: 1200,
            topic_alias_max: 16,
            publisher_hold: crate::hub::DEFAULT_HOLD,
        }
    }
}

pub struct Gateway {
    pub onramp: Onramp,
    pub hub: Arc<Hub>,
    pub settings: GatewaySettings,
    pub(crate) connections: AtomicUsize,
    pub(crate) source_limiter: RateLimiter,
    pub(crate) identity_limiter: RateLimiter,
    pub(crate) failure_limiter: RateLimiter,
    pub(crate) claim_limiter: RateLimiter,
    pub(crate) claim_source_limiter: RateLimiter,
    /// Identities cut recently, for connections admitted while a cut ran.
    pub(crate) cuts: std::sync::Mutex<crate::cuts::CutLog>,
    /// This node's place in the identity-change feed; set before the
    /// listener accepts connections.
    identity_cursor: tokio::sync::Mutex<Option<onramp_service::IdentityChangeCursor>>,
    /// The TLS layer's trust anchors, refreshed as manufacturer CAs are
    /// registered, deactivated or revoked.
    client_roots: std::sync::OnceLock<onramp_pki::ClientRoots>,
}

impl Gateway {
    pub fn new(onramp: Onramp, settings: GatewaySettings) -> Gateway {
        let hub = Arc::new(Hub::with_hold(
            settings.session_limits,
            settings.publisher_hold,
        ));
        onramp.set_message_sink(Arc::new(HubSink(hub.clone())));
        if tokio::runtime::Handle::try_current().is_ok() {
            // Persistent sessions' changes are written from here on.
            hub.start_journal(onramp.clone());
        }
        Gateway {
            hub,
            source_limiter: RateLimiter::new(settings.rate_per_source),
            identity_limiter: RateLimiter::new(settings.rate_per_identity),
            failure_limiter: RateLimiter::new(settings.auth_failures_per_source),
            claim_limiter: RateLimiter::new(settings.claim_rate_per_certificate),
            claim_source_limiter: RateLimiter::new(settings.claim_rate_per_source),
            cuts: std::sync::Mutex::new(crate::cuts::CutLog::default()),
            identity_cursor: tokio::sync::Mutex::new(None),
            connections: AtomicUsize::new(0),
            client_roots: std::sync::OnceLock::new(),
            onramp,
            settings,
        }
    }

    /// Hands the gateway the trust anchors its TLS configuration verifies
    /// client certificates against, and loads the registered CAs into them.
    pub async fn use_client_roots(&self, roots: onramp_pki::ClientRoots) -> Result<(), String> {
        let cas = self
            .onramp
            .active_registered_ca_ders()
            .await
            .map_err(|e| e.to_string())?;
        roots.set_registered(cas)?;
        let _ = self.client_roots.set(roots);
        Ok(())
    }

    async fn refresh_client_roots(&self, last: &mut Vec<Vec<u8>>) {
        let Some(roots) = self.client_roots.get() else {
            return;
        };
        match self.onramp.active_registered_ca_ders().await {
            Ok(cas) if cas != *last => match roots.set_registered(cas.clone()) {
                Ok(()) => {
                    tracing::info!(
                        count = cas.len(),
                        "registered CAs trusted for client certificates"
                    );
                    *last = cas;
                }
                Err(e) => tracing::error!(error = %e, "could not load registered CAs"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "registered CA check failed"),
        }
    }

    /// Takes this node's place at the head of the identity-change feed. Call
    /// before accepting connections: a change committed after this is cut
    /// by [`Gateway::maintain`], one committed before is refused at connect.
    pub async fn start_identity_watch(&self) -> Result<(), String> {
        let head = self
            .onramp
            .identity_change_head()
            .await
            .map_err(|e| e.to_string())?;
        *self.identity_cursor.lock().await = Some(head);
        Ok(())
    }

    /// The cut epoch a connection notes before it authenticates.
    pub(crate) fn cut_epoch(&self) -> u64 {
        self.cuts.lock().map(|l| l.epoch()).unwrap_or(u64::MAX)
    }

    /// Whether a connection that noted `since` before authenticating was cut
    /// while it was being admitted.
    pub(crate) fn cut_since(
        &self,
        since: u64,
        tenant: &str,
        thing_name: &str,
        certificate_serial: &str,
    ) -> bool {
        // A poisoned log cannot vouch for anyone.
        self.cuts
            .lock()
            .map(|l| l.cut_since(since, tenant, thing_name, certificate_serial))
            .unwrap_or(true)
    }

    /// Reads the identity-change feed once and cuts every named connection.
    /// Returns how many changes were applied; on error nothing is lost, the
    /// next call reads the same changes again.
    pub async fn apply_identity_changes(&self) -> Result<usize, String> {
        let mut guard = self.identity_cursor.lock().await;
        if guard.is_none() {
            *guard = Some(
                self.onramp
                    .identity_change_head()
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let Some(cursor) = guard.as_mut() else {
            return Ok(0);
        };
        let changes = self
            .onramp
            .identity_changes(cursor)
            .await
            .map_err(|e| e.to_string())?;
        let n = changes.len();
        for r in changes {
            // Logged before the hub is searched, so a connection attaching
            // concurrently either is found here or finds the entry.
            if let Ok(mut log) = self.cuts.lock() {
                log.record(r.clone(), std::time::Instant::now());
            }
            let closed = self.hub.close_identity(
                &r.tenant,
                &r.thing_name,
                r.certificate_serial.as_deref(),
                crate::wire::CloseReason::NotAuthorized,
            );
            metrics::counter!("onramp_mqtt_identity_cuts_total").increment(1);
            if closed > 0 {
                tracing::info!(tenant = %r.tenant, thing = %r.thing_name, closed, "closed connections of a revoked or inactive identity");
            }
        }
        Ok(n)
    }

    /// Loads persisted retained messages into the brokers.
    pub async fn restore_retained(&self) -> Result<usize, String> {
        let records = self
            .onramp
            .load_retained()
            .await
            .map_err(|e| e.to_string())?;
        let n = records.len();
        for r in records {
            let qos = onramp_broker::QoS::from_u8(r.qos).unwrap_or(onramp_broker::QoS::AtLeastOnce);
            self.hub.set_retained(
                &r.tenant,
                &onramp_broker::Message::new(&r.topic, r.payload, qos, true),
            );
        }
        Ok(n)
    }

    /// Loads the stored persistent sessions into the brokers (before the
    /// listener accepts connections), then publishes the wills of those
    /// that expired while the server was down. Returns how many were
    /// brought back.
    pub async fn restore_sessions(&self) -> Result<usize, String> {
        let sessions = self
            .onramp
            .load_sessions()
            .await
            .map_err(|e| e.to_string())?;
        let total = sessions.len();
        let wills = self.hub.restore(sessions);
        let ended = wills.len();
        for (tenant, will) in wills {
            if will.retain {
                self.hub.set_retained(&tenant, &will);
                if let Err(e) = self
                    .onramp
                    .retain_message(&tenant, &will.topic, &will.payload, will.qos.as_u8())
                    .await
                {
                    tracing::error!(error = %e, "retained will not persisted");
                }
            }
            let (_, written) = self.hub.publish_durable(&tenant, &will, None);
            if let Some(n) = written {
                self.hub.durable(n).await;
            }
        }
        let (_, held) = self.hub.counts();
        tracing::info!(
            stored = total,
            restored = held,
            expired_wills = ended,
            "persistent MQTT sessions loaded"
        );
        Ok(held)
    }

    /// Cuts live connections of revoked certificates and of devices that
    /// left the active state, expires sessions, and keeps gauges current.
    pub async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.revocation_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = std::time::Instant::now();
        let mut last_roots = std::time::Instant::now();
        let mut trusted: Vec<Vec<u8>> = self
            .onramp
            .active_registered_ca_ders()
            .await
            .unwrap_or_default();
        loop {
            tick.tick().await;
            if last_roots.elapsed() >= Duration::from_secs(1) {
                last_roots = std::time::Instant::now();
                self.refresh_client_roots(&mut trusted).await;
            }
            if let Err(e) = self.apply_identity_changes().await {
                metrics::counter!("onramp_mqtt_identity_feed_errors_total").increment(1);
                tracing::warn!(error = %e, "identity change check failed; retrying");
            }
            // Wills whose delay has passed and expired sessions: checked
            // every tick (cheap when nothing is due), so a Will Delay is kept
            // to within a tick.
            for (tenant, will) in self.hub.sweep_expired() {
                if will.retain
                    && let Err(e) = self
                        .onramp
                        .retain_message(&tenant, &will.topic, &will.payload, will.qos.as_u8())
                        .await
                {
                    tracing::error!(error = %e, "retained will not persisted");
                }
            }
            if last_sweep.elapsed() >= Duration::from_secs(10) {
                last_sweep = std::time::Instant::now();
                self.source_limiter.sweep();
                self.identity_limiter.sweep();
                self.failure_limiter.sweep();
                // Claim connections come from any number of addresses:
                // their keys are forgotten like the others'.
                self.claim_limiter.sweep();
                self.claim_source_limiter.sweep();
            }
            let (connected, sessions) = self.hub.counts();
            metrics::gauge!("onramp_mqtt_connections").set(connected as f64);
            metrics::gauge!("onramp_mqtt_sessions").set(sessions as f64);
        }
    }
}

/// Server-originated messages (shadow replies and deltas) enter the broker
/// like any publish, so policies and subscriptions apply to them.
struct HubSink(Arc<Hub>);

impl onramp_service::MessageSink for HubSink {
    fn publish(&self, tenant: &str, topic: &str, payload: Vec<u8>) {
        let message =
            onramp_broker::Message::new(topic, payload, onramp_broker::QoS::AtLeastOnce, false);
        self.0.publish(tenant, &message, None);
    }
}

/// Gateway TLS: the server certificate chain and key; a client certificate
/// is required and must chain to `client_roots` (Onramp's CA, plus the
/// registered manufacturer CAs once [`Gateway::use_client_roots`] is called).
pub fn tls_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    client_roots: onramp_pki::ClientRoots,
) -> Result<rustls::ServerConfig, String> {
    use onramp_pki::tls::{ClientCerts, server_config_with_roots};
    let mut config =
        server_config_with_roots(chain_pem, key_pem, client_roots, ClientCerts::Required)?;
    // AWS IoT devices connect on 8883 with ALPN "x-amzn-mqtt-ca" or none.
    config.alpn_protocols = vec![b"mqtt".to_vec(), b"x-amzn-mqtt-ca".to_vec()];
    // Session resumption by ticket, which keeps nothing on the server. The
    // default session cache holds the last 256 sessions: useless for a fleet
    // of thousands, and after a connection storm its entries stay scattered
    // through memory the storm used, so that memory cannot be given back. A
    // resumed session is checked against the registry at CONNECT like any
    // other (the certificate's status, expiry and owner), so a ticket does
    // not outlive a revocation.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
    config.send_tls13_tickets = 1;
    Ok(config)
}

/// Accepts MQTT-over-TLS connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if gateway.connections.load(Ordering::Relaxed) >= gateway.settings.max_connections {
            metrics::counter!("onramp_mqtt_connects_total", "outcome" => "over_capacity")
                .increment(1);
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let gw = gateway.clone();
        tokio::spawn(async move {
            // Boxed, and freed once done: the handshake's state is larger
            // than what the connection keeps for the rest of its life.
            let handshake = Box::pin(tokio::time::timeout(
                gw.settings.handshake_timeout,
                crate::tls::TlsStream::accept(tcp, tls),
            ));
            let tls = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("onramp_mqtt_connects_total", "outcome" => "tls_refused")
                        .increment(1);
                    tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("onramp_mqtt_connects_total", "outcome" => "tls_timeout")
                        .increment(1);
                    return;
                }
            };
            gw.connections.fetch_add(1, Ordering::Relaxed);
            crate::connection::run(gw.clone(), tls, peer).await;
            gw.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Tell every live connection the server is going away.
    gateway
        .hub
        .close_all(crate::wire::CloseReason::ShuttingDown);
    Ok(())
}
