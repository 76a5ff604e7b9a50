//! The job contract as operators script it: `{"type": "preheat", "args": {...},
//! "scheduler_cluster_ids": [...]}`. Parses and checks a creation request, naming the field
//! of every mistake, and splits the arguments into what is stored and shown (secrets blanked)
//! and the secrets only the runner sees. Both `snake_case` (Dragonfly v2) and the camelCase
//! names (`pieceLength`, `filteredQueryParams`) are accepted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A request field that is wrong: which one (`args.url`, …) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path in the request.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Smallest and largest piece length a job may ask for.
pub const PIECE_LENGTH_RANGE: (u64, u64) = (64 << 10, 64 << 20);

/// The job types of `POST /jobs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Fill hosts with an image or files (stored, run by the runner).
    Preheat,
    /// Which peers hold a task (stored, run by the runner).
    GetTask,
    /// Evict a task from every peer (stored, run by the runner).
    DeleteTask,
    /// Which peers hold which layers of an image (answered at once, not stored).
    GetImageDistribution,
}

impl JobKind {
    /// The stored and answered name (`preheat`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Preheat => "preheat",
            JobKind::GetTask => "get_task",
            JobKind::DeleteTask => "delete_task",
            JobKind::GetImageDistribution => "get_image_distribution",
        }
    }

    /// The job type `name`, or a 400 naming `type`.
    pub fn parse(name: &str) -> Result<JobKind, FieldError> {
        [
            JobKind::Preheat,
            JobKind::GetTask,
            JobKind::DeleteTask,
            JobKind::GetImageDistribution,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| {
            FieldError::new(
                "type",
                format!("unknown job type {name:?}; supported: preheat, get_task, delete_task, get_image_distribution"),
            )
        })
    }
}

/// `POST /jobs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// A [`JobKind`] name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text.
    #[serde(default)]
    pub bio: String,
    /// Type-specific arguments.
    #[serde(default)]
    pub args: Value,
    /// Target clusters; empty = all.
    #[serde(default)]
    pub scheduler_cluster_ids: Vec<i64>,
    /// Ignored (the caller's identity decides); accepted for Dragonfly clients.
    #[serde(default)]
    pub user_id: Option<i64>,
}

/// Raw preheat arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreheat {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    application: String,
    #[serde(default, alias = "filteredQueryParams")]
    filtered_query_params: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    platform: String,
    #[serde(default, alias = "pieceLength")]
    piece_length: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    /// Seconds, or a duration like "90s", "30m", "2h".
    #[serde(default)]
    timeout: Option<Value>,
    // Dragonfly's narrowing of the all_* scopes, and parallelism.
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    percentage: Option<u32>,
    #[serde(default)]
    concurrent_task_count: Option<u32>,
    #[serde(default)]
    concurrent_peer_count: Option<u32>,
}

/// What to preheat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreheatKind {
    /// An image: its manifest URL.
    Image,
    /// Files by URL.
    File,
}

/// Where to put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The seed peer a pull would trigger.
    SingleSeedPeer,
    /// Every seed peer.
    AllSeedPeers,
    /// Every peer.
    AllPeers,
}

/// Checked preheat arguments (what the runner works from, with the secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Preheat {
    /// Image or file.
    pub kind: PreheatKind,
    /// Manifest URL (image) or file URLs.
    pub urls: Vec<String>,
    /// Task ID parts for files.
    pub tag: String,
    /// Task ID parts for files.
    pub application: String,
    /// Extra query parameters left out of file task IDs (besides the signed-URL ones).
    pub filtered_query_params: Vec<String>,
    /// `os/arch[/variant]` for manifest lists.
    pub platform: String,
    /// Requested piece length.
    pub piece_length: Option<u64>,
    /// Targets.
    pub scope: Scope,
    /// Time limit.
    pub timeout_secs: u64,
    /// Which of the scope's hosts, and how many at once.
    #[serde(default)]
    pub targets: Targets,
}

