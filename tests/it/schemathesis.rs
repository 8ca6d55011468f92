//! The spec is the truth: schemathesis (pinned in `scripts/test`) generates requests from the
//! OpenAPI document the server serves — valid and invalid ones, then stateful chains along the
//! declared links (list → get → act) — against the gateway on `demo`'s configuration, and runs
//! every check it has (`--checks all`: status codes, content types, response schemas, rejection
//! of invalid data, acceptance of valid data, ignored auth, ...). Zero failures allowed.
//!
//! Bounded: `--max-time` (default 90 s, `SESSIONGATE_SCHEMATHESIS_MAX_TIME`) and a fixed seed
//! (`SESSIONGATE_SCHEMATHESIS_SEED`) so a failure reproduces. Missing schemathesis fails the
//! test naming the install command (see `support::prereq`). Figures: `docs/resilience.md`.

use crate::support::{app::TestApp, prereq};
use sessiongate::auth::Role;
use std::time::Instant;

/// The operations of the generated document (method + path), to check that schemathesis
/// tested all of them.
fn operation_count(doc: &serde_json::Value) -> usize {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "patch", "head", "options", "trace",
    ];
    doc["paths"]
        .as_object()
        .map(|paths| {
            paths
                .values()
                .map(|item| METHODS.iter().filter(|m| item.get(**m).is_some()).count())
                .sum()
        })
        .unwrap_or(0)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The first figure `pattern` reads from a line of `text` (`Tested: 14`, `2786 generated`).
