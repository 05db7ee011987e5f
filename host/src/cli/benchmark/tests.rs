//! Flag parsing, up-front validation and table formatting of `olive-host benchmark`.

use std::path::Path;

use clap::Parser;

use super::*;
use crate::evaluate::result::SubMetricResult;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchmarkArgs,
}

fn args(flags: &[&str]) -> BenchmarkArgs {
    let argv = std::iter::once("benchmark").chain(flags.iter().copied());
    Cli::try_parse_from(argv).unwrap().args
}

/// A folder resolve_hf_input takes (validation loads nothing).
fn hf_folder(dir: &Path, name: &str) -> String {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("config.json"), "{}").unwrap();
    folder.display().to_string()
}

fn error(a: &BenchmarkArgs) -> String {
    format!("{:#}", plan(a).err().expect("the flags should be refused"))
}

#[test]
fn flags_parse_as_lists_with_olives_defaults() {
    let a = args(&[
        "-m",
        "a",
        "--model_name_or_path",
        "b=/x/y",
        "--prompt_length",
        "32,128",
    ]);
    assert_eq!(a.models, ["a", "b=/x/y"]);
    assert_eq!(a.prompt_lengths, [32, 128]);
    assert_eq!(a.devices, [Device::Cpu]);
    assert_eq!(a.modes, [Mode::Decode]);
    assert_eq!(
        a.tasks,
        ["perplexity", "latency", "throughput", "size_on_disk"]
    );
    assert_eq!(a.output_path, PathBuf::from("benchmark-output"));
    let a = args(&[
        "-m",
        "a",
        "--device",
        "cpu",
        "--device",
        "gpu",
        "--mode",
        "decode,prefill",
    ]);
    assert_eq!(a.devices, [Device::Cpu, Device::Gpu]);
    assert_eq!(a.modes, [Mode::Decode, Mode::Prefill]);
    assert!(Cli::try_parse_from(["benchmark", "-m", "a", "--device", "tpu"]).is_err());
    assert!(
        Cli::try_parse_from(["benchmark"]).is_err(),
        "a model is required"
    );
}

#[test]
fn labels_are_the_last_path_component_or_given() {
    let (label, path) = label_of("/models/tiny/").unwrap();
    assert_eq!(
        (label.as_str(), path),
        ("tiny", PathBuf::from("/models/tiny/"))
    );
    let (label, path) = label_of("int4=/out/model").unwrap();
    assert_eq!(
        (label.as_str(), path),
        ("int4", PathBuf::from("/out/model"))
    );
    // A `=` inside a path is not a label.
    assert_eq!(label_of("/a/b=c/m").unwrap().0, "m");
}

#[test]
fn a_sweep_has_one_cell_per_model_device_and_setting() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = (hf_folder(dir.path(), "x"), hf_folder(dir.path(), "y"));
    let y = format!("why={y}");
    let a = args(&[
        "-m",
        &x,
        "-m",
        &y,
        "--prompt_length",
        "32,64",
        "--mode",
        "decode,prefill",
    ]);
    let sweep = plan(&a).unwrap();
    assert_eq!(sweep.cells.len(), 2 * 2 * 2);
    assert_eq!(sweep.subjects[1].label, "why");
    let headers: Vec<String> = sweep.columns.iter().map(Column::header).collect();
    assert_eq!(
        headers,
        [
            "perplexity-perplexity",
            "latency-avg (ms)",
            "latency-p50 (ms)",
            "latency-p90 (ms)",
            "latency-p99 (ms)",
            "latency-max (ms)",
            "throughput-avg (tokens/s)",
            "size_on_disk-bytes (bytes)"
        ]
    );
    let latency = |i: usize| serde_json::to_value(&sweep.metrics[i][1]).unwrap();
    assert_eq!(
        latency(3)["sub_types"][0]["metric_config"]["prompt_length"],
        64
    );
    assert_eq!(
        latency(3)["sub_types"][0]["metric_config"]["mode"],
        "prefill"
    );
    // Without a per-setting task there is one setting.
    let a = args(&[
        "-m",
        &x,
        "--prompt_length",
        "32,64",
        "--tasks",
        "size_on_disk",
    ]);
    assert_eq!(plan(&a).unwrap().cells.len(), 1);
}

