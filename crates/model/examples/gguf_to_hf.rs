//! Converts a GGUF file to a Hugging Face folder: `cargo run -p olive-model --example gguf_to_hf -- IN.gguf OUT_DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [gguf, out] = args.as_slice() else {
        eprintln!("usage: gguf_to_hf IN.gguf OUT_DIR");
        return ExitCode::from(2);
    };
    match olive_model::convert::gguf_to_hf(gguf, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
