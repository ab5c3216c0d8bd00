//! `POST /v1/completions` and `POST /v1/chat/completions`, whole or streamed as
//! server-sent events ending in `data: [DONE]`.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Response;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::Instrument;

use super::App;
use super::body::{ApiBody, EventSender, event_stream, json_response};
use super::error::ApiError;
use super::logprobs::LogprobsJson;
use super::metrics::{ErrorLabels, Metrics, RequestLabels};
use super::request::{DEFAULT_COMPLETION_TOKENS, Endpoint, GenerationBody};
use crate::runtime::instance::GenerationRequest;
use crate::runtime::wit::{
    ChatRequest, Chunk, CompletionRequest, FinishReason, Sampling, StepLogprobs, ToolCallDelta, Usage,
};
use crate::runtime::{Failure, GenerationEvent};
use crate::tenants::{Permit, Tenant};

/// Runs one generation request for `tenant`; every error is counted and logged.
pub async fn generate(
    app: &App,
    tenant: Arc<Tenant>,
    endpoint: Endpoint,
    bytes: &Bytes,
    request_id: &str,
) -> Result<Response<ApiBody>, ApiError> {
    let mut labels = RequestLabels {
        tenant: tenant.id.clone(),
        model: "-".into(),
        endpoint: endpoint.label(),
    };
    let mut admitted = false;
    let result = admit_and_start(app, &tenant, endpoint, bytes, request_id, &mut labels, &mut admitted).await;
    if let Err(error) = &result {
        count_error(&app.metrics, &labels, error.status.as_u16());
        // An admitted request's accounting logs its own end.
        if !admitted {
            tracing::info!(status = error.status.as_u16(), error = %error.message, "request refused");
        }
    }
    result
}

