//! Where an ONNX input model's graph is: a `.onnx` path, or a folder holding `model.onnx` or one `.onnx` file.

use std::path::{Path, PathBuf};

use crate::Error;

/// The `.onnx` file of an input model: the path itself, or the folder's `model.onnx`, or its one `.onnx` file.
pub fn onnx_model_file(path: &Path) -> Result<PathBuf, Error> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.join("model.onnx").is_file() {
        return Ok(path.join("model.onnx"));
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let onnx: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    match onnx.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Error::UnsupportedModel(format!(
            "{}: no .onnx file in the folder",
            path.display()
        ))),
        many => Err(Error::UnsupportedModel(format!(
            "{}: several .onnx files ({}); give the model file",
            path.display(),
            many.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_with_two_models_and_no_model_onnx_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"").unwrap();
        assert_eq!(
            onnx_model_file(dir.path()).unwrap(),
            dir.path().join("a.onnx")
        );
        std::fs::write(dir.path().join("b.onnx"), b"").unwrap();
        let err = onnx_model_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("several .onnx files (2)"), "{err}");
        std::fs::write(dir.path().join("model.onnx"), b"").unwrap();
        assert_eq!(
            onnx_model_file(dir.path()).unwrap(),
            dir.path().join("model.onnx")
        );
    }
}
