//! One benchmark tenant: its own store and component instance, driven to
//! completion on the calling thread, so every guest call can be timed and
//! split with `runtime::profile`.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::compute::Seat;
use crate::runtime::instance::describe;
use crate::runtime::profile::{self, StepProfile};
use crate::runtime::state::StoreState;
use crate::runtime::wit::{
    Chunk, CompletionRequest, Constraint, EngineError, ModelInfo, RealmConfig, RealmWorld, Sampling,
};
use crate::runtime::{InstanceSettings, Runtime};

pub struct Tenant {
    /// Drives the guest's async calls on this thread, so that `profile`'s
    /// per-thread counters see its steps.
    executor: tokio::runtime::Runtime,
    store: Store<StoreState>,
    bindings: RealmWorld,
    realm: Option<ResourceAny>,
    /// The sampling temperature of `complete`; 0 is greedy.
    pub temperature: f32,
    /// What `complete`'s output must follow.
    pub constraint: Option<Constraint>,
}

/// One guest call: its wall time and how the `graph.run` calls inside it spent theirs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timed {
    pub wall: Duration,
    pub steps: StepProfile,
}

fn engine<T>(call: wasmtime::Result<Result<T, EngineError>>, what: &str) -> anyhow::Result<T> {
    match call {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(anyhow!("{what}: {}", describe(&error))),
        Err(trap) => Err(anyhow::Error::from(trap).context(format!("{what}: the engine instance failed"))),
    }
}

/// One guest call, run to completion on `executor`, timed and split with
/// `runtime::profile`.
fn timed<T>(
    executor: &tokio::runtime::Runtime,
    what: &str,
    call: impl Future<Output = wasmtime::Result<Result<T, EngineError>>>,
) -> anyhow::Result<(T, Timed)> {
    let before = profile::snapshot();
    let started = Instant::now();
    let outcome = executor.block_on(call);
    let wall = started.elapsed();
    let value = engine(outcome, what)?;
    let steps = profile::snapshot().since(&before);
    Ok((value, Timed { wall, steps }))
}

impl Tenant {
    /// A new store and instance, and how long instantiation took.
    pub fn instantiate(runtime: &Runtime, settings: &InstanceSettings) -> anyhow::Result<(Self, Duration)> {
        let executor = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        let started = Instant::now();
        let seat = Seat::new(&settings.compute.tenant, settings.compute.batch_weight);
        let state = StoreState::new(settings.compute.clone(), seat, settings.guest_memory);
        let (store, bindings) = executor.block_on(runtime.instantiate(state))?;
        let elapsed = started.elapsed();
        Ok((
            Self {
                executor,
                store,
                bindings,
                realm: None,
                temperature: 0.0,
                constraint: None,
            },
            elapsed,
        ))
    }

    /// Constructs the realm of `model` (weights, metadata, tokenizer, graph), and
    /// how long the constructor took.
    pub fn open(&mut self, model: &str, context_length: u32) -> anyhow::Result<Duration> {
        let config = RealmConfig {
            model: model.to_string(),
            context_length,
        };
        let realms = self.bindings.realm_engine_engine().realm();
        let call = realms.call_constructor(&mut self.store, &config);
        let (realm, timed) = timed(&self.executor, &format!("model `{model}`"), call)?;
        self.realm = Some(realm);
        Ok(timed.wall)
    }

    /// Tells the step scheduler whether this tenant is decoding (so that
    /// batches wait for its steps).
    pub fn set_stepping(&self, stepping: bool) {
        self.store.data().seat.set_stepping(stepping);
    }

    fn realm(&self) -> anyhow::Result<ResourceAny> {
        self.realm.context("the realm is not constructed")
    }

    pub fn info(&mut self) -> anyhow::Result<ModelInfo> {
        let realm = self.realm()?;
        let realms = self.bindings.realm_engine_engine().realm();
        let call = async { realms.call_info(&mut self.store, realm).await.map(Ok) };
        Ok(timed(&self.executor, "info", call)?.0)
    }

