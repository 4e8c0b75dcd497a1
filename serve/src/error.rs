//! Every error a request can meet, turned into a response in one place: the OpenAI error shape
//! `{"error": {"message", "type", "param", "code"}}` with the HTTP status the OpenAI API uses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A failed request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// A field the request got wrong (400, `invalid_request_error`).
    #[error("{message}")]
    Invalid { message: String, param: Option<&'static str> },
    /// A field this server does not implement, set to something other than its default (400).
    #[error("`{param}` is not supported by st serve: {message}")]
    Unsupported { message: String, param: &'static str },
    /// The body is not JSON of the expected shape (400).
    #[error("the request body is not valid JSON for this endpoint: {0}")]
    Malformed(String),
    /// The body is larger than `--max-body-bytes` (413).
    #[error("the request body is larger than the limit of {limit} bytes (--max-body-bytes)")]
    BodyTooLarge { limit: usize },
    /// Missing or wrong API key (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The model name is not the one this server serves (404, `model_not_found`).
    #[error("the model `{asked}` does not exist; this server serves `{served}`")]
    UnknownModel { asked: String, served: String },
    /// The queue is full (503 with `Retry-After`).
    #[error(
        "the server is busy: {workers} workers running and {queue} requests waiting (--queue); retry after {retry_after_s} s"
    )]
    Busy { workers: usize, queue: usize, retry_after_s: u64 },
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The runtime failed on something that is not the request's fault (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { message: message.into(), param: Some(param) }
    }

    pub fn unsupported(param: &'static str, message: impl Into<String>) -> Self {
        Self::Unsupported { message: message.into(), param }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } | Self::Unsupported { .. } | Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::UnknownModel { .. } => StatusCode::NOT_FOUND,
            Self::Busy { .. } | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` object of the OpenAI error shape.
    pub fn body(&self) -> serde_json::Value {
        let (kind, code, param) = match self {
            Self::Invalid { param, .. } => ("invalid_request_error", None, *param),
            Self::Unsupported { param, .. } => ("invalid_request_error", Some("unsupported_parameter"), Some(*param)),
            Self::Malformed(_) => ("invalid_request_error", Some("invalid_json"), None),
            Self::BodyTooLarge { .. } => ("invalid_request_error", Some("request_too_large"), None),
            Self::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key"), None),
            Self::UnknownModel { .. } => ("invalid_request_error", Some("model_not_found"), Some("model")),
            Self::Busy { .. } => ("server_error", Some("server_busy"), None),
            Self::ShuttingDown => ("server_error", Some("shutting_down"), None),
            Self::Internal(_) => ("server_error", None, None),
        };
        serde_json::json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl From<st::Error> for ApiError {
    /// The runtime's errors about its input are the client's (400), naming the field; the rest are 500.
    fn from(e: st::Error) -> Self {
        use st::Error as E;
        match &e {
            E::InvalidArgument { name, .. } => {
                let param = match *name {
                    "max_new_tokens" => "max_tokens",
                    "question" => "messages",
                    other => other,
                };
                Self::Invalid { message: e.to_string(), param: Some(param) }
            }
            E::ImageDecode { .. } | E::ImageLimit { .. } | E::AspectRatio { .. } => {
                Self::Invalid { message: e.to_string(), param: Some("image") }
            }
            E::Prompt { .. } | E::Template { .. } => Self::Invalid { message: e.to_string(), param: Some("messages") },
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        if let Self::Busy { retry_after_s, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
        }
        if let Self::Unauthorized(_) = &self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_input_errors_are_the_clients_and_name_the_field() {
        let e: ApiError =
            st::Error::InvalidArgument { name: "max_new_tokens", reason: "328 prompt tokens + 4096 new exceed".into() }
                .into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.body()["error"]["param"], "max_tokens");
        let e: ApiError = st::Error::Ort { context: "decoder".into(), reason: "boom".into() }.into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body()["error"]["type"], "server_error");
    }

    #[test]
    fn busy_answers_503_with_retry_after() {
        let r = ApiError::Busy { workers: 1, queue: 0, retry_after_s: 2 }.into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}
