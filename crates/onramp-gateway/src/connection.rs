//! One MQTT connection: CONNECT and authentication, then packets in and
//! deliveries out until either side ends it.

use crate::counters::COUNTERS;
use crate::hub::{Backlog, ReceiveCheck, ToConnection};
use crate::listener::Gateway;
use crate::tls::TlsStream;
use crate::wire::{
    self, CloseReason, ConnAckInfo, ConnectRefusal, FilterOptions, Inbound, SubscribeRefusal,
    Version,
};
use futures_util::{SinkExt, StreamExt};
use onramp_broker::{
    AliasUse, ClientLimits, InboundAliases, Incoming, Message, OutboundAliases, Outgoing, PubRec,
    QoS, SessionId, SubOptions, Transmit, send_retained,
};
use onramp_domain::DeviceRequest;
use onramp_domain::policy::{Action, Resource};
use onramp_domain::topic::{parse_subscription, validate_topic_name};
use onramp_service::{Audience, Authorizer, ClaimContext, DeviceIdentity, ServiceError};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::framing::MqttFramed;

/// Buffers are held only while they hold bytes (see `framing`).
type Conn = MqttFramed<TlsStream, MqttCodec>;
type Sink = futures_util::stream::SplitSink<Conn, MqttPacket>;

/// Deliveries buffered towards one connection before it counts as too slow.
const OUTBOUND_CAPACITY: usize = 1024;
/// Deliveries written per flush.
const WRITE_BATCH: usize = 64;
/// How long a connection the server closed is still read (and discarded).
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Requests on reserved topics read and not yet answered, per connection;
/// beyond this the connection's socket is not read until one is answered.
const REQUESTS_AHEAD: usize = 64;

/// A request on a reserved topic, for the connection's request task.
struct Request {
    request: DeviceRequest,
    payload: bytes::Bytes,
    qos: QoS,
    packet_id: Option<u16>,
}

/// A request answered: the replies addressed to the requester, and the
/// acknowledgement the PUBLISH is owed.
struct Answer {
    replies: Vec<Message>,
    qos: QoS,
    packet_id: Option<u16>,
}

/// The connection's request task: requests on reserved topics are answered
/// here, one at a time in the order they arrived (so replies keep their
/// order), while the connection goes on reading and routing other
/// messages. Its answers go back to the connection to be written with the
/// acknowledgement; replies to subscribers are published from here.
struct Requests {
    tx: mpsc::Sender<Request>,
    answers: mpsc::UnboundedReceiver<Answer>,
    /// Set when the server closed the connection (a revocation, a takeover,
    /// a protocol error): requests read but not yet started are not carried out.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

fn ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Serves one connection. Setting it up (CONNECT, authentication, attaching
/// its session) takes far more state than serving it afterwards: that part
/// runs boxed and is freed before the connection settles into its long
/// life, so the task that lives as long as the connection stays small.
pub(crate) fn run(
    gw: Arc<Gateway>,
    stream: TlsStream,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let set_up = Box::pin(set_up(gw, stream, peer));
    async move {
        if let Some(live) = set_up.await {
            live.serve().await;
        }
    }
}

async fn set_up(gw: Arc<Gateway>, stream: TlsStream, peer: SocketAddr) -> Option<Box<Live>> {
    let chain: Vec<Vec<u8>> = stream
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default();
    let mut framed = MqttFramed::new(stream, MqttCodec::Version(VersionCodec));
    let version = match tokio::time::timeout(gw.settings.connect_timeout, framed.next()).await {
        Ok(Some(Ok((MqttPacket::Version(v), _)))) => v,
        _ => {
            metrics::counter!("onramp_mqtt_connects_total", "outcome" => "not_mqtt").increment(1);
            return None;
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
            Inbound::Connect(c) => *c,
            _ => return None,
        },
        _ => return None,
    };
    let source = peer.ip().to_string();
    if connect.auth_method.is_some() {
        // Enhanced authentication (MQTT 5 AUTH) is not offered: the client
        // certificate is the credential.
        metrics::counter!("onramp_mqtt_connects_total", "outcome" => refusal_name(ConnectRefusal::BadAuthMethod))
            .increment(1);
        let _ = framed
            .send(wire::connack_refused(
                version,
                ConnectRefusal::BadAuthMethod,
            ))
            .await;
        return None;
    }
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
            return None;
        }
    };
    Session::start(gw, framed, version, connect, admitted, peer).await
}

