//! OIDC bearer tokens (Entra ID access tokens): discovery, JWKS with rotation, validation.
//!
//! Keys come from the issuer's discovery document (`jwks_uri`). They are fetched at start
//! (start fails if that fails), re-read every `refresh_secs` by a background task, and
//! re-read when a token names an unknown `kid` — at most once per
//! `min_refetch_interval_secs`, so forged `kid`s cannot make us hammer the issuer. A failed
//! refresh keeps the previous keys.
//!
//! Only RS256 and ES256 are accepted, and a token's `alg` must match the family of the key
//! its `kid` names: `alg: none`, the HMAC algorithms (which would let an attacker "sign" with
//! the public RSA key as HMAC secret) and everything else are refused before any key is used.

use super::config::OidcConfig;
use super::{AuthError, AuthMethod, Grant, PoolScope, Principal};
use base64::Engine;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::Deserialize;
use std::{
    collections::HashMap,
    sync::{Arc, RwLock, Weak},
    time::{Duration, Instant},
};

/// Tokens longer than this are refused unparsed.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Discovery and JWKS bodies larger than this are refused.
const MAX_DOC_LEN: usize = 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

struct VerifyKey {
    alg: Algorithm,
    key: DecodingKey,
}

/// The signing keys currently trusted.
struct KeySet {
    keys: HashMap<String, VerifyKey>,
}

/// Validates bearer JWTs for one issuer.
pub(crate) struct OidcVerifier {
    cfg: OidcConfig,
    client: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Last unknown-`kid` refetch; also serialises those refetches.
    refetch_gate: tokio::sync::Mutex<Option<Instant>>,
    /// Lower-cased role/group → grants.
    role_map: HashMap<String, Vec<Grant>>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    upn: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default, rename = "_claim_names")]
    claim_names: Option<serde_json::Value>,
    /// The client application (v2 tokens).
    #[serde(default)]
    azp: Option<String>,
    /// The client application (v1 tokens).
    #[serde(default)]
    appid: Option<String>,
}

/// The header fields we read before trusting anything.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// The parts of a token that may be shown (audit, logs): `kid` and `iss`, sanitised.
pub(crate) fn token_hint(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let h = parts.next()?;
    let p = parts.next()?;
    let header: RawHeader = decode_segment(h)?;
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let iss = decode_segment::<Iss>(p).and_then(|i| i.iss);
    let mut out = Vec::new();
    if let Some(k) = header.kid {
        out.push(format!("kid={}", sanitize(&k, 64)));
    }
    if let Some(i) = iss {
        out.push(format!("iss={}", sanitize(&i, 128)));
    }
    (!out.is_empty()).then(|| out.join(" "))
}

/// Fuzzing entry (see `crate::fuzzing`): what is read from a bearer token before any key is
/// consulted — the header segment as `verify` reads it, the hint shown in audit and logs, and
/// the library's own header decoding.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_token_header(token: &str) {
    let header_seg = token.split('.').next().unwrap_or_default();
    let _ = decode_segment::<RawHeader>(header_seg).map(|h| (h.alg, h.kid));
    let _ = token_hint(token);
    let _ = jsonwebtoken::decode_header(token);
}

