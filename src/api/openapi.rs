//! The OpenAPI document: this header plus the operations the router registers (see
//! `router.rs`). `openapi.yaml` at the repository root is this output, committed; a test
//! fails when they differ.

use super::problem::Problem;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sessiongate",
        description = "One audited API to list, log off, disconnect, message, lock and unlock remote-desktop sessions on Azure Virtual Desktop (ARM), Windows Virtual Desktop classic, RD Session Host and MultiPoint servers. Every call is authenticated, authorised and written to a tamper-evident audit log. Errors are application/problem+json with a stable `code` and the `request_id`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem)),
    modifiers(&Security),
    tags(
        (name = "sessions", description = "Pools, hosts and sessions"),
        (name = "actions", description = "Audited session actions"),
        (name = "audit", description = "The audit log"),
        (name = "health", description = "Probes (no authentication)"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (sg_...) or a Microsoft Entra ID access token",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document as YAML.
pub fn yaml() -> Result<String, String> {
    let mut doc = super::router::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_yaml().map_err(|e| e.to_string())
}