fn refusal_name(why: ConnectRefusal) -> &'static str {
    match why {
        ConnectRefusal::NotAuthorized => "not_authorized",
        ConnectRefusal::BadClientId => "bad_client_id",
        ConnectRefusal::ServerUnavailable => "unavailable",
        ConnectRefusal::RateExceeded => "rate_limited",
        ConnectRefusal::BadAuthMethod => "bad_auth_method",
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
    let identity = match gw.onramp.authenticate_device_or_renewal(chain).await {
        Ok(identity) => identity,
        Err(e) => {
            tracing::info!(%source, reason = %e, "MQTT connection refused");
            if matches!(e, ServiceError::Forbidden(_)) {
                // A revoked or superseded certificate still trying: noted for the audit checks.
                gw.onramp
                    .observe_refused_connection(chain, &connect.client_id, source)
                    .await;
            }
            return Err(match e {
                ServiceError::Internal(_) | ServiceError::Unavailable { .. } => {
                    ConnectRefusal::ServerUnavailable
                }
                _ => ConnectRefusal::NotAuthorized,
            });
        }
    };
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
    /// The CONNECT's Session Expiry Interval was 0 (MQTT 5): DISCONNECT may not raise it.
    expiry_was_zero: bool,
    presence_version: u64,
    /// Topic aliases Onramp uses towards this client, and those it set.
    out_aliases: OutboundAliases,
    in_aliases: InboundAliases,
    /// QoS 2 messages from the client that may await PUBREL at once.
    receive_max: usize,
    /// Set on a claim-certificate connection: it may only provision.
    claim: Option<ClaimContext>,
    source: String,
    /// AWS strict mode applies (QoS 2 refused).
    strict: bool,
    /// Deliveries of the last PUBLISH to connections that were behind, and
    /// the acknowledgement it is owed once they are handed over (and the
    /// persistent-session writes it waits for).
    backlog: Option<(Backlog, QoS, Option<u16>, Option<u64>)>,
    /// Started at the first request on a reserved topic.
    requests: Option<Requests>,
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
    ) -> Option<Box<Live>> {
        let (tx, rx) = mpsc::channel::<ToConnection>(OUTBOUND_CAPACITY);
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
        let v5 = version == Version::V5;
        let client = ClientLimits {
            receive_max: connect.receive_max.unwrap_or(u16::MAX),
            max_packet_size: connect.max_packet_size.filter(|_| v5),
            v5,
            topic_aliases: v5 && connect.topic_alias_max > 0,
        };
        if a.identity.claim.is_none() {
            // Who used which certificate, client id and address: for the audit checks.
            gw.onramp.observe_connection(
                &a.identity.tenant,
                &a.identity.certificate_serial,
                &a.identity.thing_name,
                &a.client_id,
                &peer.ip().to_string(),
                false,
            );
        }
        let attached = gw.hub.attach(
            &a.identity.tenant,
            &a.client_id,
            &a.identity.thing_name,
            &a.identity.certificate_serial,
            connect.clean_start,
            connection,
            tx,
            receive,
            client,
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
            return None;
        };
        let (mut sink, stream) = framed.split();
        // A persistent session is stored, and what it holds is written
        // before the CONNACK; a clean session is never stored.
        if persistent || !connect.clean_start {
            let will = connect.will.as_ref().filter(|_| persistent).map(|w| {
                let message = Message::new(
                    &w.topic,
                    w.payload.clone(),
                    QoS::from_u8(w.qos).unwrap_or(QoS::AtLeastOnce),
                    w.retain,
                )
                .with_properties(w.properties.clone());
                (message, w.delay_secs)
            });
            let stored = gw.hub.set_persistence(
                &a.identity.tenant,
                attached.session,
                connection,
                session_expiry.filter(|_| persistent),
                will,
            );
            if let Some(n) = stored {
                gw.hub.durable(n).await;
            }
        }
        // AWS strict mode, for the whole listener or for the things a
        // policy asking for it covers.
        let strict = gw.settings.aws_strict || a.authorizer.aws_strict();
        let receive_max =
            u16::try_from(gw.settings.session_limits.max_inflight.max(1)).unwrap_or(u16::MAX);
        // An MQTT 5 keep-alive above the server's maximum is lowered and the
        // client told so (Server Keep Alive); an MQTT 3.1.1 client cannot be
        // told, so its own is kept. 0, no keep-alive, stays.
        let keep_alive = match connect.keep_alive {
            k if k == 0 || !v5 => k,
            k => k.min(gw.settings.max_keep_alive_secs.max(1)),
        };
        let info = ConnAckInfo {
            session_present: attached.session_present,
            assigned_client_id: a.assigned.then(|| a.client_id.clone()),
            receive_max,
            max_packet_size: gw.settings.max_packet_bytes,
            session_expiry_secs: match (version, session_expiry) {
                (Version::V5, Some(d)) => u32::try_from(d.as_secs()).ok(),
                _ => None,
            },
            server_keep_alive: v5.then_some(keep_alive),
            max_qos: if strict {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            },
            topic_alias_max: gw.settings.topic_alias_max,
            response_info: (v5 && connect.request_response_info)
                .then(|| format!("things/{}/response", a.identity.thing_name)),
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
            expiry_was_zero: connect.session_expiry_secs == Some(0),
            presence_version: attached.presence_version,
            out_aliases: OutboundAliases::new(if v5 { connect.topic_alias_max } else { 0 }),
            in_aliases: InboundAliases::new(if v5 { gw.settings.topic_alias_max } else { 0 }),
            receive_max: usize::from(receive_max),
            claim: a.identity.claim.clone(),
            source: peer.ip().to_string(),
            strict,
            backlog: None,
            requests: None,
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
            return None;
        }
        if sink.send(wire::connack_ok(version, &info)).await.is_err() {
            s.finish(End::Lost).await;
            return None;
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
        for will in attached.wills {
            s.publish_will(will).await;
        }
        for t in attached.resend {
            let packet = match t {
                Transmit::Publish(out) => {
                    count_out(&out);
                    s.publish_packet(&out)
                }
                Transmit::Release(id) => wire::pubrel(version, id, true),
            };
            if sink.feed(packet).await.is_err() {
                s.finish(End::Lost).await;
                return None;
            }
        }
        if sink.flush().await.is_err() {
            s.finish(End::Lost).await;
            return None;
        }
        let idle = match keep_alive {
            0 => None,
            k => Some(Duration::from_millis(u64::from(k) * 1500)),
        };
        Some(Box::new(Live {
            s,
            sink,
            stream,
            rx,
            idle,
        }))
    }
}

