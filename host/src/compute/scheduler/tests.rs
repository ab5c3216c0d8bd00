//! Batched steps on a tiny one-layer model give the same rows, bit for bit,
//! as the same steps run alone.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use super::*;
use crate::compute::cpu::CpuBackend;
use crate::compute::gguf::writer::GgufWriter;
use crate::compute::ops::{AttentionOp, MatmulOp, Op, RmsNormOp, RopeOp, RopeStyle};
use crate::compute::quant::testing;
use crate::compute::{Budget, OutputKind, StepOutput, WeightsRegistry};

const VOCAB: u64 = 40;
const DIM: u64 = 16;
const HEAD_DIM: u32 = 8;

/// Weights in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    testing::noise(seed, n)
        .iter()
        .map(|&b| b as f32 / 128.0 - 1.0)
        .collect()
}

/// A one-layer attention model (two query heads over one KV head) and its graph.
fn tiny_program() -> (tempfile::NamedTempFile, Arc<CompiledGraph>) {
    let mut w = GgufWriter::new();
    let kv = HEAD_DIM as u64;
    for (i, (name, rows)) in [
        ("token_embd", VOCAB),
        ("wq", DIM),
        ("wk", kv),
        ("wv", kv),
        ("wo", DIM),
        ("output", VOCAB),
    ]
    .into_iter()
    .enumerate()
    {
        w.tensor_f32(name, &[DIM, rows], &noise(i as u64 + 1, (DIM * rows) as usize));
    }
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    w.write(&mut file).expect("write");
    let model = WeightsRegistry::default().open(file.path()).expect("open");
    let norm = |input| {
        Op::RmsNorm(RmsNormOp {
            input,
            weight: None,
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
    let rope = |input| {
        Op::Rope(RopeOp {
            input,
            head_dim: HEAD_DIM,
            rotary_dims: HEAD_DIM,
            base: 10000.0,
            freq_scale: 1.0,
            style: RopeStyle::Neox,
        })
    };
    let ops = vec![
        Op::Embed("token_embd".into()),
        norm(0),
        matmul(1, "wq"),
        matmul(1, "wk"),
        matmul(1, "wv"),
        rope(2),
        rope(3),
        Op::Attention(AttentionOp {
            q: 5,
            k: 6,
            v: 4,
            layer: 0,
            n_head: 2,
            n_kv_head: 1,
            head_dim: HEAD_DIM,
            scale: 0.35,
            window: 0,
        }),
        matmul(7, "wo"),
        Op::Add((0, 8)),
        Op::LastRow(9),
        norm(10),
        matmul(11, "output"),
    ];
    let graph = CompiledGraph::compile(model, &ops).expect("compiles");
    (file, Arc::new(graph))
}

fn cache() -> SharedKv {
    let charge = Budget::unlimited("test").charge(64).expect("unlimited");
    Arc::new(Mutex::new(
        KvCache::host(1, HEAD_DIM, 64, charge, Arc::default()).expect("a cache"),
    ))
}

/// Sequence `i`'s steps: a prompt of `3 + 7i` tokens, then six single tokens.
fn steps_of(i: usize) -> Vec<Vec<u32>> {
    let prompt: Vec<u32> = (0..3 + 7 * i).map(|t| ((t * 5 + i) % VOCAB as usize) as u32).collect();
    let mut steps = vec![prompt];
    steps.extend((0..6).map(|s| vec![((i * 7 + s * 3) % VOCAB as usize) as u32]));
    steps
}

/// Runs sequence `i`'s steps through `scheduler`, returning every output row.
fn run_sequence(scheduler: &Arc<Scheduler>, seat: &Arc<Seat>, graph: &Arc<CompiledGraph>, i: usize) -> Vec<Vec<f32>> {
    run_shaped(scheduler, seat, graph, i, OutputKind::Logits, None)
        .into_iter()
        .map(StepOutput::logits)
        .collect()
}

/// Runs sequence `i`'s steps, each asking for `output` among `allowed`.
fn run_shaped(
    scheduler: &Arc<Scheduler>,
    seat: &Arc<Seat>,
    graph: &Arc<CompiledGraph>,
    i: usize,
    output: OutputKind,
    allowed: Option<Vec<u32>>,
) -> Vec<StepOutput> {
    let cache = cache();
    let mut start = 0;
    steps_of(i)
        .into_iter()
        .map(|tokens| {
            let n = tokens.len() as u32;
            let step = StepRequest {
                graph: graph.clone(),
                cache: cache.clone(),
                tokens,
                start,
                output,
                allowed: allowed.clone(),
            };
            start += n;
            block_on(scheduler.run(seat, step)).expect("the step runs")
        })
        .collect()
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn backend() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new(2).expect("cpu backend"))
}

#[test]
fn batched_steps_equal_the_same_steps_alone() {
    let (_file, graph) = tiny_program();
    let alone = Scheduler::new(backend(), BatchPolicy::unbatched());
    let seat = Seat::new("alone", 1);
    let expected: Vec<_> = (0..3).map(|i| run_sequence(&alone, &seat, &graph, i)).collect();

    // A long wait, so that every batch waits for all three stepping seats, and a
    // token budget of 8, so that the longer prompts run in chunks.
    let policy = BatchPolicy {
        max_sequences: 8,
        max_tokens: 8,
        prefill_beside_decode: 8,
        wait: Duration::from_millis(500),
    };
    let batched = Scheduler::new(backend(), policy);
    let barrier = Arc::new(Barrier::new(3));
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let (scheduler, graph, barrier) = (batched.clone(), graph.clone(), barrier.clone());
            std::thread::spawn(move || {
                let seat = Seat::new(&format!("tenant-{i}"), 1);
                seat.set_stepping(true);
                barrier.wait();
                let rows = run_sequence(&scheduler, &seat, &graph, i);
                seat.set_stepping(false);
                rows
            })
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let rows = thread.join().expect("no panic");
        for (s, (got, want)) in rows.iter().zip(&expected[i]).enumerate() {
            let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && got.len() == want.len(), "sequence {i} step {s} differs");
        }
    }
    let totals = batched.totals();
    assert!(totals.sequences >= 2 * totals.batches, "steps ran batched: {totals:?}");
    assert_eq!(totals.tokens, (0..3).map(|i| 3 + 7 * i + 6).sum::<usize>() as u64);
}

