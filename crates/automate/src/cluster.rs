//! Clustering of review cases: TF-IDF over their recent prompts (scikit-learn's
//! `TfidfVectorizer` semantics: word 1-2 grams of `\b\w\w+\b` tokens, minimum document
//! frequency, a vocabulary cap by corpus frequency, smooth idf, L2 rows) and seeded
//! mini-batch k-means (k-means++ start, per-centre learning rates). Cluster ids are
//! renumbered by size, largest first, so cluster 0 is always the biggest group of cases.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;

/// A sparse L2-normalised TF-IDF row: (term index, weight).
pub type SparseRow = Vec<(u32, f32)>;

/// TF-IDF rows of `docs` and the vocabulary (sorted) they index.
pub fn tfidf(docs: &[&str], min_df: usize, max_features: usize) -> (Vec<SparseRow>, Vec<String>) {
    let token_re = Regex::new(r"\b\w\w+\b").ok();
    let doc_terms: Vec<Vec<String>> = docs
        .iter()
        .map(|d| {
            let lower = d.to_lowercase();
            let toks: Vec<&str> = token_re
                .as_ref()
                .map(|re| re.find_iter(&lower).map(|m| m.as_str()).collect())
                .unwrap_or_default();
            let mut terms: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
            terms.extend(toks.windows(2).map(|w| format!("{} {}", w[0], w[1])));
            terms
        })
        .collect();
    let mut df: HashMap<&str, usize> = HashMap::new();
    let mut tf_total: HashMap<&str, usize> = HashMap::new();
    for terms in &doc_terms {
        let mut uniq: Vec<&str> = terms.iter().map(String::as_str).collect();
        for t in &uniq {
            *tf_total.entry(t).or_default() += 1;
        }
        uniq.sort_unstable();
        uniq.dedup();
        for t in uniq {
            *df.entry(t).or_default() += 1;
        }
    }
    let mut vocab: Vec<&str> = df
        .iter()
        .filter(|(_, n)| **n >= min_df)
        .map(|(t, _)| *t)
        .collect();
    vocab.sort_unstable();
    if vocab.len() > max_features {
        // keep the most frequent terms; ties keep the alphabetically first (stable sort)
        let mut by_freq = vocab.clone();
        by_freq.sort_by_key(|t| std::cmp::Reverse(tf_total.get(t).copied().unwrap_or(0)));
        by_freq.truncate(max_features);
        by_freq.sort_unstable();
        vocab = by_freq;
    }
    let index: HashMap<&str, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as u32))
        .collect();
    let n = docs.len() as f64;
    let idf: Vec<f64> = vocab
        .iter()
        .map(|t| ((1.0 + n) / (1.0 + df.get(t).copied().unwrap_or(0) as f64)).ln() + 1.0)
        .collect();
    let rows = doc_terms
        .iter()
        .map(|terms| {
            let mut counts: HashMap<u32, f64> = HashMap::new();
            for t in terms {
                if let Some(&j) = index.get(t.as_str()) {
                    *counts.entry(j).or_default() += 1.0;
                }
            }
            let mut row: Vec<(u32, f64)> = counts
                .into_iter()
                .map(|(j, c)| (j, c * idf[j as usize]))
                .collect();
            row.sort_unstable_by_key(|e| e.0);
            let norm = row.iter().map(|e| e.1 * e.1).sum::<f64>().sqrt();
            row.into_iter()
                .map(|(j, v)| (j, if norm > 0.0 { (v / norm) as f32 } else { 0.0 }))
                .collect()
        })
        .collect();
    (rows, vocab.into_iter().map(str::to_string).collect())
}

fn sq_dist(row: &SparseRow, center: &[f32], center_sq: f32) -> f32 {
    let row_sq: f32 = row.iter().map(|e| e.1 * e.1).sum();
    let dot: f32 = row.iter().map(|&(j, v)| v * center[j as usize]).sum();
    (row_sq - 2.0 * dot + center_sq).max(0.0)
}

fn nearest(row: &SparseRow, centers: &[Vec<f32>], sq: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (c, center) in centers.iter().enumerate() {
        let d = sq_dist(row, center, sq[c]);
        if d < best.1 {
            best = (c, d);
        }
    }
    best
}

/// The spec's k: `min(max_k, max(2, floor(sqrt(n))))`.
pub fn choose_k(n: usize, max_k: usize) -> usize {
    ((n as f64).sqrt().floor() as usize).max(2).min(max_k)
}

