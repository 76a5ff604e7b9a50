//! Where a client may connect, when its owner restricts it (the manager refuses internal
//! addresses for preheats): names go through the owner's DNS resolver, which refuses a name
//! with a refused address when the connection is made, and a URL whose host is an IP literal
//! (which no resolver sees) is checked before every request — each redirect hop and each
//! token realm included.

use std::sync::Arc;

/// The owner's rules.
pub trait DestinationCheck: Send + Sync {
    /// `Err(why)` if a request to `url` must not be sent (called for every request; the
    /// resolver below covers names).
    fn check_url(&self, url: &reqwest::Url) -> Result<(), String>;

    /// The resolver every name is resolved with.
    fn resolver(&self) -> Arc<dyn reqwest::dns::Resolve>;
}

/// `Err` (a [`crate::Error::Refused`]) if `check` refuses `url`.
pub(crate) fn check(
    check: Option<&dyn DestinationCheck>,
    url: &reqwest::Url,
) -> Result<(), crate::Error> {
    match check.map(|c| c.check_url(url)) {
        Some(Err(reason)) => Err(crate::Error::Refused {
            url: crate::log::loggable_url(url),
            reason,
        }),
        _ => Ok(()),
    }
}
