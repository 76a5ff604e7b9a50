//! Where preheat URLs may point. A preheat makes the manager (image manifests, registry token
//! realms) and seed peers (files) fetch a URL a caller chose, so the addresses its host
//! resolves to are checked: loopback, link-local (cloud metadata at 169.254.169.254),
//! private, CGNAT, multicast, unspecified and reserved ranges — also written as IPv4-mapped,
//! NAT64 or 6to4 IPv6 — are refused unless inside `jobs.allowed_networks`. A name is refused
//! if any of its addresses is.
//!
//! [`DestinationPolicy::client`] builds an HTTP client that applies the same check to every
//! address it connects to (its DNS resolver refuses, so a name cannot resolve one way when
//! checked and another when connected) and to every redirect it follows.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use ipnet::IpNet;

/// Why a URL may not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It resolves to an address of a refused range.
    #[error("{url} resolves to {addr}, a {class} address; preheat URLs must point at public addresses, or list the network in jobs.allowed_networks of the manager config")]
    Address {
        /// The URL (query values redacted).
        url: String,
        /// The address.
        addr: IpAddr,
        /// Loopback, private, …
        class: &'static str,
    },
    /// Its host does not resolve.
    #[error("cannot resolve the host of {url}: {reason}; check the URL and the manager's DNS")]
    Unresolved {
        /// The URL (query values redacted).
        url: String,
        /// The resolver's error.
        reason: String,
    },
    /// It has no host, or a scheme other than http(s).
    #[error("{0} is not an http(s) URL with a host")]
    NotHttp(String),
}

/// The refused ranges and what they are.
static REFUSED: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    ]
    .into_iter()
    .map(|(net, class)| (net.parse().expect("valid CIDR"), class))
    .collect()
});

/// The IPv4 address an IPv6 one stands for: IPv4-mapped (`::ffff:a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = || Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low()),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    }
}

/// The refused range `ip` is in, if any.
pub fn refused_class(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Some("broadcast");
    }
    REFUSED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|(_, class)| *class)
}

/// The allow-list and the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    allowed: Vec<IpNet>,
}

impl DestinationPolicy {
    /// Refused ranges minus `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> DestinationPolicy {
        DestinationPolicy { allowed }
    }

    /// Why `ip` is refused, or `None` if it may be fetched.
    pub fn check_ip(&self, ip: IpAddr) -> Option<&'static str> {
        let canonical = ip.to_canonical();
        if self
            .allowed
            .iter()
            .any(|n| n.contains(&ip) || n.contains(&canonical))
        {
            return None;
        }
        refused_class(ip)
    }

    fn check_addrs(&self, url: &str, addrs: &[SocketAddr]) -> Result<(), Refused> {
        match addrs
            .iter()
            .find_map(|a| self.check_ip(a.ip()).map(|class| (a.ip(), class)))
        {
            Some((addr, class)) => Err(Refused::Address {
                url: crate::redact::url(url),
                addr,
                class,
            }),
            None => Ok(()),
        }
    }

    /// Resolves `url`'s host and checks every address (the blocking resolver runs on the
    /// blocking pool).
    pub async fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let shown = || crate::redact::url(url.as_str());
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(Refused::NotHttp(shown()));
        };
        let addrs: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
            url::Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
            url::Host::Domain(name) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| Refused::Unresolved {
                    url: shown(),
                    reason: e.to_string(),
                })?
                .collect(),
        };
        self.check_addrs(url.as_str(), &addrs)
    }

    /// An HTTP client that connects only where this policy allows: its resolver refuses
    /// names with a refused address, and every redirect to an IP literal is checked (names
    /// are checked by the resolver when connected). No proxy, at most 10 redirects.
    pub fn client(self: &Arc<Self>, timeout: Duration) -> reqwest::Client {
        let policy = self.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            match literal_addr(attempt.url())
                .map(|a| policy.check_addrs(attempt.url().as_str(), &[a]))
            {
                Some(Err(refused)) => attempt.error(refused),
                _ => attempt.follow(),
            }
        });
        reqwest::Client::builder()
            .dns_resolver(Arc::new(Resolver(self.clone())))
            .redirect(redirects)
            .no_proxy()
            .timeout(timeout)
            .build()
            .expect("an HTTP client with a custom resolver builds")
    }
}

