//! AWS IoT provisioning templates (fleet provisioning and JITP), evaluated as a
//! pure function onto Onramp's registry.
//!
//! A template is parsed once ([`ProvisioningTemplate::parse`]): the body size,
//! the section and resource shapes, the override values and the shape of every
//! intrinsic function are checked there, without parameter values. Running it
//! ([`evaluate`]) with the values of one request yields a [`ProvisioningPlan`]:
//! the thing, certificate and policies to create or update, and the
//! `DeviceConfiguration` handed back to the device.
//!
//! Supported intrinsic functions: `Ref` (parameters only), `Fn::Join`,
//! `Fn::Select`, `Fn::FindInMap`, `Fn::Split` and `Fn::Sub`. Any other
//! `Fn::*` is refused when the template is parsed. Nesting is capped at
//! [`MAX_EXPRESSION_DEPTH`] and every string built by `Fn::Join` or `Fn::Sub`
//! at [`MAX_VALUE_BYTES`], so a hostile template can neither exhaust the stack
//! nor make evaluation allocate without bound.
//!
//! Parameters are resolved lazily: a declared parameter with neither a
//! supplied value nor a `Default` is an error ([`TemplateError::MissingParameter`])
//! only when the template actually reads it. This lets a JITP template declare
//! certificate fields that some certificates do not carry.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The largest template body AWS IoT accepts, in characters.
pub const MAX_TEMPLATE_CHARS: usize = 10_240;

/// How deeply values and intrinsic functions may nest inside one property.
pub const MAX_EXPRESSION_DEPTH: usize = 32;

/// The longest string `Fn::Join` or `Fn::Sub` may produce, in bytes.
pub const MAX_VALUE_BYTES: usize = 65_536;

const SECTIONS: [&str; 4] = ["Parameters", "Mappings", "Resources", "DeviceConfiguration"];

const THING_TYPE: &str = "AWS::IoT::Thing";
const CERTIFICATE_TYPE: &str = "AWS::IoT::Certificate";
const POLICY_TYPE: &str = "AWS::IoT::Policy";

/// Why a template was refused, or why running it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template body is {chars} characters long; the limit is {max}")]
    TooLarge { chars: usize, max: usize },
    #[error("template body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error(
        "unknown top-level section `{0}` (allowed: Parameters, Mappings, Resources, DeviceConfiguration)"
    )]
    UnknownSection(String),
    #[error("the template has no `{0}` section")]
    MissingSection(String),
    /// A section, resource, property or intrinsic function has the wrong shape.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("{path}: required property is missing")]
    MissingProperty { path: String },
    #[error("parameter `{0}` has no value: it was not supplied and declares no Default")]
    MissingParameter(String),
    #[error("{path}: Ref to `{name}`, which is neither a declared parameter nor a supplied value")]
    UndeclaredReference { path: String, name: String },
    #[error("resource `{resource}` has unsupported type `{type_name}`")]
    UnknownResourceType { resource: String, type_name: String },
    #[error(
        "resources `{first}` and `{second}` are both {type_name}; a template may have at most one"
    )]
    DuplicateResource {
        type_name: String,
        first: String,
        second: String,
    },
    #[error(
        "{path}: unknown override setting `{value}` (allowed: DO_NOTHING, REPLACE, FAIL, MERGE)"
    )]
    InvalidOverride { path: String, value: String },
    #[error("{path}: MERGE is only valid for AttributePayload and ThingGroups")]
    MergeNotAllowed { path: String },
    #[error("{path}: not supported, use CertificateId")]
    UnsupportedCertificateSource { path: String },
    #[error(
        "{path}: unsupported intrinsic function `{name}` (supported: Ref, Fn::Join, Fn::Select, Fn::FindInMap, Fn::Split, Fn::Sub)"
    )]
    UnsupportedIntrinsic { path: String, name: String },
    #[error("{path}: Fn::Select index {index} is out of range for a list of length {len}")]
    IndexOutOfRange {
        path: String,
        index: u64,
        len: usize,
    },
    #[error("{path}: Fn::FindInMap: Mappings has no entry `{key}`")]
    MissingMappingKey { path: String, key: String },
    #[error("{path}: Fn::Sub: unknown variable `{name}`")]
    UnknownVariable { path: String, name: String },
    #[error("DeviceConfiguration.{key}: DeviceConfiguration does not support nested values")]
    NestedDeviceConfiguration { key: String },
    #[error("{path}: nested deeper than {max} levels")]
    DepthExceeded { path: String, max: usize },
    #[error("{path}: the evaluated string would be longer than {max} bytes")]
    ValueTooLarge { path: String, max: usize },
    /// An override setting of FAIL met an existing value that differs; names the field.
    #[error("{0}: the existing thing's value differs and the override setting is FAIL")]
    ResourceConflict(String),
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> TemplateError {
    TemplateError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// The plan: what a template evaluates to.
// ---------------------------------------------------------------------------

/// What to do with one field of a resource that already exists.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OverrideSetting {
    /// Keep the existing value.
    #[default]
    DoNothing,
    /// Take the template's value.
    Replace,
    /// Fail provisioning if the existing value differs from the template's.
    Fail,
    /// Combine both (attributes and thing groups only).
    Merge,
}

impl OverrideSetting {
    fn parse(value: &str) -> Option<OverrideSetting> {
        match value {
            "DO_NOTHING" => Some(OverrideSetting::DoNothing),
            "REPLACE" => Some(OverrideSetting::Replace),
            "FAIL" => Some(OverrideSetting::Fail),
            "MERGE" => Some(OverrideSetting::Merge),
            _ => None,
        }
    }
}

/// The `OverrideSettings` of the thing resource.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingOverrides {
    pub attribute_payload: OverrideSetting,
    pub thing_type_name: OverrideSetting,
    pub thing_groups: OverrideSetting,
}

/// The thing a template creates or updates.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingPlan {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    pub thing_type: Option<String>,
    /// In template order, duplicates removed.
    pub thing_groups: Vec<String>,
    pub overrides: ThingOverrides,
}

/// The status a provisioned certificate is given.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlannedCertStatus {
    Active,
    Inactive,
}

/// The certificate a template activates (or registers inactive).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatePlan {
    pub certificate_id: String,
    pub status: PlannedCertStatus,
    pub status_override: OverrideSetting,
}

/// A policy to attach to the certificate.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyPlan {
    /// An existing policy, by name (`PolicyName` alone).
    Named(String),
    /// A policy document given in the template. `name` is the `PolicyName`
    /// property when the template gives one alongside the document (never
    /// the logical resource name); `document` is the document as compact JSON.
    Document {
        name: Option<String>,
        document: String,
    },
}

/// Everything a template asks for, with all intrinsic functions resolved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningPlan {
    pub thing: Option<ThingPlan>,
    pub certificate: Option<CertificatePlan>,
    /// Ordered by logical resource name.
    pub policies: Vec<PolicyPlan>,
    pub device_configuration: BTreeMap<String, String>,
}

/// The registry state of a thing that already exists.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExistingThing {
    pub attributes: BTreeMap<String, String>,
    pub thing_type: Option<String>,
    pub thing_groups: Vec<String>,
}

