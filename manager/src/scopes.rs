//! Which cluster serves a peer: each cluster's scopes (CIDRs, hostname patterns, IDC,
//! location prefix) are scored against what the peer says about itself; the best positive
//! score wins, else the default cluster.

use std::net::IpAddr;

use crate::store::clusters::{Cluster, Scopes};

/// An address range like `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or `v6/n`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = s.split_once('/').ok_or("not ADDRESS/BITS")?;
        let net: IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IP address"))?;
        let bits: u8 = bits
            .parse()
            .map_err(|_| format!("{bits:?} is not a prefix length"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(format!("prefix length {bits} is over {max}"));
        }
        Ok(Cidr { net, bits })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// What a peer says about itself.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// Hostname.
    pub hostname: String,
    /// Address.
    pub ip: String,
    /// IDC.
    pub idc: String,
    /// Location.
    pub location: String,
}

/// How well `scopes` match `peer`, in [0, 1]; 0 = not at all.
pub fn score(scopes: &Scopes, peer: &PeerInfo) -> f64 {
    let ip: Option<IpAddr> = peer.ip.parse().ok();
    let cidr = ip.is_some_and(|ip| {
        scopes
            .cidrs
            .iter()
            .filter_map(|c| Cidr::parse(c).ok())
            .any(|c| c.contains(ip))
    });
    let hostname = !peer.hostname.is_empty()
        && scopes
            .hostnames
            .iter()
            .filter_map(|h| regex::Regex::new(h).ok())
            .any(|r| r.is_match(&peer.hostname));
    let idc = !scopes.idc.is_empty()
        && scopes
            .idc
            .split('|')
            .any(|i| i.eq_ignore_ascii_case(&peer.idc));
    let location = if scopes.location.is_empty() || peer.location.is_empty() {
        0.0
    } else {
        let common = scopes
            .location
            .split('|')
            .zip(peer.location.split('|'))
            .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
            .count();
        common.min(5) as f64 / 5.0
    };
    0.4 * f64::from(u8::from(cidr))
        + 0.3 * f64::from(u8::from(hostname))
        + 0.2 * f64::from(u8::from(idc))
        + 0.1 * location
}

/// The cluster that serves `peer`.
pub fn pick<'a>(clusters: &'a [Cluster], peer: &PeerInfo) -> Option<&'a Cluster> {
    clusters
        .iter()
        .map(|c| (score(&c.scopes, peer), c))
        .filter(|(s, _)| *s > 0.0)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
        .or_else(|| clusters.iter().find(|c| c.is_default))
        .or_else(|| clusters.first())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clusters::ClusterConfig;

    fn cluster(id: i64, is_default: bool, scopes: Scopes) -> Cluster {
        Cluster {
            id,
            name: format!("c{id}"),
            bio: String::new(),
            is_default,
            scopes,
            config: ClusterConfig::default(),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn cidrs_match_and_the_best_scope_wins_over_the_default() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err() && Cidr::parse("x/8").is_err());
        let clusters = vec![
            cluster(1, true, Scopes::default()),
            cluster(
                2,
                false,
                Scopes {
                    cidrs: vec!["10.1.0.0/16".into()],
                    ..Default::default()
                },
            ),
            cluster(
                3,
                false,
                Scopes {
                    hostnames: vec!["^gpu-".into()],
                    idc: "dc2".into(),
                    ..Default::default()
                },
            ),
        ];
        let peer = |ip: &str, host: &str, idc: &str| PeerInfo {
            ip: ip.into(),
            hostname: host.into(),
            idc: idc.into(),
            ..Default::default()
        };
        assert_eq!(
            pick(&clusters, &peer("10.1.0.5", "web-1", "")).unwrap().id,
            2
        );
        assert_eq!(
            pick(&clusters, &peer("10.9.0.5", "gpu-7", "dc2"))
                .unwrap()
                .id,
            3
        );
        assert_eq!(
            pick(&clusters, &peer("192.168.0.1", "web-2", ""))
                .unwrap()
                .id,
            1,
            "default"
        );
    }
}
