//! `sessiongate webhook sign`: the headers a sender would send with a body, for curl users and
//! for testing a source (the same signing code the receiver verifies against).

use super::config::{SourceConfig, SourceKind};
use super::signature::{decode_standard_secret, hub_sign, standard_sign};

/// What to sign with.
#[derive(Debug, Clone)]
pub struct SignRequest<'a> {
    pub kind: SourceKind,
    /// The secret as stored (a `whsec_` secret for generic, the text for jira and servicenow).
    pub secret: &'a str,
    /// servicenow: the HMAC header; any kind: the delivery id header when it is not the kind's
    /// default.
    pub hmac_header: Option<&'a str>,
    pub delivery_id_header: Option<&'a str>,
    pub id: String,
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// The source's kind, HMAC header and delivery id header from its configuration.
pub fn from_config(s: &SourceConfig) -> (SourceKind, Option<String>, Option<String>) {
    let id_header = s
        .delivery_id
        .clone()
        .filter(|d| !d.starts_with('/'))
        .or_else(|| s.kind.default_delivery_id().map(str::to_string));
    (s.kind, s.hmac.as_ref().map(|h| h.header.clone()), id_header)
}

/// The headers to send, in order.
pub fn sign(r: &SignRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    match r.kind {
        SourceKind::Generic => {
            let key = decode_standard_secret(r.secret)
                .ok_or("the secret is not a Standard Webhooks secret (whsec_ + base64)")?;
            if r.id.contains('.') || r.id.is_empty() {
                return Err("the id must be non-empty without '.'".into());
            }
            out.push(("webhook-id".into(), r.id.clone()));
            out.push(("webhook-timestamp".into(), r.timestamp.to_string()));
            out.push((
                "webhook-signature".into(),
                standard_sign(&key, &r.id, r.timestamp, r.body),
            ));
        }
        SourceKind::Jira => {
            out.push((
                "X-Hub-Signature".into(),
                hub_sign(r.secret.as_bytes(), r.body),
            ));
            out.push((
                r.delivery_id_header
                    .unwrap_or("X-Atlassian-Webhook-Identifier")
                    .to_string(),
                r.id.clone(),
            ));
        }
        SourceKind::Servicenow => {
            let h = r
                .hmac_header
                .ok_or("this servicenow source signs with no HMAC header (hmac.header)")?;
            out.push((h.to_string(), hub_sign(r.secret.as_bytes(), r.body)));
            if let Some(d) = r.delivery_id_header {
                out.push((d.to_string(), r.id.clone()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_headers_reproduce_the_published_vector() {
        let h = sign(&SignRequest {
            kind: SourceKind::Generic,
            secret: "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            hmac_header: None,
            delivery_id_header: None,
            id: "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk".into(),
            timestamp: 1_649_367_553,
            body: br#"{"email":"test@example.com","username":"test_user"}"#,
        })
        .unwrap();
        assert_eq!(
            h[2],
            (
                "webhook-signature".to_string(),
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=".to_string()
            )
        );
    }
}