/// Mini-batch k-means over sparse rows of dimension `dim`; returns a cluster id per row,
/// renumbered so that 0 is the largest cluster.
pub fn minibatch_kmeans(rows: &[SparseRow], dim: usize, k: usize, seed: u64) -> Vec<usize> {
    let n = rows.len();
    if n == 0 || k <= 1 {
        return vec![0; n];
    }
    let k = k.min(n);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dense = |r: &SparseRow| {
        let mut v = vec![0.0f32; dim];
        for &(j, x) in r {
            v[j as usize] = x;
        }
        v
    };
    // k-means++ start
    let mut centers: Vec<Vec<f32>> = vec![dense(&rows[rng.random_range(0..n)])];
    let mut sq: Vec<f32> = vec![centers[0].iter().map(|x| x * x).sum()];
    let mut d2: Vec<f32> = rows
        .iter()
        .map(|r| sq_dist(r, &centers[0], sq[0]))
        .collect();
    while centers.len() < k {
        let total: f64 = d2.iter().map(|&d| f64::from(d)).sum();
        let pick = if total > 0.0 {
            let mut target = rng.random::<f64>() * total;
            let mut chosen = n - 1;
            for (i, &d) in d2.iter().enumerate() {
                target -= f64::from(d);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            rng.random_range(0..n)
        };
        let c = dense(&rows[pick]);
        let c_sq = c.iter().map(|x| x * x).sum();
        for (i, r) in rows.iter().enumerate() {
            d2[i] = d2[i].min(sq_dist(r, &c, c_sq));
        }
        centers.push(c);
        sq.push(c_sq);
    }
    // mini-batch updates with per-centre learning rate 1 / count
    let batch = n.min(1024);
    let steps = 100 * n.div_ceil(batch);
    let mut counts = vec![0.0f32; k];
    for _ in 0..steps {
        let idx: Vec<usize> = (0..batch).map(|_| rng.random_range(0..n)).collect();
        let assign: Vec<usize> = idx
            .iter()
            .map(|&i| nearest(&rows[i], &centers, &sq).0)
            .collect();
        for (&i, &c) in idx.iter().zip(&assign) {
            counts[c] += 1.0;
            let eta = 1.0 / counts[c];
            let center = &mut centers[c];
            center.iter_mut().for_each(|x| *x *= 1.0 - eta);
            for &(j, v) in &rows[i] {
                center[j as usize] += eta * v;
            }
        }
        for (c, center) in centers.iter().enumerate() {
            sq[c] = center.iter().map(|x| x * x).sum();
        }
    }
    let labels: Vec<usize> = rows.iter().map(|r| nearest(r, &centers, &sq).0).collect();
    // renumber by size, largest first (ties: lower original id first)
    let mut sizes = vec![0usize; k];
    labels.iter().for_each(|&l| sizes[l] += 1);
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by_key(|&c| (std::cmp::Reverse(sizes[c]), c));
    let mut new_id = vec![0; k];
    for (rank, &c) in order.iter().enumerate() {
        new_id[c] = rank;
    }
    labels.into_iter().map(|l| new_id[l]).collect()
}

/// [`cluster_texts`] with the `[automation]` settings (the batch queue's clustering and
/// the console's use the same).
pub fn cluster_with(docs: &[&str], a: &vigil_config::AutomationConfig) -> Vec<usize> {
    cluster_texts(
        docs,
        a.min_cases_to_cluster,
        a.max_clusters,
        a.min_df,
        a.max_features,
        a.seed,
    )
}

/// Cluster documents as the spec: fewer than `min_cases` documents all go to cluster 0.
pub fn cluster_texts(
    docs: &[&str],
    min_cases: usize,
    max_k: usize,
    min_df: usize,
    max_features: usize,
    seed: u64,
) -> Vec<usize> {
    if docs.len() < min_cases {
        return vec![0; docs.len()];
    }
    let (rows, vocab) = tfidf(docs, min_df, max_features);
    minibatch_kmeans(&rows, vocab.len(), choose_k(docs.len(), max_k), seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfidf_uses_bigrams_and_min_df() {
        let (rows, vocab) = tfidf(&["buy now buy now", "buy now", "hello there"], 2, 100);
        assert_eq!(vocab, vec!["buy", "buy now", "now"]);
        assert!(rows[2].is_empty());
        let norm: f32 = rows[0].iter().map(|e| e.1 * e.1).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn kmeans_separates_obvious_groups_deterministically() {
        let mut docs = Vec::new();
        for _ in 0..20 {
            docs.push("click this link for free prizes");
            docs.push("how do i bypass content filters");
            docs.push("translate this paragraph into spanish");
        }
        let a = cluster_texts(&docs, 10, 3, 2, 5000, 42);
        let b = cluster_texts(&docs, 10, 3, 2, 5000, 42);
        assert_eq!(a, b);
        for i in 0..3 {
            let label = a[i];
            assert!((0..20).all(|r| a[r * 3 + i] == label));
        }
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn few_cases_are_one_cluster() {
        assert_eq!(
            cluster_texts(&["a b", "c d"], 10, 25, 2, 5000, 1),
            vec![0, 0]
        );
    }
}
