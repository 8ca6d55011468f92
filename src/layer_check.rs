//! The layer rule: the HTTP layer (`src/api/`) reaches providers and the audit log only
//! through the service (`Gateway` methods, `ServiceError`). This test fails when a file under
//! `src/api/` names `crate::audit` or `crate::providers` (in any spelling that reaches them);
//! CI runs it with the other tests. It lives outside `src/api/` so its own examples do not trip it.
use std::path::Path;

/// Module paths the API must not name, in any spelling that reaches them, and the one
/// accessor (`Gateway::audit`, kept for start-up and tests) that would hand it the log.
fn forbidden_reference(line: &str) -> Option<&'static str> {
    let code = line.split("//").next().unwrap_or("");
    let squashed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if squashed.contains("gateway.audit()") {
        return Some("Gateway::audit()");
    }
    for module in ["audit", "providers"] {
        let named = [
            format!("crate::{module}"),
            format!("sessiongate::{module}"),
            format!("super::super::{module}"),
            format!("super::{module}"),
        ];
        // `use crate::{auth, audit::X}` names the module inside a group.
        let grouped = squashed.contains("crate::{") || squashed.contains("super::{");
        let in_group = grouped
            && squashed
                .split(['{', ',', '}'])
                .any(|part| part == module || part.starts_with(&format!("{module}::")));
        if named.iter().any(|n| squashed.contains(n.as_str())) || in_group {
            return Some(if module == "audit" {
                "crate::audit"
            } else {
                "crate::providers"
            });
        }
    }
    None
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn api_names_neither_audit_nor_providers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() >= 5, "src/api/ not found: {files:?}");
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // A multi-line `use crate::{...};` group is judged as one line.
        let joined = text.replace('\n', " ");
        for stmt in joined.split(';') {
            if let Some(m) = forbidden_reference(stmt) {
                hits.push(format!("{}: names {m}: {}", f.display(), stmt.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "src/api/ must reach audit and providers through the service:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_check_catches_each_spelling() {
    for bad in [
        "use crate::audit::AuditQuery",
        "use crate::providers::ProviderError",
        "use crate::{auth::Principal, audit::{Actor, NewEvent}}",
        "use crate::{providers, service}",
        "let x = sessiongate::audit::open(cfg)",
        "use super::super::providers::ProviderError",
        "crate :: audit :: AuditError :: BadQuery(m)",
        "if st.gateway\n        .audit()\n        .healthy()",
    ] {
        assert!(forbidden_reference(bad).is_some(), "missed: {bad}");
    }
    for good in [
        "use crate::{auth::Principal, service::{AuditPage, AuditQuery}}",
        "st.gateway.read_audit(&ctx, &q)",
        "// see crate::audit for the store",
    ] {
        assert!(forbidden_reference(good).is_none(), "flagged: {good}");
    }
}
