//! MQTT 3.1.1 and 5.0 packets, translated to and from one internal form so
//! that the session logic exists once. The codec is rmqtt-codec.

use bytes::Bytes;
use onramp_broker::{AliasUse, Outgoing, Properties, QoS, RetainHandling};
use rmqtt_codec::types::QoS as WireQoS;
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use std::num::{NonZeroU16, NonZeroU32};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 Will Delay Interval.
    pub delay_secs: u32,
    pub properties: Properties,
    pub expiry_secs: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// v5 session expiry; v3 persistent sessions use the server default.
    pub session_expiry_secs: Option<u32>,
    pub will: Option<Will>,
    pub receive_max: Option<u16>,
    pub max_packet_size: Option<u32>,
    /// The client's Topic Alias Maximum: aliases Onramp may use towards it.
    pub topic_alias_max: u16,
    pub request_response_info: bool,
    /// MQTT 5 enhanced authentication, which Onramp does not offer.
    pub auth_method: Option<String>,
}

/// A PUBLISH from a client.
#[derive(Debug)]
pub struct PublishIn {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub packet_id: Option<u16>,
    pub topic_alias: Option<u16>,
    pub properties: Properties,
    pub expiry_secs: Option<u32>,
    /// A client may not send Subscription Identifiers (protocol error).
    pub has_subscription_ids: bool,
}

/// One filter's options in a SUBSCRIBE.
#[derive(Debug, Clone, Copy)]
pub struct FilterOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl FilterOptions {
    fn plain(qos: u8) -> FilterOptions {
        FilterOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

/// What a client sent, whatever its protocol version.
#[derive(Debug)]
pub enum Inbound {
    Connect(Box<ConnectRequest>),
    Publish(Box<PublishIn>),
    PubAck(u16),
    /// PUBREC; `accepted` is false for a reason code of 0x80 or more.
    PubRec {
        packet_id: u16,
        accepted: bool,
    },
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        /// MQTT 5 Subscription Identifier.
        id: Option<u32>,
        filters: Vec<(String, FilterOptions)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        with_will: bool,
        session_expiry_secs: Option<u32>,
    },
    /// AUTH, or packets only a server sends.
    Unsupported(&'static str),
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    NotAuthorized,
    BadClientId,
    ServerUnavailable,
    RateExceeded,
    /// MQTT 5 enhanced authentication is not offered.
    BadAuthMethod,
}

/// Why a SUBSCRIBE filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeRefusal {
    NotAuthorized,
    InvalidFilter,
    QuotaExceeded,
}

/// Why the server closes the connection (v5 DISCONNECT reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ProtocolError,
    MalformedPacket,
    NotAuthorized,
    KeepAliveTimeout,
    SessionTakenOver,
    QosNotSupported,
    TopicNameInvalid,
    TopicAliasInvalid,
    PacketTooLarge,
    Administrative,
    ShuttingDown,
    RetainNotSupported,
    QuotaExceeded,
    ReceiveMaximumExceeded,
}

impl CloseReason {
    /// The Reason String sent with the DISCONNECT.
    fn text(self) -> &'static str {
        match self {
            CloseReason::ProtocolError => "protocol error",
            CloseReason::MalformedPacket => "malformed packet",
            CloseReason::NotAuthorized => "not authorized",
            CloseReason::KeepAliveTimeout => "keep alive timeout",
            CloseReason::SessionTakenOver => "another connection took the session over",
            CloseReason::QosNotSupported => "QoS 2 is not accepted on this server (AWS strict)",
            CloseReason::TopicNameInvalid => "topic name invalid or too long",
            CloseReason::TopicAliasInvalid => "topic alias invalid",
            CloseReason::PacketTooLarge => "packet too large",
            CloseReason::Administrative => "closed by the server",
            CloseReason::ShuttingDown => "server shutting down",
            CloseReason::RetainNotSupported => "retain is not allowed on $aws topics",
            CloseReason::QuotaExceeded => "quota exceeded",
            CloseReason::ReceiveMaximumExceeded => {
                "more QoS 2 messages awaiting PUBREL than the Receive Maximum"
            }
        }
    }
}

