//! Tests of the search: samplers, strategies, TPE against random, the report (parsing: tests_parse.rs).

use std::collections::HashSet;

use serde_json::{json, Value};

use super::objective::Objective;
use super::report::Row;
use super::strategy::Trial;
use super::*;

pub(super) fn cat(support: Value) -> Value {
    json!({"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": support})
}

pub(super) fn split(pass: &str, config: Value) -> PassSpace {
    split_pass_config(pass, &config, &format!("passes.{pass}.config")).unwrap()
}

pub(super) fn split_err(config: Value) -> String {
    format!(
        "{:#}",
        split_pass_config("quant", &config, "passes.quant.config").unwrap_err()
    )
}

fn obj(name: &str, higher_is_better: bool, priority: u32) -> Objective {
    Objective {
        name: name.into(),
        higher_is_better,
        priority,
        goal: None,
    }
}

pub(super) fn config(
    execution_order: ExecutionOrder,
    sampler: SamplerKind,
    max_samples: usize,
    seed: u64,
) -> SearchConfig {
    SearchConfig {
        max_samples,
        seed,
        ..SearchConfig::new(execution_order, sampler)
    }
}

/// Runs a search to the end with `f` as the evaluation; returns the trials in order.
pub(super) fn run(search: &mut Search, f: impl Fn(&Trial) -> Outcome) -> Vec<Trial> {
    let mut trials = Vec::new();
    while let Some(trial) = search.next().unwrap() {
        search.record(trial.id, f(&trial)).unwrap();
        trials.push(trial);
    }
    trials
}

fn grid_space() -> SearchSpace {
    SearchSpace::new(vec![
        split(
            "quant",
            json!({"algorithm": cat(json!(["rtn", "awq", "gptq", "hqq"])), "group_size": cat(json!([16, 32, 64, 128]))}),
        ),
        split("build", json!({"accuracy_level": cat(json!([1, 2, 4]))})),
    ])
    .unwrap()
}

/// Indices of a trial's values in the grid's supports.
fn grid_digits(t: &Trial) -> (usize, usize, usize) {
    let pos = |v: &Value, support: Value| {
        support
            .as_array()
            .unwrap()
            .iter()
            .position(|s| s == v)
            .unwrap()
    };
    let q = &t.point[0].values;
    let b = &t.point[1].values;
    (
        pos(&q[0].1, json!(["rtn", "awq", "gptq", "hqq"])),
        pos(&q[1].1, json!([16, 32, 64, 128])),
        pos(&b[0].1, json!([1, 2, 4])),
    )
}

#[test]
fn sequential_is_olives_order_and_random_is_seeded_without_repeats() {
    let seq = run(
        &mut Search::new(
            grid_space(),
            vec![],
            config(ExecutionOrder::Joint, SamplerKind::Sequential, 0, 1),
        )
        .unwrap(),
        |_| Outcome::Failed,
    );
    assert_eq!(seq.len(), 48);
    let order: Vec<_> = seq.iter().map(grid_digits).collect();
    let expected: Vec<_> = (0..3)
        .flat_map(|c| (0..4).flat_map(move |b| (0..4).map(move |a| (a, b, c))))
        .collect();
    assert_eq!(order, expected);
    assert_eq!(
        seq[5].configs,
        [
            (
                "quant".to_string(),
                json!({"algorithm": "awq", "group_size": 32})
            ),
            ("build".to_string(), json!({"accuracy_level": 1}))
        ]
    );

    let random = |seed, max| {
        let cfg = config(ExecutionOrder::Joint, SamplerKind::Random, max, seed);
        run(&mut Search::new(grid_space(), vec![], cfg).unwrap(), |_| {
            Outcome::Failed
        })
        .iter()
        .map(grid_digits)
        .collect::<Vec<_>>()
    };
    let a = random(7, 0);
    assert_eq!(a.len(), 48);
    assert_eq!(a.iter().collect::<HashSet<_>>().len(), 48, "no repeats");
    assert_ne!(a, expected, "shuffled");
    assert_eq!(a, random(7, 0), "same seed, same order");
    assert_ne!(a, random(8, 0), "another seed, another order");
    assert_eq!(random(7, 10), a[..10], "max_samples stops early");
}

