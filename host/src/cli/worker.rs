//! `olive-host worker` (hidden): the worker process that runs one pass for the host; it speaks the
//! protocol of `engine::protocol` on stdin/stdout.

use clap::Args;

#[derive(Args, Debug)]
pub struct WorkerArgs {}

pub fn run(_args: WorkerArgs) -> anyhow::Result<()> {
    crate::engine::child::serve()
}