fn qos_of(q: WireQoS) -> u8 {
    match q {
        WireQoS::AtMostOnce => 0,
        WireQoS::AtLeastOnce => 1,
        WireQoS::ExactlyOnce => 2,
    }
}

fn wire_qos(q: QoS) -> WireQoS {
    match q {
        QoS::AtMostOnce => WireQoS::AtMostOnce,
        QoS::AtLeastOnce => WireQoS::AtLeastOnce,
        QoS::ExactlyOnce => WireQoS::ExactlyOnce,
    }
}

fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

fn user_properties(props: &v5::UserProperties) -> Vec<(String, String)> {
    props
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn inbound(packet: MqttPacket) -> Inbound {
    match packet {
        MqttPacket::V3(p) => inbound_v3(p),
        MqttPacket::V5(p) => inbound_v5(p),
        MqttPacket::Version(_) => Inbound::Unsupported("version probe"),
    }
}

fn inbound_v3(p: v3::Packet) -> Inbound {
    match p {
        v3::Packet::Connect(c) => Inbound::Connect(Box::new(ConnectRequest {
            client_id: c.client_id.to_string(),
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            session_expiry_secs: None,
            will: c.last_will.map(|w| Will {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_of(w.qos),
                retain: w.retain,
                delay_secs: 0,
                properties: Properties::default(),
                expiry_secs: None,
            }),
            receive_max: None,
            max_packet_size: None,
            topic_alias_max: 0,
            request_response_info: false,
            auth_method: None,
        })),
        v3::Packet::Publish(p) => Inbound::Publish(Box::new(PublishIn {
            topic: p.topic.to_string(),
            payload: p.payload,
            qos: qos_of(p.qos),
            retain: p.retain,
            packet_id: p.packet_id.map(NonZeroU16::get),
            topic_alias: None,
            properties: Properties::default(),
            expiry_secs: None,
            has_subscription_ids: false,
        })),
        v3::Packet::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
        v3::Packet::PublishReceived { packet_id } => Inbound::PubRec {
            packet_id: packet_id.get(),
            accepted: true,
        },
        v3::Packet::PublishRelease { packet_id } => Inbound::PubRel(packet_id.get()),
        v3::Packet::PublishComplete { packet_id } => Inbound::PubComp(packet_id.get()),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id: packet_id.get(),
            id: None,
            filters: topic_filters
                .into_iter()
                .map(|(f, q)| (f.to_string(), FilterOptions::plain(qos_of(q))))
                .collect(),
        },
        v3::Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => Inbound::Unsubscribe {
            packet_id: packet_id.get(),
            filters: topic_filters.into_iter().map(|f| f.to_string()).collect(),
        },
        v3::Packet::PingRequest => Inbound::PingReq,
        v3::Packet::Disconnect => Inbound::Disconnect {
            with_will: false,
            session_expiry_secs: None,
        },
        _ => Inbound::Unsupported("server-only packet"),
    }
}

fn retain_handling(h: v5::RetainHandling) -> RetainHandling {
    match h {
        v5::RetainHandling::AtSubscribe => RetainHandling::OnSubscribe,
        v5::RetainHandling::AtSubscribeNew => RetainHandling::OnNewSubscription,
        v5::RetainHandling::NoAtSubscribe => RetainHandling::Never,
    }
}

