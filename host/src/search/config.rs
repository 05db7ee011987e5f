//! The search strategy's settings as Olive's workflow `search_strategy` writes them
//! (olive/search/search_strategy.py `SearchStrategyConfig`, sampler fields nested under `sampler_config` or flat).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use super::sampler::SamplerKind;

/// Olive's `search_strategy.execution_order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionOrder {
    /// One space over all passes.
    Joint,
    /// One pass's space at a time.
    PassByPass,
}

impl FromStr for ExecutionOrder {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "joint" => Ok(Self::Joint),
            "pass-by-pass" => Ok(Self::PassByPass),
            _ => bail!("unknown execution_order `{s}`, expected joint or pass-by-pass"),
        }
    }
}

impl FromStr for SamplerKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sequential" => Ok(Self::Sequential),
            "random" => Ok(Self::Random),
            "tpe" => Ok(Self::Tpe),
            _ => bail!("unknown sampler `{s}`, expected sequential, random or tpe"),
        }
    }
}

/// How to search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchConfig {
    /// Joint or pass-by-pass.
    pub execution_order: ExecutionOrder,
    /// The sampler.
    pub sampler: SamplerKind,
    /// Most trials per space (per pass in pass-by-pass); 0 means all, as in Olive.
    pub max_samples: usize,
    /// Seed of the random and TPE samplers (Olive's default is 1).
    pub seed: u64,
    /// Joint only: stop after a trial that meets every goal (with no goals, the first trial does, as in Olive).
    pub stop_when_goals_met: bool,
    /// Joint only: most trials in all.
    pub max_iter: Option<usize>,
    /// Joint only: no new trial after this long since the first.
    pub max_time: Option<Duration>,
}

impl SearchConfig {
    /// A search with Olive's defaults: every point, seed 1, no stop criteria.
    pub fn new(execution_order: ExecutionOrder, sampler: SamplerKind) -> Self {
        Self {
            execution_order,
            sampler,
            max_samples: 0,
            seed: 1,
            stop_when_goals_met: false,
            max_iter: None,
            max_time: None,
        }
    }

    /// Parses Olive's `search_strategy` mapping; `at` is its key path (e.g. `engine.search_strategy`).
    /// `max_samples` and `seed` may sit in `sampler_config` or beside `sampler`; TPE's `multivariate` and
    /// `group` (optuna options) are accepted and have no effect here.
    pub fn from_json(v: &Value, at: &str) -> Result<Self> {
        let Value::Object(map) = v else {
            bail!("{at}: expected an object with execution_order and sampler, found {v}");
        };
        let string = |key: &str| -> Result<&str> {
            match map.get(key) {
                Some(Value::String(s)) => Ok(s),
                Some(other) => bail!("{at}.{key}: expected a string, found {other}"),
                None => bail!("{at}.{key}: missing"),
            }
        };
        let execution_order = string("execution_order")?
            .parse()
            .map_err(|e| anyhow::anyhow!("{at}.execution_order: {e}"))?;
        let sampler = string("sampler")?
            .parse()
            .map_err(|e| anyhow::anyhow!("{at}.sampler: {e}"))?;
        let mut config = Self::new(execution_order, sampler);
        let empty = Map::new();
        let nested = match map.get("sampler_config") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(other) => bail!("{at}.sampler_config: expected an object, found {other}"),
        };
        for (key, value) in map {
            let path = format!("{at}.{key}");
            match key.as_str() {
                "execution_order" | "sampler" | "sampler_config" => {}
                "max_samples" | "seed" => sampler_field(&mut config, key, value, &path)?,
                "stop_when_goals_met" => config.stop_when_goals_met = boolean(value, &path)?,
                "max_iter" => config.max_iter = optional_count(value, &path)?,
                "max_time" => config.max_time = optional_count(value, &path)?.map(|s| Duration::from_secs(s as u64)),
                "include_pass_params" if value == &Value::Bool(true) => {}
                "include_pass_params" => {
                    bail!("{path}: only true is supported (searching without pass parameters has nothing to search)")
                }
                _ => bail!(
                    "{path}: unknown key, expected execution_order, sampler, sampler_config, max_samples, seed, \
                     stop_when_goals_met, max_iter, max_time or include_pass_params"
                ),
            }
        }
        for (key, value) in nested {
            let path = format!("{at}.sampler_config.{key}");
            match key.as_str() {
                "max_samples" | "seed" => sampler_field(&mut config, key, value, &path)?,
                "multivariate" | "group" if sampler == SamplerKind::Tpe => {
                    boolean(value, &path)?;
                }
                _ => bail!(
                    "{path}: unknown key for the {} sampler, expected max_samples or seed",
                    string("sampler")?
                ),
            }
        }
        Ok(config)
    }
}

fn sampler_field(config: &mut SearchConfig, key: &str, value: &Value, path: &str) -> Result<()> {
    let n = value
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("{path}: expected a non-negative integer, found {value}"))?;
    match key {
        "seed" => config.seed = n,
        _ => config.max_samples = usize::try_from(n)?,
    }
    Ok(())
}

fn boolean(value: &Value, path: &str) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| anyhow::anyhow!("{path}: expected true or false, found {value}"))
}

fn optional_count(value: &Value, path: &str) -> Result<Option<usize>> {
    match value {
        Value::Null => Ok(None),
        _ => match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => bail!("{path}: expected a non-negative integer or null, found {value}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_olives_search_strategy() {
        let c = SearchConfig::from_json(
            &json!({"execution_order": "joint", "sampler": "tpe",
                    "sampler_config": {"max_samples": 12, "seed": 0, "multivariate": true}, "max_iter": 30}),
            "search_strategy",
        )
        .unwrap();
        let mut expected = SearchConfig::new(ExecutionOrder::Joint, SamplerKind::Tpe);
        (expected.max_samples, expected.seed, expected.max_iter) = (12, 0, Some(30));
        assert_eq!(c, expected);
        let flat = json!({"execution_order": "Pass-By-Pass", "sampler": "random", "max_samples": 3, "seed": 7});
        let c = SearchConfig::from_json(&flat, "search_strategy").unwrap();
        assert_eq!(
            (c.execution_order, c.sampler, c.max_samples, c.seed),
            (ExecutionOrder::PassByPass, SamplerKind::Random, 3, 7)
        );
    }

    #[test]
    fn bad_search_strategies_name_the_key() {
        let cases = [
            (json!({"sampler": "tpe"}), "search_strategy.execution_order: missing"),
            (json!({"execution_order": "joint", "sampler": "grid"}), "search_strategy.sampler: unknown sampler `grid`, expected sequential, random or tpe"),
            (json!({"execution_order": "both", "sampler": "tpe"}), "search_strategy.execution_order: unknown execution_order `both`"),
            (json!({"execution_order": "joint", "sampler": "tpe", "max_samples": -1}), "search_strategy.max_samples: expected a non-negative integer, found -1"),
            (json!({"execution_order": "joint", "sampler": "random", "sampler_config": {"multivariate": true}}), "search_strategy.sampler_config.multivariate: unknown key for the random sampler"),
            (json!({"execution_order": "joint", "sampler": "tpe", "search_algorithm": "tpe"}), "search_strategy.search_algorithm: unknown key"),
            (json!(3), "search_strategy: expected an object"),
        ];
        for (v, expected) in cases {
            let err = SearchConfig::from_json(&v, "search_strategy")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{v}\n  got: {err}\n  expected: {expected}"
            );
        }
    }
}
