//! Search over pass parameters, after Olive 0.13's olive/search: search parameters in pass configs, the search
//! space, the sequential / random / TPE samplers, the joint and pass-by-pass strategies, and the Pareto front of
//! the results as a table, JSON and a plot. `olive-host run` drives it: split each pass config, build a
//! [`Search`], then loop `next()` → run the trial's passes and evaluate → `record()`; finally [`Report`].

mod config;
mod objective;
mod param;
mod report;
mod sampler;
mod space;
mod strategy;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_parse;

pub use config::{ExecutionOrder, SearchConfig};
pub use objective::{objectives_from_metrics, MetricSubType};
pub use param::{
    apply_point, split_pass_config, Conditional, ParamPath, PassSpace, SearchParam, IGNORED,
    INVALID,
};
pub(crate) use report::register_font;
pub use report::Report;
pub use sampler::SamplerKind;
pub use space::SearchSpace;
pub use strategy::{Outcome, Search};
