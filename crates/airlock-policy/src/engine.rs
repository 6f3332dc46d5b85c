//! Loads a policy directory into a ready-to-serve engine and decides actions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use airlock_core::decision::{DEFAULT_GRANT_TTL, DEFAULT_REQUEST_TTL};
use airlock_core::{Action, Decision, GroupName, Requirement, Threshold, UserName};
use cedar_policy::{
    Context, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet,
    Request, Schema, ValidationMode, Validator,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::annotations::{self, Approval};
use crate::compiled::Verdict;
use crate::index::PolicyIndex;
use crate::locate::statement_lines;
use crate::{DecideError, LoadError};

/// Who is in which group: the `[[users]]` of the config. Membership is read
/// from here at every decision, review and consumption.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    members: BTreeMap<UserName, BTreeSet<GroupName>>,
}

impl Directory {
    /// Builds a directory from users and their groups.
    pub fn new(users: impl IntoIterator<Item = (UserName, Vec<GroupName>)>) -> Self {
        Self {
            members: users
                .into_iter()
                .map(|(u, gs)| (u, gs.into_iter().collect()))
                .collect(),
        }
    }

    /// Whether `user` is in `group` now.
    pub fn is_member(&self, user: &UserName, group: &GroupName) -> bool {
        self.members.get(user).is_some_and(|gs| gs.contains(group))
    }

    /// The user's groups, if the user is known.
    pub fn groups(&self, user: &UserName) -> Option<&BTreeSet<GroupName>> {
        self.members.get(user)
    }

    /// Members of any of `groups`.
    pub fn members_of<'a>(&'a self, groups: &'a [GroupName]) -> impl Iterator<Item = &'a UserName> {
        self.members
            .iter()
            .filter(move |(_, gs)| groups.iter().any(|g| gs.contains(g)))
            .map(|(u, _)| u)
    }

    /// Whether the user is known at all.
    pub fn contains(&self, user: &UserName) -> bool {
        self.members.contains_key(user)
    }
}

/// The files a policy set was loaded from, as text, so loading can be tested
/// and benchmarked without a directory.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    /// `(path, text)` of each `*.cedar` file, in load order.
    pub policies: Vec<(PathBuf, String)>,
    /// `(path, text)` of the schema: `*.cedarschema`, or `schema.json`.
    pub schema: Option<(PathBuf, String)>,
    /// Text of `entities.json`.
    pub entities: Option<String>,
}

impl PolicySource {
    /// Reads `*.cedar`, an optional `schema.cedarschema`/`schema.json` and an
    /// optional `entities.json` from `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self, LoadError> {
        let io = |path: &Path, source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        let mut src = PolicySource::default();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if ext == "cedar" {
                let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                src.policies.push((path, text));
            } else if ext == "cedarschema" || name == "schema.json" {
                let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                src.schema = Some((path, text));
            } else if name == "entities.json" {
                src.entities = Some(std::fs::read_to_string(&path).map_err(|e| io(&path, e))?);
            }
        }
        if src.policies.is_empty() {
            return Err(LoadError::Empty(dir.to_owned()));
        }
        Ok(src)
    }
}

/// A loaded, validated policy set ready to decide. Immutable: a reload
/// builds a new one and swaps it in whole.
#[derive(Debug)]
pub struct PolicyEngine {
    set: PolicySet,
    /// `set` split by the action and resource type policies name.
    index: PolicyIndex,
    /// Entity type names parsed once (Cedar parses a type name as source
    /// text): `User`, `Action`, and every type policies or entities name.
    type_names: HashMap<String, EntityTypeName>,
    approvals: HashMap<PolicyId, Approval>,
    base: Entities,
    schema: Option<Schema>,
    version: String,
    policy_count: usize,
    /// Which of [`COSTLY_CONTEXT`] some policy mentions, found once at load.
    mentioned: Vec<&'static str>,
}

/// Context keys that cost the caller a store read to compute; the engine
/// records at load which ones any policy can look at.
pub const COSTLY_CONTEXT: [&str; 2] = ["sensitive_actions_last_hour", "granted_before"];

impl PolicyEngine {
    /// Loads a policy directory for the users in `directory`.
    pub fn load(dir: &Path, directory: &Directory) -> Result<Self, LoadError> {
        Self::from_source(&PolicySource::read_dir(dir)?, directory)
    }

