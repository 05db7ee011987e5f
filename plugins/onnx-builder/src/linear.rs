//! Linear layers as onnxruntime-genai's builder emits them (`make_matmul`, `make_matmul_lora`): MatMul with
//! the weight transposed to [in, out], an Add for a bias, and the LoRA branch (x·A·B, scale folded into B)
//! added to the base output. Every linear of the model goes through [`Linears::emit`]. With int4 the base
//! MatMul is a com.microsoft MatMulNBits (`make_matmul_int4`); LoRA MatMuls stay float. A linear already
//! quantized in the checkpoint (AWQ GEMM / GPTQ, `olive_model::quantized`) goes into MatMulNBits as it is
//! (`pack_prequantized`, block size a divisor of its group size), never dequantized and requantized; an act-order
//! one multiplies its input gathered into group order.

use std::collections::BTreeMap;

use olive_model::adapter::LoraWeights;
use olive_model::quantized::QuantizedLinear;
use olive_onnx::extract_adapters::{emit_lora, LoraBranch};
use olive_onnx::graph::{attr_int, GraphBuilder};
use olive_onnx::matmul_nbits::{block_size_for_group, pack_prequantized, quantize, NBitsConfig};
use olive_onnx::tensor::{float_bytes, transpose, DataType};
use olive_pass_sdk::Error;

/// One linear layer to emit.
#[derive(Debug)]
pub struct LinearSpec {
    /// ONNX basename, e.g. `/model/layers.0/attn/qkv_proj`; nodes are `<basename>/MatMul`, `<basename>/Add`.
    pub basename: String,
    /// weight: [out, in] (PyTorch's layout), already fused or split as the graph needs.
    pub weight: Weight,
    pub out_features: usize,
    pub in_features: usize,
    /// bias: [out].
    pub bias: Option<Vec<f32>>,
    /// Name of the last node's output, instead of `<node>/output_0` (`logits`).
    pub output: Option<String>,
}

/// A linear's weight as the checkpoint holds it.
#[derive(Debug, Clone)]
pub enum Weight {
    /// Float: [out, in].
    Float(Vec<f32>),
    /// Pre-quantized levels, scales and zero points (AWQ / GPTQ checkpoints).
    Quantized(QuantizedLinear),
    /// Pre-quantized parts stacked over the output dim that cannot share one MatMulNBits (act-order linears in
    /// different input orders, e.g. GPTQ's v_proj beside q/k): one MatMulNBits each, then a Concat.
    Parts(Vec<QuantizedLinear>),
}

impl Weight {
    /// Rows `start..end` of the output dim; `in_features` is the row length.
    pub fn rows(&self, start: usize, end: usize, in_features: usize) -> Weight {
        match self {
            Weight::Float(w) => Weight::Float(w[start * in_features..end * in_features].to_vec()),
            Weight::Quantized(q) => Weight::Quantized(q.rows(start, end)),
            Weight::Parts(parts) => {
                let mut first = 0;
                let mut taken = Vec::new();
                for p in parts {
                    let (lo, hi) = (start.max(first), end.min(first + p.out_features));
                    if lo < hi {
                        taken.push(Weight::Quantized(p.rows(lo - first, hi - first)));
                    }
                    first += p.out_features;
                }
                Weight::concat(taken)
            }
        }
    }

    /// Stacks weights over the output dim (q, k, v into qkv). Quantized parts stay one quantized weight when they
    /// share bits, groups and input order, else separate quantized parts; with a float part all become float.
    pub fn concat(parts: Vec<Weight>) -> Weight {
        if parts.iter().all(|p| !matches!(p, Weight::Float(_))) {
            let quantized: Vec<QuantizedLinear> = parts
                .into_iter()
                .flat_map(|p| match p {
                    Weight::Quantized(q) => vec![q],
                    Weight::Parts(ps) => ps,
                    Weight::Float(_) => Vec::new(),
                })
                .collect();
            return match QuantizedLinear::concat(&quantized) {
                Some(q) => Weight::Quantized(q),
                None => Weight::Parts(quantized),
            };
        }
        Weight::Float(parts.into_iter().flat_map(Weight::into_float).collect())
    }

    /// The float weight [out, in] (dequantized if quantized).
    pub fn into_float(self) -> Vec<f32> {
        match self {
            Weight::Float(w) => w,
            Weight::Quantized(q) => q.dequantize(),
            Weight::Parts(parts) => parts.iter().flat_map(QuantizedLinear::dequantize).collect(),
        }
    }
}

/// Emits linears in the model's float type.
#[derive(Debug)]
pub struct Linears {
    /// Type of float weights and activations.
    pub dtype: DataType,
    /// Block-wise quantization of the linears' weights (int4); `None` keeps them float.
    pub nbits: Option<NBitsConfig>,
    /// LoRA weights (PEFT layout, one rank) by ONNX module path (`model.layers.0.attn.q_proj`); empty without
    /// an adapter.
    pub lora: BTreeMap<String, LoraWeights>,
}

