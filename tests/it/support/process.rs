//! Child processes of the tests (the binary's own commands, run as a user would).

use std::{
    io::{BufRead, BufReader},
    process::Child,
    time::{Duration, Instant},
};

/// Kills and reaps the child when dropped (also when the test panics).
pub struct Killer(pub Child);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads stdout lines until `done` has seen enough (bounded in time).
pub fn read_until(child: &mut Child, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            let stop = done(&l);
            lines.push(l);
            if stop {
                return lines;
            }
        }
    }
    panic!("timed out; got {lines:?}");
}

/// A running `sessiongate demo` of the test binary on a free loopback port, with its own data
/// dir, and the banner it printed (up to "Stop with Ctrl-C"). Killed when dropped or stopped;
/// the data dir outlives [`DemoProcess::stop`].
pub struct DemoProcess {
    proc: Option<Killer>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub lines: Vec<String>,
}

impl DemoProcess {
    pub fn start() -> Self {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut k = Killer(child);
        let lines = read_until(&mut k.0, |l| l.contains("Stop with Ctrl-C"));
        Self {
            proc: Some(k),
            port,
            dir,
            lines,
        }
    }

    /// The API key the banner prints for `role` (`operator`, `reader`, `admin`, `auditor`).
    pub fn key(&self, role: &str) -> String {
        let prefix = format!("{role} ");
        self.lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(&prefix).map(|r| r.trim().to_string()))
            .unwrap_or_else(|| panic!("{role} key printed"))
    }

    /// Stops the demo (its data dir stays).
    pub fn stop(&mut self) {
        self.proc.take();
    }
}
