//! `realm-host serve` over real HTTP.

use serde_json::json;

use crate::support::{self, DEFAULT_MODEL, Server, error_message};

#[test]
fn health_and_a_greedy_completion() {
    let server = Server::start(&support::component(), &[]);
    let (status, body) = server.get("/health");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = server.get("/v1/models");
    assert_eq!((status, body["object"].as_str()), (200, Some("list")));
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&DEFAULT_MODEL), "{ids:?}");

    let request = json!({
        "model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0
    });
    let (status, body) = server.post("/v1/completions", request);
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().expect("text");
    // The tokens before the first near-tie; the whole text is compared with
    // llama.cpp's on the CPU backend (completions_give_llama_cpps_greedy_text_on_every_model).
    assert!(text.starts_with(" Paris.\n\nThe"), "{text:?}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 16);
    assert_eq!(body["usage"]["total_tokens"], 21);
    assert_eq!(body["object"], "text_completion");
}

#[test]
fn chat_completions_answer_in_openai_shape() {
    let server = Server::start(&support::component(), &[]);
    let request = json!({
        "model": DEFAULT_MODEL,
        "messages": [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of France?"}],
        "temperature": 0,
        "max_completion_tokens": 24,
        "user": "someone",
    });
    let (status, body) = server.post("/v1/chat/completions", request.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let content = body["choices"][0]["message"]["content"].as_str().expect("content");
    assert!(content.contains("Paris"), "{content:?}");
    let used = body["usage"]["completion_tokens"].as_u64().expect("usage");
    assert!(used < 24 && body["choices"][0]["finish_reason"] == "stop", "{body}");
    let mut through = request.clone();
    through["ignore_eos"] = json!(true);
    let (status, body) = server.post("/v1/chat/completions", through);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["usage"]["completion_tokens"], 24,
        "ignore_eos runs to max tokens: {body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    for (request, needle) in [
        (json!({"model": DEFAULT_MODEL, "messages": []}), "messages"),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
            "prompt",
        ),
        (
            json!({"model": DEFAULT_MODEL, "messages": [{"role": "user"}]}),
            "content",
        ),
        (
            json!({"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "max_completion_tokens": 1}),
            "max_completion_tokens",
        ),
    ] {
        let (status, body) = server.post("/v1/chat/completions", request.clone());
        assert_eq!(status, 400, "{request}: {body}");
        assert!(error_message(&body).contains(needle), "{request}: {body}");
    }
}

#[test]
fn streams_are_server_sent_events_that_add_up_to_the_whole_response() {
    let server = Server::start(&support::component(), &[]);
    let request =
        json!({"model": DEFAULT_MODEL, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 12});
    let (_, whole) = server.post("/v1/completions", request.clone());
    let mut streamed_request = request;
    streamed_request["stream"] = json!(true);
    let (status, events) = server.post_stream("/v1/completions", streamed_request);
    assert_eq!(status, 200);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    let chunks = &events[..events.len() - 1];
    assert!(chunks.len() >= 2, "one event per token: {events:?}");
    let text: String = chunks
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().expect("text"));
    assert!(
        chunks
            .iter()
            .all(|e| e["object"] == "text_completion" && e["id"] == chunks[0]["id"])
    );
    let finishes: Vec<_> = chunks
        .iter()
        .map(|e| e["choices"][0]["finish_reason"].clone())
        .collect();
    assert_eq!(finishes.last(), Some(&json!("length")));
    assert!(finishes[..finishes.len() - 1].iter().all(|f| f.is_null()));

    let chat = json!({
        "model": DEFAULT_MODEL, "stream": true, "stream_options": {"include_usage": true}, "temperature": 0,
        "messages": [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Capital of France?"}],
    });
    let (status, events) = server.post_stream("/v1/chat/completions", chat);
    assert_eq!(status, 200);
    assert_eq!(events.last(), Some(&json!("[DONE]")));
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = &events[events.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert!(
        usage["usage"]["completion_tokens"].as_u64().is_some_and(|n| n >= 1),
        "{usage}"
    );
    let content: String = events[1..events.len() - 2]
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(content.contains("Paris"), "{content:?}");
    assert!(
        events[..events.len() - 2]
            .iter()
            .all(|e| e["object"] == "chat.completion.chunk" && e["usage"].is_null())
    );

    // Errors found before the first token are HTTP errors, not events.
    let (status, body) = server.post_stream(
        "/v1/completions",
        json!({"model": "nope", "prompt": "x", "stream": true}),
    );
    assert_eq!(status, 404, "{body:?}");
    let (status, _) = server.post_stream(
        "/v1/completions",
        json!({"model": DEFAULT_MODEL, "prompt": "x", "stream_options": {"include_usage": true}}),
    );
    assert_eq!(status, 400, "stream_options without stream");
}

#[test]
fn completion_fields_are_honoured_over_http() {
    let server = Server::start(&support::component(), &[]);
    let base =
        json!({"model": DEFAULT_MODEL, "prompt": "The capital of France is", "temperature": 0, "max_tokens": 32});
    let with = |extra: serde_json::Value| {
        let mut request = base.clone();
        request
            .as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        let (status, body) = server.post("/v1/completions", request);
        assert_eq!(status, 200, "{body}");
        (
            body["choices"][0]["text"].as_str().expect("text").to_string(),
            body["choices"][0]["finish_reason"].clone(),
        )
    };
    let (text, finish) = with(json!({"stop": ["The"]}));
    assert_eq!((text.as_str(), finish.as_str()), (" Paris.\n\n", Some("stop")));
    let (text, _) = with(json!({"logit_bias": {"7042": -100}}));
    assert!(!text.starts_with(" Paris"), "{text:?}");
    let (plain, _) = with(json!({}));
    let (varied, _) = with(json!({"frequency_penalty": 2.0}));
    assert_ne!(plain, varied);
    let (a, _) = with(json!({"temperature": 1.0, "seed": 7}));
    let (b, _) = with(json!({"temperature": 1.0, "seed": 7}));
    assert_eq!(a, b, "the same seed gives the same completion");
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
        (json!({"model": DEFAULT_MODEL, "prompt": "x", "n": 17}), 400, "n"),
        (json!({"model": DEFAULT_MODEL, "prompt": "x", "n": 0}), 400, "n"),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "temperature": -2}),
            400,
            "temperature",
        ),
        (json!({"model": DEFAULT_MODEL}), 400, "prompt"),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "logit_bias": {"abc": 1}}),
            400,
            "logit_bias",
        ),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "logit_bias": {"99999999": 1}}),
            400,
            "vocabulary",
        ),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "presence_penalty": 5}),
            400,
            "presence_penalty",
        ),
        (
            json!({"model": DEFAULT_MODEL, "prompt": "x", "stop": [""]}),
            400,
            "stop",
        ),
        (json!({"model": "../models/x", "prompt": "x"}), 404, "does not exist"),
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

