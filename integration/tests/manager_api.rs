//! The manager's HTTP and gRPC contract against the real binary, on SQLite and on a real
//! PostgreSQL: sign-in, personal access tokens (401 / 403 / revoke), clusters, job creation
//! with every kind of bad input answered 400 naming the field, rate limiting (429), a job
//! that cannot run ending FAILURE with a log that says why, and scheduler registration,
//! keepalive and scheduler lists over gRPC.

use std::time::Duration;

use dragonfly_integration::manager::{Manager, ROOT_PASSWORD};
use dragonfly_integration::postgres::Postgres;
use dragonfly_integration::procs::TestDir;
use dragonfly_proto::manager as mpb;
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, token, None).await
    }
}

async fn contract(m: &Manager) {
    let api = Api {
        http: reqwest::Client::new(),
        base: m.url.clone(),
    };
    let (s, _) = api.get("/healthy", None).await;
    assert_eq!(s, StatusCode::OK);

    // Sign-in.
    let (s, v) = api
        .post(
            "/api/v1/users/signin",
            None,
            json!({"name": "root", "password": "wrong password"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, v) = api
        .post(
            "/api/v1/users/signin",
            None,
            json!({"name": "root", "password": ROOT_PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let session = v["token"].as_str().unwrap().to_owned();
    let (s, v) = api.get("/api/v1/users/me", Some(&session)).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("root")));
    let (s, _) = api.get("/api/v1/clusters", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Tokens: shown once, stored hashed; scopes and revocation enforced.
    let (s, v) = api
        .post(
            "/api/v1/personal-access-tokens",
            Some(&session),
            json!({"name": "ci", "scopes": ["job"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let job_token = v["token"].as_str().unwrap().to_owned();
    let job_token_id = v["id"].as_i64().unwrap();
    let (_, v) = api
        .post(
            "/api/v1/personal-access-tokens",
            Some(&session),
            json!({"name": "ops", "scopes": ["cluster"], "expires_in_days": 1}),
        )
        .await;
    let cluster_token = v["token"].as_str().unwrap().to_owned();
    let (s, v) = api
        .post(
            "/api/v1/personal-access-tokens",
            Some(&session),
            json!({"name": "x", "scopes": ["admin"]}),
        )
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("scopes")),
        "{v}"
    );
    let (_, v) = api
        .get("/api/v1/personal-access-tokens", Some(&session))
        .await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        !v.to_string().contains(&job_token),
        "listing never shows secrets"
    );

    let (s, _) = api.get("/oapi/v1/jobs", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api.get("/oapi/v1/jobs", Some("dfp_not-a-real-token")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api.get("/oapi/v1/jobs", Some(&session)).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a session is not a personal access token"
    );
    let (s, v) = api.get("/oapi/v1/jobs", Some(&cluster_token)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = api.get("/oapi/v1/clusters", Some(&job_token)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = api.get("/oapi/v1/clusters", Some(&cluster_token)).await;
    assert_eq!(s, StatusCode::OK);
    let default_cluster = v[0]["id"].as_i64().unwrap();
    assert_eq!(v[0]["is_default"], true);

    // Clusters.
    let (s, v) = api.post("/oapi/v1/clusters", Some(&cluster_token), json!({"name": "slow", "scopes": {"cidrs": ["10.9.0.0/16"]}, "config": {"job_rate_limit": 2}})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let slow = v["id"].as_i64().unwrap();
    let (s, v) = api
        .post(
            "/oapi/v1/clusters",
            Some(&cluster_token),
            json!({"name": "bad", "scopes": {"cidrs": ["10.0.0.0/99"]}}),
        )
        .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("scopes.cidrs")),
        "{v}"
    );
    let (s, _) = api
        .post(
            "/oapi/v1/clusters",
            Some(&cluster_token),
            json!({"name": "slow"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Jobs: the operators' request verbatim.
    let preheat = json!({"type": "preheat", "args": {"type": "image", "url": "http://127.0.0.1:1/v2/library/app/manifests/v1", "username": "u", "password": "very-secret"}});
    let (s, v) = api
        .post("/oapi/v1/jobs", Some(&job_token), preheat.clone())
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"], "PENDING");
    assert!(v["task_id"].as_str().unwrap().starts_with("group_"), "{v}");
    assert!(
        !v.to_string().contains("very-secret"),
        "secrets are never returned: {v}"
    );
    let id = v["id"].as_i64().unwrap();
    for (body, field) in [
        (
            json!({"type": "preheat", "args": {"type": "image"}}),
            "args.url",
        ),
        (json!({"type": "gc", "args": {}}), "type"),
        (
            json!({"type": "preheat", "args": {"type": "oci", "url": "http://r/v2/a/manifests/b"}}),
            "args.type",
        ),
        (
            json!({"type": "preheat", "args": {"type": "file", "url": "not a url"}}),
            "args.url",
        ),
        (
            json!({"type": "preheat", "args": {"type": "file", "url": "http://h/f", "pieceLength": 12345}}),
            "args.pieceLength",
        ),
        (
            json!({"type": "preheat", "args": {"type": "file", "url": "http://h/f"}, "scheduler_cluster_ids": [9999]}),
            "scheduler_cluster_ids",
        ),
    ] {
        let (s, v) = api
            .post("/oapi/v1/jobs", Some(&job_token), body.clone())
            .await;
        assert_eq!(
            (s, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{body} -> {v}"
        );
    }
    let raw = api
        .http
        .post(format!("{}/oapi/v1/jobs", m.url))
        .bearer_auth(&job_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let err: Value = raw.json().await.unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("invalid JSON"),
        "{err}"
    );

    // Rate limit of the "slow" cluster: 2 per second.
    let for_slow = json!({"type": "preheat", "args": {"type": "file", "url": "http://127.0.0.1:1/f"}, "scheduler_cluster_ids": [slow]});
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            api.post("/oapi/v1/jobs", Some(&job_token), for_slow.clone())
                .await
                .0,
        );
    }
    assert!(codes.contains(&StatusCode::TOO_MANY_REQUESTS), "{codes:?}");
    assert_eq!(codes[0], StatusCode::CREATED);

    // No scheduler anywhere: the job ends FAILURE and its log says why.
    let mut job = Value::Null;
    for _ in 0..100 {
        job = api
            .get(&format!("/oapi/v1/jobs/{id}"), Some(&job_token))
            .await
            .1;
        if job["state"] == "FAILURE" || job["state"] == "SUCCESS" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(job["state"], "FAILURE", "{job}");
    let log = job["log"].as_str().unwrap();
    assert!(log.contains("cannot fetch the manifest"), "{log}");
    let (_, list) = api
        .get("/oapi/v1/jobs?state=FAILURE", Some(&job_token))
        .await;
    assert!(list["total"].as_i64().unwrap() >= 1, "{list}");

    // Revoked tokens stop working.
    let (s, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/personal-access-tokens/{job_token_id}"),
            Some(&session),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.get("/oapi/v1/jobs", Some(&job_token)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // gRPC: a scheduler registers, keeps alive, and is listed for peers of its cluster.
    let mut c = mpb::manager_client::ManagerClient::connect(format!("http://{}", m.grpc))
        .await
        .unwrap();
    let e = c
        .keep_alive(mpb::KeepAliveRequest {
            source_type: mpb::SourceType::Scheduler as i32,
            ip: "127.0.0.1".into(),
            port: 8002,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let r = c
        .update_scheduler(mpb::UpdateSchedulerRequest {
            hostname: "s1".into(),
            ip: "127.0.0.1".into(),
            port: 8002,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.state.as_str(), r.scheduler_cluster_id as i64),
        ("active", default_cluster)
    );
    c.keep_alive(mpb::KeepAliveRequest {
        source_type: mpb::SourceType::Scheduler as i32,
        ip: "127.0.0.1".into(),
        port: 8002,
    })
    .await
    .unwrap();
    let e = c
        .update_scheduler(mpb::UpdateSchedulerRequest {
            ip: "nope".into(),
            port: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let l = c
        .list_schedulers(mpb::ListSchedulersRequest {
            ip: "192.168.1.1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.schedulers.len(), 1);
    let l = c
        .list_schedulers(mpb::ListSchedulersRequest {
            ip: "10.9.1.1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (l.scheduler_cluster_id as i64, l.schedulers.len()),
        (slow, 0),
        "the slow cluster's scopes win; it has no scheduler"
    );
    // Silent for 3 keepalive intervals: inactive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, v) = api.get("/api/v1/schedulers", Some(&session)).await;
    assert_eq!(v[0]["state"], "inactive", "{v}");
    users_and_roles(&api, &session).await;
    let (s, v) = api.get("/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["paths"]["/oapi/v1/jobs"]["post"].is_object());
    let (s, v) = api.get("/", None).await;
    assert!(s == StatusCode::OK && v.as_str().unwrap().contains("Dragonfly-rs manager"));
}

/// Root adds a read-only guest: the guest (and a token of theirs) reads but changes nothing,
/// and does not manage users; root deletes the guest, whose session then ends.
async fn users_and_roles(api: &Api, root: &str) {
    for (body, field) in [
        (json!({"name": "x", "password": "long enough"}), "name"),
        (json!({"name": "viewer", "password": "short"}), "password"),
        (
            json!({"name": "viewer", "password": "long enough", "role": "admin"}),
            "role",
        ),
    ] {
        let (s, v) = api.post("/api/v1/users", Some(root), body).await;
        assert_eq!(
            (s, v["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{v}"
        );
    }
    let (s, guest) = api
        .post(
            "/api/v1/users",
            Some(root),
            json!({"name": "viewer", "password": "viewer-pass-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{guest}");
    assert_eq!(guest["role"], "guest", "guest unless root is asked for");
    let (s, _) = api
        .post(
            "/api/v1/users",
            Some(root),
            json!({"name": "viewer", "password": "viewer-pass-2"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, v) = api
        .post(
            "/api/v1/users/signin",
            None,
            json!({"name": "viewer", "password": "viewer-pass-1"}),
        )
        .await;
    let session = v["token"].as_str().expect("the guest signs in").to_owned();
    let (s, me) = api.get("/api/v1/users/me", Some(&session)).await;
    assert_eq!((s, me["role"].as_str()), (StatusCode::OK, Some("guest")));
    assert_eq!(
        api.get("/api/v1/jobs", Some(&session)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.get("/api/v1/clusters", Some(&session)).await.0,
        StatusCode::OK
    );
    let job =
        json!({"type": "get_task", "args": {"task_id": format!("sha256:{}", "a".repeat(64))}});
    let (s, v) = api.post("/api/v1/jobs", Some(&session), job.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["message"].as_str().unwrap().contains("read-only"), "{v}");
    let (s, _) = api
        .post("/api/v1/clusters", Some(&session), json!({"name": "mine"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get("/api/v1/users", Some(&session)).await.0,
        StatusCode::FORBIDDEN
    );
    // The guest's token is read-only too.
    let (s, t) = api
        .post(
            "/api/v1/personal-access-tokens",
            Some(&session),
            json!({"name": "g", "scopes": ["job"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let token = t["token"].as_str().unwrap();
    assert_eq!(
        api.get("/oapi/v1/jobs", Some(token)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        api.post("/oapi/v1/jobs", Some(token), job).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, users) = api.get("/api/v1/users", Some(root)).await;
    assert_eq!(users.as_array().map(Vec::len), Some(2), "{users}");
    let id = guest["id"].as_i64().unwrap();
    let me_id = users[0]["id"].as_i64().unwrap();
    let del = |id: i64| async move {
        let path = format!("/api/v1/users/{id}");
        api.call(reqwest::Method::DELETE, &path, Some(root), None)
            .await
    };
    assert_eq!(
        del(me_id).await.0,
        StatusCode::BAD_REQUEST,
        "root does not delete itself"
    );
    assert_eq!(del(id).await.0, StatusCode::OK);
    assert_eq!(del(id).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get("/api/v1/users/me", Some(&session)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get("/oapi/v1/jobs", Some(token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// The contract's preheat URLs are on loopback, which a manager refuses unless allow-listed.
const LOOPBACK_PREHEATS: &str = "jobs: {allowed_networks: ['127.0.0.0/8']}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_sqlite() {
    let dir = TestDir::new("dfly-manager-").unwrap();
    let m = Manager::start(dir.path(), "", LOOPBACK_PREHEATS).unwrap();
    contract(&m).await;
    assert!(!m.log().contains("very-secret"), "secrets are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_on_postgresql() {
    let pg = Postgres::start().unwrap();
    let url = pg.database("manager_api").unwrap();
    let dir = TestDir::new("dfly-manager-").unwrap();
    let m = Manager::start(dir.path(), &url, LOOPBACK_PREHEATS).unwrap();
    contract(&m).await;
    assert!(!m.log().contains("very-secret"), "secrets are never logged");
}
