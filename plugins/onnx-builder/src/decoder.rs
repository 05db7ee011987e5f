//! The decoder graph onnxruntime-genai's model builder writes for the Llama family (builders/base.py:
//! `make_model`, `make_layer`, `make_attention`, `make_mlp`, `make_rotary_embedding_caches`): Gather
//! embedding, the first RMSNorm in standard ops (so onnx.checker passes) and com.microsoft
//! SkipSimplifiedLayerNormalization after it, packed QKV into com.microsoft GroupQueryAttention with
//! rotary inside, SwiGLU as Sigmoid·Mul·Mul, lm_head MatMul. Phi-3's LongRoPE gets short and long cos/sin
//! caches chosen by an If on the total sequence length.

use std::cell::RefCell;
use std::collections::BTreeMap;

use olive_kernels::cpu::{matmul_strided, View};
use olive_model::adapter::LoraWeights;
use olive_model::quantized::{is_quantized, quantized_linear, QuantizationConfig};
use olive_model::{Architecture, Checkpoint, ModelConfig, RopeScaling};
use olive_nn::rope::Rope;
use olive_onnx::graph::{attr_float, attr_graph, attr_int, node, value_info, Dim, GraphBuilder};
use olive_onnx::proto::GraphProto;
use olive_onnx::tensor::DataType;
use olive_pass_sdk::{Context, Error};

use crate::linear::{failed, LinearSpec, Linears, Weight};

/// Opsets of the model (opset 21: ONNX Runtime 1.20, under onnxruntime-genai 0.5.2, runs it).
pub const OPSETS: &[(&str, i64)] = &[("", 21), ("com.microsoft", 1)];

/// Builds the whole decoder into `g`.
pub struct Decoder<'a> {
    pub config: &'a ModelConfig,
    /// The open checkpoint; reopened after each layer so the pages of layers already written leave memory.
    pub checkpoint: RefCell<Checkpoint>,
    pub linears: Linears,
    /// `quantization_config` of config.json: linears with `<prefix>.qweight` are read pre-quantized.
    pub quant: Option<QuantizationConfig>,
    /// LoRA weights added into the base weights as they are read (`merge_adapter`), by Hugging Face module path.
    pub merged: BTreeMap<String, LoraWeights>,
}

fn sym(s: &str) -> Dim {
    Dim::sym(s)
}

