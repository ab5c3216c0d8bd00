//! The per-model step scheduler. Forward steps of different sequences that run
//! the same program (the same ops on the same mapped model file), from one
//! tenant's instances or many, are merged into one batched execution: one pass
//! over the weights serves every sequence of the batch. Each program has a
//! lane with its own thread; a submitting thread blocks until its step is done.
//!
//! A batch starts as soon as every seat that is stepping on the lane has a step
//! waiting, when it is full and every stepping tenant has a step in it, or when
//! the oldest step has waited `wait`: a lone sequence never waits, and a seat
//! busy elsewhere delays the others by at most `wait`. Long steps (prompts) run
//! in chunks beside single-token steps, shorter ones while decode steps wait
//! (`fair::chunk_rows`: the chunking never changes a row's result). When more
//! is waiting than fits, tenants share the batch by weight (`fair`).

mod fair;
mod lane;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Backend, CompiledGraph, ComputeError, KvCache, OutputKind, StepOutput};
use lane::Lane;

/// How steps are batched.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Sequences per batch; 1 runs every step alone.
    pub max_sequences: usize,
    /// Tokens per batch (prompt chunks and decode steps together).
    pub max_tokens: usize,
    /// Prompt tokens per chunk in a batch that also runs decode steps, so
    /// that a decode step waits for at most this much prefill.
    pub prefill_beside_decode: usize,
    /// The longest a step waits for company.
    pub wait: Duration,
}

/// The server's defaults: up to 64 sequences and 256 tokens, prompts or
/// not, 2 ms of waiting. Fewer prompt tokens beside decode steps shorten the
/// longest pauses between a stream's tokens, and cost throughput and time
/// to first token (64 against 256 on Qwen2.5, 16 clients, 2 threads: p99
/// inter-token latency -30%, output tokens/s -13%: docs/PERFORMANCE.md).
impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_sequences: 64,
            max_tokens: 256,
            prefill_beside_decode: 256,
            wait: Duration::from_millis(2),
        }
    }
}

impl BatchPolicy {
    pub fn unbatched() -> Self {
        Self {
            max_sequences: 1,
            max_tokens: usize::MAX,
            prefill_beside_decode: usize::MAX,
            wait: Duration::ZERO,
        }
    }
}

/// A KV cache that a lane's thread can lock while its owner waits.
pub type SharedKv = Arc<Mutex<KvCache>>;

/// Locks a cache; a poisoned lock (a panic during an earlier batch, whose
/// steps all failed) still yields the cache.
pub fn lock(cache: &SharedKv) -> MutexGuard<'_, KvCache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// One sequence's step, owned so that a lane's thread can run it.
pub struct StepRequest {
    pub graph: Arc<CompiledGraph>,
    pub cache: SharedKv,
    pub tokens: Vec<u32>,
    pub start: u32,
    pub output: OutputKind,
    /// The tokens the output may choose (a bitset), if the guest confined it.
    pub allowed: Option<Vec<u32>>,
}

/// A submitter: a tenant instance's thread, which has at most one step in
/// flight. The instance says whether it is stepping (has generations under
/// way), so that lanes know whom to wait for.
pub struct Seat {
    tenant: Arc<str>,
    weight: u32,
    stepping: AtomicBool,
    /// The fingerprint of the lane of its last step.
    lane: AtomicU64,
}

impl Seat {
    pub fn new(tenant: &str, weight: u32) -> Arc<Self> {
        Arc::new(Self {
            tenant: Arc::from(tenant),
            weight: weight.max(1),
            stepping: AtomicBool::new(false),
            lane: AtomicU64::new(0),
        })
    }

    pub fn set_stepping(&self, stepping: bool) {
        self.stepping.store(stepping, Ordering::Relaxed);
    }

    /// Whether a lane should expect this seat's next step.
    fn expected_on(&self, lane: u64) -> bool {
        self.stepping.load(Ordering::Relaxed) && self.lane.load(Ordering::Relaxed) == lane
    }
}

pub struct Scheduler {
    backend: Arc<dyn Backend>,
    policy: BatchPolicy,
    lanes: Mutex<HashMap<u64, Arc<Lane>>>,
    counters: Arc<Counters>,
}

impl Scheduler {
    pub fn new(backend: Arc<dyn Backend>, policy: BatchPolicy) -> Arc<Self> {
        Arc::new(Self {
            backend,
            policy,
            lanes: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        })
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    pub fn totals(&self) -> BatchTotals {
        self.counters.totals()
    }

    /// Runs `step` (checked here, so that a bad step fails alone), batched with
    /// the steps of other seats on the same program; returns its output as it
    /// asked. The caller awaits its batch without holding a thread.
    pub async fn run(self: &Arc<Self>, seat: &Arc<Seat>, step: StepRequest) -> Result<StepOutput, ComputeError> {
        super::check(
            &*self.backend,
            &step.graph,
            &lock(&step.cache),
            &step.tokens,
            step.start,
        )?;
        let key = step.graph.fingerprint;
        seat.lane.store(key, Ordering::Relaxed);
        let reply = {
            let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            let lane = match lanes.get(&key) {
                Some(lane) => lane.clone(),
                None => {
                    let lane = Lane::start(key, self)?;
                    lanes.insert(key, lane.clone());
                    lane
                }
            };
            lane.submit(seat, step)
        };
        reply.await.unwrap_or_else(|_| {
            Err(ComputeError::Internal(
                "the step's batch ended without an answer".into(),
            ))
        })
    }

    /// Removes an idle lane, unless a step arrived since it looked.
    fn retire(&self, lane: &Lane) -> bool {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if !lane.close_if_idle() {
            return false;
        }
        lanes.remove(&lane.key);
        true
    }
}

/// Batches run so far, the sequences and tokens in them, and where their
/// lanes' time went: running them, and gathering them (from the later of the
/// lane's previous batch's end and the first step's arrival, to the start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchTotals {
    pub batches: u64,
    pub sequences: u64,
    pub tokens: u64,
    pub running: Duration,
    pub gathering: Duration,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    sequences: AtomicU64,
    tokens: AtomicU64,
    running_ns: AtomicU64,
    gathering_ns: AtomicU64,
}

impl Counters {
    fn record(&self, sequences: usize, tokens: usize, gathering: Duration, running: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.sequences.fetch_add(sequences as u64, Ordering::Relaxed);
        self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        self.gathering_ns
            .fetch_add(gathering.as_nanos() as u64, Ordering::Relaxed);
        self.running_ns.fetch_add(running.as_nanos() as u64, Ordering::Relaxed);
    }

    fn totals(&self) -> BatchTotals {
        BatchTotals {
            batches: self.batches.load(Ordering::Relaxed),
            sequences: self.sequences.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            running: Duration::from_nanos(self.running_ns.load(Ordering::Relaxed)),
            gathering: Duration::from_nanos(self.gathering_ns.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests;
