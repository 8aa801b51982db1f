//! AWS IoT policy documents: parsed strictly, evaluated as a pure function.
//!
//! Onramp follows AWS IoT Core's semantics so that policies written for it
//! mean the same here: an explicit Deny wins, otherwise some Allow must match,
//! otherwise the request is denied. Resource patterns are globs (`*`, `?`)
//! over the resource string; MQTT's `+` and `#` are ordinary characters in a
//! policy, so a SUBSCRIBE is judged on the filter text the client sent.
//!
//! Whatever Onramp cannot evaluate faithfully (`Condition`, `NotAction`,
//! `NotResource`, actions or resources it does not check, unknown variables)
//! is refused when the document is parsed, never silently ignored.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The only policy language version Onramp accepts (the one with policy variables).
pub const POLICY_VERSION: &str = "2012-10-17";

/// Onramp's least-privilege policy for a device: its own client id, its own topics.
pub const DEFAULT_DEVICE_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": "iot:Connect",
      "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}"
    },
    {
      "Effect": "Allow",
      "Action": ["iot:Publish", "iot:Receive", "iot:RetainPublish"],
      "Resource": [
        "arn:aws:iot:*:*:topic/things/${iot:Connection.Thing.ThingName}/*",
        "arn:aws:iot:*:*:topic/$aws/things/${iot:Connection.Thing.ThingName}/*"
      ]
    },
    {
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:*:*:topicfilter/things/${iot:Connection.Thing.ThingName}/*",
        "arn:aws:iot:*:*:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/*"
      ]
    },
    {
      "Effect": "Allow",
      "Action": ["iot:Publish", "iot:Receive"],
      "Resource": [
        "arn:aws:iot:*:*:topic/$aws/certificates/create/json*",
        "arn:aws:iot:*:*:topic/$aws/certificates/create-from-csr/json*"
      ]
    },
    {
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:*:*:topicfilter/$aws/certificates/create/json*",
        "arn:aws:iot:*:*:topicfilter/$aws/certificates/create-from-csr/json*"
      ]
    }
  ]
}"#;

/// The parsed [`DEFAULT_DEVICE_POLICY`].
pub fn default_device_policy() -> PolicyDocument {
    PolicyDocument::parse(DEFAULT_DEVICE_POLICY)
        .expect("DEFAULT_DEVICE_POLICY is a constant, checked by the tests")
}

/// An MQTT operation that a policy allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Connect,
    Publish,
    Subscribe,
    Receive,
    RetainPublish,
}

impl Action {
    /// Every action Onramp evaluates.
    pub const ALL: [Action; 5] = [
        Action::Connect,
        Action::Publish,
        Action::Subscribe,
        Action::Receive,
        Action::RetainPublish,
    ];

    /// The action's name in policy documents, e.g. `iot:Publish`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "iot:Connect",
            Action::Publish => "iot:Publish",
            Action::Subscribe => "iot:Subscribe",
            Action::Receive => "iot:Receive",
            Action::RetainPublish => "iot:RetainPublish",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn resource_kind(self) -> &'static str {
        match self {
            Action::Connect => CLIENT,
            Action::Subscribe => TOPICFILTER,
            Action::Publish | Action::Receive | Action::RetainPublish => TOPIC,
        }
    }
}

const TOPIC: &str = "topic";
const TOPICFILTER: &str = "topicfilter";
const CLIENT: &str = "client";
const RESOURCE_KINDS: [&str; 3] = [TOPIC, TOPICFILTER, CLIENT];

/// The thing an action is performed on, as the client named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A topic name (Publish, Receive, RetainPublish).
    Topic(&'a str),
    /// A topic filter exactly as sent in SUBSCRIBE (Subscribe).
    TopicFilter(&'a str),
    /// A client identifier (Connect).
    Client(&'a str),
}

impl Resource<'_> {
    fn kind_and_name(&self) -> (&'static str, &str) {
        match *self {
            Resource::Topic(name) => (TOPIC, name),
            Resource::TopicFilter(name) => (TOPICFILTER, name),
            Resource::Client(name) => (CLIENT, name),
        }
    }
}

/// The outcome of evaluating a request against a set of policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A matching Allow and no matching Deny.
    Allow,
    /// A matching Deny statement; no Allow can override it.
    ExplicitDeny,
    /// No matching Allow statement.
    ImplicitDeny,
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

/// The facts about a connection that policy variables are replaced by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyContext {
    /// The MQTT client identifier of the connection.
    pub client_id: String,
    /// The thing attached to the connection's certificate; thing variables resolve only
    /// when it equals `client_id`, as in AWS.
    pub thing_name: Option<String>,
    /// The attached thing's type, if it has one.
    pub thing_type_name: Option<String>,
    /// The attached thing's attributes.
    pub thing_attributes: BTreeMap<String, String>,
    /// The first common name in the client certificate's subject.
    pub cert_subject_cn: Option<String>,
    /// The client certificate's id as the registry records it.
    pub cert_id: Option<String>,
}

impl PolicyContext {
    /// AWS resolves thing variables only when the client id is the thing's name,
    /// so a certificate attached to one thing cannot borrow its rights under another id.
    fn thing(&self) -> Option<&str> {
        self.thing_name
            .as_deref()
            .filter(|name| *name == self.client_id)
    }
}

/// Size limits applied when parsing a policy document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Characters in the document, whitespace not counted (AWS: 2048).
    pub max_document_chars: usize,
    /// Statements in one document.
    pub max_statements: usize,
    /// Entries in one statement's `Action` or `Resource` list.
    pub max_values_per_field: usize,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            max_document_chars: 2048,
            max_statements: 50,
            max_values_per_field: 100,
        }
    }
}

/// Why a policy document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy document has {chars} characters besides whitespace; the limit is {max}")]
    TooLong { chars: usize, max: usize },
    #[error("the policy document is not valid JSON: {0}")]
    Json(String),
    #[error("the policy document must be a JSON object")]
    NotAnObject,
    #[error(
        "`{0}` is not a policy document key; allowed are `Version`, `Statement` and `OnrampAwsStrict`"
    )]
    UnknownKey(String),
    #[error("`OnrampAwsStrict` must be true or false")]
    BadAwsStrict,
    #[error("`Version` is required and must be \"2012-10-17\"")]
    MissingVersion,
    #[error("`Version` must be \"2012-10-17\", not {0}")]
    UnsupportedVersion(String),
    #[error("`Statement` is required")]
    MissingStatement,
    #[error("`Statement` must be an object or a non-empty array of objects")]
    BadStatementList,
    #[error("the policy document has {count} statements; the limit is {max}")]
    TooManyStatements { count: usize, max: usize },
    #[error("Statement[{index}] must be a JSON object")]
    StatementNotAnObject { index: usize },
    #[error("Statement[{index}].{field}: {problem}")]
    Statement {
        index: usize,
        field: String,
        problem: StatementProblem,
    },
}

/// What is wrong with one field of one statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementProblem {
    #[error("is required")]
    Missing,
    #[error("is not supported by Onramp; write the statement without it")]
    Unsupported,
    #[error("is not a statement key; allowed are `Sid`, `Effect`, `Action` and `Resource`")]
    UnknownKey,
    #[error("must be {expected}")]
    WrongType { expected: &'static str },
    #[error("must not be empty")]
    Empty,
    #[error("lists {count} values; the limit is {max}")]
    TooManyValues { count: usize, max: usize },
    #[error("must be \"Allow\" or \"Deny\", not {found}")]
    BadEffect { found: String },
    #[error(
        "`{pattern}` matches none of the actions Onramp evaluates \
         (iot:Connect, iot:Publish, iot:Subscribe, iot:Receive, iot:RetainPublish)"
    )]
    NoKnownAction { pattern: String },
    #[error(
        "`{resource}` is not an ARN of the form \
         arn:aws:iot:{{region}}:{{account}}:{{type}}/{{name}}"
    )]
    MalformedArn { resource: String },
    #[error("`{resource}` names the service `{service}`; Onramp evaluates only `iot` resources")]
    NotIot { resource: String, service: String },
    #[error(
        "`{resource}` is not a `topic/`, `topicfilter/` or `client/` resource, \
         the only kinds Onramp evaluates"
    )]
    UnsupportedResourceType { resource: String },
    #[error("`{resource}` opens a policy variable with `${{` but never closes it with `}}`")]
    UnclosedVariable { resource: String },
    #[error("`${{{name}}}` is not a policy variable Onramp supports")]
    UnknownVariable { name: String },
}

/// A parsed, validated policy document, ready to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    statements: Vec<Statement>,
    /// `"OnrampAwsStrict": true`, an Onramp extension: AWS strict mode
    /// (QoS 2 refused as AWS IoT does) for the things the policy applies to.
    aws_strict: bool,
}

impl PolicyDocument {
    /// A document with no statements: everything is denied by default.
    pub fn deny_all() -> PolicyDocument {
        PolicyDocument {
            statements: Vec::new(),
            aws_strict: false,
        }
    }

    /// Whether the document asks for AWS strict mode.
    pub fn aws_strict(&self) -> bool {
        self.aws_strict
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    /// One bit per [`Action`]; globs are expanded at parse time.
    actions: u8,
    resources: Vec<ResourcePattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ResourcePattern {
    /// `arn:…:iot:{region}:{account}:{rest}`; `rest` is matched against `{type}/{name}`.
    Arn(Vec<Token>),
    /// Onramp shorthand without `arn:`, matched against the bare name of any resource type.
    Plain(Vec<Token>),
}

/// A compiled resource pattern. Variables become literals when bound, so a
/// value from the client can never act as a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Star,
    Question,
    Var(Variable),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Variable {
    ClientId,
    ThingName,
    ThingTypeName,
    ThingAttribute(String),
    ThingIsAttached,
    CertSubjectCommonName,
    CertificateId,
}

/// A pattern after variable binding: nothing in it is unresolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Glob<'a> {
    Literal(&'a str),
    Star,
    Question,
}

const STATEMENT_KEYS: [&str; 4] = ["Sid", "Effect", "Action", "Resource"];
const UNSUPPORTED_STATEMENT_KEYS: [&str; 5] = [
    "NotAction",
    "NotResource",
    "Condition",
    "Principal",
    "NotPrincipal",
];
const LIST_OF_STRINGS: &str = "a string or a non-empty array of strings";

impl PolicyDocument {
    /// Parses a policy document under the default (AWS) limits.
    pub fn parse(text: &str) -> Result<PolicyDocument, PolicyError> {
        Self::parse_with_limits(text, &PolicyLimits::default())
    }

    /// Parses a policy document under the given limits.
    pub fn parse_with_limits(
        text: &str,
        limits: &PolicyLimits,
    ) -> Result<PolicyDocument, PolicyError> {
        // Counted before JSON parsing so an oversized document costs no more than a scan.
        let chars = text.chars().filter(|c| !c.is_whitespace()).count();
        if chars > limits.max_document_chars {
            return Err(PolicyError::TooLong {
                chars,
                max: limits.max_document_chars,
            });
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| PolicyError::Json(e.to_string()))?;
        let Value::Object(top) = value else {
            return Err(PolicyError::NotAnObject);
        };
        if let Some(key) = top
            .keys()
            .find(|k| !["Version", "Statement", "OnrampAwsStrict"].contains(&k.as_str()))
        {
            return Err(PolicyError::UnknownKey(key.clone()));
        }
        let aws_strict = match top.get("OnrampAwsStrict") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(PolicyError::BadAwsStrict),
        };
        match top.get("Version") {
            None => return Err(PolicyError::MissingVersion),
            Some(Value::String(v)) if v == POLICY_VERSION => {}
            Some(other) => return Err(PolicyError::UnsupportedVersion(other.to_string())),
        }
        let raw: Vec<&Value> = match top.get("Statement") {
            None => return Err(PolicyError::MissingStatement),
            Some(one @ Value::Object(_)) => vec![one],
            Some(Value::Array(list)) if !list.is_empty() => list.iter().collect(),
            Some(_) => return Err(PolicyError::BadStatementList),
        };
        if raw.len() > limits.max_statements {
            return Err(PolicyError::TooManyStatements {
                count: raw.len(),
                max: limits.max_statements,
            });
        }
        let statements = raw
            .into_iter()
            .enumerate()
            .map(|(index, value)| match value {
                Value::Object(fields) => {
                    parse_statement(fields, limits).map_err(|(field, problem)| {
                        PolicyError::Statement {
                            index,
                            field,
                            problem,
                        }
                    })
                }
                _ => Err(PolicyError::StatementNotAnObject { index }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PolicyDocument {
            statements,
            aws_strict,
        })
    }
}

type FieldError = (String, StatementProblem);

fn parse_statement(
    fields: &Map<String, Value>,
    limits: &PolicyLimits,
) -> Result<Statement, FieldError> {
    if let Some(key) = fields
        .keys()
        .find(|k| UNSUPPORTED_STATEMENT_KEYS.contains(&k.as_str()))
    {
        return Err((key.clone(), StatementProblem::Unsupported));
    }
    if let Some(key) = fields
        .keys()
        .find(|k| !STATEMENT_KEYS.contains(&k.as_str()))
    {
        return Err((key.clone(), StatementProblem::UnknownKey));
    }
    if let Some(sid) = fields.get("Sid")
        && !sid.is_string()
    {
        return Err((
            "Sid".into(),
            StatementProblem::WrongType {
                expected: "a string",
            },
        ));
    }
    let effect = match fields.get("Effect") {
        None => return Err(("Effect".into(), StatementProblem::Missing)),
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(Value::String(s)) => {
            return Err((
                "Effect".into(),
                StatementProblem::BadEffect {
                    found: format!("{s:?}"),
                },
            ));
        }
        Some(_) => {
            return Err((
                "Effect".into(),
                StatementProblem::WrongType {
                    expected: "the string \"Allow\" or \"Deny\"",
                },
            ));
        }
    };
    let mut actions = 0u8;
    for (field, pattern) in string_list(fields, "Action", limits)? {
        actions |= parse_action(pattern).map_err(|problem| (field, problem))?;
    }
    let resources = string_list(fields, "Resource", limits)?
        .into_iter()
        .map(|(field, text)| parse_resource(text).map_err(|problem| (field, problem)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Statement {
        effect,
        actions,
        resources,
    })
}

/// A string-or-array field, each entry paired with the name to report it under.
fn string_list<'v>(
    fields: &'v Map<String, Value>,
    key: &str,
    limits: &PolicyLimits,
) -> Result<Vec<(String, &'v str)>, FieldError> {
    match fields.get(key) {
        None => Err((key.into(), StatementProblem::Missing)),
        Some(Value::String(s)) => Ok(vec![(key.into(), s.as_str())]),
        Some(Value::Array(list)) => {
            if list.is_empty() {
                return Err((key.into(), StatementProblem::Empty));
            }
            if list.len() > limits.max_values_per_field {
                return Err((
                    key.into(),
                    StatementProblem::TooManyValues {
                        count: list.len(),
                        max: limits.max_values_per_field,
                    },
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, v)| {
                    let field = format!("{key}[{i}]");
                    match v.as_str() {
                        Some(s) => Ok((field, s)),
                        None => Err((
                            field,
                            StatementProblem::WrongType {
                                expected: "a string",
                            },
                        )),
                    }
                })
                .collect()
        }
        Some(_) => Err((
            key.into(),
            StatementProblem::WrongType {
                expected: LIST_OF_STRINGS,
            },
        )),
    }
}

/// The set of known actions an action glob covers; action names are case-insensitive.
fn parse_action(pattern: &str) -> Result<u8, StatementProblem> {
    if pattern.is_empty() {
        return Err(StatementProblem::Empty);
    }
    let lower = pattern.to_ascii_lowercase();
    let globs = plain_globs(&lower);
    let set = Action::ALL
        .iter()
        .filter(|a| glob_match(&globs, &a.as_str().to_ascii_lowercase()))
        .fold(0u8, |set, a| set | a.bit());
    if set == 0 {
        return Err(StatementProblem::NoKnownAction {
            pattern: pattern.to_owned(),
        });
    }
    Ok(set)
}

/// Globs for text without variables (action names, the ARN's service field).
fn plain_globs(text: &str) -> Vec<Glob<'_>> {
    let mut globs = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let wildcard = match c {
            '*' => Glob::Star,
            '?' => Glob::Question,
            _ => continue,
        };
        if start < i {
            globs.push(Glob::Literal(&text[start..i]));
        }
        globs.push(wildcard);
        start = i + 1;
    }
    if start < text.len() {
        globs.push(Glob::Literal(&text[start..]));
    }
    globs
}

fn parse_resource(text: &str) -> Result<ResourcePattern, StatementProblem> {
    if text.is_empty() {
        return Err(StatementProblem::Empty);
    }
    let Some(arn) = text.strip_prefix("arn:") else {
        return compile(text).map(ResourcePattern::Plain);
    };
    // partition : service : region : account : resource. The resource may hold `:`.
    let parts: Vec<&str> = arn.splitn(5, ':').collect();
    let [_partition, service, _region, _account, rest] = parts[..] else {
        return Err(StatementProblem::MalformedArn {
            resource: text.to_owned(),
        });
    };
    if !glob_match(&plain_globs(service), "iot") {
        return Err(StatementProblem::NotIot {
            resource: text.to_owned(),
            service: service.to_owned(),
        });
    }
    let tokens = compile(rest)?;
    if !can_name_known_kind(&tokens) {
        return Err(StatementProblem::UnsupportedResourceType {
            resource: text.to_owned(),
        });
    }
    Ok(ResourcePattern::Arn(tokens))
}

/// Whether an ARN's resource part could match `topic/…`, `topicfilter/…` or `client/…`:
/// a pattern naming only other kinds (`thing/…`) would be dead weight, so it is refused.
fn can_name_known_kind(tokens: &[Token]) -> bool {
    let prefix: String = tokens
        .iter()
        .map_while(|t| match t {
            Token::Literal(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let open = tokens.iter().any(|t| !matches!(t, Token::Literal(_)));
    RESOURCE_KINDS.iter().any(|kind| {
        let kind = format!("{kind}/");
        prefix.starts_with(&kind) || (open && kind.starts_with(&prefix))
    })
}

/// Compiles a resource pattern: `*`, `?`, `${variable}`, and the literal escapes
/// `${*}`, `${?}`, `${$}` (IAM's spelling) and `$(*)`, `$(?)`, `$($)` (the IoT guide's).
fn compile(text: &str) -> Result<Vec<Token>, StatementProblem> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let mut escaped = None;
        for (open, close) in [("${", "}"), ("$(", ")")] {
            if let Some(after) = rest.strip_prefix(open)
                && let Some(ch @ ('*' | '?' | '$')) = after.chars().next()
                && after[1..].starts_with(close)
            {
                escaped = Some((ch, open.len() + 1 + close.len()));
            }
        }
        if let Some((ch, len)) = escaped {
            literal.push(ch);
            rest = &rest[len..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(StatementProblem::UnclosedVariable {
                    resource: text.to_owned(),
                });
            };
            let var = Variable::parse(&after[..end])?;
            flush(&mut literal, &mut tokens);
            tokens.push(Token::Var(var));
            rest = &after[end + 1..];
            continue;
        }
        match c {
            '*' => {
                flush(&mut literal, &mut tokens);
                tokens.push(Token::Star);
            }
            '?' => {
                flush(&mut literal, &mut tokens);
                tokens.push(Token::Question);
            }
            _ => literal.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut literal, &mut tokens);
    Ok(tokens)
}

fn flush(literal: &mut String, tokens: &mut Vec<Token>) {
    if !literal.is_empty() {
        tokens.push(Token::Literal(std::mem::take(literal)));
    }
}

const ATTRIBUTE_PREFIX: &str = "iot:Connection.Thing.Attributes[";

impl Variable {
    /// Variable names are matched case-insensitively, like IAM's; attribute names are not.
    fn parse(name: &str) -> Result<Variable, StatementProblem> {
        let simple = [
            ("iot:ClientId", Variable::ClientId),
            ("iot:Connection.Thing.ThingName", Variable::ThingName),
            (
                "iot:Connection.Thing.ThingTypeName",
                Variable::ThingTypeName,
            ),
            ("iot:Connection.Thing.IsAttached", Variable::ThingIsAttached),
            (
                "iot:Certificate.Subject.CommonName",
                Variable::CertSubjectCommonName,
            ),
            ("iot:CertificateId", Variable::CertificateId),
        ];
        if let Some((_, var)) = simple
            .into_iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
        {
            return Ok(var);
        }
        if let Some(head) = name.get(..ATTRIBUTE_PREFIX.len())
            && head.eq_ignore_ascii_case(ATTRIBUTE_PREFIX)
            && let Some(attr) = name[ATTRIBUTE_PREFIX.len()..].strip_suffix(']')
            && !attr.is_empty()
            && !attr.contains(['[', ']'])
        {
            return Ok(Variable::ThingAttribute(attr.to_owned()));
        }
        Err(StatementProblem::UnknownVariable {
            name: name.to_owned(),
        })
    }

    /// The variable's value for this connection; `None` makes the whole pattern match nothing.
    fn resolve<'a>(&'a self, ctx: &'a PolicyContext) -> Option<&'a str> {
        match self {
            Variable::ClientId => Some(ctx.client_id.as_str()),
            Variable::ThingName => ctx.thing(),
            Variable::ThingTypeName => ctx.thing().and(ctx.thing_type_name.as_deref()),
            Variable::ThingAttribute(attr) => ctx
                .thing()
                .and(ctx.thing_attributes.get(attr).map(String::as_str)),
            Variable::ThingIsAttached => Some(if ctx.thing().is_some() {
                "true"
            } else {
                "false"
            }),
            Variable::CertSubjectCommonName => ctx.cert_subject_cn.as_deref(),
            Variable::CertificateId => ctx.cert_id.as_deref(),
        }
    }
}

/// Binds variables; substituted values become literals, never wildcards.
fn bind<'a>(tokens: &'a [Token], ctx: &'a PolicyContext) -> Option<Vec<Glob<'a>>> {
    tokens
        .iter()
        .map(|t| match t {
            Token::Literal(s) => Some(Glob::Literal(s)),
            Token::Star => Some(Glob::Star),
            Token::Question => Some(Glob::Question),
            Token::Var(v) => v.resolve(ctx).map(Glob::Literal),
        })
        .collect()
}

/// AWS glob matching: `*` is any run of characters (including `/`, `+`, `#`), `?` exactly one.
///
/// Splits the pattern at `*` into fixed-length segments: the first is anchored at
/// the start, the last at the end, and each middle one is taken at its leftmost
/// fit, which leaves the most room for the rest. Time is O(pattern × text).
fn glob_match(pattern: &[Glob<'_>], text: &str) -> bool {
    let segments: Vec<&[Glob<'_>]> = pattern.split(|g| *g == Glob::Star).collect();
    let Some((first, rest)) = segments.split_first() else {
        return text.is_empty();
    };
    let Some(mut pos) = match_segment(first, text, 0) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return pos == text.len();
    };
    for segment in middle {
        let found = text[pos..]
            .char_indices()
            .map(|(i, _)| pos + i)
            .chain(std::iter::once(text.len()))
            .find_map(|start| match_segment(segment, text, start));
        match found {
            Some(end) => pos = end,
            None => return false,
        }
    }
    let need: usize = last
        .iter()
        .map(|g| match g {
            Glob::Literal(s) => s.chars().count(),
            Glob::Question => 1,
            Glob::Star => 0,
        })
        .sum();
    let start = if need == 0 {
        Some(text.len())
    } else {
        text.char_indices().rev().nth(need - 1).map(|(i, _)| i)
    };
    match start {
        Some(start) if start >= pos => match_segment(last, text, start) == Some(text.len()),
        _ => false,
    }
}

/// Matches a star-free segment at byte `start`, returning where it ends.
fn match_segment(segment: &[Glob<'_>], text: &str, start: usize) -> Option<usize> {
    let mut at = start;
    for glob in segment {
        let here = text.get(at..)?;
        match glob {
            Glob::Literal(s) if here.starts_with(s) => at += s.len(),
            Glob::Question => at += here.chars().next()?.len_utf8(),
            _ => return None,
        }
    }
    Some(at)
}

impl ResourcePattern {
    fn matches(&self, name: &str, qualified: &str, ctx: &PolicyContext) -> bool {
        let (tokens, target) = match self {
            ResourcePattern::Arn(tokens) => (tokens, qualified),
            ResourcePattern::Plain(tokens) => (tokens, name),
        };
        bind(tokens, ctx).is_some_and(|globs| glob_match(&globs, target))
    }
}

/// Decides `action` on `resource` under all `policies` together: any matching Deny wins,
/// else any matching Allow grants, else the request is denied.
///
/// An action paired with a resource of the wrong kind (Publish on a client) matches nothing.
pub fn evaluate(
    policies: &[PolicyDocument],
    action: Action,
    resource: &Resource<'_>,
    ctx: &PolicyContext,
) -> Decision {
    let (kind, name) = resource.kind_and_name();
    if kind != action.resource_kind() {
        return Decision::ImplicitDeny;
    }
    // `topic/<name>`, built only if an ARN pattern is met (they are rare
    // next to plain ones), not on every check.
    let mut qualified: Option<String> = None;
    let mut allowed = false;
    for statement in policies.iter().flat_map(|p| &p.statements) {
        if statement.actions & action.bit() == 0 {
            continue;
        }
        // Once allowed, only a Deny can change the outcome.
        if allowed && statement.effect == Effect::Allow {
            continue;
        }
        let hit = statement.resources.iter().any(|r| match r {
            ResourcePattern::Plain(_) => r.matches(name, name, ctx),
            ResourcePattern::Arn(_) => {
                let q = qualified.get_or_insert_with(|| format!("{kind}/{name}"));
                r.matches(name, q, ctx)
            }
        });
        if hit {
            match statement.effect {
                Effect::Deny => return Decision::ExplicitDeny,
                Effect::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn globs(p: &str) -> Vec<Glob<'_>> {
        plain_globs(p)
    }

    #[test]
    fn a_policy_may_ask_for_aws_strict_mode() {
        let statement =
            r#""Statement": {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}"#;
        let doc = |extra: &str| format!(r#"{{"Version": "2012-10-17", {extra} {statement}}}"#);
        assert!(!PolicyDocument::parse(&doc("")).unwrap().aws_strict());
        assert!(
            PolicyDocument::parse(&doc(r#""OnrampAwsStrict": true,"#))
                .unwrap()
                .aws_strict()
        );
        assert!(
            !PolicyDocument::parse(&doc(r#""OnrampAwsStrict": false,"#))
                .unwrap()
                .aws_strict()
        );
        assert_eq!(
            PolicyDocument::parse(&doc(r#""OnrampAwsStrict": "yes","#)),
            Err(PolicyError::BadAwsStrict)
        );
        assert!(!default_device_policy().aws_strict());
    }

    #[test]
    fn glob_basics() {
        let cases = [
            ("*", "", true),
            ("*", "a/b/+/#", true),
            ("", "", true),
            ("", "a", false),
            ("a", "a", true),
            ("a", "ab", false),
            ("a*", "a", true),
            ("a*", "ab/c", true),
            ("*b", "ab", true),
            ("*b", "ba", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a?c", "aéc", true),
            ("?", "é", true),
            ("*?", "", false),
            ("*?", "x", true),
            ("a*a*a", "aa", false),
            ("a*a*a", "aaa", true),
            ("*aab", "aaab", true),
            ("*ab*ab", "abab", true),
            ("*ab*ab", "aba", false),
            ("things/*", "things/", true),
            ("things/*", "things", false),
            ("some/+/topic", "some/+/topic", true),
            ("some/+/topic", "some/x/topic", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(&globs(pattern), text),
                expected,
                "{pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn compiling_patterns() {
        assert_eq!(
            compile("a/${iot:ClientId}/*").unwrap(),
            vec![
                Token::Literal("a/".into()),
                Token::Var(Variable::ClientId),
                Token::Literal("/".into()),
                Token::Star
            ]
        );
        assert_eq!(
            compile("x${*}y$(?)z${$}$").unwrap(),
            vec![Token::Literal("x*y?z$$".into())]
        );
        assert_eq!(
            compile("${IOT:CONNECTION.THING.ATTRIBUTES[Floor]}").unwrap(),
            vec![Token::Var(Variable::ThingAttribute("Floor".into()))]
        );
        assert_eq!(
            compile("$aws/things/?").unwrap(),
            vec![Token::Literal("$aws/things/".into()), Token::Question]
        );
        assert!(matches!(
            compile("a/${iot:ClientId"),
            Err(StatementProblem::UnclosedVariable { .. })
        ));
        for bad in [
            "iot:Connection.Thing.Attributes[]",
            "iot:Connection.Thing.Attributes[a",
            "iot:Certificate.Subject.Country",
            "aws:username",
            "",
        ] {
            assert_eq!(
                compile(&format!("${{{bad}}}")),
                Err(StatementProblem::UnknownVariable { name: bad.into() }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn action_sets() {
        let all = Action::ALL.iter().fold(0, |s, a| s | a.bit());
        assert_eq!(parse_action("*"), Ok(all));
        assert_eq!(parse_action("iot:*"), Ok(all));
        assert_eq!(parse_action("IOT:publish"), Ok(Action::Publish.bit()));
        assert_eq!(parse_action("iot:Pub*"), Ok(Action::Publish.bit()));
        assert_eq!(
            parse_action("iot:*Publish"),
            Ok(Action::Publish.bit() | Action::RetainPublish.bit())
        );
        assert_eq!(parse_action("iot:?eceive"), Ok(Action::Receive.bit()));
        assert!(parse_action("iot:GetThingShadow").is_err());
        assert!(parse_action("s3:*").is_err());
        assert!(parse_action("").is_err());
    }

    #[test]
    fn arn_resource_kinds() {
        for ok in [
            "arn:aws:iot:*:*:*",
            "arn:aws:iot:us-east-1:123456789012:topic/a",
            "arn:aws-cn:iot:cn-north-1:1:topicfilter/a/+",
            "arn:aws:iot:*:*:client/*",
            "arn:aws:iot:*:*:top*",
            "arn:aws:iot:*:*:c?ient/x",
            "arn:aws:iot:*:*:${iot:ClientId}",
            "arn:aws:*:*:*:topic/x",
        ] {
            assert!(parse_resource(ok).is_ok(), "{ok:?}");
        }
        assert!(matches!(
            parse_resource("arn:aws:iot:*:*:thing/x"),
            Err(StatementProblem::UnsupportedResourceType { .. })
        ));
        assert!(matches!(
            parse_resource("arn:aws:iot:*:*:topic"),
            Err(StatementProblem::UnsupportedResourceType { .. })
        ));
        assert!(matches!(
            parse_resource("arn:aws:s3:::bucket/x"),
            Err(StatementProblem::NotIot { .. })
        ));
        assert!(matches!(
            parse_resource("arn:aws:iot:topic/x"),
            Err(StatementProblem::MalformedArn { .. })
        ));
    }

    #[test]
    fn the_default_policy_parses_within_the_limits() {
        let doc = default_device_policy();
        assert_eq!(doc.statements.len(), 5);
    }

    proptest! {
        #[test]
        fn a_star_free_pattern_matches_only_itself(p in "[a-c/+#$]{0,6}", t in "[a-c/+#$]{0,6}") {
            prop_assert_eq!(glob_match(&globs(&p), &t), p == t);
        }

        #[test]
        fn glob_agrees_with_a_reference_matcher(p in "[ab*?]{0,8}", t in "[ab]{0,8}") {
            fn reference(p: &[char], t: &[char]) -> bool {
                match (p.first(), t.first()) {
                    (None, _) => t.is_empty(),
                    (Some('*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
                    (Some('?'), Some(_)) => reference(&p[1..], &t[1..]),
                    (Some(a), Some(b)) if a == b => reference(&p[1..], &t[1..]),
                    _ => false,
                }
            }
            let pc: Vec<char> = p.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(glob_match(&globs(&p), &t), reference(&pc, &tc));
        }

        #[test]
        fn compile_never_panics(s in "\\PC{0,30}|[${}()*?a]{0,16}") {
            let _ = compile(&s);
            let _ = parse_resource(&s);
            let _ = parse_action(&s);
        }
    }
}
