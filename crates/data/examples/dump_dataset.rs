//! Prints a dataset as olive-data prepares it, as JSON on stdout, for tests/python/test_data.py to compare
//! with transformers: `dump_dataset <model_dir> '<DataConfig as JSON>'` →
//! `{"texts": [...], "ids": [[...]], "train": [{"input_ids", "attention_mask", "labels"}], "eval": [...]}`.

use std::path::Path;
use std::process::ExitCode;

use olive_data::{prepare, DataConfig, ModelTokenizer};

fn run(model_dir: &str, config: &str) -> Result<String, Box<dyn std::error::Error>> {
    let cfg: DataConfig = serde_json::from_str(config)?;
    let tok = ModelTokenizer::load(Path::new(model_dir))?;
    let texts = cfg.texts(&tok.config)?;
    let ids = tok.encode_all(&texts)?;
    let prepared = prepare(&cfg, &tok)?;
    let out = serde_json::json!({"texts": texts, "ids": ids, "train": prepared.train, "eval": prepared.eval});
    Ok(out.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, model_dir, config] = args.as_slice() else {
        eprintln!("usage: dump_dataset <model_dir> '<DataConfig JSON>'");
        return ExitCode::from(2);
    };
    match run(model_dir, config) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dump_dataset: {e}");
            ExitCode::FAILURE
        }
    }
}
