//! Device connections to the MQTT gateway: who is connecting, and what their
//! policies allow. Policy management lives here too, so the REST API and the
//! CLI share it.

use crate::{Caller, Onramp, Result, ServiceError, now};
use onramp_domain::policy::{
    Action, PolicyContext, PolicyDocument, Resource, default_device_policy, evaluate,
};
use onramp_domain::{
    CertStatus, DeviceStatus, Permission, PolicyTarget, StoredPolicy, validate_thing_name,
};
use onramp_pki::parse_cert;
use std::collections::BTreeMap;
use std::sync::Arc;

/// An authenticated device connection: its registry identity and the
/// policies in force for it (read once, at connect).
#[derive(Debug, Clone)]
pub struct DeviceIdentity {
    pub tenant: String,
    pub thing_name: String,
    pub device_class: Option<String>,
    pub certificate_serial: String,
    /// SHA-256 of the certificate, lowercase hex (AWS's certificate id).
    pub certificate_id: String,
    pub subject_cn: Option<String>,
    pub attributes: BTreeMap<String, String>,
    pub policies: Arc<Vec<PolicyDocument>>,
    /// Set for a claim certificate: the connection may only provision.
    pub claim: Option<crate::ClaimContext>,
}

/// Where a connection's policies come from.
pub(crate) enum PolicySource<'a> {
    /// The documents attached to the thing, its thing type and its groups.
    Stored(&'a [StoredPolicy]),
    /// Nothing attached, and the default device policy is on.
    Default,
    /// An expired certificate that may only renew itself.
    RenewalOnly,
}

/// Policy sets already compiled, shared by every connection that holds the
/// same set. A fleet's devices mostly hold one of a handful of sets, so a
/// connection costs a pointer instead of its own parsed copy. Entries are
/// keyed by a SHA-256 over the documents' text (a changed document is a new
/// set) and held weakly: a set no connection holds any more is freed, and
/// compiled again when next needed.
#[derive(Debug, Default)]
pub(crate) struct CompiledPolicies {
    sets: std::collections::HashMap<[u8; 32], std::sync::Weak<Vec<PolicyDocument>>>,
    /// The number of entries at which dead ones are swept next.
    sweep_at: usize,
}

/// Entries kept before the first sweep of dead sets.
const COMPILED_POLICIES_SWEEP_MIN: usize = 64;

impl CompiledPolicies {
    pub(crate) fn get_or_compile(&mut self, source: &PolicySource<'_>) -> Arc<Vec<PolicyDocument>> {
        let key = Self::key(source);
        if let Some(set) = self.sets.get(&key).and_then(std::sync::Weak::upgrade) {
            return set;
        }
        let set = Arc::new(Self::compile(source));
        self.sets.insert(key, Arc::downgrade(&set));
        if self.sets.len() >= self.sweep_at {
            self.sets.retain(|_, set| set.strong_count() > 0);
            self.sets.shrink_to_fit();
            self.sweep_at = (self.sets.len() * 2).max(COMPILED_POLICIES_SWEEP_MIN);
        }
        set
    }

    /// Length-prefixed, so no two lists of documents hash the same text.
    fn key(source: &PolicySource<'_>) -> [u8; 32] {
        let mut hash = onramp_pki::Sha256Context::new();
        match source {
            PolicySource::Stored(stored) => {
                hash.update(b"stored");
                for p in stored.iter() {
                    hash.update(&(p.document.len() as u64).to_be_bytes());
                    hash.update(p.document.as_bytes());
                }
            }
            PolicySource::Default => hash.update(b"default"),
            PolicySource::RenewalOnly => hash.update(b"renewal-only"),
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&hash.finish());
        key
    }

