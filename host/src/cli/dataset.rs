//! Olive's dataset flags (olive/cli/base.py `add_dataset_options`), shared by `quantize` and `finetune`, and
//! their translation into crates/data's [`DataConfig`].

use clap::Args;
use olive_data::{unescape_cli, DataConfig};

#[derive(Args, Debug, Clone)]
pub struct DatasetArgs {
    /// The dataset name: `json` (JSON lines or a JSON array) or `text` (one record per line).
    #[arg(short = 'd', long = "data_name")]
    pub data_name: Option<String>,
    /// The dataset split (local files have only `train`).
    #[arg(long)]
    pub split: Option<String>,
    /// Accepted for Olive compatibility: local files have no subsets.
    #[arg(long)]
    pub subset: Option<String>,
    /// The dataset files; several are separated by commas; glob patterns are expanded.
    #[arg(long = "data_files")]
    pub data_files: Option<String>,
    /// The record field holding the text.
    #[arg(long = "text_field", group = "text_source")]
    pub text_field: Option<String>,
    /// A template building each text from record fields, e.g. "{prompt}\n{response}" (`\n` is a newline).
    #[arg(long = "text_template", group = "text_source")]
    pub text_template: Option<String>,
    /// Render each record's `messages` through the model's chat template.
    #[arg(long = "use_chat_template", group = "text_source")]
    pub use_chat_template: bool,
    /// Tokens per sample [default: 1024; quantize: 512 per calibration window].
    #[arg(long = "max_seq_len")]
    pub max_seq_len: Option<usize>,
    /// At most this many samples [default: 256; quantize: 16 calibration windows].
    #[arg(long = "max_samples")]
    pub max_samples: Option<usize>,
}

impl DatasetArgs {
    /// The data config, or `None` when no dataset was named (the pass then uses its default data).
    pub fn data_config(&self) -> anyhow::Result<Option<DataConfig>> {
        let Some(data_name) = &self.data_name else {
            if self.data_files.is_some() {
                anyhow::bail!("--data_files needs --data_name (json or text)");
            }
            return Ok(None);
        };
        let Some(files) = &self.data_files else {
            anyhow::bail!(
                "--data_name {data_name} needs --data_files: no dataset hub is reachable, give local files"
            );
        };
        if let Some(subset) = &self.subset {
            anyhow::bail!("--subset {subset}: local data files have no subsets");
        }
        let mut cfg = DataConfig {
            data_name: data_name.clone(),
            data_files: olive_data::split_data_files(files),
            use_chat_template: self.use_chat_template,
            text_template: self.text_template.as_deref().map(unescape_cli),
            max_seq_len: self.max_seq_len.unwrap_or(1024),
            max_samples: Some(self.max_samples.unwrap_or(256)),
            ..DataConfig::default()
        };
        if let Some(field) = &self.text_field {
            cfg.text_field = field.clone();
        }
        if let Some(split) = &self.split {
            cfg.split = split.clone();
        }
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        data: DatasetArgs,
    }

    fn parse(args: &[&str]) -> Result<DatasetArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.data)
    }

    #[test]
    fn the_labs_flags_give_a_json_config_with_real_newlines() {
        let args = parse(&[
            "--data_files",
            "data/a.jsonl,data/b.jsonl",
            "--data_name",
            "json",
            "--text_template",
            r"<|user|>\n{prompt}<|end|>",
        ])
        .unwrap();
        let cfg = args.data_config().unwrap().unwrap();
        assert_eq!(cfg.data_files, ["data/a.jsonl", "data/b.jsonl"]);
        assert_eq!(
            cfg.text_template.as_deref(),
            Some("<|user|>\n{prompt}<|end|>")
        );
        assert_eq!(cfg.max_seq_len, 1024);
        assert_eq!(cfg.max_samples, Some(256));
    }

    #[test]
    fn text_sources_exclude_each_other() {
        assert!(parse(&["--text_field", "t", "--use_chat_template"]).is_err());
    }

    #[test]
    fn no_dataset_means_the_default_data() {
        assert!(parse(&[]).unwrap().data_config().unwrap().is_none());
        let err = parse(&["--data_files", "a.jsonl"])
            .unwrap()
            .data_config()
            .unwrap_err();
        assert!(err.to_string().contains("--data_name"), "{err}");
        let err = parse(&["--data_name", "json"])
            .unwrap()
            .data_config()
            .unwrap_err();
        assert!(err.to_string().contains("--data_files"), "{err}");
    }
}
