//! The Llama-family decoder on a CUDA GPU, in bf16 with fp32 accumulation (as transformers runs it in bf16): the
//! same computation as [`crate::Transformer`] — embeddings, RMSNorm, RoPE (LongRoPE too), GQA attention over a
//! KV cache with a sliding window, SwiGLU, lm_head with f32 logits — on olive-kernels' CUDA kernels. Dense
//! linears run through cuBLAS; quantized ones (AWQ, GPTQ with act-order, Olive, ≤ 4 bits) stay int4 on the
//! device and run through the W4A16 kernels. The model is loaded one decoder layer at a time, so the host holds
//! one layer's weights, not the model's. A one-token step (decode) is captured as a CUDA graph on its cache's first
//! such step and replayed after: the step's token and position are read from device memory, so one graph serves
//! every step while the cache stays under the graph's bound, and the host queues one graph instead of a dozen
//! launches a layer. The bounds double (`graph_bound`): a graph's attention is sized for the positions its steps
//! can reach, not for the cache's capacity, at the cost of one capture each time the cache outgrows a bound.

pub mod train;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use olive_kernels::cpu::w4a16_tiles::W4Tiles;
use olive_kernels::cpu::RopeLayout;
use olive_kernels::cuda::attention::{
    self, AttentionShape, Inputs as AttnInputs, Operand, Rows, Step,
};
use olive_kernels::cuda::rmsnorm::InputNorm;
use olive_kernels::cuda::rope::{CacheAppend, RopeFreqs};
use olive_kernels::cuda::rows::{add_bias, gather_rows, gather_rows_on_device};
use olive_kernels::cuda::w4a16::{w4a16, w4a16_add, w4a16_normed, w4a16_normed_swiglu, W4Weight};
use olive_kernels::cuda::{
    argmax, bf16, gemm, rmsnorm, rope, silu_mul, CachedLen, CudaSlice, DeviceRepr, Edges, Gpu,
    Graph, ValidAsZeroBits,
};
use olive_model::{Checkpoint, ModelConfig};
use tracing::{debug, info, warn};

use crate::error::{NnError, Result};
use crate::layer::{DecoderLayer, LayerDims};
use crate::linear::{load_vector, Linear, QuantizedWeights};
use crate::model::{table, Transformer};
use crate::rope::Rope;

/// The activation type on the device.
type Act = bf16;

fn to_act(v: &[f32]) -> Vec<Act> {
    v.iter().map(|&x| Act::from_f32(x)).collect()
}

/// A linear layer's weight on the device.
enum Weight {
    /// [out, in] bf16, through cuBLAS.
    Dense(CudaSlice<Act>),
    /// Int4 levels in the W4A16 kernels' tile layout.
    Int4(W4Weight<Act>),
}

/// `y = x · Wᵀ + b` on the device.
struct GpuLinear {
    weight: Weight,
    bias: Option<CudaSlice<Act>>,
    in_features: usize,
    out_features: usize,
}

impl GpuLinear {
    /// Uploads a CPU linear: packed int4 levels as int4 tiles where their shape allows, else the float weight.
    fn upload(gpu: &Gpu, linear: &Linear, name: &str) -> Result<Self> {
        let tiles = linear
            .packed
            .as_ref()
            .and_then(|p| p.to_w4_levels())
            .map(|levels| W4Tiles::from_levels(&levels));
        let weight = match tiles {
            Some(Ok(tiles)) => Weight::Int4(W4Weight::upload(gpu, &tiles)?),
            other => {
                if let Some(Err(why)) = other {
                    info!("{name}: int4 weights the W4A16 kernels cannot take ({why}); running it dense");
                }
                Weight::Dense(gpu.upload(&linear.with_weight(to_act))?)
            }
        };
        Ok(GpuLinear {
            weight,
            bias: linear
                .bias
                .as_deref()
                .map(|b| gpu.upload(&to_act(b)))
                .transpose()?,
            in_features: linear.in_features,
            out_features: linear.out_features,
        })
    }

