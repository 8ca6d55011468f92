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
