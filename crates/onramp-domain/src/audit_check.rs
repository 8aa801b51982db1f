//! Audit checks in the manner of AWS IoT Device Defender: pure functions
//! that look at a snapshot of the registry (and of recent connection
//! attempts) and return findings. The service gathers the snapshot, stores
//! the findings and sends them as events.

use crate::{
    CertStatus, Certificate, ClaimCertificate, Device, DeviceStatus, ProvisioningTemplateRecord,
    UnixTime,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

const DAY: i64 = 86_400;

/// Every check.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    DeviceCertificateExpiring,
    CaCertificateExpiring,
    RevokedCertificateStillActive,
    DeviceCertificateShared,
    OverlyPermissivePolicy,
    ConflictingClientIds,
    DeviceNeverSeen,
    ClaimCertificatePermissive,
}

impl CheckName {
    pub const ALL: [CheckName; 8] = [
        CheckName::DeviceCertificateExpiring,
        CheckName::CaCertificateExpiring,
        CheckName::RevokedCertificateStillActive,
        CheckName::DeviceCertificateShared,
        CheckName::OverlyPermissivePolicy,
        CheckName::ConflictingClientIds,
        CheckName::DeviceNeverSeen,
        CheckName::ClaimCertificatePermissive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckName::DeviceCertificateExpiring => "device-certificate-expiring",
            CheckName::CaCertificateExpiring => "ca-certificate-expiring",
            CheckName::RevokedCertificateStillActive => "revoked-certificate-still-active",
            CheckName::DeviceCertificateShared => "device-certificate-shared",
            CheckName::OverlyPermissivePolicy => "overly-permissive-policy",
            CheckName::ConflictingClientIds => "conflicting-client-ids",
            CheckName::DeviceNeverSeen => "device-never-seen",
            CheckName::ClaimCertificatePermissive => "claim-certificate-permissive",
        }
    }

    pub fn parse(s: &str) -> Option<CheckName> {
        CheckName::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn severity(self) -> Severity {
        match self {
            CheckName::RevokedCertificateStillActive
            | CheckName::DeviceCertificateShared
            | CheckName::OverlyPermissivePolicy => Severity::Critical,
            CheckName::CaCertificateExpiring
            | CheckName::ConflictingClientIds
            | CheckName::ClaimCertificatePermissive => Severity::High,
            CheckName::DeviceCertificateExpiring => Severity::Medium,
            CheckName::DeviceNeverSeen => Severity::Low,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One thing a check found about one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub check: CheckName,
    /// `certificate:<serial>`, `ca:<id>`, `policy:<name>`, `client:<id>`, `device:<thing>`, `claim:<serial>`.
    pub resource: String,
    pub detail: String,
}

impl Finding {
    fn new(check: CheckName, resource: String, detail: String) -> Finding {
        Finding {
            check,
            resource,
            detail,
        }
    }
}

/// Tunables of the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSettings {
    /// A device certificate expiring within this many days is a finding.
    pub device_cert_expiry_days: i64,
    /// The same for CA certificates.
    pub ca_expiry_days: i64,
    /// A device registered longer than this and never connected is a finding.
    pub never_seen_days: i64,
    /// A claim certificate valid longer than this is a finding.
    pub claim_max_validity_days: i64,
    /// Connection attempts older than this are not looked at.
    pub lookback_secs: i64,
}

impl Default for CheckSettings {
    fn default() -> Self {
        CheckSettings {
            device_cert_expiry_days: 30,
            ca_expiry_days: 90,
            never_seen_days: 30,
            claim_max_validity_days: 365,
            lookback_secs: DAY,
        }
    }
}

/// A CA certificate: Onramp's issuing or root CA, or a registered manufacturer CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSummary {
    pub id: String,
    pub not_after: UnixTime,
}

/// A connection attempt seen by the MQTT gateway, aggregated per certificate,
/// client id and source address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionObservation {
    pub serial: String,
    pub thing_name: String,
    pub client_id: String,
    pub source: String,
    /// Refused because the certificate was not active (revoked, superseded, ...).
    pub refused: bool,
    pub count: i64,
    pub first_at: UnixTime,
    pub last_at: UnixTime,
}

