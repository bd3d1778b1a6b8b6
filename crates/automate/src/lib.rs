//! Vigil automation: shrink the review queue's load on analysts.
//!
//! - [`dedup`]: the same recent prompts on the same day are one case, not many.
//! - [`cluster`]: TF-IDF over the prompts and seeded mini-batch k-means group similar cases.
//! - [`er`]: entity resolution links accounts that share devices, payment tokens or IPs and
//!   returns connected components with per-component risk, in the notebook's rules or in
//!   Vigil's corroborated rules (which keep components small enough to act on).

pub mod cluster;
pub mod dedup;
pub mod er;

/// The spec's text normalisation: lower-case, trim, collapse whitespace, then drop every
/// character that is not a word character, whitespace or one of `. , ! ? - : / @`.
pub fn normalize_text(s: &str) -> String {
    let lowered = s.to_lowercase();
    let mut collapsed = String::with_capacity(lowered.len());
    for (i, word) in lowered.split_whitespace().enumerate() {
        if i > 0 {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    collapsed
        .chars()
        .filter(|&c| c.is_alphanumeric() || c == '_' || c.is_whitespace() || ".,!?-:/@".contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_keeps_the_notebook_punctuation_only() {
        assert_eq!(
            normalize_text("  How do I   BYPASS content filters?  "),
            "how do i bypass content filters?"
        );
        assert_eq!(normalize_text("a | b"), "a  b");
        assert_eq!(normalize_text("e-mail: x@y.z/#1"), "e-mail: x@y.z/1");
        assert_eq!(normalize_text(""), "");
    }
}
