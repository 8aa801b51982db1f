//! Signed OTA artifacts: the placeholders a job document uses to point at
//! an artifact, the short-lived download tokens, and HTTP byte ranges.
//!
//! A job document may hold, anywhere in a string value:
//! - `${onramp:artifact-url:<sha256>}`: replaced, per device, by a download URL;
//! - `${onramp:artifact-sha256:<sha256>}`: the artifact's SHA-256 (hex);
//! - `${onramp:artifact-signature:<sha256>}`: its detached signature (base64),
//!   or the empty string for an unsigned artifact.

use serde_json::Value;
use std::collections::BTreeSet;

const PREFIX: &str = "${onramp:artifact-";

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Url,
    Sha256,
    Signature,
}

impl Placeholder {
    fn parse(kind: &str) -> Option<Placeholder> {
        match kind {
            "url" => Some(Placeholder::Url),
            "sha256" => Some(Placeholder::Sha256),
            "signature" => Some(Placeholder::Signature),
            _ => None,
        }
    }
}

/// True for 64 lowercase hex digits.
pub fn valid_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Walks one string: for each well-formed placeholder, `f(kind, sha256)`;
/// returns the text with each placeholder replaced by what `f` answers
/// (`None` keeps the placeholder as it was).
fn rewrite(s: &str, f: &mut dyn FnMut(Placeholder, &str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PREFIX.len()..];
        let parsed = after.find('}').and_then(|end| {
            let (kind, sha) = after[..end].split_once(':')?;
            let kind = Placeholder::parse(kind)?;
            valid_sha256(sha).then_some((kind, sha, end))
        });
        match parsed {
            Some((kind, sha, end)) => {
                let whole = &rest[at..at + PREFIX.len() + end + 1];
                match f(kind, sha) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(whole),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(PREFIX);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn walk(v: &Value, f: &mut dyn FnMut(Placeholder, &str) -> Option<String>) -> Value {
    match v {
        Value::String(s) if s.contains(PREFIX) => Value::String(rewrite(s, f)),
        Value::Array(items) => Value::Array(items.iter().map(|i| walk(i, f)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), walk(v, f))).collect())
        }
        other => other.clone(),
    }
}

/// The SHA-256 of every artifact a document refers to, by any placeholder.
pub fn referenced_artifacts(document: &Value) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    walk(document, &mut |_, sha| {
        found.insert(sha.to_string());
        None
    });
    found
}

/// Whether the document's text mentions any artifact placeholder (a cheap
/// test before parsing a serialized reply).
pub fn mentions_artifacts(text: &[u8]) -> bool {
    text.windows(PREFIX.len()).any(|w| w == PREFIX.as_bytes())
}

/// What one artifact's placeholders become for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedArtifact {
    pub url: String,
    pub sha256: String,
    /// Base64; empty for an unsigned artifact.
    pub signature: String,
}

/// The document with every placeholder of a known artifact replaced;
/// placeholders of artifacts `lookup` does not know stay as they are.
pub fn substitute(document: &Value, lookup: &dyn Fn(&str) -> Option<ResolvedArtifact>) -> Value {
    walk(document, &mut |kind, sha| {
        let a = lookup(sha)?;
        Some(match kind {
            Placeholder::Url => a.url,
            Placeholder::Sha256 => a.sha256,
            Placeholder::Signature => a.signature,
        })
    })
}

// ---- download tokens ----

/// The message a download token's MAC covers: tenant, thing, artifact and
/// expiry, each on its own line, so no field can run into another.
pub fn token_message(tenant: &str, thing: &str, sha256: &str, expires_at: i64) -> String {
    format!("onramp-artifact-url\n{tenant}\n{thing}\n{sha256}\n{expires_at}")
}

/// A token as it travels in the URL: `<expiry>.<mac hex>`.
pub fn format_token(expires_at: i64, mac_hex: &str) -> String {
    format!("{expires_at}.{mac_hex}")
}

/// Splits a token into its expiry and MAC; None when malformed.
pub fn parse_token(token: &str) -> Option<(i64, &str)> {
    let (exp, mac) = token.split_once('.')?;
    let exp: i64 = exp.parse().ok()?;
    (!mac.is_empty() && mac.bytes().all(|b| b.is_ascii_hexdigit())).then_some((exp, mac))
}

/// The download URL of an artifact for one device.
pub fn download_url(base_url: &str, sha256: &str, token: &str) -> String {
    format!(
        "{}/artifacts/{sha256}?token={token}",
        base_url.trim_end_matches('/')
    )
}

// ---- HTTP byte ranges ----

