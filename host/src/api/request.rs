//! The request body of `/v1/completions` and `/v1/chat/completions`, parsed and
//! validated: every accepted field is honoured, and any other field is refused
//! with a 400 that names it.

use std::collections::HashMap;

use serde::Deserialize;

use super::error::ApiError;
use crate::runtime::wit::{Message, Sampling};

/// Which completion endpoint a request came to.
#[derive(Clone, Copy, PartialEq)]
pub enum Endpoint {
    Completions,
    ChatCompletions,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Self::Completions => "completions",
            Self::ChatCompletions => "chat_completions",
        }
    }
}

/// OpenAI's default `max_tokens` for completions; chat defaults to the context.
pub const DEFAULT_COMPLETION_TOKENS: u32 = 16;

/// Most choices per request: each is a generation of its own.
pub const MOST_CHOICES: u32 = 16;

/// Most alternatives per token: OpenAI's limits for each endpoint.
const MOST_TOP_LOGPROBS_CHAT: u32 = 20;
const MOST_LOGPROBS_COMPLETIONS: u32 = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationBody {
    pub model: String,
    /// `/v1/completions` only.
    pub prompt: Option<String>,
    /// `/v1/chat/completions` only.
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<u32>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    /// Token id (a string, as OpenAI sends it) to a bias in [-100, 100].
    logit_bias: Option<HashMap<String, f32>>,
    /// Chat: `true` for log-probabilities; completions: how many alternatives
    /// per token, which turns them on.
    logprobs: Option<Logprobs>,
    /// Chat only: alternatives per token, with `logprobs: true`.
    top_logprobs: Option<u32>,
    /// Extension: generate through end-of-sequence tokens until `max_tokens`.
    pub ignore_eos: Option<bool>,
    pub stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    /// An end-user id for abuse monitoring; realm records nothing about it.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    role: String,
    content: String,
    /// A participant's name; realm's templates do not use it.
    #[allow(dead_code)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    /// Send a last event with the token usage (and `usage: null` on the others).
    include_usage: Option<bool>,
}

/// OpenAI's `logprobs`: a flag on chat, a count on completions.
#[derive(Deserialize)]
#[serde(untagged)]
enum Logprobs {
    Flag(bool),
    Count(u32),
}

/// OpenAI's `stop`: one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl GenerationBody {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let mut parser = serde_json::Deserializer::from_slice(bytes);
        let body: Self = serde_path_to_error::deserialize(&mut parser).map_err(|e| {
            // The field at fault: its path, or the unknown field's own name.
            let path = e.path().to_string();
            let error = e.into_inner();
            let param = match path.as_str() {
                "." => error.to_string().split('`').nth(1).map(str::to_string),
                _ => Some(path),
            };
            ApiError::invalid_request(format!("invalid request body: {error}"), param.as_deref())
        })?;
        parser
            .end()
            .map_err(|e| ApiError::invalid_request(format!("invalid request body: {e}"), None))?;
        if body.stream_options.is_some() && body.stream != Some(true) {
            return Err(ApiError::invalid_request(
                "`stream_options` needs `stream: true`",
                Some("stream_options"),
            ));
        }
        if body.n.is_some_and(|n| !(1..=MOST_CHOICES).contains(&n)) {
            return Err(ApiError::invalid_request(
                format!("`n` must be 1 to {MOST_CHOICES}"),
                Some("n"),
            ));
        }
        if body.max_tokens.is_some() && body.max_completion_tokens.is_some() {
            return Err(ApiError::invalid_request(
                "give `max_tokens` or `max_completion_tokens`, not both",
                Some("max_completion_tokens"),
            ));
        }
        Ok(body)
    }

    /// How many choices to generate.
    pub fn choices(&self) -> u32 {
        self.n.unwrap_or(1)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The token limit the client asked for, if any.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn sampling(&self) -> Result<Sampling, ApiError> {
        Ok(Sampling {
            temperature: self.temperature.unwrap_or(1.0),
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            seed: self.seed,
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias: logit_bias(self.logit_bias.as_ref())?,
            ..Sampling::default()
        })
    }

    /// How many alternatives per token to report, if log-probabilities were
    /// asked for in `endpoint`'s way.
    pub fn logprobs(&self, endpoint: Endpoint) -> Result<Option<u32>, ApiError> {
        let invalid = |message: String, param| Err(ApiError::invalid_request(message, Some(param)));
        match (endpoint, &self.logprobs, self.top_logprobs) {
            (Endpoint::ChatCompletions, Some(Logprobs::Count(_)), _) => invalid(
                "`logprobs` is `true` or `false` here; `top_logprobs` counts alternatives".into(),
                "logprobs",
            ),
            (Endpoint::ChatCompletions, Some(Logprobs::Flag(true)), top) => match top.unwrap_or(0) {
                n if n > MOST_TOP_LOGPROBS_CHAT => invalid(
                    format!("`top_logprobs` must be 0 to {MOST_TOP_LOGPROBS_CHAT}"),
                    "top_logprobs",
                ),
                n => Ok(Some(n)),
            },
            (Endpoint::ChatCompletions, _, Some(_)) => {
                invalid("`top_logprobs` needs `logprobs: true`".into(), "top_logprobs")
            }
            (Endpoint::ChatCompletions, _, None) => Ok(None),
            (Endpoint::Completions, _, Some(_)) => {
                invalid("`top_logprobs` belongs to /v1/chat/completions".into(), "top_logprobs")
            }
            (Endpoint::Completions, Some(Logprobs::Flag(false)), None) => Ok(None),
            (Endpoint::Completions, Some(Logprobs::Flag(true)), None) => invalid(
                format!("`logprobs` counts alternatives per token here: 0 to {MOST_LOGPROBS_COMPLETIONS}"),
                "logprobs",
            ),
            (Endpoint::Completions, Some(Logprobs::Count(n)), None) if *n > MOST_LOGPROBS_COMPLETIONS => invalid(
                format!("`logprobs` must be 0 to {MOST_LOGPROBS_COMPLETIONS}"),
                "logprobs",
            ),
            (Endpoint::Completions, Some(Logprobs::Count(n)), None) => Ok(Some(*n)),
            (Endpoint::Completions, None, None) => Ok(None),
        }
    }

    pub fn stop(&mut self) -> Vec<String> {
        match self.stop.take() {
            None => Vec::new(),
            Some(Stop::One(stop)) => vec![stop],
            Some(Stop::Many(stops)) => stops,
        }
    }

    pub fn messages(&mut self) -> Vec<Message> {
        self.messages
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|m| Message {
                role: m.role,
                content: m.content,
            })
            .collect()
    }
}

