//! Hashed TF-IDF text features for the calibrated scorer's lexical model: lower-cased word
//! unigrams and bigrams, and character 2- to 5-grams inside word boundaries (which catch
//! spelling variants and obfuscation such as "st*pid"), each block with sublinear term
//! frequency, smoothed IDF and unit length.

use crate::logistic::SparseRows;

/// Hash buckets (2^18): collisions among a few hundred thousand n-grams are rare enough.
pub const DEFAULT_BUCKETS: u32 = 1 << 18;

/// The learned part of the featuriser: how many buckets and each bucket's IDF (0 = unused).
#[derive(Debug, Clone, PartialEq)]
pub struct Vocabulary {
    /// Bucket count.
    pub buckets: u32,
    /// IDF per bucket; 0 for a bucket seen in fewer than `min_df` training texts.
    pub idf: Vec<f32>,
}

/// FNV-1a (64-bit): stable across platforms and versions, which the stored weights rely on.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Words: runs of two or more alphanumeric (or `_`) characters, lower-cased.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_string)
        .collect()
}

/// Bucket hits counted: `(bucket, count)` in bucket order.
fn tally(mut hits: Vec<u32>) -> Vec<(u32, f32)> {
    hits.sort_unstable();
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(hits.len());
    for b in hits {
        match out.last_mut() {
            Some((last, n)) if *last == b => *n += 1.0,
            _ => out.push((b, 1.0)),
        }
    }
    out
}

/// Term counts of one text per block: (word block, character block), in bucket order (so
/// every float sum over them is reproducible).
fn counts(text: &str, buckets: u32) -> [Vec<(u32, f32)>; 2] {
    let bucket = |tag: &[u8], gram: &[u8]| (fnv1a(&[tag, gram]) % u64::from(buckets)) as u32;
    let mut word_block: Vec<u32> = Vec::new();
    let ws = words(text);
    for (i, w) in ws.iter().enumerate() {
        word_block.push(bucket(b"w:", w.as_bytes()));
        if let Some(next) = ws.get(i + 1) {
            // The bigram "w next", hashed in parts (the same hash as the joined string).
            let h = fnv1a(&[b"b:", w.as_bytes(), b" ", next.as_bytes()]);
            word_block.push((h % u64::from(buckets)) as u32);
        }
    }
    let mut char_block: Vec<u32> = Vec::new();
    let lower = text.to_lowercase();
    // One buffer per token: " token " and where each character starts, so a gram of `n`
    // characters is a byte slice (hashed like the gram's own string, without building it).
    let mut padded = String::new();
    let mut starts: Vec<usize> = Vec::new();
    for token in lower.split_whitespace() {
        padded.clear();
        padded.push(' ');
        padded.push_str(token);
        padded.push(' ');
        starts.clear();
        starts.extend(padded.char_indices().map(|(i, _)| i));
        starts.push(padded.len());
        let chars = starts.len() - 1;
        for n in 2..=5 {
            if chars < n {
                break;
            }
            for i in 0..=chars - n {
                let gram = &padded.as_bytes()[starts[i]..starts[i + n]];
                char_block.push(bucket(b"c:", gram));
            }
        }
    }
    [tally(word_block), tally(char_block)]
}

impl Vocabulary {
    /// Learn the IDF of every bucket from training texts; buckets in fewer than `min_df`
    /// texts are dropped.
    pub fn fit(texts: &[String], buckets: u32, min_df: usize) -> Self {
        let mut df = vec![0u32; buckets as usize];
        for t in texts {
            for block in counts(t, buckets) {
                for (b, _) in block {
                    df[b as usize] += 1;
                }
            }
        }
        let n = texts.len() as f64;
        let idf = df
            .iter()
            .map(|&d| {
                if (d as usize) < min_df.max(1) {
                    0.0
                } else {
                    (((1.0 + n) / (1.0 + f64::from(d))).ln() + 1.0) as f32
                }
            })
            .collect();
        Self { buckets, idf }
    }

    /// The feature row of one text: each block's `(1 + ln tf) * idf`, scaled to unit length.
    pub fn row(&self, text: &str) -> Vec<(u32, f32)> {
        let [words, chars] = counts(text, self.buckets).map(|block| {
            let weighted: Vec<(u32, f32)> = block
                .into_iter()
                .map(|(b, tf)| (b, (1.0 + tf.ln()) * self.idf[b as usize]))
                .filter(|(_, v)| *v != 0.0)
                .collect();
            let norm = weighted.iter().map(|(_, v)| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                weighted.into_iter().map(|(b, v)| (b, v / norm)).collect()
            } else {
                Vec::new()
            }
        });
        // Merged in bucket order (a bucket both blocks hit gets the word value plus the
        // character value): sums over a row are the same on every run.
        let mut out = Vec::with_capacity(words.len() + chars.len());
        let (mut i, mut j) = (0, 0);
        while i < words.len() || j < chars.len() {
            match (words.get(i), chars.get(j)) {
                (Some(&(a, x)), Some(&(b, y))) if a == b => {
                    out.push((a, x + y));
                    i += 1;
                    j += 1;
                }
                (Some(&(a, x)), Some(&(b, _))) if a < b => {
                    out.push((a, x));
                    i += 1;
                }
                (Some(&(a, x)), None) => {
                    out.push((a, x));
                    i += 1;
                }
                (_, Some(&(b, y))) => {
                    out.push((b, y));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        out
    }

    /// Feature rows of many texts.
    pub fn rows(&self, texts: &[String]) -> SparseRows {
        SparseRows {
            cols: self.buckets as usize,
            rows: texts.iter().map(|t| self.row(t)).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn rows_are_unit_length_per_block_and_share_grams_with_variants() {
        let texts: Vec<String> = ["you are stupid", "you are so stupid", "nice game", "gg"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let v = Vocabulary::fit(&texts, 1 << 12, 1);
        let a = v.row("you are stupid");
        // Two blocks of unit length each: squared norm 2.
        let sq: f32 = a.iter().map(|(_, x)| x * x).sum();
        assert!((sq - 2.0).abs() < 1e-4, "{sq}");
        // "stupidd" shares character grams with "stupid", "nice" does not.
        let dot = |x: &[(u32, f32)], y: &[(u32, f32)]| -> f32 {
            let m: HashMap<u32, f32> = y.iter().copied().collect();
            x.iter()
                .map(|(b, v)| v * m.get(b).copied().unwrap_or(0.0))
                .sum()
        };
        assert!(dot(&v.row("stupidd"), &a) > 0.2);
        assert!(dot(&v.row("nice"), &a) < 0.05);
        // Hashing is stable: the same text, the same row.
        assert_eq!(v.row("you are stupid"), a);
        assert!(v.row("").is_empty());
        // min_df drops grams seen once.
        let strict = Vocabulary::fit(&texts, 1 << 12, 2);
        assert!(
            strict.idf.iter().filter(|x| **x > 0.0).count()
                < v.idf.iter().filter(|x| **x > 0.0).count()
        );
    }
}
