//! Tenants over real HTTP: API keys, allowed models, each limit, metrics,
//! logs, neighbours that misbehave, and a draining shutdown.

use std::path::Path;
use std::process::Stdio;

use realm_host::tenants::keys::KeyHash;
use serde_json::{Value, json};

use crate::support::{self, DEFAULT_MODEL, Deployment, Server, completion, error_message, metric, tenant, wait_for};

fn key(id: &str) -> String {
    format!("key-{id}")
}

#[test]
fn keys_hash_prints_what_the_tenants_file_stores() {
    let output = support::realm_host()
        .args(["keys", "hash", "foo"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert_eq!(
        printed,
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
    );
    let mut child = support::realm_host()
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runs");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"foo\n").expect("write");
    let output = child.wait_with_output().expect("exits");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), printed);
}

#[test]
fn without_a_tenants_file_only_loopback_is_served() {
    let output = support::realm_host()
        .args(["serve", "--listen", "0.0.0.0:0", "--component"])
        .arg(support::component())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
}

#[test]
fn a_broken_tenants_file_stops_the_server_with_its_reason() {
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenant("a", "models = [\"missing\"]"));
    let output = support::realm_host()
        .args(["serve", "--listen", "127.0.0.1:0", "--component"])
        .arg(support::component())
        .arg("--models-dir")
        .arg(deployment.models())
        .arg("--config")
        .arg(deployment.config())
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`missing`, which is not in the models directory"),
        "{stderr}"
    );
}

#[test]
fn keys_pick_the_tenant_and_its_models() {
    let tenants = format!(
        "{}{}",
        tenant("alpha", &format!("models = [\"{DEFAULT_MODEL}\"]")),
        tenant("beta", "")
    );
    let deployment = Deployment::new(&[DEFAULT_MODEL, "smol-twin"], &[], &tenants);
    let server = deployment.serve(&[], Stdio::inherit());

    for wrong in [None, Some("key-gamma"), Some("")] {
        let reply = server.call("GET", "/v1/models", wrong, None);
        assert_eq!(reply.status, 401, "{wrong:?}: {}", reply.text);
        assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    }
    assert_eq!(server.call("GET", "/health", None, None).status, 200);

    let listed = |id: &str| -> Vec<Value> {
        let reply = server.call("GET", "/v1/models", Some(&key(id)), None);
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.json()["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|m| m["id"].clone())
            .collect()
    };
    assert_eq!(listed("alpha"), vec![json!(DEFAULT_MODEL)]);
    assert_eq!(listed("beta"), vec![json!(DEFAULT_MODEL), json!("smol-twin")]);

    let post = |id: &str, body: Value| server.call("POST", "/v1/completions", Some(&key(id)), Some(body));
    let forbidden = post("alpha", completion("smol-twin", "Hi", 4));
    assert_eq!(forbidden.status, 403, "{}", forbidden.text);
    assert_eq!(forbidden.json()["error"]["type"], "permission_error");
    let unknown = post("alpha", completion("no-such-model", "Hi", 4));
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");

    // Both tenants answer, each from its own instance, on one shared file.
    let alpha = post("alpha", completion(DEFAULT_MODEL, "The capital of France is", 8));
    let beta = post("beta", completion("smol-twin", "The capital of France is", 8));
    assert_eq!(alpha.status, 200, "{}", alpha.text);
    assert_eq!(beta.status, 200, "{}", beta.text);
    assert_eq!(alpha.json()["choices"][0]["text"], beta.json()["choices"][0]["text"]);
    assert_eq!(metric(&server, "realm_live_instances"), Some(2.0));
    // Two tenants, two names, one file: mapped once.
    assert_eq!(metric(&server, "realm_model_files_mapped"), Some(1.0));

    let labels = format!("tenant=\"alpha\",model=\"{DEFAULT_MODEL}\",endpoint=\"completions\"");
    assert_eq!(metric(&server, &format!("realm_requests_total{{{labels}}}")), Some(1.0));
    assert_eq!(
        metric(&server, &format!("realm_completion_tokens_total{{{labels}}}")),
        Some(8.0)
    );
    assert!(metric(&server, &format!("realm_prompt_tokens_total{{{labels}}}")).is_some_and(|n| n >= 5.0));
    assert_eq!(
        metric(&server, &format!("realm_request_duration_seconds_count{{{labels}}}")),
        Some(1.0)
    );
    assert_eq!(
        metric(&server, &format!("realm_time_to_first_token_seconds_count{{{labels}}}")),
        Some(1.0)
    );
    let refused = "tenant=\"alpha\",model=\"smol-twin\",endpoint=\"completions\",status=\"403\"";
    assert_eq!(metric(&server, &format!("realm_errors_total{{{refused}}}")), Some(1.0));
    // An unknown model name never becomes a label.
    let unknown = "tenant=\"alpha\",model=\"-\",endpoint=\"completions\",status=\"404\"";
    assert_eq!(metric(&server, &format!("realm_errors_total{{{unknown}}}")), Some(1.0));
    assert!(metric(&server, "realm_kv_cache_bytes").is_some());
}

#[test]
fn metrics_can_require_a_key() {
    let tenants = format!(
        "metrics_api_keys = [\"{}\"]\n{}",
        KeyHash::of("scraper"),
        tenant("alpha", "")
    );
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenants);
    let server = deployment.serve(&[], Stdio::inherit());
    assert_eq!(server.call("GET", "/metrics", None, None).status, 401);
    assert_eq!(server.call("GET", "/metrics", Some("key-alpha"), None).status, 401);
    let reply = server.call("GET", "/metrics", Some("scraper"), None);
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("application/openmetrics-text"));
    assert!(
        reply.text.contains("# TYPE realm_live_instances gauge"),
        "{}",
        reply.text
    );
}