fn logit_bias(bias: Option<&HashMap<String, f32>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let invalid = |message: String| ApiError::invalid_request(message, Some("logit_bias"));
    bias.into_iter()
        .flatten()
        .map(|(id, &value)| {
            let id = id
                .parse::<u32>()
                .map_err(|_| invalid(format!("`logit_bias` keys are token ids, not `{id}`")))?;
            if !(-100.0..=100.0).contains(&value) {
                return Err(invalid("`logit_bias` values must be in [-100, 100]".into()));
            }
            Ok((id, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        GenerationBody::parse(body.as_bytes()).err().and_then(|e| e.param)
    }

    #[test]
    fn a_parse_error_names_the_field_at_fault() {
        assert_eq!(
            param_of(r#"{"model":"m","max_tokens":-1}"#).as_deref(),
            Some("max_tokens")
        );
        assert_eq!(
            param_of(r#"{"model":"m","frobnicate":1}"#).as_deref(),
            Some("frobnicate")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user"}]}"#).as_deref(),
            Some("messages[0]")
        );
        assert!(GenerationBody::parse(br#"{"model":"m"} trailing"#).is_err());
    }

    #[test]
    fn logprobs_are_a_flag_on_chat_and_a_count_on_completions() {
        let asked = |endpoint, body: &str| {
            GenerationBody::parse(body.as_bytes())
                .expect("parses")
                .logprobs(endpoint)
                .map_err(|e| e.param.unwrap_or_default())
        };
        let (chat, completions) = (Endpoint::ChatCompletions, Endpoint::Completions);
        assert_eq!(asked(chat, r#"{"model":"m"}"#), Ok(None));
        assert_eq!(asked(chat, r#"{"model":"m","logprobs":false}"#), Ok(None));
        assert_eq!(asked(chat, r#"{"model":"m","logprobs":true}"#), Ok(Some(0)));
        assert_eq!(
            asked(chat, r#"{"model":"m","logprobs":true,"top_logprobs":20}"#),
            Ok(Some(20))
        );
        assert_eq!(
            asked(chat, r#"{"model":"m","logprobs":true,"top_logprobs":21}"#),
            Err("top_logprobs".into())
        );
        assert_eq!(
            asked(chat, r#"{"model":"m","top_logprobs":2}"#),
            Err("top_logprobs".into())
        );
        assert_eq!(asked(chat, r#"{"model":"m","logprobs":3}"#), Err("logprobs".into()));
        assert_eq!(asked(completions, r#"{"model":"m","logprobs":3}"#), Ok(Some(3)));
        assert_eq!(asked(completions, r#"{"model":"m","logprobs":0}"#), Ok(Some(0)));
        assert_eq!(
            asked(completions, r#"{"model":"m","logprobs":6}"#),
            Err("logprobs".into())
        );
        assert_eq!(
            asked(completions, r#"{"model":"m","logprobs":true}"#),
            Err("logprobs".into())
        );
        assert_eq!(asked(completions, r#"{"model":"m","logprobs":false}"#), Ok(None));
        assert_eq!(
            asked(completions, r#"{"model":"m","top_logprobs":1}"#),
            Err("top_logprobs".into())
        );
    }
}
