//! A workflow file as read: JSON or YAML parsed into an ordered tree (Olive runs `passes` in the order the file
//! lists them, which serde_json's sorted map would lose), with malformed text reported by line and column and
//! every later error by its key path (`passes.quant.group_size`).

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A JSON/YAML value whose maps keep the file's key order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    /// The value as serde_json's (maps sorted by key).
    pub fn to_json(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.clone()),
            Node::List(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// A serde_json value as a tree (its maps in serde_json's order).
    pub fn from_json(value: &Value) -> Node {
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(*b),
            Value::Number(n) => Node::Number(n.clone()),
            Value::String(s) => Node::String(s.clone()),
            Value::Array(items) => Node::List(items.iter().map(Node::from_json).collect()),
            Value::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// What the value is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::String(_) => "a string",
            Node::List(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }

    /// The entries of a mapping, or an error naming `path`.
    pub fn entries(&self, path: &str) -> anyhow::Result<&[(String, Node)]> {
        match self {
            Node::Map(entries) => Ok(entries),
            other => bail!("{path}: expected a mapping, found {}", other.kind()),
        }
    }
}

/// The file's format, by extension (`.yaml`/`.yml`, else JSON).
fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads and parses a workflow file; malformed text is an error naming the file, line and column.
pub fn read(path: &Path) -> anyhow::Result<Node> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text, is_yaml(path)).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses JSON or YAML text into a [`Node`]; the top level must be a mapping.
pub fn parse(text: &str, yaml: bool) -> anyhow::Result<Node> {
    let node = if yaml {
        let de = serde_norway::Deserializer::from_str(text);
        Node::deserialize(de).map_err(|e| match e.location() {
            Some(at) => anyhow!(
                "malformed YAML at line {} column {}: {e}",
                at.line(),
                at.column()
            ),
            None => anyhow!("malformed YAML: {e}"),
        })?
    } else {
        let mut de = serde_json::Deserializer::from_str(text);
        let node = Node::deserialize(&mut de).and_then(|n| de.end().map(|()| n));
        node.map_err(|e| {
            anyhow!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            )
        })?
    };
    if !matches!(node, Node::Map(_)) {
        bail!(
            "the workflow must be a mapping of sections (input_model, passes, ...); found {}",
            node.kind()
        );
    }
    Ok(node)
}

/// Deserializes `value` into `T`; a wrong type or unknown key is an error naming its full key path under `path`.
pub fn typed<T: serde::de::DeserializeOwned>(value: &Value, path: &str) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let at = match (path.is_empty(), inner.as_str()) {
            (true, _) => inner.clone(),
            (false, ".") => path.to_owned(),
            (false, _) => format!("{path}.{inner}"),
        };
        anyhow!("{at}: {}", err.inner())
    })
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(String, Node)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_the_file_order_in_json_and_yaml() {
        let json = parse(
            r#"{"passes": {"b": 1, "a": 2, "c": {"z": 1, "y": 2}}}"#,
            false,
        )
        .unwrap();
        let yaml = parse("passes:\n  b: 1\n  a: 2\n  c:\n    z: 1\n    y: 2\n", true).unwrap();
        assert_eq!(json, yaml);
        let passes = &json.entries("").unwrap()[0].1;
        let keys: Vec<_> = passes
            .entries("passes")
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["b", "a", "c"]);
    }

    #[test]
    fn json_values_round_trip_through_the_tree() {
        let value = serde_json::json!({"a": [1, 2.5, null, true], "b": {"c": "d"}});
        let node = Node::from_json(&value);
        assert_eq!(node.entries("").unwrap()[1].0, "b");
        assert_eq!(node.to_json(), value);
    }

    #[test]
    fn malformed_text_names_line_and_column() {
        let err = parse("{\n  \"passes\": {\n    \"a\": [1,\n  }\n}", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed JSON at line 4 column 3"), "{err}");
        let err = parse("passes:\n  a: [1, 2\n  b: 3\n", true)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("malformed YAML at line "), "{err}");
        let err = parse("{\"a\": 1, \"a\": 2}", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("duplicate key `a`"), "{err}");
        let err = parse("[1, 2]", false).unwrap_err().to_string();
        assert!(err.contains("found a list"), "{err}");
    }

    #[test]
    fn typed_errors_name_the_key_path() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            bits: u8,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            quant: Inner,
        }
        let value = serde_json::json!({"quant": {"bits": "four"}});
        let err = typed::<Outer>(&value, "passes").unwrap_err().to_string();
        assert!(err.starts_with("passes.quant.bits: invalid type"), "{err}");
    }
}
