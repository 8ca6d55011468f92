//! API keys for automation. Keys appear in config only as SHA-256 hashes; presented keys
//! are hashed and compared in constant time against every configured key.

use super::{AuthError, AuthMethod, Grant, PoolScope, Principal, Role};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Prefix of every key sessiongate issues (lets secret scanners spot leaked keys).
pub const KEY_PREFIX: &str = "sg_";

/// One configured API key, as written in `[[auth.api_keys]]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Stable, non-secret name of the key (appears in the audit log as the actor).
    pub id: String,
    /// `sha256:<64 hex digits>` of the whole key.
    pub hash: String,
    /// Roles the key holds.
    pub roles: Vec<Role>,
    /// Pools the roles cover: `["*"]` for all.
    #[serde(default = "all_pools")]
    pub pools: Vec<String>,
    /// Optional expiry (RFC 3339); an expired key is refused with `credentials_expired`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// Optional display name for the audit log.
    #[serde(default)]
    pub display: Option<String>,
}

fn all_pools() -> Vec<String> {
    vec!["*".to_string()]
}

#[derive(Debug, Clone)]
struct StoredKey {
    digest: [u8; 32],
    cfg: ApiKeyConfig,
}

/// The configured keys, ready for lookups.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<StoredKey>,
}

/// Parses `sha256:<hex>` into a digest.
pub fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "must start with 'sha256:'".to_string())?;
    let bytes = hex::decode(hex_part).map_err(|_| "is not hexadecimal".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "must hold 64 hex digits".to_string())
}

/// The hash line for a key, as it goes into config.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// A fresh random key: `sg_` + 32 random bytes, base64url.
pub fn generate_key() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

/// The `[[auth.api_keys]]` block for a freshly generated key, as `sessiongate apikey new`
/// prints it: only the hash goes into config; the key itself is shown once to the operator.
pub fn config_snippet(
    id: &str,
    key: &str,
    roles: &[Role],
    pools: &[String],
    expires_at: Option<OffsetDateTime>,
) -> String {
    let q = |s: &str| toml_quote(s);
    let list =
        |v: &mut dyn Iterator<Item = String>| v.map(|s| q(&s)).collect::<Vec<_>>().join(", ");
    let mut out = format!(
        "[[auth.api_keys]]\nid = {}\nhash = {}\nroles = [{}]\npools = [{}]\n",
        q(id),
        q(&hash_key(key)),
        list(&mut roles.iter().map(|r| r.as_str().to_string())),
        list(&mut pools.iter().cloned()),
    );
    if let Some(e) = expires_at.and_then(|e| {
        e.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }) {
        out.push_str(&format!("expires_at = {}\n", q(&e)));
    }
    out
}

fn toml_quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

impl ApiKeys {
    /// The keys of `[[auth.api_keys]]`; errors name the key.
    pub fn new(cfgs: &[ApiKeyConfig]) -> Result<Self, crate::config::ConfigError> {
        let mut keys = Vec::with_capacity(cfgs.len());
        for (i, c) in cfgs.iter().enumerate() {
            let key = crate::config::Key::root("auth").field("api_keys").index(i);
            let digest = parse_hash(&c.hash).map_err(|e| key.field("hash").err(e))?;
            if c.id.trim().is_empty() {
                return Err(key.field("id").err("must not be empty"));
            }
            if keys.iter().any(|k: &StoredKey| k.cfg.id == c.id) {
                return Err(key.field("id").err(format!("'{}' is used twice", c.id)));
            }
            keys.push(StoredKey {
                digest,
                cfg: c.clone(),
            });
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Finds the key matching `presented`. Every configured key is compared, in constant time,
    /// so timing does not reveal which (or whether a) key matched.
    pub fn authenticate(
        &self,
        presented: &str,
        now: OffsetDateTime,
    ) -> Result<Principal, AuthError> {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&StoredKey> = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(k);
            }
        }
        let k = found.ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
        if k.cfg.expires_at.is_some_and(|e| e <= now) {
            return Err(AuthError::Expired);
        }
        let scope = PoolScope::Pools(k.cfg.pools.clone());
        Ok(Principal {
            id: format!("apikey:{}", k.cfg.id),
            display: k.cfg.display.clone().or_else(|| Some(k.cfg.id.clone())),
            method: AuthMethod::ApiKey,
            upn: None,
            grants: k
                .cfg
                .roles
                .iter()
                .map(|r| Grant {
                    role: *r,
                    pools: scope.clone(),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, key: &str, roles: Vec<Role>) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            hash: hash_key(key),
            roles,
            pools: vec!["*".into()],
            expires_at: None,
            display: None,
        }
    }

    #[test]
    fn right_key_authenticates_wrong_key_does_not() {
        let k = generate_key();
        assert!(k.starts_with(KEY_PREFIX));
        let keys = ApiKeys::new(&[cfg("a", &k, vec![Role::Operator])]).unwrap();
        let p = keys.authenticate(&k, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(p.id, "apikey:a");
        assert!(matches!(
            keys.authenticate("sg_nope", OffsetDateTime::now_utc()),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expired_key_is_refused() {
        let k = generate_key();
        let mut c = cfg("a", &k, vec![Role::Reader]);
        c.expires_at = Some(OffsetDateTime::now_utc() - time::Duration::minutes(1));
        let keys = ApiKeys::new(&[c]).unwrap();
        assert_eq!(
            keys.authenticate(&k, OffsetDateTime::now_utc()),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn config_snippet_parses_back_and_authenticates() {
        #[derive(serde::Deserialize)]
        struct Root {
            auth: crate::auth::AuthConfig,
        }
        let k = generate_key();
        let exp = OffsetDateTime::now_utc() + time::Duration::days(90);
        let s = config_snippet(
            "ticket\"ing",
            &k,
            &[Role::Operator, Role::Reader],
            &["hp1".to_string()],
            Some(exp),
        );
        assert!(!s.contains(&k), "the key itself must not be in the snippet");
        let r: Root = toml::from_str(&s).unwrap();
        let c = &r.auth.api_keys[0];
        assert_eq!(c.id, "ticket\"ing");
        assert_eq!(c.roles, vec![Role::Operator, Role::Reader]);
        assert_eq!(
            c.expires_at.map(|e| e.unix_timestamp()),
            Some(exp.unix_timestamp())
        );
        let keys = ApiKeys::new(&r.auth.api_keys).unwrap();
        assert!(keys.authenticate(&k, OffsetDateTime::now_utc()).is_ok());
    }

    #[test]
    fn bad_hash_names_the_key() {
        let mut c = cfg("a", "x", vec![Role::Reader]);
        c.hash = "md5:abc".into();
        let e = ApiKeys::new(&[c]).unwrap_err();
        assert_eq!(e.key, "auth.api_keys[0].hash", "{e}");
    }
}
