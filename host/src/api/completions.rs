//! `POST /v1/completions` (non-streaming). Every accepted field is honoured;
//! any other field is refused with a 400 naming it.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;

use super::error::ApiError;
use super::routes::json_response;
use crate::runtime::GenerationEvent;
use crate::runtime::wit::{CompletionRequest, FinishReason, Sampling};
use crate::tenants::Tenants;

const DEFAULT_MAX_TOKENS: u32 = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionBody {
    model: String,
    prompt: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    /// Token id (as a string, as OpenAI sends it) to a bias in [-100, 100].
    logit_bias: Option<HashMap<String, f32>>,
    stream: Option<bool>,
    n: Option<u32>,
}

/// OpenAI's `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

fn logit_bias(bias: HashMap<String, f32>) -> Result<Vec<(u32, f32)>, ApiError> {
    bias.into_iter()
        .map(|(id, value)| {
            let id = id.parse::<u32>().map_err(|_| {
                ApiError::invalid_request(
                    format!("`logit_bias` keys are token ids, not `{id}`"),
                    Some("logit_bias"),
                )
            })?;
            if !(-100.0..=100.0).contains(&value) {
                return Err(ApiError::invalid_request(
                    "`logit_bias` values must be in [-100, 100]",
                    Some("logit_bias"),
                ));
            }
            Ok((id, value))
        })
        .collect()
}

pub async fn complete(tenants: Tenants, body: &Bytes) -> Result<Response<Full<Bytes>>, ApiError> {
    let body: CompletionBody = serde_json::from_slice(body).map_err(|e| {
        let param = e.to_string().split('`').nth(1).map(str::to_string);
        ApiError::invalid_request(format!("invalid request body: {e}"), param.as_deref())
    })?;
    if body.stream == Some(true) {
        return Err(ApiError::invalid_request(
            "`stream: true` is not supported by this endpoint yet",
            Some("stream"),
        ));
    }
    if body.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_request("only `n: 1` is supported", Some("n")));
    }
    let request = CompletionRequest {
        prompt: body.prompt,
        max_tokens: body.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        sampling: Sampling {
            temperature: body.temperature.unwrap_or(1.0),
            top_k: body.top_k.unwrap_or(0),
            top_p: body.top_p.unwrap_or(1.0),
            min_p: body.min_p.unwrap_or(0.0),
            seed: body.seed,
            repeat_penalty: body.repeat_penalty.unwrap_or(1.0),
            presence_penalty: body.presence_penalty.unwrap_or(0.0),
            frequency_penalty: body.frequency_penalty.unwrap_or(0.0),
            logit_bias: logit_bias(body.logit_bias.unwrap_or_default())?,
            ..Sampling::default()
        },
        ignore_eos: false,
        stop: match body.stop {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        },
    };
    let tenant = tenants.for_request();
    let mut events = tenant.instance.complete(&body.model, request);
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
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(json_response(serde_json::json!({
        "id": format!("cmpl-{created:x}{:x}", usage.prompt_tokens),
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": match finish { FinishReason::Stop => "stop", FinishReason::Length => "length" },
        }],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        },
    })))
}
