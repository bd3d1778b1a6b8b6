//! Exact nearest-neighbour search: every query against every index row, top-k per query.
//!
//! The index side is packed once into panels of [`PANEL`] rows stored dimension-major
//! (`panel[d][row]`), so the kernel streams it with aligned vector loads and no per-call
//! packing. A register tile of up to 12 queries × one panel accumulates similarities in SIMD
//! registers (AVX-512, AVX2/FMA or scalar, chosen at run time through `pulp`), and each tile's
//! similarities go straight into the queries' top-k lists: nothing of size queries × rows is
//! ever materialised, and a tile whose best similarity cannot enter a full list is rejected by
//! one comparison. Panels are split across threads (rayon) and the per-thread lists merged
//! with the same ordering (score descending, then row ascending), so results do not depend
//! on the thread count.

use pulp::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::matrix::Matrix;

/// Rows per packed panel (two AVX-512 vectors, four AVX2 vectors).
pub const PANEL: usize = 32;

/// One neighbour: similarity and row id in its index side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Cosine similarity (dot product of unit vectors).
    pub score: f32,
    /// Row in the index side.
    pub row: usize,
}

/// `a` ranks before `b`: higher similarity, ties by lower row id.
fn better(a: &Hit, b: &Hit) -> bool {
    a.score > b.score || (a.score == b.score && a.row < b.row)
}

/// The best `k` hits seen so far, best first.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    hits: Vec<Hit>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            hits: Vec::with_capacity(k + 1),
        }
    }

    /// A candidate must beat this to enter (−∞ while the list is not full).
    #[inline]
    fn bar(&self) -> f32 {
        if self.hits.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.hits.last().map_or(f32::NEG_INFINITY, |h| h.score)
        }
    }

    #[inline]
    fn full(&self) -> bool {
        self.hits.len() >= self.k
    }

    fn offer(&mut self, h: Hit) {
        if self.k == 0 {
            return;
        }
        if self.full() {
            match self.hits.last() {
                Some(last) if better(&h, last) => {
                    self.hits.pop();
                }
                _ => return,
            }
        }
        let at = self
            .hits
            .iter()
            .position(|x| better(&h, x))
            .unwrap_or(self.hits.len());
        self.hits.insert(at, h);
    }

    /// The hits, best first.
    pub fn into_hits(self) -> Vec<Hit> {
        self.hits
    }
}

/// One side of an index packed for the kernel: `ceil(rows / PANEL)` panels, each
/// `dim × PANEL` floats, dimension-major; rows past the end are zero and never reported.
#[derive(Debug, Clone)]
pub struct PackedSide {
    data: Vec<f32>,
    rows: usize,
    dim: usize,
}

impl PackedSide {
    /// Pack (already normalised) rows.
    pub fn new(m: &Matrix) -> Self {
        let panels = m.rows.div_ceil(PANEL);
        let mut data = vec![0.0f32; panels * m.dim * PANEL];
        if m.dim > 0 {
            for (r, row) in m.data.chunks_exact(m.dim).enumerate().take(m.rows) {
                let (p, lane) = (r / PANEL, r % PANEL);
                let base = p * m.dim * PANEL;
                for (d, &x) in row.iter().enumerate() {
                    data[base + d * PANEL + lane] = x;
                }
            }
        }
        Self {
            data,
            rows: m.rows,
            dim: m.dim,
        }
    }

    /// Rows in this side.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// The `k` best rows for every query row of `q` (same dimension, rows normalised),
    /// best first.
    pub fn top_k(&self, q: &Matrix, k: usize) -> Vec<Vec<Hit>> {
        top_k_many(&[self], q, k).pop().unwrap_or_default()
    }
}

/// [`PackedSide::top_k`] for several sides in one parallel pass (one thread wake-up per
/// group instead of one per side): `out[side][query]`.
pub fn top_k_many(sides: &[&PackedSide], q: &Matrix, k: usize) -> Vec<Vec<Vec<Hit>>> {
    let n = q.rows;
    let usable = |s: &PackedSide| n > 0 && k > 0 && s.rows > 0 && s.dim > 0 && q.dim == s.dim;
    let tiles = QueryTiles::new(q, max_tile());
    // Jobs of about equal size across all sides: enough to balance the threads, each still
    // a few hundred kilobytes of index.
    let total: usize = sides.iter().filter(|s| usable(s)).map(|s| s.panels()).sum();
    let threads = rayon::current_num_threads().max(1);
    let per = total.div_ceil(threads * 4).max(4);
    let mut jobs: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for (i, s) in sides.iter().enumerate() {
        if !usable(s) {
            continue;
        }
        let panels = s.panels();
        let mut start = 0;
        while start < panels {
            let end = (start + per).min(panels);
            jobs.push((i, start..end));
            start = end;
        }
    }
    let arch = Arch::new();
    let partial: Vec<(usize, Vec<TopK>)> = jobs
        .into_par_iter()
        .map(|(i, range)| {
            let lists = arch.dispatch(ChunkSearch {
                side: sides[i],
                tiles: &tiles,
                panels: range,
                k,
            });
            (i, lists)
        })
        .collect();
    let mut out: Vec<Vec<TopK>> = sides
        .iter()
        .map(|_| (0..n).map(|_| TopK::new(k)).collect())
        .collect();
    for (i, lists) in partial {
        for (acc, list) in out[i].iter_mut().zip(lists) {
            for h in list.hits {
                acc.offer(h);
            }
        }
    }
    out.into_iter()
        .map(|side| side.into_iter().map(TopK::into_hits).collect())
        .collect()
}

