//! Request routing.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use super::body::{ApiBody, json_response};
use super::completions::{self, Endpoint};
use super::error::ApiError;
use crate::tenants::Tenants;

/// The largest request body accepted.
pub const MAX_BODY: usize = 4 << 20;

pub async fn route(tenants: Tenants, request: Request<Incoming>) -> Result<Response<ApiBody>, Infallible> {
    let result = match (request.method(), request.uri().path()) {
        (&Method::GET, "/health") => Ok(json_response(serde_json::json!({ "status": "ok" }))),
        (&Method::GET, "/v1/models") => Ok(json_response(models(&tenants))),
        (&Method::POST, "/v1/completions") => match read_body(request).await {
            Ok(body) => completions::generate(tenants, Endpoint::Completions, &body).await,
            Err(e) => Err(e),
        },
        (&Method::POST, "/v1/chat/completions") => match read_body(request).await {
            Ok(body) => completions::generate(tenants, Endpoint::ChatCompletions, &body).await,
            Err(e) => Err(e),
        },
        (_, "/health" | "/v1/models" | "/v1/completions" | "/v1/chat/completions") => {
            Err(ApiError::method_not_allowed())
        }
        (_, path) => Err(ApiError::not_found(format!("no route for `{path}`"))),
    };
    Ok(result.unwrap_or_else(ApiError::into_response))
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    // Refuse a declared oversize body before reading any of it.
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(ApiError::payload_too_large(MAX_BODY));
    }
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::payload_too_large(MAX_BODY)),
        Err(e) => Err(ApiError::invalid_request(format!("could not read the body: {e}"), None)),
    }
}

/// The models the tenant may use, in OpenAI's list shape.
fn models(tenants: &Tenants) -> serde_json::Value {
    let tenant = tenants.for_request();
    let data: Vec<_> = tenant
        .catalog
        .list()
        .into_iter()
        .map(|id| serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "realm" }))
        .collect();
    serde_json::json!({ "object": "list", "data": data })
}
