//! Webhook signatures: the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) and the WebSub/Jira
//! scheme (`X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>`), both ways: the receiver
//! verifies deliveries, the emulators and the generic write-back callback sign them, and
//! `sessiongate webhook sign` prints the headers for curl users.
//!
//! Written by hand over `hmac` + `sha2` rather than with the `standardwebhooks` crate: that
//! crate fixes the tolerance at five minutes, cannot take several secrets at once (rotation) and
//! has no WebSub form; the scheme itself is a dozen lines. Every comparison is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery's signature was not accepted. [`SignatureError::code`] is the stable code a
/// 401 answer and the audit event carry; nothing else about the failure is told to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is not in the expected form")]
    Malformed,
    #[error("no signature matches a configured secret")]
    Mismatch,
    #[error("the timestamp header is missing or not an integer of Unix seconds")]
    BadTimestamp,
    #[error("the timestamp is outside the accepted tolerance")]
    Expired,
    #[error("the delivery id is missing, empty, too long or holds '.'")]
    BadDeliveryId,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::Mismatch => "signature_mismatch",
            Self::BadTimestamp => "timestamp_invalid",
            Self::Expired => "timestamp_out_of_tolerance",
            Self::BadDeliveryId => "delivery_id_invalid",
        }
    }
}

/// Decodes a Standard Webhooks secret: `whsec_` followed by base64 of the key bytes (the prefix
/// is optional, as in the reference libraries). `None` when it is not base64 or is empty.
pub fn decode_standard_secret(secret: &str) -> Option<Vec<u8>> {
    let b = secret.trim();
    let b = b.strip_prefix("whsec_").unwrap_or(b);
    B64.decode(b).ok().filter(|k| !k.is_empty())
}

/// HMAC-SHA256 of the concatenated `parts` under `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: new_from_slice cannot fail for it.
    let mut m = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.contains('.') && !id.chars().any(char::is_control)
}

/// The Standard Webhooks `webhook-signature` value for one message: `v1,<base64>`.
pub fn standard_sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", B64.encode(mac))
}

/// Verifies a Standard Webhooks delivery: the id's form, the timestamp within `tolerance_secs`
/// of `now` (either side), and at least one `v1,` signature in the space-separated header
/// matching one of `keys` (several keys are valid at once during a rotation). Signatures of
/// other versions (`v1a`, ...) are skipped, as the spec asks.
pub fn standard_verify(
    keys: &[Vec<u8>],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let id = id
        .filter(|i| valid_delivery_id(i))
        .ok_or(SignatureError::BadDeliveryId)?;
    let ts_text = timestamp.ok_or(SignatureError::BadTimestamp)?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let signature = signature
        .filter(|s| !s.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    if (now - ts).abs() > tolerance_secs {
        return Err(SignatureError::Expired);
    }
    let ts = ts.to_string();
    let expected: Vec<[u8; 32]> = keys
        .iter()
        .map(|k| hmac_sha256(k, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]))
        .collect();
    let mut saw_v1 = false;
    for part in signature.split_whitespace() {
        let Some((version, value)) = part.split_once(',') else {
            continue;
        };
        if version != "v1" {
            continue;
        }
        saw_v1 = true;
        let Ok(given) = B64.decode(value) else {
            continue;
        };
        if expected.iter().any(|e| bool::from(e[..].ct_eq(&given[..]))) {
            return Ok(());
        }
    }
    Err(if saw_v1 {
        SignatureError::Mismatch
    } else {
        SignatureError::Malformed
    })
}

/// The WebSub / Jira `X-Hub-Signature` value: `sha256=<hex HMAC-SHA256 of the body>`, the
/// secret used as its UTF-8 bytes.
pub fn hub_sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, &[body])))
}

