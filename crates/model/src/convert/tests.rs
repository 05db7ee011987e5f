//! Tests of the GGUF → Hugging Face conversion on a tiny llama built here (F32, 1 layer, 2 heads of 16,
//! 1 kv head): names, shapes, the q/k un-permutation, config.json, tokenizer files, atomicity, cache.

use std::path::Path;

use safetensors::SafeTensors;

use super::*;
use crate::gguf::test_writer::GgufBuilder;
use crate::gguf::GgmlType;

const HIDDEN: usize = 32;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HEAD_DIM: usize = 16;
const FFN: usize = 64;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// llama.cpp's `LlamaModel.permute`: HF row `(h, p, d)` goes to GGUF row `(h, d, p)`.
fn llama_cpp_permute(w: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = w.len() / rows;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for p in 0..2 {
            for d in 0..half {
                let hf = (h * 2 * half + p * half + d) * cols;
                let gg = (h * 2 * half + d * 2 + p) * cols;
                out[gg..gg + cols].copy_from_slice(&w[hf..hf + cols]);
            }
        }
    }
    out
}

/// Distinct values so any misplaced row shows.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (seed * 100_000 + i) as f32).collect()
}

/// The tokens: 3 specials, the 256 byte-level characters, then `Ġt` and `Ġth` from two merges.
fn tokens() -> Vec<String> {
    let printable = (33u32..=126).chain(161..=172).chain(174..=255);
    let mut bytes: Vec<char> = printable.filter_map(char::from_u32).collect();
    bytes.extend(
        (256u32..)
            .take(256 - bytes.len())
            .filter_map(char::from_u32),
    );
    let mut t: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    t.extend(bytes.iter().map(|c| c.to_string()));
    t.extend(["Ġt".to_string(), "Ġth".to_string()]);
    t
}

/// A tiny llama GGUF whose HF weights are `values(.., seed)`; q/k stored permuted as llama.cpp does.
/// `ffn_up` replaces that tensor's (ggml type, data) when given.
fn tiny_llama(
    ffn_up: Option<(GgmlType, Vec<u8>)>,
    extra: impl FnOnce(&mut GgufBuilder),
) -> GgufBuilder {
    tiny_model("llama", ffn_up, extra)
}

/// A tiny model of GGUF architecture `arch` (`llama` or `qwen2`, whose q/k rows are not permuted).
fn tiny_model(
    arch: &str,
    ffn_up: Option<(GgmlType, Vec<u8>)>,
    extra: impl FnOnce(&mut GgufBuilder),
) -> GgufBuilder {
    let permute = |w: Vec<f32>, rows, heads| {
        if arch == "llama" {
            llama_cpp_permute(&w, rows, heads)
        } else {
            w
        }
    };
    let toks = tokens();
    let vocab = toks.len();
    let mut b = GgufBuilder::new();
    let tok_refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    let types: Vec<i32> = (0..vocab).map(|i| if i < 3 { 3 } else { 1 }).collect();
    let key = |k: &str| format!("{arch}.{k}");
    b.kv_str("general.architecture", arch)
        .kv_u32(&key("block_count"), 1)
        .kv_u32(&key("context_length"), 256)
        .kv_u32(&key("embedding_length"), HIDDEN as u32)
        .kv_u32(&key("feed_forward_length"), FFN as u32)
        .kv_u32(&key("attention.head_count"), HEADS as u32)
        .kv_u32(&key("attention.head_count_kv"), KV_HEADS as u32)
        .kv_f32(&key("attention.layer_norm_rms_epsilon"), 1e-5)
        .kv_f32(&key("rope.freq_base"), 100000.0)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str("tokenizer.ggml.pre", "smollm")
        .kv_str_array("tokenizer.ggml.tokens", &tok_refs)
        .kv_i32_array("tokenizer.ggml.token_type", &types)
        .kv_str_array("tokenizer.ggml.merges", &["Ġ t", "Ġt h"])
        .kv_u32("tokenizer.ggml.bos_token_id", 1)
        .kv_u32("tokenizer.ggml.eos_token_id", 2)
        .kv_u32("tokenizer.ggml.padding_token_id", 2)
        .kv_bool("tokenizer.ggml.add_bos_token", false)
        .kv_str("tokenizer.chat_template", "{{ messages }}");
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let sq = |s: usize| s as u64;
    b.tensor_f32(
        "token_embd.weight",
        &[vocab as u64, sq(HIDDEN)],
        &values(vocab * HIDDEN, 1),
    )
    .tensor_f32("output_norm.weight", &[sq(HIDDEN)], &values(HIDDEN, 2))
    .tensor_f32("blk.0.attn_norm.weight", &[sq(HIDDEN)], &values(HIDDEN, 3))
    .tensor_f32("blk.0.ffn_norm.weight", &[sq(HIDDEN)], &values(HIDDEN, 4))
    .tensor_f32(
        "blk.0.attn_q.weight",
        &[sq(q), sq(HIDDEN)],
        &permute(values(q * HIDDEN, 5), q, HEADS),
    )
    .tensor_f32(
        "blk.0.attn_k.weight",
        &[sq(kv), sq(HIDDEN)],
        &permute(values(kv * HIDDEN, 6), kv, KV_HEADS),
    )
    .tensor_f32(
        "blk.0.attn_v.weight",
        &[sq(kv), sq(HIDDEN)],
        &values(kv * HIDDEN, 7),
    )
    .tensor_f32(
        "blk.0.attn_output.weight",
        &[sq(HIDDEN), sq(q)],
        &values(HIDDEN * q, 8),
    )
    .tensor_f32(
        "blk.0.ffn_gate.weight",
        &[sq(FFN), sq(HIDDEN)],
        &values(FFN * HIDDEN, 9),
    )
    .tensor_f32(
        "blk.0.ffn_down.weight",
        &[sq(HIDDEN), sq(FFN)],
        &values(HIDDEN * FFN, 11),
    );
    match ffn_up {
        Some((ty, data)) => b.tensor("blk.0.ffn_up.weight", &[sq(HIDDEN), sq(FFN)], ty.id(), data),
        None => b.tensor_f32(
            "blk.0.ffn_up.weight",
            &[sq(FFN), sq(HIDDEN)],
            &values(FFN * HIDDEN, 10),
        ),
    };
    extra(&mut b);
    b
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).expect("read")).expect("json")
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    let (rows, cols, heads) = (3 * 2 * 4, 5, 3);
    let w = values(rows * cols, 0);
    assert_eq!(
        layout::unpermute_rows(&llama_cpp_permute(&w, rows, heads), rows, heads),
        w
    );
    // transformers' reshape(n_head, half, 2, cols).swapaxes(1, 2): HF row 1 of head 0 is GGUF row 2.
    let u = layout::unpermute_rows(&w, rows, heads);
    assert_eq!(u[cols..2 * cols], w[2 * cols..3 * cols]);
}

