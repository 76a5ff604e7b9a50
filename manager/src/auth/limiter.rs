//! Sign-in limits. Every attempt is counted against its source address (an IPv6 address by
//! its /64, what one host usually holds) and its user name in a fixed window; once a key
//! reaches its limit, sign-in with that key is refused until its window ends, whatever the
//! password, so online guessing gets a handful of tries per window. A successful sign-in
//! clears the user's count and takes back its source's attempt.
//!
//! Keys come from the network, so each map is an LRU of at most [`MAX_KEYS`] entries and an
//! ended window counts as no entry. Time is passed in, so the rules are tested without
//! sleeping.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// Most keys each map remembers (the least recently used is forgotten first).
pub const MAX_KEYS: usize = 10_000;
/// Longest user name kept as a key (longer names share the key of their prefix).
const MAX_NAME: usize = 128;

/// Which limit refused an attempt, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Locked {
    /// Too many failed sign-ins for this user name.
    #[error("too many failed sign-ins for this user; retry in {} s", .0.as_secs().max(1))]
    User(Duration),
    /// Too many sign-ins from this address.
    #[error("too many sign-ins from this address; retry in {} s", .0.as_secs().max(1))]
    Source(Duration),
}

impl Locked {
    /// How long until the window ends.
    pub fn retry_after(&self) -> Duration {
        match self {
            Locked::User(d) | Locked::Source(d) => *d,
        }
    }
}

/// Attempts per key in fixed windows.
struct Windows<K: Hash + Eq> {
    limit: u32,
    window: Duration,
    entries: LruCache<K, (Instant, u32)>,
}

impl<K: Hash + Eq> Windows<K> {
    fn new(limit: u32, window: Duration) -> Self {
        Windows {
            limit,
            window,
            entries: LruCache::new(NonZeroUsize::new(MAX_KEYS).expect("non-zero")),
        }
    }

    /// The time left in `key`'s window if it is at its limit.
    fn locked(&mut self, key: &K, now: Instant) -> Option<Duration> {
        let (started, count) = *self.entries.get(key)?;
        let left = (started + self.window).checked_duration_since(now)?;
        (count >= self.limit && !left.is_zero()).then_some(left)
    }

    fn count(&mut self, key: K, now: Instant) {
        let window = self.window;
        let entry = self.entries.get_or_insert_mut(key, || (now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    fn uncount(&mut self, key: &K) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

/// The key of a source address: IPv4 as it is, IPv6 by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

fn name_key(name: &str) -> String {
    name.chars().take(MAX_NAME).collect()
}

/// Both limits.
pub struct SignInLimiter {
    inner: Mutex<(Windows<IpAddr>, Windows<String>)>,
}

impl SignInLimiter {
    /// `per_source` attempts per address and `per_user` failures per name, per `window`.
    pub fn new(per_source: u32, per_user: u32, window: Duration) -> SignInLimiter {
        SignInLimiter {
            inner: Mutex::new((
                Windows::new(per_source, window),
                Windows::new(per_user, window),
            )),
        }
    }

    /// Counts an attempt by `name` from `source` at `now`, or refuses it. The attempt counts
    /// as failed until [`SignInLimiter::succeeded`] says otherwise, so parallel attempts
    /// cannot slip past the limit.
    pub fn attempt(&self, source: IpAddr, name: &str, now: Instant) -> Result<(), Locked> {
        let (source, name) = (source_key(source), name_key(name));
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (sources, users) = &mut *guard;
        if let Some(left) = users.locked(&name, now) {
            return Err(Locked::User(left));
        }
        if let Some(left) = sources.locked(&source, now) {
            return Err(Locked::Source(left));
        }
        sources.count(source, now);
        users.count(name, now);
        Ok(())
    }

    /// The attempt had the right password: the user's failures are forgotten and the
    /// source's attempt is taken back.
    pub fn succeeded(&self, source: IpAddr, name: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (sources, users) = &mut *guard;
        sources.uncount(&source_key(source));
        users.entries.pop(&name_key(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_user_is_locked_after_its_failures_until_the_window_ends() {
        let l = SignInLimiter::new(100, 3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.attempt(ip("192.0.2.1"), "root", t0).unwrap();
        }
        let e = l.attempt(ip("192.0.2.1"), "root", t0 + Duration::from_secs(10));
        assert_eq!(e, Err(Locked::User(Duration::from_secs(50))));
        assert!(e.unwrap_err().to_string().contains("retry in 50 s"));
        // From another address too: the user name is what is locked.
        assert!(l.attempt(ip("198.51.100.7"), "root", t0).is_err());
        // Another user is not affected.
        l.attempt(ip("192.0.2.1"), "alice", t0).unwrap();
        // The window ends.
        l.attempt(ip("192.0.2.1"), "root", t0 + Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn a_source_is_locked_after_its_attempts_and_ipv6_counts_by_64() {
        let l = SignInLimiter::new(2, 100, Duration::from_secs(60));
        let t0 = Instant::now();
        l.attempt(ip("2001:db8::1"), "a", t0).unwrap();
        l.attempt(ip("2001:db8::2"), "b", t0).unwrap();
        assert!(matches!(
            l.attempt(ip("2001:db8::3"), "c", t0),
            Err(Locked::Source(_))
        ));
        l.attempt(ip("2001:db8:1::1"), "c", t0).unwrap();
        // A success gives the source its attempt back and clears the user.
        let l = SignInLimiter::new(1, 1, Duration::from_secs(60));
        l.attempt(ip("192.0.2.1"), "root", t0).unwrap();
        l.succeeded(ip("192.0.2.1"), "root");
        l.attempt(ip("192.0.2.1"), "root", t0).unwrap();
    }

    #[test]
    fn the_maps_stay_bounded() {
        let l = SignInLimiter::new(1, 1, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS as u32 + 50) {
            let _ = l.attempt(IpAddr::V4(i.into()), &format!("user{i}"), t0);
        }
        let inner = l.inner.lock().unwrap();
        assert_eq!(inner.0.entries.len(), MAX_KEYS);
        assert_eq!(inner.1.entries.len(), MAX_KEYS);
    }
}
