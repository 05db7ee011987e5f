//! PEFT LoRA adapters as `peft` saves them (adapter_config.json + adapter_model.safetensors), checked against a
//! Llama-family base model; Phi-3's fused qkv_proj / gate_up_proj split the way onnxruntime-genai's builder splits
//! them (`make_attention_unpacked_lora`, `make_mlp_unpacked_lora`: lora_A shared, lora_B split by rows).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use safetensors::SafeTensors;
use serde_json::{Map, Value};

use crate::checkpoint::to_f32;
use crate::config::{Architecture, ModelConfig};

pub mod write;
pub use write::{write_adapter, LoraSaveConfig, WeightDtype};

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights as safetensors.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The adapter's weights as a pickled PyTorch state dict (not read).
pub const WEIGHTS_FILE_BIN: &str = "adapter_model.bin";

/// Errors reading or checking an adapter; each names the file, and the field or module at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdapterError {
    /// A file or folder could not be read (the OS error is part of the message, not a separate source).
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// adapter_config.json is not valid JSON.
    #[error("{}: invalid JSON: {error}", path.display())]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// A field of adapter_config.json is missing, of the wrong type, or asks for something unsupported.
    #[error("{path}: field `{field}`: {expected}")]
    Config {
        path: PathBuf,
        field: String,
        expected: String,
    },
    /// The weights file is absent, in an unsupported format, or holds a tensor that is not a LoRA weight.
    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    /// An adapted module does not exist in the base model, or its tensors do not fit it.
    #[error("{path}: module `{module}`: {reason}")]
    Module {
        path: PathBuf,
        module: String,
        reason: String,
    },
}

pub type Result<T, E = AdapterError> = std::result::Result<T, E>;

/// Which sub-block of a decoder layer a projection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Block {
    Attention,
    Mlp,
}

impl Block {
    /// The block's name in Hugging Face module paths.
    pub fn hf_name(self) -> &'static str {
        match self {
            Block::Attention => "self_attn",
            Block::Mlp => "mlp",
        }
    }

    /// The block's name in onnxruntime-genai node paths (`/model/layers.0/attn/...`).
    pub fn onnx_name(self) -> &'static str {
        match self {
            Block::Attention => "attn",
            Block::Mlp => "mlp",
        }
    }
}

/// A linear layer of a decoder layer that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Projection {
    Q,
    K,
    V,
    /// Phi-3's fused q/k/v projection.
    Qkv,
    O,
    Gate,
    Up,
    /// Phi-3's fused gate/up projection.
    GateUp,
    Down,
}

const LLAMA_PROJECTIONS: &[Projection] = &[
    Projection::Q,
    Projection::K,
    Projection::V,
    Projection::O,
    Projection::Gate,
    Projection::Up,
    Projection::Down,
];
const PHI3_PROJECTIONS: &[Projection] = &[
    Projection::Qkv,
    Projection::O,
    Projection::GateUp,
    Projection::Down,
];

