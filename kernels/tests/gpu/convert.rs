//! convert.cu against the `half` crate's conversions: bit-identical both ways.

use olive_kernels::cuda::{bf16, convert, f16, test_gpu};

use super::common::random;

#[test]
fn f32_to_16_bit_and_back_match_the_half_crate_bit_for_bit() {
    let Some(gpu) =
        test_gpu("gpu::convert::f32_to_16_bit_and_back_match_the_half_crate_bit_for_bit")
    else {
        return;
    };
    // An odd length so the tail of the 4-per-thread loop runs; values spanning many exponents.
    let mut host = random(1_000_003, 7, 1.0);
    for (i, v) in host.iter_mut().enumerate() {
        *v *= 2f32.powi((i % 40) as i32 - 20);
    }
    let input = gpu.upload(&host).unwrap();
    let b: Vec<bf16> = gpu
        .download(&convert::from_f32::<bf16>(&gpu, &input).unwrap())
        .unwrap();
    let h: Vec<f16> = gpu
        .download(&convert::from_f32::<f16>(&gpu, &input).unwrap())
        .unwrap();
    assert!(b
        .iter()
        .zip(&host)
        .all(|(d, &x)| d.to_bits() == bf16::from_f32(x).to_bits()));
    assert!(h
        .iter()
        .zip(&host)
        .all(|(d, &x)| d.to_bits() == f16::from_f32(x).to_bits()));
    let back = gpu
        .download(&convert::to_f32(&gpu, &gpu.upload(&b).unwrap()).unwrap())
        .unwrap();
    assert!(back
        .iter()
        .zip(&b)
        .all(|(&y, d)| y.to_bits() == d.to_f32().to_bits()));
    let back = gpu
        .download(&convert::to_f32(&gpu, &gpu.upload(&h).unwrap()).unwrap())
        .unwrap();
    assert!(back
        .iter()
        .zip(&h)
        .all(|(&y, d)| y.to_bits() == d.to_f32().to_bits()));
}
