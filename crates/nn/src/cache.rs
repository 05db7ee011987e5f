//! The KV cache: per decoder layer, the rotated keys and the values of every position seen so
//! far, token-major, plus the scratch buffers a forward pass reuses so that decoding allocates
//! nothing per token.

use crate::layer::Workspace;
use crate::rope::RopeTables;

/// Keys and values of one decoder layer.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// Floats per token: kv_heads · head_dim.
    width: usize,
    /// k: [len, width]
    k: Vec<f32>,
    /// v: [len, width]
    v: Vec<f32>,
}

impl LayerCache {
    /// An empty cache for `width = kv_heads · head_dim`, with room for `capacity` tokens.
    pub fn new(width: usize, capacity: usize) -> Self {
        LayerCache {
            width,
            k: Vec::with_capacity(width * capacity),
            v: Vec::with_capacity(width * capacity),
        }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.k.len() / self.width.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    /// Floats per token.
    pub fn width(&self) -> usize {
        self.width
    }

    /// k: [len, kv_heads · head_dim]
    pub fn keys(&self) -> &[f32] {
        &self.k
    }

    /// v: [len, kv_heads · head_dim]
    pub fn values(&self) -> &[f32] {
        &self.v
    }

    /// Appends one token's key and value rows.
    pub(crate) fn push(&mut self, k: &[f32], v: &[f32]) {
        debug_assert_eq!(k.len(), self.width);
        debug_assert_eq!(v.len(), self.width);
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
    }

    /// Drops every token after the first `len`.
    pub fn truncate(&mut self, len: usize) {
        self.k.truncate(len * self.width);
        self.v.truncate(len * self.width);
    }
}

/// The cache of a whole model: one [`LayerCache`] per decoder layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) workspace: Workspace,
    pub(crate) tables: RopeTables,
    /// hidden: [tokens, hidden] of the last forward call.
    pub(crate) hidden: Vec<f32>,
    /// final_normed: [rows, hidden], the lm_head's input.
    pub(crate) final_normed: Vec<f32>,
    /// logits: [rows, vocab] of the last forward call.
    pub(crate) logits: Vec<f32>,
}

impl KvCache {
    /// An empty cache of `layers` layers of `width` floats a token, room for `capacity` tokens.
    pub fn new(layers: usize, width: usize, capacity: usize) -> Self {
        KvCache {
            layers: (0..layers)
                .map(|_| LayerCache::new(width, capacity))
                .collect(),
            workspace: Workspace::default(),
            tables: RopeTables::default(),
            hidden: Vec::new(),
            final_normed: Vec::new(),
            logits: Vec::new(),
        }
    }

    /// Tokens cached (the position the next token takes).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of each layer.
    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }

    /// Forgets every token, keeping the memory.
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Keeps only the first `len` tokens (e.g. to re-run from a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        for layer in &mut self.layers {
            layer.truncate(len);
        }
    }
}
