//! The CUDA kernels against the CPU's reference dequantization and the CPU
//! backend. They need a GPU: without one they print why and pass as skipped,
//! unless `REALM_REQUIRE_CUDA=1` (set where a GPU is expected) fails them.

use std::sync::Arc;

use half::{bf16, f16};

use super::CudaBackend;
use super::kernels::{Activations, Addend, Ptr};
use super::resident::ptr;
use crate::compute::cpu::CpuBackend;
use crate::compute::gguf::GgmlType;
use crate::compute::gguf::writer::GgufWriter;
use crate::compute::graph::CompiledGraph;
use crate::compute::ops::{AttentionOp, MatmulOp, Op, RmsNormOp, RopeOp, RopeStyle};
use crate::compute::quant::{self, QK_K, q8, reference, testing};
use crate::compute::{Backend, Budget, KvCache, OutputKind, Sequence, StepOutput, WeightsRegistry};

fn backend() -> Option<CudaBackend> {
    match CudaBackend::new() {
        Ok(b) => Some(b),
        Err(e) if std::env::var_os("REALM_REQUIRE_CUDA").is_some() => panic!("REALM_REQUIRE_CUDA is set, but: {e:#}"),
        Err(e) => {
            eprintln!("skipped (no CUDA): {e:#}");
            None
        }
    }
}

fn values(seed: u64, n: usize) -> Vec<f32> {
    testing::noise(seed, n).iter().map(|&b| b as f32 / 64.0 - 2.0).collect()
}

/// `n` rows of `k` random weights of type `ty`.
fn weights(ty: GgmlType, k: usize, n: usize, seed: u64) -> Vec<u8> {
    let v = || values(seed, n * k).into_iter().map(|x| x / 8.0);
    match ty {
        GgmlType::F32 => v().flat_map(f32::to_le_bytes).collect(),
        GgmlType::F16 => v().flat_map(|x| f16::from_f32(x).to_le_bytes()).collect(),
        GgmlType::Bf16 => v().flat_map(|x| bf16::from_f32(x).to_le_bytes()).collect(),
        _ if quant::is_k_quant(ty) => testing::random_k_row(ty, n * k / QK_K, seed),
        _ => testing::random_row(ty, n * k / quant::QK, seed),
    }
}

/// `x` prepared on the device for weights of `ty`, as the raw slots.
fn gpu_prepared(b: &CudaBackend, ty: GgmlType, x: &[f32], k: usize) -> (Activations, Vec<f32>) {
    let s = &b.stream;
    let form = Activations::of(ty).expect("a known type");
    let xd = s.clone_htod(x).expect("upload");
    let yd = s
        .clone_htod(&vec![f32::NAN; x.len() / k * form.row_slots(k)])
        .expect("upload");
    match b.kernels.prepare(s, form, ptr(&xd, s), ptr(&yd, s), x.len()) {
        Some(launched) => launched.expect("launch"),
        None => return (form, x.to_vec()),
    }
    (form, s.clone_dtoh(&yd).expect("download"))
}

/// What prepared activations stand for, value by value.
fn prepared_values(form: Activations, slots: &[f32], n: usize) -> Vec<f32> {
    match form {
        Activations::Q8_0 | Activations::Q8K => {
            let bytes: Vec<u8> = slots.iter().flat_map(|v| v.to_le_bytes()).collect();
            let scales = &slots[n / 4..n / 4 + n / 32];
            (0..n).map(|i| bytes[i] as i8 as f32 * scales[i / 32]).collect()
        }
        _ => slots.to_vec(),
    }
}

fn gpu_matmul(b: &CudaBackend, ty: GgmlType, w: &[u8], x: &[f32], k: usize, n: usize) -> Vec<f32> {
    gpu_matmul_adding(b, ty, w, x, (k, n), None)
}

/// Host values to add, and the `Addend` that passes them once uploaded.
type HostAddend<'a> = (&'a [f32], fn(Ptr) -> Addend);

