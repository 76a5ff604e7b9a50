//! The arguments of the task jobs, as Dragonfly's Open API takes them: `get_task` and
//! `delete_task` name one task by `task_id` (`sha256:<hex>` for an image layer or any OCI
//! blob, `task:<hex>` or the bare hex `dfctl get` prints for a file), or by `url` with the
//! `tag`, `application` and `filtered_query_params` its download or preheat used (the same
//! task ID rule as file preheats); `get_image_distribution` names an image by manifest URL.
//! Dragonfly arguments that mean nothing here are refused with a 400 naming them.

use std::collections::BTreeMap;
use std::time::Duration;

use dragonfly_task::TaskId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::args::{check_url, FieldError, MAX_CONCURRENCY};

/// Raw `get_task` / `delete_task` arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTaskArgs {
    #[serde(default)]
    task_id: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    application: String,
    #[serde(default, alias = "filteredQueryParams")]
    filtered_query_params: String,
    #[serde(default, alias = "pieceLength")]
    piece_length: Option<Value>,
    #[serde(default)]
    content_for_calculating_task_id: Option<Value>,
    #[serde(default)]
    concurrent_peer_count: Option<u32>,
    #[serde(default)]
    timeout: Option<Value>,
}

/// A checked `get_task` / `delete_task`: which task, and the bounds of the work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskQuery {
    /// The task, as the swarm names it.
    pub task_id: String,
    /// The URL it was named by, if any (shown redacted).
    #[serde(default)]
    pub url: String,
    /// Time limit.
    pub timeout_secs: u64,
    /// Hosts asked at once (delete_task).
    #[serde(default)]
    pub concurrent_peer_count: Option<u32>,
}

/// `what` refused: Dragonfly takes it, our task IDs do not depend on it.
fn meaningless(field: &str, why: &str) -> FieldError {
    FieldError::new(
        field,
        format!("{field} is not supported here: {why}; leave it out"),
    )
}

/// The task ID `raw` names.
fn task_id_of(raw: &RawTaskArgs) -> Result<(TaskId, String), FieldError> {
    match (raw.task_id.is_empty(), raw.url.is_empty()) {
        (false, false) => Err(FieldError::new(
            "args.task_id",
            "give task_id or url, not both",
        )),
        (true, true) => Err(FieldError::new(
            "args.task_id",
            "task_id or url is required (task_id: sha256:<hex> for an image layer, task:<hex> for a file; url: the file's URL with its tag, application and filtered_query_params)",
        )),
        (false, true) => {
            let given = raw.task_id.trim();
            let id = if given.len() == 64 && !given.contains(':') {
                format!("task:{given}")
            } else {
                given.to_owned()
            };
            for (field, set) in [
                ("args.tag", !raw.tag.is_empty()),
                ("args.application", !raw.application.is_empty()),
                ("args.filtered_query_params", !raw.filtered_query_params.is_empty()),
            ] {
                if set {
                    return Err(FieldError::new(
                        field,
                        "tag, application and filtered_query_params go with url, not task_id",
                    ));
                }
            }
            id.parse::<TaskId>()
                .map(|t| (t, String::new()))
                .map_err(|_| {
                    FieldError::new(
                        "args.task_id",
                        format!("{given:?} is not a task ID: use sha256:<hex> (an image layer or blob) or task:<hex> (a file)"),
                    )
                })
        }
        (true, false) => {
            check_url("args.url", &raw.url)?;
            let filtered = super::args::split_filtered(&raw.filtered_query_params);
            TaskId::file(&raw.url, &raw.tag, &raw.application, &filtered)
                .map(|t| (t, raw.url.clone()))
                .map_err(|e| FieldError::new("args.url", e.to_string()))
        }
    }
}

