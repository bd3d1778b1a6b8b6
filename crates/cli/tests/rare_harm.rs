//! The rare-harm stage of `vigil run` / `vigil score`: chat messages scored with a Sentinel
//! index, user-day affinities as features of the boosted model, the highest-scored messages
//! with their nearest harmful examples, and a bundle that scores the same without refitting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

mod common;
use common::{build_index, csv_rows, model, ok};
#[cfg(shared_data)]
use common::{ok_output, vigil};

#[cfg(shared_data)]
fn shared() -> PathBuf {
    std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[cfg(shared_data)]
#[test]
fn rare_harm_stage_finds_the_users_whose_messages_are_harmful_and_the_bundle_scores_the_same() {
    let texts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("conformance/texts.json")).unwrap(),
    )
    .unwrap();
    let list = |k: &str| -> Vec<String> {
        texts[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let index = build_index(
        d,
        &list("index_positive_texts"),
        &list("index_negative_texts"),
    );
    let m = model();
    // A generated world, plus harmful messages (not in the index) from three users who
    // otherwise behave like everyone else: copies of one of their own chat events.
    let events = d.join("events.csv");
    ok(&[
        "generate",
        "--events",
        "20000",
        "--seed",
        "3",
        "--end",
        "2026-02-15T00:00:00Z",
        "--out",
        s(&events),
    ]);
    let rows = csv_rows(&events);
    let harmful = list("harmful_not_in_index");
    let targets = ["u_00010", "u_00020", "u_00030"];
    let mut extra = csv::Writer::from_writer(Vec::new());
    let headers: Vec<String> = csv::Reader::from_path(&events)
        .unwrap()
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let mut injected_day = std::collections::HashMap::new();
    for (k, user) in targets.iter().enumerate() {
        let template = rows
            .iter()
            .find(|r| r["user_id"] == *user && r["event_type"] == "chat")
            .expect("the user chats");
        injected_day.insert(user.to_string(), template["ts"][..10].to_string());
        for (j, text) in harmful[k * 5..k * 5 + 5].iter().enumerate() {
            let mut r = template.clone();
            r.insert("event_id".into(), format!("rare_{k}_{j}"));
            r.insert("prompt".into(), text.clone());
            extra
                .write_record(headers.iter().map(|h| r[h].as_str()))
                .unwrap();
        }
    }
    let mut all = std::fs::read(&events).unwrap();
    all.extend(extra.into_inner().unwrap());
    std::fs::write(&events, all).unwrap();

    let out = d.join("run");
    let (_, err) = ok_output(&[
        "run",
        "--input",
        s(&events),
        "--out",
        s(&out),
        "--sentinel-index",
        s(&index),
        "--sentinel-model",
        s(&m),
    ]);
    assert!(err.contains("rare_harm"), "the stage is timed: {err}");
    let features = csv_rows(&out.join("user_day_features.csv"));
    let mut ranked: Vec<(f64, String, String)> = features
        .iter()
        .map(|r| {
            (
                r["rare_harm_affinity"].parse::<f64>().unwrap(),
                r["user_id"].clone(),
                r["day"].clone(),
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    // The three injected user-days are the three highest, far above everyone else.
    let top: Vec<(String, String)> = ranked[..3]
        .iter()
        .map(|(_, u, d)| (u.clone(), d.clone()))
        .collect();
    for u in targets {
        assert!(
            top.contains(&(u.to_string(), injected_day[u].clone())),
            "{u} not in the top three: {:?}",
            &ranked[..5]
        );
    }
    let median = ranked[ranked.len() / 2].0;
    assert!(
        ranked[2].0 > 2.0 && median < 0.5,
        "{:?} median {median}",
        &ranked[..3]
    );
    // The window feature carries the harm into the user's following days.
    for r in &features {
        let w: f64 = r["rare_harm_affinity_window"].parse().unwrap();
        let a: f64 = r["rare_harm_affinity"].parse().unwrap();
        assert!(w >= a - 1e-9, "the window holds the day: {r:?}");
    }
    // The highest-scored messages are the injected ones, each with index positives as its
    // nearest examples.
    let messages = csv_rows(&out.join("rare_harm_messages.csv"));
    let positives = list("index_positive_texts");
    for r in &messages[..15] {
        assert!(targets.contains(&r["user_id"].as_str()), "{r:?}");
        assert!(harmful.contains(&r["text"]), "{r:?}");
        assert!(positives.contains(&r["nearest_1"]), "{r:?}");
        let (s1, s2): (f64, f64) = (
            r["similarity_1"].parse().unwrap(),
            r["similarity_2"].parse().unwrap(),
        );
        assert!(s1 >= s2, "{r:?}");
    }
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["rare_harm"]["scorer"], "calibrated");
    assert_eq!(run["rare_harm"]["window_days"], 7);
    let distinct: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r["event_type"] == "chat" && !r["prompt"].is_empty())
        .map(|r| r["prompt"].as_str())
        .chain(harmful[..15].iter().map(String::as_str))
        .collect();
    assert_eq!(run["rare_harm"]["distinct_texts"], distinct.len());
    // Both models learnt from the two features, and the bundle names the index.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model/manifest.json")).unwrap())
            .unwrap();
    for model in ["boosted", "logistic"] {
        let features: Vec<&str> = manifest[model]["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            features.contains(&"rare_harm_affinity")
                && features.contains(&"rare_harm_affinity_window"),
            "{model}: {features:?}"
        );
    }
    assert_eq!(manifest["config"]["sentinel"]["index"], s(&index));

    // The report has a rare-harm section led by the three users.
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    let at = report
        .find("Top 10 rare-harm user-days")
        .expect("a rare-harm table");
    let section = &report[at..];
    for u in targets {
        let pos = section.find(u).unwrap_or(usize::MAX);
        assert!(pos < section.find("</table>").unwrap(), "{u} in the table");
    }
    let summary = std::fs::read_to_string(out.join("executive_summary.csv")).unwrap();
    assert!(
        summary.contains("Rare harm,Scorer (window aggregator),calibrated (expected_count)"),
        "{summary}"
    );
    // `vigil score` with the bundle (its index, no flag) reproduces the scored rows.
    let again = d.join("again");
    ok(&[
        "score",
        "--model",
        s(&out.join("model")),
        "--data",
        s(&out.join("data")),
        "--out",
        s(&again),
        "--sentinel-model",
        s(&m),
    ]);
    assert_eq!(
        std::fs::read(out.join("user_day_scored.csv")).unwrap(),
        std::fs::read(again.join("user_day_scored.csv")).unwrap()
    );
    // Without the encoder the stage refuses with how to get it (the user's to fix).
    let o = vigil(&[
        "score",
        "--model",
        s(&out.join("model")),
        "--data",
        s(&out.join("data")),
        "--out",
        s(&d.join("nomodel")),
        "--sentinel-model",
        s(&d.join("no-such-model")),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("fetch-model"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The live service computes these features with the index the bundle names (see
    // serve.rs); it needs the encoder for that, and says how to get it.
    let o = vigil(&[
        "serve",
        "--data",
        s(&out.join("data")),
        "--model",
        s(&out.join("model")),
        "--listen",
        "127.0.0.1:0",
        "--sentinel-model",
        s(&d.join("no-such-model")),
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fetch-model") && err.contains("no-such-model"),
        "{err}"
    );
}

/// A realistic world generated into `d` (`events.csv` with `args`) and the index `vigil demo`
/// builds: every other rare line (half the rare lines the users write are unseen) and the
/// ordinary lines, each with two slip-typed copies. Returns (index, events).
fn realistic_world(d: &Path, args: &[&str]) -> (PathBuf, PathBuf) {
    let (positives, negatives) = vigil_events::generator::TextPool::builtin().index_material();
    let index = build_index(d, &positives, &negatives);
    let events = d.join("events.csv");
    let mut cmd = vec!["generate", "--scenario", "realistic"];
    cmd.extend_from_slice(args);
    cmd.extend(["--end", "2026-02-15T05:26:38Z", "--out", s(&events)]);
    ok(&cmd);
    (index, events)
}

/// The cascade against the exact scorer on the same events: the highest-scored messages (all
/// of them scored exactly in both runs) and the user-days the text flags are the same.
#[test]
fn the_cascade_keeps_what_the_exact_scorer_ranks_highest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (index, events) = realistic_world(d, &["--events", "40000", "--seed", "7"]);
    let m = model();
    let mut outs = Vec::new();
    for mode in ["on", "off"] {
        let cfg = d.join(format!("{mode}.toml"));
        std::fs::write(&cfg, format!("[sentinel]\ncascade = \"{mode}\"\n")).unwrap();
        let out = d.join(mode);
        ok(&[
            "run",
            "--config",
            s(&cfg),
            "--input",
            s(&events),
            "--out",
            s(&out),
            "--sentinel-index",
            s(&index),
            "--sentinel-model",
            s(&m),
        ]);
        outs.push(out);
    }
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outs[0].join("run.json")).unwrap()).unwrap();
    let cascade = &run["rare_harm"]["cascade"];
    let distinct = run["rare_harm"]["distinct_texts"].as_u64().unwrap();
    assert!(
        cascade["candidates"].as_u64().unwrap() * 10 < distinct,
        "{run}"
    );
    let exact: serde_json::Value =
        serde_json::from_slice(&std::fs::read(outs[1].join("run.json")).unwrap()).unwrap();
    assert!(exact["rare_harm"].get("cascade").is_none(), "{exact}");
    // The notable messages (probability >= 0.5) at the top: the same texts with the same
    // (exact) scores. Below them the list goes on with the first stage's estimates.
    let top = |out: &Path| -> Vec<(String, String, String)> {
        csv_rows(&out.join("rare_harm_messages.csv"))
            .into_iter()
            .filter(|r| r["score"].parse::<f64>().unwrap() >= 0.5)
            .map(|r| (r["user_id"].clone(), r["text"].clone(), r["score"].clone()))
            .collect()
    };
    let (screened, all) = (top(&outs[0]), top(&outs[1]));
    assert!(all.len() >= 20, "{}", all.len());
    let only = |a: &[(String, String, String)], b: &[(String, String, String)]| {
        a.iter()
            .filter(|x| !b.contains(x))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        screened == all,
        "only with the cascade: {:?}\nonly exact: {:?}",
        only(&screened, &all),
        only(&all, &screened)
    );
    // The user-days the text flags for review.
    let flagged = |out: &Path| -> Vec<(String, String)> {
        csv_rows(&out.join("review_queue.csv"))
            .into_iter()
            .filter(|r| r["flag_rare_harm"] == "1")
            .map(|r| (r["user_id"].clone(), r["day"].clone()))
            .collect()
    };
    let exact_flags = flagged(&outs[1]);
    assert!(!exact_flags.is_empty());
    let kept = flagged(&outs[0])
        .iter()
        .filter(|f| exact_flags.contains(f))
        .count();
    assert!(
        kept * 100 >= exact_flags.len() * 98,
        "{kept} of {} exact flags",
        exact_flags.len()
    );
}

#[test]
fn in_the_realistic_world_the_text_signal_finds_the_rare_harm_users_behaviour_misses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (index, events) =
        realistic_world(d, &["--events", "200000", "--rings", "8", "--seed", "42"]);
    let m = model();
    let truth = csv_rows(&d.join("ground_truth.csv"));
    let rare_users: std::collections::HashSet<String> = truth
        .iter()
        .filter(|r| r["actor_id"].starts_with("rare_harm"))
        .map(|r| r["user_id"].clone())
        .collect();
    assert_eq!(rare_users.len(), 30);
    let found = |out: &Path| -> usize {
        let queued: std::collections::HashSet<String> = csv_rows(&out.join("review_queue.csv"))
            .into_iter()
            .map(|r| r["user_id"].clone())
            .collect();
        rare_users.intersection(&queued).count()
    };
    let fused = d.join("fused");
    ok(&[
        "run",
        "--input",
        s(&events),
        "--out",
        s(&fused),
        "--sentinel-index",
        s(&index),
        "--sentinel-model",
        s(&m),
        "--ground-truth",
        s(&d.join("ground_truth.csv")),
    ]);
    // 88,000 distinct texts: the cascade screened them (`auto`), keeping what the exact
    // scorer finds notable (the audit's estimate; the exact comparison is the next test's).
    let run: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fused.join("run.json")).unwrap()).unwrap();
    let cascade = &run["rare_harm"]["cascade"];
    let distinct = run["rare_harm"]["distinct_texts"].as_u64().unwrap();
    let candidates = cascade["candidates"].as_u64().unwrap();
    assert!(distinct > 50_000 && candidates * 20 < distinct, "{run:?}");
    assert!(
        cascade["notable_candidates"].as_u64().unwrap() > 50,
        "{cascade}"
    );
    // The audit (2,000 of ~88,000 screened-out texts) finds at most one notable text: one
    // is already a wide estimate, so the exact check is the cascade test above.
    assert!(
        cascade["audited_notable"].as_u64().unwrap() <= 1,
        "{cascade}"
    );
    let plain = d.join("plain");
    ok(&["run", "--data", s(&fused.join("data")), "--out", s(&plain)]);
    let (with_text, behaviour_only) = (found(&fused), found(&plain));
    // The targets: >= 90% of rare-harm users within the queue with the text signal,
    // < 30% from behaviour alone.
    assert!(with_text >= 27, "fused model found {with_text} of 30");
    assert!(
        behaviour_only < 9,
        "behaviour-only model found {behaviour_only} of 30"
    );
    // The boosted model's probabilities are calibrated (the issue: ECE < 0.05), and the
    // enforcement thresholds acting on them give a mixed set of actions, not all `block`.
    for out in [&fused, &plain] {
        let eval = csv_rows(&out.join("model_eval.csv"));
        let gb = eval
            .iter()
            .find(|r| r["model"] == "gradient_boosting")
            .unwrap();
        let ece: f64 = gb["test_ece"].parse().unwrap();
        assert!(ece < 0.05, "{gb:?}");
    }
    let mut actions = std::collections::BTreeMap::<String, usize>::new();
    for r in csv_rows(&fused.join("enforcement_actions.csv")) {
        *actions.entry(r["suggested_action"].clone()).or_default() += 1;
    }
    let total: usize = actions.values().sum();
    assert!(actions.len() >= 3, "{actions:?}");
    assert!(actions.values().all(|&n| n * 10 < total * 9), "{actions:?}");
    // The rare-harm flag queues user-days by what was written, and the rule put first
    // escalates them to a person: every one is a rare-harm user's.
    let queue = csv_rows(&fused.join("review_queue.csv"));
    let flagged: Vec<&String> = queue
        .iter()
        .filter(|r| r["flag_rare_harm"] == "1")
        .map(|r| &r["user_id"])
        .collect();
    assert!(flagged.len() >= 27, "{} flagged", flagged.len());
    assert!(
        flagged.iter().all(|u| rare_users.contains(*u)),
        "{flagged:?}"
    );
    let escalated = csv_rows(&fused.join("enforcement_actions.csv"))
        .into_iter()
        .filter(|r| r["reason_code"] == "rare_harm_affinity")
        .inspect(|r| assert_eq!(r["suggested_action"], "escalate"))
        .count();
    assert_eq!(escalated, flagged.len());
    // text_signal.csv: the fused run's queue beside the one its behaviour-only model would
    // have driven, which is the run without the stage (same split, seed and policy).
    let signal = csv_rows(&fused.join("text_signal.csv"));
    assert_eq!(signal.len(), 2);
    for (row, out, model) in [
        (&signal[0], &fused, "gradient_boosting"),
        (&signal[1], &plain, "gradient_boosting_without_text"),
    ] {
        assert_eq!(row["model"], model);
        assert_eq!(row["rare_harm_users"], "30");
        assert_eq!(
            row["rare_harm_users_in_queue"],
            found(out).to_string(),
            "{row:?}"
        );
        let queue = csv_rows(&out.join("review_queue.csv"));
        assert_eq!(row["queued_user_days"], queue.len().to_string());
        let mut mix = std::collections::BTreeMap::<String, usize>::new();
        for r in csv_rows(&out.join("enforcement_actions.csv")) {
            *mix.entry(r["suggested_action"].clone()).or_default() += 1;
        }
        for a in ["allow", "warn", "rate_limit", "block", "escalate"] {
            let want = mix.get(a).copied().unwrap_or(0);
            assert_eq!(row[a], want.to_string(), "{model} {a}: {row:?} vs {mix:?}");
        }
    }
}

/// A missing encoder is reported before any stage runs: nothing is written to the output
/// directory (before, the core tables were built and written first).
#[test]
fn a_missing_encoder_is_refused_before_the_run_writes_anything() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.csv");
    ok(&["generate", "--events", "2000", "--out", s(&events)]);
    let out = d.join("out");
    let o = common::vigil(&[
        "run",
        "--input",
        s(&events),
        "--out",
        s(&out),
        "--sentinel-index",
        s(&d.join("no-index")),
        "--sentinel-model",
        s(&d.join("no-model")),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no-model") && err.contains("fetch-model"),
        "{err}"
    );
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "{written:?}");
}
