//! A test OpenID Connect issuer in the shape of Microsoft Entra ID v2.0, on loopback HTTPS:
//!
//! - `GET /{tenant}/v2.0/.well-known/openid-configuration` (discovery; `issuer` is
//!   `https://127.0.0.1:PORT/{tenant}/v2.0`),
//! - `GET /{tenant}/discovery/v2.0/keys` (JWKS: one RSA key for RS256 and one P-256 key for
//!   ES256, each with a `kid`; like Entra, the RSA key carries `use` but no `alg`).
//!
//! - `POST /{tenant}/oauth2/v2.0/token` (Entra's v2 token endpoint): `client_credentials`
//!   for the configured client (an app token, `idtyp: app`) and `password` (resource owner
//!   password credentials) for the configured users (a user token with `upn`,
//!   `preferred_username` and the user's app `roles`). `scope` must be `{audience}/.default`;
//!   failures answer Entra's error body (`error`, `error_description` with its AADSTS code,
//!   `error_codes`, `timestamp`, `trace_id`, `correlation_id`).
//!
//! It mints access tokens with arbitrary claims, algorithm and `kid`, rotates its keys (new
//! `kid`s, old ones removed from the JWKS), and mints the forgeries a verifier must refuse:
//! signed by a key not in the JWKS, `alg: none`, and HS256 keyed with the RSA public key.

use super::common::{EmulatorTls, Faults, Running, serve_tls};
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, KeyAlgorithm, PublicKeyUse},
};
use rand::Rng;
use serde_json::{Value, json};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One signing key and its public JWK.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    enc: EncodingKey,
    jwk: Value,
    /// SubjectPublicKeyInfo PEM (the HMAC-confusion forgery uses it as the secret).
    public_pem: String,
}

struct Keys {
    rsa: SigningKey,
    ec: SigningKey,
}

struct IssuerState {
    tenant: String,
    issuer: String,
    keys: Mutex<Keys>,
    jwks_hits: AtomicU64,
    keys_failing: AtomicBool,
    grants: Mutex<Grants>,
}

/// Who the token endpoint issues tokens to, and for what.
#[derive(Debug, Clone, Default)]
struct Grants {
    audience: String,
    client_id: String,
    client_secret: String,
    /// App roles of the client's own (client-credentials) tokens.
    client_roles: Vec<String>,
    /// UPN (lower case) → (password, app roles).
    users: std::collections::BTreeMap<String, (String, Vec<String>)>,
    lifetime_secs: i64,
}

/// What the token endpoint accepts (see [`TestIssuer::set_token_endpoint`]).
#[derive(Debug, Clone)]
pub struct TokenEndpoint {
    /// The resource tokens are issued for (`aud`); `scope` must be `{audience}/.default`.
    pub audience: String,
    pub client_id: String,
    pub client_secret: String,
    /// App roles in the client's own tokens.
    pub client_roles: Vec<String>,
    /// `(upn, password, app roles)` of the users the `password` grant signs in.
    pub users: Vec<(String, String, Vec<String>)>,
    /// `expires_in` of issued tokens.
    pub lifetime_secs: u32,
}

/// A running test issuer. Dropping it stops the server.
pub struct TestIssuer {
    state: Arc<IssuerState>,
    tls: EmulatorTls,
    faults: Arc<Faults>,
    running: Running,
}

fn new_kid() -> String {
    hex::encode(rand::rng().random::<[u8; 10]>())
}

fn rsa_key() -> Result<SigningKey, BoxError> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let enc = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes())?;
    let kid = new_kid();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = None;
    Ok(SigningKey {
        kid,
        enc,
        jwk: serde_json::to_value(&jwk)?,
        public_pem: kp.public_key_pem(),
    })
}

