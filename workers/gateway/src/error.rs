//! The one error shape every API answer uses: `{"error": code, "message": ..., "field": ...}`.

use axum::{
    extract::rejection::BytesRejection,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;

/// An API error: a status, a stable machine-readable `code`, a sentence for people, and for bad
/// input the field at fault (`quantity`, `[2].sku`, `Idempotency-Key`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// HTTP status.
    #[serde(skip)]
    pub status: StatusCode,
    /// Stable code clients branch on: `invalid_input`, `unauthorized`, `forbidden`,
    /// `not_found`, `body_too_large`, `conflict`, `unavailable`.
    #[serde(rename = "error")]
    pub code: &'static str,
    /// What went wrong, for people. Never holds a token.
    pub message: String,
    /// The input field at fault, for `invalid_input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// 400: `field` is wrong.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
        }
    }

    /// 401: no token, or one we do not know.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the token lacks the scope.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request contradicts what is stored.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 503: a dependency did not answer; nothing is promised, the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// Prefixes the field with the position of the item in a batch: `quantity` -> `[3].quantity`.
    pub fn at_index(mut self, index: usize) -> Self {
        self.field = Some(match self.field.take() {
            Some(field) if field.starts_with('[') => format!("[{index}]{field}"),
            Some(field) => format!("[{index}].{field}"),
            None => format!("[{index}]"),
        });
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut response = (status, Json(&self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than STOCKFLOW_GATEWAY_BODY_LIMIT_BYTES allows",
            )
        } else {
            Self::new(rejection.status(), "invalid_input", rejection.body_text())
        }
    }
}