#[test]
fn converts_a_tiny_llama() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tiny_llama(None, |_| {}).write(dir.path(), "tiny.gguf");
    let out = dir.path().join("hf");
    gguf_to_hf(&src, &out).expect("convert");

    let config =
        crate::ModelConfig::from_folder(&out).expect("our config reader accepts config.json");
    assert_eq!((config.hidden_size, config.num_hidden_layers), (HIDDEN, 1));
    assert!(config.tie_word_embeddings);
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["rms_norm_eps"], 1e-5);
    assert_eq!(c["rope_theta"], 100000.0);
    assert_eq!(
        (c["head_dim"].as_u64(), c["num_key_value_heads"].as_u64()),
        (Some(16), Some(1))
    );
    assert_eq!(
        (c["bos_token_id"].as_u64(), c["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );

    let bytes = fs::read(out.join("model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    assert_eq!(st.len(), 11);
    let get = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (t.shape().to_vec(), v)
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    assert_eq!(
        get("model.layers.0.self_attn.q_proj.weight"),
        (vec![q, HIDDEN], values(q * HIDDEN, 5))
    );
    assert_eq!(
        get("model.layers.0.self_attn.k_proj.weight"),
        (vec![kv, HIDDEN], values(kv * HIDDEN, 6))
    );
    assert_eq!(
        get("model.layers.0.mlp.down_proj.weight"),
        (vec![HIDDEN, FFN], values(HIDDEN * FFN, 11))
    );
    assert_eq!(get("model.embed_tokens.weight").0, [tokens().len(), HIDDEN]);
    assert_eq!(get("model.norm.weight").1, values(HIDDEN, 2));

    let tok = crate::tokenizer::load(&out).expect("our tokenizer loader accepts tokenizer.json");
    let enc = tok.encode("<|im_start|>the 42", false).expect("encode");
    assert_eq!(
        enc.get_tokens(),
        ["<|im_start|>", "t", "h", "e", "Ġ", "4", "2"]
    );
    let enc = tok.encode(" the", false).expect("encode");
    assert_eq!(enc.get_tokens(), ["Ġth", "e"]);
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        (tc["bos_token"].as_str(), tc["eos_token"].as_str()),
        (Some("<|im_start|>"), Some("<|im_end|>"))
    );
    assert_eq!(tc["chat_template"], "{{ messages }}");
    assert_eq!(tc["added_tokens_decoder"]["2"]["special"], true);
    assert!(
        out.join("special_tokens_map.json").is_file()
            && out.join("generation_config.json").is_file()
    );
}

#[test]
fn untied_output_becomes_lm_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vocab = tokens().len();
    let src = tiny_llama(None, |b| {
        b.tensor_f32(
            "output.weight",
            &[vocab as u64, HIDDEN as u64],
            &values(vocab * HIDDEN, 12),
        );
    })
    .write(dir.path(), "untied.gguf");
    let out = dir.path().join("hf");
    gguf_to_hf(&src, &out).expect("convert");
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        false
    );
    let bytes = fs::read(out.join("model.safetensors")).expect("read");
    assert!(SafeTensors::deserialize(&bytes)
        .expect("valid")
        .tensor("lm_head.weight")
        .is_ok());
}

#[test]
fn converts_a_tiny_qwen2_with_biases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let src = tiny_model("qwen2", None, |b| {
        b.tensor_f32("blk.0.attn_q.bias", &[q as u64], &values(q, 13))
            .tensor_f32("blk.0.attn_k.bias", &[kv as u64], &values(kv, 14))
            .tensor_f32("blk.0.attn_v.bias", &[kv as u64], &values(kv, 15));
    })
    .write(dir.path(), "qwen2.gguf");
    let out = dir.path().join("hf");
    gguf_to_hf(&src, &out).expect("convert");
    let config = crate::ModelConfig::from_folder(&out).expect("config.json");
    assert!(config.attention_bias);
    let bytes = fs::read(out.join("model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let f32s = |name: &str| -> Vec<f32> {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    assert_eq!(
        f32s("model.layers.0.self_attn.q_proj.weight"),
        values(q * HIDDEN, 5)
    );
    assert_eq!(f32s("model.layers.0.self_attn.k_proj.bias"), values(kv, 14));

    // Without its biases a qwen2 file is incomplete.
    let src = tiny_model("qwen2", None, |_| {}).write(dir.path(), "nobias.gguf");
    let err = gguf_to_hf(&src, &dir.path().join("hf2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("q_proj.bias"), "{err}");
}

/// Entries of `dir` other than `keep`.
fn others(dir: &Path, keep: &str) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != keep)
        .collect()
}

#[test]
fn failures_leave_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Q8_1 blocks of 32 fit the shape but have no dequantizer: refused before anything is written.
    let q8_1 = (
        GgmlType::Q8_1,
        vec![0; FFN * HIDDEN / 32 * GgmlType::Q8_1.type_size()],
    );
    let src = tiny_llama(Some(q8_1), |_| {}).write(dir.path(), "q8_1.gguf");
    let err = gguf_to_hf(&src, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("q8_1.gguf") && err.contains("blk.0.ffn_up.weight") && err.contains("Q8_1"),
        "{err}"
    );
    assert_eq!(others(dir.path(), "q8_1.gguf"), Vec::<String>::new());

    // A tensor the llama layout does not have.
    let src = tiny_llama(None, |b| {
        b.tensor_f32("blk.0.attn_q.bias", &[32], &[0.0; 32]);
    })
    .write(dir.path(), "extra.gguf");
    let err = gguf_to_hf(&src, &dir.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("blk.0.attn_q.bias"), "{err}");
    assert_eq!(others(dir.path(), "q8_1.gguf"), ["extra.gguf"]);
}