impl Projection {
    /// The module name (`q_proj`, `gate_up_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Projection::Q => "q_proj",
            Projection::K => "k_proj",
            Projection::V => "v_proj",
            Projection::Qkv => "qkv_proj",
            Projection::O => "o_proj",
            Projection::Gate => "gate_proj",
            Projection::Up => "up_proj",
            Projection::GateUp => "gate_up_proj",
            Projection::Down => "down_proj",
        }
    }

    pub fn block(self) -> Block {
        match self {
            Projection::Q | Projection::K | Projection::V | Projection::Qkv | Projection::O => {
                Block::Attention
            }
            _ => Block::Mlp,
        }
    }

    /// The projections an architecture has, as its Hugging Face checkpoint lays them out.
    pub fn of(architecture: Architecture) -> &'static [Projection] {
        match architecture {
            Architecture::Phi3 => PHI3_PROJECTIONS,
            Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 => LLAMA_PROJECTIONS,
        }
    }

    fn all() -> impl Iterator<Item = Projection> {
        LLAMA_PROJECTIONS.iter().chain(PHI3_PROJECTIONS).copied()
    }

    fn parse(block: &str, name: &str) -> Option<Projection> {
        Projection::all().find(|p| p.block().hf_name() == block && p.name() == name)
    }

    /// (in_features, out_features) of this projection in a model.
    pub fn features(self, model: &ModelConfig) -> (usize, usize) {
        let hidden = model.hidden_size;
        let q = model.num_attention_heads * model.head_dim;
        let kv = model.num_key_value_heads * model.head_dim;
        let inter = model.intermediate_size;
        match self {
            Projection::Q => (hidden, q),
            Projection::K | Projection::V => (hidden, kv),
            Projection::Qkv => (hidden, q + 2 * kv),
            Projection::O => (q, hidden),
            Projection::Gate | Projection::Up => (hidden, inter),
            Projection::GateUp => (hidden, 2 * inter),
            Projection::Down => (inter, hidden),
        }
    }

    /// The unfused projections of a fused one, in row order (q, k, v; gate, up); empty for an unfused one.
    pub fn parts(self) -> &'static [Projection] {
        match self {
            Projection::Qkv => &[Projection::Q, Projection::K, Projection::V],
            Projection::GateUp => &[Projection::Gate, Projection::Up],
            _ => &[],
        }
    }

    /// The unfused projections of a fused one with their output rows, in order; None for an unfused one.
    pub fn split(self, model: &ModelConfig) -> Option<Vec<(Projection, std::ops::Range<usize>)>> {
        let q = model.num_attention_heads * model.head_dim;
        let kv = model.num_key_value_heads * model.head_dim;
        let inter = model.intermediate_size;
        match self {
            Projection::Qkv => Some(vec![
                (Projection::Q, 0..q),
                (Projection::K, q..q + kv),
                (Projection::V, q + kv..q + 2 * kv),
            ]),
            Projection::GateUp => Some(vec![
                (Projection::Gate, 0..inter),
                (Projection::Up, inter..2 * inter),
            ]),
            _ => None,
        }
    }
}

/// One adapted linear: a decoder layer and a projection in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoraModule {
    pub layer: usize,
    pub projection: Projection,
}

impl LoraModule {
    /// The module's path in the Hugging Face model (`model.layers.0.self_attn.q_proj`), as PEFT matches it.
    pub fn hf_key(&self) -> String {
        format!(
            "model.layers.{}.{}.{}",
            self.layer,
            self.projection.block().hf_name(),
            self.projection.name()
        )
    }

    /// The node path onnxruntime-genai's builder gives the linear (`/model/layers.0/attn/q_proj`); its MatMul is
    /// `<path>/MatMul` and the LoRA nodes hang below it.
    pub fn onnx_path(&self) -> String {
        format!(
            "/model/layers.{}/{}/{}",
            self.layer,
            self.projection.block().onnx_name(),
            self.projection.name()
        )
    }
}

/// `target_modules` of adapter_config.json.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    /// Module names or name suffixes (`q_proj`, `self_attn.q_proj`); PEFT matches `key == t || key.ends_with(".t")`.
    Names(Vec<String>),
    /// A regular expression PEFT matches against the whole module key.
    Regex(String),
}

/// The fields of adapter_config.json this reader uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: TargetModules,
    /// Scale by alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    pub base_model_name_or_path: Option<String>,
    /// Per-module ranks by key pattern, in file order.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alphas by key pattern, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
}

