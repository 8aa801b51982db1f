//! Device Shadow documents, updates and replies, as AWS IoT Core defines them.
//!
//! A device built for AWS IoT's Device Shadow service must see the same
//! documents from Onramp, so the wire shapes, the merge rules, the delta and
//! the error codes and messages below follow AWS's Device Shadow
//! documentation. Where AWS leaves a behaviour open, the rule Onramp chose is
//! stated next to the code that implements it:
//!
//! - **Size.** `desired` and `reported` together may hold
//!   [`ShadowLimits::max_state_bytes`] bytes, counted as compact JSON (no
//!   whitespace) of the two section objects; metadata, `version`,
//!   `clientToken` and the `"desired":` keys themselves are not counted. An
//!   update is refused with 413 when its own sections exceed the limit, or
//!   when the merged document would.
//! - **Depth.** A section object is level 1 and each nested object or array
//!   adds one; at most [`ShadowLimits::max_depth`] (6) levels. This makes
//!   AWS's two statements agree: "maximum is 6" in the error text and the
//!   five levels of keys below `desired` in its limits table.
//! - **Empty objects.** An object written as `{}` is kept; an object that an
//!   update empties by deleting its keys is removed, sections included.
//! - **Delta.** Published after every accepted update that leaves `desired`
//!   and `reported` different, whichever section the update touched (AWS:
//!   the delta carries every differing attribute "regardless of whether
//!   these attributes were contained in the current update"). A desired
//!   object against a reported scalar, or the other way round, is a
//!   difference; the whole desired value goes into the delta. Numbers are
//!   compared as JSON values, so `1` and `1.0` differ.
//! - **Versions.** A shadow that does not exist yet has the version the
//!   caller passes as `next_version_floor` (the last version of a deleted
//!   shadow, else 0): an update naming that version is accepted, and the new
//!   shadow starts one above it.

use crate::UnixTime;
use crate::names::NameError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A JSON object, as stored in a shadow section.
pub type JsonObject = Map<String, Value>;

/// The longest shadow name AWS accepts.
pub const SHADOW_NAME_MAX: usize = 64;

/// Any request nested deeper than this is refused before it is parsed, far
/// below `serde_json`'s own recursion limit and far above any valid shadow.
const PARSE_NESTING_CEILING: usize = 64;

/// The bounds a shadow and its requests must respect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowLimits {
    /// Compact-JSON bytes of `desired` plus `reported` (AWS: 8 KB, metadata excluded).
    pub max_state_bytes: usize,
    /// Levels of objects and arrays in a section, the section itself being level 1.
    pub max_depth: usize,
    /// UTF-8 bytes of a `clientToken`.
    pub max_client_token_bytes: usize,
    /// Raw bytes of a request payload, whitespace included (AWS's MQTT payload maximum).
    pub max_payload_bytes: usize,
}

impl Default for ShadowLimits {
    fn default() -> Self {
        ShadowLimits {
            max_state_bytes: 8192,
            max_depth: 6,
            max_client_token_bytes: 64,
            max_payload_bytes: 128 * 1024,
        }
    }
}

/// A refusal, carrying the HTTP-style code and the message AWS uses for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ShadowError {
    pub code: u16,
    pub message: String,
}

impl ShadowError {
    fn new(code: u16, message: impl Into<String>) -> Self {
        ShadowError {
            code,
            message: message.into(),
        }
    }

    /// 400: the payload is not a JSON object.
    pub fn invalid_json() -> Self {
        Self::new(400, "Invalid JSON")
    }

    /// 400: an update without `state`.
    pub fn missing_state() -> Self {
        Self::new(400, "Missing required node: state")
    }

    /// 400: `state` is neither an object nor `null`.
    pub fn state_not_object() -> Self {
        Self::new(400, "State node must be an object")
    }

    /// 400: `desired` is neither an object nor `null`.
    pub fn desired_not_object() -> Self {
        Self::new(400, "Desired node must be an object")
    }

    /// 400: `reported` is neither an object nor `null`.
    pub fn reported_not_object() -> Self {
        Self::new(400, "Reported node must be an object")
    }

    /// 400: `version` is not a non-negative integer.
    pub fn invalid_version() -> Self {
        Self::new(400, "Invalid version")
    }

    /// 400: `clientToken` is not a string or is too long.
    pub fn invalid_client_token() -> Self {
        Self::new(400, "Invalid clientToken")
    }

