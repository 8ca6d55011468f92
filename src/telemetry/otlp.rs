//! `[telemetry.otlp]`: the OpenTelemetry trace export (OTLP over HTTP, protobuf or JSON),
//! off unless the table is present. The export goes through our own reqwest client
//! ([`ExportClient`]): no second HTTP stack, the same CA handling as every outbound call.

use crate::config::{ConfigError, Key};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use serde::Deserialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// The OTLP/HTTP path of traces, appended to `endpoint`.
pub const TRACES_PATH: &str = "/v1/traces";

/// The wire encoding of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OtlpProtocol {
    /// `application/x-protobuf` (the OTLP/HTTP default).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// `application/json`.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// `[telemetry.otlp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://collector:4318`); spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Extra request headers with values that are not secret.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose value is read from an environment variable (name → variable).
    #[serde(default)]
    pub header_env: BTreeMap<String, String>,
    /// Headers whose value is read from a file (name → path; surrounding whitespace trimmed).
    #[serde(default)]
    pub header_files: BTreeMap<String, PathBuf>,
    /// Share of new traces recorded and exported, 0.0-1.0. Parent-based: a request that
    /// arrives with a `traceparent` follows its caller's sampled flag.
    #[serde(default = "default_sampling")]
    pub sampling: f64,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Bound on one export request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Extra trusted CA certificates (PEM) for an HTTPS collector.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
}

fn default_sampling() -> f64 {
    1.0
}

fn default_service_name() -> String {
    "sessiongate".into()
}

fn default_timeout_secs() -> u64 {
    10
}

/// What the export needs, read and checked (secrets included): built by `validate`.
#[derive(Clone)]
pub struct OtlpSettings {
    pub traces_url: String,
    pub protocol: OtlpProtocol,
    pub headers: BTreeMap<String, String>,
    pub sampling: f64,
    pub service_name: String,
    pub timeout: Duration,
    pub ca_bundle_pem: Option<(String, String)>,
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be credentials: names only.
        f.debug_struct("OtlpSettings")
            .field("traces_url", &self.traces_url)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("sampling", &self.sampling)
            .field("service_name", &self.service_name)
            .finish_non_exhaustive()
    }
}

impl OtlpConfig {
    /// Checks every value and reads the secret headers; errors name the key.
    pub fn settings(&self) -> Result<OtlpSettings, ConfigError> {
        let key = Key::root("telemetry").field("otlp");
        let url = url::Url::parse(self.endpoint.trim())
            .map_err(|e| key.field("endpoint").err(format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(key
                .field("endpoint")
                .err("must be an http:// or https:// URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(key
                .field("endpoint")
                .err("must not carry a query or fragment"));
        }
        let base = url.as_str().trim_end_matches('/');
        let traces_url = if base.ends_with(TRACES_PATH) {
            base.to_string()
        } else {
            format!("{base}{TRACES_PATH}")
        };
        if !(0.0..=1.0).contains(&self.sampling) {
            return Err(key.field("sampling").err("must be 0.0-1.0"));
        }
        if self.service_name.trim().is_empty() {
            return Err(key.field("service_name").err("must not be empty"));
        }
        if !(1..=300).contains(&self.timeout_secs) {
            return Err(key.field("timeout_secs").err("must be 1-300"));
        }
        let mut headers = BTreeMap::new();
        let mut put = |field: &str, name: &str, value: String| -> Result<(), ConfigError> {
            let k = key.field(field).field(name);
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| k.err("not a valid HTTP header name"))?;
            http::HeaderValue::from_str(&value)
                .map_err(|_| k.err("the value is not a valid HTTP header value"))?;
            if headers.insert(name.to_ascii_lowercase(), value).is_some() {
                return Err(k.err("header given twice"));
            }
            Ok(())
        };
        for (name, value) in &self.headers {
            put("headers", name, value.clone())?;
        }
        for (name, var) in &self.header_env {
            let v = std::env::var(var).map_err(|_| {
                key.field("header_env")
                    .field(name)
                    .err(format!("environment variable {var} is not set"))
            })?;
            put("header_env", name, v.trim().to_string())?;
        }
        for (name, path) in &self.header_files {
            let v = std::fs::read_to_string(path).map_err(|e| {
                key.field("header_files")
                    .field(name)
                    .err(format!("reading {}: {e}", path.display()))
            })?;
            put("header_files", name, v.trim().to_string())?;
        }
        let ca_bundle_pem = match &self.ca_bundle {
            None => None,
            Some(p) => {
                let pem = crate::httpclient::read_ca_bundle(p)
                    .map_err(|e| key.field("ca_bundle").err(e.to_string()))?;
                // Parsed now, so a bad bundle is a config error and not a failed export.
                crate::httpclient::build_client(
                    Some((&p.display().to_string(), &pem)),
                    Duration::from_secs(5),
                )
                .map_err(|e| key.field("ca_bundle").err(e.to_string()))?;
                Some((p.display().to_string(), pem))
            }
        };
        Ok(OtlpSettings {
            traces_url,
            protocol: self.protocol,
            headers,
            sampling: self.sampling,
            service_name: self.service_name.trim().to_string(),
            timeout: Duration::from_secs(self.timeout_secs),
            ca_bundle_pem,
        })
    }
}

/// Runs the export's HTTP requests on our reqwest client, on the Tokio runtime that was
/// current when the exporter was built: the SDK's batch processor exports from a thread of
/// its own, where reqwest's async client could not run by itself.
#[derive(Debug, Clone)]
pub struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

/// Longest collector answer read (a partial-success message is a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let http = self.http.clone();
        let exchange = async move {
            let mut resp = http.execute(request).await?;
            let mut answer = http::Response::builder().status(resp.status());
            if let Some(h) = answer.headers_mut() {
                *h = std::mem::take(resp.headers_mut());
            }
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body.freeze())?)
        };
        self.runtime.spawn(exchange).await?
    }
}

