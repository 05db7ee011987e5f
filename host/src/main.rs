//! olive-host: the Olive-compatible command line of olive-rs.

mod cache;
mod cli;
mod device;
mod engine;
mod ep;
mod evaluate;
mod files;
mod logging;
mod package;
mod plugins;
mod progress;
mod search;
mod workflow;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    logging::init(args.log_level);
    match cli::run(args.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
