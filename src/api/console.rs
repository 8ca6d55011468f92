//! The helpdesk console (issue 14, part 5): a static page at `/` with its script and style
//! sheet, built into the binary (`assets/console/`; plain JavaScript, no framework, no CDN).
//! The assets hold no data and need no credential; the page calls the public API with the
//! credential the user signs in with. `[console] enabled = false` answers 404 instead.

use super::{
    AppState,
    problem::{ApiError, RequestError},
};
use axum::{
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

/// The policy of every console answer: only this origin's script and style sheet (no inline
/// script or style), API calls to this server only, no forms posted anywhere, no framing.
/// Images allow `data:` (the page's icon is a data URI, so the browser asks for no favicon).
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; \
base-uri 'none'";

const INDEX_HTML: &[u8] = include_bytes!("../../assets/console/index.html");
const APP_JS: &[u8] = include_bytes!("../../assets/console/app.js");
const APP_CSS: &[u8] = include_bytes!("../../assets/console/app.css");

/// A static console answer with the security headers every one of them carries. `no-cache`:
/// the browser keeps a copy but revalidates it, so a new binary's console is used at once.
fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONSOLE_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `[console] enabled = false`: the console's routes answer 404 as if they did not exist.
pub async fn guard_console(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.console_enabled {
        next.run(req).await
    } else {
        ApiError::from(RequestError::RouteNotFound).into_response()
    }
}

/// The helpdesk console: sign in with an API key or an Entra ID token, find a user's
/// sessions in every pool, log off / disconnect / message them with a dry-run preview, follow
/// jobs, read the audit trail. No credential needed for the page itself (`[console] enabled`).
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String),
              (status = 404, description = "The console is disabled (`[console] enabled = false`)",
               body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn console_page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The console's script.
#[utoipa::path(get, path = "/console/app.js", tag = "meta",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String),
              (status = 404, description = "The console is disabled (`[console] enabled = false`)",
               body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn console_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console/app.css", tag = "meta",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String),
              (status = 404, description = "The console is disabled (`[console] enabled = false`)",
               body = super::problem::Problem, content_type = "application/problem+json")))]
pub async fn console_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