async fn admit_and_start(
    app: &App,
    tenant: &Tenant,
    endpoint: Endpoint,
    bytes: &Bytes,
    request_id: &str,
    labels: &mut RequestLabels,
    admitted: &mut bool,
) -> Result<Response<ApiBody>, ApiError> {
    let mut body = GenerationBody::parse(bytes)?;
    if !app.tenants.models().contains(&body.model) {
        return Err(ApiError::model_not_found(&body.model));
    }
    labels.model = body.model.clone();
    tracing::Span::current().record("model", body.model.as_str());
    if !tenant.may_use(&body.model) {
        return Err(ApiError::model_not_allowed(&body.model));
    }
    let max_tokens = max_tokens(endpoint, body.max_tokens(), tenant.max_tokens_per_request)?;
    let sampling = body.sampling()?;
    let logprobs = body.logprobs(endpoint)?;
    let stop = body.stop();
    let (constraint, constraint_field) = match body.constraint()? {
        Some((constraint, field)) => (Some(constraint), Some(field)),
        None => (None, None),
    };
    let tools = body.tools(endpoint)?;
    let request = match endpoint {
        Endpoint::Completions => {
            if body.messages.is_some() {
                return Err(ApiError::invalid_request(
                    "`messages` belongs to /v1/chat/completions",
                    Some("messages"),
                ));
            }
            let Some(prompt) = body.prompt.take() else {
                return Err(ApiError::invalid_request("`prompt` is required", Some("prompt")));
            };
            GenerationRequest::Completion(CompletionRequest {
                prompt,
                max_tokens,
                sampling,
                ignore_eos: body.ignore_eos.unwrap_or(false),
                stop,
                logprobs,
                constraint,
            })
        }
        Endpoint::ChatCompletions => {
            if body.prompt.is_some() {
                return Err(ApiError::invalid_request(
                    "`prompt` belongs to /v1/completions",
                    Some("prompt"),
                ));
            }
            let messages = body.messages()?;
            if messages.is_empty() {
                return Err(ApiError::invalid_request(
                    "`messages` must hold at least one message",
                    Some("messages"),
                ));
            }
            GenerationRequest::Chat(ChatRequest {
                messages,
                max_tokens,
                sampling,
                ignore_eos: body.ignore_eos.unwrap_or(false),
                stop,
                logprobs,
                constraint,
                tools,
            })
        }
    };
    let n = body.choices();
    if let Some(most) = tenant.most_generations()
        && n > most
    {
        return Err(ApiError::invalid_request(
            format!("`n` is {n}; this API key runs at most {most} generations at once"),
            Some("n"),
        ));
    }
    let permit = tenant.admit(n)?;
    *admitted = true;
    app.metrics.requests.get_or_create(labels).inc();
    // Each choice on the least busy instance once the ones before have
    // started: an instance steps its generations one after another, and
    // choices on different instances share batches.
    let mut choices = Vec::with_capacity(n as usize);
    for i in 0..n {
        let instance = tenant
            .instance()
            .await
            .map_err(|e| ApiError::internal(format!("could not start the tenant's engine instance: {e:#}")))?;
        choices.push(Choice::new(instance.generate(&body.model, for_choice(&request, i))));
    }
    let mut run = Run {
        choices,
        next_first: 0,
        deadline: tenant.request_deadline.map(|d| Instant::now() + d),
        accounting: Accounting {
            metrics: app.metrics.clone(),
            labels: labels.clone(),
            permit,
            started: Instant::now(),
            usages: vec![None; n as usize],
            status: None,
        },
    };
    let meta = Meta::new(endpoint, body.model.clone(), request_id, logprobs.is_some());
    let first = run.next().await.map_err(|e| e.blaming_constraint(constraint_field))?;
    run.accounting.first_chunk();
    if body.stream == Some(true) {
        let (response, sender) = event_stream();
        let include_usage = body.include_usage();
        let span = tracing::Span::current();
        tokio::spawn(stream(meta, first, run, sender, include_usage).instrument(span));
        return Ok(response);
    }
    let mut answers: Vec<Answer> = (0..run.choices.len()).map(|_| Answer::default()).collect();
    let mut next = first;
    while let Some((index, mut chunk)) = next {
        let answer = &mut answers[index];
        answer.text.push_str(&chunk.text);
        answer.logprobs.append(&mut chunk.logprobs);
        for delta in chunk.tool_calls.drain(..) {
            match (delta.id, delta.name) {
                (Some(id), Some(name)) => answer.tool_calls.push((id, name, delta.arguments)),
                _ => {
                    if let Some(call) = answer.tool_calls.last_mut() {
                        call.2.push_str(&delta.arguments);
                    }
                }
            }
        }
        answer.finish = chunk.finish.or(answer.finish);
        next = run.next().await?;
    }
    run.accounting.status = Some(200);
    Ok(json_response(meta.whole(&answers, run.accounting.usage())))
}

/// Choice `index` of `request`: with a seed, each choice draws from its own
/// (the seed plus its index), so that choices differ and repeat alike.
fn for_choice(request: &GenerationRequest, index: u32) -> GenerationRequest {
    let reseed = |mut sampling: Sampling| {
        sampling.seed = sampling.seed.map(|seed| seed.wrapping_add(u64::from(index)));
        sampling
    };
    match request {
        GenerationRequest::Completion(r) => GenerationRequest::Completion(CompletionRequest {
            sampling: reseed(r.sampling.clone()),
            ..r.clone()
        }),
        GenerationRequest::Chat(r) => GenerationRequest::Chat(ChatRequest {
            sampling: reseed(r.sampling.clone()),
            ..r.clone()
        }),
    }
}

/// One choice of a whole response, gathered from its chunks.
#[derive(Default)]
struct Answer {
    text: String,
    logprobs: Vec<StepLogprobs>,
    /// (id, name, arguments) of each tool call.
    tool_calls: Vec<(String, String, String)>,
    finish: Option<FinishReason>,
}