/// The largest query tile the running CPU's registers hold (accumulators for 12 queries ×
/// one 32-row panel on AVX-512; fewer with 16 registers).
fn max_tile() -> usize {
    struct Probe;
    impl WithSimd for Probe {
        type Output = usize;
        #[inline(always)]
        fn with_simd<S: Simd>(self, _simd: S) -> usize {
            let vectors = (PANEL / S::F32_LANES).max(1);
            ((S::REGISTER_COUNT.saturating_sub(vectors + 2)) / vectors).clamp(1, 12)
        }
    }
    Arch::new().dispatch(Probe)
}

/// Queries split into tiles of near-equal size, each stored dimension-major
/// (`t[d * size + r]`) so the kernel broadcasts consecutive floats.
struct QueryTiles {
    /// (first query, size, dimension-major data)
    tiles: Vec<(usize, usize, Vec<f32>)>,
}

impl QueryTiles {
    fn new(q: &Matrix, max: usize) -> Self {
        let n = q.rows;
        let count = n.div_ceil(max);
        let mut tiles = Vec::with_capacity(count);
        let mut start = 0;
        for t in 0..count {
            let size = n / count + usize::from(t < n % count);
            let mut data = vec![0.0f32; size * q.dim];
            for r in 0..size {
                let row = &q.data[(start + r) * q.dim..(start + r + 1) * q.dim];
                for (d, &x) in row.iter().enumerate() {
                    data[d * size + r] = x;
                }
            }
            tiles.push((start, size, data));
            start += size;
        }
        Self { tiles }
    }
}

struct ChunkSearch<'a> {
    side: &'a PackedSide,
    tiles: &'a QueryTiles,
    panels: std::ops::Range<usize>,
    k: usize,
}

impl WithSimd for ChunkSearch<'_> {
    type Output = Vec<TopK>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Vec<TopK> {
        match S::F32_LANES {
            16 => self.run::<S, 2>(simd),
            8 => self.run::<S, 4>(simd),
            4 => self.run::<S, 8>(simd),
            _ => self.run_scalar(),
        }
    }
}

macro_rules! dispatch_tile {
    ($size:expr, $simd:expr, $v:ident, $panel:expr, $q:expr, $out:expr, $best:expr, $($r:literal)*) => {
        match $size {
            $($r => tile::<S, $r, $v>($simd, $panel, $q, $out, $best),)*
            _ => {}
        }
    };
}

impl ChunkSearch<'_> {
    #[inline(always)]
    fn run<S: Simd, const V: usize>(self, simd: S) -> Vec<TopK> {
        let n: usize = self.tiles.tiles.iter().map(|t| t.1).sum();
        let mut lists: Vec<TopK> = (0..n).map(|_| TopK::new(self.k)).collect();
        let dim = self.side.dim;
        let mut sims = [[0.0f32; PANEL]; 12];
        let mut bests = [0.0f32; 12];
        for p in self.panels.clone() {
            let panel = &self.side.data[p * dim * PANEL..(p + 1) * dim * PANEL];
            let valid = (self.side.rows - p * PANEL).min(PANEL);
            for (start, size, q) in &self.tiles.tiles {
                let out = &mut sims[..*size];
                let best = &mut bests[..*size];
                dispatch_tile!(*size, simd, V, panel, q, out, best, 1 2 3 4 5 6 7 8 9 10 11 12);
                for ((r, row), &best) in out.iter().enumerate().zip(best.iter()) {
                    let list = &mut lists[start + r];
                    // `best` also covers the zero padding past the last row: an upper bound,
                    // so the exact check below still decides.
                    if list.full() && best <= list.bar() {
                        continue;
                    }
                    for (lane, &score) in row[..valid].iter().enumerate() {
                        if !list.full() || score > list.bar() {
                            list.offer(Hit {
                                score,
                                row: p * PANEL + lane,
                            });
                        }
                    }
                }
            }
        }
        lists
    }

    /// Plain loops for CPUs without a vector unit `pulp` knows.
    fn run_scalar(self) -> Vec<TopK> {
        let n: usize = self.tiles.tiles.iter().map(|t| t.1).sum();
        let mut lists: Vec<TopK> = (0..n).map(|_| TopK::new(self.k)).collect();
        let dim = self.side.dim;
        for p in self.panels.clone() {
            let panel = &self.side.data[p * dim * PANEL..(p + 1) * dim * PANEL];
            let valid = (self.side.rows - p * PANEL).min(PANEL);
            for (start, size, q) in &self.tiles.tiles {
                for r in 0..*size {
                    let mut row = [0.0f32; PANEL];
                    for (d, prow) in panel.chunks_exact(PANEL).enumerate() {
                        let x = q[d * size + r];
                        for (acc, &y) in row.iter_mut().zip(prow) {
                            *acc += x * y;
                        }
                    }
                    for (lane, &score) in row[..valid].iter().enumerate() {
                        lists[start + r].offer(Hit {
                            score,
                            row: p * PANEL + lane,
                        });
                    }
                }
            }
        }
        lists
    }
}

