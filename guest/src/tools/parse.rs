//! The model's tool calls, parsed out of its reply as it streams: text that is
//! not (or cannot yet be) part of a call goes out as content; a call goes out
//! once whole, as its id and name, then its arguments.

use serde_json::Value;

use super::ToolFormat;
use crate::ToolCallDelta;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

pub struct CallParser {
    format: ToolFormat,
    /// Text not given out yet: a call under way, or what may begin one.
    held: String,
    /// Whether the reply began with `{` (a call, as a bare object), once it has begun.
    json_reply: Option<bool>,
    calls: u32,
    /// Whether a reply may make more than one call.
    parallel: bool,
    /// Makes the calls' ids unique.
    salt: u64,
}

/// What a piece of the reply turned out to be.
#[derive(Default)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCallDelta>,
}

impl CallParser {
    pub fn new(format: ToolFormat, parallel: bool) -> Self {
        use std::hash::{BuildHasher, Hasher};
        Self {
            format,
            held: String::new(),
            json_reply: None,
            calls: 0,
            parallel,
            salt: std::collections::hash_map::RandomState::new().build_hasher().finish(),
        }
    }

    /// Whether the reply has called a tool.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// The next `text` of the reply; `last` when the reply has ended.
    pub fn push(&mut self, text: &str, last: bool) -> Parsed {
        self.held.push_str(text);
        let mut parsed = Parsed::default();
        match self.format {
            ToolFormat::Hermes => self.hermes(last, &mut parsed),
            ToolFormat::Llama3 | ToolFormat::Generic => self.whole_reply(last, &mut parsed),
        }
        parsed
    }

    fn hermes(&mut self, last: bool, parsed: &mut Parsed) {
        // Small models often drop the tags and answer with the bare object
        // (llama.cpp's Hermes parser takes it too).
        if self.json_reply.is_none() && !self.held.trim_start().is_empty() {
            self.json_reply = Some(self.held.trim_start().starts_with('{'));
        }
        if self.json_reply == Some(true) {
            if last {
                let reply = std::mem::take(&mut self.held);
                match call_of(&reply, "arguments") {
                    Some((name, arguments)) => self.call(name, arguments, parsed),
                    None => parsed.content = reply,
                }
            }
            return;
        }
        loop {
            let Some(open) = self.held.find(OPEN) else {
                // Hold back what could be the start of `<tool_call>`, and
                // after a call the whitespace that may only separate calls.
                let spaces = self.held.len() - self.held.trim_end().len();
                let keep = match last {
                    true => 0,
                    false if self.called() => partial_suffix(&self.held, OPEN).max(spaces),
                    false => partial_suffix(&self.held, OPEN),
                };
                let ready = self.held.len() - keep;
                self.content(&self.held[..ready], parsed);
                self.held.drain(..ready);
                return;
            };
            let before = self.held[..open].to_string();
            self.content(&before, parsed);
            let body_start = open + OPEN.len();
            let (body, end) = match self.held[body_start..].find(CLOSE) {
                Some(close) => (
                    &self.held[body_start..body_start + close],
                    body_start + close + CLOSE.len(),
                ),
                // A reply may end inside its last call (at an end token).
                None if last => (&self.held[body_start..], self.held.len()),
                None => {
                    self.held.drain(..open);
                    return;
                }
            };
            match call_of(body, "arguments") {
                Some((name, arguments)) => self.call(name, arguments, parsed),
                None => parsed.content.push_str(&self.held[open..end]),
            }
            self.held.drain(..end);
        }
    }

    /// Llama 3 and the generic format: the reply is calls as a whole, or text.
    fn whole_reply(&mut self, last: bool, parsed: &mut Parsed) {
        if self.format == ToolFormat::Llama3 && self.json_reply.is_none() {
            let start = self.held.trim_start();
            if !start.is_empty() {
                self.json_reply = Some(start.starts_with('{'));
            }
        }
        if self.format == ToolFormat::Llama3 && self.json_reply == Some(false) {
            parsed.content = std::mem::take(&mut self.held);
            return;
        }
        if !last {
            return;
        }
        let reply = std::mem::take(&mut self.held);
        let calls = match self.format {
            // One call, or several separated by `;` (which may also sit
            // inside a call's strings: the whole reply is tried first).
            ToolFormat::Llama3 => call_of(&reply, "parameters").map(|call| vec![call]).or_else(|| {
                reply
                    .split(';')
                    .map(|call| call_of(call, "parameters"))
                    .collect::<Option<Vec<_>>>()
            }),
            _ => generic(&reply, parsed),
        };
        match calls {
            Some(calls) if !calls.is_empty() => calls.into_iter().for_each(|(n, a)| self.call(n, a, parsed)),
            Some(_) => {}
            None => parsed.content = reply,
        }
    }

    /// Content between calls is only whitespace (the newlines around blocks).
    fn content(&self, text: &str, parsed: &mut Parsed) {
        if !(self.called() && text.trim().is_empty()) {
            parsed.content.push_str(text);
        }
    }