impl Linears {
    /// Emits `spec` on `input`: [batch, seq, in] → [batch, seq, out]; returns the output name.
    pub fn emit(
        &self,
        g: &mut GraphBuilder,
        spec: LinearSpec,
        input: &str,
    ) -> Result<String, Error> {
        let module = spec.basename.trim_start_matches('/').replace('/', ".");
        let lora = self.lora.get(&module);
        let last_is_matmul = spec.bias.is_none() && lora.is_none();
        let weight_name = format!("{module}.MatMul.weight");
        let nbits_out = match (&spec.weight, &self.nbits) {
            (Weight::Quantized(q), Some(cfg)) => {
                let node = format!("{}/MatMulNBits", spec.basename);
                Some(self.prequantized_matmul(g, q, cfg, &weight_name, &node, input)?)
            }
            (Weight::Parts(parts), Some(cfg)) => {
                let mut outs = Vec::with_capacity(parts.len());
                for (i, q) in parts.iter().enumerate() {
                    let name = format!("{module}.MatMul.{i}.weight");
                    let node = format!("{}/MatMulNBits_{i}", spec.basename);
                    outs.push(self.prequantized_matmul(g, q, cfg, &name, &node, input)?);
                }
                let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
                let node = format!("{}/Concat", spec.basename);
                Some(
                    g.node("", "Concat", &node, &outs, vec![attr_int("axis", -1)])
                        .map_err(failed)?,
                )
            }
            (Weight::Float(w), Some(cfg)) => {
                let q = quantize(w, spec.out_features, spec.in_features, cfg)
                    .map_err(|e| Error::Failed(format!("{weight_name}: {e}")))?;
                let node = format!("{}/MatMulNBits", spec.basename);
                Some(
                    q.add_to_graph(g, &weight_name, &node, input)
                        .map_err(failed)?,
                )
            }
            (_, None) => None,
        };
        let mut out = match nbits_out {
            Some(out) => match (&spec.output, last_is_matmul) {
                (Some(name), true) => {
                    let id = format!("{}/Identity", spec.basename);
                    g.node_outputs("", "Identity", &id, &[&out], &[name], vec![])
                        .map_err(failed)?;
                    name.clone()
                }
                _ => out,
            },
            None => {
                let matmul = format!("{}/MatMul", spec.basename);
                let weight = self.weight(
                    g,
                    &weight_name,
                    &transpose(
                        &spec.weight.clone().into_float(),
                        spec.out_features,
                        spec.in_features,
                    ),
                    &[spec.in_features as i64, spec.out_features as i64],
                )?;
                match (&spec.output, last_is_matmul) {
                    (Some(name), true) => {
                        g.node_outputs("", "MatMul", &matmul, &[input, &weight], &[name], vec![])
                            .map_err(failed)?;
                        name.clone()
                    }
                    _ => g
                        .node("", "MatMul", &matmul, &[input, &weight], vec![])
                        .map_err(failed)?,
                }
            }
        };
        if let Some(w) = lora {
            // LoRA in the activations' float type, between the base MatMul and the bias, as genai's make_matmul_lora.
            let branch = LoraBranch {
                path: &spec.basename,
                in_features: w.in_features,
                out_features: w.out_features,
                rank: w.rank,
                a: &w.a,
                b: &w.b,
                scale: w.scale,
            };
            out = emit_lora(g, &branch, self.dtype, input, &out).map_err(failed)?;
        }
        if let Some(bias) = &spec.bias {
            let b = self.weight(
                g,
                &format!("{module}.Add.bias"),
                bias,
                &[spec.out_features as i64],
            )?;
            let add = format!("{}/Add", spec.basename);
            out = match &spec.output {
                Some(name) => {
                    g.node_outputs("", "Add", &add, &[&out, &b], &[name], vec![])
                        .map_err(failed)?;
                    name.clone()
                }
                None => g
                    .node("", "Add", &add, &[&out, &b], vec![])
                    .map_err(failed)?,
            };
        }
        Ok(out)
    }

    /// A checkpoint's quantized linear as a MatMulNBits on `input` (gathered into group order for act-order, see
    /// [`in_group_order`]); returns its output.
    fn prequantized_matmul(
        &self,
        g: &mut GraphBuilder,
        q: &QuantizedLinear,
        cfg: &NBitsConfig,
        weight_name: &str,
        node: &str,
        input: &str,
    ) -> Result<String, Error> {
        if q.g_idx.is_none() {
            let w = prequantized(q, cfg, weight_name)?;
            return w.add_to_graph(g, weight_name, node, input).map_err(failed);
        }
        let (perm, sorted) = in_group_order(q, weight_name)?;
        let bytes: Vec<u8> = perm.iter().flat_map(|i| i.to_le_bytes()).collect();
        let indices = g
            .initializer(
                &format!("{weight_name}_perm"),
                DataType::Int64,
                &[perm.len() as i64],
                &bytes,
            )
            .map_err(failed)?;
        let gathered = g
            .node(
                "",
                "Gather",
                &format!("{node}/Gather"),
                &[input, &indices],
                vec![attr_int("axis", -1)],
            )
            .map_err(failed)?;
        let w = prequantized(&sorted, cfg, weight_name)?;
        w.add_to_graph(g, weight_name, node, &gathered)
            .map_err(failed)
    }

