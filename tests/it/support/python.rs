//! Python console scripts of the test venv (`scripts/test` installs the pinned packages into
//! `$CARGO_TARGET_DIR/py`): [`tool`] finds one beside the interpreter [`super::prereq::python`]
//! picks, or fails naming the command that installs it.

use std::path::{Path, PathBuf};

/// The pip requirement `scripts/test` pins for `package` (e.g. `kubernetes-validate==1.37.0`),
/// read from the script itself so the pins live in one place; the bare name when not pinned.
pub fn pin(package: &str) -> String {
    const SCRIPT: &str = include_str!("../../../scripts/test");
    let prefix = format!("{package}==");
    SCRIPT
        .lines()
        .map(|l| l.trim().trim_matches('\''))
        .find(|l| l.starts_with(&prefix))
        .map_or_else(|| package.to_owned(), str::to_owned)
}

/// The directory holding the interpreter's console scripts (`<venv>/bin`), when the
/// interpreter is a path (not a bare `python3` looked up in `PATH`).
fn scripts_dir(python: &Path) -> Option<PathBuf> {
    python
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// The path of the venv's console script `name` (e.g. `kubernetes-validate`, `schemathesis`).
/// Panics naming the command that installs it when it is not there: a test that needs it must
/// fail, not pass without running.
pub fn tool(name: &str) -> PathBuf {
    let python = super::prereq::python();
    if let Some(path) = scripts_dir(&python)
        .map(|d| d.join(name))
        .filter(|p| p.is_file())
    {
        return path;
    }
    let requirement = pin(name);
    panic!(
        "the Python tool `{name}` is not installed beside {python}\n    install it with: \
         {python} -m pip install '{requirement}'\n    or everything at once: {setup}",
        python = python.display(),
        setup = super::prereq::SETUP,
    );
}

#[test]
fn pins_are_read_from_the_setup_script() {
    assert_eq!(pin("kubernetes-validate"), "kubernetes-validate==1.37.0");
    assert_eq!(pin("no-such-package"), "no-such-package");
}

#[test]
#[should_panic(expected = "-m pip install 'no-such-tool'")]
fn a_missing_tool_fails_naming_its_install_command() {
    tool("no-such-tool");
}
