//! A guest that traps, loops or exhausts its memory fails only its own request:
//! the server answers it with a 500, replaces the instance, and keeps serving.

use serde_json::json;

use crate::support::{self, Server, error_message};

#[test]
fn misbehaving_guests_fail_their_request_and_the_server_keeps_serving() {
    let component = support::test_component("misbehaving");
    let mut server = Server::start(&component, &["--call-deadline-ms", "1000", "--guest-memory-mib", "64"]);
    let complete = |model: &str| server.post("/v1/completions", json!({ "model": model, "prompt": "x" }));
    for (model, needle) in [
        ("trap", "guest trap"),
        ("loop", "deadline"),
        ("memory-bomb", "guest trap"),
        ("trap-midway", "guest trap"),
    ] {
        let (status, body) = complete(model);
        assert_eq!(status, 500, "{model}: {body}");
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
