//! Tool calling over HTTP: the default model (whose template ignores tools:
//! the generic format) and Qwen2.5-Coder when fetched (Hermes `<tool_call>`
//! blocks), whole and streamed, a forced call's arguments valid against the
//! function's schema, the result sent back and answered; bad tool requests
//! are 400s naming the field.

use serde_json::{Value, json};

use crate::support::{self, DEFAULT_MODEL, Server};

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather", "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            }, "required": ["city", "unit"], "additionalProperties": false}
        }},
        {"type": "function", "function": {
            "name": "get_time", "description": "The local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"], "additionalProperties": false}
        }}
    ])
}

fn ask(model: &str, choice: Value, extra: Value) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools(),
        "tool_choice": choice,
        "max_tokens": 96,
        "temperature": 0,
    });
    for (key, value) in extra.as_object().into_iter().flatten() {
        body[key] = value.clone();
    }
    body
}

/// Whether `arguments` (JSON text) are valid for `name` in `tools()`.
fn valid_arguments(name: &str, arguments: &str) -> bool {
    let Ok(Value::Object(args)) = serde_json::from_str::<Value>(arguments) else {
        return false;
    };
    let city = args
        .get("city")
        .and_then(Value::as_str)
        .is_some_and(|c| c.chars().count() <= 40);
    match name {
        "get_weather" => {
            city && args.len() == 2 && ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap_or(""))
        }
        "get_time" => city && args.len() == 1,
        _ => false,
    }
}

fn models() -> Vec<&'static str> {
    support::golden_models()
        .into_iter()
        .filter(|m| *m != "gemma-3-270m-q4_k_m")
        .collect()
}

