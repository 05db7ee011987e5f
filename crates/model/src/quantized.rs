//! Pre-quantized Hugging Face checkpoints: `quantization_config` in config.json and the per-linear tensors of
//! AutoAWQ's GEMM layout (`quant_method: "awq"`, `version: "gemm"`; AutoAWQ `awq/utils/packing_utils.py`,
//! `awq/modules/linear/gemm.py`) and the GPTQ v1 layout (`quant_method: "gptq"`, `checkpoint_format: "gptq"`;
//! AutoGPTQ `QuantLinear.pack`, what transformers' gptq integration loads), read and written.
//!
//! Layouts, for a linear with K = in_features, N = out_features, G = ceil(K / group_size) groups:
//! - AWQ GEMM (bits 4): `qweight` int32 [K, N/8], `qzeros` int32 [G, N/8], `scales` fp16 [G, N]. Word `c` of a
//!   row holds columns 8c..8c+7; nibble `i` (bits 4i..4i+3) holds column 8c + [0, 2, 4, 6, 1, 3, 5, 7][i].
//!   w[o, i] = (q - z) · s with the group of input i = i / group_size. AutoAWQ sizes scales as K / group_size
//!   rows, so the writer refuses a ragged last group; the reader accepts ceil(K / group_size) rows.
//! - GPTQ v1 (bits 2, 3, 4, 8): `qweight` int32 [K·bits/32, N], packed along the input dim as one little-endian
//!   bit stream per column (input i at stream bits i·bits..; for 2/4/8 word r holds inputs r·32/bits..,
//!   lowest bits first; for 3, AutoGPTQ's `QuantLinear.pack` puts 32 inputs into 3 words, values 10 and 21
//!   straddling word boundaries); `qzeros` int32 [G, N·bits/32] packed along the output dim the same way, storing
//!   zero − 1 (v1's off-by-one; `checkpoint_format: "gptq_v2"` stores the zero itself);
//!   `scales` fp16 [G, N]; `g_idx` int32 [K] (group of each input; act-order permutes it).
//!   w[o, i] = (q[i, o] − (z[g_idx[i], o] + 1)) · s[g_idx[i], o]. G = ceil(K / group_size) (AutoGPTQ sizes it
//!   with math.ceil), so a ragged last group is stored as is; group_size −1 means one group of K.
//! - Olive (`quant_method: "olive"`, olive-ai 0.13 `olive/common/quant/nn.py` QuantLinear and `utils.py`
//!   pack_to_uint8, bits 2, 4 or 8): `qweight` uint8 [N, ceil(K·bits/8)] packed along the INPUT dim, lowest bits
//!   first (byte j of row o holds inputs j·8/bits.., element t at bits t·bits; the last byte zero-padded);
//!   `qzeros` uint8 [N, ceil(G·bits/8)] packed the same way along the groups, the zero point itself (no − 1),
//!   absent when `symmetric` (zero 2^(bits−1)); `scales` [N, G] in the model dtype; no g_idx.
//!   w[o, i] = (q[o, i] − z[o, i / group_size]) · s[o, i / group_size]. Config keys `bits`, `symmetric`,
//!   `group_size` (or `block_size`; −1 per channel, 0 per tensor: refused) and per-module `overrides` of those
//!   three; `embeds: true`: `model.embed_tokens` is stored the same way ([vocab, hidden] as [out, in], Olive's
//!   QuantEmbedding shares QuantLinear's QuantModule) and read like a linear. Olive requires the group to divide K, so
//!   K = G · group_size (per channel: K = 8/bits · qweight columns, the padding of an odd K cannot be told).

use std::path::Path;

use half::f16;
use rayon::prelude::*;
use safetensors::Dtype;
use serde_json::Value;

use crate::checkpoint::{to_f32, Checkpoint};
use crate::error::{ModelError, Result};

/// AutoAWQ's nibble order within an int32: nibble i holds column ORDER[i] of the 8.
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// The checkpoint layout named by `quantization_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantMethod {
    /// AutoAWQ GEMM packing.
    AwqGemm,
    /// GPTQ packing; `v2` stores zero points without v1's minus one.
    Gptq { v2: bool },
    /// Olive's QuantLinear: uint8 [out, in] packed along the input, zero points themselves, no g_idx.
    Olive,
}