    /// 400: a section is nested deeper than `max` levels.
    pub fn too_deep(max: usize) -> Self {
        Self::new(
            400,
            format!("JSON contains too many levels of nesting; maximum is {max}"),
        )
    }

    /// 400: `state` holds something other than `desired` and `reported`, or
    /// the named member holds an array with a `null` in it.
    pub fn invalid_node(name: &str) -> Self {
        Self::new(400, format!("State contains an invalid node: '{name}'"))
    }

    /// 401.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized")
    }

    /// 403.
    pub fn forbidden() -> Self {
        Self::new(403, "Forbidden")
    }

    /// 404: the thing does not exist.
    pub fn thing_not_found() -> Self {
        Self::new(404, "Thing not found")
    }

    /// 404: no such shadow. For the classic shadow, pass the thing name.
    pub fn no_shadow(name: &str) -> Self {
        Self::new(404, format!("No shadow exists with name: '{name}'"))
    }

    /// 409: the update named a version other than the current one.
    pub fn version_conflict() -> Self {
        Self::new(409, "Version conflict")
    }

    /// 413: the request or the resulting document is too large.
    pub fn payload_too_large() -> Self {
        Self::new(413, "The payload exceeds the maximum size allowed")
    }

    /// 415: the payload is not UTF-8.
    pub fn unsupported_encoding() -> Self {
        Self::new(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        )
    }

    /// 429: too many requests in flight.
    pub fn too_many_requests() -> Self {
        Self::new(429, "Too many requests")
    }

    /// 500.
    pub fn internal() -> Self {
        Self::new(500, "Internal service failure")
    }

    /// The `/rejected` payload: `{"code", "message", "timestamp", "clientToken"?}`.
    pub fn to_reject_json(&self, client_token: Option<&str>, now: UnixTime) -> Value {
        let mut out = Map::new();
        out.insert("code".into(), json!(self.code));
        out.insert("message".into(), json!(self.message));
        out.insert("timestamp".into(), json!(now));
        if let Some(token) = client_token {
            out.insert("clientToken".into(), json!(token));
        }
        Value::Object(out)
    }
}

/// The `state` of a stored shadow. An absent section is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<JsonObject>,
}

/// The `metadata` of a stored shadow: the state tree with every leaf replaced
/// by `{"timestamp": seconds}` and every array by an array of its elements' metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<JsonObject>,
}

/// A stored shadow, serialised in AWS's shape:
/// `{"state": {...}, "metadata": {...}, "version": n, "timestamp": t}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowDocument {
    #[serde(default)]
    pub state: ShadowState,
    #[serde(default)]
    pub metadata: ShadowMetadata,
    pub version: u64,
    /// When the shadow last changed, in epoch seconds.
    pub timestamp: UnixTime,
}

impl ShadowDocument {
    /// The difference between `desired` and `reported`, if any.
    pub fn delta(&self) -> Option<JsonObject> {
        delta(self.state.desired.as_ref(), self.state.reported.as_ref())
    }
}

/// What an update does to one section.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Patch {
    /// The section is not in the request: left as it is.
    #[default]
    Absent,
    /// `null`: the section is removed.
    Delete,
    /// An object merged into the section, `null` members deleting keys.
    Merge(JsonObject),
}

/// The `state` of an update request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateState {
    pub desired: Patch,
    pub reported: Patch,
}

/// A parsed `/update` request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateRequest {
    pub state: UpdateState,
    /// The version the update expects the shadow to have.
    pub version: Option<u64>,
    pub client_token: Option<String>,
}

/// An accepted update: the new document and the payloads to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateOutcome {
    pub document: ShadowDocument,
    /// `/update/accepted`: the request's sections and their metadata, version, timestamp, clientToken.
    pub accepted: Value,
    /// `/update/delta`, when `desired` and `reported` differ after the update.
    pub delta: Option<Value>,
    /// `/update/documents`: previous (if the shadow existed) and current snapshots.
    pub documents: Value,
}