/// Checks `get_task` / `delete_task` arguments; `delete` allows `concurrent_peer_count`.
pub fn check_task(
    args: Value,
    delete: bool,
    default_timeout: Duration,
) -> Result<(TaskQuery, Value), FieldError> {
    let raw: RawTaskArgs = super::args::deserialize_args(args)?;
    if raw.piece_length.is_some() {
        return Err(meaningless(
            "args.piece_length",
            "task IDs here do not depend on the piece length",
        ));
    }
    if raw.content_for_calculating_task_id.is_some() {
        return Err(meaningless(
            "args.content_for_calculating_task_id",
            "file task IDs here come from the URL, tag, application and filtered_query_params",
        ));
    }
    if let Some(n) = raw.concurrent_peer_count {
        if !delete {
            return Err(meaningless(
                "args.concurrent_peer_count",
                "get_task answers from the scheduler's records without asking the peers",
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&n) {
            return Err(FieldError::new(
                "args.concurrent_peer_count",
                format!("{n} must be from 1 to {MAX_CONCURRENCY}"),
            ));
        }
    }
    let timeout_secs = super::args::job_timeout(raw.timeout.as_ref(), default_timeout)?;
    let (id, url) = task_id_of(&raw)?;
    let query = TaskQuery {
        task_id: id.to_string(),
        url,
        timeout_secs,
        concurrent_peer_count: raw.concurrent_peer_count,
    };
    let shown = json!({
        "task_id": query.task_id,
        "url": crate::redact::url(&query.url),
        "tag": raw.tag,
        "application": raw.application,
        "filtered_query_params": raw.filtered_query_params,
        "timeout": timeout_secs,
        "concurrent_peer_count": raw.concurrent_peer_count,
    });
    Ok((query, shown))
}

/// Raw `get_image_distribution` arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDistribution {
    #[serde(default)]
    url: String,
    #[serde(default)]
    platform: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    concurrent_layer_count: Option<u32>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default, alias = "pieceLength")]
    piece_length: Option<Value>,
    #[serde(default)]
    tag: Option<Value>,
    #[serde(default)]
    application: Option<Value>,
    #[serde(default, alias = "filteredQueryParams")]
    filtered_query_params: Option<Value>,
    #[serde(default)]
    concurrent_peer_count: Option<Value>,
}

/// A checked `get_image_distribution`.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// The manifest URL.
    pub url: String,
    /// `os/arch[/variant]` for an index.
    pub platform: String,
    /// Registry credentials and headers.
    pub secrets: super::args::Secrets,
    /// Layers looked up at once.
    pub concurrent_layer_count: usize,
    /// Time limit.
    pub timeout_secs: u64,
}

