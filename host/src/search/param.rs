//! Olive's search parameters as written in JSON pass configs (olive/search/search_parameter.py: Categorical,
//! Boolean, Conditional, ConditionalDefault, SpecialParamValue) and the split of a pass config into its fixed part
//! and its search parameters (olive/passes/olive_pass.py `_init_fixed_and_search_params`).

use std::fmt;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Olive's `SpecialParamValue.INVALID`: a point holding it is never tried.
pub const INVALID: &str = "OLIVE_INVALID_PARAM_VALUE";
/// Olive's `SpecialParamValue.IGNORED`: the key is left out of the pass config, so the pass default applies.
pub const IGNORED: &str = "OLIVE_IGNORED_PARAM_VALUE";

const TYPES: &str = "Categorical, Boolean, Conditional, ConditionalDefault";

/// A key path inside one pass config, e.g. `quant_config.group_size`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamPath(pub Vec<String>);

impl ParamPath {
    /// Splits a dotted name (`a.b`) as written in a Conditional's `parents`.
    pub fn parse(dotted: &str) -> Self {
        Self(dotted.split('.').map(str::to_string).collect())
    }
}

impl fmt::Display for ParamPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// One search parameter of a pass.
#[derive(Clone, Debug, PartialEq)]
pub enum SearchParam {
    /// One of the listed values (Boolean is `[true, false]`).
    Categorical(Vec<Value>),
    /// Values chosen by the values of parent parameters.
    Conditional(Conditional),
}

/// Olive's Conditional: the support depends on the values of its parents.
#[derive(Clone, Debug, PartialEq)]
pub struct Conditional {
    /// Parent parameters (search parameters of the same pass that come earlier).
    pub parents: Vec<ParamPath>,
    /// Parent-value keys (JSON object keys, one per parent) and the values they allow.
    pub branches: Vec<(Vec<String>, Vec<Value>)>,
    /// The values when no branch matches (`[INVALID]` when not given, as in Olive).
    pub default: Vec<Value>,
}

impl Conditional {
    /// The values allowed for these parent values.
    pub fn choices(&self, parent_values: &[&Value]) -> &[Value] {
        self.branches
            .iter()
            .find(|(keys, _)| {
                keys.iter()
                    .zip(parent_values)
                    .all(|(k, v)| key_matches(k, v))
            })
            .map_or(&self.default, |(_, values)| values)
    }

    /// Fixes parent `i` to `value` (Olive's `Conditional.condition`): the branches for other values go away.
    fn condition(&self, i: usize, value: &Value) -> SearchParam {
        let branches: Vec<_> = self
            .branches
            .iter()
            .filter(|(keys, _)| key_matches(&keys[i], value))
            .map(|(keys, values)| {
                let mut keys = keys.clone();
                keys.remove(i);
                (keys, values.clone())
            })
            .collect();
        let mut parents = self.parents.clone();
        parents.remove(i);
        match branches.first() {
            None => SearchParam::Categorical(self.default.clone()),
            Some((_, values)) if parents.is_empty() => SearchParam::Categorical(values.clone()),
            Some(_) => SearchParam::Conditional(Conditional {
                parents,
                branches,
                default: self.default.clone(),
            }),
        }
    }
}

impl SearchParam {
    /// Index slots: a Categorical's length; a Conditional's longest support (Olive pads the shorter ones, and a
    /// padded slot is skipped). The default counts too, so none of its values is cut off.
    pub fn radix(&self) -> usize {
        match self {
            SearchParam::Categorical(values) => values.len(),
            SearchParam::Conditional(c) => c
                .branches
                .iter()
                .map(|(_, v)| v.len())
                .chain([c.default.len()])
                .max()
                .unwrap_or(1),
        }
    }
}

