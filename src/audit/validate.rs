//! `[audit]` checks for `config check` and `serve` (see `Config::validate`): values, and where
//! the store would live. Opening the store (connecting, migrating) is left to `open`.

use super::{AuditConfig, Location};
use crate::config::{ConfigError, Key};
use std::path::Path;

impl AuditConfig {
    /// Checks values; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = Key::root("audit");
        if self.max_batch == 0 || self.max_batch > 10_000 {
            return Err(key.field("max_batch").err("must be between 1 and 10000"));
        }
        if self.write_timeout_ms == 0 || self.write_timeout_ms > 600_000 {
            return Err(key
                .field("write_timeout_ms")
                .err("must be between 1 and 600000"));
        }
        if let Some(r) = &self.replica
            && (r.is_empty()
                || r.len() > 64
                || !r
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(key
                .field("replica")
                .err("must be 1-64 characters of A-Z a-z 0-9 - _ ."));
        }
        if let Some(d) = self.retention_days
            && !(1..=36_500).contains(&d)
        {
            return Err(key
                .field("retention_days")
                .err("must be between 1 and 36500 (leave it unset to keep everything)"));
        }
        Ok(())
    }

    /// Checks `audit.url` without connecting: a known scheme, a PostgreSQL URL that parses, a
    /// SQLite path that can be a file (not a directory, no file where a directory must be).
    pub fn validate_location(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let key = Key::root("audit").field("url");
        let url = self.url.trim();
        if let Some((scheme, _)) = url.split_once("://")
            && !matches!(scheme, "sqlite" | "postgres" | "postgresql")
        {
            return Err(key.err(format!(
                "unsupported scheme '{scheme}' (use sqlite://PATH, a path, or postgres://...)"
            )));
        }
        match Location::parse(url, data_dir) {
            Location::Postgres(u) => {
                use std::str::FromStr as _;
                sqlx::postgres::PgConnectOptions::from_str(&u).map_err(|e| {
                    let detail = e.to_string();
                    key.err(if detail.contains("://") {
                        "not a valid PostgreSQL URL".to_string()
                    } else {
                        format!("not a valid PostgreSQL URL: {detail}")
                    })
                })?;
            }
            Location::SqliteMemory => {}
            Location::Sqlite(path) => {
                // An empty or relative url puts the file under the data directory.
                let key = if url.is_empty() {
                    Key::root("server").field("data_dir")
                } else {
                    key
                };
                if path.is_dir() {
                    return Err(
                        key.err(format!("the SQLite file {} is a directory", path.display()))
                    );
                }
                creatable(&key, &path)?;
            }
        }
        self.validate_spool(data_dir)
    }

    /// Checks `audit.spool_path`: a file that can be created (not a directory, no file where a
    /// directory must be), not the SQLite file itself.
    fn validate_spool(&self, data_dir: &Path) -> Result<(), ConfigError> {
        let key = Key::root("audit").field("spool_path");
        if self.spool_path.chars().any(char::is_control) {
            return Err(key.err("must not contain control characters"));
        }
        let path = self.spool_file(data_dir);
        if path.is_dir() {
            return Err(key.err(format!("the spool {} is a directory", path.display())));
        }
        if let Location::Sqlite(db) = Location::parse(self.url.trim(), data_dir)
            && db == path
        {
            return Err(key.err("must not be the SQLite audit file itself"));
        }
        creatable(&key, &path)?;
        Ok(())
    }
}

/// A file at `path` can be created: no existing file stands where one of its directories must be.
fn creatable(key: &Key, path: &Path) -> Result<(), ConfigError> {
    match path
        .ancestors()
        .skip(1)
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .filter(|a| !a.is_dir())
    {
        Some(blocker) => Err(key.err(format!(
            "{} is not a directory, so {} cannot be created",
            blocker.display(),
            path.display()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_problems_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let check = |url: &str| {
            AuditConfig {
                url: url.into(),
                ..Default::default()
            }
            .validate_location(dir.path())
        };
        assert!(check("").is_ok());
        assert!(check("sqlite://audit.db").is_ok());
        assert!(check("postgres://u:pw@localhost/db").is_ok());
        assert!(check("sqlite::memory:").is_ok());
        for bad in [
            "mysql://h/db",
            "postgres://u:pw@h:notaport/db",
            "plain-file/audit.db",
        ] {
            let e = check(bad);
            assert!(e.is_err(), "{bad}");
        }
        let e = check("postgres://u:hunter2@h:notaport/db").unwrap_err();
        assert_eq!(e.key, "audit.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = AuditConfig::default().validate_location(&file).unwrap_err();
        assert_eq!(e.key, "server.data_dir");
        for bad in ["", "plain-file/x.spool", "audit.db"] {
            let c = AuditConfig {
                url: "sqlite://audit.db".into(),
                spool_path: if bad.is_empty() {
                    dir.path().display().to_string()
                } else {
                    bad.into()
                },
                ..Default::default()
            };
            assert_eq!(
                c.validate_location(dir.path()).unwrap_err().key,
                "audit.spool_path",
                "{bad:?}"
            );
        }
        let c = AuditConfig {
            spool_path: "spool/audit.spool".into(),
            ..Default::default()
        };
        assert!(c.validate_location(dir.path()).is_ok());
    }
}