/// Dragonfly's preheat targeting: `ips`, else `count`, else `percentage` of an all_* scope's
/// hosts; hosts and tasks per host worked on at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Targets {
    /// Only the hosts with these IPs.
    pub ips: Vec<String>,
    /// This many hosts.
    pub count: Option<u32>,
    /// This share of the hosts, in percent (rounded up).
    pub percentage: Option<u32>,
    /// Hosts filled at once.
    pub concurrent_peer_count: Option<u32>,
    /// Tasks triggered at once on one host.
    pub concurrent_task_count: Option<u32>,
}

/// Most hosts or tasks worked on at once a job may ask for.
pub const MAX_CONCURRENCY: u32 = 10_000;

fn preheat_targets(raw: &RawPreheat, scope: Scope) -> Result<Targets, FieldError> {
    for ip in &raw.ips {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(FieldError::new(
                "args.ips",
                format!("{ip:?} is not an IP address"),
            ));
        }
    }
    if raw.count == Some(0) {
        return Err(FieldError::new("args.count", "count must be at least 1"));
    }
    if let Some(p) = raw.percentage {
        if !(1..=100).contains(&p) {
            return Err(FieldError::new(
                "args.percentage",
                format!("percentage {p} must be from 1 to 100"),
            ));
        }
    }
    let narrowing = [
        ("args.ips", !raw.ips.is_empty()),
        ("args.count", raw.count.is_some()),
        ("args.percentage", raw.percentage.is_some()),
    ];
    if scope == Scope::SingleSeedPeer {
        if let Some((field, _)) = narrowing.iter().find(|(_, set)| *set) {
            return Err(FieldError::new(
                field,
                "ips, count and percentage narrow scope all_seed_peers or all_peers, not single_seed_peer",
            ));
        }
    }
    for (field, v) in [
        ("args.concurrent_peer_count", raw.concurrent_peer_count),
        ("args.concurrent_task_count", raw.concurrent_task_count),
    ] {
        if let Some(n) = v {
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                return Err(FieldError::new(
                    field,
                    format!("{n} must be from 1 to {MAX_CONCURRENCY}"),
                ));
            }
        }
    }
    Ok(Targets {
        ips: raw.ips.clone(),
        count: raw.count,
        percentage: raw.percentage,
        concurrent_peer_count: raw.concurrent_peer_count,
        concurrent_task_count: raw.concurrent_task_count,
    })
}

/// Secrets of a job: never returned, never logged, deleted when the job ends.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Secrets {
    /// Registry user.
    pub username: String,
    /// Registry password.
    pub password: String,
    /// Headers for the registry / origin.
    pub headers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("username", &"…")
            .field("password", &"…")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A checked creation request.
#[derive(Debug)]
pub struct NewJob {
    /// Free text.
    pub bio: String,
    /// Runner arguments.
    pub preheat: Preheat,
    /// What the API shows as `args` (secrets blanked).
    pub shown: Value,
    /// Secrets.
    pub secrets: Secrets,
    /// Target clusters.
    pub clusters: Vec<i64>,
}

/// "90", 90, "90s", "30m", "2h" → seconds.
fn parse_timeout(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| "timeout must be a positive number of seconds".into()),
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num
                .parse()
                .map_err(|_| format!("timeout {s:?} is not like 90s, 30m or 2h"))?;
            let mult = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return Err(format!("timeout {s:?} is not like 90s, 30m or 2h")),
            };
            Ok(n * mult)
        }
        _ => Err("timeout must be seconds or a duration like 30m".into()),
    }
}

pub(crate) fn check_url(field: &str, u: &str) -> Result<reqwest::Url, FieldError> {
    let parsed = reqwest::Url::parse(u)
        .map_err(|e| FieldError::new(field, format!("{u:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(FieldError::new(
            field,
            format!("{u:?} must be an http(s) URL with a host"),
        ));
    }
    Ok(parsed)
}

