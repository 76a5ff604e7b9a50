//! The manager's web console in a real browser (Debian's headless Chromium driven through
//! chromedriver), against a real manager, scheduler, seed peer and origin: sign-in (refused,
//! then accepted), a file preheat submitted from the form and followed to SUCCESS with its
//! live progress at 100%, a bad URL answered with the field's name, a personal access token
//! created (and working against the Open API), then revoked (and refused), the cluster,
//! scheduler and seed peer listed active, and sign-out.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_integration::fixtures;
use dragonfly_integration::manager::{Manager, ROOT_PASSWORD};
use dragonfly_integration::procs::{free_port, wait_until, TestDir};
use dragonfly_integration::swarm::Swarm;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A chromedriver on a free loopback port, killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/install-deps.sh installs chromium-driver)");
        wait_until("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .expect("chromedriver listens");
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn browser(&self, profile: &std::path::Path) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `expr` in the page until it is truthy (or panics after `limit` with `what`).
async fn until(c: &Client, expr: &str, what: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = c
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap_or(Value::Null);
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) => !s.is_empty(),
            Value::Number(n) => n.as_f64() != Some(0.0),
            _ => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let body = c
                .execute("return document.body.innerText;", vec![])
                .await
                .unwrap_or_default();
            panic!("{what}: {expr} stayed falsy; the page shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long a page change may take (the job's end waits longer).
const SHORT: Duration = Duration::from_secs(10);

/// The text of element `id`, once it has some.
async fn text_of(c: &Client, id: &str) -> String {
    let expr = format!("document.getElementById('{id}').textContent");
    let v = until(c, &expr, id, SHORT).await;
    v.as_str().unwrap_or_default().to_owned()
}

async fn fill(c: &Client, id: &str, text: &str) {
    let e = c.find(Locator::Id(id)).await.expect(id);
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

/// Pushes `data` as a blob of `repo`; its URL at the registry.
async fn push_blob(registry: &str, repo: &str, data: &[u8]) -> String {
    let digest = format!("sha256:{}", fixtures::sha256_hex(data));
    let http = reqwest::Client::new();
    let started = http
        .post(format!("http://{registry}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("http://{registry}{location}")
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = http
        .put(format!("{location}{sep}digest={digest}"))
        .body(data.to_vec())
        .send()
        .await
        .expect("finish upload");
    assert_eq!(put.status(), 201, "{:?}", put.text().await);
    format!("http://{registry}/v2/{repo}/blobs/{digest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser() {
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut swarm = tokio::task::spawn_blocking(move || {
        Swarm::start_with(1, 1, "", &format!("manager: '127.0.0.1:{grpc_port}'")).expect("swarm")
    })
    .await
    .unwrap();
    let dir = swarm.path().to_owned();
    // The registry is on loopback: preheat URLs may point there only when allow-listed.
    let manager = Manager::start_at(
        &dir.join("manager"),
        "",
        "jobs: {allowed_networks: ['127.0.0.0/8']}\n",
        http_port,
        grpc_port,
    )
    .expect("manager");
    swarm
        .scheduler
        .use_manager(&manager.grpc)
        .expect("scheduler with manager");
    let file_url = push_blob(
        &swarm.registry.addr,
        "files",
        &fixtures::random_bytes(3 << 20, 7),
    )
    .await;

    // Before the browser: the scheduler and the seed peer have registered.
    let api = reqwest::Client::new();
    let session: Value = api
        .post(format!("{}/api/v1/users/signin", manager.url))
        .json(&json!({"name": "root", "password": ROOT_PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = session["token"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    for path in ["/api/v1/schedulers", "/api/v1/seed-peers"] {
        loop {
            let rows: Value = api
                .get(format!("{}{path}", manager.url))
                .bearer_auth(&session)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if rows
                .as_array()
                .is_some_and(|r| r.iter().any(|m| m["state"] == "active"))
            {
                break;
            }
            assert!(Instant::now() < deadline, "{path} never active: {rows}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    let driver = ChromeDriver::start();
    let profile = TestDir::new("dfly-chromium-").unwrap();
    let c = driver.browser(profile.path()).await;
    let long = Duration::from_secs(60);
    c.goto(&manager.url).await.expect("open the console");

    // Sign-in: a wrong password is refused on the page, the right one opens the app.
    fill(&c, "password", "not the password").await;
    click(&c, "#signin-form button").await;
    text_of(&c, "signin-error").await;
    fill(&c, "password", ROOT_PASSWORD).await;
    click(&c, "#signin-form button").await;
    let who = text_of(&c, "who").await;
    assert_eq!(who, "root");

    // A bad URL: the form says which field.
    fill(&c, "purl", "not a url").await;
    click(&c, "#preheat-form button").await;
    let e = text_of(&c, "preheat-error").await;
    assert!(e.contains("url"), "{e}");

    // A file preheat into every seed peer, followed to SUCCESS at 100%.
    c.find(Locator::Css("#ptype option[value='file']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    fill(&c, "purl", &file_url).await;
    click(&c, "#preheat-form button").await;
    let row = "document.querySelector('#jobs tr')";
    let state = until(
        &c,
        &format!("{row} && ['SUCCESS','FAILURE'].includes({row}.cells[4].textContent) && {row}.cells[4].textContent"),
        "the job ends",
        long,
    )
    .await;
    let page = c
        .execute("return document.getElementById('jobs').innerText;", vec![])
        .await
        .unwrap();
    assert_eq!(
        state,
        "SUCCESS",
        "{page}\n{}\n{}",
        manager.log(),
        swarm.logs()
    );
    assert_eq!(
        c.execute(&format!("return {row}.cells[5].textContent;"), vec![])
            .await
            .unwrap(),
        "100%",
        "{page}"
    );
    // Its log and result open on a click.
    click(&c, "#jobs tr").await;
    let log = text_of(&c, "job-log").await;
    assert!(log.contains("SUCCESS"), "{log}");

    // Tokens: created (shown once, works), then revoked (refused).
    click(&c, "[data-tab='tokens']").await;
    fill(&c, "tname", "from-the-browser").await;
    click(&c, "#token-form button").await;
    let shown = text_of(&c, "new-token").await;
    let token = shown
        .split_whitespace()
        .find(|w| w.starts_with("dfp_"))
        .unwrap_or_else(|| panic!("no token in {shown}"))
        .to_owned();
    let jobs = |token: String| {
        let (api, url) = (api.clone(), manager.url.clone());
        async move {
            api.get(format!("{url}/oapi/v1/jobs"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(jobs(token.clone()).await, 200);
    until(
        &c,
        "document.querySelector('[data-revoke]')",
        "revoke button",
        SHORT,
    )
    .await;
    click(&c, "[data-revoke]").await;
    until(
        &c,
        "!document.querySelector('[data-revoke]') && document.getElementById('tokens').innerText.includes('revoked')",
        "revoked",
        SHORT,
    )
    .await;
    assert_eq!(jobs(token).await, 401);

    // Clusters: the default cluster, the scheduler and the seed peer, active.
    click(&c, "[data-tab='clusters']").await;
    until(
        &c,
        "document.getElementById('clusters').innerText.includes('yes')",
        "default cluster",
        SHORT,
    )
    .await;
    for table in ["schedulers", "seed-peers"] {
        until(
            &c,
            &format!("document.getElementById('{table}').innerText.includes('active')"),
            table,
            SHORT,
        )
        .await;
    }

    // Sign-out brings the sign-in form back.
    click(&c, "#signout").await;
    until(
        &c,
        "!document.getElementById('signin').classList.contains('hidden')",
        "signed out",
        SHORT,
    )
    .await;
    c.close().await.expect("close the browser");
}