    /// Builds an engine from policy text.
    pub fn from_source(src: &PolicySource, directory: &Directory) -> Result<Self, LoadError> {
        let schema = match &src.schema {
            None => None,
            Some((path, text)) => {
                let parsed = if path.extension().is_some_and(|e| e == "json") {
                    Schema::from_json_str(text).map_err(|e| e.to_string())
                } else {
                    Schema::from_cedarschema_str(text)
                        .map(|(s, _warnings)| s)
                        .map_err(|e| e.to_string())
                };
                Some(parsed.map_err(|message| LoadError::Schema {
                    path: path.clone(),
                    message,
                })?)
            }
        };

        let mut set = PolicySet::new();
        let mut approvals = HashMap::new();
        let mut origin: HashMap<String, String> = HashMap::new();
        let mut hasher = Sha256::new();
        let mut text = String::new();
        for (path, source) in &src.policies {
            hasher.update(
                path.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hasher.update([0]);
            hasher.update(source.as_bytes());
            hasher.update([0]);
            text.push_str(source);
            text.push('\n');
            let parsed = PolicySet::from_str(source).map_err(|e| LoadError::Syntax {
                path: path.clone(),
                message: describe_syntax(&e, source),
            })?;
            let lines = statement_lines(source);
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("policy")
                .to_owned();
            // Cedar names the policies of one text policy0, policy1, … in
            // source order; that index is how we find each one's line.
            let mut policies: Vec<_> = parsed.policies().cloned().collect();
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
            });
            for (index, policy) in policies.into_iter().enumerate() {
                let line = lines.get(index).copied().unwrap_or(1);
                let id = match policy.annotation("id") {
                    Some(id) => id.to_owned(),
                    None => format!("{stem}.{index}"),
                };
                let here = format!("{}:{line}", path.display());
                if let Some(other) = origin.insert(id.clone(), here) {
                    return Err(LoadError::DuplicateId {
                        path: path.clone(),
                        line,
                        policy: id,
                        other,
                    });
                }
                let approval =
                    annotations::parse(policy.effect() == Effect::Permit, policy.annotations())
                        .map_err(|message| LoadError::Annotation {
                            path: path.clone(),
                            line,
                            policy: id.clone(),
                            message,
                        })?;
                let pid = PolicyId::new(&id);
                let policy = policy.new_id(pid.clone());
                set.add(policy).map_err(|e| LoadError::Syntax {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                if let Some(a) = approval {
                    approvals.insert(pid, a);
                }
            }
        }

        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
            if !result.validation_passed() {
                let msgs: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
                return Err(LoadError::Validation(msgs.join("; ")));
            }
        }

        let base = build_entities(src.entities.as_deref(), directory, schema.as_ref())?;
        if let Some((_, s)) = &src.schema {
            hasher.update(s.as_bytes());
        }
        hasher.update([0]);
        if let Some(e) = &src.entities {
            hasher.update(e.as_bytes());
        }
        let digest = hasher.finalize();
        let policy_count = set.policies().count();
        let mentioned = COSTLY_CONTEXT
            .into_iter()
            .filter(|k| text.contains(k))
            .collect();
        let index = PolicyIndex::build(&set).map_err(LoadError::Validation)?;
        let type_names = ["User", "Action", "Group"]
            .into_iter()
            .map(str::to_owned)
            .chain(index.type_names().map(str::to_owned))
            .chain(base.iter().map(|e| e.uid().type_name().to_string()))
            .filter_map(|t| Some((t.clone(), EntityTypeName::from_str(&t).ok()?)))
            .collect();
        Ok(Self {
            set,
            index,
            type_names,
            approvals,
            base,
            schema,
            version: hex::encode(&digest[..8]),
            policy_count,
            mentioned,
        })
    }

    /// Whether the policy `id` is annotated `@reason("required")`: to
    /// name it when a reason is missing.
    pub fn asks_reason(&self, id: &str) -> bool {
        self.approvals
            .iter()
            .any(|(p, a)| a.reason_required && p.to_string() == id)
    }

    /// A short digest of the policy text, schema and entities: nodes serving
    /// the same files report the same version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// How many policies are loaded.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Whether any policy mentions `name`, one of [`COSTLY_CONTEXT`]; used
    /// to skip computing context values no policy can look at.
    pub fn mentions(&self, name: &str) -> bool {
        self.mentioned.contains(&name)
    }

    /// The Cedar policy set, for callers that want to show it.
    pub fn policy_set(&self) -> &PolicySet {
        &self.set
    }

    /// The limits on context facts set by the policies named `ids` (their
    /// `@id`, as a decision lists them), for showing an approver which
    /// line a request crossed.
    pub fn context_limits(&self, ids: &[String]) -> Vec<crate::limits::ContextLimit> {
        self.set
            .policies()
            .filter(|p| {
                let id = p.annotation("id").unwrap_or(p.id().as_ref());
                ids.iter().any(|i| i == id)
            })
            .flat_map(crate::limits::context_limits)
            .collect()
    }

    /// A resource's attributes from `entities.json`, as JSON, if it is
    /// listed there (these win over what a caller sends).
    pub fn resource_attrs(&self, kind: &str, id: &str) -> Option<serde_json::Value> {
        let entity = self.entities().get(&uid(kind, id))?;
        entity.to_json_value().ok().map(|v| v["attrs"].clone())
    }

    /// The base entities (users, groups, `entities.json`).
    pub fn entities(&self) -> &Entities {
        &self.base
    }