/// An inclusive byte range `start..=end` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one this server ignores (several ranges, other units,
    /// malformed): send the whole file with 200.
    Whole,
    /// One satisfiable range: 206.
    Partial(ByteRange),
    /// A well-formed range the file cannot satisfy: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=a-b`, `bytes=a-` or `bytes=-n` range.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Whole;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-n: the last n bytes.
        (true, false) => match num(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(ByteRange {
                start: size.saturating_sub(n),
                end: size - 1,
            }),
            None => RangeRequest::Whole,
        },
        // bytes=a-
        (false, true) => match num(a) {
            Some(start) if start < size => RangeRequest::Partial(ByteRange {
                start,
                end: size - 1,
            }),
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Whole,
        },
        // bytes=a-b
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial(ByteRange {
                        start,
                        end: end.min(size - 1),
                    })
                }
            }
            _ => RangeRequest::Whole,
        },
        (true, true) => RangeRequest::Whole,
    }
}

/// Whether an execution in this status still entitles its device to the
/// artifacts of its job.
pub fn execution_grants_download(status: &str) -> bool {
    !matches!(status, "CANCELED" | "REMOVED")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn known(sha: &str) -> Option<ResolvedArtifact> {
        (sha == A).then(|| ResolvedArtifact {
            url: format!("https://h/artifacts/{A}?token=1.ff"),
            sha256: A.into(),
            signature: "c2ln".into(),
        })
    }

    #[test]
    fn placeholders_are_found_anywhere_in_the_document() {
        let doc = json!({
            "steps": [{"url": format!("${{onramp:artifact-url:{A}}}")}],
            "sum": format!("sha={}", format!("${{onramp:artifact-sha256:{B}}}")),
            "n": 3
        });
        let found: Vec<String> = referenced_artifacts(&doc).into_iter().collect();
        assert_eq!(found, vec![A.to_string(), B.to_string()]);
    }

    #[test]
    fn known_artifacts_are_replaced_and_unknown_ones_kept() {
        let doc = json!({
            "url": format!("${{onramp:artifact-url:{A}}}"),
            "sig": format!("${{onramp:artifact-signature:{A}}}"),
            "sha": format!("x ${{onramp:artifact-sha256:{A}}} y"),
            "other": format!("${{onramp:artifact-url:{B}}}"),
        });
        let out = substitute(&doc, &known);
        assert_eq!(out["url"], format!("https://h/artifacts/{A}?token=1.ff"));
        assert_eq!(out["sig"], "c2ln");
        assert_eq!(out["sha"], format!("x {A} y"));
        assert_eq!(out["other"], format!("${{onramp:artifact-url:{B}}}"));
    }

    #[test]
    fn malformed_placeholders_are_left_alone() {
        for s in [
            "${onramp:artifact-url:ABC}".to_string(),
            format!("${{onramp:artifact-size:{A}}}"),
            format!("${{onramp:artifact-url:{A}"),
            "${onramp:artifact-".to_string(),
        ] {
            let doc = json!({ "v": s.clone() });
            assert_eq!(substitute(&doc, &known)["v"], s);
            assert!(referenced_artifacts(&doc).is_empty(), "{s}");
        }
    }

    #[test]
    fn a_document_without_placeholders_is_unchanged() {
        let doc = json!({"a": ["x", 1, {"b": null}]});
        assert_eq!(substitute(&doc, &known), doc);
        assert!(!mentions_artifacts(doc.to_string().as_bytes()));
        assert!(mentions_artifacts(
            format!("{{\"u\":\"${{onramp:artifact-url:{A}}}\"}}").as_bytes()
        ));
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = format_token(1700000000, "abcdef01");
        assert_eq!(parse_token(&t), Some((1700000000, "abcdef01")));
        for bad in ["", "1700", "x.ab", "17.", "17.zz"] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
        let m = token_message("t", "D1", A, 5);
        assert_ne!(m, token_message("t", "D2", A, 5));
        assert_ne!(m, token_message("t", "D1", A, 6));
        assert_eq!(
            download_url("https://h:1/", A, &t),
            format!("https://h:1/artifacts/{A}?token={t}")
        );
    }

    #[test]
    fn ranges() {
        let p = |s, e| RangeRequest::Partial(ByteRange { start: s, end: e });
        assert_eq!(parse_range(None, 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), p(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), p(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), p(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), p(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), p(8, 9));
        assert_eq!(
            parse_range(Some("bytes=10-"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=10-12"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=5-2"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=a-b"), 10), RangeRequest::Whole);
        assert_eq!(ByteRange { start: 2, end: 4 }.len(), 3);
    }

    #[test]
    fn canceled_and_removed_executions_grant_nothing() {
        for s in ["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT"] {
            assert!(execution_grants_download(s), "{s}");
        }
        assert!(!execution_grants_download("CANCELED"));
        assert!(!execution_grants_download("REMOVED"));
    }

    #[test]
    fn sha256_names() {
        assert!(valid_sha256(A));
        assert!(!valid_sha256(&A.to_uppercase()));
        assert!(!valid_sha256(&A[1..]));
    }
}
