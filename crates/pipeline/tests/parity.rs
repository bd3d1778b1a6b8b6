//! Parity with the notebook proof-of-concept: ingest its own raw events and compare our core
//! tables, monitoring metrics, alerts, features and PSI with the CSVs it wrote
//! (`../shared/parity/`). Counts must match exactly, floats within 1e-9 relative. Without
//! `shared/` (`cfg(shared_data)` unset by the build script) the tests of the small tables run
//! from the slice in `tests/parity-slice/`; the others need `shared/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vigil_config::{Config, Profile};
use vigil_pipeline::{RunOptions, run};

fn parity_dir() -> PathBuf {
    // Without `shared/` (a clean clone) the slice in the repository: the notebook's raw
    // events and its small tables; the tests of the large tables need `shared/`.
    if !cfg!(shared_data) {
        return Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity-slice");
    }
    let dir = std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("parity");
    assert!(
        dir.join("raw_events.csv.gz").exists(),
        "parity data not found at {}: the repository expects shared/ beside its checkout \
         (or set VIGIL_SHARED to the shared/ directory)",
        dir.display()
    );
    dir
}

/// Run the notebook profile once for all tests in this file.
fn outputs() -> &'static Path {
    static OUT: OnceLock<tempfile::TempDir> = OnceLock::new();
    OUT.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        let opts = RunOptions {
            models: Default::default(),
            inputs: vec![parity_dir().join("raw_events.csv.gz")],
            out: out.path().to_path_buf(),
            data: None,
            config: Config::for_profile(Profile::Notebook),
            ingest: Default::default(),
            ground_truth: None,
            as_of_micros: Some(1_771_133_198_215_190),
            sentinel_model: Default::default(),
        };
        let m = run(&opts, &|_| {}).unwrap();
        assert_eq!(m.inputs[0].accepted, 50_000);
        assert_eq!(m.inputs[0].quarantined, 0);
        out
    })
    .path()
}

type Rows = Vec<HashMap<String, String>>;

fn read_csv(path: &Path) -> (Vec<String>, Rows) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    let rows = r
        .records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect()
        })
        .collect();
    (headers, rows)
}

fn same_value(col: &str, ours: &str, theirs: &str) -> Result<(), String> {
    match (ours.parse::<f64>(), theirs.parse::<f64>()) {
        (Ok(a), Ok(b)) => {
            let tol = 1e-9 * b.abs().max(a.abs());
            if (a - b).abs() <= tol {
                Ok(())
            } else {
                Err(format!("{col}: ours {ours} vs notebook {theirs}"))
            }
        }
        _ if ours == theirs => Ok(()),
        _ => Err(format!("{col}: ours {ours:?} vs notebook {theirs:?}")),
    }
}

