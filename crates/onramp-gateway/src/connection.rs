//! One MQTT connection: CONNECT and authentication, then packets in and
//! deliveries out until either side ends it.

use crate::hub::{ReceiveCheck, ToConnection};
use crate::listener::Gateway;
use crate::wire::{
    self, CloseReason, ConnAckInfo, ConnectRefusal, Inbound, SubscribeRefusal, Version,
};
use futures_util::{SinkExt, StreamExt};
use onramp_broker::{Message, QoS, SessionId};
use onramp_domain::DeviceRequest;
use onramp_domain::policy::{Action, Resource};
use onramp_domain::topic::{parse_subscription, validate_topic_name};
use onramp_service::{Audience, Authorizer, ClaimContext, DeviceIdentity, ServiceError};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_util::codec::Framed;

type Conn = Framed<TlsStream<TcpStream>, MqttCodec>;
type Sink = futures_util::stream::SplitSink<Conn, MqttPacket>;

/// Deliveries buffered towards one connection before it counts as too slow.
const OUTBOUND_CAPACITY: usize = 1024;
/// Deliveries written per flush.
const WRITE_BATCH: usize = 64;

fn ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) async fn run(gw: Arc<Gateway>, stream: TlsStream<TcpStream>, peer: SocketAddr) {
    let chain: Vec<Vec<u8>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default();
    let mut framed = Framed::new(stream, MqttCodec::Version(VersionCodec));
    let version = match tokio::time::timeout(gw.settings.connect_timeout, framed.next()).await {
        Ok(Some(Ok((MqttPacket::Version(v), _)))) => v,
        _ => {
            metrics::counter!("onramp_mqtt_connects_total", "outcome" => "not_mqtt").increment(1);
            return;
        }
    };
    let max = gw.settings.max_packet_bytes;
    let version = match version {
        ProtocolVersion::MQTT3 => {
            *framed.codec_mut() = MqttCodec::V3(v3::Codec::new(max));
            Version::V3
        }
        ProtocolVersion::MQTT5 => {
            *framed.codec_mut() = MqttCodec::V5(v5::Codec::new(max, max));
            Version::V5
        }
    };
    let connect = match tokio::time::timeout(gw.settings.connect_timeout, framed.next()).await {
        Ok(Some(Ok((packet, _)))) => match wire::inbound(packet) {
            Inbound::Connect(c) => c,
            _ => return,
        },
        _ => return,
    };
    let source = peer.ip().to_string();
    let admitted = match admit(&gw, &chain, &connect, &source).await {
        Ok(a) => a,
        Err(why) => {
            metrics::counter!("onramp_mqtt_connects_total", "outcome" => refusal_name(why))
                .increment(1);
            if why == ConnectRefusal::NotAuthorized && gw.failure_limiter.check(&source).is_err() {
                // Repeated failures from one address are answered slowly.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let _ = framed.send(wire::connack_refused(version, why)).await;
            return;
        }
    };
    Session::start(gw, framed, version, connect, admitted, peer).await;
}

fn refusal_name(why: ConnectRefusal) -> &'static str {
    match why {
        ConnectRefusal::NotAuthorized => "not_authorized",
        ConnectRefusal::BadClientId => "bad_client_id",
        ConnectRefusal::ServerUnavailable => "unavailable",
        ConnectRefusal::RateExceeded => "rate_limited",
    }
}

struct Admitted {
    identity: DeviceIdentity,
    client_id: String,
    assigned: bool,
    authorizer: Authorizer,
    /// The cut epoch before authentication (see `Gateway::cut_since`).
    cut_epoch: u64,
}

