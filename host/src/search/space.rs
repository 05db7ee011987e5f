//! The search space over the passes of a workflow (olive/search/search_space.py): a point's index is a mixed-radix
//! number over the search parameters of the passes in order, the first parameter varying fastest.

use std::ops::Range;

use anyhow::{bail, Result};
use serde_json::Value;

use super::param::{apply_point, ParamPath, PassSpace, SearchParam, INVALID};

/// Most index points a space may have (samplers keep a list of them, as Olive's random sampler does).
pub const MAX_POINTS: usize = 1 << 22;

/// The passes of a workflow, in run order, each split into fixed values and search parameters.
#[derive(Clone, Debug)]
pub struct SearchSpace {
    passes: Vec<PassSpace>,
}

/// The values chosen for one pass's search parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PassPoint {
    /// The pass name.
    pub pass: String,
    /// Each search parameter's path and value (IGNORED included, as chosen).
    pub values: Vec<(ParamPath, Value)>,
}

impl SearchSpace {
    /// A space over `passes` (run order); pass names must be unique.
    pub fn new(passes: Vec<PassSpace>) -> Result<Self> {
        for (i, p) in passes.iter().enumerate() {
            if passes[..i].iter().any(|q| q.pass == p.pass) {
                bail!(
                    "passes.{}: the pass name appears twice, expected unique pass names",
                    p.pass
                );
            }
        }
        Ok(Self { passes })
    }

    /// The passes, in run order.
    pub fn passes(&self) -> &[PassSpace] {
        &self.passes
    }

    /// The resolved config of a pass at a point (its fixed values with the chosen ones written in).
    pub fn pass_config(&self, point: &PassPoint) -> Option<Value> {
        let pass = self.passes.iter().find(|p| p.pass == point.pass)?;
        Some(apply_point(&pass.fixed, &point.values))
    }

    /// The flattened parameters of the passes in `range`.
    pub(crate) fn subspace(&self, range: Range<usize>) -> Result<Subspace> {
        let mut params: Vec<FlatParam> = Vec::new();
        let mut size: usize = 1;
        for pass in range.clone() {
            let first = params.len();
            for (path, param) in &self.passes[pass].params {
                let parents = match param {
                    SearchParam::Categorical(_) => Vec::new(),
                    SearchParam::Conditional(c) => c
                        .parents
                        .iter()
                        .filter_map(|p| {
                            params[first..]
                                .iter()
                                .position(|f| &f.path == p)
                                .map(|i| first + i)
                        })
                        .collect(),
                };
                size = size.saturating_mul(param.radix());
                params.push(FlatParam {
                    pass,
                    path: path.clone(),
                    param: param.clone(),
                    parents,
                });
            }
        }
        if size > MAX_POINTS {
            let names: Vec<&str> = self.passes[range].iter().map(|p| p.pass.as_str()).collect();
            bail!(
                "search space of passes {}: {size} points, expected at most {MAX_POINTS}; fix more parameters",
                names.join(", ")
            );
        }
        Ok(Subspace { params, size })
    }
}

#[derive(Clone, Debug)]
struct FlatParam {
    pass: usize,
    path: ParamPath,
    param: SearchParam,
    /// Positions of the parents in the flat list (they come earlier).
    parents: Vec<usize>,
}

/// The search parameters of some passes, flattened in order.
#[derive(Clone, Debug)]
pub(crate) struct Subspace {
    params: Vec<FlatParam>,
    size: usize,
}

impl Subspace {
    /// Number of index points (valid or not).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Each parameter's number of index slots.
    pub fn radices(&self) -> Vec<usize> {
        self.params.iter().map(|p| p.param.radix()).collect()
    }

    /// The index's digits, first parameter least significant (Olive's `get_sample_point_values`).
    pub fn digits(&self, mut index: usize) -> Vec<usize> {
        self.params
            .iter()
            .map(|p| {
                let r = p.param.radix();
                let d = index % r;
                index /= r;
                d
            })
            .collect()
    }

    /// The index of these digits.
    pub fn index(&self, digits: &[usize]) -> usize {
        self.params
            .iter()
            .zip(digits)
            .rev()
            .fold(0, |acc, (p, &d)| acc * p.param.radix() + d)
    }