/// Compare our table with the notebook's on `key` columns, over every notebook column we also
/// have (`fix` may rewrite one of our values first, e.g. a timestamp format).
fn compare(ours: &str, theirs: &str, key: &[&str], fix: &dyn Fn(&str, &str) -> String) -> usize {
    let (our_cols, our_rows) = read_csv(&outputs().join(ours));
    let (their_cols, their_rows) = read_csv(&parity_dir().join(theirs));
    let cols: Vec<&String> = their_cols.iter().filter(|c| our_cols.contains(c)).collect();
    let key_of = |r: &HashMap<String, String>| -> String {
        key.iter()
            .map(|k| r[*k].as_str())
            .collect::<Vec<_>>()
            .join("|")
    };
    let ours_by_key: HashMap<String, &HashMap<String, String>> =
        our_rows.iter().map(|r| (key_of(r), r)).collect();
    assert_eq!(
        our_rows.len(),
        their_rows.len(),
        "{ours}: row count differs from the notebook's {theirs}"
    );
    let mut errors = Vec::new();
    for t in &their_rows {
        let k = key_of(t);
        let Some(o) = ours_by_key.get(&k) else {
            errors.push(format!("missing row {k}"));
            continue;
        };
        for c in &cols {
            if let Err(e) = same_value(c, &fix(c, &o[c.as_str()]), &t[c.as_str()]) {
                errors.push(format!("row {k}: {e}"));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{ours} vs {theirs}: {} mismatches, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    cols.len()
}

fn no_fix(_: &str, v: &str) -> String {
    v.to_string()
}

#[cfg(shared_data)]
#[test]
fn core_users_match_the_notebook() {
    // The notebook's SQLite export truncates timestamps to seconds as `%Y-%m-%dT%H:%M:%S+0000`.
    let fix = |c: &str, v: &str| {
        if c.ends_with("_ts") {
            format!("{}+0000", &v[..19])
        } else {
            v.to_string()
        }
    };
    assert_eq!(
        compare("core_users.csv", "core_users.csv", &["user_id"], &fix),
        10
    );
}

#[cfg(shared_data)]
#[test]
fn core_user_day_matches_the_notebook() {
    let n = compare(
        "core_user_day.csv",
        "core_user_day.csv",
        &["day", "user_id"],
        &no_fix,
    );
    assert_eq!(n, 12);
}

#[test]
fn core_day_metrics_match_the_notebook() {
    assert_eq!(
        compare(
            "core_day_metrics.csv",
            "core_day_metrics.csv",
            &["day"],
            &no_fix
        ),
        7
    );
}

#[test]
fn monitoring_metrics_match_the_notebook() {
    assert_eq!(
        compare(
            "monitoring_metrics.csv",
            "monitoring_metrics.csv",
            &["day"],
            &no_fix
        ),
        9
    );
}

#[cfg(shared_data)]
#[test]
fn user_day_features_match_the_notebook() {
    let n = compare(
        "user_day_features.csv",
        "user_day_scored.csv",
        &["day", "user_id"],
        &no_fix,
    );
    assert_eq!(n, 15, "every feature column of the notebook is compared");
}

#[test]
fn alerts_match_the_notebook_exactly() {
    let (_, ours) = read_csv(&outputs().join("alerts.csv"));
    let (_, theirs) = read_csv(&parity_dir().join("alerts.csv"));
    assert_eq!(ours, theirs);
}

#[test]
fn psi_matches_the_notebook_in_value_and_order() {
    let (_, ours) = read_csv(&outputs().join("drift.csv"));
    let (_, theirs) = read_csv(&parity_dir().join("drift.csv"));
    assert_eq!(ours.len(), 12);
    for (o, t) in ours.iter().zip(&theirs) {
        assert_eq!(o["feature"], t["feature"], "order differs");
        let (a, b): (f64, f64) = (o["psi"].parse().unwrap(), t["psi"].parse().unwrap());
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1e-300),
            "{}: {a} vs {b}",
            t["feature"]
        );
        assert_eq!(o["drift_flag"], t["drift_flag"]);
    }
}

#[test]
fn sqlite_store_holds_the_core_tables() {
    let conn = rusqlite::Connection::open(outputs().join("sqlite.db")).unwrap();
    for (table, rows) in [
        ("core_users", 1500),
        ("core_user_day", 19_596),
        ("core_day_metrics", 15),
    ] {
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, rows, "{table}");
    }
    let blocked: i64 = conn
        .query_row("SELECT SUM(n_blocked) FROM core_day_metrics", [], |r| {
            r.get(0)
        })
        .unwrap();
    let (_, theirs) = read_csv(&parity_dir().join("core_day_metrics.csv"));
    let want: i64 = theirs
        .iter()
        .map(|r| r["n_blocked"].parse::<i64>().unwrap())
        .sum();
    assert_eq!(blocked, want);
}

// ---------------------------------------------------------------------------------------
// Detection, review, automation, enforcement, incidents (spec sections 5-7, 9, 10).

#[cfg(shared_data)]
fn notebook_eval() -> (f64, f64) {
    // the model evaluation row the notebook printed (stdout.txt): threshold, test AUC
    let text = std::fs::read_to_string(parity_dir().join("stdout.txt")).unwrap();
    let at = text.find("=== MODEL EVALUATION").unwrap();
    let line = text[at..].lines().nth(2).unwrap();
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v[1], v[5])
}