/// Olive's per-module `overrides` entry: fields that differ from the defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModuleOverride {
    pub bits: Option<u8>,
    pub sym: Option<bool>,
    /// `Some(None)` overrides to per channel.
    pub group_size: Option<Option<usize>>,
}

/// `quantization_config` of config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizationConfig {
    pub method: QuantMethod,
    pub bits: u8,
    /// Inputs per group; `None` for one group per output channel (GPTQ's −1).
    pub group_size: Option<usize>,
    /// GPTQ act-order (g_idx permuted); false for AWQ.
    pub desc_act: bool,
    /// GPTQ `sym`; AWQ's `zero_point: false` also means symmetric.
    pub sym: bool,
    /// Module names left unquantized (`modules_to_not_convert`).
    pub modules_to_not_convert: Vec<String>,
    /// Olive's per-module overrides by full module name (`model.layers.0.mlp.down_proj`).
    pub overrides: Vec<(String, ModuleOverride)>,
}

impl QuantizationConfig {
    /// Reads `quantization_config` from the config.json at `path`; `Ok(None)` when it has none.
    pub fn from_config_json(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        match json.get("quantization_config") {
            None | Some(Value::Null) => Ok(None),
            Some(q) => Self::from_value(path, q).map(Some),
        }
    }

    /// Parses a `quantization_config` object; `path` names the file in errors.
    pub fn from_value(path: &Path, q: &Value) -> Result<Self> {
        let field = |name: &str, expected: &str| {
            ModelError::field(path, format!("quantization_config.{name}"), expected)
        };
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .ok_or_else(|| field("quant_method", "a string (awq or gptq)"))?;
        let int = |names: &[&str]| names.iter().find_map(|n| q.get(*n).and_then(Value::as_i64));
        let bits = int(&["bits", "w_bit"]).ok_or_else(|| field("bits", "an integer"))?;
        let group = int(&["group_size", "q_group_size", "block_size"]).unwrap_or(-1);
        let group_size = group_size_of(group).ok_or_else(|| {
            field(
                "group_size",
                "a positive integer or -1 (per channel; per tensor 0 is not read)",
            )
        })?;
        let flag =
            |name: &str, default: bool| q.get(name).and_then(Value::as_bool).unwrap_or(default);
        let modules_to_not_convert = q
            .get("modules_to_not_convert")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let (method, sym, desc_act, allowed): (_, _, _, &[i64]) = match method {
            "awq" => {
                let version = q.get("version").and_then(Value::as_str).unwrap_or("gemm");
                if !version.eq_ignore_ascii_case("gemm") {
                    return Err(field(
                        "version",
                        "\"gemm\" (AutoAWQ's GEMM packing; gemv/exllama/marlin are not read)",
                    ));
                }
                (QuantMethod::AwqGemm, !flag("zero_point", true), false, &[4])
            }
            "olive" => (
                QuantMethod::Olive,
                flag("symmetric", true),
                false,
                &[2, 4, 8],
            ),
            "gptq" => {
                let format = q
                    .get("checkpoint_format")
                    .and_then(Value::as_str)
                    .unwrap_or("gptq");
                let v2 = match format {
                    "gptq" => false,
                    "gptq_v2" => true,
                    _ => return Err(field("checkpoint_format", "\"gptq\" or \"gptq_v2\"")),
                };
                (
                    QuantMethod::Gptq { v2 },
                    flag("sym", true),
                    flag("desc_act", false),
                    &[2, 3, 4, 8],
                )
            }
            other => {
                return Err(field(
                    "quant_method",
                    &format!("\"awq\", \"gptq\" or \"olive\", not \"{other}\""),
                ))
            }
        };
        if !allowed.contains(&bits) {
            return Err(field(
                "bits",
                &format!("one of {allowed:?} for {method:?}, not {bits}"),
            ));
        }
        if method == QuantMethod::AwqGemm && group_size.is_none() {
            return Err(field(
                "group_size",
                "a positive group size (AWQ has no per-channel -1)",
            ));
        }
        let mut overrides = Vec::new();
        if let Some(map) = q.get("overrides").and_then(Value::as_object) {
            for (module, o) in map {
                let name = format!("overrides.{module}");
                let bits = match o.get("bits").and_then(Value::as_i64) {
                    None => None,
                    Some(b @ (2 | 4 | 8)) => Some(b as u8),
                    Some(b) => return Err(field(&name, &format!("bits 2, 4 or 8, not {b}"))),
                };
                let group = o.get("block_size").or_else(|| o.get("group_size"));
                let group_size = match group.and_then(Value::as_i64) {
                    None => None,
                    Some(g) => Some(group_size_of(g).ok_or_else(|| {
                        field(&name, "a block size > 0 or -1 (per tensor 0 is not read)")
                    })?),
                };
                let sym = o.get("symmetric").and_then(Value::as_bool);
                overrides.push((
                    module.clone(),
                    ModuleOverride {
                        bits,
                        sym,
                        group_size,
                    },
                ));
            }
        }
        Ok(QuantizationConfig {
            method,
            bits: bits as u8,
            group_size,
            desc_act,
            sym,
            modules_to_not_convert,
            overrides,
        })
    }

