//! Checks a pass config against the JSON schema the pass publishes in its manifest, before any pass runs, so a
//! wrong type or an unknown key is reported by its key path instead of from inside a worker. It covers the JSON
//! Schema keywords that schemars writes for our configs (type, enum, const, oneOf/anyOf, $ref into $defs,
//! properties, required, additionalProperties, items, minimum, maximum); other keywords are not checked here and
//! are left to the pass itself.

use serde_json::{Map, Value};

/// The first problem with `value` under `schema`, as `path: what was expected`.
pub fn check(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    Checker { root: schema }.check(schema, value, path)
}

struct Checker<'a> {
    root: &'a Value,
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    let actual = kind(value);
    actual == expected || (expected == "number" && actual == "integer")
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 60 {
        format!("{}…", &text[..60])
    } else {
        text
    }
}

impl Checker<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> Result<&'s Value, String> {
        match schema.get("$ref").and_then(Value::as_str) {
            None => Ok(schema),
            Some(reference) => reference
                .strip_prefix("#/")
                .and_then(|p| p.split('/').try_fold(self.root, |node, key| node.get(key)))
                .ok_or_else(|| format!("the pass's schema has an unresolvable $ref `{reference}`")),
        }
    }

    fn check(&self, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
        let Value::Object(rules) = schema else {
            return Ok(()); // `true` or an empty schema
        };
        if rules.contains_key("$ref") {
            self.check(self.resolve(schema)?, value, path)?;
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(Value::Array(options)) = rules.get(key) {
                self.one_of(options, value, path)?;
            }
        }
        if let Some(expected) = rules.get("type") {
            let allowed: Vec<&str> = match expected {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            if !allowed.is_empty() && !allowed.iter().any(|t| type_matches(t, value)) {
                return Err(format!(
                    "{path}: expected {}, found {}",
                    allowed.join(" or "),
                    short(value)
                ));
            }
        }
        if let Some(Value::Array(options)) = rules.get("enum") {
            if !options.contains(value) {
                let names: Vec<String> = options.iter().map(short).collect();
                return Err(format!(
                    "{path}: {} is not one of {}",
                    short(value),
                    names.join(", ")
                ));
            }
        }
        if let Some(constant) = rules.get("const") {
            if constant != value {
                return Err(format!(
                    "{path}: expected {}, found {}",
                    short(constant),
                    short(value)
                ));
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = rules.get("minimum").and_then(Value::as_f64) {
                if n < min {
                    return Err(format!("{path}: {n} is below the minimum {min}"));
                }
            }
            if let Some(max) = rules.get("maximum").and_then(Value::as_f64) {
                if n > max {
                    return Err(format!("{path}: {n} is above the maximum {max}"));
                }
            }
        }
        if let (Value::Array(items), Some(item_schema)) = (value, rules.get("items")) {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"))?;
            }
        }
        if let Value::Object(fields) = value {
            self.object(rules, fields, path)?;
        }
        Ok(())
    }

    fn one_of(&self, options: &[Value], value: &Value, path: &str) -> Result<(), String> {
        let mut first_error = None;
        for option in options {
            match self.check(option, value, path) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Options that are constants read best as a list of the allowed values.
        let constants: Vec<String> = options
            .iter()
            .filter_map(|o| self.resolve(o).ok()?.get("const").map(short))
            .collect();
        if constants.len() == options.len() {
            return Err(format!(
                "{path}: {} is not one of {}",
                short(value),
                constants.join(", ")
            ));
        }
        Err(first_error.unwrap_or_else(|| format!("{path}: matches none of the allowed forms")))
    }

    fn object(
        &self,
        rules: &Map<String, Value>,
        fields: &Map<String, Value>,
        path: &str,
    ) -> Result<(), String> {
        let properties = rules.get("properties").and_then(Value::as_object);
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        if let Some(Value::Array(required)) = rules.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    return Err(format!("{}: missing (required)", join(name)));
                }
            }
        }
        for (key, value) in fields {
            match properties.and_then(|p| p.get(key)) {
                Some(field_schema) => self.check(field_schema, value, &join(key))?,
                None if rules.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    let mut known: Vec<&str> = properties
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    known.sort_unstable();
                    return Err(format!(
                        "{}: unknown field; expected one of {}",
                        join(key),
                        known.join(", ")
                    ));
                }
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "$defs": {"Precision": {"oneOf": [{"const": "fp32"}, {"const": "int4"}]},
                      "Args": {"type": "object", "additionalProperties": false,
                               "properties": {"max_steps": {"type": "integer", "minimum": -1}}}},
            "type": "object", "additionalProperties": false, "required": ["precision"],
            "properties": {
                "precision": {"$ref": "#/$defs/Precision"},
                "bits": {"type": "integer", "minimum": 0},
                "target_modules": {"type": ["array", "null"], "items": {"type": "string"}},
                "ratio": {"type": "number"},
                "args": {"$ref": "#/$defs/Args"},
                "format": {"enum": ["auto", "gptq"]}
            }
        })
    }

    #[test]
    fn good_configs_pass() {
        let ok = json!({"precision": "int4", "bits": 4, "target_modules": null, "ratio": 1,
                        "args": {"max_steps": 10}, "format": "gptq"});
        assert_eq!(check(&schema(), &ok, "passes.p"), Ok(()));
    }

    #[test]
    fn problems_name_the_key_path() {
        let cases = [
            (json!({"bits": 4}), "passes.p.precision: missing (required)"),
            (
                json!({"precision": "int3"}),
                "passes.p.precision: \"int3\" is not one of \"fp32\", \"int4\"",
            ),
            (
                json!({"precision": "fp32", "bits": "4"}),
                "passes.p.bits: expected integer, found \"4\"",
            ),
            (
                json!({"precision": "fp32", "bits": -2}),
                "passes.p.bits: -2 is below the minimum 0",
            ),
            (
                json!({"precision": "fp32", "bitz": 4}),
                "passes.p.bitz: unknown field; expected one of args, bits",
            ),
            (
                json!({"precision": "fp32", "target_modules": ["q", 1]}),
                "passes.p.target_modules[1]: expected string",
            ),
            (
                json!({"precision": "fp32", "args": {"max_steps": 1.5}}),
                "passes.p.args.max_steps: expected integer",
            ),
            (
                json!({"precision": "fp32", "format": "awq"}),
                "passes.p.format: \"awq\" is not one of",
            ),
        ];
        for (config, expected) in cases {
            let err = check(&schema(), &config, "passes.p").unwrap_err();
            assert!(
                err.starts_with(expected),
                "{config}: {err}\nexpected {expected}"
            );
        }
    }
}