#[test]
fn memory_on_the_gpu_adds_the_peak_device_memory() {
    let dir = tempfile::tempdir().unwrap();
    let x = hf_folder(dir.path(), "x");
    let a = args(&["-m", &x, "--device", "cpu,gpu", "--tasks", "memory"]);
    let sweep = plan(&a).unwrap();
    let keys: Vec<&str> = sweep.columns.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["memory-peak_rss", "memory-peak_device_memory"]);
    for (cell, metrics) in sweep.cells.iter().zip(&sweep.metrics) {
        let subs: Vec<&str> = metrics[0]
            .sub_types
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        match cell.device {
            Device::Cpu => assert_eq!(subs, ["peak_rss"]),
            Device::Gpu => assert_eq!(subs, ["peak_rss", "peak_device_memory"]),
        }
    }
}

#[test]
fn bad_flags_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let x = hf_folder(dir.path(), "x");
    let e = error(&args(&["-m", &x, "--tasks", "latency,bleu"]));
    assert!(
        e.contains("--tasks \"bleu\"") && e.contains("accuracy_score"),
        "{e}"
    );
    let e = error(&args(&["-m", &x, "--tasks", "latency,latency"]));
    assert!(e.contains("listed twice"), "{e}");
    let e = error(&args(&["-m", &x, "--prompt_length", "16,0"]));
    assert!(e.contains("--prompt_length 0"), "{e}");
    let e = error(&args(&["-m", &x, "--limit", "0"]));
    assert!(e.contains("--limit 0"), "{e}");
    let missing = dir.path().join("nope").display().to_string();
    let e = error(&args(&["-m", &x, "-m", &missing]));
    assert!(
        e.contains("--model_name_or_path") && e.contains("does not exist"),
        "{e}"
    );
    let e = error(&args(&["-m", &x, "-m", &format!("x={x}")]));
    assert!(e.contains("label \"x\" is already used"), "{e}");
    let e = error(&args(&[
        "-m",
        &x,
        "--warmup_num",
        "1",
        "--repeat_test_num",
        "0",
    ]));
    assert!(
        e.contains("model \"x\"") && e.contains("repeat_test_num"),
        "{e}"
    );
}

fn row(label: &str, prompt_length: usize, values: &[(&str, f64)]) -> Row {
    let result = values
        .iter()
        .map(|(k, v)| {
            let r = SubMetricResult {
                value: *v,
                priority: -1,
                higher_is_better: false,
            };
            (k.to_string(), r)
        })
        .collect();
    Row {
        label: label.into(),
        path: PathBuf::from("/m"),
        device: Device::Cpu,
        prompt_length,
        mode: Mode::Decode,
        result: MetricResult(result),
    }
}

fn columns() -> Vec<Column> {
    vec![
        Column {
            key: "latency-avg".into(),
            unit: "ms",
        },
        Column {
            key: "size_on_disk-bytes".into(),
            unit: "bytes",
        },
        Column {
            key: "perplexity-perplexity".into(),
            unit: "",
        },
    ]
}

#[test]
fn csv_quotes_labels_and_keeps_full_precision() {
    let rows = [
        row(
            "a,\"b\"",
            32,
            &[("latency-avg", 1.234567891), ("size_on_disk-bytes", 1000.0)],
        ),
        row(
            "c",
            128,
            &[("latency-avg", 2.5), ("perplexity-perplexity", 31.2)],
        ),
    ];
    let csv = to_csv(&columns(), &rows);
    assert_eq!(
        csv,
        "model,device,prompt_length,mode,latency-avg (ms),size_on_disk-bytes (bytes),perplexity-perplexity\n\
         \"a,\"\"b\"\"\",cpu,32,decode,1.234567891,1000,\n\
         c,cpu,128,decode,2.5,,31.2\n"
    );
}

#[test]
fn markdown_has_units_alignment_and_rounded_values() {
    let rows = [row(
        "x|y",
        32,
        &[
            ("latency-avg", 1.234567891),
            ("size_on_disk-bytes", 123456789.0),
            ("perplexity-perplexity", 31.21099),
        ],
    )];
    let md = to_markdown(&columns(), &rows);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0],
        "| model | device | prompt_length | mode | latency-avg (ms) | size_on_disk-bytes (bytes) | perplexity-perplexity |"
    );
    assert_eq!(lines[1], "| --- | --- | ---: | --- | ---: | ---: | ---: |");
    assert_eq!(
        lines[2],
        "| x\\|y | cpu | 32 | decode | 1.2346 | 123456789 | 31.211 |"
    );
    assert_eq!(cell_text(Some(0.000123456)), "0.000123");
    assert_eq!(cell_text(Some(51234.56)), "51235");
    assert_eq!(cell_text(None), "");
}