/// Every golden prompt of every model present, through `/v1/completions`:
/// llama.cpp's 32-token greedy text, whole (on the CPU backend, which is
/// bit-equal to llama.cpp).
#[test]
fn completions_give_llama_cpps_greedy_text_on_every_model() {
    if support::device() != realm_host::compute::Device::Cpu {
        return eprintln!("whole texts are compared on the CPU backend");
    }
    let server = Server::start(&support::component(), &[]);
    for model in support::golden_models() {
        for case in support::golden(model, "greedy.json").as_array().expect("array") {
            let prompt = case["prompt"].as_str().expect("prompt");
            let request = json!({
                "model": model, "prompt": prompt, "max_tokens": 32, "temperature": 0, "ignore_eos": true
            });
            let (status, body) = server.post("/v1/completions", request);
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                body["choices"][0]["text"].as_str(),
                case["text"].as_str(),
                "{model} {prompt:?}"
            );
        }
    }
}

/// `logprobs` against llama.cpp's first-step logits (the goldens): the
/// log-softmax of the whole vocabulary at the chosen token and the top 5.
#[test]
fn logprobs_are_the_log_softmax_of_llama_cpps_logits() {
    let on_cpu = support::device() == realm_host::compute::Device::Cpu;
    // The CPU backend's logits are llama.cpp's bits; the GPU's differ by up
    // to the e2e engine tests' logit tolerance, and so may the log-sum.
    let tolerance = if on_cpu { 1e-3 } else { 2.0 };
    let server = Server::start(&support::component(), &[]);
    for model in support::golden_models() {
        for case in support::golden(model, "greedy.json").as_array().expect("array") {
            let Some(file) = case["logits_file"].as_str() else {
                continue;
            };
            let bytes =
                std::fs::read(support::workspace().join("tests/golden").join(model).join(file)).expect("logits");
            let logits: Vec<f64> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let log_total = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            let mut expected: Vec<f64> = logits.iter().map(|l| l - log_total).collect();
            expected.sort_by(|a, b| b.total_cmp(a));

            let prompt = case["prompt"].as_str().expect("prompt");
            let request = json!({ "model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5 });
            let (status, body) = server.post("/v1/completions", request);
            assert_eq!(status, 200, "{body}");
            let logprobs = &body["choices"][0]["logprobs"];
            let chosen = logprobs["token_logprobs"][0].as_f64().expect("a logprob");
            assert!(
                (chosen - expected[0]).abs() <= tolerance,
                "{model} {prompt:?}: {chosen} vs {}",
                expected[0]
            );
            assert_eq!(logprobs["tokens"][0], body["choices"][0]["text"], "{model} {prompt:?}");
            let mut top: Vec<f64> = logprobs["top_logprobs"][0]
                .as_object()
                .expect("alternatives")
                .values()
                .map(|v| v.as_f64().expect("a logprob"))
                .collect();
            top.sort_by(|a, b| b.total_cmp(a));
            // Alternatives with the same text share a key.
            assert!((1..=5).contains(&top.len()), "{model} {prompt:?}: {top:?}");
            for (got, want) in top.iter().zip(&expected) {
                assert!(
                    (got - want).abs() <= tolerance,
                    "{model} {prompt:?}: top {got} vs {want}"
                );
            }
        }
    }
}

/// Chat's `logprobs.content`, whole and streamed: one entry per token of the
/// reply, whose bytes make up the reply's text, each with its alternatives.
#[test]
fn chat_logprobs_cover_every_token_of_the_reply() {
    let server = Server::start(&support::component(), &[]);
    let request = |stream: bool| {
        json!({
            "model": DEFAULT_MODEL, "messages": [{ "role": "user", "content": "Name three colours." }],
            "max_tokens": 12, "temperature": 0, "logprobs": true, "top_logprobs": 3, "stream": stream
        })
    };
    let entries_text = |entries: &[serde_json::Value]| -> Vec<u8> {
        entries
            .iter()
            .flat_map(|e| {
                e["bytes"]
                    .as_array()
                    .expect("bytes")
                    .iter()
                    .map(|b| b.as_u64().expect("byte") as u8)
            })
            .collect()
    };
    let (status, body) = server.post("/v1/chat/completions", request(false));
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().expect("content");
    let entries = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content logprobs");
    assert_eq!(String::from_utf8(entries_text(entries)).expect("utf-8"), text);
    for entry in entries {
        let top = entry["top_logprobs"].as_array().expect("alternatives");
        assert_eq!(top.len(), 3, "{entry}");
        let best = top[0]["logprob"].as_f64().expect("logprob");
        assert_eq!(
            entry["logprob"].as_f64(),
            Some(best),
            "greedy takes the most likely: {entry}"
        );
        assert!(best <= 0.0 && top[2]["logprob"].as_f64() <= Some(best), "{entry}");
    }

    let (status, events) = server.post_stream("/v1/chat/completions", request(true));
    assert_eq!(status, 200);
    let streamed: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(&streamed, entries, "the stream's entries are the whole response's");
}

/// A stop string that ends on a token boundary drops the entries of the
/// tokens it cuts off: the listed tokens spell the returned text, whole and
/// streamed alike.
#[test]
fn logprobs_stop_where_a_stop_string_cuts_the_text() {
    let server = Server::start(&support::component(), &[]);
    let request = |stream: bool| {
        json!({
            "model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 24,
            "temperature": 0, "logprobs": 1, "stop": [" United"], "stream": stream
        })
    };
    let (status, body) = server.post("/v1/completions", request(false));
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["text"].as_str().expect("text");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let tokens: Vec<&str> = body["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_str().expect("a token"))
        .collect();
    assert_eq!(tokens.concat(), text, "{tokens:?}");
    let (status, events) = server.post_stream("/v1/completions", request(true));
    assert_eq!(status, 200);
    let streamed: Vec<&str> = events
        .iter()
        .filter_map(|e| e["choices"][0]["logprobs"]["tokens"].as_array())
        .flatten()
        .map(|t| t.as_str().expect("a token"))
        .collect();
    assert_eq!(streamed, tokens);
}

/// `n` choices: each its own generation, choice i drawing from seed + i (so
/// it is what `n: 1` with that seed gives), streamed interleaved by index,
/// with the usage of all of them.
#[test]
fn several_choices_are_each_a_seeded_generation_of_their_own() {
    let server = Server::start(&support::component(), &[]);
    let request = |n: u32, seed: u64, stream: bool| {
        json!({
            "model": DEFAULT_MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0,
            "seed": seed, "n": n, "stream": stream, "ignore_eos": true,
            "stream_options": if stream { json!({ "include_usage": true }) } else { json!(null) }
        })
    };
    let (status, body) = server.post("/v1/completions", request(3, 40, false));
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().expect("choices");
    let texts: Vec<&str> = choices.iter().map(|c| c["text"].as_str().expect("text")).collect();
    assert_eq!(
        choices.iter().map(|c| c["index"].as_u64()).collect::<Vec<_>>(),
        [Some(0), Some(1), Some(2)]
    );
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three draws, all alike: {texts:?}"
    );
    assert_eq!(body["usage"]["completion_tokens"], 36, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 4, "the prompt, counted once");
    for (i, text) in texts.iter().enumerate() {
        let (status, alone) = server.post("/v1/completions", request(1, 40 + i as u64, false));
        assert_eq!(status, 200, "{alone}");
        assert_eq!(alone["choices"][0]["text"].as_str(), Some(*text), "choice {i} alone");
    }

    let (status, events) = server.post_stream("/v1/completions", request(3, 40, true));
    assert_eq!(status, 200);
    let mut streamed = vec![String::new(); 3];
    for event in &events {
        if let Some(choice) = event["choices"].as_array().and_then(|c| c.first()) {
            let index = choice["index"].as_u64().expect("index") as usize;
            streamed[index].push_str(choice["text"].as_str().expect("text"));
        }
    }
    assert_eq!(streamed, texts, "the stream's choices are the whole response's");
    let usage = events
        .iter()
        .find(|e| e["choices"].as_array().is_some_and(|c| c.is_empty()))
        .expect("a usage event");
    assert_eq!(usage["usage"]["completion_tokens"], 36, "{usage}");
}
