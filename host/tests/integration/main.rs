//! olive-host end to end: plugin discovery, `run-pass` in a worker, deliberately broken plugins, and finetune's
//! group of workers (`--num_gpus`).

mod broken;
mod launcher;
mod model_input;
mod plugins;
mod run_pass;
mod support;