    /// The settings of the module `prefix` (Olive's `overrides` applied).
    pub fn for_module(&self, prefix: &str) -> QuantizationConfig {
        let mut cfg = self.clone();
        if let Some((_, o)) = self.overrides.iter().find(|(m, _)| m == prefix) {
            cfg.bits = o.bits.unwrap_or(cfg.bits);
            cfg.sym = o.sym.unwrap_or(cfg.sym);
            cfg.group_size = o.group_size.unwrap_or(cfg.group_size);
        }
        cfg
    }
}

/// A config's group size: −1 → per channel (`Some(None)`), > 0 → `Some(Some(g))`, else `None`.
fn group_size_of(g: i64) -> Option<Option<usize>> {
    match g {
        -1 => Some(None),
        g if g > 0 => Some(Some(g as usize)),
        _ => None,
    }
}

/// One quantized linear, unpacked: w[o, i] = (q[o, i] − zeros[o, g(i)]) · scales[o, g(i)], g(i) = g_idx[i]
/// or i / group_size.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedLinear {
    pub bits: u8,
    /// Inputs per group (K for per-channel); the last group may be shorter.
    pub group_size: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// Integer levels < 2^bits: [out, in].
    pub q: Vec<u8>,
    /// [out, groups].
    pub scales: Vec<f32>,
    /// Zero points: [out, groups] (GPTQ v1's stored 2^bits − 1 reads back as 2^bits).
    pub zeros: Vec<u8>,
    /// Group of each input when it is not i / group_size (act-order); `None` when trivial.
    pub g_idx: Option<Vec<u32>>,
}

/// A tensor to write into a safetensors file: name suffix (`qweight`, ...), dtype, shape, little-endian bytes.
pub type PackedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

impl QuantizedLinear {
    /// ceil(in / group_size).
    pub fn n_groups(&self) -> usize {
        self.in_features.div_ceil(self.group_size)
    }

    /// Group of input `i`.
    pub fn group_of(&self, i: usize) -> usize {
        self.g_idx
            .as_ref()
            .map_or(i / self.group_size, |g| g[i] as usize)
    }

