//! A guest that traps, loops or exhausts its memory fails only its own request:
//! the server answers it with a 5xx, replaces the instance, and keeps serving.
//! (tenants.rs shows that a neighbouring tenant does not notice.)

use std::process::Stdio;

use serde_json::json;

use crate::support::{self, Deployment, Server, error_message};

#[test]
fn misbehaving_guests_fail_their_request_and_the_server_keeps_serving() {
    let component = support::test_component("misbehaving");
    // The test component "opens" these names; the server only checks they exist.
    let models = Deployment::new(&[], &["trap", "loop", "memory-bomb", "trap-midway", "well-behaved"], "");
    let limits = ["--call-deadline-ms", "1000", "--guest-memory-mib", "64"];
    let mut server = Server::start_in(&component, &models.models(), &limits, Stdio::inherit());
    let complete = |model: &str| server.post("/v1/completions", json!({ "model": model, "prompt": "x" }));
    for (model, expected, needle) in [
        ("trap", 500, "guest trap"),
        ("loop", 504, "deadline"),
        ("memory-bomb", 500, "guest trap"),
        ("trap-midway", 500, "guest trap"),
    ] {
        let (status, body) = complete(model);
        assert_eq!(status, expected, "{model}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains("replaced") && message.contains(needle),
            "{model}: {message}"
        );
        // The replacement instance serves the next request.
        let (status, body) = complete("well-behaved");
        assert_eq!(status, 200, "after {model}: {body}");
        assert_eq!(body["choices"][0]["text"], "ok");
    }
    assert!(server.is_running());
    assert_eq!(server.get("/health").0, 200);
}
