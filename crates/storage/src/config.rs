//! Configuration of the piece store (the `cache:` section of the daemon's config).

use serde::Deserialize;

use crate::error::StoreError;

/// Limits and piece size of the piece store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Bytes of pieces kept; least-recently-used unpinned blobs are evicted beyond this.
    pub capacity_bytes: u64,
    /// Piece length of new blobs (a power of two, at least 64 KiB); recorded per blob. Small
    /// pieces keep lazy reads of small files cheap; requests still coalesce adjacent pieces.
    pub piece_length: u32,
    /// Piece length of new lazily-read layers (eStargz, zstd:chunked) when the swarm has none
    /// yet (a power of two, at least 16 KiB): smaller, so a container's reads fetch little more
    /// than the chunks they need.
    pub lazy_piece_length: u32,
    /// Concurrent requests to sources, across all blobs.
    pub max_concurrent_fetches: usize,
    /// Adjacent missing pieces are coalesced into requests of at most this many bytes.
    pub max_fetch_bytes: u64,
    /// Background fetches wait until no more urgent fetch has started for this long, so
    /// they never compete with a container's reads for bandwidth.
    pub background_pause_ms: u64,
    /// Size of each background request; small, so a container read that arrives while one is
    /// in flight waits little for the bandwidth.
    pub background_fetch_bytes: u64,
    /// Requests in flight at once for one whole-blob download (unpacking a layer, a seed
    /// peer's origin fetch, `dfctl get`), `max_fetch_bytes` split between them, so each
    /// request's latency hides behind the others' transfer and pieces reach the swarm sooner.
    /// Background fill always uses one.
    pub whole_blob_requests: usize,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            capacity_bytes: 10 << 30,
            piece_length: 256 << 10,
            lazy_piece_length: 32 << 10,
            max_concurrent_fetches: 8,
            max_fetch_bytes: 8 << 20,
            background_pause_ms: 1000,
            background_fetch_bytes: 1 << 20,
            whole_blob_requests: 4,
        }
    }
}

impl StoreConfig {
    /// Checks the values; the error says which key to fix.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::Config(m));
        for (key, v, min) in [
            ("piece_length", self.piece_length, 64 << 10),
            ("lazy_piece_length", self.lazy_piece_length, 16 << 10),
        ] {
            if !v.is_power_of_two() || v < min {
                return bad(format!(
                    "cache.{key} is {v}; it must be a power of two of at least {min}"
                ));
            }
        }
        if self.max_concurrent_fetches == 0 {
            return bad("cache.max_concurrent_fetches must be at least 1".into());
        }
        if self.whole_blob_requests == 0 {
            return bad("cache.whole_blob_requests must be at least 1".into());
        }
        let largest = self.piece_length.max(self.lazy_piece_length);
        if self.max_fetch_bytes < u64::from(largest) {
            return bad(format!(
                "cache.max_fetch_bytes ({}) must be at least the piece length ({largest})",
                self.max_fetch_bytes
            ));
        }
        Ok(())
    }

    /// Pieces per coalesced request.
    pub(crate) fn pieces_per_fetch(&self, piece_length: u32) -> u32 {
        (self.max_fetch_bytes / u64::from(piece_length)).clamp(1, u64::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        StoreConfig::default().validate().unwrap();
        let c = StoreConfig {
            piece_length: 1000,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("cache.piece_length"));
        let c = StoreConfig {
            max_concurrent_fetches: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_concurrent_fetches"));
        let c = StoreConfig {
            max_fetch_bytes: 1024,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_fetch_bytes"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = serde_json::from_str::<StoreConfig>(r#"{"capacity": 1}"#).unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        let c: StoreConfig = serde_json::from_str(r#"{"piece_length": 65536}"#).unwrap();
        assert_eq!(c.piece_length, 65536);
        assert_eq!(c.capacity_bytes, 10 << 30);
    }
}
