//! Durable work kept beside the audit events, in the same database (one backup, one replica
//! story): jobs and their items, idempotency keys and webhook deliveries. Plain rows; the service layer
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
    /// When its result was recorded.
    pub finished_us: Option<i64>,
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
            finished_us: r.try_get("finished_us").map_err(db_err)?,
        }
    }};
}

macro_rules! delivery_from_row {
    ($r:expr) => {{
        use sqlx::Row as _;
        let r = $r;
        DeliveryRow {
            source: r.try_get("source").map_err(db_err)?,
            delivery_id: r.try_get("delivery_id").map_err(db_err)?,
            state: r.try_get("state").map_err(db_err)?,
            status: r.try_get("status").map_err(db_err)?,
            created_us: r.try_get("created_us").map_err(db_err)?,
            job_id: r.try_get("job_id").map_err(db_err)?,
            ticket: r.try_get("ticket").map_err(db_err)?,
            ticket_id: r.try_get("ticket_id").map_err(db_err)?,
            write_back: r.try_get("write_back").map_err(db_err)?,
            write_back_detail: r.try_get("write_back_detail").map_err(db_err)?,
            write_back_attempts: r.try_get("write_back_attempts").map_err(db_err)?,
            write_back_updated_us: r.try_get("write_back_updated_us").map_err(db_err)?,
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
                "SELECT seq, request, state, bucket, result, finished_us FROM job_items \
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
                "SELECT seq, request, state, bucket, result, finished_us FROM job_items \
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

    // ---- first answers: idempotency keys and webhook deliveries ----
    //
    // Both tables keep "the first answer wins" records keyed by (owner, key): the principal
    // and its `Idempotency-Key`, or the webhook source and its delivery id. One set of
    // statements serves both ([`AnswerTable`]).

    /// Inserts a `running` record; false when one exists for this owner and key.
    pub async fn answer_insert(
        &self,
        t: AnswerTable,
        owner: &str,
        key: &str,
        fingerprint: &str,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        let (table, o, k) = t.names();
        let sql = format!(
            "INSERT INTO {table} ({o}, {k}, fingerprint, state, created_us) \
             VALUES ($1, $2, $3, 'running', $4) ON CONFLICT ({o}, {k}) DO NOTHING"
        );
        with_db!(&self.db, p => {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(key)
                .bind(fingerprint)
                .bind(now_us)
                .execute(p)
                .await
                .map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }

    pub async fn answer_get(
        &self,
        t: AnswerTable,
        owner: &str,
        key: &str,
    ) -> Result<Option<IdemRow>, AuditError> {
        let (table, o, k) = t.names();
        let sql = format!(
            "SELECT fingerprint, state, status, headers, body, created_us \
             FROM {table} WHERE {o} = $1 AND {k} = $2"
        );
        with_db!(&self.db, p => {
            use sqlx::Row as _;
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
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
    pub async fn answer_take_over(
        &self,
        t: AnswerTable,
        owner: &str,
        key: &str,
        created_us: i64,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        let (table, o, k) = t.names();
        let sql = format!(
            "UPDATE {table} SET created_us = $4 WHERE {o} = $1 \
             AND {k} = $2 AND state = 'running' AND created_us = $3"
        );
        with_db!(&self.db, p => {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
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
    #[expect(clippy::too_many_arguments, reason = "one statement's bind values")]
    pub async fn answer_complete(
        &self,
        t: AnswerTable,
        owner: &str,
        key: &str,
        created_us: i64,
        status: i64,
        headers: &str,
        body: &[u8],
    ) -> Result<(), AuditError> {
        let (table, o, k) = t.names();
        let sql = format!(
            "UPDATE {table} SET state = 'done', status = $3, headers = $4, body = $5 \
             WHERE {o} = $1 AND {k} = $2 AND created_us = $6"
        );
        with_db!(&self.db, p => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
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
    pub async fn answer_delete(
        &self,
        t: AnswerTable,
        owner: &str,
        key: &str,
        created_us: Option<i64>,
    ) -> Result<(), AuditError> {
        let (table, o, k) = t.names();
        let sql = format!(
            "DELETE FROM {table} WHERE {o} = $1 AND {k} = $2 \
             AND ($3 IS NULL OR created_us = $3)"
        );
        with_db!(&self.db, p => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(owner)
                .bind(key)
                .bind(created_us)
                .execute(p)
                .await
                .map_err(db_err)?;
        });
        Ok(())
    }

    /// Deletes records created before `before_us`.
    pub async fn answer_prune(&self, t: AnswerTable, before_us: i64) -> Result<u64, AuditError> {
        let (table, _, _) = t.names();
        // A delivery whose ticket still waits for its write-back is kept until it is written
        // or given up.
        let keep = match t {
            AnswerTable::Webhooks => " AND write_back <> 'pending'",
            _ => "",
        };
        let sql = format!("DELETE FROM {table} WHERE created_us < $1{keep}");
        with_db!(&self.db, p => {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(before_us)
                .execute(p)
                .await
                .map_err(db_err)?;
            Ok(r.rows_affected())
        })
    }

    // ---- idempotency keys (the first-answer statements on `idempotency_keys`) ----

    /// Inserts a `running` record; false when one exists for this principal and key.
    pub async fn idem_insert(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &str,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        self.answer_insert(
            AnswerTable::Idempotency,
            principal,
            key,
            fingerprint,
            now_us,
        )
        .await
    }

    pub async fn idem_get(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<IdemRow>, AuditError> {
        self.answer_get(AnswerTable::Idempotency, principal, key)
            .await
    }

    /// Deletes a record (`created_us`: only that version of it).
    pub async fn idem_delete(
        &self,
        principal: &str,
        key: &str,
        created_us: Option<i64>,
    ) -> Result<(), AuditError> {
        self.answer_delete(AnswerTable::Idempotency, principal, key, created_us)
            .await
    }

    /// Deletes records created before `before_us`.
    pub async fn idem_prune(&self, before_us: i64) -> Result<u64, AuditError> {
        self.answer_prune(AnswerTable::Idempotency, before_us).await
    }

    // ---- webhook deliveries: what a delivery led to, and its write-back state ----

    /// Records what a delivery led to, with its stored answer (one statement, so a duplicate
    /// never sees the answer without the job).
    pub async fn delivery_complete(&self, d: &DeliveryDone<'_>) -> Result<(), AuditError> {
        with_db!(&self.db, p => {
            sqlx::query(
                "UPDATE webhook_deliveries SET state = 'done', status = $3, headers = $4, \
                 body = $5, job_id = $6, ticket = $7, ticket_id = $8, write_back = $9, \
                 write_back_updated_us = $10 \
                 WHERE source = $1 AND delivery_id = $2 AND created_us = $11",
            )
            .bind(d.source)
            .bind(d.delivery_id)
            .bind(d.status)
            .bind(d.headers)
            .bind(d.body)
            .bind(d.job_id)
            .bind(d.ticket)
            .bind(d.ticket_id)
            .bind(d.write_back)
            .bind(d.now_us)
            .bind(d.created_us)
            .execute(p)
            .await
            .map_err(db_err)?;
        });
        Ok(())
    }

    /// The delivery that created job `job_id`, if any.
    pub async fn delivery_of_job(&self, job_id: &str) -> Result<Option<DeliveryRow>, AuditError> {
        let sql = format!("SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE job_id = $1");
        with_db!(&self.db, p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(job_id)
                .fetch_optional(p)
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => Ok(Some(delivery_from_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// One delivery.
    pub async fn delivery(
        &self,
        source: &str,
        delivery_id: &str,
    ) -> Result<Option<DeliveryRow>, AuditError> {
        let sql = format!(
            "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE source = $1 AND delivery_id = $2"
        );
        with_db!(&self.db, p => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(source)
                .bind(delivery_id)
                .fetch_optional(p)
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => Ok(Some(delivery_from_row!(&r))),
                None => Ok(None),
            }
        })
    }

    /// Deliveries whose write-back is `pending`, whose job has ended and which nobody holds
    /// (no claim, or a claim or retry delay that ended before `now_us`), oldest first.
    pub async fn pending_write_backs(
        &self,
        limit: i64,
        now_us: i64,
    ) -> Result<Vec<DeliveryRow>, AuditError> {
        let cols = DELIVERY_COLS
            .split(", ")
            .map(|c| format!("d.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {cols} FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id \
             WHERE d.write_back = 'pending' AND j.state NOT IN ('queued', 'running') \
             AND (d.write_back_until_us IS NULL OR d.write_back_until_us < $2) \
             ORDER BY d.created_us, d.delivery_id LIMIT $1"
        );
        with_db!(&self.db, p => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(limit)
                .bind(now_us)
                .fetch_all(p)
                .await
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(delivery_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Claims a pending write-back for `owner` until `until_us` (like a job's lease): the
    /// attempts made so far when this call got it (nobody else holds it, and its retry delay
    /// is over), `None` otherwise. A claim that is not recorded by then (its holder died) can
    /// be claimed again.
    pub async fn claim_write_back(
        &self,
        source: &str,
        delivery_id: &str,
        owner: &str,
        until_us: i64,
        now_us: i64,
    ) -> Result<Option<i64>, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "UPDATE webhook_deliveries SET write_back_owner = $3, write_back_until_us = $4 \
                 WHERE source = $1 AND delivery_id = $2 AND write_back = 'pending' \
                 AND (write_back_until_us IS NULL OR write_back_until_us < $5) \
                 RETURNING write_back_attempts",
            )
            .bind(source)
            .bind(delivery_id)
            .bind(owner)
            .bind(until_us)
            .bind(now_us)
            .fetch_optional(p)
            .await
            .map_err(db_err)?;
            match r {
                Some(row) => Ok(Some(sqlx::Row::try_get::<i64, _>(&row, 0).map_err(db_err)?)),
                None => Ok(None),
            }
        })
    }

    /// Drops every write-back claim (SQLite at start: one process owns the file, so a claim
    /// in it is a dead run's). Retry delays stay.
    pub async fn release_write_backs(&self) -> Result<u64, AuditError> {
        with_db!(&self.db, p => {
            let r = sqlx::query(
                "UPDATE webhook_deliveries SET write_back_owner = NULL, write_back_until_us = NULL \
                 WHERE write_back_owner IS NOT NULL",
            )
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected())
        })
    }

    /// Records a write-back attempt: the new state (`pending` to try again, `done`,
    /// `failed`), its detail, one more attempt; the claim is dropped and `not_before_us`
    /// (a retry's delay) kept. With `owner`, only while the claim is still `owner`'s. False
    /// when the delivery is unknown (or the claim is someone else's).
    pub async fn record_write_back(
        &self,
        source: &str,
        delivery_id: &str,
        state: &str,
        detail: Option<&str>,
        now_us: i64,
    ) -> Result<bool, AuditError> {
        self.record_write_back_by(source, delivery_id, None, state, detail, now_us, None)
            .await
    }

    /// [`WorkStore::record_write_back`] by a claim's `owner`, with a retry delay.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_write_back_by(
        &self,
        source: &str,
        delivery_id: &str,
        owner: Option<&str>,
        state: &str,
        detail: Option<&str>,
        now_us: i64,
        not_before_us: Option<i64>,
    ) -> Result<bool, AuditError> {
        let sql = format!(
            "UPDATE webhook_deliveries SET write_back = $3, write_back_detail = $4, \
             write_back_attempts = write_back_attempts + 1, write_back_updated_us = $5, \
             write_back_owner = NULL, write_back_until_us = $6 \
             WHERE source = $1 AND delivery_id = $2{}",
            if owner.is_some() {
                " AND write_back_owner = $7"
            } else {
                ""
            }
        );
        with_db!(&self.db, p => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(source)
                .bind(delivery_id)
                .bind(state)
                .bind(detail)
                .bind(now_us)
                .bind(not_before_us);
            if let Some(o) = owner {
                q = q.bind(o);
            }
            let r = q
            .execute(p)
            .await
            .map_err(db_err)?;
            Ok(r.rows_affected() == 1)
        })
    }
}

/// The two first-answer tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerTable {
    /// `idempotency_keys` (principal, idem_key).
    Idempotency,
    /// `webhook_deliveries` (source, delivery_id).
    Webhooks,
}

impl AnswerTable {
    /// Table, owner column, key column (fixed names, never request text).
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            AnswerTable::Idempotency => ("idempotency_keys", "principal", "idem_key"),
            AnswerTable::Webhooks => ("webhook_deliveries", "source", "delivery_id"),
        }
    }
}

/// What a delivery led to, stored with its answer.
#[derive(Debug, Clone)]
pub struct DeliveryDone<'a> {
    pub source: &'a str,
    pub delivery_id: &'a str,
    pub created_us: i64,
    pub status: i64,
    pub headers: &'a str,
    pub body: &'a [u8],
    pub job_id: Option<&'a str>,
    pub ticket: Option<&'a str>,
    pub ticket_id: Option<&'a str>,
    /// `none` or `pending`.
    pub write_back: &'a str,
    pub now_us: i64,
}

/// A webhook delivery row (without its stored answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub source: String,
    pub delivery_id: String,
    pub state: String,
    pub status: Option<i64>,
    pub created_us: i64,
    pub job_id: Option<String>,
    pub ticket: Option<String>,
    pub ticket_id: Option<String>,
    /// `none`, `pending`, `done` or `failed`.
    pub write_back: String,
    pub write_back_detail: Option<String>,
    pub write_back_attempts: i64,
    pub write_back_updated_us: Option<i64>,
}

const DELIVERY_COLS: &str = "source, delivery_id, state, status, created_us, job_id, ticket, \
     ticket_id, write_back, write_back_detail, write_back_attempts, write_back_updated_us";