/// A connection after CONNACK: what it needs for the rest of its life.
struct Live {
    s: Session,
    sink: Sink,
    stream: futures_util::stream::SplitStream<Conn>,
    rx: mpsc::Receiver<ToConnection>,
    idle: Option<Duration>,
}

impl Live {
    async fn serve(mut self: Box<Self>) {
        let version = self.s.version;
        let end = self
            .s
            .pump(&mut self.sink, &mut self.stream, &mut self.rx, self.idle)
            .await;
        let closed_by_server = matches!(end, End::Closed(_));
        if closed_by_server && let Some(r) = &self.s.requests {
            r.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let End::Closed(why) = &end
            && let Some(p) = wire::disconnect(version, *why)
        {
            let _ = self.sink.send(p).await;
        }
        let _ = self.sink.close().await;
        // Boxed: ending a session takes more state than waiting for packets.
        Box::pin(self.s.finish(end)).await;
        if closed_by_server {
            // The client may still be writing what it sent before it read
            // the DISCONNECT: reading on for a moment (and discarding it)
            // lets it read the DISCONNECT rather than see its writes fail
            // on a reset connection.
            let _ = Box::pin(tokio::time::timeout(CLOSE_LINGER, async {
                while let Some(Ok(_)) = self.stream.next().await {}
            }))
            .await;
        }
    }
}

impl Session {
    async fn pump(
        &mut self,
        sink: &mut Sink,
        stream: &mut futures_util::stream::SplitStream<Conn>,
        rx: &mut mpsc::Receiver<ToConnection>,
        idle: Option<Duration>,
    ) -> End {
        // One keep-alive deadline for the connection's life: a read only
        // notes its time, and the timer is moved when it fires early.
        let mut last_read = tokio::time::Instant::now();
        let keep_alive = tokio::time::sleep(idle.unwrap_or(Duration::from_secs(86_400)));
        tokio::pin!(keep_alive);
        // The work done on an event (handling a packet, writing deliveries
        // or an answer, holding this publisher) runs boxed: inline, the
        // largest of them would size the connection's task for its whole
        // life, though an idle connection only ever waits in the select.
        loop {
            let answered = async {
                match &mut self.requests {
                    Some(r) => r.answers.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(ToConnection::Deliver(out)) => {
                        if Box::pin(self.write_deliveries(sink, rx, *out)).await.is_err() {
                            return End::Lost;
                        }
                    }
                    Some(ToConnection::Close(why)) => return End::Closed(why),
                    None => return End::Closed(CloseReason::Administrative),
                },
                Some(answer) = answered => {
                    if let Some(end) = Box::pin(self.write_answer(sink, answer)).await {
                        return end;
                    }
                }
                packet = stream.next() => {
                    last_read = tokio::time::Instant::now();
                    match packet {
                        None => return End::Lost,
                        // A socket error (a reset, a close without close_notify) is a lost connection.
                        Some(Err(rmqtt_codec::error::DecodeError::Io(_))) => return End::Lost,
                        Some(Err(e)) => {
                            tracing::debug!(client = %self.client_id, error = %e, "undecodable MQTT packet");
                            let too_large = matches!(e, rmqtt_codec::error::DecodeError::MaxSizeExceeded { .. });
                            return End::Closed(if too_large { CloseReason::PacketTooLarge } else { CloseReason::MalformedPacket });
                        }
                        Some(Ok((packet, _))) => {
                            if let Some(end) = Box::pin(self.handle(sink, wire::inbound(packet))).await {
                                return end;
                            }
                            if let Some(backlog) = self.backlog.take() {
                                if let Some(end) = Box::pin(self.settle(sink, rx, backlog)).await {
                                    return end;
                                }
                                // Held by the receivers, not silent.
                                last_read = tokio::time::Instant::now();
                            }
                        }
                    }
                }
                () = &mut keep_alive, if idle.is_some() => {
                    let due = last_read + idle.unwrap_or_default();
                    if due <= tokio::time::Instant::now() {
                        return End::Closed(CloseReason::KeepAliveTimeout);
                    }
                    keep_alive.as_mut().reset(due);
                }
            }
        }
    }

