//! The manager's web console in a real browser (Debian's headless Chromium driven through
//! chromedriver), against a real manager, scheduler, seed peer, node and origin, one flow per
//! view: sign-in (refused, then accepted); clusters created and edited with scope fields (a bad
//! CIDR named), the default cluster, schedulers and seed peers active; the preheat form with
//! every field (bad fields named) followed on the job's page to SUCCESS, and a later download
//! with the same URL signature served without the origin; peers with what they hold; jobs paged
//! and filtered; a task found and deleted from every peer (gone from disk; with the origin
//! stopped the next download fails and says so); tokens created and revoked; a read-only guest
//! user added by root, who can look but not change. Each view is photographed into
//! `CONSOLE_SCREENSHOTS` (default `target/console-screenshots`; `docs/console/` holds the
//! committed set).

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

/// Where the screenshots go.
fn shots_dir() -> std::path::PathBuf {
    let dir = std::env::var_os("CONSOLE_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| {
                    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
                });
            target.join("console-screenshots")
        });
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Photographs the page as `name.png`.
async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots_dir().join(format!("{name}.png")), png).expect("write screenshot");
}

/// Opens a view from the navigation bar.
async fn view(c: &Client, name: &str) {
    click(c, &format!("[data-view='{name}']")).await;
    until(
        c,
        &format!("!document.getElementById('view-{name}').classList.contains('hidden')"),
        name,
        SHORT,
    )
    .await;
}

/// Picks `value` in select `id`.
async fn pick(c: &Client, id: &str, value: &str) {
    click(c, &format!("#{id} option[value='{value}']")).await;
}

/// Whether element `id`'s text contains `needle` (waits for it).
async fn shows(c: &Client, id: &str, needle: &str) {
    let expr = format!(
        "document.getElementById('{id}').innerText.includes({})",
        serde_json::to_string(needle).unwrap()
    );
    until(c, &expr, &format!("{id} shows {needle:?}"), SHORT).await;
}