fn inbound_v5(p: v5::Packet) -> Inbound {
    match p {
        v5::Packet::Connect(c) => Inbound::Connect(Box::new(ConnectRequest {
            client_id: c.client_id.to_string(),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            session_expiry_secs: Some(c.session_expiry_interval_secs),
            will: c.last_will.map(|w| Will {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_of(w.qos),
                retain: w.retain,
                delay_secs: w.will_delay_interval_sec.unwrap_or(0),
                properties: Properties {
                    payload_utf8: w.is_utf8_payload.unwrap_or(false),
                    content_type: w.content_type.map(|t| t.to_string()),
                    response_topic: w.response_topic.map(|t| t.to_string()),
                    correlation_data: w.correlation_data,
                    user_properties: user_properties(&w.user_properties),
                },
                expiry_secs: w.message_expiry_interval.map(NonZeroU32::get),
            }),
            receive_max: c.receive_max.map(NonZeroU16::get),
            max_packet_size: c.max_packet_size.map(NonZeroU32::get),
            topic_alias_max: c.topic_alias_max,
            request_response_info: c.request_response_info,
            auth_method: c.auth_method.map(|m| m.to_string()),
        })),
        v5::Packet::Publish(p) => {
            let props = p.properties.unwrap_or_default();
            Inbound::Publish(Box::new(PublishIn {
                topic: p.topic.to_string(),
                payload: p.payload,
                qos: qos_of(p.qos),
                retain: p.retain,
                packet_id: p.packet_id.map(NonZeroU16::get),
                topic_alias: props.topic_alias.map(NonZeroU16::get),
                has_subscription_ids: !props.subscription_ids.is_empty(),
                expiry_secs: props.message_expiry_interval.map(NonZeroU32::get),
                properties: Properties {
                    payload_utf8: props.is_utf8_payload,
                    content_type: props.content_type.map(|t| t.to_string()),
                    response_topic: props.response_topic.map(|t| t.to_string()),
                    correlation_data: props.correlation_data,
                    user_properties: user_properties(&props.user_properties),
                },
            }))
        }
        v5::Packet::PublishAck(a) => Inbound::PubAck(a.packet_id.get()),
        v5::Packet::PublishReceived(a) => Inbound::PubRec {
            packet_id: a.packet_id.get(),
            accepted: u8::from(a.reason_code) < 0x80,
        },
        v5::Packet::PublishRelease(a) => Inbound::PubRel(a.packet_id.get()),
        v5::Packet::PublishComplete(a) => Inbound::PubComp(a.packet_id.get()),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            packet_id: s.packet_id.get(),
            id: s.id.map(NonZeroU32::get),
            filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| {
                    (
                        f.to_string(),
                        FilterOptions {
                            qos: qos_of(o.qos),
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: retain_handling(o.retain_handling),
                        },
                    )
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            packet_id: u.packet_id.get(),
            filters: u.topic_filters.into_iter().map(|f| f.to_string()).collect(),
        },
        v5::Packet::PingRequest => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry_secs: d.session_expiry_interval_secs,
        },
        v5::Packet::Auth(_) => Inbound::Unsupported("AUTH"),
        _ => Inbound::Unsupported("server-only packet"),
    }
}

pub struct ConnAckInfo {
    pub session_present: bool,
    pub assigned_client_id: Option<String>,
    pub receive_max: u16,
    pub max_packet_size: u32,
    pub session_expiry_secs: Option<u32>,
    pub server_keep_alive: Option<u16>,
    /// QoS 1 in AWS strict mode, else 2.
    pub max_qos: QoS,
    /// Topic aliases a client may use towards Onramp.
    pub topic_alias_max: u16,
    pub response_info: Option<String>,
}

pub fn connack_ok(version: Version, info: &ConnAckInfo) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: v3::ConnectAckReason::ConnectionAccepted,
            session_present: info.session_present,
        })),
        Version::V5 => MqttPacket::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
            session_present: info.session_present,
            reason_code: v5::ConnectAckReason::Success,
            session_expiry_interval_secs: info.session_expiry_secs,
            receive_max: NonZeroU16::new(info.receive_max).unwrap_or(NonZeroU16::MIN),
            max_qos: wire_qos(info.max_qos),
            max_packet_size: Some(info.max_packet_size),
            assigned_client_id: info.assigned_client_id.as_deref().map(Into::into),
            topic_alias_max: info.topic_alias_max,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            server_keepalive_sec: info.server_keep_alive,
            response_info: info.response_info.as_deref().map(Into::into),
            ..Default::default()
        }))),
    }
}

