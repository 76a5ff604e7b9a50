//! Scoring of candidate parents: how well a parent can serve a child the pieces it asked for.
//!
//! score = 0.35·availability + 0.20·free upload slots + 0.15·upload success rate
//!       + 0.10·speed (recent piece cost) + 0.10·affinity (IDC, location) + 0.05·host type
//!       + 0.05·completeness
//! Every term is in [0, 1], so the score is too.

/// What the evaluator needs to know about a candidate.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Pieces asked for that it has.
    pub has: usize,
    /// Pieces asked for.
    pub asked: usize,
    /// Uploads running on its host, and the host's slots.
    pub active_uploads: u32,
    /// Upload slots of its host.
    pub upload_slots: u32,
    /// Piece uploads that succeeded / failed (as reported by children).
    pub uploads_ok: u64,
    /// Failed uploads.
    pub uploads_failed: u64,
    /// Moving average of its piece cost in milliseconds (0 if unknown).
    pub cost_ms: f64,
    /// Its host's IDC and location.
    pub idc: &'a str,
    /// Location, `|`-separated.
    pub location: &'a str,
    /// Whether it runs on a seed peer.
    pub seed: bool,
    /// Whether it has the whole task.
    pub complete: bool,
}

/// The child's placement, for affinity.
#[derive(Debug, Clone, Copy)]
pub struct Child<'a> {
    /// IDC.
    pub idc: &'a str,
    /// Location.
    pub location: &'a str,
}

/// Matching leading `|`-separated elements, up to 5, as a fraction of 5.
pub fn location_affinity(a: &str, b: &str) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let common = a
        .split('|')
        .zip(b.split('|'))
        .take(5)
        .take_while(|(x, y)| x.eq_ignore_ascii_case(y))
        .count();
    common as f64 / 5.0
}

/// The score of `c` for `child`, in [0, 1].
pub fn score(child: Child<'_>, c: Candidate<'_>) -> f64 {
    let availability = if c.asked == 0 {
        0.0
    } else {
        c.has as f64 / c.asked as f64
    };
    let free = if c.upload_slots == 0 {
        0.0
    } else {
        1.0 - (c.active_uploads.min(c.upload_slots) as f64 / c.upload_slots as f64)
    };
    let success = (c.uploads_ok as f64 + 1.0) / ((c.uploads_ok + c.uploads_failed) as f64 + 1.0);
    let speed = 1.0 / (1.0 + c.cost_ms.max(0.0) / 500.0);
    let idc = if !child.idc.is_empty() && child.idc.eq_ignore_ascii_case(c.idc) {
        1.0
    } else {
        0.0
    };
    let affinity = 0.6 * idc + 0.4 * location_affinity(child.location, c.location);
    let host_type = if c.seed { 1.0 } else { 0.5 };
    let complete = if c.complete { 1.0 } else { 0.5 };
    0.35 * availability
        + 0.20 * free
        + 0.15 * success
        + 0.10 * speed
        + 0.10 * affinity
        + 0.05 * host_type
        + 0.05 * complete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Candidate<'static> {
        Candidate {
            has: 4,
            asked: 4,
            active_uploads: 0,
            upload_slots: 10,
            uploads_ok: 0,
            uploads_failed: 0,
            cost_ms: 0.0,
            idc: "",
            location: "",
            seed: false,
            complete: false,
        }
    }

    const CHILD: Child<'static> = Child {
        idc: "dc1",
        location: "eu|de|fra",
    };

    #[test]
    fn each_term_moves_the_score_the_right_way() {
        let b = score(CHILD, base());
        assert!(b > 0.0 && b <= 1.0);
        assert!(
            score(CHILD, Candidate { has: 1, ..base() }) < b,
            "fewer pieces"
        );
        assert!(
            score(
                CHILD,
                Candidate {
                    active_uploads: 10,
                    ..base()
                }
            ) < b,
            "busy"
        );
        assert!(
            score(
                CHILD,
                Candidate {
                    uploads_failed: 5,
                    ..base()
                }
            ) < b,
            "unreliable"
        );
        assert!(
            score(
                CHILD,
                Candidate {
                    cost_ms: 2000.0,
                    ..base()
                }
            ) < b,
            "slow"
        );
        assert!(
            score(
                CHILD,
                Candidate {
                    idc: "DC1",
                    ..base()
                }
            ) > b,
            "same IDC"
        );
        assert!(
            score(
                CHILD,
                Candidate {
                    location: "eu|de",
                    ..base()
                }
            ) > b,
            "near"
        );
        assert!(
            score(
                CHILD,
                Candidate {
                    seed: true,
                    ..base()
                }
            ) > b,
            "seed"
        );
        let best = Candidate {
            idc: "dc1",
            location: "eu|de|fra",
            seed: true,
            complete: true,
            cost_ms: 0.0,
            uploads_ok: 100,
            ..base()
        };
        assert!(score(CHILD, best) <= 1.0 + 1e-9);
    }

    #[test]
    fn location_affinity_counts_common_prefix() {
        assert_eq!(location_affinity("a|b|c", "a|b|d"), 0.4);
        assert_eq!(location_affinity("a|b|c|d|e|f", "a|b|c|d|e|f"), 1.0);
        assert_eq!(location_affinity("", "a"), 0.0);
        assert_eq!(location_affinity("x", "a"), 0.0);
    }
}
