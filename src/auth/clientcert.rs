//! Client certificates mapped to principals (`[[auth.client_certs]]`).
//!
//! The TLS layer (`crate::tls`) verifies the chain against `server.tls.client_ca_file` during
//! the handshake; what arrives here is the already verified leaf, parsed once per connection
//! into a [`PeerCert`]. An entry matches the leaf on exactly one of its subject common name, a
//! DNS or URI subject alternative name, or its SHA-256 fingerprint, and gives the principal
//! `cert:<id>` its roles over its pools, exactly like an API key.

use super::{AuthError, AuthMethod, Grant, PoolScope, Presented, Principal, Role};
use crate::config::{ConfigError, Key};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One `[[auth.client_certs]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// Stable name of the client; the principal is `cert:<id>`.
    pub id: String,
    /// Match on the subject's common name (case-insensitive).
    #[serde(default)]
    pub subject_cn: Option<String>,
    /// Match on a DNS subject alternative name (case-insensitive).
    #[serde(default)]
    pub san_dns: Option<String>,
    /// Match on a URI subject alternative name (exact).
    #[serde(default)]
    pub san_uri: Option<String>,
    /// Match on the SHA-256 fingerprint of the certificate (DER): 64 hex digits, colons and a
    /// `sha256:` prefix allowed (`openssl x509 -fingerprint -sha256` output pastes as is).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Roles the client holds.
    pub roles: Vec<Role>,
    /// Pools the roles cover: `["*"]` for all.
    #[serde(default = "all_pools")]
    pub pools: Vec<String>,
    /// Optional display name for the audit log.
    #[serde(default)]
    pub display: Option<String>,
}

fn all_pools() -> Vec<String> {
    vec!["*".to_string()]
}

/// What a verified client certificate says, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// SHA-256 of the leaf certificate's DER.
    pub sha256: [u8; 32],
    /// The subject's common names (usually one).
    pub subject_cn: Vec<String>,
    pub san_dns: Vec<String>,
    pub san_uri: Vec<String>,
}

impl PeerCert {
    /// Reads the leaf certificate. A certificate the TLS layer verified but this parser cannot
    /// read still has a fingerprint (names stay empty).
    pub fn from_der(der: &[u8]) -> Self {
        let sha256: [u8; 32] = Sha256::digest(der).into();
        let mut out = Self {
            sha256,
            subject_cn: Vec::new(),
            san_dns: Vec::new(),
            san_uri: Vec::new(),
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return out;
        };
        out.subject_cn = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        out.san_dns.push((*d).to_string())
                    }
                    x509_parser::extensions::GeneralName::URI(u) => {
                        out.san_uri.push((*u).to_string())
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The fingerprint as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// What was presented, for the audit record: the method and a non-secret hint (the
    /// subject CN, else the fingerprint's first 16 hex digits).
    pub fn presented(&self) -> Presented {
        let hint = self
            .subject_cn
            .first()
            .map(|cn| super::jwt::sanitize(cn, 64))
            .filter(|cn| !cn.is_empty())
            .unwrap_or_else(|| format!("sha256:{}", &self.fingerprint_hex()[..16]));
        Presented {
            method: Some(AuthMethod::ClientCert.as_str().into()),
            hint: Some(hint),
        }
    }
}

/// How one entry matches.
#[derive(Debug, Clone)]
enum Match {
    SubjectCn(String),
    SanDns(String),
    SanUri(String),
    Sha256([u8; 32]),
}

impl Match {
    fn matches(&self, c: &PeerCert) -> bool {
        match self {
            Match::SubjectCn(cn) => c.subject_cn.iter().any(|x| x.eq_ignore_ascii_case(cn)),
            Match::SanDns(d) => c.san_dns.iter().any(|x| x.eq_ignore_ascii_case(d)),
            Match::SanUri(u) => c.san_uri.iter().any(|x| x == u),
            Match::Sha256(h) => bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &c.sha256[..])),
        }
    }
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally with colons and a `sha256:` prefix.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let digits: String = t.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&digits).map_err(|_| "is not hexadecimal".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "must hold 64 hex digits (a SHA-256 fingerprint)".to_string())
}

/// The configured mappings, ready for lookups.
#[derive(Debug, Clone, Default)]
pub struct ClientCerts {
    entries: Vec<(Match, ClientCertConfig)>,
}

impl ClientCerts {
    /// The entries of `[[auth.client_certs]]`; errors name the key.
    pub fn new(cfgs: &[ClientCertConfig]) -> Result<Self, ConfigError> {
        let mut entries: Vec<(Match, ClientCertConfig)> = Vec::with_capacity(cfgs.len());
        for (i, c) in cfgs.iter().enumerate() {
            let key = Key::root("auth").field("client_certs").index(i);
            if c.id.trim().is_empty() {
                return Err(key.field("id").err("must not be empty"));
            }
            if entries.iter().any(|(_, e)| e.id == c.id) {
                return Err(key.field("id").err(format!("'{}' is used twice", c.id)));
            }
            if c.roles.is_empty() {
                return Err(key.field("roles").err("must not be empty"));
            }
            let nonempty =
                |field: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
                    match v {
                        Some(s) if s.trim().is_empty() => {
                            Err(key.field(field).err("must not be empty"))
                        }
                        Some(s) => Ok(Some(s.trim().to_string())),
                        None => Ok(None),
                    }
                };
            let mut found = Vec::new();
            if let Some(cn) = nonempty("subject_cn", &c.subject_cn)? {
                found.push(Match::SubjectCn(cn));
            }
            if let Some(d) = nonempty("san_dns", &c.san_dns)? {
                found.push(Match::SanDns(d));
            }
            if let Some(u) = nonempty("san_uri", &c.san_uri)? {
                found.push(Match::SanUri(u));
            }
            if let Some(h) = nonempty("sha256", &c.sha256)? {
                found.push(Match::Sha256(
                    parse_fingerprint(&h).map_err(|e| key.field("sha256").err(e))?,
                ));
            }
            if found.len() != 1 {
                return Err(
                    key.err("must set exactly one of subject_cn, san_dns, san_uri or sha256")
                );
            }
            let m = found.remove(0);
            entries.push((m, c.clone()));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of the first entry matching `cert`, in configuration order.
    pub fn authenticate(&self, cert: &PeerCert) -> Result<Principal, AuthError> {
        let (_, c) = self
            .entries
            .iter()
            .find(|(m, _)| m.matches(cert))
            .ok_or(AuthError::ClientCertUnmapped)?;
        let scope = PoolScope::Pools(c.pools.clone());
        Ok(Principal {
            id: format!("cert:{}", c.id),
            display: c.display.clone().or_else(|| Some(c.id.clone())),
            method: AuthMethod::ClientCert,
            upn: None,
            grants: c
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

    fn cert(cn: &str, dns: &[&str], uri: &[&str]) -> (Vec<u8>, PeerCert) {
        let mut p =
            rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        for u in uri {
            p.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(u.to_string()).unwrap(),
            ));
        }
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        let der = c.der().to_vec();
        let pc = PeerCert::from_der(&der);
        (der, pc)
    }

    fn entry(id: &str) -> ClientCertConfig {
        ClientCertConfig {
            id: id.into(),
            subject_cn: None,
            san_dns: None,
            san_uri: None,
            sha256: None,
            roles: vec![Role::Operator],
            pools: vec!["*".into()],
            display: None,
        }
    }

    #[test]
    fn reads_names_and_fingerprint() {
        let (der, pc) = cert(
            "ServiceNow MID",
            &["mid.contoso.com"],
            &["spiffe://contoso/snow"],
        );
        assert_eq!(pc.subject_cn, vec!["ServiceNow MID"]);
        assert_eq!(pc.san_dns, vec!["mid.contoso.com"]);
        assert_eq!(pc.san_uri, vec!["spiffe://contoso/snow"]);
        let fp: [u8; 32] = Sha256::digest(&der).into();
        assert_eq!(pc.sha256, fp);
        assert_eq!(pc.presented().hint.as_deref(), Some("ServiceNow MID"));
        assert_eq!(pc.presented().method.as_deref(), Some("client_cert"));
    }

    #[test]
    fn each_match_kind_maps_and_unmapped_is_refused() {
        let (_, pc) = cert("snow", &["mid.contoso.com"], &["spiffe://contoso/snow"]);
        let colons = pc
            .sha256
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        type Set = fn(&mut ClientCertConfig, String);
        let cases: Vec<(&str, Set, String)> = vec![
            ("cn", |e, v| e.subject_cn = Some(v), "SNOW".into()),
            ("dns", |e, v| e.san_dns = Some(v), "MID.contoso.com".into()),
            (
                "uri",
                |e, v| e.san_uri = Some(v),
                "spiffe://contoso/snow".into(),
            ),
            ("fp", |e, v| e.sha256 = Some(v), format!("sha256:{colons}")),
        ];
        for (id, set, v) in cases {
            let mut e = entry(id);
            set(&mut e, v);
            let m = ClientCerts::new(&[e]).unwrap();
            let p = m.authenticate(&pc).unwrap();
            assert_eq!(p.id, format!("cert:{id}"));
            assert_eq!(p.method, AuthMethod::ClientCert);
            assert_eq!(p.role_names(), vec!["operator"]);
        }
        let mut e = entry("other");
        e.subject_cn = Some("someone else".into());
        let m = ClientCerts::new(&[e]).unwrap();
        assert_eq!(m.authenticate(&pc), Err(AuthError::ClientCertUnmapped));
        assert_eq!(AuthError::ClientCertUnmapped.code(), "client_cert_unmapped");
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = ClientCerts::new(&[entry("a")]).unwrap_err();
        assert_eq!(e.key, "auth.client_certs[0]");
        let mut two = entry("a");
        two.subject_cn = Some("x".into());
        two.san_dns = Some("y".into());
        assert_eq!(
            ClientCerts::new(&[two]).unwrap_err().key,
            "auth.client_certs[0]"
        );
        let mut bad = entry("a");
        bad.sha256 = Some("abcd".into());
        assert_eq!(
            ClientCerts::new(&[bad]).unwrap_err().key,
            "auth.client_certs[0].sha256"
        );
        let mut a = entry("a");
        a.subject_cn = Some("x".into());
        let b = a.clone();
        assert_eq!(
            ClientCerts::new(&[a.clone(), b]).unwrap_err().key,
            "auth.client_certs[1].id"
        );
        a.roles.clear();
        assert_eq!(
            ClientCerts::new(&[a]).unwrap_err().key,
            "auth.client_certs[0].roles"
        );
    }
}