fn ec_key() -> Result<SigningKey, BoxError> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let enc = EncodingKey::from_ec_der(&kp.serialize_der());
    let kid = new_kid();
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
    Ok(SigningKey {
        kid,
        enc,
        jwk: serde_json::to_value(&jwk)?,
        public_pem: kp.public_key_pem(),
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl TestIssuer {
    /// Starts an issuer for tenant `contoso-test` with a fresh emulator CA.
    pub async fn start() -> Result<Self, BoxError> {
        Self::start_with(EmulatorTls::generate()?, "contoso-test").await
    }

    /// Starts an issuer for `tenant`, serving with `tls` (share one CA among emulators).
    pub async fn start_with(tls: EmulatorTls, tenant: &str) -> Result<Self, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(listener, tls, tenant).await
    }

    /// [`TestIssuer::start_with`] on a listener of the caller's (`emulate oidc --listen`).
    pub async fn start_on(
        listener: TcpListener,
        tls: EmulatorTls,
        tenant: &str,
    ) -> Result<Self, BoxError> {
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        let port = addr.port();
        let issuer = format!("https://{host}:{port}/{tenant}/v2.0");
        let state = Arc::new(IssuerState {
            tenant: tenant.to_string(),
            issuer,
            keys: Mutex::new(Keys {
                rsa: rsa_key()?,
                ec: ec_key()?,
            }),
            jwks_hits: AtomicU64::new(0),
            keys_failing: AtomicBool::new(false),
            grants: Mutex::new(Grants::default()),
        });
        let router = Router::new()
            .route(
                "/{tenant}/v2.0/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/{tenant}/discovery/v2.0/keys", get(jwks))
            .route(
                "/{tenant}/oauth2/v2.0/token",
                axum::routing::post(token_endpoint),
            )
            .with_state(state.clone());
        let faults = Faults::new(Default::default());
        let running = serve_tls(listener, &tls, router, faults.clone(), server_error)?;
        Ok(Self {
            state,
            tls,
            faults,
            running,
        })
    }

    /// The `iss` value and the base of the discovery URL.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }
    pub fn tenant(&self) -> &str {
        &self.state.tenant
    }
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.state.issuer)
    }
    pub fn base_url(&self) -> &str {
        &self.running.base_url
    }
    /// The CA (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        self.tls.ca_pem()
    }
    pub fn tls(&self) -> &EmulatorTls {
        &self.tls
    }
    /// Latency / 5xx / dropped-connection injection for every route.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }
    /// Makes the JWKS endpoint answer 503 (discovery keeps working).
    pub fn set_keys_failing(&self, failing: bool) {
        self.state.keys_failing.store(failing, Ordering::Relaxed);
    }
    /// Opens the token endpoint for this client and these users (closed until then: every
    /// request is refused as from an unknown client).
    pub fn set_token_endpoint(&self, t: TokenEndpoint) {
        let mut g = self.state.grants.lock().unwrap_or_else(|p| p.into_inner());
        *g = Grants {
            audience: t.audience,
            client_id: t.client_id,
            client_secret: t.client_secret,
            client_roles: t.client_roles,
            users: t
                .users
                .into_iter()
                .map(|(u, pw, roles)| (u.to_ascii_lowercase(), (pw, roles)))
                .collect(),
            lifetime_secs: i64::from(t.lifetime_secs.max(1)),
        };
    }

    /// `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/oauth2/v2.0/token",
            self.state.issuer.trim_end_matches("/v2.0")
        )
    }

    /// `{base}/{tenant}/discovery/v2.0/keys`.
    pub fn jwks_url(&self) -> String {
        format!(
            "{}/{}/discovery/v2.0/keys",
            self.running.base_url, self.state.tenant
        )
    }

    /// How many times the JWKS was requested.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_hits.load(Ordering::Relaxed)
    }
    /// `kid` of the current RSA (RS256) key.
    pub fn rsa_kid(&self) -> String {
        self.keys().rsa.kid.clone()
    }
    fn keys(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.state.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Entra-like access-token claims for `audience`: `iss`, `aud`, `iat`, `nbf` (now),
    /// `exp` (in an hour), `tid`, `oid`, `sub`, `preferred_username`, `ver`. Add `roles` /
    /// `groups` or change anything before minting.
    pub fn claims(&self, audience: &str) -> Value {
        let t = now();
        json!({
            "iss": self.state.issuer,
            "aud": audience,
            "iat": t,
            "nbf": t,
            "exp": t + 3600,
            "tid": self.state.tenant,
            "oid": uuid::Uuid::new_v4().to_string(),
            "sub": "test-subject",
            "preferred_username": "jane@contoso.com",
            "ver": "2.0",
        })
    }

    /// An RS256 token signed with the current RSA key.
    pub fn mint(&self, claims: &Value) -> Result<String, BoxError> {
        self.mint_with(Algorithm::RS256, None, claims)
    }

    /// A token with `alg`, signed by the current key of that family (RSA for RS*/PS*, EC
    /// P-256 for ES256; HS* are keyed with the RSA public key PEM), with header `kid` set to
    /// `kid` (default: the signing key's own `kid`).
    pub fn mint_with(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        claims: &Value,
    ) -> Result<String, BoxError> {
        let keys = self.keys();
        let (enc, own_kid) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (keys.rsa.enc.clone(), keys.rsa.kid.clone()),
            Algorithm::ES256 => (keys.ec.enc.clone(), keys.ec.kid.clone()),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => (
                EncodingKey::from_secret(keys.rsa.public_pem.as_bytes())?,
                keys.rsa.kid.clone(),
            ),
            other => return Err(format!("the test issuer cannot sign {other:?}").into()),
        };
        drop(keys);
        let mut h = Header::new(alg);
        h.kid = Some(kid.map_or(own_kid, str::to_string));
        Ok(jsonwebtoken::encode(&h, claims, &enc)?)
    }

    /// Replaces both keys with fresh ones (new `kid`s); the old keys leave the JWKS.
    /// Returns the new RSA `kid`.
    pub fn rotate(&self) -> Result<String, BoxError> {
        let (rsa, ec) = (rsa_key()?, ec_key()?);
        let kid = rsa.kid.clone();
        let mut k = self.keys();
        k.rsa = rsa;
        k.ec = ec;
        Ok(kid)
    }

    /// Forgery: RS256 signed by a fresh key that is not in the JWKS, claiming the current
    /// RSA `kid`.
    pub fn forge_unknown_key(&self, claims: &Value) -> Result<String, BoxError> {
        let rogue = rsa_key()?;
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.rsa_kid());
        Ok(jsonwebtoken::encode(&h, claims, &rogue.enc)?)
    }

    /// Forgery: `{"alg":"none"}` with an empty signature, claiming the current RSA `kid`.
    pub fn forge_alg_none(&self, claims: &Value) -> Result<String, BoxError> {
        let header = json!({"alg": "none", "typ": "JWT", "kid": self.rsa_kid()});
        Ok(format!(
            "{}.{}.",
            b64(&serde_json::to_vec(&header)?),
            b64(&serde_json::to_vec(claims)?)
        ))
    }

    /// Forgery: HS256 keyed with the RSA public key (PEM bytes, as published), claiming the
    /// RSA `kid` — accepted by verifiers that let the token pick the algorithm.
    pub fn forge_hmac_confusion(&self, claims: &Value) -> Result<String, BoxError> {
        self.mint_with(Algorithm::HS256, None, claims)
    }
}

