//! AWQ over several GPUs as a pipeline of layer blocks (`Device::Gpu` with more than one GPU): AWQ feeds each layer
//! the floating-point output of the one before (AutoAWQ's flow), which needs only forward passes, so the
//! thread of block b first runs its layers' floating-point forwards and hands the result to block b + 1, then
//! calibrates its own layers while the later blocks calibrate theirs. Every layer still gets the input and the
//! products of the one-GPU run (the forwards are those of the calibration: `stream::Run::forward`), so the output
//! is byte-identical; the layers' reports reach the caller in layer order, from this thread.
//! GPTQ and RTN feed each layer the quantized output of the one before: their layers run one after another.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};

use olive_model::ModelConfig;

use crate::error::{QuantError, Result};
use crate::placement::Placement;
use crate::stream::{Event, LayerReport, Run};

/// What the blocks did.
pub(crate) struct Blocks {
    /// The last layer's floating-point output: [tokens, hidden].
    pub(crate) hidden: Vec<f32>,
    /// Each layer's error, in layer order.
    pub(crate) errors: Vec<f64>,
    /// Linears quantized.
    pub(crate) quantized: usize,
}

/// What a block thread tells the caller's thread.
enum Message {
    Log(String),
    Layer(LayerReport),
}

/// Where a block's input comes from.
enum Input {
    /// The embedded calibration tokens (the first block).
    Embedded(Vec<f32>),
    /// The block before (its floating-point output).
    Before(Receiver<Vec<f32>>),
}

/// What one block returns.
struct BlockDone {
    hidden: Vec<f32>,
    errors: Vec<f64>,
    quantized: usize,
}

/// Runs AWQ's layers block by block, one thread per block of `placement` (see the module doc); `hidden` is the
/// first layer's input.
pub(crate) fn awq_blocks(
    run: &Run<'_>,
    placement: &Placement,
    config: &ModelConfig,
    hidden: Vec<f32>,
    events: &mut dyn FnMut(Event<'_>) -> bool,
) -> Result<Blocks> {
    let blocks = placement.blocks();
    let stop = AtomicBool::new(false);
    let (tx, rx) = channel::<Message>();
    let results: Vec<Result<BlockDone>> = std::thread::scope(|scope| {
        let mut input = Some(Input::Embedded(hidden));
        let mut handles = Vec::with_capacity(blocks.len());
        for (b, range) in blocks.iter().enumerate() {
            let (next, after) = match b + 1 < blocks.len() {
                true => {
                    let (t, r) = channel();
                    (Some(t), Some(Input::Before(r)))
                }
                false => (None, None),
            };
            let mine = input.take();
            input = after;
            let (tx, stop, range) = (tx.clone(), &stop, range.clone());
            handles.push(scope.spawn(move || {
                let done = block(run, placement, config, range, mine, next, &tx, stop);
                if done.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                done
            }));
        }
        drop(tx);
        // The reports in layer order; a `false` from the caller stops every block.
        let (mut pending, mut next) = (BTreeMap::new(), 0);
        for message in rx {
            let go_on = match message {
                Message::Log(line) => events(Event::Log(&line)),
                Message::Layer(report) => {
                    pending.insert(report.index, report);
                    let mut go_on = true;
                    while let Some(report) = pending.remove(&next) {
                        go_on &= events(Event::Layer(&report));
                        next += 1;
                    }
                    go_on
                }
            };
            if !go_on {
                stop.store(true, Ordering::Relaxed);
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    if stop.load(Ordering::Relaxed) {
        // The first block's own failure (a block whose input never came, or that saw the stop, says Cancelled).
        let first = results.into_iter().find_map(|r| match r {
            Err(QuantError::Cancelled) | Ok(_) => None,
            Err(e) => Some(e),
        });
        return Err(first.unwrap_or(QuantError::Cancelled));
    }
    let mut out = Blocks {
        hidden: Vec::new(),
        errors: Vec::new(),
        quantized: 0,
    };
    for done in results {
        let done = done?;
        out.errors.extend(done.errors);
        out.quantized += done.quantized;
        out.hidden = done.hidden;
    }
    Ok(out)
}

/// One block's thread: its input, its floating-point forwards for the next block (when there is one), then its
/// layers' calibration.
#[allow(clippy::too_many_arguments)]
fn block(
    run: &Run<'_>,
    placement: &Placement,
    config: &ModelConfig,
    range: Range<usize>,
    input: Option<Input>,
    next: Option<Sender<Vec<f32>>>,
    tx: &Sender<Message>,
    stop: &AtomicBool,
) -> Result<BlockDone> {
    let mut hidden = match input {
        Some(Input::Embedded(h)) => h,
        // The block before failed or stopped: its error is the one reported.
        Some(Input::Before(r)) => r.recv().map_err(|_| QuantError::Cancelled)?,
        None => return Err(QuantError::Cancelled),
    };
    let stopped = || match stop.load(Ordering::Relaxed) {
        true => Err(QuantError::Cancelled),
        false => Ok(()),
    };
    if let Some(next) = next {
        let mut h = hidden.clone();
        placement.for_each_layer(
            run.ckpt,
            config,
            range.clone(),
            &mut |i, layer, _, compute| {
                stopped()?;
                h = run.forward(i, layer, compute, &h)?;
                Ok(())
            },
        )?;
        // A closed receiver means the next block stopped; its error is the one reported.
        let _ = next.send(h);
    }
    let (mut errors, mut quantized) = (Vec::new(), 0);
    let mut events = |e: Event<'_>| {
        let sent = tx
            .send(match e {
                Event::Log(line) => Message::Log(line.to_string()),
                Event::Layer(report) => Message::Layer(report.clone()),
            })
            .is_ok();
        sent && !stop.load(Ordering::Relaxed)
    };
    placement.for_each_layer(run.ckpt, config, range, &mut |i, layer, names, compute| {
        stopped()?;
        let (n, error) = run.layer(i, layer, names, compute, &mut hidden, &mut events)?;
        quantized += n;
        errors.push(error);
        Ok(())
    })?;
    Ok(BlockDone {
        hidden,
        errors,
        quantized,
    })
}
