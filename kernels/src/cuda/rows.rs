//! Row moves on the device (kernels/cuda/rows.cu; references in [`crate::cpu::rows`]): the embedding lookup,
//! residual add, bias add and strided column copy of a transformer's forward, and the mean |x| of every column.

use super::attention::Rows;
use super::float::{as_i32, Float};
use super::{CudaSlice, CudaView, Gpu, GpuError, LaunchConfig, PushKernelArg};

const SOURCE: super::KernelSource = crate::cuda_source!("rows");
const THREADS: u32 = 256;

fn rows_config(gpu: &Gpu, rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, gpu.sm_count() as usize * 32) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn flat_config(gpu: &Gpu, n: usize) -> LaunchConfig {
    rows_config(gpu, n.div_ceil(THREADS as usize))
}

fn shape(why: String) -> GpuError {
    GpuError::Shape(why)
}

/// out: [ids.len(), width] = rows `ids` of table: [vocab, width]; an id past the table is refused (ids are
/// checked on the host before they are uploaded).
pub fn gather_rows<T: Float>(
    gpu: &Gpu,
    table: &CudaSlice<T>,
    width: usize,
    ids: &[u32],
    out: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let vocab = table.len() / width.max(1);
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(shape(format!(
            "token id {bad} is past the table's {vocab} rows"
        )));
    }
    if ids.is_empty() {
        return Ok(());
    }
    gather_rows_on_device(gpu, table, width, &gpu.upload(ids)?.slice(..), out)
}

/// [`gather_rows`] with the ids already on the device (a decode step captured in a CUDA graph reads its token from
/// there); an id past the table gives a row of zeros, so check ids before they are written there.
pub fn gather_rows_on_device<T: Float>(
    gpu: &Gpu,
    table: &CudaSlice<T>,
    width: usize,
    ids: &CudaView<'_, u32>,
    out: &mut CudaSlice<T>,
) -> Result<(), GpuError> {
    let vocab = table.len() / width.max(1);
    if out.len() < ids.len() * width {
        return Err(shape(format!(
            "gather_rows: out holds {} elements, {} rows of {width} need {}",
            out.len(),
            ids.len(),
            ids.len() * width
        )));
    }
    if ids.is_empty() {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("gather_rows_{}", T::SUFFIX))?;
    let (rows, w) = (as_i32(ids.len(), "rows")?, as_i32(width, "width")?);
    let vocab =
        u32::try_from(vocab).map_err(|_| shape(format!("gather_rows: {vocab} rows exceed u32")))?;
    // SAFETY: the kernel reads table rows < vocab only (table holds vocab·width elements) and writes
    // ids.len()·width elements of out (checked).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(out)
            .arg(table)
            .arg(ids)
            .arg(&rows)
            .arg(&w)
            .arg(&vocab)
            .launch(rows_config(gpu, ids.len()))
    }?;
    Ok(())
}

/// x += y (same length).
pub fn add_assign<T: Float>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    y: &CudaSlice<T>,
) -> Result<(), GpuError> {
    let n = x.len();
    if y.len() != n {
        return Err(shape(format!(
            "add_assign: x has {n} elements, y {}",
            y.len()
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("add_assign_{}", T::SUFFIX))?;
    let n64 = n as i64;
    // SAFETY: x and y hold n elements each.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(x)
            .arg(y)
            .arg(&n64)
            .launch(flat_config(gpu, n))
    }?;
    Ok(())
}

/// Every row of x: [rows, bias.len()] += bias.
pub fn add_bias<T: Float>(
    gpu: &Gpu,
    x: &mut CudaSlice<T>,
    bias: &CudaSlice<T>,
) -> Result<(), GpuError> {
    let (n, width) = (x.len(), bias.len());
    if width == 0 || n % width != 0 {
        return Err(shape(format!(
            "add_bias: x has {n} elements, not rows of {width}"
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("add_bias_{}", T::SUFFIX))?;
    let (n64, w) = (n as i64, as_i32(width, "width")?);
    // SAFETY: x holds n elements, a multiple of bias's width.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(x)
            .arg(bias)
            .arg(&n64)
            .arg(&w)
            .launch(flat_config(gpu, n))
    }?;
    Ok(())
}

/// `rows × width` elements of dst at its rows `d` = those of src at its rows `s`.
pub fn copy_columns<T: Float>(
    gpu: &Gpu,
    (dst, d): (&mut CudaSlice<T>, Rows),
    (src, s): (&CudaSlice<T>, Rows),
    rows: usize,
    width: usize,
) -> Result<(), GpuError> {
    if !d.fit(rows, width, dst.len()) || !s.fit(rows, width, src.len()) {
        return Err(shape(format!(
            "copy_columns: {rows}x{width} from {s:?} of {} elements to {d:?} of {}",
            src.len(),
            dst.len()
        )));
    }
    if rows == 0 || width == 0 {
        return Ok(());
    }
    let f = gpu.function(&SOURCE, &format!("copy_columns_{}", T::SUFFIX))?;
    let mut dst_view = dst.slice_mut(d.offset..);
    let src_view = src.slice(s.offset..);
    let (ds, ss) = (as_i32(d.stride, "stride")?, as_i32(s.stride, "stride")?);
    let (r, w) = (as_i32(rows, "rows")?, as_i32(width, "width")?);
    // SAFETY: both blocks lie inside their buffers (checked above).
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&mut dst_view)
            .arg(&ds)
            .arg(&src_view)
            .arg(&ss)
            .arg(&r)
            .arg(&w)
            .launch(rows_config(gpu, rows))
    }?;
    Ok(())
}

/// The mean of |x| over the rows of x: [rows, width], per column ([width]), bit for bit
/// [`crate::cpu::rows::column_abs_mean`].
pub fn column_abs_mean(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    width: usize,
) -> Result<CudaSlice<f32>, GpuError> {
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(shape(format!(
            "column_abs_mean: {} elements are not whole rows of {width}",
            x.len()
        )));
    }
    let mut out = gpu.alloc::<f32>(width)?;
    let f = gpu.function(&SOURCE, "column_abs_mean_f32")?;
    let (rows, w) = (as_i32(x.len() / width, "rows")?, as_i32(width, "width")?);
    // SAFETY: x holds rows·width elements (checked) and out width.
    unsafe {
        gpu.stream()
            .launch_builder(&f)
            .arg(&mut out)
            .arg(x)
            .arg(&rows)
            .arg(&w)
            .launch(flat_config(gpu, width))
    }?;
    Ok(out)
}
