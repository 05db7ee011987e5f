//! tokenizer.json of a Hugging Face folder, through the `tokenizers` crate.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// Loads `dir/tokenizer.json`.
pub fn load(dir: &Path) -> Result<Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(ModelError::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        ));
    }
    Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
        path,
        reason: e.to_string(),
    })
}
