//! Tool calling: a chat request's `tools` shown to the model in its own
//! format, the reply constrained where the request requires a call, and the
//! model's calls parsed back out of its text (`parse`).
//!
//! The format comes from the chat template (llama.cpp's chat parsers do the
//! same): a template that writes `<tool_call>` is Hermes's (Qwen2.5), one that
//! writes `<|python_tag|>` is Llama 3's JSON calls, and any other, including
//! templates that ignore `tools`, gets the generic format: the tools are
//! described in a system message and the whole reply is one JSON object,
//! `{"tool_calls": [...]}` or `{"response": "..."}`, enforced by a constraint.

mod parse;

use serde_json::{Value, json};

use crate::{Constraint, Error, Message, ToolChoice, Tools};
pub use parse::CallParser;

/// How a model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per call.
    Hermes,
    /// `{"name": ..., "parameters": {...}}`, after an optional `<|python_tag|>`.
    Llama3,
    /// The whole reply is `{"tool_calls": [{"name", "arguments"}]}` or `{"response": text}`.
    Generic,
}

impl ToolFormat {
    pub fn of_template(source: &str) -> Self {
        if source.contains("<tool_call>") {
            Self::Hermes
        } else if source.contains("<|python_tag|>") {
            Self::Llama3
        } else {
            Self::Generic
        }
    }
}

/// A request's tools, checked and ready for the template and the sampler.
pub struct Prepared {
    /// The `tools` variable of the template: OpenAI's `[{"type": "function", "function": {...}}]`.
    pub template_tools: Value,
    /// The generic format's system message.
    pub system: Option<String>,
    /// What the reply must follow, when the format or the choice requires it.
    pub constraint: Option<Constraint>,
    /// The parser of the reply; none when calls are off (`tool_choice: none`).
    pub parser: Option<CallParser>,
}

pub fn prepare(tools: &Tools, format: ToolFormat) -> Result<Prepared, Error> {
    let invalid = |m: String| Err(Error::InvalidRequest(m));
    if tools.functions.is_empty() {
        return invalid("`tools` needs at least one function".into());
    }
    let mut schemas = Vec::new();
    let mut listed = Vec::new();
    for (i, tool) in tools.functions.iter().enumerate() {
        if tools.functions[..i].iter().any(|t| t.name == tool.name) {
            return invalid(format!("two tools are named `{}`", tool.name));
        }
        let parameters: Value = match &tool.parameters {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Error::InvalidConstraint(format!("the parameters of `{}`: {e}", tool.name)))?,
            None => json!({"type": "object"}),
        };
        let mut function = json!({"name": tool.name, "parameters": parameters});
        if let Some(description) = &tool.description {
            function["description"] = json!(description);
        }
        listed.push(json!({"type": "function", "function": function}));
        schemas.push((tool.name.as_str(), parameters));
    }
    let called: Vec<&(&str, Value)> = match &tools.choice {
        ToolChoice::Function(name) => match schemas.iter().find(|(n, _)| n == name) {
            Some(one) => vec![one],
            None => return invalid(format!("`tool_choice` names `{name}`, which is not among the tools")),
        },
        _ => schemas.iter().collect(),
    };
    let forced = matches!(tools.choice, ToolChoice::Required | ToolChoice::Function(_));
    let off = matches!(tools.choice, ToolChoice::None);
    let template_tools = Value::Array(listed);
    let arguments_key = if format == ToolFormat::Llama3 {
        "parameters"
    } else {
        "arguments"
    };
    let call = |(name, parameters): &&(&str, Value)| {
        json!({
            "type": "object",
            "properties": {"name": {"const": name}, arguments_key: parameters},
            "required": ["name", arguments_key],
            "additionalProperties": false
        })
    };
    let one_call = json!({"anyOf": called.iter().map(call).collect::<Vec<_>>()});
    let constraint = match (format, off, forced) {
        (_, true, _) => None,
        (ToolFormat::Generic, _, _) => {
            let mut calls = json!({"type": "array", "items": one_call, "minItems": 1});
            if !tools.parallel {
                calls["maxItems"] = json!(1);
            }
            let calls = json!({
                "type": "object", "properties": {"tool_calls": calls},
                "required": ["tool_calls"], "additionalProperties": false
            });
            let reply = json!({
                "type": "object", "properties": {"response": {"type": "string"}},
                "required": ["response"], "additionalProperties": false
            });
            let schema = if forced {
                calls
            } else {
                json!({"anyOf": [calls, reply]})
            };
            Some(Constraint::JsonSchema(schema.to_string()))
        }
        (ToolFormat::Hermes, _, true) => {
            let repeat = if tools.parallel { " (\"\\n\" call)*" } else { "" };
            Some(Constraint::Lark(format!(
                "%llguidance {{}}\nstart: call{repeat}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {}\n",
                crate::constraint::compact(one_call)
            )))
        }
        (ToolFormat::Llama3, _, true) => Some(Constraint::JsonSchema(one_call.to_string())),
        (_, _, false) => None,
    };
    let system = (format == ToolFormat::Generic && !off).then(|| generic_system(&template_tools, forced));
    Ok(Prepared {
        template_tools,
        system,
        constraint,
        parser: (!off).then(|| CallParser::new(format, tools.parallel)),
    })
}