/// The matmul plus `add`.
fn gpu_matmul_adding(
    b: &CudaBackend,
    ty: GgmlType,
    w: &[u8],
    x: &[f32],
    (k, n): (usize, usize),
    add: Option<HostAddend>,
) -> Vec<f32> {
    let s = &b.stream;
    let rows = x.len() / k;
    let (_, prepared) = gpu_prepared(b, ty, x, k);
    let (wd, xd) = (
        s.clone_htod(w).expect("upload"),
        s.clone_htod(&prepared).expect("upload"),
    );
    // Poisoned, so that a value the kernel does not write shows.
    let yd = s.clone_htod(&vec![f32::NAN; rows * n]).expect("upload");
    let row_bytes = ty.row_bytes(k).expect("whole blocks");
    let add = add.map(|(values, addend)| (s.clone_htod(values).expect("upload"), addend));
    let addend = add.as_ref().map(|(d, addend)| addend(ptr(d, s)));
    b.kernels
        .matmul(
            s,
            ty,
            ptr(&wd, s),
            ptr(&xd, s),
            ptr(&yd, s),
            (rows, k, n),
            row_bytes,
            addend,
        )
        .expect("launch");
    s.clone_dtoh(&yd).expect("download")
}

#[test]
fn a_matmul_adding_a_residual_or_a_bias_gives_the_separate_adds_bits() {
    let Some(b) = backend() else { return };
    let (k, n) = (512, 40);
    for (seed, ty) in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4K].into_iter().enumerate() {
        let seed = seed as u64;
        let w = weights(ty, k, n, seed + 1);
        for rows in [1, 5, 16, 37] {
            let x = values(seed + 20, rows * k);
            let plain = gpu_matmul(&b, ty, &w, &x, k, n);
            let residual = values(seed + 40, rows * n);
            let bias = values(seed + 60, n);
            let with_residual = gpu_matmul_adding(&b, ty, &w, &x, (k, n), Some((&residual, Addend::Rows)));
            let with_bias = gpu_matmul_adding(&b, ty, &w, &x, (k, n), Some((&bias, Addend::Row)));
            for (i, y) in plain.iter().enumerate() {
                let bits = |v: f32| v.to_bits();
                assert_eq!(
                    bits(with_residual[i]),
                    bits(y + residual[i]),
                    "{ty}, {rows} rows: residual at {i}"
                );
                assert_eq!(
                    bits(with_bias[i]),
                    bits(y + bias[i % n]),
                    "{ty}, {rows} rows: bias at {i}"
                );
            }
        }
    }
}

