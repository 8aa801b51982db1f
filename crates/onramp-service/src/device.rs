//! The one entry point for device requests on reserved topics. The gateway
//! recognises a request with `onramp_domain::DeviceRequest` and hands it here;
//! the answer comes back as replies, each addressed either to the requesting
//! connection only (provisioning answers carry private keys and tokens) or to
//! every permitted subscriber of its topic (shadow and jobs answers, as AWS
//! IoT publishes them). How each family's refusal looks on the wire is
//! decided here, in one place.

use crate::{ClaimContext, Onramp, now};
use onramp_domain::DeviceRequest;
use onramp_domain::provisioning::ProvisioningRejection;
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
                let reply = match origin.claim {
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
                    None => crate::ProvisioningReply {
                        topic: topic.rejected(),
                        payload: ProvisioningRejection::access_denied(
                            "only a claim certificate may use fleet provisioning",
                        )
                        .to_json(),
                        accepted: false,
                    },
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
