//! The request body of `/v1/completions` and `/v1/chat/completions`, parsed and
//! validated: every accepted field is honoured, and any other field is refused
//! with a 400 that names it.

use std::collections::HashMap;

use serde::Deserialize;

use super::error::ApiError;
use crate::runtime::wit::{Constraint, Message, Sampling, Tool, ToolCall, ToolChoice, Tools};

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
    /// OpenAI's structured outputs: `text`, `json_object` or `json_schema`.
    response_format: Option<ResponseFormat>,
    /// Extensions, as llama-server and vLLM take them: a JSON Schema, a GBNF
    /// grammar (a Lark one after `%llguidance`), a regex, a list of choices.
    json_schema: Option<serde_json::Value>,
    grammar: Option<String>,
    regex: Option<String>,
    choice: Option<Vec<String>>,
    /// Chat only: functions the model may call, whether and which it must,
    /// and whether it may call several in one reply.
    tools: Option<Vec<ToolSpec>>,
    tool_choice: Option<ToolChoiceSpec>,
    parallel_tool_calls: Option<bool>,
    /// An end-user id for abuse monitoring; realm records nothing about it.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    role: String,
    /// Null only on an assistant message that calls tools.
    content: Option<String>,
    /// A participant's name; realm's templates do not use it.
    #[allow(dead_code)]
    name: Option<String>,
    /// An assistant message's calls.
    tool_calls: Option<Vec<ToolCallSpec>>,
    /// A `tool` message: the call it answers.
    tool_call_id: Option<String>,
}

/// The roles a message may have; `developer` is OpenAI's newer name for `system`.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallSpec {
    id: String,
    /// Checked by serde: `function` is the only type there is.
    #[allow(dead_code)]
    #[serde(rename = "type")]
    kind: FunctionType,
    function: CalledFunction,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalledFunction {
    name: String,
    arguments: String,
}

