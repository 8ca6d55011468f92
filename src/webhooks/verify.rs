//! Authenticating a delivery from its headers and raw body (before anything parses the body),
//! and reading its delivery id. Failures are one stable reason code each; nothing else about
//! them is told to the sender or written anywhere.

use super::config::{DeliveryIdFrom, Source, SourceKind};
use super::signature::{SignatureError, hub_verify, standard_verify};
use crate::auth::Authenticator;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Reason code: an Entra ID token was presented and refused (invalid, expired, or issued to an
/// application the source does not list).
pub const TOKEN_INVALID: &str = "token_invalid";
/// Reason code: the API key header holds no configured key.
pub const API_KEY_INVALID: &str = "api_key_invalid";
/// Reason code: none of the source's credentials was presented.
pub const CREDENTIALS_MISSING: &str = "credentials_missing";

/// The Jira signature header.
pub const HUB_SIGNATURE: &str = "x-hub-signature";

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = header(h, "authorization")?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl Source {
    /// Authenticates a delivery. `now`: Unix seconds; `tolerance_secs`: generic timestamps.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
        tolerance_secs: i64,
        auth: &Authenticator,
    ) -> Result<(), &'static str> {
        match self.kind {
            SourceKind::Generic => standard_verify(
                &self.keys,
                header(headers, "webhook-id"),
                header(headers, "webhook-timestamp"),
                header(headers, "webhook-signature"),
                body,
                now,
                tolerance_secs,
            )
            .map_err(SignatureError::code),
            SourceKind::Jira => {
                // Whichever configured credential the delivery presents: an admin webhook
                // signs, an Automation rule sends a key or a token.
                if !self.keys.is_empty() && headers.contains_key(HUB_SIGNATURE) {
                    return hub_verify(&self.keys, header(headers, HUB_SIGNATURE), body)
                        .map_err(SignatureError::code);
                }
                match self.credential(headers, auth).await {
                    Err(CREDENTIALS_MISSING) if !self.keys.is_empty() => {
                        Err(SignatureError::Missing.code())
                    }
                    other => other,
                }
            }
            SourceKind::Servicenow => {
                self.credential(headers, auth).await?;
                match &self.hmac {
                    Some((name, secrets)) => {
                        hub_verify(secrets, header(headers, name.as_str()), body)
                            .map_err(SignatureError::code)
                    }
                    None => Ok(()),
                }
            }
        }
    }

    /// The API key header or the Entra ID token, whichever is configured and presented.
    async fn credential(
        &self,
        headers: &HeaderMap,
        auth: &Authenticator,
    ) -> Result<(), &'static str> {
        if let Some((name, digests)) = &self.api_key
            && let Some(v) = headers.get(name)
        {
            let d: [u8; 32] = Sha256::digest(v.as_bytes()).into();
            let mut ok = false;
            for k in digests {
                ok |= bool::from(k.ct_eq(&d));
            }
            return if ok { Ok(()) } else { Err(API_KEY_INVALID) };
        }
        if let Some(apps) = &self.entra_apps
            && let Some(tok) = bearer(headers)
        {
            return match auth.verify_app_token(tok).await {
                Ok(Some(app)) if apps.iter().any(|a| a.eq_ignore_ascii_case(&app)) => Ok(()),
                _ => Err(TOKEN_INVALID),
            };
        }
        Err(CREDENTIALS_MISSING)
    }

    /// The delivery id from its header (before parsing) — `None` when it is in the body.
    pub fn header_delivery_id(&self, headers: &HeaderMap) -> Option<Result<String, ()>> {
        match &self.delivery_id {
            DeliveryIdFrom::Header(h) => Some(header(headers, h).ok_or(()).and_then(clean_id)),
            DeliveryIdFrom::Pointer(_) => None,
        }
    }

    /// The delivery id from the body (a JSON pointer), when configured so.
    pub fn body_delivery_id(&self, body: &serde_json::Value) -> Option<Result<String, ()>> {
        match &self.delivery_id {
            DeliveryIdFrom::Pointer(p) => Some(match body.pointer(p) {
                Some(serde_json::Value::String(s)) => clean_id(s),
                Some(serde_json::Value::Number(n)) => clean_id(&n.to_string()),
                _ => Err(()),
            }),
            DeliveryIdFrom::Header(_) => None,
        }
    }

    /// The header or pointer the delivery id is read from (for messages).
    pub fn delivery_id_place(&self) -> &str {
        match &self.delivery_id {
            DeliveryIdFrom::Header(h) | DeliveryIdFrom::Pointer(h) => h,
        }
    }
}

/// 1-256 printable characters.
fn clean_id(s: &str) -> Result<String, ()> {
    let s = s.trim();
    if !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control) {
        Ok(s.to_string())
    } else {
        Err(())
    }
}