pub fn connack_refused(version: Version, why: ConnectRefusal) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: match why {
                ConnectRefusal::NotAuthorized | ConnectRefusal::BadAuthMethod => {
                    v3::ConnectAckReason::NotAuthorized
                }
                ConnectRefusal::BadClientId => v3::ConnectAckReason::IdentifierRejected,
                ConnectRefusal::ServerUnavailable | ConnectRefusal::RateExceeded => {
                    v3::ConnectAckReason::ServiceUnavailable
                }
            },
            session_present: false,
        })),
        Version::V5 => MqttPacket::V5(v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
            reason_code: match why {
                ConnectRefusal::NotAuthorized => v5::ConnectAckReason::NotAuthorized,
                ConnectRefusal::BadClientId => v5::ConnectAckReason::ClientIdentifierNotValid,
                ConnectRefusal::ServerUnavailable => v5::ConnectAckReason::ServerUnavailable,
                ConnectRefusal::RateExceeded => v5::ConnectAckReason::ConnectionRateExceeded,
                ConnectRefusal::BadAuthMethod => v5::ConnectAckReason::BadAuthenticationMethod,
            },
            reason_string: match why {
                ConnectRefusal::BadAuthMethod => Some(
                    "enhanced authentication is not supported; use the client certificate".into(),
                ),
                _ => None,
            },
            ..Default::default()
        }))),
    }
}

/// A PUBLISH to a client. MQTT 5 clients get the message's properties, its
/// remaining expiry, the subscription identifiers and the topic alias;
/// MQTT 3.1.1 clients get none of them.
pub fn publish(version: Version, out: &Outgoing, alias: AliasUse) -> MqttPacket {
    let properties = match version {
        Version::V3 => None,
        Version::V5 => {
            let m = &out.message;
            let p = m.properties.as_deref();
            Some(v5::PublishProperties {
                topic_alias: match alias {
                    AliasUse::None => None,
                    AliasUse::Set(a) | AliasUse::Use(a) => NonZeroU16::new(a),
                },
                correlation_data: p.and_then(|p| p.correlation_data.clone()),
                message_expiry_interval: out.expiry_secs.and_then(NonZeroU32::new),
                content_type: p.and_then(|p| p.content_type.as_deref().map(Into::into)),
                user_properties: p
                    .map(|p| {
                        p.user_properties
                            .iter()
                            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                            .collect()
                    })
                    .unwrap_or_default(),
                is_utf8_payload: p.is_some_and(|p| p.payload_utf8),
                response_topic: p.and_then(|p| p.response_topic.as_deref().map(Into::into)),
                subscription_ids: out
                    .subscription_ids
                    .iter()
                    .filter_map(|id| NonZeroU32::new(*id))
                    .collect(),
            })
        }
    };
    let topic = match alias {
        AliasUse::Use(_) => "".into(),
        _ => out.message.topic.as_ref().into(),
    };
    let p = rmqtt_codec::types::Publish {
        dup: out.dup,
        retain: out.message.retain,
        qos: wire_qos(out.message.qos),
        topic,
        packet_id: out.packet_id.map(pid),
        payload: out.message.payload.clone(),
        properties,
    };
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::Publish(Box::new(p))),
        Version::V5 => MqttPacket::V5(v5::Packet::Publish(Box::new(p))),
    }
}

/// PUBACK; `refused` is only expressible in v5 (v3 callers close instead).
pub fn puback(version: Version, packet_id: u16, refused: bool) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::PublishAck {
            packet_id: pid(packet_id),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::PublishAck(v5::PublishAck {
            packet_id: pid(packet_id),
            reason_code: if refused {
                v5::PublishAckReason::NotAuthorized
            } else {
                v5::PublishAckReason::Success
            },
            properties: Vec::new(),
            reason_string: refused.then(|| "not authorized by policy".into()),
        })),
    }
}

/// PUBREC for a QoS 2 PUBLISH; `refused` as for [`puback`].
pub fn pubrec(version: Version, packet_id: u16, refused: bool) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::PublishReceived {
            packet_id: pid(packet_id),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::PublishReceived(v5::PublishAck {
            packet_id: pid(packet_id),
            reason_code: if refused {
                v5::PublishAckReason::NotAuthorized
            } else {
                v5::PublishAckReason::Success
            },
            properties: Vec::new(),
            reason_string: refused.then(|| "not authorized by policy".into()),
        })),
    }
}

