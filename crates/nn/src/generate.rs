//! Greedy decoding with the KV cache (transformers' `generate(do_sample=False)`), and streaming
//! detokenization that only emits text once it is complete (no split UTF-8 characters, no
//! half-decoded byte-level tokens), following text-generation-inference's prefix/read offsets.

use tokenizers::Tokenizer;

use crate::error::{NnError, Result};
use crate::gpu::GpuTransformer;
use crate::model::Transformer;

pub use olive_kernels::cpu::argmax;

impl Transformer {
    /// Greedy generation from `prompt` until the sequence (prompt included) reaches `max_length`
    /// tokens, an id of `eos` is produced, or `on_token` returns false. `on_token` sees every
    /// generated id, an end-of-sequence id included. Returns the generated ids.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_length: usize,
        eos: &[u32],
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut cache = self.new_cache(max_length);
        greedy(prompt, max_length, eos, on_token, |tokens| {
            Ok(argmax(self.forward_last(tokens, &mut cache)?))
        })
    }
}

impl GpuTransformer {
    /// [`Transformer::generate`] on the GPU, each token chosen on the device ([`GpuTransformer::next_token`]).
    pub fn generate(
        &self,
        prompt: &[u32],
        max_length: usize,
        eos: &[u32],
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        let mut cache = self.new_cache(max_length)?;
        greedy(prompt, max_length, eos, on_token, |tokens| {
            self.next_token(tokens, &mut cache)
        })
    }
}

/// The greedy loop: `next(tokens)` runs tokens at the next positions and gives the most likely next id.
fn greedy(
    prompt: &[u32],
    max_length: usize,
    eos: &[u32],
    mut on_token: impl FnMut(u32) -> bool,
    mut next: impl FnMut(&[u32]) -> Result<u32>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(NnError::EmptyPrompt);
    }
    let mut generated = Vec::new();
    if prompt.len() >= max_length {
        return Ok(generated);
    }
    let mut token = next(prompt)?;
    loop {
        generated.push(token);
        let go_on = on_token(token);
        if !go_on || eos.contains(&token) || prompt.len() + generated.len() >= max_length {
            return Ok(generated);
        }
        token = next(&[token])?;
    }
}

/// Turns generated ids into text pieces as soon as they decode to complete characters.
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the window re-decoded for context (leading-space handling of the decoders).
    prefix_offset: usize,
    /// End of what has been emitted.
    read_offset: usize,
}

impl<'t> TextStream<'t> {
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        TextStream {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one id; returns the new text when the decoded text grew by complete characters.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let text = self.decode(self.prefix_offset, self.ids.len())?;
        if text.len() > prefix.len()
            && !text.ends_with('\u{FFFD}')
            && text.is_char_boundary(prefix.len())
        {
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(text[prefix.len()..].to_string()))
        } else {
            Ok(None)
        }
    }

    /// Text held back so far (e.g. an incomplete character at the end), decoded as it stands.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let text = self.decode(self.prefix_offset, self.ids.len())?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        match text.get(prefix.len()..) {
            Some(rest) if !rest.is_empty() => Ok(Some(rest.to_string())),
            _ => Ok(None),
        }
    }

    fn decode(&self, from: usize, to: usize) -> Result<String> {
        self.tokenizer
            .decode(&self.ids[from..to], self.skip_special_tokens)
            .map_err(|e| NnError::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// A byte-level BPE tokenizer with one token per byte (id = byte value), no merges: every
    /// non-ASCII character spans several tokens, the case streaming must not split.
    fn byte_tokenizer() -> Tokenizer {
        // GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + n.
        let printable = |b: u32| {
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b)
        };
        let mut n = 0;
        let mut vocab = serde_json::Map::new();
        for b in 0u32..256 {
            let c = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            let c = char::from_u32(c).map(String::from).unwrap_or_default();
            vocab.insert(c, serde_json::json!(b));
        }
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
                                            "trim_offsets": true, "use_regex": true});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
        });
        Tokenizer::from_str(&json.to_string()).unwrap()
    }

    #[test]
    fn stream_never_splits_characters() {
        let tokenizer = byte_tokenizer();
        let text = "héllo 😀 เชียงใหม่ ok";
        let mut stream = TextStream::new(&tokenizer, false);
        let mut pieces = Vec::new();
        for b in text.bytes() {
            if let Some(piece) = stream.push(b as u32).unwrap() {
                assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
                pieces.push(piece);
            }
        }
        assert_eq!(stream.finish().unwrap(), None);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.contains(&"😀".to_string()), "{pieces:?}");
    }

    #[test]
    fn finish_flushes_an_incomplete_character() {
        let tokenizer = byte_tokenizer();
        let mut stream = TextStream::new(&tokenizer, false);
        assert_eq!(stream.push(b'a' as u32).unwrap().as_deref(), Some("a"));
        // The first two bytes of "😀" (F0 9F 98 80): held back, then flushed as they stand.
        assert_eq!(stream.push(0xF0).unwrap(), None);
        assert_eq!(stream.push(0x9F).unwrap(), None);
        let rest = stream.finish().unwrap().unwrap_or_default();
        assert!(rest.contains('\u{FFFD}'), "{rest:?}");
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, -5.0]), 1);
    }
}
