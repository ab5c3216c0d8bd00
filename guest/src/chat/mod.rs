//! Chat templates: the GGUF's `tokenizer.chat_template` (Jinja), rendered with
//! minijinja and its Python-compatible string methods, as Hugging Face
//! tokenizers render it. Models without a template get a fallback chosen by
//! their vocabulary (see `fallback`).

mod fallback;

use minijinja::value::Serde;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value, context};

use crate::Error;
use crate::bindings::exports::realm::engine::engine::Message;
use crate::metadata::{Metadata, keys};
use crate::tokenizer::Tokenizer;
use crate::tools::ToolFormat;

/// The longest template accepted, in bytes.
const MAX_TEMPLATE: usize = 256 << 10;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// How this template shows tool calls, and how the model writes them.
    pub tool_format: ToolFormat,
}

impl ChatTemplate {
    pub fn from_metadata(meta: &Metadata, tokenizer: &Tokenizer) -> Result<Self, Error> {
        let source = match meta.text(keys::CHAT_TEMPLATE)? {
            Some(template) if template.len() > MAX_TEMPLATE => {
                return Err(Error::UnsupportedModel(format!(
                    "the chat template is over {MAX_TEMPLATE} bytes"
                )));
            }
            Some(template) => template.to_string(),
            None => fallback::template(tokenizer).to_string(),
        };
        let tool_format = ToolFormat::of_template(&source);
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source)
            .map_err(|e| Error::UnsupportedModel(format!("the chat template does not parse: {e}")))?;
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
                .to_string()
        };
        Ok(Self {
            env,
            bos: text(tokenizer.bos),
            eos: text(tokenizer.eos),
            tool_format,
        })
    }

    /// The prompt of `messages`, with `tools` (OpenAI's list) for templates
    /// that show them.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, Error> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest("a chat needs at least one message".into()));
        }
        let messages: Vec<Value> = messages.iter().map(message).collect();
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Internal(e.to_string()))?;
        template
            .render(context! {
                messages,
                add_generation_prompt,
                tools => tools.map(|t| Value::from(Serde(t))),
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| Error::InvalidRequest(format!("the chat template refused the conversation: {}", describe(&e))))
    }
}

/// A message as Hugging Face templates read it: tool calls in OpenAI's shape,
/// with their arguments as an object (templates apply `tojson` to them).
fn message(m: &Message) -> Value {
    let calls: Vec<serde_json::Value> = m
        .tool_calls
        .iter()
        .map(|call| {
            let arguments: serde_json::Value =
                serde_json::from_str(&call.arguments).unwrap_or_else(|_| call.arguments.clone().into());
            serde_json::json!({
                "id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}
            })
        })
        .collect();
    let tool_calls = (!calls.is_empty()).then(|| Value::from(Serde(calls)));
    context! {
        role => m.role.as_str(),
        content => m.content.as_str(),
        tool_calls,
        tool_call_id => m.tool_call_id.as_deref(),
    }
}

/// `raise_exception(message)`, which Hugging Face templates call to refuse input.
fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

fn describe(error: &JinjaError) -> String {
    error.detail().map_or_else(|| error.to_string(), str::to_string)
}