#[test]
fn each_limit_is_enforced() {
    let tenants = [
        tenant("one-at-a-time", "[tenant.limits]\nconcurrent_requests = 1"),
        tenant("two-per-minute", "[tenant.limits]\nrequests_per_minute = 2"),
        tenant("few-tokens", "[tenant.limits]\ntokens_per_minute = 20"),
        tenant("short", "[tenant.limits]\nmax_tokens_per_request = 8"),
        tenant("little-kv", "[tenant.limits]\nkv_tokens = 32"),
        tenant("hurried", "[tenant.limits]\nrequest_deadline_secs = 1.0"),
        tenant("tiny-memory", "[tenant.limits]\nguest_memory_mib = 4"),
    ]
    .concat();
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenants);
    let server = deployment.serve(&[], Stdio::inherit());
    let post = |id: &str, body: Value| server.call("POST", "/v1/completions", Some(&key(id)), Some(body));
    let assert_429 = |reply: &support::Reply, needle: &str| {
        assert_eq!(reply.status, 429, "{}", reply.text);
        assert!(
            reply.retry_after.is_some_and(|s| (1..=60).contains(&s)),
            "{:?}",
            reply.retry_after
        );
        let message = error_message(&reply.json());
        assert!(message.contains(needle), "{message}");
    };

    // Concurrency: a second request while the first streams.
    std::thread::scope(|scope| {
        let first = scope.spawn(|| {
            let mut body = completion(DEFAULT_MODEL, "Once upon a time", 200);
            body["stream"] = json!(true);
            post("one-at-a-time", body)
        });
        let running = "realm_running_requests{tenant=\"one-at-a-time\"}";
        wait_for("the first request", || metric(&server, running) == Some(1.0));
        assert_429(
            &post("one-at-a-time", completion(DEFAULT_MODEL, "Hi", 2)),
            "requests running",
        );
        let first = first.join().expect("first request");
        assert_eq!(first.status, 200);
        assert_eq!(first.events().last(), Some(&json!("[DONE]")));
    });
    assert_eq!(post("one-at-a-time", completion(DEFAULT_MODEL, "Hi", 2)).status, 200);
    // Each choice is a generation: more choices than the limit cannot run.
    let mut several = completion(DEFAULT_MODEL, "Hi", 2);
    several["n"] = json!(2);
    let reply = post("one-at-a-time", several);
    assert_eq!(
        (reply.status, reply.json()["error"]["param"].as_str()),
        (400, Some("n")),
        "{}",
        reply.text
    );

    // Requests per minute.
    for _ in 0..2 {
        assert_eq!(post("two-per-minute", completion(DEFAULT_MODEL, "Hi", 1)).status, 200);
    }
    assert_429(
        &post("two-per-minute", completion(DEFAULT_MODEL, "Hi", 1)),
        "requests per minute",
    );

    // Tokens per minute: the first request's prompt and completion use them up.
    assert_eq!(
        post("few-tokens", completion(DEFAULT_MODEL, "Once upon a time", 16)).status,
        200
    );
    assert_429(
        &post("few-tokens", completion(DEFAULT_MODEL, "Hi", 1)),
        "tokens per minute",
    );

    // Max tokens per request: refused above, applied by default.
    let over = post("short", completion(DEFAULT_MODEL, "Hi", 9));
    assert_eq!(over.status, 400, "{}", over.text);
    assert_eq!(over.json()["error"]["param"], "max_tokens");
    let chat = json!({ "model": DEFAULT_MODEL, "messages": [{ "role": "user", "content": "Tell me a long story." }] });
    let reply = server.call("POST", "/v1/chat/completions", Some("key-short"), Some(chat));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.json()["usage"]["completion_tokens"]
            .as_u64()
            .is_some_and(|n| n <= 8)
    );

    // KV tokens: a sequence reaching past the budget is refused; a smaller one fits.
    assert_429(
        &post("little-kv", completion(DEFAULT_MODEL, "Once upon a time", 64)),
        "KV cache",
    );
    assert_eq!(
        post("little-kv", completion(DEFAULT_MODEL, "Once upon a time", 8)).status,
        200
    );

    // The request deadline cancels a long generation, whole or streamed.
    let slow = post("hurried", completion(DEFAULT_MODEL, "Once upon a time", 4000));
    assert_eq!(slow.status, 504, "{}", slow.text);
    assert_eq!(slow.json()["error"]["code"], "deadline_exceeded");
    let mut streamed = completion(DEFAULT_MODEL, "Once upon a time", 4000);
    streamed["stream"] = json!(true);
    let events = post("hurried", streamed).events();
    assert_eq!(events.last().expect("events")["error"]["code"], "deadline_exceeded");
    assert_eq!(post("hurried", completion(DEFAULT_MODEL, "Hi", 2)).status, 200);

    // Guest memory: the engine cannot load a model in 4 MiB; the request fails
    // alone, with the reason.
    let starved = post("tiny-memory", completion(DEFAULT_MODEL, "Hi", 2));
    assert_eq!(starved.status, 500, "{}", starved.text);
    assert!(starved.text.contains("memory limit of 4 MiB"), "{}", starved.text);
    assert_eq!(post("short", completion(DEFAULT_MODEL, "Hi", 2)).status, 200);
}