#[test]
fn a_masked_sequence_batches_with_free_ones_and_keeps_to_its_mask() {
    let (_file, graph) = tiny_program();
    let alone = Scheduler::new(backend(), BatchPolicy::unbatched());
    let seat = Seat::new("alone", 1);
    let logits = run_sequence(&alone, &seat, &graph, 0);
    // Only the odd tokens.
    let allowed = vec![0xAAAA_AAAA_u32; (VOCAB as usize).div_ceil(32)];
    let policy = BatchPolicy {
        max_sequences: 8,
        max_tokens: 64,
        prefill_beside_decode: 64,
        wait: Duration::from_millis(500),
    };
    let batched = Scheduler::new(backend(), policy);
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [None, Some(allowed)]
        .into_iter()
        .map(|mask| {
            let (scheduler, graph, barrier) = (batched.clone(), graph.clone(), barrier.clone());
            std::thread::spawn(move || {
                let seat = Seat::new(if mask.is_some() { "masked" } else { "free" }, 1);
                seat.set_stepping(true);
                barrier.wait();
                let rows = run_shaped(&scheduler, &seat, &graph, 0, OutputKind::TopK(1), mask);
                seat.set_stepping(false);
                rows
            })
        })
        .collect();
    let outputs: Vec<_> = threads.into_iter().map(|t| t.join().expect("no panic")).collect();
    for (step, row) in logits.iter().enumerate() {
        let best =
            |ids: &mut dyn Iterator<Item = usize>| ids.max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)));
        let free = best(&mut (0..row.len())).expect("a token") as u32;
        let odd = best(&mut (1..row.len()).step_by(2)).expect("a token") as u32;
        let top = |output: &StepOutput| match output {
            StepOutput::TopK(top) => top[0].0,
            other => panic!("{other:?}"),
        };
        assert_eq!(top(&outputs[0][step]), free, "step {step}: the free sequence");
        assert_eq!(top(&outputs[1][step]), odd, "step {step}: the masked sequence");
    }
    // A lane learns of a seat at its first step, so one sequence's first
    // step may run before the other's arrives, which leaves its last step
    // unpaired too: all the others pair.
    let totals = batched.totals();
    assert!(
        totals.sequences + 2 >= 2 * totals.batches,
        "steps ran batched: {totals:?}"
    );
}

#[test]
fn a_bad_step_fails_alone() {
    let (_file, graph) = tiny_program();
    let scheduler = Scheduler::new(backend(), BatchPolicy::default());
    let seat = Seat::new("t", 1);
    let step = StepRequest {
        graph: graph.clone(),
        cache: cache(),
        tokens: vec![VOCAB as u32],
        start: 0,
        output: OutputKind::Logits,
        allowed: None,
    };
    match block_on(scheduler.run(&seat, step)) {
        Err(ComputeError::InvalidStep(m)) => assert!(m.contains("outside the vocabulary"), "{m}"),
        other => panic!("expected invalid-step, got {other:?}"),
    }
    let good = StepRequest {
        graph,
        cache: cache(),
        tokens: vec![1, 2],
        start: 0,
        output: OutputKind::Logits,
        allowed: None,
    };
    assert_eq!(
        block_on(scheduler.run(&seat, good)).expect("runs").logits().len(),
        VOCAB as usize
    );
}
