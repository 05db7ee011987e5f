//! Tests of search-parameter parsing: good and bad spaces (errors name the key path), Olive's own JSON.

use serde_json::{json, Value};

use super::tests::{cat, config, run, split, split_err};
use super::*;

#[test]
fn parses_nested_params_booleans_and_conditionals() {
    let space = split(
        "quant",
        json!({
            "bits": 4,
            "algorithm": cat(json!(["rtn", "awq"])),
            "options": {"sym": {"olive_parameter_type": "SearchParameter", "type": "Boolean"}, "damp": 0.01},
            "group_size": {"olive_parameter_type": "SearchParameter", "type": "Conditional",
                           "parents": ["algorithm", "options.sym"],
                           "support": {"awq": {"true": cat(json!([64, 128]))}},
                           "default": cat(json!([32]))},
            "block": cat(json!([16])),
        }),
    );
    assert_eq!(
        space.fixed,
        json!({"bits": 4, "options": {"damp": 0.01}, "block": 16})
    );
    let paths: Vec<String> = space.params.iter().map(|(p, _)| p.to_string()).collect();
    // Parents before children (Olive's topological order); serde_json's map orders the keys alphabetically.
    assert_eq!(paths, ["algorithm", "options.sym", "group_size"]);
    let cond = space
        .params
        .iter()
        .find(|(p, _)| p.to_string() == "group_size")
        .unwrap();
    let SearchParam::Conditional(c) = &cond.1 else {
        panic!("expected a Conditional")
    };
    assert_eq!(
        c.choices(&[&json!("awq"), &json!(true)]),
        [json!(64), json!(128)]
    );
    assert_eq!(c.choices(&[&json!("rtn"), &json!(true)]), [json!(32)]);
}

#[test]
fn fixed_parents_resolve_conditionals_as_olive_does() {
    let space = split(
        "quant",
        json!({
            "algorithm": "awq",
            "group_size": {"olive_parameter_type": "SearchParameter", "type": "Conditional",
                           "parents": ["algorithm"],
                           "support": {"awq": cat(json!([64])), "rtn": cat(json!([32, 64]))}},
            "sym": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["algorithm"],
                    "support": {"rtn": cat(json!([true]))}, "default": cat(json!([IGNORED]))},
        }),
    );
    assert_eq!(space.fixed, json!({"algorithm": "awq", "group_size": 64}));
    assert!(space.params.is_empty());
    let err = split_err(json!({
        "algorithm": "gptq",
        "group_size": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["algorithm"],
                       "support": {"awq": cat(json!([64]))}},
    }));
    assert!(
        err.contains(
            "passes.quant.config.group_size: the only value left is OLIVE_INVALID_PARAM_VALUE"
        ),
        "{err}"
    );
}

#[test]
fn bad_spaces_name_the_key_path() {
    let cases = [
        (json!({"group_size": cat(json!([]))}), "passes.quant.config.group_size.support: empty, expected at least one value"),
        (json!({"g": {"olive_parameter_type": "SearchParameter", "type": "Categorical"}}), "passes.quant.config.g.support: missing"),
        (json!({"g": cat(json!(64))}), "passes.quant.config.g.support: expected a list of values, found a number"),
        (json!({"g": cat(json!([32, 32]))}), "passes.quant.config.g.support[1]: 32 appears twice"),
        (json!({"o": {"g": {"olive_parameter_type": "SearchParameter", "type": "Range"}}}),
         "passes.quant.config.o.g.type: unknown search parameter type `Range`, expected one of Categorical"),
        (json!({"g": {"olive_parameter_type": "SearchParameter"}}), "passes.quant.config.g.type: missing"),
        (json!({"a": cat(json!(["x", "y"])),
                "g": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["a"],
                      "support": {"x": [1, 2]}}}),
         "passes.quant.config.g.support.x: expected a search parameter (Categorical or Boolean), found a list"),
        (json!({"a": cat(json!(["x", "y"])),
                "g": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["a", "b"],
                      "support": {"x": cat(json!([1]))}}}),
         "passes.quant.config.g.support.x: expected an object keyed by the value of parent `b`"),
        (json!({"g": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["nope"],
                      "support": {"x": cat(json!([1, 2]))}}}),
         "passes.quant.config.g.parents: `nope` is neither a search parameter nor a value"),
        (json!({"g": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": [],
                      "support": {}}}),
         "passes.quant.config.g.parents: expected a non-empty list of parameter names"),
        (json!({"a": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["b"],
                      "support": {"1": cat(json!([1, 2]))}},
                "b": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["a"],
                      "support": {"1": cat(json!([1, 2]))}}}),
         "parents: the search parameters' parents form a cycle"),
        (json!({"l": [cat(json!([1, 2]))]}), "passes.quant.config.l[0]: a search parameter inside a list"),
        (json!([1]), "passes.quant.config: expected an object of pass parameters, found a list"),
    ];
    for (config, expected) in cases {
        let err = split_err(config.clone());
        assert!(
            err.contains(expected),
            "{config}\n  got: {err}\n  expected: {expected}"
        );
    }
}

/// Search parameters exactly as Olive 0.13's `to_json` writes them (json.dumps of Conditional, Boolean and
/// ConditionalDefault): tuple keys nested per parent, `true`/`4` as string keys, INVALID and IGNORED choices.
#[test]
fn olives_own_json_enumerates_as_olive_resolves_it() {
    let conditional = r#"{"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["algorithm", "sym"], "support": {"awq": {"true": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [64, 128]}}, "rtn": {"false": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": ["OLIVE_INVALID_PARAM_VALUE"]}}}, "default": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": ["OLIVE_IGNORED_PARAM_VALUE"]}}"#;
    let boolean = r#"{"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [true, false]}"#;
    let conditional_default = r#"{"olive_parameter_type": "SearchParameter", "type": "ConditionalDefault", "parents": ["bits"], "support": {"4": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [128]}, "8": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [64]}}, "default": {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [32]}}"#;
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    let pass = split(
        "quant",
        json!({"bits": 4, "algorithm": cat(json!(["awq", "rtn"])), "sym": parse(boolean),
               "group_size": parse(conditional), "block_size": parse(conditional_default)}),
    );
    assert_eq!(pass.fixed, json!({"bits": 4, "block_size": 128}));
    let cfg = config(ExecutionOrder::Joint, SamplerKind::Sequential, 0, 1);
    let mut search = Search::new(SearchSpace::new(vec![pass]).unwrap(), vec![], cfg).unwrap();
    let configs: Vec<Value> = run(&mut search, |_| Outcome::Failed)
        .into_iter()
        .map(|t| t.configs[0].1.clone())
        .collect();
    let with = |alg: &str, sym: bool, group: Option<u32>| {
        let mut c = json!({"bits": 4, "block_size": 128, "algorithm": alg, "sym": sym});
        if let Some(g) = group {
            c["group_size"] = json!(g);
        }
        c
    };
    // Olive's SearchSpace yields indices 0, 1, 2, 4 with these values (checked with olive-ai 0.13); its 3 is
    // INVALID, and 5-7 are padding (duplicates of 1 and 2, and (rtn, false) padded with the default), skipped here.
    assert_eq!(
        configs,
        [
            with("awq", true, Some(64)),
            with("rtn", true, None),
            with("awq", false, None),
            with("awq", true, Some(128)),
        ]
    );
}