#[test]
fn a_misbehaving_tenant_goes_unnoticed_by_its_neighbour() {
    let bad_component = support::test_component("misbehaving");
    let tenants = format!(
        "{}{}",
        tenant("good", ""),
        tenant(
            "bad",
            &format!(
                "component = \"{}\"\n[tenant.limits]\nguest_memory_mib = 64\nrequest_deadline_secs = 1.0",
                bad_component.display()
            )
        )
    );
    let fakes = ["trap", "loop", "memory-bomb", "trap-midway", "well-behaved"];
    let deployment = Deployment::new(&[DEFAULT_MODEL], &fakes, &tenants);
    let server = deployment.serve(&[], Stdio::inherit());
    let mut request = completion(DEFAULT_MODEL, "The capital of France is", 64);
    request["stream"] = json!(true);
    let text_of =
        |events: &[Value]| -> String { events.iter().filter_map(|e| e["choices"][0]["text"].as_str()).collect() };
    std::thread::scope(|scope| {
        let good = scope.spawn(|| server.call("POST", "/v1/completions", Some("key-good"), Some(request.clone())));
        for (model, status, needle) in [
            ("trap", 500, "guest trap"),
            ("loop", 504, "deadline"),
            ("memory-bomb", 500, "guest trap"),
            ("trap-midway", 500, "guest trap"),
        ] {
            let reply = server.call(
                "POST",
                "/v1/completions",
                Some("key-bad"),
                Some(completion(model, "x", 4)),
            );
            assert_eq!(reply.status, status, "{model}: {}", reply.text);
            let message = error_message(&reply.json());
            // A loop meets the request deadline or the call deadline (which
            // replaces the instance), whichever fires first.
            let replaced = model == "loop" || message.contains("replaced");
            assert!(replaced && message.contains(needle), "{model}: {message}");
            let next = server.call(
                "POST",
                "/v1/completions",
                Some("key-bad"),
                Some(completion("well-behaved", "x", 4)),
            );
            assert_eq!(next.status, 200, "after {model}: {}", next.text);
        }
        let good = good.join().expect("good tenant's request");
        assert_eq!(good.status, 200);
        let events = good.events();
        assert_eq!(events.last(), Some(&json!("[DONE]")));
        // The same request alone gives the same greedy text.
        let alone = server.call("POST", "/v1/completions", Some("key-good"), Some(request.clone()));
        assert_eq!(text_of(&events), text_of(&alone.events()));
    });
    assert_eq!(metric(&server, "realm_replaced_instances_total"), Some(4.0));
}

