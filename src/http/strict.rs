//! Request bodies are JSON objects, all the way down, and say each key once.
//!
//! serde's derived `Deserialize` for a struct also accepts a JSON array (the fields in
//! order), so `[null, null]` would pass as a `PATCH` body of optional fields, and
//! `"ratelimit": [10, 60]` as a rate limit. The API documents objects (and schemathesis holds
//! it to that), so a body is first parsed into a [`Node`] tree, which refuses an object that
//! repeats a key anywhere (also inside free-form `metadata`, where serde_json would keep the
//! last one silently), and then read through [`Strict`], which offers a struct only a JSON
//! object. Everything else (types, unknown fields, the validating newtypes) behaves as with
//! `serde_json` directly.

use std::{borrow::Cow, fmt};

use serde::{
    Deserialize, Deserializer,
    de::{
        Error as _, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor,
        value::{MapDeserializer, SeqDeserializer},
    },
    forward_to_deserialize_any,
};
use serde_json::{Error, Number};

/// A parsed JSON value, borrowing its strings from the body where it can; object members keep
/// their order.
#[derive(Debug)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Node<'de>, E> {
        Number::from_f64(n)
            .map(Node::Number)
            .ok_or_else(|| E::custom("not a JSON number"))
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E>(self, s: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Node<'de>)> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            let value = map.next_value()?;
            members.push((key, value));
        }
        if let Some(key) = repeated(&members) {
            return Err(A::Error::custom(format_args!("duplicate field `{key}`")));
        }
        Ok(Node::Object(members))
    }
}

/// A key said twice, if any. A few keys are compared pairwise (no allocation: the common
/// body); many are sorted first, so a body of many keys costs n log n, not n².
fn repeated<'a>(members: &'a [(Cow<'_, str>, Node<'_>)]) -> Option<&'a str> {
    if members.len() <= 8 {
        return members.iter().enumerate().find_map(|(i, (k, _))| {
            members[..i]
                .iter()
                .any(|(other, _)| other == k)
                .then_some(k.as_ref())
        });
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Node::deserialize(d)? {
            Node::String(s) => Ok(Key(s)),
            _ => Err(D::Error::custom("an object key is a string")),
        }
    }
}

/// A parsed body to deserialize from, refusing arrays where a struct is expected.
pub struct Strict<'a>(pub Node<'a>);

fn unexpected<'a>(v: &'a Node<'_>) -> Unexpected<'a> {
    match v {
        Node::Null => Unexpected::Unit,
        Node::Bool(b) => Unexpected::Bool(*b),
        Node::Number(_) => Unexpected::Other("number"),
        Node::String(s) => Unexpected::Str(s),
        Node::Array(_) => Unexpected::Seq,
        Node::Object(_) => Unexpected::Map,
    }
}

impl<'de> Deserializer<'de> for Strict<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(b),
            Node::Number(n) => n.deserialize_any(visitor),
            Node::String(Cow::Borrowed(s)) => visitor.visit_borrowed_str(s),
            Node::String(Cow::Owned(s)) => visitor.visit_string(s),
            Node::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(Strict));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Node::Object(members) => {
                let mut map =
                    MapDeserializer::new(members.into_iter().map(|(k, v)| (k, Strict(v))));
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Node::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Node::Object(_) => self.deserialize_any(visitor),
            ref other => Err(Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // The API's enums are plain names (`"low"`, `"key_compromise"`).
        let _ = (name, variants);
        match self.0 {
            Node::String(s) => visitor.visit_enum(s.into_deserializer()),
            ref other => Err(Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, Error> for Strict<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Limit {
        limit: u32,
        window: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Risk {
        Low,
        High,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        limit: Option<Limit>,
        #[serde(default)]
        risk: Option<Risk>,
        #[serde(default)]
        scopes: Vec<String>,
        #[serde(default)]
        meta: Option<serde_json::Map<String, Value>>,
    }

    fn parse(v: Value) -> Result<Body, String> {
        parse_text(&v.to_string())
    }

    fn parse_text(s: &str) -> Result<Body, String> {
        let node: Node = serde_json::from_str(s).map_err(|e| e.to_string())?;
        Body::deserialize(Strict(node)).map_err(|e| e.to_string())
    }

    #[test]
    fn objects_deserialize_as_with_serde_json() {
        let v = json!({"name": "a", "limit": {"limit": 1, "window": 2}, "risk": "high",
            "scopes": ["x", "y"], "meta": {"k": [1, {"z": null}]}});
        let direct: Body = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(parse(v).unwrap(), direct);
        assert_eq!(parse(json!({"name": null})).unwrap(), Body::default());
        // Escapes (the owned path) read as serde_json reads them.
        let b = parse_text(r#"{"na\u006de": "a\"b\u00e9", "scopes": ["\u0078"]}"#).unwrap();
        assert_eq!(b.name.as_deref(), Some("a\"bé"));
        assert_eq!(b.scopes, ["x"]);
    }

    #[test]
    fn arrays_are_not_structs_at_any_depth() {
        assert!(
            parse(json!([null, null]))
                .unwrap_err()
                .starts_with("invalid type: sequence")
        );
        let e = parse(json!({"limit": [10, 60]})).unwrap_err();
        assert!(e.starts_with("invalid type: sequence"), "{e}");
        assert!(parse(json!("body")).is_err());
    }

    #[test]
    fn a_key_said_twice_is_refused_at_any_depth() {
        let e = parse_text(r#"{"name": "a", "name": "b"}"#).unwrap_err();
        assert!(e.starts_with("duplicate field `name`"), "{e}");
        let e = parse_text(r#"{"meta": {"k": 1, "k": 2}}"#).unwrap_err();
        assert!(e.starts_with("duplicate field `k`"), "{e}");
        // Past the pairwise size too.
        let many: Vec<String> = (0..20).map(|i| format!("\"k{}\": 1", i % 19)).collect();
        let e = parse_text(&format!("{{\"meta\": {{{}}}}}", many.join(","))).unwrap_err();
        assert!(e.starts_with("duplicate field `k0`"), "{e}");
        let distinct: Vec<String> = (0..20).map(|i| format!("\"k{i}\": 1")).collect();
        assert!(parse_text(&format!("{{\"meta\": {{{}}}}}", distinct.join(","))).is_ok());
    }

    #[test]
    fn the_usual_errors_keep_their_words() {
        let e = parse(json!({"nope": 1})).unwrap_err();
        assert!(e.starts_with("unknown field `nope`"), "{e}");
        let e = parse(json!({"limit": {"limit": 1}})).unwrap_err();
        assert!(e.starts_with("missing field `window`"), "{e}");
        let e = parse(json!({"limit": {"limit": -1, "window": 1}})).unwrap_err();
        assert!(
            e.starts_with("invalid value") || e.starts_with("invalid type"),
            "{e}"
        );
        let e = parse(json!({"limit": {"limit": 1.5, "window": 1}})).unwrap_err();
        assert!(e.starts_with("invalid type"), "{e}");
        let e = parse(json!({"risk": "medium"})).unwrap_err();
        assert!(e.starts_with("unknown variant"), "{e}");
        let e = parse(json!({"scopes": "x"})).unwrap_err();
        assert!(e.starts_with("invalid type"), "{e}");
    }
}