/// A smooth objective on the 4x4x3 grid (lower is better) with one optimum at (gptq, 32, 4), plus an
/// interaction term so that it is not separable.
fn grid_loss(t: &Trial) -> f64 {
    let (a, b, c) = grid_digits(t);
    let (a, b, c) = (a as f64, b as f64, c as f64);
    (a - 2.0).powi(2)
        + 1.5 * (b - 1.0).powi(2)
        + 2.0 * (2.0 - c)
        + 0.5 * (a - 2.0).abs() * (b - 1.0).abs()
}

/// Trials until the first one at the exhaustive best.
fn trials_to_best(sampler: SamplerKind, seed: u64) -> usize {
    let cfg = config(ExecutionOrder::Joint, sampler, 0, seed);
    let mut search = Search::new(grid_space(), vec![obj("loss-value", false, 1)], cfg).unwrap();
    let trials = run(&mut search, |t| Outcome::Metrics(vec![grid_loss(t)]));
    assert_eq!(
        trials.len(),
        48,
        "{sampler:?} visits the whole space (falls back when TPE repeats itself)"
    );
    trials
        .iter()
        .position(|t| grid_digits(t) == (2, 1, 2))
        .unwrap()
        + 1
}

/// The check: TPE reaches the exhaustive best in fewer trials than exhaustive search on average over
/// seeds, and than random search on the same seeds (which needs (48 + 1) / 2 on average).
#[test]
fn tpe_reaches_the_best_sooner_than_exhaustive_and_random() {
    const SEEDS: u64 = 20;
    let exhaustive = trials_to_best(SamplerKind::Sequential, 0) as f64;
    let mean = |s| {
        (0..SEEDS)
            .map(|seed| trials_to_best(s, seed) as f64)
            .sum::<f64>()
            / SEEDS as f64
    };
    let (tpe, random) = (mean(SamplerKind::Tpe), mean(SamplerKind::Random));
    eprintln!("trials to the best: tpe {tpe:.1}, random {random:.1}, sequential {exhaustive}");
    assert!(
        tpe < exhaustive && tpe < random,
        "tpe {tpe:.1}, random {random:.1}, sequential {exhaustive}"
    );
}

#[test]
fn tpe_is_seeded_and_skips_invalid_points() {
    let cond = json!({"algorithm": cat(json!(["rtn", "awq", "gptq"])),
        "group_size": {"olive_parameter_type": "SearchParameter", "type": "Conditional", "parents": ["algorithm"],
                       "support": {"rtn": cat(json!([32, 64, 128])), "awq": cat(json!([64]))}}});
    let points = |seed| {
        let space = SearchSpace::new(vec![split("quant", cond.clone())]).unwrap();
        let cfg = config(ExecutionOrder::Joint, SamplerKind::Tpe, 0, seed);
        let mut search = Search::new(space, vec![obj("ppl-value", false, 1)], cfg).unwrap();
        run(&mut search, |t| {
            Outcome::Metrics(vec![t.configs[0].1["group_size"].as_f64().unwrap()])
        })
        .into_iter()
        .map(|t| t.configs[0].1.clone())
        .collect::<Vec<_>>()
    };
    let a = points(3);
    assert_eq!(
        a.len(),
        4,
        "rtn x 3 + awq x 1; gptq has no branch and is invalid: {a:?}"
    );
    assert_eq!(a, points(3));
}

