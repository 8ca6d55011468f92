//! Fresh PostgreSQL databases for the audit and gateway tests, on the server at
//! `SESSIONGATE_TEST_PG_URL` (default [`PG_ADMIN_URL`]); each is dropped when its guard
//! drops, also when the test panics.

use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The server the PostgreSQL tests use: `SESSIONGATE_TEST_PG_URL` or [`PG_ADMIN_URL`].
pub fn pg_admin_url() -> String {
    std::env::var("SESSIONGATE_TEST_PG_URL").unwrap_or_else(|_| PG_ADMIN_URL.to_owned())
}

/// A fresh database, dropped (WITH FORCE) when this guard drops.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    /// A fresh database named `{prefix}_{uuid}`. An unreachable server fails the test naming
    /// what to install (`None`, a loud skip, only with `SESSIONGATE_SKIP_MISSING=1`).
    pub async fn create(prefix: &str) -> Option<PgDb> {
        let admin = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&pg_admin_url())
            .await
        {
            Ok(p) => p,
            Err(e) => {
                super::prereq::missing(
                    &format!("PostgreSQL test ({prefix})"),
                    &format!("a PostgreSQL server at {} ({e})", pg_admin_url()),
                    "apt-get install postgresql && pg_ctlcluster <version> main start \
                     (trust auth for 127.0.0.1, a database `test`), or point \
                     SESSIONGATE_TEST_PG_URL at one",
                );
                return None;
            }
        };
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("CREATE DATABASE");
        admin.close().await;
        let mut u = url::Url::parse(&pg_admin_url()).expect("PostgreSQL URL");
        u.set_path(&format!("/{name}"));
        Some(PgDb {
            name,
            url: u.to_string(),
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Its own thread and runtime: the test's runtime may be gone or be a current-thread one.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(p) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&pg_admin_url())
                    .await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&p)
                    .await;
                    p.close().await;
                }
            });
        })
        .join();
    }
}
