//! Jobs (preheat): stored when created (PENDING), claimed by a runner (RUNNING, with a
//! heartbeat), finished as SUCCESS or FAILURE with per-task results and a readable log.
//! A RUNNING job whose heartbeat stops (its manager died) is put back to PENDING, so jobs
//! survive restarts, until it has run `jobs.max_attempts` times: then it ends as FAILURE.
//! The checked arguments the runner works from (`plan`) and the secrets (registry
//! passwords, auth headers) live in columns of their own; secrets never leave the store
//! except to the runner, and both are deleted when the job ends.

use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_col, now, rfc3339, Db, StoreError};
use crate::jobs::model::{JobResult, JobState};

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Job {
    /// Row ID.
    pub id: i64,
    /// `group_<uuid>`.
    pub task_id: String,
    /// `preheat`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text.
    pub bio: String,
    /// PENDING, RUNNING, SUCCESS or FAILURE.
    pub state: JobState,
    /// Arguments, secrets blanked.
    pub args: Value,
    /// Target clusters (empty = all).
    pub scheduler_cluster_ids: Vec<i64>,
    /// Per-cluster results and live progress.
    pub result: JobResult,
    /// What happened, for people.
    pub log: String,
    /// Creator.
    pub user_id: Option<i64>,
    /// Runs started (more than one after a restart).
    pub attempts: i64,
    /// Creation time.
    pub created_at: String,
    /// Last change (the runner's heartbeat while RUNNING).
    pub updated_at: String,
    /// First claimed.
    pub started_at: Option<String>,
    /// Finished.
    pub finished_at: Option<String>,
}

/// A claimed job with what the runner needs.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job.
    pub job: Job,
    /// Its checked arguments.
    pub plan: Value,
    /// Its secrets.
    pub secrets: Value,
}

/// Filters of a job listing.
#[derive(Debug, Clone, Default)]
pub struct JobQuery {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this type.
    pub kind: Option<String>,
    /// 1-based page.
    pub page: i64,
    /// Page size.
    pub per_page: i64,
}

/// What a new job row holds.
pub struct NewJobRow<'a> {
    /// `preheat`.
    pub kind: &'a str,
    /// Free text.
    pub bio: &'a str,
    /// Arguments as answered (secrets blanked).
    pub args: &'a Value,
    /// What the runner works from.
    pub plan: &'a Value,
    /// Credentials.
    pub secrets: &'a Value,
    /// Target clusters (empty = all).
    pub clusters: &'a [i64],
    /// Creator.
    pub user_id: Option<i64>,
}