/// Whether a JSON object key names a parent value: JSON keys are strings, so `"4"` names 4, `"true"` (or
/// Python's `"True"`) names true.
pub fn key_matches(key: &str, value: &Value) -> bool {
    match value {
        Value::String(s) => s == key,
        Value::Bool(true) => key == "true" || key == "True",
        Value::Bool(false) => key == "false" || key == "False",
        Value::Null => key == "null" || key == "None",
        Value::Number(n) => key == n.to_string(),
        _ => serde_json::to_string(value).is_ok_and(|s| s == key),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Whether `v` is a search parameter object (`"olive_parameter_type": "SearchParameter"`).
pub fn is_search_param(v: &Value) -> bool {
    v.get("olive_parameter_type").and_then(Value::as_str) == Some("SearchParameter")
}

/// Parses a Categorical's (or Boolean's) values, for a support leaf or a default.
fn parse_values(v: &Value, at: &str) -> Result<Vec<Value>> {
    if !is_search_param(v) {
        bail!(
            "{at}: expected a search parameter (Categorical or Boolean), found {}",
            kind(v)
        );
    }
    match parse_param(v, at)? {
        SearchParam::Categorical(values) => Ok(values),
        SearchParam::Conditional(_) => {
            bail!("{at}: expected Categorical or Boolean, found a nested Conditional")
        }
    }
}

/// Parses one search parameter object; `at` is its key path, for errors.
pub fn parse_param(v: &Value, at: &str) -> Result<SearchParam> {
    let Some(ty) = v.get("type") else {
        bail!("{at}.type: missing, expected one of {TYPES}");
    };
    match ty.as_str() {
        Some("Boolean") => Ok(SearchParam::Categorical(vec![
            Value::Bool(true),
            Value::Bool(false),
        ])),
        Some("Categorical") => {
            let values = match v.get("support") {
                None => bail!("{at}.support: missing, expected a list of at least one value"),
                Some(Value::Array(values)) => values.clone(),
                Some(other) => bail!(
                    "{at}.support: expected a list of values, found {}",
                    kind(other)
                ),
            };
            check_values(&values, &format!("{at}.support"))?;
            Ok(SearchParam::Categorical(values))
        }
        Some("Conditional" | "ConditionalDefault") => parse_conditional(v, at),
        Some(other) => {
            bail!("{at}.type: unknown search parameter type `{other}`, expected one of {TYPES}")
        }
        None => bail!(
            "{at}.type: expected a string (one of {TYPES}), found {}",
            kind(ty)
        ),
    }
}

fn check_values(values: &[Value], at: &str) -> Result<()> {
    if values.is_empty() {
        bail!("{at}: empty, expected at least one value");
    }
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            bail!("{at}[{i}]: {v} appears twice, expected distinct values");
        }
    }
    Ok(())
}

fn parse_conditional(v: &Value, at: &str) -> Result<SearchParam> {
    let parents: Vec<ParamPath> = match v.get("parents") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, p)| match p.as_str() {
                Some(s) if !s.is_empty() => Ok(ParamPath::parse(s)),
                _ => bail!(
                    "{at}.parents[{i}]: expected a parameter name, found {}",
                    kind(p)
                ),
            })
            .collect::<Result<_>>()?,
        Some(Value::String(s)) if !s.is_empty() => vec![ParamPath::parse(s)],
        Some(other) => {
            bail!("{at}.parents: expected a non-empty list of parameter names, found {other}")
        }
        None => bail!("{at}.parents: missing, expected a non-empty list of parameter names"),
    };
    let support = match v.get("support") {
        Some(Value::Object(map)) if !map.is_empty() => map,
        Some(Value::Object(_)) => bail!("{at}.support: empty, expected at least one parent value"),
        Some(other) => bail!(
            "{at}.support: expected an object keyed by parent values, found {}",
            kind(other)
        ),
        None => bail!("{at}.support: missing, expected an object keyed by parent values"),
    };
    let mut branches = Vec::new();
    collect_branches(
        support,
        &parents,
        &mut Vec::new(),
        &format!("{at}.support"),
        &mut branches,
    )?;
    let default = match v.get("default") {
        None | Some(Value::Null) => vec![Value::String(INVALID.into())],
        Some(d) => parse_values(d, &format!("{at}.default"))?,
    };
    Ok(SearchParam::Conditional(Conditional {
        parents,
        branches,
        default,
    }))
}

