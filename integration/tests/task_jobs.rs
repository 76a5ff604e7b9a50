//! The task jobs end to end, on SQLite and on PostgreSQL: a real registry, the manager, a
//! scheduler registered with it, a seed peer and two nodes (each its own containerd and
//! daemon). A file preheated with a tag and filtered query parameters is found by `get_task`
//! under another URL signature; `get_image_distribution` names the node whose lazy mount
//! reads an eStargz layer; `delete_task` of that layer keeps it there and says why;
//! `delete_task` of the file (through `dfctl task delete`) removes it from every peer — gone
//! from `get_task` and from disk — so with the registry stopped the next download fails with
//! an error that says so. Every argument a job type does not honour is a 400 naming it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dragonfly_integration::fixtures;
use dragonfly_integration::manager::Manager;
use dragonfly_integration::openapi::{job_token, run_job as job, wait_job, Http};
use dragonfly_integration::postgres::Postgres;
use dragonfly_integration::procs::{free_port, run};
use dragonfly_integration::swarm::Swarm;
use serde_json::{json, Value};

fn dfctl() -> PathBuf {
    dragonfly_integration::procs::built_binary("DFCTL_BIN", "dfctl").expect("dfctl")
}

/// The peers a get_task job found in its (only) cluster.
fn peers(job: &Value) -> Vec<Value> {
    job["result"]["job_states"][0]["peers"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no peers list: {job}"))
}

/// get_task until `want` peers hold all of it (piece reports trail a preheat's end a little).
fn holders(http: &Http, token: &str, args: Value, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let j = job(http, token, "get_task", args.clone());
        assert_eq!(j["state"], "SUCCESS", "{j}");
        let p = peers(&j);
        let finished = p.iter().filter(|x| x["finished"] == true).count();
        if finished == want || Instant::now() > deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn flow(database: &str) {
    let mut swarm = Swarm::start_with(1, 3, "prefetch: {background: false}", "").expect("swarm");
    let manager = Manager::start_at(
        &swarm.path().join("manager"),
        database,
        "jobs: {allowed_networks: ['127.0.0.0/8']}\n",
        free_port(),
        free_port(),
    )
    .expect("manager");
    swarm
        .scheduler
        .use_manager(&manager.grpc)
        .expect("scheduler with manager");
    let http = Http::new(&manager.url);
    let token = job_token(&http);
    let img = fixtures::kinds().expect("fixture");
    let published = swarm.publish("kinds", &img).expect("publish");
    let registry = swarm.registry.addr.clone();

    // The scheduler restarted to register with the manager: wait until all 3 hosts have
    // announced themselves to it again (all_peers fills the hosts announced).
    let (_, v) = http.post(
        "/api/v1/users/signin",
        "",
        json!({"name": "root", "password": dragonfly_integration::manager::ROOT_PASSWORD}),
    );
    let root = v["token"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get("/api/v1/peers", &root).1["peers"]
        .as_array()
        .map_or(0, Vec::len)
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "hosts never announced\n{}",
            swarm.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 1. A file preheated into every host, with a tag and a filtered query parameter.
    let digest = &img.layers[1];
    let size = std::fs::metadata(swarm.registry.blob_path(digest))
        .unwrap()
        .len();
    let file = format!("http://{registry}/v2/kinds/blobs/{digest}");
    let signed = |sig: &str, v: u32| format!("{file}?X-Amz-Signature={sig}&v={v}");
    let pre = job(
        &http,
        &token,
        "preheat",
        json!({"type": "file", "url": signed("one", 1), "tag": "release-1",
               "filtered_query_params": "v", "scope": "all_peers"}),
    );
    assert_eq!(pre["state"], "SUCCESS", "{pre}\n{}", manager.log());
    let task_id = pre["result"]["job_states"][0]["success_tasks"][0]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let hex = task_id
        .strip_prefix("task:")
        .expect("a file task")
        .to_owned();

    // 2. get_task by the same URL signature (another signature and v): every host.
    let by_url = json!({"url": signed("two", 2), "tag": "release-1", "filtered_query_params": "v"});
    let found = holders(&http, &token, by_url.clone(), 3);
    assert_eq!(found.len(), 3, "{found:?}\n{}", swarm.logs());
    for p in &found {
        assert_eq!(p["finished"], true, "{p}");
        assert_eq!(p["present_bytes"], size, "{p}");
        assert!(
            !p["ip"].as_str().unwrap().is_empty() && !p["created_at"].as_str().unwrap().is_empty(),
            "{p}"
        );
    }
    assert_eq!(
        found.iter().filter(|p| p["host_type"] == "super").count(),
        1,
        "{found:?}"
    );
    // By its ID, bare hex (what dfctl get prints) included; another tag is another task.
    assert_eq!(
        holders(&http, &token, json!({"task_id": task_id}), 3).len(),
        3
    );
    assert_eq!(holders(&http, &token, json!({"task_id": hex}), 3).len(), 3);
    let other = job(
        &http,
        &token,
        "get_task",
        json!({"url": file, "tag": "release-2"}),
    );
    assert_eq!(other["state"], "SUCCESS", "{other}");
    assert!(peers(&other).is_empty(), "{other}");
    let cli = |args: &[&str]| {
        run(std::process::Command::new(dfctl())
            .args(["--manager", &manager.url, "--token", &token])
            .args(args))
    };
    let listed = cli(&["task", "get", &task_id]).expect("dfctl task get");
    assert_eq!(listed.matches("complete").count(), 3, "{listed}");

    // 3. A lazy eStargz image on node 1: the distribution names it for the layer it reads;
    //    deleting that layer keeps it there and says why.
    let node = &swarm.nodes[1];
    node.containerd.rpull(&published.estargz).expect("rpull");
    let (ok, out) = node.containerd.run_once(
        "dragonfly",
        &published.estargz,
        "lazy",
        &["/bin/cat", "/etc/passwd"],
    );
    assert!(ok && out.contains("root:"), "{out}\n{}", swarm.logs());
    let layers = fixtures::layers(&published.estargz).unwrap();
    let manifest = format!("http://{registry}/v2/kinds/manifests/estargz");
    let (s, dist) = http.post(
        "/oapi/v1/jobs",
        &token,
        json!({"type": "get_image_distribution", "args": {"url": manifest}}),
    );
    assert_eq!(s, 200, "{dist}");
    assert_eq!(
        dist["image"]["layers"].as_array().unwrap().len(),
        layers.len(),
        "{dist}"
    );
    let on_node1 = |d: &Value| -> Vec<String> {
        d["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["host_id"] == "node-1")
            .flat_map(|p| p["cached_layers"].as_array().unwrap().clone())
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    };
    let held = on_node1(&dist);
    assert!(!held.is_empty(), "node 1 reads layers lazily: {dist}");
    let text = cli(&[
        "image",
        "distribution",
        &format!("{registry}/kinds:estargz"),
        "--plain-http",
    ])
    .expect("dfctl image distribution");
    assert!(text.contains(&held[0]), "{text}");
    let lazy_layer = &held[0];
    let kept = job(&http, &token, "delete_task", json!({"task_id": lazy_layer}));
    assert_eq!(kept["state"], "FAILURE", "{kept}");
    let failures = kept["result"]["job_states"][0]["failure_tasks"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        failures
            .iter()
            .any(|f| f["description"].as_str().unwrap().contains("lazy mount")),
        "{kept}"
    );
    // The container still reads it.
    let (ok, out) = node.containerd.run_once(
        "dragonfly",
        &published.estargz,
        "lazy-2",
        &["/bin/cat", "/etc/group"],
    );
    assert!(ok && out.contains("users"), "{out}\n{}", swarm.logs());

    // 4. delete_task of the file through dfctl: gone from every host, in get_task and on disk.
    let on_disk = |i: usize| swarm.nodes[i].daemon.dir.join("root/cache/task").join(&hex);
    assert!((0..3).all(|i| on_disk(i).exists()), "{}", swarm.logs());
    let deleted = cli(&[
        "task",
        "delete",
        "--url",
        &signed("three", 3),
        "--tag",
        "release-1",
        "--filtered-query-params",
        "v",
    ])
    .expect("dfctl task delete");
    assert_eq!(deleted.matches(" ok ").count(), 3, "{deleted}");
    assert!(
        (0..3).all(|i| !on_disk(i).exists()),
        "{deleted}\n{}",
        swarm.logs()
    );
    let after = job(&http, &token, "get_task", by_url);
    assert_eq!(after["state"], "SUCCESS", "{after}");
    assert!(peers(&after).is_empty(), "{after}");
    let shown = wait_job(
        &http,
        &token,
        pre["id"].as_i64().unwrap(),
        Duration::from_secs(1),
    );
    assert_eq!(shown["state"], "SUCCESS", "the preheat's record stays");

    // 5. The registry stopped, the next download of it fails and says what failed.
    swarm.registry.stop();
    let out = swarm.path().join("after-delete");
    let e = run(std::process::Command::new(dfctl())
        .arg("--socket")
        .arg(&swarm.nodes[2].daemon.socket)
        .args([
            "get",
            "--quiet",
            &signed("four", 4),
            "--tag",
            "release-1",
            "--filter",
            "v",
            "-O",
        ])
        .arg(&out))
    .unwrap_err()
    .to_string();
    eprintln!("after delete_task, with the registry stopped: {e}");
    // (The command line names the URL too: look at what the daemon answered.)
    let answer = e.split_once("failed (exit status").map_or("", |(_, a)| a);
    assert!(
        answer.contains(&format!("cannot reach http://{registry}/")),
        "{e}"
    );
    assert!(!out.exists(), "no partial file left");

    // 6. Every argument a job type does not honour, or gets wrong, is a 400 naming it.
    for (kind, args, field) in [
        ("get_task", json!({}), "args.task_id"),
        ("get_task", json!({"task_id": "nope"}), "args.task_id"),
        (
            "get_task",
            json!({"task_id": task_id, "piece_length": 4194304}),
            "args.piece_length",
        ),
        (
            "get_task",
            json!({"task_id": task_id, "concurrent_peer_count": 5}),
            "args.concurrent_peer_count",
        ),
        (
            "delete_task",
            json!({"task_id": task_id, "content_for_calculating_task_id": "x"}),
            "args.content_for_calculating_task_id",
        ),
        (
            "delete_task",
            json!({"task_id": task_id, "hosts": 1}),
            "args.hosts",
        ),
        (
            "get_image_distribution",
            json!({"url": manifest, "tag": "x"}),
            "args.tag",
        ),
        ("get_image_distribution", json!({"url": file}), "args.url"),
        (
            "get_image_distribution",
            json!({"url": manifest, "layers": 2}),
            "args.layers",
        ),
        ("sync_peers", json!({}), "type"),
    ] {
        let (s, v) = http.post("/oapi/v1/jobs", &token, json!({"type": kind, "args": args}));
        assert_eq!(s, 400, "{kind} {args}: {v}");
        assert_eq!(v["field"], field, "{kind} {args}: {v}");
    }
    // The console's route takes the same jobs.
    let (_, session) = http.post(
        "/api/v1/users/signin",
        "",
        json!({"name": "root", "password": dragonfly_integration::manager::ROOT_PASSWORD}),
    );
    let session = session["token"].as_str().unwrap();
    let (s, v) = http.post(
        "/api/v1/jobs",
        session,
        json!({"type": "get_task", "args": {"task_id": task_id}}),
    );
    assert_eq!(s, 201, "{v}");
    let j = wait_job(
        &http,
        &token,
        v["id"].as_i64().unwrap(),
        Duration::from_secs(30),
    );
    assert_eq!(j["state"], "SUCCESS", "{j}");
}

#[test]
fn task_jobs_on_sqlite() {
    flow("");
}

#[test]
fn task_jobs_on_postgresql() {
    let pg = Postgres::start().expect("postgres");
    let url = pg.database("task_jobs").expect("database");
    flow(&url);
}