/// Verifies an `X-Hub-Signature` (or `X-Hub-Signature-256`) header against any of `secrets`.
/// The `sha256=` prefix is optional (ServiceNow scripts that sign often send bare hex); other
/// algorithms are refused as malformed.
pub fn hub_verify(
    secrets: &[Vec<u8>],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::Missing)?;
    let hex_part = match header.split_once('=') {
        Some(("sha256", h)) => h,
        Some(_) => return Err(SignatureError::Malformed),
        None => header,
    };
    let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed)?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    if secrets
        .iter()
        .any(|s| bool::from(hmac_sha256(s, &[body])[..].ct_eq(&given[..])))
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published with the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS: i64 = 1_649_367_553;
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn key() -> Vec<u8> {
        decode_standard_secret(SECRET).expect("secret")
    }

    fn verify(keys: &[Vec<u8>], sig: &str, now: i64) -> Result<(), SignatureError> {
        standard_verify(
            keys,
            Some(ID),
            Some(&TS.to_string()),
            Some(sig),
            BODY,
            now,
            300,
        )
    }

    #[test]
    fn signing_reproduces_the_published_test_vector() {
        assert_eq!(standard_sign(&key(), ID, TS, BODY), SIG);
    }

    #[test]
    fn the_published_vector_verifies_within_the_tolerance_only() {
        assert_eq!(verify(&[key()], SIG, TS), Ok(()));
        assert_eq!(verify(&[key()], SIG, TS + 300), Ok(()));
        assert_eq!(verify(&[key()], SIG, TS - 300), Ok(()));
        assert_eq!(
            verify(&[key()], SIG, TS + 301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify(&[key()], SIG, TS - 301),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn rotation_accepts_any_listed_signature_under_any_configured_key() {
        let old = b"an older secret".to_vec();
        let other = standard_sign(&old, ID, TS, BODY);
        // Several signatures in the header, the matching one last.
        let both = format!("v1a,AAAA {other} {SIG}");
        assert_eq!(verify(&[key()], &both, TS), Ok(()));
        // Several keys configured, the matching one second.
        assert_eq!(verify(&[old.clone(), key()], SIG, TS), Ok(()));
        assert_eq!(verify(&[old], SIG, TS), Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_changed_body_id_or_timestamp_is_a_mismatch() {
        let k = [key()];
        assert_eq!(
            standard_verify(
                &k,
                Some(ID),
                Some(&TS.to_string()),
                Some(SIG),
                b"{}",
                TS,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            standard_verify(
                &k,
                Some("msg_other"),
                Some(&TS.to_string()),
                Some(SIG),
                BODY,
                TS,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            standard_verify(
                &k,
                Some(ID),
                Some(&(TS + 1).to_string()),
                Some(SIG),
                BODY,
                TS,
                300
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_or_malformed_headers_have_their_own_codes() {
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            SignatureError,
        );
        let k = [key()];
        let ts = TS.to_string();
        let cases: [Case; 7] = [
            (None, Some(&ts), Some(SIG), SignatureError::BadDeliveryId),
            (
                Some("a.b"),
                Some(&ts),
                Some(SIG),
                SignatureError::BadDeliveryId,
            ),
            (Some(ID), None, Some(SIG), SignatureError::BadTimestamp),
            (
                Some(ID),
                Some("soon"),
                Some(SIG),
                SignatureError::BadTimestamp,
            ),
            (Some(ID), Some(&ts), None, SignatureError::Missing),
            (
                Some(ID),
                Some(&ts),
                Some("v2,abc"),
                SignatureError::Malformed,
            ),
            (
                Some(ID),
                Some(&ts),
                Some("v1,!!notbase64"),
                SignatureError::Mismatch,
            ),
        ];
        for (id, t, s, want) in cases {
            assert_eq!(
                standard_verify(&k, id, t, s, BODY, TS, 300),
                Err(want),
                "{id:?} {t:?} {s:?}"
            );
        }
        assert_eq!(decode_standard_secret("whsec_"), None);
        assert_eq!(decode_standard_secret("whsec_***"), None);
    }

    #[test]
    fn hub_signatures_round_trip_and_refuse_other_bodies() {
        let secret = b"It's a Secret to Everybody".to_vec();
        let secrets = [secret.clone()];
        let body = b"Hello, World!";
        let sig = hub_sign(&secret, body);
        // GitHub's published example for X-Hub-Signature-256 with this secret and body.
        assert_eq!(
            sig,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(hub_verify(&secrets, Some(&sig), body), Ok(()));
        assert_eq!(hub_verify(&secrets, Some(&sig[7..]), body), Ok(()));
        assert_eq!(
            hub_verify(&secrets, Some(&sig), b"Hello"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            hub_verify(&secrets, None, body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            hub_verify(&secrets, Some("sha1=00"), body),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            hub_verify(&secrets, Some("sha256=zz"), body),
            Err(SignatureError::Malformed)
        );
    }
}