/// What the checks look at, for one tenant.
#[derive(Debug, Clone, Default)]
pub struct AuditSnapshot {
    pub certificates: Vec<Certificate>,
    pub cas: Vec<CaSummary>,
    pub devices: Vec<Device>,
    /// Policies by name: their current document.
    pub policies: Vec<(String, String)>,
    pub claims: Vec<ClaimCertificate>,
    pub templates: Vec<ProvisioningTemplateRecord>,
    pub connections: Vec<ConnectionObservation>,
}

/// Runs the chosen checks (all when `only` is empty); findings in a stable order.
pub fn run_checks(
    snapshot: &AuditSnapshot,
    only: &[CheckName],
    settings: &CheckSettings,
    now: UnixTime,
) -> Vec<Finding> {
    let wanted = |c: CheckName| only.is_empty() || only.contains(&c);
    let mut out = Vec::new();
    if wanted(CheckName::DeviceCertificateExpiring) {
        out.extend(device_certificates_expiring(
            &snapshot.certificates,
            settings,
            now,
        ));
    }
    if wanted(CheckName::CaCertificateExpiring) {
        out.extend(ca_certificates_expiring(&snapshot.cas, settings, now));
    }
    let recent: Vec<&ConnectionObservation> = snapshot
        .connections
        .iter()
        .filter(|o| o.last_at >= now - settings.lookback_secs)
        .collect();
    if wanted(CheckName::RevokedCertificateStillActive) {
        out.extend(revoked_still_connecting(&snapshot.certificates, &recent));
    }
    if wanted(CheckName::DeviceCertificateShared) {
        out.extend(shared_certificates(&recent));
    }
    if wanted(CheckName::OverlyPermissivePolicy) {
        for (name, doc) in &snapshot.policies {
            if let Some(why) = permissive_policy(doc) {
                out.push(Finding::new(
                    CheckName::OverlyPermissivePolicy,
                    format!("policy:{name}"),
                    why,
                ));
            }
        }
    }
    if wanted(CheckName::ConflictingClientIds) {
        out.extend(conflicting_client_ids(&recent));
    }
    if wanted(CheckName::DeviceNeverSeen) {
        out.extend(devices_never_seen(&snapshot.devices, settings, now));
    }
    if wanted(CheckName::ClaimCertificatePermissive) {
        out.extend(permissive_claims(
            &snapshot.claims,
            &snapshot.templates,
            settings,
            now,
        ));
    }
    out.sort();
    out
}

pub fn device_certificates_expiring(
    certs: &[Certificate],
    settings: &CheckSettings,
    now: UnixTime,
) -> Vec<Finding> {
    certs
        .iter()
        .filter(|c| c.status == CertStatus::Active)
        .filter(|c| c.not_after <= now + settings.device_cert_expiry_days * DAY)
        .map(|c| {
            let detail = if c.not_after <= now {
                format!(
                    "the certificate of {} expired at {}",
                    c.thing_name, c.not_after
                )
            } else {
                format!(
                    "the certificate of {} expires in {} days",
                    c.thing_name,
                    (c.not_after - now) / DAY
                )
            };
            Finding::new(
                CheckName::DeviceCertificateExpiring,
                format!("certificate:{}", c.serial),
                detail,
            )
        })
        .collect()
}

pub fn ca_certificates_expiring(
    cas: &[CaSummary],
    settings: &CheckSettings,
    now: UnixTime,
) -> Vec<Finding> {
    cas.iter()
        .filter(|c| c.not_after <= now + settings.ca_expiry_days * DAY)
        .map(|c| {
            Finding::new(
                CheckName::CaCertificateExpiring,
                format!("ca:{}", c.id),
                format!(
                    "the CA certificate expires in {} days",
                    (c.not_after - now).max(0) / DAY
                ),
            )
        })
        .collect()
}