#[test]
fn refuses_a_non_empty_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tiny_llama(None, |_| {}).write(dir.path(), "tiny.gguf");
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("keep.txt"), "x").expect("write");
    assert!(gguf_to_hf(&src, &out)
        .unwrap_err()
        .to_string()
        .contains("not empty"));
    assert!(out.join("keep.txt").is_file());
    fs::remove_file(out.join("keep.txt")).expect("rm");
    gguf_to_hf(&src, &out).expect("an empty folder is replaced");
}

#[test]
fn resolve_converts_once_and_passes_folders_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tiny_llama(None, |_| {}).write(dir.path(), "tiny.gguf");
    let cache = dir.path().join("cache");
    let first = resolve_in_cache(&src, &cache).expect("convert");
    assert!(first.starts_with(cache.join("gguf")) && first.join("config.json").is_file());
    let stamp = fs::metadata(first.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(resolve_in_cache(&src, &cache).expect("reuse"), first);
    let again = fs::metadata(first.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("mtime");
    assert_eq!(stamp, again);
    assert_eq!(resolve_model_path(dir.path()).expect("folder"), dir.path());
}

#[test]
fn overwrite_replaces_a_non_empty_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = tiny_llama(None, |_| {}).write(dir.path(), "tiny.gguf");
    let out = dir.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    fs::write(out.join("stale.txt"), "old").expect("write");
    gguf_to_hf_with(&src, &out, true).expect("overwrite");
    assert!(!out.join("stale.txt").exists());
    assert!(out.join("model.safetensors").is_file());
    let mut rest = others(dir.path(), "out");
    rest.sort();
    assert_eq!(
        rest,
        ["tiny.gguf"],
        "nothing but the source beside the output"
    );
}
