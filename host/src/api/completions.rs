//! `POST /v1/completions` and `POST /v1/chat/completions` (non-streaming).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use super::error::ApiError;
use super::request::{DEFAULT_COMPLETION_TOKENS, GenerationBody};
use super::routes::json_response;
use crate::runtime::GenerationEvent;
use crate::runtime::wit::{ChatRequest, CompletionRequest, FinishReason, Usage};
use crate::tenants::Tenants;

#[derive(Clone, Copy, PartialEq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

pub async fn generate(tenants: Tenants, endpoint: Endpoint, bytes: &Bytes) -> Result<Response<Full<Bytes>>, ApiError> {
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
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Chunk(chunk) => {
                text.push_str(&chunk.text);
                usage = Some(chunk.usage);
                if chunk.finish.is_some() {
                    finish = chunk.finish;
                    break;
                }
            }
            GenerationEvent::Failed(failure) => return Err(failure.into()),
        }
    }
    let (Some(finish), Some(usage)) = (finish, usage) else {
        return Err(ApiError::internal("the generation ended without a finish reason"));
    };
    Ok(json_response(respond(endpoint, &body.model, text, finish, usage)))
}

fn respond(endpoint: Endpoint, model: &str, text: String, finish: FinishReason, usage: Usage) -> serde_json::Value {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let finish_reason = match finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    };
    let usage = serde_json::json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    });
    let id = format!("{created:x}{:08x}", rand_suffix());
    match endpoint {
        Endpoint::Completions => serde_json::json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish_reason }],
            "usage": usage,
        }),
        Endpoint::ChatCompletions => serde_json::json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage,
        }),
    }
}

/// A per-process-unique suffix for response ids.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
