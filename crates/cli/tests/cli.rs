//! End-to-end tests of the `vigil` binary: generation, ingestion of every format, quarantine of
//! bad rows, `--strict`, re-ingestion, and a full `vigil run` on generated data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{ok, vigil};

/// `vigil sql --out OUT --format csv QUERY`, its standard output.
fn sql_csv(out: &Path, query: &str) -> String {
    ok(&[
        "sql",
        "--out",
        out.to_str().unwrap(),
        "--format",
        "csv",
        query,
    ])
}

fn count_events(data: &Path) -> u64 {
    let out = ok(&[
        "sql",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "csv",
        "SELECT COUNT(*) AS n FROM events",
    ]);
    out.lines().nth(1).unwrap().trim().parse().unwrap()
}

const HEADER: &str = "event_id,ts,user_id,ip,device_id,payment_id,surface,product,event_type,prompt,tokens_in,tokens_out,latency_ms,blocked,warned,is_abuse_gt";

fn good(id: u32) -> String {
    format!(
        "e_{id},2026-02-01 05:26:54.143876+00:00,u_1,203.0.113.1,dev_1,pay_1,web,chat,chat,hello there,10,20,300,0,0,0"
    )
}

/// A CSV with a dozen kinds of broken rows between good ones. Returns (bytes, expected
/// quarantine as (line, reason fragment), good row count).
fn broken_csv() -> (Vec<u8>, Vec<(u64, &'static str)>, u64) {
    let mut lines: Vec<Vec<u8>> = vec![HEADER.into(), good(1).into()];
    // A good row whose prompt spans two physical lines: line numbers must still be right.
    lines.push(
        "e_2,2026-02-01T05:26:54Z,u_2,203.0.113.1,dev_1,,ios,chat,chat,\"two\nlines, quoted\",10,20,300,0,0,".into(),
    );
    let bad: Vec<(String, &str)> = vec![
        (
            good(3).replace("u_1,", ","),
            "missing required field `user_id`",
        ),
        (
            good(4).replace("2026-02-01 05:26:54.143876+00:00", "yesterday"),
            "unparsable timestamp",
        ),
        (
            good(5).replace("2026-02-01 05:26:54.143876+00:00", "2026-02-01 05:26:54"),
            "no UTC offset",
        ),
        (
            good(6).replace(",10,20,", ",ten,20,"),
            "`tokens_in` is not an integer",
        ),
        (
            good(7).replace(",10,20,", ",10,20.5,"),
            "`tokens_out` is not an integer",
        ),
        (
            good(8).replace(",chat,hello", ",purchase,hello"),
            "unknown event type",
        ),
        (
            good(9).replace(",300,", ",-300,"),
            "`latency_ms` is negative",
        ),
        (
            good(10).replace(",0,0,0", ",2,0,0"),
            "`blocked` must be 0 or 1",
        ),
        (
            good(11).replace(",0,0,0", ",0,0,yes"),
            "`is_abuse_gt` must be 0 or 1",
        ),
        (
            good(12).replace("hello there", &"x".repeat(70_000)),
            "over the 65536-byte limit",
        ),
        (
            good(13).replace(",0,0,0", ",0,0"),
            "expected 16 fields, found 15",
        ),
        (
            good(14).replace("2026-02-01 05", "2026-02-30 05"),
            "unparsable timestamp",
        ),
    ];
    let mut expected = Vec::new();
    let mut line_no = 4u64; // header=1, good(1)=2, the two-line row=3..4
    for (i, (row, reason)) in bad.into_iter().enumerate() {
        lines.push(row.into());
        line_no += 1;
        expected.push((line_no, reason));
        if i == 5 {
            lines.push(good(100).into());
            line_no += 1;
        }
    }
    // Invalid UTF-8 in the prompt.
    let mut raw: Vec<u8> = good(15).into();
    let pos = raw.windows(5).position(|w| w == b"hello").unwrap();
    raw[pos] = 0xff;
    lines.push(raw);
    line_no += 1;
    expected.push((line_no, "`prompt` is not valid UTF-8"));
    lines.push(good(101).into());
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(&l);
        bytes.push(b'\n');
    }
    (bytes, expected, 4)
}