/// Revoked or superseded certificates whose device still tries to connect.
pub fn revoked_still_connecting(
    certs: &[Certificate],
    recent: &[&ConnectionObservation],
) -> Vec<Finding> {
    let status: BTreeMap<&str, CertStatus> = certs
        .iter()
        .map(|c| (c.serial.as_str(), c.status))
        .collect();
    let mut attempts: BTreeMap<&str, (i64, UnixTime, &str)> = BTreeMap::new();
    for o in recent.iter().filter(|o| o.refused) {
        let e = attempts
            .entry(o.serial.as_str())
            .or_insert((0, 0, o.thing_name.as_str()));
        e.0 += o.count;
        e.1 = e.1.max(o.last_at);
    }
    attempts
        .into_iter()
        .filter_map(|(serial, (count, last, thing))| {
            let s = status.get(serial)?;
            matches!(s, CertStatus::Revoked | CertStatus::Superseded).then(|| {
                Finding::new(
                    CheckName::RevokedCertificateStillActive,
                    format!("certificate:{serial}"),
                    format!(
                        "the {s} certificate of {thing} tried to connect {count} times, last at {last}"
                    ),
                )
            })
        })
        .collect()
}

/// Connections are noted when they are made, so two client ids of one
/// certificate connecting within this long of each other count as at once.
pub const SHARED_KEY_WINDOW_SECS: i64 = 300;

/// The client id and source recorded for a certificate's connections beyond
/// the first few of a recording window: a certificate connecting under an
/// endless stream of new client ids is one row, not one per id.
pub const OTHER_CLIENTS: &str = "*";

fn overlaps(a: &ConnectionObservation, b: &ConnectionObservation, slack: i64) -> bool {
    a.first_at <= b.last_at + slack && b.first_at <= a.last_at + slack
}

