//! olive-host end to end: plugin discovery, `run-pass` in a worker, and deliberately broken plugins.

mod broken;
mod model_input;
mod plugins;
mod run_pass;
mod support;
