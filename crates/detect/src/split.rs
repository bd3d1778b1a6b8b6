//! The stratified train/test split of scikit-learn's `train_test_split(..., stratify=y,
//! random_state=seed)`, reproduced exactly: numpy's legacy `RandomState` (MT19937 with
//! `init_genrand`, masked rejection sampling for bounded integers, Fisher-Yates from the end)
//! and `StratifiedShuffleSplit`'s allocation of rows to classes. The same seed therefore gives
//! the same test rows as the notebook, which is what makes its evaluation comparable.

use rand_mt::Mt;

use crate::DetectError;

/// numpy's legacy `RandomState` as far as permutations need it.
struct NumpyRandomState(Mt);

impl NumpyRandomState {
    fn new(seed: u32) -> Self {
        Self(Mt::new(seed))
    }

    /// A uniform integer in `0..=max` (numpy's `random_interval`).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        if max <= u64::from(u32::MAX) {
            loop {
                let v = u64::from(self.0.next_u32()) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let v = ((u64::from(self.0.next_u32()) << 32) | u64::from(self.0.next_u32())) & mask;
            if v <= max {
                return v;
            }
        }
    }

    fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.interval(i as u64) as usize;
            xs.swap(i, j);
        }
    }

    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        self.shuffle(&mut v);
        v
    }
}

/// scikit-learn's `_approximate_mode`: how many draws each class gets.
fn approximate_mode(counts: &[usize], draws: usize, rng: &mut NumpyRandomState) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let continuous: Vec<f64> = counts
        .iter()
        .map(|&c| c as f64 / total as f64 * draws as f64)
        .collect();
    let mut floored: Vec<f64> = continuous.iter().map(|c| c.floor()).collect();
    let mut need = (draws as f64 - floored.iter().sum::<f64>()) as i64;
    if need > 0 {
        let remainder: Vec<f64> = continuous
            .iter()
            .zip(&floored)
            .map(|(c, f)| c - f)
            .collect();
        let mut values = remainder.clone();
        values.sort_by(|a, b| b.total_cmp(a));
        values.dedup();
        for value in values {
            let inds: Vec<usize> = (0..remainder.len())
                .filter(|&i| remainder[i] == value)
                .collect();
            let add_now = inds.len().min(need as usize);
            let perm = rng.permutation(inds.len());
            for &p in &perm[..add_now] {
                floored[inds[p]] += 1.0;
            }
            need -= add_now as i64;
            if need == 0 {
                break;
            }
        }
    }
    floored.iter().map(|&f| f as usize).collect()
}

/// Row indices of the train and test parts, each sorted ascending.
#[derive(Debug, Clone)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// Stratified split of rows labelled `y` (0/1) with `test_size` of them (rounded up) in the
/// test part.
pub fn stratified_split(y: &[u8], test_size: f64, seed: u32) -> Result<Split, DetectError> {
    let n = y.len();
    let n_test = (test_size * n as f64).ceil() as usize;
    let n_train = n.saturating_sub(n_test);
    let class_indices: [Vec<usize>; 2] = [
        (0..n).filter(|&i| y[i] == 0).collect(),
        (0..n).filter(|&i| y[i] != 0).collect(),
    ];
    let counts = [class_indices[0].len(), class_indices[1].len()];
    if counts.iter().any(|&c| c < 2) || n_train == 0 || n_test == 0 {
        return Err(DetectError::NotEnoughLabels {
            positives: counts[1],
            negatives: counts[0],
        });
    }
    let mut rng = NumpyRandomState::new(seed);
    let n_i = approximate_mode(&counts, n_train, &mut rng);
    let remaining: Vec<usize> = counts.iter().zip(&n_i).map(|(c, t)| c - t).collect();
    let t_i = approximate_mode(&remaining, n_test, &mut rng);
    let mut train = Vec::with_capacity(n_train);
    let mut test = Vec::with_capacity(n_test);
    for class in 0..2 {
        let perm = rng.permutation(counts[class]);
        let rows: Vec<usize> = perm.iter().map(|&p| class_indices[class][p]).collect();
        train.extend_from_slice(&rows[..n_i[class]]);
        test.extend_from_slice(&rows[n_i[class]..n_i[class] + t_i[class]]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok(Split { train, test })
}

/// Assign each row to one of `k` folds, stratified by label, in a seeded random order.
pub fn stratified_folds(y: &[u8], k: usize, seed: u32) -> Vec<usize> {
    let mut rng = NumpyRandomState::new(seed);
    let mut fold = vec![0; y.len()];
    for class in [0u8, 1] {
        let rows: Vec<usize> = (0..y.len())
            .filter(|&i| (y[i] != 0) == (class == 1))
            .collect();
        for (pos, p) in rng.permutation(rows.len()).into_iter().enumerate() {
            fold[rows[p]] = pos % k.max(1);
        }
    }
    fold
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_seed_42_matches_numpy() {
        // np.random.RandomState(42).randint(0, 2**32, dtype=np.uint64) draws these raw words
        // (the first outputs of MT19937 seeded by init_genrand(42)).
        let mut rng = NumpyRandomState::new(42);
        assert_eq!(rng.0.next_u32(), 1_608_637_542);
        assert_eq!(rng.0.next_u32(), 3_421_126_067);
    }

    #[test]
    fn numpy_permutation_of_ten_with_seed_42() {
        // np.random.RandomState(42).permutation(10)
        let mut rng = NumpyRandomState::new(42);
        assert_eq!(rng.permutation(10), vec![8, 1, 5, 0, 7, 2, 9, 4, 3, 6]);
    }

    #[test]
    fn split_is_stratified_and_disjoint() {
        let y: Vec<u8> = (0..1000).map(|i| u8::from(i % 10 == 0)).collect();
        let s = stratified_split(&y, 0.25, 7).unwrap();
        assert_eq!(s.test.len(), 250);
        assert_eq!(s.train.len(), 750);
        assert_eq!(s.test.iter().filter(|&&i| y[i] == 1).count(), 25);
        let mut all = s.train.clone();
        all.extend(&s.test);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 1000);
    }

    #[test]
    fn one_class_is_an_error() {
        assert!(stratified_split(&[0, 0, 0, 0], 0.25, 1).is_err());
    }
}
