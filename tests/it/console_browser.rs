//! The helpdesk console at `/` (issue 14, part 5): static assets built into the binary,
//! served without a credential under a strict Content-Security-Policy, and — end to end in
//! headless Chromium against the real binary's `demo` — sign-in (a wrong key shows the 401;
//! an Entra ID token without a role gets the 403 naming the permission), search, dry run,
//! logoff, the result, the session gone, a 403, a job followed to its end and the ticket's
//! audit trail. Screenshots of every step go to `target/browser-artifacts/`.

use crate::support::{
    app::{TestApp, problem},
    header,
    prereq::{self, browser_dir},
    process::DemoProcess,
};
use sessiongate::api::console::CONSOLE_CSP;
use std::{path::PathBuf, time::Duration};

const ASSETS: [&str; 3] = ["/", "/console/app.js", "/console/app.css"];

/// The values of `attr="..."` in `html`.
fn attr_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let pat = format!(" {attr}=\"");
    html.match_indices(&pat)
        .map(|(i, _)| {
            let rest = &html[i + pat.len()..];
            &rest[..rest.find('"').expect("closing quote")]
        })
        .collect()
}

#[tokio::test]
async fn console_is_served_without_a_credential_under_a_strict_csp() {
    let app = TestApp::start().await;
    let r = app.http.get(format!("{}/", app.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        header(&r, "content-security-policy").as_deref(),
        Some(CONSOLE_CSP)
    );
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(CONSOLE_CSP.contains(directive), "{directive}");
    }
    assert!(!CONSOLE_CSP.contains("unsafe-"));
    let html = r.text().await.unwrap();
    assert!(html.contains("<title>sessiongate console</title>"));
    // No inline script, style or event handler: every script has a source.
    assert_eq!(
        html.matches("<script").count(),
        html.matches("<script src=").count()
    );
    assert!(!html.contains("<style") && !html.contains(" style="));
    assert!(!html.contains(" onclick=") && !html.contains(" onload="));
    // Every reference is same-origin (the icon is an empty data URI).
    let refs: Vec<&str> = attr_values(&html, "src")
        .into_iter()
        .chain(attr_values(&html, "href"))
        .filter(|r| !r.starts_with('#') && *r != "data:,")
        .collect();
    assert_eq!(refs, ["console/app.js", "console/app.css", "docs"]);
    for path in ASSETS {
        let r = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} needs no credential");
        assert_eq!(
            header(&r, "content-security-policy").as_deref(),
            Some(CONSOLE_CSP),
            "{path}"
        );
        assert_eq!(
            header(&r, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        assert_eq!(header(&r, "cache-control").as_deref(), Some("no-cache"));
        let ct = header(&r, "content-type").unwrap_or_default();
        let want = match path {
            "/" => "text/html",
            p if p.ends_with(".js") => "text/javascript",
            _ => "text/css",
        };
        assert!(ct.starts_with(want), "{path}: {ct}");
        assert!(r.bytes().await.unwrap().len() > 1000, "{path}");
    }
}

/// The script writes data only as text: no HTML strings, no `eval`, and the credential only
/// in session storage.
#[test]
fn console_script_builds_no_markup_from_data() {
    let js = include_str!("../../assets/console/app.js");
    for banned in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
    ] {
        assert!(!js.contains(banned), "app.js uses {banned}");
    }
    assert!(js.contains("sessionStorage.setItem"));
}

#[tokio::test]
async fn console_answers_404_when_disabled() {
    let app = TestApp::start_with(|c| c.console.enabled = false).await;
    for path in ASSETS {
        let r = app
            .http
            .get(format!("{}{path}", app.url))
            .send()
            .await
            .unwrap();
        problem(r, 404, "route_not_found").await;
    }
    // The API itself is unaffected.
    assert_eq!(app.get(&app.keys.reader, "/hostpools").await.status(), 200);
}

/// Where the browser tests keep their screenshots: `$CARGO_TARGET_DIR/browser-artifacts`
/// (default `target/browser-artifacts`), one directory per spec.
fn artifacts(spec: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("browser-artifacts")
        .join(spec)
}

#[tokio::test]
async fn console_end_to_end_in_headless_chromium_against_demo() {
    const TEST: &str = "console_browser::console_end_to_end_in_headless_chromium_against_demo";
    let Some(chromium) = prereq::chromium(TEST) else {
        return;
    };
    let Some(node) = prereq::browser_node(TEST) else {
        return;
    };
    let demo = DemoProcess::start();
    let lines = demo.lines.clone();
    let key_of = |role: &str| demo.key(role.trim());
    let user = lines
        .iter()
        .find_map(|l| l.split_once("token of demo user ").map(|(_, u)| u.trim()))
        .expect("the demo names its user")
        .to_string();
    let token = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .expect("the demo prints its user's token")
        .to_string();
    let url = lines
        .iter()
        .find_map(|l| l.strip_prefix("sessiongate demo is running at "))
        .expect("the demo prints its URL")
        .trim()
        .to_string();
    assert!(
        lines.iter().any(|l| l.contains(&format!("{url}/"))),
        "the banner names the console"
    );
    let out_dir = artifacts("console");
    let _ = std::fs::remove_dir_all(&out_dir);
    let run = tokio::process::Command::new(node)
        .arg("console.spec.mjs")
        .current_dir(browser_dir())
        .env("SG_URL", &url)
        .env("SG_OPERATOR_KEY", key_of("operator "))
        .env("SG_AUDITOR_KEY", key_of("auditor "))
        .env("SG_TOKEN", &token)
        .env("SG_USER", &user)
        // user1 and user3 have a session in the AVD and one in the classic pool of the demo.
        .env("SG_OTHER_USER", "user1@contoso.com")
        .env("SG_THIRD_USER", "user3@contoso.com")
        .env("SG_ARTIFACTS", &out_dir)
        .env("CHROMIUM", chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finished within 240 s")
        .expect("node ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the console's browser test failed (screenshots in {}):\n{stdout}\n{stderr}",
        out_dir.display()
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    let shots = std::fs::read_dir(&out_dir).unwrap().count();
    assert!(shots >= 10, "a screenshot per step: {shots} in {out_dir:?}");
}
