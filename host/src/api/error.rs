//! API errors in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
//! The only place that picks HTTP statuses.

use hyper::{Response, StatusCode};

use super::body::{ApiBody, json_response};

use crate::runtime::Failure;
use crate::runtime::wit::EngineError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed".into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body exceeds {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("payload_too_large"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The OpenAI error document.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code }
        })
    }

    pub fn into_response(self) -> Response<ApiBody> {
        let mut response = json_response(self.body());
        *response.status_mut() = self.status;
        response
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Engine(EngineError::ModelNotFound(m)) => Self {
                code: Some("model_not_found"),
                param: Some("model".into()),
                ..Self::not_found(m)
            },
            Failure::Engine(EngineError::PermissionDenied(m)) => Self {
                status: StatusCode::FORBIDDEN,
                message: m,
                kind: "permission_error",
                param: Some("model".into()),
                code: Some("model_not_allowed"),
            },
            Failure::Engine(EngineError::InvalidRequest(m) | EngineError::InvalidConfig(m)) => {
                Self::invalid_request(m, None)
            }
            Failure::Engine(EngineError::UnsupportedModel(m)) => Self {
                code: Some("unsupported_model"),
                ..Self::invalid_request(m, Some("model"))
            },
            Failure::Engine(EngineError::OutOfMemory(m)) => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: m,
                kind: "insufficient_quota",
                param: None,
                code: Some("quota_exceeded"),
            },
            Failure::Engine(EngineError::Internal(m)) => Self::internal(m),
            failure @ (Failure::Trap(_) | Failure::Gone) => Self::internal(failure.to_string()),
        }
    }
}
