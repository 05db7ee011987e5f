//! The default model's GGUF (`OLIVE_DEFAULT_GGUF`, set by `make test`) converted to a Hugging Face folder
//! and read back through this crate's own loaders: config.json, model.safetensors, and tokenizer.json
//! tokenizing a mixed text exactly as transformers 5.24 does.
//!
//! `EXPECTED` is `AutoTokenizer.from_pretrained(dir, gguf_file=name)(MIXED_TEXT)["input_ids"]` for
//! SmolLM2-135M-Instruct.Q4_1.gguf; MIXED_TEXT is the one in tests/python/test_gguf.py.

use std::path::PathBuf;

const MIXED_TEXT: &str = "Hello, world! The year 2024 had 366 days.\n\
สวัสดีครับ ยินดีที่ได้รู้จัก ภาษาไทย\n\
def add(a, b):\n    return a + b  # sum ✨\n\
🚀🎉👩\u{200d}💻 café naïve — 東京 <|im_start|>user\nhi<|im_end|>\n\t  trailing   spaces  ";

const EXPECTED: [u32; 140] = [
    19556, 28, 905, 17, 378, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30, 198, 10283,
    120, 10283, 117, 10283, 126, 10283, 120, 10283, 238, 10283, 130, 10283, 222, 44701, 10283, 126,
    10283, 244, 216, 10283, 112, 10283, 129, 10283, 243, 10283, 238, 10283, 130, 10283, 241, 10283,
    130, 31933, 226, 31933, 222, 10283, 238, 31933, 227, 44701, 10283, 134, 31933, 227, 10283, 226,
    10283, 126, 10283, 219, 216, 10283, 250, 43662, 10283, 119, 43662, 31933, 222, 10283, 241,
    10283, 112, 198, 1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 216, 907, 2028,
    4636, 246, 118, 198, 10813, 244, 218, 10813, 232, 227, 10813, 235, 119, 321, 231, 10813, 236,
    136, 37366, 15486, 46494, 1841, 17097, 247, 126, 16736, 122, 216, 1, 4093, 198, 6004, 2, 3354,
    216, 35079, 256, 5600, 256,
];

#[test]
fn default_gguf_converts_and_tokenizes_like_transformers() {
    let Some(gguf) = std::env::var_os("OLIVE_DEFAULT_GGUF").map(PathBuf::from) else {
        eprintln!("skipped: OLIVE_DEFAULT_GGUF is not set (run through `make test`)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("smollm2");
    olive_model::convert::gguf_to_hf(&gguf, &out).expect("convert");

    let config = olive_model::ModelConfig::from_folder(&out).expect("config.json");
    assert_eq!(
        (
            config.num_hidden_layers,
            config.hidden_size,
            config.vocab_size
        ),
        (30, 576, 49152)
    );
    let checkpoint = olive_model::Checkpoint::open(&out).expect("model.safetensors");
    assert_eq!(checkpoint.names().count(), 272);

    let tokenizer = olive_model::tokenizer::load(&out).expect("tokenizer.json");
    let ids = tokenizer
        .encode(MIXED_TEXT, true)
        .expect("encode")
        .get_ids()
        .to_vec();
    assert_eq!(ids, EXPECTED);
}