    /// Token ids of `text` as a completion prompt is tokenized (special tokens added and parsed).
    pub fn tokenize(&mut self, text: &str) -> anyhow::Result<Vec<u32>> {
        let realm = self.realm()?;
        let realms = self.bindings.realm_engine_engine().realm();
        let call = realms.call_tokenize(&mut self.store, realm, text, true, true);
        Ok(timed(&self.executor, "tokenize", call)?.0)
    }

    /// The logits after `tokens` in a fresh sequence: a prefill from an empty cache.
    pub fn evaluate(&mut self, tokens: &[u32]) -> anyhow::Result<Timed> {
        let realm = self.realm()?;
        let realms = self.bindings.realm_engine_engine().realm();
        let call = realms.call_evaluate(&mut self.store, realm, tokens);
        Ok(timed(&self.executor, "evaluate", call)?.1)
    }

    /// Starts a completion of `prompt` that ignores end-of-sequence tokens:
    /// greedy, or at `temperature` with a fixed seed.
    pub fn complete(&mut self, prompt: &str, max_tokens: u32) -> anyhow::Result<(Generation, Timed)> {
        let realm = self.realm()?;
        let request = CompletionRequest {
            prompt: prompt.to_string(),
            max_tokens,
            sampling: Sampling {
                temperature: self.temperature,
                seed: Some(1),
                ..Sampling::default()
            },
            ignore_eos: true,
            stop: Vec::new(),
            logprobs: None,
            constraint: self.constraint.clone(),
        };
        let realms = self.bindings.realm_engine_engine().realm();
        let call = realms.call_complete(&mut self.store, realm, &request);
        let (generation, timed) = timed(&self.executor, "complete", call)?;
        Ok((Generation(generation), timed))
    }

    /// The generation's next chunk (None after the last), timed.
    pub fn next(&mut self, generation: &Generation) -> anyhow::Result<(Option<Chunk>, Timed)> {
        let generations = self.bindings.realm_engine_engine().generation();
        let call = generations.call_next(&mut self.store, generation.0);
        timed(&self.executor, "next", call)
    }

    /// Drops a generation, freeing its KV cache.
    pub fn release(&mut self, generation: Generation) -> anyhow::Result<()> {
        let drop = generation.0.resource_drop_async(&mut self.store);
        self.executor.block_on(drop)?;
        Ok(())
    }
}

/// A running generation of a tenant (its KV cache lives until it is released).
pub struct Generation(ResourceAny);

/// A text that tokenizes (as a completion prompt) to exactly `n` tokens: plain
/// English words, one token each in the vocabularies of the supported models.
pub fn prompt_of(tenant: &mut Tenant, n: usize) -> anyhow::Result<String> {
    const WORDS: &[&str] = &[
        "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "and", "then", "runs", "back", "to",
        "its", "house", "in", "green", "hills", "where", "it", "sleeps", "all", "day",
    ];
    let text = |words: usize| -> String {
        let mut s = String::from("Once");
        for i in 0..words {
            s.push(' ');
            s.push_str(WORDS[i % WORDS.len()]);
        }
        s
    };
    // Token counts grow with the word count; search for the count that gives n.
    let (mut lo, mut hi) = (0usize, n.max(1));
    while tenant.tokenize(&text(hi))?.len() < n {
        hi *= 2;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if tenant.tokenize(&text(mid))?.len() < n {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let candidate = text(lo);
    let got = tenant.tokenize(&candidate)?.len();
    anyhow::ensure!(got == n, "no prompt of exactly {n} tokens (closest: {got})");
    Ok(candidate)
}

/// `n` token ids for a prefill benchmark, as llama-bench makes them: BOS (when
/// the model has one) and then pseudo-random ids of the vocabulary.
pub fn random_tokens(info: &ModelInfo, n: usize) -> Vec<u32> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut tokens = Vec::with_capacity(n);
    if let Some(bos) = info.bos {
        tokens.push(bos);
    }
    while tokens.len() < n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokens.push(((state >> 33) % info.vocab_size as u64) as u32);
    }
    tokens.truncate(n);
    tokens
}
