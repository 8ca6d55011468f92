//! Durable work kept beside the audit events, in the same database (one backup, one replica
//! story): jobs and their items, and idempotency keys. Plain rows; the service layer
//! (`service::jobs`, `service::idempotency`) gives them meaning. The SQL text is shared by
//! SQLite and PostgreSQL (`$N` placeholders); the only difference is the job claim, which on
//! PostgreSQL skips rows another replica holds (`FOR UPDATE SKIP LOCKED`).

use super::AuditError;
use super::sql::Db;

/// Runs `$body` with `$p` bound to the concrete pool: the same code is compiled for both.
macro_rules! with_db {
    ($db:expr, $p:ident => $body:expr) => {
        match $db {
            Db::Sqlite($p) => $body,
            Db::Postgres($p) => $body,
        }
    };
}

fn db_err(e: sqlx::Error) -> AuditError {
    AuditError::Unavailable(format!("work store: {e}"))
}

/// Job states a runner still has work in.
pub const OPEN_STATES: [&str; 2] = ["queued", "running"];

/// A job to insert, with its items in submission order.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub kind: String,
    pub created_by: String,
    /// The creator's principal and request context (JSON).
    pub context: String,
    pub created_us: i64,
    pub items: Vec<NewItem>,
}

/// One item: its request (JSON) and, when it was answered at submission (a target that could
/// not be parsed), its bucket and result.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub request: String,
    pub answered: Option<(String, String)>,
}

/// A job row.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub created_by: String,
    pub context: String,
    pub created_us: i64,
    pub started_us: Option<i64>,
    pub finished_us: Option<i64>,
    pub cancel_requested: bool,
}

/// An item row. `state`: `pending`, `started` (handed to the pipeline, no result yet),
/// `finished` (result recorded) or `cancelled` (never started).
#[derive(Debug, Clone)]
pub struct ItemRow {
    pub seq: i64,
    pub request: String,
    pub state: String,
    pub bucket: Option<String>,
    pub result: Option<String>,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    NotFound,
    /// The job had already ended in this state.
    Finished(String),
    /// Marked: items not started will not start.
    Requested,
}

/// Filters of `GET /jobs`.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub created_by: Option<String>,
    /// Jobs strictly older than this `(created_us, id)`.
    pub before: Option<(i64, String)>,
    pub limit: i64,
}

/// A stored idempotency record.
#[derive(Debug, Clone)]
pub struct IdemRow {
    pub fingerprint: String,
    /// `running` or `done`.
    pub state: String,
    pub status: Option<i64>,
    pub headers: Option<String>,
    pub body: Option<Vec<u8>>,
    pub created_us: i64,
}

const JOB_COLS: &str = "id, kind, state, created_by, context, created_us, started_us, \
     finished_us, cancel_requested";

/// The durable work tables of the audit database.
#[derive(Clone, Debug)]
pub struct WorkStore {
    db: Db,
}

macro_rules! job_from_row {
    ($r:expr) => {{
        use sqlx::Row as _;
        let r = $r;
        JobRow {
            id: r.try_get("id").map_err(db_err)?,
            kind: r.try_get("kind").map_err(db_err)?,
            state: r.try_get("state").map_err(db_err)?,
            created_by: r.try_get("created_by").map_err(db_err)?,
            context: r.try_get("context").map_err(db_err)?,
            created_us: r.try_get("created_us").map_err(db_err)?,
            started_us: r.try_get("started_us").map_err(db_err)?,
            finished_us: r.try_get("finished_us").map_err(db_err)?,
            cancel_requested: r.try_get::<i64, _>("cancel_requested").map_err(db_err)? != 0,
        }
    }};
}

macro_rules! item_from_row {
    ($r:expr) => {{
        use sqlx::Row as _;
        let r = $r;
        ItemRow {
            seq: r.try_get("seq").map_err(db_err)?,
            request: r.try_get("request").map_err(db_err)?,
            state: r.try_get("state").map_err(db_err)?,
            bucket: r.try_get("bucket").map_err(db_err)?,
            result: r.try_get("result").map_err(db_err)?,
        }
    }};
}