fn decode_segment<T: serde::de::DeserializeOwned>(seg: &str) -> Option<T> {
    if seg.len() > MAX_TOKEN_LEN {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keeps printable ASCII other than quotes and backslashes, at most `max` characters.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .take(max)
        .collect()
}

impl OidcVerifier {
    /// Fetches discovery and keys, then starts the periodic refresh.
    pub(crate) async fn start(cfg: &OidcConfig) -> Result<Arc<Self>, String> {
        let client = cfg.http_client().map_err(|e| e.to_string())?;
        let mut role_map: HashMap<String, Vec<Grant>> = HashMap::new();
        for (k, grants) in &cfg.role_map {
            role_map
                .entry(k.trim().to_lowercase())
                .or_default()
                .extend(grants.iter().map(|g| Grant {
                    role: g.role,
                    pools: PoolScope::Pools(g.pools.clone()),
                }));
        }
        let v = Arc::new(Self {
            cfg: cfg.clone(),
            client,
            keys: RwLock::new(Arc::new(KeySet {
                keys: HashMap::new(),
            })),
            refetch_gate: tokio::sync::Mutex::new(None),
            role_map,
        });
        v.refresh().await?;
        let weak = Arc::downgrade(&v);
        let every = Duration::from_secs(cfg.refresh_secs.max(1));
        tokio::spawn(refresh_loop(weak, every));
        Ok(v)
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads discovery, then the JWKS, and swaps the key set in. Errors name the config key.
    async fn refresh(&self) -> Result<usize, String> {
        let disc_url = self.cfg.discovery_url();
        let body = self
            .fetch(&disc_url)
            .await
            .map_err(|e| format!("auth.oidc.discovery_url ({disc_url}): {e}"))?;
        let d: Discovery = serde_json::from_slice(&body).map_err(|e| {
            format!("auth.oidc.discovery_url ({disc_url}): not a discovery document: {e}")
        })?;
        if d.issuer.trim_end_matches('/') != self.cfg.issuer.trim_end_matches('/') {
            return Err(format!(
                "auth.oidc.issuer: the discovery document names issuer '{}', not '{}'",
                sanitize(&d.issuer, 200),
                self.cfg.issuer
            ));
        }
        let ju = url::Url::parse(&d.jwks_uri)
            .map_err(|e| format!("auth.oidc.discovery_url: jwks_uri is not a URL: {e}"))?;
        if ju.scheme() != "https" {
            return Err("auth.oidc.discovery_url: jwks_uri must be https".into());
        }
        let body = self
            .fetch(ju.as_str())
            .await
            .map_err(|e| format!("auth.oidc (jwks_uri {ju}): {e}"))?;
        let doc: JwksDoc = serde_json::from_slice(&body)
            .map_err(|e| format!("auth.oidc (jwks_uri {ju}): not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for v in doc.keys {
            if let Some((kid, k)) = parse_jwk(v) {
                keys.insert(kid, k);
            }
        }
        if keys.is_empty() {
            return Err(format!(
                "auth.oidc (jwks_uri {ju}): no usable RS256/ES256 signing key with a kid"
            ));
        }
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeySet { keys });
        tracing::debug!(auth.oidc.keys = n, "OIDC signing keys loaded");
        Ok(n)
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut resp = self
            .client
            .get(url)
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_DOC_LEN as u64)
        {
            return Err("response too large".into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading body: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOC_LEN {
                return Err("response too large".into());
            }
        }
        Ok(body)
    }

    /// Re-reads keys for an unknown `kid`, unless that was done less than
    /// `min_refetch_interval_secs` ago.
    async fn refetch_for_unknown_kid(&self) {
        let mut last = self.refetch_gate.lock().await;
        let min = Duration::from_secs(self.cfg.min_refetch_interval_secs);
        if last.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "OIDC key refetch for an unknown kid failed");
        }
    }

    /// Validates `token` and maps it to a principal.
    pub(crate) async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_with_app(token).await.map(|(p, _)| p)
    }

    /// [`OidcVerifier::verify`], also returning the client application the token was issued
    /// to (`azp`, else `appid`), for callers authorised by application (webhook sources).
    pub(crate) async fn verify_with_app(
        &self,
        token: &str,
    ) -> Result<(Principal, Option<String>), AuthError> {
        let invalid = |m: &str| AuthError::Invalid(m.to_string());
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("token is too long"));
        }
        let header_seg = token.split('.').next().unwrap_or_default();
        let raw: RawHeader =
            decode_segment(header_seg).ok_or_else(|| invalid("token header is malformed"))?;
        let alg = match raw.alg.as_deref() {
            Some("RS256") => Algorithm::RS256,
            Some("ES256") => Algorithm::ES256,
            _ => {
                return Err(invalid(
                    "token algorithm is not accepted (only RS256 and ES256)",
                ));
            }
        };
        let kid = raw
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid("token header has no kid"))?;
        let mut set = self.current();
        if !set.keys.contains_key(&kid) {
            self.refetch_for_unknown_kid().await;
            set = self.current();
        }
        let key = set
            .keys
            .get(&kid)
            .ok_or_else(|| invalid("token signing key (kid) is unknown"))?;
        if key.alg != alg {
            return Err(invalid("token algorithm does not match its signing key"));
        }
        let mut val = Validation::new(alg);
        val.leeway = self.cfg.clock_skew_secs;
        val.validate_exp = true;
        val.validate_nbf = true;
        val.validate_aud = true;
        val.set_audience(&self.cfg.audience);
        val.set_issuer(&[self.cfg.issuer.as_str()]);
        val.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &val).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => invalid("token signature is invalid"),
                ErrorKind::InvalidIssuer => invalid("token issuer is not accepted"),
                ErrorKind::InvalidAudience => invalid("token audience is not accepted"),
                ErrorKind::ImmatureSignature => invalid("token is not valid yet (nbf)"),
                ErrorKind::InvalidAlgorithm => invalid("token algorithm is not accepted"),
                ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!(
                    "token lacks the required claim '{}'",
                    sanitize(c, 16)
                )),
                _ => invalid("token is malformed"),
            })?;
        let c = data.claims;
        let app = c.azp.clone().or_else(|| c.appid.clone());
        if c.claim_names
            .as_ref()
            .is_some_and(|n| n.get("groups").is_some())
        {
            tracing::debug!("token carries a group overage claim; only app roles apply");
        }
        let id = c
            .oid
            .clone()
            .or(c.sub.clone())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("token has neither oid nor sub"))?;
        let upn = c
            .preferred_username
            .clone()
            .or_else(|| c.upn.clone())
            .filter(|u| !u.trim().is_empty());
        let display = c.preferred_username.or(c.upn).or(c.name);
        let mut grants: Vec<Grant> = Vec::new();
        for name in c.roles.iter().chain(c.groups.iter()) {
            if let Some(gs) = self.role_map.get(&name.trim().to_lowercase()) {
                for g in gs {
                    if !grants.contains(g) {
                        grants.push(g.clone());
                    }
                }
            }
        }
        Ok((
            Principal {
                id,
                display,
                method: AuthMethod::Jwt,
                grants,
                upn,
            },
            app,
        ))
    }
}

async fn refresh_loop(weak: Weak<OidcVerifier>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(v) = weak.upgrade() else {
            return;
        };
        if let Err(e) = v.refresh().await {
            tracing::warn!(error = %e, "periodic OIDC key refresh failed; keeping previous keys");
        }
    }
}

fn parse_jwk(v: serde_json::Value) -> Option<(String, VerifyKey)> {
    let jwk: Jwk = serde_json::from_value(v).ok()?;
    let kid = jwk.common.key_id.clone().filter(|k| !k.is_empty())?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    match (jwk.common.key_algorithm, alg) {
        (None, _) | (Some(KeyAlgorithm::RS256), Algorithm::RS256) => {}
        (Some(KeyAlgorithm::ES256), Algorithm::ES256) => {}
        _ => return None,
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some((kid, VerifyKey { alg, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_is_sanitised_and_bounded() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","kid":"k\"1\\x"}"#),
            b64(&format!(r#"{{"iss":"{}"}}"#, "a".repeat(500)))
        );
        let h = token_hint(&t).unwrap();
        assert!(h.starts_with("kid=k1x iss=aaa"), "{h}");
        assert!(h.len() < 220);
        assert_eq!(token_hint("garbage"), None);
    }
}