    /// Holds this publisher (its socket is not read, its acknowledgement not
    /// sent) until the connections its last message goes to have taken it,
    /// or the hold limit has passed; meanwhile its own deliveries flow.
    async fn settle(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::Receiver<ToConnection>,
        (backlog, qos, packet_id, written): (Backlog, QoS, Option<u16>, Option<u64>),
    ) -> Option<End> {
        let hub = self.gw.hub.clone();
        let tenant = self.tenant.clone();
        let settled = hub.settle(&tenant, backlog);
        tokio::pin!(settled);
        loop {
            tokio::select! {
                biased;
                () = &mut settled => break,
                msg = rx.recv() => match msg {
                    Some(ToConnection::Deliver(out)) => {
                        if self.write_deliveries(sink, rx, *out).await.is_err() {
                            return Some(End::Lost);
                        }
                    }
                    Some(ToConnection::Close(why)) => return Some(End::Closed(why)),
                    None => return Some(End::Closed(CloseReason::Administrative)),
                },
            }
        }
        if qos != QoS::AtMostOnce {
            // Deliveries handed over late may have reached persistent
            // sessions: their writes commit before the acknowledgement.
            let late = Some(hub.last_write()).filter(|n| *n > 0);
            if let Some(n) = written.max(late) {
                hub.durable(n).await;
            }
        }
        self.ack(sink, qos, packet_id, false).await
    }