fn figure(text: &str, pattern: impl Fn(&str) -> Option<usize>) -> Option<usize> {
    text.lines().find_map(|l| pattern(l.trim()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_with_all_checks() {
    let Some(python) = prereq::schemathesis("schemathesis_finds_no_failure_with_all_checks") else {
        return;
    };
    // demo's configuration; the action rate limit off so generated actions reach the backends
    // instead of stopping at 429 (which the spec declares, so it would not fail a check).
    // The demo admin key also gets the auditor role, so `GET /audit` is tested past its 403.
    let mut app = TestApp::start_with(|c| {
        c.auth.rate_limit.actions_per_minute = 0;
        for k in c.auth.api_keys.iter_mut().filter(|k| k.id == "demo-admin") {
            k.roles.push(Role::Auditor);
        }
    })
    .await;
    let mut doc = serde_json::to_value(sessiongate::api::router::openapi()).expect("the document");
    // `GET /audit`'s `cursor` is opaque: only a value the server handed out (`next_cursor`) is
    // valid, which no schema can state, so any generated value is rightly 400 invalid_query and
    // schemathesis's "schema-valid request rejected" check would flag it. The copy schemathesis
    // gets leaves that one parameter out; cursor paging is tested in the audit tests
    // (`audit_sqlite::`, `audit_postgres::`), and an empty or made-up cursor's 400 in `api_spec::`.
    let audit_params = doc["paths"]["/audit"]["get"]["parameters"]
        .as_array_mut()
        .expect("GET /audit parameters");
    let before = audit_params.len();
    audit_params.retain(|p| p["name"] != "cursor");
    assert_eq!(audit_params.len() + 1, before, "GET /audit declares cursor");
    // `Idempotency-Key` likewise: whether a key is acceptable depends on what the server has
    // already seen with it (the same key with another request is rightly 422
    // `idempotency_key_reused`), which no schema can state. The copy leaves the header out;
    // `fleet_idempotency::` tests replay, reuse, bad keys and concurrency.
    let mut dropped = 0;
    for item in doc["paths"].as_object_mut().expect("paths").values_mut() {
        if let Some(ps) = item
            .get_mut("post")
            .and_then(|o| o.get_mut("parameters"))
            .and_then(|v| v.as_array_mut())
        {
            let n = ps.len();
            ps.retain(|p| p["name"] != "Idempotency-Key");
            dropped += n - ps.len();
        }
    }
    assert!(
        dropped >= 7,
        "the action routes declare Idempotency-Key ({dropped})"
    );
    // The self-service routes answer only a caller whose Entra ID token names a user; schemathesis
    // calls with the admin API key, which they rightly refuse (403 `self_service_needs_token`),
    // so the copy leaves them out; `fleet::self_service_*` tests them with tokens.
    // The webhook receiver answers only deliveries signed (or keyed) for a configured source,
    // which generated requests cannot be; `webhooks::*` tests it with real senders' headers.
    let paths = doc["paths"].as_object_mut().expect("paths");
    let n = paths.len();
    paths.retain(|p, _| !p.starts_with("/me/") && !p.starts_with("/webhooks/"));
    assert_eq!(
        paths.len() + 3,
        n,
        "the document has the two /me routes and the webhook receiver"
    );
    let spec_text = serde_json::to_string_pretty(&doc).expect("the document as JSON");
    let operations = operation_count(&doc);
    assert!(operations >= 10, "the document has {operations} operations");
    let spec = app.dir.path().join("openapi.json");
    std::fs::write(&spec, &spec_text).expect("write the spec");
    let report_dir = app.dir.path().join("schemathesis-report");

    let max_time = env_or("SESSIONGATE_SCHEMATHESIS_MAX_TIME", "90");
    let seed = env_or("SESSIONGATE_SCHEMATHESIS_SEED", "20261203");
    let run = || async {
        tokio::process::Command::new(&python)
            .args(["-m", "schemathesis.cli", "run"])
            .arg(&spec)
            .args(["--url", &app.url])
            // Admin (+ auditor, above) holds every permission: nothing is refused for the role.
            .args([
                "--header",
                &format!("Authorization: Bearer {}", app.keys.admin),
            ])
            // The spec offers two schemes (Bearer, X-API-Key); generated values for the other
            // would put two credentials on one request, which the server refuses (401) by design.
            .args(["--generation-with-security-parameters", "false"])
            .args(["--checks", "all"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", "50", "--max-time", &max_time])
            .args(["--workers", "2", "--seed", &seed])
            .args(["--generation-database", "none"])
            .args(["--no-color", "--output-truncate", "true"])
            .arg("--report")
            .arg("ndjson")
            .arg("--report-dir")
            .arg(&report_dir)
            .env("SCHEMATHESIS_TELEMETRY", "false")
            // Its state directory (`.schemathesis/`) goes into the test's temp dir, not the checkout.
            .current_dir(app.dir.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run schemathesis")
    };
    let started = Instant::now();
    let mut out = run().await;
    // A known crash inside the tool, not a finding: on Python 3.11, Hypothesis describing a
    // filter lambda can hit CPython's "AST constructor recursion depth mismatch" (seen once in
    // CI, in the coverage phase; the same seed passes otherwise). Run once more in that case
    // only; every other error or failure fails the test at once.
    let tool_crash = |o: &std::process::Output| {
        !o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .contains("AST constructor recursion depth mismatch")
    };
    if tool_crash(&out) {
        println!(
            "schemathesis crashed inside Hypothesis (AST recursion depth mismatch); running it once more"
        );
        let _ = std::fs::remove_dir_all(&report_dir);
        out = run().await;
    }
    let elapsed = started.elapsed();
    app.stop().await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Its summary, always (the figures in docs/resilience.md come from here).
    let summary = stdout
        .find("= SUMMARY =")
        .map_or(stdout.as_ref(), |i| &stdout[i..]);
    println!("schemathesis (seed {seed}, {elapsed:.1?}):\n{summary}");
    let requests = std::fs::read_dir(&report_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|t| t.matches("\"status_code\"").count())
        .sum::<usize>();
    println!("HTTP responses recorded in the report: {requests}");

    assert!(
        out.status.success(),
        "schemathesis found failures (exit {:?}); replay with the seed {seed}:\n{stdout}\n{stderr}",
        out.status.code()
    );
    // Not a vacuous pass: every operation was tested, with many cases, and the credential
    // worked (schemathesis warns when an operation only ever answered 401/403).
    let tested = figure(&stdout, |l| l.strip_prefix("Tested: ")?.trim().parse().ok());
    assert_eq!(tested, Some(operations), "operations tested:\n{stdout}");
    let generated = figure(&stdout, |l| {
        l.split_once(" generated")?.0.trim().parse().ok()
    })
    .unwrap_or(0);
    assert!(generated >= 500, "only {generated} test cases:\n{stdout}");
    assert!(
        !stdout.contains("Authentication failed"),
        "the admin key was refused:\n{stdout}"
    );
    assert!(
        !stdout.contains("Stateful") || !stdout.contains("0 covered /"),
        "the stateful phase followed no link:\n{stdout}"
    );
}