impl LoraConfig {
    /// Reads an adapter_config.json; rejects anything but a plain LoRA adapter of linears.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| AdapterError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|error| AdapterError::Json {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_json(path, &value)
    }

    /// Interprets parsed adapter_config.json content; `path` is only used in error messages.
    pub fn from_json(path: &Path, value: &Value) -> Result<Self> {
        let err = |field: &str, expected: String| AdapterError::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            expected,
        };
        let map = value
            .as_object()
            .ok_or_else(|| err("<root>", "a JSON object".into()))?;
        let get = |key: &str| map.get(key).filter(|v| !v.is_null());
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => {
                let found = other.map_or("nothing".to_string(), |t| format!("\"{t}\""));
                return Err(err("peft_type", format!("\"LORA\", found {found}")));
            }
        }
        let r = get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| err("r", "a positive integer".into()))? as usize;
        let lora_alpha = match get("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("lora_alpha", "a number".into()))?,
        };
        let target_modules = match get("target_modules") {
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(items)) => TargetModules::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| err("target_modules", "a list of module names".into()))?,
            ),
            _ => {
                return Err(err(
                    "target_modules",
                    "a list of module names or a regex string".into(),
                ))
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match get(key) {
                None => Ok(false),
                Some(v) => v.as_bool().ok_or_else(|| err(key, "true or false".into())),
            }
        };
        let use_rslora = flag("use_rslora")?;
        for (key, why) in [
            (
                "use_dora",
                "DoRA adapters are not supported (only plain LoRA)",
            ),
            (
                "fan_in_fan_out",
                "false (true is for GPT-2 style Conv1D layers, not Llama-family linears)",
            ),
        ] {
            if flag(key)? {
                return Err(err(key, why.into()));
            }
        }
        if let Some(bias) = get("bias").and_then(Value::as_str).filter(|b| *b != "none") {
            return Err(err(
                "bias",
                format!("\"none\" (adapter biases are not supported), found \"{bias}\""),
            ));
        }
        if let Some(Value::Array(modules)) = get("modules_to_save") {
            if !modules.is_empty() {
                return Err(err(
                    "modules_to_save",
                    format!(
                        "empty: fully trained modules cannot be an ONNX adapter, found {}",
                        Value::Array(modules.clone())
                    ),
                ));
            }
        }
        let rank_pattern = patterns(map, "rank_pattern", |v| {
            v.as_u64().filter(|&r| r > 0).map(|r| r as usize)
        })
        .map_err(|field| err(&field, "positive integer ranks".into()))?;
        let alpha_pattern = patterns(map, "alpha_pattern", Value::as_f64)
            .map_err(|field| err(&field, "numbers".into()))?;
        for key in rank_pattern
            .iter()
            .map(|p| &p.0)
            .chain(alpha_pattern.iter().map(|p| &p.0))
        {
            pattern_regex(key).map_err(|e| {
                err(
                    "rank_pattern/alpha_pattern",
                    format!("a valid regex for `{key}`: {e}"),
                )
            })?;
        }
        if let TargetModules::Regex(re) = &target_modules {
            Regex::new(re).map_err(|e| err("target_modules", format!("a valid regex: {e}")))?;
        }
        Ok(LoraConfig {
            r,
            lora_alpha,
            target_modules,
            use_rslora,
            base_model_name_or_path: get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            rank_pattern,
            alpha_pattern,
        })
    }

    /// The rank PEFT gives a module: its rank_pattern entry, else `r`.
    pub fn rank_for(&self, key: &str) -> usize {
        pattern_value(&self.rank_pattern, key).unwrap_or(self.r)
    }

    /// The scale PEFT applies to `B·A` of a module: alpha / r, or alpha / sqrt(r) with rslora.
    pub fn scale_for(&self, key: &str) -> f64 {
        let alpha = pattern_value(&self.alpha_pattern, key).unwrap_or(self.lora_alpha);
        let r = self.rank_for(key) as f64;
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Whether `target_modules` selects a module key, as PEFT decides.
    pub fn targets(&self, key: &str) -> bool {
        match &self.target_modules {
            TargetModules::Names(names) => names
                .iter()
                .any(|t| t == "all-linear" || key == t || key.ends_with(&format!(".{t}"))),
            TargetModules::Regex(re) => {
                Regex::new(&format!("^(?:{re})$")).is_ok_and(|re| re.is_match(key))
            }
        }
    }
}

fn patterns<T>(
    map: &Map<String, Value>,
    field: &str,
    parse: impl Fn(&Value) -> Option<T>,
) -> std::result::Result<Vec<(String, T)>, String> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(entries)) => entries
            .iter()
            .map(|(k, v)| {
                parse(v)
                    .map(|v| (k.clone(), v))
                    .ok_or_else(|| format!("{field}.{k}"))
            })
            .collect(),
        Some(_) => Err(field.to_string()),
    }
}

/// PEFT's `get_pattern_key`: `re.match(rf"(.*\.)?({key})$", module_key)`.
fn pattern_regex(key: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(.*\.)?({key})$"))
}