    fn call(&mut self, name: String, arguments: String, parsed: &mut Parsed) {
        // `parallel_tool_calls: false`: a reply makes one call; later ones are dropped.
        if !self.parallel && self.called() {
            return;
        }
        let index = self.calls;
        self.calls += 1;
        parsed.calls.push(ToolCallDelta {
            index,
            id: Some(format!("call_{:016x}{index:02}", self.salt)),
            name: Some(name),
            arguments: String::new(),
        });
        parsed.calls.push(ToolCallDelta {
            index,
            id: None,
            name: None,
            arguments,
        });
    }
}

/// `{"name": ..., <key>: {...}}`: the name and the arguments as JSON text.
fn call_of(text: &str, key: &str) -> Option<(String, String)> {
    let value: Value = serde_json::from_str(text.trim()).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get(key).or_else(|| value.get("arguments"))? {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Some((name, arguments))
}

/// The generic format's calls, or its `response` as content; none if the
/// reply is neither.
fn generic(reply: &str, parsed: &mut Parsed) -> Option<Vec<(String, String)>> {
    let value: Value = serde_json::from_str(reply.trim()).ok()?;
    if let Some(text) = value.get("response").and_then(Value::as_str) {
        parsed.content = text.to_string();
        return Some(Vec::new());
    }
    value
        .get("tool_calls")?
        .as_array()?
        .iter()
        .map(|call| call_of(&call.to_string(), "arguments"))
        .collect()
}

/// The length of the longest end of `text` that begins `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reply pushed in pieces of `size` bytes: content, and (name, arguments) per call.
    fn run(format: ToolFormat, reply: &str, size: usize) -> (String, Vec<(String, String)>) {
        let mut parser = CallParser::new(format, true);
        let chars: Vec<char> = reply.chars().collect();
        let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
        let (mut content, mut calls) = (String::new(), Vec::<(String, String)>::new());
        for (i, piece) in pieces.iter().enumerate() {
            let parsed = parser.push(piece, i + 1 == pieces.len());
            content.push_str(&parsed.content);
            for delta in parsed.calls {
                match delta.name {
                    Some(name) => calls.push((name, delta.arguments)),
                    None => calls.last_mut().expect("a call").1.push_str(&delta.arguments),
                }
            }
        }
        (content, calls)
    }

    #[test]
    fn hermes_blocks_become_calls_at_any_split() {
        let reply = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        for size in [1, 3, 7, 1000] {
            let (content, calls) = run(ToolFormat::Hermes, reply, size);
            assert_eq!(content, "Let me check.\n", "size {size}");
            assert_eq!(
                calls,
                vec![
                    ("get_weather".into(), r#"{"city":"Paris"}"#.into()),
                    ("get_time".into(), "{}".into())
                ],
                "size {size}"
            );
        }
        let (content, calls) = run(ToolFormat::Hermes, "No tools: a < b.", 2);
        assert_eq!((content.as_str(), calls.len()), ("No tools: a < b.", 0));
        let prose = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\nDone.\nNext";
        for size in [1, 2, 5] {
            let (content, calls) = run(ToolFormat::Hermes, prose, size);
            assert_eq!((content.as_str(), calls.len()), ("\nDone.\nNext", 1), "size {size}");
        }
        let bare = r#" {"name": "get_weather", "arguments": {"city": "Rome"}}"#;
        let (content, calls) = run(ToolFormat::Hermes, bare, 3);
        assert_eq!(
            (content.as_str(), calls),
            ("", vec![("get_weather".into(), r#"{"city":"Rome"}"#.into())])
        );
        let (content, calls) = run(ToolFormat::Hermes, "<tool_call>\nnot json\n</tool_call>", 4);
        assert_eq!(
            (content.as_str(), calls.len()),
            ("<tool_call>\nnot json\n</tool_call>", 0)
        );
    }

    #[test]
    fn llama3_and_generic_replies() {
        let (content, calls) = run(ToolFormat::Llama3, r#"{"name": "f", "parameters": {"x": 1}}"#, 5);
        assert_eq!((content.as_str(), calls), ("", vec![("f".into(), r#"{"x":1}"#.into())]));
        let (content, calls) = run(
            ToolFormat::Llama3,
            r#"{"name": "search", "parameters": {"q": "a; b"}}"#,
            4,
        );
        assert_eq!(
            (content.as_str(), calls),
            ("", vec![("search".into(), r#"{"q":"a; b"}"#.into())])
        );
        let (content, calls) = run(ToolFormat::Llama3, "Hello {there}", 3);
        assert_eq!((content.as_str(), calls.len()), ("Hello {there}", 0));
        let generic = r#"{"tool_calls": [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]}"#;
        let (content, calls) = run(ToolFormat::Generic, generic, 4);
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![("f".into(), r#"{"x":1}"#.into()), ("g".into(), "{}".into())]
        );
        let (content, calls) = run(ToolFormat::Generic, r#"{"response": "Hi there"}"#, 4);
        assert_eq!((content.as_str(), calls.len()), ("Hi there", 0));
    }
}