impl Decoder<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        Ok(self
            .checkpoint
            .borrow()
            .tensor_f32_shaped(name, shape)
            .map_err(|e| Error::UnsupportedModel(e.to_string()))?
            .data)
    }

    /// The weight of the linear at `prefix` (`model.layers.0.self_attn.q_proj`), [out, in] = `shape`: float
    /// from `<prefix>.weight`, or pre-quantized when the checkpoint holds `<prefix>.qweight`.
    fn linear_weight(&self, prefix: &str, shape: &[usize]) -> Result<Weight, Error> {
        let ckpt = self.checkpoint.borrow();
        match &self.quant {
            Some(cfg) if is_quantized(&ckpt, prefix) => {
                let q = quantized_linear(&ckpt, prefix, cfg)
                    .map_err(|e| Error::UnsupportedModel(e.to_string()))?;
                if [q.out_features, q.in_features] != shape {
                    return Err(Error::UnsupportedModel(format!(
                        "{prefix}.qweight: unpacks to [out, in] = [{}, {}], expected {shape:?} from config.json",
                        q.out_features, q.in_features
                    )));
                }
                match self.merged.get(prefix) {
                    // A merged adapter goes into the dequantized weights (a QLoRA adapter on its quantized base).
                    Some(lora) => {
                        let mut w = Weight::Quantized(q).into_float();
                        add_lora(&mut w, lora);
                        Ok(Weight::Float(w))
                    }
                    None => Ok(Weight::Quantized(q)),
                }
            }
            _ => {
                drop(ckpt);
                let mut w = self.tensor(&format!("{prefix}.weight"), shape)?;
                if let Some(lora) = self.merged.get(prefix) {
                    add_lora(&mut w, lora);
                }
                Ok(Weight::Float(w))
            }
        }
    }

    /// The embedding Gather on `input_ids`; returns its output [batch, seq, hidden]. A 4-bit quantized table
    /// (Olive's embeds) stays packed in a com.microsoft GatherBlockQuantized (uint4 data and zero points,
    /// block_size = its group; no `bits` attribute, which onnxruntime 1.20.1 rejects; 1.20.1 and 1.32 both run
    /// this form exactly); other quantized tables (2/8 bits, groups that are no power of two ≥ 16) are
    /// dequantized into a float Gather table.
    fn embedding(&self, g: &mut GraphBuilder, ctx: &Context<'_>) -> Result<String, Error> {
        let c = self.config;
        let (v, h) = (c.vocab_size, c.hidden_size);
        let embed = match self.linear_weight("model.embed_tokens", &[v, h])? {
            Weight::Float(w) => w,
            Weight::Quantized(q)
                if q.bits == 4
                    && q.g_idx.is_none()
                    && q.group_size >= 16
                    && q.group_size.is_power_of_two()
                    && h % q.group_size == 0 =>
            {
                let groups = q.n_groups();
                let w = g
                    .initializer(
                        "model.embed_tokens.qweight",
                        DataType::Uint4,
                        &[v as i64, h as i64],
                        &pack_u4(&q.q),
                    )
                    .map_err(failed)?;
                let scales = olive_onnx::tensor::float_bytes(&q.scales, self.dtype())
                    .ok_or_else(|| Error::Failed(format!("scales in {:?}", self.dtype())))?;
                let s = g
                    .initializer(
                        "model.embed_tokens.scales",
                        self.dtype(),
                        &[v as i64, groups as i64],
                        &scales,
                    )
                    .map_err(failed)?;
                let z = g
                    .initializer(
                        "model.embed_tokens.qzeros",
                        DataType::Uint4,
                        &[v as i64, groups as i64],
                        &pack_u4(&q.zeros),
                    )
                    .map_err(failed)?;
                ctx.info(&format!(
                    "model.embed_tokens: 4-bit quantized embeddings kept packed (GatherBlockQuantized, block {})",
                    q.group_size
                ));
                return g
                    .node(
                        "com.microsoft",
                        "GatherBlockQuantized",
                        "/model/embed_tokens/GatherBlockQuantized",
                        &[&w, "input_ids", &s, &z],
                        vec![
                            attr_int("block_size", q.group_size as i64),
                            attr_int("gather_axis", 0),
                            attr_int("quantize_axis", 1),
                        ],
                    )
                    .map_err(failed);
            }
            parts @ Weight::Parts(_) => parts.into_float(),
            Weight::Quantized(q) => {
                ctx.info(&format!(
                    "model.embed_tokens: {}-bit quantized embeddings (group {}) dequantized into the Gather table \
                     (GatherBlockQuantized takes 4 bits in power-of-two blocks >= 16)",
                    q.bits, q.group_size
                ));
                q.dequantize()
            }
        };
        let table = self.linears.weight(
            g,
            "model.embed_tokens.weight",
            &embed,
            &[v as i64, h as i64],
        )?;
        g.node(
            "",
            "Gather",
            "/model/embed_tokens/Gather",
            &[&table, "input_ids"],
            vec![],
        )
        .map_err(failed)
    }

    fn dtype(&self) -> DataType {
        self.linears.dtype
    }

    /// Emits inputs, outputs and all nodes.
    pub fn build(&self, g: &mut GraphBuilder, ctx: &Context<'_>) -> Result<(), Error> {
        let c = self.config;
        let dt = self.dtype();
        let (kv, hd) = (c.num_key_value_heads, c.head_dim);
        g.input(
            "input_ids",
            DataType::Int64,
            &[sym("batch_size"), sym("sequence_length")],
        );
        g.input(
            "attention_mask",
            DataType::Int64,
            &[sym("batch_size"), sym("total_sequence_length")],
        );
        for l in 0..c.num_hidden_layers {
            for kind in ["key", "value"] {
                g.input(
                    &format!("past_key_values.{l}.{kind}"),
                    dt,
                    &[
                        sym("batch_size"),
                        kv.into(),
                        sym("past_sequence_length"),
                        hd.into(),
                    ],
                );
            }
        }
        g.output(
            "logits",
            dt,
            &[
                sym("batch_size"),
                sym("sequence_length"),
                c.vocab_size.into(),
            ],
        );
        for l in 0..c.num_hidden_layers {
            for kind in ["key", "value"] {
                g.output(
                    &format!("present.{l}.{kind}"),
                    dt,
                    &[
                        sym("batch_size"),
                        kv.into(),
                        sym("total_sequence_length"),
                        hd.into(),
                    ],
                );
            }
        }

        let (seqlens_k, total_len, total_len_i64) = self.attention_mask_subgraph(g)?;
        let (cos, sin) = self.rotary_caches(g, &total_len_i64)?;

        // embeddings: [batch, seq, hidden]
        let mut hidden = self.embedding(g, ctx)?;
        let eps = attr_float("epsilon", c.rms_norm_eps as f32);
        let mut residual = String::new();
        for l in 0..c.num_hidden_layers {
            ctx.check_cancelled()?;
            let w = self.norm_weight(g, &format!("model.layers.{l}.input_layernorm.weight"))?;
            let base = format!("/model/layers.{l}/input_layernorm");
            let normed = if l == 0 {
                residual = hidden.clone();
                self.rms_norm(g, &base, &hidden, &w)?
            } else {
                let (normed, sum) = self.skip_norm(g, &base, &residual, &hidden, &w)?;
                residual = sum;
                normed
            };
            let attn = self.attention(g, l, &normed, &seqlens_k, &total_len, &cos, &sin)?;
            let w = self.norm_weight(
                g,
                &format!("model.layers.{l}.post_attention_layernorm.weight"),
            )?;
            let base = format!("/model/layers.{l}/post_attention_layernorm");
            let (normed, sum) = self.skip_norm(g, &base, &residual, &attn, &w)?;
            residual = sum;
            hidden = self.mlp(g, l, &normed)?;
            self.release_pages()?;
            ctx.progress(
                l as u64 + 1,
                c.num_hidden_layers as u64 + 1,
                &format!("layer {l}"),
            );
        }
        // final norm: [batch, seq, hidden], then lm_head → logits [batch, seq, vocab]
        let w = self.norm_weight(g, "model.norm.weight")?;
        let base = format!("/model/layers.{}/final_norm_layernorm", c.num_hidden_layers);
        let out = format!("{base}/output_0");
        g.node_outputs(
            "com.microsoft",
            "SkipSimplifiedLayerNormalization",
            &format!("{base}/SkipLayerNorm"),
            &[&residual, &hidden, &w],
            &[&out],
            vec![eps],
        )
        .map_err(failed)?;
        // tied: the embedding again (read anew rather than kept through every layer)
        let lm_head_name = if c.tie_word_embeddings {
            "model.embed_tokens"
        } else {
            "lm_head"
        };
        let lm_head = self.linear_weight(lm_head_name, &[c.vocab_size, c.hidden_size])?;
        let spec = LinearSpec {
            basename: "/lm_head".into(),
            weight: lm_head,
            out_features: c.vocab_size,
            in_features: c.hidden_size,
            bias: None,
            output: Some("logits".into()),
        };
        self.linears.emit(g, spec, &out)?;
        ctx.progress(
            c.num_hidden_layers as u64 + 1,
            c.num_hidden_layers as u64 + 1,
            "lm_head",
        );
        Ok(())
    }

    /// Reopens the checkpoint: unmapping it drops the pages read so far from this process's memory.
    fn release_pages(&self) -> Result<(), Error> {
        let folder = self.checkpoint.borrow().folder().to_path_buf();
        let fresh =
            Checkpoint::open(&folder).map_err(|e| Error::UnsupportedModel(e.to_string()))?;
        *self.checkpoint.borrow_mut() = fresh;
        Ok(())
    }

    fn norm_weight(&self, g: &mut GraphBuilder, hf_name: &str) -> Result<String, Error> {
        let w = self.tensor(hf_name, &[self.config.hidden_size])?;
        // genai's name: the final norm is `model.layers.<n>.final_norm_layernorm.weight`.
        let name = if hf_name == "model.norm.weight" {
            format!(
                "model.layers.{}.final_norm_layernorm.weight",
                self.config.num_hidden_layers
            )
        } else {
            hf_name.to_string()
        };
        self.linears
            .weight(g, &name, &w, &[self.config.hidden_size as i64])
    }

    /// RMSNorm of the first layer in standard ONNX ops (onnx.checker knows no SimplifiedLayerNormalization in
    /// the default domain), computed in fp32 like transformers and SimplifiedLayerNormalization's stash_type 1:
    /// y = gamma * cast(x / sqrt(mean(x², -1) + eps)).
    fn rms_norm(
        &self,
        g: &mut GraphBuilder,
        base: &str,
        x: &str,
        gamma: &str,
    ) -> Result<String, Error> {
        let dt = self.dtype();
        let x32 = if dt == DataType::Float {
            x.to_string()
        } else {
            g.node(
                "",
                "Cast",
                &format!("{base}/Cast"),
                &[x],
                vec![attr_int("to", 1)],
            )
            .map_err(failed)?
        };
        let sq = g
            .node("", "Mul", &format!("{base}/Pow"), &[&x32, &x32], vec![])
            .map_err(failed)?;
        let axes = g
            .constant_i64(&format!("{base}/axes"), &[1], &[-1])
            .map_err(failed)?;
        let mean = g
            .node(
                "",
                "ReduceMean",
                &format!("{base}/ReduceMean"),
                &[&sq, &axes],
                vec![attr_int("keepdims", 1)],
            )
            .map_err(failed)?;
        let eps = g
            .initializer(
                &format!("{}.epsilon", base.trim_start_matches('/').replace('/', ".")),
                DataType::Float,
                &[],
                &(self.config.rms_norm_eps as f32).to_le_bytes(),
            )
            .map_err(failed)?;
        let var = g
            .node("", "Add", &format!("{base}/Add"), &[&mean, &eps], vec![])
            .map_err(failed)?;
        let std = g
            .node("", "Sqrt", &format!("{base}/Sqrt"), &[&var], vec![])
            .map_err(failed)?;
        let normed = g
            .node("", "Div", &format!("{base}/Div"), &[&x32, &std], vec![])
            .map_err(failed)?;
        let normed = if dt == DataType::Float {
            normed
        } else {
            g.node(
                "",
                "Cast",
                &format!("{base}/Div/Cast"),
                &[&normed],
                vec![attr_int("to", dt.code() as i64)],
            )
            .map_err(failed)?
        };
        g.node("", "Mul", &format!("{base}/Mul"), &[&normed, gamma], vec![])
            .map_err(failed)
    }

    /// SkipSimplifiedLayerNormalization(input, skip, gamma) → (normed, input + skip).
    fn skip_norm(
        &self,
        g: &mut GraphBuilder,
        base: &str,
        input: &str,
        skip: &str,
        gamma: &str,
    ) -> Result<(String, String), Error> {
        let out = format!("{base}/output_0");
        let sum = format!("{base}/output_3");
        g.node_outputs(
            "com.microsoft",
            "SkipSimplifiedLayerNormalization",
            &format!("{base}/SkipLayerNorm"),
            &[input, skip, gamma],
            &[&out, "", "", &sum],
            vec![attr_float("epsilon", self.config.rms_norm_eps as f32)],
        )
        .map_err(failed)?;
        Ok((out, sum))
    }

    /// seqlens_k = ReduceSum(mask, 1) - 1 (int32), total_sequence_length = Shape(mask)[1] (int32 and int64).
    fn attention_mask_subgraph(
        &self,
        g: &mut GraphBuilder,
    ) -> Result<(String, String, String), Error> {
        let base = "/model/attn_mask_reformat/attn_mask_subgraph";
        let one = g
            .constant_i64("/model/constant_nodes/INT64/[1]", &[1], &[1])
            .map_err(failed)?;
        let one_scalar = g
            .constant_i64("/model/constant_nodes/INT64/1", &[], &[1])
            .map_err(failed)?;
        let sum = g
            .node(
                "",
                "ReduceSum",
                &format!("{base}/ReduceSum"),
                &["attention_mask", &one],
                vec![attr_int("keepdims", 0)],
            )
            .map_err(failed)?;
        let sub = g
            .node("", "Sub", &format!("{base}/Sub"), &[&sum, &one], vec![])
            .map_err(failed)?;
        let seqlens = g
            .node(
                "",
                "Cast",
                &format!("{base}/Sub/Cast"),
                &[&sub],
                vec![attr_int("to", 6)],
            )
            .map_err(failed)?;
        let shape = g
            .node(
                "",
                "Shape",
                &format!("{base}/Shape"),
                &["attention_mask"],
                vec![],
            )
            .map_err(failed)?;
        let total = g
            .node(
                "",
                "Gather",
                &format!("{base}/Gather"),
                &[&shape, &one_scalar],
                vec![attr_int("axis", 0)],
            )
            .map_err(failed)?;
        let total32 = g
            .node(
                "",
                "Cast",
                &format!("{base}/Gather/Cast"),
                &[&total],
                vec![attr_int("to", 6)],
            )
            .map_err(failed)?;
        Ok((seqlens, total32, total))
    }

    /// cos_cache / sin_cache: [context, rotary_dim / 2]; LongRoPE: If(total_len > original, long, short).
    fn rotary_caches(
        &self,
        g: &mut GraphBuilder,
        total_len: &str,
    ) -> Result<(String, String), Error> {
        let c = self.config;
        let rope = Rope::new(c);
        let half = (rope.rotary_dim() / 2) as i64;
        let cache =
            |g: &mut GraphBuilder, suffix: &str, len: usize| -> Result<(String, String), Error> {
                let t = rope.tables(0, len);
                let cos = self.linears.weight(
                    g,
                    &format!("cos_cache{suffix}"),
                    t.cos(),
                    &[len as i64, half],
                )?;
                let sin = self.linears.weight(
                    g,
                    &format!("sin_cache{suffix}"),
                    t.sin(),
                    &[len as i64, half],
                )?;
                Ok((cos, sin))
            };
        let Some(RopeScaling::LongRope {
            original_max_position_embeddings: original,
            ..
        }) = &c.rope_scaling
        else {
            return cache(g, "", c.max_position_embeddings);
        };
        let original = *original;
        // Rope::tables picks the short factors while the sequence stays within `original`.
        let (cos_small, sin_small) = cache(g, "_small", original)?;
        let (cos_large, sin_large) =
            cache(g, "_large", c.max_position_embeddings.max(original + 1))?;
        let base = "/model/rope_caches_subgraph";
        let limit = g
            .constant_i64(
                &format!("/model/constant_nodes/INT64/{original}"),
                &[],
                &[original as i64],
            )
            .map_err(failed)?;
        let greater = g
            .node(
                "",
                "Greater",
                &format!("{base}/Greater"),
                &[total_len, &limit],
                vec![],
            )
            .map_err(failed)?;
        let dt = self.dtype();
        let branch = |name: &str, cos: &str, sin: &str| -> GraphProto {
            let (co, so) = (format!("{cos}_{name}"), format!("{sin}_{name}"));
            GraphProto {
                name: Some(format!("{name}_graph")),
                node: vec![
                    node(
                        "",
                        "Identity",
                        &format!("{base}/{name}/cos"),
                        &[cos],
                        &[&co],
                        vec![],
                    ),
                    node(
                        "",
                        "Identity",
                        &format!("{base}/{name}/sin"),
                        &[sin],
                        &[&so],
                        vec![],
                    ),
                ],
                output: vec![
                    value_info(&co, dt, &[sym("max_seq"), Dim::Fixed(half)]),
                    value_info(&so, dt, &[sym("max_seq"), Dim::Fixed(half)]),
                ],
                ..Default::default()
            }
        };
        let then_branch = branch("then", &cos_large, &sin_large);
        let else_branch = branch("else", &cos_small, &sin_small);
        g.node_outputs(
            "",
            "If",
            &format!("{base}/If"),
            &[&greater],
            &["cos_cache", "sin_cache"],
            vec![
                attr_graph("then_branch", then_branch),
                attr_graph("else_branch", else_branch),
            ],
        )
        .map_err(failed)?;
        Ok(("cos_cache".into(), "sin_cache".into()))
    }

    /// q/k/v projections (packed unless LoRA adapts them), GroupQueryAttention, o_proj.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        g: &mut GraphBuilder,
        l: usize,
        x: &str,
        seqlens_k: &str,
        total_len: &str,
        cos: &str,
        sin: &str,
    ) -> Result<String, Error> {
        let c = self.config;
        let (h, kv, hd, hidden) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
        );
        let (q_out, kv_out) = (h * hd, kv * hd);
        let hf = format!("model.layers.{l}.self_attn");
        let (q, k, v) = if c.architecture == Architecture::Phi3 {
            let qkv =
                self.linear_weight(&format!("{hf}.qkv_proj"), &[q_out + 2 * kv_out, hidden])?;
            (
                qkv.rows(0, q_out, hidden),
                qkv.rows(q_out, q_out + kv_out, hidden),
                qkv.rows(q_out + kv_out, q_out + 2 * kv_out, hidden),
            )
        } else {
            (
                self.linear_weight(&format!("{hf}.q_proj"), &[q_out, hidden])?,
                self.linear_weight(&format!("{hf}.k_proj"), &[kv_out, hidden])?,
                self.linear_weight(&format!("{hf}.v_proj"), &[kv_out, hidden])?,
            )
        };
        let biases = if c.attention_bias {
            Some((
                self.tensor(&format!("{hf}.q_proj.bias"), &[q_out])?,
                self.tensor(&format!("{hf}.k_proj.bias"), &[kv_out])?,
                self.tensor(&format!("{hf}.v_proj.bias"), &[kv_out])?,
            ))
        } else {
            None
        };
        let base = format!("/model/layers.{l}/attn");
        let adapted = ["q_proj", "k_proj", "v_proj"].iter().any(|p| {
            self.linears
                .lora
                .contains_key(&format!("model.layers.{l}.attn.{p}"))
        });
        let (query, key, value) = if adapted {
            let mut outs = Vec::new();
            let bias_parts = biases.map(|(a, b, c)| [a, b, c]);
            for (i, (name, w, out)) in [
                ("q_proj", q, q_out),
                ("k_proj", k, kv_out),
                ("v_proj", v, kv_out),
            ]
            .into_iter()
            .enumerate()
            {
                let spec = LinearSpec {
                    basename: format!("{base}/{name}"),
                    weight: w,
                    out_features: out,
                    in_features: hidden,
                    bias: bias_parts.as_ref().map(|b| b[i].clone()),
                    output: None,
                };
                outs.push(self.linears.emit(g, spec, x)?);
            }
            (outs[0].clone(), outs[1].clone(), outs[2].clone())
        } else {
            let spec = LinearSpec {
                basename: format!("{base}/qkv_proj"),
                weight: Weight::concat(vec![q, k, v]),
                out_features: q_out + 2 * kv_out,
                in_features: hidden,
                bias: biases.map(|(a, b, c)| [a, b, c].concat()),
                output: None,
            };
            (self.linears.emit(g, spec, x)?, String::new(), String::new())
        };
        let gqa = format!("{base}/GroupQueryAttention");
        let out = format!("{gqa}/output_0");
        let (pk, pv) = (
            format!("past_key_values.{l}.key"),
            format!("past_key_values.{l}.value"),
        );
        let (ck, cv) = (format!("present.{l}.key"), format!("present.{l}.value"));
        g.node_outputs(
            "com.microsoft",
            "GroupQueryAttention",
            &gqa,
            &[
                &query, &key, &value, &pk, &pv, seqlens_k, total_len, cos, sin,
            ],
            &[&out, &ck, &cv],
            vec![
                attr_int("num_heads", h as i64),
                attr_int("kv_num_heads", kv as i64),
                attr_float("scale", 1.0 / (hd as f32).sqrt()),
                attr_int(
                    "local_window_size",
                    c.sliding_window.map_or(-1, |w| w as i64),
                ),
                attr_int("do_rotary", 1),
                attr_int("rotary_interleaved", 0),
            ],
        )
        .map_err(failed)?;
        let o = self.linear_weight(&format!("{hf}.o_proj"), &[hidden, q_out])?;
        let spec = LinearSpec {
            basename: format!("{base}/o_proj"),
            weight: o,
            out_features: hidden,
            in_features: q_out,
            bias: None,
            output: None,
        };
        self.linears.emit(g, spec, &out)
    }

    /// down(silu(gate(x)) * up(x)); Phi-3's gate_up_proj is split into gate and up.
    fn mlp(&self, g: &mut GraphBuilder, l: usize, x: &str) -> Result<String, Error> {
        let c = self.config;
        let (hidden, inter) = (c.hidden_size, c.intermediate_size);
        let hf = format!("model.layers.{l}.mlp");
        let (gate, up) = if c.architecture == Architecture::Phi3 {
            let gu = self.linear_weight(&format!("{hf}.gate_up_proj"), &[2 * inter, hidden])?;
            (gu.rows(0, inter, hidden), gu.rows(inter, 2 * inter, hidden))
        } else {
            (
                self.linear_weight(&format!("{hf}.gate_proj"), &[inter, hidden])?,
                self.linear_weight(&format!("{hf}.up_proj"), &[inter, hidden])?,
            )
        };
        let base = format!("/model/layers.{l}/mlp");
        let lin =
            |name: &str, weight: Weight, out_features: usize, in_features: usize| LinearSpec {
                basename: format!("{base}/{name}"),
                weight,
                out_features,
                in_features,
                bias: None,
                output: None,
            };
        let gate = self
            .linears
            .emit(g, lin("gate_proj", gate, inter, hidden), x)?;
        let up = self.linears.emit(g, lin("up_proj", up, inter, hidden), x)?;
        let sig = g
            .node(
                "",
                "Sigmoid",
                &format!("{base}/act_fn/Sigmoid"),
                &[&gate],
                vec![],
            )
            .map_err(failed)?;
        let silu = g
            .node(
                "",
                "Mul",
                &format!("{base}/act_fn/Mul"),
                &[&gate, &sig],
                vec![],
            )
            .map_err(failed)?;
        let prod = g
            .node("", "Mul", &format!("{base}/Mul"), &[&silu, &up], vec![])
            .map_err(failed)?;
        let down = self.linear_weight(&format!("{hf}.down_proj"), &[hidden, inter])?;
        self.linears
            .emit(g, lin("down_proj", down, hidden, inter), &prod)
    }
}

/// Levels < 16 packed two a byte, the first in the low nibble (ONNX uint4), the last byte zero-padded.
fn pack_u4(levels: &[u8]) -> Vec<u8> {
    levels
        .chunks(2)
        .map(|p| p[0] | p.get(1).map_or(0, |&hi| hi << 4))
        .collect()
}

/// w [out, in] += scale · B [out, rank] · A [rank, in] (the adapter checked against the model: shapes agree), as
/// the trainer's merged_model does.
fn add_lora(w: &mut [f32], lora: &LoraWeights) {
    let (rows, cols, rank) = (lora.out_features, lora.in_features, lora.rank);
    matmul_strided(
        rows,
        cols,
        rank,
        View::rows(&lora.b, rank),
        View::rows(&lora.a, cols),
        w,
        cols,
        lora.scale,
        true,
    );
}