    /// Float weight: [out, in].
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out_features * self.in_features];
        self.dequantize_into(&mut w);
        w
    }

    /// [`QuantizedLinear::dequantize`] into `w` ([out, in]), rows in parallel.
    pub fn dequantize_into(&self, w: &mut [f32]) {
        let (k, groups) = (self.in_features, self.n_groups());
        let group: Vec<usize> = (0..k).map(|i| self.group_of(i)).collect();
        w.par_chunks_mut(k)
            .zip(self.q.par_chunks(k))
            .zip(self.scales.par_chunks(groups))
            .zip(self.zeros.par_chunks(groups))
            .for_each(|(((w, q), scales), zeros)| {
                for ((w, &q), &g) in w.iter_mut().zip(q).zip(&group) {
                    *w = (f32::from(q) - f32::from(zeros[g])) * scales[g];
                }
            });
    }

    /// Rows `start..end` of the output dim (a fused qkv or gate_up split).
    pub fn rows(&self, start: usize, end: usize) -> QuantizedLinear {
        let (k, groups) = (self.in_features, self.n_groups());
        QuantizedLinear {
            out_features: end - start,
            q: self.q[start * k..end * k].to_vec(),
            scales: self.scales[start * groups..end * groups].to_vec(),
            zeros: self.zeros[start * groups..end * groups].to_vec(),
            g_idx: self.g_idx.clone(),
            ..*self
        }
    }

    /// Stacks linears over the output dim (q, k, v into qkv); `None` when their bits, groups or inputs differ.
    pub fn concat(parts: &[QuantizedLinear]) -> Option<QuantizedLinear> {
        let first = parts.first()?;
        let same = parts.iter().all(|p| {
            p.bits == first.bits
                && p.group_size == first.group_size
                && p.in_features == first.in_features
                && p.g_idx == first.g_idx
        });
        same.then(|| QuantizedLinear {
            out_features: parts.iter().map(|p| p.out_features).sum(),
            q: parts.iter().flat_map(|p| p.q.iter().copied()).collect(),
            scales: parts
                .iter()
                .flat_map(|p| p.scales.iter().copied())
                .collect(),
            zeros: parts.iter().flat_map(|p| p.zeros.iter().copied()).collect(),
            g_idx: first.g_idx.clone(),
            ..*first
        })
    }

    fn check_levels(&self) -> std::result::Result<(), String> {
        let max = 1u16 << self.bits;
        if let Some(v) = self.q.par_iter().find_any(|&&v| u16::from(v) >= max) {
            return Err(format!("level {v} does not fit {} bits", self.bits));
        }
        Ok(())
    }
}

/// Whether the checkpoint holds `<prefix>.qweight` (a quantized linear).
pub fn is_quantized(ckpt: &Checkpoint, prefix: &str) -> bool {
    ckpt.contains(&format!("{prefix}.qweight"))
}

/// Reads and unpacks the quantized linear at `prefix` (e.g. `model.layers.0.self_attn.q_proj`).
pub fn quantized_linear(
    ckpt: &Checkpoint,
    prefix: &str,
    cfg: &QuantizationConfig,
) -> Result<QuantizedLinear> {
    let cfg = &cfg.for_module(prefix);
    match cfg.method {
        QuantMethod::AwqGemm => read_awq(ckpt, prefix, cfg),
        QuantMethod::Gptq { v2 } => read_gptq(ckpt, prefix, cfg, v2),
        QuantMethod::Olive => read_olive(ckpt, prefix, cfg),
    }
}

fn bad(ckpt: &Checkpoint, name: &str, reason: String) -> ModelError {
    ModelError::BadTensor {
        path: ckpt
            .file_of(name)
            .unwrap_or_else(|| ckpt.folder())
            .to_path_buf(),
        name: name.to_string(),
        reason,
    }
}