#[test]
fn logs_are_json_lines_with_request_id_tenant_and_tokens() {
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenant("alpha", ""));
    let log_path = deployment.dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let server = deployment.serve(&["--log-format", "json"], Stdio::from(log));
    let reply = call_with_id(&server, "trace-me-42");
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.request_id.as_deref(), Some("trace-me-42"));
    assert_eq!(reply.json()["id"], "cmpl-trace-me-42");
    let finished = read_log_line(&log_path, "request finished");
    assert_eq!(finished["fields"]["completion_tokens"], 3, "{finished}");
    let span = &finished["span"];
    assert_eq!(span["id"], "trace-me-42", "{finished}");
    assert_eq!(span["tenant"], "alpha", "{finished}");
    assert_eq!(span["model"], DEFAULT_MODEL, "{finished}");
    assert!(finished["fields"]["latency_ms"].is_u64(), "{finished}");
}

fn call_with_id(server: &Server, id: &str) -> support::Reply {
    let response = ureq::post(format!("{}/v1/completions", server.base))
        .header("authorization", "Bearer key-alpha")
        .header("x-request-id", id)
        .send(completion(DEFAULT_MODEL, "Hello", 3).to_string())
        .expect("request");
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().expect("body");
    support::Reply {
        status,
        retry_after: None,
        content_type: String::new(),
        request_id,
        text,
    }
}

fn read_log_line(path: &Path, message: &str) -> Value {
    let mut found = None;
    wait_for("the log line", || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["fields"]["message"] == message);
        found.is_some()
    });
    found.expect("found")
}

#[test]
fn shutdown_refuses_new_work_and_lets_streams_finish() {
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenant("alpha", ""));
    let mut server = deployment.serve(&[], Stdio::inherit());
    // Long enough (no early end of text) that the server is still draining
    // when the checks below run: at 150 tokens/s, 200 tokens that could stop
    // at EOS left a loaded machine too short a window.
    let mut body = completion(DEFAULT_MODEL, "Once upon a time", 600);
    body["stream"] = json!(true);
    body["ignore_eos"] = json!(true);
    std::thread::scope(|scope| {
        let stream = scope.spawn(|| server.call("POST", "/v1/completions", Some("key-alpha"), Some(body)));
        wait_for("the stream", || {
            metric(&server, "realm_running_requests{tenant=\"alpha\"}") == Some(1.0)
        });
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &server.pid().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        wait_for("draining", || server.call("GET", "/health", None, None).status == 503);
        let refused = server.call(
            "POST",
            "/v1/completions",
            Some("key-alpha"),
            Some(completion(DEFAULT_MODEL, "Hi", 2)),
        );
        assert_eq!(refused.status, 503, "{}", refused.text);
        assert_eq!(refused.retry_after, Some(1));
        let stream = stream.join().expect("stream");
        assert_eq!(stream.status, 200);
        assert_eq!(stream.events().last(), Some(&json!("[DONE]")));
    });
    assert_eq!(server.wait(), Some(0));
}

#[test]
fn requests_of_one_tenant_interleave_step_by_step() {
    let deployment = Deployment::new(&[DEFAULT_MODEL], &[], &tenant("alpha", ""));
    let server = deployment.serve(&[], Stdio::inherit());
    let running = "realm_running_requests{tenant=\"alpha\"}";
    let mut long = completion(DEFAULT_MODEL, "Once upon a time", 400);
    long["stream"] = json!(true);
    std::thread::scope(|scope| {
        let long = scope.spawn(|| server.call("POST", "/v1/completions", Some("key-alpha"), Some(long)));
        wait_for("the long request", || metric(&server, running) == Some(1.0));
        let short = server.call(
            "POST",
            "/v1/completions",
            Some("key-alpha"),
            Some(completion(DEFAULT_MODEL, "Hi", 4)),
        );
        assert_eq!(short.status, 200, "{}", short.text);
        // The short request finished while the long one was still generating.
        assert_eq!(metric(&server, running), Some(1.0));
        assert_eq!(long.join().expect("long").status, 200);
    });
}