#[test]
fn matmul_of_every_type_equals_the_reference_dequantization() {
    let Some(b) = backend() else { return };
    // 100 rows take every tiling; k is not a multiple of the staged 256.
    let (k, n) = (768 + 256 + 32 * 3, 37);
    for (seed, ty) in quant::TYPES.into_iter().enumerate() {
        let k = if quant::is_k_quant(ty) { 1024 } else { k };
        let w = weights(ty, k, n, seed as u64 + 1);
        let row_bytes = ty.row_bytes(k).expect("whole blocks");
        let x = values(seed as u64 + 50, 100 * k);
        let y = gpu_matmul(&b, ty, &w, &x, k, n);
        // The reference multiplies the activations as the CPU rounds them.
        let x = cpu_rounded(ty, &x);
        let mut wrow = vec![0.0f32; k];
        for j in 0..n {
            reference::dequantize_row(ty, &w[j * row_bytes..(j + 1) * row_bytes], &mut wrow);
            for (r, xr) in x.chunks_exact(k).enumerate() {
                let exact: f64 = wrow.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let magnitude: f64 = wrow.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let got = y[r * n + j] as f64;
                assert!(
                    (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                    "{ty} row {r} column {j}: {got} vs {exact}"
                );
            }
        }
        // Each row alone, or among 16, gives the bits it gets among 100.
        let x = values(seed as u64 + 50, 100 * k);
        let sixteen = gpu_matmul(&b, ty, &w, &x[..16 * k], k, n);
        for (r, xr) in x.chunks_exact(k).enumerate().step_by(7) {
            let alone = gpu_matmul(&b, ty, &w, xr, k, n);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let among_100 = bits(&y[r * n..(r + 1) * n]);
            assert_eq!(
                bits(&alone),
                among_100,
                "{ty}: row {r} alone differs from row {r} of 100"
            );
            if r < 16 {
                assert_eq!(bits(&sixteen[r * n..(r + 1) * n]), among_100, "{ty}: row {r} among 16");
            }
        }
    }
}

const VOCAB: u64 = 50;
const DIM: u64 = 128;
const HEAD_DIM: u32 = 64;

/// A one-layer model (two query heads over one KV head, a sliding window of
/// 4, a SwiGLU feed-forward) with f32 weights, and its graph.
fn tiny_program() -> (tempfile::NamedTempFile, Arc<CompiledGraph>) {
    let mut w = GgufWriter::new();
    let kv = HEAD_DIM as u64;
    let ffn = 256;
    let small = |seed: u64, n: u64| values(seed, n as usize).iter().map(|v| v / 16.0).collect::<Vec<_>>();
    for (i, (name, cols, rows)) in [
        ("token_embd", DIM, VOCAB),
        ("wq", DIM, DIM),
        ("wk", DIM, kv),
        ("wv", DIM, kv),
        ("wo", DIM, DIM),
        ("gate", DIM, ffn),
        ("up", DIM, ffn),
        ("down", ffn, DIM),
        ("output", DIM, VOCAB),
    ]
    .into_iter()
    .enumerate()
    {
        w.tensor_f32(name, &[cols, rows], &small(i as u64 + 1, cols * rows));
    }
    w.tensor_f32(
        "norm",
        &[DIM],
        &values(77, DIM as usize)
            .iter()
            .map(|v| 1.0 + v / 8.0)
            .collect::<Vec<_>>(),
    );
    w.tensor_f32("bias", &[kv], &small(78, kv));
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    w.write(&mut file).expect("write");
    let model = WeightsRegistry::default().open(file.path()).expect("open");
    let norm = |input, weight: Option<&str>| {
        Op::RmsNorm(RmsNormOp {
            input,
            weight: weight.map(str::to_string),
            eps: 1e-5,
            group: 0,
        })
    };
    let matmul = |input, weight: &str| {
        Op::Matmul(MatmulOp {
            input,
            weight: weight.into(),
        })
    };
    let rope = |input, style| {
        Op::Rope(RopeOp {
            input,
            head_dim: HEAD_DIM,
            rotary_dims: HEAD_DIM,
            base: 10000.0,
            freq_scale: 1.0,
            style,
        })
    };
    let ops = vec![
        Op::Embed("token_embd".into()),
        norm(0, Some("norm")),
        matmul(1, "wq"),
        matmul(1, "wk"),
        matmul(1, "wv"),
        Op::AddTensor((4, "bias".into())),
        rope(2, RopeStyle::Neox),
        rope(3, RopeStyle::Normal),
        Op::Attention(AttentionOp {
            q: 6,
            k: 7,
            v: 5,
            layer: 0,
            n_head: 2,
            n_kv_head: 1,
            head_dim: HEAD_DIM,
            scale: 0.125,
            window: 4,
        }),
        matmul(8, "wo"),
        Op::Add((0, 9)),
        norm(10, None),
        matmul(11, "gate"),
        matmul(11, "up"),
        Op::Swiglu((12, 13)),
        matmul(14, "down"),
        Op::Scale((15, 0.5)),
        Op::Add((10, 16)),
        Op::LastRow(17),
        norm(18, Some("norm")),
        matmul(19, "output"),
    ];
    let graph = CompiledGraph::compile(model, &ops).expect("compiles");
    (file, Arc::new(graph))
}

fn cache(backend: &dyn Backend) -> KvCache {
    let charge = Budget::unlimited("test").charge(64).expect("unlimited");
    backend.new_kv(1, HEAD_DIM, 64, charge).expect("a cache")
}

/// Two sequences' steps: A's prompt of 9 and 3 decode steps, B's prompt of 5
/// and 2 decode steps; each step's output rows.
fn steps_alone(backend: &dyn Backend, g: &CompiledGraph) -> Vec<Vec<f32>> {
    let (a, b) = (vec![3u32, 14, 15, 9, 2, 6, 5, 35, 8], vec![7u32, 1, 49, 0, 12]);
    let mut out = Vec::new();
    for (prompt, decode) in [(a, vec![11u32, 22, 33]), (b, vec![44, 4])] {
        let mut kv = cache(backend);
        let mut start = 0;
        for step in std::iter::once(prompt).chain(decode.into_iter().map(|t| vec![t])) {
            let mut batch = [Sequence {
                cache: &mut kv,
                tokens: &step,
                start,
                output: OutputKind::Logits,
                allowed: None,
            }];
            out.extend(
                backend
                    .run_batch(g, &mut batch)
                    .expect("step")
                    .into_iter()
                    .map(StepOutput::logits),
            );
            start += step.len() as u32;
        }
    }
    out
}

#[test]
fn a_graph_on_the_gpu_matches_the_cpu_backend_and_its_rows_alone() {
    let Some(gpu) = backend() else { return };
    let (_file, g) = tiny_program();
    let cpu = CpuBackend::new(2).expect("cpu");
    let expected = steps_alone(&cpu, &g);
    let alone = steps_alone(&gpu, &g);
    for (step, (e, a)) in expected.iter().zip(&alone).enumerate() {
        let diff = e.iter().zip(a).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-3, "step {step}: max |cpu - gpu| {diff}");
    }
    // A's and B's prompts in one batch, then their decode steps together.
    let mut caches = [cache(&gpu), cache(&gpu)];
    let (pa, pb) = ([3u32, 14, 15, 9, 2, 6, 5, 35, 8], [7u32, 1, 49, 0, 12]);
    let prompts = batch_logits(&gpu, &g, &mut caches, &[0, 0], &[&pa, &pb]);
    let decodes = batch_logits(&gpu, &g, &mut caches, &[9, 5], &[&[11], &[44]]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&prompts[0]), bits(&alone[0]), "A's prompt batched");
    assert_eq!(bits(&prompts[1]), bits(&alone[4]), "B's prompt batched");
    assert_eq!(bits(&decodes[0]), bits(&alone[1]), "A's first decode batched");
    assert_eq!(bits(&decodes[1]), bits(&alone[5]), "B's first decode batched");
}