    fn compile(source: &PolicySource<'_>) -> Vec<PolicyDocument> {
        match source {
            PolicySource::Stored(stored) => stored
                .iter()
                .filter_map(|p| match PolicyDocument::parse(&p.document) {
                    Ok(doc) => Some(doc),
                    Err(e) => {
                        tracing::error!(policy = %p.name, error = %e, "stored policy no longer parses; ignored");
                        None
                    }
                })
                .collect(),
            PolicySource::Default => vec![default_device_policy()],
            PolicySource::RenewalOnly => {
                match PolicyDocument::parse(onramp_domain::rotation::RENEWAL_ONLY_POLICY) {
                    Ok(doc) => vec![doc],
                    // A constant checked by the domain's tests; were it ever
                    // broken, nothing is allowed rather than everything.
                    Err(e) => {
                        tracing::error!(error = %e, "the renewal-only policy does not parse");
                        Vec::new()
                    }
                }
            }
        }
    }
}

/// Decides one connection's actions against its policies.
///
/// The policies are those read when the connection was admitted, and stay
/// its policies for its life (a revocation or suspension cuts the
/// connection instead), so a decision on a topic stays true as long as the
/// connection: it is remembered, per connection and per topic, for the
/// actions a message takes (`iot:Publish`, `iot:Receive`,
/// `iot:RetainPublish`). The memory is bounded and goes with the
/// connection.
#[derive(Debug, Clone)]
pub struct Authorizer {
    policies: Arc<Vec<PolicyDocument>>,
    /// Shared by the connection's clones (its receive check holds one).
    context: Arc<PolicyContext>,
    decisions: Arc<std::sync::Mutex<Decisions>>,
}

/// Topics remembered per action before the memory starts over.
const DECISIONS_PER_ACTION: usize = 256;

/// Decisions already made on topics, one map per cached action.
#[derive(Debug, Default)]
struct Decisions {
    by_action: [std::collections::HashMap<Box<str>, bool>; 3],
}

impl Decisions {
    fn slot(action: Action) -> Option<usize> {
        match action {
            Action::Publish => Some(0),
            Action::Receive => Some(1),
            Action::RetainPublish => Some(2),
            Action::Connect | Action::Subscribe => None,
        }
    }

    fn get(&self, slot: usize, topic: &str) -> Option<bool> {
        self.by_action[slot].get(topic).copied()
    }

    fn put(&mut self, slot: usize, topic: &str, allowed: bool) {
        let map = &mut self.by_action[slot];
        if map.len() >= DECISIONS_PER_ACTION {
            // Bounded: a device cycling through many topics only costs
            // evaluations again.
            map.clear();
        }
        map.insert(Box::from(topic), allowed);
    }
}

impl Authorizer {
    /// Whether a policy that applies asks for AWS strict mode (QoS 2 refused).
    pub fn aws_strict(&self) -> bool {
        self.policies.iter().any(|p| p.aws_strict())
    }

    pub fn new(policies: Arc<Vec<PolicyDocument>>, context: PolicyContext) -> Authorizer {
        Authorizer {
            policies,
            context: Arc::new(context),
            decisions: Arc::default(),
        }
    }

    pub fn allows(&self, action: Action, resource: Resource<'_>) -> bool {
        let cached = match (Decisions::slot(action), &resource) {
            (Some(slot), Resource::Topic(topic)) => Some((slot, *topic)),
            _ => None,
        };
        let known = cached.and_then(|(slot, topic)| {
            self.decisions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(slot, topic)
        });
        let allowed = match known {
            Some(allowed) => allowed,
            None => {
                let allowed =
                    evaluate(&self.policies, action, &resource, &self.context).is_allowed();
                if let Some((slot, topic)) = cached {
                    self.decisions
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(slot, topic, allowed);
                }
                allowed
            }
        };
        if !allowed {
            let name = match action {
                Action::Connect => "connect",
                Action::Publish => "publish",
                Action::Subscribe => "subscribe",
                Action::Receive => "receive",
                Action::RetainPublish => "retain_publish",
            };
            metrics::counter!("onramp_mqtt_policy_denials_total", "action" => name).increment(1);
        }
        allowed
    }
}