/// Parses and checks an `/update` payload.
///
/// Members other than `state`, `version` and `clientToken` are ignored, as
/// AWS ignores them. `"state": null` clears both sections, and a `null`
/// `version` or `clientToken` counts as absent.
pub fn parse_update_request(
    bytes: &[u8],
    limits: &ShadowLimits,
) -> Result<UpdateRequest, ShadowError> {
    let mut root = parse_root(bytes, limits)?;
    let client_token = client_token_of(&root, limits)?;
    let version = match root.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or_else(ShadowError::invalid_version)?),
    };
    let state = match root.remove("state") {
        None => return Err(ShadowError::missing_state()),
        Some(Value::Null) => UpdateState {
            desired: Patch::Delete,
            reported: Patch::Delete,
        },
        Some(Value::Object(state)) => parse_state(state, limits)?,
        Some(_) => return Err(ShadowError::state_not_object()),
    };
    let size = state_size(merge_body(&state.desired), merge_body(&state.reported));
    if size > limits.max_state_bytes {
        return Err(ShadowError::payload_too_large());
    }
    Ok(UpdateRequest {
        state,
        version,
        client_token,
    })
}

/// Reads the `clientToken` of a `/get` or `/delete` payload. An empty
/// payload has none; other members are ignored.
pub fn parse_client_token(
    bytes: &[u8],
    limits: &ShadowLimits,
) -> Result<Option<String>, ShadowError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let root = parse_root(bytes, limits)?;
    client_token_of(&root, limits)
}

/// The `clientToken` to echo in a rejection of `bytes`, if the payload
/// carried a valid one; the request may be invalid in any other way.
pub fn client_token_for_reply(bytes: &[u8], limits: &ShadowLimits) -> Option<String> {
    let root = parse_root(bytes, limits).ok()?;
    client_token_of(&root, limits).ok().flatten()
}

fn parse_root(bytes: &[u8], limits: &ShadowLimits) -> Result<JsonObject, ShadowError> {
    if bytes.len() > limits.max_payload_bytes {
        return Err(ShadowError::payload_too_large());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ShadowError::unsupported_encoding())?;
    if max_nesting(text.as_bytes()) > PARSE_NESTING_CEILING {
        return Err(ShadowError::too_deep(limits.max_depth));
    }
    match serde_json::from_str::<Value>(text) {
        // A stored shadow holding serde_json's raw-value marker as a key would
        // fail every later read of it (see `crate::json`).
        Ok(root) if crate::json::holds_raw_value_marker(text, &root) => {
            Err(ShadowError::invalid_json())
        }
        Ok(Value::Object(root)) => Ok(root),
        _ => Err(ShadowError::invalid_json()),
    }
}

fn client_token_of(
    root: &JsonObject,
    limits: &ShadowLimits,
) -> Result<Option<String>, ShadowError> {
    match root.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) if token.len() <= limits.max_client_token_bytes => {
            Ok(Some(token.clone()))
        }
        Some(_) => Err(ShadowError::invalid_client_token()),
    }
}

fn parse_state(state: JsonObject, limits: &ShadowLimits) -> Result<UpdateState, ShadowError> {
    let mut out = UpdateState::default();
    for (key, value) in state {
        match key.as_str() {
            "desired" => {
                out.desired = parse_section(value, limits, ShadowError::desired_not_object)?;
            }
            "reported" => {
                out.reported = parse_section(value, limits, ShadowError::reported_not_object)?;
            }
            _ => return Err(ShadowError::invalid_node(&key)),
        }
    }
    Ok(out)
}

fn parse_section(
    value: Value,
    limits: &ShadowLimits,
    not_object: fn() -> ShadowError,
) -> Result<Patch, ShadowError> {
    match value {
        Value::Null => Ok(Patch::Delete),
        Value::Object(section) => {
            if object_depth(&section) > limits.max_depth {
                return Err(ShadowError::too_deep(limits.max_depth));
            }
            if let Some(name) = member_with_null_in_array(&section) {
                return Err(ShadowError::invalid_node(name));
            }
            Ok(Patch::Merge(section))
        }
        _ => Err(not_object()),
    }
}

/// The deepest bracket nesting in a JSON text, ignoring brackets in strings.
fn max_nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Levels of objects and arrays in `value`: 0 for a scalar, 1 for `{}` or `[]`.
pub fn nesting_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => object_depth(map),
        Value::Array(items) => 1 + items.iter().map(nesting_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn object_depth(map: &JsonObject) -> usize {
    1 + map.values().map(nesting_depth).max().unwrap_or(0)
}

/// The key of the first member whose value holds an array containing `null`
/// at any depth; AWS refuses such arrays because `null` only means "delete".
fn member_with_null_in_array(map: &JsonObject) -> Option<&str> {
    map.iter().find_map(|(key, value)| match value {
        Value::Object(inner) => member_with_null_in_array(inner),
        Value::Array(items) => items.iter().any(contains_null).then_some(key.as_str()),
        _ => None,
    })
}

fn contains_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().any(contains_null),
        Value::Object(map) => map.values().any(contains_null),
        _ => false,
    }
}

struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn compact_len(map: &JsonObject) -> usize {
    let mut count = ByteCount(0);
    match serde_json::to_writer(&mut count, map) {
        Ok(()) => count.0,
        // Counting cannot fail; if it ever did, treat the state as oversized.
        Err(_) => usize::MAX,
    }
}

/// The size that counts against [`ShadowLimits::max_state_bytes`]: the
/// compact JSON of each present section, added.
pub fn state_size(desired: Option<&JsonObject>, reported: Option<&JsonObject>) -> usize {
    desired
        .map_or(0, compact_len)
        .saturating_add(reported.map_or(0, compact_len))
}

fn merge_body(patch: &Patch) -> Option<&JsonObject> {
    match patch {
        Patch::Merge(map) => Some(map),
        Patch::Absent | Patch::Delete => None,
    }
}

/// The metadata mirroring `value`, every leaf stamped with `now`.
pub fn metadata_for(value: &Value, now: UnixTime) -> Value {
    match value {
        Value::Object(map) => Value::Object(object_metadata(map, now)),
        Value::Array(items) => Value::Array(items.iter().map(|v| metadata_for(v, now)).collect()),
        _ => json!({ "timestamp": now }),
    }
}

fn object_metadata(map: &JsonObject, now: UnixTime) -> JsonObject {
    map.iter()
        .map(|(k, v)| (k.clone(), metadata_for(v, now)))
        .collect()
}

/// The delta: every member of `desired` that `reported` lacks or holds with
/// another value, objects compared member by member and arrays as wholes.
/// `None` when nothing differs or there is no `desired`.
pub fn delta(desired: Option<&JsonObject>, reported: Option<&JsonObject>) -> Option<JsonObject> {
    let empty = JsonObject::new();
    let diff = diff_objects(desired?, reported.unwrap_or(&empty));
    (!diff.is_empty()).then_some(diff)
}

fn diff_objects(desired: &JsonObject, reported: &JsonObject) -> JsonObject {
    let mut out = JsonObject::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want), Some(Value::Object(have))) => {
                let inner = diff_objects(want, have);
                if !inner.is_empty() {
                    out.insert(key.clone(), Value::Object(inner));
                }
            }
            (_, Some(have)) if have == want => {}
            _ => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// The delta's metadata: the desired metadata of exactly the delta's members.
pub fn delta_metadata(delta: &JsonObject, desired_metadata: Option<&JsonObject>) -> JsonObject {
    let Some(meta) = desired_metadata else {
        return JsonObject::new();
    };
    let mut out = JsonObject::new();
    for (key, value) in delta {
        match (value, meta.get(key)) {
            (Value::Object(inner), Some(Value::Object(inner_meta))) => {
                out.insert(
                    key.clone(),
                    Value::Object(delta_metadata(inner, Some(inner_meta))),
                );
            }
            (_, Some(m)) => {
                out.insert(key.clone(), m.clone());
            }
            (_, None) => {}
        }
    }
    out
}

