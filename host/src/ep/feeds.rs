//! The inputs ep-check feeds a model, made from its graph and from what ships beside it (check.rs's module docs say
//! which values each input gets).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use half::f16;
use olive_onnx::adapter_format::{self, Adapter, Parameter};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

/// The text a language model's `input_ids` are made from, cycled when the input is longer.
pub const PASSAGE: &str = "The old town sits where two rivers meet, and most visitors arrive by the morning train. \
From the station a narrow street climbs past bakeries, a bookshop and a market that opens at dawn, to the square \
with the clock tower. In summer the cafes put their tables out under the lime trees and the square stays busy \
until late; in winter it is quiet, and the museum of local history is the warmest place to spend an afternoon. A \
footpath follows the larger river for twelve kilometres to a village known for its cheese and its stone bridge, \
and a bus brings walkers back every hour. The best view is from the ruined castle on the hill, reached by a steep \
stair of three hundred steps; people who make the climb at sunset say that the light on the water is worth every \
one of them.";

/// What lies beside a model file in its folder: [`PASSAGE`] in its tokenizer's ids (`tokenizer.json`) and the
/// parameters of its LoRA adapters (`*.onnx_adapter`, as ExtractAdapters writes them), by name.
#[derive(Debug, Default)]
pub struct Shipped {
    passage_ids: Option<Vec<i64>>,
    adapter: BTreeMap<String, Parameter>,
}

impl Shipped {
    /// Reads the folder of `model`; a tokenizer or adapter file there that cannot be read is an error naming it.
    pub fn beside(model: &Path) -> anyhow::Result<Self> {
        let Some(dir) = model.parent() else {
            return Ok(Self::default());
        };
        let passage_ids = if dir.join("tokenizer.json").is_file() {
            Some(encode_passage(dir)?)
        } else {
            None
        };
        let mut adapter = BTreeMap::new();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path();
            if path
                .extension()
                .is_some_and(|e| e == adapter_format::EXTENSION)
            {
                let read = Adapter::read(&path)
                    .with_context(|| format!("the adapter beside {}", model.display()))?;
                adapter.extend(read.parameters.into_iter().map(|p| (p.name.clone(), p)));
            }
        }
        Ok(Self {
            passage_ids,
            adapter,
        })
    }

    /// These, or where they have nothing, `other`'s.
    pub fn or(self, other: Self) -> Self {
        Self {
            passage_ids: self.passage_ids.or(other.passage_ids),
            adapter: if self.adapter.is_empty() {
                other.adapter
            } else {
                self.adapter
            },
        }
    }

    /// The passage's ids if `session` is a language model whose `logits` output's fixed last dim (the vocabulary)
    /// holds them all (a test model may borrow a larger model's tokenizer).
    fn passage_for(&self, session: &Session) -> Option<&[i64]> {
        let vocabulary = session
            .outputs()
            .iter()
            .find(|o| o.name() == "logits")
            .and_then(|o| match o.dtype() {
                ValueType::Tensor { shape, .. } => shape.last().copied(),
                _ => None,
            })?;
        self.passage_ids
            .as_deref()
            .filter(|ids| ids.iter().all(|&id| (0..vocabulary).contains(&id)))
    }

    /// What `input_ids` get in `session`, for the report; None when it takes none.
    pub fn input_ids(&self, session: &Session) -> Option<&'static str> {
        session
            .inputs()
            .iter()
            .any(|i| i.name() == "input_ids")
            .then(|| match self.passage_for(session) {
                Some(_) => "the passage, tokenized by the model's tokenizer.json",
                None => "synthetic ids (i % 97)",
            })
    }

    /// The graph's inputs filled as check.rs's module docs say.
    pub fn inputs(&self, session: &Session) -> anyhow::Result<Vec<(String, DynValue)>> {
        // Inputs with a default (an initializer of the same name, as ExtractAdapters leaves the LoRA weights) keep it.
        let defaults: Vec<String> = session
            .overridable_initializers()
            .into_iter()
            .map(|i| i.name().to_string())
            .collect();
        // A fixed-shape (static KV) decoder: attention_mask covers P past slots + the S input_ids; its empty cache is
        // the past slots masked and zero (a dynamic decoder's is past length 0).
        let fixed_last = |name: &str| -> Option<usize> {
            let input = session.inputs().iter().find(|i| i.name() == name)?;
            match input.dtype() {
                ValueType::Tensor { shape, .. } => {
                    shape.last().and_then(|&d| usize::try_from(d).ok())
                }
                _ => None,
            }
        };
        let text = self.passage_for(session);
        let (past_slots, mask_len) = match (fixed_last("attention_mask"), fixed_last("input_ids")) {
            (Some(total), Some(new)) if total > new => (total - new, total),
            _ => (0, 1),
        };
        let mut feeds = Vec::new();
        for input in session.inputs() {
            let name = input.name().to_string();
            if defaults.contains(&name) {
                continue;
            }
            let ValueType::Tensor {
                ty,
                shape,
                dimension_symbols,
            } = input.dtype()
            else {
                bail!("input {name} is not a tensor; the check feeds tensors only");
            };
            if let Some(parameter) = self.adapter.get(&name) {
                feeds.push((name.clone(), adapter_value(parameter, *ty, shape)?));
                continue;
            }
            let empty_past = past_slots > 0 && name.starts_with("past_key_values");
            let dims: Vec<usize> = shape
                .iter()
                .zip(dimension_symbols.iter())
                .map(|(&d, symbol)| match d {
                    d if d >= 0 => d as usize,
                    _ if symbol.contains("past") => 0,
                    _ if symbol.starts_with("batch") => 1,
                    _ => 4,
                })
                .collect();
            let count: usize = dims.iter().product();
            let row = dims.last().copied().unwrap_or(1).max(1);
            let ids = |i: usize| match (name.as_str(), text) {
                ("attention_mask", _) => i64::from(past_slots == 0 || i % mask_len >= past_slots),
                ("input_ids", Some(text)) => text[(i % row) % text.len()],
                _ if name.contains("token_type") => 0,
                _ => (i % 97) as i64,
            };
            let ramp = |i: usize| {
                if empty_past {
                    0.0
                } else {
                    ((i % 17) as f32 - 8.0) / 8.0
                }
            };
            let value: DynValue = match ty {
                TensorElementType::Float32 => {
                    Tensor::from_array((dims, (0..count).map(ramp).collect::<Vec<f32>>()))?.into_dyn()
                }
                TensorElementType::Float16 => Tensor::from_array((
                    dims,
                    (0..count).map(|i| f16::from_f32(ramp(i))).collect::<Vec<f16>>(),
                ))?
                .into_dyn(),
                TensorElementType::Int64 => {
                    Tensor::from_array((dims, (0..count).map(ids).collect::<Vec<i64>>()))?.into_dyn()
                }
                TensorElementType::Int32 => Tensor::from_array((
                    dims,
                    (0..count).map(|i| ids(i) as i32).collect::<Vec<i32>>(),
                ))?
                .into_dyn(),
                other => bail!(
                    "input {name} has element type {other:?}; the check feeds float32, float16, int64 and int32"
                ),
            };
            feeds.push((name, value));
        }
        Ok(feeds)
    }
}