fn ack2(packet_id: u16, found: bool) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id: pid(packet_id),
        reason_code: if found {
            v5::PublishAck2Reason::Success
        } else {
            v5::PublishAck2Reason::PacketIdNotFound
        },
        properties: Vec::new(),
        reason_string: None,
    }
}

/// PUBREL; `found` false answers a PUBREC for an unknown id (v5: 0x92).
pub fn pubrel(version: Version, packet_id: u16, found: bool) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::PublishRelease {
            packet_id: pid(packet_id),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::PublishRelease(ack2(packet_id, found))),
    }
}

/// PUBCOMP; `found` false answers a PUBREL for an unknown id (v5: 0x92).
pub fn pubcomp(version: Version, packet_id: u16, found: bool) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::PublishComplete {
            packet_id: pid(packet_id),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::PublishComplete(ack2(packet_id, found))),
    }
}

pub fn suback(
    version: Version,
    packet_id: u16,
    results: &[Result<QoS, SubscribeRefusal>],
) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::SubscribeAck {
            packet_id: pid(packet_id),
            status: results
                .iter()
                .map(|r| match r {
                    Ok(q) => v3::SubscribeReturnCode::Success(wire_qos(*q)),
                    Err(_) => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id: pid(packet_id),
            properties: Default::default(),
            reason_string: None,
            status: results
                .iter()
                .map(|r| match r {
                    Ok(QoS::AtMostOnce) => v5::SubscribeAckReason::GrantedQos0,
                    Ok(QoS::AtLeastOnce) => v5::SubscribeAckReason::GrantedQos1,
                    Ok(QoS::ExactlyOnce) => v5::SubscribeAckReason::GrantedQos2,
                    Err(SubscribeRefusal::NotAuthorized) => v5::SubscribeAckReason::NotAuthorized,
                    Err(SubscribeRefusal::InvalidFilter) => {
                        v5::SubscribeAckReason::TopicFilterInvalid
                    }
                    Err(SubscribeRefusal::QuotaExceeded) => v5::SubscribeAckReason::QuotaExceeded,
                })
                .collect(),
        })),
    }
}

pub fn unsuback(version: Version, packet_id: u16, found: &[bool]) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::UnsubscribeAck {
            packet_id: pid(packet_id),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: pid(packet_id),
            properties: Default::default(),
            reason_string: None,
            status: found
                .iter()
                .map(|f| {
                    if *f {
                        v5::UnsubscribeAckReason::Success
                    } else {
                        v5::UnsubscribeAckReason::NoSubscriptionExisted
                    }
                })
                .collect(),
        })),
    }
}

pub fn pingresp(version: Version) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::PingResponse),
        Version::V5 => MqttPacket::V5(v5::Packet::PingResponse),
    }
}

/// A server DISCONNECT exists only in v5; v3 connections are simply closed.
pub fn disconnect(version: Version, why: CloseReason) -> Option<MqttPacket> {
    use v5::DisconnectReasonCode as R;
    match version {
        Version::V3 => None,
        Version::V5 => {
            let mut d = v5::Disconnect::new(match why {
                CloseReason::ProtocolError => R::ProtocolError,
                CloseReason::MalformedPacket => R::MalformedPacket,
                CloseReason::NotAuthorized => R::NotAuthorized,
                CloseReason::KeepAliveTimeout => R::KeepAliveTimeout,
                CloseReason::SessionTakenOver => R::SessionTakenOver,
                CloseReason::QosNotSupported => R::QosNotSupported,
                CloseReason::TopicNameInvalid => R::TopicNameInvalid,
                CloseReason::TopicAliasInvalid => R::TopicAliasInvalid,
                CloseReason::PacketTooLarge => R::PacketTooLarge,
                CloseReason::Administrative => R::AdministrativeAction,
                CloseReason::ShuttingDown => R::ServerShuttingDown,
                CloseReason::RetainNotSupported => R::RetainNotSupported,
                CloseReason::QuotaExceeded => R::QuotaExceeded,
                CloseReason::ReceiveMaximumExceeded => R::ReceiveMaximumExceeded,
            });
            d.reason_string = Some(why.text().into());
            Some(MqttPacket::V5(v5::Packet::Disconnect(d)))
        }
    }
}

