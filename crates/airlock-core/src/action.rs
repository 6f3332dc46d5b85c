//! The action an enforcement point is about to perform, and its fingerprint:
//! the identity a grant is bound to.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::{ActionName, ParseError, UserName};

/// Longest resource id accepted; ids are names, not payloads.
const MAX_RESOURCE_ID: usize = 1024;

/// A resource type, a Cedar entity type name such as `Table` or `Db::Table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceType(String);

impl ResourceType {
    /// Parses `Ident(::Ident)*`, the shape Cedar accepts for entity types.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.split("::").all(|part| {
                let mut chars = part.chars();
                matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
        if !ok {
            return Err(ParseError::new(
                "resource type",
                format!("{s:?} is not an entity type name like `Table` or `Db::Table`"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The type name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceType {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<ResourceType> for String {
    fn from(v: ResourceType) -> String {
        v.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource id: any non-empty text without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceId(String);

impl ResourceId {
    /// Parses a resource id.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > MAX_RESOURCE_ID {
            return Err(ParseError::new(
                "resource id",
                format!("must be 1 to {MAX_RESOURCE_ID} bytes"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(ParseError::new(
                "resource id",
                "must not contain control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceId {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<ResourceId> for String {
    fn from(v: ResourceId) -> String {
        v.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `TYPE:ID` where TYPE may be namespaced (`Db::Table:prod.customers`
/// is type `Db::Table`, id `prod.customers`): the separator is the first
/// single colon, never one of a `::` pair. An id that itself starts with a
/// colon cannot be written this way; give type and id apart.
pub fn parse_type_id(s: &str) -> Result<(ResourceType, ResourceId), ParseError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b':' {
            if bytes.get(i + 1) == Some(&b':') {
                i += 2;
                continue;
            }
            let (kind, id) = (&s[..i], &s[i + 1..]);
            return Ok((ResourceType::parse(kind)?, ResourceId::parse(id)?));
        }
        i += 1;
    }
    Err(ParseError::new(
        "resource",
        format!(
            "{:?} must be TYPE:ID, e.g. Table:prod.customers or Db::Table:prod.customers",
            s
        ),
    ))
}

/// What the action is performed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Entity type, e.g. `Table`.
    #[serde(rename = "type")]
    pub kind: ResourceType,
    /// Entity id, e.g. `prod.customers`.
    pub id: ResourceId,
    /// Attributes that inform the decision (tags, owner, row count). They do
    /// not bind the grant.
    #[serde(
        default,
        skip_serializing_if = "Map::is_empty",
        deserialize_with = "exact::map"
    )]
    pub attrs: Map<String, Value>,
}

/// One action as an enforcement point describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Who performs it.
    pub principal: UserName,
    /// The verb.
    pub action: ActionName,
    /// What it is performed on.
    pub resource: Resource,
    /// What binds the grant: exact SQL, command line, path, body hash.
    #[serde(default, deserialize_with = "exact::btree")]
    pub params: BTreeMap<String, Value>,
    /// Facts that inform the decision but do not bind the grant.
    #[serde(default, deserialize_with = "exact::map")]
    pub context: Map<String, Value>,
}

impl Action {
    /// Reads an action this build or an earlier one stored. What callers
    /// send is refused at the door when a number cannot be bound exactly;
    /// an action stored before that rule existed is still read back (its
    /// grant was bound to what was hashed then), so an old request never
    /// makes a listing fail.
    pub fn from_stored_json(text: &str) -> Result<Action, serde_json::Error> {
        #[derive(Deserialize)]
        struct StoredResource {
            #[serde(rename = "type")]
            kind: ResourceType,
            id: ResourceId,
            #[serde(default)]
            attrs: Map<String, Value>,
        }
        #[derive(Deserialize)]
        struct StoredAction {
            principal: UserName,
            action: ActionName,
            resource: StoredResource,
            #[serde(default)]
            params: BTreeMap<String, Value>,
            #[serde(default)]
            context: Map<String, Value>,
        }
        let a: StoredAction = serde_json::from_str(text)?;
        Ok(Action {
            principal: a.principal,
            action: a.action,
            resource: Resource {
                kind: a.resource.kind,
                id: a.resource.id,
                attrs: a.resource.attrs,
            },
            params: a.params,
            context: a.context,
        })
    }
}

/// Caller JSON that can be bound and recorded exactly.
///
/// A JSON number with a fraction, an exponent, or beyond 64-bit integers is
/// read as a binary float: two different numbers a caller sent can read as
/// the same float (so the same fingerprint), and a float's text does not
/// always read back as the same float (so a hash over it would not verify
/// after a round trip through the store). Airlock binds and records what it
/// can represent exactly, whole numbers, and refuses the rest at the door:
/// such values are sent as strings.
pub mod exact {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{DeserializeSeed, Error, MapAccess, SeqAccess, Visitor};
    use serde::Deserializer;
    use serde_json::map::Entry;
    use serde_json::{Map, Value};

    /// Reads one JSON value as it can be bound, in one pass: a number that
    /// is not a 64-bit integer is refused, and so is a key given twice in
    /// one object (parsers disagree on which of the two wins: serde_json
    /// keeps the last, others the first, so the action approved and the
    /// action another reader of the same bytes runs could differ). It
    /// keeps no path of its own: nothing is allocated beyond the value,
    /// and the API's error already names the field (`params.m.x[1]: …`).
    #[derive(Clone, Copy)]
    struct Exact {
        /// What it expects, for a value of the wrong type.
        expecting: &'static str,
    }

    const VALUE: Exact = Exact {
        expecting: "a JSON value",
    };

    impl<'de> DeserializeSeed<'de> for Exact {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Exact {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Value, E> {
            Err(E::custom(
                "only whole numbers from -2^63 to 2^64-1 can be bound and recorded exactly; send other numbers as strings",
            ))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E: Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(v) = seq.next_element_seed(VALUE)? {
                items.push(v);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut members = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(VALUE)?;
                match members.entry(key) {
                    Entry::Occupied(given) => {
                        return Err(A::Error::custom(format!(
                            "the key {:?} is given twice; send it once",
                            given.key()
                        )))
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(value);
                    }
                }
            }
            Ok(Value::Object(members))
        }
    }

    /// Deserializes a JSON object whose numbers are all exact and whose
    /// keys, at every depth, are each given once.
    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        let top = Exact {
            expecting: "a JSON object",
        };
        match d.deserialize_map(top)? {
            Value::Object(m) => Ok(m),
            _ => Err(D::Error::custom("expected a JSON object")),
        }
    }

    /// The same, into a sorted map.
    pub fn btree<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Value>, D::Error> {
        map(d).map(|m| m.into_iter().collect())
    }

    /// [`map`] of JSON text: for values read from a form or a command line,
    /// which must follow the same rules as the API's.
    pub fn map_from_str(text: &str) -> Result<Map<String, Value>, serde_json::Error> {
        let mut d = serde_json::Deserializer::from_str(text);
        let m = map(&mut d)?;
        d.end()?;
        Ok(m)
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]
        use super::*;

        fn read(text: &str) -> Result<Map<String, Value>, String> {
            map_from_str(text).map_err(|e| e.to_string())
        }

        #[test]
        fn a_key_given_twice_is_refused_at_any_depth() {
            assert_eq!(
                read(r#"{"n": 1, "m": {"a": [1, {"b": true}]}}"#).unwrap()["m"]["a"][1]["b"],
                true
            );
            let err = read(r#"{"n": 1, "n": 2}"#).unwrap_err();
            assert!(err.contains("the key \"n\" is given twice"), "{err}");
            let err = read(r#"{"m": {"a": [0, {"b": 1, "b": 1}]}}"#).unwrap_err();
            assert!(err.contains("the key \"b\" is given twice"), "{err}");
            // Keys are compared as read: an escape is the same key.
            assert!(read(r#"{"a": 1, "\u0061": 2}"#).is_err());
            // The same key in two objects is no repeat.
            assert!(read(r#"{"a": {"k": 1}, "b": {"k": 1}}"#).is_ok());
        }

        #[test]
        fn only_whole_numbers_are_exact() {
            assert!(read(r#"{"n": -9223372036854775808, "m": 18446744073709551615}"#).is_ok());
            for bad in [
                r#"{"n": 1.5}"#,
                r#"{"n": 18446744073709551616}"#,
                r#"{"a": [1e3]}"#,
            ] {
                let err = read(bad).unwrap_err();
                assert!(err.contains("only whole numbers"), "{bad}: {err}");
            }
            let err = read("[1]").unwrap_err();
            assert!(err.contains("expected a JSON object"), "{err}");
            let err = read("1.5").unwrap_err();
            assert!(err.contains("expected a JSON object"), "{err}");
        }
    }
}

impl Action {
    /// The fingerprint: SHA-256 over a canonical encoding of principal,
    /// action, resource type and id, and params.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut buf = Vec::with_capacity(256);
        // Domain separation so a fingerprint can never collide with another
        // hash Airlock computes over similar bytes.
        buf.extend_from_slice(b"airlock-fingerprint-v1\0");
        // Fields in sorted order: canonical JSON with no `Value` built.
        #[derive(Serialize)]
        struct Bound<'a> {
            action: &'a str,
            params: CanonicalMembers<'a>,
            principal: &'a str,
            resource_id: &'a str,
            resource_type: &'a str,
        }
        // Local invariant: a struct of strings and a Value serializes.
        let _ = serde_json::to_writer(
            &mut buf,
            &Bound {
                action: self.action.as_str(),
                params: CanonicalMembers(&self.params),
                principal: self.principal.as_str(),
                resource_id: self.resource.id.as_str(),
                resource_type: self.resource.kind.as_str(),
            },
        );
        Fingerprint(Sha256::digest(&buf).into())
    }
}

/// Writes `v` as JSON with object keys sorted and no white space, so equal
/// values always produce equal bytes whatever map order a dependency enables.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and every Value serializes.
    let _ = serde_json::to_writer(out, &Canonical(v));
}

/// A value that serializes canonically (the bytes [`canonical_json`]
/// writes, through serde_json): object members sorted by key, bytewise,
/// arrays in order, strings and numbers as serde_json writes them. A
/// struct whose fields are declared in sorted order, with its free-form
/// values behind `Canonical`, serializes canonically too, with no
/// `Value` built first (see `audit::Details::from_sorted`).
pub struct Canonical<'a>(pub &'a Value);

/// An object (a check's context) that serializes canonically.
pub struct CanonicalObject<'a>(pub &'a Map<String, Value>);

/// Members already in key order (a check's params) whose values
/// serialize canonically.
pub struct CanonicalMembers<'a>(pub &'a BTreeMap<String, Value>);

impl Serialize for CanonicalObject<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Sorted as pairs: looking each key up again would hash it
        // (serde_json's map keeps insertion order, in a hash map).
        let mut entries: Vec<(&String, &Value)> = self.0.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        members(entries.into_iter(), s)
    }
}

impl Serialize for CanonicalMembers<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        members(self.0.iter(), s)
    }
}

/// An object of these members, in this order, values canonical.
fn members<'a, S: serde::Serializer>(
    entries: impl ExactSizeIterator<Item = (&'a String, &'a Value)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(entries.len()))?;
    for (k, v) in entries {
        m.serialize_entry(k, &Canonical(v))?;
    }
    m.end()
}

impl Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match self.0 {
            Value::Object(map) => CanonicalObject(map).serialize(s),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Canonical(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

pub(crate) fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; reuse it. Writing a
    // &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

impl utoipa::PartialSchema for ResourceType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::string(
            "An entity type name, like `Table` or `Db::Table`.",
            Some("^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*$"),
            1,
            128,
        )
    }
}

impl utoipa::ToSchema for ResourceType {}

impl utoipa::PartialSchema for ResourceId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::string(
            "A resource's id: any text without control characters.",
            Some("^[^\\x00-\\x1f\\x7f-\\x9f]+$"),
            1,
            MAX_RESOURCE_ID,
        )
    }
}

impl utoipa::ToSchema for ResourceId {}

impl utoipa::PartialSchema for Fingerprint {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::schema::string(
            "SHA-256 of the action's canonical form (principal, action, resource, params), hex.",
            Some("^[0-9a-fA-F]{64}$"),
            64,
            64,
        )
    }
}

impl utoipa::ToSchema for Fingerprint {}

/// SHA-256 fingerprint of an action.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Parses 64 lowercase or uppercase hex digits.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| ParseError::new("fingerprint", e.to_string()))?;
        Ok(Self(out))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = ParseError;
    fn try_from(s: String) -> Result<Self, ParseError> {
        Self::parse(&s)
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.to_string()
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action(v: Value) -> Action {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> Value {
        json!({
            "principal": "alice",
            "action": "export",
            "resource": {"type": "Table", "id": "prod.customers", "attrs": {"tags": ["pii"]}},
            "params": {"sql": "select * from customers", "format": "csv"},
            "context": {"rows": 10}
        })
    }

    #[test]
    fn context_and_attrs_do_not_bind() {
        let a = action(base());
        let mut v = base();
        v["context"] = json!({"rows": 99999});
        v["resource"]["attrs"] = json!({});
        assert_eq!(a.fingerprint(), action(v).fingerprint());
    }

    #[test]
    fn every_bound_field_binds() {
        let fp = action(base()).fingerprint();
        for (path, val) in [
            ("/principal", json!("bob")),
            ("/action", json!("delete")),
            ("/resource/type", json!("View")),
            ("/resource/id", json!("prod.orders")),
            ("/params/sql", json!("select * from customers;")),
            ("/params/extra", json!("1")),
        ] {
            let mut v = base();
            if path == "/params/extra" {
                v["params"]["extra"] = val;
            } else {
                *v.pointer_mut(path).unwrap() = val;
            }
            assert_ne!(fp, action(v).fingerprint(), "{path} must bind");
        }
    }

    #[test]
    fn key_order_does_not_matter() {
        let a: Action = serde_json::from_str(
            r#"{"principal":"a","action":"x","resource":{"type":"T","id":"1"},"params":{"b":{"y":1,"x":2},"a":1}}"#,
        )
        .unwrap();
        let b: Action = serde_json::from_str(
            r#"{"principal":"a","action":"x","resource":{"type":"T","id":"1"},"params":{"a":1,"b":{"x":2,"y":1}}}"#,
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn fingerprint_known_answer() {
        // Pinned so an accidental change to the encoding (which would void
        // every outstanding grant) fails loudly.
        let a: Action = serde_json::from_str(
            r#"{"principal":"alice","action":"export","resource":{"type":"Table","id":"t"},"params":{"sql":"select 1"}}"#,
        )
        .unwrap();
        let mut buf = b"airlock-fingerprint-v1\0".to_vec();
        buf.extend_from_slice(
            br#"{"action":"export","params":{"sql":"select 1"},"principal":"alice","resource_id":"t","resource_type":"Table"}"#,
        );
        assert_eq!(
            a.fingerprint().as_bytes(),
            &<[u8; 32]>::from(Sha256::digest(&buf))
        );
    }

    #[test]
    fn refuses_bad_resource() {
        let mut v = base();
        v["resource"]["type"] = json!("not a type");
        assert!(serde_json::from_value::<Action>(v).is_err());
        let mut v = base();
        v["resource"]["id"] = json!("");
        assert!(serde_json::from_value::<Action>(v).is_err());
    }

    #[test]
    fn numbers_that_cannot_bind_exactly_are_refused() {
        // Each of these reads as a binary float: refused wherever the
        // caller can put it.
        for n in [
            "9376.0323511051380",
            "100000000000000000000",
            "100000000000000000001",
            "-0.0",
            "-0",
            "1e2",
            "1.0",
            "5e-324",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "-18446744073709551616",
            "0.1",
        ] {
            for place in ["params", "context"] {
                let text = format!(
                    r#"{{"principal":"a","action":"x","resource":{{"type":"T","id":"1"}},"{place}":{{"k":{{"deep":[1,{n}]}}}}}}"#
                );
                let err = serde_json::from_str::<Action>(&text)
                    .unwrap_err()
                    .to_string();
                // The path is the caller's to add (the API's error names
                // `params.k.deep[1]`); the reason is this reader's.
                assert!(err.contains("only whole numbers"), "{place} {n}: {err}");
            }
            let text = format!(
                r#"{{"principal":"a","action":"x","resource":{{"type":"T","id":"1","attrs":{{"n":{n}}}}}}}"#
            );
            assert!(serde_json::from_str::<Action>(&text).is_err(), "attrs {n}");
        }
        // Whole numbers in range bind, and differ when they differ.
        let fp = |n: &str| {
            serde_json::from_str::<Action>(&format!(
                r#"{{"principal":"a","action":"x","resource":{{"type":"T","id":"1"}},"params":{{"n":{n}}}}}"#
            ))
            .unwrap()
            .fingerprint()
        };
        assert_ne!(fp("18446744073709551615"), fp("18446744073709551614"));
        assert_ne!(fp("-9223372036854775808"), fp("-9223372036854775807"));
        assert_ne!(fp("0"), fp("1"));
    }

    #[test]
    fn stored_actions_with_old_numbers_still_read() {
        let text = r#"{"principal":"a","action":"x","resource":{"type":"T","id":"1"},"params":{"n":9376.032}}"#;
        assert!(serde_json::from_str::<Action>(text).is_err());
        assert!(Action::from_stored_json(text).is_ok());
    }

    #[test]
    fn type_id_splits_at_the_first_single_colon() {
        let split =
            |s: &str| parse_type_id(s).map(|(t, i)| (t.as_str().to_owned(), i.as_str().to_owned()));
        assert_eq!(
            split("Db::Table:prod.customers").unwrap(),
            ("Db::Table".into(), "prod.customers".into())
        );
        assert_eq!(
            split("Table:prod.customers").unwrap(),
            ("Table".into(), "prod.customers".into())
        );
        assert_eq!(
            split("Table:a::b:c").unwrap(),
            ("Table".into(), "a::b:c".into())
        );
        assert_eq!(split("A::B::C:x").unwrap(), ("A::B::C".into(), "x".into()));
        for bad in [
            "Table",
            "Table:",
            "Db::Table",
            ":x",
            "Db:::x",
            "not a type:x",
            "",
        ] {
            assert!(split(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_parse_round_trip() {
        let fp = action(base()).fingerprint();
        assert_eq!(Fingerprint::parse(&fp.to_string()).unwrap(), fp);
        assert!(Fingerprint::parse("abc").is_err());
    }
}
