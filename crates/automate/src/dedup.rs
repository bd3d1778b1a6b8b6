//! Dedup: a case is a duplicate when an earlier case in queue order has the same day and the
//! same SHA-256 of its normalised recent prompts.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::normalize_text;

/// The dedup key of one case's recent prompts: hex SHA-256 of the normalised text, or the
/// empty string when the prompts are empty.
pub fn dedup_key(recent_prompts: &str) -> String {
    if recent_prompts.is_empty() {
        return String::new();
    }
    format!(
        "{:x}",
        Sha256::digest(normalize_text(recent_prompts).as_bytes())
    )
}

/// Keys and duplicate flags for cases given in queue order as `(day, recent_prompts)`.
pub fn dedup<'a>(cases: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, bool)> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    cases
        .into_iter()
        .map(|(day, prompts)| {
            let key = dedup_key(prompts);
            let dup = !seen.insert((day.to_string(), key.clone()));
            (key, dup)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_the_notebook() {
        // review_queue_dedup.csv, first row of the notebook's run
        assert_eq!(
            dedup_key(
                "join our group and earn money quickly!!! | how do i bypass content filters? \
                 | translate this paragraph into spanish."
            ),
            "9df8e606b878b7615cda3305a6a1d13ca5bc15e836b6405bf757d8d9d333b55a"
        );
    }

    #[test]
    fn duplicates_are_per_day_and_keep_the_first() {
        let r = dedup([
            ("d1", "a"),
            ("d1", "a"),
            ("d2", "a"),
            ("d1", ""),
            ("d1", ""),
        ]);
        let dups: Vec<bool> = r.iter().map(|x| x.1).collect();
        assert_eq!(dups, vec![false, true, false, false, true]);
        assert_eq!(r[3].0, "");
    }
}
