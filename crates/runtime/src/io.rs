//! The graph inputs and outputs a decoding step feeds and reads, resolved from genai_config.json's
//! name patterns (onnxruntime-genai src/config.h `Decoder::Inputs/Outputs`) and checked against the
//! session: names present, KV cache of one float type, every other input with a default value.

use std::collections::HashSet;
use std::path::Path;

use ort::session::Session;
use ort::value::TensorElementType;

use crate::config::{layer_name, GenaiConfig, CONFIG_FILE};
use crate::error::{Result, RuntimeError};

/// What one step feeds and reads, by name, with the element types the graph declares.
#[derive(Debug, Clone)]
pub(crate) struct GraphIo {
    pub input_ids: String,
    /// Element type of input_ids, attention_mask and position_ids (int64, or int32 in some exports).
    pub id_type: TensorElementType,
    /// Fed when the config names it and the graph has it.
    pub attention_mask: Option<String>,
    pub position_ids: Option<String>,
    /// Element type of the KV cache (float32 or float16).
    pub kv_type: TensorElementType,
    /// Per layer: (past key, past value) input names.
    pub past: Vec<(String, String)>,
    pub logits: String,
    /// Per layer: (present key, present value) output names.
    pub present: Vec<(String, String)>,
}

impl GraphIo {
    /// Resolves the names of `config` against `session`'s graph (`model_path` names it in errors).
    pub fn resolve(session: &Session, config: &GenaiConfig, model_path: &Path) -> Result<Self> {
        let decoder = &config.model.decoder;
        let layers = decoder.num_hidden_layers;
        let names = |key: &str, value: &str| -> Vec<(String, String)> {
            (0..layers)
                .map(|l| (layer_name(key, l), layer_name(value, l)))
                .collect()
        };
        let past = names(
            &decoder.inputs.past_key_names,
            &decoder.inputs.past_value_names,
        );
        let present = names(
            &decoder.outputs.present_key_names,
            &decoder.outputs.present_value_names,
        );

        let graph_error = |reason: String| RuntimeError::Graph {
            path: model_path.to_path_buf(),
            reason,
        };
        // None: no such input; Some(None): not a tensor.
        let input_type = |name: &str| -> Option<Option<TensorElementType>> {
            session
                .inputs()
                .iter()
                .find(|i| i.name() == name)
                .map(|i| i.dtype().tensor_type())
        };
        let if_present =
            |name: &Option<String>| name.as_ref().filter(|n| input_type(n).is_some()).cloned();

        let input_ids = decoder.inputs.input_ids.clone();
        let id_type = match input_type(&input_ids) {
            Some(Some(t @ (TensorElementType::Int64 | TensorElementType::Int32))) => t,
            Some(other) => {
                return Err(graph_error(format!(
                    "input {input_ids:?} has type {other:?}; expected int64 or int32 token ids"
                )))
            }
            None => {
                return Err(graph_error(format!(
                    "has no input {input_ids:?} (model.decoder.inputs.input_ids in {CONFIG_FILE})"
                )))
            }
        };
        let first_past = &past[0].0;
        let kv_type = match input_type(first_past) {
            Some(Some(t @ (TensorElementType::Float32 | TensorElementType::Float16))) => t,
            Some(other) => {
                return Err(graph_error(format!(
                    "input {first_past:?} has type {other:?}; expected a float32 or float16 KV cache"
                )))
            }
            None => {
                return Err(graph_error(format!(
                    "has no input {first_past:?} (model.decoder.inputs.past_key_names for layer 0 in {CONFIG_FILE})"
                )))
            }
        };
        for name in past.iter().flat_map(|(k, v)| [k, v]) {
            if input_type(name) != Some(Some(kv_type)) {
                return Err(graph_error(format!(
                    "input {name:?} is missing or not of the KV cache type {kv_type:?}; \
                     {CONFIG_FILE} says the model has {layers} layers"
                )));
            }
        }

        let logits = decoder.outputs.logits.clone();
        let outputs: HashSet<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for name in std::iter::once(&logits).chain(present.iter().flat_map(|(k, v)| [k, v])) {
            if !outputs.contains(name.as_str()) {
                return Err(graph_error(format!(
                    "has no output {name:?}, which model.decoder.outputs in {CONFIG_FILE} names"
                )));
            }
        }

        let io = GraphIo {
            input_ids,
            id_type,
            attention_mask: if_present(&decoder.inputs.attention_mask),
            position_ids: if_present(&decoder.inputs.position_ids),
            kv_type,
            past,
            logits,
            present,
        };
        // Inputs nobody feeds must have a default: an initializer of the same name, as the LoRA
        // weights have once ExtractAdapters made them inputs.
        let fed = io.fed();
        let defaults: HashSet<String> = session
            .overridable_initializers()
            .into_iter()
            .map(|i| i.name().to_string())
            .collect();
        if let Some(input) = session
            .inputs()
            .iter()
            .find(|i| !fed.contains(i.name()) && !defaults.contains(i.name()))
        {
            return Err(graph_error(format!(
                "input {:?} is neither named in {CONFIG_FILE} nor has a default value; the runtime cannot feed it",
                input.name()
            )));
        }
        Ok(io)
    }

    /// Every input name a step feeds.
    fn fed(&self) -> HashSet<&str> {
        let mut fed: HashSet<&str> = self
            .past
            .iter()
            .flat_map(|(k, v)| [k.as_str(), v.as_str()])
            .collect();
        fed.insert(&self.input_ids);
        fed.extend(self.attention_mask.as_deref());
        fed.extend(self.position_ids.as_deref());
        fed
    }
}
