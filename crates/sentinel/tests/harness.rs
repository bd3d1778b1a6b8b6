//! The tuning harness against the reference (`shared/conformance/simulation.json`):
//! score_groups, evaluate_groups, compare_aggregators and run_grid_search on the reference's
//! 41 labelled groups and `index_small`, observations encoded by our native MiniLM, plus the
//! torch generator references that make our subsampling row-identical.
// Reads the reference data in `shared/`: built only where it is (see build-support/).
#![cfg(shared_data)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::model_dir;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use vigil_sentinel::harness::{
    EncodedGroups, EvalRow, Grid, GroupScores, LabeledGroup, compare_aggregators, evaluate_groups,
    group_affinity, run_grid_search, score_groups,
};
use vigil_sentinel::torch_rng::{TorchGenerator, split_seeds};
use vigil_sentinel::{Aggregator, Encoder, MiniLmEncoder, Precision, SentinelIndex};

fn shared() -> PathBuf {
    std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn sim() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let p = shared().join("conformance/simulation.json");
        serde_json::from_str(
            &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    })
}

fn index() -> SentinelIndex {
    SentinelIndex::load(&shared().join("conformance/index_small"), None, None).unwrap()
}

fn groups() -> Vec<LabeledGroup> {
    sim()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| LabeledGroup {
            name: g["name"].as_str().unwrap().into(),
            label: g["label"].as_u64().unwrap() as u8,
            observations: g["observations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect(),
        })
        .collect()
}

/// The groups encoded once by the real model.
fn encoded() -> &'static EncodedGroups {
    static E: OnceLock<EncodedGroups> = OnceLock::new();
    E.get_or_init(|| {
        let enc = MiniLmEncoder::load(&model_dir()).unwrap();
        EncodedGroups::encode(groups(), &mut |t| enc.encode(t)).unwrap()
    })
}

/// Group names ordered by affinity (highest first) for every aggregator, from scores.
fn rankings(scores: &[GroupScores]) -> Vec<(Aggregator, Vec<(String, f64)>)> {
    Aggregator::ALL
        .iter()
        .map(|&agg| {
            let mut r: Vec<(String, f64)> = scores
                .iter()
                .map(|g| {
                    (
                        g.name.clone(),
                        group_affinity(&g.observation_scores, agg, 0.1),
                    )
                })
                .collect();
            r.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            (agg, r)
        })
        .collect()
}

/// The int16 fast mode leaves the conformance groups' affinity ranking unchanged: the
/// reference's 41 groups against `index_small` (top_k 5, min_score 0.1), every aggregator.
/// Groups whose f32 affinities tie (within 1e-3: the zeros of groups with no observation over
/// min_score) may trade places; nothing else may move. (int8 does move close neighbours,
/// e.g. two groups 0.007 apart under the 90th-percentile aggregator: it is documented as the
/// lossy mode.)
#[test]
fn int16_fast_mode_keeps_the_conformance_groups_affinity_ranking() {
    let idx = index();
    let exact = rankings(&score_groups(&idx, encoded(), 5).unwrap());
    for precision in [Precision::Int16] {
        let enc = MiniLmEncoder::load_with_precision(&model_dir(), precision).unwrap();
        let fast = EncodedGroups::encode(groups(), &mut |t| enc.encode(t)).unwrap();
        let ranked = rankings(&score_groups(&idx, &fast, 5).unwrap());
        for ((agg, want), (_, got)) in exact.iter().zip(&ranked) {
            let f32_of = |name: &str| {
                want.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, a)| *a)
                    .unwrap()
            };
            for (pos, ((wn, wa), (gn, _))) in want.iter().zip(got).enumerate() {
                assert!(
                    wn == gn || (wa - f32_of(gn)).abs() < 1e-3,
                    "{precision} {agg:?}: rank {pos} is {gn} (f32 {}), f32 ranks {wn} ({wa}) there",
                    f32_of(gn)
                );
            }
        }
    }
}

/// Floats within 1e-5 relative (with a 1e-6 floor for values near zero: our embeddings
/// differ from torch's in the seventh digit); nulls must match nulls.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-5 * x.abs().max(y.abs()) + 1e-6
        }
        (x, y) => x == y,
    }
}

/// Columns whose value depends on the order of the affinities (ranks, thresholds, CDFs).
const ORDER_DEPENDENT: [&str; 16] = [
    "roc_auc",
    "precision_at_n",
    "recall_at_n",
    "avg_rank_positive",
    "avg_rank_negative",
    "rank_ratio",
    "tp",
    "fp",
    "fn",
    "tn",
    "precision",
    "recall",
    "f1",
    "false_positive_rate",
    "decision_threshold",
    "ks_statistic",
];