#[test]
fn forced_calls_are_valid_whole_and_streamed_and_their_results_are_answered() {
    let server = Server::start(&support::component(), &[]);
    for model in models() {
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        for (choice, only) in [(json!("required"), None), (named, Some("get_time"))] {
            let (status, body) = server.post("/v1/chat/completions", ask(model, choice.clone(), json!({})));
            assert_eq!(status, 200, "{model}: {body}");
            let answer = &body["choices"][0];
            assert_eq!(answer["finish_reason"], "tool_calls", "{model} {choice}: {body}");
            assert!(answer["message"]["content"].is_null(), "{model}: {body}");
            let calls = answer["message"]["tool_calls"].as_array().expect("tool_calls");
            assert!(!calls.is_empty(), "{model}: {body}");
            for call in calls {
                let name = call["function"]["name"].as_str().expect("name");
                let arguments = call["function"]["arguments"].as_str().expect("arguments");
                assert!(only.is_none_or(|only| only == name), "{model}: called {name}");
                assert!(valid_arguments(name, arguments), "{model}: {name}({arguments})");
                assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
                assert_eq!(call["type"], "function");
            }

            // Streamed: each call's first part has its id and name, then its arguments.
            let request = ask(model, choice.clone(), json!({"stream": true}));
            let (status, events) = server.post_stream("/v1/chat/completions", request);
            assert_eq!(status, 200, "{model}");
            let mut streamed: Vec<(String, String)> = Vec::new();
            for part in events.iter().flat_map(|e| {
                e["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            }) {
                let index = part["index"].as_u64().expect("index") as usize;
                if let Some(name) = part["function"]["name"].as_str() {
                    assert_eq!(index, streamed.len(), "{part}");
                    assert!(part["id"].as_str().is_some() && part["type"] == "function", "{part}");
                    streamed.push((name.to_string(), String::new()));
                }
                let arguments = part["function"]["arguments"].as_str().expect("arguments");
                streamed.get_mut(index).expect("a started call").1.push_str(arguments);
            }
            let finish = events.iter().find_map(|e| e["choices"][0]["finish_reason"].as_str());
            assert_eq!(finish, Some("tool_calls"), "{model}");
            let whole: Vec<(String, String)> = calls
                .iter()
                .map(|c| {
                    (
                        c["function"]["name"].as_str().unwrap_or_default().into(),
                        c["function"]["arguments"].as_str().unwrap_or_default().into(),
                    )
                })
                .collect();
            assert_eq!(streamed, whole, "{model}: greedy, streamed or not");
        }

        // Stop strings cut the reply's text, never a call.
        let (status, body) = server.post(
            "/v1/chat/completions",
            ask(model, json!("required"), json!({"stop": ["\n", "{"]})),
        );
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{model}: {body}");

        // The call and its result go back; the model answers (in text or another call).
        let (_, body) = server.post("/v1/chat/completions", ask(model, json!("required"), json!({})));
        let assistant = body["choices"][0]["message"].clone();
        let id = assistant["tool_calls"][0]["id"].clone();
        let mut follow_up = ask(model, json!("auto"), json!({}));
        follow_up["messages"] = json!([
            {"role": "user", "content": "What is the weather in Paris?"},
            assistant,
            {"role": "tool", "tool_call_id": id, "content": "{\"temperature\": 18, \"sky\": \"cloudy\"}"}
        ]);
        let (status, body) = server.post("/v1/chat/completions", follow_up);
        assert_eq!(status, 200, "{model}: {body}");
        let answer = &body["choices"][0];
        assert!(
            ["stop", "tool_calls", "length"].contains(&answer["finish_reason"].as_str().unwrap_or("")),
            "{body}"
        );
        assert!(body["usage"]["prompt_tokens"].as_u64() > Some(30), "{body}");
    }
}

#[test]
fn bad_tool_requests_are_refused_naming_the_field() {
    let server = Server::start(&support::component(), &[]);
    let refused = |path: &str, body: Value| {
        let (status, reply) = server.post(path, body.clone());
        assert_eq!(status, 400, "{body}: {reply}");
        reply["error"]["param"].as_str().unwrap_or_default().to_string()
    };
    let chat = "/v1/chat/completions";
    let mut body = ask(DEFAULT_MODEL, json!("auto"), json!({}));
    body.as_object_mut().expect("object").remove("tools");
    assert_eq!(refused(chat, body), "tool_choice");
    let missing = json!({"type": "function", "function": {"name": "get_stock_price"}});
    let (status, reply) = server.post(chat, ask(DEFAULT_MODEL, missing, json!({})));
    assert!(
        status == 400
            && reply["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("get_stock_price"),
        "{reply}"
    );
    assert_eq!(
        refused(chat, ask(DEFAULT_MODEL, json!("sometimes"), json!({}))),
        "tool_choice"
    );
    let completions = json!({"model": DEFAULT_MODEL, "prompt": "Hi", "tools": tools()});
    assert_eq!(refused("/v1/completions", completions), "tools");
    let with_messages = |messages: Value| ask(DEFAULT_MODEL, json!("auto"), json!({"messages": messages}));
    assert_eq!(
        refused(chat, with_messages(json!([{"role": "wizard", "content": "Hi"}]))),
        "messages[0].role"
    );
    assert_eq!(
        refused(chat, with_messages(json!([{"role": "tool", "content": "18C"}]))),
        "messages[0].tool_call_id"
    );
    let call = json!([{"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]);
    let user_calls = json!([{"role": "user", "content": "Hi", "tool_calls": call}]);
    assert_eq!(refused(chat, with_messages(user_calls)), "messages[0].tool_calls");
    assert_eq!(
        refused(chat, with_messages(json!([{"role": "user", "content": null}]))),
        "messages[0].content"
    );
    let forced_json = ask(
        DEFAULT_MODEL,
        json!("required"),
        json!({"response_format": {"type": "json_object"}}),
    );
    let (status, reply) = server.post(chat, forced_json);
    assert_eq!(status, 400, "{reply}");
    // OpenAI's newer `developer` role is a system message.
    let developer =
        with_messages(json!([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]));
    let (status, reply) = server.post(chat, developer);
    assert_eq!(status, 200, "{reply}");
}
