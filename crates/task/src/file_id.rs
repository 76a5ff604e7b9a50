//! Task IDs of files by URL, shared by the daemon (`dfctl get`) and the manager (file
//! preheat), so a preheated file is the task a later download asks for: sha256 over the URL
//! with signed-URL query parameters (and any extra ones) removed, plus tag and application.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::error::TaskError;

/// Query parameters of signed URLs (S3, GCS, OSS, OBS, COS) and containerd's `ns`: never part
/// of a task ID.
pub const FILTERED_QUERY_PARAMS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
];

/// `url` without the filtered query parameters (and without a trailing `/` on a bare host).
pub fn filtered_url(url: &str, extra: &[String]) -> Result<String, TaskError> {
    let mut u = url::Url::parse(url).map_err(|source| TaskError::BadUrl {
        url: url.to_owned(),
        source,
    })?;
    let drop: HashSet<&str> = FILTERED_QUERY_PARAMS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect();
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| !drop.contains(k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut s = u.to_string();
    if u.path() == "/" && u.query().is_none() {
        s = s.trim_end_matches('/').to_owned();
    }
    Ok(s)
}

/// The hex part of a file task's ID ([`crate::TaskId::File`]).
pub fn file_task_hex(
    url: &str,
    tag: &str,
    application: &str,
    extra: &[String],
) -> Result<String, TaskError> {
    let f = filtered_url(url, extra)?;
    Ok(hex::encode(
        Sha256::new()
            .chain_update(f)
            .chain_update(tag)
            .chain_update(application)
            .finalize(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_url_parameters_do_not_split_tasks() {
        let a =
            "https://bucket.s3.example.com/models/x.bin?X-Amz-Signature=abc&X-Amz-Date=1&version=2";
        let b =
            "https://bucket.s3.example.com/models/x.bin?version=2&X-Amz-Signature=zzz&X-Amz-Date=9";
        assert_eq!(
            filtered_url(a, &[]).unwrap(),
            "https://bucket.s3.example.com/models/x.bin?version=2"
        );
        assert_eq!(
            file_task_hex(a, "", "", &[]).unwrap(),
            file_task_hex(b, "", "", &[]).unwrap()
        );
        assert_ne!(
            file_task_hex(a, "v1", "", &[]).unwrap(),
            file_task_hex(a, "v2", "", &[]).unwrap(),
            "tag splits"
        );
        assert_ne!(
            file_task_hex(a, "", "", &[]).unwrap(),
            file_task_hex(a, "", "", &["version".into()]).unwrap()
        );
        assert_eq!(filtered_url("http://h:80/", &[]).unwrap(), "http://h");
        assert!(filtered_url("not a url", &[]).is_err());
    }
}