    /// out: [tokens, out] = x: [tokens, in] · Wᵀ + b, or `out +=` that with `accumulate`.
    fn forward(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<Act>,
        tokens: usize,
        out: &mut CudaSlice<Act>,
        accumulate: bool,
    ) -> Result<()> {
        let shape = (tokens, self.out_features, self.in_features);
        match &self.weight {
            Weight::Dense(w) => {
                // out + (x·Wᵀ + b) = (out + b) + x·Wᵀ: the bias goes first, then cuBLAS adds the product.
                if accumulate {
                    if let Some(bias) = &self.bias {
                        add_bias(gpu, out, bias)?;
                    }
                }
                gemm::linear(gpu, x, w, out, shape, accumulate)?;
                if !accumulate {
                    if let Some(bias) = &self.bias {
                        add_bias(gpu, out, bias)?;
                    }
                }
            }
            // As the dense path: with `accumulate` the bias goes first, then the kernel adds the product.
            Weight::Int4(w) if accumulate => {
                if let Some(bias) = &self.bias {
                    add_bias(gpu, out, bias)?;
                }
                w4a16_add(gpu, x, tokens, w, out)?;
            }
            Weight::Int4(w) => {
                w4a16(gpu, x, tokens, w, out)?;
                if let Some(bias) = &self.bias {
                    add_bias(gpu, out, bias)?;
                }
            }
        }
        Ok(())
    }

    /// out: [tokens, out] = rmsnorm(x)·Wᵀ + b: one token's norm folded into the product's kernel where one takes
    /// it, else the norm written to `normed` first.
    fn forward_normed(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<Act>,
        norm: InputNorm<'_, Act>,
        tokens: usize,
        normed: &mut CudaSlice<Act>,
        out: &mut CudaSlice<Act>,
    ) -> Result<()> {
        if tokens == 1 {
            let fused = match &self.weight {
                Weight::Dense(w) => gemm::linear_normed(
                    gpu,
                    x,
                    norm,
                    w,
                    out,
                    (self.out_features, self.in_features),
                )?,
                Weight::Int4(w) => w4a16_normed(gpu, x, norm, 1, w, out)?,
            };
            if fused {
                if let Some(bias) = &self.bias {
                    add_bias(gpu, out, bias)?;
                }
                return Ok(());
            }
        }
        rmsnorm::rmsnorm(gpu, x, norm.weight, norm.eps, normed)?;
        self.forward(gpu, normed, tokens, out, false)
    }

    /// SwiGLU's gate_up projection (gate rows, then up) for one token: act [1, out / 2] = silu(gate) ⊙ up of
    /// rmsnorm(x)·Wᵀ in one kernel where one takes it (no bias); `Ok(false)`, nothing written, otherwise.
    fn forward_normed_swiglu(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<Act>,
        norm: InputNorm<'_, Act>,
        tokens: usize,
        act: &mut CudaSlice<Act>,
    ) -> Result<bool> {
        Ok(match (tokens, &self.weight, &self.bias) {
            (1, Weight::Dense(w), None) => gemm::linear_normed_swiglu(
                gpu,
                x,
                norm,
                w,
                act,
                (self.out_features / 2, self.in_features),
            )?,
            (1, Weight::Int4(w), None) => w4a16_normed_swiglu(gpu, x, norm, 1, w, act)?,
            _ => false,
        })
    }
}

/// One decoder layer's weights on the device.
struct GpuLayer {
    input_layernorm: CudaSlice<Act>,
    qkv_proj: GpuLinear,
    o_proj: GpuLinear,
    post_attention_layernorm: CudaSlice<Act>,
    gate_up_proj: GpuLinear,
    down_proj: GpuLinear,
}

impl GpuLayer {
    fn upload(gpu: &Gpu, layer: &DecoderLayer, index: usize) -> Result<Self> {
        let name = |n: &str| format!("model.layers.{index}.{n}");
        Ok(GpuLayer {
            input_layernorm: gpu.upload(&to_act(&layer.input_layernorm))?,
            qkv_proj: GpuLinear::upload(gpu, &layer.qkv_proj, &name("self_attn.qkv_proj"))?,
            o_proj: GpuLinear::upload(gpu, &layer.o_proj, &name("self_attn.o_proj"))?,
            post_attention_layernorm: gpu.upload(&to_act(&layer.post_attention_layernorm))?,
            gate_up_proj: GpuLinear::upload(gpu, &layer.gate_up_proj, &name("mlp.gate_up_proj"))?,
            down_proj: GpuLinear::upload(gpu, &layer.down_proj, &name("mlp.down_proj"))?,
        })
    }
}