/// Applies an update to a shadow, or to a shadow about to be created when
/// `current` is `None`.
///
/// `next_version_floor` is only read when `current` is `None`: it is the last
/// version of a deleted shadow of the same name (0 if there never was one),
/// so numbering continues across delete and re-create. On any error nothing
/// has changed.
pub fn apply_update(
    current: Option<&ShadowDocument>,
    next_version_floor: u64,
    request: &UpdateRequest,
    limits: &ShadowLimits,
    now: UnixTime,
) -> Result<UpdateOutcome, ShadowError> {
    let previous_version = current.map_or(next_version_floor, |doc| doc.version);
    if request
        .version
        .is_some_and(|expected| expected != previous_version)
    {
        return Err(ShadowError::version_conflict());
    }
    let version = previous_version
        .checked_add(1)
        .ok_or_else(ShadowError::internal)?;

    let mut state = current.map(|doc| doc.state.clone()).unwrap_or_default();
    let mut metadata = current.map(|doc| doc.metadata.clone()).unwrap_or_default();
    apply_patch(
        &mut state.desired,
        &mut metadata.desired,
        &request.state.desired,
        now,
    );
    apply_patch(
        &mut state.reported,
        &mut metadata.reported,
        &request.state.reported,
        now,
    );
    if state_size(state.desired.as_ref(), state.reported.as_ref()) > limits.max_state_bytes {
        return Err(ShadowError::payload_too_large());
    }
    let deepest = [&state.desired, &state.reported]
        .into_iter()
        .flatten()
        .map(object_depth)
        .max()
        .unwrap_or(0);
    if deepest > limits.max_depth {
        return Err(ShadowError::too_deep(limits.max_depth));
    }

    let document = ShadowDocument {
        state,
        metadata,
        version,
        timestamp: now,
    };
    let token = request.client_token.as_deref();
    let accepted = accepted_payload(request, version, now);
    let delta = document.delta().map(|delta| {
        let meta = delta_metadata(&delta, document.metadata.desired.as_ref());
        envelope(
            json!({ "state": delta, "metadata": meta, "version": version }),
            token,
            now,
        )
    });
    let mut documents = JsonObject::new();
    if let Some(previous) = current {
        documents.insert("previous".into(), snapshot(previous));
    }
    documents.insert("current".into(), snapshot(&document));
    let documents = envelope(Value::Object(documents), token, now);
    Ok(UpdateOutcome {
        document,
        accepted,
        delta,
        documents,
    })
}

fn apply_patch(
    section: &mut Option<JsonObject>,
    meta: &mut Option<JsonObject>,
    patch: &Patch,
    now: UnixTime,
) {
    match patch {
        Patch::Absent => {}
        Patch::Delete => {
            *section = None;
            *meta = None;
        }
        Patch::Merge(changes) => {
            let mut target = section.take().unwrap_or_default();
            let mut target_meta = meta.take().unwrap_or_default();
            merge_object(&mut target, &mut target_meta, changes, now);
            if changes.is_empty() || !target.is_empty() {
                *section = Some(target);
                *meta = Some(target_meta);
            }
        }
    }
}

fn merge_object(
    target: &mut JsonObject,
    meta: &mut JsonObject,
    changes: &JsonObject,
    now: UnixTime,
) {
    for (key, change) in changes {
        match change {
            Value::Null => {
                target.remove(key);
                meta.remove(key);
            }
            Value::Object(inner_changes) => {
                let (mut inner, mut inner_meta) = match (target.remove(key), meta.remove(key)) {
                    (Some(Value::Object(inner)), Some(Value::Object(m))) => (inner, m),
                    // Metadata out of step with the state: keep the values, restamp what is written.
                    (Some(Value::Object(inner)), _) => (inner, JsonObject::new()),
                    // An object replaces a scalar or array, or creates the member.
                    _ => (JsonObject::new(), JsonObject::new()),
                };
                merge_object(&mut inner, &mut inner_meta, inner_changes, now);
                // An object the update emptied by deletions goes; a written `{}` stays.
                if inner_changes.is_empty() || !inner.is_empty() {
                    target.insert(key.clone(), Value::Object(inner));
                    meta.insert(key.clone(), Value::Object(inner_meta));
                }
            }
            _ => {
                target.insert(key.clone(), change.clone());
                meta.insert(key.clone(), metadata_for(change, now));
            }
        }
    }
}

fn patch_echo(patch: &Patch) -> Option<Value> {
    match patch {
        Patch::Absent => None,
        Patch::Delete => Some(Value::Null),
        Patch::Merge(map) => Some(Value::Object(map.clone())),
    }
}

fn accepted_payload(request: &UpdateRequest, version: u64, now: UnixTime) -> Value {
    let mut state = JsonObject::new();
    let mut metadata = JsonObject::new();
    for (name, patch) in [
        ("desired", &request.state.desired),
        ("reported", &request.state.reported),
    ] {
        if let Some(echo) = patch_echo(patch) {
            metadata.insert(name.into(), metadata_for(&echo, now));
            state.insert(name.into(), echo);
        }
    }
    envelope(
        json!({ "state": state, "metadata": metadata, "version": version }),
        request.client_token.as_deref(),
        now,
    )
}

