//! The walk a preheat's fetch will take, checked before the job hands the URL on. The
//! manager asks for the URL itself with a client bound to the [`DestinationPolicy`] (every
//! address it connects to and every redirect it follows is checked), and when a registry
//! answers 401 it checks the token `realm` of its `WWW-Authenticate` challenge too: that is
//! where the registry client will send the job's credentials. Only a refusal stops the job;
//! any other failure is left to the real fetch to report.
//!
//! The image resolution that follows runs in `dragonfly-registry`, whose client has no
//! resolver hook yet, so a registry that answers this walk one way and the real fetch
//! another is not caught here.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::args::PreheatKind;
use super::destination::{refusal_in, DestinationPolicy, Refused};

/// Time limit of the walk.
const TIMEOUT: Duration = Duration::from_secs(15);

static REALM: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r#"(?i)\brealm="([^"]+)""#).expect("valid regex"));

/// The realm URLs of a response's challenges.
fn realms(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            REALM
                .captures_iter(v)
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Walks `url` (a manifest URL for an image, a file URL) under `policy`.
pub async fn walk(
    policy: &Arc<DestinationPolicy>,
    kind: PreheatKind,
    url: &reqwest::Url,
) -> Result<(), Refused> {
    policy.check_url(url).await?;
    let client = policy.client(TIMEOUT);
    let request = match kind {
        PreheatKind::Image => client.get(url.clone()).header(
            reqwest::header::ACCEPT,
            dragonfly_registry::media_types::DEFAULT_ACCEPT.join(", "),
        ),
        PreheatKind::File => client
            .get(url.clone())
            .header(reqwest::header::RANGE, "bytes=0-0"),
    };
    let res = match request.send().await {
        Ok(res) => res,
        Err(e) => return refusal_in(&e).map_or(Ok(()), Err),
    };
    if res.status() == reqwest::StatusCode::UNAUTHORIZED {
        for realm in realms(&res) {
            match reqwest::Url::parse(&realm) {
                Ok(r) => policy.check_url(&r).await?,
                Err(_) => {
                    tracing::debug!(realm = %crate::redact::url(&realm), "token realm is not a URL")
                }
            }
        }
    }
    Ok(())
}
