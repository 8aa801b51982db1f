//! The one entry point for device requests on reserved topics. The gateway
//! recognises a request with `onramp_domain::DeviceRequest` and hands it here;
//! the answer comes back as replies, each addressed either to the requesting
//! connection only (provisioning answers carry private keys and tokens) or to
//! every permitted subscriber of its topic (shadow and jobs answers, as AWS
//! IoT publishes them). How each family's refusal looks on the wire is
//! decided here, in one place.

use crate::{ClaimContext, Onramp, now};
use onramp_domain::DeviceRequest;
use onramp_domain::provisioning::{ProvisioningRejection, ProvisioningTopic};
use serde_json::{Value, json};

/// Publishes server-originated messages (replies to requests made outside
/// MQTT, shadow deltas, job notifications) to MQTT subscribers.
pub trait MessageSink: Send + Sync {
    fn publish(&self, tenant: &str, topic: &str, payload: Vec<u8>);
}

/// Who receives a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The requesting connection only, if its policy lets it receive the topic.
    Requester,
    /// Every subscriber of the topic whose policy lets it receive it.
    Subscribers,
}

/// One message a device request produces.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReply {
    pub topic: String,
    pub payload: Vec<u8>,
    pub audience: Audience,
}

impl DeviceReply {
    pub(crate) fn to_subscribers(topic: String, payload: &Value) -> DeviceReply {
        DeviceReply {
            topic,
            payload: payload.to_string().into_bytes(),
            audience: Audience::Subscribers,
        }
    }
}

/// The connection a request came from.
#[derive(Debug, Clone, Copy)]
pub struct RequestOrigin<'a> {
    pub tenant: &'a str,
    pub client_id: &'a str,
    /// The peer's address, for rate limits and audit.
    pub source: &'a str,
    /// Set when the connection authenticated with a claim certificate.
    pub claim: Option<&'a ClaimContext>,
    /// The SHA-256 of the connection's client certificate: a device
    /// connection asking for a certificate rotates this one.
    pub certificate_id: Option<&'a str>,
}

/// The `clientToken` of a JSON request, for echoing in a refusal.
fn client_token(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let token = v.get("clientToken")?.as_str()?;
    (token.len() <= 64).then(|| token.to_string())
}

/// A jobs-style refusal: `{"code", "message", "timestamp", "clientToken"?}`.
pub(crate) fn jobs_rejection(code: &str, message: &str, payload: &[u8]) -> Value {
    let mut body = json!({"code": code, "message": message, "timestamp": now()});
    if let Some(token) = client_token(payload) {
        body["clientToken"] = token.into();
    }
    body
}

impl Onramp {
    /// Registers where server-originated messages are published (the gateway).
    pub fn set_message_sink(&self, sink: std::sync::Arc<dyn MessageSink>) {
        let _ = self.inner.sink.set(sink);
    }

    pub(crate) fn publish(&self, tenant: &str, topic: String, payload: &Value) {
        if let Some(sink) = self.inner.sink.get() {
            sink.publish(tenant, &topic, payload.to_string().into_bytes());
        }
    }

    /// Publishes replies to subscribers on this node and, on a database
    /// several nodes may share, through the outbox to the other nodes'
    /// subscribers too: for messages caused by the operator or the
    /// scheduler, whose devices may be connected anywhere.
    pub(crate) async fn publish_everywhere(&self, tenant: &str, replies: Vec<DeviceReply>) {
        if replies.is_empty() {
            return;
        }
        if let Some(sink) = self.inner.sink.get() {
            for r in &replies {
                sink.publish(tenant, &r.topic, r.payload.clone());
            }
        }
        if self.backend() != "postgres" {
            return;
        }
        let messages: Vec<onramp_store::OutboxMessage> = replies
            .into_iter()
            .map(|r| onramp_store::OutboxMessage {
                tenant: tenant.to_string(),
                topic: r.topic,
                payload: r.payload,
            })
            .collect();
        if let Err(e) = self
            .inner
            .store
            .append_outbox(&messages, &self.inner.node_id, now())
            .await
        {
            tracing::warn!(error = %e, "messages for other nodes were not recorded");
        }
    }

    /// Where this node starts reading messages other nodes published.
    pub async fn outbox_head(&self) -> crate::Result<onramp_store::IdentityChangeCursor> {
        Ok(self.inner.store.outbox_head().await?)
    }

    /// Publishes to this node's subscribers the messages other nodes wrote
    /// to the outbox since `cursor`. Returns how many.
    pub async fn relay_outbox(
        &self,
        cursor: &mut onramp_store::IdentityChangeCursor,
    ) -> crate::Result<usize> {
        let messages = self.inner.store.outbox_messages(cursor).await?;
        let mut relayed = 0;
        if let Some(sink) = self.inner.sink.get() {
            for (m, origin) in messages {
                if origin != self.inner.node_id {
                    sink.publish(&m.tenant, &m.topic, m.payload);
                    relayed += 1;
                }
            }
        }
        Ok(relayed)
    }

    /// Answers one device request. The publish was already authorised by the
    /// connection's policy; delivery of each reply is authorised again by
    /// the gateway against the receiver's policy.
    pub async fn device_request(
        &self,
        origin: &RequestOrigin<'_>,
        request: &DeviceRequest,
        payload: &[u8],
    ) -> Vec<DeviceReply> {
        match request {
            DeviceRequest::Provisioning(topic) => {
                // A claim certificate provisions; it never rotates a
                // thing's certificate, even when it names one.
                let claim_refusal = match (origin.claim, topic) {
                    (None, _) | (Some(_), ProvisioningTopic::RegisterThing { .. }) => None,
                    (Some(_), _) => onramp_domain::rotation::check_claim_request(
                        onramp_domain::rotation::requested_thing(payload).as_deref(),
                    )
                    .err(),
                };
                let reply = match origin.claim {
                    Some(_) if claim_refusal.is_some() => {
                        let why = claim_refusal.map(|r| r.to_string()).unwrap_or_default();
                        self.refuse_claim_rotation(origin, &why).await;
                        crate::ProvisioningReply {
                            topic: topic.rejected(),
                            payload: ProvisioningRejection::access_denied(why).to_json(),
                            accepted: false,
                        }
                    }
                    Some(claim) => {
                        self.provisioning_request(
                            claim,
                            origin.tenant,
                            origin.client_id,
                            origin.source,
                            topic,
                            payload,
                        )
                        .await
                    }
                    // A device's own certificate: rotation for the same thing.
                    None => {
                        self.rotation_request(
                            origin.tenant,
                            origin.certificate_id,
                            origin.source,
                            topic,
                            payload,
                        )
                        .await
                    }
                };
                vec![DeviceReply {
                    topic: reply.topic,
                    payload: reply.payload,
                    audience: Audience::Requester,
                }]
            }
            DeviceRequest::Shadow(topic) => {
                let (_, replies) = self.shadow_replies(origin.tenant, topic, payload).await;
                replies
                    .into_iter()
                    .map(|(t, body)| DeviceReply::to_subscribers(t, &body))
                    .collect()
            }
            DeviceRequest::Jobs(topic) => self.jobs_request(origin.tenant, topic, payload).await,
            DeviceRequest::InvalidTopic { topic, .. } => {
                metrics::counter!("onramp_device_requests_invalid_topic_total").increment(1);
                vec![DeviceReply::to_subscribers(
                    format!("{topic}/rejected"),
                    &jobs_rejection(
                        "InvalidTopic",
                        "the topic names no operation of this API",
                        payload,
                    ),
                )]
            }
        }
    }
}