fn policy_name_ok(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

impl Onramp {
    /// Keeps a retained message durably (an empty payload clears the topic).
    pub async fn retain_message(
        &self,
        tenant: &str,
        topic: &str,
        payload: &[u8],
        qos: u8,
    ) -> Result<()> {
        let store = &self.inner.store;
        if payload.is_empty() {
            store.delete_retained(tenant, topic).await?;
        } else {
            store
                .put_retained(
                    &onramp_domain::RetainedRecord {
                        tenant: tenant.to_string(),
                        topic: topic.to_string(),
                        payload: payload.to_vec(),
                        qos,
                    },
                    now(),
                )
                .await?;
        }
        Ok(())
    }

    /// Writes a group of persistent MQTT session changes in one transaction
    /// (the gateway gathers every change waiting at one moment into one
    /// call: group commit).
    pub async fn write_sessions(&self, writes: &[onramp_store::SessionWrite]) -> Result<()> {
        Ok(self.inner.store.write_sessions(writes).await?)
    }

    /// Every stored persistent MQTT session, for a broker starting up.
    pub async fn load_sessions(&self) -> Result<Vec<onramp_store::StoredSession>> {
        Ok(self.inner.store.load_sessions().await?)
    }

    /// Every retained message, for a broker starting up.
    pub async fn load_retained(&self) -> Result<Vec<onramp_domain::RetainedRecord>> {
        Ok(self.inner.store.load_retained().await?)
    }

    /// The head of the identity-change feed (see [`Onramp::identity_changes`]).
    pub async fn identity_change_head(&self) -> Result<onramp_store::IdentityChangeCursor> {
        Ok(self.inner.store.identity_change_head().await?)
    }

    /// Identities whose live connections must be cut, committed since the
    /// cursor, each exactly once however late it committed. On error the
    /// cursor stays where it was, so the next call sees the same changes.
    pub async fn identity_changes(
        &self,
        cursor: &mut onramp_store::IdentityChangeCursor,
    ) -> Result<Vec<onramp_domain::RevokedIdentity>> {
        Ok(self.inner.store.identity_changes(cursor).await?)
    }

    /// Whether `client_id` is the name of a thing of the tenant: a claim
    /// connection may never use one.
    pub async fn client_id_names_thing(&self, tenant: &str, client_id: &str) -> Result<bool> {
        if validate_thing_name(client_id).is_err() {
            return Ok(false);
        }
        Ok(self
            .inner
            .store
            .get_device(tenant, client_id)
            .await?
            .is_some())
    }

    /// Forgets identity changes older than a day.
    pub async fn prune_identity_changes(&self) -> Result<u64> {
        // The outbox is read the same way, seconds behind: pruned with it.
        self.inner.store.prune_outbox(now() - 3_600).await?;
        Ok(self
            .inner
            .store
            .prune_identity_changes(now() - 86_400)
            .await?)
    }

    /// Identifies the device behind a TLS client certificate (already
    /// chain-verified by the TLS layer): the certificate must be known and
    /// active (or superseded by a rotation still in its grace period), and
    /// its device active.
    pub async fn authenticate_device(&self, chain: &[Vec<u8>]) -> Result<DeviceIdentity> {
        self.authenticate(chain, false).await
    }

    /// Like [`Onramp::authenticate_device`], for an MQTT connection: a
    /// certificate that expired within the renewal window (renewal after
    /// expiry on, never revoked, device active) gets a connection whose only
    /// policy allows asking for a new certificate.
    pub async fn authenticate_device_or_renewal(
        &self,
        chain: &[Vec<u8>],
    ) -> Result<DeviceIdentity> {
        self.authenticate(chain, true).await
    }

    async fn authenticate(&self, chain: &[Vec<u8>], renewal: bool) -> Result<DeviceIdentity> {
        let leaf = chain
            .first()
            .ok_or_else(|| ServiceError::Unauthorized("a client certificate is required".into()))?;
        let info = parse_cert(leaf)
            .map_err(|_| ServiceError::Unauthorized("unreadable client certificate".into()))?;
        let store = &self.inner.store;
        let mut cert = store
            .get_certificate_by_fingerprint(&info.fingerprint)
            .await?;
        if cert.is_none() {
            match self.authenticate_unregistered(chain, leaf, &info).await? {
                Some(crate::provisioning::UnregisteredOutcome::Claim(claim)) => {
                    return Ok(self.claim_identity(*claim, info.subject_cn));
                }
                Some(crate::provisioning::UnregisteredOutcome::JustProvisioned) => {
                    cert = store
                        .get_certificate_by_fingerprint(&info.fingerprint)
                        .await?;
                }
                // The first connection with a rotated certificate activates it
                // (looked for last: claim connections are the common case).
                None => cert = self.activate_rotation_on_connect(&info.fingerprint).await?,
            }
        }
        let cert = cert.ok_or_else(|| {
            ServiceError::Unauthorized("the client certificate is not registered".into())
        })?;
        if let Some(ca_id) = &cert.issuer_ca {
            let ca = store.get_registered_ca(ca_id).await?;
            if ca.is_none_or(|c| c.status != onramp_domain::CaStatus::Active) {
                return Err(ServiceError::Forbidden(
                    "the certificate's issuing CA is no longer active".into(),
                ));
            }
        }
        // A certificate superseded by a rotation keeps working until its
        // grace period ends, in case the device lost the new key.
        if cert.status != CertStatus::Active && !self.in_rotation_grace(&cert).await? {
            return Err(ServiceError::Forbidden(format!(
                "the client certificate is {}",
                cert.status
            )));
        }
        let device = store
            .get_device(&cert.tenant, &cert.thing_name)
            .await?
            .ok_or_else(|| ServiceError::Forbidden("the device is not registered".into()))?;
        if device.status != DeviceStatus::Active {
            return Err(ServiceError::Forbidden(format!(
                "device `{}` is {}",
                device.thing_name, device.status
            )));
        }
        // The TLS layer lets a recently expired certificate through only
        // when renewal after expiry is on; only an MQTT connection may then
        // use it, and only to renew.
        let renewing = if info.not_after < now() {
            if !renewal
                || cert.issuer_ca.is_some()
                || !self.expired_renewal_allowed(info.not_after)?
            {
                return Err(ServiceError::Forbidden(
                    "the client certificate has expired".into(),
                ));
            }
            true
        } else {
            false
        };
        let stored = store
            .policies_for_device(
                &device.tenant,
                &device.thing_name,
                device.device_class.as_deref(),
            )
            .await?;
        let source = if renewing {
            PolicySource::RenewalOnly
        } else if stored.is_empty() && self.inner.settings.default_device_policy {
            PolicySource::Default
        } else {
            PolicySource::Stored(&stored)
        };
        let policies = self
            .inner
            .compiled_policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_compile(&source);
        let attributes = device
            .attributes
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), text)
            })
            .collect();
        Ok(DeviceIdentity {
            tenant: device.tenant,
            thing_name: device.thing_name,
            device_class: device.device_class,
            certificate_serial: cert.serial,
            certificate_id: cert.fingerprint,
            subject_cn: info.subject_cn,
            attributes,
            policies,
            claim: None,
        })
    }

    /// The authorizer of one connection, once its client id is known.
    pub fn authorizer(&self, identity: &DeviceIdentity, client_id: &str) -> Authorizer {
        Authorizer::new(
            identity.policies.clone(),
            PolicyContext {
                client_id: client_id.to_string(),
                // A claim connection is no thing: thing variables stay unresolved.
                thing_name: identity
                    .claim
                    .is_none()
                    .then(|| identity.thing_name.clone()),
                thing_type_name: identity.device_class.clone(),
                thing_attributes: identity.attributes.clone(),
                cert_subject_cn: identity.subject_cn.clone(),
                cert_id: Some(identity.certificate_id.clone()),
            },
        )
    }

    /// Records that a device connected or disconnected (also its last-seen
    /// time). Queued and written in batches, so a connect storm costs a few
    /// statements instead of one per event, and a closing connection never
    /// waits for the database.
    pub async fn device_presence(&self, tenant: &str, thing_name: &str, connected: bool) {
        let tx = self.inner.presence.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(write_presence(self.inner.store.clone(), rx));
            tx
        });
        let _ = tx.send((tenant.to_string(), thing_name.to_string(), connected));
    }

    // ---- policy management ----

    /// Creates a policy or stores a new version; the document must parse.
    pub async fn put_policy(
        &self,
        caller: &Caller,
        name: &str,
        document: &str,
    ) -> Result<StoredPolicy> {
        caller.require(Permission::ManagePolicies)?;
        if !policy_name_ok(name) {
            return Err(ServiceError::BadRequest(
                "a policy name is 1 to 128 of letters, digits and +=,.@_-".into(),
            ));
        }
        PolicyDocument::parse(document)
            .map_err(|e| ServiceError::BadRequest(format!("policy document: {e}")))?;
        let now = now();
        let audit = caller.audit("policy.put", format!("policy:{name}"), String::new(), now);
        Ok(self
            .inner
            .store
            .put_policy(&caller.tenant, name, document, &audit, now)
            .await?)
    }

    pub async fn get_policy(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(StoredPolicy, Vec<PolicyTarget>)> {
        caller.require(Permission::ReadRegistry)?;
        let policy = self
            .inner
            .store
            .get_policy(&caller.tenant, name)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("policy `{name}` not found")))?;
        let targets = self
            .inner
            .store
            .policy_targets(&caller.tenant, name)
            .await?;
        Ok((policy, targets))
    }

    pub async fn list_policies(&self, caller: &Caller) -> Result<Vec<StoredPolicy>> {
        caller.require(Permission::ReadRegistry)?;
        Ok(self.inner.store.list_policies(&caller.tenant).await?)
    }

    pub async fn attach_policy(
        &self,
        caller: &Caller,
        name: &str,
        target: &PolicyTarget,
    ) -> Result<()> {
        caller.require(Permission::ManagePolicies)?;
        validate_thing_name(target.name()).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let now = now();
        let audit = caller.audit(
            "policy.attach",
            format!("policy:{name}"),
            format!("{} {}", target.kind(), target.name()),
            now,
        );
        Ok(self
            .inner
            .store
            .attach_policy(&caller.tenant, name, target, &audit, now)
            .await?)
    }

    pub async fn detach_policy(
        &self,
        caller: &Caller,
        name: &str,
        target: &PolicyTarget,
    ) -> Result<()> {
        caller.require(Permission::ManagePolicies)?;
        let audit = caller.audit(
            "policy.detach",
            format!("policy:{name}"),
            format!("{} {}", target.kind(), target.name()),
            now(),
        );
        Ok(self
            .inner
            .store
            .detach_policy(&caller.tenant, name, target, &audit)
            .await?)
    }
}

