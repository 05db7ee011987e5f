//! Rotary embedding frequencies and cos/sin tables exactly as transformers 5 computes them
//! (modeling_rope_utils.py): default, linear, llama3 and Phi-3's LongRoPE (Ding et al. 2024), in
//! f32 like torch. LongRoPE picks its factor set per forward call from the sequence length it
//! reaches (`max(position_ids) + 1`): short factors up to `original_max_position_embeddings`, long
//! beyond; keys already cached keep the rotation they were stored with, as in transformers.

use olive_kernels::cpu::rope_tables;
use olive_model::{ModelConfig, RopeScaling};

/// The rotary embedding of one model.
#[derive(Debug, Clone)]
pub struct Rope {
    rotary_dim: usize,
    /// inv_freq: [rotary_dim / 2], used up to `long.1` tokens (always, without LongRoPE).
    short: Vec<f32>,
    /// LongRoPE's long-factor inv_freq and the original context it takes over from.
    long: Option<(Vec<f32>, usize)>,
    /// Factor on cos and sin (LongRoPE's attention factor; 1 otherwise).
    attention_scaling: f32,
}

/// cos/sin of positions `start .. start + len`: [len, rotary_dim / 2] each.
#[derive(Debug, Clone, Default)]
pub struct RopeTables {
    start: usize,
    len: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTables {
    /// First position covered.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Number of positions covered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// cos: [len, rotary_dim / 2].
    pub fn cos(&self) -> &[f32] {
        &self.cos
    }

    /// sin: [len, rotary_dim / 2].
    pub fn sin(&self) -> &[f32] {
        &self.sin
    }
}

impl Rope {
    pub fn new(config: &ModelConfig) -> Self {
        let rotary_dim = config.rotary_dim();
        let base = config.rope_theta as f32;
        // transformers: base ** (arange(0, dim, 2).float() / dim), all in f32.
        let exponents: Vec<f32> = (0..rotary_dim / 2)
            .map(|i| (2 * i) as f32 / rotary_dim as f32)
            .collect();
        let default: Vec<f32> = exponents.iter().map(|e| 1.0 / base.powf(*e)).collect();
        let (short, long, attention_scaling) = match &config.rope_scaling {
            None => (default, None, 1.0),
            Some(RopeScaling::Linear { factor }) => (
                default.iter().map(|f| f / *factor as f32).collect(),
                None,
                1.0,
            ),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => (
                llama3(
                    &default,
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_max_position_embeddings as f32,
                ),
                None,
                1.0,
            ),
            Some(RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings,
                attention_factor,
            }) => {
                // 1 / (ext_factors * base ** (arange(0, dim, 2).float() / dim))
                let scaled = |factors: &[f64]| -> Vec<f32> {
                    exponents
                        .iter()
                        .zip(factors)
                        .map(|(e, f)| 1.0 / (*f as f32 * base.powf(*e)))
                        .collect()
                };
                (
                    scaled(short_factor),
                    Some((scaled(long_factor), *original_max_position_embeddings)),
                    *attention_factor as f32,
                )
            }
        };
        Rope {
            rotary_dim,
            short,
            long,
            attention_scaling,
        }
    }

    /// Leading dims of each head that rotate.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim
    }

    /// inv_freq: [rotary_dim / 2] for a forward call whose sequence reaches `seq_len` tokens.
    pub fn inv_freq(&self, seq_len: usize) -> &[f32] {
        match &self.long {
            Some((long, original)) if seq_len > *original => long,
            _ => &self.short,
        }
    }

    /// The factor on cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub fn attention_scaling(&self) -> f32 {
        self.attention_scaling
    }

    /// LongRoPE's long-factor inv_freq and the sequence length past which it replaces `inv_freq(1)`.
    pub fn long(&self) -> Option<(&[f32], usize)> {
        self.long
            .as_ref()
            .map(|(f, original)| (f.as_slice(), *original))
    }

    /// Tables for positions `start .. start + len`.
    pub fn tables(&self, start: usize, len: usize) -> RopeTables {
        let mut tables = RopeTables::default();
        self.fill_tables(start, len, &mut tables);
        tables
    }

    /// Like [`Rope::tables`], reusing the buffers of `tables`.
    pub fn fill_tables(&self, start: usize, len: usize, tables: &mut RopeTables) {
        let inv_freq = self.inv_freq(start + len);
        tables.start = start;
        tables.len = len;
        rope_tables(
            inv_freq,
            start,
            len,
            self.attention_scaling,
            &mut tables.cos,
            &mut tables.sin,
        );
    }
}

/// transformers' `_compute_llama3_parameters` on the default inv_freq, in f32.
fn llama3(inv_freq: &[f32], factor: f32, low: f32, high: f32, old_context: f32) -> Vec<f32> {
    let low_freq_wavelen = old_context / low;
    let high_freq_wavelen = old_context / high;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_freq_wavelen {
                f / factor
            } else {
                f
            };
            // wavelen is finite and positive (inv_freq > 0), so the negations are plain comparisons.
            let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
            if medium {
                let smooth = (old_context / wavelen - low) / (high - low);
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use olive_model::Architecture;

    fn config(rope_scaling: Option<RopeScaling>) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 10,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            partial_rotary_factor: 1.0,
            rope_scaling,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            attention_bias: false,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }

    #[test]
    fn default_frequencies() {
        let rope = Rope::new(&config(None));
        let f = rope.inv_freq(1);
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 10000f32.powf(-2.0 / 16.0)).abs() < 1e-7);
        let t = rope.tables(3, 2);
        assert_eq!(t.cos().len(), 16);
        assert!((t.cos()[0] - 3f32.cos()).abs() < 1e-7);
        assert!((t.sin()[8] - 4f32.sin()).abs() < 1e-7);
    }

    #[test]
    fn longrope_switches_on_sequence_length() {
        let rope = Rope::new(&config(Some(RopeScaling::LongRope {
            short_factor: vec![1.0; 8],
            long_factor: vec![4.0; 8],
            original_max_position_embeddings: 8,
            attention_factor: 1.5,
        })));
        assert_eq!(rope.inv_freq(8)[0], 1.0);
        assert_eq!(rope.inv_freq(9)[0], 0.25);
        // Tables ending past the original context use the long set for every position.
        let t = rope.tables(6, 3);
        assert!((t.cos()[0] - 1.5 * (6.0f32 * 0.25).cos()).abs() < 1e-6);
    }

    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let rope = Rope::new(&config(Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        })));
        let base = Rope::new(&config(None));
        let (scaled, plain) = (rope.inv_freq(1), base.inv_freq(1));
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[7] - plain[7] / 8.0).abs() < 1e-9);
    }
}