/// An int32 tensor of exactly `shape`, as u32 words.
fn words(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<u32>> {
    let raw = ckpt.raw(name)?;
    if raw.dtype != Dtype::I32 || raw.shape != shape {
        return Err(bad(
            ckpt,
            name,
            format!(
                "expected I32 {shape:?}, found {:?} {:?}",
                raw.dtype, raw.shape
            ),
        ));
    }
    Ok(raw
        .bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// A float tensor of exactly `shape`, as f32.
fn floats(ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let raw = ckpt.raw(name)?;
    if raw.shape != shape {
        return Err(bad(
            ckpt,
            name,
            format!("expected shape {shape:?}, found {:?}", raw.shape),
        ));
    }
    to_f32(raw.dtype, raw.bytes).ok_or_else(|| {
        bad(
            ckpt,
            name,
            format!("expected a float dtype (F16), found {:?}", raw.dtype),
        )
    })
}

fn read_awq(ckpt: &Checkpoint, prefix: &str, cfg: &QuantizationConfig) -> Result<QuantizedLinear> {
    let (qw_name, qz_name, s_name) = (
        format!("{prefix}.qweight"),
        format!("{prefix}.qzeros"),
        format!("{prefix}.scales"),
    );
    let raw = ckpt.raw(&qw_name)?;
    let [k, n8] = raw.shape[..] else {
        return Err(bad(
            ckpt,
            &qw_name,
            format!("expected 2 dims [in, out/8], found {:?}", raw.shape),
        ));
    };
    let n = n8 * 8;
    let group_size = cfg.group_size.unwrap_or(k);
    let groups = k.div_ceil(group_size);
    let qw = words(ckpt, &qw_name, &[k, n8])?;
    let scales_t = floats(ckpt, &s_name, &[groups, n])?;
    // AutoAWQ's GEMM modules always carry qzeros; without them (zero_point false) the zero point is 8
    let zeros_t = if cfg.sym && !ckpt.contains(&qz_name) {
        None
    } else {
        Some(words(ckpt, &qz_name, &[groups, n8])?)
    };
    let mut q = vec![0u8; n * k];
    for i in 0..k {
        for c in 0..n8 {
            let word = qw[i * n8 + c];
            for (nib, &col) in AWQ_ORDER.iter().enumerate() {
                q[(c * 8 + col) * k + i] = ((word >> (4 * nib)) & 0xF) as u8;
            }
        }
    }
    let mut scales = vec![0f32; n * groups];
    let mut zeros = vec![8u8; n * groups];
    for g in 0..groups {
        for o in 0..n {
            scales[o * groups + g] = scales_t[g * n + o];
        }
        if let Some(z) = &zeros_t {
            for c in 0..n8 {
                let word = z[g * n8 + c];
                for (nib, &col) in AWQ_ORDER.iter().enumerate() {
                    zeros[(c * 8 + col) * groups + g] = ((word >> (4 * nib)) & 0xF) as u8;
                }
            }
        }
    }
    Ok(QuantizedLinear {
        bits: 4,
        group_size,
        in_features: k,
        out_features: n,
        q,
        scales,
        zeros,
        g_idx: None,
    })
}

fn read_gptq(
    ckpt: &Checkpoint,
    prefix: &str,
    cfg: &QuantizationConfig,
    v2: bool,
) -> Result<QuantizedLinear> {
    let (qw_name, qz_name, s_name, g_name) = (
        format!("{prefix}.qweight"),
        format!("{prefix}.qzeros"),
        format!("{prefix}.scales"),
        format!("{prefix}.g_idx"),
    );
    let bits = usize::from(cfg.bits);
    let raw = ckpt.raw(&qw_name)?;
    let [kw, n] = raw.shape[..] else {
        return Err(bad(
            ckpt,
            &qw_name,
            format!("expected 2 dims [in*{bits}/32, out], found {:?}", raw.shape),
        ));
    };
    let k = kw * 32 / bits;
    if kw * 32 % bits != 0 || n * bits % 32 != 0 {
        return Err(bad(
            ckpt,
            &qw_name,
            format!(
                "[{kw}, {n}] does not hold whole {bits}-bit values: in*{bits}/32 rows and out*{bits} a multiple \
                 of 32 (qzeros packing) expected"
            ),
        ));
    }
    let group_size = cfg.group_size.unwrap_or(k);
    let groups = k.div_ceil(group_size);
    let qw = words(ckpt, &qw_name, &[kw, n])?;
    let zw = n * bits / 32;
    let qz = words(ckpt, &qz_name, &[groups, zw])?;
    let scales_t = floats(ckpt, &s_name, &[groups, n])?;
    let g_idx = if ckpt.contains(&g_name) {
        let g = words(ckpt, &g_name, &[k])?;
        if let Some((i, v)) = g.iter().enumerate().find(|(_, &v)| v as usize >= groups) {
            return Err(bad(
                ckpt,
                &g_name,
                format!("g_idx[{i}] = {v} is not below the {groups} groups"),
            ));
        }
        let trivial = g
            .iter()
            .enumerate()
            .all(|(i, &v)| v as usize == i / group_size);
        (!trivial).then_some(g)
    } else {
        None
    };
    // qweight is [kw, n]: column o's stream is qw[.., o]; transpose once so each column is contiguous.
    let mut q = vec![0u8; n * k];
    let mut column = vec![0u32; kw];
    for o in 0..n {
        for (r, c) in column.iter_mut().enumerate() {
            *c = qw[r * n + o];
        }
        unpack_stream(&column, bits, &mut q[o * k..(o + 1) * k]);
    }
    let offset = u32::from(!v2);
    let mut scales = vec![0f32; n * groups];
    let mut zeros = vec![0u8; n * groups];
    let mut row = vec![0u8; n];
    for g in 0..groups {
        unpack_stream(&qz[g * zw..(g + 1) * zw], bits, &mut row);
        for o in 0..n {
            scales[o * groups + g] = scales_t[g * n + o];
            let z = u32::from(row[o]) + offset;
            zeros[o * groups + g] = u8::try_from(z).map_err(|_| {
                bad(
                    ckpt,
                    &qz_name,
                    format!("zero point {z} (group {g}, output {o}) does not fit 8 bits"),
                )
            })?;
        }
    }
    Ok(QuantizedLinear {
        bits: cfg.bits,
        group_size,
        in_features: k,
        out_features: n,
        q,
        scales,
        zeros,
        g_idx,
    })
}

/// GPTQ's packing of `out.len()` values of `bits` bits from a little-endian stream of 32-bit words: value t
/// occupies stream bits t·bits.. (it may straddle two words, as 3-bit values 10 and 21 of every 3 words do).
pub fn unpack_stream(words: &[u32], bits: usize, out: &mut [u8]) {
    let mask = (1u64 << bits) - 1;
    for (t, v) in out.iter_mut().enumerate() {
        let (w, b) = ((t * bits) / 32, (t * bits) % 32);
        let lo = u64::from(words[w]);
        let hi = words.get(w + 1).map_or(0, |&x| u64::from(x));
        *v = (((lo | hi << 32) >> b) & mask) as u8;
    }
}

/// The inverse of [`unpack_stream`]: `values` (each < 2^bits) into `words` (zeroed by the caller, room for
/// ceil(len·bits / 32) words).
pub fn pack_stream(values: &[u8], bits: usize, words: &mut [u32]) {
    for (t, &v) in values.iter().enumerate() {
        let (w, b) = ((t * bits) / 32, (t * bits) % 32);
        let v = u64::from(v) << b;
        words[w] |= v as u32;
        if b + bits > 32 {
            words[w + 1] |= (v >> 32) as u32;
        }
    }
}

/// A uint8 tensor of exactly `shape`.
fn bytes_u8<'a>(ckpt: &'a Checkpoint, name: &str, shape: &[usize]) -> Result<&'a [u8]> {
    let raw = ckpt.raw(name)?;
    if raw.dtype != Dtype::U8 || raw.shape != shape {
        return Err(bad(
            ckpt,
            name,
            format!(
                "expected U8 {shape:?}, found {:?} {:?}",
                raw.dtype, raw.shape
            ),
        ));
    }
    Ok(raw.bytes)
}

/// Olive's pack_to_uint8 undone: `packed` [rows, ceil(cols·bits/8)] → levels [rows, cols].
fn unpack_u8(packed: &[u8], rows: usize, cols: usize, bits: usize) -> Vec<u8> {
    let per = 8 / bits;
    let width = cols.div_ceil(per);
    let mask = ((1u16 << bits) - 1) as u8;
    let mut out = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let byte = packed[r * width + c / per];
            out[r * cols + c] = (byte >> (bits * (c % per))) & mask;
        }
    }
    out
}

