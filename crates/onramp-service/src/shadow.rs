//! Device shadows: the one implementation behind the MQTT topics
//! (`$aws/things/{thing}/shadow/...`) and the REST API. The merge, delta and
//! errors are decided by `onramp_domain::shadow`; this module reads, writes
//! with compare-and-set (so concurrent MQTT and REST updates never lose one),
//! and publishes the replies and the delta.

use crate::{Caller, Onramp, now};
use onramp_domain::shadow::{
    ShadowDocument, ShadowError, ShadowLimits, apply_update, client_token_for_reply,
    delete_response, get_response, parse_client_token, parse_update_request, validate_shadow_name,
};
use onramp_domain::{Permission, ShadowOp, ShadowTopic};
use onramp_store::StoredShadow;
use serde_json::Value;

/// Attempts at a compare-and-set write before giving up on a very hot shadow.
const CAS_ATTEMPTS: usize = 32;

fn internal(e: impl std::fmt::Display) -> ShadowError {
    tracing::error!(error = %e, "shadow storage failed");
    ShadowError::internal()
}

fn decode(stored: &StoredShadow) -> Result<Option<ShadowDocument>, ShadowError> {
    match &stored.document {
        None => Ok(None),
        Some(text) => serde_json::from_str(text).map(Some).map_err(internal),
    }
}

impl Onramp {
    fn shadow_limits(&self) -> ShadowLimits {
        ShadowLimits::default()
    }

