//! Preheat end to end: a real registry, the manager, a scheduler registered with it, a seed
//! peer and two nodes (each its own containerd and daemon). The Open API request operators
//! script today preheats an image and a file; later pulls take no layer bytes from the
//! registry (for the file: with the registry stopped); `all_peers` fills every node before any
//! pull; a manager killed mid-job is restarted and the job still finishes.

use std::time::{Duration, Instant};

use dragonfly_integration::containerd::NAMESPACE;
use dragonfly_integration::fixtures;
use dragonfly_integration::manager::{Manager, ROOT_PASSWORD};
use dragonfly_integration::openapi::{job_token, run_job, wait_job, Http};
use dragonfly_integration::procs::{free_port, run};
use dragonfly_integration::swarm::Swarm;
use dragonfly_integration::throttle::Throttle;
use serde_json::{json, Value};

/// `dfctl image pull IMAGE` into `node`'s containerd; its stdout.
fn image_pull(node: &dragonfly_integration::swarm::Node, image: &str) -> anyhow::Result<String> {
    run(std::process::Command::new(dfctl())
        .arg("--socket")
        .arg(&node.daemon.socket)
        .args([
            "image",
            "pull",
            image,
            "--namespace",
            NAMESPACE,
            "--containerd",
        ])
        .arg(&node.containerd.socket))
}

fn dfctl() -> std::path::PathBuf {
    dragonfly_integration::procs::built_binary("DFCTL_BIN", "dfctl").expect("dfctl")
}