/// Runs bytes through the gateway's decoding path exactly as a connection
/// does (version probe on CONNECT, then the version's codec, then the
/// translation to [`Inbound`]) and returns how many packets were decoded.
/// Decoding stops at the first error. Exists for the fuzz targets.
pub fn decode_all(bytes: &[u8], max_packet_bytes: u32) -> usize {
    use rmqtt_codec::version::ProtocolVersion;
    use tokio_util::codec::Decoder;
    let mut buf = bytes::BytesMut::from(bytes);
    let version = match rmqtt_codec::version::VersionCodec.decode(&mut buf) {
        Ok(Some(v)) => v,
        _ => return 0,
    };
    let mut codec = match version {
        ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(max_packet_bytes)),
        ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(max_packet_bytes, max_packet_bytes)),
    };
    let mut n = 0;
    while let Ok(Some((packet, _))) = codec.decode(&mut buf) {
        let _ = inbound(packet);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use onramp_broker::{Message, publish_packet_size};
    use proptest::prelude::*;
    use tokio_util::codec::Encoder;

    fn encoded_len(packet: MqttPacket) -> usize {
        let mut codec = MqttCodec::V5(v5::Codec::new(0, 0));
        let mut buf = bytes::BytesMut::new();
        match codec.encode(packet, &mut buf) {
            Ok(()) => buf.len(),
            Err(e) => panic!("encode: {e}"),
        }
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-z/]{0,40}"
    }

    proptest! {
        /// The broker core's size of a PUBLISH is exactly what the codec
        /// writes, so the client's Maximum Packet Size is judged right.
        #[test]
        fn the_cores_packet_size_is_the_encoded_size(
            topic in "[a-z/]{1,60}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            qos in 0u8..3,
            utf8 in any::<bool>(),
            content_type in proptest::option::of(text()),
            response_topic in proptest::option::of(text()),
            correlation in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)),
            users in proptest::collection::vec((text(), text()), 0..4),
            expiry in proptest::option::of(1u32..u32::MAX),
            ids in proptest::collection::vec(1u32..268_435_455, 0..3),
            v5 in any::<bool>(),
        ) {
            let qos = QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce);
            let message = Message::new(&topic, payload, qos, false)
                .with_properties(Properties {
                    payload_utf8: utf8,
                    content_type,
                    response_topic,
                    correlation_data: correlation.map(Bytes::from),
                    user_properties: users,
                })
                .with_expiry(0, expiry);
            let out = Outgoing {
                packet_id: (qos != QoS::AtMostOnce).then_some(7),
                dup: false,
                subscription_ids: ids.clone(),
                expiry_secs: expiry,
                message: message.clone(),
            };
            let version = if v5 { Version::V5 } else { Version::V3 };
            let mut codec = match version {
                Version::V5 => MqttCodec::V5(v5::Codec::new(0, 0)),
                Version::V3 => MqttCodec::V3(v3::Codec::new(0)),
            };
            let mut buf = bytes::BytesMut::new();
            prop_assert!(codec.encode(publish(version, &out, AliasUse::None), &mut buf).is_ok());
            let ids_sent = if v5 { ids.as_slice() } else { &[] };
            prop_assert_eq!(publish_packet_size(&message, ids_sent, v5, false), buf.len());
            if v5 {
                let aliased = encoded_len(publish(version, &out, AliasUse::Set(3)));
                prop_assert_eq!(publish_packet_size(&message, &ids, true, true), aliased);
                prop_assert!(encoded_len(publish(version, &out, AliasUse::Use(3))) <= aliased);
            }
        }
    }
}