/// Walks the support object: one level per parent (Olive's `unflatten_dict` of tuple keys), search parameters at
/// the leaves.
fn collect_branches(
    map: &Map<String, Value>,
    parents: &[ParamPath],
    keys: &mut Vec<String>,
    at: &str,
    out: &mut Vec<(Vec<String>, Vec<Value>)>,
) -> Result<()> {
    let depth = keys.len();
    for (key, v) in map {
        let here = format!("{at}.{key}");
        keys.push(key.clone());
        if depth + 1 == parents.len() {
            let values = parse_values(v, &here)?;
            check_values(&values, &format!("{here}.support"))?;
            out.push((keys.clone(), values));
        } else {
            match v {
                Value::Object(inner) if !is_search_param(v) => {
                    collect_branches(inner, parents, keys, &here, out)?
                }
                _ => bail!(
                    "{here}: expected an object keyed by the value of parent `{}` ({} parents), found {}",
                    parents[depth + 1],
                    parents.len(),
                    if is_search_param(v) { "a search parameter" } else { kind(v) }
                ),
            }
        }
        keys.pop();
    }
    Ok(())
}

/// A pass config split into its fixed part and its search parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PassSpace {
    /// The pass name (the key under `passes`).
    pub pass: String,
    /// The config without its search parameters; single-choice ones are written in as fixed values.
    pub fixed: Value,
    /// Search parameters, parents before children (Olive's topological order).
    pub params: Vec<(ParamPath, SearchParam)>,
}

/// Splits a pass config (`at` is its key path, e.g. `passes.quant.config`) into fixed values and search
/// parameters, at any depth of nested objects. Conditionals whose parents are fixed are resolved, and a parameter
/// left with one value becomes fixed, as Olive does.
pub fn split_pass_config(pass: &str, config: &Value, at: &str) -> Result<PassSpace> {
    if !config.is_object() {
        bail!(
            "{at}: expected an object of pass parameters, found {}",
            kind(config)
        );
    }
    let mut fixed = config.clone();
    let mut found = Vec::new();
    take_params(&mut fixed, &mut Vec::new(), at, &mut found)?;
    let order = topological_order(&found, at)?;
    let mut params: Vec<(ParamPath, SearchParam)> = Vec::new();
    // Values of the parameters that became fixed, IGNORED included (it is absent from `fixed`).
    let mut pinned: Vec<(ParamPath, Value)> = Vec::new();
    for i in order {
        let (path, mut param) = found[i].clone();
        while let SearchParam::Conditional(c) = &param {
            let fixed_parent = c.parents.iter().enumerate().find_map(|(j, parent)| {
                let value = pinned
                    .iter()
                    .find(|(p, _)| p == parent)
                    .map(|(_, v)| v.clone());
                value
                    .or_else(|| get_at(&fixed, &parent.0).cloned())
                    .map(|v| (j, v))
            });
            match fixed_parent {
                Some((j, value)) => param = c.condition(j, &value),
                None => break,
            }
        }
        match param {
            SearchParam::Categorical(values) if values.len() == 1 => {
                let value = values.into_iter().next().unwrap_or(Value::Null);
                if value == INVALID {
                    bail!("{at}.{path}: the only value left is {INVALID} (its parents' fixed values allow none)");
                }
                if value != IGNORED {
                    set_at(&mut fixed, &path.0, value.clone());
                }
                pinned.push((path, value));
            }
            param => {
                if let SearchParam::Conditional(c) = &param {
                    if let Some(p) = c
                        .parents
                        .iter()
                        .find(|p| !params.iter().any(|(q, _)| q == *p))
                    {
                        bail!("{at}.{path}.parents: `{p}` is neither a search parameter nor a value of this pass config");
                    }
                }
                params.push((path, param))
            }
        }
    }
    Ok(PassSpace {
        pass: pass.to_string(),
        fixed,
        params,
    })
}