/// One certificate connected under several client ids within
/// [`SHARED_KEY_WINDOW_SECS`] of each other, or from several source
/// addresses over interleaved periods (each address connecting again after
/// the other did; one move to a new address is not a finding): a copied key.
pub fn shared_certificates(recent: &[&ConnectionObservation]) -> Vec<Finding> {
    let mut by_serial: BTreeMap<&str, Vec<&ConnectionObservation>> = BTreeMap::new();
    for o in recent.iter().filter(|o| !o.refused) {
        by_serial.entry(o.serial.as_str()).or_default().push(o);
    }
    let mut out = Vec::new();
    for (serial, obs) in by_serial {
        let mut clients = BTreeSet::new();
        let mut sources = BTreeSet::new();
        for (i, a) in obs.iter().enumerate() {
            for b in &obs[i + 1..] {
                if a.client_id != b.client_id && overlaps(a, b, SHARED_KEY_WINDOW_SECS) {
                    clients.insert(a.client_id.as_str());
                    clients.insert(b.client_id.as_str());
                }
                if a.source != b.source && overlaps(a, b, 0) {
                    sources.insert(a.source.as_str());
                    sources.insert(b.source.as_str());
                }
            }
        }
        if clients.len() > 1 || sources.len() > 1 {
            out.push(Finding::new(
                CheckName::DeviceCertificateShared,
                format!("certificate:{serial}"),
                format!(
                    "used at once by client ids [{}] from addresses [{}]",
                    clients.into_iter().collect::<Vec<_>>().join(", "),
                    sources.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    out
}

/// One client id used by several identities (things) over the same
/// period: they keep taking the session from each other.
pub fn conflicting_client_ids(recent: &[&ConnectionObservation]) -> Vec<Finding> {
    let mut by_client: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // Folded connections name no client id: they cannot conflict.
    for o in recent
        .iter()
        .filter(|o| !o.refused && o.client_id != OTHER_CLIENTS)
    {
        by_client
            .entry(o.client_id.as_str())
            .or_default()
            .insert(o.thing_name.as_str());
    }
    by_client
        .into_iter()
        .filter(|(_, things)| things.len() > 1)
        .map(|(client, things)| {
            Finding::new(
                CheckName::ConflictingClientIds,
                format!("client:{client}"),
                format!(
                    "client id used by [{}]",
                    things.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
        .collect()
}

pub fn devices_never_seen(
    devices: &[Device],
    settings: &CheckSettings,
    now: UnixTime,
) -> Vec<Finding> {
    devices
        .iter()
        .filter(|d| d.status == DeviceStatus::Active && d.last_seen_at.is_none())
        .filter(|d| d.created_at <= now - settings.never_seen_days * DAY)
        .map(|d| {
            Finding::new(
                CheckName::DeviceNeverSeen,
                format!("device:{}", d.thing_name),
                format!(
                    "registered {} days ago and never connected",
                    (now - d.created_at) / DAY
                ),
            )
        })
        .collect()
}

pub fn permissive_claims(
    claims: &[ClaimCertificate],
    templates: &[ProvisioningTemplateRecord],
    settings: &CheckSettings,
    now: UnixTime,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in claims
        .iter()
        .filter(|c| c.status == CertStatus::Active && c.not_after > now)
    {
        let mut why = Vec::new();
        let validity = (c.not_after - c.not_before) / DAY;
        if validity > settings.claim_max_validity_days {
            why.push(format!(
                "valid for {validity} days (more than {})",
                settings.claim_max_validity_days
            ));
        }
        let template = templates.iter().find(|t| t.name == c.template);
        if template.is_some_and(|t| t.serial_allow.is_none()) {
            why.push(format!("template {} has no serial allow-list", c.template));
        }
        if !why.is_empty() {
            out.push(Finding::new(
                CheckName::ClaimCertificatePermissive,
                format!("claim:{}", c.serial),
                why.join("; "),
            ));
        }
    }
    out
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Why a policy document is too permissive, if it is: an Allow of `*` or
/// `iot:*` actions, of `*` resources, or of topic wildcards not tied to the
/// connecting thing (`${iot:Connection.Thing.ThingName}` or `${iot:ClientId}`),
/// which lets a device act on other things' topics.
pub fn permissive_policy(document: &str) -> Option<String> {
    let doc: Value = serde_json::from_str(document).ok()?;
    let statements = match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(s @ Value::Object(_)) => vec![s],
        _ => return None,
    };
    let mut why = Vec::new();
    for s in statements {
        if s.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        let actions = strings(s.get("Action"));
        let resources = strings(s.get("Resource"));
        if actions.iter().any(|a| *a == "*" || *a == "iot:*") {
            why.push("allows every action (iot:*)".to_string());
        }
        if resources.contains(&"*") {
            why.push("allows every resource (*)".to_string());
            continue;
        }
        let topical = actions.iter().any(|a| {
            matches!(
                *a,
                "*" | "iot:*" | "iot:Publish" | "iot:Subscribe" | "iot:Receive"
            )
        });
        if !topical {
            continue;
        }
        for r in resources {
            let Some(pos) = r.find(":topic/").or_else(|| r.find(":topicfilter/")) else {
                continue;
            };
            let path = &r[pos..];
            let scoped = path.contains("${iot:Connection.Thing.ThingName}")
                || path.contains("${iot:ClientId}");
            let wild = path.contains('*') || path.contains('#') || path.contains('+');
            if wild && !scoped {
                why.push(format!("{r} reaches other things' topics"));
            }
        }
    }
    why.dedup();
    (!why.is_empty()).then(|| why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 2_000_000_000;

    fn cert(serial: &str, status: CertStatus, not_after: i64) -> Certificate {
        Certificate {
            serial: serial.into(),
            tenant: "default".into(),
            thing_name: format!("thing-{serial}"),
            fingerprint: String::new(),
            pem: String::new(),
            not_before: NOW - 100 * DAY,
            not_after,
            status,
            issued_at: NOW - 100 * DAY,
            revoked_at: None,
            revocation_reason: None,
            superseded_by: None,
            issuer_ca: None,
        }
    }

    fn device(name: &str, created: i64, seen: Option<i64>) -> Device {
        Device {
            tenant: "default".into(),
            thing_name: name.into(),
            serial_number: name.into(),
            device_class: None,
            hardware_revision: None,
            firmware_version: None,
            attributes: Default::default(),
            thing_groups: vec![],
            status: DeviceStatus::Active,
            created_at: created,
            updated_at: created,
            last_seen_at: seen,
        }
    }

    fn obs(
        serial: &str,
        thing: &str,
        client: &str,
        source: &str,
        refused: bool,
    ) -> ConnectionObservation {
        ConnectionObservation {
            serial: serial.into(),
            thing_name: thing.into(),
            client_id: client.into(),
            source: source.into(),
            refused,
            count: 3,
            first_at: NOW - 600,
            last_at: NOW - 10,
        }
    }

    fn checks(s: &AuditSnapshot, c: CheckName) -> Vec<Finding> {
        run_checks(s, &[c], &CheckSettings::default(), NOW)
    }

    #[test]
    fn device_certificate_expiring_is_found_only_when_close() {
        let s = AuditSnapshot {
            certificates: vec![
                cert("a", CertStatus::Active, NOW + 5 * DAY),
                cert("b", CertStatus::Active, NOW + 200 * DAY),
                cert("c", CertStatus::Revoked, NOW + 5 * DAY),
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::DeviceCertificateExpiring);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].resource, "certificate:a");
    }

    #[test]
    fn ca_expiring_is_found_only_when_close() {
        let s = AuditSnapshot {
            cas: vec![
                CaSummary {
                    id: "issuing".into(),
                    not_after: NOW + 10 * DAY,
                },
                CaSummary {
                    id: "root".into(),
                    not_after: NOW + 3000 * DAY,
                },
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::CaCertificateExpiring);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "ca:issuing");
    }

    #[test]
    fn revoked_certificate_still_trying_is_found() {
        let mut s = AuditSnapshot {
            certificates: vec![
                cert("r", CertStatus::Revoked, NOW + 100 * DAY),
                cert("s", CertStatus::Superseded, NOW + 100 * DAY),
                cert("ok", CertStatus::Active, NOW + 100 * DAY),
            ],
            connections: vec![obs("r", "t1", "t1", "10.0.0.1", true)],
            ..Default::default()
        };
        let f = checks(&s, CheckName::RevokedCertificateStillActive);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "certificate:r");
        // Without attempts, or with attempts long ago: nothing.
        s.connections[0].last_at = NOW - 2 * DAY;
        assert!(checks(&s, CheckName::RevokedCertificateStillActive).is_empty());
        s.connections.clear();
        assert!(checks(&s, CheckName::RevokedCertificateStillActive).is_empty());
        // Successful connections of an active certificate are no finding.
        s.connections = vec![obs("ok", "t", "t", "10.0.0.1", false)];
        assert!(checks(&s, CheckName::RevokedCertificateStillActive).is_empty());
    }

    #[test]
    fn shared_certificate_is_found_when_used_at_once() {
        let mut s = AuditSnapshot {
            connections: vec![
                obs("k", "t", "t", "10.0.0.1", false),
                obs("k", "t", "t-copy", "10.0.0.2", false),
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::DeviceCertificateShared);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "certificate:k");
        // Two client ids hours apart: no finding.
        s.connections[0].first_at = NOW - 20_000;
        s.connections[0].last_at = NOW - 20_000;
        s.connections[1].first_at = NOW - 10;
        assert!(checks(&s, CheckName::DeviceCertificateShared).is_empty());
        // Two client ids connecting a minute apart: a finding.
        s.connections[0].first_at = NOW - 70;
        s.connections[0].last_at = NOW - 70;
        assert_eq!(checks(&s, CheckName::DeviceCertificateShared).len(), 1);
        // One client id that moved to a new address: no finding.
        s.connections[1].client_id = "t".into();
        assert!(checks(&s, CheckName::DeviceCertificateShared).is_empty());
        // The same client id alternating between two addresses: a finding.
        s.connections[0].first_at = NOW - 600;
        s.connections[0].last_at = NOW - 5;
        assert_eq!(checks(&s, CheckName::DeviceCertificateShared).len(), 1);
        // One client from one address: none either.
        s.connections.truncate(1);
        assert!(checks(&s, CheckName::DeviceCertificateShared).is_empty());
    }

    #[test]
    fn conflicting_client_ids_are_found() {
        let mut s = AuditSnapshot {
            connections: vec![
                obs("a", "thing-a", "shared-id", "10.0.0.1", false),
                obs("b", "thing-b", "shared-id", "10.0.0.2", false),
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::ConflictingClientIds);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "client:shared-id");
        s.connections[1].client_id = "own-id".into();
        assert!(checks(&s, CheckName::ConflictingClientIds).is_empty());
    }

    #[test]
    fn never_seen_devices_are_found() {
        let s = AuditSnapshot {
            devices: vec![
                device("old", NOW - 40 * DAY, None),
                device("new", NOW - DAY, None),
                device("seen", NOW - 40 * DAY, Some(NOW - DAY)),
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::DeviceNeverSeen);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "device:old");
    }

    #[test]
    fn permissive_policies_are_found() {
        let star = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#;
        assert!(permissive_policy(star).is_some());
        let wide = r#"{"Statement":{"Effect":"Allow","Action":["iot:Subscribe"],"Resource":["arn:aws:iot:*:*:topicfilter/devices/#"]}}"#;
        assert!(permissive_policy(wide).is_some());
        let scoped = r#"{"Statement":[{"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":["arn:aws:iot:*:*:topic/devices/${iot:Connection.Thing.ThingName}/*"]},{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"}]}"#;
        assert_eq!(permissive_policy(scoped), None);
        let deny = r#"{"Statement":[{"Effect":"Deny","Action":"iot:*","Resource":"*"}]}"#;
        assert_eq!(permissive_policy(deny), None);
        let s = AuditSnapshot {
            policies: vec![
                ("open".into(), star.into()),
                ("tight".into(), scoped.into()),
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::OverlyPermissivePolicy);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].resource, "policy:open");
    }

    fn claim(serial: &str, validity_days: i64, template: &str) -> ClaimCertificate {
        ClaimCertificate {
            serial: serial.into(),
            tenant: "default".into(),
            template: template.into(),
            certificate_id: String::new(),
            pem: String::new(),
            not_before: NOW - DAY,
            not_after: NOW - DAY + validity_days * DAY,
            status: CertStatus::Active,
            created_at: NOW - DAY,
            revoked_at: None,
            created_by: "t".into(),
            replaced_by: None,
        }
    }

    fn template(name: &str, allow: Option<Vec<String>>) -> ProvisioningTemplateRecord {
        ProvisioningTemplateRecord {
            tenant: "default".into(),
            name: name.into(),
            kind: crate::TemplateKind::Fleet,
            description: String::new(),
            enabled: true,
            default_version: 1,
            latest_version: 1,
            serial_allow: allow,
            serial_deny: vec![],
            hook_url: None,
            created_at: NOW,
            updated_at: NOW,
        }
    }

    #[test]
    fn permissive_claims_are_found() {
        let mut s = AuditSnapshot {
            claims: vec![claim("long", 3650, "listed"), claim("open", 90, "open")],
            templates: vec![
                template("listed", Some(vec!["SN1".into()])),
                template("open", None),
            ],
            ..Default::default()
        };
        let f = checks(&s, CheckName::ClaimCertificatePermissive);
        assert_eq!(f.len(), 2, "{f:?}");
        s.claims = vec![claim("fine", 90, "listed")];
        assert!(checks(&s, CheckName::ClaimCertificatePermissive).is_empty());
    }

    #[test]
    fn names_round_trip() {
        for c in CheckName::ALL {
            assert_eq!(CheckName::parse(c.as_str()), Some(c));
            assert_eq!(
                serde_json::to_value(c).unwrap(),
                Value::String(c.as_str().into())
            );
        }
    }
}
