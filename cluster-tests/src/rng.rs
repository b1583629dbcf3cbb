//! Reproducible randomness for fault schedules and packet loss: SplitMix64,
//! small and good enough to pick faults, with no dependency. A test that
//! prints its seed can be replayed decision for decision.

/// A seeded pseudo-random generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator that yields the same sequence for the same `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A seed that differs between runs (time and process id), for tests
    /// that print it so a failure can be replayed.
    pub fn fresh_seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `range` (inclusive of both ends).
    ///
    /// # Panics
    /// When the range is empty.
    pub fn between(&mut self, range: std::ops::RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*range.start(), *range.end());
        assert!(lo <= hi, "empty range {lo}..={hi}");
        match (hi - lo).checked_add(1) {
            None => self.next_u64(),
            Some(span) => lo + self.next_u64() % span,
        }
    }

    /// One element of a non-empty slice.
    ///
    /// # Panics
    /// When `items` is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.between(0..=items.len() as u64 - 1) as usize]
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_ranges_hold() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = SplitMix64::new(7);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        for _ in 0..1000 {
            let x = r.between(3..=5);
            assert!((3..=5).contains(&x));
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert_eq!(r.between(9..=9), 9);
        let hits = (0..10_000).filter(|_| r.chance(0.2)).count();
        assert!((1500..2500).contains(&hits), "{hits} of 10000 at p=0.2");
    }
}