#[test]
fn preheated_images_and_files_are_pulled_without_the_registry() {
    // The seed peer registers with the manager too (it retries until the manager is up).
    let (http_port, grpc_port) = (free_port(), free_port());
    let mut swarm = Swarm::start_with(
        1,
        3,
        "prefetch: {background: false}",
        &format!("manager: '127.0.0.1:{grpc_port}'"),
    )
    .expect("swarm");
    let mut manager = Manager::start_at(
        &swarm.path().join("manager"),
        "",
        // The registry is on loopback: allow-listed for preheat URLs.
        "jobs: {stale_after_secs: 2, allowed_networks: ['127.0.0.0/8']}\n",
        http_port,
        grpc_port,
    )
    .expect("manager");
    swarm
        .scheduler
        .use_manager(&manager.grpc)
        .expect("scheduler with manager");
    let http = Http::new(&manager.url);
    let token = job_token(&http);
    let img = fixtures::large().expect("fixture");
    let published = swarm.publish("large", &img).expect("publish");
    let tag = |r: &str| r.rsplit(':').next().unwrap().to_owned();
    let layers: Vec<String> = fixtures::layers(&published.gzip)
        .unwrap()
        .into_iter()
        .map(|l| l.0)
        .collect();
    // Until the scheduler has registered and the daemons announced to it, jobs are retried.
    let preheat = |args: Value| -> Value { run_job(&http, &token, "preheat", args) };

    // 1. The operators' request: an image by manifest URL, default scope (one seed peer).
    let url = format!(
        "http://{}/v2/large/manifests/{}",
        swarm.registry.addr,
        tag(&published.gzip)
    );
    // With a piece length other than the nodes' default (256 KiB): the node that pulls later
    // adopts the swarm's, or it could not take pieces from the seed.
    let job = preheat(json!({"type": "image", "url": url, "pieceLength": 1048576}));
    assert_eq!(
        job["state"],
        "SUCCESS",
        "{job}\n{}\n{}",
        manager.log(),
        swarm.logs()
    );
    assert!(job["task_id"].as_str().unwrap().starts_with("group_"));
    let done = &job["result"]["job_states"][0]["success_tasks"];
    assert_eq!(
        done.as_array().unwrap().len(),
        layers.len() + 2,
        "manifest, config and every layer: {job}"
    );
    // The live progress (what `dfctl preheat --wait` draws a bar per layer from) ends full.
    let live = job["result"]["progress"].as_array().expect("live progress");
    assert_eq!(live.len(), layers.len() + 2, "{job}");
    assert!(
        live.iter()
            .all(|t| t["total_bytes"].as_u64() > Some(0) && t["present_bytes"] == t["total_bytes"]),
        "{job}"
    );
    assert_eq!(
        live.iter().filter(|t| t["role"] == "layer").count(),
        layers.len()
    );
    // A node pulls and runs it: no layer byte leaves the registry.
    let mark = swarm.registry.mark();
    let node = &swarm.nodes[1];
    node.containerd.rpull(&published.gzip).expect("rpull");
    let want = fixtures::large_huge_sha256();
    let (ok, out) = node.containerd.run_once(
        "dragonfly",
        &published.gzip,
        "after-preheat",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "{out}\n{}", swarm.logs());
    let layer_bytes: u64 = swarm
        .registry
        .blob_gets_since(mark)
        .iter()
        .filter(|g| layers.contains(&g.digest))
        .map(|g| g.bytes)
        .sum();
    eprintln!("after the preheat, the pull took {layer_bytes} layer bytes from the registry");
    assert_eq!(layer_bytes, 0, "{}", swarm.logs());

    // The same through dfctl: a token from `dfctl token create`, `dfctl preheat --wait`.
    let cli = |args: &[&str]| {
        run(std::process::Command::new(dfctl())
            .args(["--manager", &manager.url])
            .args(args)
            .env("DFCTL_PASSWORD", ROOT_PASSWORD))
    };
    let cli_token = cli(&["token", "create", "cli", "--scope", "job"]).expect("dfctl token create");
    let cli_token = cli_token.trim().to_owned();
    assert!(cli_token.starts_with("dfp_"), "{cli_token}");
    let zstd = published.zstdchunked.clone();
    let out = cli(&[
        "--token",
        &cli_token,
        "preheat",
        &zstd,
        "--plain-http",
        "--wait",
        "--quiet",
    ])
    .expect("dfctl preheat --wait");
    assert!(out.contains(" ok "), "{out}");
    let listed = cli(&["--token", &cli_token, "jobs", "--state", "SUCCESS"]).expect("dfctl jobs");
    assert!(listed.contains(&tag(&zstd)), "{listed}");
    let e = cli(&["--token", &cli_token, "clusters"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("forbidden") && e.contains("cluster"), "{e}");
    let e = cli(&["--token", "dfp_nope", "jobs"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not authorized"), "{e}");

    // The seed peer registered itself: the console lists it as active.
    let (_, v) = http.post(
        "/api/v1/users/signin",
        "",
        json!({"name": "root", "password": ROOT_PASSWORD}),
    );
    let session = v["token"].as_str().unwrap().to_owned();
    let (_, seeds) = http.get("/api/v1/seed-peers", &session);
    assert_eq!(seeds.as_array().map(Vec::len), Some(1), "{seeds}");
    assert_eq!(seeds[0]["state"], "active", "{seeds}");
    // A peer configured with only the manager's address learns its scheduler from the
    // manager and announces itself there.
    let dyn_dir = swarm.path().join("dyn-node");
    let _dyn_node = dragonfly_integration::daemon::Daemon::start(
        &dyn_dir,
        &format!("p2p: {{manager: '127.0.0.1:{grpc_port}', listen: '127.0.0.30:0', advertise_ip: 127.0.0.30, host_id: dyn-node, manager_refresh_secs: 1}}\n"),
    )
    .expect("daemon with a manager only");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let hosts = loop {
        let hosts: Vec<String> = rt.block_on(async {
            let mut c = dragonfly_proto::scheduler::scheduler_client::SchedulerClient::connect(
                format!("http://{}", swarm.scheduler.addr),
            )
            .await
            .unwrap();
            c.list_hosts(dragonfly_proto::scheduler::ListHostsRequest {})
                .await
                .unwrap()
                .into_inner()
                .hosts
                .into_iter()
                .map(|h| h.id)
                .collect()
        });
        if hosts.iter().any(|h| h == "dyn-node") || Instant::now() > deadline {
            break hosts;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        hosts.iter().any(|h| h == "dyn-node"),
        "{hosts:?}\n{}",
        _dyn_node.log()
    );
    let cached = std::fs::read_to_string(dyn_dir.join("root/schedulers.json")).unwrap_or_default();
    assert!(
        cached.contains(&swarm.scheduler.addr),
        "the list is cached for restarts: {cached:?}"
    );

    // all_peers for an image: every host holds every blob (node 2 has pulled nothing).
    let url = format!(
        "http://{}/v2/large/manifests/{}",
        swarm.registry.addr,
        tag(&published.gzip)
    );
    let job = preheat(json!({"type": "image", "url": url, "scope": "all_peers"}));
    assert_eq!(job["state"], "SUCCESS", "{job}\n{}", manager.log());
    let blobs = layers.len() + 2;
    let done = job["result"]["job_states"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        done,
        blobs * 4,
        "each of the 4 hosts (3 nodes and the manager-configured peer) holds each of the {blobs} blobs: {job}"
    );

    // 2. Manager killed mid-job: the job still finishes. The origin is slow (2 MB/s) so the
    //    seed is still fetching the eStargz image when the manager dies.
    let slow = Throttle::start(&swarm.registry.addr, 2_000_000).expect("throttle");
    let url = format!(
        "http://{}/v2/large/manifests/{}",
        slow.addr,
        tag(&published.estargz)
    );
    let (s, v) = http.post(
        "/oapi/v1/jobs",
        &token,
        json!({"type": "preheat", "args": {"type": "image", "url": url}}),
    );
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(&format!("/oapi/v1/jobs/{id}"), &token).1["state"] != "RUNNING"
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    manager.kill9();
    manager.restart().expect("manager restart");
    let job = wait_job(&http, &token, id, Duration::from_secs(180));
    assert_eq!(job["state"], "SUCCESS", "{job}\n{}", manager.log());
    assert!(
        job["attempts"].as_i64().unwrap() >= 2,
        "ran again after the restart: {job}"
    );
    drop(slow);

    // The eStargz image was preheated through another registry address (the throttle): its
    // blobs are found by digest all the same. Node 1 pulls it with dfctl (the tag resolved
    // at the registry, which is up) and takes no layer byte from the registry.
    let mark = swarm.registry.mark();
    let pulled = image_pull(&swarm.nodes[1], &published.estargz);
    assert!(
        pulled
            .as_ref()
            .is_ok_and(|o| o.trim() == published.estargz.as_str()),
        "{pulled:?}\n{}",
        swarm.logs()
    );
    let (ok, out) = swarm.nodes[1].containerd.run_once(
        "dragonfly",
        &published.estargz,
        "estargz-dfctl",
        &["/bin/sha256sum", "/data/huge.bin"],
    );
    assert!(ok && out.contains(&want), "{out}\n{}", swarm.logs());
    let estargz_layers: Vec<String> = fixtures::layers(&published.estargz)
        .unwrap()
        .into_iter()
        .map(|l| l.0)
        .collect();
    let layer_bytes: u64 = swarm
        .registry
        .blob_gets_since(mark)
        .iter()
        .filter(|g| estargz_layers.contains(&g.digest))
        .map(|g| g.bytes)
        .sum();
    assert_eq!(layer_bytes, 0, "{}", swarm.logs());

    // Targeting: count 2 of the 4 hosts fills exactly 2 (a tag makes it a task of its own);
    // an argument we do not honour, or narrowing without an all_* scope, is a 400 naming it.
    let small = format!(
        "http://{}/v2/large/blobs/{}",
        swarm.registry.addr, img.layers[0]
    );
    let job = preheat(json!({"type": "file", "url": small, "tag": "count-two",
        "scope": "all_peers", "count": 2, "concurrent_peer_count": 1}));
    assert_eq!(job["state"], "SUCCESS", "{job}\n{}", manager.log());
    // One task: one success per host filled.
    let filled = job["result"]["job_states"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(filled, 2, "count 2 filled {filled} hosts: {job}");
    for (args, field) in [
        (
            json!({"type": "file", "url": small, "scope": "all_peers", "hosts": 2}),
            "args.hosts",
        ),
        (
            json!({"type": "file", "url": small, "count": 2}),
            "args.count",
        ),
        (
            json!({"type": "file", "url": small, "scope": "all_peers", "percentage": 0}),
            "args.percentage",
        ),
    ] {
        let (s, v) = http.post(
            "/oapi/v1/jobs",
            &token,
            json!({"type": "preheat", "args": args}),
        );
        assert_eq!(s, 400, "{v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }

    // 3. A file, preheated into every peer; then the registry stops and a node downloads it
    //    with another URL signature: nothing is asked of the origin.
    let digest = &img.layers[1];
    let want = std::fs::read(swarm.registry.blob_path(digest)).unwrap();
    let file_url = format!("http://{}/v2/large/blobs/{digest}", swarm.registry.addr);
    let job = preheat(
        json!({"type": "file", "url": format!("{file_url}?X-Amz-Signature=one"), "scope": "all_peers"}),
    );
    assert_eq!(job["state"], "SUCCESS", "{job}\n{}", manager.log());
    let hosts: Vec<&str> = job["result"]["job_states"][0]["success_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["ip"].as_str())
        .collect();
    assert_eq!(
        hosts.len(),
        4,
        "every peer holds it before any download: {job}"
    );
    swarm.registry.stop();
    let out = swarm.path().join("file-after-preheat");
    let r = run(std::process::Command::new(dfctl())
        .arg("--socket")
        .arg(&swarm.nodes[2].daemon.socket)
        .args([
            "get",
            "--quiet",
            &format!("{file_url}?X-Amz-Signature=two"),
            "-O",
        ])
        .arg(&out)
        .args(["--digest", digest]));
    assert!(r.is_ok(), "{r:?}\n{}", swarm.logs());
    assert!(std::fs::read(&out).unwrap() == want);
    assert_eq!(
        swarm.nodes[2].metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
        0.0,
        "node 2 never went to the origin\n{}",
        swarm.logs()
    );

    // 4. Images, the registry still stopped: node 2 pulls and runs the zstd:chunked image
    //    (preheated into the seed peer only: manifest, config and the chunks it reads come
    //    from the seed) and the gzip image (preheated into every peer). The tags are resolved
    //    from the manager's record of the preheats, which survived its restart.
    let node = &swarm.nodes[2];
    let huge = fixtures::large_huge_sha256();
    let fetched_before = node.metric(
        "dragonfly_snapshotter_origin_fetches_total",
        "origin=\"registry\",result=\"ok\"",
    );
    for (image, id) in [
        (&zstd, "zstd-no-registry"),
        (&published.gzip, "gzip-no-registry"),
    ] {
        let out = image_pull(node, image);
        assert!(
            out.as_ref().is_ok_and(|o| o.trim() == image.as_str()),
            "dfctl image pull {image}: {out:?}\n{}",
            swarm.logs()
        );
        let (ok, out) = node.containerd.run_once(
            "dragonfly",
            image,
            id,
            &["/bin/sha256sum", "/data/huge.bin"],
        );
        assert!(
            ok && out.contains(&huge),
            "{image}: {out}\n{}",
            swarm.logs()
        );
    }
    assert_eq!(
        node.metric(
            "dragonfly_snapshotter_origin_fetches_total",
            "origin=\"registry\",result=\"ok\""
        ),
        fetched_before,
        "nothing was fetched from the registry"
    );
    assert_eq!(
        node.metric("dragonfly_snapshotter_p2p_bytes_total", "origin"),
        0.0,
        "node 2 never went to the origin\n{}",
        swarm.logs()
    );
}
