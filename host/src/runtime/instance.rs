//! A tenant's component instance, owned by one worker task on the engine
//! executor. Requests arrive as jobs; the worker steps every active generation
//! in turn, one chunk each, so no request waits for another's whole
//! generation. Guest calls are async: a guest awaiting its batched step, or
//! past an epoch tick, yields its thread to other instances. A trap discards
//! the instance and starts a fresh one; only that instance's requests fail.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::{self as async_mpsc, UnboundedReceiver, UnboundedSender, error::SendError};
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::engine::Runtime;
use super::state::{StoreState, TenantCompute};
use super::wit::{
    ChatRequest, Chunk, CompletionRequest, EngineError, GuestRealm, Message, ModelInfo, RealmConfig, RealmWorld,
};
use crate::compute::Seat;

/// How a tenant's instances are made.
#[derive(Clone)]
pub struct InstanceSettings {
    pub compute: TenantCompute,
    /// Linear memory limit of the instance, in bytes.
    pub guest_memory: usize,
    /// Context length every realm of the instance is configured with.
    pub context_length: u32,
    /// The longest one guest call may run before it is interrupted.
    pub call_deadline: Duration,
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The engine refused the request with a typed error.
    #[error("{}", describe(.0))]
    Engine(EngineError),
    /// The instance trapped and was replaced.
    #[error("the engine instance failed and was replaced: {0}")]
    Trap(String),
    /// A guest call ran past the call deadline; the instance was replaced.
    #[error("the request ran past its deadline; the engine instance was interrupted and replaced")]
    Deadline,
    /// The instance's worker is gone.
    #[error("the engine instance is not running")]
    Gone,
}

pub enum GenerationEvent {
    Chunk(Chunk),
    Failed(Failure),
}

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// What a generation continues: a raw prompt, or a conversation rendered with
/// the model's chat template.
pub enum GenerationRequest {
    Completion(CompletionRequest),
    Chat(ChatRequest),
}

enum Job {
    Complete {
        model: String,
        /// Boxed: a chat with tools is far larger than the other jobs.
        request: Box<GenerationRequest>,
        events: async_mpsc::UnboundedSender<GenerationEvent>,
        load: Load,
    },
    RenderChat {
        model: String,
        messages: Vec<Message>,
        reply: Reply<String>,
    },
    Tokenize {
        model: String,
        text: String,
        add_special: bool,
        parse_special: bool,
        reply: Reply<Vec<u32>>,
    },
    Detokenize {
        model: String,
        tokens: Vec<u32>,
        reply: Reply<String>,
    },
    Evaluate {
        model: String,
        tokens: Vec<u32>,
        reply: Reply<Vec<f32>>,
    },
    Info {
        model: String,
        reply: Reply<ModelInfo>,
    },
}

/// A handle on a tenant's instance; cloning shares the instance.
#[derive(Clone)]
pub struct InstanceHandle {
    jobs: UnboundedSender<Job>,
    generations: Arc<AtomicUsize>,
}

/// One generation counted against its instance while it lives.
struct Load(Arc<AtomicUsize>);

impl Load {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl InstanceHandle {
    /// Instantiates the component and starts its worker on the engine executor.
    pub async fn spawn(runtime: Arc<Runtime>, settings: InstanceSettings) -> anyhow::Result<Self> {
        let worker = Worker::new(runtime, settings).await?;
        let (jobs, queue) = async_mpsc::unbounded_channel();
        let executor = worker.settings.compute.shared.executor().clone();
        executor.spawn(worker.run(queue));
        Ok(Self {
            jobs,
            generations: Arc::default(),
        })
    }

    /// Generations under way on the instance (started and not yet finished).
    pub fn generations(&self) -> usize {
        self.generations.load(Ordering::Relaxed)
    }

    /// Starts a completion; its chunks (or its failure) arrive on the receiver.
    /// Dropping the receiver cancels the generation and frees its KV cache.
    pub fn complete(&self, model: &str, request: CompletionRequest) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        self.generate(model, GenerationRequest::Completion(request))
    }