#[cfg(shared_data)]
#[test]
fn logistic_regression_matches_the_notebook() {
    let (_, rows) = read_csv(&outputs().join("model_eval.csv"));
    let lr = rows
        .iter()
        .find(|r| r["model"] == "logistic_regression")
        .unwrap();
    let (threshold, auc) = notebook_eval();
    let our_t: f64 = lr["threshold"].parse().unwrap();
    let our_auc: f64 = lr["test_auc"].parse().unwrap();
    assert!(
        (our_t - threshold).abs() <= 0.02,
        "threshold {our_t} vs {threshold}"
    );
    assert!((our_auc - auc).abs() <= 0.01, "AUC {our_auc} vs {auc}");
    // risk scores on every user-day, against the notebook's
    let (_, ours) = read_csv(&outputs().join("user_day_scored.csv"));
    let (_, theirs) = read_csv(&parity_dir().join("user_day_scored.csv"));
    assert_eq!(ours.len(), theirs.len());
    let key = |r: &HashMap<String, String>| format!("{}|{}", r["day"], r["user_id"]);
    let by_key: HashMap<String, &HashMap<String, String>> =
        ours.iter().map(|r| (key(r), r)).collect();
    let mut worst = 0.0f64;
    for t in &theirs {
        let o = by_key[&key(t)];
        let d = (o["risk_score"].parse::<f64>().unwrap() - t["risk_score"].parse::<f64>().unwrap())
            .abs();
        worst = worst.max(d);
    }
    assert!(worst < 1e-3, "largest risk_score difference {worst}");
}

#[test]
fn gradient_boosting_is_reported_beside_logistic_regression() {
    let (headers, rows) = read_csv(&outputs().join("model_eval.csv"));
    assert_eq!(
        headers,
        [
            "model",
            "threshold",
            "test_precision",
            "test_recall",
            "test_f1",
            "test_auc",
            "test_ece"
        ]
    );
    let models: Vec<&str> = rows.iter().map(|r| r["model"].as_str()).collect();
    assert_eq!(
        models,
        [
            "logistic_regression",
            "gradient_boosting",
            "gradient_boosting_user_split"
        ]
    );
    for r in &rows {
        let auc: f64 = r["test_auc"].parse().unwrap();
        assert!((0.5..=1.0).contains(&auc), "{r:?}");
    }
}

#[cfg(shared_data)]
#[test]
fn heuristic_scores_flags_and_priority_match_given_the_notebook_risk() {
    // Recompute the heuristic over the notebook's features and the flags and priority of
    // its queue from its own risk scores.
    let (_, feats) = read_csv(&parity_dir().join("user_day_scored.csv"));
    let col = |c: &str| -> Vec<f64> { feats.iter().map(|r| r[c].parse().unwrap()).collect() };
    let cfg = vigil_config::Config::for_profile(Profile::Notebook);
    let heur = vigil_detect::heuristic_scores(
        &col("n_chat"),
        &col("block_rate"),
        &col("n_ips"),
        &col("n_warned"),
        &cfg.detection,
    );
    let heur_by_key: HashMap<String, f64> = feats
        .iter()
        .zip(&heur)
        .map(|(r, h)| (format!("{}|{}", r["day"], r["user_id"]), *h))
        .collect();
    let (_, queue) = read_csv(&parity_dir().join("review_queue.csv"));
    let (threshold, _) = notebook_eval();
    let f = |r: &HashMap<String, String>, c: &str| r[c].parse::<f64>().unwrap();
    let risk: Vec<f64> = feats.iter().map(|r| f(r, "risk_score")).collect();
    let unc: Vec<f64> = feats.iter().map(|r| f(r, "uncertainty")).collect();
    let ours =
        vigil_review::build_queue(&risk, &unc, &heur, &col("n_chat"), threshold, &cfg.review);
    assert_eq!(ours.len(), queue.len());
    for (q, t) in ours.iter().zip(&queue) {
        let k = format!("{}|{}", t["day"], t["user_id"]);
        assert_eq!(
            format!("{}|{}", feats[q.row]["day"], feats[q.row]["user_id"]),
            k,
            "queue order"
        );
        same_value(
            "heuristic_score",
            &heur_by_key[&k].to_string(),
            &t["heuristic_score"],
        )
        .unwrap();
        same_value("priority", &q.priority.to_string(), &t["priority"]).unwrap();
        let flag = |b: bool| if b { "1" } else { "0" };
        assert_eq!(flag(q.flags.ml), t["flag_ml"], "{k}");
        assert_eq!(flag(q.flags.heuristic), t["flag_heur"], "{k}");
        assert_eq!(flag(q.flags.uncertain), t["flag_uncertain"], "{k}");
    }
}

