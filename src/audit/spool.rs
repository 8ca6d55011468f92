//! The outcome spool: a local, append-only, fsynced file of events that could not be committed
//! to the store (the store was locked, full, read-only or unreachable) after the action they
//! describe had already run. One JSON object ([`NewEvent`]) per line, in the order they were
//! spooled. [`AuditLog`](super::AuditLog) drains it into the chain, oldest first, as soon as
//! the store takes writes again, and `audit::open` merges it at start-up before recovery looks
//! for intents without an outcome. Design: `docs/audit.md` ("Outcome durability").
//!
//! Crash safety: a line is on disk (`fsync`) before the spooler reports it kept; a line torn
//! by a crash mid-write is the last one and is skipped (and logged) when read. Lines are
//! removed only after their events are committed; a crash between the commit and the removal
//! leaves them in the file, and the next drain skips an event whose exact copy the store
//! already holds (looked up by its request id, an indexed read).

use super::event::NewEvent;
use super::store::AuditError;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

fn spool_err(what: &str, path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("audit spool {}: {what}: {e}", path.display()))
}

/// The spool file. Appends and removals are serialised by an in-process lock; one gateway
/// process owns one spool file.
pub struct Spool {
    path: PathBuf,
    lock: Mutex<()>,
    /// Lines in the file (as far as this process knows): lets the drainer skip the file
    /// while it is empty without touching the disk.
    pending: AtomicU64,
}

impl Spool {
    /// Opens (creating it and its directory when missing) the spool at `path`.
    pub fn open(path: &Path) -> Result<Spool, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| spool_err("create directory", path, e))?;
        }
        // A line torn by a crash has no newline: end it, so the next append starts a line.
        if let Ok(bytes) = std::fs::read(path)
            && bytes.last().is_some_and(|b| *b != b'\n')
        {
            OpenOptions::new()
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(b"\n").and_then(|()| f.sync_all()))
                .map_err(|e| spool_err("repair", path, e))?;
        }
        let s = Spool {
            path: path.to_owned(),
            lock: Mutex::new(()),
            pending: AtomicU64::new(0),
        };
        let n = s.read_all()?.len() as u64;
        s.pending.store(n, Ordering::Relaxed);
        Ok(s)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Events waiting in the file.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Appends one event and makes it durable (`fsync` of the file, and of its directory
    /// when the file was created) before returning.
    pub fn append(&self, ev: &NewEvent) -> Result<(), AuditError> {
        let mut line = serde_json::to_string(ev).map_err(|e| spool_err("encode", &self.path, e))?;
        line.push('\n');
        let _g = self
            .lock
            .lock()
            .map_err(|_| spool_err("lock", &self.path, "poisoned"))?;
        let created = !self.path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| spool_err("open", &self.path, e))?;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| spool_err("write", &self.path, e))?;
        if created {
            sync_dir(&self.path);
        }
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every complete event in the file, oldest first. Lines that do not parse (a write torn
    /// by a crash) are skipped with a warning.
    pub fn read_all(&self) -> Result<Vec<NewEvent>, AuditError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(spool_err("open", &self.path, e)),
        };
        let mut out = Vec::new();
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| spool_err("read", &self.path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<NewEvent>(&line) {
                Ok(ev) => out.push(ev),
                Err(e) => tracing::warn!(
                    target: "sessiongate::audit",
                    spool = %self.path.display(), line = n + 1, error = %e,
                    "skipping an unreadable audit spool line (torn by a crash?)"
                ),
            }
        }
        Ok(out)
    }

    /// Removes the first `n` events (the ones just committed), keeping any appended since they
    /// were read: the rest is written to a temporary file that replaces the spool atomically.
    pub fn remove_first(&self, n: usize) -> Result<(), AuditError> {
        if n == 0 {
            return Ok(());
        }
        let _g = self
            .lock
            .lock()
            .map_err(|_| spool_err("lock", &self.path, "poisoned"))?;
        let rest: Vec<NewEvent> = self.read_all()?.into_iter().skip(n).collect();
        let tmp = self.path.with_extension("spool-tmp");
        {
            let mut f = File::create(&tmp).map_err(|e| spool_err("create", &tmp, e))?;
            for ev in &rest {
                let mut line =
                    serde_json::to_string(ev).map_err(|e| spool_err("encode", &tmp, e))?;
                line.push('\n');
                f.write_all(line.as_bytes())
                    .map_err(|e| spool_err("write", &tmp, e))?;
            }
            f.sync_all().map_err(|e| spool_err("sync", &tmp, e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| spool_err("replace", &self.path, e))?;
        sync_dir(&self.path);
        self.pending.store(rest.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Makes a file's creation or rename durable (best effort: not every file system allows it).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u32) -> NewEvent {
        NewEvent {
            request_id: format!("r{i}"),
            action: "logoff".into(),
            outcome: "done".into(),
            params: serde_json::json!({ "intent_id": format!("i{i}") }),
            ..NewEvent::default()
        }
    }

    #[test]
    fn appends_in_order_survives_reopen_and_removes_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("audit.spool");
        let s = Spool::open(&path).unwrap();
        assert_eq!(s.pending(), 0);
        for i in 0..3 {
            s.append(&ev(i)).unwrap();
        }
        assert_eq!(s.pending(), 3);
        // A torn last line (crash mid-write) is skipped.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"request_id\":\"tor")
            .unwrap();
        let s = Spool::open(&path).unwrap();
        assert_eq!(s.read_all().unwrap(), vec![ev(0), ev(1), ev(2)]);
        s.remove_first(2).unwrap();
        s.append(&ev(3)).unwrap();
        assert_eq!(s.read_all().unwrap(), vec![ev(2), ev(3)]);
        s.remove_first(2).unwrap();
        assert!(s.read_all().unwrap().is_empty());
        assert_eq!(s.pending(), 0);
    }
}
