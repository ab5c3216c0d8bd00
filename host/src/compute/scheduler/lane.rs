//! A lane: the steps waiting to run one program, and the thread that runs them
//! in batches.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::fair::{Candidate, Shares};
use super::{BatchPolicy, Counters, Scheduler, Seat, StepRequest, lock};
use crate::compute::{Backend, ComputeError, Sequence, StepOutput};

/// How long a lane's thread lingers without steps before it ends.
const IDLE: Duration = Duration::from_secs(10);

type Reply = Result<StepOutput, ComputeError>;

struct Waiting {
    seat: Arc<Seat>,
    step: StepRequest,
    /// Tokens of the step already run (a prompt runs in chunks).
    done: usize,
    since: Instant,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    /// Seats that have stepped here: the company a batch may wait for.
    seats: Vec<Weak<Seat>>,
    shares: Shares,
    closed: bool,
}

pub(super) struct Lane {
    pub key: u64,
    backend: Arc<dyn Backend>,
    policy: BatchPolicy,
    counters: Arc<Counters>,
    scheduler: Weak<Scheduler>,
    state: Mutex<State>,
    arrived: Condvar,
}

impl Lane {
    pub fn start(key: u64, scheduler: &Arc<Scheduler>) -> Result<Arc<Self>, ComputeError> {
        let lane = Arc::new(Self {
            key,
            backend: scheduler.backend.clone(),
            policy: scheduler.policy,
            counters: scheduler.counters.clone(),
            scheduler: Arc::downgrade(scheduler),
            state: Mutex::default(),
            arrived: Condvar::new(),
        });
        let runner = lane.clone();
        std::thread::Builder::new()
            .name(format!("realm-batch-{:04x}", key & 0xffff))
            .spawn(move || runner.serve())
            .map_err(|e| ComputeError::Internal(format!("could not start a batch thread: {e}")))?;
        Ok(lane)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a step; its output arrives on the receiver.
    pub fn submit(&self, seat: &Arc<Seat>, step: StepRequest) -> oneshot::Receiver<Reply> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.lock();
        if !state.seats.iter().any(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(seat))) {
            state.seats.push(Arc::downgrade(seat));
        }
        state.waiting.push(Waiting {
            seat: seat.clone(),
            step,
            done: 0,
            since: Instant::now(),
            reply,
        });
        self.arrived.notify_one();
        answer
    }

    /// Marks the lane closed if nothing waits (the scheduler's lane map is
    /// locked, so nothing can be submitted meanwhile).
    pub fn close_if_idle(&self) -> bool {
        let mut state = self.lock();
        state.closed = state.waiting.is_empty();
        state.closed
    }

    fn serve(self: Arc<Self>) {
        let mut free_since = Instant::now();
        while let Some(batch) = self.next_batch(free_since) {
            let started = Instant::now();
            // An idle lane's wait for its first step is not gathering.
            let first = batch.iter().map(|(w, _)| w.since).min().unwrap_or(started);
            let gathering = started - first.max(free_since);
            self.execute(batch, gathering);
            free_since = Instant::now();
        }
    }

    /// Waits for steps, then for company, and takes a batch; None once the
    /// lane has been idle long enough to retire. Company is awaited for `wait`
    /// from the later of the oldest step's arrival and `free_since` (when the
    /// last batch ended and its seats went back to their guests).
    fn next_batch(&self, free_since: Instant) -> Option<Vec<(Waiting, usize)>> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if state.waiting.is_empty() {
                let (s, wait) = self
                    .arrived
                    .wait_timeout(state, IDLE)
                    .unwrap_or_else(|e| e.into_inner());
                state = s;
                if wait.timed_out() && state.waiting.is_empty() {
                    drop(state);
                    match self.scheduler.upgrade() {
                        Some(scheduler) if !scheduler.retire(self) => {}
                        _ => return None,
                    }
                    state = self.lock();
                }
                continue;
            }
            let oldest = state.waiting.iter().map(|w| w.since).min().expect("not empty");
            let deadline = oldest.max(free_since) + self.policy.wait;
            while !self.complete(&mut state) {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = self
                    .arrived
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            return Some(self.take(&mut state));
        }
    }

    /// Whether the batch need wait no longer: every seat stepping on this lane
    /// has a step waiting; or the waiting steps fill a batch and every tenant
    /// stepping here has one of them (a tenant with none would win a slot by
    /// its share, so a full batch still waits for it).
    fn complete(&self, state: &mut State) -> bool {
        state.seats.retain(|s| s.strong_count() > 0);
        let missing: Vec<Arc<Seat>> = state
            .seats
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|seat| seat.expected_on(self.key) && !state.waiting.iter().any(|w| Arc::ptr_eq(&w.seat, seat)))
            .collect();
        if missing.is_empty() {
            return true;
        }
        let tokens: usize = state.waiting.iter().map(|w| w.step.tokens.len() - w.done).sum();
        let full = state.waiting.len() >= self.policy.max_sequences || tokens >= self.policy.max_tokens;
        full && missing
            .iter()
            .all(|seat| state.waiting.iter().any(|w| w.seat.tenant == seat.tenant))
    }

    /// Takes the steps of the next batch, and how many tokens of each.
    fn take(&self, state: &mut State) -> Vec<(Waiting, usize)> {
        let program = state.waiting[0].step.graph.clone();
        let eligible: Vec<usize> = (0..state.waiting.len())
            .filter(|&i| state.waiting[i].step.graph.same_program(&program))
            .collect();
        let candidates: Vec<Candidate> = eligible
            .iter()
            .map(|&i| {
                let w = &state.waiting[i];
                Candidate {
                    tenant: &w.seat.tenant,
                    weight: w.seat.weight,
                    remaining: w.step.tokens.len() - w.done,
                }
            })
            .collect();
        let mut picked: Vec<(usize, usize)> = state
            .shares
            .select(
                &candidates,
                self.policy.max_sequences,
                self.policy.max_tokens,
                self.policy.prefill_beside_decode,
            )
            .into_iter()
            .map(|(c, tokens)| (eligible[c], tokens))
            .collect();
        picked.sort_unstable_by_key(|&(i, _)| std::cmp::Reverse(i));
        let mut batch: Vec<(Waiting, usize)> = picked
            .into_iter()
            .map(|(i, tokens)| (state.waiting.swap_remove(i), tokens))
            .collect();
        batch.reverse();
        batch
    }

    fn execute(&self, batch: Vec<(Waiting, usize)>, gathering: Duration) {
        let started = Instant::now();
        let graph = batch[0].0.step.graph.clone();
        let tokens: usize = batch.iter().map(|(_, n)| n).sum();
        let outcome = {
            let mut caches: Vec<_> = batch.iter().map(|(w, _)| lock(&w.step.cache)).collect();
            let mut sequences: Vec<Sequence> = caches
                .iter_mut()
                .zip(&batch)
                .map(|(cache, (w, n))| Sequence {
                    cache,
                    tokens: &w.step.tokens[w.done..w.done + n],
                    start: w.step.start + w.done as u32,
                    output: w.step.output,
                    allowed: w.step.allowed.as_deref(),
                })
                .collect();
            catch_unwind(AssertUnwindSafe(|| self.backend.run_batch(&graph, &mut sequences)))
        };
        self.counters.record(batch.len(), tokens, gathering, started.elapsed());
        let rows = match outcome {
            Ok(Ok(rows)) if rows.len() == batch.len() => Ok(rows),
            Ok(Ok(_)) => Err(ComputeError::Internal(
                "the backend returned the wrong number of rows".into(),
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ComputeError::Internal(
                "the batched step failed (a panic in the backend)".into(),
            )),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, sequences = batch.len(), "a batched step failed");
                for (w, _) in batch {
                    let _ = w.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let mut unfinished = Vec::new();
        for ((mut w, n), row) in batch.into_iter().zip(rows) {
            w.done += n;
            if w.done == w.step.tokens.len() {
                let _ = w.reply.send(Ok(row));
            } else {
                // The rest of a prompt waits for company like a new step.
                w.since = Instant::now();
                unfinished.push(w);
            }
        }
        if !unfinished.is_empty() {
            self.lock().waiting.extend(unfinished);
        }
    }
}
