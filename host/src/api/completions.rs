//! `POST /v1/completions` and `POST /v1/chat/completions`, whole or streamed as
//! server-sent events ending in `data: [DONE]`.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Response;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::body::{ApiBody, EventSender, event_stream, json_response};
use super::error::ApiError;
use super::request::{DEFAULT_COMPLETION_TOKENS, GenerationBody};
use crate::runtime::GenerationEvent;
use crate::runtime::wit::{ChatRequest, Chunk, CompletionRequest, FinishReason, Usage};
use crate::tenants::Tenants;

#[derive(Clone, Copy, PartialEq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

pub async fn generate(tenants: Tenants, endpoint: Endpoint, bytes: &Bytes) -> Result<Response<ApiBody>, ApiError> {
    let mut body = GenerationBody::parse(bytes)?;
    let sampling = body.sampling()?;
    let stop = body.stop();
    let tenant = tenants.for_request();
    let mut events = match endpoint {
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
            let max_tokens = body.max_tokens().unwrap_or(DEFAULT_COMPLETION_TOKENS);
            let request = CompletionRequest {
                prompt,
                max_tokens,
                sampling,
                ignore_eos: false,
                stop,
            };
            tenant.instance.complete(&body.model, request)
        }
        Endpoint::ChatCompletions => {
            if body.prompt.is_some() {
                return Err(ApiError::invalid_request(
                    "`prompt` belongs to /v1/completions",
                    Some("prompt"),
                ));
            }
            let messages = body.messages();
            if messages.is_empty() {
                return Err(ApiError::invalid_request(
                    "`messages` must hold at least one message",
                    Some("messages"),
                ));
            }
            let max_tokens = body.max_tokens().unwrap_or(0);
            tenant.instance.chat(
                &body.model,
                ChatRequest {
                    messages,
                    max_tokens,
                    sampling,
                    ignore_eos: false,
                    stop,
                },
            )
        }
    };
    let meta = Meta::new(endpoint, body.model.clone());
    let first = match events.recv().await {
        Some(GenerationEvent::Chunk(chunk)) => chunk,
        Some(GenerationEvent::Failed(failure)) => return Err(failure.into()),
        None => return Err(ApiError::internal("the engine ended the generation without a word")),
    };
    if body.stream == Some(true) {
        let (response, sender) = event_stream();
        let include_usage = body.include_usage();
        tokio::spawn(stream(meta, first, events, sender, include_usage));
        return Ok(response);
    }
    let mut text = String::new();
    let mut chunk = first;
    loop {
        text.push_str(&chunk.text);
        if let Some(finish) = chunk.finish {
            return Ok(json_response(meta.whole(text, finish, chunk.usage)));
        }
        chunk = match events.recv().await {
            Some(GenerationEvent::Chunk(chunk)) => chunk,
            Some(GenerationEvent::Failed(failure)) => return Err(failure.into()),
            None => return Err(ApiError::internal("the generation ended without a finish reason")),
        };
    }
}

/// Forwards a generation as server-sent events until it finishes, fails, or the
/// client goes away (which drops `events` and so cancels the generation).
async fn stream(
    meta: Meta,
    first: Chunk,
    mut events: UnboundedReceiver<GenerationEvent>,
    sender: EventSender,
    include_usage: bool,
) {
    if meta.endpoint == Endpoint::ChatCompletions && !sender.data(&meta.role(include_usage)).await {
        return;
    }
    let mut chunk = first;
    loop {
        let event = meta.delta(&chunk.text, chunk.finish, include_usage);
        if !sender.data(&event).await {
            return;
        }
        if chunk.finish.is_some() {
            if include_usage && !sender.data(&meta.usage_only(chunk.usage)).await {
                return;
            }
            sender.done().await;
            return;
        }
        chunk = match events.recv().await {
            Some(GenerationEvent::Chunk(chunk)) => chunk,
            Some(GenerationEvent::Failed(failure)) => {
                let error = ApiError::from(failure);
                sender.data(&error.body()).await;
                return;
            }
            None => return,
        };
    }
}

/// What every response and event of one request shares.
struct Meta {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
}

impl Meta {
    fn new(endpoint: Endpoint, model: String) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::ChatCompletions => "chatcmpl",
        };
        Self {
            endpoint,
            id: format!("{prefix}-{created:x}{:08x}", next_id()),
            created,
            model,
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.endpoint, streamed) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::ChatCompletions, false) => "chat.completion",
            (Endpoint::ChatCompletions, true) => "chat.completion.chunk",
        }
    }

    fn whole(&self, text: String, finish: FinishReason, usage: Usage) -> serde_json::Value {
        let choice = match self.endpoint {
            Endpoint::Completions => {
                json!({ "text": text, "index": 0, "logprobs": null, "finish_reason": reason(finish) })
            }
            Endpoint::ChatCompletions => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": reason(finish),
            }),
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
            "choices": [choice], "usage": usage_json(usage),
        })
    }

    /// A chat stream's first event: the assistant's role.
    fn role(&self, include_usage: bool) -> serde_json::Value {
        let choice = json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
        self.event(choice, include_usage)
    }

    /// The event carrying one chunk's text (and the finish reason on the last).
    fn delta(&self, text: &str, finish: Option<FinishReason>, include_usage: bool) -> serde_json::Value {
        let finish = finish.map(reason);
        let choice = match self.endpoint {
            Endpoint::Completions => json!({ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }),
            Endpoint::ChatCompletions => {
                let delta = if finish.is_some() && text.is_empty() {
                    json!({})
                } else {
                    json!({ "content": text })
                };
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
        };
        self.event(choice, include_usage)
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
    }
}

fn usage_json(usage: Usage) -> serde_json::Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

/// A per-process sequence number for response ids.
fn next_id() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
