//! Secrets: a job's registry credentials and headers are never answered or logged and are
//! deleted when it ends; signed-URL query values are redacted in answers, progress, results
//! and logs. And the attempt cap: a job whose manager keeps dying ends as FAILURE.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use sqlx::Row;

use crate::harness::{client_from, database_url, start, start_in};

/// Everything the process logs from now on, at debug level.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SECRETS: [&str; 5] = [
    "SIGVALUE",
    "CREDVALUE",
    "reg-user",
    "PASSVALUE",
    "HEADERVALUE",
];

async fn stored(db_url: &str, id: i64) -> (String, String, String) {
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    let row = sqlx::query("SELECT secrets, plan, args FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    let get = |c: &str| row.try_get::<String, _>(c).unwrap();
    (get("secrets"), get("plan"), get("args"))
}

#[tokio::test]
async fn secrets_are_never_shown_or_logged_and_are_gone_when_the_job_ends() {
    let logs = captured_logs();
    sqlx::any::install_default_drivers();
    let m = start(|c| {
        c.jobs.allowed_networks = vec!["127.0.0.0/8".parse().unwrap()];
        // One job at a time, and the first one hangs for a while: the job under test waits
        // in the queue, so its stored secrets can be seen before a runner takes them away.
        c.jobs.concurrency = 1;
        c.jobs.resolve_timeout_secs = 2;
    })
    .await;
    let c = client_from("127.0.0.1");
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (status, blocker) = m
        .create_job(
            &c,
            json!({"type": "preheat", "args": {"type": "image",
                "url": format!("http://{silent_addr}/v2/app/manifests/latest")}}),
        )
        .await;
    assert_eq!(status, 201, "{blocker}");
    let url = "http://127.0.0.1:1/bucket/f?X-Amz-Credential=CREDVALUE&X-Amz-Signature=SIGVALUE";
    let (status, created) = m
        .create_job(
            &c,
            json!({"type": "preheat", "args": {"type": "file", "url": url,
                "username": "reg-user", "password": "PASSVALUE",
                "headers": {"Authorization": "Bearer HEADERVALUE"}}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        created["args"]["url"],
        "http://127.0.0.1:1/bucket/f?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED"
    );
    let db_url = m.db_url();
    assert!(
        stored(&db_url, id).await.0.contains("PASSVALUE"),
        "kept for the runner"
    );
    // No scheduler is registered: the job resolves its task, then fails.
    let job = m.finished_job(&c, id).await;
    assert_eq!(job["state"], "FAILURE", "{job}");
    assert!(
        job["log"].as_str().unwrap().contains("no active scheduler"),
        "{job}"
    );
    let progress = &job["result"]["progress"][0]["url"];
    assert_eq!(progress, &created["args"]["url"], "{job}");
    let (secrets, plan, args) = stored(&db_url, id).await;
    assert_eq!((secrets.as_str(), plan.as_str()), ("{}", "{}"));
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("job created") && logs.contains("preheat"),
        "the capture works: {logs}"
    );
    for secret in SECRETS {
        for (what, text) in [
            ("creation answer", created.to_string()),
            ("job answer", job.to_string()),
            ("stored args", args.clone()),
            ("log", logs.clone()),
        ] {
            assert!(!text.contains(secret), "{secret} in the {what}: {text}");
        }
    }
}

#[tokio::test]
async fn a_job_whose_manager_died_max_attempts_times_fails_with_a_log_line() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let db_url = database_url(dir.path());
    let db = dragonfly_manager::store::Db::open(&db_url).await.unwrap();
    let job = db
        .create_job(&dragonfly_manager::store::jobs::NewJobRow {
            kind: "preheat",
            bio: "",
            args: &json!({}),
            plan: &json!({}),
            secrets: &json!({"password": "PASSVALUE"}),
            clusters: &[],
            user_id: None,
        })
        .await
        .unwrap();
    // Its manager died during its second run long ago.
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    sqlx::query("UPDATE jobs SET state = 'RUNNING', attempts = 2, updated_at = '2000-01-01T00:00:00.000Z' WHERE id = $1")
        .bind(job.id)
        .execute(&pool)
        .await
        .unwrap();
    let m = start_in(dir, |c| c.jobs.max_attempts = 2).await;
    let c = client_from("127.0.0.1");
    let done = m.finished_job(&c, job.id).await;
    assert_eq!(done["state"], "FAILURE", "{done}");
    assert_eq!(done["attempts"], 2, "not run a third time: {done}");
    let log = done["log"].as_str().unwrap();
    assert!(
        log.contains("stopped 2 times (jobs.max_attempts); not running it again"),
        "{log}"
    );
    assert_eq!(stored(&m.db_url(), job.id).await.0, "{}");
}