/// What a thing becomes when the plan meets an existing thing, per
/// `OverrideSettings`: DO_NOTHING keeps the existing value, REPLACE takes the
/// plan's, FAIL refuses with [`TemplateError::ResourceConflict`] (naming the
/// field) when the two differ, MERGE overlays the plan's attributes on the
/// existing ones and appends the plan's groups the thing is not yet in.
///
/// Thing groups are compared as sets: membership has no order.
pub fn apply_thing_overrides(
    existing: &ExistingThing,
    plan: &ThingPlan,
) -> Result<ExistingThing, TemplateError> {
    let attributes = match plan.overrides.attribute_payload {
        OverrideSetting::DoNothing => existing.attributes.clone(),
        OverrideSetting::Replace => plan.attributes.clone(),
        OverrideSetting::Fail => {
            if existing.attributes != plan.attributes {
                return Err(TemplateError::ResourceConflict("AttributePayload".into()));
            }
            existing.attributes.clone()
        }
        OverrideSetting::Merge => {
            let mut merged = existing.attributes.clone();
            merged.extend(plan.attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
            merged
        }
    };
    let thing_type = match plan.overrides.thing_type_name {
        OverrideSetting::DoNothing => existing.thing_type.clone(),
        OverrideSetting::Replace => plan.thing_type.clone(),
        OverrideSetting::Fail => {
            if existing.thing_type != plan.thing_type {
                return Err(TemplateError::ResourceConflict("ThingTypeName".into()));
            }
            existing.thing_type.clone()
        }
        OverrideSetting::Merge => {
            return Err(TemplateError::MergeNotAllowed {
                path: "OverrideSettings.ThingTypeName".into(),
            });
        }
    };
    let thing_groups = match plan.overrides.thing_groups {
        OverrideSetting::DoNothing => existing.thing_groups.clone(),
        OverrideSetting::Replace => plan.thing_groups.clone(),
        OverrideSetting::Fail => {
            let old: BTreeSet<&String> = existing.thing_groups.iter().collect();
            let new: BTreeSet<&String> = plan.thing_groups.iter().collect();
            if old != new {
                return Err(TemplateError::ResourceConflict("ThingGroups".into()));
            }
            existing.thing_groups.clone()
        }
        OverrideSetting::Merge => {
            let mut merged = existing.thing_groups.clone();
            for group in &plan.thing_groups {
                if !merged.contains(group) {
                    merged.push(group.clone());
                }
            }
            merged
        }
    };
    Ok(ExistingThing {
        attributes,
        thing_type,
        thing_groups,
    })
}

// ---------------------------------------------------------------------------
// The parsed template.
// ---------------------------------------------------------------------------

/// A value in the template, with intrinsic functions parsed but not yet run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// A string, number, boolean or null.
    Scalar(Value),
    List(Vec<Expr>),
    /// A plain object, in the order the JSON parser yields its keys.
    Object(Vec<(String, Expr)>),
    /// An intrinsic function; `path` is where it sits in the template.
    Call {
        path: String,
        call: Box<Call>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Ref(String),
    Join {
        delimiter: Expr,
        list: Expr,
    },
    Select {
        index: Expr,
        list: Expr,
    },
    FindInMap {
        map: Expr,
        top: Expr,
        second: Expr,
    },
    Split {
        delimiter: Expr,
        source: Expr,
    },
    Sub {
        parts: Vec<SubPart>,
        vars: Vec<(String, Expr)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SubPart {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ThingResource {
    logical_name: String,
    thing_name: Expr,
    attribute_payload: Option<Expr>,
    thing_type_name: Option<Expr>,
    thing_groups: Option<Expr>,
    overrides: ThingOverrides,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct CertificateResource {
    logical_name: String,
    certificate_id: Expr,
    status: Option<Expr>,
    status_override: OverrideSetting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicyResource {
    logical_name: String,
    policy_name: Option<Expr>,
    policy_document: Option<Expr>,
}

type Mappings = BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>>;

/// A parsed and structurally validated provisioning template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningTemplate {
    parameters: BTreeMap<String, Option<String>>,
    mappings: Mappings,
    thing: Option<ThingResource>,
    certificate: Option<CertificateResource>,
    /// Ordered by logical name.
    policies: Vec<PolicyResource>,
    device_configuration: BTreeMap<String, Expr>,
}

impl ProvisioningTemplate {
    /// Parses and validates structure (section shapes, resource types,
    /// override values, intrinsic shapes where checkable) without parameters.
    ///
    /// `Resources` is required; `Parameters`, `Mappings` and
    /// `DeviceConfiguration` are optional.
    pub fn parse(body: &str) -> Result<ProvisioningTemplate, TemplateError> {
        // A body of at most MAX bytes has at most MAX characters: only count
        // characters when the byte length leaves the question open.
        if body.len() > MAX_TEMPLATE_CHARS {
            let chars = body.chars().count();
            if chars > MAX_TEMPLATE_CHARS {
                return Err(TemplateError::TooLarge {
                    chars,
                    max: MAX_TEMPLATE_CHARS,
                });
            }
        }
        // serde_json refuses input nested deeper than 128 levels, so this
        // cannot exhaust the stack either.
        let root: Value =
            serde_json::from_str(body).map_err(|e| TemplateError::InvalidJson(e.to_string()))?;
        // serde_json (with the `raw_value` feature another crate of the build
        // turns on) treats an object with this key as raw JSON text: such a
        // template would save but produce documents that never read back.
        // Checked on the parsed keys too, where an escaped spelling shows.
        if crate::json::holds_raw_value_marker(body, &root) {
            return Err(invalid(
                "template",
                "the key `$serde_json::private::RawValue` is reserved",
            ));
        }
        let Value::Object(root) = root else {
            return Err(invalid(
                "template",
                "the template body must be a JSON object",
            ));
        };
        if let Some(unknown) = root.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(TemplateError::UnknownSection(unknown.clone()));
        }

        let parameters = match root.get("Parameters") {
            Some(v) => parse_parameters(v)?,
            None => BTreeMap::new(),
        };
        let mappings = match root.get("Mappings") {
            Some(v) => parse_mappings(v)?,
            None => BTreeMap::new(),
        };
        let resources = root
            .get("Resources")
            .ok_or_else(|| TemplateError::MissingSection("Resources".into()))?;
        let Value::Object(resources) = resources else {
            return Err(invalid("Resources", "must be an object of named resources"));
        };

        let mut template = ProvisioningTemplate {
            parameters,
            mappings,
            thing: None,
            certificate: None,
            policies: Vec::new(),
            device_configuration: BTreeMap::new(),
        };

        // Sorted by logical name whatever order the JSON map keeps.
        let sorted: BTreeMap<&String, &Value> = resources.iter().collect();
        for (name, resource) in sorted {
            template.add_resource(name, resource)?;
        }

        if let Some(config) = root.get("DeviceConfiguration") {
            let Value::Object(config) = config else {
                return Err(invalid(
                    "DeviceConfiguration",
                    "must be an object of string values",
                ));
            };
            for (key, value) in config {
                let path = format!("DeviceConfiguration.{key}");
                let expr = parse_expr(value, &path, 0)?;
                if matches!(expr, Expr::List(_) | Expr::Object(_)) {
                    return Err(TemplateError::NestedDeviceConfiguration { key: key.clone() });
                }
                template.device_configuration.insert(key.clone(), expr);
            }
        }
        Ok(template)
    }

    /// Declared parameter names with their defaults.
    pub fn parameters(&self) -> &BTreeMap<String, Option<String>> {
        &self.parameters
    }

    fn add_resource(&mut self, name: &str, resource: &Value) -> Result<(), TemplateError> {
        let path = format!("Resources.{name}");
        let Value::Object(resource) = resource else {
            return Err(invalid(&path, "a resource must be an object"));
        };
        let mut type_name = None;
        let mut properties = None;
        let mut overrides = None;
        for (key, value) in resource {
            match key.as_str() {
                "Type" => type_name = Some(value),
                "Properties" => properties = Some(value),
                "OverrideSettings" => overrides = Some(value),
                other => {
                    return Err(invalid(
                        &path,
                        format!(
                            "unknown key `{other}` (allowed: Type, Properties, OverrideSettings)"
                        ),
                    ));
                }
            }
        }
        let type_name = match type_name {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(invalid(format!("{path}.Type"), "must be a string")),
            None => {
                return Err(TemplateError::MissingProperty {
                    path: format!("{path}.Type"),
                });
            }
        };
        let empty = Map::new();
        let properties = match properties {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid(format!("{path}.Properties"), "must be an object")),
            None => &empty,
        };
        let props_path = format!("{path}.Properties");
        match type_name {
            THING_TYPE => {
                if let Some(first) = &self.thing {
                    return Err(TemplateError::DuplicateResource {
                        type_name: THING_TYPE.into(),
                        first: first.logical_name.clone(),
                        second: name.into(),
                    });
                }
                let overrides = match overrides {
                    Some(v) => parse_thing_overrides(v, &format!("{path}.OverrideSettings"))?,
                    None => ThingOverrides::default(),
                };
                self.thing = Some(parse_thing(name, properties, &props_path, overrides)?);
            }
            CERTIFICATE_TYPE => {
                if let Some(first) = &self.certificate {
                    return Err(TemplateError::DuplicateResource {
                        type_name: CERTIFICATE_TYPE.into(),
                        first: first.logical_name.clone(),
                        second: name.into(),
                    });
                }
                let status_override = match overrides {
                    Some(v) => parse_certificate_overrides(v, &format!("{path}.OverrideSettings"))?,
                    None => OverrideSetting::DoNothing,
                };
                self.certificate = Some(parse_certificate(
                    name,
                    properties,
                    &props_path,
                    status_override,
                )?);
            }
            POLICY_TYPE => {
                if overrides.is_some() {
                    return Err(invalid(
                        format!("{path}.OverrideSettings"),
                        "OverrideSettings is not supported on AWS::IoT::Policy",
                    ));
                }
                self.policies
                    .push(parse_policy(name, properties, &props_path)?);
            }
            other => {
                return Err(TemplateError::UnknownResourceType {
                    resource: name.into(),
                    type_name: other.into(),
                });
            }
        }
        Ok(())
    }
}

/// A parameter default may be written as a number or boolean; it is kept as text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn parse_parameters(section: &Value) -> Result<BTreeMap<String, Option<String>>, TemplateError> {
    let Value::Object(section) = section else {
        return Err(invalid(
            "Parameters",
            "must be an object of named parameters",
        ));
    };
    let mut parameters = BTreeMap::new();
    for (name, declaration) in section {
        let path = format!("Parameters.{name}");
        let Value::Object(declaration) = declaration else {
            return Err(invalid(&path, "a parameter declaration must be an object"));
        };
        let mut type_seen = false;
        let mut default = None;
        for (key, value) in declaration {
            match key.as_str() {
                "Type" => match value {
                    Value::String(t) if t == "String" => type_seen = true,
                    Value::String(t) => {
                        return Err(invalid(
                            format!("{path}.Type"),
                            format!("unsupported parameter type `{t}`; only String is supported"),
                        ));
                    }
                    _ => return Err(invalid(format!("{path}.Type"), "must be a string")),
                },
                "Default" => {
                    default =
                        Some(scalar_text(value).ok_or_else(|| {
                            invalid(format!("{path}.Default"), "must be a string")
                        })?);
                }
                "Description" => {}
                other => {
                    return Err(invalid(
                        &path,
                        format!("unknown key `{other}` (allowed: Type, Default, Description)"),
                    ));
                }
            }
        }
        if !type_seen {
            return Err(TemplateError::MissingProperty {
                path: format!("{path}.Type"),
            });
        }
        parameters.insert(name.clone(), default);
    }
    Ok(parameters)
}

fn parse_mappings(section: &Value) -> Result<Mappings, TemplateError> {
    const NO_OBJECTS: &str = "mapping values must be strings, numbers, booleans or lists of them \
                              (intrinsic functions are not allowed in Mappings)";
    let Value::Object(section) = section else {
        return Err(invalid("Mappings", "must be an object of named maps"));
    };
    let mut mappings = Mappings::new();
    for (map_name, map) in section {
        let Value::Object(map) = map else {
            return Err(invalid(format!("Mappings.{map_name}"), "must be an object"));
        };
        let entry = mappings.entry(map_name.clone()).or_default();
        for (top, inner) in map {
            let Value::Object(inner) = inner else {
                return Err(invalid(
                    format!("Mappings.{map_name}.{top}"),
                    "must be an object",
                ));
            };
            let leaves = entry.entry(top.clone()).or_default();
            for (second, value) in inner {
                let path = format!("Mappings.{map_name}.{top}.{second}");
                let ok = match value {
                    Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
                    Value::Array(items) => items.iter().all(|item| {
                        matches!(item, Value::String(_) | Value::Number(_) | Value::Bool(_))
                    }),
                    Value::Null | Value::Object(_) => false,
                };
                if !ok {
                    return Err(invalid(path, NO_OBJECTS));
                }
                leaves.insert(second.clone(), value.clone());
            }
        }
    }
    Ok(mappings)
}

fn parse_override(value: &Value, path: &str) -> Result<OverrideSetting, TemplateError> {
    let Value::String(text) = value else {
        return Err(TemplateError::InvalidOverride {
            path: path.into(),
            value: value.to_string(),
        });
    };
    OverrideSetting::parse(text).ok_or_else(|| TemplateError::InvalidOverride {
        path: path.into(),
        value: text.clone(),
    })
}

fn parse_thing_overrides(value: &Value, path: &str) -> Result<ThingOverrides, TemplateError> {
    let Value::Object(settings) = value else {
        return Err(invalid(path, "must be an object"));
    };
    let mut overrides = ThingOverrides::default();
    let mut seen: [Option<&str>; 3] = [None; 3];
    for (key, value) in settings {
        let field_path = format!("{path}.{key}");
        let slot = match key.as_str() {
            "AttributePayload" | "ATTRIBUTE_PAYLOAD" => 0,
            "ThingTypeName" | "THING_TYPE_NAME" => 1,
            "ThingGroups" | "THING_GROUPS" => 2,
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "unknown override `{other}` (allowed: AttributePayload, ThingTypeName, ThingGroups)"
                    ),
                ));
            }
        };
        if let Some(previous) = seen[slot] {
            return Err(invalid(
                path,
                format!("`{previous}` and `{key}` set the same override"),
            ));
        }
        seen[slot] = Some(key.as_str());
        let setting = parse_override(value, &field_path)?;
        match slot {
            0 => overrides.attribute_payload = setting,
            1 => {
                if setting == OverrideSetting::Merge {
                    return Err(TemplateError::MergeNotAllowed { path: field_path });
                }
                overrides.thing_type_name = setting;
            }
            _ => overrides.thing_groups = setting,
        }
    }
    Ok(overrides)
}

