//! End-to-end tests of train once, score anywhere: `vigil run` writes a model bundle and
//! `vigil score --model` applies it, without refitting, to the same or to other events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
mod common;
use common::vigil;

/// Run `vigil ARGS`, which must succeed; what it said on standard error.
fn ok(args: &[&str]) -> String {
    common::ok_output(args).1
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Generated events in `dir/name.csv`: 14 days ending at `end`.
fn generate(dir: &Path, name: &str, seed: &str, end: &str) -> PathBuf {
    let input = dir.join(format!("{name}.csv"));
    ok(&[
        "generate",
        "--events",
        "20000",
        "--seed",
        seed,
        "--end",
        end,
        "--out",
        s(&input),
    ]);
    input
}

/// The arguments of `vigil score --model MODEL --input INPUT --out OUT`.
fn score_args<'a>(model: &'a Path, input: &'a Path, out: &'a Path) -> [&'a str; 7] {
    [
        "score",
        "--model",
        s(model),
        "--input",
        s(input),
        "--out",
        s(out),
    ]
}

/// `vigil score --model MODEL --input INPUT --out OUT`, which must succeed.
fn score(model: &Path, input: &Path, out: &Path) -> String {
    ok(&score_args(model, input, out))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&read(p)).unwrap()
}

/// Rows of a CSV file as header -> value maps.
fn rows(p: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(p).unwrap();
    let h = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            h.iter()
                .zip(rec.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn scoring_a_runs_own_events_with_its_bundle_reproduces_risk_queue_and_actions() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "week", "5", "2026-03-01T00:00:00Z");
    let trained = dir.path().join("trained");
    let said = ok(&["run", "--input", s(&input), "--out", s(&trained)]);
    assert!(said.contains("vigil score --model"), "{said}");
    let model = trained.join("model");
    for f in ["manifest.json", "trees.json", "model_card.md"] {
        assert!(model.join(f).exists(), "model/{f} missing");
    }
    let m = json(&model.join("manifest.json"));
    assert_eq!(m["format"], "vigil-model-bundle");
    assert_eq!(m["format_version"], 1);
    assert_eq!(m["risk_model"], "gradient_boosting");
    assert!(m["training"]["user_days"].as_u64().unwrap() > 1000);
    let card = read(&model.join("model_card.md"));
    assert!(
        card.contains("## Not for") && card.contains("gradient_boosting"),
        "{card}"
    );
    let run_json = json(&trained.join("run.json"));
    assert!(
        run_json["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "model/manifest.json")
    );

    let scored = dir.path().join("scored");
    score(&model, &input, &scored);
    for f in [
        "user_day_scored.csv",
        "review_queue.csv",
        "enforcement_actions.csv",
        "audit_log_template.csv",
    ] {
        assert!(
            read(&trained.join(f)) == read(&scored.join(f)),
            "{f} differs between the run and scoring its events with its bundle"
        );
    }
    // Nothing was fitted: no evaluation of a new fit, no bundle of its own.
    assert!(!scored.join("model_eval.csv").exists());
    assert!(!scored.join("model").exists());
    let manifest = json(&scored.join("run.json"));
    assert_eq!(manifest["command"], "score");
    assert_eq!(manifest["risk_model"], "gradient_boosting");
}

/// sigmoid(intercept + sum_j coef_j (x_j - mean_j) / scale_j), from the bundle's numbers.
fn logistic_risk(m: &serde_json::Value, row: &std::collections::HashMap<String, String>) -> f64 {
    let l = &m["logistic"]["model"];
    let at = |v: &serde_json::Value, j: usize| v[j].as_f64().unwrap();
    let mut z = l["intercept"].as_f64().unwrap();
    let names = m["logistic"]["features"].as_array().unwrap();
    for (j, name) in names.iter().enumerate() {
        let x: f64 = row[name.as_str().unwrap()].parse().unwrap();
        let (mean, scale) = (at(&l["scaler"]["mean"], j), at(&l["scaler"]["scale"], j));
        z += at(&l["coef"], j) * (x - mean) / scale;
    }
    1.0 / (1.0 + (-z).exp())
}

#[test]
fn scoring_another_week_applies_the_bundles_own_numbers_without_refitting() {
    let dir = tempfile::tempdir().unwrap();
    let week1 = generate(dir.path(), "week1", "5", "2026-03-01T00:00:00Z");
    let week2 = generate(dir.path(), "week2", "9", "2026-03-15T00:00:00Z");
    let trained = dir.path().join("trained");
    ok(&[
        "run",
        "--input",
        s(&week1),
        "--out",
        s(&trained),
        "--profile",
        "notebook",
    ]);
    let model = trained.join("model");
    let m = json(&model.join("manifest.json"));
    assert_eq!(m["risk_model"], "logistic_regression");
    let threshold = m["threshold"].as_f64().unwrap();
    let scored = dir.path().join("scored");
    score(&model, &week2, &scored);
    let days = rows(&scored.join("user_day_scored.csv"));
    assert!(days.len() > 1000);
    assert!(
        days.iter().all(|r| r["day"].as_str() >= "2026-03-01"),
        "week 2 starts after week 1"
    );
    for r in &days {
        let ours: f64 = r["risk_score"].parse().unwrap();
        let expected = logistic_risk(&m, r);
        assert!(
            (ours - expected).abs() < 1e-12,
            "risk {ours} where the bundle's coefficients give {expected}"
        );
    }
    // The ML flag uses the bundle's threshold.
    let queue = rows(&scored.join("review_queue.csv"));
    assert!(!queue.is_empty());
    for r in &queue {
        let risk: f64 = r["risk_score"].parse().unwrap();
        assert_eq!(r["flag_ml"] == "1", risk >= threshold, "{r:?}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_bundle_from_elsewhere_damaged_or_missing_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "week", "5", "2026-03-01T00:00:00Z");
    let trained = dir.path().join("trained");
    ok(&["run", "--input", s(&input), "--out", s(&trained)]);
    let model = trained.join("model");
    let attempt = |bundle: &Path, name: &str| {
        let out = dir.path().join(name);
        let o = vigil(&score_args(bundle, &input, &out));
        assert!(!out.exists(), "{name}: outputs written");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let edit = |name: &str, file: &str, f: &dyn Fn(String) -> String| {
        let b = dir.path().join(name);
        copy_dir(&model, &b);
        let text = read(&b.join(file));
        std::fs::write(b.join(file), f(text)).unwrap();
        b
    };

    let (code, err) = attempt(&dir.path().join("nowhere"), "o1");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a model bundle"), "{err}");

    let ours = format!("\"vigil_version\": \"{}\"", env!("CARGO_PKG_VERSION"));
    type Edit<'a> = &'a dyn Fn(String) -> String;
    let cases: [(&str, &str, Edit, i32, &[&str]); 4] = [
        (
            "old",
            "manifest.json",
            &|t| t.replace(&ours, "\"vigil_version\": \"0.0.1\""),
            2,
            &["Vigil 0.0.1", "retrain"],
        ),
        (
            "damaged",
            "trees.json",
            &|t| t.replacen("0.", "1.", 1),
            3,
            &["corrupted", "trees.json", "SHA-256"],
        ),
        (
            "truncated",
            "manifest.json",
            &|t| t[..t.len() / 2].to_string(),
            3,
            &["corrupted", "manifest.json"],
        ),
        (
            "features",
            "manifest.json",
            &|t| t.replace("\"n_warned\"", "\"n_frobnicated\""),
            2,
            &["n_frobnicated", "features this data does not have"],
        ),
    ];
    for (name, file, change, want, needles) in cases {
        let (code, err) = attempt(&edit(name, file, change), &format!("out_{name}"));
        assert_eq!(code, Some(want), "{name}: {err}");
        for n in needles {
            assert!(err.contains(n), "{name}: {n:?} not in {err}");
        }
    }

    // Scoring into the run that trained the bundle would replace its queue.
    let o = vigil(&score_args(&model, &input, &trained));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_bad_enforcement_rule_under_run_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), "week", "5", "2026-03-01T00:00:00Z");
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        "[[enforcement.rules]]\naction = \"block\"\nreason = \"spam\"\nwhen = \"no_such_column > 1\"\n",
    )
    .unwrap();
    let o = vigil(&[
        "run",
        "--input",
        s(&input),
        "--out",
        s(&dir.path().join("o")),
        "--config",
        s(&cfg),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("enforcement rules") && err.contains("no_such_column"),
        "{err}"
    );
}