async fn discovery(State(s): State<Arc<IssuerState>>, Path(tenant): Path<String>) -> Response {
    if tenant != s.tenant {
        return entra_not_found(&tenant);
    }
    let base = s.issuer.trim_end_matches("/v2.0").to_string();
    let host = base.trim_end_matches(&format!("/{}", s.tenant)).to_string();
    Json(json!({
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{host}/{}/discovery/v2.0/keys", s.tenant),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": s.issuer,
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "oid", "tid", "roles", "groups", "preferred_username", "name", "ver"],
        "tenant_region_scope": "EU",
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IssuerState>>, Path(tenant): Path<String>) -> Response {
    s.jwks_hits.fetch_add(1, Ordering::Relaxed);
    if tenant != s.tenant {
        return entra_not_found(&tenant);
    }
    if s.keys_failing.load(Ordering::Relaxed) {
        return server_error();
    }
    let k = s.keys.lock().unwrap_or_else(|p| p.into_inner());
    let mut rsa = k.rsa.jwk.clone();
    if let Some(o) = rsa.as_object_mut() {
        // Entra publishes the issuer beside each key; verifiers must tolerate extra members.
        o.insert("issuer".into(), Value::String(s.issuer.clone()));
    }
    Json(json!({ "keys": [rsa, k.ec.jwk.clone()] })).into_response()
}

/// Entra's error body for a token request: `status`, `error`, and `AADSTS{code}: {text}`.
fn token_error(status: StatusCode, error: &str, code: u32, text: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let corr = uuid::Uuid::new_v4();
    let ts = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        ts.year(),
        u8::from(ts.month()),
        ts.day(),
        ts.hour(),
        ts.minute(),
        ts.second()
    );
    (
        status,
        Json(json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {stamp}"),
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace.to_string(),
            "correlation_id": corr.to_string(),
        })),
    )
        .into_response()
}

