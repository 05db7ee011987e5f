//! evaluate_with() end to end on the default model (tests/golden/out/smollm2/model, written by scripts/test.sh):
//! metrics over a workflow data config, results keyed and ranked as Olive's, one timed run shared.

use std::path::Path;

use olive_pass_api::Model;
use serde_json::json;

use super::*;
use crate::evaluate::metric::Metric;
use crate::workflow::data_config::WorkflowDataConfig;

fn default_model() -> Model {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/golden/out/smollm2/model");
    assert!(
        dir.join("tokenizer.json").is_file(),
        "{} is missing: run scripts/test.sh",
        dir.display()
    );
    Model::new("hf", dir)
}

#[test]
fn metrics_over_workflow_data_configs() {
    let dir = tempfile::tempdir().unwrap();
    let text = "The harbour town wakes early. Fishing boats come back before sunrise.\n\
                Markets open at seven and close when the fish run out.";
    std::fs::write(dir.path().join("t.txt"), text).unwrap();
    let qs = "{\"question\": \"What is 2 plus 2?\", \"choices\": [\"3\", \"4\", \"5\", \"22\"], \"answer\": 1}\n\
              {\"question\": \"What colour is snow?\", \"choices\": [\"white\", \"black\", \"red\", \"green\"], \"answer\": 0}\n";
    std::fs::write(dir.path().join("q.jsonl"), qs).unwrap();
    let data: Vec<WorkflowDataConfig> = serde_json::from_value(json!([
        {"name": "txt", "type": "HuggingfaceContainer",
         "load_dataset_config": {"data_name": "text", "data_files": "t.txt"},
         "pre_process_data_config": {"max_seq_len": 16}},
        {"name": "mc", "load_dataset_config": {"data_name": "json", "data_files": "q.jsonl"}}
    ]))
    .unwrap();
    let metrics: Vec<Metric> = serde_json::from_value(json!([
        {"name": "ppl", "type": "accuracy", "data_config": "txt",
         "sub_types": [{"name": "perplexity", "priority": 1}]},
        {"name": "mc", "type": "accuracy", "data_config": "mc", "sub_types": [{"name": "accuracy_score"}]},
        {"name": "lat", "type": "latency", "data_config": "txt", "sub_types": [
            {"name": "p50", "priority": 2, "metric_config": {"warmup_num": 1, "repeat_test_num": 3, "prompt_length": 8}},
            {"name": "max"}]},
        {"name": "tps", "type": "throughput", "data_config": "txt", "sub_types": [
            {"name": "min", "metric_config": {"warmup_num": 1, "repeat_test_num": 3, "prompt_length": 8}}]}
    ]))
    .unwrap();
    let plans = metric::validate(&metrics, &data, Some(dir.path())).unwrap();
    let model = default_model();
    let got = evaluate_with(&plans, &model, &Options::default()).unwrap();
    let r = &got.result;
    assert_eq!(
        r.0.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "lat-max",
            "lat-p50",
            "mc-accuracy_score",
            "ppl-perplexity",
            "tps-min"
        ]
    );
    // perplexity: the lines joined by a blank line, windows of max_seq_len tokens
    let tok = olive_model::tokenizer::load(&model.path).unwrap();
    let joined = text.lines().collect::<Vec<_>>().join("\n\n");
    let ids = tok.encode(joined, false).unwrap().get_ids().to_vec();
    let mut runner = Runner::load(&model, crate::device::Device::Cpu).unwrap();
    let want = perplexity::perplexity(&mut runner, &ids, 16, None)
        .unwrap()
        .perplexity();
    let ppl = r.0["ppl-perplexity"];
    assert_eq!(
        (ppl.value, ppl.priority, ppl.higher_is_better),
        (result::round5(want), 1, false)
    );
    assert!(ppl.value > 1.0 && ppl.value < 1000.0, "{ppl:?}");
    // two easy questions from the data config's file
    assert_eq!(got.choices[0].1.len(), 2);
    assert!(r.0["mc-accuracy_score"].higher_is_better);
    // latency and throughput with the same settings share the timed run: slowest step = least tokens/s
    assert!(r.0["lat-p50"].value > 0.0 && r.0["lat-p50"].value <= r.0["lat-max"].value);
    let tps = r.0["tps-min"].value;
    assert!(
        (tps - 1000.0 / r.0["lat-max"].value).abs() <= 1e-3 * tps,
        "{r:?}"
    );
    assert!(r.0["tps-min"].higher_is_better && !r.0["lat-max"].higher_is_better);
}