fn sections(desired: Option<&JsonObject>, reported: Option<&JsonObject>) -> JsonObject {
    let mut out = JsonObject::new();
    if let Some(d) = desired {
        out.insert("desired".into(), Value::Object(d.clone()));
    }
    if let Some(r) = reported {
        out.insert("reported".into(), Value::Object(r.clone()));
    }
    out
}

fn snapshot(doc: &ShadowDocument) -> Value {
    json!({
        "state": sections(doc.state.desired.as_ref(), doc.state.reported.as_ref()),
        "metadata": sections(doc.metadata.desired.as_ref(), doc.metadata.reported.as_ref()),
        "version": doc.version,
    })
}

/// Adds `timestamp` and, when given, `clientToken` to a reply object.
fn envelope(mut body: Value, client_token: Option<&str>, now: UnixTime) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("timestamp".into(), json!(now));
        if let Some(token) = client_token {
            map.insert("clientToken".into(), json!(token));
        }
    }
    body
}

/// The `/get/accepted` payload: state with `desired`, `reported` and
/// `delta`, metadata of each, version, timestamp and clientToken.
///
/// `metadata.delta` appears when there is a delta, as in AWS's documented
/// example; clients that know only `desired` and `reported` ignore it.
pub fn get_response(doc: &ShadowDocument, client_token: Option<&str>, now: UnixTime) -> Value {
    let mut state = sections(doc.state.desired.as_ref(), doc.state.reported.as_ref());
    let mut metadata = sections(
        doc.metadata.desired.as_ref(),
        doc.metadata.reported.as_ref(),
    );
    if let Some(delta) = doc.delta() {
        let meta = delta_metadata(&delta, doc.metadata.desired.as_ref());
        state.insert("delta".into(), Value::Object(delta));
        metadata.insert("delta".into(), Value::Object(meta));
    }
    envelope(
        json!({ "state": state, "metadata": metadata, "version": doc.version }),
        client_token,
        now,
    )
}

/// The `/delete/accepted` payload. `version` is the deleted shadow's last
/// version, which the caller keeps as the floor for a re-created shadow.
pub fn delete_response(version: u64, client_token: Option<&str>, now: UnixTime) -> Value {
    envelope(json!({ "version": version }), client_token, now)
}