/// The completion's token limit: the client's, within the tenant's limit.
/// Without one, completions default to OpenAI's 16 and chat to the context
/// (0), each capped by the tenant's limit.
fn max_tokens(endpoint: Endpoint, asked: Option<u32>, limit: Option<u32>) -> Result<u32, ApiError> {
    match (asked, limit) {
        (Some(0), _) => Err(ApiError::invalid_request(
            "`max_tokens` must be at least 1",
            Some("max_tokens"),
        )),
        (Some(asked), Some(limit)) if asked > limit => Err(ApiError::invalid_request(
            format!("`max_tokens` is {asked}; this API key allows at most {limit} per request"),
            Some("max_tokens"),
        )),
        (Some(asked), _) => Ok(asked),
        (None, limit) => Ok(match endpoint {
            Endpoint::Completions => DEFAULT_COMPLETION_TOKENS.min(limit.unwrap_or(u32::MAX)),
            Endpoint::ChatCompletions => limit.unwrap_or(0),
        }),
    }
}

/// A request's running generations (one per choice): their chunks, the
/// deadline, and what the request is charged.
struct Run {
    choices: Vec<Choice>,
    /// The choice polled first next time, so that no choice waits behind
    /// another's ready chunks.
    next_first: usize,
    deadline: Option<Instant>,
    accounting: Accounting,
}

struct Choice {
    events: UnboundedReceiver<GenerationEvent>,
    finished: bool,
}

impl Choice {
    fn new(events: UnboundedReceiver<GenerationEvent>) -> Self {
        Self {
            events,
            finished: false,
        }
    }
}

impl Run {
    /// The next chunk of any unfinished choice, with the choice's index; none
    /// once every choice has finished. An error of any choice is the
    /// request's (its status is the request's outcome). Past the deadline the
    /// events are dropped with the run, which cancels the generations.
    async fn next(&mut self) -> Result<Option<(usize, Chunk)>, ApiError> {
        if self.choices.iter().all(|c| c.finished) {
            return Ok(None);
        }
        let ready = std::future::poll_fn(|cx| {
            let n = self.choices.len();
            for index in (0..n).map(|k| (self.next_first + k) % n) {
                let choice = &mut self.choices[index];
                if choice.finished {
                    continue;
                }
                if let Poll::Ready(event) = choice.events.poll_recv(cx) {
                    self.next_first = (index + 1) % n;
                    return Poll::Ready((index, event));
                }
            }
            Poll::Pending
        });
        let (index, event) = match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), ready)
                .await
                .unwrap_or((0, Some(GenerationEvent::Failed(Failure::Deadline)))),
            None => ready.await,
        };
        let error = match event {
            Some(GenerationEvent::Chunk(chunk)) => {
                self.choices[index].finished = chunk.finish.is_some();
                self.accounting.usages[index] = Some(chunk.usage);
                return Ok(Some((index, chunk)));
            }
            Some(GenerationEvent::Failed(Failure::Deadline)) if self.deadline.is_some() => ApiError::timeout(),
            Some(GenerationEvent::Failed(failure)) => failure.into(),
            None => ApiError::internal("the generation ended without a finish reason"),
        };
        self.accounting.status = Some(error.status.as_u16());
        Err(error)
    }
}

/// What one admitted request is charged when it ends, however it ends: its
/// tokens against the tenant's tokens-per-minute window and the metrics, its
/// latency, its log line. Failed and cancelled requests are charged the tokens
/// they used. Errors are counted where they are answered, not here.
struct Accounting {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    permit: Permit,
    started: Instant,
    /// Each choice's usage so far, once it has reported any.
    usages: Vec<Option<Usage>>,
    /// The answer's status; none when the client left before it was decided.
    status: Option<u16>,
}

/// 499: the client closed the connection first (nginx's convention).
const CLIENT_GONE: u16 = 499;

impl Accounting {
    /// The request's usage so far: the prompt once (as OpenAI counts it) and
    /// every choice's completion tokens.
    fn usage(&self) -> Usage {
        let usages = self.usages.iter().flatten();
        Usage {
            prompt_tokens: usages.clone().map(|u| u.prompt_tokens).max().unwrap_or(0),
            completion_tokens: usages.map(|u| u.completion_tokens).sum(),
        }
    }