/// [`PASSAGE`] in the ids of `dir`'s tokenizer.json.
fn encode_passage(dir: &Path) -> anyhow::Result<Vec<i64>> {
    let file = dir.join("tokenizer.json");
    let encoding = olive_model::tokenizer::load(dir)?
        .encode(PASSAGE, true)
        .map_err(|e| anyhow!("the tokenizer {} cannot encode text: {e}", file.display()))?;
    let ids: Vec<i64> = encoding.get_ids().iter().map(|&id| i64::from(id)).collect();
    if ids.is_empty() {
        bail!(
            "the tokenizer {} encodes the check's passage to no ids",
            file.display()
        );
    }
    Ok(ids)
}

/// An adapter parameter as the value of an input of type `ty` and shape `shape` (-1 for a symbolic dim).
fn adapter_value(
    parameter: &Parameter,
    ty: TensorElementType,
    shape: &[i64],
) -> anyhow::Result<DynValue> {
    let name = &parameter.name;
    let fits = parameter.dims.len() == shape.len()
        && parameter
            .dims
            .iter()
            .zip(shape)
            .all(|(&p, &s)| s < 0 || p == s);
    if !fits {
        bail!(
            "the adapter's {name} has dims {:?}, the model's input of that name {shape:?}",
            parameter.dims
        );
    }
    let dims: Vec<usize> = parameter
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| anyhow!("the adapter's {name} has a negative dim {d}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let bytes = &parameter.raw_data;
    let value = match (ty, parameter.data_type) {
        (TensorElementType::Float32, 1) => {
            let data: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Tensor::from_array((dims, data))?.into_dyn()
        }
        (TensorElementType::Float16, 10) => {
            let data: Vec<f16> = bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect();
            Tensor::from_array((dims, data))?.into_dyn()
        }
        (ty, data_type) => bail!(
            "the adapter's {name} has ONNX data type {data_type}, the model's input of that name {ty:?}"
        ),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(dims: Vec<i64>, data_type: i32, raw_data: Vec<u8>) -> Parameter {
        Parameter {
            name: "lora_A".into(),
            dims,
            data_type,
            raw_data,
        }
    }

    #[test]
    fn an_adapter_parameter_feeds_the_input_of_its_name() {
        let values = [0.5f32, -0.25, 1.0, 2.0, 0.0, -1.0];
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let value = adapter_value(
            &parameter(vec![2, 3], 1, raw),
            TensorElementType::Float32,
            &[2, -1],
        )
        .unwrap();
        let (shape, data) = value.try_extract_tensor::<f32>().unwrap();
        assert_eq!(shape.to_vec(), vec![2, 3]);
        assert_eq!(data, values);
    }

    #[test]
    fn an_adapter_parameter_of_another_shape_or_type_is_refused_by_name() {
        let raw = vec![0u8; 24];
        let err = adapter_value(
            &parameter(vec![2, 3], 1, raw.clone()),
            TensorElementType::Float32,
            &[3, -1],
        );
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("lora_A has dims [2, 3]"));
        let err = adapter_value(
            &parameter(vec![2, 3], 1, raw),
            TensorElementType::Float16,
            &[2, 3],
        );
        assert!(err.unwrap_err().to_string().contains("ONNX data type 1"));
    }
}