/// A KV cache on the device: per layer, keys and values of `capacity` positions, [capacity, kv_width]; plus the
/// forward pass's scratch buffers, kept here so that a decode loop allocates nothing per token.
pub struct GpuKvCache {
    keys: Vec<CudaSlice<Act>>,
    values: Vec<CudaSlice<Act>>,
    /// kv_heads · head_dim of the model it was made for.
    width: usize,
    len: usize,
    capacity: usize,
    workspace: Workspace,
    /// Whether one-token steps replay a captured CUDA graph, and how its kernels are linked.
    graphs: Option<Edges>,
    /// The captured one-token steps, one a bound (`graph_bound`), from the first such step on.
    decode: Vec<DecodeGraph>,
}

impl GpuKvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it has room for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (a new sequence starts with `truncate(0)`).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Whether one-token steps replay a CUDA graph whose kernels are linked as `Some(edges)` says (the default:
    /// [`Edges::Overlapped`]), or queue their kernels one launch at a time (`None`).
    pub fn set_graphs(&mut self, graphs: Option<Edges>) {
        if graphs != self.graphs {
            self.decode.clear();
        }
        self.graphs = graphs;
    }
}

/// One token's forward captured as a CUDA graph for the steps after at most `max` positions: its own one-row
/// buffers (a prefill refitting the cache's workspace leaves them be) and the step's inputs, which every replay reads
/// from device memory.
struct DecodeGraph {
    /// The most positions before a step it runs (its attention's KV splits are sized for `max + 1` keys).
    max: usize,
    /// [token, positions the cache held before it], rewritten before each step.
    step: CudaSlice<u32>,
    workspace: Workspace,
    /// The captured step and the model ([`GpuTransformer`]'s `id`) whose weights it reads; None until a step has
    /// run once one launch at a time (which compiles and loads its kernels: no module loads while capturing).
    graph: Option<(Graph, u64)>,
    /// Whether the captured step ends in the greedy choice (`token`) or at the logits.
    greedy: bool,
}

/// The most positions before a step that the captured graph for a step after `past` positions serves (`past` <
/// `capacity`): one less than the next power of two over `past`, at least one decode split's keys
/// ([`attention::DECODE_KEYS`]), at most the cache's capacity. A graph sized for a long capacity would split a short
/// cache's attention into chunks too long to fill the GPU, and merge more (empty) splits than the cache has.
fn graph_bound(past: usize, capacity: usize) -> usize {
    (past + 1)
        .next_power_of_two()
        .max(attention::DECODE_KEYS)
        .min(capacity)
        - 1
}

/// What a forward brings back: every row's logits, the last row's, or the greedy choice from the last row's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    AllLogits,
    LastLogits,
    NextToken,
}

/// Where a forward's tokens and positions come from: the host (any number of tokens), or device memory (one token,
/// a captured decode step: [token, positions before it] in `step`, at most `max` positions before it).
#[derive(Clone, Copy)]
enum Inputs<'a> {
    Host {
        tokens: &'a [u32],
        start: usize,
    },
    Device {
        step: &'a CudaSlice<u32>,
        max: usize,
    },
}

/// The forward pass's scratch buffers. The kernels take a buffer's length as its row count, so each holds
/// exactly the current call's rows and is reallocated only when that count changes: a decode loop (one token
/// a call) allocates on its first step and reuses the buffers after.
#[derive(Default)]
struct Workspace {
    /// [t, hidden]
    hidden: Option<CudaSlice<Act>>,
    /// [t, hidden]
    normed: Option<CudaSlice<Act>>,
    /// [t, q + 2·kv]
    qkv: Option<CudaSlice<Act>>,
    /// [t, q]
    attn: Option<CudaSlice<Act>>,
    /// [t, 2·inter]
    gate_up: Option<CudaSlice<Act>>,
    /// [t, inter]
    act: Option<CudaSlice<Act>>,
    /// [rows, vocab] f32
    logits: Option<CudaSlice<f32>>,
    /// [1]: the greedy choice from the last row's logits ([`GpuTransformer::next_token`]).
    token: Option<CudaSlice<u32>>,
    /// A captured step's attention scratch (`attention::decode_part_len`).
    attention_part: Option<CudaSlice<f32>>,
}