/// Checks `get_image_distribution` arguments.
pub fn check_distribution(
    args: Value,
    default_timeout: Duration,
) -> Result<Distribution, FieldError> {
    let raw: RawDistribution = super::args::deserialize_args(args)?;
    for (field, set) in [
        ("args.piece_length", raw.piece_length.is_some()),
        ("args.tag", raw.tag.is_some()),
        ("args.application", raw.application.is_some()),
        (
            "args.filtered_query_params",
            raw.filtered_query_params.is_some(),
        ),
    ] {
        if set {
            return Err(meaningless(
                field,
                "an image's layers are named by their digests, whatever the request",
            ));
        }
    }
    if raw.concurrent_peer_count.is_some() {
        return Err(meaningless(
            "args.concurrent_peer_count",
            "the distribution comes from the schedulers' records without asking the peers",
        ));
    }
    if raw.url.is_empty() {
        return Err(FieldError::new(
            "args.url",
            "url (the image's manifest URL) is required",
        ));
    }
    let parsed = check_url("args.url", &raw.url)?;
    if super::image::ManifestUrl::parse(&parsed).is_none() {
        return Err(FieldError::new(
            "args.url",
            format!(
                "{:?} is not an image manifest URL like https://REGISTRY/v2/REPO/manifests/TAG",
                crate::redact::url(&raw.url)
            ),
        ));
    }
    if raw.password.is_empty() != raw.username.is_empty() {
        return Err(FieldError::new(
            "args.username",
            "give username and password together",
        ));
    }
    let layers = raw.concurrent_layer_count.unwrap_or(8);
    if !(1..=MAX_CONCURRENCY).contains(&layers) {
        return Err(FieldError::new(
            "args.concurrent_layer_count",
            format!("{layers} must be from 1 to {MAX_CONCURRENCY}"),
        ));
    }
    Ok(Distribution {
        url: raw.url,
        platform: super::args::preheat_platform(&raw.platform)?,
        secrets: super::args::Secrets {
            username: raw.username,
            password: raw.password,
            headers: raw.headers,
        },
        concurrent_layer_count: layers as usize,
        timeout_secs: super::args::job_timeout(raw.timeout.as_ref(), default_timeout)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(60);

    fn field<T: std::fmt::Debug>(r: Result<T, FieldError>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn a_task_is_named_by_id_or_by_the_url_signature_of_its_download() {
        let hex = "ab".repeat(32);
        let (q, _) = check_task(json!({"task_id": format!("sha256:{hex}")}), false, D).unwrap();
        assert_eq!(q.task_id, format!("sha256:{hex}"));
        let (q, _) = check_task(json!({"task_id": hex.clone()}), true, D).unwrap();
        assert_eq!(
            q.task_id,
            format!("task:{hex}"),
            "the bare hex dfctl get prints"
        );
        let url = "http://h/f.bin?X-Amz-Signature=1&v=2";
        let (q, shown) = check_task(
            json!({"url": url, "tag": "t", "filtered_query_params": "v"}),
            true,
            D,
        )
        .unwrap();
        let want = TaskId::file(url, "t", "", &["v".into()]).unwrap();
        assert_eq!(q.task_id, want.to_string(), "the preheat's task ID");
        assert_eq!(
            q.task_id,
            TaskId::file("http://h/f.bin?v=9", "t", "", &["v".into()])
                .unwrap()
                .to_string(),
            "another signature, same task"
        );
        assert!(!shown.to_string().contains("X-Amz-Signature=1"), "{shown}");
    }

    #[test]
    fn every_unsupported_or_wrong_task_argument_is_a_400_naming_it() {
        let hex = "ab".repeat(32);
        let id = format!("sha256:{hex}");
        for (args, delete, want) in [
            (json!({}), false, "args.task_id"),
            (
                json!({"task_id": id, "url": "http://h/f"}),
                false,
                "args.task_id",
            ),
            (json!({"task_id": "sha256:zz"}), false, "args.task_id"),
            (json!({"task_id": id, "tag": "x"}), false, "args.tag"),
            (json!({"url": "ftp://h/f"}), false, "args.url"),
            (
                json!({"task_id": id, "piece_length": 4194304}),
                false,
                "args.piece_length",
            ),
            (
                json!({"task_id": id, "content_for_calculating_task_id": "x"}),
                false,
                "args.content_for_calculating_task_id",
            ),
            (
                json!({"task_id": id, "concurrent_peer_count": 3}),
                false,
                "args.concurrent_peer_count",
            ),
            (
                json!({"task_id": id, "concurrent_peer_count": 0}),
                true,
                "args.concurrent_peer_count",
            ),
            (
                json!({"task_id": id, "timeout": "soon"}),
                true,
                "args.timeout",
            ),
            (json!({"task_id": id, "peers": 3}), true, "args.peers"),
            (json!("x"), true, "args"),
        ] {
            assert_eq!(field(check_task(args.clone(), delete, D)), want, "{args}");
        }
    }

    #[test]
    fn image_distribution_takes_a_manifest_url_and_refuses_what_it_cannot_honour() {
        let url = "http://r:5000/v2/library/app/manifests/v1";
        let d =
            check_distribution(json!({"url": url, "username": "u", "password": "p"}), D).unwrap();
        assert_eq!(d.secrets.password, "p");
        assert_eq!(d.concurrent_layer_count, 8);
        for (args, want) in [
            (json!({}), "args.url"),
            (json!({"url": "http://r/v2/app/blobs/sha256:1"}), "args.url"),
            (json!({"url": url, "tag": "x"}), "args.tag"),
            (json!({"url": url, "piece_length": 1}), "args.piece_length"),
            (
                json!({"url": url, "concurrent_peer_count": 1}),
                "args.concurrent_peer_count",
            ),
            (
                json!({"url": url, "concurrent_layer_count": 0}),
                "args.concurrent_layer_count",
            ),
            (json!({"url": url, "username": "u"}), "args.username"),
            (json!({"url": url, "platform": "linux"}), "args.platform"),
            (json!({"url": url, "layers": 1}), "args.layers"),
        ] {
            assert_eq!(field(check_distribution(args.clone(), D)), want, "{args}");
        }
    }
}
