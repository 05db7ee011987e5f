//! Which device calibrates which decoder layer, and the layer stream that feeds them: with `Device::Gpu` over
//! several GPUs the layers are spread in contiguous blocks (layer l of L on GPU l·N/L, as pipeline sharding
//! places them, [`crate::device::layer_gpu`]); each layer's weights are uploaded to its GPU once and kept there
//! while the layer is calibrated, the calibration activations passing from block to block through the host.
//! On a GPU the next layer is read from the checkpoint in a background thread while the current one is
//! calibrated, and uploaded there too when it goes to another GPU; the products and their order are those of
//! one GPU, so the output is the same whatever the number of GPUs. On the CPU one layer is loaded at a time.
//! AWQ runs the blocks concurrently (`pipeline`); GPTQ and RTN one layer after another.

use std::ops::Range;
use std::thread::ScopedJoinHandle;

use olive_kernels::cuda::Gpu;
use olive_model::{Checkpoint, ModelConfig};
use olive_nn::DecoderLayer;

use crate::device::{layer_gpu, Compute, Device};
use crate::error::{QuantError, Result};

/// What runs on each decoder layer: (index, layer, its checkpoint tensors, the compute holding it).
pub(crate) type EachLayer<'a> =
    dyn FnMut(usize, &mut DecoderLayer, &[String], &Compute) -> Result<()> + 'a;

/// The [`Compute`] of each device a run uses, and the number of decoder layers spread over them.
#[derive(Debug)]
pub(crate) struct Placement {
    computes: Vec<Compute>,
    layers: usize,
    /// Prepare the next layer in the background (GPUs).
    background: bool,
}

impl Placement {
    /// Opens the devices of `device` for a model of `layers` decoder layers: the CPU, or GPUs 0..count
    /// (a clear error when the driver reports fewer).
    pub(crate) fn open(device: Device, layers: usize) -> Result<Self> {
        let computes = match device {
            Device::Cpu => vec![Compute::cpu()],
            Device::Gpu { count: 0 } => {
                return Err(QuantError::Unsupported(
                    "device gpu over 0 GPUs: expected 1 or more".into(),
                ))
            }
            Device::Gpu { count } => {
                if count > 1 {
                    let found = Gpu::count()?;
                    if count > found {
                        return Err(QuantError::Gpus {
                            asked: count,
                            found,
                        });
                    }
                }
                (0..count).map(Compute::gpu).collect::<Result<_>>()?
            }
        };
        Ok(Placement {
            computes,
            layers,
            background: device != Device::Cpu,
        })
    }

    /// `gpus` checking CPU computes (`Compute::checking`) placed and streamed as GPUs are.
    #[cfg(test)]
    pub(crate) fn checking(gpus: usize, layers: usize) -> Self {
        Placement {
            computes: (0..gpus).map(Compute::checking).collect(),
            layers,
            background: true,
        }
    }

    /// Which device runs which layers, e.g. "layers 0-14 on cuda:0 NVIDIA H100, layers 15-29 on cuda:1 NVIDIA
    /// H100".
    pub(crate) fn describe(&self) -> String {
        let gpus = self.computes.len();
        let mut parts = Vec::new();
        let mut first = 0;
        for l in 0..self.layers {
            let g = layer_gpu(l, self.layers, gpus);
            if l + 1 == self.layers || layer_gpu(l + 1, self.layers, gpus) != g {
                let span = match first == l {
                    true => format!("layer {l}"),
                    false => format!("layers {first}-{l}"),
                };
                parts.push(format!("{span} on {}", self.computes[g].name()));
                first = l + 1;
            }
        }
        parts.join(", ")
    }

    /// The compute of decoder layer `layer`.
    pub(crate) fn compute(&self, layer: usize) -> &Compute {
        &self.computes[layer_gpu(layer, self.layers, self.computes.len())]
    }

    /// How many devices the layers are spread over.
    pub(crate) fn devices(&self) -> usize {
        self.computes.len()
    }

    /// The contiguous blocks of layers, one per device that has layers, in order.
    pub(crate) fn blocks(&self) -> Vec<Range<usize>> {
        let gpus = self.computes.len();
        let mut blocks: Vec<Range<usize>> = Vec::new();
        for l in 0..self.layers {
            match blocks.last_mut() {
                Some(b)
                    if layer_gpu(b.start, self.layers, gpus) == layer_gpu(l, self.layers, gpus) =>
                {
                    b.end = l + 1
                }
                _ => blocks.push(l..l + 1),
            }
        }
        blocks
    }

    /// Runs `each(i, layer, names, compute)` on the decoder layers of `range` in order: layer i loaded from `ckpt` (its
    /// mapped pages released; `names` are its tensors), its weights held on its device for the call and released
    /// after it. On a GPU, layer i + 1 is loaded meanwhile in a background thread (and held on its GPU when that
    /// is not layer i's).
    pub(crate) fn for_each_layer(
        &self,
        ckpt: &Checkpoint,
        config: &ModelConfig,
        range: Range<usize>,
        each: &mut EachLayer<'_>,
    ) -> Result<()> {
        let layers = config.num_hidden_layers;
        let end = range.end.min(layers);
        // Layer i read from the checkpoint, and held on its device when `hold`.
        let prepare = |i: usize, hold: bool| -> Result<Prepared> {
            let layer = DecoderLayer::load(ckpt, config, i)?;
            let prefix = format!("model.layers.{i}.");
            let names: Vec<String> = ckpt
                .names()
                .filter(|n| n.starts_with(&prefix))
                .map(String::from)
                .collect();
            for n in &names {
                ckpt.release(n);
            }
            if hold {
                self.compute(i).hold_layer(&layer)?;
            }
            Ok(Prepared { layer, names, hold })
        };
        let gpu = |i: usize| layer_gpu(i, layers, self.computes.len());
        std::thread::scope(|scope| {
            let mut next: Option<ScopedJoinHandle<'_, Result<Prepared>>> = None;
            for i in range.start..end {
                let mut p = match next.take() {
                    Some(handle) => handle
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
                    None => prepare(i, false)?,
                };
                if self.background && i + 1 < end {
                    let hold = gpu(i + 1) != gpu(i);
                    next = Some(scope.spawn(move || prepare(i + 1, hold)));
                }
                let compute = self.compute(i);
                if !p.hold {
                    compute.hold_layer(&p.layer)?;
                }
                let done = each(i, &mut p.layer, &p.names, compute);
                compute.release();
                done?;
            }
            Ok(())
        })
    }
}

/// A decoder layer read for calibration.
struct Prepared {
    layer: DecoderLayer,
    /// Its checkpoint tensors.
    names: Vec<String>,
    /// Already held on its device.
    hold: bool,
}

#[cfg(test)]
mod tests;