/// A job's `args`, parsed (unknown fields are errors naming them).
pub(crate) fn deserialize_args<T: serde::de::DeserializeOwned>(
    args: Value,
) -> Result<T, FieldError> {
    if !args.is_object() {
        return Err(FieldError::new(
            "args",
            "args must be an object (see the Open API document for each job type's fields)",
        ));
    }
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "args".to_owned()
        } else {
            format!("args.{path}")
        };
        FieldError::new(&field, format!("invalid args: {}", e.inner()))
    })
}

fn preheat_kind(kind: &str) -> Result<PreheatKind, FieldError> {
    match kind {
        "image" => Ok(PreheatKind::Image),
        "file" => Ok(PreheatKind::File),
        other => Err(FieldError::new(
            "args.type",
            format!("unknown preheat type {other:?}; use image or file"),
        )),
    }
}

/// `url` then `urls`: http(s), and for an image exactly one manifest URL.
fn preheat_urls(raw: &RawPreheat, kind: PreheatKind) -> Result<Vec<String>, FieldError> {
    let mut urls = raw.urls.clone();
    if !raw.url.is_empty() {
        urls.insert(0, raw.url.clone());
    }
    if urls.is_empty() {
        return Err(FieldError::new("args.url", "url is required"));
    }
    for u in &urls {
        let parsed = check_url("args.url", u)?;
        if kind == PreheatKind::Image && crate::jobs::image::ManifestUrl::parse(&parsed).is_none() {
            return Err(FieldError::new(
                "args.url",
                format!("{u:?} is not an image manifest URL like https://REGISTRY/v2/REPO/manifests/TAG"),
            ));
        }
    }
    if kind == PreheatKind::Image && urls.len() > 1 {
        return Err(FieldError::new(
            "args.urls",
            "an image preheat takes one manifest url",
        ));
    }
    Ok(urls)
}

fn check_piece_length(piece_length: Option<u64>) -> Result<(), FieldError> {
    let (lo, hi) = PIECE_LENGTH_RANGE;
    match piece_length {
        Some(pl) if !(lo..=hi).contains(&pl) || !pl.is_power_of_two() => Err(FieldError::new(
            "args.pieceLength",
            format!("pieceLength {pl} must be a power of two from {lo} to {hi}"),
        )),
        _ => Ok(()),
    }
}

fn preheat_scope(scope: Option<&str>) -> Result<Scope, FieldError> {
    match scope.unwrap_or("single_seed_peer") {
        "single_seed_peer" | "" => Ok(Scope::SingleSeedPeer),
        "all_seed_peers" => Ok(Scope::AllSeedPeers),
        "all_peers" => Ok(Scope::AllPeers),
        other => Err(FieldError::new(
            "args.scope",
            format!("unknown scope {other:?}; use single_seed_peer, all_seed_peers or all_peers"),
        )),
    }
}

/// `os/arch[/variant]`, this machine's when empty.
pub(crate) fn preheat_platform(platform: &str) -> Result<String, FieldError> {
    let platform = if platform.is_empty() {
        dragonfly_registry::default_platform()
    } else {
        platform.to_owned()
    };
    let parts: Vec<&str> = platform.split('/').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
        return Err(FieldError::new(
            "args.platform",
            format!("platform {platform:?} is not os/arch[/variant]"),
        ));
    }
    Ok(platform)
}

pub(crate) fn job_timeout(timeout: Option<&Value>, default: Duration) -> Result<u64, FieldError> {
    let secs = match timeout {
        None => default.as_secs(),
        Some(v) => parse_timeout(v).map_err(|e| FieldError::new("args.timeout", e))?,
    };
    if !(1..=24 * 3600).contains(&secs) {
        return Err(FieldError::new(
            "args.timeout",
            "timeout must be from 1 second to 24 hours",
        ));
    }
    Ok(secs)
}