/// A conversation as a template without tool support can show it (the
/// generic format): the tools' system message first, the assistant's calls
/// as the JSON it writes them in, and tool results as user messages.
pub fn generic_messages(messages: Vec<Message>, system: Option<&str>) -> Vec<Message> {
    let mut out: Vec<Message> = messages
        .into_iter()
        .map(|mut m| {
            if !m.tool_calls.is_empty() {
                let calls: Vec<Value> = m
                    .tool_calls
                    .drain(..)
                    .map(|c| {
                        let arguments = serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments));
                        json!({"name": c.name, "arguments": arguments})
                    })
                    .collect();
                let calls = json!({"tool_calls": calls}).to_string();
                m.content = if m.content.is_empty() {
                    calls
                } else {
                    format!("{}\n{calls}", m.content)
                };
            }
            if m.role == "tool" {
                let id = m.tool_call_id.take().unwrap_or_default();
                m.role = "user".into();
                m.content = format!("The result of tool call {id}:\n{}", m.content);
            }
            m
        })
        .collect();
    if let Some(system) = system {
        match out.first_mut() {
            Some(first) if first.role == "system" => first.content = format!("{}\n\n{system}", first.content),
            _ => out.insert(
                0,
                Message {
                    role: "system".into(),
                    content: system.into(),
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                },
            ),
        }
    }
    out
}

fn generic_system(tools: &Value, forced: bool) -> String {
    let listed = serde_json::to_string_pretty(tools).unwrap_or_default();
    let answer = if forced {
        "Answer with one JSON object that calls tools: {\"tool_calls\": [{\"name\": <tool name>, \"arguments\": <arguments object>}]}."
    } else {
        "Answer with one JSON object: {\"tool_calls\": [{\"name\": <tool name>, \"arguments\": <arguments object>}]} to call tools, or {\"response\": <your reply>} to reply without them."
    };
    format!("You can call these tools:\n{listed}\n\n{answer}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tool;

    fn weather(choice: ToolChoice, parallel: bool) -> Tools {
        Tools {
            functions: vec![Tool {
                name: "get_weather".into(),
                description: Some("The weather in a city".into()),
                parameters: Some(
                    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#.into(),
                ),
            }],
            choice,
            parallel,
        }
    }

    #[test]
    fn formats_follow_the_template() {
        assert_eq!(
            ToolFormat::of_template("... <tool_call>\n{{ x }} ..."),
            ToolFormat::Hermes
        );
        assert_eq!(ToolFormat::of_template("{{ '<|python_tag|>' }}"), ToolFormat::Llama3);
        assert_eq!(ToolFormat::of_template("{% for m in messages %}"), ToolFormat::Generic);
    }

    #[test]
    fn choices_decide_the_constraint() {
        let hermes = |choice| prepare(&weather(choice, true), ToolFormat::Hermes).expect("valid");
        assert!(hermes(ToolChoice::Auto).constraint.is_none(), "auto is free text");
        assert!(hermes(ToolChoice::None).parser.is_none(), "none parses nothing");
        match hermes(ToolChoice::Required).constraint {
            Some(Constraint::Lark(lark)) => {
                assert!(
                    lark.contains("\"<tool_call>\\n\" body") && lark.contains("get_weather"),
                    "{lark}"
                )
            }
            other => panic!("{other:?}"),
        }
        let generic = prepare(&weather(ToolChoice::Auto, false), ToolFormat::Generic).expect("valid");
        match generic.constraint {
            Some(Constraint::JsonSchema(s)) => {
                assert!(s.contains("\"response\"") && s.contains("\"maxItems\":1"), "{s}")
            }
            other => panic!("{other:?}"),
        }
        assert!(generic.system.is_some_and(|s| s.contains("get_weather")));
        let missing = prepare(&weather(ToolChoice::Function("nope".into()), true), ToolFormat::Hermes);
        assert!(matches!(missing, Err(Error::InvalidRequest(m)) if m.contains("`nope`")));
    }
}
