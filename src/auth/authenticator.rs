//! Turns request headers into a [`Principal`]: API keys and OIDC bearer tokens; with neither
//! header, the connection's verified TLS client certificate ([`PeerCert`]).

use super::apikey::{ApiKeys, KEY_PREFIX};
use super::clientcert::{ClientCerts, PeerCert};
use super::config::AuthConfig;
use super::jwt::{OidcVerifier, sanitize, token_hint};
use super::{AuthError, AuthMethod, Presented, Principal};
use http::{HeaderMap, header};
use std::sync::Arc;
use time::OffsetDateTime;

/// Header carrying an API key, as an alternative to `Authorization: Bearer sg_...`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Authenticates requests. Cheap to clone (shared state behind `Arc`).
#[derive(Clone)]
pub struct Authenticator {
    api_keys: Arc<ApiKeys>,
    oidc: Option<Arc<OidcVerifier>>,
    client_certs: Arc<ClientCerts>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &!self.api_keys.is_empty())
            .field("oidc", &self.oidc.is_some())
            .field("client_certs", &!self.client_certs.is_empty())
            .finish()
    }
}

enum Credential<'a> {
    ApiKey(&'a str),
    Jwt(&'a str),
}

fn looks_like_jwt(v: &str) -> bool {
    let mut parts = v.split('.');
    let n = parts.by_ref().take(4).count();
    n == 3 && !v.split('.').take(2).any(str::is_empty)
}

impl Authenticator {
    /// Validates `cfg` and, when `[auth.oidc]` is set, fetches the discovery document and
    /// signing keys (and starts their periodic refresh on the current tokio runtime).
    /// Errors name the config key at fault.
    pub async fn new(cfg: &AuthConfig) -> Result<Self, String> {
        cfg.validate().map_err(|e| e.to_string())?;
        let api_keys = Arc::new(ApiKeys::new(&cfg.api_keys).map_err(|e| e.to_string())?);
        let client_certs =
            Arc::new(ClientCerts::new(&cfg.client_certs).map_err(|e| e.to_string())?);
        let oidc = match &cfg.oidc {
            Some(o) => Some(OidcVerifier::start(o).await?),
            None => None,
        };
        Ok(Self {
            api_keys,
            oidc,
            client_certs,
        })
    }

    /// Whether bearer JWTs are accepted.
    pub fn oidc_enabled(&self) -> bool {
        self.oidc.is_some()
    }

    /// Authenticates one request from its headers (`Authorization: Bearer <x>` or
    /// `X-API-Key: <x>`). On failure, says what was presented without the secret.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> Result<Principal, (AuthError, Presented)> {
        self.authenticate_with_cert(headers, None).await
    }

    /// [`Authenticator::authenticate`], or, when the request has neither header, from `peer`:
    /// the client certificate the TLS handshake verified, mapped by `[[auth.client_certs]]`.
    /// A header always wins: a bad one fails even with a certificate.
    ///
    /// A certificate is an ambient credential: a browser holding one presents it on any
    /// request to this server, including a form another site posts (cross-site request
    /// forgery). Certificates therefore authenticate machine clients only: a request that
    /// carries an `Origin` header (browsers send one with every cross-origin request and every
    /// POST) must send a credential header instead.
    pub async fn authenticate_with_cert(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerCert>,
    ) -> Result<Principal, (AuthError, Presented)> {
        if let Some(cert) = peer
            && !headers.contains_key(header::AUTHORIZATION)
            && !headers.contains_key(API_KEY_HEADER)
        {
            if headers.contains_key(header::ORIGIN) {
                return Err((
                    AuthError::Invalid(
                        "a client certificate does not authenticate a browser request (one with an Origin header); send an API key or token"
                            .into(),
                    ),
                    cert.presented(),
                ));
            }
            return self
                .client_certs
                .authenticate(cert)
                .map_err(|e| (e, cert.presented()));
        }
        let (cred, presented) = match Self::credential(headers) {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        let r = match cred {
            Credential::ApiKey(k) => self.api_keys.authenticate(k, OffsetDateTime::now_utc()),
            Credential::Jwt(t) => match &self.oidc {
                Some(v) => v.verify(t).await,
                None => Err(AuthError::Invalid(
                    "bearer tokens are not accepted here (OIDC is not configured)".into(),
                )),
            },
        };
        r.map_err(|e| (e, presented))
    }

    /// Validates a bearer token (`[auth.oidc]`) and returns the client application it was
    /// issued to (`azp`, else `appid`): webhook sources accept tokens of listed applications.
    pub async fn verify_app_token(&self, token: &str) -> Result<Option<String>, AuthError> {
        match &self.oidc {
            Some(v) => v.verify_with_app(token).await.map(|(_, app)| app),
            None => Err(AuthError::Invalid("OIDC is not configured".into())),
        }
    }

    /// What the request presents (method and non-secret hint), without validating it: for
    /// the audit record of a successful call.
    pub fn presented(headers: &HeaderMap) -> Presented {
        match Self::credential(headers) {
            Ok((_, p)) | Err((_, p)) => p,
        }
    }

    /// Picks the credential from the headers.
    fn credential(
        headers: &HeaderMap,
    ) -> Result<(Credential<'_>, Presented), (AuthError, Presented)> {
        let none = Presented::default();
        let authz = headers.get_all(header::AUTHORIZATION);
        let apikey = headers.get_all(API_KEY_HEADER);
        let n_authz = authz.iter().count();
        let n_key = apikey.iter().count();
        if n_authz + n_key == 0 {
            return Err((AuthError::Missing, none));
        }
        if n_authz + n_key > 1 {
            return Err((
                AuthError::Invalid(
                    "present exactly one credential (one Authorization or X-API-Key header)".into(),
                ),
                none,
            ));
        }
        let bad_header = || {
            (
                AuthError::Invalid("credential header is not valid text".into()),
                Presented::default(),
            )
        };
        if let Some(v) = apikey.iter().next() {
            let k = v.to_str().map_err(|_| bad_header())?.trim();
            return Ok((Credential::ApiKey(k), api_key_presented(k)));
        }
        let v = authz
            .iter()
            .next()
            .ok_or_else(bad_header)?
            .to_str()
            .map_err(|_| bad_header())?
            .trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err((
                AuthError::Invalid("unsupported authorization scheme (use Bearer)".into()),
                Presented {
                    method: Some(sanitize(scheme, 16).to_ascii_lowercase()),
                    hint: None,
                },
            ));
        }
        let tok = rest.trim();
        if tok.is_empty() {
            return Err((AuthError::Missing, none));
        }
        if tok.starts_with(KEY_PREFIX) || !looks_like_jwt(tok) {
            Ok((Credential::ApiKey(tok), api_key_presented(tok)))
        } else {
            Ok((
                Credential::Jwt(tok),
                Presented {
                    method: Some(AuthMethod::Jwt.as_str().into()),
                    hint: token_hint(tok),
                },
            ))
        }
    }

    /// The `WWW-Authenticate` value for a 401 (RFC 6750 §3).
    pub fn www_authenticate(&self, err: &AuthError) -> String {
        www_authenticate(err)
    }
}