fn pattern_value<T: Copy>(patterns: &[(String, T)], key: &str) -> Option<T> {
    patterns
        .iter()
        .find(|(p, _)| pattern_regex(p).is_ok_and(|re| re.is_match(key)))
        .map(|(_, v)| *v)
}

/// The LoRA weights of one adapted linear, as PEFT stores them (row-major f32).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    pub module: LoraModule,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// lora_A: [rank, in_features].
    pub a: Vec<f32>,
    /// lora_B: [out_features, rank].
    pub b: Vec<f32>,
    /// alpha / rank (or alpha / sqrt(rank)): the LoRA output is `scale · B·A·x`.
    pub scale: f32,
}

impl LoraWeights {
    /// The same linear at a larger rank, mathematically equal: lora_A gets zero rows and lora_B zero columns, the
    /// scale stays. ONNX Runtime binds the symbolic `lora_r` once per run, so every module of one adapter file must
    /// share a rank; adapters with a rank_pattern are padded to their largest rank.
    pub fn padded(&self, rank: usize) -> LoraWeights {
        if rank <= self.rank {
            return self.clone();
        }
        let mut a = self.a.clone();
        a.resize(rank * self.in_features, 0.0);
        let mut b = vec![0.0; self.out_features * rank];
        for (row, old) in b.chunks_exact_mut(rank).zip(self.b.chunks_exact(self.rank)) {
            row[..self.rank].copy_from_slice(old);
        }
        LoraWeights {
            rank,
            a,
            b,
            ..self.clone()
        }
    }

    /// The weights of the unfused projections of a fused one: each gets the whole lora_A and its `rows` of lora_B
    /// (ranges within `0..out_features`).
    pub fn split_rows(&self, parts: &[(Projection, std::ops::Range<usize>)]) -> Vec<LoraWeights> {
        parts
            .iter()
            .map(|(projection, rows)| LoraWeights {
                module: LoraModule {
                    layer: self.module.layer,
                    projection: *projection,
                },
                out_features: rows.len(),
                b: self.b[rows.start * self.rank..rows.end * self.rank].to_vec(),
                ..self.clone()
            })
            .collect()
    }
}

/// A PEFT LoRA adapter folder, read whole (adapters are small).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    folder: PathBuf,
    config: LoraConfig,
    /// Sorted by module.
    weights: Vec<LoraWeights>,
}

impl LoraAdapter {
    /// Reads adapter_config.json and adapter_model.safetensors, checking that each module has a lora_A [r, in] and
    /// a lora_B [out, r] of the rank the config gives it.
    pub fn open(folder: &Path) -> Result<Self> {
        if !folder.is_dir() {
            return Err(AdapterError::Io {
                path: folder.to_path_buf(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "adapter folder not found",
                ),
            });
        }
        let config = LoraConfig::from_file(&folder.join(CONFIG_FILE))?;
        let path = folder.join(WEIGHTS_FILE);
        if !path.is_file() {
            let reason = if folder.join(WEIGHTS_FILE_BIN).is_file() {
                format!("only {WEIGHTS_FILE_BIN} found: pickled weights are not read; save the adapter with \
                         safe_serialization=True (PEFT's default) to get {WEIGHTS_FILE}")
            } else {
                format!("no {WEIGHTS_FILE} in the adapter folder")
            };
            return Err(AdapterError::Weights { path, reason });
        }
        let bytes = std::fs::read(&path).map_err(|error| AdapterError::Io {
            path: path.clone(),
            error,
        })?;
        let weights = read_weights(&path, &bytes, &config)?;
        Ok(LoraAdapter {
            folder: folder.to_path_buf(),
            config,
            weights,
        })
    }

