//! torch's CPU generator, as far as index subsampling needs it: MT19937 seeded with the low
//! 32 bits of the seed, `randint(high = 2**62)` from two 32-bit draws (high word first), and
//! `randperm(n)` as Fisher-Yates from the front with `random() % (n - i)`. Reproducing it
//! makes our subsample, load and from_texts choices row-identical to the reference library.

use rand_mt::Mt;

/// A torch `Generator` after `manual_seed(seed)`.
pub struct TorchGenerator(Mt);

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        Self(Mt::new(seed as u32))
    }

    fn random64(&mut self) -> u64 {
        let hi = u64::from(self.0.next_u32());
        let lo = u64::from(self.0.next_u32());
        (hi << 32) | lo
    }

    /// `torch.randint(high=2**62, size=(1,))`.
    pub fn randint_2_62(&mut self) -> u64 {
        self.random64() % (1u64 << 62)
    }

    /// `torch.randperm(n)`.
    pub fn randperm(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in 0..n.saturating_sub(1) {
            let z = if (n as u64) < u64::from(u32::MAX) / 20 {
                u64::from(self.0.next_u32()) % (n - i) as u64
            } else {
                self.random64() % (n - i) as u64
            } as usize;
            p.swap(i, i + z);
        }
        p
    }
}

/// The reference's `_split_generators(seed)`: seeds of the positive and negative draws, so
/// the negatives chosen do not depend on whether positives were subsampled.
pub fn split_seeds(seed: u64) -> (u64, u64) {
    let mut g = TorchGenerator::new(seed);
    (g.randint_2_62(), g.randint_2_62())
}

/// `sorted(randperm(n, generator=seed)[:k])`: `k` of `n` rows, in ascending order.
pub fn choose_rows(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rows = TorchGenerator::new(seed).randperm(n);
    rows.truncate(k.min(n));
    rows.sort_unstable();
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randperm_of_five_with_seed_zero_matches_torch() {
        // torch.randperm(5, generator=torch.Generator().manual_seed(0))
        assert_eq!(TorchGenerator::new(0).randperm(5), vec![4, 0, 1, 3, 2]);
    }
}
