//! Parity with the notebook proof-of-concept: ingest its own raw events and compare our core
//! tables, monitoring metrics, alerts, features and PSI with the CSVs it wrote
//! (`../shared/parity/`). Counts must match exactly, floats within 1e-9 relative.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vigil_config::{Config, Profile};
use vigil_pipeline::{RunOptions, run};

fn parity_dir() -> PathBuf {
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
            inputs: vec![parity_dir().join("raw_events.csv.gz")],
            out: out.path().to_path_buf(),
            data: None,
            config: Config::for_profile(Profile::Notebook),
            ingest: Default::default(),
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
