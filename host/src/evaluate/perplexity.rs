//! Perplexity over a text, cut as tests/python/ppl.py cuts it so that both agree: the text tokenized once (no
//! special tokens added), consecutive non-overlapping windows of `window` tokens (the last one shorter, kept when
//! it has at least 2 tokens), each window one forward pass from an empty cache predicting all its tokens but the
//! first; perplexity = exp(Σ negative log-likelihood / predicted tokens), log-softmax in f64.

use super::runner::Runner;

/// Perplexity of `ids` cut into windows of `window` tokens (at most `max_windows`), one forward each.
pub fn perplexity(
    runner: &mut Runner,
    ids: &[u32],
    window: usize,
    max_windows: Option<usize>,
) -> anyhow::Result<Nll> {
    if window < 2 {
        anyhow::bail!(
            "window {window}: a window predicts all its tokens but the first; give 2 or more"
        );
    }
    let mut ws = windows(ids, window);
    if let Some(n) = max_windows {
        ws.truncate(n);
    }
    if ws.is_empty() {
        anyhow::bail!(
            "the text has {} tokens; a perplexity needs at least 2",
            ids.len()
        );
    }
    let bar = crate::progress::bar(ws.len() as u64, "perplexity");
    let mut nll = Nll::default();
    for w in &ws {
        nll.add(&runner.logits(w)?, w);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(nll)
}

/// The windows of `ids`.
pub fn windows(ids: &[u32], window: usize) -> Vec<&[u32]> {
    ids.chunks(window.max(2)).filter(|w| w.len() >= 2).collect()
}

/// Running sum of negative log-likelihoods.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nll {
    pub sum: f64,
    pub predicted: usize,
}

impl Nll {
    /// Adds one window: `logits` [ids.len(), vocab] from a forward pass over `ids`; row i predicts ids[i + 1].
    pub fn add(&mut self, logits: &[f32], ids: &[u32]) {
        let vocab = logits.len() / ids.len().max(1);
        for (row, &next) in logits.chunks_exact(vocab).zip(&ids[1..]) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
            self.sum -= row[next as usize] as f64 - max - log_sum;
            self.predicted += 1;
        }
    }

    pub fn perplexity(&self) -> f64 {
        (self.sum / self.predicted.max(1) as f64).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drop_a_last_single_token() {
        let ids: Vec<u32> = (0..11).collect();
        let w = windows(&ids, 5);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1], &[5, 6, 7, 8, 9]);
        assert_eq!(
            windows(&ids[..12.min(ids.len())], 4)
                .last()
                .map(|w| w.len()),
            Some(3)
        );
    }

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        let mut nll = Nll::default();
        nll.add(&[0.0; 3 * 7], &[1, 2, 3]);
        assert_eq!(nll.predicted, 2);
        assert!((nll.perplexity() - 7.0).abs() < 1e-9);
    }

    #[test]
    fn a_certain_prediction_costs_nothing() {
        let mut nll = Nll::default();
        // row 0 puts all mass on token 1, the next id
        nll.add(&[0.0, 100.0, 0.0, 0.0, 0.0, 0.0], &[0, 1]);
        assert!(nll.perplexity() < 1.0 + 1e-9);
    }
}