/// One step of each of `caches`' sequences (its `tokens` at `starts`), all
/// in one batch; each one's logits.
fn batch_logits(
    gpu: &CudaBackend,
    g: &CompiledGraph,
    caches: &mut [KvCache],
    starts: &[u32],
    tokens: &[&[u32]],
) -> Vec<Vec<f32>> {
    let mut batch: Vec<Sequence> = caches
        .iter_mut()
        .zip(starts)
        .zip(tokens)
        .map(|((cache, &start), &tokens)| Sequence {
            cache,
            tokens,
            start,
            output: OutputKind::Logits,
            allowed: None,
        })
        .collect();
    let out = gpu.run_batch(g, &mut batch).expect("step");
    out.into_iter().map(StepOutput::logits).collect()
}

#[test]
fn a_padded_decode_batch_gives_each_row_its_bits_alone() {
    let Some(gpu) = backend() else { return };
    let (_file, g) = tiny_program();
    // Three sequences: their decode batches run padded to four rows.
    let prompts: [&[u32]; 3] = [&[3, 14, 15], &[7, 1], &[9, 2, 6, 5]];
    let (mut alone, mut together): (Vec<KvCache>, Vec<KvCache>) = (
        prompts.iter().map(|_| cache(&gpu)).collect(),
        prompts.iter().map(|_| cache(&gpu)).collect(),
    );
    for caches in [&mut alone, &mut together] {
        for (i, prompt) in prompts.into_iter().enumerate() {
            batch_logits(&gpu, &g, &mut caches[i..=i], &[0], &[prompt]);
        }
    }
    let mut starts: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // The first batch is captured as a graph, the second replays it.
    for tokens in [[11u32, 22, 33], [44, 4, 40]] {
        let tokens = tokens.map(|t| [t]);
        let tokens: Vec<&[u32]> = tokens.iter().map(|t| &t[..]).collect();
        let batched = batch_logits(&gpu, &g, &mut together, &starts, &tokens);
        assert_eq!(batched.len(), 3, "one output per real sequence");
        for (i, row) in batched.iter().enumerate() {
            let single = batch_logits(&gpu, &g, &mut alone[i..=i], &starts[i..=i], &tokens[i..=i]);
            assert_eq!(bits(row), bits(&single[0]), "sequence {i} at {}", starts[i]);
        }
        starts.iter_mut().for_each(|s| *s += 1);
    }
}