    /// Decides `action` with `context` (the caller merges what the
    /// enforcement point sent with what Airlock computed).
    ///
    /// Returns `Err` only when the action cannot be put to Cedar at all;
    /// every failure *during* evaluation is a `Deny` (fail closed).
    pub fn decide(
        &self,
        action: &Action,
        context: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        let set = self
            .index
            .for_request(action.action.as_str(), action.resource.kind.as_str());
        self.decide_over(|r, e| set.authorize(r, e), action, context)
    }

    /// [`PolicyEngine::decide`], with `authorize` saying what the policies
    /// decide about a request (the indexed, prepared set; in a test, Cedar's
    /// authorizer over the whole set).
    fn decide_over(
        &self,
        authorize: impl FnOnce(&Request, &Entities) -> Verdict,
        action: &Action,
        context: Map<String, Value>,
    ) -> Result<Decision, DecideError> {
        let principal = self.uid("User", action.principal.as_str());
        let verb = self.uid("Action", action.action.as_str());
        let resource = self.uid(action.resource.kind.as_str(), action.resource.id.as_str());

        // Without a schema, plain JSON values become Cedar values directly;
        // anything else goes through Cedar's JSON reading, which knows the
        // schema's types and names what is wrong.
        let direct = match &self.schema {
            None => direct_context(&context),
            Some(_) => None,
        };
        let context = match direct {
            Some(c) => c,
            None => Context::from_json_value(
                Value::Object(context),
                self.schema.as_ref().map(|s| (s, &verb)),
            )
            .map_err(|e| DecideError::Context(e.to_string()))?,
        };

        let request = Request::new(
            principal,
            verb,
            resource.clone(),
            context,
            self.schema.as_ref(),
        )
        .map_err(|e| DecideError::Request(e.to_string()))?;

        // Attributes the administrator put in entities.json win over what
        // the caller claims, so a caller cannot strip a resource's tags.
        let verdict = if self.base.get(&resource).is_some() || action.resource.attrs.is_empty() {
            authorize(&request, &self.base)
        } else {
            let entity = Entity::from_json_value(
                serde_json::json!({
                    "uid": {"type": action.resource.kind.as_str(), "id": action.resource.id.as_str()},
                    "attrs": Value::Object(action.resource.attrs.clone()),
                    "parents": [],
                }),
                self.schema.as_ref(),
            )
            .map_err(|e| DecideError::Attrs(e.to_string()))?;
            let entities = self
                .base
                .clone()
                .add_entities([entity], self.schema.as_ref())
                .map_err(|e| DecideError::Attrs(e.to_string()))?;
            authorize(&request, &entities)
        };

        let mut errors = verdict.errors;
        // Sorted: the message must not depend on the evaluator's order.
        errors.sort();
        let mut policies: Vec<String> = verdict.reasons.iter().map(ToString::to_string).collect();
        policies.sort();
        if !errors.is_empty() {
            return Ok(Decision::Deny {
                policies,
                message: format!(
                    "denied because a policy failed to evaluate: {}",
                    errors.join("; ")
                ),
            });
        }
        if !verdict.allow {
            let message = if policies.is_empty() {
                "no policy permits this action".to_owned()
            } else {
                format!("forbidden by policy {}", policies.join(", "))
            };
            return Ok(Decision::Deny { policies, message });
        }

        let mut thresholds = Vec::new();
        let mut requirement = Requirement {
            thresholds: Vec::new(),
            request_ttl: DEFAULT_REQUEST_TTL,
            grant_ttl: DEFAULT_GRANT_TTL,
            max_uses: NonZeroU32::MIN,
            reason_required: false,
            step_up: None,
            breakglass: false,
        };
        let mut first = true;
        for id in &verdict.reasons {
            let Some(a) = self.approvals.get(id) else {
                continue;
            };
            thresholds.push(Threshold {
                policy_id: id.to_string(),
                groups: a.groups.clone(),
                quorum: a.quorum,
            });
            // Where several policies ask, the strictest setting wins.
            let request_ttl = a.request_ttl.unwrap_or(DEFAULT_REQUEST_TTL);
            let grant_ttl = a.grant_ttl.unwrap_or(DEFAULT_GRANT_TTL);
            let max_uses = a.max_uses.unwrap_or(NonZeroU32::MIN);
            if first {
                requirement.request_ttl = request_ttl;
                requirement.grant_ttl = grant_ttl;
                requirement.max_uses = max_uses;
                first = false;
            } else {
                requirement.request_ttl = requirement.request_ttl.min(request_ttl);
                requirement.grant_ttl = requirement.grant_ttl.min(grant_ttl);
                requirement.max_uses = requirement.max_uses.min(max_uses);
            }
            requirement.reason_required |= a.reason_required;
            requirement.step_up =
                airlock_core::decision::stronger_step_up(requirement.step_up.take(), &a.step_up);
        }
        if thresholds.is_empty() {
            return Ok(Decision::Allow { policies });
        }
        thresholds.sort_by(|a, b| a.policy_id.cmp(&b.policy_id));
        requirement.thresholds = thresholds;
        Ok(Decision::ApprovalRequired {
            policies,
            requirement,
        })
    }
}

