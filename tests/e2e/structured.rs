//! Structured outputs over HTTP: `response_format`, `json_schema`, `regex`,
//! `choice` and `grammar` hold on the real default model, sampled, whole and
//! streamed; a constraint that does not compile is a 400 naming its field.

use serde_json::{Value, json};

use crate::support::{self, DEFAULT_MODEL, Server};

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    })
}

/// Whether `text` is a person as `person_schema` says.
fn is_person(text: &str) -> bool {
    let Ok(Value::Object(person)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let keys: Vec<&str> = person.keys().map(String::as_str).collect();
    let pets_ok = person["pets"].as_array().is_some_and(|p| {
        p.len() <= 3
            && p.iter()
                .all(|v| ["cat", "dog", "fish"].contains(&v.as_str().unwrap_or("")))
    });
    keys.len() == 3
        && person["name"].as_str().is_some_and(|n| n.chars().count() <= 30)
        && person["age"].as_u64().is_some_and(|a| a <= 150)
        && pets_ok
}

fn chat(constraint: Value, content: &str, extra: Value) -> Value {
    let mut body = json!({
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 96,
        "temperature": 0.9,
        "seed": 11,
    });
    for (key, value) in constraint
        .as_object()
        .into_iter()
        .flatten()
        .chain(extra.as_object().into_iter().flatten())
    {
        body[key] = value.clone();
    }
    body
}

/// The texts and finish reasons of a whole chat response's choices.
fn answers(body: &Value) -> Vec<(String, String)> {
    body["choices"]
        .as_array()
        .unwrap_or_else(|| panic!("no choices: {body}"))
        .iter()
        .map(|c| {
            let text = c["message"]["content"].as_str().expect("content").to_string();
            (text, c["finish_reason"].as_str().expect("finish").to_string())
        })
        .collect()
}

#[test]
fn json_schemas_hold_whole_streamed_and_sampled() {
    let server = Server::start(&support::component(), &[]);
    let format = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}}});
    let (status, body) = server.post(
        "/v1/chat/completions",
        chat(
            format.clone(),
            "Invent a person with pets. Answer in JSON.",
            json!({"n": 4}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    let answers = answers(&body);
    assert_eq!(answers.len(), 4);
    for (text, finish) in &answers {
        assert!(
            finish == "length" || is_person(text),
            "finished with {finish}: {text:?}"
        );
    }
    assert!(
        answers.iter().any(|(_, f)| f == "stop"),
        "no choice finished: {answers:?}"
    );

    // llama-server's top-level `json_schema`, streamed: the deltas join into a person.
    let schema = json!({"json_schema": person_schema()});
    let (status, events) = server.post_stream(
        "/v1/chat/completions",
        chat(
            schema,
            "Invent a person. Answer in JSON.",
            json!({"stream": true, "seed": 5}),
        ),
    );
    assert_eq!(status, 200);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = events.iter().find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert!(finish == Some("length") || is_person(&text), "{finish:?}: {text:?}");

    // JSON mode on /v1/completions: any object.
    let request = json!({
        "model": DEFAULT_MODEL, "prompt": "A cat, described in JSON:", "max_tokens": 48, "temperature": 0,
        "response_format": {"type": "json_object"}
    });
    let (status, body) = server.post("/v1/completions", request);
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().expect("text");
    if body["choices"][0]["finish_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(text).is_ok_and(|v| v.is_object()),
            "{text:?}"
        );
    } else {
        assert!(text.starts_with('{'), "{text:?}");
    }
}

#[test]
fn regexes_choices_and_grammars_hold() {
    let server = Server::start(&support::component(), &[]);
    let post = |constraint: Value, content: &str| {
        let (status, body) = server.post("/v1/chat/completions", chat(constraint, content, json!({"n": 3})));
        assert_eq!(status, 200, "{body}");
        answers(&body)
    };
    for (text, finish) in post(json!({"choice": ["Paris", "London", "Rome"]}), "Capital of France?") {
        assert_eq!(finish, "stop");
        assert!(["Paris", "London", "Rome"].contains(&text.as_str()), "{text:?}");
    }
    // Choices that share their first bytes: the forced prefix ends inside a character.
    for choices in [json!(["да", "нет"]), json!(["はい", "いいえ"])] {
        for (text, finish) in post(json!({"choice": choices.clone()}), "Yes or no?") {
            assert_eq!(finish, "stop");
            assert!(
                choices.as_array().expect("list").iter().any(|c| c == text.as_str()),
                "{text:?}"
            );
        }
    }
    // Choices are literal text, however many.
    let many: Vec<String> = (0..5000).map(|i| format!("option {i} (a+b)*")).collect();
    for (text, finish) in post(json!({"choice": many}), "Pick one.") {
        assert_eq!(finish, "stop");
        let number = text.strip_prefix("option ").and_then(|t| t.strip_suffix(" (a+b)*"));
        assert!(
            number.is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n < 5000)),
            "{text:?}"
        );
    }
    for (text, finish) in post(json!({"regex": "[0-9]{3}-[0-9]{4}"}), "A phone number?") {
        let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        assert_eq!(finish, "stop");
        assert!(
            text.len() == 8 && digits(&text[..3]) && &text[3..4] == "-" && digits(&text[4..]),
            "{text:?}"
        );
    }
    let gbnf = r#"root ::= answer ", because " reason "."
