//! rows.cu against kernels/src/cpu/rows.rs: moves are exact, adds round once to the data type, column means are
//! bit for bit the CPU's.

use olive_kernels::cpu::rows::{
    add_assign_ref, add_bias_ref, column_abs_mean as column_abs_mean_cpu, copy_columns_ref,
    gather_rows_ref,
};
use olive_kernels::cuda::attention::Rows;
use olive_kernels::cuda::rows::{
    add_assign, add_bias, column_abs_mean, copy_columns, gather_rows, gather_rows_on_device,
};
use olive_kernels::cuda::{bf16, test_gpu};

use super::common::{random, rel_error};

/// One bf16 rounding of each sum: 2^-9 relative at most.
const BF16_ADD_REL: f64 = 4e-3;

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn to_f32(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

#[test]
fn gather_add_bias_and_copy_match_the_reference() {
    let Some(gpu) = test_gpu("gpu::rows::gather_add_bias_and_copy_match_the_reference") else {
        return;
    };
    let (vocab, width) = (1000, 200);
    let table = to_f32(&to_bf16(&random(vocab * width, 1, 1.0)));
    let ids = [3u32, 999, 0, 3, 517];
    let table_dev = gpu.upload(&to_bf16(&table)).unwrap();
    let mut out = gpu.upload(&vec![bf16::NAN; ids.len() * width]).unwrap();
    gather_rows(&gpu, &table_dev, width, &ids, &mut out).unwrap();
    assert_eq!(
        to_f32(&gpu.download(&out).unwrap()),
        gather_rows_ref(&table, &ids, width)
    );
    let err = gather_rows(&gpu, &table_dev, width, &[1000], &mut out).unwrap_err();
    assert!(
        err.to_string()
            .contains("token id 1000 is past the table's 1000 rows"),
        "{err}"
    );

    let (x, y) = (random(5 * width, 2, 1.0), random(5 * width, 3, 1.0));
    let (mut x_dev, y_dev) = (
        gpu.upload(&to_bf16(&x)).unwrap(),
        gpu.upload(&to_bf16(&y)).unwrap(),
    );
    add_assign(&gpu, &mut x_dev, &y_dev).unwrap();
    let bias = random(width, 4, 1.0);
    add_bias(&gpu, &mut x_dev, &gpu.upload(&to_bf16(&bias)).unwrap()).unwrap();
    let (mut expect, y_r, bias_r) = (
        to_f32(&to_bf16(&x)),
        to_f32(&to_bf16(&y)),
        to_f32(&to_bf16(&bias)),
    );
    add_assign_ref(&mut expect, &y_r);
    add_bias_ref(&mut expect, &bias_r);
    let err = rel_error(&to_f32(&gpu.download(&x_dev).unwrap()), &expect);
    assert!(err <= 2.0 * BF16_ADD_REL, "add: rel error {err:.2e}");

    // k columns of a fused [rows, 3·64] qkv row into a [capacity, 64] cache at row 7.
    let (rows, src_w, dst_w) = (9, 192, 64);
    let src = to_f32(&to_bf16(&random(rows * src_w, 5, 1.0)));
    let mut dst = to_f32(&to_bf16(&random(20 * dst_w, 6, 1.0)));
    let mut dst_dev = gpu.upload(&to_bf16(&dst)).unwrap();
    let d = Rows {
        offset: 7 * dst_w,
        stride: dst_w,
    };
    let s = Rows {
        offset: 64,
        stride: src_w,
    };
    copy_columns(
        &gpu,
        (&mut dst_dev, d),
        (&gpu.upload(&to_bf16(&src)).unwrap(), s),
        rows,
        64,
    )
    .unwrap();
    copy_columns_ref(&mut dst[7 * dst_w..], dst_w, &src[64..], src_w, rows, 64);
    assert_eq!(to_f32(&gpu.download(&dst_dev).unwrap()), dst);
    let far = Rows {
        offset: 12 * dst_w,
        stride: dst_w,
    };
    let src_dev = gpu.upload(&to_bf16(&src)).unwrap();
    assert!(copy_columns(&gpu, (&mut dst_dev, far), (&src_dev, s), rows, 64).is_err());
}

/// A captured decode step's embedding lookup: token ids from device memory (an id past the table gives zeros).
#[test]
fn ids_read_from_device_memory() {
    let Some(gpu) = test_gpu("gpu::rows::ids_read_from_device_memory") else {
        return;
    };
    let (vocab, width) = (100, 72);
    let table = to_f32(&to_bf16(&random(vocab * width, 7, 1.0)));
    let table_dev = gpu.upload(&to_bf16(&table)).unwrap();
    let ids = gpu.upload(&[41u32, 100]).unwrap();
    let mut out = gpu.upload(&vec![bf16::NAN; 2 * width]).unwrap();
    gather_rows_on_device(&gpu, &table_dev, width, &ids.slice(..), &mut out).unwrap();
    let mut want = gather_rows_ref(&table, &[41], width);
    want.extend(vec![0.0; width]);
    assert_eq!(to_f32(&gpu.download(&out).unwrap()), want);
}

#[test]
fn column_abs_means_equal_the_cpu_bit_for_bit() {
    let Some(gpu) = test_gpu("gpu::rows::column_abs_means_equal_the_cpu_bit_for_bit") else {
        return;
    };
    // A width that is not a multiple of the block, and magnitudes over several binades.
    let (rows, width) = (333, 1000);
    let x: Vec<f32> = random(rows * width, 7, 1.0)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1 << (i % 11)) as f32)
        .collect();
    let got = column_abs_mean(&gpu, &gpu.upload(&x).unwrap(), width).unwrap();
    assert_eq!(gpu.download(&got).unwrap(), column_abs_mean_cpu(&x, width));
    let ragged = gpu.upload(&x[..width + 1]).unwrap();
    let err = column_abs_mean(&gpu, &ragged, width).unwrap_err();
    assert!(err.to_string().contains("not whole rows of 1000"), "{err}");
}
