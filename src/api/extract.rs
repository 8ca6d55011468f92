//! Our own extractors: malformed paths, queries and bodies become problem+json with stable
//! codes instead of axum's plain-text rejections.

use super::problem::{ApiError, RequestError};
use crate::domain::{HostName, PoolName, SessionId};
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

/// `{pool}`
pub struct PoolPath(pub PoolName);
/// `{pool}/sessionhosts/{host}`
pub struct HostPath(pub PoolName, pub HostName);
/// `{pool}/sessionhosts/{host}/sessions/{id}`
pub struct SessionPath(pub PoolName, pub HostName, pub SessionId);

async fn raw_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<Vec<(String, String)>, ApiError> {
    Path::<Vec<(String, String)>>::from_request_parts(parts, state)
        .await
        .map(|Path(v)| v)
        .map_err(|e| RequestError::InvalidPath(e.body_text()).into())
}

fn param<'a>(v: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    v.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ApiError::internal(format!("route lacks path parameter {name}")))
}

fn pool(v: &[(String, String)]) -> Result<PoolName, ApiError> {
    PoolName::parse(param(v, "pool")?)
        .map_err(|e| RequestError::InvalidPoolName(e.to_string()).into())
}
fn host(v: &[(String, String)]) -> Result<HostName, ApiError> {
    HostName::parse(param(v, "host")?)
        .map_err(|e| RequestError::InvalidHostName(e.to_string()).into())
}
fn session(v: &[(String, String)]) -> Result<SessionId, ApiError> {
    SessionId::parse(param(v, "id")?)
        .map_err(|e| RequestError::InvalidSessionId(e.to_string()).into())
}

impl<S: Send + Sync> FromRequestParts<S> for PoolPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let v = raw_params(parts, state).await?;
        Ok(Self(pool(&v)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for HostPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let v = raw_params(parts, state).await?;
        Ok(Self(pool(&v)?, host(&v)?))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let v = raw_params(parts, state).await?;
        Ok(Self(pool(&v)?, host(&v)?, session(&v)?))
    }
}

/// Query string, with `invalid_query` on error.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Self(t))
            .map_err(|e| RequestError::InvalidQuery(e.body_text()).into())
    }
}

/// A JSON body that may be absent (empty body → `T::default()`).
///
/// A non-empty body must be JSON (`Content-Type: application/json`, or none at all).
/// Malformed JSON is 400 `invalid_json`; well-formed JSON of the wrong shape is 422
/// `invalid_body`; a body over the limit is 413 `payload_too_large`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.to_ascii_lowercase());
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RequestError::PayloadTooLarge
            } else {
                RequestError::UnreadableBody(e.body_text())
            }
        })?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Self(T::default()));
        }
        if let Some(ct) = ct {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(RequestError::UnsupportedMediaType(format!(
                    "the body must be JSON (Content-Type: application/json), not '{essence}'"
                ))
                .into());
            }
        }
        let not_json = |e: serde_json::Error| -> ApiError {
            RequestError::InvalidJson(format!("the body is not valid JSON: {e}")).into()
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            // One JSON value and nothing after it: a second object after the first would
            // otherwise be silently ignored.
            Ok(v) => de.end().map(|()| Self(v)).map_err(not_json),
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    Err(not_json(inner))
                } else if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                {
                    // Wrong shape and not JSON as a whole (data after the value): not JSON wins.
                    Err(not_json(syntax))
                } else {
                    let at = if path == "." {
                        String::new()
                    } else {
                        format!(" at '{path}'")
                    };
                    Err(RequestError::InvalidBody(format!(
                        "the body does not fit this endpoint{at}: {inner}"
                    ))
                    .into())
                }
            }
        }
    }
}
