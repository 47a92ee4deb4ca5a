//! Bearer tokens with scopes.
//!
//! Configured as `scope:token` entries separated by commas or newlines (`read`, `write`,
//! `admin`; admin implies write implies read). Only SHA-256 digests of the tokens are kept, and
//! a presented token is compared against every digest in constant time, so neither the timing
//! nor a memory dump gives a token away.

use std::{fmt, marker::PhantomData};

use axum::{extract::FromRequestParts, http::request::Parts};
use sha2::{Digest as _, Sha256};
use stockflow_shared::settings::{ConfigError, Secret};
use subtle::ConstantTimeEq as _;

use crate::{error::ApiError, AppState};

/// What a token may do; ordered, so a higher scope includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Queries.
    Read,
    /// Queries and ingest.
    Write,
    /// Everything, including the admin endpoints (dead letters).
    Admin,
}

impl Scope {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }
}

/// Shortest token accepted, in bytes: guessing one must be hopeless.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The accepted tokens, as digests.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Scope)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses `scope:token` entries separated by commas or newlines; blank lines and lines
    /// starting with `#` are skipped. `var` names the variable in errors, which never quote a
    /// token.
    pub fn parse(var: &'static str, text: &Secret) -> Result<Self, ConfigError> {
        let mut entries = Vec::new();
        let items = text
            .expose()
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|item| !item.is_empty());
        for (n, item) in items.enumerate() {
            let invalid = |reason: String| ConfigError::Invalid {
                var,
                reason: format!("entry {}: {reason}", n + 1),
            };
            let Some((scope, token)) = item.split_once(':') else {
                return Err(invalid("is not scope:token".into()));
            };
            let scope = Scope::parse(scope.trim()).ok_or_else(|| {
                invalid(format!(
                    "scope {:?} is not read, write or admin",
                    scope.trim()
                ))
            })?;
            if token.len() < MIN_TOKEN_BYTES {
                return Err(invalid(format!(
                    "the token is shorter than {MIN_TOKEN_BYTES} bytes"
                )));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "the token must be printable ASCII without spaces".into(),
                ));
            }
            entries.push((digest(token), scope));
        }
        Ok(Self { entries })
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scope of `presented`, if it is one of ours. Every digest is compared, without an
    /// early exit; the same token listed twice counts with its highest scope.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let presented = digest(presented);
        let mut found = None;
        for (known, scope) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = found.max(Some(*scope));
            }
        }
        found
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Bearer tokens are required.
    Tokens(Tokens),
    /// Every request may do everything (`STOCKFLOW_GATEWAY_AUTH=none`): for a gateway behind
    /// an authenticating proxy, or local experiments.
    Disabled,
}

impl Auth {
    /// The scope granted to a request with this `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<Scope, ApiError> {
        let tokens = match self {
            Self::Disabled => return Ok(Scope::Admin),
            Self::Tokens(tokens) => tokens,
        };
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized("send Authorization: Bearer <token>"));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not Bearer <token>")
            })?;
        tokens
            .scope_of(token)
            .ok_or_else(|| ApiError::unauthorized("the bearer token is not valid"))
    }
}

/// A scope an endpoint needs, as a type, so the check runs as an extractor before the body is
/// read.
pub trait Needs: Send + Sync {
    /// The scope.
    const SCOPE: Scope;
}

/// Needs `read`.
#[derive(Debug)]
pub struct Read;
impl Needs for Read {
    const SCOPE: Scope = Scope::Read;
}

/// Needs `write`.
#[derive(Debug)]
pub struct Write;
impl Needs for Write {
    const SCOPE: Scope = Scope::Write;
}

/// Needs `admin`.
#[derive(Debug)]
pub struct Admin;
impl Needs for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// Proof that the request's token has scope `N` (401 without a valid token, 403 without the
/// scope), and the scope it has (a route may need more for some bodies).
#[derive(Debug)]
pub struct Authorized<N> {
    scope: Scope,
    needs: PhantomData<N>,
}

impl<N> Authorized<N> {
    /// The scope the token has (at least `N`'s).
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// 403 unless the token also has `scope`; `what` says what needs it.
    pub fn require(&self, scope: Scope, what: &str) -> Result<(), ApiError> {
        if self.scope < scope {
            return Err(ApiError::forbidden(format!(
                "this token has scope {}, {what} needs {}",
                self.scope.as_str(),
                scope.as_str()
            )));
        }
        Ok(())
    }
}

impl<N: Needs> FromRequestParts<AppState> for Authorized<N> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let scope = state.auth.check(header)?;
        if scope < N::SCOPE {
            return Err(ApiError::forbidden(format!(
                "this token has scope {}, the request needs {}",
                scope.as_str(),
                N::SCOPE.as_str()
            )));
        }
        Ok(Self {
            scope,
            needs: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Result<Tokens, ConfigError> {
        Tokens::parse("STOCKFLOW_GATEWAY_TOKENS", &Secret::new(text))
    }

    #[test]
    fn scopes_include_the_lower_ones_and_unknown_tokens_get_none() {
        let tokens = tokens(
            "read:rrrrrrrrrrrrrrrrrrrr, write:wwwwwwwwwwwwwwwwwwww\n# ops\nadmin:aaaaaaaaaaaaaaaaaaaa",
        )
        .expect("valid");
        assert_eq!(tokens.len(), 3);
        assert_eq!(tokens.scope_of("rrrrrrrrrrrrrrrrrrrr"), Some(Scope::Read));
        assert_eq!(tokens.scope_of("aaaaaaaaaaaaaaaaaaaa"), Some(Scope::Admin));
        assert_eq!(tokens.scope_of("aaaaaaaaaaaaaaaaaaa"), None);
        assert!(Scope::Admin > Scope::Write && Scope::Write > Scope::Read);
    }

    #[test]
    fn bad_entries_name_the_variable_and_never_the_token() {
        for text in [
            "reader:xxxxxxxxxxxxxxxxxxxx",
            "write:tiny",
            "xxxxxxxxxxxxxxxxxxxx",
        ] {
            let err = tokens(text).expect_err(text).to_string();
            assert!(
                err.starts_with("STOCKFLOW_GATEWAY_TOKENS: entry 1:"),
                "{err}"
            );
            assert!(!err.contains("xxxxxxxx") && !err.contains("tiny"), "{err}");
        }
    }

    #[test]
    fn the_header_must_be_a_known_bearer_token() {
        let auth = Auth::Tokens(tokens("write:wwwwwwwwwwwwwwwwwwww").expect("valid"));
        assert_eq!(
            auth.check(Some("Bearer wwwwwwwwwwwwwwwwwwww")),
            Ok(Scope::Write)
        );
        for header in [None, Some("Basic d3d3"), Some("Bearer nope")] {
            let err = auth.check(header).expect_err("rejected");
            assert_eq!(err.status, axum::http::StatusCode::UNAUTHORIZED);
        }
        assert_eq!(Auth::Disabled.check(None), Ok(Scope::Admin));
    }
}