impl WorkStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    fn begin_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "BEGIN IMMEDIATE",
            Db::Postgres(_) => "BEGIN",
        }
    }

    /// Inserts a job and all its items in one transaction: durable when this returns.
    pub async fn insert_job(&self, job: &NewJob) -> Result<(), AuditError> {
        let begin = self.begin_sql();
        with_db!(&self.db, p => {
            let mut tx = p.begin_with(begin).await.map_err(db_err)?;
            sqlx::query(
                "INSERT INTO jobs (id, kind, state, created_by, context, created_us, \
                 cancel_requested) VALUES ($1, $2, 'queued', $3, $4, $5, 0)",
            )
            .bind(&job.id)
            .bind(&job.kind)
            .bind(&job.created_by)
            .bind(&job.context)
            .bind(job.created_us)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            for (seq, item) in job.items.iter().enumerate() {
                let (state, bucket, result, fin) = match &item.answered {
                    Some((b, r)) => ("finished", Some(b.as_str()), Some(r.as_str()), Some(job.created_us)),
                    None => ("pending", None, None, None),
                };
                sqlx::query(
                    "INSERT INTO job_items (job_id, seq, request, state, bucket, result, \
                     finished_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(&job.id)
                .bind(seq as i64)
                .bind(&item.request)
                .bind(state)
                .bind(bucket)
                .bind(result)
                .bind(fin)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobRow>, AuditError> {
        let sql = format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1");
        with_db!(&self.db, p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => Ok(Some(job_from_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// Item counts of a job: `(state, bucket, count)`.
    pub async fn counts(&self, id: &str) -> Result<Vec<(String, Option<String>, i64)>, AuditError> {
        with_db!(&self.db, p => {
            let rows = sqlx::query(
                "SELECT state, bucket, COUNT(*) AS n FROM job_items WHERE job_id = $1 \
                 GROUP BY state, bucket",
            )
            .bind(id)
            .fetch_all(p)
            .await
            .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                use sqlx::Row as _;
                out.push((
                    r.try_get("state").map_err(db_err)?,
                    r.try_get("bucket").map_err(db_err)?,
                    r.try_get("n").map_err(db_err)?,
                ));
            }
            Ok(out)
        })
    }

    /// Items of a job with `seq > after`, in order, at most `limit`.
    pub async fn items(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ItemRow>, AuditError> {
        with_db!(&self.db, p => {
            let rows = sqlx::query(
                "SELECT seq, request, state, bucket, result FROM job_items \
                 WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await
            .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(item_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Items not finished yet (`pending` or `started`), in submission order.
    pub async fn open_items(&self, id: &str) -> Result<Vec<ItemRow>, AuditError> {
        with_db!(&self.db, p => {
            let rows = sqlx::query(
                "SELECT seq, request, state, bucket, result FROM job_items \
                 WHERE job_id = $1 AND state IN ('pending', 'started') ORDER BY seq",
            )
            .bind(id)
            .fetch_all(p)
            .await
            .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(item_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Jobs newest first, filtered.
    pub async fn list(&self, f: &JobFilter) -> Result<Vec<JobRow>, AuditError> {
        let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE 1 = 1");
        let mut n = 0;
        let mut ph = || {
            n += 1;
            format!("${n}")
        };
        if f.state.is_some() {
            sql.push_str(&format!(" AND state = {}", ph()));
        }
        if f.kind.is_some() {
            sql.push_str(&format!(" AND kind = {}", ph()));
        }
        if f.created_by.is_some() {
            sql.push_str(&format!(" AND created_by = {}", ph()));
        }
        if f.before.is_some() {
            let (a, b, c) = (ph(), ph(), ph());
            sql.push_str(&format!(
                " AND (created_us < {a} OR (created_us = {b} AND id < {c}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY created_us DESC, id DESC LIMIT {}",
            ph()
        ));
        with_db!(&self.db, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for v in [&f.state, &f.kind, &f.created_by].into_iter().flatten() {
                q = q.bind(v.clone());
            }
            if let Some((us, id)) = &f.before {
                q = q.bind(*us).bind(*us).bind(id.clone());
            }
            q = q.bind(f.limit);
            let rows = q.fetch_all(p).await.map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(job_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Requests a cancel: a queued job ends at once (all its items cancelled); a running job
    /// is marked and its items not started yet are cancelled in the same transaction, so no
    /// runner can start them afterwards.
    pub async fn cancel(&self, id: &str, now_us: i64) -> Result<CancelOutcome, AuditError> {
        let begin = self.begin_sql();
        let lock = if self.is_postgres() {
            " FOR UPDATE"
        } else {
            ""
        };
        let sel = format!("SELECT state FROM jobs WHERE id = $1{lock}");
        with_db!(&self.db, p => {
            use sqlx::Row as _;
            let mut tx = p.begin_with(begin).await.map_err(db_err)?;
            let row = sqlx::query(sqlx::AssertSqlSafe(sel))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            let Some(row) = row else {
                return Ok(CancelOutcome::NotFound);
            };
            let state: String = row.try_get("state").map_err(db_err)?;
            if !OPEN_STATES.contains(&state.as_str()) {
                return Ok(CancelOutcome::Finished(state));
            }
            sqlx::query(
                "UPDATE job_items SET state = 'cancelled', finished_us = $2 \
                 WHERE job_id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(now_us)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if state == "queued" {
                sqlx::query(
                    "UPDATE jobs SET cancel_requested = 1, state = 'cancelled', \
                     finished_us = $2 WHERE id = $1",
                )
                .bind(id)
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            } else {
                sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
            Ok(CancelOutcome::Requested)
        })
    }

    /// Claims the oldest open job nobody holds (no lease, or a lease that expired) for
    /// `owner` until `lease_until_us`, marking it running.
    pub async fn claim(
        &self,
        owner: &str,
        lease_until_us: i64,
        now_us: i64,
    ) -> Result<Option<JobRow>, AuditError> {
        let skip = if self.is_postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE jobs SET lease_owner = $1, lease_until_us = $2, state = 'running', \
             started_us = COALESCE(started_us, $3) WHERE id = (SELECT id FROM jobs \
             WHERE state IN ('queued', 'running') AND (lease_until_us IS NULL OR \
             lease_until_us < $3) ORDER BY created_us, id LIMIT 1{skip}) RETURNING {JOB_COLS}"
        );
        with_db!(&self.db, p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(lease_until_us)
                .bind(now_us)
                .fetch_optional(p)
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => Ok(Some(job_from_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// Extends `owner`'s lease; false when the lease is no longer `owner`'s (taken over).
    pub async fn renew(&self, id: &str, owner: &str, until_us: i64) -> Result<bool, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "UPDATE jobs SET lease_until_us = $3 WHERE id = $1 AND lease_owner = $2 \
                 AND state = 'running'",
            )
            .bind(id)
            .bind(owner)
            .bind(until_us)
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Gives a lease back (graceful stop): another runner may claim the job at once.
    pub async fn release(&self, id: &str, owner: &str) -> Result<(), AuditError> {
        with_db!(&self.db, p => {
            sqlx::query(
                "UPDATE jobs SET lease_owner = NULL, lease_until_us = NULL \
                 WHERE id = $1 AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        Ok(())
    }

    /// Drops every lease (SQLite at start: one process owns the file, so any lease is a dead
    /// run's).
    pub async fn release_all(&self) -> Result<u64, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "UPDATE jobs SET lease_owner = NULL, lease_until_us = NULL \
                 WHERE lease_owner IS NOT NULL",
            )
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected())
        })
    }

    /// Marks a pending item started, unless the job's cancel was requested or the lease is no
    /// longer `owner`'s. False: do not start it.
    pub async fn start_item(
        &self,
        id: &str,
        seq: i64,
        owner: &str,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "UPDATE job_items SET state = 'started', started_us = $3 \
                 WHERE job_id = $1 AND seq = $2 AND state = 'pending' AND EXISTS (SELECT 1 \
                 FROM jobs WHERE id = $1 AND cancel_requested = 0 AND lease_owner = $4)",
            )
            .bind(id)
            .bind(seq)
            .bind(now_us)
            .bind(owner)
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Records an item's result (once: a finished item is never written again).
    pub async fn finish_item(
        &self,
        id: &str,
        seq: i64,
        bucket: &str,
        result: &str,
        now_us: i64,
    ) -> Result<(), AuditError> {
        with_db!(&self.db, p => {
            sqlx::query(
                "UPDATE job_items SET state = 'finished', bucket = $3, result = $4, \
                 finished_us = $5 WHERE job_id = $1 AND seq = $2 AND state IN ('pending', 'started')",
            )
            .bind(id)
            .bind(seq)
            .bind(bucket)
            .bind(result)
            .bind(now_us)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        Ok(())
    }

    /// Whether the job's cancel was requested.
    pub async fn cancel_requested(&self, id: &str) -> Result<bool, AuditError> {
        Ok(self.job(id).await?.is_some_and(|j| j.cancel_requested))
    }

    /// Ends a job `owner` holds: cancels what is still pending and sets the final state.
    pub async fn finish_job(
        &self,
        id: &str,
        owner: &str,
        state: &str,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        let begin = self.begin_sql();
        with_db!(&self.db, p => {
            let mut tx = p.begin_with(begin).await.map_err(db_err)?;
            let r = sqlx::query(
                "UPDATE jobs SET state = $3, finished_us = $4, lease_owner = NULL, \
                 lease_until_us = NULL WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(id)
            .bind(owner)
            .bind(state)
            .bind(now_us)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            if r.rows_affected() == 1 {
                sqlx::query(
                    "UPDATE job_items SET state = 'cancelled', finished_us = $2 \
                     WHERE job_id = $1 AND state = 'pending'",
                )
                .bind(id)
                .bind(now_us)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }

    // ---- idempotency keys ----

    /// Inserts a `running` record; false when one exists for this principal and key.
    pub async fn idem_insert(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &str,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "INSERT INTO idempotency_keys (principal, idem_key, fingerprint, state, created_us) \
                 VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (principal, idem_key) DO NOTHING",
            )
            .bind(principal)
            .bind(key)
            .bind(fingerprint)
            .bind(now_us)
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }

    pub async fn idem_get(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdemRow>, AuditError> {
        with_db!(&self.db, p => {
            use sqlx::Row as _;
            let row = sqlx::query(
                "SELECT fingerprint, state, status, headers, body, created_us \
                 FROM idempotency_keys WHERE principal = $1 AND idem_key = $2",
            )
            .bind(principal)
            .bind(key)
            .fetch_optional(p)
            .await
            .map_err(db_err)?;
            match row {
                None => Ok(None),
                Some(r) => Ok(Some(IdemRow {
                    fingerprint: r.try_get("fingerprint").map_err(db_err)?,
                    state: r.try_get("state").map_err(db_err)?,
                    status: r.try_get("status").map_err(db_err)?,
                    headers: r.try_get("headers").map_err(db_err)?,
                    body: r.try_get("body").map_err(db_err)?,
                    created_us: r.try_get("created_us").map_err(db_err)?,
                })),
            }
        })
    }

    /// Takes over a `running` record created at `created_us` (its request died); false when
    /// it changed meanwhile.
    pub async fn idem_take_over(
        &self,
        principal: &str,
        key: &str,
        created_us: i64,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "UPDATE idempotency_keys SET created_us = $4 WHERE principal = $1 \
                 AND idem_key = $2 AND state = 'running' AND created_us = $3",
            )
            .bind(principal)
            .bind(key)
            .bind(created_us)
            .bind(now_us)
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Stores the answer of the `running` record created at `created_us` (not of a later
    /// take-over).
    pub async fn idem_complete(
        &self,
        principal: &str,
        key: &str,
        created_us: i64,
        status: i64,
        headers: &str,
        body: &[u8],
    ) -> Result<(), AuditError> {
        with_db!(&self.db, p => {
            sqlx::query(
                "UPDATE idempotency_keys SET state = 'done', status = $3, headers = $4, body = $5 \
                 WHERE principal = $1 AND idem_key = $2 AND created_us = $6",
            )
            .bind(principal)
            .bind(key)
            .bind(status)
            .bind(headers)
            .bind(body)
            .bind(created_us)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        Ok(())
    }

    /// Deletes a record (`created_us`: only that version of it).
    pub async fn idem_delete(
        &self,
        principal: &str,
        key: &str,
        created_us: Option<i64>,
    ) -> Result<(), AuditError> {
        with_db!(&self.db, p => {
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE principal = $1 AND idem_key = $2 \
                 AND ($3 IS NULL OR created_us = $3)",
            )
            .bind(principal)
            .bind(key)
            .bind(created_us)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        Ok(())
    }

    /// Deletes records created before `before_us`.
    pub async fn idem_prune(&self, before_us: i64) -> Result<u64, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query("DELETE FROM idempotency_keys WHERE created_us < $1")
                .bind(before_us)
                .execute(p)
                .await
                .map_err(db_err)?;
            Ok(r.rows_affected())
        })
    }
}