/// Similarities of `R` queries (dimension-major in `q`) with one panel, into `out`, and
/// each query's largest similarity in the panel into `best`.
#[inline(always)]
fn tile<S: Simd, const R: usize, const V: usize>(
    simd: S,
    panel: &[f32],
    q: &[f32],
    out: &mut [[f32; PANEL]],
    best: &mut [f32],
) {
    let zero = simd.splat_f32s(0.0);
    let mut acc = [[zero; V]; R];
    for (prow, qd) in panel.chunks_exact(PANEL).zip(q.chunks_exact(R)) {
        let (pv, _) = S::as_simd_f32s(prow);
        let mut p = [zero; V];
        for (dst, src) in p.iter_mut().zip(pv) {
            *dst = *src;
        }
        for (a, &x) in acc.iter_mut().zip(qd) {
            let b = simd.splat_f32s(x);
            for (av, pv) in a.iter_mut().zip(&p) {
                *av = simd.mul_add_e_f32s(b, *pv, *av);
            }
        }
    }
    for ((o, a), b) in out.iter_mut().zip(&acc).zip(best.iter_mut()) {
        let (ov, _) = S::as_mut_simd_f32s(o);
        for (dst, src) in ov.iter_mut().zip(a) {
            *dst = *src;
        }
        let mut m = a[0];
        for v in &a[1..] {
            m = simd.max_f32s(m, *v);
        }
        *b = simd.reduce_max_f32s(m);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn matrix(rows: usize, dim: usize, seed: u64) -> Matrix {
        // A small LCG is enough for test data.
        let mut s = seed;
        let mut data = Vec::with_capacity(rows * dim);
        for _ in 0..rows * dim {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.push(((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5);
        }
        let mut m = Matrix { data, rows, dim };
        m.normalize_rows();
        m
    }

    fn brute(index: &Matrix, q: &Matrix, k: usize) -> Vec<Vec<Hit>> {
        (0..q.rows)
            .map(|i| {
                let qi = &q.data[i * q.dim..(i + 1) * q.dim];
                let mut hits: Vec<Hit> = (0..index.rows)
                    .map(|r| Hit {
                        score: index.data[r * index.dim..(r + 1) * index.dim]
                            .iter()
                            .zip(qi)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>() as f32,
                        row: r,
                    })
                    .collect();
                hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
                hits.truncate(k);
                hits
            })
            .collect()
    }

    #[test]
    fn packed_search_matches_brute_force_for_ragged_sizes() {
        // Row counts that do not fill the last panel, query counts that split into unequal
        // tiles, and k larger than some sides.
        for (rows, queries, k) in [(1, 1, 3), (31, 7, 5), (33, 50, 6), (1000, 13, 10)] {
            let index = matrix(rows, 384, rows as u64);
            let q = matrix(queries, 384, 99 + queries as u64);
            let got = PackedSide::new(&index).top_k(&q, k);
            let want = brute(&index, &q, k);
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.len(), w.len(), "rows {rows} queries {queries}");
                for (a, b) in g.iter().zip(w) {
                    assert!((a.score - b.score).abs() < 1e-5, "{a:?} vs {b:?}");
                    if (a.score - b.score).abs() > 1e-6 {
                        assert_eq!(a.row, b.row);
                    }
                }
            }
        }
    }

    #[test]
    fn ties_rank_lower_rows_first_across_panels_and_threads() {
        // Every row identical: the k best must be rows 0..k whatever the chunking.
        let one = matrix(1, 384, 5);
        let index = Matrix {
            data: one.data.repeat(300),
            rows: 300,
            dim: 384,
        };
        let got = PackedSide::new(&index).top_k(&one, 4);
        let rows: Vec<usize> = got[0].iter().map(|h| h.row).collect();
        assert_eq!(rows, vec![0, 1, 2, 3]);
    }
}