    pub fn folder(&self) -> &Path {
        &self.folder
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The adapted linears as stored (Phi-3's fused ones fused), sorted by layer and projection.
    pub fn weights(&self) -> &[LoraWeights] {
        &self.weights
    }

    /// Checks the adapter against a base model: every target module and adapted module exists in the
    /// architecture, and every lora_A / lora_B fits the linear's in/out features.
    pub fn check(&self, model: &ModelConfig) -> Result<()> {
        let arch = model.architecture;
        let known = Projection::of(arch);
        let known_names = || {
            known
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let keys: Vec<String> = (0..model.num_hidden_layers)
            .flat_map(|layer| {
                known
                    .iter()
                    .map(move |&projection| LoraModule { layer, projection }.hf_key())
            })
            .collect();
        let config_path = self.folder.join(CONFIG_FILE);
        match &self.config.target_modules {
            TargetModules::Names(names) => {
                for name in names.iter().filter(|n| *n != "all-linear") {
                    if !keys
                        .iter()
                        .any(|k| k == name || k.ends_with(&format!(".{name}")))
                    {
                        return Err(AdapterError::Module {
                            path: config_path,
                            module: name.clone(),
                            reason: format!(
                                "target_modules names a module that {} models lack (their linears: {})",
                                arch.model_type(),
                                known_names()
                            ),
                        });
                    }
                }
            }
            TargetModules::Regex(re) => {
                if !keys.iter().any(|k| self.config.targets(k)) {
                    return Err(AdapterError::Module {
                        path: config_path,
                        module: re.clone(),
                        reason: format!(
                            "the target_modules regex matches no linear of this {} model (its linears: {})",
                            arch.model_type(),
                            known_names()
                        ),
                    });
                }
            }
        }
        for w in &self.weights {
            let module_error = |reason: String| AdapterError::Module {
                path: self.folder.join(WEIGHTS_FILE),
                module: w.module.hf_key(),
                reason,
            };
            if w.module.layer >= model.num_hidden_layers {
                return Err(module_error(format!(
                    "layer {} does not exist: the base model has {} layers",
                    w.module.layer, model.num_hidden_layers
                )));
            }
            if !known.contains(&w.module.projection) {
                return Err(module_error(format!(
                    "{} models have no {} (their linears: {})",
                    arch.model_type(),
                    w.module.projection.name(),
                    known_names()
                )));
            }
            let (in_f, out_f) = w.module.projection.features(model);
            if (w.in_features, w.out_features) != (in_f, out_f) {
                return Err(module_error(format!(
                    "lora_A is [{r}, {}] and lora_B [{}, {r}], expected lora_A [{r}, {in_f}] and lora_B [{out_f}, {r}] \
                     for this base model (hidden_size {}, intermediate_size {}, {} heads / {} kv heads of {}): \
                     the adapter was trained for another base model",
                    w.in_features,
                    w.out_features,
                    model.hidden_size,
                    model.intermediate_size,
                    model.num_attention_heads,
                    model.num_key_value_heads,
                    model.head_dim,
                    r = w.rank,
                )));
            }
        }
        Ok(())
    }

    /// Checks the adapter against a base model, then lays it out per unfused linear: Phi-3's qkv_proj becomes
    /// q_proj, k_proj, v_proj and gate_up_proj becomes gate_proj, up_proj, each with the whole lora_A and its rows
    /// of lora_B (onnxruntime-genai's builder unpacks fused linears that carry LoRA the same way).
    pub fn unfused(&self, model: &ModelConfig) -> Result<Vec<LoraWeights>> {
        self.check(model)?;
        let mut out = Vec::with_capacity(self.weights.len());
        for w in &self.weights {
            match w.module.projection.split(model) {
                None => out.push(w.clone()),
                Some(parts) => out.extend(w.split_rows(&parts)),
            }
        }
        out.sort_by_key(|w| w.module);
        Ok(out)
    }
}

/// Which of the two LoRA matrices a tensor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    A,
    B,
}

/// Parses `base_model.model.model.layers.L.<block>.<proj>.lora_{A,B}[.<adapter>].weight`.
fn parse_name(name: &str) -> std::result::Result<(LoraModule, Side), String> {
    let rest = name.strip_prefix("base_model.model.").ok_or_else(|| {
        "not a PEFT adapter tensor (names start with `base_model.model.`)".to_string()
    })?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.iter().any(|p| p.starts_with("lora_embedding")) {
        return Err(
            "embedding adapters are not supported (only linears of the decoder layers)".into(),
        );
    }
    if parts.contains(&"lora_magnitude_vector") {
        return Err("DoRA magnitude vectors are not supported (only plain LoRA)".into());
    }
    let side_at = parts.iter().position(|p| *p == "lora_A" || *p == "lora_B").ok_or_else(|| {
        "not a lora_A / lora_B weight: modules_to_save and other fully trained weights are not supported".to_string()
    })?;
    let side = if parts[side_at] == "lora_A" {
        Side::A
    } else {
        Side::B
    };
    let suffix = &parts[side_at + 1..];
    if !(suffix == ["weight"] || suffix.len() == 2 && suffix[1] == "weight") {
        return Err("expected a `.weight` (LoRA biases are not supported)".into());
    }
    match &parts[..side_at] {
        ["model", "layers", layer, block, proj] => {
            let layer = layer
                .parse()
                .map_err(|_| format!("`{layer}` is not a layer index"))?;
            let projection = Projection::parse(block, proj).ok_or_else(|| {
                format!(
                    "`{block}.{proj}` is not a linear LoRA can adapt here (attention: q_proj, k_proj, v_proj, \
                     qkv_proj, o_proj; mlp: gate_proj, up_proj, gate_up_proj, down_proj)"
                )
            })?;
            Ok((LoraModule { layer, projection }, side))
        }
        _ => {
            Err("not a linear of a decoder layer (`model.layers.N.<self_attn|mlp>.<proj>`)".into())
        }
    }
}

type Pair = (
    Option<(Vec<usize>, Vec<f32>)>,
    Option<(Vec<usize>, Vec<f32>)>,
);

fn read_weights(path: &Path, bytes: &[u8], config: &LoraConfig) -> Result<Vec<LoraWeights>> {
    let weights_error = |reason: String| AdapterError::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let tensors = SafeTensors::deserialize(bytes)
        .map_err(|e| weights_error(format!("invalid safetensors file: {e}")))?;
    let mut pairs: BTreeMap<LoraModule, Pair> = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        let (module, side) = parse_name(&name)
            .map_err(|reason| weights_error(format!("tensor `{name}`: {reason}")))?;
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            weights_error(format!(
                "tensor `{name}`: dtype {:?}, expected F32, F16 or BF16",
                view.dtype()
            ))
        })?;
        if view.shape().len() != 2 {
            return Err(weights_error(format!(
                "tensor `{name}`: shape {:?}, expected 2 dimensions",
                view.shape()
            )));
        }
        let entry = pairs.entry(module).or_default();
        let slot = if side == Side::A {
            &mut entry.0
        } else {
            &mut entry.1
        };
        if slot.is_some() {
            return Err(weights_error(format!(
                "tensor `{name}`: a second weight for the same module"
            )));
        }
        *slot = Some((view.shape().to_vec(), data));
    }
    if pairs.is_empty() {
        return Err(weights_error("no LoRA weights in the file".into()));
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (module, pair) in pairs {
        let key = module.hf_key();
        let module_error = |reason: String| AdapterError::Module {
            path: path.to_path_buf(),
            module: key.clone(),
            reason,
        };
        let ((a_shape, a), (b_shape, b)) = match pair {
            (Some(a), Some(b)) => (a, b),
            (a, _) => {
                let missing = if a.is_none() { "lora_A" } else { "lora_B" };
                return Err(module_error(format!("has no {missing}.weight")));
            }
        };
        let rank = config.rank_for(&key);
        if a_shape[0] != rank || b_shape[1] != rank {
            return Err(module_error(format!(
                "rank mismatch: lora_A is {a_shape:?} and lora_B {b_shape:?}, expected rank {rank} from {CONFIG_FILE} \
                 (lora_A [{rank}, in], lora_B [out, {rank}])"
            )));
        }
        if !config.targets(&key) {
            return Err(module_error(format!(
                "has weights but is not selected by target_modules {:?} of {CONFIG_FILE}",
                config.target_modules
            )));
        }
        out.push(LoraWeights {
            module,
            rank,
            in_features: a_shape[1],
            out_features: b_shape[0],
            a,
            b,
            scale: config.scale_for(&key) as f32,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