fn api_key_presented(k: &str) -> Presented {
    Presented {
        method: Some(AuthMethod::ApiKey.as_str().into()),
        hint: Some(sanitize(&k.chars().take(6).collect::<String>(), 6)).filter(|h| !h.is_empty()),
    }
}

/// The `WWW-Authenticate` value for a 401 (RFC 6750 §3): no error code when nothing was
/// presented, `invalid_token` otherwise.
pub fn www_authenticate(err: &AuthError) -> String {
    match err {
        AuthError::Missing | AuthError::ClientCertUnmapped => {
            r#"Bearer realm="sessiongate""#.to_string()
        }
        AuthError::Expired => {
            r#"Bearer realm="sessiongate", error="invalid_token", error_description="The credentials expired""#
                .to_string()
        }
        AuthError::Invalid(d) => format!(
            r#"Bearer realm="sessiongate", error="invalid_token", error_description="{}""#,
            sanitize(d, 200)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt("..c"));
    }

    #[test]
    fn www_authenticate_shapes() {
        assert_eq!(
            www_authenticate(&AuthError::Missing),
            r#"Bearer realm="sessiongate""#
        );
        let w = www_authenticate(&AuthError::Invalid("bad \"x\"\r\n".into()));
        assert_eq!(
            w,
            r#"Bearer realm="sessiongate", error="invalid_token", error_description="bad x""#
        );
        assert!(http::HeaderValue::from_str(&w).is_ok());
    }
}
