//! Redaction of what a URL carries besides where it points. Signed URLs (S3's
//! `X-Amz-Signature` and `X-Amz-Credential`, GCS's `X-Goog-Signature`, Azure's `sig`, OSS's
//! `Signature`, tokens of every kind) hold their credential in the query, and
//! `user:password@host` in the user info, so every query value and the user info are
//! replaced by `REDACTED` wherever the manager shows or logs a URL: job answers, progress,
//! results and log lines. The names of the query parameters stay, so a URL is still
//! recognisable.

use std::borrow::Cow;
use std::sync::LazyLock;

/// What a redacted value reads.
pub const REDACTED: &str = "REDACTED";

/// `u` with its query values and user info redacted. Text that does not parse as a URL
/// loses everything after its first `?`.
pub fn url(u: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(u) else {
        return match u.split_once('?') {
            Some((before, _)) => format!("{before}?{REDACTED}"),
            None => u.to_owned(),
        };
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        let _ = parsed.set_username(REDACTED);
        let _ = parsed.set_password(None);
    }
    if parsed.query().is_some() {
        let pairs: Vec<String> = parsed
            .query_pairs()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.into_owned()
                } else {
                    format!("{k}={REDACTED}")
                }
            })
            .collect();
        parsed.set_query(Some(&pairs.join("&")));
    }
    parsed.into()
}

static URL_IN_TEXT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>]+"#).expect("valid regex")
});

/// `s` with every URL in it redacted (trailing punctuation is kept out of the URL).
pub fn text(s: &str) -> Cow<'_, str> {
    URL_IN_TEXT.replace_all(s, |c: &regex::Captures<'_>| {
        let m = &c[0];
        let end = m.trim_end_matches(['.', ',', ';', ':', ')', ']']).len();
        format!("{}{}", url(&m[..end]), &m[end..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_user_info_are_redacted() {
        let signed = "https://bucket.s3.amazonaws.com/f?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=deadbeef&x-id=GetObject";
        let r = url(signed);
        assert_eq!(
            r,
            "https://bucket.s3.amazonaws.com/f?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&x-id=REDACTED"
        );
        assert_eq!(url("http://u:pw@h/p"), "http://REDACTED@h/p");
        assert_eq!(url("http://h/p"), "http://h/p");
        assert_eq!(url("not a url?sig=1"), "not a url?REDACTED");
        let line = "fetch https://h/f?sig=abc&se=2030: refused (see http://x/y?token=t).";
        assert_eq!(
            text(line),
            "fetch https://h/f?sig=REDACTED&se=REDACTED: refused (see http://x/y?token=REDACTED)."
        );
        assert!(matches!(text("no urls here"), Cow::Borrowed(_)));
    }
}