/// A stable object id for a name (the same user gets the same `oid` in every token).
fn object_id(name: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.to_ascii_lowercase().as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// `POST /{tenant}/oauth2/v2.0/token` (form-encoded, like Entra's).
async fn token_endpoint(
    State(s): State<Arc<IssuerState>>,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if tenant != s.tenant {
        return entra_not_found(&tenant);
    }
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    for k in ["grant_type", "client_id", "scope"] {
        if field(k).is_empty() {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                &format!("The request body must contain the following parameter: '{k}'."),
            );
        }
    }
    let g = s.grants.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if g.client_id.is_empty() || field("client_id") != g.client_id {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory '{}'.",
                field("client_id").chars().take(64).collect::<String>(),
                s.tenant
            ),
        );
    }
    let want_scope = format!("{}/.default", g.audience);
    let scopes: Vec<&str> = field("scope")
        .split(' ')
        .filter(|x| !x.is_empty())
        .collect();
    if !scopes.contains(&want_scope.as_str())
        || scopes.iter().any(|x| {
            *x != want_scope && !["openid", "profile", "email", "offline_access"].contains(x)
        })
    {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            &format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {} is not valid.",
                field("scope").chars().take(200).collect::<String>()
            ),
        );
    }
    let t = now();
    let mut claims = json!({
        "aud": g.audience,
        "iss": s.issuer,
        "iat": t,
        "nbf": t,
        "exp": t + g.lifetime_secs,
        "azp": g.client_id,
        "azpacr": "1",
        "tid": s.tenant,
        "ver": "2.0",
    });
    match field("grant_type") {
        "client_credentials" => {
            if field("client_secret") != g.client_secret {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
                );
            }
            let oid = object_id(&format!("app:{}", g.client_id));
            claims["oid"] = json!(oid);
            claims["sub"] = json!(oid);
            claims["idtyp"] = json!("app");
            if !g.client_roles.is_empty() {
                claims["roles"] = json!(g.client_roles);
            }
        }
        "password" => {
            // A public client sends no secret; a confidential one must send the right one.
            if form.contains_key("client_secret") && field("client_secret") != g.client_secret {
                return token_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
                );
            }
            let upn = field("username").to_ascii_lowercase();
            let Some((_, roles)) = g.users.get(&upn).filter(|(pw, _)| pw == field("password"))
            else {
                return token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50126,
                    "Error validating credentials due to invalid username or password.",
                );
            };
            let oid = object_id(&upn);
            claims["oid"] = json!(oid);
            claims["sub"] = json!(object_id(&format!("sub:{upn}")));
            claims["upn"] = json!(upn);
            claims["preferred_username"] = json!(upn);
            claims["name"] = json!(upn.split('@').next().unwrap_or(&upn));
            claims["scp"] = json!("user_impersonation");
            if !roles.is_empty() {
                claims["roles"] = json!(roles);
            }
        }
        other => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                &format!(
                    "The app requested an unsupported grant type '{}'.",
                    other.chars().take(64).collect::<String>()
                ),
            );
        }
    }
    let keys = s.keys.lock().unwrap_or_else(|p| p.into_inner());
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(keys.rsa.kid.clone());
    h.typ = Some("JWT".into());
    let token = match jsonwebtoken::encode(&h, &claims, &keys.rsa.enc) {
        Ok(t) => t,
        Err(_) => return server_error(),
    };
    drop(keys);
    Json(json!({
        "token_type": "Bearer",
        "expires_in": g.lifetime_secs,
        "ext_expires_in": g.lifetime_secs,
        "access_token": token,
    }))
    .into_response()
}

fn entra_not_found(tenant: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": "invalid_tenant",
            "error_description": format!("AADSTS90002: Tenant '{}' not found.", tenant.chars().take(64).collect::<String>()),
        })),
    )
        .into_response()
}

fn server_error() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred. Please try again."})),
    )
        .into_response()
}
