//! Device-side timing for benches and timing examples: CUDA events between consecutive launches of the timed
//! function, queued behind a spin kernel so the host is ahead of the GPU and the events see kernel time only; the
//! median over the repetitions.

use cudarc::driver::sys::CUevent_flags;

use super::{Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("timing");
/// GPU cycles of spin per timed launch queued behind it: longer than the host takes to queue one (~10 µs).
const SPIN_CYCLES_PER_LAUNCH: i64 = 150_000;

/// How many calls are made.
#[derive(Debug, Clone, Copy)]
pub struct Reps {
    /// Untimed calls first (module load, cuBLAS heuristics, clocks up).
    pub warmup: usize,
    /// Calls timed one by one.
    pub timed: usize,
}

/// Median device time of one call of `f` in microseconds; `f(i)` gets the call's number (to rotate inputs larger
/// than the cache).
pub fn median_us(
    gpu: &Gpu,
    reps: Reps,
    mut f: impl FnMut(usize) -> Result<(), GpuError>,
) -> Result<f64, GpuError> {
    if reps.timed == 0 {
        return Err(GpuError::Shape("median_us: time at least one call".into()));
    }
    for i in 0..reps.warmup {
        f(i)?;
    }
    let spin = gpu.function(&SOURCE, "spin")?;
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    let cycles = SPIN_CYCLES_PER_LAUNCH * reps.timed as i64;
    // SAFETY: the spin kernel takes one i64 and touches no memory.
    unsafe { gpu.stream().launch_builder(&spin).arg(&cycles).launch(one) }?;
    let stream = gpu.stream();
    let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let mut events = Vec::with_capacity(reps.timed + 1);
    events.push(stream.record_event(flags)?);
    for i in 0..reps.timed {
        f(reps.warmup + i)?;
        events.push(stream.record_event(flags)?);
    }
    gpu.synchronize()?;
    let mut times = events
        .windows(2)
        .map(|w| w[0].elapsed_ms(&w[1]).map(|ms| f64::from(ms) * 1e3))
        .collect::<Result<Vec<f64>, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