fn read_olive(
    ckpt: &Checkpoint,
    prefix: &str,
    cfg: &QuantizationConfig,
) -> Result<QuantizedLinear> {
    let (qw_name, qz_name, s_name) = (
        format!("{prefix}.qweight"),
        format!("{prefix}.qzeros"),
        format!("{prefix}.scales"),
    );
    let bits = usize::from(cfg.bits);
    let per = 8 / bits;
    let qw = ckpt.raw(&qw_name)?;
    let (qw_dtype, qw_shape) = (qw.dtype, qw.shape.to_vec());
    let (&[n, kp], Dtype::U8) = (&qw_shape[..], qw_dtype) else {
        return Err(bad(
            ckpt,
            &qw_name,
            format!(
                "expected U8 with 2 dims [out, ceil(in*{bits}/8)] (Olive's uint8 packing), found {qw_dtype:?} {qw_shape:?}"
            ),
        ));
    };
    let s_shape = ckpt.raw(&s_name)?.shape.to_vec();
    let [_, groups] = s_shape[..] else {
        return Err(bad(
            ckpt,
            &s_name,
            format!("expected 2 dims [out, groups], found {s_shape:?}"),
        ));
    };
    // [out, groups]
    let scales = floats(ckpt, &s_name, &[n, groups])?;
    let k = match cfg.group_size {
        Some(g) => g * groups,
        None if groups == 1 => kp * per,
        None => {
            return Err(bad(
                ckpt,
                &s_name,
                format!("per-channel quantization expects 1 group column, found {groups}"),
            ))
        }
    };
    // [out, in]
    let q = unpack_u8(bytes_u8(ckpt, &qw_name, &[n, k.div_ceil(per)])?, n, k, bits);
    // [out, groups]
    let zeros = if cfg.sym && !ckpt.contains(&qz_name) {
        vec![1u8 << (bits - 1); n * groups]
    } else {
        let packed = bytes_u8(ckpt, &qz_name, &[n, groups.div_ceil(per)])?;
        unpack_u8(packed, n, groups, bits)
    };
    Ok(QuantizedLinear {
        bits: cfg.bits,
        group_size: cfg.group_size.unwrap_or(k),
        in_features: k,
        out_features: n,
        q,
        scales,
        zeros,
        g_idx: None,
    })
}