/// Builds the span exporter (no connection is made here). Must run inside the Tokio runtime.
pub fn exporter(s: &OtlpSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let http = crate::httpclient::build_client(
        s.ca_bundle_pem
            .as_ref()
            .map(|(origin, pem)| (origin.as_str(), pem.as_str())),
        Duration::from_secs(5),
    )
    .map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "the trace exporter needs a Tokio runtime".to_string())?;
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient { http, runtime })
        .with_endpoint(s.traces_url.clone())
        .with_protocol(match s.protocol {
            OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
            OtlpProtocol::HttpJson => Protocol::HttpJson,
        })
        .with_timeout(s.timeout)
        .with_headers(s.headers.clone().into_iter().collect())
        .build()
        .map_err(|e| format!("building the OTLP exporter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str) -> OtlpConfig {
        toml::from_str(&format!("endpoint = \"{endpoint}\"")).unwrap()
    }

    #[test]
    fn endpoint_gets_the_traces_path_once() {
        assert_eq!(
            cfg("http://collector:4318").settings().unwrap().traces_url,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            cfg("http://collector:4318/v1/traces")
                .settings()
                .unwrap()
                .traces_url,
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = cfg("collector:4318").settings().unwrap_err();
        assert_eq!(e.key, "telemetry.otlp.endpoint");
        let mut c = cfg("http://c:4318");
        c.sampling = 1.5;
        assert_eq!(c.settings().unwrap_err().key, "telemetry.otlp.sampling");
        let mut c = cfg("http://c:4318");
        c.headers.insert("bad header".into(), "x".into());
        assert_eq!(
            c.settings().unwrap_err().key,
            "telemetry.otlp.headers.bad header"
        );
        let mut c = cfg("http://c:4318");
        c.header_files
            .insert("authorization".into(), "/nonexistent/otlp".into());
        assert_eq!(
            c.settings().unwrap_err().key,
            "telemetry.otlp.header_files.authorization"
        );
    }

    #[test]
    fn protocol_spellings() {
        let c: OtlpConfig =
            toml::from_str("endpoint = \"http://c:4318\"\nprotocol = \"http/json\"").unwrap();
        assert_eq!(c.protocol, OtlpProtocol::HttpJson);
        assert!(
            toml::from_str::<OtlpConfig>("endpoint = \"http://c\"\nprotocol = \"grpc\"").is_err()
        );
    }

    #[test]
    fn debug_hides_header_values() {
        let mut c = cfg("http://c:4318");
        c.headers
            .insert("authorization".into(), "Bearer s3cret".into());
        let s = c.settings().unwrap();
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