/// A positive and a negative group whose affinities agree to 1e-6 relative: their order is
/// decided by float32 rounding, which differs between torch and us.
fn has_cross_class_near_tie(scores: &[GroupScores], row: &EvalRow) -> bool {
    let agg = Aggregator::ALL
        .into_iter()
        .find(|a| a.name() == row.aggregator)
        .unwrap_or(Aggregator::TopKMean { k: 3 });
    let aff: Vec<(f64, u8)> = scores
        .iter()
        .map(|g| {
            (
                group_affinity(&g.observation_scores, agg, row.min_score_to_consider),
                g.label,
            )
        })
        .collect();
    aff.iter().any(|&(a, la)| {
        aff.iter()
            .any(|&(b, lb)| la != lb && (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-12)
    })
}

/// Compare one row. Order-dependent columns may differ only where a positive and a negative
/// group tie to within float32 noise; returns whether that exception was used.
fn check_row(ours: &EvalRow, theirs: &Value, ctx: &str, scores: &[GroupScores]) -> bool {
    let ours_v = serde_json::to_value(ours).unwrap();
    let theirs = theirs.as_object().unwrap();
    let mut tie_explained = false;
    for (k, v) in theirs {
        let o = ours_v
            .get(k)
            .unwrap_or_else(|| panic!("{ctx}: we have no column {k}"));
        if same(o, v) {
            continue;
        }
        if ORDER_DEPENDENT.contains(&k.as_str()) && has_cross_class_near_tie(scores, ours) {
            tie_explained = true;
            continue;
        }
        panic!("{ctx} [{}]: {k} ours {o} vs reference {v}", ours.aggregator);
    }
    assert_eq!(
        ours_v.as_object().unwrap().len(),
        theirs.len(),
        "{ctx}: columns"
    );
    tie_explained
}

#[test]
fn torch_generator_reproduces_the_reference_draws() {
    let r = &sim()["rng_reference"];
    for s in r["split_generators"].as_array().unwrap() {
        let (p, n) = split_seeds(s["seed"].as_u64().unwrap());
        assert_eq!(p, s["positive_seed"].as_u64().unwrap());
        assert_eq!(n, s["negative_seed"].as_u64().unwrap());
    }
    for p in r["randperm"].as_array().unwrap() {
        let want: Vec<usize> = p["perm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let got = TorchGenerator::new(p["seed"].as_u64().unwrap())
            .randperm(p["n"].as_u64().unwrap() as usize);
        assert_eq!(got, want);
    }
}

#[test]
fn subsample_and_load_keep_the_reference_rows() {
    let idx = index();
    let row_of = |m: &vigil_sentinel::Matrix, i: usize| m.row(i).to_vec();
    for r in sim()["subsample_reference"].as_array().unwrap() {
        let n_pos = r["n_positive"].as_u64().map(|v| v as usize);
        let ratio = r["neg_to_pos_ratio"].as_f64();
        let s = idx.subsample(n_pos, ratio, r["seed"].as_u64()).unwrap();
        for (side, full, sub) in [
            ("positive_rows_kept", &idx.positive, &s.positive),
            ("negative_rows_kept", &idx.negative, &s.negative),
        ] {
            let want: Vec<usize> = match &r[side] {
                Value::Null => (0..full.rows).collect(),
                v => v
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect(),
            };
            assert_eq!(sub.rows, want.len(), "{side} {r}");
            for (k, &row) in want.iter().enumerate() {
                assert_eq!(row_of(sub, k), row_of(full, row), "{side} {r}");
            }
        }
    }
    let l = &sim()["load_ratio_reference"];
    let loaded = SentinelIndex::load(
        &shared().join("conformance/index_small"),
        Some(2.0),
        Some(3),
    )
    .unwrap();
    let cands = l["kept_rows_candidates"].as_array().unwrap();
    assert_eq!(loaded.negative.rows, cands.len());
    for (k, c) in cands.iter().enumerate() {
        let ok = c.as_array().unwrap().iter().any(|r| {
            row_of(&loaded.negative, k) == row_of(&idx.negative, r.as_u64().unwrap() as usize)
        });
        assert!(ok, "kept row {k} is none of {c}");
    }
}

#[test]
fn score_groups_matches_the_reference() {
    let idx = index();
    for call in sim()["score_groups"].as_array().unwrap() {
        let top_k = if call["call"].as_str().unwrap().contains("top_k=1") {
            1
        } else {
            5
        };
        let ours = score_groups(&idx, encoded(), top_k).unwrap();
        let rows = call["rows"].as_array().unwrap();
        assert_eq!(ours.len(), rows.len());
        for (o, t) in ours.iter().zip(rows) {
            assert_eq!(o.name, t["name"].as_str().unwrap());
            let want = t["observation_scores"].as_array().unwrap();
            assert_eq!(o.observation_scores.len(), want.len(), "{}", o.name);
            for (a, b) in o.observation_scores.iter().zip(want) {
                assert!(
                    same(&serde_json::json!(a), b),
                    "{} top_k {top_k}: {a} vs {b}",
                    o.name
                );
            }
        }
    }
}

/// One `evaluate_groups` call: scores, aggregator, name, min_score, top_n, threshold.
type EvalCase = (
    Vec<GroupScores>,
    Aggregator,
    Option<&'static str>,
    f64,
    Option<i64>,
    Option<f64>,
);

#[test]
fn evaluate_and_compare_aggregators_match_the_reference() {
    let idx = index();
    let s5 = score_groups(&idx, encoded(), 5).unwrap();
    let s1 = score_groups(&idx, encoded(), 1).unwrap();
    let calls = sim()["compare_aggregators"].as_array().unwrap();
    let args = [
        (&s5, 0.1, None, None),
        (&s5, 0.0, Some(5), Some(0.5)),
        (&s1, 0.2, None, None),
    ];
    let mut ties = 0;
    let mut total = 0;
    for (call, (s, min, top_n, t)) in calls.iter().zip(args) {
        let ours = compare_aggregators(s, min, top_n, t);
        let rows = call["rows"].as_array().unwrap();
        assert_eq!(ours.len(), rows.len());
        for (o, r) in ours.iter().zip(rows) {
            total += 1;
            ties += usize::from(check_row(o, r, call["call"].as_str().unwrap(), s));
        }
    }
    assert!(
        ties * 5 <= total,
        "{ties} of {total} rows differ by tie order"
    );
    let e = sim()["evaluate_groups"].as_array().unwrap();
    let negatives: Vec<_> = s5.iter().filter(|g| g.label == 0).cloned().collect();
    let cases: [EvalCase; 5] = [
        (s5.clone(), Aggregator::ALL[0], None, 0.1, None, None),
        (
            s1.clone(),
            Aggregator::MaxScore,
            None,
            0.1,
            Some(100),
            Some(0.3),
        ),
        (
            s5.clone(),
            Aggregator::ALL[2],
            Some("tkm"),
            0.0,
            Some(0),
            None,
        ),
        (negatives, Aggregator::MaxScore, None, 0.1, None, None),
        (Vec::new(), Aggregator::ALL[0], None, 0.1, None, None),
    ];
    for (call, (s, agg, name, min, top_n, t)) in e.iter().zip(cases) {
        let ours = evaluate_groups(&s, agg, name, min, top_n, t);
        assert!(!check_row(
            &ours,
            &call["row"],
            call["call"].as_str().unwrap(),
            &s
        ));
    }
}

#[test]
fn grid_search_matches_the_reference_row_for_row() {
    let idx = index();
    let calls = sim()["run_grid_search"].as_array().unwrap();
    let grids = [
        Grid {
            n_positive_values: vec![Some(10), Some(25), Some(40)],
            neg_to_pos_ratios: vec![Some(1.0), Some(2.5), Some(5.0)],
            top_k_values: vec![1, 5],
            min_score_values: vec![0.0, 0.1],
            index_seed: Some(7),
            ..Grid::default()
        },
        Grid {
            top_k_values: vec![1],
            min_score_values: vec![0.1],
            ..Grid::default()
        },
        Grid {
            n_positive_values: vec![Some(10)],
            top_k_values: vec![1],
            min_score_values: vec![0.0],
            index_seed: Some(7),
            ..Grid::default()
        },
    ];
    let (mut ties, mut total) = (0, 0);
    for (call, grid) in calls.iter().zip(grids) {
        let ours = run_grid_search(&idx, encoded(), &grid, &|_, _| {}).unwrap();
        let rows = call["rows"].as_array().unwrap();
        assert_eq!(ours.len(), rows.len(), "{}", call["call"]);
        // the scores each row was computed from, for the near-tie exception
        for (o, r) in ours.iter().zip(rows) {
            let sub = match (
                o.index_n_positive.flatten(),
                o.index_neg_to_pos_ratio.flatten(),
            ) {
                (None, None) => index(),
                (n, q) => idx.subsample(n, q, grid.index_seed).unwrap(),
            };
            let s = score_groups(&sub, encoded(), o.top_k.unwrap()).unwrap();
            total += 1;
            ties += usize::from(check_row(o, r, call["call"].as_str().unwrap(), &s));
        }
    }
    eprintln!("grid search: {ties} of {total} rows differ only by the order of near-tied groups");
    assert!(
        ties * 5 <= total,
        "{ties} of {total} rows differ by tie order"
    );
}