    /// The values at `index`, or None when one is INVALID or falls in a Conditional's padding (Olive pads a short
    /// support to the longest one; those points are skipped as duplicates or invalid).
    pub fn decode(&self, index: usize) -> Option<Vec<Value>> {
        let mut values: Vec<Value> = Vec::with_capacity(self.params.len());
        for (p, d) in self.params.iter().zip(self.digits(index)) {
            let choices = match &p.param {
                SearchParam::Categorical(v) => v.as_slice(),
                SearchParam::Conditional(c) => {
                    let parents: Vec<&Value> = p.parents.iter().map(|&i| &values[i]).collect();
                    c.choices(&parents)
                }
            };
            let value = choices.get(d)?;
            if value == INVALID {
                return None;
            }
            values.push(value.clone());
        }
        Some(values)
    }

    /// Groups decoded values by pass; every pass of `passes` gets an entry, in order.
    pub fn point(
        &self,
        passes: &[PassSpace],
        range: Range<usize>,
        values: &[Value],
    ) -> Vec<PassPoint> {
        range
            .map(|pass| PassPoint {
                pass: passes[pass].pass.clone(),
                values: self
                    .params
                    .iter()
                    .zip(values)
                    .filter(|(p, _)| p.pass == pass)
                    .map(|(p, v)| (p.path.clone(), v.clone()))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::param::split_pass_config;
    use super::*;
    use serde_json::json;

    fn quant_space() -> SearchSpace {
        let quant = json!({
            "bits": 4,
            "algorithm": {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                          "support": ["rtn", "awq", "gptq"]},
            "group_size": {"olive_parameter_type": "SearchParameter", "type": "Conditional",
                           "parents": ["algorithm"],
                           "support": {"rtn": {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                               "support": [32, 64, 128]},
                                       "awq": {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                               "support": [64, 128]}}},
            "sym": {"olive_parameter_type": "SearchParameter", "type": "Boolean"}
        });
        let build = json!({"precision": {"olive_parameter_type": "SearchParameter", "type": "Categorical",
                                         "support": ["int4", "fp32"]}});
        SearchSpace::new(vec![
            split_pass_config("quant", &quant, "passes.quant").unwrap(),
            split_pass_config("build", &build, "passes.build").unwrap(),
        ])
        .unwrap()
    }

    /// Every valid index decodes to a distinct point, and the valid points are exactly the conditional product:
    /// (rtn 3 + awq 2; gptq has no branch, so the default INVALID drops it) x sym 2 x precision 2.
    #[test]
    fn exhaustive_enumerates_exactly_the_product() {
        let space = quant_space();
        let sub = space.subspace(0..2).unwrap();
        assert_eq!(sub.size(), 3 * 3 * 2 * 2);
        let points: Vec<Vec<Value>> = (0..sub.size()).filter_map(|i| sub.decode(i)).collect();
        assert_eq!(points.len(), 5 * 2 * 2);
        let mut expected = Vec::new();
        for precision in ["int4", "fp32"] {
            for sym in [true, false] {
                for (alg, group) in [
                    ("rtn", 32),
                    ("awq", 64),
                    ("rtn", 64),
                    ("awq", 128),
                    ("rtn", 128),
                ] {
                    expected.push(vec![json!(alg), json!(group), json!(sym), json!(precision)]);
                }
            }
        }
        // Index order: algorithm fastest, then group_size, sym, precision (Olive's order).
        assert_eq!(points, expected);
        for i in 0..sub.size() {
            assert_eq!(sub.index(&sub.digits(i)), i);
        }
    }

    #[test]
    fn a_point_writes_back_into_the_config() {
        let space = quant_space();
        let sub = space.subspace(0..1).unwrap();
        let values = sub.decode(1).unwrap();
        let point = sub.point(space.passes(), 0..1, &values);
        let config = space.pass_config(&point[0]).unwrap();
        assert_eq!(
            config,
            json!({"bits": 4, "algorithm": "awq", "group_size": 64, "sym": true})
        );
    }

    #[test]
    fn too_large_a_space_is_refused() {
        let support: Vec<usize> = (0..2048).collect();
        let more: Vec<usize> = (0..2049).collect();
        let config = json!({
            "a": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": support},
            "b": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": more},
        });
        let space =
            SearchSpace::new(vec![split_pass_config("p", &config, "passes.p").unwrap()]).unwrap();
        let err = space.subspace(0..1).unwrap_err().to_string();
        assert!(
            err.contains("search space of passes p: 4196352 points"),
            "{err}"
        );
    }
}
