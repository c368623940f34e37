//! The one error type of the fake, and its rendering as a Kubernetes `Status`.
//!
//! Every failure a client can see goes through [`ApiError`], so a malformed
//! request always gets a `Status` body with the code and reason the real
//! apiserver would use, never a panic or a bare text body.

use serde_json::{Value, json};

/// An error answered to a client as a Kubernetes `Status` object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404 NotFound for a named object.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// Plural resource name, e.g. `nodes`.
        resource: String,
        /// Object name.
        name: String,
    },
    /// 404 NotFound for a path the fake does not serve.
    #[error("the server could not find the requested resource")]
    UnknownPath,
    /// 409 AlreadyExists on create.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// Plural resource name.
        resource: String,
        /// Object name.
        name: String,
    },
    /// 409 Conflict on a stale resourceVersion (or a failed delete precondition).
    #[error(
        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// Plural resource name.
        resource: String,
        /// Object name.
        name: String,
    },
    /// 400 BadRequest (bad JSON, bad selector, bad query parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 422 Invalid (semantic validation, failed JSON patch, apply without fieldManager).
    #[error("{0}")]
    Invalid(String),
    /// 405 MethodNotAllowed.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// 415 UnsupportedMediaType.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// 413 RequestEntityTooLarge.
    #[error("the request body is too large")]
    TooLarge,
    /// 410 Expired: a watch from a compacted resourceVersion (sent in-stream).
    #[error("too old resource version: {requested} ({floor})")]
    Expired {
        /// The version the client asked for.
        requested: u64,
        /// The oldest version the fake can still replay from.
        floor: u64,
    },
    /// 500 InternalError.
    #[error("{0}")]
    Internal(String),
    /// 401 Unauthorized: a tokens file is loaded and the request has no
    /// known bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    /// A ValidatingAdmissionPolicy denied the request: the code and reason
    /// follow the policy's `reason` (Invalid, 422, when it names none), the
    /// message is the real API server's.
    #[error("{resource} \"{name}\" is forbidden: {message}")]
    AdmissionDenied {
        /// The qualified resource, e.g. `nodes`, `events.events.k8s.io`.
        resource: String,
        /// Object name.
        name: String,
        /// HTTP status code.
        code: u16,
        /// `Forbidden`, `Invalid`, `Unauthorized` or `RequestEntityTooLarge`.
        reason: &'static str,
        /// `ValidatingAdmissionPolicy '…' with binding '…' denied request: …`.
        message: String,
    },
    /// Any status code injected by fault injection.
    #[error("injected fault: {code}")]
    Injected {
        /// HTTP status code to answer with.
        code: u16,
    },
}

impl ApiError {
    /// The HTTP status code.
    #[must_use]
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound { .. } | Self::UnknownPath => 404,
            Self::AlreadyExists { .. } | Self::Conflict { .. } => 409,
            Self::BadRequest(_) => 400,
            Self::Invalid(_) => 422,
            Self::MethodNotAllowed => 405,
            Self::UnsupportedMediaType(_) => 415,
            Self::TooLarge => 413,
            Self::Expired { .. } => 410,
            Self::Internal(_) => 500,
            Self::Unauthorized => 401,
            Self::AdmissionDenied { code, .. } | Self::Injected { code } => *code,
        }
    }

    /// The `reason` field of the `Status`, as the real apiserver spells it.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::UnknownPath => "NotFound",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::BadRequest(_) => "BadRequest",
            Self::Invalid(_) => "Invalid",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::TooLarge => "RequestEntityTooLarge",
            Self::Expired { .. } => "Expired",
            Self::Internal(_) => "InternalError",
            Self::Unauthorized => "Unauthorized",
            Self::AdmissionDenied { reason, .. } => reason,
            Self::Injected { code } => reason_for_code(*code),
        }
    }

    /// The full `Status` object.
    #[must_use]
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        match self {
            Self::NotFound { resource, name }
            | Self::AlreadyExists { resource, name }
            | Self::Conflict { resource, name } => {
                status["details"] = json!({ "name": name, "kind": resource });
            }
            Self::AdmissionDenied {
                resource,
                name,
                message,
                ..
            } => {
                // As the real server's details: the plural as kind, its group apart.
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                status["details"] = json!({
                    "name": name,
                    "group": group,
                    "kind": kind,
                    "causes": [{ "message": message }],
                });
            }
            Self::Injected { code: 429 } => {
                status["details"] = json!({ "retryAfterSeconds": 1 });
            }
            _ => {}
        }
        status
    }
}

/// The `reason` the real apiserver pairs with a bare status code.
fn reason_for_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

/// Errors of starting or controlling the server (not answered to clients).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding or re-binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing a file (kubeconfig) failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or parsing a nodes file failed.
    #[error("bad nodes file {path}: {message}")]
    NodesFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A tokens or admission policy file cannot be read or is not valid.
    #[error("bad file {path}: {message}")]
    ConfigFile {
        /// The file.
        path: std::path::PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A seeded object was rejected.
    #[error("cannot seed object: {0}")]
    Seed(#[from] ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_status_has_kubernetes_shape() {
        let e = ApiError::Conflict {
            resource: "nodes".into(),
            name: "node-a".into(),
        };
        let s = e.to_status();
        assert_eq!(s["code"], 409);
        assert_eq!(s["reason"], "Conflict");
        assert_eq!(s["details"]["name"], "node-a");
        assert!(
            s["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Operation cannot be fulfilled on nodes \"node-a\"")
        );
    }

    #[test]
    fn injected_codes_get_real_reasons() {
        assert_eq!(ApiError::Injected { code: 429 }.reason(), "TooManyRequests");
        assert_eq!(ApiError::Injected { code: 500 }.reason(), "InternalError");
        assert_eq!(ApiError::Injected { code: 409 }.reason(), "Conflict");
    }
}
