//! Logging through `tracing`, levelled by Olive's `--log_level` (0 debug, 1 info, 2 warning, 3 error, 4 critical).

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;

/// Maps Olive's numeric log level onto a tracing filter; critical is shown as error.
pub fn level_filter(log_level: u8) -> LevelFilter {
    match log_level {
        0 => LevelFilter::DEBUG,
        1 => LevelFilter::INFO,
        2 => LevelFilter::WARN,
        _ => LevelFilter::ERROR,
    }
}

pub fn init(log_level: u8) {
    tracing_subscriber::fmt()
        .with_max_level(level_filter(log_level))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The active `--log_level`, read back from the tracing filter (for workers and saved workflows).
pub fn current_level() -> u8 {
    match LevelFilter::current() {
        LevelFilter::TRACE | LevelFilter::DEBUG => 0,
        LevelFilter::INFO => 1,
        LevelFilter::WARN => 2,
        _ => 3,
    }
}