fn job(r: &AnyRow) -> Result<Job, StoreError> {
    Ok(Job {
        id: r.try_get("id")?,
        task_id: r.try_get("task_id")?,
        kind: r.try_get("type")?,
        bio: r.try_get("bio")?,
        state: r.try_get::<String, _>("state")?.parse().map_err(
            |e: crate::jobs::model::UnknownState| StoreError::Corrupt {
                what: "state",
                message: e.to_string(),
            },
        )?,
        args: json_col(r, "args")?,
        scheduler_cluster_ids: json_col(r, "scheduler_cluster_ids")?,
        result: json_col(r, "result")?,
        log: r.try_get("log")?,
        user_id: r.try_get("user_id")?,
        attempts: r.try_get("attempts")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

const COLUMNS: &str = "id, task_id, type, bio, state, args, scheduler_cluster_ids, result, log, user_id, attempts, created_at, updated_at, started_at, finished_at";

impl Db {
    /// Stores a new PENDING job: `args` as answered (secrets blanked), the runner's `plan`
    /// and the `secrets` apart.
    pub async fn create_job(&self, new: &NewJobRow<'_>) -> Result<Job, StoreError> {
        let t = now();
        let row = sqlx::query(&format!(
            "INSERT INTO jobs (task_id, type, bio, state, args, plan, secrets, scheduler_cluster_ids, result, log, user_id, attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '{{}}', '', $9, 0, $10, $10) RETURNING {COLUMNS}"
        ))
        .bind(format!("group_{}", uuid::Uuid::new_v4()))
        .bind(new.kind)
        .bind(new.bio)
        .bind(JobState::Pending.as_str())
        .bind(new.args.to_string())
        .bind(new.plan.to_string())
        .bind(new.secrets.to_string())
        .bind(serde_json::to_string(new.clusters).expect("ids serialize"))
        .bind(new.user_id)
        .bind(&t)
        .fetch_one(&self.pool)
        .await?;
        job(&row)
    }

    /// One job.
    pub async fn job(&self, id: i64) -> Result<Job, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(job)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// Jobs, newest first, and how many match in total.
    pub async fn jobs(&self, q: &JobQuery) -> Result<(Vec<Job>, i64), StoreError> {
        let per_page = q.per_page.clamp(1, 1000);
        let offset = (q.page.max(1) - 1) * per_page;
        let filter = "WHERE ($1 = '' OR state = $1) AND ($2 = '' OR type = $2)";
        let state = q.state.map(JobState::as_str).unwrap_or_default();
        let kind = q.kind.clone().unwrap_or_default();
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs {filter} ORDER BY id DESC LIMIT $3 OFFSET $4"
        ))
        .bind(state)
        .bind(&kind)
        .bind(per_page)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM jobs {filter}"))
            .bind(state)
            .bind(&kind)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok((rows.iter().map(job).collect::<Result<_, _>>()?, total))
    }

    /// Takes the oldest PENDING job for this runner (RUNNING, one more attempt). Safe with
    /// several managers on one database: only one of them gets a given job.
    pub async fn claim_job(&self) -> Result<Option<Claimed>, StoreError> {
        loop {
            let next =
                sqlx::query("SELECT id FROM jobs WHERE state = 'PENDING' ORDER BY id LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?;
            let Some(next) = next else { return Ok(None) };
            let id: i64 = next.try_get("id")?;
            let t = now();
            let row = sqlx::query(&format!(
                "UPDATE jobs SET state = 'RUNNING', attempts = attempts + 1, updated_at = $1, \
                 started_at = COALESCE(started_at, $1) WHERE id = $2 AND state = 'PENDING' RETURNING {COLUMNS}, plan, secrets"
            ))
            .bind(&t)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            // Lost the race to another runner: try the next one.
            let Some(row) = row else { continue };
            return Ok(Some(Claimed {
                job: job(&row)?,
                plan: json_col(&row, "plan")?,
                secrets: json_col(&row, "secrets")?,
            }));
        }
    }

    /// The runner's heartbeat on a RUNNING job, with its progress so far.
    pub async fn job_progress(
        &self,
        id: i64,
        result: &JobResult,
        log: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET updated_at = $1, result = $2, log = $3 WHERE id = $4 AND state = 'RUNNING'")
            .bind(now())
            .bind(serde_json::to_string(result).expect("results serialize"))
            .bind(log)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a RUNNING job as `state` (SUCCESS or FAILURE). Its secrets and plan (which holds
    /// the URLs as given, signatures included) are deleted: only the runner needed them.
    pub async fn finish_job(
        &self,
        id: i64,
        state: JobState,
        result: &JobResult,
        log: &str,
    ) -> Result<(), StoreError> {
        let t = now();
        sqlx::query(
            "UPDATE jobs SET state = $1, result = $2, log = $3, updated_at = $4, finished_at = $4, \
             secrets = '{}', plan = '{}' WHERE id = $5 AND state = 'RUNNING'",
        )
        .bind(state.as_str())
        .bind(serde_json::to_string(result).expect("results serialize"))
        .bind(log)
        .bind(&t)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Puts RUNNING jobs without a heartbeat for `stale` back to PENDING (their runner
    /// died), except those that ran `max_attempts` times already: they end as FAILURE with a
    /// log line saying why, their secrets deleted. Returns the IDs requeued and failed.
    pub async fn requeue_stale_jobs(
        &self,
        stale: std::time::Duration,
        max_attempts: u32,
    ) -> Result<(Vec<i64>, Vec<i64>), StoreError> {
        let cutoff =
            rfc3339(chrono::Utc::now() - chrono::Duration::from_std(stale).unwrap_or_default());
        let t = now();
        let stamp = chrono::Utc::now().format("%H:%M:%S");
        let line = format!(
            "{stamp} the manager running this job stopped {max_attempts} times \
             (jobs.max_attempts); not running it again\n{stamp} FAILURE\n"
        );
        let failed = sqlx::query(
            "UPDATE jobs SET state = 'FAILURE', log = log || $1, updated_at = $2, finished_at = $2, \
             secrets = '{}', plan = '{}' \
             WHERE state = 'RUNNING' AND updated_at < $3 AND attempts >= $4 RETURNING id",
        )
        .bind(line)
        .bind(&t)
        .bind(&cutoff)
        .bind(i64::from(max_attempts))
        .fetch_all(&self.pool)
        .await?;
        let requeued = sqlx::query(
            "UPDATE jobs SET state = 'PENDING', updated_at = $1 WHERE state = 'RUNNING' AND updated_at < $2 RETURNING id",
        )
        .bind(&t)
        .bind(&cutoff)
        .fetch_all(&self.pool)
        .await?;
        let ids = |rows: Vec<AnyRow>| -> Result<Vec<i64>, StoreError> {
            rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
        };
        Ok((ids(requeued)?, ids(failed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .await
            .unwrap();
        (dir, db)
    }

    async fn new_job(db: &Db) -> i64 {
        let secrets = serde_json::json!({"username": "u", "password": "hunter22", "headers": {}});
        db.create_job(&NewJobRow {
            kind: "preheat",
            bio: "",
            args: &serde_json::json!({}),
            plan: &serde_json::json!({"urls": ["https://h/f?sig=abc"]}),
            secrets: &secrets,
            clusters: &[],
            user_id: None,
        })
        .await
        .unwrap()
        .id
    }

    async fn raw(db: &Db, id: i64) -> (String, String) {
        let row = sqlx::query("SELECT secrets, plan FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (
            row.try_get("secrets").unwrap(),
            row.try_get("plan").unwrap(),
        )
    }

    #[tokio::test]
    async fn a_finished_job_keeps_no_secrets() {
        let (_dir, db) = db().await;
        let id = new_job(&db).await;
        assert!(raw(&db, id).await.0.contains("hunter22"));
        db.claim_job().await.unwrap().unwrap();
        db.finish_job(id, JobState::Failure, &JobResult::default(), "")
            .await
            .unwrap();
        assert_eq!(raw(&db, id).await, ("{}".to_owned(), "{}".to_owned()));
    }

    #[tokio::test]
    async fn a_job_whose_manager_dies_max_attempts_times_fails() {
        let (_dir, db) = db().await;
        let id = new_job(&db).await;
        let stale = std::time::Duration::ZERO;
        for attempt in 1..=3 {
            let c = db.claim_job().await.unwrap().expect("pending again");
            assert_eq!(c.job.attempts, attempt);
            // The runner dies here; its heartbeat gets old.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let (requeued, failed) = db.requeue_stale_jobs(stale, 3).await.unwrap();
            if attempt < 3 {
                assert_eq!((requeued, failed), (vec![id], vec![]));
            } else {
                assert_eq!((requeued, failed), (vec![], vec![id]));
            }
        }
        let job = db.job(id).await.unwrap();
        assert_eq!(job.state, JobState::Failure);
        assert!(
            job.log.contains("stopped 3 times (jobs.max_attempts)"),
            "{}",
            job.log
        );
        assert!(job.finished_at.is_some());
        assert!(db.claim_job().await.unwrap().is_none(), "not run again");
        assert_eq!(raw(&db, id).await.0, "{}");
    }

    /// A job stored before migration 0003 (plan and secrets together in `secrets`) is split
    /// when the manager starts on that database.
    #[tokio::test]
    async fn old_jobs_get_their_plan_split_from_their_secrets() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        // The schema as it was: migrations 0001 and 0002 only.
        let old = dir.path().join("old");
        std::fs::create_dir(&old).unwrap();
        for f in ["0001_initial.sql", "0002_image_tags.sql"] {
            let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations/sqlite")
                .join(f);
            std::fs::copy(src, old.join(f)).unwrap();
        }
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        sqlx::migrate::Migrator::new(old.as_path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        let stored = serde_json::json!({
            "preheat": {"kind": "file", "urls": ["https://h/f"]},
            "secrets": {"username": "u", "password": "p", "headers": {}}
        });
        sqlx::query(
            "INSERT INTO jobs (task_id, type, bio, state, args, secrets, scheduler_cluster_ids, result, log, attempts, created_at, updated_at) \
             VALUES ('group_x', 'preheat', '', 'PENDING', '{}', $1, '[]', '{}', '', 0, 't', 't')",
        )
        .bind(stored.to_string())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        let db = Db::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .await
            .unwrap();
        let c = db.claim_job().await.unwrap().expect("the old job");
        assert_eq!(c.plan, stored["preheat"]);
        assert_eq!(c.secrets, stored["secrets"]);
        assert_eq!(c.job.state, JobState::Running);
    }
}
