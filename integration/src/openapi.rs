//! Blocking calls to a manager's REST and Open API, for tests that drive it as operators do:
//! a personal access token with the `job` scope, creating jobs and waiting for them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::manager::ROOT_PASSWORD;

/// Blocking JSON calls to the manager.
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Http {
    /// A client for the manager at `base` (`http://host:port`).
    pub fn new(base: &str) -> Http {
        Http {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
            base: base.to_owned(),
        }
    }
    /// `method path` with bearer `token` and JSON `body`: status and JSON answer (status 0
    /// when the request failed).
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.rt.block_on(async {
            let mut r = self
                .client
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            match r.send().await {
                Ok(res) => {
                    let s = res.status().as_u16();
                    (s, res.json().await.unwrap_or(Value::Null))
                }
                Err(e) => (0, Value::String(e.to_string())),
            }
        })
    }
    /// POST.
    pub fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
    }
    /// GET.
    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, token, None)
    }
}

/// Signs in as root and creates a personal access token with the `job` scope.
pub fn job_token(http: &Http) -> String {
    let (_, v) = http.post(
        "/api/v1/users/signin",
        "",
        json!({"name": "root", "password": ROOT_PASSWORD}),
    );
    let session = v["token"].as_str().expect("session").to_owned();
    let (s, v) = http.post(
        "/api/v1/personal-access-tokens",
        &session,
        json!({"name": "e2e", "scopes": ["job"]}),
    );
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// Polls a job until it ends; the final job.
pub fn wait_job(http: &Http, token: &str, id: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, job) = http.get(&format!("/oapi/v1/jobs/{id}"), token);
        if job["state"] == "SUCCESS" || job["state"] == "FAILURE" || Instant::now() > deadline {
            return job;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Creates a job of `kind` with `args` on the Open API and waits (up to two minutes) for it to
/// end; the final job. While the scheduler's registration and the hosts' announcements are not
/// in yet (a FAILURE saying there is no active scheduler, seed peer or host), it tries again for
/// up to 30 s.
pub fn run_job(http: &Http, token: &str, kind: &str, args: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = http.post("/oapi/v1/jobs", token, json!({"type": kind, "args": args}));
        assert_eq!(s, 201, "{kind}: {v}");
        let done = wait_job(
            http,
            token,
            v["id"].as_i64().unwrap(),
            Duration::from_secs(120),
        );
        let log = done["log"].as_str().unwrap_or_default();
        let early = [
            "no active scheduler",
            "no seed peer",
            "no host is announced",
        ]
        .iter()
        .any(|m| log.contains(m));
        if done["state"] == "FAILURE" && early && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        return done;
    }
}
