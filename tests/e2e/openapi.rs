//! docs/openapi.json against a running server: the documented paths and
//! methods are exactly the routes it answers, and the request schemas list
//! exactly the fields it accepts (as its own errors name them).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::{self, DEFAULT_MODEL, Server};

/// The methods probed on every documented path.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// What a Path Item may hold besides operations.
const PATH_ITEM_FIELDS: [&str; 5] = ["summary", "description", "servers", "parameters", "$ref"];

fn document() -> Value {
    let path = support::workspace().join("docs/openapi.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "not OpenAPI 3.1: {version:?}");
    doc
}

/// The documented (path, method) pairs, methods in upper case.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            if !PATH_ITEM_FIELDS.contains(&method.as_str()) {
                operations.insert((path.clone(), method.to_uppercase()));
            }
        }
    }
    operations
}

/// Follows local `$ref`s (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("not a local $ref: {reference}"));
            let target = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref: {reference}"));
            resolve(doc, target)
        }
        None => value,
    }
}

/// The object schema `schema` stands for: itself, its `$ref`, or the variant of
/// its `oneOf`/`anyOf` that has properties (an object or null, say).
fn object_schema<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let schema = resolve(doc, schema);
    if schema.get("properties").is_some() {
        return schema;
    }
    ["oneOf", "anyOf"]
        .iter()
        .filter_map(|key| schema.get(*key)?.as_array())
        .flatten()
        .map(|variant| resolve(doc, variant))
        .find(|variant| variant.get("properties").is_some())
        .unwrap_or_else(|| panic!("no object schema in {schema}"))
}

fn property_names(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties in {schema}"))
        .keys()
        .cloned()
        .collect()
}

/// The request-body schema of a documented POST.
fn request_schema<'a>(doc: &'a Value, path: &str) -> &'a Value {
    let operation = &doc["paths"][path]["post"];
    let body = resolve(doc, &operation["requestBody"]);
    object_schema(doc, &body["content"]["application/json"]["schema"])
}

/// A server's 404 for a path it has no route for (as opposed to a 404 for a
/// model, which a route answers).
fn is_no_route(reply: &support::Reply) -> bool {
    reply.status == 404
        && reply.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no route for"))
}

/// The fields a serde `unknown field` error lists as expected:
/// "unknown field `x`, expected one of `a`, `b`" or "…, expected `a`".
fn expected_fields(message: &str) -> BTreeSet<String> {
    let (_, expected) = message
        .split_once(", expected ")
        .unwrap_or_else(|| panic!("no field list in {message:?}"));
    expected.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The fields the server accepts where `body` puts the unknown field `openapi_probe`.
fn accepted_fields(server: &Server, path: &str, body: Value) -> BTreeSet<String> {
    let reply = server.call("POST", path, None, Some(body.clone()));
    assert_eq!(reply.status, 400, "{body}: {}", reply.text);
    let error = &reply.json()["error"];
    // `param` is the unknown field's path: `openapi_probe`, `messages[0].openapi_probe`, ...
    let param = error["param"].as_str().unwrap_or_default();
    assert!(param.ends_with("openapi_probe"), "{}", reply.text);
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("unknown field `openapi_probe`"), "{message}");
    expected_fields(message)
}

#[test]
fn the_documented_routes_are_exactly_the_served_ones() {
    let doc = document();
    let documented = operations(&doc);
    let server = Server::start(&support::component(), &[]);
    let concrete = |path: &str| path.replace("{id}", DEFAULT_MODEL);

    for (path, method) in &documented {
        let body = (method == "POST").then(|| json!({}));
        let reply = server.call(method, &concrete(path), None, body);
        assert!(
            !is_no_route(&reply) && reply.status != 405,
            "{method} {path} is documented but not served: {} {}",
            reply.status,
            reply.text
        );
        let responses = &doc["paths"][path.as_str()][method.to_lowercase()]["responses"];
        assert!(
            responses.get(reply.status.to_string()).is_some(),
            "{method} {path} answered {}, which is not documented: {}",
            reply.status,
            reply.text
        );
    }

    let paths: BTreeSet<&String> = documented.iter().map(|(path, _)| path).collect();
    for path in &paths {
        for method in METHODS {
            if documented.contains(&((*path).clone(), method.to_string())) {
                continue;
            }
            let reply = server.call(method, &concrete(path), None, None);
            assert!(
                reply.status == 405 || is_no_route(&reply),
                "{method} {path} is served but not documented: {} {}",
                reply.status,
                reply.text
            );
        }
    }

    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v1/chat",
        "/v1/embeddings",
        "/v1/completions/",
        "/v1/chat/completions/",
        "/health/",
        "/metrics/x",
    ] {
        for method in ["GET", "POST"] {
            let reply = server.call(method, path, None, None);
            assert!(
                is_no_route(&reply),
                "{method} {path} is served but not documented: {} {}",
                reply.status,
                reply.text
            );
        }
    }
}

#[test]
fn request_schemas_list_exactly_the_accepted_fields() {
    let doc = document();
    let server = Server::start(&support::component(), &[]);
    let probe = json!({ "model": DEFAULT_MODEL, "prompt": "x", "openapi_probe": 1 });
    let mut posts = 0;
    for (path, method) in operations(&doc) {
        if method != "POST" {
            continue;
        }
        posts += 1;
        let schema = request_schema(&doc, &path);
        assert_eq!(
            property_names(schema),
            accepted_fields(&server, &path, probe.clone()),
            "the request schema of POST {path}"
        );
        assert_eq!(
            schema["additionalProperties"], false,
            "POST {path} refuses other fields"
        );
    }
    assert_eq!(posts, 2, "the two generation endpoints");

    let chat = request_schema(&doc, "/v1/chat/completions");
    let message = object_schema(&doc, &chat["properties"]["messages"]["items"]);
    let body = json!({
        "model": DEFAULT_MODEL,
        "messages": [{ "role": "user", "content": "x", "openapi_probe": 1 }],
    });
    assert_eq!(
        property_names(message),
        accepted_fields(&server, "/v1/chat/completions", body),
        "the message schema"
    );
    let options = object_schema(&doc, &chat["properties"]["stream_options"]);
    let body = json!({
        "model": DEFAULT_MODEL, "prompt": "x", "stream": true, "stream_options": { "openapi_probe": true },
    });
    assert_eq!(
        property_names(options),
        accepted_fields(&server, "/v1/completions", body),
        "the stream_options schema"
    );

    // The error document has the documented fields.
    let reply = server.call("POST", "/v1/completions", None, Some(probe));
    let error = reply.json()["error"].as_object().expect("error").clone();
    let served: BTreeSet<String> = error.keys().cloned().collect();
    let schema = resolve(&doc, &doc["components"]["schemas"]["Error"]);
    let documented = property_names(object_schema(&doc, &schema["properties"]["error"]));
    assert_eq!(documented, served, "the error schema");
}
