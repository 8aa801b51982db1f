//! MQTT 3.1.1 and 5.0 packets, translated to and from one internal form so
//! that the session logic exists once. The codec is rmqtt-codec.

use bytes::Bytes;
use onramp_broker::{Outgoing, QoS};
use rmqtt_codec::types::QoS as WireQoS;
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use std::num::NonZeroU16;

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
}

/// What a client sent, whatever its protocol version.
#[derive(Debug)]
pub enum Inbound {
    Connect(ConnectRequest),
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
        packet_id: Option<u16>,
        /// v5 topic alias use, which Onramp does not offer.
        uses_alias: bool,
    },
    PubAck(u16),
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, u8)>,
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
    /// QoS 2 flow packets, AUTH, or packets only a server sends.
    Unsupported(&'static str),
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRefusal {
    NotAuthorized,
    BadClientId,
    ServerUnavailable,
    RateExceeded,
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
    }
}

fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
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
        v3::Packet::Connect(c) => Inbound::Connect(ConnectRequest {
            client_id: c.client_id.to_string(),
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            session_expiry_secs: None,
            will: c.last_will.map(|w| Will {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_of(w.qos),
                retain: w.retain,
            }),
            receive_max: None,
        }),
        v3::Packet::Publish(p) => Inbound::Publish {
            topic: p.topic.to_string(),
            payload: p.payload,
            qos: qos_of(p.qos),
            retain: p.retain,
            packet_id: p.packet_id.map(NonZeroU16::get),
            uses_alias: false,
        },
        v3::Packet::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
        v3::Packet::Subscribe {
            packet_id,
            topic_filters,
        } => Inbound::Subscribe {
            packet_id: packet_id.get(),
            filters: topic_filters
                .into_iter()
                .map(|(f, q)| (f.to_string(), qos_of(q)))
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
        v3::Packet::PublishReceived { .. }
        | v3::Packet::PublishRelease { .. }
        | v3::Packet::PublishComplete { .. } => Inbound::Unsupported("QoS 2 flow"),
        _ => Inbound::Unsupported("server-only packet"),
    }
}

fn inbound_v5(p: v5::Packet) -> Inbound {
    match p {
        v5::Packet::Connect(c) => Inbound::Connect(ConnectRequest {
            client_id: c.client_id.to_string(),
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            session_expiry_secs: Some(c.session_expiry_interval_secs),
            will: c.last_will.map(|w| Will {
                topic: w.topic.to_string(),
                payload: w.message,
                qos: qos_of(w.qos),
                retain: w.retain,
            }),
            receive_max: c.receive_max.map(NonZeroU16::get),
        }),
        v5::Packet::Publish(p) => Inbound::Publish {
            uses_alias: p
                .properties
                .as_ref()
                .is_some_and(|props| props.topic_alias.is_some()),
            topic: p.topic.to_string(),
            payload: p.payload,
            qos: qos_of(p.qos),
            retain: p.retain,
            packet_id: p.packet_id.map(NonZeroU16::get),
        },
        v5::Packet::PublishAck(a) => Inbound::PubAck(a.packet_id.get()),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            packet_id: s.packet_id.get(),
            filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| (f.to_string(), qos_of(o.qos)))
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
        v5::Packet::PublishReceived(_)
        | v5::Packet::PublishRelease(_)
        | v5::Packet::PublishComplete(_) => Inbound::Unsupported("QoS 2 flow"),
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
            receive_max: std::num::NonZeroU16::new(info.receive_max).unwrap_or(NonZeroU16::MIN),
            max_qos: WireQoS::AtLeastOnce,
            max_packet_size: Some(info.max_packet_size),
            assigned_client_id: info.assigned_client_id.as_deref().map(Into::into),
            topic_alias_max: 0,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: false,
            shared_subscription_available: true,
            server_keepalive_sec: info.server_keep_alive,
            ..Default::default()
        }))),
    }
}

pub fn connack_refused(version: Version, why: ConnectRefusal) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: match why {
                ConnectRefusal::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
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
            },
            ..Default::default()
        }))),
    }
}

pub fn publish(version: Version, out: &Outgoing) -> MqttPacket {
    let p = rmqtt_codec::types::Publish {
        dup: out.dup,
        retain: out.message.retain,
        qos: wire_qos(out.message.qos),
        topic: out.message.topic.as_ref().into(),
        packet_id: out.packet_id.map(pid),
        payload: out.message.payload.clone(),
        properties: match version {
            Version::V3 => None,
            Version::V5 => Some(Default::default()),
        },
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
            ..Default::default()
        })),
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

pub fn unsuback(version: Version, packet_id: u16, count: usize) -> MqttPacket {
    match version {
        Version::V3 => MqttPacket::V3(v3::Packet::UnsubscribeAck {
            packet_id: pid(packet_id),
        }),
        Version::V5 => MqttPacket::V5(v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: pid(packet_id),
            properties: Default::default(),
            reason_string: None,
            status: vec![v5::UnsubscribeAckReason::Success; count],
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
        Version::V5 => Some(MqttPacket::V5(v5::Packet::Disconnect(v5::Disconnect::new(
            match why {
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
            },
        )))),
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
