//! Request routing: the request id and its tracing span, authentication, and
//! the endpoints.

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tracing::Instrument;

use super::App;
use super::body::{ApiBody, json_response, text_response};
use super::completions;
use super::error::ApiError;
use super::metrics;
use super::request::Endpoint;

/// The largest request body accepted.
pub const MAX_BODY: usize = 4 << 20;

const REQUEST_ID: &str = "x-request-id";

pub async fn route(app: App, request: Request<Incoming>) -> Result<Response<ApiBody>, Infallible> {
    let id = request_id(&request);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        tenant = tracing::field::Empty,
        model = tracing::field::Empty,
    );
    let mut response = dispatch(app, request, &id)
        .instrument(span)
        .await
        .unwrap_or_else(ApiError::into_response);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    Ok(response)
}

async fn dispatch(app: App, request: Request<Incoming>, id: &str) -> Result<Response<ApiBody>, ApiError> {
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let authorization = authorization.as_deref();
    let path = request.uri().path().to_string();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(health(&app)),
        (&Method::GET, "/metrics") => {
            if !app.tenants.may_read_metrics(authorization) {
                return Err(ApiError::metrics_unauthorized());
            }
            let mut response = text_response(app.metrics.render(&app.tenants, &app.server));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE));
            Ok(response)
        }
        (&Method::GET, "/v1/models") => {
            let tenant = app.tenants.authenticate(authorization)?;
            Ok(json_response(models(&app, &tenant)))
        }
        (&Method::GET, model) if model.starts_with("/v1/models/") => {
            let tenant = app.tenants.authenticate(authorization)?;
            let name = &model["/v1/models/".len()..];
            if !app.tenants.models().iter().any(|m| m == name) {
                return Err(ApiError::model_not_found(name));
            }
            if !tenant.may_use(name) {
                return Err(ApiError::model_not_allowed(name));
            }
            Ok(json_response(model_object(name)))
        }
        (&Method::POST, "/v1/completions" | "/v1/chat/completions") => {
            let endpoint = if path == "/v1/completions" {
                Endpoint::Completions
            } else {
                Endpoint::ChatCompletions
            };
            if app.draining.load(Ordering::SeqCst) {
                return Err(ApiError::shutting_down());
            }
            let tenant = app.tenants.authenticate(authorization)?;
            tracing::Span::current().record("tenant", tenant.id.as_str());
            let body = read_body(request).await?;
            completions::generate(&app, tenant, endpoint, &body, id).await
        }
        (_, "/health" | "/metrics" | "/v1/models" | "/v1/completions" | "/v1/chat/completions") => {
            Err(ApiError::method_not_allowed())
        }
        (_, model) if model.starts_with("/v1/models/") => Err(ApiError::method_not_allowed()),
        (_, path) => Err(ApiError::not_found(format!("no route for `{path}`"))),
    }
}

/// 200 while serving; 503 while draining, so load balancers stop sending work.
fn health(app: &App) -> Response<ApiBody> {
    if app.draining.load(Ordering::SeqCst) {
        let mut response = json_response(serde_json::json!({ "status": "draining" }));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    json_response(serde_json::json!({ "status": "ok" }))
}

/// The client's `x-request-id` when it is a sane token, else a fresh one.
fn request_id<B>(request: &Request<B>) -> String {
    let given = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok());
    match given {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => completions::fresh_id("req"),
    }
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
fn models(app: &App, tenant: &crate::tenants::Tenant) -> serde_json::Value {
    let data: Vec<_> = app
        .tenants
        .models()
        .into_iter()
        .filter(|m| tenant.may_use(m))
        .map(|m| model_object(&m))
        .collect();
    serde_json::json!({ "object": "list", "data": data })
}

fn model_object(id: &str) -> serde_json::Value {
    serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": "realm" })
}
