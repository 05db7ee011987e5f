//! Olive-style workflows (`olive-host run --config`): the workflow file, its checks, and the engine that runs its
//! passes through the cache, evaluates the models and searches the pass parameters.

pub mod config;
pub mod data_config;
pub mod document;
pub mod evaluator;
pub mod footprint;
pub mod output;
pub mod resolve;
pub mod run;
pub mod schema;