/// Removes the search parameter objects from `v`, collecting them with their paths.
fn take_params(
    v: &mut Value,
    path: &mut Vec<String>,
    at: &str,
    out: &mut Vec<(ParamPath, SearchParam)>,
) -> Result<()> {
    match v {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                path.push(key.clone());
                let here = format!("{at}.{}", path.join("."));
                let child = map.get_mut(&key);
                if let Some(child) = child {
                    if is_search_param(child) {
                        out.push((ParamPath(path.clone()), parse_param(child, &here)?));
                        map.remove(&key);
                    } else {
                        take_params(child, path, at, out)?;
                    }
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            if let Some(i) = items.iter().position(contains_search_param) {
                bail!(
                    "{at}.{}[{i}]: a search parameter inside a list is not supported",
                    path.join(".")
                );
            }
        }
        _ => {}
    }
    Ok(())
}

fn contains_search_param(v: &Value) -> bool {
    is_search_param(v)
        || match v {
            Value::Object(map) => map.values().any(contains_search_param),
            Value::Array(items) => items.iter().any(contains_search_param),
            _ => false,
        }
}

/// Olive's order (olive/search/utils.py `topological_sort`): parents first, config order otherwise.
fn topological_order(params: &[(ParamPath, SearchParam)], at: &str) -> Result<Vec<usize>> {
    let children = |i: usize| -> Vec<usize> {
        params
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| matches!(p, SearchParam::Conditional(c) if c.parents.contains(&params[i].0)))
            .map(|(j, _)| j)
            .collect()
    };
    // 0 unvisited, 1 on the stack, 2 done.
    fn visit(
        i: usize,
        state: &mut [u8],
        order: &mut Vec<usize>,
        children: &dyn Fn(usize) -> Vec<usize>,
    ) -> Option<usize> {
        state[i] = 1;
        for c in children(i) {
            match state[c] {
                0 => {
                    if let Some(cycle) = visit(c, state, order, children) {
                        return Some(cycle);
                    }
                }
                1 => return Some(c),
                _ => {}
            }
        }
        state[i] = 2;
        order.insert(0, i);
        None
    }
    let mut state = vec![0u8; params.len()];
    let mut order = Vec::with_capacity(params.len());
    for i in (0..params.len()).rev() {
        if state[i] == 0 {
            if let Some(c) = visit(i, &mut state, &mut order, &children) {
                bail!(
                    "{at}.{}.parents: the search parameters' parents form a cycle",
                    params[c].0
                );
            }
        }
    }
    Ok(order)
}

/// The value at `path` in `v`, when every step is an object key.
pub fn get_at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.as_object()?.get(key))
}

/// Sets `path` in `v` to `value`, creating objects on the way (a non-object on the way is replaced).
pub fn set_at(v: &mut Value, path: &[String], value: Value) {
    let Some((last, steps)) = path.split_last() else {
        *v = value;
        return;
    };
    let mut node = v;
    for key in steps {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = match node {
            Value::Object(map) => map
                .entry(key.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            _ => return,
        };
    }
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    if let Value::Object(map) = node {
        map.insert(last.clone(), value);
    }
}

/// Writes a sampled point into a pass's fixed config: each value at its path, IGNORED ones left out.
pub fn apply_point(fixed: &Value, values: &[(ParamPath, Value)]) -> Value {
    let mut config = fixed.clone();
    for (path, value) in values {
        if value != IGNORED {
            set_at(&mut config, &path.0, value.clone());
        }
    }
    config
}
