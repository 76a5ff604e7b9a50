//! Snapshotter conformance suite: containerd's snapshot semantics, checked against the real
//! daemon over its gRPC socket exactly as containerd speaks to it, with real bind/overlay
//! mounts. Every scenario runs twice: straight through, and with the daemon killed (SIGKILL)
//! and restarted between building state and checking it.

mod support;

use std::collections::HashMap;
use std::path::Path;

use dragonfly_proto::snapshots::snapshots_client::SnapshotsClient;
use dragonfly_proto::snapshots::*;
use support::{with_mounted, Daemon};
use tonic::transport::Channel;
use tonic::Code;

type Client = SnapshotsClient<Channel>;
type Mounts = Vec<containerd_client::types::Mount>;

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Mounts, tonic::Status> {
    prepare_with(c, key, parent, HashMap::new()).await
}

async fn prepare_with(
    c: &mut Client,
    key: &str,
    parent: &str,
    labels: HashMap<String, String>,
) -> Result<Mounts, tonic::Status> {
    c.prepare(PrepareSnapshotRequest {
        snapshotter: "dragonfly".into(),
        key: key.into(),
        parent: parent.into(),
        labels,
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn view(c: &mut Client, key: &str, parent: &str) -> Result<Mounts, tonic::Status> {
    c.view(ViewSnapshotRequest {
        snapshotter: "dragonfly".into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    commit_with(c, name, key, HashMap::new()).await
}

async fn commit_with(
    c: &mut Client,
    name: &str,
    key: &str,
    labels: HashMap<String, String>,
) -> Result<(), tonic::Status> {
    c.commit(CommitSnapshotRequest {
        snapshotter: "dragonfly".into(),
        name: name.into(),
        key: key.into(),
        labels,
    })
    .await
    .map(|_| ())
}

async fn mounts(c: &mut Client, key: &str) -> Result<Mounts, tonic::Status> {
    c.mounts(MountsRequest {
        snapshotter: "dragonfly".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().mounts)
}

async fn stat(c: &mut Client, key: &str) -> Result<Info, tonic::Status> {
    c.stat(StatSnapshotRequest {
        snapshotter: "dragonfly".into(),
        key: key.into(),
    })
    .await
    .map(|r| r.into_inner().info.expect("stat returns info"))
}

async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    c.remove(RemoveSnapshotRequest {
        snapshotter: "dragonfly".into(),
        key: key.into(),
    })
    .await
    .map(|_| ())
}

async fn list(c: &mut Client, filters: &[&str]) -> Vec<String> {
    let mut stream = c
        .list(ListSnapshotsRequest {
            snapshotter: "dragonfly".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .expect("list")
        .into_inner();
    let mut names = Vec::new();
    while let Some(batch) = stream.message().await.expect("list stream") {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

async fn usage(c: &mut Client, key: &str) -> UsageResponse {
    c.usage(UsageRequest {
        snapshotter: "dragonfly".into(),
        key: key.into(),
    })
    .await
    .expect("usage")
    .into_inner()
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

fn scratch(d: &Daemon) -> std::path::PathBuf {
    let p = d.dir.path().join("scratch");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Builds base layer A (files a, dir d/), then B on top (modifies a, deletes d/, adds b).
async fn build_chain(d: &Daemon, c: &mut Client) {
    let m = prepare(c, "a-active", "").await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].r#type, "bind",
        "a snapshot without parents is a bind mount"
    );
    assert!(m[0].options.contains(&"rw".to_string()));
    with_mounted(&m, &scratch(d), |root| {
        std::fs::write(root.join("a"), "from A").unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/inner"), "inner").unwrap();
    });
    commit_with(c, "A", "a-active", labels(&[("layer", "A")]))
        .await
        .unwrap();

    let m = prepare(c, "b-active", "A").await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    with_mounted(&m, &scratch(d), |root| {
        assert_eq!(std::fs::read_to_string(root.join("a")).unwrap(), "from A");
        std::fs::write(root.join("a"), "from B").unwrap();
        std::fs::remove_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("b"), vec![7u8; 1 << 20]).unwrap();
    });
    commit_with(c, "B", "b-active", labels(&[("layer", "B")]))
        .await
        .unwrap();
}

fn check_b_content(root: &Path) {
    assert_eq!(std::fs::read_to_string(root.join("a")).unwrap(), "from B");
    assert!(
        !root.join("d").exists(),
        "a directory deleted in B must be hidden"
    );
    assert_eq!(std::fs::metadata(root.join("b")).unwrap().len(), 1 << 20);
}

async fn parents_and_views(restart: bool) {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    build_chain(&d, &mut c).await;
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    let a = stat(&mut c, "A").await.unwrap();
    assert_eq!(a.kind, Kind::Committed as i32);
    assert_eq!(a.parent, "");
    let b = stat(&mut c, "B").await.unwrap();
    assert_eq!(b.parent, "A");
    assert_eq!(b.labels.get("layer").map(String::as_str), Some("B"));
    assert!(b.created_at.is_some() && b.updated_at.is_some());

    // A view of one committed layer is a read-only bind of it.
    let m = view(&mut c, "view-a", "A").await.unwrap();
    assert_eq!(m[0].r#type, "bind");
    assert!(m[0].options.contains(&"ro".to_string()));
    with_mounted(&m, &scratch(&d), |root| {
        assert_eq!(std::fs::read_to_string(root.join("a")).unwrap(), "from A");
        assert!(root.join("d/inner").exists());
        assert!(
            std::fs::write(root.join("x"), "x").is_err(),
            "views are read-only"
        );
    });
    // A view of a chain is a read-only overlay without upper dir.
    let m = view(&mut c, "view-b", "B").await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    assert!(!m[0].options.iter().any(|o| o.starts_with("upperdir=")));
    with_mounted(&m, &scratch(&d), check_b_content);
    assert_eq!(
        stat(&mut c, "view-b").await.unwrap().kind,
        Kind::View as i32
    );
    // Mounts of an active snapshot can be asked again (e.g. by the runtime) and still work.
    prepare(&mut c, "c-active", "B").await.unwrap();
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    let m = mounts(&mut c, "c-active").await.unwrap();
    with_mounted(&m, &scratch(&d), |root| {
        check_b_content(root);
        std::fs::write(root.join("c"), "c").unwrap();
    });
    let m = mounts(&mut c, "c-active").await.unwrap();
    with_mounted(&m, &scratch(&d), |root| {
        assert_eq!(std::fs::read_to_string(root.join("c")).unwrap(), "c");
    });
}

#[tokio::test]
async fn parents_and_views_straight() {
    parents_and_views(false).await;
}

#[tokio::test]
async fn parents_and_views_across_restart() {
    parents_and_views(true).await;
}

async fn active_versus_committed(restart: bool) {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    build_chain(&d, &mut c).await;
    prepare(&mut c, "active", "B").await.unwrap();
    view(&mut c, "view", "B").await.unwrap();
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    // Keys are unique across kinds.
    assert_eq!(
        code(prepare(&mut c, "active", "").await),
        Code::AlreadyExists
    );
    assert_eq!(code(prepare(&mut c, "A", "").await), Code::AlreadyExists);
    assert_eq!(code(view(&mut c, "view", "A").await), Code::AlreadyExists);
    // Parents must exist and be committed.
    assert_eq!(code(prepare(&mut c, "x", "missing").await), Code::NotFound);
    assert_eq!(
        code(prepare(&mut c, "x", "active").await),
        Code::InvalidArgument
    );
    assert_eq!(code(view(&mut c, "x", "view").await), Code::InvalidArgument);
    // Only active snapshots commit; committing under an existing name fails and keeps both.
    assert_eq!(
        code(commit(&mut c, "V", "view").await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(commit(&mut c, "A2", "A").await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(commit(&mut c, "B", "active").await),
        Code::AlreadyExists
    );
    assert_eq!(
        stat(&mut c, "active").await.unwrap().kind,
        Kind::Active as i32
    );
    assert_eq!(code(commit(&mut c, "Z", "missing").await), Code::NotFound);
    // Committed snapshots have no mounts; unknown keys are not found.
    assert_eq!(code(mounts(&mut c, "A").await), Code::FailedPrecondition);
    assert_eq!(code(mounts(&mut c, "missing").await), Code::NotFound);
    assert_eq!(code(stat(&mut c, "missing").await), Code::NotFound);
    // A committed snapshot keeps its content when its active key is gone; it is a new record,
    // created and updated at the commit (containerd's semantics), not when "active" was.
    let prepared = stat(&mut c, "active").await.unwrap();
    commit(&mut c, "C", "active").await.unwrap();
    assert_eq!(code(stat(&mut c, "active").await), Code::NotFound);
    let committed = stat(&mut c, "C").await.unwrap();
    assert_eq!(committed.parent, "B");
    let ns = |t: Option<prost_types::Timestamp>| {
        let t = t.expect("timestamp");
        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
    };
    assert!(
        ns(committed.created_at) > ns(prepared.created_at),
        "{committed:?} vs {prepared:?}"
    );
    assert_eq!(ns(committed.created_at), ns(committed.updated_at));
}

#[tokio::test]
async fn active_versus_committed_straight() {
    active_versus_committed(false).await;
}

#[tokio::test]
async fn active_versus_committed_across_restart() {
    active_versus_committed(true).await;
}

async fn removal(restart: bool) {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    build_chain(&d, &mut c).await;
    view(&mut c, "view", "B").await.unwrap();
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    assert_eq!(code(remove(&mut c, "A").await), Code::FailedPrecondition);
    assert_eq!(code(remove(&mut c, "B").await), Code::FailedPrecondition);
    assert!(stat(&mut c, "A").await.is_ok() && stat(&mut c, "B").await.is_ok());
    remove(&mut c, "view").await.unwrap();
    remove(&mut c, "B").await.unwrap();
    remove(&mut c, "A").await.unwrap();
    assert_eq!(code(remove(&mut c, "A").await), Code::NotFound);
    assert!(list(&mut c, &[]).await.is_empty());
    let dirs = std::fs::read_dir(d.root().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "removed snapshots leave no directories");
}

#[tokio::test]
async fn removal_straight() {
    removal(false).await;
}

#[tokio::test]
async fn removal_across_restart() {
    removal(true).await;
}

async fn labels_and_update(restart: bool) {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    prepare_with(&mut c, "a", "", labels(&[("x", "1"), ("y", "2")]))
        .await
        .unwrap();
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    let info = stat(&mut c, "a").await.unwrap();
    assert_eq!(info.labels, labels(&[("x", "1"), ("y", "2")]));
    let update = |info: Info, paths: &[&str]| UpdateSnapshotRequest {
        snapshotter: "dragonfly".into(),
        info: Some(info),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }),
    };
    // One label set, one removed, the rest kept.
    let mut change = info.clone();
    change.labels = labels(&[("x", "9"), ("z", "3")]);
    let got = c
        .update(update(change.clone(), &["labels.x", "labels.y"]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(got.labels, labels(&[("x", "9")]));
    assert!(got.updated_at.unwrap().seconds >= info.updated_at.unwrap().seconds);
    // No paths: replace all labels.
    let got = c
        .update(update(change.clone(), &[]))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(got.labels, labels(&[("x", "9"), ("z", "3")]));
    // Only labels are mutable; unknown snapshots are not found.
    assert_eq!(
        c.update(update(change.clone(), &["parent"]))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let mut missing = change;
    missing.name = "missing".into();
    assert_eq!(
        c.update(update(missing, &[])).await.unwrap_err().code(),
        Code::NotFound
    );
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    assert_eq!(
        stat(&mut c, "a").await.unwrap().labels,
        labels(&[("x", "9"), ("z", "3")])
    );
    // Commit replaces labels with the commit's labels.
    commit_with(&mut c, "A", "a", labels(&[("committed", "yes")]))
        .await
        .unwrap();
    assert_eq!(
        stat(&mut c, "A").await.unwrap().labels,
        labels(&[("committed", "yes")])
    );
}

#[tokio::test]
async fn labels_and_update_straight() {
    labels_and_update(false).await;
}

#[tokio::test]
async fn labels_and_update_across_restart() {
    labels_and_update(true).await;
}

async fn usage_and_list_filters(restart: bool) {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    build_chain(&d, &mut c).await;
    let m = prepare_with(&mut c, "active", "B", labels(&[("role", "container")]))
        .await
        .unwrap();
    let before = usage(&mut c, "active").await;
    with_mounted(&m, &scratch(&d), |root| {
        std::fs::write(root.join("big"), vec![1u8; 2 << 20]).unwrap();
    });
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    let after = usage(&mut c, "active").await;
    assert!(
        after.size >= before.size + (2 << 20),
        "active usage grows with writes: {before:?} -> {after:?}"
    );
    assert!(after.inodes > before.inodes);
    let b = usage(&mut c, "B").await;
    assert!(
        b.size >= 1 << 20,
        "committed usage recorded at commit: {b:?}"
    );

    assert_eq!(list(&mut c, &[]).await, ["A", "B", "active"]);
    assert_eq!(list(&mut c, &["kind==committed"]).await, ["A", "B"]);
    assert_eq!(list(&mut c, &["parent==B"]).await, ["active"]);
    assert_eq!(list(&mut c, &["labels.layer==A"]).await, ["A"]);
    assert_eq!(list(&mut c, &["labels.layer"]).await, ["A", "B"]);
    assert_eq!(
        list(&mut c, &["labels.layer==A", "labels.role==container"]).await,
        ["A", "active"],
        "several filters are OR-ed"
    );
    assert_eq!(
        list(&mut c, &["kind==committed,labels.layer!=A"]).await,
        ["B"],
        "selectors in one filter are AND-ed"
    );
    assert_eq!(
        list(&mut c, &[r#"labels."layer"~="^[AB]$",parent=="A""#]).await,
        ["B"]
    );
    let err = c
        .list(ListSnapshotsRequest {
            snapshotter: "dragonfly".into(),
            filters: vec!["labels.layer=A".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn usage_and_list_filters_straight() {
    usage_and_list_filters(false).await;
}

#[tokio::test]
async fn usage_and_list_filters_across_restart() {
    usage_and_list_filters(true).await;
}

async fn cleanup(restart: bool) {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    build_chain(&d, &mut c).await;
    let orphan = d.root().join("snapshots/999999");
    std::fs::create_dir_all(orphan.join("fs/sub")).unwrap();
    if restart {
        d.kill_and_restart().await;
        c = d.client().await;
    }
    c.cleanup(CleanupRequest {
        snapshotter: "dragonfly".into(),
    })
    .await
    .unwrap();
    assert!(!orphan.exists(), "cleanup removes unreferenced directories");
    let m = view(&mut c, "v", "B").await.unwrap();
    with_mounted(&m, &scratch(&d), check_b_content);
}

#[tokio::test]
async fn cleanup_straight() {
    cleanup(false).await;
}

#[tokio::test]
async fn cleanup_across_restart() {
    cleanup(true).await;
}
