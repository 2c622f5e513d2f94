//! The one place an error becomes an HTTP response: `{"error": sentence, "code": reason}`.

use crate::store::StoreError;
use hyper::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such resource: {0}")]
    NotFound(String),
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("parameter `{param}`: {problem}")]
    BadParam {
        param: &'static str,
        problem: String,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::UnknownDevice(_) => "unknown_device",
            ApiError::BadParam { .. } => "bad_parameter",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Store(e) => e.reason(),
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) | ApiError::UnknownDevice(_) => StatusCode::NOT_FOUND,
            ApiError::BadParam { .. } => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Store(StoreError::DiskFull) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string(), "code": self.reason() })
    }
}