async fn admit(
    gw: &Gateway,
    chain: &[Vec<u8>],
    connect: &wire::ConnectRequest,
    source: &str,
) -> Result<Admitted, ConnectRefusal> {
    if gw.source_limiter.check(source).is_err() {
        return Err(ConnectRefusal::RateExceeded);
    }
    // Noted before the registry is read: a cut that lands between this read
    // and the session's attachment is caught after attaching.
    let cut_epoch = gw.cut_epoch();
    let identity = gw.onramp.authenticate_device(chain).await.map_err(|e| {
        tracing::info!(%source, reason = %e, "MQTT connection refused");
        match e {
            ServiceError::Internal(_) | ServiceError::Unavailable { .. } => {
                ConnectRefusal::ServerUnavailable
            }
            _ => ConnectRefusal::NotAuthorized,
        }
    })?;
    let (client_id, assigned) = if connect.client_id.is_empty() {
        // An empty client id gets the thing name (MQTT 5 returns it in CONNACK);
        // a claim connection, which has no thing yet, a fresh one.
        match identity.claim {
            Some(_) => (format!("claim-{}", uuid::Uuid::new_v4().simple()), true),
            None => (identity.thing_name.clone(), true),
        }
    } else {
        (connect.client_id.clone(), false)
    };
    if client_id.len() > 128 || client_id.contains(['\0', '+', '#']) {
        return Err(ConnectRefusal::BadClientId);
    }
    if let Some(claim) = &identity.claim {
        // A claim certificate is shared by a whole batch, so its key is only
        // as secret as the least protected board: its connections are
        // limited per claim and per address, and may never use a client id
        // that names a thing (that would displace the device or wipe its
        // session). Holding a live client id is checked when attaching.
        if gw.claim_source_limiter.check(source).is_err()
            || gw
                .claim_limiter
                .check(&format!("{}/{}", identity.tenant, claim.serial))
                .is_err()
        {
            return Err(ConnectRefusal::RateExceeded);
        }
        match gw
            .onramp
            .client_id_names_thing(&identity.tenant, &client_id)
            .await
        {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!(%source, claim = %claim.serial, client = %client_id, "claim connection refused: its client id names a thing");
                return Err(ConnectRefusal::BadClientId);
            }
            Err(_) => return Err(ConnectRefusal::ServerUnavailable),
        }
    } else {
        if gw.settings.require_client_id_match && client_id != identity.thing_name {
            tracing::info!(%source, thing = %identity.thing_name, "MQTT client id is not the thing name");
            return Err(ConnectRefusal::BadClientId);
        }
        if gw
            .identity_limiter
            .check(&format!("{}/{}", identity.tenant, identity.thing_name))
            .is_err()
        {
            return Err(ConnectRefusal::RateExceeded);
        }
    }
    let authorizer = gw.onramp.authorizer(&identity, &client_id);
    if !authorizer.allows(Action::Connect, Resource::Client(&client_id)) {
        return Err(ConnectRefusal::NotAuthorized);
    }
    if let Some(will) = &connect.will {
        let ok = validate_topic_name(&will.topic).is_ok()
            && !is_reserved_for_server(&will.topic)
            && authorizer.allows(Action::Publish, Resource::Topic(&will.topic))
            && (!will.retain
                || authorizer.allows(Action::RetainPublish, Resource::Topic(&will.topic)));
        if !ok {
            return Err(ConnectRefusal::NotAuthorized);
        }
    }
    Ok(Admitted {
        identity,
        client_id,
        assigned,
        authorizer,
        cut_epoch,
    })
}

/// Topics only the server publishes on.
fn is_reserved_for_server(topic: &str) -> bool {
    onramp_domain::request::is_server_only(topic)
}

struct Session {
    gw: Arc<Gateway>,
    version: Version,
    tenant: String,
    thing_name: String,
    client_id: String,
    certificate_id: String,
    session: SessionId,
    connection: u64,
    authorizer: Authorizer,
    will: Option<wire::Will>,
    persistent: bool,
    session_expiry: Option<Duration>,
    presence_version: u64,
    /// Set on a claim-certificate connection: it may only provision.
    claim: Option<ClaimContext>,
    source: String,
}

enum End {
    /// DISCONNECT from the client.
    Normal { with_will: bool },
    /// The server closed it.
    Closed(CloseReason),
    /// The socket went away or the keep-alive ran out.
    Lost,
}

