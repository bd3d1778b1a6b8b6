//! Conformance with the reference Sentinel: every group, parameter combination and aggregator
//! of `shared/conformance/scores.json`, scored from the stored embeddings against the
//! reference's own saved index, plus the index's on-disk bytes and the aggregator formulae.
// Reads the reference data in `shared/`: built only where it is (see build-support/).
#![cfg(shared_data)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vigil_sentinel::aggregate;
use vigil_sentinel::index::read_safetensors;
use vigil_sentinel::{Aggregator, Matrix, ScoreParams, Scorer, SentinelIndex};

fn conformance_dir() -> PathBuf {
    let dir = std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("conformance");
    assert!(
        dir.join("scores.json").exists(),
        "conformance vectors not found at {}: check out shared/ beside the repository or set VIGIL_SHARED",
        dir.display()
    );
    dir
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(conformance_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f64 {
    match v {
        Value::Null => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => other.as_f64().unwrap(),
    }
}

fn close(a: f64, b: f64, abs: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= abs
}

fn load_index() -> SentinelIndex {
    SentinelIndex::load(&conformance_dir().join("index_small"), None, None).unwrap()
}

#[test]
fn every_group_case_and_aggregator_matches_the_reference() {
    let scores = json("scores.json");
    let index = load_index();
    let scorer = Scorer::new(&index);
    let embeddings: HashMap<String, Matrix> =
        read_safetensors(&conformance_dir().join("scores_embeddings.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut checked = 0usize;
    let mut failures: Vec<String> = Vec::new();
    for group in scores["runs"][0]["groups"].as_array().unwrap() {
        let name = group["group"].as_str().unwrap();
        let texts: Vec<String> = group["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let emb = &embeddings[group["embeddings_key"].as_str().unwrap()];
        for case in group["cases"].as_array().unwrap() {
            let top_k = case["top_k"].as_u64().unwrap() as usize;
            let prevent = case["prevent_exact_match"].as_bool().unwrap();
            let tag = format!("{name} top_k={top_k} prevent={prevent}");
            // Raw scores (min_score = -inf) and explanations.
            let params = ScoreParams {
                top_k,
                prevent_exact_match: prevent,
                min_score_to_consider: f64::NEG_INFINITY,
                ..ScoreParams::default()
            };
            let raw = scorer.score_group(&texts, emb, &params).unwrap();
            let want_raw = case["raw_observation_scores"].as_array().unwrap();
            assert_eq!(raw.observation_scores.len(), want_raw.len(), "{tag}");
            for ((t, s), w) in raw.observation_scores.iter().zip(want_raw) {
                assert_eq!(t, w[0].as_str().unwrap(), "{tag}: key order");
                if !close(*s, f(&w[1]), 1e-5) {
                    failures.push(format!("{tag}: raw score of {t:?}: {s} vs {}", f(&w[1])));
                }
            }
            let ours = raw.explanations.unwrap();
            for (e, w) in ours.iter().zip(case["explanations"].as_array().unwrap()) {
                assert_eq!(e.text, w["text"].as_str().unwrap(), "{tag}");
                for (side, got) in [
                    ("topk_positive", &e.topk_positive),
                    ("topk_negative", &e.topk_negative),
                ] {
                    let want: Vec<f64> = w[side].as_array().unwrap().iter().map(f).collect();
                    if got.len() != want.len()
                        || got.iter().zip(&want).any(|(a, b)| !close(*a, *b, 1e-5))
                    {
                        failures.push(format!(
                            "{tag}: {side} of {:?}: {got:?} vs {want:?}",
                            e.text
                        ));
                    }
                }
                let c = &w["contrastive"];
                if !close(
                    e.contrastive.log_ratio_unclipped,
                    f(&c["log_ratio_unclipped"]),
                    1e-5,
                ) || !close(e.contrastive.positive_term, f(&c["positive_term"]), 1e-5)
                    || !close(e.contrastive.negative_term, f(&c["negative_term"]), 1e-5)
                {
                    failures.push(format!("{tag}: contrastive of {:?}", e.text));
                }
                let wn = w["neighbors"].as_array().unwrap();
                assert_eq!(e.neighbors.len(), wn.len(), "{tag}");
                let mut ours_ids: Vec<(String, String)> = Vec::new();
                let mut theirs_ids: Vec<(String, String)> = Vec::new();
                for (n, m) in e.neighbors.iter().zip(wn) {
                    if !close(n.raw_score, f(&m["raw_score"]), 1e-5) {
                        failures.push(format!("{tag}: neighbour score of {:?}", e.text));
                    }
                    // The row id must point at the text it names.
                    let corpus = if n.sign == "+" {
                        &index.positive_corpus
                    } else {
                        &index.negative_corpus
                    };
                    assert_eq!(
                        n.neighbor,
                        Value::String(corpus.as_ref().unwrap()[n.corpus_id].clone())
                    );
                    ours_ids.push((n.sign.to_string(), n.neighbor.to_string()));
                    theirs_ids.push((
                        m["sign"].as_str().unwrap().to_string(),
                        m["neighbor"].to_string(),
                    ));
                }
                // Exact ties (the duplicated negative row, same text at rows 1 and 199) come in
                // either order in the reference, so neighbours are compared by sign and text.
                ours_ids.sort();
                theirs_ids.sort();
                assert_eq!(ours_ids, theirs_ids, "{tag}: neighbours of {:?}", e.text);
            }
            for by in case["by_min_score"].as_array().unwrap() {
                let min_score = f(&by["min_score_to_consider"]);
                for agg in Aggregator::ALL {
                    let params = ScoreParams {
                        top_k,
                        prevent_exact_match: prevent,
                        min_score_to_consider: min_score,
                        aggregator: agg,
                        explain: false,
                        ..ScoreParams::default()
                    };
                    let r = scorer.score_group(&texts, emb, &params).unwrap();
                    let want = f(&by["rare_class_affinity_score"][agg.name()]);
                    let tol = if agg.name() == "skewness" {
                        1e-3 * want.abs().max(0.1)
                    } else {
                        1e-4
                    };
                    if !close(r.affinity, want, tol) {
                        failures.push(format!(
                            "{tag} min={min_score} {}: {} vs {want}",
                            agg.name(),
                            r.affinity
                        ));
                    }
                    assert_eq!(
                        r.aggregation_name,
                        by["aggregation_name"][agg.name()].as_str().unwrap()
                    );
                    let st = &by["aggregation_stats"];
                    assert_eq!(
                        r.aggregation_stats.num_texts as u64,
                        st["num_texts"].as_u64().unwrap(),
                        "{tag}"
                    );
                    assert_eq!(
                        r.aggregation_stats.num_positive_scores as u64,
                        st["num_positive_scores"].as_u64().unwrap(),
                        "{tag} min={min_score}"
                    );
                    let want_obs = by["observation_scores"].as_array().unwrap();
                    for ((t, s), w) in r.observation_scores.iter().zip(want_obs) {
                        assert_eq!(t, w[0].as_str().unwrap());
                        if !close(*s, f(&w[1]), 1e-5) {
                            failures.push(format!("{tag} min={min_score}: score of {t:?}"));
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
    assert_eq!(
        checked,
        30 * 3 * 2 * 2 * 6,
        "every group x case x min_score x aggregator"
    );
}

#[test]
fn aggregator_formulae_match_the_reference() {
    let scores = json("scores.json");
    let mut n = 0;
    for case in scores["formula_checks"]["aggregators"].as_array().unwrap() {
        let s: Vec<f64> = case["scores"].as_array().unwrap().iter().map(f).collect();
        for (label, result) in case["results"].as_object().unwrap() {
            let want = f(&result["value"]);
            let got = match label.as_str() {
                "skewness" => aggregate::skewness(&s, 10),
                "mean_of_positives" => aggregate::mean_of_positives(&s),
                "top_k_mean" => aggregate::top_k_mean(&s, 3),
                "percentile_score" => aggregate::percentile_score(&s, 90.0),
                "softmax_weighted_mean" => aggregate::softmax_weighted_mean(&s, 1.0),
                "max_score" => aggregate::max_score(&s),
                "top_k_mean(k=1)" => aggregate::top_k_mean(&s, 1),
                "top_k_mean(k=5)" => aggregate::top_k_mean(&s, 5),
                "percentile_score(q=50)" => aggregate::percentile_score(&s, 50.0),
                "percentile_score(q=0)" => aggregate::percentile_score(&s, 0.0),
                "percentile_score(q=100)" => aggregate::percentile_score(&s, 100.0),
                "softmax_weighted_mean(t=0.1)" => aggregate::softmax_weighted_mean(&s, 0.1),
                "softmax_weighted_mean(t=0)" => aggregate::softmax_weighted_mean(&s, 0.0),
                "skewness(min_size=3)" => aggregate::skewness(&s, 3),
                other => panic!("unknown formula check {other}: extend this test"),
            };
            assert!(
                close(got, want, 1e-12 * want.abs().max(1.0)),
                "{} {label}: {got} vs {want}",
                case["name"]
            );
            n += 1;
        }
    }
    assert!(n > 50, "only {n} formula checks found");
}

#[test]
fn saving_the_reference_index_reproduces_its_files() {
    let dir = conformance_dir().join("index_small");
    let index = load_index();
    assert_eq!(
        (index.positive.rows, index.negative.rows, index.dim()),
        (40, 200, 384)
    );
    let out = tempfile::tempdir().unwrap();
    index.save(out.path()).unwrap();
    // The embeddings file is byte-identical; the JSON files hold the same values.
    assert_eq!(
        std::fs::read(out.path().join("embeddings.safetensors")).unwrap(),
        std::fs::read(dir.join("embeddings.safetensors")).unwrap()
    );
    for name in ["sentinel_local_index_config.json", "corpus.json"] {
        let a: Value =
            serde_json::from_slice(&std::fs::read(out.path().join(name)).unwrap()).unwrap();
        let b: Value = serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        assert_eq!(a, b, "{name}");
    }
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(out.path().join("sentinel_local_index_config.json")).unwrap(),
    )
    .unwrap();
    assert!(
        cfg["encoding_kwargs"].is_string(),
        "encoding_kwargs stays a JSON string"
    );
    assert_eq!(SentinelIndex::load(out.path(), None, None).unwrap(), index);
}

#[test]
fn corrupt_or_inconsistent_indexes_are_clear_errors() {
    let src = conformance_dir().join("index_small");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "sentinel_local_index_config.json",
        "embeddings.safetensors",
        "corpus.json",
    ] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    // Truncated safetensors: an error naming the file, never a panic.
    let bytes = std::fs::read(src.join("embeddings.safetensors")).unwrap();
    std::fs::write(dir.path().join("embeddings.safetensors"), &bytes[..1000]).unwrap();
    let err = SentinelIndex::load(dir.path(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("embeddings.safetensors"), "{err}");
    std::fs::write(dir.path().join("embeddings.safetensors"), &bytes).unwrap();
    // A corpus that does not match its rows is dropped on load (explanations fall back to ids).
    std::fs::write(
        dir.path().join("corpus.json"),
        r#"{"positive_corpus": ["a"], "negative_corpus": null}"#,
    )
    .unwrap();
    let idx = SentinelIndex::load(dir.path(), None, None).unwrap();
    assert!(idx.positive_corpus.is_none());
    // ...and refused on save, before anything is written.
    let mut bad = idx.clone();
    bad.positive_corpus = Some(vec!["only one".into()]);
    let out = tempfile::tempdir().unwrap();
    assert!(bad.save(&out.path().join("x")).is_err());
    assert!(!out.path().join("x").join("embeddings.safetensors").exists());
    // Old indexes without corpus.json still load.
    std::fs::remove_file(dir.path().join("corpus.json")).unwrap();
    assert!(
        SentinelIndex::load(dir.path(), None, None)
            .unwrap()
            .negative_corpus
            .is_none()
    );
    // Broken JSON config names its file.
    std::fs::write(dir.path().join("sentinel_local_index_config.json"), "{").unwrap();
    let err = SentinelIndex::load(dir.path(), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sentinel_local_index_config.json"), "{err}");
}

#[test]
fn load_ratio_and_subsample_keep_rows_in_order_and_are_seeded() {
    let index = load_index();
    let a =
        SentinelIndex::load(&conformance_dir().join("index_small"), Some(2.0), Some(3)).unwrap();
    let b =
        SentinelIndex::load(&conformance_dir().join("index_small"), Some(2.0), Some(3)).unwrap();
    assert_eq!(a.negative.rows, 80);
    assert_eq!(a, b, "same seed, same rows");
    let s = index.subsample(Some(10), Some(2.5), Some(7)).unwrap();
    assert_eq!((s.positive.rows, s.negative.rows), (10, 25));
    // Negatives do not depend on whether positives were subsampled.
    let only_neg = index.subsample(None, Some(2.5), Some(7)).unwrap();
    assert_eq!(only_neg.negative.rows, 100);
    // Every kept corpus line still sits next to its own embedding.
    let corpus = s.negative_corpus.as_ref().unwrap();
    let full = index.negative_corpus.as_ref().unwrap();
    for (i, text) in corpus.iter().enumerate() {
        let j = full.iter().position(|t| t == text).unwrap();
        assert_eq!(s.negative.row(i), index.negative.row(j));
    }
    assert!(index.subsample(Some(0), None, None).is_err());
    assert!(index.subsample(None, Some(-1.0), None).is_err());
}

#[test]
fn bad_scoring_inputs_are_errors() {
    let index = load_index();
    let scorer = Scorer::new(&index);
    let one = Matrix {
        data: index.positive.row(0).to_vec(),
        rows: 1,
        dim: 384,
    };
    let texts = vec!["a".to_string(), "b".to_string()];
    assert!(
        scorer
            .score_group(&texts, &one, &ScoreParams::default())
            .is_err()
    );
    let params = ScoreParams {
        top_k: 0,
        ..ScoreParams::default()
    };
    assert!(scorer.score_group(&texts[..1], &one, &params).is_err());
    let empty = scorer
        .score_group(
            &[],
            &Matrix {
                data: vec![],
                rows: 0,
                dim: 384,
            },
            &ScoreParams::default(),
        )
        .unwrap();
    assert_eq!(
        (empty.affinity, empty.aggregation_stats.num_texts),
        (0.0, 0)
    );
}
