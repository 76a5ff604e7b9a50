//! A manager on loopback ports with an SQLite database in a temporary directory, and a small
//! client for its API.

use std::net::IpAddr;

use dragonfly_manager::config::Config;
use serde_json::{json, Value};

/// The root password every test manager gets.
pub const ROOT_PASSWORD: &str = "root-password-for-tests";

/// A running manager.
pub struct TestManager {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT` of its gRPC.
    pub grpc: std::net::SocketAddr,
    /// Its config.
    pub config: Config,
    /// Holds the database (removed when dropped).
    _dir: tempfile::TempDir,
}

/// Starts a manager whose config `edit` adjusts.
pub async fn start(edit: impl FnOnce(&mut Config)) -> TestManager {
    start_in(tempfile::tempdir().unwrap(), edit).await
}

/// The SQLite URL of a manager in `dir`.
pub fn database_url(dir: &std::path::Path) -> String {
    Config {
        data_dir: dir.to_owned(),
        ..Default::default()
    }
    .database_url()
}

/// Like [`start`] with its database in `dir`.
pub async fn start_in(dir: tempfile::TempDir, edit: impl FnOnce(&mut Config)) -> TestManager {
    let mut config = Config {
        data_dir: dir.path().to_owned(),
        ..Default::default()
    };
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.grpc.listen = "127.0.0.1:0".parse().unwrap();
    config.auth.root_password = Some(ROOT_PASSWORD.into());
    edit(&mut config);
    config.validate().unwrap();
    let running = dragonfly_manager::server::start(config.clone())
        .await
        .unwrap();
    let scheme = if config.http.tls.is_some() {
        "https"
    } else {
        "http"
    };
    TestManager {
        url: format!("{scheme}://{}", running.http),
        grpc: running.grpc,
        config,
        _dir: dir,
    }
}

/// A client whose connections come from `source` (a loopback address).
pub fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

impl TestManager {
    /// `POST /api/v1/users/signin` as `name` with `password` through `client`.
    pub async fn signin_with(
        &self,
        client: &reqwest::Client,
        name: &str,
        password: &str,
    ) -> reqwest::Response {
        client
            .post(format!("{}/api/v1/users/signin", self.url))
            .json(&json!({"name": name, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// A session token for root.
    pub async fn session(&self, client: &reqwest::Client) -> String {
        let r = self.signin_with(client, "root", ROOT_PASSWORD).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["token"].as_str().unwrap().to_owned()
    }

    /// `POST /api/v1/jobs` with a root session; the status and the answer.
    pub async fn create_job(&self, client: &reqwest::Client, body: Value) -> (u16, Value) {
        let token = self.session(client).await;
        let r = client
            .post(format!("{}/api/v1/jobs", self.url))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// `GET /api/v1/jobs/{id}` until it is SUCCESS or FAILURE (at most 30 s).
    pub async fn finished_job(&self, client: &reqwest::Client, id: i64) -> Value {
        let token = self.session(client).await;
        for _ in 0..300 {
            let v: Value = client
                .get(format!("{}/api/v1/jobs/{id}", self.url))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["state"] == "SUCCESS" || v["state"] == "FAILURE" {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("job {id} did not finish in 30 s");
    }

    /// Its database URL.
    pub fn db_url(&self) -> String {
        self.config.database_url()
    }
}

/// Serves `app` on `ip` (a loopback address) at a free port; its address.
pub async fn serve(ip: &str, app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}
