//! Token acquisition for the classic broker: azure_identity credentials on our own reqwest
//! client (so the CA bundle applies), plus a certificate credential built as a client assertion
//! (azure_identity's own certificate credential needs OpenSSL, which we do not ship).

use super::config::ClassicCredentialConfig;
use crate::config::{ConfigError, Key};
use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    http::{ClientMethodOptions, ClientOptions, ExponentialRetryOptions, RetryOptions},
};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertion, ClientAssertionCredential,
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions,
    ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use base64::Engine;
use std::{fmt, sync::Arc};

fn client_options(http: &reqwest::Client, authority_host: &str) -> ClientOptions {
    let mut custom = CustomConfiguration::default();
    custom.authority_host = authority_host.trim_end_matches('/').to_string();
    ClientOptions {
        transport: Some(crate::httpclient::TracedTransport::transport(http)),
        cloud: Some(Arc::new(CloudConfiguration::from(custom))),
        // Bounded: a token endpoint answering 5xx must not hold a session action for a minute.
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            max_retries: 2,
            max_total_elapsed: azure_core::time::Duration::seconds(10),
            max_delay: azure_core::time::Duration::seconds(2),
            ..ExponentialRetryOptions::default()
        }),
        ..ClientOptions::default()
    }
}

fn read_secret(
    key: &Key,
    secret_env: Option<&str>,
    secret_file: Option<&std::path::Path>,
) -> Result<String, ConfigError> {
    match (secret_env, secret_file) {
        (Some(var), None) => std::env::var(var)
            .map(|s| s.trim().to_string())
            .map_err(|_| {
                key.field("secret_env")
                    .err(format!("environment variable {var} is not set"))
            }),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                key.field("secret_file")
                    .err(format!("reading {}: {e}", path.display()))
            }),
        _ => Err(key.err("set exactly one of secret_env or secret_file")),
    }
}

/// Builds the token credential named by the pool's `credential` section.
pub fn build_credential(
    pool: &str,
    cfg: &ClassicCredentialConfig,
    http: &reqwest::Client,
    authority_host: &str,
) -> Result<Arc<dyn TokenCredential>, ConfigError> {
    let key = Key::pool(pool).field("credential");
    match cfg {
        ClassicCredentialConfig::ClientSecret {
            tenant_id,
            client_id,
            secret_env,
            secret_file,
        } => {
            let secret = read_secret(&key, secret_env.as_deref(), secret_file.as_deref())?;
            if secret.is_empty() {
                return Err(key.err("the client secret is empty"));
            }
            let c = ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret),
                Some(ClientSecretCredentialOptions {
                    client_options: client_options(http, authority_host),
                }),
            )
            .map_err(|e| key.err(e.to_string()))?;
            Ok(c)
        }
        ClassicCredentialConfig::ClientCertificate {
            tenant_id,
            client_id,
            cert_file,
        } => {
            let pem = std::fs::read_to_string(cert_file).map_err(|e| {
                key.field("cert_file")
                    .err(format!("reading {}: {e}", cert_file.display()))
            })?;
            let aud = format!(
                "{}/{tenant_id}/oauth2/v2.0/token",
                authority_host.trim_end_matches('/')
            );
            let assertion = CertificateAssertion::from_pem(client_id, &aud, &pem)
                .map_err(|e| key.field("cert_file").err(e))?;
            let c = ClientAssertionCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                assertion,
                Some(ClientAssertionCredentialOptions {
                    client_options: client_options(http, authority_host),
                }),
            )
            .map_err(|e| key.err(e.to_string()))?;
            Ok(c)
        }
        ClassicCredentialConfig::ManagedIdentity { client_id } => {
            let c = ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options: client_options(http, authority_host),
            }))
            .map_err(|e| key.err(e.to_string()))?;
            Ok(c)
        }
        ClassicCredentialConfig::AzureCli { tenant_id } => {
            let c = AzureCliCredential::new(Some(AzureCliCredentialOptions {
                tenant_id: tenant_id.clone(),
                ..AzureCliCredentialOptions::default()
            }))
            .map_err(|e| key.err(e.to_string()))?;
            Ok(c)
        }
    }
}

/// A client assertion (RFC 7523 JWT, RS256) signed with a certificate's private key, in the
/// shape Entra ID expects for certificate credentials (`x5t` and `x5t#S256` thumbprints).
pub struct CertificateAssertion {
    client_id: String,
    audience: String,
    key: jsonwebtoken::EncodingKey,
    x5t: String,
    x5t_s256: String,
}

impl fmt::Debug for CertificateAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAssertion")
            .field("client_id", &self.client_id)
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateAssertion {
    /// Reads the first certificate and the (RSA) private key from one PEM file.
    pub fn from_pem(client_id: &str, audience: &str, pem: &str) -> Result<Self, String> {
        use rustls_pki_types::pem::{Error as PemError, PemObject};
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("no CERTIFICATE block found")?
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(k) => k,
            Err(PemError::NoItemsFound) => return Err("no private key block found".into()),
            Err(e) => return Err(format!("bad private key PEM: {e}")),
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = match key {
            PrivateKeyDer::Pkcs1(k) => {
                jsonwebtoken::EncodingKey::from_rsa_der(k.secret_pkcs1_der())
            }
            PrivateKeyDer::Pkcs8(k) => {
                let text = format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    b64.encode(k.secret_pkcs8_der())
                );
                jsonwebtoken::EncodingKey::from_rsa_pem(text.as_bytes())
                    .map_err(|_| "the private key is not an RSA key (RS256 is required)")?
            }
            _ => return Err("the private key is not an RSA key (RS256 is required)".into()),
        };
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x5t = {
            use sha1::Digest;
            url.encode(sha1::Sha1::digest(cert.as_ref()))
        };
        let x5t_s256 = {
            use sha2::Digest;
            url.encode(sha2::Sha256::digest(cert.as_ref()))
        };
        let me = Self {
            client_id: client_id.to_string(),
            audience: audience.to_string(),
            key,
            x5t,
            x5t_s256,
        };
        // Sign once now so a wrong key fails at start-up, not at the first request.
        me.sign()
            .map_err(|e| format!("cannot sign with the private key: {e}"))?;
        Ok(me)
    }

    /// A fresh signed assertion (valid for 10 minutes).
    pub fn sign(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.x5t = Some(self.x5t.clone());
        header.x5t_s256 = Some(self.x5t_s256.clone());
        let claims = serde_json::json!({
            "aud": self.audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        });
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

#[async_trait::async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(
        &self,
        _options: Option<ClientMethodOptions<'_>>,
    ) -> azure_core::Result<String> {
        self.sign().map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                format!("signing the client assertion failed: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_assertion_is_rs256_with_thumbprints() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sessiongate".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        let a = CertificateAssertion::from_pem(
            "app-1",
            "https://login.example/t/oauth2/v2.0/token",
            &pem,
        )
        .unwrap();
        let jwt = a.sign().unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
        assert_eq!(header.x5t.as_deref().map(str::len), Some(27));
        assert!(header.x5t_s256.is_some());
        let dk = jsonwebtoken::DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_audience(&["https://login.example/t/oauth2/v2.0/token"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &dk, &v).unwrap();
        assert_eq!(data.claims["iss"], "app-1");
        assert_eq!(data.claims["sub"], "app-1");
    }
}