impl PolicyEngine {
    /// [`uid`], with the type name parsed at load when it is known.
    fn uid(&self, kind: &str, id: &str) -> EntityUid {
        match self.type_names.get(kind) {
            Some(t) => EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id)),
            None => uid(kind, id),
        }
    }
}

/// The context as Cedar values, built directly, when every value is plain
/// JSON that Cedar reads as itself: strings, booleans, integers, arrays,
/// and objects without Cedar's escapes (`__entity`, `__extn`, `__expr`),
/// or the one escape Airlock itself puts in every context,
/// `{"__extn": {"fn": "ip", "arg": "…"}}` (`source_ip`). `None` otherwise
/// (nulls, fractions, other escapes), for Cedar's own reading, which is
/// several times slower (it tries each JSON form Cedar knows in turn).
fn direct_context(map: &Map<String, Value>) -> Option<Context> {
    use cedar_policy_core::ast::{self, PartialValue, ValueKind};
    fn value(v: &Value) -> Option<ast::Value> {
        Some(match v {
            Value::Bool(b) => ast::Value::from(*b),
            Value::Number(n) => ast::Value::from(n.as_i64()?),
            Value::String(s) => ast::Value::from(s.as_str()),
            Value::Array(a) => {
                ast::Value::set(a.iter().map(value).collect::<Option<Vec<_>>>()?, None)
            }
            Value::Object(o) => {
                if let Some(ip) = ip_escape(o) {
                    return ip_value(ip);
                }
                if ["__entity", "__extn", "__expr"]
                    .iter()
                    .any(|k| o.contains_key(*k))
                {
                    return None;
                }
                record(o)?
            }
            Value::Null => return None,
        })
    }
    /// The address in `{"__extn": {"fn": "ip", "arg": "…"}}`, exactly.
    fn ip_escape(o: &Map<String, Value>) -> Option<&str> {
        let Some(Value::Object(call)) = o.get("__extn").filter(|_| o.len() == 1) else {
            return None;
        };
        match (call.len(), call.get("fn"), call.get("arg")) {
            (2, Some(Value::String(f)), Some(Value::String(arg))) if f == "ip" => Some(arg),
            _ => None,
        }
    }
    /// What Cedar's `ip` function makes of `address` (`None` when it
    /// refuses it: Cedar's own reading then reports why).
    fn ip_value(address: &str) -> Option<ast::Value> {
        match IP_FUNCTION
            .as_ref()?
            .call(&[ast::Value::from(address)])
            .ok()?
        {
            PartialValue::Value(v) => Some(v),
            PartialValue::Residual(_) => None,
        }
    }
    fn record(o: &Map<String, Value>) -> Option<ast::Value> {
        let pairs = o
            .iter()
            .map(|(k, v)| Some((k.as_str(), value(v)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(ast::Value::record(pairs, None))
    }
    // Cedar's `from_pairs` builds an expression of the record and evaluates
    // it; the values are built here as that evaluation would make them
    // (the property test below holds them to Cedar's JSON reading). The
    // conversion from Cedar's core context is `#[doc(hidden)]` in
    // `cedar-policy`: it holds because both crates are pinned to one
    // release (`Cargo.toml`).
    match record(map)?.value_kind() {
        ValueKind::Record(fields) => Some(Context::from(ast::Context::Value(fields.clone()))),
        _ => None,
    }
}

/// Cedar's `ip` extension function, looked up once: Cedar's own
/// `RestrictedExpression::new_ip` parses its name with the policy grammar on
/// every call, which builds a lexer (and its regex cache) each time; that
/// was 8% of the server's CPU on the allow path (docs/PERFORMANCE.md).
static IP_FUNCTION: std::sync::LazyLock<
    Option<&'static cedar_policy_core::ast::ExtensionFunction>,
> = std::sync::LazyLock::new(|| {
    let name = cedar_policy_core::ast::Name::parse_unqualified_name("ip").ok()?;
    cedar_policy_core::extensions::Extensions::all_available()
        .func(&name)
        .ok()
});

fn uid(kind: &str, id: &str) -> EntityUid {
    // Resource types are checked by `ResourceType::parse` and the others are
    // fixed names, so this parse only fails on a programming error; fall back
    // to an id no policy can name rather than panic.
    let ty = match EntityTypeName::from_str(kind) {
        Ok(t) => t,
        Err(_) => {
            EntityTypeName::from_str("Airlock::Invalid").unwrap_or_else(|_| unreachable_type())
        }
    };
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}

#[allow(clippy::panic)] // Invariant: "Airlock::Invalid" is a valid Cedar type name, checked by a unit test.
fn unreachable_type() -> EntityTypeName {
    panic!("Airlock::Invalid must parse")
}

/// Each of Cedar's parse errors with where it is (`line L, column C`) and
/// Cedar's hint, where it gives them: its Display says neither.
fn describe_syntax(e: &cedar_policy::ParseErrors, source: &str) -> String {
    use miette::Diagnostic;
    e.iter()
        .map(|err| {
            let at = err
                .labels()
                .and_then(|mut labels| labels.next())
                .map(|l| line_column(source, l.offset()));
            let mut out = match at {
                Some((line, column)) => format!("line {line}, column {column}: {err}"),
                None => err.to_string(),
            };
            if let Some(help) = err.help() {
                out.push_str(&format!(" ({help})"));
            }
            out
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut cut = offset.min(source.len());
    while !source.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &source[..cut];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn build_entities(
    json: Option<&str>,
    directory: &Directory,
    schema: Option<&Schema>,
) -> Result<Entities, LoadError> {
    let mut entities: Vec<Entity> = Vec::new();
    let mut groups: BTreeSet<&GroupName> = BTreeSet::new();
    for (user, gs) in &directory.members {
        let parents = gs.iter().map(|g| uid("Group", g.as_str())).collect();
        entities.push(Entity::new_no_attrs(uid("User", user.as_str()), parents));
        groups.extend(gs.iter());
    }
    for g in groups {
        entities.push(Entity::new_no_attrs(
            uid("Group", g.as_str()),
            Default::default(),
        ));
    }
    let base = match json {
        Some(text) => {
            check_entities_shape(text)?;
            Entities::from_json_str(text, schema).map_err(|e| LoadError::Entities(e.to_string()))?
        }
        None => Entities::empty(),
    };
    // Groups named in both places: keep the entities.json one.
    let entities: Vec<Entity> = entities
        .into_iter()
        .filter(|e| base.get(&e.uid()).is_none())
        .collect();
    base.add_entities(entities, schema)
        .map_err(|e| LoadError::Entities(e.to_string()))
}

/// Refuses an `entities.json` whose shape Cedar would take in part: a
/// misspelt field (`"atrs"`) is ignored by Cedar's reader, so the entity's
/// attributes would be missing and a policy on them (`resource.tags
/// .contains("pii")`) would quietly stop applying.
fn check_entities_shape(text: &str) -> Result<(), LoadError> {
    const FIELDS: [&str; 4] = ["uid", "attrs", "parents", "tags"];
    let bad = |m: String| LoadError::Entities(m);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("entities.json is not JSON: {e}")))?;
    let list = value
        .as_array()
        .ok_or_else(|| bad("entities.json must be a JSON array of entities".into()))?;
    for (i, entity) in list.iter().enumerate() {
        let fields = entity
            .as_object()
            .ok_or_else(|| bad(format!("entities.json entity {i} is not an object")))?;
        if let Some(k) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(bad(format!(
                "entities.json entity {i}: unknown field {k:?} (fields: uid, attrs, parents, tags)"
            )));
        }
        if !fields.contains_key("uid") {
            return Err(bad(format!("entities.json entity {i} has no uid")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::{Authorizer, RestrictedExpression};
    use serde_json::json;

    const POLICIES: &str = r#"
// Engineers may export anything that is not tagged as personal data.
permit(principal in Group::"engineering", action == Action::"export", resource)
unless { resource has tags && resource.tags.contains("pii") };

@id("pii-export")
@approvers("security")
@quorum("2")
@grant_ttl("5m")
permit(principal, action == Action::"export", resource)
when { resource has tags && resource.tags.contains("pii") };

@id("pii-export-owner")
@approvers("data-owners")
permit(principal, action == Action::"export", resource)
when { resource has tags && resource.tags.contains("pii") };

@id("after-hours")
forbid(principal, action == Action::"export", resource)
when { context has local_hour && (context.local_hour < 7 || context.local_hour >= 20) };

@id("broken")
permit(principal, action == Action::"poke", resource)
when { context.missing_field == 1 };
"#;

    fn directory() -> Directory {
        let u = |n: &str| UserName::parse(n).unwrap();
        let g = |n: &str| GroupName::parse(n).unwrap();
        Directory::new([
            (u("alice"), vec![g("engineering")]),
            (u("bob"), vec![g("security")]),
        ])
    }

    fn engine(text: &str) -> Result<PolicyEngine, LoadError> {
        PolicyEngine::from_source(
            &PolicySource {
                policies: vec![(PathBuf::from("policies/main.cedar"), text.to_owned())],
                ..Default::default()
            },
            &directory(),
        )
    }

    fn action(principal: &str, verb: &str, tags: &[&str]) -> Action {
        serde_json::from_value(json!({
            "principal": principal, "action": verb,
            "resource": {"type": "Table", "id": "prod.customers", "attrs": {"tags": tags}},
        }))
        .unwrap()
    }

    fn ctx(hour: i64) -> Map<String, Value> {
        json!({"local_hour": hour}).as_object().unwrap().clone()
    }

    #[test]
    fn invalid_type_fallback_parses() {
        assert!(EntityTypeName::from_str("Airlock::Invalid").is_ok());
    }

    /// The name parsed once is Cedar's: the value its function makes is
    /// the one `new_ip` evaluates to, and what it refuses is left to Cedar.
    #[test]
    fn the_ip_function_name_parses_and_makes_cedars_values() {
        assert!(IP_FUNCTION.is_some());
        for a in ["10.0.0.1", "::1", "192.168.0.0/16"] {
            let map = json!({"source_ip": {"__extn": {"fn": "ip", "arg": a}}});
            let Value::Object(map) = map else {
                unreachable!()
            };
            let direct = direct_context(&map).expect("built directly");
            let cedar =
                Context::from_pairs([("source_ip".to_owned(), RestrictedExpression::new_ip(a))])
                    .unwrap();
            assert_eq!(direct.get("source_ip"), cedar.get("source_ip"), "{a}");
        }
        let map = json!({"source_ip": {"__extn": {"fn": "ip", "arg": "not-an-ip"}}});
        let Value::Object(map) = map else {
            unreachable!()
        };
        assert!(direct_context(&map).is_none());
    }

    #[test]
    fn plain_permit_allows() {
        let e = engine(POLICIES).unwrap();
        let d = e.decide(&action("alice", "export", &[]), ctx(10)).unwrap();
        assert_eq!(d.outcome(), "allow");
    }

    #[test]
    fn approvers_collect_all_thresholds() {
        let e = engine(POLICIES).unwrap();
        let d = e
            .decide(&action("alice", "export", &["pii"]), ctx(10))
            .unwrap();
        let Decision::ApprovalRequired { requirement, .. } = d else {
            panic!("{d:?}")
        };
        let t: Vec<(String, u32)> = requirement
            .thresholds
            .iter()
            .map(|t| (t.groups[0].to_string(), t.quorum.get()))
            .collect();
        assert_eq!(t, vec![("security".into(), 2), ("data-owners".into(), 1)]);
        assert_eq!(requirement.grant_ttl.seconds(), 300);
        assert_eq!(requirement.request_ttl.seconds(), 3600);
    }

    #[test]
    fn forbid_beats_everything() {
        let e = engine(POLICIES).unwrap();
        let d = e
            .decide(&action("alice", "export", &["pii"]), ctx(22))
            .unwrap();
        assert_eq!(d.outcome(), "deny");
        assert_eq!(d.policies(), ["after-hours"]);
    }

    #[test]
    fn nothing_satisfied_is_default_deny() {
        let e = engine(POLICIES).unwrap();
        let d = e.decide(&action("bob", "delete", &[]), ctx(10)).unwrap();
        assert_eq!(d.outcome(), "deny");
        assert!(d.policies().is_empty());
    }

    #[test]
    fn evaluation_error_is_deny() {
        let e = engine(POLICIES).unwrap();
        let d = e.decide(&action("alice", "poke", &[]), ctx(10)).unwrap();
        let Decision::Deny { message, .. } = d else {
            panic!("{d:?}")
        };
        assert!(message.contains("failed to evaluate"), "{message}");
    }

    #[test]
    fn error_in_forbid_does_not_fail_open() {
        let text = "permit(principal, action, resource);\n@id(\"f\")\nforbid(principal, action, resource) when { context.nope == 1 };";
        let e = engine(text).unwrap();
        let d = e
            .decide(&action("alice", "export", &[]), Map::new())
            .unwrap();
        assert_eq!(d.outcome(), "deny");
    }

    #[test]
    fn bad_annotation_names_file_line_and_policy() {
        let text = "permit(principal, action, resource);\n\n@id(\"two\")\n@approvers(\"security\")\n@quorum(\"0\")\npermit(principal, action, resource);";
        let err = engine(text).unwrap_err().to_string();
        assert!(
            err.starts_with("policies/main.cedar:3: policy \"two\""),
            "{err}"
        );
        assert!(err.contains("quorum"), "{err}");
    }

    #[test]
    fn step_up_loads_only_for_the_methods_enforced() {
        // A plain approval must never satisfy a policy that asks for more:
        // the methods enforced load, any other does not.
        for method in ["totp", "webauthn"] {
            let text = format!("@id(\"pii\")\n@approvers(\"security\")\n@step_up(\"{method}\")\npermit(principal, action, resource);");
            assert!(engine(&text).is_ok(), "{method}");
        }
        let text = "@id(\"pii-stepup\")\n@approvers(\"security\")\n@step_up(\"sms\")\npermit(principal, action, resource);";
        let err = engine(text).unwrap_err().to_string();
        assert!(err.contains("policy \"pii-stepup\""), "{err}");
        assert!(err.contains("must be \"totp\" or \"webauthn\""), "{err}");
    }

    /// Two policies asking for different step-ups: the security key wins,
    /// whichever comes first (the first one found used to).
    #[test]
    fn the_stronger_step_up_of_two_policies_is_asked() {
        let key = "@id(\"a-key\")\n@approvers(\"security\")\n@step_up(\"webauthn\")\npermit(principal, action, resource);\n";
        let code = "@id(\"b-code\")\n@approvers(\"security\")\n@step_up(\"totp\")\npermit(principal, action, resource);\n";
        for text in [format!("{key}{code}"), format!("{code}{key}")] {
            let e = engine(&text).unwrap();
            let d = e.decide(&action("alice", "export", &[]), ctx(10)).unwrap();
            let Decision::ApprovalRequired { requirement, .. } = d else {
                panic!("{d:?}")
            };
            assert_eq!(requirement.step_up.as_deref(), Some("webauthn"), "{text}");
        }
    }

    #[test]
    fn unnamed_policy_gets_file_index_id() {
        let text = "permit(principal, action, resource);\n@approvers(\"se curity\")\npermit(principal, action, resource);";
        let err = engine(text).unwrap_err().to_string();
        assert!(
            err.starts_with("policies/main.cedar:2: policy \"main.1\""),
            "{err}"
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let text = "@id(\"a\")\npermit(principal, action, resource);\n@id(\"a\")\nforbid(principal, action, resource);";
        assert!(matches!(
            engine(text),
            Err(LoadError::DuplicateId { line: 3, .. })
        ));
    }

    #[test]
    fn syntax_error_names_file() {
        let err = engine("permit(principal, action resource);")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("policies/main.cedar"), "{err}");
        let err =
            engine("permit(principal, action, resource);\n\npermit(principal, action resource);")
                .unwrap_err()
                .to_string();
        assert!(err.contains("line 3, column "), "{err}");
        assert_eq!(line_column("ab\ncé\nd", 7), (3, 1));
        assert_eq!(line_column("ab\ncé", 6), (2, 3));
        assert_eq!(line_column("ab\ncé", 5), (2, 2));
    }

    #[test]
    fn misspelt_entity_fields_are_refused() {
        for (json, says) in [
            (
                r#"[{"uid": {"type": "Table", "id": "t"}, "atrs": {}}]"#,
                "entity 0: unknown field \"atrs\"",
            ),
            (r#"{"uid": {"type": "Table", "id": "t"}}"#, "JSON array"),
            (r#"[{"attrs": {}}]"#, "entity 0 has no uid"),
        ] {
            let src = PolicySource {
                policies: vec![(PathBuf::from("p.cedar"), POLICIES.to_owned())],
                schema: None,
                entities: Some(json.to_owned()),
            };
            let err = PolicyEngine::from_source(&src, &directory())
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn entities_json_attrs_win_over_caller() {
        let src = PolicySource {
            policies: vec![(PathBuf::from("p.cedar"), POLICIES.to_owned())],
            schema: None,
            entities: Some(
                json!([{"uid": {"type": "Table", "id": "prod.customers"}, "attrs": {"tags": ["pii"]}, "parents": []}])
                    .to_string(),
            ),
        };
        let e = PolicyEngine::from_source(&src, &directory()).unwrap();
        let d = e.decide(&action("alice", "export", &[]), ctx(10)).unwrap();
        assert_eq!(d.outcome(), "approval_required");
    }

    #[test]
    fn version_changes_with_text() {
        let a = engine(POLICIES).unwrap();
        let b = engine(&format!("{POLICIES}\n// changed")).unwrap();
        assert_ne!(a.version(), b.version());
        assert_eq!(a.version(), engine(POLICIES).unwrap().version());
    }

    #[test]
    fn schema_validates_policies_and_requests() {
        let schema = r#"
entity Group;
entity User in [Group];
entity Table { tags: Set<String> };
action export appliesTo { principal: User, resource: Table, context: { local_hour: Long } };
"#;
        let src = |policy: &str| PolicySource {
            policies: vec![(PathBuf::from("p.cedar"), policy.to_owned())],
            schema: Some((PathBuf::from("schema.cedarschema"), schema.to_owned())),
            entities: None,
        };
        let good = "@approvers(\"security\")\npermit(principal, action == Action::\"export\", resource) when { resource.tags.contains(\"pii\") };";
        let e = PolicyEngine::from_source(&src(good), &directory()).unwrap();
        let d = e
            .decide(&action("alice", "export", &["pii"]), ctx(10))
            .unwrap();
        assert_eq!(d.outcome(), "approval_required");
        // A context that does not fit the schema is refused, not guessed at.
        assert!(e
            .decide(&action("alice", "export", &["pii"]), Map::new())
            .is_err());
        let typo = "permit(principal, action == Action::\"export\", resource) when { resource.tagz.contains(\"pii\") };";
        assert!(matches!(
            PolicyEngine::from_source(&src(typo), &directory()),
            Err(LoadError::Validation(_))
        ));
    }

    /// The indexed decision is the whole set's: the same outcome, reasons,
    /// requirement and error message, on random principals, actions,
    /// resources (with attributes or from entities.json) and contexts,
    /// over policies that use every kind of scope, conditions that fail,
    /// and forbids.
    #[test]
    fn indexed_decisions_equal_the_whole_sets() {
        use proptest::prelude::*;
        const MIXED: &str = r#"
@id("read") permit(principal, action == Action::"read", resource);
@id("export-table") @approvers("security") @quorum("2")
permit(principal, action == Action::"export", resource is Table)
when { context has rows && context.rows > 100 };
@id("export-small") permit(principal, action == Action::"export", resource is Table)
when { context has rows && context.rows <= 100 };
@id("export-file") @approvers("security") @grant_ttl("5m")
permit(principal, action == Action::"export", resource == File::"report");
@id("eng-any") @approvers("engineering") @max_uses("3")
permit(principal in Group::"engineering", action in [Action::"wipe", Action::"export"], resource);
@id("no-secrets") forbid(principal, action, resource is Table)
when { resource has tags && resource.tags.contains("secret") };
@id("night") forbid(principal, action == Action::"export", resource)
when { context.local_hour >= 22 };
@id("broken") permit(principal, action == Action::"poke", resource is File)
when { context.missing_field == 1 };
@id("any") @approvers("security") @reason("required")
permit(principal, action, resource in Folder::"shared");
"#;
        let src = PolicySource {
            policies: vec![(PathBuf::from("policies/mixed.cedar"), MIXED.to_owned())],
            entities: Some(
                r#"[{"uid": {"type": "Table", "id": "prod.secrets"}, "attrs": {"tags": ["secret"]}, "parents": []},
                    {"uid": {"type": "File", "id": "in-shared"}, "attrs": {}, "parents": [{"type": "Folder", "id": "shared"}]}]"#
                    .to_owned(),
            ),
            ..Default::default()
        };
        let e = PolicyEngine::from_source(&src, &directory()).unwrap();
        let strategy = (
            prop::sample::select(vec!["alice", "bob", "mallory"]),
            prop::sample::select(vec!["read", "export", "wipe", "poke", "other"]),
            prop::sample::select(vec!["Table", "File", "Folder", "Doc"]),
            prop::sample::select(vec!["prod.secrets", "report", "in-shared", "shared", "x"]),
            prop::option::of(prop::sample::subsequence(vec!["secret", "pii"], 0..=2)),
            prop::option::of(0i64..1000),
            prop::option::of(0i64..24),
        );
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 2000,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&strategy, |(p, verb, ty, id, tags, rows, hour)| {
                let mut resource = json!({"type": ty, "id": id});
                if let Some(tags) = tags {
                    resource["attrs"] = json!({"tags": tags});
                }
                let a: Action = serde_json::from_value(
                    json!({"principal": p, "action": verb, "resource": resource}),
                )
                .unwrap();
                let mut c = Map::new();
                if let Some(r) = rows {
                    c.insert("rows".into(), json!(r));
                }
                if let Some(h) = hour {
                    c.insert("local_hour".into(), json!(h));
                }
                let indexed = e.decide(&a, c.clone()).map_err(|e| e.to_string());
                let whole = e
                    .decide_over(
                        |r, es| Verdict::of(&Authorizer::new().is_authorized(r, &e.set, es)),
                        &a,
                        c,
                    )
                    .map_err(|e| e.to_string());
                prop_assert_eq!(indexed, whole);
                Ok(())
            })
            .unwrap();
    }

    /// A context built directly is the one Cedar's JSON reading builds,
    /// on random nested values; what the direct way does not take (nulls,
    /// fractions, escapes) goes Cedar's way.
    #[test]
    fn direct_contexts_equal_cedars_json_reading() {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            Just(json!(1.5)),
            Just(Value::Null),
            "[a-z_]{0,8}".prop_map(Value::String),
            // The escape Airlock puts in contexts (`source_ip`), with good
            // and bad addresses, and near misses Cedar must read itself.
            prop::sample::select(vec![
                "10.0.0.1",
                "::1",
                "192.168.0.0/16",
                "not-an-ip",
                "",
                "1.2.3.4.5"
            ])
            .prop_map(|a| json!({"__extn": {"fn": "ip", "arg": a}})),
            Just(json!({"__extn": {"fn": "decimal", "arg": "1.5"}})),
            Just(json!({"__extn": {"fn": "ip", "arg": "10.0.0.1", "x": 1}})),
            Just(json!({"__extn": {"fn": "ip", "arg": 7}})),
        ];
        let value = leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "a", "b", "rows", "__entity", "__extn", "type", "id"
                    ]),
                    inner,
                    0..4,
                )
                .prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        });
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 3000,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(
                &prop::collection::btree_map("[a-z]{1,6}", value, 0..5),
                |m| {
                    let map: Map<String, Value> = m.into_iter().collect();
                    if let Some(direct) = direct_context(&map) {
                        let cedar = Context::from_json_value(Value::Object(map.clone()), None);
                        prop_assert!(
                            cedar.is_ok(),
                            "{map:?}: Cedar refuses what was built directly"
                        );
                        let cedar = cedar.unwrap();
                        for k in map.keys() {
                            prop_assert!(direct.get(k).is_some(), "{k} missing");
                            prop_assert_eq!(direct.get(k), cedar.get(k), "{}", k);
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}