async fn text(c: &Client, id: &str) -> String {
    c.execute(
        &format!("return document.getElementById('{id}').innerText;"),
        vec![],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

/// Signs in as `name`.
async fn sign_in(c: &Client, name: &str, password: &str) {
    until(
        c,
        "!document.getElementById('signin').classList.contains('hidden')",
        "the sign-in form",
        SHORT,
    )
    .await;
    fill(c, "name", name).await;
    fill(c, "password", password).await;
    click(c, "#signin-form button").await;
    until(
        c,
        &format!("document.getElementById('who').textContent === '{name}'"),
        "signed in",
        SHORT,
    )
    .await;
}

/// A session token for `name` (for API checks beside the browser).
async fn session(api: &reqwest::Client, url: &str, name: &str, password: &str) -> String {
    let v: Value = api
        .post(format!("{url}/api/v1/users/signin"))
        .json(&json!({"name": name, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().expect("signed in").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser() {
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut swarm = tokio::task::spawn_blocking(move || {
        Swarm::start_with(1, 3, "", &format!("manager: '127.0.0.1:{grpc_port}'")).expect("swarm")
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
    let file_data = fixtures::random_bytes(3 << 20, 7);
    let file_url = push_blob(&swarm.registry.addr, "files", &file_data).await;
    let signed = |sig: &str, v: u32| format!("{file_url}?X-Amz-Signature={sig}&v={v}");

    // Before the browser: the scheduler and the seed peer have registered.
    let api = reqwest::Client::new();
    let root = session(&api, &manager.url, "root", ROOT_PASSWORD).await;
    let get = |path: &str, token: &str| {
        let (api, url, path, token) = (
            api.clone(),
            manager.url.clone(),
            path.to_owned(),
            token.to_owned(),
        );
        async move {
            let r = api
                .get(format!("{url}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for path in ["/api/v1/schedulers", "/api/v1/seed-peers"] {
        loop {
            let (_, rows) = get(path, &root).await;
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

    // And the three hosts have announced themselves to the scheduler (it restarted to
    // register with the manager): the preheat below fills all of them.
    loop {
        let (_, v) = get("/api/v1/peers", &root).await;
        if v["peers"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "hosts never announced: {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let driver = ChromeDriver::start();
    let profile = TestDir::new("dfly-chromium-").unwrap();
    let c = driver.browser(profile.path()).await;
    c.set_window_size(1280, 1000).await.expect("window size");
    let long = Duration::from_secs(90);
    c.goto(&manager.url).await.expect("open the console");

    // Sign-in: a wrong password is refused on the page, the right one opens the app.
    fill(&c, "password", "not the password").await;
    click(&c, "#signin-form button").await;
    text_of(&c, "signin-error").await;
    shot(&c, "signin").await;
    sign_in(&c, "root", ROOT_PASSWORD).await;
    assert_eq!(text_of(&c, "role").await, "root");

    // Clusters: created with scope fields (a bad CIDR is named), then edited.
    view(&c, "clusters").await;
    shows(&c, "clusters", "yes").await;
    fill(&c, "cname", "edge").await;
    fill(&c, "cidc", "dc9").await;
    fill(&c, "ccidrs", "not-a-cidr").await;
    click(&c, "#cluster-save").await;
    shows(&c, "cluster-error", "scopes.cidrs").await;
    fill(&c, "ccidrs", "10.9.0.0/16").await;
    fill(&c, "chostnames", "^edge-.*$").await;
    fill(&c, "crate", "5").await;
    click(&c, "#cluster-save").await;
    shows(&c, "clusters", "10.9.0.0/16").await;
    let (_, clusters) = get("/api/v1/clusters", &root).await;
    let edge = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "edge")
        .expect("created")
        .clone();
    click(&c, &format!("[data-edit='{}']", edge["id"])).await;
    shows(&c, "cluster-form-title", "edge").await;
    fill(&c, "cidc", "dc10").await;
    fill(&c, "crate", "7").await;
    click(&c, "#cluster-save").await;
    shows(&c, "clusters", "dc10").await;
    shows(&c, "clusters", "7/s").await;
    let (_, edited) = get(&format!("/api/v1/clusters/{}", edge["id"]), &root).await;
    assert_eq!(edited["scopes"]["idc"], "dc10", "{edited}");
    assert_eq!(edited["scopes"]["hostnames"][0], "^edge-.*$", "{edited}");
    assert_eq!(edited["config"]["job_rate_limit"], 7, "{edited}");
    for table in ["schedulers", "seed-peers"] {
        shows(&c, table, "active").await;
    }
    shot(&c, "clusters").await;
    // A cluster without schedulers would fail every job sent to all clusters.
    let gone = api
        .delete(format!("{}/api/v1/clusters/{}", manager.url, edge["id"]))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert!(gone.status().is_success(), "{gone:?}");

    // Preheat with every field of the form; wrong fields are named.
    view(&c, "preheat").await;
    until(
        &c,
        "document.querySelector('[data-cluster]')",
        "cluster choices",
        SHORT,
    )
    .await;
    fill(&c, "purl", "not a url").await;
    click(&c, "#preheat-form button[type=submit]").await;
    shows(&c, "preheat-error", "args.url").await;
    pick(&c, "ptype", "file").await;
    fill(&c, "purl", &signed("one", 1)).await;
    fill(&c, "pbio", "from the console").await;
    fill(&c, "ptag", "console-1").await;
    fill(&c, "pfiltered", "v").await;
    fill(&c, "ppiece", "1048576").await;
    pick(&c, "pscope", "all_peers").await;
    fill(&c, "ppercentage", "0").await;
    click(&c, "#preheat-form button[type=submit]").await;
    shows(&c, "preheat-error", "args.percentage").await;
    fill(&c, "ppercentage", "").await;
    fill(&c, "pcount", "3").await;
    fill(&c, "pctc", "1").await;
    fill(&c, "pcpc", "2").await;
    fill(&c, "pheaders", "X-Trace: console").await;
    fill(&c, "ptimeout", "5m").await;
    click(&c, "[data-cluster='1']").await;
    shot(&c, "preheat").await;
    click(&c, "#preheat-form button[type=submit]").await;
    // The job's page follows it to its end.
    let state = until(
        &c,
        "document.getElementById('job-state') && ['SUCCESS','FAILURE'].includes(document.getElementById('job-state').textContent) && document.getElementById('job-state').textContent",
        "the preheat ends",
        long,
    )
    .await;
    assert_eq!(
        state,
        "SUCCESS",
        "{}\n{}\n{}",
        text(&c, "view-job").await,
        manager.log(),
        swarm.logs()
    );
    shows(&c, "job-tasks", "100%").await;
    shows(&c, "job-fields", "from the console").await;
    let hosts = text(&c, "job-hosts").await;
    assert_eq!(
        hosts.matches("\tok\t").count(),
        3,
        "3 hosts filled: {hosts}"
    );
    shot(&c, "job").await;
    let job_id: i64 = c
        .execute("return location.hash.split('/')[2];", vec![])
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, job) = get(&format!("/api/v1/jobs/{job_id}"), &root).await;
    assert_eq!(job["args"]["tag"], "console-1", "{job}");
    assert_eq!(job["bio"], "from the console", "{job}");
    let task_id = job["result"]["job_states"][0]["success_tasks"][0]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = task_id.strip_prefix("task:").unwrap().to_owned();
    // A later download with the same URL signature (another signature, another v) is the
    // preheated task: the node asks nothing of the origin.
    let dfctl = dragonfly_integration::procs::built_binary("DFCTL_BIN", "dfctl").unwrap();
    let get_file = |sig: &'static str, n: u32| {
        let (dfctl, socket, out, url) = (
            dfctl.clone(),
            swarm.nodes[2].daemon.socket.clone(),
            dir.join(format!("got-{sig}")),
            signed(sig, n),
        );
        tokio::task::spawn_blocking(move || {
            let r = dragonfly_integration::procs::run(
                Command::new(dfctl)
                    .arg("--socket")
                    .arg(&socket)
                    .args([
                        "get",
                        "--quiet",
                        &url,
                        "--tag",
                        "console-1",
                        "--filter",
                        "v",
                        "-O",
                    ])
                    .arg(&out),
            );
            (r, std::fs::read(&out).ok())
        })
    };
    let (r, got) = get_file("two", 2).await.unwrap();
    assert!(r.is_ok(), "{r:?}\n{}", swarm.logs());
    assert!(got.as_deref() == Some(&file_data[..]), "the file's bytes");
    assert_eq!(
        swarm.nodes[2].metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
        0.0,
        "the download hit the preheated task\n{}",
        swarm.logs()
    );

    // Peers: every host with what it holds.
    view(&c, "peers").await;
    until(
        &c,
        "document.querySelectorAll('#peers tr').length === 3",
        "three peers",
        SHORT,
    )
    .await;
    shows(&c, "peers", "super").await;
    shows(&c, "peers", "3.0 MiB").await;
    shot(&c, "peers").await;

    // Jobs: paged and filtered (a few get_task jobs make a second page of 10).
    for _ in 0..10 {
        let r = api
            .post(format!("{}/api/v1/jobs", manager.url))
            .bearer_auth(&root)
            .json(&json!({"type": "get_task", "args": {"task_id": task_id}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    view(&c, "jobs").await;
    pick(&c, "jper", "10").await;
    shows(&c, "jpage", "page 1 of 2").await;
    click(&c, "#jnext").await;
    shows(&c, "jpage", "page 2 of 2").await;
    pick(&c, "jtype", "preheat").await;
    shows(&c, "jpage", "page 1 of 1 (1 jobs)").await;
    pick(&c, "jtype", "get_task").await;
    pick(&c, "jstate", "SUCCESS").await;
    until(
        &c,
        "[...document.querySelectorAll('#jobs tr')].length > 0 && [...document.querySelectorAll('#jobs tr')].every(r => r.cells[1].textContent === 'get_task' && r.cells[4].textContent === 'SUCCESS')",
        "only successful get_task jobs",
        long,
    )
    .await;
    shot(&c, "jobs").await;

    // Tasks: found by its URL signature on every host, deleted from every host.
    view(&c, "tasks").await;
    fill(&c, "turl", &signed("three", 3)).await;
    fill(&c, "ttag", "console-1").await;
    fill(&c, "tfiltered", "v").await;
    click(&c, "#task-find").await;
    until(&c, "document.getElementById('task-state') && document.getElementById('task-state').textContent === 'SUCCESS'", "get_task ends", long).await;
    until(
        &c,
        "document.querySelectorAll('#task-results tr').length === 3",
        "three holders",
        SHORT,
    )
    .await;
    shot(&c, "tasks").await;
    let on_disk = |i: usize| swarm.nodes[i].daemon.dir.join("root/cache/task").join(&hex);
    assert!((0..3).all(|i| on_disk(i).exists()));
    // The origin goes away (a withdrawn artifact), then the task is deleted everywhere.
    swarm.registry.stop();
    click(&c, "#task-delete").await;
    until(&c, "document.getElementById('task-state').textContent === 'SUCCESS' && document.getElementById('task-results').innerText.includes('deleted')", "delete_task ends", long).await;
    assert_eq!(text(&c, "task-results").await.matches("deleted").count(), 3);
    assert!(
        (0..3).all(|i| !on_disk(i).exists()),
        "gone from every peer's disk"
    );
    shot(&c, "tasks-deleted").await;
    click(&c, "#task-find").await;
    shows(&c, "task-results", "no peer holds it").await;
    let (r, _) = get_file("four", 4).await.unwrap();
    let e = r.unwrap_err().to_string();
    let answer = e.split_once("failed (exit status").map_or("", |(_, a)| a);
    assert!(answer.contains("cannot reach http://"), "{e}");

    // Tokens: created (shown once, works), then revoked (refused).
    view(&c, "tokens").await;
    fill(&c, "tname", "from-the-browser").await;
    click(&c, "#token-form button").await;
    let shown = text_of(&c, "new-token").await;
    let token = shown
        .split_whitespace()
        .find(|w| w.starts_with("dfp_"))
        .unwrap_or_else(|| panic!("no token in {shown}"))
        .to_owned();
    assert_eq!(get("/oapi/v1/jobs", &token).await.0, 200);
    until(
        &c,
        "document.querySelector('[data-revoke]')",
        "revoke button",
        SHORT,
    )
    .await;
    shot(&c, "tokens").await;
    click(&c, "[data-revoke]").await;
    until(
        &c,
        "!document.querySelector('[data-revoke]') && document.getElementById('tokens').innerText.includes('revoked')",
        "revoked",
        SHORT,
    )
    .await;
    assert_eq!(get("/oapi/v1/jobs", &token).await.0, 401);

    // Users: root adds a read-only guest (a short password is named).
    view(&c, "users").await;
    shows(&c, "users", "root").await;
    fill(&c, "uname", "viewer").await;
    fill(&c, "upass", "short").await;
    click(&c, "#user-form button").await;
    shows(&c, "user-error", "password").await;
    fill(&c, "upass", "viewer-pass-1").await;
    click(&c, "#user-form button").await;
    shows(&c, "users", "viewer").await;
    shows(&c, "users", "guest").await;
    shot(&c, "users").await;

    // The guest looks but does not change: no users view, a preheat is refused.
    click(&c, "#signout").await;
    sign_in(&c, "viewer", "viewer-pass-1").await;
    assert_eq!(text_of(&c, "role").await, "guest");
    assert_eq!(
        c.execute(
            "return document.getElementById('nav-users').classList.contains('hidden');",
            vec![]
        )
        .await
        .unwrap(),
        true
    );
    view(&c, "jobs").await;
    until(
        &c,
        "document.querySelectorAll('#jobs tr').length > 0",
        "jobs listed",
        SHORT,
    )
    .await;
    view(&c, "preheat").await;
    fill(&c, "purl", &signed("five", 5)).await;
    click(&c, "#preheat-form button[type=submit]").await;
    shows(&c, "preheat-error", "read-only").await;
    shot(&c, "guest").await;
    let guest = session(&api, &manager.url, "viewer", "viewer-pass-1").await;
    assert_eq!(
        get("/api/v1/users", &guest).await.0,
        403,
        "only root manages users"
    );
    assert_eq!(get("/api/v1/jobs", &guest).await.0, 200);

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
