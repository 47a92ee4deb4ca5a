//! The one error shape every API answer uses: `{"error": code, "message": ..., "field": ...}`.

use axum::{
    extract::{
        rejection::{BytesRejection, QueryRejection},
        Request,
    },
    http::{header, StatusCode},
    middleware::Next,
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
    /// `unknown_location`, `not_found`, `method_not_allowed`, `conflict`, `body_too_large`, `uri_too_long`,
    /// `unsupported_media_type`, `internal`, `unavailable` (see [`code_for`]).
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

    /// 400: `field` names a location that has no stock recorded (a channel may draw only from
    /// known locations).
    pub fn unknown_location(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "unknown_location", message)
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

    /// 500: a bug (e.g. a record no version of the workers writes); a retry does not help.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 414: the request's URI is longer than [`MAX_URI_BYTES`].
    pub fn uri_too_long(length: usize) -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is {length} bytes, at most {MAX_URI_BYTES}"),
        )
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

/// Longest request URI (path and query) the gateway reads, in bytes: a SKU, a location or an
/// order id percent-encoded fit many times over. Longer ones get a JSON 414; hyper itself answers
/// URIs over 65,534 bytes with a bodiless 414 before any of this code runs.
pub const MAX_URI_BYTES: usize = 8192;

/// The `error` code of a status the framework answered by itself.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "invalid_input",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "invalid_input",
        _ => "internal",
    }
}

/// Refuses an over-long URI with a JSON 414, before routing reads it.
pub(crate) async fn limit_uri(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if length > MAX_URI_BYTES {
        return ApiError::uri_too_long(length).into_response();
    }
    next.run(request).await
}

/// Turns every error the framework answers by itself — 405 for a wrong method, a path segment
/// that is not UTF-8, a rejected query string — into the JSON shape, keeping its status and
/// headers (`Allow` for a 405). Answers that are already JSON pass unchanged.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // The framework's own messages are short sentences; a longer body is cut, not buffered.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    } else {
        text
    };
    let error = ApiError::new(status, code_for(status), message);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    let body = serde_json::to_vec(&error).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
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

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let message = rejection.body_text();
        // serde names the parameter at fault: "duplicate field `wait`".
        let field = message
            .split('`')
            .nth(1)
            .filter(|f| !f.is_empty())
            .unwrap_or("query")
            .to_owned();
        Self::invalid(field, message)
    }
}