    /// Prompt tokens processed: the prompt once per choice that started,
    /// each charged.
    fn prompt_processed(&self) -> u64 {
        self.usages.iter().flatten().map(|u| u64::from(u.prompt_tokens)).sum()
    }

    fn first_chunk(&self) {
        let ttft = self.started.elapsed().as_secs_f64();
        self.metrics
            .time_to_first_token
            .get_or_create(&self.labels)
            .observe(ttft);
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(CLIENT_GONE);
        let (prompt, completion) = (self.prompt_processed(), u64::from(self.usage().completion_tokens));
        self.permit.record_tokens(prompt + completion);
        self.metrics.prompt_tokens.get_or_create(&self.labels).inc_by(prompt);
        self.metrics
            .completion_tokens
            .get_or_create(&self.labels)
            .inc_by(completion);
        let latency = self.started.elapsed();
        self.metrics
            .latency
            .get_or_create(&self.labels)
            .observe(latency.as_secs_f64());
        tracing::info!(
            status,
            prompt_tokens = prompt,
            completion_tokens = completion,
            latency_ms = latency.as_millis() as u64,
            "request finished"
        );
    }
}

fn count_error(metrics: &Metrics, labels: &RequestLabels, status: u16) {
    let labels = ErrorLabels {
        tenant: labels.tenant.clone(),
        model: labels.model.clone(),
        endpoint: labels.endpoint,
        status,
    };
    metrics.errors.get_or_create(&labels).inc();
}

/// Forwards a request's generations as server-sent events (each choice's
/// chunks as they come, marked with its index) until all of them finish, one
/// fails, the deadline passes, or the client goes away; each of the last
/// three drops the events, which cancels the generations.
async fn stream(meta: Meta, first: Option<(usize, Chunk)>, mut run: Run, sender: EventSender, include_usage: bool) {
    let gone = |run: Run| count_error(&run.accounting.metrics, &run.accounting.labels, CLIENT_GONE);
    if meta.endpoint == Endpoint::ChatCompletions {
        for index in 0..run.choices.len() {
            if !sender.data(&meta.role(index, include_usage)).await {
                return gone(run);
            }
        }
    }
    let mut logprobs: Vec<LogprobsJson> = (0..run.choices.len())
        .map(|_| LogprobsJson::new(meta.endpoint))
        .collect();
    let mut next = first;
    while let Some((index, chunk)) = next {
        let event = meta.delta(index, &chunk, &mut logprobs[index], include_usage);
        if !sender.data(&event).await {
            return gone(run);
        }
        next = match run.next().await {
            Ok(next) => next,
            Err(error) => {
                count_error(&run.accounting.metrics, &run.accounting.labels, error.status.as_u16());
                sender.data(&error.body()).await;
                return;
            }
        };
    }
    if include_usage && !sender.data(&meta.usage_only(run.accounting.usage())).await {
        return gone(run);
    }
    sender.done().await;
    run.accounting.status = Some(200);
}

/// What every response and event of one request shares.
struct Meta {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    /// Whether the choices carry log-probabilities (else `logprobs: null`).
    logprobs: bool,
}

