//! `realm-host serve` over real HTTP.

use serde_json::json;

use crate::support::{self, DEFAULT_MODEL, Server, error_message};

#[test]
fn health_and_a_greedy_completion() {
    let server = Server::start(&support::component(), &[]);
    let (status, body) = server.get("/health");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));

    let request = json!({
        "model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0
    });
    let (status, body) = server.post("/v1/completions", request);
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().expect("text");
    assert!(
        text.starts_with(" Paris.\n\nThe United States has a population of approximately"),
        "{text:?}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 16);
    assert_eq!(body["usage"]["total_tokens"], 21);
    assert_eq!(body["object"], "text_completion");
}

#[test]
fn bad_requests_get_openai_shaped_errors() {
    let server = Server::start(&support::component(), &[]);
    let cases = [
        (json!({"model": "no-such-model", "prompt": "x"}), 404, "no-such-model"),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "frobnicate": 1}),
            400,
            "frobnicate",
        ),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "stream": true}),
            400,
            "stream",
        ),
        (json!({"model": DEFAULT_MODEL, "prompt": "x", "n": 2}), 400, "n"),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "temperature": -2}),
            400,
            "temperature",
        ),
        (json!({"model": DEFAULT_MODEL}), 400, "prompt"),
        (
            json!({"model": "../models/x", "prompt": "x"}),
            403,
            "paths are not allowed",
        ),
    ];
    for (request, status, needle) in cases {
        let (got, body) = server.post("/v1/completions", request.clone());
        assert_eq!(got, status, "{request}: {body}");
        let message = error_message(&body);
        assert!(message.contains(needle), "{request}: `{needle}` not in {message:?}");
    }
    let (status, body) = server.post_raw("/v1/completions", "{not json");
    assert_eq!(status, 400);
    error_message(&body);
    let (status, body) = server.post_declaring("/v1/completions", 5 << 20);
    assert_eq!(status, 413);
    error_message(&body);
    let (status, body) = server.get("/v1/nothing-here");
    assert_eq!(status, 404);
    error_message(&body);
}