#[test]
fn every_bad_row_is_quarantined_with_its_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, expected, n_good) = broken_csv();
    let input = dir.path().join("broken.csv");
    std::fs::write(&input, &bytes).unwrap();
    let data = dir.path().join("data");
    let o = vigil(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "{} accepted, {} quarantined",
            n_good,
            expected.len()
        )),
        "{stderr}"
    );
    let q = std::fs::read_to_string(data.join("quarantine.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), expected.len(), "{q}");
    for (rec, (line, reason)) in records.iter().zip(&expected) {
        assert_eq!(rec["line"].as_u64(), Some(*line), "{rec}");
        let got = rec["reason"].as_str().unwrap();
        assert!(
            got.contains(reason),
            "line {line}: {got:?} lacks {reason:?}"
        );
        assert!(rec["source"].as_str().unwrap().ends_with("broken.csv"));
        assert!(!rec["raw"].as_str().unwrap().is_empty());
    }
    assert_eq!(count_events(&data), n_good);

    // Re-ingesting the same file adds nothing and quarantines the same rows again only in its
    // own summary; the stored event count is unchanged.
    let o = vigil(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{n_good} duplicates skipped")));
    assert_eq!(count_events(&data), n_good);
}

#[test]
fn strict_mode_fails_on_the_first_bad_row_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, expected, _) = broken_csv();
    let input = dir.path().join("broken.csv");
    std::fs::write(&input, &bytes).unwrap();
    let data = dir.path().join("data");
    let o = vigil(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--strict",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let (line, reason) = expected[0];
    assert!(stderr.contains(&format!("broken.csv:{line}: ")), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
    assert_eq!(count_events(&data), 0);
    assert!(!data.join("quarantine.jsonl").exists());
}

#[test]
fn a_missing_column_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("narrow.csv");
    std::fs::write(&input, "event_id,ts\ne_1,2026-02-01T00:00:00Z\n").unwrap();
    let o = vigil(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("missing required column(s): user_id"),
        "{stderr}"
    );
}

/// The error for a missing input once read "cannot open x.csv: no such file: no such file":
/// the library error names its cause and the binary printed the cause again.
#[test]
fn a_missing_input_names_the_file_and_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    let o = vigil(&[
        "ingest",
        missing.to_str().unwrap(),
        "--data",
        dir.path().join("d").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("cannot open") && stderr.contains("nope.csv"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("no such file").count(), 1, "{stderr}");
}

#[test]
fn a_bad_query_is_the_users_error_and_a_missing_table_lists_the_tables() {
    let (dir, input) = small_generated_input();
    let data = dir.path().join("d");
    ok(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let o = vigil(&["sql", "--data", data.to_str().unwrap(), "SELEC 1"]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("the query failed") && stderr.contains("SELEC"),
        "{stderr}"
    );
    let o = vigil(&[
        "sql",
        "--data",
        data.to_str().unwrap(),
        "SELECT * FROM nope",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("tables available: events"), "{stderr}");
}

#[test]
fn generation_is_deterministic_per_seed_and_end() {
    let dir = tempfile::tempdir().unwrap();
    let gen_to = |name: &str, seed: &str| {
        let p = dir.path().join(name).join("events.csv");
        ok(&[
            "generate",
            "--events",
            "5000",
            "--seed",
            seed,
            "--end",
            "2026-02-15T05:26:38Z",
            "--out",
            p.to_str().unwrap(),
        ]);
        std::fs::read(p).unwrap()
    };
    let a = gen_to("a", "7");
    let b = gen_to("b", "7");
    let c = gen_to("c", "8");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn generated_data_has_the_notebook_distributions() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("events.csv");
    ok(&[
        "generate",
        "--end",
        "2026-02-15T05:26:38Z",
        "--out",
        p.to_str().unwrap(),
    ]);
    let mut r = csv::Reader::from_path(&p).unwrap();
    let (mut n, mut chats, mut last_ts) = (0u64, 0u64, String::new());
    let mut abusers = std::collections::HashSet::new();
    let mut users = std::collections::HashSet::new();
    for rec in r.records() {
        let rec = rec.unwrap();
        n += 1;
        assert!(&rec[1] >= last_ts.as_str(), "rows sorted by timestamp");
        last_ts = rec[1].to_string();
        if &rec[8] == "chat" {
            chats += 1;
            assert!(!rec[9].is_empty());
        } else {
            assert!(rec[9].is_empty());
        }
        if &rec[8] == "policy_block" {
            assert_eq!(&rec[13], "1");
        }
        users.insert(rec[2].to_string());
        if &rec[15] == "1" {
            abusers.insert(rec[2].to_string());
        }
    }
    assert_eq!(n, 50_000);
    // Chat share: 0.96 * 0.63 + 0.04 * 0.72 = 0.6336 (the notebook's data: 0.6343).
    let share = chats as f64 / n as f64;
    assert!((share - 0.6336).abs() < 0.01, "chat share {share}");
    assert_eq!(abusers.len(), 60);
    assert!(users.len() > 1490 && users.len() <= 1500);
    let gt = std::fs::read_to_string(dir.path().join("ground_truth.csv")).unwrap();
    assert_eq!(gt.lines().count(), 1501);
    assert_eq!(gt.lines().filter(|l| l.contains(",1,")).count(), 60);
}

#[test]
fn every_input_format_and_compression_ingests_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("events.csv");
    let pq_path = dir.path().join("p").join("events.parquet");
    let args = [
        "--events",
        "3000",
        "--seed",
        "3",
        "--end",
        "2026-02-15T00:00:00Z",
    ];
    ok(&[
        &["generate", "--out", csv_path.to_str().unwrap()],
        &args[..],
    ]
    .concat());
    ok(&[&["generate", "--out", pq_path.to_str().unwrap()], &args[..]].concat());
    let raw = std::fs::read(&csv_path).unwrap();
    let gz_path = dir.path().join("events.csv.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let zst_path = dir.path().join("events.csv.zst");
    std::fs::write(&zst_path, zstd::encode_all(&raw[..], 1).unwrap()).unwrap();
    // JSONL: every CSV row as an object, numbers as JSON numbers.
    let mut jsonl = String::new();
    let mut r = csv::Reader::from_reader(&raw[..]);
    let headers = r.headers().unwrap().clone();
    for rec in r.records() {
        let rec = rec.unwrap();
        let mut obj = serde_json::Map::new();
        for (h, v) in headers.iter().zip(rec.iter()) {
            let val = match v.parse::<i64>() {
                Ok(i) if h != "event_id" => serde_json::json!(i),
                _ if v.is_empty() => serde_json::Value::Null,
                _ => serde_json::json!(v),
            };
            obj.insert(h.to_string(), val);
        }
        jsonl.push_str(&serde_json::Value::Object(obj).to_string());
        jsonl.push('\n');
    }
    let jsonl_path = dir.path().join("events.jsonl");
    std::fs::write(&jsonl_path, jsonl).unwrap();

    let mut totals = Vec::new();
    for (i, p) in [&csv_path, &gz_path, &zst_path, &jsonl_path, &pq_path]
        .iter()
        .enumerate()
    {
        let data = dir.path().join(format!("d{i}"));
        ok(&[
            "ingest",
            p.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        let sums = ok(&[
            "sql",
            "--data",
            data.to_str().unwrap(),
            "--format",
            "csv",
            "SELECT COUNT(*) AS n, SUM(tokens_in) AS t, COUNT(payment_id) AS p, \
             SUM(CAST(blocked AS BIGINT)) AS b, MIN(ts) AS first FROM events",
        ]);
        totals.push(sums);
    }
    assert!(totals[0].contains("3000,"), "{}", totals[0]);
    for t in &totals[1..] {
        assert_eq!(t, &totals[0]);
    }
}

#[test]
fn run_writes_every_output_and_sees_the_injected_incident_and_drift() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.parquet");
    ok(&[
        "generate",
        "--events",
        "60000",
        "--seed",
        "11",
        "--incident-day",
        "4",
        "--drift",
        "--rings",
        "3",
        "--end",
        "2026-03-01T12:00:00Z",
        "--out",
        input.to_str().unwrap(),
    ]);
    let out = dir.path().join("out");
    ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for f in [
        "core_users.csv",
        "core_user_day.csv",
        "core_day_metrics.csv",
        "core_users.parquet",
        "core_user_day.parquet",
        "core_day_metrics.parquet",
        "sqlite.db",
        "user_day_features.csv",
        "monitoring_metrics.csv",
        "alerts.csv",
        "drift.csv",
        "run.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(manifest["events_in_dataset"], 60_000);
    assert_eq!(manifest["row_counts"]["core_day_metrics"], 15);
    // Day 4 of a window starting 2026-02-15T12:00Z is 2026-02-19.
    let alerts = std::fs::read_to_string(out.join("alerts.csv")).unwrap();
    assert!(
        alerts.contains("2026-02-19,spike_block_rate,high"),
        "{alerts}"
    );
    let drift = std::fs::read_to_string(out.join("drift.csv")).unwrap();
    let flagged: Vec<&str> = drift.lines().filter(|l| l.ends_with(",1")).collect();
    assert!(
        flagged.iter().any(|l| l.starts_with("tokens_in_sum,")),
        "{drift}"
    );
    // The dataset is queryable together with the run's tables.
    let top = sql_csv(
        &out,
        "SELECT COUNT(*) AS n FROM core_users WHERE n_payments >= 1",
    );
    assert!(top.lines().nth(1).unwrap().parse::<u64>().unwrap() > 1000);
    let ring_users = sql_csv(
        &out,
        "SELECT COUNT(DISTINCT user_id) AS n FROM events WHERE payment_id LIKE 'pay_ring_%'",
    );
    assert!(ring_users.lines().nth(1).unwrap().parse::<u64>().unwrap() >= 3);
    // CSV-only outputs are tables too: the example `vigil --help` shows.
    let worst = sql_csv(
        &out,
        "SELECT day, block_rate FROM monitoring_metrics ORDER BY block_rate DESC LIMIT 3",
    );
    let worst: Vec<&str> = worst.lines().collect();
    assert_eq!(worst[0], "day,block_rate", "{worst:?}");
    assert_eq!(worst.len(), 4, "{worst:?}");
    assert!(
        worst[1].starts_with("2026-02-19,"),
        "the incident day first: {worst:?}"
    );
    let alerts = sql_csv(
        &out,
        "SELECT COUNT(*) AS n FROM alerts WHERE alert_type = 'spike_block_rate'",
    );
    assert_ne!(alerts.lines().nth(1), Some("0"), "{alerts}");
    // An empty result still names its columns.
    let none = sql_csv(
        &out,
        "SELECT user_id, n_devices FROM core_users WHERE n_devices > 1000000",
    );
    assert_eq!(none, "user_id,n_devices\n");
}

/// A temporary directory holding 2,000 generated events as `events.csv`.
fn small_generated_input() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.csv");
    ok(&[
        "generate",
        "--events",
        "2000",
        "--out",
        input.to_str().unwrap(),
    ]);
    (dir, input)
}

#[test]
fn a_failed_background_write_fails_the_run_and_names_the_file() {
    let (dir, input) = small_generated_input();
    // A directory where core_users.csv belongs: the background writer cannot rename its
    // temporary file into place.
    let out = dir.path().join("o");
    std::fs::create_dir_all(out.join("core_users.csv")).unwrap();
    let o = vigil(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("core_users.csv"), "{err}");
    // No manifest claims outputs that were not written, and no temporary file is left.
    assert!(!out.join("run.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_alert_rule_names_itself() {
    let (dir, input) = small_generated_input();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        "[[monitoring.alerts]]\nname = \"broken_rule\"\nseverity = \"low\"\nwhen = \"no_such_column > 1\"\ndetails = \"'x'\"\n",
    )
    .unwrap();
    let o = vigil(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.path().join("o").to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    // The configuration's fault: exit 2, as the README says.
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("broken_rule") && stderr.contains("no_such_column"),
        "{stderr}"
    );
}

#[test]
fn writing_to_a_closed_pipe_ends_quietly_and_to_a_full_disk_fails_without_a_panic() {
    // `vigil config | head -0`: the reader is gone before vigil writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("config")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // `vigil config > /dev/full`: an error exit that says why, not a panic (exit 101).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("config")
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked") && err.contains("error:"), "{err}");
}

#[test]
fn an_enforcement_rule_that_closes_the_generated_case_is_refused_not_injected() {
    let (dir, input) = small_generated_input();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        "[[enforcement.rules]]\naction = \"block\"\nreason = \"spam\"\n\
         when = \"false) THEN 'allow' WHEN (true) THEN 'nuke_account' WHEN (true\"\n",
    )
    .unwrap();
    let out = dir.path().join("o");
    let o = vigil(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("enforcement.rules[0]") && err.contains("not one SQL expression"),
        "{err}"
    );
    // Refused before anything ran: no outputs, no action invented.
    assert!(!out.join("enforcement_actions.csv").exists());
}

#[test]
fn two_ingests_into_one_data_directory_at_once_store_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.csv");
    ok(&[
        "generate",
        "--events",
        "60000",
        "--out",
        input.to_str().unwrap(),
    ]);
    let data = dir.path().join("data");
    // An overlapping cron job: two writers started together on the same files.
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["ingest", input.to_str().unwrap(), "--data"])
            .arg(&data)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    for child in [a, b] {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(count_events(&data), 60_000);
}

#[test]
fn temporaries_left_by_a_killed_ingest_are_removed_by_the_next_writer() {
    let (dir, input) = small_generated_input();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("events")).unwrap();
    let stale = [
        data.join("events")
            .join(".part-00000000000000000001-4242.parquet.tmp"),
        data.join(".quarantine-4242.jsonl.tmp"),
    ];
    for p in &stale {
        std::fs::write(p, vec![0u8; 4096]).unwrap();
    }
    ok(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    for p in &stale {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert_eq!(count_events(&data), 2_000);
}

#[test]
fn a_quarantine_file_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let target = dir.path().join("elsewhere.txt");
    std::fs::write(&target, "precious\n").unwrap();
    std::os::unix::fs::symlink(&target, data.join("quarantine.jsonl")).unwrap();
    let input = dir.path().join("bad.csv");
    std::fs::write(&input, format!("{HEADER}\n{}\ne_2,not a row\n", good(1))).unwrap();
    let o = vigil(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    assert_eq!(
        count_events(&data),
        0,
        "nothing stored when the ingest is refused"
    );
}

#[test]
fn a_truncated_compressed_file_is_bad_input_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv_text = format!("{HEADER}\n");
    let mut jsonl_text = String::new();
    for i in 0..3000 {
        csv_text.push_str(&good(i));
        csv_text.push('\n');
        jsonl_text.push_str(&format!(
            "{{\"event_id\":\"e_{i}\",\"ts\":\"2026-02-01T05:26:54Z\",\"user_id\":\"u_{}\",\"ip\":\"203.0.113.1\",\"device_id\":\"dev_{i}\",\"payment_id\":null,\"surface\":\"web\",\"product\":\"chat\",\"event_type\":\"chat\",\"prompt\":\"hello {i}\",\"tokens_in\":10,\"tokens_out\":20,\"latency_ms\":300,\"blocked\":0,\"warned\":0,\"is_abuse_gt\":0}}\n",
            i % 97
        ));
    }
    for (name, text) in [("t.csv.gz", csv_text), ("t.jsonl.gz", jsonl_text)] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let data = dir.path().join(format!("data_{name}"));
        let o = vigil(&[
            "ingest",
            path.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
        assert_eq!(
            count_events(&data),
            0,
            "{name}: a refused file stores nothing"
        );
    }
}

/// The quarantine records of `data`, as (line, reason).
fn quarantine(data: &Path) -> Vec<(u64, String)> {
    let q = std::fs::read_to_string(data.join("quarantine.jsonl")).unwrap_or_default();
    q.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn csv_line_numbers_are_physical_lines_with_crlf_and_cr_line_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, expected, n_good) = broken_csv();
    for (name, eol) in [("crlf", &b"\r\n"[..]), ("cr", &b"\r"[..])] {
        let mut converted = Vec::new();
        for &b in &bytes {
            if b == b'\n' {
                converted.extend_from_slice(eol);
            } else {
                converted.push(b);
            }
        }
        let input = dir.path().join(format!("{name}.csv"));
        std::fs::write(&input, &converted).unwrap();
        let data = dir.path().join(format!("data_{name}"));
        let o = vigil(&[
            "ingest",
            input.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{n_good} accepted, {} quarantined",
                expected.len()
            )),
            "{name}: {stderr}"
        );
        let got = quarantine(&data);
        let lines: Vec<u64> = got.iter().map(|g| g.0).collect();
        let want: Vec<u64> = expected.iter().map(|e| e.0).collect();
        assert_eq!(lines, want, "{name}");
        for ((_, reason), (line, fragment)) in got.iter().zip(&expected) {
            assert!(reason.contains(fragment), "{name} line {line}: {reason}");
        }
        // --strict names the first bad data row, not the header.
        let o = vigil(&[
            "ingest",
            input.to_str().unwrap(),
            "--data",
            dir.path().join(format!("strict_{name}")).to_str().unwrap(),
            "--strict",
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}.csv:{}: ", expected[0].0)),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_stray_quote_quarantines_one_row_and_the_rest_of_the_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{HEADER}\n{}\n", good(1));
    text.push_str(&good(2).replace(",hello there,", ",\"hello there,"));
    text.push('\n');
    for i in 3..=12 {
        text.push_str(&good(i));
        text.push('\n');
    }
    let input = dir.path().join("stray.csv");
    std::fs::write(&input, &text).unwrap();
    let data = dir.path().join("data");
    let o = vigil(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // Every one of the 13 physical lines is accounted for: the header, 11 stored, 1 bad.
    assert!(
        stderr.contains("12 rows read (13 lines), 11 accepted, 1 quarantined"),
        "{stderr}"
    );
    assert_eq!(count_events(&data), 11);
    let q = quarantine(&data);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, 3);
    assert!(q[0].1.contains("opened on line 3"), "{}", q[0].1);

    // Text after a closing quote is a bad row, not two fields joined.
    let joined = format!(
        "{HEADER}\n{}\n",
        good(1).replace(",hello there,", ",\"hello\"world,")
    );
    let input = dir.path().join("joined.csv");
    std::fs::write(&input, joined).unwrap();
    let data = dir.path().join("data_joined");
    ok(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let q = quarantine(&data);
    assert_eq!(q.len(), 1);
    assert!(q[0].1.contains("after the closing quote"), "{}", q[0].1);
}

/// A CSV of `n_good` good rows (ids from `first`) and `n_bad` rows with an unknown event
/// type, interleaved.
fn mixed_csv(first: u32, n_good: u32, n_bad: u32) -> String {
    let mut text = format!("{HEADER}\n");
    for i in 0..n_good.max(n_bad) {
        if i < n_good {
            text.push_str(&good(first + i));
            text.push('\n');
        }
        if i < n_bad {
            text.push_str(&good(first + 1_000_000 + i).replace(",chat,hello", ",purchase,hello"));
            text.push('\n');
        }
    }
    text
}

/// `vigil ARGS` allowed to write files of at most `blocks` x 512 bytes (RLIMIT_FSIZE): a
/// full disk. Through the shell: `ulimit -f` counts 512-byte blocks, and an ignored SIGXFSZ
/// stays ignored across exec, so a write past the limit fails with EFBIG.
fn vigil_with_file_limit(blocks: u32, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {blocks} && exec \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("VIGIL_AUDIT_KEY", common::test_audit_key())
        .output()
        .unwrap()
}

#[test]
fn a_full_disk_during_vigil_run_fails_naming_the_file_and_leaves_the_output_marked_unfinished() {
    let (dir, input) = small_generated_input();
    let out = dir.path().join("o");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    // 60 KB files: the ingest's Parquet part (~55 KB) fits, the larger outputs do not.
    let r = vigil_with_file_limit(117, &["run", "--input", i, "--out", o]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(o) && stderr.contains("cannot write"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.join(".run-incomplete").exists());
    assert!(!out.join("run.json").exists());
    let leftovers: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Readers refuse the half-written output; a rerun with room finishes it.
    let q = vigil(&["sql", "--out", o, "SELECT COUNT(*) FROM core_users"]);
    assert!(!q.status.success());
    ok(&["run", "--input", i, "--out", o]);
    assert!(out.join("run.json").exists() && !out.join(".run-incomplete").exists());
}

#[test]
fn a_full_disk_during_review_decide_stores_nothing_and_the_chain_verifies() {
    let (dir, input) = small_generated_input();
    let out = dir.path().join("o");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    ok(&["run", "--input", i, "--out", o]);
    let ids: Vec<String> = ok(&["review", "list", "--out", o, "--limit", "2"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    let decide = |id: &str| {
        vec![
            "review".to_string(),
            "decide".into(),
            "--out".into(),
            o.into(),
            id.into(),
            "--decision".into(),
            "block".into(),
            "--reason".into(),
            "spam".into(),
            "--reviewer".into(),
            "alice".into(),
        ]
    };
    let first = decide(&ids[0]);
    ok(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let before = std::fs::read(out.join("review.db")).unwrap();
    // 4 KB files: SQLite cannot write its journal or any page past the first.
    let second = decide(&ids[1]);
    let r = vigil_with_file_limit(8, &second.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("review.db"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(out.join("review.db")).unwrap(), before);
    let verified = ok(&["review", "verify", "--out", o]);
    assert!(verified.contains("1 record(s) verified"), "{verified}");
    // With room again the same decision is recorded, chained after the first.
    ok(&second.iter().map(String::as_str).collect::<Vec<_>>());
    let verified = ok(&["review", "verify", "--out", o]);
    assert!(verified.contains("2 record(s) verified"), "{verified}");
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// No temporary or journal file left in the data directory or its `events/`.
fn assert_no_leftovers(data: &Path) {
    for dir in [data.to_path_buf(), data.join("events")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".tmp") && name != ".commit.json",
                "{name} left in {}",
                dir.display()
            );
        }
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_while_appending_the_quarantine_makes_nothing_of_the_ingest_visible() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A first ingest leaves a ~250 KB quarantine.
    let first = dir.path().join("first.csv");
    std::fs::write(&first, mixed_csv(0, 10, 1200)).unwrap();
    ok(&[
        "ingest",
        first.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let q_before = std::fs::read(data.join("quarantine.jsonl")).unwrap();
    assert!(q_before.len() > 200_000, "{}", q_before.len());
    let log_before = lines_in(&data.join("ingest_log.jsonl"));

    // The second one may write files of at most 150 KB (RLIMIT_FSIZE): its part and its own
    // quarantine temporary fit, appending to the stored quarantine does not: a full disk.
    let second = dir.path().join("second.csv");
    std::fs::write(&second, mixed_csv(100, 50, 100)).unwrap();
    let args = [
        "ingest",
        second.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    let o = vigil_with_file_limit(293, &args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("quarantine.jsonl"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Nothing of it is visible: no events, no quarantine bytes, no log line, no leftovers.
    assert_eq!(count_events(&data), 10);
    assert_eq!(
        std::fs::read(data.join("quarantine.jsonl")).unwrap(),
        q_before
    );
    assert_eq!(lines_in(&data.join("ingest_log.jsonl")), log_before);
    assert_no_leftovers(&data);

    // The retry, with room, stores it once; a second retry adds no quarantine entries.
    ok(&args);
    assert_eq!(count_events(&data), 60);
    let q_len = lines_in(&data.join("quarantine.jsonl"));
    assert_eq!(q_len, 1300);
    let o = vigil(&args);
    assert!(o.status.success());
    assert_eq!(lines_in(&data.join("quarantine.jsonl")), q_len);
    assert_eq!(lines_in(&data.join("ingest_log.jsonl")), log_before + 2);
    let log = std::fs::read_to_string(data.join("ingest_log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["quarantined"], 100);
    assert_eq!(last["quarantine_known"], 100);
    assert_eq!(last["duplicates"], 50);
}

#[cfg(unix)]
#[test]
fn ingests_killed_at_random_points_lose_nothing_and_store_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = dir.path().join("big.csv");
    std::fs::write(&input, mixed_csv(0, 200_000, 3_000)).unwrap();
    let args = [
        "ingest",
        input.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ];
    // How long one whole ingest takes here, so the kill points fall inside one.
    let scratch = dir.path().join("scratch");
    let started = std::time::Instant::now();
    ok(&[
        "ingest",
        input.to_str().unwrap(),
        "--data",
        scratch.to_str().unwrap(),
    ]);
    let whole_ms = (started.elapsed().as_millis() as u64).max(10);
    // Kill points spread over an ingest's life, from a fixed seed; a kill that comes after
    // the ingest ended halves the window (tests run in parallel, so timings drift). Bounded:
    // at most 20 attempts, until 8 kills have landed mid-ingest.
    let mut seed: u64 = 0x5EED;
    let mut window = whole_ms + whole_ms / 4;
    let mut killed_mid_way = 0;
    for _ in 0..20 {
        if killed_mid_way == 8 {
            break;
        }
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let ms = (seed >> 33) % window;
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        if child.try_wait().unwrap().is_none() {
            killed_mid_way += 1;
        } else {
            window = (window / 2).max(1);
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    assert_eq!(killed_mid_way, 8, "kills that landed mid-ingest");
    // One ingest that runs to the end, then the invariants.
    ok(&args);
    assert_eq!(count_events(&data), 200_000);
    assert_eq!(
        sql_csv_data(&data, "SELECT COUNT(DISTINCT event_id) AS n FROM events"),
        "n\n200000\n"
    );
    let q = std::fs::read_to_string(data.join("quarantine.jsonl")).unwrap();
    let mut seen = std::collections::HashSet::new();
    for l in q.lines() {
        let v: serde_json::Value = serde_json::from_str(l).expect("a whole record per line");
        assert!(
            seen.insert(v["line"].as_u64().unwrap()),
            "line quarantined twice: {l}"
        );
    }
    assert_eq!(seen.len(), 3_000);
    for l in std::fs::read_to_string(data.join("ingest_log.jsonl"))
        .unwrap()
        .lines()
    {
        serde_json::from_str::<serde_json::Value>(l).expect("a whole log line");
    }
    assert_no_leftovers(&data);
}

fn sql_csv_data(data: &Path, query: &str) -> String {
    ok(&[
        "sql",
        "--data",
        data.to_str().unwrap(),
        "--format",
        "csv",
        query,
    ])
}

/// Regression: `vigil generate` argument errors exited 3 (bad data) or 1; they are the
/// user's arguments, exit 2, as for every command.
#[test]
fn generate_argument_errors_exit_2_and_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.csv");
    let o = out.to_str().unwrap();
    for (args, flag) in [
        (vec!["--days", "0"], "--days"),
        (vec!["--abuse-rate", "1.5"], "--abuse-rate"),
        (vec!["--abuse-rate", "NaN"], "--abuse-rate"),
        (vec!["--end", "yesterday"], "--end"),
        (vec!["--end", "0000-01-01T00:00:00Z"], "--end"),
        (vec!["--incident-day", "40"], "--incident-day"),
        (
            vec!["--days", "4000000", "--end", "2026-02-15T00:00:00Z"],
            "--days",
        ),
    ] {
        let mut all = vec!["generate", "--events", "100", "--out", o];
        all.extend(&args);
        let r = vigil(&all);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote output");
    }
    let r = vigil(&[
        "generate",
        "--events",
        "10",
        "--out",
        dir.path().join("g.txt").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("--out"));
}

/// Regression: a slow rule ran forever. A rule past `sql.statement_timeout_secs` is stopped
/// and named; `vigil sql --timeout` does the same for an ad hoc query.
#[test]
fn a_slow_rule_is_stopped_at_the_statement_timeout_and_named() {
    let (dir, input) = small_generated_input();
    let cfg = dir.path().join("vigil.toml");
    // Four-way cross join of 2,000 events: 1.6e13 rows to sum (a COUNT(*) would be answered
    // from statistics), far past a second.
    let slow = "(SELECT SUM(a.tokens_in + b.tokens_in + c.tokens_in + d.tokens_in) \
                FROM events a, events b, events c, events d) > 0";
    std::fs::write(
        &cfg,
        format!(
            "[sql]\nstatement_timeout_secs = 1\n\n[[monitoring.alerts]]\nname = \"slow_rule\"\nseverity = \"low\"\nwhen = \"{slow}\"\ndetails = \"'x'\"\n"
        ),
    )
    .unwrap();
    let o = vigil_within(
        120,
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            dir.path().join("o").to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("slow_rule") && stderr.contains("statement_timeout_secs"),
        "{stderr}"
    );

    let data = dir.path().join("o").join("data");
    let o = vigil_within(
        120,
        &[
            "sql",
            "--data",
            data.to_str().unwrap(),
            "--timeout",
            "1",
            &format!("SELECT {slow} AS slow"),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ran longer than 1 s"), "{stderr}");
    let o = vigil(&["sql", "--timeout", "-3", "SELECT 1"]);
    assert_eq!(o.status.code(), Some(2));
}

/// `vigil ARGS`, killed (and the test failed) if it runs past `secs`: a test of a timeout
/// must not hang when the timeout does not work.
fn vigil_within(secs: u64, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vigil {args:?} still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Regression: a killed `vigil run` left new core tables beside the previous run's
/// `run.json` and report. The directory is marked unfinished until the manifest is written,
/// the old manifest is removed first, and readers refuse a marked directory.
#[cfg(unix)]
#[test]
fn a_killed_run_leaves_its_output_marked_unfinished_and_readers_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.csv");
    ok(&[
        "generate",
        "--events",
        "300000",
        "--out",
        input.to_str().unwrap(),
    ]);
    let out = dir.path().join("o");
    let run = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    ok(&run);
    assert!(out.join("run.json").exists());
    // The second run is killed once it has started writing.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(run)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !out.join(".run-incomplete").exists() || out.join("run.json").exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !out.join("run.json").exists(),
        "an old manifest beside new tables"
    );
    let o = vigil(&["sql", "--out", out.to_str().unwrap(), "SELECT 1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not finish") && err.contains("started at"),
        "{err}"
    );
    // Running it again to the end clears the mark.
    ok(&run);
    assert!(!out.join(".run-incomplete").exists());
    assert!(out.join("run.json").exists());
    ok(&[
        "sql",
        "--out",
        out.to_str().unwrap(),
        "SELECT COUNT(*) FROM core_users",
    ]);
}

/// Fault injection: `vigil review decide` killed at seeded points (bounded: 12 kills) never
/// leaves half a record or a chain that fails to verify; a decision is in the log whole or
/// not at all, and the anchor beside the key may lag but never contradicts the store.
#[cfg(unix)]
#[test]
fn decisions_killed_at_random_points_leave_a_chain_that_verifies() {
    let (dir, input) = small_generated_input();
    let out = dir.path().join("o");
    ok(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let o = out.to_str().unwrap();
    let list = ok(&["review", "list", "--out", o, "--limit", "12"]);
    let ids: Vec<String> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect();
    assert!(!ids.is_empty(), "{list}");
    let key = dir.path().join("keys").join("audit.key");
    let decide = |id: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
        c.args(["review", "decide", "--out", o, id, "--decision", "warn"])
            .args(["--reason", "spam", "--reviewer", "alice"])
            .env("VIGIL_AUDIT_KEY", &key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    // One whole decision first: it creates the key, and times one decision.
    let started = std::time::Instant::now();
    assert!(decide(&ids[0]).status().unwrap().success());
    let one_us = (started.elapsed().as_micros() as u64).max(1_000);
    let mut seed: u64 = 0xDEC1DE;
    for i in 0..12 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let us = (seed >> 33) % one_us;
        let mut child = decide(&ids[i % ids.len()]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_micros(us));
        let _ = child.kill();
        let _ = child.wait();
    }
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "review",
            "verify",
            "--out",
            o,
            "--audit-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        vigil(&args)
    };
    let v = verify(&[]);
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(
        v.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let n: usize = text
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    assert!((1..=13).contains(&n), "{text}");
    // A decision after the kills completes and is anchored.
    assert!(decide(&ids[0]).status().unwrap().success());
    let v = verify(&[]);
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(v.status.success(), "{text}");
    assert!(
        text.contains(&format!("{} record(s) verified", n + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("anchor: matches the head recorded at #{}", n + 1)),
        "{text}"
    );
}