impl Meta {
    /// The response id carries the request id, so logs and answers line up.
    fn new(endpoint: Endpoint, model: String, request_id: &str, logprobs: bool) -> Self {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::ChatCompletions => "chatcmpl",
        };
        Self {
            endpoint,
            id: format!("{prefix}-{request_id}"),
            created: unix_seconds(),
            model,
            logprobs,
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.endpoint, streamed) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::ChatCompletions, false) => "chat.completion",
            (Endpoint::ChatCompletions, true) => "chat.completion.chunk",
        }
    }

    fn whole(&self, answers: &[Answer], usage: Usage) -> serde_json::Value {
        let choices: Vec<serde_json::Value> = answers
            .iter()
            .enumerate()
            .map(|(index, answer)| {
                let logprobs = self.logprobs_json(&mut LogprobsJson::new(self.endpoint), &answer.logprobs);
                let (text, finish) = (&answer.text, answer.finish.map(reason));
                match self.endpoint {
                    Endpoint::Completions => {
                        json!({ "text": text, "index": index, "logprobs": logprobs, "finish_reason": finish })
                    }
                    Endpoint::ChatCompletions => {
                        let mut message = json!({ "role": "assistant", "content": text });
                        if !answer.tool_calls.is_empty() {
                            let calls: Vec<_> = answer
                                .tool_calls
                                .iter()
                                .map(|(id, name, arguments)| {
                                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                                })
                                .collect();
                            message["tool_calls"] = json!(calls);
                            if text.is_empty() {
                                message["content"] = serde_json::Value::Null;
                            }
                        }
                        json!({ "index": index, "message": message, "logprobs": logprobs, "finish_reason": finish })
                    }
                }
            })
            .collect();
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "choices": choices, "usage": usage_json(usage),
        })
    }

    /// A chat stream's first event for choice `index`: the assistant's role.
    fn role(&self, index: usize, include_usage: bool) -> serde_json::Value {
        let choice = json!({ "index": index, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
        self.event(choice, include_usage)
    }

    /// The event carrying one chunk of choice `index`: its text and
    /// log-probabilities (and the finish reason on its last).
    fn delta(
        &self,
        index: usize,
        chunk: &Chunk,
        logprobs: &mut LogprobsJson,
        include_usage: bool,
    ) -> serde_json::Value {
        let (text, finish) = (&chunk.text, chunk.finish.map(reason));
        // An event without tokens (the end of a turn) has none to list.
        let logprobs = match chunk.logprobs.is_empty() {
            true => serde_json::Value::Null,
            false => self.logprobs_json(logprobs, &chunk.logprobs),
        };
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({ "text": text, "index": index, "logprobs": logprobs, "finish_reason": finish })
            }
            Endpoint::ChatCompletions => {
                let mut delta = if (finish.is_some() || !chunk.tool_calls.is_empty()) && text.is_empty() {
                    json!({})
                } else {
                    json!({ "content": text })
                };
                if !chunk.tool_calls.is_empty() {
                    let calls: Vec<_> = chunk.tool_calls.iter().map(tool_call_delta).collect();
                    delta["tool_calls"] = json!(calls);
                }
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
        };
        self.event(choice, include_usage)
    }

    fn logprobs_json(&self, json: &mut LogprobsJson, steps: &[StepLogprobs]) -> serde_json::Value {
        match self.logprobs {
            true => json.render(steps),
            false => serde_json::Value::Null,
        }
    }

    /// A stream event around one choice; `usage: null` when a usage event follows at the end.
    fn event(&self, choice: serde_json::Value, include_usage: bool) -> serde_json::Value {
        let mut event = json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice],
        });
        if include_usage {
            event["usage"] = serde_json::Value::Null;
        }
        event
    }

    /// The last event when `stream_options.include_usage` is set: no choices, the usage.
    fn usage_only(&self, usage: Usage) -> serde_json::Value {
        json!({
            "id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
            "choices": [], "usage": usage_json(usage),
        })
    }
}

fn reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

/// OpenAI's `delta.tool_calls[]`: the index, then the id, type and name in a
/// call's first part, and a fragment of its arguments.
fn tool_call_delta(delta: &ToolCallDelta) -> serde_json::Value {
    let mut function = json!({ "arguments": delta.arguments });
    let mut call = json!({ "index": delta.index });
    if let Some(id) = &delta.id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    if let Some(name) = &delta.name {
        function["name"] = json!(name);
    }
    call["function"] = function;
    call
}

fn usage_json(usage: Usage) -> serde_json::Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A process-unique id: `prefix-` then the start time and a sequence number.
pub fn fresh_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{:x}{:08x}",
        unix_seconds(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
