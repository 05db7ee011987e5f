//! Test fixture: a well-behaved plugin whose `CopyModel` pass copies the input model to the output
//! folder, reporting progress per file.

use std::fs;
use std::path::{Path, PathBuf};

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

/// The config of `CopyModel`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    /// File names (anywhere in the folder) to leave out of the copy.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Copies the input model folder (or file) into the output folder.
pub struct CopyModel;

impl Pass for CopyModel {
    const NAME: &'static str = "CopyModel";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Copies the input model to the output folder.";
    const ACCEPTS: &'static [&'static str] = &[kinds::HF, kinds::ONNX];
    const PRODUCES: &'static [&'static str] = &[kinds::HF, kinds::ONNX];
    const DEVICES: &'static [&'static str] = &["cpu"];
    type Config = CopyConfig;

    fn run(model: Model, config: CopyConfig, ctx: &Context<'_>) -> Result<Model, Error> {
        let out = ctx.output_dir();
        let files = list_files(&model.path, &config.exclude)?;
        let total = files.len() as u64;
        for (done, (from, relative)) in files.iter().enumerate() {
            ctx.check_cancelled()?;
            let to = out.join(relative);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            fs::copy(from, &to).map_err(|e| Error::io(from, e))?;
            ctx.progress(done as u64 + 1, total, &relative.display().to_string());
        }
        ctx.info(&format!("copied {total} files"));
        let path = if model.path.is_dir() {
            out
        } else {
            out.join(files.first().map(|f| f.1.clone()).unwrap_or_default())
        };
        let mut output = Model::new(model.kind, path);
        output.metadata.insert("copied_files".into(), total.into());
        Ok(output)
    }
}

/// The files under `root` (or `root` itself if it is a file) with their paths relative to it.
fn list_files(root: &Path, exclude: &[String]) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    if root.is_file() {
        let name = root.file_name().map(PathBuf::from).unwrap_or_default();
        return Ok(vec![(root.to_path_buf(), name)]);
    }
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))? {
            let path = entry.map_err(|e| Error::io(&folder, e))?.path();
            let excluded = path
                .file_name()
                .is_some_and(|name| exclude.iter().any(|x| name == x.as_str()));
            if path.is_dir() {
                folders.push(path);
            } else if !excluded {
                let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                files.push((path, relative));
            }
        }
    }
    files.sort();
    Ok(files)
}

olive_pass_sdk::export_plugin! {
    name: "fixture-copy",
    version: "0.1.0",
    passes: [CopyModel],
}

#[cfg(test)]
mod tests {
    use olive_pass_sdk::testing::TestHost;

    use super::*;

    #[test]
    fn copies_a_folder_in_process() {
        let input = tempfile::tempdir().unwrap();
        fs::create_dir(input.path().join("sub")).unwrap();
        fs::write(input.path().join("config.json"), "{}").unwrap();
        fs::write(input.path().join("sub/skip.bin"), "x").unwrap();
        let out = tempfile::tempdir().unwrap();
        let host = TestHost::new(out.path());
        let model = Model::new(kinds::HF, input.path());
        let output = host
            .run::<CopyModel>(&model, r#"{"exclude": ["skip.bin"]}"#)
            .unwrap();
        assert_eq!(output.path, out.path());
        assert_eq!(
            fs::read_to_string(out.path().join("config.json")).unwrap(),
            "{}"
        );
        assert!(!out.path().join("sub/skip.bin").exists());
        assert_eq!(host.progress().len(), 1);
    }
}