    /// Writes a request's replies to the requester, then its acknowledgement.
    async fn write_answer(&mut self, sink: &mut Sink, answer: Answer) -> Option<End> {
        for message in answer.replies {
            let out = Outgoing {
                message,
                packet_id: None,
                dup: false,
                subscription_ids: Vec::new(),
                expiry_secs: None,
            };
            count_out(&out);
            let packet = self.publish_packet(&out);
            if sink.feed(packet).await.is_err() {
                return Some(End::Lost);
            }
        }
        if let Some(end) = self.ack(sink, answer.qos, answer.packet_id, false).await {
            return Some(end);
        }
        sink.flush().await.err().map(|_| End::Lost)
    }

    /// Hands a request to the connection's request task, starting it first.
    async fn request(&mut self, request: Request) -> Option<End> {
        let requests = self.requests.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(REQUESTS_AHEAD);
            let (answer_tx, answers) = mpsc::unbounded_channel();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            tokio::spawn(answer_requests(
                self.gw.clone(),
                RequestContext {
                    tenant: self.tenant.clone(),
                    client_id: self.client_id.clone(),
                    source: self.source.clone(),
                    claim: self.claim.clone(),
                    certificate_id: self.certificate_id.clone(),
                    authorizer: self.authorizer.clone(),
                },
                rx,
                answer_tx,
                stop.clone(),
            ));
            Requests { tx, answers, stop }
        });
        requests
            .tx
            .send(request)
            .await
            .err()
            .map(|_| End::Closed(CloseReason::Administrative))
    }

    async fn write_deliveries(
        &mut self,
        sink: &mut Sink,
        rx: &mut mpsc::Receiver<ToConnection>,
        first: onramp_broker::Outgoing,
    ) -> Result<(), ()> {
        count_out(&first);
        let packet = self.publish_packet(&first);
        sink.feed(packet).await.map_err(|_| ())?;
        for _ in 0..WRITE_BATCH {
            match rx.try_recv() {
                Ok(ToConnection::Deliver(out)) => {
                    count_out(&out);
                    let packet = self.publish_packet(&out);
                    sink.feed(packet).await.map_err(|_| ())?;
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
            Inbound::Publish(p) => self.on_publish(sink, *p).await,
            Inbound::PubAck(id) => {
                let more = self.gw.hub.puback(&self.tenant, self.session, id);
                self.write_more(sink, more).await
            }
            Inbound::PubRec {
                packet_id,
                accepted,
            } => match self
                .gw
                .hub
                .pubrec(&self.tenant, self.session, packet_id, accepted)
            {
                PubRec::Release => {
                    // Once PUBREL is out the client may forget the packet
                    // id: the session must not send the PUBLISH again.
                    self.stored().await;
                    sink.send(wire::pubrel(v, packet_id, true))
                        .await
                        .err()
                        .map(|_| End::Lost)
                }
                PubRec::Unknown => sink
                    .send(wire::pubrel(v, packet_id, false))
                    .await
                    .err()
                    .map(|_| End::Lost),
                PubRec::Done(more) => self.write_more(sink, more).await,
            },
            Inbound::PubRel(id) => {
                let found = self.gw.hub.pubrel(&self.tenant, self.session, id);
                // After PUBCOMP the client may use the id for a new message.
                if found {
                    self.stored().await;
                }
                sink.send(wire::pubcomp(v, id, found))
                    .await
                    .err()
                    .map(|_| End::Lost)
            }
            Inbound::PubComp(id) => {
                let more = self.gw.hub.pubcomp(&self.tenant, self.session, id);
                self.write_more(sink, more).await
            }
            Inbound::Subscribe {
                packet_id,
                id,
                filters,
            } => {
                let mut results = Vec::with_capacity(filters.len());
                let mut granted = Vec::new();
                for (text, opts) in filters {
                    let shared = parse_subscription(&text).is_ok_and(|s| s.share_group.is_some());
                    if shared && opts.no_local {
                        // MQTT 5 section 3.8.3.1: No Local on a shared subscription.
                        return Some(End::Closed(CloseReason::ProtocolError));
                    }
                    let r = self.subscribe_one(&text, opts, id);
                    if let Ok((q, existed)) = r {
                        granted.push((text, q, existed, opts));
                    }
                    results.push(r.map(|(q, _)| q));
                }
                self.stored().await;
                if sink
                    .send(wire::suback(v, packet_id, &results))
                    .await
                    .is_err()
                {
                    return Some(End::Lost);
                }
                for (text, q, existed, opts) in granted {
                    if let Ok(sub) = parse_subscription(&text)
                        && send_retained(opts.retain_handling, existed, sub.share_group.is_some())
                    {
                        let options = SubOptions {
                            qos: q,
                            no_local: opts.no_local,
                            retain_as_published: opts.retain_as_published,
                            id,
                        };
                        self.gw.hub.deliver_retained(
                            &self.tenant,
                            self.session,
                            &sub.filter,
                            options,
                        );
                    }
                }
                None
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let found: Vec<bool> = filters
                    .iter()
                    .map(|f| self.gw.hub.unsubscribe(&self.tenant, self.session, f))
                    .collect();
                self.stored().await;
                sink.send(wire::unsuback(v, packet_id, &found))
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
                    if secs > 0 && self.expiry_was_zero {
                        // MQTT 5 section 3.14.2.2.2: a session that was to end
                        // with the connection cannot be made to outlive it now.
                        return Some(End::Closed(CloseReason::ProtocolError));
                    }
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
                Some(End::Closed(CloseReason::ProtocolError))
            }
        }
    }

    /// Subscribes one filter; returns the QoS granted and whether the
    /// session already had this subscription.
    fn subscribe_one(
        &mut self,
        text: &str,
        opts: FilterOptions,
        id: Option<u32>,
    ) -> Result<(QoS, bool), SubscribeRefusal> {
        let sub = parse_subscription(text).map_err(|_| SubscribeRefusal::InvalidFilter)?;
        if !self
            .authorizer
            .allows(Action::Subscribe, Resource::TopicFilter(text))
        {
            tracing::info!(client = %self.client_id, filter = %text, "subscribe denied by policy");
            return Err(SubscribeRefusal::NotAuthorized);
        }
        let mut q = QoS::from_u8(opts.qos).unwrap_or(QoS::AtLeastOnce);
        if self.strict && q == QoS::ExactlyOnce {
            // AWS strict: QoS 2 is granted as QoS 1, as AWS IoT does.
            q = QoS::AtLeastOnce;
        }
        let options = SubOptions {
            qos: q,
            no_local: opts.no_local,
            retain_as_published: opts.retain_as_published,
            id,
        };
        // The hub counts the session's subscriptions, so a resumed session
        // and a repeated filter are counted right.
        let existed = self
            .gw
            .hub
            .subscribe(
                &self.tenant,
                self.session,
                text,
                &sub.filter,
                sub.share_group.as_deref(),
                options,
                self.gw.settings.max_subscriptions,
            )
            .ok_or(SubscribeRefusal::QuotaExceeded)?;
        Ok((q, existed))
    }

    /// The PUBLISH packet for a delivery, with a topic alias when the client
    /// takes them.
    fn publish_packet(&mut self, out: &Outgoing) -> rmqtt_codec::MqttPacket {
        let alias = if self.out_aliases.enabled() {
            self.out_aliases.assign(&out.message.topic)
        } else {
            AliasUse::None
        };
        wire::publish(self.version, out, alias)
    }

    async fn write_more(&mut self, sink: &mut Sink, more: Vec<Outgoing>) -> Option<End> {
        for out in more {
            count_out(&out);
            let packet = self.publish_packet(&out);
            if sink.feed(packet).await.is_err() {
                return Some(End::Lost);
            }
        }
        sink.flush().await.err().map(|_| End::Lost)
    }

    /// Acknowledges a client's QoS 1 or 2 PUBLISH (`refused`: MQTT 5 only).
    async fn ack(
        &self,
        sink: &mut Sink,
        qos: QoS,
        packet_id: Option<u16>,
        refused: bool,
    ) -> Option<End> {
        let packet = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => wire::puback(self.version, id, refused),
            (QoS::ExactlyOnce, Some(id)) => wire::pubrec(self.version, id, refused),
            _ => return None,
        };
        sink.send(packet).await.err().map(|_| End::Lost)
    }

    async fn on_publish(&mut self, sink: &mut Sink, p: wire::PublishIn) -> Option<End> {
        let v = self.version;
        if p.has_subscription_ids {
            return Some(End::Closed(CloseReason::ProtocolError));
        }
        let topic = match self.in_aliases.resolve(&p.topic, p.topic_alias) {
            Ok(t) => t,
            Err(_) => return Some(End::Closed(CloseReason::TopicAliasInvalid)),
        };
        let Some(qos) = QoS::from_u8(p.qos) else {
            return Some(End::Closed(CloseReason::MalformedPacket));
        };
        if qos == QoS::ExactlyOnce && self.strict {
            // AWS strict: QoS 2 is refused as AWS IoT does (CONNACK says maximum QoS 1).
            return Some(End::Closed(CloseReason::QosNotSupported));
        }
        if validate_topic_name(&topic).is_err() || topic.len() > self.gw.settings.max_topic_bytes {
            return Some(End::Closed(CloseReason::TopicNameInvalid));
        }
        if p.payload.len() > self.gw.settings.max_payload_bytes {
            return Some(End::Closed(CloseReason::PacketTooLarge));
        }
        if p.retain && topic.starts_with("$aws/") {
            return Some(End::Closed(CloseReason::RetainNotSupported));
        }
        let allowed = !is_reserved_for_server(&topic)
            && self
                .authorizer
                .allows(Action::Publish, Resource::Topic(&topic))
            && (!p.retain
                || self
                    .authorizer
                    .allows(Action::RetainPublish, Resource::Topic(&topic)));
        if !allowed {
            tracing::info!(client = %self.client_id, %topic, "publish denied by policy");
            return match v {
                // MQTT 3.1.1 has no negative acknowledgement: close, as AWS IoT does.
                Version::V3 => Some(End::Closed(CloseReason::NotAuthorized)),
                Version::V5 => self.ack(sink, qos, p.packet_id, true).await,
            };
        }
        // The writes of persistent sessions this PUBLISH causes commit
        // before it is acknowledged.
        let mut written = None;
        if qos == QoS::ExactlyOnce {
            let Some(id) = p.packet_id else {
                return Some(End::Closed(CloseReason::MalformedPacket));
            };
            match self
                .gw
                .hub
                .incoming_qos2(&self.tenant, self.session, id, self.receive_max)
            {
                Incoming::New => {
                    if self.persistent {
                        written = Some(self.gw.hub.last_write());
                    }
                }
                // Received before (a DUP resend): acknowledged again, not routed again.
                Incoming::Duplicate => return self.ack(sink, qos, p.packet_id, false).await,
                Incoming::OverQuota => {
                    return Some(End::Closed(CloseReason::ReceiveMaximumExceeded));
                }
            }
        }
        COUNTERS.messages_in(qos).increment(1);
        // Requests on reserved topics (provisioning, shadows, jobs) go
        // to the service, through the connection's request task; its
        // replies come back addressed either to this connection or to
        // subscribers. The acknowledgement follows the answer, so a
        // request acknowledged is one whose write is durable.
        if let Some(request) = DeviceRequest::parse(&topic) {
            // The inbound QoS 2 id of a persistent session is stored before
            // the request task can acknowledge it.
            if let Some(n) = written {
                self.gw.hub.durable(n).await;
            }
            return self
                .request(Request {
                    request,
                    payload: p.payload,
                    qos,
                    packet_id: p.packet_id,
                })
                .await;
        }
        let message = Message::new(&topic, p.payload, qos, p.retain)
            .with_properties(p.properties)
            .with_expiry(self.gw.hub.now(), p.expiry_secs);
        if p.retain && !Box::pin(self.retain(&message)).await {
            return Some(End::Closed(CloseReason::QuotaExceeded));
        }
        let (_, backlog, routed) = self
            .gw
            .hub
            .publish_held(&self.tenant, &message, self.session);
        let written = if qos == QoS::AtMostOnce {
            None
        } else {
            written.max(routed)
        };
        if !backlog.is_empty() {
            // Acknowledged, and the next packet read, once settled.
            self.backlog = Some((backlog, qos, p.packet_id, written));
            return None;
        }
        if let Some(n) = written {
            self.gw.hub.durable(n).await;
        }
        self.ack(sink, qos, p.packet_id, false).await
    }

    /// For a persistent session: waits until its changes so far are written.
    async fn stored(&self) {
        if self.persistent {
            self.gw.hub.durable(self.gw.hub.last_write()).await;
        }
    }

    /// Publishes a will (or any message of this client outside a PUBLISH),
    /// keeping it as retained first when it asks to be.
    async fn publish_will(&self, message: Message) {
        if message.retain {
            self.retain(&message).await;
        }
        self.gw.hub.publish(&self.tenant, &message, None);
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
        self.gw.hub.publish(&self.tenant, &message, None);
    }

    async fn finish(self, end: End) {
        let publish_will = match &end {
            End::Normal { with_will } => *with_will,
            End::Lost | End::Closed(CloseReason::KeepAliveTimeout) => true,
            // A taken-over, revoked or malformed client does not get its will.
            End::Closed(_) => false,
        };
        let keep = if self.persistent {
            self.session_expiry
        } else {
            None
        };
        let will = match (&self.will, publish_will) {
            (Some(w), true) => {
                let qos = QoS::from_u8(w.qos).unwrap_or(QoS::AtLeastOnce);
                // The will's expiry counts from when it is published: after
                // its delay, or the session's end if that comes first.
                let delay = Duration::from_secs(u64::from(w.delay_secs))
                    .min(keep.unwrap_or(Duration::ZERO));
                let published_at = self
                    .gw
                    .hub
                    .now()
                    .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                let message = Message::new(&w.topic, w.payload.clone(), qos, w.retain)
                    .with_properties(w.properties.clone())
                    .with_expiry(published_at, w.expiry_secs);
                Some((message, w.delay_secs))
            }
            _ => None,
        };
        let detached =
            match self
                .gw
                .hub
                .detach(&self.tenant, self.session, self.connection, keep, will)
            {
                Some(due) => {
                    if let Some(w) = due {
                        self.publish_will(w).await;
                    }
                    true
                }
                None => false,
            };
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

fn count_out(out: &Outgoing) {
    COUNTERS.messages_out(out.message.qos).increment(1);
}

/// What the request task needs of its connection.
struct RequestContext {
    tenant: String,
    client_id: String,
    source: String,
    claim: Option<ClaimContext>,
    /// The certificate the device connected with (rotation replaces it).
    certificate_id: String,
    authorizer: Authorizer,
}

/// Answers one connection's requests in order. It outlives the connection
/// by the requests already read: those are still carried out (as a request
/// written before a disconnect is), their replies to the requester dropped.
async fn answer_requests(
    gw: Arc<Gateway>,
    c: RequestContext,
    mut requests: mpsc::Receiver<Request>,
    answers: mpsc::UnboundedSender<Answer>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    while let Some(r) = requests.recv().await {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let origin = onramp_service::RequestOrigin {
            tenant: &c.tenant,
            client_id: &c.client_id,
            source: &c.source,
            claim: c.claim.as_ref(),
            certificate_id: Some(&c.certificate_id),
        };
        let replies = gw
            .onramp
            .device_request(&origin, &r.request, &r.payload)
            .await;
        let mut direct = Vec::new();
        for reply in replies {
            match reply.audience {
                Audience::Subscribers => {
                    let message =
                        Message::new(&reply.topic, reply.payload, QoS::AtLeastOnce, false);
                    gw.hub.publish(&c.tenant, &message, None);
                }
                Audience::Requester => {
                    if c.authorizer
                        .allows(Action::Receive, Resource::Topic(&reply.topic))
                    {
                        direct.push(Message::new(
                            &reply.topic,
                            reply.payload,
                            QoS::AtMostOnce,
                            false,
                        ));
                    }
                }
            }
        }
        let _ = answers.send(Answer {
            replies: direct,
            qos: r.qos,
            packet_id: r.packet_id,
        });
    }
}