/// `buf` as a buffer of `len` elements: the one it holds when that has `len`, else a new one.
fn fit<'a, T: DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    buf: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>> {
    if buf.as_ref().is_some_and(|b| b.len() != len) {
        *buf = None; // the old buffer is freed before the new one is allocated
    }
    match buf {
        Some(b) => Ok(b),
        None => Ok(buf.insert(gpu.alloc::<T>(len)?)),
    }
}

/// Tells models apart in a cache's captured step (which holds their weights' addresses).
static NEXT_MODEL_ID: AtomicU64 = AtomicU64::new(0);

/// A Llama-family causal LM on a CUDA GPU.
pub struct GpuTransformer {
    /// Unique in the process.
    id: u64,
    gpu: Arc<Gpu>,
    config: ModelConfig,
    dims: LayerDims,
    /// [vocab, hidden]
    embed_tokens: CudaSlice<Act>,
    layers: Vec<GpuLayer>,
    /// [hidden]
    norm: CudaSlice<Act>,
    /// [vocab, hidden]; None when tied to the embeddings.
    lm_head: Option<CudaSlice<Act>>,
    freqs: RopeFreqs,
}

impl GpuTransformer {
    /// Loads a Hugging Face folder onto `gpu`, one decoder layer at a time.
    pub fn load(dir: &Path, gpu: Arc<Gpu>) -> Result<Self> {
        let config = ModelConfig::from_folder(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_tokens =
            gpu.upload(&to_act(&table(&ckpt, "model.embed_tokens", vocab, hidden)?))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let layer = DecoderLayer::load_with(&ckpt, &config, i, QuantizedWeights::Packed)?;
                GpuLayer::upload(&gpu, &layer, i)
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = gpu.upload(&to_act(&load_vector(&ckpt, "model.norm.weight", hidden)?))?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(gpu.upload(&to_act(&table(&ckpt, "lm_head", vocab, hidden)?))?)
        };
        debug!(folder = %dir.display(), device = gpu.name(), "loaded transformer onto the GPU");
        Self::assemble(gpu, config, embed_tokens, layers, norm, lm_head)
    }

    /// A copy of a model already in host memory (an adapter merged into it, say).
    pub fn from_cpu(model: &Transformer, gpu: Arc<Gpu>) -> Result<Self> {
        let layers = model
            .layers()
            .iter()
            .enumerate()
            .map(|(i, layer)| GpuLayer::upload(&gpu, layer, i))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = if model.tied() {
            None
        } else {
            Some(gpu.upload(&to_act(model.lm_head()))?)
        };
        Self::assemble(
            gpu.clone(),
            model.config().clone(),
            gpu.upload(&to_act(model.embed_tokens()))?,
            layers,
            gpu.upload(&to_act(model.final_norm()))?,
            lm_head,
        )
    }

