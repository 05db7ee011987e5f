//! Unit tests: each file format, templates, chat templates, packing/padding shapes, split and calibration
//! determinism, with a tiny word-level tokenizer written to a temporary folder.

use std::path::{Path, PathBuf};

use super::*;

const WORDS: &[&str] = &[
    "<unk>",
    "<eos>",
    "<pad>",
    "a",
    "b",
    "c",
    "d",
    "e",
    "q",
    ":",
    "user",
    "assistant",
    "<|im_start|>",
    "<|im_end|>",
];

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write test file");
    p
}

fn tiny_tokenizer(dir: &Path, pad: bool) -> ModelTokenizer {
    let vocab: serde_json::Map<String, serde_json::Value> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    let added: Vec<_> = [1, 2, 12, 13]
        .iter()
        .map(|&i| {
            serde_json::json!({"id": i, "content": WORDS[i], "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tok = serde_json::json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}});
    write(dir, "tokenizer.json", &tok.to_string());
    let mut cfg = serde_json::json!({"eos_token": "<eos>", "bos_token": {"content": "<eos>"},
        "chat_template": "{% for m in messages %}<|im_start|> {{ m['role'] }} : {{ m['content'] }} <|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant : {% endif %}"});
    if pad {
        cfg["pad_token"] = serde_json::json!("<pad>");
    }
    write(dir, "tokenizer_config.json", &cfg.to_string());
    ModelTokenizer::load(dir).expect("load tiny tokenizer")
}

fn cfg(files: Vec<PathBuf>) -> DataConfig {
    DataConfig {
        data_files: files.iter().map(|p| p.display().to_string()).collect(),
        ..DataConfig::default()
    }
}

#[test]
fn jsonl_json_list_data_object_and_text_give_the_same_records() {
    let d = tempfile::tempdir().expect("tempdir");
    let jsonl = write(
        d.path(),
        "a.jsonl",
        "{\"text\": \"a b\"}\n\n{\"text\": \"c\"}\n",
    );
    let list = write(
        d.path(),
        "b.json",
        "[{\"text\": \"a b\"}, {\"text\": \"c\"}]",
    );
    let obj = write(
        d.path(),
        "c.json",
        "{\"data\": [{\"text\": \"a b\"}, {\"text\": \"c\"}]}",
    );
    let txt = write(d.path(), "d.txt", "a b\n\nc\n");
    let tc = TokenizerConfig::default();
    for (name, file) in [
        ("json", &jsonl),
        ("json", &list),
        ("json", &obj),
        ("text", &txt),
    ] {
        let c = DataConfig {
            data_name: name.into(),
            ..cfg(vec![file.clone()])
        };
        assert_eq!(
            c.texts(&tc).expect("texts"),
            vec!["a b".to_string(), "c".to_string()],
            "{}",
            file.display()
        );
    }
    let recs = load_records(DataName::Json, &[jsonl], "train").expect("records");
    assert!(
        recs[1].origin.ends_with("a.jsonl:line 3"),
        "{}",
        recs[1].origin
    );
}

#[test]
fn globs_sort_and_missing_files_error() {
    let d = tempfile::tempdir().expect("tempdir");
    write(d.path(), "2.jsonl", "{\"text\": \"c\"}\n");
    write(d.path(), "1.jsonl", "{\"text\": \"a\"}\n");
    let pattern = format!("{}/*.jsonl", d.path().display());
    let c = DataConfig {
        data_files: vec![pattern],
        ..DataConfig::default()
    };
    assert_eq!(
        c.texts(&TokenizerConfig::default()).expect("texts"),
        vec!["a", "c"]
    );
    let missing = format!("{}/nope.jsonl", d.path().display());
    assert!(matches!(
        resolve_files(&[missing]),
        Err(DataError::NoFiles(_))
    ));
    let none = format!("{}/*.csv", d.path().display());
    assert!(matches!(resolve_files(&[none]), Err(DataError::NoFiles(_))));
    assert_eq!(
        split_data_files("a.jsonl, b.jsonl"),
        vec!["a.jsonl", "b.jsonl"]
    );
}

#[test]
fn bad_inputs_name_file_line_and_field() {
    let d = tempfile::tempdir().expect("tempdir");
    let bad = write(d.path(), "bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \n");
    let err = load_records(DataName::Json, &[bad], "train")
        .expect_err("bad json")
        .to_string();
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let f = write(d.path(), "f.jsonl", "{\"prompt\": \"a\"}\n");
    let c = DataConfig {
        text_template: Some("{prompt} {response}".into()),
        ..cfg(vec![f.clone()])
    };
    let err = c
        .texts(&TokenizerConfig::default())
        .expect_err("missing field")
        .to_string();
    assert!(
        err.contains("f.jsonl:line 1") && err.contains("\"response\"") && err.contains("prompt"),
        "{err}"
    );
    let err = cfg(vec![f.clone()])
        .texts(&TokenizerConfig::default())
        .expect_err("no text field")
        .to_string();
    assert!(err.contains("\"text\""), "{err}");
    let empty = write(d.path(), "e.jsonl", "\n\n");
    assert!(matches!(
        cfg(vec![empty]).texts(&TokenizerConfig::default()),
        Err(DataError::Empty(_))
    ));
    let hub = DataConfig {
        data_name: "tatsu-lab/alpaca".into(),
        ..cfg(vec![f.clone()])
    };
    assert!(matches!(
        hub.texts(&TokenizerConfig::default()),
        Err(DataError::UnsupportedDataName(_))
    ));
    let split = DataConfig {
        split: "test".into(),
        ..cfg(vec![f])
    };
    assert!(matches!(
        split.texts(&TokenizerConfig::default()),
        Err(DataError::UnknownSplit(_))
    ));
}

#[test]
fn template_substitutes_fields_and_escapes() {
    let t = TextTemplate::parse(&unescape_cli(
        r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n{response}<|end|> {{x}}",
    ))
    .expect("parse");
    assert_eq!(t.fields().collect::<Vec<_>>(), vec!["prompt", "response"]);
    let rec = Record {
        origin: "r".into(),
        fields: serde_json::from_str(r#"{"prompt": "Hi?", "response": "Yes."}"#).expect("json"),
    };
    assert_eq!(
        t.render(&rec).expect("render"),
        "<|user|>\nHi?<|end|>\n<|assistant|>\nYes.<|end|> {x}"
    );
    assert!(TextTemplate::parse("{open").is_err());
    assert!(TextTemplate::parse("close}").is_err());
    assert_eq!(unescape_cli(r"a\tb\\n\q"), "a\tb\\n\\q");
}

#[test]
fn chat_template_maps_prompt_response_to_turns() {
    let d = tempfile::tempdir().expect("tempdir");
    let tok = tiny_tokenizer(d.path(), false);
    let f = write(
        d.path(),
        "t.jsonl",
        "{\"prompt\": \"a b\", \"response\": \"c\"}\n",
    );
    let c = DataConfig {
        use_chat_template: true,
        ..cfg(vec![f])
    };
    let texts = c.texts(&tok.config).expect("texts");
    assert_eq!(
        texts,
        vec!["<|im_start|> user : a b <|im_end|> <|im_start|> assistant : c <|im_end|> "]
    );
    let gen = tok
        .config
        .apply_chat_template(&serde_json::json!([{"role": "user", "content": "a"}]), true);
    assert!(gen.expect("render").ends_with("<|im_start|> assistant : "));
    // Python methods, `tojson` and `raise_exception` as in Llama/Mistral/Qwen templates.
    let py = TokenizerConfig {
        chat_template: Some(
            "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
             {{ raise_exception('bad role ' + m.role) }}{% endif %}[{{ m.role.upper() }}]{{ m.content.strip() }}\
             {{ m.content | tojson }}{% endfor %}"
                .into(),
        ),
        bos_token: Some("<s>".into()),
        ..TokenizerConfig::default()
    };
    let msgs = serde_json::json!([{"role": "user", "content": "  hi  "}]);
    assert_eq!(
        py.apply_chat_template(&msgs, false).expect("render"),
        "<s>[USER]hi\"  hi  \""
    );
    let bad = py.apply_chat_template(
        &serde_json::json!([{"role": "tool", "content": "x"}]),
        false,
    );
    assert!(bad
        .expect_err("raise_exception")
        .to_string()
        .contains("bad role tool"));
    let none = TokenizerConfig::default();
    assert!(none
        .apply_chat_template(&serde_json::json!([]), false)
        .is_err());
}

#[test]
fn packing_and_padding_shapes() {
    let docs = vec![vec![3, 4, 5], vec![6], vec![7, 8, 9, 3, 4]];
    // stream: 3 4 5 E 6 E 7 8 9 3 4 E (12 tokens) -> 2 blocks of 5, tail of 2 dropped.
    let p = pack(&docs, 1, 5, None).expect("pack");
    assert_eq!(p.len(), 2);
    assert_eq!(p[0].input_ids, vec![3, 4, 5, 1, 6]);
    assert_eq!(p[1].labels, vec![1, 7, 8, 9, 3]);
    assert!(p.iter().all(|s| s.attention_mask == vec![1; 5]));
    assert_eq!(pack(&docs, 1, 5, Some(1)).expect("pack").len(), 1);
    assert!(matches!(
        pack(&docs, 1, 13, None),
        Err(DataError::TooShort {
            tokens: 12,
            needed: 13
        })
    ));
    let r = pad(&docs, 2, 4, None).expect("pad");
    assert_eq!(r.len(), 3);
    assert_eq!(r[1].input_ids, vec![6, 2, 2, 2]);
    assert_eq!(r[1].attention_mask, vec![1, 0, 0, 0]);
    assert_eq!(
        r[1].labels,
        vec![6, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    );
    assert_eq!(r[2].input_ids, vec![7, 8, 9, 3]);
    assert!(r
        .iter()
        .all(|s| s.input_ids.len() == 4 && s.labels.len() == 4 && s.attention_mask.len() == 4));
    assert!(pad(&[vec![]], 2, 4, None).is_err());
}

#[test]
fn split_is_seeded_disjoint_and_complete() {
    let items: Vec<u32> = (0..100).collect();
    let (t1, e1) = split(&items, 0.2, 7).expect("split");
    let (t2, e2) = split(&items, 0.2, 7).expect("split");
    let (_, e3) = split(&items, 0.2, 8).expect("split");
    assert_eq!((t1.len(), e1.len()), (80, 20));
    assert_eq!((&t1, &e1), (&t2, &e2));
    assert_ne!(e1, e3);
    let mut all: Vec<u32> = t1.iter().chain(&e1).copied().collect();
    all.sort_unstable();
    assert_eq!(all, items);
    assert!(split(&items, 1.0, 0).is_err());
    assert_eq!(split(&items, 0.0, 0).expect("split").1.len(), 0);
}

#[test]
fn calibration_windows_are_seeded_and_in_bounds() {
    let docs: Vec<Vec<u32>> = (0..50u32).map(|i| vec![i + 10; 7]).collect();
    let stream: Vec<u32> = docs
        .iter()
        .flat_map(|d| d.iter().copied().chain([1]))
        .collect();
    let a = calibration(&docs, 1, 16, 20, 42).expect("calib");
    assert_eq!(a, calibration(&docs, 1, 16, 20, 42).expect("calib"));
    assert_ne!(a, calibration(&docs, 1, 16, 20, 43).expect("calib"));
    assert_eq!(a.len(), 16);
    for w in &a {
        assert_eq!(w.len(), 20);
        assert!(
            stream.windows(20).any(|s| s == w.as_slice()),
            "window not a slice of the corpus"
        );
    }
    // A corpus exactly one window long has only one start.
    let one = calibration(&[vec![5; 9]], 1, 3, 10, 0).expect("calib");
    assert!(one.iter().all(|w| w == &[5, 5, 5, 5, 5, 5, 5, 5, 5, 1]));
    assert!(matches!(
        calibration(&[vec![5; 9]], 1, 3, 11, 0),
        Err(DataError::TooShort { .. })
    ));
}

#[test]
fn prepare_splits_records_then_packs_or_pads() {
    let d = tempfile::tempdir().expect("tempdir");
    let tok = tiny_tokenizer(d.path(), true);
    assert_eq!((tok.eos_id, tok.pad_id), (1, 2));
    let lines: String = (0..20)
        .map(|_| "{\"q\": \"a b c\", \"r\": \"d e\"}\n")
        .collect();
    let f = write(d.path(), "x.jsonl", &lines);
    let base = DataConfig {
        text_template: Some("q : {q} {r}".into()),
        max_seq_len: 8,
        eval_ratio: 0.25,
        ..cfg(vec![f])
    };
    let packed = prepare(&base, &tok).expect("prepare");
    // 15 train docs x (7 tokens + eos) = 120 tokens -> 15 blocks of 8; 5 eval docs -> 5 blocks.
    assert_eq!((packed.train.len(), packed.eval.len()), (15, 5));
    assert_eq!(packed.train[0].input_ids, vec![8, 9, 3, 4, 5, 6, 7, 1]);
    let padded = prepare(
        &DataConfig {
            layout: Layout::Pad,
            max_seq_len: 10,
            max_samples: Some(4),
            ..base.clone()
        },
        &tok,
    )
    .expect("prepare");
    assert_eq!(padded.train.len(), 4);
    assert_eq!(
        padded.train[0].input_ids,
        vec![8, 9, 3, 4, 5, 6, 7, 2, 2, 2]
    );
    let small_eval = DataConfig {
        eval_ratio: 0.05,
        max_seq_len: 16,
        ..base
    };
    let err = prepare(&small_eval, &tok)
        .expect_err("one eval record is shorter than a row")
        .to_string();
    assert!(
        err.contains("eval_ratio") && err.contains("8 tokens"),
        "{err}"
    );
}

#[test]
fn default_texts_are_long_enough() {
    let d = tempfile::tempdir().expect("tempdir");
    let tok = tiny_tokenizer(d.path(), false);
    let calib = calibration_samples(None, &tok, 8, 512, 0).expect("default calibration");
    assert_eq!((calib.len(), calib[0].len()), (8, 512));
    assert!(DEFAULT_CALIBRATION_TEXT.split_whitespace().count() > 2500);
    assert!(DEFAULT_EVAL_TEXT.split_whitespace().count() > 2000);
    assert_eq!(
        paragraphs("a\nb\n\n  \nc\n"),
        vec!["a\nb".to_string(), "c".to_string()]
    );
}