#[cfg(shared_data)]
#[test]
fn recent_prompts_and_dedup_keys_match_the_notebook() {
    let (_, ours) = read_csv(&outputs().join("review_queue_dedup.csv"));
    let (_, theirs) = read_csv(&parity_dir().join("review_queue_dedup.csv"));
    let key = |r: &HashMap<String, String>| format!("{}|{}", r["day"], r["user_id"]);
    let by_key: HashMap<String, &HashMap<String, String>> =
        ours.iter().map(|r| (key(r), r)).collect();
    let mut shared = 0;
    for t in &theirs {
        if let Some(o) = by_key.get(&key(t)) {
            shared += 1;
            assert_eq!(o["recent_prompts"], t["recent_prompts"], "{}", key(t));
            assert_eq!(o["dedup_key"], t["dedup_key"], "{}", key(t));
        }
    }
    // our queue comes from our own (near-identical) risk scores: nearly the same cases
    assert!(shared >= 1900, "only {shared} of 2000 cases in common");
    // duplicate flags given the notebook's queue order
    let flags = vigil_automate::dedup::dedup(
        theirs
            .iter()
            .map(|r| (r["day"].as_str(), r["recent_prompts"].as_str())),
    );
    for ((k, dup), t) in flags.iter().zip(&theirs) {
        assert_eq!(k, &t["dedup_key"]);
        assert_eq!(if *dup { "1" } else { "0" }, t["is_dup"]);
    }
}

#[cfg(shared_data)]
#[test]
fn entity_resolution_matches_the_notebook() {
    let edges = |dir: &Path| -> std::collections::BTreeSet<String> {
        read_csv(&dir.join("entity_resolution_edges.csv"))
            .1
            .iter()
            .map(|r| {
                format!(
                    "{}|{}|{}|{}",
                    r["user_a"], r["user_b"], r["edge_type"], r["edge_key"]
                )
            })
            .collect()
    };
    let ours = edges(outputs());
    let theirs = edges(&parity_dir());
    assert_eq!(ours.len(), 5477);
    assert_eq!(ours, theirs);
    compare(
        "entity_resolution_components.csv",
        "entity_resolution_components.csv",
        &["user_id"],
        &no_fix,
    );
}

#[cfg(shared_data)]
#[test]
fn clusters_have_the_notebooks_count_and_a_comparable_size_profile() {
    let sizes = |path: &Path| -> Vec<usize> {
        let mut m: HashMap<String, usize> = HashMap::new();
        for r in read_csv(path).1 {
            *m.entry(r["cluster_id"].clone()).or_default() += 1;
        }
        let mut v: Vec<usize> = m.into_values().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    };
    let ours = sizes(&outputs().join("clusters.csv"));
    let theirs = sizes(&parity_dir().join("clusters.csv"));
    assert_eq!(ours.len(), theirs.len(), "cluster count");
    let (a, b) = (ours[0] as f64, theirs[0] as f64);
    assert!(a <= 2.5 * b && a >= b / 2.5, "largest cluster {a} vs {b}");
}

#[cfg(shared_data)]
#[test]
fn enforcement_mapping_matches_given_the_notebook_risk() {
    // Run our SQL policy over the notebook's own queue (its risk scores and prompts).
    let path = parity_dir().join("review_queue.csv");
    let file = std::fs::File::open(&path).unwrap();
    let (schema, _) = arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(file, None)
        .unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let reader = arrow::csv::ReaderBuilder::new(std::sync::Arc::new(schema))
        .with_header(true)
        .build(file)
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let n = batch.num_rows();
    let mut cols = batch.columns().to_vec();
    let mut fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    cols.push(std::sync::Arc::new(arrow::array::Int64Array::from(
        (0..n as i64).collect::<Vec<_>>(),
    )));
    fields.push(arrow::datatypes::Field::new(
        "queue_pos",
        arrow::datatypes::DataType::Int64,
        false,
    ));
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let table = vigil_warehouse::Table {
        name: "review_queue".into(),
        schema: schema.clone(),
        batches: vec![arrow::record_batch::RecordBatch::try_new(schema, cols).unwrap()],
    };
    let cfg = Config::for_profile(Profile::Notebook);
    let (actions, reasons) = vigil_pipeline::suggest_actions(&table, &cfg.enforcement).unwrap();
    let (_, queue) = read_csv(&path);
    let (_, expected) = read_csv(&parity_dir().join("enforcement_actions.csv"));
    let exp: HashMap<String, (&str, &str)> = expected
        .iter()
        .map(|r| {
            (
                format!("{}|{}", r["day"], r["user_id"]),
                (r["suggested_action"].as_str(), r["reason_code"].as_str()),
            )
        })
        .collect();
    for (i, q) in queue.iter().enumerate() {
        let k = format!("{}|{}", q["day"], q["user_id"]);
        assert_eq!((actions[i].as_str(), reasons[i].as_str()), exp[&k], "{k}");
    }
}