    /// Starts the assistant's reply to a conversation, like `complete`.
    pub fn chat(&self, model: &str, request: ChatRequest) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        self.generate(model, GenerationRequest::Chat(request))
    }

    /// The prompt a conversation renders to with the model's chat template.
    pub async fn render_chat(&self, model: &str, messages: Vec<Message>) -> Result<String, Failure> {
        self.ask(|reply| Job::RenderChat {
            model: model.into(),
            messages,
            reply,
        })
        .await
    }

    /// Sends a job that answers once, and awaits its answer.
    async fn ask<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, Failure> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(job(reply)).map_err(|_| Failure::Gone)?;
        answer.await.unwrap_or(Err(Failure::Gone))
    }

    /// Starts a completion or a chat reply, like `complete`.
    pub fn generate(&self, model: &str, request: GenerationRequest) -> async_mpsc::UnboundedReceiver<GenerationEvent> {
        let (events, receiver) = async_mpsc::unbounded_channel();
        let job = Job::Complete {
            model: model.to_string(),
            request: Box::new(request),
            events,
            load: Load::new(&self.generations),
        };
        if let Err(SendError(Job::Complete { events, .. })) = self.jobs.send(job) {
            let _ = events.send(GenerationEvent::Failed(Failure::Gone));
        }
        receiver
    }

    pub async fn tokenize(
        &self,
        model: &str,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, Failure> {
        self.ask(|reply| Job::Tokenize {
            model: model.into(),
            text: text.into(),
            add_special,
            parse_special,
            reply,
        })
        .await
    }

    pub async fn detokenize(&self, model: &str, tokens: Vec<u32>) -> Result<String, Failure> {
        self.ask(|reply| Job::Detokenize {
            model: model.into(),
            tokens,
            reply,
        })
        .await
    }

    pub async fn evaluate(&self, model: &str, tokens: Vec<u32>) -> Result<Vec<f32>, Failure> {
        self.ask(|reply| Job::Evaluate {
            model: model.into(),
            tokens,
            reply,
        })
        .await
    }

    pub async fn info(&self, model: &str) -> Result<ModelInfo, Failure> {
        self.ask(|reply| Job::Info {
            model: model.into(),
            reply,
        })
        .await
    }
}

struct Active {
    generation: ResourceAny,
    events: async_mpsc::UnboundedSender<GenerationEvent>,
    _load: Load,
}

struct Worker {
    runtime: Arc<Runtime>,
    settings: InstanceSettings,
    /// The instance's place in the step scheduler; kept across replacements.
    seat: Arc<Seat>,
    store: Store<StoreState>,
    bindings: RealmWorld,
    realms: HashMap<String, ResourceAny>,
    active: Vec<Active>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.settings.compute.shared.instances.ended();
    }
}

/// The outcome of one guest call: a trap is the instance's failure, not the request's.
type Call<T> = wasmtime::Result<Result<T, EngineError>>;

impl Worker {
    async fn new(runtime: Arc<Runtime>, settings: InstanceSettings) -> anyhow::Result<Self> {
        let seat = Seat::new(&settings.compute.tenant, settings.compute.batch_weight);
        let state = StoreState::new(settings.compute.clone(), seat.clone(), settings.guest_memory);
        let (store, bindings) = runtime.instantiate(state).await?;
        settings.compute.shared.instances.started();
        Ok(Self {
            runtime,
            settings,
            seat,
            store,
            bindings,
            realms: HashMap::new(),
            active: Vec::new(),
        })
    }

    async fn run(mut self, mut queue: UnboundedReceiver<Job>) {
        loop {
            self.seat.set_stepping(!self.active.is_empty());
            if self.active.is_empty() {
                match queue.recv().await {
                    Some(job) => self.accept(job).await,
                    None => return,
                }
            }
            while let Ok(job) = queue.try_recv() {
                self.accept(job).await;
            }
            self.step_all().await;
        }
    }