impl Session {
    async fn start(
        gw: Arc<Gateway>,
        framed: Conn,
        version: Version,
        connect: wire::ConnectRequest,
        a: Admitted,
        peer: SocketAddr,
    ) {
        let (tx, mut rx) = mpsc::channel::<ToConnection>(OUTBOUND_CAPACITY);
        let connection = gw.hub.next_connection_id();
        let receive: ReceiveCheck = {
            let auth = a.authorizer.clone();
            Arc::new(move |topic: &str| auth.allows(Action::Receive, Resource::Topic(topic)))
        };
        let persistent = match version {
            Version::V3 => !connect.clean_start,
            Version::V5 => connect.session_expiry_secs.unwrap_or(0) > 0,
        };
        let session_expiry = match version {
            Version::V3 => persistent.then_some(gw.settings.session_expiry_default),
            Version::V5 => connect
                .session_expiry_secs
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(u64::from(s)).min(gw.settings.session_expiry_max)),
        };
        let attached = gw.hub.attach(
            &a.identity.tenant,
            &a.client_id,
            &a.identity.thing_name,
            &a.identity.certificate_serial,
            connect.clean_start,
            connection,
            tx,
            receive,
            connect.receive_max,
            a.identity.claim.is_some(),
        );
        let Some(attached) = attached else {
            tracing::warn!(%peer, thing = %a.identity.thing_name, client = %a.client_id, "MQTT client id is held by another identity");
            metrics::counter!("onramp_mqtt_connects_total", "outcome" => "client_id_held")
                .increment(1);
            let mut framed = framed;
            let _ = framed
                .send(wire::connack_refused(version, ConnectRefusal::BadClientId))
                .await;
            return;
        };
        let (mut sink, mut stream) = framed.split();
        let info = ConnAckInfo {
            session_present: attached.session_present,
            assigned_client_id: a.assigned.then(|| a.client_id.clone()),
            receive_max: u16::try_from(gw.settings.session_limits.max_inflight).unwrap_or(u16::MAX),
            max_packet_size: gw.settings.max_packet_bytes,
            session_expiry_secs: match (version, session_expiry) {
                (Version::V5, Some(d)) => u32::try_from(d.as_secs()).ok(),
                _ => None,
            },
            server_keep_alive: None,
        };
        let mut s = Session {
            version,
            tenant: a.identity.tenant.clone(),
            thing_name: a.identity.thing_name.clone(),
            client_id: a.client_id.clone(),
            certificate_id: a.identity.certificate_id.clone(),
            session: attached.session,
            connection,
            authorizer: a.authorizer,
            will: connect.will.clone(),
            persistent,
            session_expiry,
            presence_version: attached.presence_version,
            claim: a.identity.claim.clone(),
            source: peer.ip().to_string(),
            gw,
        };
        if s.gw.cut_since(
            a.cut_epoch,
            &s.tenant,
            &s.thing_name,
            &a.identity.certificate_serial,
        ) {
            // Revoked or suspended while it was being admitted.
            tracing::info!(client = %s.client_id, %peer, "MQTT connection cut during admission");
            metrics::counter!("onramp_mqtt_connects_total", "outcome" => "cut_during_admission")
                .increment(1);
            let _ = sink
                .send(wire::connack_refused(
                    version,
                    ConnectRefusal::NotAuthorized,
                ))
                .await;
            s.finish(End::Closed(CloseReason::NotAuthorized)).await;
            return;
        }
        if sink.send(wire::connack_ok(version, &info)).await.is_err() {
            s.finish(End::Lost).await;
            return;
        }
        metrics::counter!("onramp_mqtt_connects_total", "outcome" => "accepted").increment(1);
        tracing::debug!(client = %s.client_id, %peer, ?version, "MQTT client connected");
        if s.claim.is_none() {
            s.presence(true, Some(&peer.ip().to_string()), None);
            // Queued (not written here), in order with the disconnect that follows.
            s.gw.onramp
                .device_presence(&s.tenant, &s.thing_name, true)
                .await;
        }
        for out in attached.resend {
            if sink.feed(wire::publish(version, &out)).await.is_err() {
                s.finish(End::Lost).await;
                return;
            }
        }
        if sink.flush().await.is_err() {
            s.finish(End::Lost).await;
            return;
        }
        let idle = match connect.keep_alive {
            0 => None,
            k => Some(Duration::from_millis(u64::from(k) * 1500)),
        };
        let end = s.pump(&mut sink, &mut stream, &mut rx, idle).await;
        if let End::Closed(why) = &end
            && let Some(p) = wire::disconnect(version, *why)
        {
            let _ = sink.send(p).await;
        }
        let _ = sink.close().await;
        s.finish(end).await;
    }

    async fn pump(
        &mut self,
        sink: &mut Sink,
        stream: &mut futures_util::stream::SplitStream<Conn>,
        rx: &mut mpsc::Receiver<ToConnection>,
        idle: Option<Duration>,
    ) -> End {
        loop {
            let read = async {
                match idle {
                    Some(d) => tokio::time::timeout(d, stream.next()).await.map_err(|_| ()),
                    None => Ok(stream.next().await),
                }
            };
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(ToConnection::Deliver(out)) => {
                        if self.write_deliveries(sink, rx, out).await.is_err() {
                            return End::Lost;
                        }
                    }
                    Some(ToConnection::Close(why)) => return End::Closed(why),
                    None => return End::Closed(CloseReason::Administrative),
                },
                packet = read => match packet {
                    Err(()) => return End::Closed(CloseReason::KeepAliveTimeout),
                    Ok(None) => return End::Lost,
                    // A socket error (a reset, a close without close_notify) is a lost connection.
                    Ok(Some(Err(rmqtt_codec::error::DecodeError::Io(_)))) => return End::Lost,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(client = %self.client_id, error = %e, "undecodable MQTT packet");
                        let too_large = matches!(e, rmqtt_codec::error::DecodeError::MaxSizeExceeded { .. });
                        return End::Closed(if too_large { CloseReason::PacketTooLarge } else { CloseReason::MalformedPacket });
                    }
                    Ok(Some(Ok((packet, _)))) => {
                        if let Some(end) = self.handle(sink, wire::inbound(packet)).await {
                            return end;
                        }
                    }
                },
            }
        }
    }

    async fn write_deliveries(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::Receiver<ToConnection>,
        first: onramp_broker::Outgoing,
    ) -> Result<(), ()> {
        count_out(&first);
        sink.feed(wire::publish(self.version, &first))
            .await
            .map_err(|_| ())?;
        for _ in 0..WRITE_BATCH {
            match rx.try_recv() {
                Ok(ToConnection::Deliver(out)) => {
                    count_out(&out);
                    sink.feed(wire::publish(self.version, &out))
                        .await
                        .map_err(|_| ())?;
                }
                Ok(ToConnection::Close(why)) => {
                    sink.flush().await.map_err(|_| ())?;
                    // Re-queue the close for the main loop.
                    return match wire::disconnect(self.version, why) {
                        Some(p) => {
                            let _ = sink.send(p).await;
                            Err(())
                        }
                        None => Err(()),
                    };
                }
                Err(_) => break,
            }
        }
        sink.flush().await.map_err(|_| ())
    }

    async fn handle(&mut self, sink: &mut Sink, packet: Inbound) -> Option<End> {
        let v = self.version;
        match packet {
            Inbound::Publish {
                topic,
                payload,
                qos,
                retain,
                packet_id,
                uses_alias,
            } => {
                if uses_alias {
                    return Some(End::Closed(CloseReason::TopicAliasInvalid));
                }
                if qos > 1 {
                    // QoS 2 is not supported (CONNACK says so in v5).
                    return Some(End::Closed(CloseReason::QosNotSupported));
                }
                if validate_topic_name(&topic).is_err()
                    || topic.len() > self.gw.settings.max_topic_bytes
                {
                    return Some(End::Closed(CloseReason::TopicNameInvalid));
                }
                if payload.len() > self.gw.settings.max_payload_bytes {
                    return Some(End::Closed(CloseReason::PacketTooLarge));
                }
                if retain && topic.starts_with("$aws/") {
                    return Some(End::Closed(CloseReason::RetainNotSupported));
                }
                let allowed = !is_reserved_for_server(&topic)
                    && self
                        .authorizer
                        .allows(Action::Publish, Resource::Topic(&topic))
                    && (!retain
                        || self
                            .authorizer
                            .allows(Action::RetainPublish, Resource::Topic(&topic)));
                if !allowed {
                    tracing::info!(client = %self.client_id, %topic, "publish denied by policy");
                    return match (v, packet_id) {
                        // MQTT 3.1.1 has no negative acknowledgement: close, as AWS IoT does.
                        (Version::V3, _) => Some(End::Closed(CloseReason::NotAuthorized)),
                        (Version::V5, Some(id)) => sink
                            .send(wire::puback(v, id, true))
                            .await
                            .err()
                            .map(|_| End::Lost),
                        (Version::V5, None) => None,
                    };
                }
                let qos = if qos == 1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                metrics::counter!("onramp_mqtt_messages_in_total", "qos" => if qos == QoS::AtLeastOnce { "1" } else { "0" }).increment(1);
                // Requests on reserved topics (provisioning, shadows, jobs) go
                // to the service; its replies come back addressed either to
                // this connection or to subscribers. The PUBACK follows the
                // answer, so a QoS 1 request acknowledged is one whose write
                // is durable.
                if let Some(request) = DeviceRequest::parse(&topic) {
                    if let Some(end) = self.answer(sink, &request, &payload).await {
                        return Some(end);
                    }
                    return match packet_id {
                        Some(id) if qos == QoS::AtLeastOnce => sink
                            .send(wire::puback(v, id, false))
                            .await
                            .err()
                            .map(|_| End::Lost),
                        _ => None,
                    };
                }
                let message = Message::new(&topic, payload, qos, retain);
                if retain && !self.retain(&message).await {
                    return Some(End::Closed(CloseReason::QuotaExceeded));
                }
                self.gw.hub.publish(&self.tenant, &message);
                if let Some(id) = packet_id
                    && qos == QoS::AtLeastOnce
                    && sink.send(wire::puback(v, id, false)).await.is_err()
                {
                    return Some(End::Lost);
                }
                None
            }
            Inbound::PubAck(id) => {
                let more = self.gw.hub.puback(&self.tenant, self.session, id);
                for out in more {
                    count_out(&out);
                    if sink.feed(wire::publish(v, &out)).await.is_err() {
                        return Some(End::Lost);
                    }
                }
                sink.flush().await.err().map(|_| End::Lost)
            }
            Inbound::Subscribe { packet_id, filters } => {
                let mut results = Vec::with_capacity(filters.len());
                let mut granted = Vec::new();
                for (text, qos) in filters {
                    let r = self.subscribe_one(&text, qos);
                    if let Ok(q) = r {
                        granted.push((text, q));
                    }
                    results.push(r);
                }
                if sink
                    .send(wire::suback(v, packet_id, &results))
                    .await
                    .is_err()
                {
                    return Some(End::Lost);
                }
                for (text, q) in granted {
                    if let Ok(sub) = parse_subscription(&text)
                        && sub.share_group.is_none()
                    {
                        self.gw
                            .hub
                            .deliver_retained(&self.tenant, self.session, &sub.filter, q);
                    }
                }
                None
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let n = filters.len();
                for f in filters {
                    self.gw.hub.unsubscribe(&self.tenant, self.session, &f);
                }
                sink.send(wire::unsuback(v, packet_id, n))
                    .await
                    .err()
                    .map(|_| End::Lost)
            }
            Inbound::PingReq => sink.send(wire::pingresp(v)).await.err().map(|_| End::Lost),
            Inbound::Disconnect {
                with_will,
                session_expiry_secs,
            } => {
                if let Some(secs) = session_expiry_secs {
                    self.session_expiry = (secs > 0).then(|| {
                        Duration::from_secs(u64::from(secs))
                            .min(self.gw.settings.session_expiry_max)
                    });
                }
                Some(End::Normal { with_will })
            }
            Inbound::Connect(_) => Some(End::Closed(CloseReason::ProtocolError)),
            Inbound::Unsupported(what) => {
                tracing::debug!(client = %self.client_id, what, "unsupported MQTT packet");
                Some(End::Closed(if what == "QoS 2 flow" {
                    CloseReason::QosNotSupported
                } else {
                    CloseReason::ProtocolError
                }))
            }
        }
    }

    async fn answer(
        &mut self,
        sink: &mut Sink,
        request: &DeviceRequest,
        payload: &[u8],
    ) -> Option<End> {
        let origin = onramp_service::RequestOrigin {
            tenant: &self.tenant,
            client_id: &self.client_id,
            source: &self.source,
            claim: self.claim.as_ref(),
        };
        let replies = self
            .gw
            .onramp
            .device_request(&origin, request, payload)
            .await;
        for reply in replies {
            match reply.audience {
                Audience::Subscribers => {
                    let message =
                        Message::new(&reply.topic, reply.payload, QoS::AtLeastOnce, false);
                    self.gw.hub.publish(&self.tenant, &message);
                }
                Audience::Requester => {
                    if !self
                        .authorizer
                        .allows(Action::Receive, Resource::Topic(&reply.topic))
                    {
                        continue;
                    }
                    let out = onramp_broker::Outgoing {
                        message: Message::new(&reply.topic, reply.payload, QoS::AtMostOnce, false),
                        packet_id: None,
                        dup: false,
                    };
                    count_out(&out);
                    if sink.send(wire::publish(self.version, &out)).await.is_err() {
                        return Some(End::Lost);
                    }
                }
            }
        }
        None
    }

    fn subscribe_one(&mut self, text: &str, qos: u8) -> Result<QoS, SubscribeRefusal> {
        let sub = parse_subscription(text).map_err(|_| SubscribeRefusal::InvalidFilter)?;
        if !self
            .authorizer
            .allows(Action::Subscribe, Resource::TopicFilter(text))
        {
            tracing::info!(client = %self.client_id, filter = %text, "subscribe denied by policy");
            return Err(SubscribeRefusal::NotAuthorized);
        }
        // QoS 2 is granted as QoS 1.
        let q = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        // The hub counts the session's subscriptions, so a resumed session
        // and a repeated filter are counted right.
        if !self.gw.hub.subscribe(
            &self.tenant,
            self.session,
            text,
            &sub.filter,
            sub.share_group.as_deref(),
            q,
            self.gw.settings.max_subscriptions,
        ) {
            return Err(SubscribeRefusal::QuotaExceeded);
        }
        Ok(q)
    }

    /// Keeps the retained message in memory and durably; the PUBACK waits for it.
    async fn retain(&self, message: &Message) -> bool {
        self.gw.hub.set_retained(&self.tenant, message);
        let result = self
            .gw
            .onramp
            .retain_message(
                &self.tenant,
                &message.topic,
                &message.payload,
                message.qos as u8,
            )
            .await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "retained message not persisted");
        }
        result.is_ok()
    }

    fn presence(&self, connected: bool, ip: Option<&str>, end: Option<&End>) {
        let mut event = serde_json::json!({
            "clientId": self.client_id,
            "timestamp": ms_now(),
            "eventType": if connected { "connected" } else { "disconnected" },
            "sessionIdentifier": format!("{:032x}", self.connection),
            "principalIdentifier": self.certificate_id,
            "versionNumber": self.presence_version,
        });
        if let Some(ip) = ip {
            event["ipAddress"] = ip.into();
        }
        if let Some(end) = end {
            let (by_client, reason) = match end {
                End::Normal { .. } => (true, "CLIENT_INITIATED_DISCONNECT"),
                End::Lost => (false, "CONNECTION_LOST"),
                End::Closed(CloseReason::KeepAliveTimeout) => (false, "MQTT_KEEP_ALIVE_TIMEOUT"),
                End::Closed(CloseReason::SessionTakenOver) => (false, "DUPLICATE_CLIENTID"),
                End::Closed(CloseReason::NotAuthorized) => (false, "FORBIDDEN_ACCESS"),
                End::Closed(CloseReason::ShuttingDown | CloseReason::Administrative) => {
                    (false, "SERVER_INITIATED_DISCONNECT")
                }
                End::Closed(_) => (false, "CLIENT_ERROR"),
            };
            event["clientInitiatedDisconnect"] = by_client.into();
            event["disconnectReason"] = reason.into();
        }
        let topic = format!(
            "$aws/events/presence/{}/{}",
            if connected {
                "connected"
            } else {
                "disconnected"
            },
            self.client_id
        );
        let message = Message::new(&topic, event.to_string(), QoS::AtLeastOnce, false);
        self.gw.hub.publish(&self.tenant, &message);
    }

    async fn finish(self, end: End) {
        let publish_will = match &end {
            End::Normal { with_will } => *with_will,
            End::Lost | End::Closed(CloseReason::KeepAliveTimeout) => true,
            // A taken-over, revoked or malformed client does not get its will.
            End::Closed(_) => false,
        };
        if publish_will && let Some(w) = &self.will {
            let qos = if w.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let message = Message::new(&w.topic, w.payload.clone(), qos, w.retain);
            if w.retain {
                self.retain(&message).await;
            }
            self.gw.hub.publish(&self.tenant, &message);
        }
        let keep = if self.persistent {
            self.session_expiry
        } else {
            None
        };
        let detached = self
            .gw
            .hub
            .detach(&self.tenant, self.session, self.connection, keep);
        let device = self.claim.is_none();
        if device && (detached || matches!(end, End::Closed(CloseReason::SessionTakenOver))) {
            self.presence(false, None, Some(&end));
        }
        if device && detached {
            self.gw
                .onramp
                .device_presence(&self.tenant, &self.thing_name, false)
                .await;
        }
        tracing::debug!(client = %self.client_id, "MQTT client disconnected");
    }
}

fn count_out(out: &onramp_broker::Outgoing) {
    let qos = if out.message.qos == QoS::AtLeastOnce {
        "1"
    } else {
        "0"
    };
    metrics::counter!("onramp_mqtt_messages_out_total", "qos" => qos).increment(1);
}