#[test]
fn incident_record_matches_the_notebook() {
    let (_, ours) = read_csv(&outputs().join("incident_log.csv"));
    let (_, theirs) = read_csv(&parity_dir().join("incident_log.csv"));
    assert_eq!(ours, theirs);
    let md = std::fs::read_to_string(outputs().join("incident_inc_1771133198.md")).unwrap();
    assert!(md.contains("spike_block_rate") && md.contains("## Retrospective"));
}

#[test]
fn executive_summary_matches_where_the_model_does_not_enter() {
    let (_, ours) = read_csv(&outputs().join("executive_summary.csv"));
    let (_, theirs) = read_csv(&parity_dir().join("executive_summary.csv"));
    let get = |rows: &Rows, m: &str| {
        rows.iter()
            .find(|r| r["Metric"] == m)
            .map(|r| r["Value"].clone())
            .unwrap_or_else(|| panic!("no summary row {m}"))
    };
    for m in [
        "Total events",
        "Unique users",
        "Days covered",
        "Chat events",
        "Blocks (events)",
        "Warnings (events)",
        "GT abuse users (synthetic)",
        "Avg block rate",
        "Peak block rate",
        "Avg warn rate",
        "Peak warn rate",
        "Model threshold",
        "Queue size",
        "Cluster count (non-dup)",
        "Entity edges",
        "Connected components",
        "Largest component size",
        "Alerts total",
        "Alerts by type",
        "Incidents created",
    ] {
        assert_eq!(get(&ours, m), get(&theirs, m), "{m}");
    }
    // pandas breaks ties between equal sizes in no particular order: compare the sizes
    let sizes = |v: String| -> Vec<String> {
        v.split("; ")
            .map(|p| p.split(':').nth(1).unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        sizes(get(&ours, "Top component sizes")),
        sizes(get(&theirs, "Top component sizes"))
    );
    for m in [
        "Mean risk score",
        "95th percentile risk",
        "Mean uncertainty",
    ] {
        let (a, b): (f64, f64) = (
            get(&ours, m).parse().unwrap(),
            get(&theirs, m).parse().unwrap(),
        );
        assert!((a - b).abs() < 0.002, "{m}: {a} vs {b}");
    }
    let html = std::fs::read_to_string(outputs().join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 12);
    assert!(
        std::fs::read_to_string(outputs().join("summary.json"))
            .unwrap()
            .contains("\"Largest component size\"")
    );
}

/// summary.json once carried every user-day's risk score and uncertainty as raw chart
/// values (36 MB of a 53 MB file at 2M events); it now carries each histogram's bins.
#[test]
fn summary_json_keeps_histogram_bins_not_every_score() {
    let (_, scored) = read_csv(&outputs().join("user_day_scored.csv"));
    let text = std::fs::read_to_string(outputs().join("summary.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let charts = json["charts"].as_array().unwrap();
    for id in ["risk_hist", "uncertainty_hist"] {
        let data = &charts.iter().find(|c| c["id"] == id).unwrap()["data"];
        assert!(data.get("values").is_none(), "{id} holds the raw sample");
        let counts: Vec<f64> = data["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(counts.len(), 30, "{id}");
        assert_eq!(data["edges"].as_array().unwrap().len(), 31, "{id}");
        assert_eq!(counts.iter().sum::<f64>(), scored.len() as f64, "{id}");
    }
}