    async fn require_thing(
        &self,
        tenant: &str,
        thing: &str,
        shadow: Option<&str>,
    ) -> Result<(), ShadowError> {
        if let Some(name) = shadow {
            validate_shadow_name(name).map_err(|_| ShadowError::no_shadow(name))?;
        }
        match self.inner.store.get_device(tenant, thing).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ShadowError::thing_not_found()),
            Err(e) => Err(internal(e)),
        }
    }

    /// Handles one shadow request and returns what it answers: the accepted
    /// payload or the rejection, and every message for subscribers
    /// (`/accepted` or `/rejected`, and for updates `/update/delta` and
    /// `/update/documents`), in the order they must be published.
    pub(crate) async fn shadow_replies(
        &self,
        tenant: &str,
        topic: &ShadowTopic,
        payload: &[u8],
    ) -> (Result<Value, ShadowError>, Vec<(String, Value)>) {
        let limits = self.shadow_limits();
        let base = topic.base();
        let op = topic.op.as_str();
        let result = self
            .shadow_request_inner(tenant, topic, payload, &limits)
            .await;
        let mut replies = Vec::new();
        match result {
            Ok((accepted, extra)) => {
                if topic.op == ShadowOp::Update
                    && let Some(v) = accepted.get("version").and_then(Value::as_i64)
                {
                    self.note_published(
                        tenant,
                        &topic.thing_name,
                        topic.shadow_name.as_deref().unwrap_or(""),
                        v,
                    );
                }
                replies.push((format!("{base}/{op}/accepted"), accepted.clone()));
                for (suffix, body) in extra {
                    replies.push((format!("{base}/{suffix}"), body));
                }
                metrics::counter!("onramp_shadow_requests_total", "op" => op, "outcome" => "accepted").increment(1);
                (Ok(accepted), replies)
            }
            Err(e) => {
                let token = client_token_for_reply(payload, &limits);
                replies.push((
                    format!("{base}/{op}/rejected"),
                    e.to_reject_json(token.as_deref(), now()),
                ));
                metrics::counter!("onramp_shadow_requests_total", "op" => op, "outcome" => "rejected").increment(1);
                (Err(e), replies)
            }
        }
    }

    /// A shadow request from outside MQTT (REST, the CLI): answered like a
    /// device's, with the replies published to MQTT subscribers.
    pub async fn shadow_request(
        &self,
        tenant: &str,
        topic: &ShadowTopic,
        payload: &[u8],
    ) -> Result<Value, ShadowError> {
        let (result, replies) = self.shadow_replies(tenant, topic, payload).await;
        for (topic, body) in replies {
            self.publish(tenant, topic, &body);
        }
        result
    }

    async fn shadow_request_inner(
        &self,
        tenant: &str,
        topic: &ShadowTopic,
        payload: &[u8],
        limits: &ShadowLimits,
    ) -> Result<(Value, Vec<(&'static str, Value)>), ShadowError> {
        let thing = &topic.thing_name;
        let name = topic.shadow_name.as_deref();
        let key = name.unwrap_or("");
        self.require_thing(tenant, thing, name).await?;
        let missing = || match name {
            Some(n) => ShadowError::no_shadow(n),
            None => ShadowError::no_shadow(thing),
        };
        let store = &self.inner.store;
        match topic.op {
            ShadowOp::Get => {
                let token = parse_client_token(payload, limits)?;
                let stored = store
                    .get_shadow(tenant, thing, key)
                    .await
                    .map_err(internal)?;
                let doc = stored
                    .as_ref()
                    .map(decode)
                    .transpose()?
                    .flatten()
                    .ok_or_else(missing)?;
                Ok((get_response(&doc, token.as_deref(), now()), Vec::new()))
            }
            ShadowOp::Delete => {
                let token = parse_client_token(payload, limits)?;
                for _ in 0..CAS_ATTEMPTS {
                    let stored = store
                        .get_shadow(tenant, thing, key)
                        .await
                        .map_err(internal)?;
                    let Some(stored) = stored.filter(|s| s.document.is_some()) else {
                        return Err(missing());
                    };
                    let tombstone = StoredShadow {
                        document: None,
                        version: stored.version,
                        updated_at: now(),
                    };
                    if store
                        .put_shadow(
                            tenant,
                            thing,
                            key,
                            Some(stored.version),
                            &tombstone,
                            &self.inner.node_id,
                            now(),
                        )
                        .await
                        .map_err(internal)?
                    {
                        let version = u64::try_from(stored.version).unwrap_or(0);
                        return Ok((
                            delete_response(version, token.as_deref(), now()),
                            Vec::new(),
                        ));
                    }
                }
                Err(ShadowError::too_many_requests())
            }
            ShadowOp::Update => {
                let request = parse_update_request(payload, limits)?;
                for _ in 0..CAS_ATTEMPTS {
                    let stored = store
                        .get_shadow(tenant, thing, key)
                        .await
                        .map_err(internal)?;
                    let current = stored.as_ref().map(decode).transpose()?.flatten();
                    let floor = stored
                        .as_ref()
                        .map_or(0, |s| u64::try_from(s.version).unwrap_or(0));
                    let outcome = apply_update(current.as_ref(), floor, &request, limits, now())?;
                    let write = StoredShadow {
                        document: Some(serde_json::to_string(&outcome.document).map_err(internal)?),
                        version: i64::try_from(outcome.document.version).map_err(internal)?,
                        updated_at: now(),
                    };
                    let expected = stored.as_ref().map(|s| s.version);
                    // The reply goes out only after this write is durable.
                    if store
                        .put_shadow(
                            tenant,
                            thing,
                            key,
                            expected,
                            &write,
                            &self.inner.node_id,
                            now(),
                        )
                        .await
                        .map_err(internal)?
                    {
                        let mut extra = Vec::new();
                        if let Some(delta) = outcome.delta {
                            extra.push(("update/delta", delta));
                        }
                        extra.push(("update/documents", outcome.documents));
                        return Ok((outcome.accepted, extra));
                    }
                }
                Err(ShadowError::too_many_requests())
            }
        }
    }

    fn note_published(&self, tenant: &str, thing: &str, shadow: &str, version: i64) {
        let mut seen = self
            .inner
            .published_shadows
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Bounded: forgetting only risks one repeated delta, which AWS allows too.
        if seen.len() > 100_000 {
            seen.clear();
        }
        let slot = seen
            .entry((tenant.to_string(), thing.to_string(), shadow.to_string()))
            .or_insert(version);
        *slot = (*slot).max(version);
    }

    /// Publishes the delta of shadows changed elsewhere (the CLI, another
    /// node) since `since`, once per version. Returns how many were published.
    pub async fn publish_shadow_changes(&self, since: i64) -> crate::Result<usize> {
        let changes = self
            .inner
            .store
            .shadows_updated_since(since, &self.inner.node_id)
            .await?;
        let mut published = 0;
        for c in changes {
            let key = (
                c.tenant.clone(),
                c.thing_name.clone(),
                c.shadow_name.clone(),
            );
            let known = {
                let seen = self
                    .inner
                    .published_shadows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                seen.get(&key).copied()
            };
            if known.is_some_and(|v| v >= c.shadow.version) {
                continue;
            }
            self.note_published(&c.tenant, &c.thing_name, &c.shadow_name, c.shadow.version);
            let Ok(Some(doc)) = decode(&c.shadow) else {
                continue;
            };
            let Some(delta) = doc.delta() else { continue };
            let topic = ShadowTopic {
                thing_name: c.thing_name.clone(),
                shadow_name: (!c.shadow_name.is_empty()).then(|| c.shadow_name.clone()),
                op: ShadowOp::Update,
            };
            let metadata =
                onramp_domain::shadow::delta_metadata(&delta, doc.metadata.desired.as_ref());
            let body = serde_json::json!({
                "state": delta,
                "metadata": metadata,
                "version": doc.version,
                "timestamp": now(),
            });
            self.publish(&c.tenant, topic.delta_topic(), &body);
            published += 1;
        }
        Ok(published)
    }

    /// REST door: the caller's tenant, read or write permission, then the same request.
    pub async fn shadow_for_caller(
        &self,
        caller: &Caller,
        topic: &ShadowTopic,
        payload: &[u8],
    ) -> Result<Value, ShadowError> {
        let permission = match topic.op {
            ShadowOp::Get => Permission::ReadRegistry,
            ShadowOp::Update | ShadowOp::Delete => Permission::ManageDevices,
        };
        if caller.require(permission).is_err() {
            return Err(ShadowError::forbidden());
        }
        self.shadow_request(&caller.tenant, topic, payload).await
    }

    /// Names of a thing's shadows ("" is the classic shadow).
    pub async fn list_shadows(&self, caller: &Caller, thing: &str) -> crate::Result<Vec<String>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self.inner.store.list_shadows(&caller.tenant, thing).await?)
    }

    /// Recent versions of a shadow, newest first (deleted versions have no document).
    pub async fn shadow_history(
        &self,
        caller: &Caller,
        thing: &str,
        name: Option<&str>,
        limit: u32,
    ) -> crate::Result<Vec<Value>> {
        caller.require(Permission::ReadRegistry)?;
        let rows = self
            .inner
            .store
            .shadow_history(&caller.tenant, thing, name.unwrap_or(""), limit)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let doc: Value = r
                    .document
                    .as_deref()
                    .and_then(|d| serde_json::from_str(d).ok())
                    .unwrap_or(Value::Null);
                serde_json::json!({"version": r.version, "at": r.updated_at, "document": doc})
            })
            .collect())
    }

    /// Things whose shadow's reported state matches `query` (for example
    /// `firmware lt 2.5.0`), in thing-name order after `after`. Scans the
    /// tenant's shadows page by page; returns at most `limit` matches.
    pub async fn query_shadows(
        &self,
        caller: &Caller,
        shadow_name: Option<&str>,
        query: &onramp_domain::shadow::ReportedQuery,
        after: Option<String>,
        limit: u32,
    ) -> crate::Result<Vec<Value>> {
        caller.require(Permission::ReadRegistry)?;
        let limit = limit.clamp(1, 1000) as usize;
        let mut cursor = after;
        let mut found = Vec::new();
        loop {
            let page = self
                .inner
                .store
                .list_shadow_documents(
                    &caller.tenant,
                    shadow_name.unwrap_or(""),
                    cursor.as_deref(),
                    500,
                )
                .await?;
            let done = page.len() < 500;
            for (thing, stored) in &page {
                let Ok(Some(doc)) = decode(stored) else {
                    continue;
                };
                if query.matches(&doc) {
                    found.push(serde_json::json!({
                        "thing_name": thing,
                        "value": query.value_in(&doc),
                        "version": doc.version,
                    }));
                    if found.len() == limit {
                        return Ok(found);
                    }
                }
            }
            cursor = page.last().map(|(t, _)| t.clone());
            if done || cursor.is_none() {
                return Ok(found);
            }
        }
    }

    /// Drops shadow history beyond the window (default 7 days) and the newest 100 versions.
    pub async fn compact_shadow_history(
        &self,
        window_secs: i64,
        keep_versions: i64,
    ) -> crate::Result<u64> {
        Ok(self
            .inner
            .store
            .compact_shadow_history(now() - window_secs, keep_versions)
            .await?)
    }
}
