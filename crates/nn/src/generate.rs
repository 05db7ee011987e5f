//! Greedy decoding with the KV cache (transformers' `generate(do_sample=False)`), and streaming
//! detokenization that only emits text once it is complete (no split UTF-8 characters, no
//! half-decoded byte-level tokens), following text-generation-inference's prefix/read offsets.

use tokenizers::Tokenizer;

use crate::error::{NnError, Result};
use crate::model::Transformer;

/// Index of the largest logit; the first one on ties, like `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Transformer {
    /// Greedy generation from `prompt` until the sequence (prompt included) reaches `max_length`
    /// tokens, an id of `eos` is produced, or `on_token` returns false. `on_token` sees every
    /// generated id, an end-of-sequence id included. Returns the generated ids.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_length: usize,
        eos: &[u32],
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(NnError::EmptyPrompt);
        }
        let mut generated = Vec::new();
        if prompt.len() >= max_length {
            return Ok(generated);
        }
        let mut cache = self.new_cache(max_length);
        let mut token = argmax(self.forward_last(prompt, &mut cache)?);
        loop {
            generated.push(token);
            let go_on = on_token(token);
            if !go_on || eos.contains(&token) || prompt.len() + generated.len() >= max_length {
                return Ok(generated);
            }
            token = argmax(self.forward_last(&[token], &mut cache)?);
        }
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
