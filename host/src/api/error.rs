//! API errors in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
//! The only place that picks HTTP statuses.

use std::time::Duration;

use hyper::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::body::{ApiBody, json_response};

use crate::runtime::Failure;
use crate::runtime::wit::EngineError;
use crate::tenants::{AuthError, Refusal};

/// The code of an output constraint that does not compile.
pub const INVALID_CONSTRAINT: &str = "invalid_constraint";

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Sent as `Retry-After` (whole seconds).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    /// Names `field` as the culprit of an invalid-constraint error.
    pub fn blaming_constraint(mut self, field: Option<&str>) -> Self {
        if self.code == Some(INVALID_CONSTRAINT) {
            self.param = field.map(str::to_string);
        }
        self
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "method not allowed".into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body exceeds {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("payload_too_large"),
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        Self {
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..Self::not_found(format!("the model `{model}` does not exist"))
        }
    }

    pub fn model_not_allowed(model: &str) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: format!("this API key may not use the model `{model}`"),
            kind: "permission_error",
            param: Some("model".into()),
            code: Some("model_not_allowed"),
            retry_after: None,
        }
    }

    pub fn timeout() -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: "the request ran past the tenant's deadline and was cancelled".into(),
            kind: "timeout_error",
            param: None,
            code: Some("deadline_exceeded"),
            retry_after: None,
        }
    }

    pub fn shutting_down() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the server is shutting down; retry on another replica".into(),
            kind: "server_error",
            param: None,
            code: Some("shutting_down"),
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    pub fn metrics_unauthorized() -> Self {
        Self::from(AuthError::UnknownKey)
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
        if let Some(after) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, after.as_secs().max(1).into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
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
                message: m,
                ..Self::model_not_allowed("")
            },
            Failure::Engine(EngineError::InvalidRequest(m) | EngineError::InvalidConfig(m)) => {
                Self::invalid_request(m, None)
            }
            Failure::Engine(EngineError::InvalidConstraint(m)) => Self {
                code: Some(INVALID_CONSTRAINT),
                ..Self::invalid_request(format!("the output constraint does not compile: {m}"), None)
            },
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
                retry_after: Some(Duration::from_secs(1)),
            },
            Failure::Engine(EngineError::Internal(m)) => Self::internal(m),
            Failure::Deadline => Self {
                message: Failure::Deadline.to_string(),
                ..Self::timeout()
            },
            failure @ (Failure::Trap(_) | Failure::Gone) => Self::internal(failure.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        let message = match error {
            AuthError::MissingKey => "no API key: send `Authorization: Bearer <key>`",
            AuthError::UnknownKey => "the API key is not valid",
        };
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: refusal.to_string(),
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
            retry_after: Some(refusal.retry_after()),
        }
    }
}