fn parse_certificate_overrides(
    value: &Value,
    path: &str,
) -> Result<OverrideSetting, TemplateError> {
    let Value::Object(settings) = value else {
        return Err(invalid(path, "must be an object"));
    };
    let mut status = OverrideSetting::DoNothing;
    let mut seen = false;
    for (key, value) in settings {
        if key != "Status" && key != "STATUS" {
            return Err(invalid(
                path,
                format!("unknown override `{key}` (allowed: Status)"),
            ));
        }
        if seen {
            return Err(invalid(path, "`Status` is set twice"));
        }
        seen = true;
        let field_path = format!("{path}.{key}");
        status = parse_override(value, &field_path)?;
        if status == OverrideSetting::Merge {
            return Err(TemplateError::MergeNotAllowed { path: field_path });
        }
    }
    Ok(status)
}

fn parse_thing(
    name: &str,
    properties: &Map<String, Value>,
    path: &str,
    overrides: ThingOverrides,
) -> Result<ThingResource, TemplateError> {
    let mut thing_name = None;
    let mut attribute_payload = None;
    let mut thing_type_name = None;
    let mut thing_groups = None;
    for (key, value) in properties {
        let prop_path = format!("{path}.{key}");
        let slot = match key.as_str() {
            "ThingName" => &mut thing_name,
            "AttributePayload" => &mut attribute_payload,
            "ThingTypeName" => &mut thing_type_name,
            "ThingGroups" => &mut thing_groups,
            "BillingGroup" => {
                // Accepted for compatibility and ignored; its shape is still checked.
                parse_expr(value, &prop_path, 0)?;
                continue;
            }
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "unknown property `{other}` of AWS::IoT::Thing (allowed: ThingName, \
                         AttributePayload, ThingTypeName, ThingGroups, BillingGroup)"
                    ),
                ));
            }
        };
        *slot = Some(parse_expr(value, &prop_path, 0)?);
    }
    let thing_name = thing_name.ok_or_else(|| TemplateError::MissingProperty {
        path: format!("{path}.ThingName"),
    })?;
    Ok(ThingResource {
        logical_name: name.into(),
        thing_name,
        attribute_payload,
        thing_type_name,
        thing_groups,
        overrides,
    })
}

fn parse_cert_status(text: &str) -> Option<PlannedCertStatus> {
    if text.eq_ignore_ascii_case("ACTIVE") {
        Some(PlannedCertStatus::Active)
    } else if text.eq_ignore_ascii_case("INACTIVE") {
        Some(PlannedCertStatus::Inactive)
    } else {
        None
    }
}

fn bad_status(path: String, text: &str) -> TemplateError {
    invalid(
        path,
        format!("certificate status `{text}` is not ACTIVE or INACTIVE"),
    )
}

fn parse_certificate(
    name: &str,
    properties: &Map<String, Value>,
    path: &str,
    status_override: OverrideSetting,
) -> Result<CertificateResource, TemplateError> {
    let mut certificate_id = None;
    let mut status = None;
    for (key, value) in properties {
        let prop_path = format!("{path}.{key}");
        match key.as_str() {
            "CertificateId" => certificate_id = Some(parse_expr(value, &prop_path, 0)?),
            "Status" => {
                let expr = parse_expr(value, &prop_path, 0)?;
                if let Expr::Scalar(Value::String(text)) = &expr
                    && parse_cert_status(text).is_none()
                {
                    return Err(bad_status(prop_path, text));
                }
                status = Some(expr);
            }
            "CertificatePem" | "CertificateSigningRequest" | "CACertificatePem" => {
                return Err(TemplateError::UnsupportedCertificateSource { path: prop_path });
            }
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "unknown property `{other}` of AWS::IoT::Certificate (allowed: CertificateId, Status)"
                    ),
                ));
            }
        }
    }
    let certificate_id = certificate_id.ok_or_else(|| TemplateError::MissingProperty {
        path: format!("{path}.CertificateId"),
    })?;
    Ok(CertificateResource {
        logical_name: name.into(),
        certificate_id,
        status,
        status_override,
    })
}

fn parse_policy(
    name: &str,
    properties: &Map<String, Value>,
    path: &str,
) -> Result<PolicyResource, TemplateError> {
    let mut policy_name = None;
    let mut policy_document = None;
    for (key, value) in properties {
        let prop_path = format!("{path}.{key}");
        match key.as_str() {
            "PolicyName" => policy_name = Some(parse_expr(value, &prop_path, 0)?),
            "PolicyDocument" => policy_document = Some(parse_expr(value, &prop_path, 0)?),
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "unknown property `{other}` of AWS::IoT::Policy (allowed: PolicyName, PolicyDocument)"
                    ),
                ));
            }
        }
    }
    if policy_name.is_none() && policy_document.is_none() {
        return Err(invalid(
            path,
            "an AWS::IoT::Policy needs PolicyName (an existing policy) or PolicyDocument",
        ));
    }
    Ok(PolicyResource {
        logical_name: name.into(),
        policy_name,
        policy_document,
    })
}

fn is_intrinsic_key(key: &str) -> bool {
    key == "Ref" || key.starts_with("Fn::")
}

fn parse_expr(value: &Value, path: &str, depth: usize) -> Result<Expr, TemplateError> {
    if depth > MAX_EXPRESSION_DEPTH {
        return Err(TemplateError::DepthExceeded {
            path: path.into(),
            max: MAX_EXPRESSION_DEPTH,
        });
    }
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            Ok(Expr::Scalar(value.clone()))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_expr(item, &format!("{path}[{i}]"), depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Expr::List),
        Value::Object(map) => {
            if let Some(function) = map.keys().find(|k| is_intrinsic_key(k)) {
                if map.len() != 1 {
                    return Err(invalid(
                        path,
                        format!(
                            "an intrinsic function object must have exactly one key; \
                             `{function}` has siblings"
                        ),
                    ));
                }
                let (function, args) = map.iter().next().expect("one key");
                let call = parse_call(function, args, path, depth)?;
                return Ok(Expr::Call {
                    path: path.into(),
                    call: Box::new(call),
                });
            }
            map.iter()
                .map(|(k, v)| Ok((k.clone(), parse_expr(v, &format!("{path}.{k}"), depth + 1)?)))
                .collect::<Result<Vec<_>, _>>()
                .map(Expr::Object)
        }
    }
}

/// The arguments of a function taking a fixed-length list, parsed.
fn call_args<const N: usize>(
    function: &str,
    args: &Value,
    path: &str,
    depth: usize,
    shape: &str,
) -> Result<[Expr; N], TemplateError> {
    let fn_path = format!("{path}.{function}");
    let items = match args {
        Value::Array(items) if items.len() == N => items,
        _ => return Err(invalid(fn_path, format!("expects {shape}"))),
    };
    let mut parsed = Vec::with_capacity(N);
    for (i, item) in items.iter().enumerate() {
        parsed.push(parse_expr(item, &format!("{fn_path}[{i}]"), depth + 1)?);
    }
    Ok(parsed.try_into().expect("N arguments"))
}

fn parse_call(
    function: &str,
    args: &Value,
    path: &str,
    depth: usize,
) -> Result<Call, TemplateError> {
    match function {
        "Ref" => match args {
            Value::String(name) => Ok(Call::Ref(name.clone())),
            _ => Err(invalid(
                format!("{path}.Ref"),
                "expects a parameter name (a string)",
            )),
        },
        "Fn::Join" => {
            let [delimiter, list] =
                call_args(function, args, path, depth, "[delimiter, [values]]")?;
            Ok(Call::Join { delimiter, list })
        }
        "Fn::Select" => {
            let [index, list] = call_args(function, args, path, depth, "[index, [values]]")?;
            Ok(Call::Select { index, list })
        }
        "Fn::FindInMap" => {
            let [map, top, second] = call_args(
                function,
                args,
                path,
                depth,
                "[map name, top-level key, second-level key]",
            )?;
            Ok(Call::FindInMap { map, top, second })
        }
        "Fn::Split" => {
            let [delimiter, source] =
                call_args(function, args, path, depth, "[delimiter, string]")?;
            Ok(Call::Split { delimiter, source })
        }
        "Fn::Sub" => {
            let fn_path = format!("{path}.Fn::Sub");
            let shape = "expects \"text\" or [\"text\", {variables}]";
            let (text, vars) = match args {
                Value::String(text) => (text, None),
                Value::Array(items) => match items.as_slice() {
                    [Value::String(text), Value::Object(vars)] => (text, Some(vars)),
                    _ => return Err(invalid(fn_path, shape)),
                },
                _ => return Err(invalid(fn_path, shape)),
            };
            let parts = parse_sub_text(text, &fn_path)?;
            let mut parsed_vars = Vec::new();
            if let Some(vars) = vars {
                for (name, value) in vars {
                    let var_path = format!("{fn_path}[1].{name}");
                    parsed_vars.push((name.clone(), parse_expr(value, &var_path, depth + 1)?));
                }
            }
            Ok(Call::Sub {
                parts,
                vars: parsed_vars,
            })
        }
        other => Err(TemplateError::UnsupportedIntrinsic {
            path: path.into(),
            name: other.into(),
        }),
    }
}