/// A named shadow's name: 1–64 of `[A-Za-z0-9:_-]` and `$`, not starting with `$`.
///
/// AWS's grammar admits `$` anywhere, but AWS keeps `$`-prefixed names (such
/// as `$package`) for its own features; Onramp reserves them the same way so
/// that a name valid here means the same thing there.
pub fn validate_shadow_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "shadow name";
    const ALLOWED: &str = "`:_-` and `$` (not first)";
    if name.is_empty() {
        return Err(NameError::Empty { what: WHAT });
    }
    if name.chars().count() > SHADOW_NAME_MAX {
        return Err(NameError::TooLong {
            what: WHAT,
            max: SHADOW_NAME_MAX,
        });
    }
    let bad = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '$')));
    match bad {
        Some(ch) => Err(NameError::BadCharacter {
            what: WHAT,
            ch,
            allowed: ALLOWED,
        }),
        None if name.starts_with('$') => Err(NameError::BadCharacter {
            what: WHAT,
            ch: '$',
            allowed: ALLOWED,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_holding_the_raw_value_marker_as_a_key_is_refused() {
        // Accepted before, such a shadow was stored but every later read of it
        // failed with 500 (the shadow_update fuzz target checks this round trip).
        let limits = ShadowLimits::default();
        for payload in [
            r#"{"state":{"reported":{"x":{"a":1,"$serde_json::private::RawValue":0}}}}"#,
            r#"{"state":{"desired":{"x":{"a":1,"\u0024serde_json::private::RawValu\u0065":0}}}}"#,
            r#"{"state":{"reported":{"$serde_json::private::RawValue":"{\"b\":1}"}}}"#,
        ] {
            assert_eq!(
                parse_update_request(payload.as_bytes(), &limits),
                Err(ShadowError::invalid_json()),
                "{payload}"
            );
        }
        // The control: the same shape with an ordinary key is accepted.
        let ok = r#"{"state":{"reported":{"x":{"a":1,"b":0}}}}"#;
        assert!(parse_update_request(ok.as_bytes(), &limits).is_ok());
    }

    #[test]
    fn nesting_scan_ignores_brackets_in_strings() {
        assert_eq!(max_nesting(br#"{"a":"[[[{{{"}"#), 1);
        assert_eq!(max_nesting(br#"{"a":"\"[[","b":[[1]]}"#), 3);
        assert_eq!(max_nesting(b"1"), 0);
    }

    #[test]
    fn depth_counts_the_section_as_level_one() {
        assert_eq!(nesting_depth(&json!({})), 1);
        assert_eq!(nesting_depth(&json!({"a": 1})), 1);
        assert_eq!(nesting_depth(&json!({"a": [1]})), 2);
        assert_eq!(nesting_depth(&json!({"a": {"b": [[{}]]}})), 5);
    }

    #[test]
    fn size_is_compact_json_of_both_sections() {
        let d = json!({"a": 1});
        let r = json!({"bb": "x"});
        assert_eq!(state_size(d.as_object(), None), r#"{"a":1}"#.len());
        assert_eq!(
            state_size(d.as_object(), r.as_object()),
            r#"{"a":1}"#.len() + r#"{"bb":"x"}"#.len()
        );
    }
}

/// A comparison in a fleet query on reported values.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
}

/// A fleet query on reported state, such as `firmware lt 2.5.0`: `path` is a
/// dot-separated member path inside `reported`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedQuery {
    pub path: Vec<String>,
    pub comparison: Comparison,
    pub value: String,
}

impl ReportedQuery {
    pub fn new(path: &str, comparison: Comparison, value: &str) -> Option<ReportedQuery> {
        let path: Vec<String> = path.split('.').map(str::to_string).collect();
        if path.iter().any(String::is_empty) || path.len() > 8 {
            return None;
        }
        Some(ReportedQuery {
            path,
            comparison,
            value: value.to_string(),
        })
    }

    /// The reported value at the path, if any.
    pub fn value_in<'a>(&self, doc: &'a ShadowDocument) -> Option<&'a Value> {
        let mut current = doc.state.reported.as_ref()?.get(self.path.first()?)?;
        for key in &self.path[1..] {
            current = current.as_object()?.get(key)?;
        }
        Some(current)
    }

    /// Whether a shadow matches. Numbers compare as numbers; strings compare as
    /// versions (2.10.0 > 2.9.0), so `firmware lt 2.5.0` means what it says.
    /// A shadow without the member never matches.
    pub fn matches(&self, doc: &ShadowDocument) -> bool {
        let Some(found) = self.value_in(doc) else {
            return false;
        };
        let order = match found {
            Value::Number(n) => match (n.as_f64(), self.value.parse::<f64>()) {
                (Some(a), Ok(b)) => a.partial_cmp(&b),
                _ => None,
            },
            Value::String(s) => {
                Some(crate::version_sort_key(s).cmp(&crate::version_sort_key(&self.value)))
            }
            Value::Bool(b) => match self.value.as_str() {
                "true" => Some(b.cmp(&true)),
                "false" => Some(b.cmp(&false)),
                _ => None,
            },
            _ => None,
        };
        let Some(order) = order else { return false };
        use std::cmp::Ordering::*;
        match self.comparison {
            Comparison::Eq => order == Equal,
            Comparison::Ne => order != Equal,
            Comparison::Lt => order == Less,
            Comparison::Lte => order != Greater,
            Comparison::Gt => order == Greater,
            Comparison::Gte => order != Less,
        }
    }
}

#[cfg(test)]
mod query_tests {
    use super::*;

    fn doc(reported: Value) -> ShadowDocument {
        ShadowDocument {
            state: ShadowState {
                desired: None,
                reported: reported.as_object().cloned(),
            },
            metadata: ShadowMetadata::default(),
            version: 1,
            timestamp: 0,
        }
    }

    #[test]
    fn reported_firmware_compares_as_a_version() {
        let q = ReportedQuery::new("firmware", Comparison::Lt, "2.5.0").unwrap();
        assert!(q.matches(&doc(json!({"firmware": "2.4.9"}))));
        assert!(!q.matches(&doc(json!({"firmware": "2.10.0"}))));
        assert!(!q.matches(&doc(json!({"other": 1}))), "no member, no match");
        let n = ReportedQuery::new("sensors.temp", Comparison::Gte, "20").unwrap();
        assert!(n.matches(&doc(json!({"sensors": {"temp": 21.5}}))));
        assert!(!n.matches(&doc(json!({"sensors": {"temp": 19}}))));
        assert!(ReportedQuery::new("a..b", Comparison::Eq, "1").is_none());
    }
}