/// OpenAI's only tool type.
#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum FunctionType {
    Function,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    /// Checked by serde: `function` is the only type there is.
    #[allow(dead_code)]
    #[serde(rename = "type")]
    kind: FunctionType,
    function: FunctionSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    description: Option<String>,
    parameters: Option<serde_json::Value>,
    /// OpenAI's `strict`: realm always holds forced calls to the schema.
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// `none`, `auto`, `required`, or `{"type": "function", "function": {"name"}}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ToolChoiceSpec {
    Mode(String),
    Named {
        #[allow(dead_code)]
        #[serde(rename = "type")]
        kind: FunctionType,
        function: NamedFunction,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedFunction {
    name: String,
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

/// OpenAI's `response_format`. llama-server also takes a `schema` in
/// `json_object`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ResponseFormat {
    Text,
    JsonObject { schema: Option<serde_json::Value> },
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSchemaFormat {
    /// Names the format for the client; the schema is what counts.
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    description: Option<String>,
    schema: Option<serde_json::Value>,
    /// OpenAI's `strict: false` permits a looser answer; realm always
    /// enforces the whole schema, so either value is honoured.
    #[allow(dead_code)]
    strict: Option<bool>,
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

    /// The request's constraint on the generated text and the field that
    /// gave it; at most one field may.
    pub fn constraint(&mut self) -> Result<Option<(Constraint, &'static str)>, ApiError> {
        let schema_text = |schema: &serde_json::Value| Constraint::JsonSchema(schema.to_string());
        let mut given = Vec::new();
        match self.response_format.take() {
            None | Some(ResponseFormat::Text) => {}
            Some(ResponseFormat::JsonObject { schema: None }) => {
                given.push((Constraint::JsonObject, "response_format"))
            }
            Some(ResponseFormat::JsonObject { schema: Some(schema) }) => {
                given.push((schema_text(&schema), "response_format.schema"))
            }
            Some(ResponseFormat::JsonSchema { json_schema }) => match json_schema.schema {
                Some(schema) => given.push((schema_text(&schema), "response_format.json_schema.schema")),
                None => {
                    return Err(ApiError::invalid_request(
                        "`response_format.json_schema.schema` is required",
                        Some("response_format.json_schema.schema"),
                    ));
                }
            },
        }
        if let Some(schema) = self.json_schema.take() {
            given.push((schema_text(&schema), "json_schema"));
        }
        if let Some(grammar) = self.grammar.take() {
            let constraint = match grammar.trim_start().starts_with("%llguidance") {
                true => Constraint::Lark(grammar),
                false => Constraint::Gbnf(grammar),
            };
            given.push((constraint, "grammar"));
        }
        if let Some(regex) = self.regex.take() {
            given.push((Constraint::Regex(regex), "regex"));
        }
        if let Some(choice) = self.choice.take() {
            if choice.is_empty() {
                return Err(ApiError::invalid_request(
                    "`choice` needs at least one string",
                    Some("choice"),
                ));
            }
            given.push((Constraint::Choice(choice), "choice"));
        }
        if let [(_, first), (_, second), ..] = given.as_slice() {
            return Err(ApiError::invalid_request(
                format!("give one constraint on the output, not both `{first}` and `{second}`"),
                Some(second),
            ));
        }
        Ok(given.pop())
    }

    /// The conversation, each message checked: a known role, content unless
    /// an assistant calls tools, calls only from the assistant, and a call id
    /// on (and only on) tool results.
    pub fn messages(&mut self) -> Result<Vec<Message>, ApiError> {
        let messages = self.messages.take().unwrap_or_default();
        let mut out = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            let invalid = |message: String, field: &str| {
                Err(ApiError::invalid_request(
                    message,
                    Some(&format!("messages[{i}].{field}")),
                ))
            };
            if !ROLES.contains(&m.role.as_str()) {
                return invalid(
                    format!("`role` must be one of {}, not `{}`", ROLES.join(", "), m.role),
                    "role",
                );
            }
            let calls = m.tool_calls.unwrap_or_default();
            if !calls.is_empty() && m.role != "assistant" {
                return invalid("only assistant messages carry `tool_calls`".into(), "tool_calls");
            }
            match (m.role.as_str(), &m.tool_call_id) {
                ("tool", None) => {
                    return invalid(
                        "a `tool` message needs the `tool_call_id` it answers".into(),
                        "tool_call_id",
                    );
                }
                ("tool", Some(_)) | (_, None) => {}
                (_, Some(_)) => return invalid("only `tool` messages carry `tool_call_id`".into(), "tool_call_id"),
            }
            let content = match m.content {
                Some(content) => content,
                None if !calls.is_empty() => String::new(),
                None => {
                    return invalid(
                        "`content` is required (null only when an assistant calls tools)".into(),
                        "content",
                    );
                }
            };
            out.push(Message {
                role: if m.role == "developer" { "system".into() } else { m.role },
                content,
                tool_calls: calls
                    .into_iter()
                    .map(|c| ToolCall {
                        id: c.id,
                        name: c.function.name,
                        arguments: c.function.arguments,
                    })
                    .collect(),
                tool_call_id: m.tool_call_id,
            });
        }
        Ok(out)
    }

    /// The request's tools, with its choice; a choice without tools, or
    /// tools on /v1/completions, is a 400.
    pub fn tools(&mut self, endpoint: Endpoint) -> Result<Option<Tools>, ApiError> {
        let invalid = |message: &str, param: &str| Err(ApiError::invalid_request(message, Some(param)));
        let Some(specs) = self.tools.take() else {
            if self.tool_choice.is_some() {
                return invalid("`tool_choice` needs `tools`", "tool_choice");
            }
            if self.parallel_tool_calls.is_some() {
                return invalid("`parallel_tool_calls` needs `tools`", "parallel_tool_calls");
            }
            return Ok(None);
        };
        if endpoint == Endpoint::Completions {
            return invalid("`tools` belongs to /v1/chat/completions", "tools");
        }
        if specs.is_empty() {
            return invalid("`tools` needs at least one function", "tools");
        }
        let choice = match self.tool_choice.take() {
            None => ToolChoice::Auto,
            Some(ToolChoiceSpec::Mode(mode)) => match mode.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                _ => {
                    return invalid(
                        "`tool_choice` is `none`, `auto`, `required` or a named function",
                        "tool_choice",
                    );
                }
            },
            Some(ToolChoiceSpec::Named { function, .. }) => ToolChoice::Function(function.name),
        };
        let functions = specs
            .into_iter()
            .map(|spec| Tool {
                name: spec.function.name,
                description: spec.function.description,
                parameters: spec.function.parameters.map(|p| p.to_string()),
            })
            .collect();
        Ok(Some(Tools {
            functions,
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        }))
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
            param_of(r#"{"model":"m","messages":[{"content":"hi"}]}"#).as_deref(),
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