answer ::= "yes" | "no"
reason ::= [a-z ]{3,40}"#;
    for (text, finish) in post(json!({"grammar": gbnf}), "Is the sky blue?") {
        assert_eq!(finish, "stop");
        let (answer, reason) = text.split_once(", because ").unwrap_or_else(|| panic!("{text:?}"));
        assert!(["yes", "no"].contains(&answer), "{text:?}");
        let reason = reason.strip_suffix('.').unwrap_or_else(|| panic!("{text:?}"));
        assert!(reason.chars().all(|c| c.is_ascii_lowercase() || c == ' '), "{text:?}");
    }
    let lark = "%llguidance {}\nstart: \"Answer: \" /[A-Z][a-z]+/";
    for (text, finish) in post(json!({"grammar": lark}), "Name a fruit.") {
        assert_eq!(finish, "stop");
        assert!(text.starts_with("Answer: ") && text.len() > 9, "{text:?}");
    }
}

#[test]
fn constraints_that_do_not_compile_are_refused_naming_their_field() {
    let server = Server::start(&support::component(), &[]);
    let refused = |constraint: Value| {
        let (status, body) = server.post("/v1/chat/completions", chat(constraint.clone(), "Hi", json!({})));
        assert_eq!(status, 400, "{constraint}: {body}");
        let error = &body["error"];
        (
            error["param"].as_str().unwrap_or_default().to_string(),
            error["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (param, message) = refused(json!({"regex": "a(b"}));
    assert_eq!(param, "regex");
    assert!(message.contains("unclosed group"), "{message}");
    let format = |schema: Value| json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
    let (param, message) = refused(format(json!({"type": "string", "format": "made-up"})));
    assert_eq!(param, "response_format.json_schema.schema");
    assert!(message.contains("made-up"), "{message}");
    let (param, message) = refused(format(
        json!({"type": "object", "properties": {"a": {"pattern": "(?<=x)y"}}}),
    ));
    assert_eq!(param, "response_format.json_schema.schema");
    assert!(message.contains("look-around"), "{message}");
    let (param, message) = refused(json!({"grammar": "root ::= missing"}));
    assert_eq!(param, "grammar");
    assert!(message.contains("`missing`"), "{message}");
    let (param, _) = refused(json!({"regex": "a", "choice": ["a"]}));
    assert_eq!(param, "choice");
    let (param, _) = refused(json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}));
    assert_eq!(param, "response_format.json_schema.schema");
    let (param, _) = refused(json!({"response_format": {"type": "yaml"}}));
    assert_eq!(param, "response_format.type");
    let (param, _) = refused(json!({"choice": []}));
    assert_eq!(param, "choice");
    // A grammar past the parser's limits is the grammar's fault: a 400, not a 500.
    let wide: Vec<String> = (0..3000).map(|i| format!("\"w{i}\"")).collect();
    let (_, message) = refused(json!({"grammar": format!("root ::= {}", wide.join(" | "))}));
    assert!(message.contains("items"), "{message}");

    // Nothing was lost: the same server still answers.
    let (status, body) = server.post("/v1/chat/completions", chat(json!({}), "Hi", json!({"max_tokens": 4})));
    assert_eq!(status, 200, "{body}");
}