/// Drains queued presence changes: whatever arrived within a short window,
/// the last change per device wins, one statement per batch.
async fn write_presence(
    store: Arc<dyn onramp_store::Store>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, String, bool)>,
) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut latest: std::collections::HashMap<(String, String), bool> =
            std::collections::HashMap::new();
        latest.insert((first.0, first.1), first.2);
        while let Ok((t, n, c)) = rx.try_recv() {
            latest.insert((t, n), c);
            if latest.len() >= 2000 {
                break;
            }
        }
        let batch: Vec<(String, String, bool)> =
            latest.into_iter().map(|((t, n), c)| (t, n, c)).collect();
        if let Err(e) = store.set_devices_connected(&batch, now()).await {
            tracing::warn!(error = %e, count = batch.len(), "could not record presence");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, document: &str) -> StoredPolicy {
        StoredPolicy {
            tenant: "default".into(),
            name: name.into(),
            document: document.into(),
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    const ALLOW_ALL: &str = r#"{"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}"#;
    const ALLOW_CONNECT: &str = r#"{"Version": "2012-10-17", "Statement": [
      {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]}"#;

    #[test]
    fn connections_holding_the_same_policies_share_one_compiled_set() {
        let mut cache = CompiledPolicies::default();
        let a = [stored("fleet", ALLOW_ALL)];
        let b = [stored("fleet-copy", ALLOW_ALL)];
        let first = cache.get_or_compile(&PolicySource::Stored(&a));
        let second = cache.get_or_compile(&PolicySource::Stored(&b));
        assert!(Arc::ptr_eq(&first, &second), "same text, same compiled set");
        assert_eq!(first.len(), 1);

        // A changed document, or one more of them, is another set.
        let changed = [stored("fleet", ALLOW_CONNECT)];
        let other = cache.get_or_compile(&PolicySource::Stored(&changed));
        assert!(!Arc::ptr_eq(&first, &other));
        let two = [stored("fleet", ALLOW_ALL), stored("more", ALLOW_CONNECT)];
        let both = cache.get_or_compile(&PolicySource::Stored(&two));
        assert_eq!(both.len(), 2);
        assert!(!Arc::ptr_eq(&first, &both));

        // The default and the renewal-only sets are never a stored set.
        let default = cache.get_or_compile(&PolicySource::Default);
        let renewal = cache.get_or_compile(&PolicySource::RenewalOnly);
        assert_eq!(default.len(), 1);
        assert_eq!(renewal.len(), 1);
        assert!(!Arc::ptr_eq(&default, &renewal));
        assert!(cache.get_or_compile(&PolicySource::Stored(&[])).is_empty());
    }

    #[test]
    fn a_compiled_set_nobody_holds_is_freed_and_swept() {
        let mut cache = CompiledPolicies::default();
        let held = cache.get_or_compile(&PolicySource::Default);
        let weak = Arc::downgrade(&held);
        drop(held);
        assert!(weak.upgrade().is_none(), "the cache holds no set alive");
        // Many sets, each dropped at once: the map is swept, not grown.
        for i in 0..1000 {
            let doc = ALLOW_ALL.replace(r#""Resource": "*""#, &format!(r#""Resource": "t{i}""#));
            let set = cache.get_or_compile(&PolicySource::Stored(&[stored("p", &doc)]));
            drop(set);
        }
        assert!(
            cache.sets.len() <= 2 * COMPILED_POLICIES_SWEEP_MIN,
            "{}",
            cache.sets.len()
        );
    }

    #[test]
    fn a_stored_policy_that_no_longer_parses_is_left_out() {
        let mut cache = CompiledPolicies::default();
        let list = [
            stored("broken", "{not json"),
            stored("fleet", ALLOW_CONNECT),
        ];
        let set = cache.get_or_compile(&PolicySource::Stored(&list));
        assert_eq!(set.len(), 1);
    }

    fn authorizer() -> Authorizer {
        let policy = PolicyDocument::parse(
            r#"{"Version": "2012-10-17", "Statement": [
              {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
               "Resource": "arn:aws:iot:*:*:topic/things/${iot:ClientId}/*"},
              {"Effect": "Deny", "Action": "iot:Publish",
               "Resource": "arn:aws:iot:*:*:topic/things/${iot:ClientId}/secret/*"}]}"#,
        )
        .expect("a valid policy");
        let context = PolicyContext {
            client_id: "d1".into(),
            ..PolicyContext::default()
        };
        Authorizer::new(Arc::new(vec![policy]), context)
    }

    #[test]
    fn remembered_decisions_are_the_policies_decisions_per_action_and_topic() {
        let a = authorizer();
        let topics = [
            "things/d1/t",
            "things/d1/secret/k",
            "things/d2/t",
            "other",
            "things/d1/t",
        ];
        for round in 0..2 {
            for topic in topics {
                for action in [Action::Publish, Action::Receive, Action::RetainPublish] {
                    let fresh = evaluate(&a.policies, action, &Resource::Topic(topic), &a.context)
                        .is_allowed();
                    assert_eq!(
                        a.allows(action, Resource::Topic(topic)),
                        fresh,
                        "{action:?} on {topic}, round {round}"
                    );
                }
            }
        }
        assert!(a.allows(Action::Receive, Resource::Topic("things/d1/secret/k")));
        assert!(!a.allows(Action::Publish, Resource::Topic("things/d1/secret/k")));
    }

    #[test]
    fn the_memory_of_decisions_is_bounded() {
        let a = authorizer();
        for i in 0..(3 * DECISIONS_PER_ACTION) {
            let topic = format!("things/d1/{i}");
            assert!(a.allows(Action::Publish, Resource::Topic(&topic)));
            let held = a
                .decisions
                .lock()
                .map(|d| d.by_action[0].len())
                .unwrap_or(0);
            assert!(held <= DECISIONS_PER_ACTION, "{held} remembered");
        }
        assert!(!a.allows(Action::Publish, Resource::Topic("things/d9/x")));
    }
}
