//! Kernel timings, run by hand (they are ignored by default):
//! `cargo test --release -p realm-host --lib bench_ -- --ignored --nocapture`.

use std::time::Instant;

use super::matmul_rows;
use crate::compute::gguf::GgmlType;
use crate::compute::quant::testing::noise;
use half::f16;

/// A random `[n, k]` weight of `ty` whose f16 scales are small and finite.
fn weight(ty: GgmlType, k: usize, n: usize) -> Vec<u8> {
    let bytes = ty.row_bytes(k).expect("whole blocks");
    let mut w = noise(7, n * bytes);
    let offsets: &[usize] = match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        GgmlType::F16 => &[],
        _ => unreachable!(),
    };
    if ty == GgmlType::F16 {
        for c in w.chunks_exact_mut(2) {
            c.copy_from_slice(&f16::from_f32((c[0] as f32 - 128.0) / 256.0).to_le_bytes());
        }
    }
    for block in w.chunks_exact_mut(ty.block_bytes()) {
        for &at in offsets {
            let v = f16::from_f32(0.001 + block[at] as f32 / 65536.0);
            block[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    w
}

fn time(threads: usize, ty: GgmlType, k: usize, n: usize, rows: usize) {
    let w = weight(ty, k, n);
    let x: Vec<f32> = noise(3, k * rows).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a pool");
    let reps = if rows == 1 { 60 } else { 3 };
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let out = pool.install(|| matmul_rows(ty, &w, k, n, &x));
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(out);
    }
    println!(
        "{ty:5} {n:6}x{k:5} rows {rows:3} threads {threads}: {:8.3} ms  {:6.2} GB/s  {:8.1} GFLOP/s",
        best * 1e3,
        w.len() as f64 / best / 1e9,
        2.0 * (n * k * rows) as f64 / best / 1e9
    );
}

/// `BENCH_THREADS`, or one thread.
fn bench_threads() -> usize {
    std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

#[test]
#[ignore]
fn bench_decode_matvec() {
    let threads = bench_threads();
    for (ty, k, n) in [
        (GgmlType::Q5_0, 896, 4864),
        (GgmlType::Q4K, 4864, 896),
        (GgmlType::Q6K, 4864, 896),
        (GgmlType::Q8_0, 896, 4864),
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 896, 151936),
        (GgmlType::Q5_0, 640, 2048),
    ] {
        time(threads, ty, k, n, 1);
    }
}

#[test]
#[ignore]
fn bench_prefill_matmul() {
    let threads = bench_threads();
    for (ty, k, n) in [
        (GgmlType::Q5_0, 896, 4864),
        (GgmlType::Q4K, 4864, 896),
        (GgmlType::Q6K, 4864, 896),
        (GgmlType::Q8_0, 896, 4864),
        (GgmlType::Q4_1, 576, 1536),
    ] {
        time(threads, ty, k, n, 64);
    }
}

/// The tied output matrices of gemma3 and Qwen2.5 at a 16-sequence decode
/// step, and one row for the weights' read alone.
#[test]
#[ignore]
fn bench_batched_output() {
    let threads = bench_threads();
    for (ty, k, n) in [(GgmlType::Q8_0, 640, 262144), (GgmlType::Q8_0, 896, 151936)] {
        for rows in [1, 16] {
            time(threads, ty, k, n, rows);
        }
    }
}