    /// A float initializer in the model's dtype.
    pub fn weight(
        &self,
        g: &mut GraphBuilder,
        name: &str,
        values: &[f32],
        dims: &[i64],
    ) -> Result<String, Error> {
        let bytes = float_bytes(values, self.dtype).ok_or_else(|| {
            Error::Failed(format!("{name}: {:?} is not a float type", self.dtype))
        })?;
        g.initializer(name, self.dtype, dims, &bytes)
            .map_err(failed)
    }
}

/// An act-order linear (GPTQ desc_act: a permuted g_idx) with its inputs in group order: the permutation (inputs
/// stably sorted by group, so group k holds positions k·group_size..) and the levels with their columns in that
/// order, which is the plain grouped layout MatMulNBits takes. The graph gathers the activations by the same
/// permutation, so x[perm] · W[:, perm]ᵀ is the checkpoint's product exactly — nothing is requantized, and
/// MatMulNBits' optional g_idx input (which onnxruntime-genai 0.5.2's ORT 1.20 may not run) stays off.
pub(crate) fn in_group_order(
    q: &QuantizedLinear,
    weight_name: &str,
) -> Result<(Vec<i64>, QuantizedLinear), Error> {
    let g_idx = q.g_idx.as_deref().unwrap_or_default();
    let mut perm: Vec<usize> = (0..q.in_features).collect();
    perm.sort_by_key(|&i| g_idx.get(i).copied().unwrap_or(u32::MAX));
    if let Some(j) =
        (0..perm.len()).find(|&j| g_idx.get(perm[j]).map(|&g| g as usize) != Some(j / q.group_size))
    {
        return Err(Error::UnsupportedModel(format!(
            "{weight_name}: its g_idx puts input {} in group {:?}, but in group order position {j} belongs to group \
             {} (groups of {} inputs): not a GPTQ act-order permutation",
            perm[j],
            g_idx.get(perm[j]),
            j / q.group_size,
            q.group_size
        )));
    }
    let mut sorted = q.clone();
    for (row, src) in sorted
        .q
        .chunks_exact_mut(q.in_features)
        .zip(q.q.chunks_exact(q.in_features))
    {
        for (dst, &i) in row.iter_mut().zip(&perm) {
            *dst = src[i];
        }
    }
    sorted.g_idx = None;
    Ok((perm.iter().map(|&i| i as i64).collect(), sorted))
}

/// A checkpoint's quantized linear in MatMulNBits layout: its own levels, zero points kept (asymmetric), block
/// size the largest power of two ≤ the configured one dividing the group size. 2- and 3-bit levels go into a
/// 4-bit MatMulNBits unchanged (a level < 2^bits is a valid 4-bit level; the scales and zero points are the
/// same), since MatMulNBits takes 4 or 8 bits. Act-order linears come here in group order ([`in_group_order`]).
pub(crate) fn prequantized(
    q: &QuantizedLinear,
    cfg: &NBitsConfig,
    weight_name: &str,
) -> Result<olive_onnx::matmul_nbits::MatMulNBitsWeights, Error> {
    let bits = u32::from(q.bits.max(4));
    let max = (1u32 << bits) - 1;
    if let Some(z) = q.zeros.iter().find(|&&z| u32::from(z) > max) {
        return Err(Error::UnsupportedModel(format!(
            "{weight_name}: zero point {z} (GPTQ v1 stores 2^bits - 1 for it) does not fit the {bits}-bit zero \
             points of MatMulNBits",
        )));
    }
    let block = block_size_for_group(q.group_size, cfg.block_size.max(16)).ok_or_else(|| {
        Error::UnsupportedModel(format!(
            "{weight_name}: group size {} has no power-of-two block size >= 16 dividing it (MatMulNBits)",
            q.group_size
        ))
    })?;
    let cfg = NBitsConfig {
        bits,
        block_size: block,
        symmetric: false,
        ..*cfg
    };
    pack_prequantized(
        &q.q,
        &q.scales,
        Some(&q.zeros),
        q.out_features,
        q.in_features,
        q.group_size,
        &cfg,
    )
    .map_err(|e| Error::Failed(format!("{weight_name}: {e}")))
}

/// An ONNX writing error as a pass error.
pub fn failed(e: olive_onnx::error::OnnxError) -> Error {
    Error::Failed(e.to_string())
}
