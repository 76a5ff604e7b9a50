//! A growable set of piece numbers (the pieces a peer holds).

/// Piece numbers, as bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PieceSet {
    words: Vec<u64>,
    len: u32,
}

impl PieceSet {
    /// Adds `n`; returns whether it was new.
    pub fn insert(&mut self, n: u32) -> bool {
        let (w, b) = ((n / 64) as usize, n % 64);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let new = self.words[w] & (1 << b) == 0;
        if new {
            self.words[w] |= 1 << b;
            self.len += 1;
        }
        new
    }

    /// Whether `n` is in the set.
    pub fn contains(&self, n: u32) -> bool {
        self.words
            .get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    /// How many pieces.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.words.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_len() {
        let mut s = PieceSet::default();
        assert!(s.is_empty() && !s.contains(0));
        assert!(s.insert(0) && s.insert(63) && s.insert(64) && s.insert(1000));
        assert!(!s.insert(63));
        assert_eq!(s.len(), 4);
        assert!(s.contains(1000) && !s.contains(999) && !s.contains(100_000));
        s.clear();
        assert!(s.is_empty() && !s.contains(0));
    }
}