/// Packing errors of the writers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// The linear does not fit the layout (bits, shapes, ragged group, zero point range, act-order).
    #[error("{layout}: {reason}")]
    Unsupported {
        layout: &'static str,
        reason: String,
    },
}

fn unsupported(layout: &'static str, reason: String) -> PackError {
    PackError::Unsupported { layout, reason }
}

fn i32_bytes(words: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(words.len() * 4);
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// scales [out, groups] f32 → fp16 [groups, out].
fn scales_f16(l: &QuantizedLinear) -> Vec<u8> {
    let (n, groups) = (l.out_features, l.n_groups());
    let mut out = Vec::with_capacity(n * groups * 2);
    for g in 0..groups {
        for o in 0..n {
            out.extend(f16::from_f32(l.scales[o * groups + g]).to_le_bytes());
        }
    }
    out
}

/// AutoAWQ GEMM tensors (`qweight`, `qzeros`, `scales`). Refuses bits ≠ 4, out % 8 ≠ 0, act-order and a
/// ragged last group (AutoAWQ and transformers size scales as in / group_size rows).
pub fn pack_awq_gemm(l: &QuantizedLinear) -> std::result::Result<Vec<PackedTensor>, PackError> {
    const L: &str = "AutoAWQ GEMM";
    let (k, n) = (l.in_features, l.out_features);
    if l.bits != 4 {
        return Err(unsupported(L, format!("bits must be 4, not {}", l.bits)));
    }
    if n % 8 != 0 {
        return Err(unsupported(
            L,
            format!("out_features {n} is not a multiple of 8"),
        ));
    }
    if k % l.group_size != 0 {
        return Err(unsupported(L, format!(
            "group size {} does not divide in_features {k}: AutoAWQ's layout has in/group scale rows and no ragged last group",
            l.group_size
        )));
    }
    if l.g_idx.is_some() {
        return Err(unsupported(
            L,
            "act-order (a permuted g_idx) has no AWQ layout".into(),
        ));
    }
    l.check_levels().map_err(|r| unsupported(L, r))?;
    if let Some(z) = l.zeros.iter().find(|&&z| z > 15) {
        return Err(unsupported(
            L,
            format!("zero point {z} does not fit 4 bits"),
        ));
    }
    let (n8, groups) = (n / 8, l.n_groups());
    let mut qw = vec![0u32; k * n8];
    qw.par_chunks_mut(n8).enumerate().for_each(|(i, row)| {
        for (c, word) in row.iter_mut().enumerate() {
            *word = AWQ_ORDER.iter().enumerate().fold(0, |w, (nib, &col)| {
                w | u32::from(l.q[(c * 8 + col) * k + i]) << (4 * nib)
            });
        }
    });
    let mut qz = vec![0u32; groups * n8];
    for g in 0..groups {
        for c in 0..n8 {
            qz[g * n8 + c] = AWQ_ORDER.iter().enumerate().fold(0, |w, (nib, &col)| {
                w | u32::from(l.zeros[(c * 8 + col) * groups + g]) << (4 * nib)
            });
        }
    }
    Ok(vec![
        ("qweight".into(), Dtype::I32, vec![k, n8], i32_bytes(&qw)),
        (
            "qzeros".into(),
            Dtype::I32,
            vec![groups, n8],
            i32_bytes(&qz),
        ),
        ("scales".into(), Dtype::F16, vec![groups, n], scales_f16(l)),
    ])
}

/// GPTQ v1 tensors (`qweight`, `qzeros` holding zero − 1, `scales`, `g_idx`). Bits 2, 3, 4, 8 (3 as AutoGPTQ's
/// straddling stream, [`pack_stream`]); in·bits and out·bits multiples of 32; a ragged last group is stored
/// (ceil groups); zero points must be ≥ 1 (v1 cannot store 0: zero − 1 would be −1).
pub fn pack_gptq_v1(l: &QuantizedLinear) -> std::result::Result<Vec<PackedTensor>, PackError> {
    const L: &str = "GPTQ v1";
    let (k, n, groups) = (l.in_features, l.out_features, l.n_groups());
    if ![2, 3, 4, 8].contains(&l.bits) {
        return Err(unsupported(
            L,
            format!("bits must be 2, 3, 4 or 8, not {}", l.bits),
        ));
    }
    let bits = usize::from(l.bits);
    if k * bits % 32 != 0 || n * bits % 32 != 0 {
        let per = 32 / gcd(32, bits);
        return Err(unsupported(
            L,
            format!(
                "in_features {k} and out_features {n} must be multiples of {per} at {bits} bits"
            ),
        ));
    }
    l.check_levels().map_err(|r| unsupported(L, r))?;
    if let Some(z) = l
        .zeros
        .iter()
        .find(|&&z| z == 0 || u16::from(z) > 1 << bits)
    {
        return Err(unsupported(
            L,
            format!("zero point {z} is outside 1..=2^bits (v1 stores zero - 1)"),
        ));
    }
    let (kw, zw) = (k * bits / 32, n * bits / 32);
    // qweight [kw, n]: column o is the stream of its inputs, packed per output row then transposed.
    let mut streams = vec![0u32; n * kw]; // [n, kw]
    streams
        .par_chunks_mut(kw)
        .zip(l.q.par_chunks(k))
        .for_each(|(stream, q)| pack_stream(q, bits, stream));
    let mut qw = vec![0u32; kw * n];
    qw.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
        for (o, word) in row.iter_mut().enumerate() {
            *word = streams[o * kw + r];
        }
    });
    let mask = (1u16 << bits) - 1;
    let mut qz = vec![0u32; groups * zw];
    let mut row = vec![0u8; n];
    for g in 0..groups {
        for (o, z) in row.iter_mut().enumerate() {
            *z = ((u16::from(l.zeros[o * groups + g]) - 1) & mask) as u8;
        }
        pack_stream(&row, bits, &mut qz[g * zw..(g + 1) * zw]);
    }
    let g_idx: Vec<u32> = (0..k).map(|i| l.group_of(i) as u32).collect();
    Ok(vec![
        ("qweight".into(), Dtype::I32, vec![kw, n], i32_bytes(&qw)),
        (
            "qzeros".into(),
            Dtype::I32,
            vec![groups, zw],
            i32_bytes(&qz),
        ),
        ("scales".into(), Dtype::F16, vec![groups, n], scales_f16(l)),
        ("g_idx".into(), Dtype::I32, vec![k], i32_bytes(&g_idx)),
    ])
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[path = "quantized/olive_pack.rs"]
mod olive_pack;
pub use olive_pack::pack_olive;

#[cfg(test)]
#[path = "quantized/tests.rs"]
mod tests;