/// The address of a URL whose host is an IP literal.
pub fn literal_addr(url: &reqwest::Url) -> Option<SocketAddr> {
    let port = url.port_or_known_default()?;
    match url.host()? {
        url::Host::Ipv4(ip) => Some(SocketAddr::new(ip.into(), port)),
        url::Host::Ipv6(ip) => Some(SocketAddr::new(ip.into(), port)),
        url::Host::Domain(_) => None,
    }
}

/// The policy as reqwest's resolver: the system resolver, then the check.
struct Resolver(Arc<DestinationPolicy>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            policy.check_addrs(&host, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The policy for the registry client that reads an image's manifests: every request it
/// sends (redirects and token realms included) and every name it resolves is checked.
impl dragonfly_registry::DestinationCheck for DestinationPolicy {
    fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        match literal_addr(url).map(|a| self.check_addrs(url.as_str(), &[a])) {
            Some(Err(refused)) => Err(refused.to_string()),
            _ => Ok(()),
        }
    }

    fn resolver(&self) -> Arc<dyn reqwest::dns::Resolve> {
        Arc::new(Resolver(Arc::new(self.clone())))
    }
}

/// The policy's refusal in `e`'s chain of sources, if that is why `e` happened.
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_ranges_are_refused_in_every_spelling() {
        let p = DestinationPolicy::default();
        for (addr, class) in [
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.31.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "private (unique local)"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:0a00:0001::1", "private"),
        ] {
            assert_eq!(p.check_ip(ip(addr)), Some(class), "{addr}");
        }
        for public in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2606:4700::1111"] {
            assert_eq!(p.check_ip(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_opens_its_networks_only() {
        let p = DestinationPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.20.0.0/16".parse().unwrap(),
        ]);
        assert_eq!(p.check_ip(ip("127.0.0.1")), None);
        assert_eq!(
            p.check_ip(ip("::ffff:127.0.0.1")),
            None,
            "the mapped form of an allowed address"
        );
        assert_eq!(p.check_ip(ip("10.20.3.4")), None);
        assert_eq!(p.check_ip(ip("10.21.0.1")), Some("private"));
        assert_eq!(p.check_ip(ip("169.254.169.254")), Some("link-local"));
        assert_eq!(p.check_ip(ip("::1")), Some("loopback"));
    }

    #[tokio::test]
    async fn urls_are_checked_by_their_addresses_and_the_refusal_names_both() {
        let p = DestinationPolicy::default();
        let e = p
            .check_url(
                &"http://169.254.169.254/latest/meta-data?token=abc"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("169.254.169.254") && text.contains("link-local"),
            "{text}"
        );
        assert!(
            text.contains("jobs.allowed_networks") && !text.contains("abc"),
            "{text}"
        );
        let e = p
            .check_url(&"http://localhost:5000/v2/a/manifests/b".parse().unwrap())
            .await;
        assert!(
            matches!(
                e,
                Err(Refused::Address {
                    class: "loopback",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = p
            .check_url(&"http://[::ffff:7f00:1]/x".parse().unwrap())
            .await;
        assert!(
            matches!(
                e,
                Err(Refused::Address {
                    class: "loopback",
                    ..
                })
            ),
            "{e:?}"
        );
        let e = p
            .check_url(&"http://no-such-host.invalid/x".parse().unwrap())
            .await;
        assert!(matches!(e, Err(Refused::Unresolved { .. })), "{e:?}");
        assert_eq!(
            p.check_url(&"http://93.184.215.14/x".parse().unwrap())
                .await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn the_client_refuses_names_that_resolve_to_refused_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            axum::serve(
                listener,
                axum::Router::new().route("/", axum::routing::get(|| async { "hi" })),
            )
            .await
        });
        let strict = Arc::new(DestinationPolicy::default());
        let e = strict
            .client(Duration::from_secs(5))
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap_err();
        let refused = refusal_in(&e).expect("refused by the resolver");
        assert!(
            matches!(
                refused,
                Refused::Address {
                    class: "loopback",
                    ..
                }
            ),
            "{refused}"
        );
        let open = Arc::new(DestinationPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]));
        let body = open
            .client(Duration::from_secs(5))
            .get(format!("http://localhost:{port}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hi");
    }
}
