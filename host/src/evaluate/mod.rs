//! Metrics of a model: perplexity over a text (more metrics join with the workflow engine).

pub mod perplexity;