    fn arm_deadline(&mut self) {
        let allowed = self.settings.call_deadline;
        self.store.data_mut().arm_deadline(allowed);
    }

    async fn accept(&mut self, job: Job) {
        match job {
            Job::Complete {
                model,
                request,
                events,
                load,
            } => match self.start(&model, &request).await {
                Ok(generation) => self.active.push(Active {
                    generation,
                    events,
                    _load: load,
                }),
                Err(failure) => {
                    let _ = events.send(GenerationEvent::Failed(failure));
                }
            },
            Job::Tokenize {
                model,
                text,
                add_special,
                parse_special,
                reply,
            } => {
                let result = self
                    .call_realm(&model, async |realms, store, realm| {
                        realms
                            .call_tokenize(store, realm, &text, add_special, parse_special)
                            .await
                    })
                    .await;
                let _ = reply.send(result);
            }
            Job::RenderChat { model, messages, reply } => {
                let result = self
                    .call_realm(&model, async |realms, store, realm| {
                        realms.call_render_chat(store, realm, &messages, true).await
                    })
                    .await;
                let _ = reply.send(result);
            }
            Job::Detokenize { model, tokens, reply } => {
                let result = self
                    .call_realm(&model, async |realms, store, realm| {
                        realms.call_detokenize(store, realm, &tokens).await
                    })
                    .await;
                let _ = reply.send(result);
            }
            Job::Evaluate { model, tokens, reply } => {
                let result = self
                    .call_realm(&model, async |realms, store, realm| {
                        realms.call_evaluate(store, realm, &tokens).await
                    })
                    .await;
                let _ = reply.send(result);
            }
            Job::Info { model, reply } => {
                let result = self
                    .call_realm(&model, async |realms, store, realm| {
                        realms.call_info(store, realm).await.map(Ok)
                    })
                    .await;
                let _ = reply.send(result);
            }
        }
    }

    async fn start(&mut self, model: &str, request: &GenerationRequest) -> Result<ResourceAny, Failure> {
        let realm = self.realm(model).await?;
        self.arm_deadline();
        let realms = self.bindings.realm_engine_engine().realm();
        let call = match request {
            GenerationRequest::Completion(request) => realms.call_complete(&mut self.store, realm, request).await,
            GenerationRequest::Chat(request) => realms.call_chat(&mut self.store, realm, request).await,
        };
        self.settle(call).await
    }

    /// One call on the realm of `model` (constructed on first use), under the
    /// call deadline.
    async fn call_realm<T>(
        &mut self,
        model: &str,
        call: impl AsyncFnOnce(&GuestRealm, &mut Store<StoreState>, ResourceAny) -> Call<T>,
    ) -> Result<T, Failure> {
        let realm = self.realm(model).await?;
        self.arm_deadline();
        let outcome = call(&self.bindings.realm_engine_engine().realm(), &mut self.store, realm).await;
        self.settle(outcome).await
    }

    /// The realm of `model`, constructed on first use.
    async fn realm(&mut self, model: &str) -> Result<ResourceAny, Failure> {
        if let Some(realm) = self.realms.get(model) {
            return Ok(*realm);
        }
        let config = RealmConfig {
            model: model.to_string(),
            context_length: self.settings.context_length,
        };
        self.arm_deadline();
        let call = self
            .bindings
            .realm_engine_engine()
            .realm()
            .call_constructor(&mut self.store, &config)
            .await;
        let realm = self.settle(call).await?;
        self.realms.insert(model.to_string(), realm);
        Ok(realm)
    }