/// Pass-by-pass searches quant, then build under each quant result in rank order (Olive's depth-first walk);
/// quant's trials that failed are never built on.
#[test]
fn pass_by_pass_walks_the_later_passes_under_each_result_in_rank_order() {
    let cfg = config(ExecutionOrder::PassByPass, SamplerKind::Sequential, 0, 1);
    let mut search = Search::new(grid_space(), vec![obj("loss-value", false, 1)], cfg).unwrap();
    let quant_loss = |q: &Value| {
        let a = ["rtn", "awq", "gptq", "hqq"]
            .iter()
            .position(|s| q["algorithm"] == *s)
            .unwrap() as f64;
        (a - 1.0).abs() + (q["group_size"].as_f64().unwrap() - 64.0).abs() / 16.0
    };
    let trials = run(&mut search, |t| {
        let q = &t.configs[0].1;
        match t.configs.get(1) {
            // hqq fails: no build runs on it.
            None if q["algorithm"] == "hqq" => Outcome::Failed,
            None => Outcome::Metrics(vec![quant_loss(q)]),
            // awq at 64 fails in build.
            Some(_) if *q == json!({"algorithm": "awq", "group_size": 64}) => Outcome::Failed,
            Some((_, b)) => Outcome::Metrics(vec![b["accuracy_level"].as_f64().unwrap()]),
        }
    });
    let first: Vec<&Trial> = trials.iter().filter(|t| t.configs.len() == 1).collect();
    let succeeded = first
        .iter()
        .filter(|t| t.configs[0].1["algorithm"] != "hqq")
        .count();
    assert_eq!(first.len(), 16);
    assert!(succeeded < 16, "some quant trials fail");
    let second: Vec<&Trial> = trials.iter().filter(|t| t.configs.len() == 2).collect();
    assert_eq!(
        second.len(),
        3 * succeeded,
        "build searched under every successful quant trial"
    );
    // Each run of build sits on one quant point, in the order of quant's results, best first.
    let bases: Vec<f64> = second
        .chunks(3)
        .map(|c| {
            assert!(c.iter().all(|t| t.configs[0].1 == c[0].configs[0].1));
            quant_loss(&c[0].configs[0].1)
        })
        .collect();
    assert!(bases.windows(2).all(|w| w[0] <= w[1]), "{bases:?}");
    assert_eq!(
        second[0].configs[0].1,
        json!({"algorithm": "awq", "group_size": 64})
    );
    let best = &search.results()[Report::new(&search).best.unwrap()].trial;
    assert_eq!(best.configs[1].1, json!({"accuracy_level": 1}));
    assert_ne!(
        best.configs[0].1,
        json!({"algorithm": "awq", "group_size": 64})
    );
}

#[test]
fn record_checks_ids_and_metric_counts() {
    let cfg = config(ExecutionOrder::Joint, SamplerKind::Sequential, 0, 1);
    let mut search = Search::new(grid_space(), vec![obj("a-b", true, 1)], cfg).unwrap();
    let t = search.next().unwrap().unwrap();
    let err = search
        .record(t.id, Outcome::Metrics(vec![1.0, 2.0]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 metric values, expected one per objective (1)"),
        "{err}"
    );
    assert!(search.record(99, Outcome::Failed).is_err());
    search.record(t.id, Outcome::Failed).unwrap();
    assert!(search.record(t.id, Outcome::Failed).is_err());
}

fn report(objectives: Vec<Objective>) -> Report {
    let n = objectives.len();
    let cfg = config(ExecutionOrder::Joint, SamplerKind::Sequential, 0, 1);
    let mut search = Search::new(grid_space(), objectives, cfg).unwrap();
    run(&mut search, |t| {
        let (a, b, c) = grid_digits(t);
        if (a, b, c) == (3, 3, 2) {
            return Outcome::Failed;
        }
        let size = 4.0 / (1.0 + b as f64) + c as f64;
        let ppl = 10.0 + (a as f64 - 1.0).abs() + b as f64 * 0.5;
        Outcome::Metrics([ppl, size, a as f64 * 0.1][..n].to_vec())
    });
    Report::new(&search)
}

#[test]
fn report_table_json_and_front() {
    let r = report(vec![obj("quality-ppl", false, 1), obj("size-mb", false, 2)]);
    let front: Vec<&Row> = r.rows.iter().filter(|r| r.on_front).collect();
    assert!(!front.is_empty() && front.len() < r.rows.len());
    let table = r.table();
    assert!(
        table.starts_with("| trial | point | quality-ppl (lower) | size-mb (lower) | pareto |\n"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2 + 48);
    assert!(table.contains("| failed | failed |"), "{table}");
    assert!(table.contains("yes (best)"), "{table}");
    let j = r.to_json();
    assert_eq!(j["trials"].as_array().unwrap().len(), 48);
    assert_eq!(j["pareto_front"].as_array().unwrap().len(), front.len());
    assert_eq!(
        j["trials"][5]["point"],
        json!({"quant": {"algorithm": "awq", "group_size": 32}, "build": {"accuracy_level": 1}})
    );
    assert_eq!(j["best"], json!(r.best));
    let dir = tempfile::tempdir().unwrap();
    r.write_json(&dir.path().join("pareto.json")).unwrap();
    let back: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("pareto.json")).unwrap())
            .unwrap();
    assert_eq!(back, j);
}