    fn assemble(
        gpu: Arc<Gpu>,
        config: ModelConfig,
        embed_tokens: CudaSlice<Act>,
        layers: Vec<GpuLayer>,
        norm: CudaSlice<Act>,
        lm_head: Option<CudaSlice<Act>>,
    ) -> Result<Self> {
        let rope = Rope::new(&config);
        let freqs = RopeFreqs::new(
            &gpu,
            rope.inv_freq(1),
            rope.long(),
            rope.attention_scaling(),
        )?;
        Ok(GpuTransformer {
            id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
            dims: LayerDims::from_config(&config),
            gpu,
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            freqs,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The device it runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// An empty KV cache with room for `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<GpuKvCache> {
        let n = capacity * self.dims.kv_width();
        let alloc = || -> Result<Vec<CudaSlice<Act>>> {
            (0..self.layers.len())
                .map(|_| Ok(self.gpu.alloc::<Act>(n)?))
                .collect()
        };
        Ok(GpuKvCache {
            keys: alloc()?,
            values: alloc()?,
            width: self.dims.kv_width(),
            len: 0,
            capacity,
            workspace: Workspace::default(),
            graphs: Some(Edges::Overlapped),
            decode: Vec::new(),
        })
    }

    /// Logits: [tokens.len(), vocab] (f32) for `tokens` at positions `cache.len() ..`, appended to the cache.
    pub fn forward(&self, tokens: &[u32], cache: &mut GpuKvCache) -> Result<Vec<f32>> {
        self.logits(tokens, cache, Fetch::AllLogits)
    }

    /// Logits of the last token only: [vocab].
    pub fn forward_last(&self, tokens: &[u32], cache: &mut GpuKvCache) -> Result<Vec<f32>> {
        self.logits(tokens, cache, Fetch::LastLogits)
    }

    /// The logits `fetch` asks for, on the host (none for no tokens).
    fn logits(&self, tokens: &[u32], cache: &mut GpuKvCache, fetch: Fetch) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let ws = self.run(tokens, cache, fetch)?;
        let logits = ws
            .logits
            .as_ref()
            .expect("a forward of at least one token has fitted the logits");
        Ok(self.gpu.download(logits)?)
    }

    /// The greedy next token after `tokens` ([`fn@crate::argmax`] of [`Self::forward_last`]'s logits), chosen on the
    /// device: a decode step brings one index back to the host, not its logits.
    pub fn next_token(&self, tokens: &[u32], cache: &mut GpuKvCache) -> Result<u32> {
        if tokens.is_empty() {
            return Err(NnError::EmptyPrompt);
        }
        let ws = self.run(tokens, cache, Fetch::NextToken)?;
        let token = ws
            .token
            .as_ref()
            .expect("a forward fetching the next token has fitted it");
        Ok(self.gpu.download(token)?[0])
    }

    /// Queues `tokens` (at least one) at the cache's next positions and what `fetch` asks for from them, then
    /// returns the workspace that holds it.
    fn run<'c>(
        &self,
        tokens: &[u32],
        cache: &'c mut GpuKvCache,
        fetch: Fetch,
    ) -> Result<&'c Workspace> {
        let (t, vocab) = (tokens.len(), self.config.vocab_size);
        if let Some(&token) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(NnError::TokenOutOfRange {
                token,
                vocab_size: vocab,
            });
        }
        let kv_w = self.dims.kv_width();
        if cache.keys.len() != self.layers.len() || cache.width != kv_w {
            return Err(NnError::CacheMismatch {
                found_layers: cache.keys.len(),
                found_width: cache.width,
                layers: self.layers.len(),
                width: kv_w,
            });
        }
        if cache.len + t > cache.capacity {
            return Err(NnError::CacheFull {
                capacity: cache.capacity,
                needed: cache.len + t,
            });
        }
        // A capture that failed turned graphs off: its step's buffers go once the step has been read.
        if cache.graphs.is_none() {
            cache.decode.clear();
        }
        let start = cache.len;
        let greedy = fetch == Fetch::NextToken;
        // A step's position is a u32 on the device (the kernels take positions as i32).
        let stepped = match cache.graphs {
            Some(edges) if t == 1 && i32::try_from(cache.capacity).is_ok() => {
                Some(self.decode_step(tokens[0], edges, greedy, cache)?)
            }
            _ => {
                let inputs = Inputs::Host { tokens, start };
                let ws = &mut cache.workspace;
                let last_only = fetch != Fetch::AllLogits;
                self.queue(inputs, ws, &mut cache.keys, &mut cache.values, last_only)?;
                if greedy {
                    self.queue_argmax(ws)?;
                }
                None
            }
        };
        cache.len = start + t;
        Ok(match stepped.and_then(|i| cache.decode.get(i)) {
            Some(state) => &state.workspace,
            None => &cache.workspace,
        })
    }

    /// Queues the greedy choice from `ws`'s last logits row into `ws.token`.
    fn queue_argmax(&self, ws: &mut Workspace) -> Result<()> {
        let vocab = self.config.vocab_size;
        let logits = ws
            .logits
            .as_ref()
            .expect("the forward queued before has fitted the logits");
        let last = logits.slice(logits.len() - vocab..);
        let token = fit(&self.gpu, &mut ws.token, 1)?;
        argmax::argmax_rows(&self.gpu, &last, vocab, token)?;
        Ok(())
    }

    /// One token through the cache's captured step for its length's bound, into that graph's workspace's logits
    /// (and with `greedy` its token), whose index in `cache.decode` it returns: the step's inputs written to the
    /// device, the graph replayed (captured first, after one step queued launch by launch, its kernels linked as
    /// `edges` says; again when `greedy` differs from the captured step's).
    fn decode_step(
        &self,
        token: u32,
        edges: Edges,
        greedy: bool,
        cache: &mut GpuKvCache,
    ) -> Result<usize> {
        let gpu = &*self.gpu;
        let max = graph_bound(cache.len, cache.capacity);
        let index = match cache.decode.iter().position(|state| state.max == max) {
            Some(index) => index,
            None => {
                cache.decode.push(DecodeGraph {
                    max,
                    step: gpu.alloc::<u32>(2)?,
                    workspace: Workspace::default(),
                    graph: None,
                    greedy,
                });
                cache.decode.len() - 1
            }
        };
        let state = &mut cache.decode[index];
        let past = cache.len as u32; // < capacity ≤ i32::MAX (run checks)
        gpu.write(&[token, past], &mut state.step)?;
        let DecodeGraph {
            step,
            workspace,
            graph,
            greedy: captured_greedy,
            ..
        } = state;
        let inputs = Inputs::Device { step, max };
        let queue = |workspace: &mut Workspace, keys: &mut [_], values: &mut [_]| -> Result<()> {
            self.queue(inputs, workspace, keys, values, true)?;
            if greedy {
                self.queue_argmax(workspace)?;
            }
            Ok(())
        };
        match graph {
            Some((g, model)) if *model == self.id && *captured_greedy == greedy => gpu.replay(g)?,
            _ => {
                *graph = None;
                *captured_greedy = greedy;
                queue(workspace, &mut cache.keys, &mut cache.values)?;
                let captured = gpu.capture(edges, || {
                    queue(workspace, &mut cache.keys, &mut cache.values)
                });
                match captured {
                    Ok(g) => *graph = Some((g, self.id)),
                    Err(e) => {
                        warn!("decode steps run one launch at a time: capturing one as a CUDA graph failed: {e}");
                        cache.graphs = None;
                    }
                }
            }
        }
        Ok(index)
    }

    /// Queues the forward of `inputs` on the stream: embeddings, the decoder layers (their keys and values written
    /// to `keys`/`values` after the positions before the step), the final norm and the lm_head into
    /// `ws.logits` (the last row's only with `last_only`). Launches only: nothing waits for the device, so a
    /// device-input step can be captured as a graph.
    fn queue(
        &self,
        inputs: Inputs<'_>,
        ws: &mut Workspace,
        keys: &mut [CudaSlice<Act>],
        values: &mut [CudaSlice<Act>],
        last_only: bool,
    ) -> Result<()> {
        let gpu = &*self.gpu;
        let d = self.dims;
        let (hidden_size, vocab) = (d.hidden, self.config.vocab_size);
        let t = match inputs {
            Inputs::Host { tokens, .. } => tokens.len(),
            Inputs::Device { .. } => 1,
        };
        let (q_w, kv_w) = (d.q_width(), d.kv_width());
        let qkv_w = q_w + 2 * kv_w;
        let hidden = fit(gpu, &mut ws.hidden, t * hidden_size)?; // [t, hidden]

        // The step's token and the positions before it, on the device.
        let (token_view, past_view);
        let past = match inputs {
            Inputs::Host { tokens, .. } => {
                gather_rows(gpu, &self.embed_tokens, hidden_size, tokens, hidden)?;
                None
            }
            Inputs::Device { step, max } => {
                token_view = step.slice(0..1);
                past_view = step.slice(1..2);
                gather_rows_on_device(gpu, &self.embed_tokens, hidden_size, &token_view, hidden)?;
                Some(CachedLen {
                    len: &past_view,
                    max,
                })
            }
        };
        let normed = fit(gpu, &mut ws.normed, t * hidden_size)?; // [t, hidden]
        let qkv = fit(gpu, &mut ws.qkv, t * qkv_w)?; // [t, q + 2·kv]
        let attn = fit(gpu, &mut ws.attn, t * q_w)?; // [t, q]
        let gate_up = fit(gpu, &mut ws.gate_up, t * 2 * d.intermediate)?; // [t, 2·inter]
        let act = fit(gpu, &mut ws.act, t * d.intermediate)?; // [t, inter]
        let rope_layout = RopeLayout {
            row_stride: qkv_w,
            heads: d.heads + d.kv_heads,
            head_dim: d.head_dim,
            rotary_dim: d.rotary_dim,
        };
        // With positions on the device, the host sizes everything for the most there can be.
        let start = match inputs {
            Inputs::Host { start, .. } => start,
            Inputs::Device { max, .. } => max,
        };
        let shape = AttentionShape {
            batch: 1,
            tokens: t,
            kv_len: start + t,
            heads: d.heads,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            window: d.sliding_window,
            scale: 1.0 / (d.head_dim as f32).sqrt(),
        };
        let part_len = attention::decode_part_len(gpu, &shape);
        let eps = d.rms_norm_eps;
        for (i, layer) in self.layers.iter().enumerate() {
            let norm = InputNorm {
                weight: &layer.input_layernorm,
                eps,
            };
            layer
                .qkv_proj
                .forward_normed(gpu, hidden, norm, t, normed, qkv)?;
            let out = (&mut *attn, Rows::packed(q_w));
            match past {
                // A captured step: the attention rotates the step's rows and appends them to the cache itself.
                Some(p) => {
                    let step = Step {
                        qkv: Operand {
                            data: qkv,
                            rows: Rows::packed(qkv_w),
                        },
                        k_column: q_w,
                        keys: &mut keys[i],
                        values: &mut values[i],
                        freqs: &self.freqs,
                        rotary_dim: d.rotary_dim,
                    };
                    let part = fit(gpu, &mut ws.attention_part, part_len)?;
                    attention::forward_after(gpu, &shape, step, out, p, part)?
                }
                None => {
                    let cache = CacheAppend {
                        keys: &mut keys[i],
                        values: &mut values[i],
                        k_column: q_w,
                        width: kv_w,
                    };
                    rope::rope_append(gpu, qkv, rope_layout, &self.freqs, start, cache)?;
                    let inputs = AttnInputs {
                        q: Operand {
                            data: qkv,
                            rows: Rows::packed(qkv_w),
                        },
                        k: Operand {
                            data: &keys[i],
                            rows: Rows::packed(kv_w),
                        },
                        v: Operand {
                            data: &values[i],
                            rows: Rows::packed(kv_w),
                        },
                        key_mask: None,
                    };
                    attention::forward(gpu, &shape, &inputs, out, None)?
                }
            }
            layer.o_proj.forward(gpu, attn, t, hidden, true)?;
            let norm = InputNorm {
                weight: &layer.post_attention_layernorm,
                eps,
            };
            let mlp = &layer.gate_up_proj;
            if !mlp.forward_normed_swiglu(gpu, hidden, norm, t, act)? {
                mlp.forward_normed(gpu, hidden, norm, t, normed, gate_up)?;
                silu_mul::silu_mul(gpu, gate_up, d.intermediate, act)?;
            }
            layer.down_proj.forward(gpu, act, t, hidden, true)?;
        }
        let rows = if last_only { 1 } else { t };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let logits = fit(gpu, &mut ws.logits, rows * vocab)?; // [rows, vocab]

        // One row's final norm folded into the lm_head's kernel where it takes it.
        if rows == 1 {
            let last = hidden.slice((t - 1) * hidden_size..);
            let norm = InputNorm {
                weight: &self.norm,
                eps,
            };
            if gemm::linear_normed_f32_out(gpu, &last, norm, head, logits, (vocab, hidden_size))? {
                return Ok(());
            }
        }
        // Else the final norm runs over all t rows, in place of copying the wanted rows out first (rmsnorm takes
        // whole buffers; forward_last after a prefill norms t rows instead of 1, one elementwise pass), and the
        // lm_head reads the rows wanted.
        rmsnorm::rmsnorm(gpu, hidden, &self.norm, eps, normed)?;
        let kept = normed.slice((t - rows) * hidden_size..); // [rows, hidden]
        gemm::linear_f32_out(gpu, &kept, head, logits, (rows, vocab, hidden_size))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::graph_bound;

    #[test]
    fn graph_bounds_double_from_one_split_up_to_the_capacity() {
        let bounds: Vec<usize> = [0, 127, 128, 255, 256, 1000, 3000, 4095]
            .iter()
            .map(|&past| graph_bound(past, 4096))
            .collect();
        assert_eq!(bounds, [127, 127, 255, 255, 511, 1023, 4095, 4095]);
        assert_eq!(graph_bound(10, 64), 63);
        assert_eq!(graph_bound(199, 200), 199);
        assert_eq!(graph_bound(130, 200), 199);
    }
}
