//! Test prerequisites that live outside the crate (Python packages, a Kerberos KDC,
//! PostgreSQL). `scripts/test` installs them; a test whose prerequisite is missing FAILS with
//! the command that installs it — never a silent pass. `SESSIONGATE_SKIP_MISSING=1` turns that
//! failure into a loud skip for people who know what they are leaving out (ignored under
//! `CI=true`, where everything must run).

use std::path::PathBuf;
use std::process::Command;

/// The one command that installs every prerequisite.
pub const SETUP: &str = "scripts/test --setup-only (or run the suite with scripts/test)";

/// The Python the tests drive: `SESSIONGATE_PYTHON`, else the venv `scripts/test` creates
/// (`$CARGO_TARGET_DIR/py`, default `target/py`), else `python3` from `PATH`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SESSIONGATE_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let venv = target.join("py").join("bin").join("python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Whether a missing prerequisite may be skipped: `SESSIONGATE_SKIP_MISSING=1`, outside CI.
fn skip_allowed() -> bool {
    std::env::var("SESSIONGATE_SKIP_MISSING").is_ok_and(|v| v == "1")
        && !std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A prerequisite of `test` is missing: panics naming `install` (the command that provides
/// it), or — with `SESSIONGATE_SKIP_MISSING=1` outside CI — prints a loud skip and returns.
/// Callers return right after it.
pub fn missing(test: &str, what: &str, install: &str) {
    let msg = format!(
        "{test}: prerequisite missing: {what}\n    install it with: {install}\n    \
         or everything at once: {SETUP}"
    );
    if !skip_allowed() {
        panic!("{msg}\n    (SESSIONGATE_SKIP_MISSING=1 skips such tests instead, outside CI)");
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED (SESSIONGATE_SKIP_MISSING=1) — this test tested NOTHING:\n\
         !!! {msg}\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
}

/// The Python that can `import` all of `modules` (comma-separated, as in an import
/// statement), or `None` after [`missing`] allowed a skip. `pins` are the pip requirements
/// that provide them.
pub fn python_with(test: &str, modules: &str, pins: &str) -> Option<PathBuf> {
    let py = python();
    let probe = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output();
    match probe {
        Ok(o) if o.status.success() => Some(py),
        Ok(o) => {
            missing(
                test,
                &format!(
                    "Python modules `{modules}` in {} ({})",
                    py.display(),
                    String::from_utf8_lossy(&o.stderr)
                        .lines()
                        .last()
                        .unwrap_or("import failed")
                ),
                &format!("{} -m pip install {pins}", py.display()),
            );
            None
        }
        Err(e) => {
            missing(
                test,
                &format!("a Python interpreter at {} ({e})", py.display()),
                &format!("{SETUP}; or point SESSIONGATE_PYTHON at a python3 with {pins}"),
            );
            None
        }
    }
}

/// pywinrm and pyspnego (the standard Python WinRM client and its NTLM/Kerberos library).
pub fn pywinrm(test: &str) -> Option<PathBuf> {
    python_with(test, "winrm, spnego", "'pywinrm==0.5.0'")
}

/// Microsoft's official Azure SDK for Python (identity + Desktop Virtualization).
pub fn azure_sdk(test: &str) -> Option<PathBuf> {
    python_with(
        test,
        "azure.identity, azure.mgmt.desktopvirtualization",
        "'azure-identity==1.27.0' 'azure-mgmt-desktopvirtualization==2.0.0'",
    )
}

/// schemathesis (its `schemathesis` module; the CLI is run as `python -m schemathesis.cli`).
pub fn schemathesis(test: &str) -> Option<PathBuf> {
    python_with(test, "schemathesis", "'schemathesis==4.32.5'")
}

/// Debian's `chromium` (`/usr/bin/chromium`, or `SESSIONGATE_CHROMIUM`), for the browser
/// tests; `scripts/test` installs it with apt-get (no browser download).
pub fn chromium(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("SESSIONGATE_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        });
    match path {
        Some(p) if p.exists() => Some(p),
        other => {
            missing(
                test,
                &format!(
                    "Debian's chromium ({})",
                    other.map_or("not at /usr/bin/chromium".into(), |p| format!(
                        "not at {}",
                        p.display()
                    ))
                ),
                "apt-get install chromium (Debian's package; sudo -n when not root)",
            );
            None
        }
    }
}

/// The browser tests' directory (`tests/browser`: package.json, lockfile, specs).
pub fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Node.js with `tests/browser`'s pinned packages installed (`npm ci`): the `node` to run
/// a spec with, or `None` after [`missing`] allowed a skip.
pub fn browser_node(test: &str) -> Option<PathBuf> {
    let node = std::env::var_os("SESSIONGATE_NODE")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let dir = browser_dir();
    match Command::new(&node).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        other => {
            missing(
                test,
                &format!(
                    "Node.js ({} --version: {})",
                    node.display(),
                    match other {
                        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => e.to_string(),
                    }
                ),
                "apt-get install nodejs npm",
            );
            return None;
        }
    }
    if !dir
        .join("node_modules")
        .join("playwright-core")
        .join("package.json")
        .exists()
    {
        missing(
            test,
            &format!("playwright-core in {}/node_modules", dir.display()),
            &format!("(cd {} && npm ci)", dir.display()),
        );
        return None;
    }
    Some(node)
}

/// A module the test Python lacks fails the test, naming the pip command — not a silent pass.
/// (Under `SESSIONGATE_SKIP_MISSING=1` outside CI it is a loud skip, and this test says so.)
#[test]
fn a_missing_python_module_fails_naming_its_install_command() {
    let run = std::panic::catch_unwind(|| {
        python_with(
            "probe",
            "sessiongate_no_such_module",
            "'sessiongate-no-such==1'",
        )
    });
    match run {
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                msg.contains("-m pip install 'sessiongate-no-such==1'"),
                "{msg}"
            );
        }
        Ok(found) => {
            assert!(found.is_none(), "a module that does not exist was found");
            assert!(
                skip_allowed(),
                "returned without failing, but skips are not allowed"
            );
        }
    }
}