    /// Turns a guest call's outcome into the request's result; a trap replaces
    /// the instance and fails every request it was serving.
    async fn settle<T>(&mut self, call: Call<T>) -> Result<T, Failure> {
        match call {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Failure::Engine(error)),
            Err(trap) => {
                let failure = self.failure_of(&trap);
                self.replace_instance(&failure).await;
                Err(failure)
            }
        }
    }

    /// What a trap means for the request, with the memory limit named when
    /// the guest was refused memory before it trapped.
    fn failure_of(&self, error: &wasmtime::Error) -> Failure {
        let cause = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => return Failure::Deadline,
            Some(trap) => format!("guest trap: {trap}"),
            None => format!("{error:#}")
                .lines()
                .next()
                .unwrap_or("unknown failure")
                .to_string(),
        };
        let limits = &self.store.data().limits;
        match limits.refused {
            Some(wanted) => Failure::Trap(format!(
                "{cause}, after its memory limit of {} MiB refused to grow it to {} MiB",
                limits.memory >> 20,
                wanted >> 20
            )),
            None => Failure::Trap(cause),
        }
    }

    async fn replace_instance(&mut self, failure: &Failure) {
        self.settings.compute.shared.instances.replacing();
        let guest_stderr = self.store.data().stderr.contents();
        let guest_stderr = String::from_utf8_lossy(&guest_stderr);
        tracing::warn!(tenant = %self.settings.compute.tenant, %failure, %guest_stderr, "replacing the engine instance");
        for active in self.active.drain(..) {
            let _ = active.events.send(GenerationEvent::Failed(failure.clone()));
        }
        self.realms.clear();
        let state = StoreState::new(
            self.settings.compute.clone(),
            self.seat.clone(),
            self.settings.guest_memory,
        );
        match self.runtime.instantiate(state).await {
            Ok((store, bindings)) => {
                // Dropping the old store frees its KV caches and its memory slot.
                self.store = store;
                self.bindings = bindings;
            }
            Err(e) => tracing::error!(error = %e, "could not re-instantiate the engine"),
        }
    }

    /// Advances every active generation by one chunk.
    async fn step_all(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].events.is_closed() {
                let gone = self.active.swap_remove(i);
                self.release(gone.generation).await;
                continue;
            }
            let generation = self.active[i].generation;
            self.arm_deadline();
            let call = self
                .bindings
                .realm_engine_engine()
                .generation()
                .call_next(&mut self.store, generation)
                .await;
            let trapped = call.is_err();
            match self.settle(call).await {
                Ok(Some(chunk)) => {
                    let done = chunk.finish.is_some();
                    let _ = self.active[i].events.send(GenerationEvent::Chunk(chunk));
                    if done {
                        let finished = self.active.swap_remove(i);
                        self.release(finished.generation).await;
                    } else {
                        i += 1;
                    }
                }
                Ok(None) => {
                    let finished = self.active.swap_remove(i);
                    self.release(finished.generation).await;
                }
                // A trap already failed and cleared every active generation.
                Err(_) if trapped => return,
                Err(failure) => {
                    let failed = self.active.swap_remove(i);
                    let _ = failed.events.send(GenerationEvent::Failed(failure));
                    self.release(failed.generation).await;
                }
            }
        }
    }

    async fn release(&mut self, generation: ResourceAny) {
        self.arm_deadline();
        if let Err(trap) = generation.resource_drop_async(&mut self.store).await {
            let failure = self.failure_of(&trap);
            self.replace_instance(&failure).await;
        }
    }
}

/// An engine error as a person reads it: `model not found: ...`.
pub fn describe(error: &EngineError) -> String {
    let (kind, message) = match error {
        EngineError::InvalidConfig(m) => ("invalid config", m),
        EngineError::ModelNotFound(m) => ("model not found", m),
        EngineError::UnsupportedModel(m) => ("unsupported model", m),
        EngineError::OutOfMemory(m) => ("out of memory", m),
        EngineError::InvalidRequest(m) => ("invalid request", m),
        EngineError::InvalidConstraint(m) => ("invalid constraint", m),
        EngineError::PermissionDenied(m) => ("permission denied", m),
        EngineError::Internal(m) => ("internal error", m),
    };
    format!("{kind}: {message}")
}