/// The PNG has the signature and its size in the IHDR; the SVG is an svg document with the
/// caption; a third objective is named in the caption as not drawn.
#[test]
fn plots_write_valid_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    for n in [1, 2, 3] {
        let objectives = [
            obj("quality-ppl", false, 1),
            obj("size-mb", false, 2),
            obj("latency-avg", false, 3),
        ];
        let r = report(objectives[..n].to_vec());
        let png = dir.path().join(format!("front{n}.png"));
        r.write_plot(&png, "quant search").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 900);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 650);
        let svg_path = dir.path().join(format!("front{n}.svg"));
        r.write_plot(&svg_path, "quant search").unwrap();
        let svg = std::fs::read_to_string(&svg_path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{}",
            &svg[..100]
        );
        assert!(svg.contains("quant search"));
        assert_eq!(
            svg.contains("drawn on the top two priorities (quality-ppl, size-mb)"),
            n == 3
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let err = format!(
        "{:#}",
        report(vec![obj("a-b", true, 1)])
            .write_plot(&dir.path().join("x.gif"), "t")
            .unwrap_err()
    );
    assert!(err.contains("expected a .png or .svg"), "{err}");
}

#[test]
fn joint_stop_criteria() {
    let mut objectives = vec![obj("quality-ppl", false, 1)];
    objectives[0].goal = Some(20.0);
    let ppl = |t: &Trial| Outcome::Metrics(vec![if t.id == 4 { 15.0 } else { 30.0 }]);
    let mut cfg = config(ExecutionOrder::Joint, SamplerKind::Sequential, 0, 1);
    cfg.stop_when_goals_met = true;
    assert_eq!(
        run(
            &mut Search::new(grid_space(), objectives.clone(), cfg).unwrap(),
            ppl
        )
        .len(),
        5
    );
    cfg.stop_when_goals_met = false;
    cfg.max_iter = Some(7);
    assert_eq!(
        run(
            &mut Search::new(grid_space(), objectives.clone(), cfg).unwrap(),
            ppl
        )
        .len(),
        7
    );
    cfg.execution_order = ExecutionOrder::PassByPass;
    assert_eq!(
        run(
            &mut Search::new(grid_space(), objectives, cfg).unwrap(),
            ppl
        )
        .len(),
        16 + 16 * 3,
        "the stop criteria are joint-only: pass-by-pass walks every quant result"
    );
}

#[test]
fn outcomes_from_named_values_follow_the_objectives() {
    let objectives = [obj("quality-ppl", false, 1), obj("latency-avg", false, 2)];
    let values = [
        ("latency-avg", 3.0),
        ("quality-ppl", 12.0),
        ("size-mb", 9.0),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        Outcome::from_values(&objectives, &values),
        Outcome::Metrics(vec![12.0, 3.0])
    );
    let Outcome::Metrics(m) =
        Outcome::from_values(&objectives, &[("quality-ppl", 12.0)].into_iter().collect())
    else {
        panic!("expected metrics")
    };
    assert!(m[1].is_nan());
}