/// Splits `Fn::Sub` text into literal runs and `${Name}` variables;
/// `${!Literal}` stands for the text `${Literal}`.
fn parse_sub_text(text: &str, path: &str) -> Result<Vec<SubPart>, TemplateError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        literal.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(invalid(path, "`${` without a closing `}`"));
        };
        let name = &after[..end];
        if let Some(escaped) = name.strip_prefix('!') {
            literal.push_str("${");
            literal.push_str(escaped);
            literal.push('}');
        } else if name.is_empty() {
            return Err(invalid(path, "empty variable `${}`"));
        } else {
            if !literal.is_empty() {
                parts.push(SubPart::Text(std::mem::take(&mut literal)));
            }
            parts.push(SubPart::Var(name.into()));
        }
        rest = &after[end + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(SubPart::Text(literal));
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------
// Evaluation.
// ---------------------------------------------------------------------------

/// Runs the template with the given parameter values.
///
/// A supplied value wins over the declared `Default`. Values may be supplied
/// for names the template does not declare (the `AWS::IoT::Certificate::*`
/// built-ins in particular); a `Ref` may read them.
pub fn evaluate(
    template: &ProvisioningTemplate,
    parameters: &BTreeMap<String, String>,
) -> Result<ProvisioningPlan, TemplateError> {
    let ctx = Evaluator {
        template,
        supplied: parameters,
    };
    let thing = template
        .thing
        .as_ref()
        .map(|thing| ctx.thing(thing))
        .transpose()?;
    let certificate = template
        .certificate
        .as_ref()
        .map(|cert| ctx.certificate(cert))
        .transpose()?;
    let policies = template
        .policies
        .iter()
        .map(|policy| ctx.policy(policy))
        .collect::<Result<Vec<_>, _>>()?;
    let mut device_configuration = BTreeMap::new();
    for (key, expr) in &template.device_configuration {
        let value = match ctx.eval(expr)? {
            Value::Array(_) | Value::Object(_) => {
                return Err(TemplateError::NestedDeviceConfiguration { key: key.clone() });
            }
            Value::Null => {
                return Err(invalid(
                    format!("DeviceConfiguration.{key}"),
                    "value is null; DeviceConfiguration values must be strings",
                ));
            }
            other => scalar_text(&other).expect("a scalar"),
        };
        device_configuration.insert(key.clone(), value);
    }
    Ok(ProvisioningPlan {
        thing,
        certificate,
        policies,
        device_configuration,
    })
}

struct Evaluator<'a> {
    template: &'a ProvisioningTemplate,
    supplied: &'a BTreeMap<String, String>,
}

/// What an evaluated value is, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The value as text: strings as they are, numbers and booleans stringified.
fn expect_text(value: Value, path: &str, what: &str) -> Result<String, TemplateError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(invalid(
            path,
            format!("{what} must be a string, not {}", kind(&other)),
        )),
    }
}

