//! Bearer-token authentication from a file: each token stands for one user
//! (name, uid, groups and `extra`, as a real authenticator reports them), so
//! tests can act as a node-bound ServiceAccount token, a kubelet or an admin.
//!
//! The tokens file is YAML or JSON, a list of entries:
//!
//! ```yaml
//! - token: node-0-agent
//!   user:
//!     username: system:serviceaccount:wireseal:wireseal
//!     groups: [system:serviceaccounts, system:serviceaccounts:wireseal, system:authenticated]
//!     extra:
//!       authentication.kubernetes.io/node-name: [node-0]
//! ```
//!
//! Without a tokens file nothing is authenticated and every request is the
//! anonymous user, as before.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ServerError};

/// Who made a request, as `request.userInfo` shows it to admission.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserInfo {
    /// e.g. `system:serviceaccount:wireseal:wireseal`, `system:node:node-0`.
    pub username: String,
    /// Left out of `request.userInfo` when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Left out when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// e.g. `authentication.kubernetes.io/node-name: [node-0]`; left out when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// What a real API server calls a request without credentials.
    #[must_use]
    pub fn anonymous() -> Self {
        Self {
            username: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Self::default()
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token: String,
    user: UserInfo,
}

/// Token → user, loaded from a tokens file.
#[derive(Debug, Clone, Default)]
pub struct Tokens(BTreeMap<String, UserInfo>);

impl Tokens {
    /// Parses a tokens file's text (see the module documentation).
    ///
    /// # Errors
    /// A message for bad YAML, an empty or duplicate token, or a user without a name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entries: Vec<Entry> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut tokens = BTreeMap::new();
        for entry in entries {
            if entry.token.is_empty() || entry.user.username.is_empty() {
                return Err("every entry needs a token and user.username".into());
            }
            let name = entry.user.username.clone();
            if tokens.insert(entry.token, entry.user).is_some() {
                return Err(format!("a token of {name} is listed twice"));
            }
        }
        Ok(Self(tokens))
    }

    /// Reads and parses a tokens file.
    ///
    /// # Errors
    /// [`ServerError::ConfigFile`] naming the file.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::ConfigFile {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|message| ServerError::ConfigFile {
            path: path.to_owned(),
            message,
        })
    }

    /// The user behind an `Authorization` header value.
    ///
    /// # Errors
    /// 401 Unauthorized without a bearer token or for an unknown one.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<UserInfo, ApiError> {
        authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .and_then(|token| self.0.get(token))
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_and_bearer_header() {
        let tokens = Tokens::parse(
            "- token: t1\n  user:\n    username: system:node:n1\n    groups: [system:nodes]\n\
             - token: t2\n  user:\n    username: sa\n    extra: {authentication.kubernetes.io/node-name: [n2]}\n",
        )
        .unwrap();
        let n1 = tokens.authenticate(Some("Bearer t1")).unwrap();
        assert_eq!(n1.groups, ["system:nodes"]);
        let sa = tokens.authenticate(Some("Bearer t2")).unwrap();
        assert_eq!(sa.extra["authentication.kubernetes.io/node-name"], ["n2"]);
        for bad in [None, Some("Bearer nope"), Some("Basic dDE="), Some("t1")] {
            assert_eq!(tokens.authenticate(bad).unwrap_err().code(), 401, "{bad:?}");
        }
        assert!(
            Tokens::parse("- token: a\n  user: {username: x}\n- token: a\n  user: {username: y}\n")
                .is_err()
        );
        assert!(Tokens::parse("- token: a\n  user: {username: x, grups: []}\n").is_err());
        assert!(Tokens::parse("- token: ''\n  user: {username: x}\n").is_err());
    }
}