#[test]
fn caches_dropped_on_other_threads_during_captures_break_none() {
    let Some(gpu) = backend() else { return };
    let gpu = Arc::new(gpu);
    // Caches with device stores (two-token prompts: not captured), dropped
    // one by one on another thread while decode steps are captured here.
    let (_file, g) = tiny_program();
    let mut doomed: Vec<KvCache> = (0..400).map(|_| cache(&*gpu)).collect();
    let (prompts, starts) = (vec![&[3u32, 14][..]; doomed.len()], vec![0; doomed.len()]);
    batch_logits(&gpu, &g, &mut doomed, &starts, &prompts);
    let dropper = std::thread::spawn(move || {
        for cache in doomed {
            drop(cache);
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    });
    // Each model opened anew is a new graph to capture, for each batch size.
    let mut round = 0;
    while !dropper.is_finished() && round < 200 {
        let (_file, g) = tiny_program();
        let mut caches: Vec<KvCache> = (0..8).map(|_| cache(&*gpu)).collect();
        for n in [1, 2, 4, 8] {
            let tokens = vec![&[5u32][..]; n];
            batch_logits(&gpu, &g, &mut caches[..n], &vec![0; n], &tokens);
        }
        round += 1;
    }
    dropper.join().expect("the dropping thread");
    assert_eq!(gpu.failed_captures(), 0, "captures failed over {round} rounds of 4");
}

/// What the reference quantizers' activations (the CPU backend's) stand
/// for, value by value.
fn cpu_rounded(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    match quant::VecDotType::of(ty).expect("a known type") {
        quant::VecDotType::F32 => x.to_vec(),
        quant::VecDotType::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        quant::VecDotType::Bf16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        quant::VecDotType::Q8 => x
            .chunks_exact(quant::QK)
            .map(q8::quantize_block)
            .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
            .collect(),
        quant::VecDotType::Q8K => x
            .chunks_exact(QK_K)
            .map(q8::quantize_block_q8k)
            .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
            .collect(),
    }
}

#[test]
fn activations_are_rounded_as_the_cpu_quantizes_them() {
    let Some(b) = backend() else { return };
    let mut x = values(9, 4 * 512);
    // Ties of magnitude with both signs: the first one gives q8_K its sign.
    x[300] = 3.0;
    x[301] = -3.0;
    x[40] = 0.0;
    for ty in [
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::Bf16,
    ] {
        let (form, slots) = gpu_prepared(&b, ty, &x, 512);
        let got = prepared_values(form, &slots, x.len());
        let expected = cpu_rounded(ty, &x);
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            // 0 and -0 (a zero quant times a negative scale) are the same.
            assert!(g.to_bits() == e.to_bits() || g == e, "{ty} value {i}: {g} vs {e}");
        }
        if matches!(form, Activations::Q8_0 | Activations::Q8K) {
            let n = x.len();
            let bytes: Vec<u8> = slots.iter().flat_map(|v| v.to_le_bytes()).collect();
            for (g, sum) in slots[n / 4 + n / 32..].iter().enumerate() {
                let expected: i32 = bytes[16 * g..16 * g + 16].iter().map(|&q| q as i8 as i32).sum();
                assert_eq!(sum.to_bits() as i32, expected, "{ty}: the sum of values {}..", 16 * g);
            }
        }
    }
}

#[test]
fn top_k_on_the_device_ranks_as_the_host_does() {
    let Some(b) = backend() else { return };
    let s = &b.stream;
    let (rows, cols) = (3, 1000);
    // Eight levels only: ties everywhere, broken by the lower id.
    let x: Vec<f32> = testing::noise(21, rows * cols)
        .iter()
        .map(|&v| (v % 8) as f32 - 3.5)
        .collect();
    let ks = [1i32, 7, 40];
    let max_k = 40;
    let (xd, kd) = (s.clone_htod(&x).expect("upload"), s.clone_htod(&ks).expect("upload"));
    let vd = s.clone_htod(&vec![f32::NAN; rows * max_k]).expect("upload");
    let id = s.clone_htod(&vec![-7i32; rows * max_k]).expect("upload");
    b.kernels
        .top_k(
            s,
            ptr(&xd, s),
            (rows, cols),
            ptr(&kd, s),
            max_k,
            ptr(&vd, s),
            ptr(&id, s),
        )
        .expect("launch");
    let (values, ids) = (
        s.clone_dtoh(&vd).expect("download"),
        s.clone_dtoh(&id).expect("download"),
    );
    for (r, &k) in ks.iter().enumerate() {
        let expected = crate::compute::top_k(&x[r * cols..(r + 1) * cols], k as usize);
        let got: Vec<(u32, f32)> = (0..k as usize)
            .map(|i| (ids[r * max_k + i] as u32, values[r * max_k + i]))
            .collect();
        assert_eq!(got, expected, "row {r}, k {k}");
    }
}
