//! What may be logged about a request: URLs without credentials or query strings (signed
//! storage URLs carry secrets in their query).

/// `scheme://host[:port]/path` of `url`, dropping user info, query and fragment.
pub(crate) fn loggable_url(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_secrets() {
        let url = reqwest::Url::parse(
            "https://user:pass@s3.example.com:8443/bucket/data?X-Amz-Signature=abc#frag",
        )
        .unwrap();
        assert_eq!(
            loggable_url(&url),
            "https://s3.example.com:8443/bucket/data"
        );
    }
}