fn check_size(len: usize, path: &str) -> Result<(), TemplateError> {
    if len > MAX_VALUE_BYTES {
        return Err(TemplateError::ValueTooLarge {
            path: path.into(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

impl Evaluator<'_> {
    /// A parameter's value: supplied, else its Default.
    fn parameter(&self, name: &str) -> Option<Result<String, TemplateError>> {
        if let Some(value) = self.supplied.get(name) {
            return Some(Ok(value.clone()));
        }
        match self.template.parameters.get(name)? {
            Some(default) => Some(Ok(default.clone())),
            None => Some(Err(TemplateError::MissingParameter(name.into()))),
        }
    }

    fn eval(&self, expr: &Expr) -> Result<Value, TemplateError> {
        match expr {
            Expr::Scalar(value) => Ok(value.clone()),
            Expr::List(items) => items
                .iter()
                .map(|item| self.eval(item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Expr::Object(entries) => {
                let mut map = Map::new();
                for (key, value) in entries {
                    map.insert(key.clone(), self.eval(value)?);
                }
                Ok(Value::Object(map))
            }
            Expr::Call { path, call } => self.call(call, path),
        }
    }

    fn eval_text(&self, expr: &Expr, path: &str, what: &str) -> Result<String, TemplateError> {
        expect_text(self.eval(expr)?, path, what)
    }

    fn call(&self, call: &Call, path: &str) -> Result<Value, TemplateError> {
        match call {
            Call::Ref(name) => match self.parameter(name) {
                Some(value) => value.map(Value::String),
                None => Err(TemplateError::UndeclaredReference {
                    path: path.into(),
                    name: name.clone(),
                }),
            },
            Call::Join { delimiter, list } => {
                let fn_path = format!("{path}.Fn::Join");
                let delimiter = self.eval_text(delimiter, &fn_path, "the delimiter")?;
                let items = match self.eval(list)? {
                    Value::Array(items) => items,
                    other => {
                        return Err(invalid(
                            fn_path,
                            format!("expects a list of values, not {}", kind(&other)),
                        ));
                    }
                };
                let mut texts = Vec::with_capacity(items.len());
                let mut total = delimiter
                    .len()
                    .saturating_mul(items.len().saturating_sub(1));
                for (i, item) in items.into_iter().enumerate() {
                    let text = expect_text(item, &fn_path, &format!("list element {i}"))?;
                    total = total.saturating_add(text.len());
                    texts.push(text);
                }
                check_size(total, &fn_path)?;
                Ok(Value::String(texts.join(&delimiter)))
            }
            Call::Select { index, list } => {
                let fn_path = format!("{path}.Fn::Select");
                let index = match self.eval(index)? {
                    Value::Number(n) => n.as_u64().ok_or_else(|| {
                        invalid(&fn_path, format!("index {n} is not a non-negative integer"))
                    })?,
                    Value::String(s) => s.parse::<u64>().map_err(|_| {
                        invalid(
                            &fn_path,
                            format!("index `{s}` is not a non-negative integer"),
                        )
                    })?,
                    other => {
                        return Err(invalid(
                            fn_path,
                            format!("index must be a number, not {}", kind(&other)),
                        ));
                    }
                };
                let mut items = match self.eval(list)? {
                    Value::Array(items) => items,
                    other => {
                        return Err(invalid(
                            fn_path,
                            format!("expects a list of values, not {}", kind(&other)),
                        ));
                    }
                };
                let len = items.len();
                let position = usize::try_from(index).ok().filter(|&i| i < len).ok_or(
                    TemplateError::IndexOutOfRange {
                        path: fn_path.clone(),
                        index,
                        len,
                    },
                )?;
                match items.swap_remove(position) {
                    Value::Null => Err(invalid(
                        fn_path,
                        format!("element {index} of the list is null"),
                    )),
                    value => Ok(value),
                }
            }
            Call::FindInMap { map, top, second } => {
                let fn_path = format!("{path}.Fn::FindInMap");
                let map = self.eval_text(map, &fn_path, "the map name")?;
                let top = self.eval_text(top, &fn_path, "the top-level key")?;
                let second = self.eval_text(second, &fn_path, "the second-level key")?;
                let missing = |key: String| TemplateError::MissingMappingKey {
                    path: fn_path.clone(),
                    key,
                };
                let entries = self
                    .template
                    .mappings
                    .get(&map)
                    .ok_or_else(|| missing(map.clone()))?;
                let leaves = entries
                    .get(&top)
                    .ok_or_else(|| missing(format!("{map}.{top}")))?;
                leaves
                    .get(&second)
                    .cloned()
                    .ok_or_else(|| missing(format!("{map}.{top}.{second}")))
            }
            Call::Split { delimiter, source } => {
                let fn_path = format!("{path}.Fn::Split");
                let delimiter = self.eval_text(delimiter, &fn_path, "the delimiter")?;
                if delimiter.is_empty() {
                    return Err(invalid(fn_path, "the delimiter must not be empty"));
                }
                let source = self.eval_text(source, &fn_path, "the source")?;
                Ok(Value::Array(
                    source
                        .split(delimiter.as_str())
                        .map(|piece| Value::String(piece.into()))
                        .collect(),
                ))
            }
            Call::Sub { parts, vars } => {
                let fn_path = format!("{path}.Fn::Sub");
                // Each variable is evaluated once, however often the text uses it.
                let mut values = BTreeMap::new();
                for (name, expr) in vars {
                    let value = self.eval_text(expr, &fn_path, &format!("variable `{name}`"))?;
                    values.insert(name.as_str(), value);
                }
                let mut out = String::new();
                for part in parts {
                    match part {
                        SubPart::Text(text) => {
                            check_size(out.len().saturating_add(text.len()), &fn_path)?;
                            out.push_str(text);
                        }
                        SubPart::Var(name) => {
                            let owned;
                            let value = match values.get(name.as_str()) {
                                Some(value) => value.as_str(),
                                None => match self.parameter(name) {
                                    Some(value) => {
                                        owned = value?;
                                        owned.as_str()
                                    }
                                    None => {
                                        return Err(TemplateError::UnknownVariable {
                                            path: fn_path,
                                            name: name.clone(),
                                        });
                                    }
                                },
                            };
                            check_size(out.len().saturating_add(value.len()), &fn_path)?;
                            out.push_str(value);
                        }
                    }
                }
                Ok(Value::String(out))
            }
        }
    }

    fn thing(&self, thing: &ThingResource) -> Result<ThingPlan, TemplateError> {
        let path = format!("Resources.{}.Properties", thing.logical_name);
        let name_path = format!("{path}.ThingName");
        let thing_name = self.eval_text(&thing.thing_name, &name_path, "ThingName")?;
        if thing_name.is_empty() {
            return Err(invalid(name_path, "ThingName evaluates to an empty string"));
        }

        let mut attributes = BTreeMap::new();
        if let Some(expr) = &thing.attribute_payload {
            let attr_path = format!("{path}.AttributePayload");
            match self.eval(expr)? {
                Value::Object(map) => {
                    for (key, value) in map {
                        let text = expect_text(
                            value,
                            &format!("{attr_path}.{key}"),
                            "an attribute value",
                        )?;
                        attributes.insert(key, text);
                    }
                }
                other => {
                    return Err(invalid(
                        attr_path,
                        format!("must be an object of strings, not {}", kind(&other)),
                    ));
                }
            }
        }

        let thing_type = thing
            .thing_type_name
            .as_ref()
            .map(|expr| self.eval_text(expr, &format!("{path}.ThingTypeName"), "ThingTypeName"))
            .transpose()?;

        let mut thing_groups: Vec<String> = Vec::new();
        if let Some(expr) = &thing.thing_groups {
            let groups_path = format!("{path}.ThingGroups");
            match self.eval(expr)? {
                Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        let group =
                            expect_text(item, &format!("{groups_path}[{i}]"), "a thing group")?;
                        if !thing_groups.contains(&group) {
                            thing_groups.push(group);
                        }
                    }
                }
                other => {
                    return Err(invalid(
                        groups_path,
                        format!("must be a list of strings, not {}", kind(&other)),
                    ));
                }
            }
        }

        Ok(ThingPlan {
            thing_name,
            attributes,
            thing_type,
            thing_groups,
            overrides: thing.overrides,
        })
    }

    fn certificate(&self, cert: &CertificateResource) -> Result<CertificatePlan, TemplateError> {
        let path = format!("Resources.{}.Properties", cert.logical_name);
        let id_path = format!("{path}.CertificateId");
        let certificate_id = self.eval_text(&cert.certificate_id, &id_path, "CertificateId")?;
        if certificate_id.is_empty() {
            return Err(invalid(
                id_path,
                "CertificateId evaluates to an empty string",
            ));
        }
        let status = match &cert.status {
            None => PlannedCertStatus::Active,
            Some(expr) => {
                let status_path = format!("{path}.Status");
                let text = self.eval_text(expr, &status_path, "Status")?;
                parse_cert_status(&text).ok_or_else(|| bad_status(status_path, &text))?
            }
        };
        Ok(CertificatePlan {
            certificate_id,
            status,
            status_override: cert.status_override,
        })
    }

    fn policy(&self, policy: &PolicyResource) -> Result<PolicyPlan, TemplateError> {
        let path = format!("Resources.{}.Properties", policy.logical_name);
        let name = policy
            .policy_name
            .as_ref()
            .map(|expr| self.eval_text(expr, &format!("{path}.PolicyName"), "PolicyName"))
            .transpose()?;
        let Some(document) = &policy.policy_document else {
            let name = name.expect("parse requires PolicyName or PolicyDocument");
            return Ok(PolicyPlan::Named(name));
        };
        let doc_path = format!("{path}.PolicyDocument");
        let document = match self.eval(document)? {
            object @ Value::Object(_) => object,
            Value::String(text) => match serde_json::from_str::<Value>(&text) {
                Ok(object @ Value::Object(_)) => object,
                Ok(other) => {
                    return Err(invalid(
                        doc_path,
                        format!("the document must be a JSON object, not {}", kind(&other)),
                    ));
                }
                Err(e) => {
                    return Err(invalid(
                        doc_path,
                        format!("the document string is not valid JSON: {e}"),
                    ));
                }
            },
            other => {
                return Err(invalid(
                    doc_path,
                    format!(
                        "must be a JSON object or a string holding one, not {}",
                        kind(&other)
                    ),
                ));
            }
        };
        Ok(PolicyPlan::Document {
            name,
            document: document.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(template: &Value, pairs: &[(&str, &str)]) -> Result<ProvisioningPlan, TemplateError> {
        let template = ProvisioningTemplate::parse(&template.to_string())?;
        evaluate(&template, &params(pairs))
    }

    /// A template whose only content is one DeviceConfiguration entry.
    fn config_value(value: Value) -> Value {
        json!({ "Resources": {}, "DeviceConfiguration": { "out": value } })
    }

    fn eval_config(value: Value, pairs: &[(&str, &str)]) -> Result<String, TemplateError> {
        run(&config_value(value), pairs).map(|plan| plan.device_configuration["out"].clone())
    }

    fn fleet_template() -> Value {
        json!({
            "Parameters": {
                "SerialNumber": { "Type": "String" },
                "DeviceLocation": { "Type": "String", "Default": "WA" },
                "AWS::IoT::Certificate::Id": { "Type": "String" }
            },
            "Mappings": {
                "LocationTable": {
                    "Seattle": { "LocationUrl": "https://example.com/seattle" },
                    "WA": { "LocationUrl": "https://example.com/wa" }
                }
            },
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "OverrideSettings": {
                        "AttributePayload": "MERGE",
                        "ThingTypeName": "REPLACE",
                        "ThingGroups": "DO_NOTHING"
                    },
                    "Properties": {
                        "ThingName": { "Fn::Join": ["", ["ThingPrefix_", { "Ref": "SerialNumber" }]] },
                        "AttributePayload": { "version": "v1", "serialNumber": { "Ref": "SerialNumber" } },
                        "ThingTypeName": "lightBulb-versionA",
                        "ThingGroups": ["v1-lightbulbs", { "Ref": "DeviceLocation" }]
                    }
                },
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {
                        "CertificateId": { "Ref": "AWS::IoT::Certificate::Id" },
                        "Status": "Active"
                    },
                    "OverrideSettings": { "Status": "DO_NOTHING" }
                },
                "policy": {
                    "Type": "AWS::IoT::Policy",
                    "Properties": {
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [{
                                "Effect": "Allow",
                                "Action": ["iot:Publish"],
                                "Resource": ["arn:aws:iot:us-east-1:123456789012:topic/foo/bar"]
                            }]
                        }
                    }
                }
            },
            "DeviceConfiguration": {
                "FallbackUrl": "https://www.example.com/test-site",
                "LocationUrl": { "Fn::FindInMap": ["LocationTable", { "Ref": "DeviceLocation" }, "LocationUrl"] }
            }
        })
    }

    #[test]
    fn golden_fleet_provisioning_template() {
        let body = serde_json::to_string_pretty(&fleet_template()).unwrap();
        let template = ProvisioningTemplate::parse(&body).unwrap();
        assert_eq!(
            template.parameters(),
            &BTreeMap::from([
                ("AWS::IoT::Certificate::Id".to_string(), None),
                ("DeviceLocation".to_string(), Some("WA".to_string())),
                ("SerialNumber".to_string(), None),
            ])
        );
        let plan = evaluate(
            &template,
            &params(&[
                ("SerialNumber", "123"),
                ("DeviceLocation", "Seattle"),
                ("AWS::IoT::Certificate::Id", "abc123"),
            ]),
        )
        .unwrap();

        assert_eq!(
            plan.thing,
            Some(ThingPlan {
                thing_name: "ThingPrefix_123".into(),
                attributes: BTreeMap::from([
                    ("serialNumber".to_string(), "123".to_string()),
                    ("version".to_string(), "v1".to_string()),
                ]),
                thing_type: Some("lightBulb-versionA".into()),
                thing_groups: vec!["v1-lightbulbs".into(), "Seattle".into()],
                overrides: ThingOverrides {
                    attribute_payload: OverrideSetting::Merge,
                    thing_type_name: OverrideSetting::Replace,
                    thing_groups: OverrideSetting::DoNothing,
                },
            })
        );
        assert_eq!(
            plan.certificate,
            Some(CertificatePlan {
                certificate_id: "abc123".into(),
                status: PlannedCertStatus::Active,
                status_override: OverrideSetting::DoNothing,
            })
        );
        assert_eq!(plan.policies.len(), 1);
        let PolicyPlan::Document { name, document } = &plan.policies[0] else {
            panic!("expected an inline document: {:?}", plan.policies);
        };
        assert_eq!(name, &None);
        assert_eq!(
            serde_json::from_str::<Value>(document).unwrap(),
            fleet_template()["Resources"]["policy"]["Properties"]["PolicyDocument"]
        );
        assert_eq!(
            plan.device_configuration,
            BTreeMap::from([
                (
                    "FallbackUrl".to_string(),
                    "https://www.example.com/test-site".to_string()
                ),
                (
                    "LocationUrl".to_string(),
                    "https://example.com/seattle".to_string()
                ),
            ])
        );

        // Without DeviceLocation the Default applies, to the groups and the mapping.
        let plan = evaluate(
            &template,
            &params(&[("SerialNumber", "9"), ("AWS::IoT::Certificate::Id", "c")]),
        )
        .unwrap();
        assert_eq!(plan.thing.unwrap().thing_groups, ["v1-lightbulbs", "WA"]);
        assert_eq!(
            plan.device_configuration["LocationUrl"],
            "https://example.com/wa"
        );

        // The plan round-trips through serde.
        let plan = run(
            &fleet_template(),
            &[("SerialNumber", "1"), ("AWS::IoT::Certificate::Id", "x")],
        )
        .unwrap();
        let text = serde_json::to_string(&plan).unwrap();
        assert!(text.contains("\"MERGE\""), "{text}");
        assert_eq!(
            serde_json::from_str::<ProvisioningPlan>(&text).unwrap(),
            plan
        );
    }

    const JITP_TEMPLATE: &str = r#"{
        "Parameters": {
            "AWS::IoT::Certificate::CommonName": { "Type": "String" },
            "AWS::IoT::Certificate::SerialNumber": { "Type": "String" },
            "AWS::IoT::Certificate::Country": { "Type": "String" },
            "AWS::IoT::Certificate::Id": { "Type": "String" }
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": { "Ref": "AWS::IoT::Certificate::CommonName" },
                    "AttributePayload": {
                        "version": "v1",
                        "serialNumber": { "Ref": "AWS::IoT::Certificate::SerialNumber" }
                    },
                    "ThingTypeName": "lightBulb-versionA",
                    "ThingGroups": ["v1-lightbulbs", { "Ref": "AWS::IoT::Certificate::Country" }]
                },
                "OverrideSettings": {
                    "ATTRIBUTE_PAYLOAD": "REPLACE",
                    "THING_TYPE_NAME": "FAIL",
                    "THING_GROUPS": "MERGE"
                }
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificateId": { "Ref": "AWS::IoT::Certificate::Id" },
                    "Status": "ACTIVE"
                }
            },
            "policy": {
                "Type": "AWS::IoT::Policy",
                "Properties": {
                    "PolicyDocument": "{ \"Version\": \"2012-10-17\", \"Statement\": [{ \"Effect\": \"Allow\", \"Action\": [\"iot:Connect\"], \"Resource\": [\"arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}\"] }] }"
                }
            }
        }
    }"#;

    #[test]
    fn golden_jitp_template() {
        let template = ProvisioningTemplate::parse(JITP_TEMPLATE).unwrap();
        let plan = evaluate(
            &template,
            &params(&[
                ("AWS::IoT::Certificate::CommonName", "bulb-0042"),
                ("AWS::IoT::Certificate::SerialNumber", "0042"),
                ("AWS::IoT::Certificate::Country", "NZ"),
                ("AWS::IoT::Certificate::Id", "f00d"),
                // Supplied but not declared: harmless.
                ("AWS::IoT::Certificate::Organization", "Acme"),
            ]),
        )
        .unwrap();
        let thing = plan.thing.unwrap();
        assert_eq!(thing.thing_name, "bulb-0042");
        assert_eq!(thing.attributes["serialNumber"], "0042");
        assert_eq!(thing.thing_groups, ["v1-lightbulbs", "NZ"]);
        assert_eq!(
            thing.overrides,
            ThingOverrides {
                attribute_payload: OverrideSetting::Replace,
                thing_type_name: OverrideSetting::Fail,
                thing_groups: OverrideSetting::Merge,
            }
        );
        assert_eq!(plan.certificate.unwrap().certificate_id, "f00d");
        assert!(plan.device_configuration.is_empty());
        let [
            PolicyPlan::Document {
                name: None,
                document,
            },
        ] = plan.policies.as_slice()
        else {
            panic!("{:?}", plan.policies);
        };
        let document: Value = serde_json::from_str(document).unwrap();
        assert_eq!(
            document["Statement"][0]["Resource"][0],
            "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"
        );
        // Compact output, whichever form the template used.
        if let PolicyPlan::Document { document, .. } = &plan.policies[0] {
            assert!(
                !document.contains('\n') && !document.contains(": "),
                "{document}"
            );
        }
    }

    #[test]
    fn jitp_declared_but_unread_parameter_may_be_absent() {
        // Country is declared but this certificate carries none; only reading it fails.
        let body = JITP_TEMPLATE.replace(
            r#"{ "Ref": "AWS::IoT::Certificate::Country" }"#,
            r#""europe""#,
        );
        let template = ProvisioningTemplate::parse(&body).unwrap();
        let plan = evaluate(
            &template,
            &params(&[
                ("AWS::IoT::Certificate::CommonName", "bulb"),
                ("AWS::IoT::Certificate::SerialNumber", "1"),
                ("AWS::IoT::Certificate::Id", "f00d"),
            ]),
        )
        .unwrap();
        assert_eq!(
            plan.thing.unwrap().thing_groups,
            ["v1-lightbulbs", "europe"]
        );
    }

    #[test]
    fn named_policies_and_named_documents() {
        let template = json!({
            "Parameters": { "Env": { "Type": "String", "Default": "prod" } },
            "Resources": {
                "b_existing": { "Type": "AWS::IoT::Policy", "Properties": { "PolicyName": "DevicePolicy" } },
                "a_new": { "Type": "AWS::IoT::Policy", "Properties": {
                    "PolicyName": { "Fn::Sub": "device-${Env}" },
                    "PolicyDocument": { "Version": "2012-10-17", "Statement": [] }
                } }
            }
        });
        let plan = run(&template, &[]).unwrap();
        let [
            PolicyPlan::Document {
                name: Some(name),
                document,
            },
            PolicyPlan::Named(existing),
        ] = plan.policies.as_slice()
        else {
            panic!("{:?}", plan.policies);
        };
        assert_eq!(name, "device-prod");
        assert_eq!(existing, "DevicePolicy");
        assert_eq!(
            serde_json::from_str::<Value>(document).unwrap(),
            json!({ "Version": "2012-10-17", "Statement": [] })
        );
        assert!(plan.thing.is_none() && plan.certificate.is_none());
    }

    #[test]
    fn certificate_status_is_case_insensitive_and_defaults_to_active() {
        for (status, expected) in [
            (Some("inactive"), PlannedCertStatus::Inactive),
            (Some("Inactive"), PlannedCertStatus::Inactive),
            (Some("aCtIvE"), PlannedCertStatus::Active),
            (None, PlannedCertStatus::Active),
        ] {
            let mut props = json!({ "CertificateId": "id" });
            if let Some(status) = status {
                props["Status"] = json!(status);
            }
            let template = json!({ "Resources": { "c": {
                "Type": "AWS::IoT::Certificate", "Properties": props,
                "OverrideSettings": { "Status": "REPLACE" }
            } } });
            let cert = run(&template, &[]).unwrap().certificate.unwrap();
            assert_eq!(cert.status, expected);
            assert_eq!(cert.status_override, OverrideSetting::Replace);
        }
        // A status that only a parameter reveals is checked at evaluation.
        let template = json!({
            "Parameters": { "S": { "Type": "String" } },
            "Resources": { "c": { "Type": "AWS::IoT::Certificate",
                "Properties": { "CertificateId": "id", "Status": { "Ref": "S" } } } }
        });
        let err = run(&template, &[("S", "REVOKED")]).unwrap_err();
        assert!(
            err.to_string().contains("Resources.c.Properties.Status"),
            "{err}"
        );
        assert!(err.to_string().contains("REVOKED"), "{err}");
        let template = json!({ "Resources": { "c": { "Type": "AWS::IoT::Certificate",
            "Properties": { "CertificateId": "id", "Status": "PENDING" } } } });
        assert!(matches!(
            ProvisioningTemplate::parse(&template.to_string()),
            Err(TemplateError::Invalid { .. })
        ));
    }

    #[test]
    fn intrinsics_compose() {
        let template = json!({
            "Parameters": {
                "Csv": { "Type": "String", "Default": "a,b,c" },
                "Idx": { "Type": "String", "Default": "2" }
            },
            "Mappings": { "M": { "k": { "list": ["x", "y"], "n": 7, "flag": true } } },
            "Resources": {},
            "DeviceConfiguration": {
                "third": { "Fn::Select": [{ "Ref": "Idx" }, { "Fn::Split": [",", { "Ref": "Csv" }] }] },
                "joined": { "Fn::Join": ["-", { "Fn::FindInMap": ["M", "k", "list"] }] },
                "number": { "Fn::FindInMap": ["M", "k", "n"] },
                "bool": { "Fn::FindInMap": ["M", "k", "flag"] },
                "literal_number": 42,
                "sub": { "Fn::Sub": ["${Csv}/${X}/${!Literal}/$x", { "X": { "Fn::Select": [0, ["first"]] } }] },
                "sub_param_shadowed": { "Fn::Sub": ["${Csv}", { "Csv": "local" }] }
            }
        });
        let config = run(&template, &[]).unwrap().device_configuration;
        assert_eq!(config["third"], "c");
        assert_eq!(config["joined"], "x-y");
        assert_eq!(config["number"], "7");
        assert_eq!(config["bool"], "true");
        assert_eq!(config["literal_number"], "42");
        assert_eq!(config["sub"], "a,b,c/first/${Literal}/$x");
        assert_eq!(config["sub_param_shadowed"], "local");
    }

    #[test]
    fn error_missing_parameter_is_named() {
        let err = run(&fleet_template(), &[("AWS::IoT::Certificate::Id", "x")]).unwrap_err();
        assert_eq!(err, TemplateError::MissingParameter("SerialNumber".into()));
        assert!(err.to_string().contains("`SerialNumber`"), "{err}");
    }

    #[test]
    fn error_select_out_of_range_states_index_and_length() {
        let err = eval_config(json!({ "Fn::Select": [3, ["a", "b"]] }), &[]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::IndexOutOfRange {
                path: "DeviceConfiguration.out.Fn::Select".into(),
                index: 3,
                len: 2,
            }
        );
        let message = err.to_string();
        assert!(
            message.contains("index 3") && message.contains("length 2"),
            "{message}"
        );
        // Null, negative and non-numeric indices and null elements are errors too.
        for bad in [
            json!({ "Fn::Select": [null, ["a"]] }),
            json!({ "Fn::Select": [-1, ["a"]] }),
            json!({ "Fn::Select": [0.5, ["a"]] }),
            json!({ "Fn::Select": ["one", ["a"]] }),
            json!({ "Fn::Select": [0, [null]] }),
            json!({ "Fn::Select": [0, null] }),
        ] {
            assert!(
                matches!(
                    eval_config(bad.clone(), &[]),
                    Err(TemplateError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_find_in_map_missing_key_is_named() {
        let template = json!({
            "Parameters": { "Loc": { "Type": "String" } },
            "Mappings": { "LocationTable": { "Seattle": { "LocationUrl": "u" } } },
            "Resources": {},
            "DeviceConfiguration": {
                "out": { "Fn::FindInMap": ["LocationTable", { "Ref": "Loc" }, "LocationUrl"] }
            }
        });
        let err = run(&template, &[("Loc", "Boston")]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingMappingKey {
                path: "DeviceConfiguration.out.Fn::FindInMap".into(),
                key: "LocationTable.Boston".into(),
            }
        );
        assert!(err.to_string().contains("LocationTable.Boston"), "{err}");
        let err = eval_config(json!({ "Fn::FindInMap": ["Nope", "a", "b"] }), &[]).unwrap_err();
        assert!(err.to_string().contains("`Nope`"), "{err}");
    }

    #[test]
    fn error_unknown_resource_type() {
        let template =
            json!({ "Resources": { "role": { "Type": "AWS::IAM::Role", "Properties": {} } } });
        let err = run(&template, &[]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownResourceType {
                resource: "role".into(),
                type_name: "AWS::IAM::Role".into(),
            }
        );
        assert!(err.to_string().contains("`role`"), "{err}");
    }

    #[test]
    fn error_unknown_intrinsic() {
        let err = eval_config(json!({ "Fn::GetAtt": ["thing", "Arn"] }), &[]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnsupportedIntrinsic {
                path: "DeviceConfiguration.out".into(),
                name: "Fn::GetAtt".into(),
            }
        );
        assert!(err.to_string().contains("unsupported intrinsic"), "{err}");
        // An intrinsic key next to other keys is malformed, not a plain object.
        let err = eval_config(json!({ "Ref": "x", "other": 1 }), &[]).unwrap_err();
        assert!(matches!(err, TemplateError::Invalid { .. }), "{err}");
    }

    fn thing_with_overrides(overrides: Value) -> Value {
        json!({ "Resources": { "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": { "ThingName": "t" },
            "OverrideSettings": overrides
        } } })
    }

    #[test]
    fn error_bad_override_value() {
        let err = run(
            &thing_with_overrides(json!({ "ThingGroups": "OVERWRITE" })),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err,
            TemplateError::InvalidOverride {
                path: "Resources.thing.OverrideSettings.ThingGroups".into(),
                value: "OVERWRITE".into(),
            }
        );
        assert!(matches!(
            run(&thing_with_overrides(json!({ "Color": "REPLACE" })), &[]),
            Err(TemplateError::Invalid { .. })
        ));
        assert!(matches!(
            run(
                &thing_with_overrides(json!({ "ThingGroups": "MERGE", "THING_GROUPS": "FAIL" })),
                &[]
            ),
            Err(TemplateError::Invalid { .. })
        ));
    }

    #[test]
    fn error_merge_on_thing_type_name() {
        for key in ["ThingTypeName", "THING_TYPE_NAME"] {
            let err = run(&thing_with_overrides(json!({ key: "MERGE" })), &[]).unwrap_err();
            assert_eq!(
                err,
                TemplateError::MergeNotAllowed {
                    path: format!("Resources.thing.OverrideSettings.{key}"),
                }
            );
        }
        let template = json!({ "Resources": { "c": { "Type": "AWS::IoT::Certificate",
            "Properties": { "CertificateId": "id" }, "OverrideSettings": { "Status": "MERGE" } } } });
        assert!(matches!(
            run(&template, &[]),
            Err(TemplateError::MergeNotAllowed { .. })
        ));
    }

    #[test]
    fn error_two_thing_resources() {
        let template = json!({ "Resources": {
            "one": { "Type": "AWS::IoT::Thing", "Properties": { "ThingName": "a" } },
            "two": { "Type": "AWS::IoT::Thing", "Properties": { "ThingName": "b" } }
        } });
        assert_eq!(
            run(&template, &[]).unwrap_err(),
            TemplateError::DuplicateResource {
                type_name: "AWS::IoT::Thing".into(),
                first: "one".into(),
                second: "two".into(),
            }
        );
        let template = json!({ "Resources": {
            "c1": { "Type": "AWS::IoT::Certificate", "Properties": { "CertificateId": "a" } },
            "c2": { "Type": "AWS::IoT::Certificate", "Properties": { "CertificateId": "b" } }
        } });
        assert!(matches!(
            run(&template, &[]),
            Err(TemplateError::DuplicateResource { .. })
        ));
    }

    #[test]
    fn error_oversize_body() {
        let padding = "x".repeat(MAX_TEMPLATE_CHARS);
        let body =
            json!({ "Resources": {}, "DeviceConfiguration": { "pad": padding } }).to_string();
        let err = ProvisioningTemplate::parse(&body).unwrap_err();
        assert_eq!(
            err,
            TemplateError::TooLarge {
                chars: body.chars().count(),
                max: MAX_TEMPLATE_CHARS,
            }
        );
        // The limit counts characters, not bytes.
        let wide = "é".repeat(6000);
        let body = json!({ "Resources": {}, "DeviceConfiguration": { "pad": wide } }).to_string();
        assert!(body.len() > MAX_TEMPLATE_CHARS);
        assert!(ProvisioningTemplate::parse(&body).is_ok());
    }

    #[test]
    fn error_non_json_body() {
        for body in ["", "{", "Resources:", "{\"Resources\": {},}"] {
            assert!(
                matches!(
                    ProvisioningTemplate::parse(body),
                    Err(TemplateError::InvalidJson(_))
                ),
                "{body:?}"
            );
        }
        assert!(matches!(
            ProvisioningTemplate::parse("[1, 2]"),
            Err(TemplateError::Invalid { .. })
        ));
    }

    #[test]
    fn error_structure() {
        let err = ProvisioningTemplate::parse(r#"{"Resources": {}, "Outputs": {}}"#).unwrap_err();
        assert_eq!(err, TemplateError::UnknownSection("Outputs".into()));
        assert_eq!(
            ProvisioningTemplate::parse(r#"{"Parameters": {}}"#).unwrap_err(),
            TemplateError::MissingSection("Resources".into())
        );
        let err = ProvisioningTemplate::parse(
            r#"{"Parameters": {"N": {"Type": "Number"}}, "Resources": {}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("Parameters.N.Type"), "{err}");
        let err = ProvisioningTemplate::parse(
            r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {}}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingProperty {
                path: "Resources.t.Properties.ThingName".into()
            }
        );
        let err = ProvisioningTemplate::parse(
            r#"{"Mappings": {"M": {"a": {"b": {"Ref": "x"}}}}, "Resources": {}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("Mappings.M.a.b"), "{err}");
        for source in ["CertificatePem", "CertificateSigningRequest"] {
            let body = json!({ "Resources": { "c": { "Type": "AWS::IoT::Certificate",
                "Properties": { source: "-----BEGIN" } } } });
            let err = run(&body, &[]).unwrap_err();
            assert!(err.to_string().contains("use CertificateId"), "{err}");
            assert!(err.to_string().contains(source), "{err}");
        }
        let body =
            json!({ "Resources": { "p": { "Type": "AWS::IoT::Policy", "Properties": {} } } });
        assert!(matches!(
            run(&body, &[]),
            Err(TemplateError::Invalid { .. })
        ));
        let body = json!({ "Resources": { "p": { "Type": "AWS::IoT::Policy",
            "Properties": { "PolicyDocument": "not json" } } } });
        let err = run(&body, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("Resources.p.Properties.PolicyDocument"),
            "{err}"
        );
        let body = json!({ "Resources": { "t": { "Type": "AWS::IoT::Thing",
            "Properties": { "ThingName": "t", "AttributePayload": { "a": { "b": "c" } } } } } });
        let err = run(&body, &[]).unwrap_err();
        assert!(err.to_string().contains("AttributePayload.a"), "{err}");
        // Intrinsic argument shapes are checked when parsing.
        for bad in [
            json!({ "Fn::Join": ["-"] }),
            json!({ "Fn::Select": 0 }),
            json!({ "Fn::FindInMap": ["a", "b"] }),
            json!({ "Fn::Split": [",", "a", "b"] }),
            json!({ "Fn::Sub": 3 }),
            json!({ "Fn::Sub": "unterminated ${x" }),
            json!({ "Fn::Sub": "empty ${}" }),
            json!({ "Ref": ["x"] }),
        ] {
            assert!(
                matches!(
                    ProvisioningTemplate::parse(&config_value(bad.clone()).to_string()),
                    Err(TemplateError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_nested_device_configuration() {
        for nested in [json!({ "a": "b" }), json!(["a"])] {
            let err = eval_config(nested, &[]).unwrap_err();
            assert_eq!(
                err,
                TemplateError::NestedDeviceConfiguration { key: "out".into() }
            );
            assert!(
                err.to_string()
                    .contains("DeviceConfiguration does not support nested values"),
                "{err}"
            );
        }
        // Also when only evaluation reveals the list.
        let err = eval_config(json!({ "Fn::Split": [",", "a,b"] }), &[]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::NestedDeviceConfiguration { key: "out".into() }
        );
    }

    #[test]
    fn error_sub_with_unknown_variable() {
        let err = eval_config(json!({ "Fn::Sub": "hello ${Who}" }), &[]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UnknownVariable {
                path: "DeviceConfiguration.out.Fn::Sub".into(),
                name: "Who".into(),
            }
        );
        assert!(err.to_string().contains("`Who`"), "{err}");
        assert_eq!(
            eval_config(json!({ "Fn::Sub": "hello ${Who}" }), &[("Who", "world")]).unwrap(),
            "hello world"
        );
    }

    #[test]
    fn error_ref_to_undeclared_name() {
        let err = eval_config(json!({ "Ref": "Nowhere" }), &[]).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UndeclaredReference {
                path: "DeviceConfiguration.out".into(),
                name: "Nowhere".into(),
            }
        );
        assert!(err.to_string().contains("`Nowhere`"), "{err}");
        // A supplied built-in need not be declared.
        assert_eq!(
            eval_config(
                json!({ "Ref": "AWS::IoT::Certificate::CommonName" }),
                &[("AWS::IoT::Certificate::CommonName", "cn")]
            )
            .unwrap(),
            "cn"
        );
    }

    #[test]
    fn error_depth_cap() {
        let mut value = json!("leaf");
        for _ in 0..40 {
            value = json!({ "Fn::Select": [0, [value]] });
        }
        let err = ProvisioningTemplate::parse(&config_value(value).to_string()).unwrap_err();
        assert!(
            matches!(
                err,
                TemplateError::DepthExceeded {
                    max: MAX_EXPRESSION_DEPTH,
                    ..
                }
            ),
            "{err}"
        );
        // Just within the cap evaluates.
        let mut value = json!("leaf");
        for _ in 0..10 {
            value = json!({ "Fn::Select": [0, [value]] });
        }
        assert_eq!(eval_config(value, &[]).unwrap(), "leaf");
        // Plain nesting counts too, and JSON deeper than the parser allows is refused.
        let deep = format!(
            "{{\"Resources\": {{}}, \"DeviceConfiguration\": {{\"out\": {}{}}}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(matches!(
            ProvisioningTemplate::parse(&deep),
            Err(TemplateError::DepthExceeded { .. })
        ));
        let deeper = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
        assert!(matches!(
            ProvisioningTemplate::parse(&deeper),
            Err(TemplateError::InvalidJson(_))
        ));
    }

    #[test]
    fn error_value_too_large_instead_of_exponential_sub() {
        // Each level repeats the level below it 16 times: 16^6 copies if unchecked.
        let refs = "${v}".repeat(16);
        let mut value = json!("0123456789");
        for _ in 0..6 {
            value = json!({ "Fn::Sub": [refs, { "v": value }] });
        }
        let err = eval_config(value, &[]).unwrap_err();
        assert!(matches!(err, TemplateError::ValueTooLarge { .. }), "{err}");
    }

    fn plan_with(overrides: ThingOverrides) -> ThingPlan {
        ThingPlan {
            thing_name: "t".into(),
            attributes: BTreeMap::from([
                ("a".to_string(), "new".to_string()),
                ("b".to_string(), "2".to_string()),
            ]),
            thing_type: Some("new-type".into()),
            thing_groups: vec!["g2".into(), "g3".into()],
            overrides,
        }
    }

    fn existing() -> ExistingThing {
        ExistingThing {
            attributes: BTreeMap::from([
                ("a".to_string(), "old".to_string()),
                ("c".to_string(), "3".to_string()),
            ]),
            thing_type: Some("old-type".into()),
            thing_groups: vec!["g1".into(), "g2".into()],
        }
    }

    #[test]
    fn overrides_do_nothing_keeps_existing() {
        let result = apply_thing_overrides(&existing(), &plan_with(ThingOverrides::default()));
        assert_eq!(result, Ok(existing()));
    }

    #[test]
    fn overrides_replace_takes_plan() {
        let plan = plan_with(ThingOverrides {
            attribute_payload: OverrideSetting::Replace,
            thing_type_name: OverrideSetting::Replace,
            thing_groups: OverrideSetting::Replace,
        });
        assert_eq!(
            apply_thing_overrides(&existing(), &plan),
            Ok(ExistingThing {
                attributes: plan.attributes.clone(),
                thing_type: plan.thing_type.clone(),
                thing_groups: plan.thing_groups.clone(),
            })
        );
    }

    #[test]
    fn overrides_merge_overlays_and_unions() {
        let plan = plan_with(ThingOverrides {
            attribute_payload: OverrideSetting::Merge,
            thing_type_name: OverrideSetting::DoNothing,
            thing_groups: OverrideSetting::Merge,
        });
        let merged = apply_thing_overrides(&existing(), &plan).unwrap();
        assert_eq!(
            merged.attributes,
            BTreeMap::from([
                ("a".to_string(), "new".to_string()),
                ("b".to_string(), "2".to_string()),
                ("c".to_string(), "3".to_string()),
            ])
        );
        assert_eq!(merged.thing_groups, ["g1", "g2", "g3"]);
        assert_eq!(merged.thing_type.as_deref(), Some("old-type"));
    }

    #[test]
    fn overrides_fail_only_when_values_differ() {
        for (overrides, field) in [
            (
                ThingOverrides {
                    attribute_payload: OverrideSetting::Fail,
                    ..ThingOverrides::default()
                },
                "AttributePayload",
            ),
            (
                ThingOverrides {
                    thing_type_name: OverrideSetting::Fail,
                    ..ThingOverrides::default()
                },
                "ThingTypeName",
            ),
            (
                ThingOverrides {
                    thing_groups: OverrideSetting::Fail,
                    ..ThingOverrides::default()
                },
                "ThingGroups",
            ),
        ] {
            let plan = plan_with(overrides);
            assert_eq!(
                apply_thing_overrides(&existing(), &plan),
                Err(TemplateError::ResourceConflict(field.into()))
            );
            // Equal values (groups in another order) are fine.
            let same = ExistingThing {
                attributes: plan.attributes.clone(),
                thing_type: plan.thing_type.clone(),
                thing_groups: plan.thing_groups.iter().rev().cloned().collect(),
            };
            assert_eq!(apply_thing_overrides(&same, &plan), Ok(same.clone()));
        }
        let plan = plan_with(ThingOverrides {
            thing_type_name: OverrideSetting::Merge,
            ..ThingOverrides::default()
        });
        assert!(matches!(
            apply_thing_overrides(&existing(), &plan),
            Err(TemplateError::MergeNotAllowed { .. })
        ));
    }

    // -- Property tests ------------------------------------------------------

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Ref".to_string()),
            Just("Fn::Join".to_string()),
            Just("Fn::Select".to_string()),
            Just("Fn::FindInMap".to_string()),
            Just("Fn::Split".to_string()),
            Just("Fn::Sub".to_string()),
            Just("Fn::If".to_string()),
            Just("ThingName".to_string()),
            Just("P".to_string()),
            Just("M".to_string()),
            "[a-z]{1,3}",
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..10).prop_map(|n| json!(n)),
            Just(json!(1.5)),
            prop_oneof![
                Just("P".to_string()),
                Just("M".to_string()),
                Just("k".to_string()),
                Just(",".to_string()),
                Just("${P}".to_string()),
                Just("${Q}".to_string()),
                Just("${!x}".to_string()),
                Just("${".to_string()),
                "[a-c,${}!]{0,6}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(arb_key(), inner.clone(), 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                (arb_key(), inner).prop_map(|(k, v)| json!({ k: v })),
            ]
        })
    }

    fn prop_template(key: &str, value: Value) -> String {
        json!({
            "Parameters": { "P": { "Type": "String", "Default": "a,b" } },
            "Mappings": { "M": { "k": { "k": "v", "P": ["x", "y"] } } },
            "Resources": {},
            "DeviceConfiguration": { key: value }
        })
        .to_string()
    }

    fn single(template: &Value, pairs: &[(&str, &str)]) -> Result<String, TemplateError> {
        eval_config(template.clone(), pairs)
    }

    proptest! {
        #[test]
        fn evaluate_never_panics(
            value in arb_json(),
            resources in arb_json(),
            props in arb_json(),
            supplied in prop::option::of("[a-c,]{0,5}"),
        ) {
            let mut supplied_params = BTreeMap::new();
            if let Some(p) = supplied {
                supplied_params.insert("P".to_string(), p);
            }
            let bodies = [
                prop_template("out", value.clone()),
                json!({ "Resources": resources.clone() }).to_string(),
                json!({ "Resources": { "thing": { "Type": "AWS::IoT::Thing", "Properties": props.clone() } } }).to_string(),
                json!({ "Resources": { "p": { "Type": "AWS::IoT::Policy", "Properties": { "PolicyDocument": value.clone() } } } }).to_string(),
                json!({ "Resources": { "t": { "Type": "AWS::IoT::Thing", "Properties": { "ThingName": "t", "AttributePayload": value.clone(), "ThingGroups": props } } }, "DeviceConfiguration": resources }).to_string(),
            ];
            for body in bodies {
                let Ok(template) = ProvisioningTemplate::parse(&body) else {
                    continue;
                };
                let Ok(plan) = evaluate(&template, &supplied_params) else {
                    continue;
                };
                if let Some(thing) = &plan.thing {
                    prop_assert!(!thing.thing_name.is_empty());
                    let _ = apply_thing_overrides(&ExistingThing::default(), thing);
                }
                for policy in &plan.policies {
                    if let PolicyPlan::Document { document, .. } = policy {
                        prop_assert!(serde_json::from_str::<Value>(document).unwrap().is_object());
                    }
                }
            }
        }

        #[test]
        fn join_of_split_is_identity(d in "[ab,;]{1,2}", s in "[ab,;]{0,24}") {
            let out = single(&json!({ "Fn::Join": [d.clone(), { "Fn::Split": [d, s.clone()] }] }), &[]);
            prop_assert_eq!(out, Ok(s));
        }

        #[test]
        fn select_returns_element_or_errors(
            list in prop::collection::vec("[a-z]{0,4}", 0..6),
            i in 0u64..9,
            as_string in any::<bool>(),
        ) {
            let index = if as_string { json!(i.to_string()) } else { json!(i) };
            let out = single(&json!({ "Fn::Select": [index, list.clone()] }), &[]);
            if (i as usize) < list.len() {
                prop_assert_eq!(out, Ok(list[i as usize].clone()));
            } else {
                prop_assert_eq!(out, Err(TemplateError::IndexOutOfRange {
                    path: "DeviceConfiguration.out.Fn::Select".into(),
                    index: i,
                    len: list.len(),
                }));
            }
        }

        #[test]
        fn sub_without_placeholders_is_identity(s in "\\PC{0,40}") {
            prop_assume!(!s.contains("${"));
            prop_assert_eq!(single(&json!({ "Fn::Sub": s.clone() }), &[]), Ok(s.clone()));
            prop_assert_eq!(single(&json!({ "Fn::Sub": [s.clone(), {}] }), &[]), Ok(s));
        }

        #[test]
        fn supplied_parameters_win_over_default(
            default in "[a-z0-9]{0,8}",
            supplied in prop::option::of("[a-z0-9]{0,8}"),
        ) {
            let body = json!({
                "Parameters": { "P": { "Type": "String", "Default": default.clone() } },
                "Resources": {},
                "DeviceConfiguration": { "out": { "Ref": "P" }, "sub": { "Fn::Sub": "${P}" } }
            });
            let pairs: Vec<(&str, &str)> = supplied.iter().map(|s| ("P", s.as_str())).collect();
            let plan = run(&body, &pairs).unwrap();
            let expected = supplied.unwrap_or(default);
            prop_assert_eq!(&plan.device_configuration["out"], &expected);
            prop_assert_eq!(&plan.device_configuration["sub"], &expected);
        }
    }

    #[test]
    fn the_raw_value_marker_key_is_refused() {
        let body = r#"{"Resources":{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyDocument":{"a":0,"$serde_json::private::RawValue":0}}}}}"#;
        let e = ProvisioningTemplate::parse(body).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        // Spelt with JSON escapes the text does not show it; the parsed key does.
        let escaped = r#"{"Resources":{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyDocument":{"a":0,"\u0024serde_json::private::RawValu\u0065":0}}}}}"#;
        let e = ProvisioningTemplate::parse(escaped).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        // The control: the same template with an ordinary key parses.
        let ok = r#"{"Resources":{"p":{"Type":"AWS::IoT::Policy","Properties":{"PolicyDocument":{"a":0,"b":0}}}}}"#;
        assert!(ProvisioningTemplate::parse(ok).is_ok());
    }
}