/// The arguments as answered: everything but the secrets (user name, password and header
/// values blanked; URLs without their query values and user info).
fn shown_args(
    raw: &RawPreheat,
    urls: &[String],
    platform: &str,
    scope: Scope,
    timeout_secs: u64,
) -> Value {
    json!({
        "type": raw.kind,
        "url": crate::redact::url(&urls[0]),
        "urls": urls[1..].iter().map(|u| crate::redact::url(u)).collect::<Vec<_>>(),
        "tag": raw.tag,
        "application": raw.application,
        "filtered_query_params": raw.filtered_query_params,
        "headers": raw.headers.keys().map(|k| (k.clone(), Value::String(String::new()))).collect::<serde_json::Map<_, _>>(),
        "username": "",
        "password": "",
        "platform": platform,
        "piece_length": raw.piece_length,
        "scope": serde_json::to_value(scope).expect("scope serializes"),
        "timeout": timeout_secs,
        "ips": raw.ips,
        "count": raw.count,
        "percentage": raw.percentage,
        "concurrent_peer_count": raw.concurrent_peer_count,
        "concurrent_task_count": raw.concurrent_task_count,
    })
}

/// `a&b` → the query parameter names left out of file task IDs.
pub(crate) fn split_filtered(params: &str) -> Vec<String> {
    params
        .split('&')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks a preheat `req`; `default_timeout` applies when the job gives none.
pub fn check(mut req: CreateJob, default_timeout: Duration) -> Result<NewJob, FieldError> {
    let raw: RawPreheat = deserialize_args(req.args.take())?;
    let kind = preheat_kind(&raw.kind)?;
    let urls = preheat_urls(&raw, kind)?;
    check_piece_length(raw.piece_length)?;
    let scope = preheat_scope(raw.scope.as_deref())?;
    let platform = preheat_platform(&raw.platform)?;
    let timeout_secs = job_timeout(raw.timeout.as_ref(), default_timeout)?;
    if raw.password.is_empty() != raw.username.is_empty() {
        return Err(FieldError::new(
            "args.username",
            "give username and password together",
        ));
    }
    let targets = preheat_targets(&raw, scope)?;
    let filtered = split_filtered(&raw.filtered_query_params);
    let shown = shown_args(&raw, &urls, &platform, scope, timeout_secs);
    Ok(NewJob {
        bio: req.bio,
        preheat: Preheat {
            kind,
            urls,
            tag: raw.tag,
            application: raw.application,
            filtered_query_params: filtered,
            platform,
            piece_length: raw.piece_length,
            scope,
            timeout_secs,
            targets,
        },
        shown,
        secrets: Secrets {
            username: raw.username,
            password: raw.password,
            headers: raw.headers,
        },
        clusters: req.scheduler_cluster_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: Value) -> CreateJob {
        CreateJob {
            kind: "preheat".into(),
            bio: String::new(),
            args,
            scheduler_cluster_ids: vec![],
            user_id: None,
        }
    }

    fn field(r: Result<NewJob, FieldError>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn the_operators_request_is_accepted_and_secrets_are_split_off() {
        let j = check(
            req(
                json!({"type": "image", "url": "http://r:5000/v2/library/app/manifests/v1",
                "username": "u", "password": "p", "headers": {"X-Token": "t"}}),
            ),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(j.preheat.kind, PreheatKind::Image);
        assert_eq!(j.preheat.scope, Scope::SingleSeedPeer);
        assert_eq!(j.secrets.password, "p");
        let shown = j.shown.to_string();
        assert!(
            !shown.contains("\"p\"") && !shown.contains("\"t\""),
            "{shown}"
        );
        assert_eq!(j.shown["headers"]["X-Token"], "");
        let f = check(
            req(json!({"type": "file", "url": "https://h/f?x=1", "pieceLength": 4194304, "filteredQueryParams": "a&b", "timeout": "30m", "scope": "all_peers"})),
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(f.preheat.filtered_query_params, vec!["a", "b"]);
        assert_eq!(f.preheat.timeout_secs, 1800);
        assert_eq!(f.preheat.scope, Scope::AllPeers);
    }

    #[test]
    fn every_mistake_names_its_field() {
        let d = Duration::from_secs(60);
        assert_eq!(JobKind::parse("gc").unwrap_err().field, "type");
        assert_eq!(JobKind::parse("get_task").unwrap(), JobKind::GetTask);
        assert_eq!(
            field(check(req(json!({"type": "blob", "url": "http://x/y"})), d)),
            "args.type"
        );
        assert_eq!(field(check(req(json!({"type": "file"})), d)), "args.url");
        assert_eq!(
            field(check(req(json!({"type": "file", "url": "ftp://x/y"})), d)),
            "args.url"
        );
        assert_eq!(
            field(check(
                req(json!({"type": "image", "url": "http://r/not/a/manifest"})),
                d
            )),
            "args.url"
        );
        assert_eq!(
            field(check(
                req(json!({"type": "file", "url": "http://x/y", "pieceLength": 1000})),
                d
            )),
            "args.pieceLength"
        );
        assert_eq!(
            field(check(
                req(json!({"type": "file", "url": "http://x/y", "scope": "everyone"})),
                d
            )),
            "args.scope"
        );
        assert_eq!(
            field(check(
                req(
                    json!({"type": "image", "url": "http://r/v2/a/manifests/b", "platform": "linux"})
                ),
                d
            )),
            "args.platform"
        );
        assert_eq!(
            field(check(
                req(json!({"type": "file", "url": "http://x/y", "timeout": "soon"})),
                d
            )),
            "args.timeout"
        );
        assert_eq!(
            field(check(
                req(json!({"type": "file", "url": "http://x/y", "piece_length": "big"})),
                d
            )),
            "args.piece_length"
        );
        assert_eq!(
            field(check(
                req(json!({"type": "file", "url": "http://x/y", "bogus": 1})),
                d
            )),
            "args.bogus"
        );
        assert_eq!(field(check(req(json!("nope")), d)), "args");
    }

    #[test]
    fn targeting_is_checked_and_kept() {
        let d = Duration::from_secs(60);
        let ok = |args: Value| check(req(args), d).unwrap().preheat.targets;
        let t = ok(
            json!({"type": "file", "url": "http://x/y", "scope": "all_peers",
            "count": 2, "concurrent_peer_count": 3, "concurrent_task_count": 1}),
        );
        assert_eq!(t.count, Some(2));
        assert_eq!(t.concurrent_peer_count, Some(3));
        assert_eq!(t.concurrent_task_count, Some(1));
        let t = ok(
            json!({"type": "file", "url": "http://x/y", "scope": "all_seed_peers",
            "ips": ["10.0.0.1", "::1"], "percentage": 50}),
        );
        assert_eq!(t.ips, vec!["10.0.0.1", "::1"]);
        let bad = |args: Value| field(check(req(args), d));
        let all = |extra: Value| {
            let mut a = json!({"type": "file", "url": "http://x/y", "scope": "all_peers"});
            a.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            bad(a)
        };
        assert_eq!(all(json!({"ips": ["not-an-ip"]})), "args.ips");
        assert_eq!(all(json!({"count": 0})), "args.count");
        assert_eq!(all(json!({"percentage": 101})), "args.percentage");
        assert_eq!(
            all(json!({"concurrent_peer_count": 0})),
            "args.concurrent_peer_count"
        );
        assert_eq!(
            all(json!({"concurrent_task_count": 100000})),
            "args.concurrent_task_count"
        );
        assert_eq!(
            all(json!({"hosts": 3})),
            "args.hosts",
            "unknown arguments are refused"
        );
        assert_eq!(
            bad(json!({"type": "file", "url": "http://x/y", "count": 2})),
            "args.count",
            "narrowing needs an all_* scope"
        );
    }
}
