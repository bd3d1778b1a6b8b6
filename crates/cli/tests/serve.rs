//! End-to-end tests of `vigil serve`: the real binary on 127.0.0.1, driven over real HTTP.
//! Streaming equals batch, tokens and scopes, bad input, restarts and kill -9, safety caps
//! and signed webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::server::{Server, dechunk, http, s, token};
use common::{csv_rows, ok};

/// A CSV event row as the JSON object a client would send (text values; empty = absent).
fn event_json(row: &HashMap<String, String>) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in row {
        if !v.is_empty() {
            m.insert(k.clone(), serde_json::Value::from(v.as_str()));
        }
    }
    serde_json::Value::Object(m)
}

/// A small deterministic generator for shuffles and batch sizes.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Generated events plus a model trained on them.
fn trained(dir: &Path, events: &str) -> (PathBuf, PathBuf) {
    trained_with(dir, events, &[])
}

/// [`trained`] with more `vigil generate` arguments.
fn trained_with(dir: &Path, events: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let input = dir.join("events.csv");
    let mut args = vec![
        "generate",
        "--events",
        events,
        "--seed",
        "11",
        "--end",
        "2026-03-01T00:00:00Z",
        "--out",
        s(&input),
    ];
    args.extend_from_slice(extra);
    ok(&args);
    let run = dir.join("run");
    ok(&["run", "--input", s(&input), "--out", s(&run)]);
    (input, run)
}

fn write_config(dir: &Path, serve: &str) -> PathBuf {
    common::server::write_config(dir, "serve", serve)
}

#[test]
fn streaming_events_through_the_service_equals_the_batch_run_and_score() {
    let dir = tempfile::tempdir().unwrap();
    // An incident day, so that the alert rules have something to raise.
    let (input, run) = trained_with(dir.path(), "20000", &["--incident-day", "5"]);
    let model = run.join("model");
    let scored = dir.path().join("scored");
    ok(&[
        "score",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--out",
        s(&scored),
    ]);
    let data = dir.path().join("live");
    let cfg = write_config(
        dir.path(),
        "state_days = 60\nflush_interval_secs = 1\nalert_interval_secs = 0",
    );
    let ingest = token(&data, "ingest");
    let read = token(&data, "read");
    let admin = token(&data, "admin");
    let server = Server::start(&data, &model, Some(&cfg));

    // Day by day, shuffled within each day, in batches of 1 to 400 events, alternating JSON
    // arrays and NDJSON.
    let rows = csv_rows(&input);
    let mut by_day: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for r in &rows {
        by_day
            .entry(r["ts"][..10].to_string())
            .or_default()
            .push(event_json(r));
    }
    let mut rng = Lcg(7);
    let (mut sent, mut batches) = (0usize, 0usize);
    for (_, mut day) in by_day {
        for i in (1..day.len()).rev() {
            day.swap(i, rng.next(i + 1));
        }
        let mut at = 0;
        while at < day.len() {
            let n = (1 + rng.next(400)).min(day.len() - at);
            let batch = &day[at..at + n];
            let results = if batches.is_multiple_of(2) {
                server.events(&ingest, batch)
            } else {
                let body: String = batch.iter().map(|e| format!("{e}\n")).collect();
                let (st, text) = server.post(
                    "/v1/events",
                    Some(&ingest),
                    "application/x-ndjson",
                    body.as_bytes(),
                );
                assert_eq!(st, 200, "{text}");
                serde_json::from_str(&text).unwrap()
            };
            assert_eq!(results.len(), n);
            for (e, r) in batch.iter().zip(&results) {
                assert_eq!(r["event_id"], e["event_id"]);
                assert_eq!(r["status"], "accepted", "{r}");
                assert!(r["risk"].is_number() && r["action"].is_string(), "{r}");
            }
            at += n;
            sent += n;
            batches += 1;
        }
    }
    assert_eq!(sent, rows.len());

    // Every user-day's features equal user_day_features, its risk equals vigil score's.
    let features = csv_rows(&run.join("user_day_features.csv"));
    let risk: HashMap<(String, String), f64> = csv_rows(&scored.join("user_day_scored.csv"))
        .iter()
        .map(|r| {
            (
                (r["user_id"].clone(), r["day"].clone()),
                r["risk_score"].parse().unwrap(),
            )
        })
        .collect();
    let actions: HashMap<(String, String), (String, String)> =
        csv_rows(&scored.join("enforcement_actions.csv"))
            .iter()
            .map(|r| {
                (
                    (r["user_id"].clone(), r["day"].clone()),
                    (r["suggested_action"].clone(), r["reason_code"].clone()),
                )
            })
            .collect();
    assert!(!actions.is_empty());
    let mut users: HashMap<String, serde_json::Value> = HashMap::new();
    let (mut compared, mut acted) = (0, 0);
    for f in &features {
        let user = &f["user_id"];
        let view = users.entry(user.clone()).or_insert_with(|| {
            let (st, text) = server.get(&format!("/v1/users/{user}"), Some(&read));
            assert_eq!(st, 200, "{text}");
            serde_json::from_str(&text).unwrap()
        });
        let day = view["days"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["day"] == f["day"].as_str())
            .unwrap_or_else(|| panic!("the service lacks {user} on {}", f["day"]));
        for (col, want) in f {
            let got = &day["features"][col.as_str()];
            match col.as_str() {
                "day" | "user_id" => continue,
                "is_abuse_gt" if want.is_empty() => assert!(got.is_null()),
                _ => {
                    let want: f64 = want.parse().unwrap();
                    let got = got
                        .as_f64()
                        .unwrap_or_else(|| panic!("{col} of {user}: {got}"));
                    assert!(
                        close(got, want),
                        "{user} {}: {col} live {got}, batch {want}",
                        f["day"]
                    );
                }
            }
        }
        let key = (user.clone(), f["day"].clone());
        let live = day["score"]["risk"].as_f64().unwrap();
        assert!(
            close(live, risk[&key]),
            "{key:?}: live risk {live}, vigil score {}",
            risk[&key]
        );
        if let Some((action, reason)) = actions.get(&key) {
            assert_eq!(day["score"]["action"], action.as_str(), "{key:?}");
            assert_eq!(day["score"]["rule"], reason.as_str(), "{key:?}");
            acted += 1;
        }
        compared += 1;
    }
    assert_eq!(compared, risk.len());
    assert_eq!(acted, actions.len());

    // The day metrics are the batch's monitoring_metrics, and the alert rules raise the
    // batch's alerts and open its incident (same id: dated at the newest event).
    let (st, text) = server.get("/v1/alerts", Some(&read));
    assert_eq!(st, 200, "{text}");
    let live: serde_json::Value = serde_json::from_str(&text).unwrap();
    let batch_days = csv_rows(&run.join("monitoring_metrics.csv"));
    assert_eq!(live["days"].as_array().unwrap().len(), batch_days.len());
    for (l, b) in live["days"].as_array().unwrap().iter().zip(&batch_days) {
        assert_eq!(l["day"], b["day"].as_str());
        for col in [
            "n_events",
            "n_chat",
            "n_active_users",
            "n_blocked",
            "n_warned",
            "latency_ms_avg",
        ] {
            let want: f64 = b[col].parse().unwrap();
            let got = l[col].as_f64().unwrap();
            assert!(
                close(got, want),
                "{} {col}: live {got}, batch {want}",
                b["day"]
            );
        }
    }
    let (st, text) = server.post("/v1/admin/evaluate", Some(&admin), "", b"");
    assert_eq!(st, 200, "{text}");
    let ev: serde_json::Value = serde_json::from_str(&text).unwrap();
    let key = |day: &str, t: &str, sev: &str, details: &str| format!("{day} {t} {sev} {details}");
    let live_alerts: Vec<String> = ev["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            key(
                a["day"].as_str().unwrap(),
                a["alert_type"].as_str().unwrap(),
                a["severity"].as_str().unwrap(),
                a["details"].as_str().unwrap(),
            )
        })
        .collect();
    let batch_alerts: Vec<String> = csv_rows(&run.join("alerts.csv"))
        .iter()
        .map(|a| key(&a["day"], &a["alert_type"], &a["severity"], &a["details"]))
        .collect();
    assert!(
        batch_alerts.iter().any(|a| a.contains(" high ")),
        "the test data raise no high alert: {batch_alerts:?}"
    );
    assert_eq!(live_alerts, batch_alerts);
    assert_eq!(ev["new_alerts"], ev["alerts"]);
    let incidents = csv_rows(&run.join("incident_log.csv"));
    match incidents.first() {
        Some(inc) => {
            assert_eq!(ev["incident"], inc["incident_id"].as_str());
            let kept = csv_rows(&data.join("incident_log.csv"));
            assert_eq!(kept.len(), 1);
            assert_eq!(kept[0]["summary"], inc["summary"]);
            assert!(
                data.join(format!("incident_{}.md", inc["incident_id"]))
                    .exists()
            );
        }
        None => assert!(ev["incident"].is_null()),
    }
    // An alert is raised once: evaluating again raises nothing new.
    let (_, text) = server.post("/v1/admin/evaluate", Some(&admin), "", b"");
    let again: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(again["alerts"], ev["alerts"]);
    assert!(again["new_alerts"].as_array().unwrap().is_empty() && again["incident"].is_null());

    // Sending it all again stores nothing twice.
    let again = server.events(
        &ingest,
        &rows[..50].iter().map(event_json).collect::<Vec<_>>(),
    );
    assert!(
        again.iter().all(|r| r["status"] == "duplicate"),
        "{again:?}"
    );

    // SIGTERM flushes into the dataset, which the batch then scores exactly as the file.
    let status = server.stop();
    assert!(status.success(), "{status:?}");
    let from_data = dir.path().join("from-data");
    ok(&[
        "score",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--out",
        s(&from_data),
    ]);
    assert_eq!(
        std::fs::read_to_string(scored.join("user_day_scored.csv")).unwrap(),
        std::fs::read_to_string(from_data.join("user_day_scored.csv")).unwrap(),
        "the dataset the service wrote differs from the events sent"
    );

    // Live, a day's case is scored with the history known when the day's events came; the
    // batch scores every day with the whole history. A restart scores every user-day held
    // again (with the whole history), after which the live review queue is the batch's:
    // the same cases with the same enrichment, in the same order of (priority, risk).
    let batch_queue = queue_of(&scored.join("review.db"));
    assert!(!batch_queue.is_empty());
    assert!(
        batch_queue.len() < 2000,
        "the batch queue is cut at review.queue_size; the test needs all of it"
    );
    let server = Server::start(&data, &model, Some(&cfg));
    assert!(server.stop().success());
    let live_queue = queue_of(&data.join("review.db"));
    let ids = |q: &[QueueCase]| q.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    let mut want = ids(&batch_queue);
    let mut got = ids(&live_queue);
    want.sort();
    got.sort();
    if got != want {
        let only_live: Vec<&String> = got.iter().filter(|x| !want.contains(x)).collect();
        let only_batch: Vec<&String> = want.iter().filter(|x| !got.contains(x)).collect();
        panic!(
            "the live queue ({}) holds other cases than the batch's ({}): only live {:?}, only \
             batch {:?}",
            got.len(),
            want.len(),
            &only_live[..only_live.len().min(5)],
            &only_batch[..only_batch.len().min(5)]
        );
    }
    let by_id: HashMap<&str, &QueueCase> = live_queue.iter().map(|c| (c.id.as_str(), c)).collect();
    for b in &batch_queue {
        let l = by_id[b.id.as_str()];
        assert!(close(l.priority, b.priority), "{}: priority", b.id);
        assert!(close(l.risk, b.risk), "{}: risk", b.id);
        assert_eq!(
            (&l.flags, &l.action, &l.reason),
            (&b.flags, &b.action, &b.reason),
            "{}",
            b.id
        );
        assert_eq!(l.prompts, b.prompts, "{}: recent prompts", b.id);
    }
    for (k, (l, b)) in live_queue.iter().zip(&batch_queue).enumerate() {
        assert!(
            close(l.priority, b.priority) && close(l.risk, b.risk),
            "queue position {k}: live {} ({}, {}), batch {} ({}, {})",
            l.id,
            l.priority,
            l.risk,
            b.id,
            b.priority,
            b.risk
        );
    }
    // `vigil review` works from the service's store.
    let listed = ok(&["review", "list", "--out", s(&data), "--limit", "3"]);
    let first = listed.lines().nth(1).unwrap().to_string();
    assert!(first.contains(&live_queue[0].id), "{first}");
}

/// One case of a review queue, as stored.
#[derive(Debug)]
struct QueueCase {
    id: String,
    priority: f64,
    risk: f64,
    flags: String,
    action: String,
    reason: String,
    prompts: String,
}

/// The queue of a review store in queue order, read with SQLite directly.
fn queue_of(db: &Path) -> Vec<QueueCase> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut st = conn
        .prepare(
            "SELECT review_id, priority, risk_score, flags, suggested_action, suggested_reason, \
             recent_prompts FROM cases WHERE queue_pos IS NOT NULL \
             ORDER BY priority DESC, risk_score DESC, queue_pos",
        )
        .unwrap();
    st.query_map([], |r| {
        Ok(QueueCase {
            id: r.get(0)?,
            priority: r.get(1)?,
            risk: r.get(2)?,
            flags: r.get(3)?,
            action: r.get(4)?,
            reason: r.get(5)?,
            prompts: r.get(6)?,
        })
    })
    .unwrap()
    .collect::<Result<Vec<_>, _>>()
    .unwrap()
}

#[test]
fn every_endpoint_but_health_needs_a_token_of_the_right_scope() {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "5000");
    let data = dir.path().join("live");
    let ingest = token(&data, "ingest");
    let read = token(&data, "read");
    let admin = token(&data, "admin");
    let server = Server::start(&data, &run.join("model"), None);
    let one: Vec<serde_json::Value> = csv_rows(&input)[..3].iter().map(event_json).collect();
    let body = serde_json::to_vec(&one).unwrap();

    assert_eq!(server.get("/healthz", None).0, 200);
    assert_eq!(server.get("/readyz", None).0, 200);
    assert_eq!(
        server.post("/v1/events", None, "application/json", &body).0,
        401
    );
    assert_eq!(
        server
            .post(
                "/v1/events",
                Some("vgl_ingest_nope"),
                "application/json",
                &body
            )
            .0,
        401
    );
    assert_eq!(server.get("/metrics", None).0, 401);
    // An ingest token cannot read users; a read token cannot ingest.
    assert_eq!(
        server
            .post("/v1/events", Some(&read), "application/json", &body)
            .0,
        403
    );
    let user = one[0]["user_id"].as_str().unwrap();
    assert_eq!(
        server.get(&format!("/v1/users/{user}"), Some(&ingest)).0,
        403
    );
    assert_eq!(server.post("/v1/admin/flush", Some(&read), "", b"").0, 403);
    // The admin endpoints that change state, and the alerts view.
    for path in ["/v1/admin/reload", "/v1/admin/evaluate"] {
        assert_eq!(server.post(path, None, "", b"").0, 401, "{path}");
        assert_eq!(
            server.post(path, Some("vgl_admin_nope"), "", b"").0,
            401,
            "{path}"
        );
        assert_eq!(server.post(path, Some(&read), "", b"").0, 403, "{path}");
        assert_eq!(server.post(path, Some(&ingest), "", b"").0, 403, "{path}");
    }
    assert_eq!(server.get("/v1/alerts", None).0, 401);
    assert_eq!(server.get("/v1/alerts", Some(&ingest)).0, 403);
    // Refused, they did nothing: no evaluation recorded, no reload attempted.
    assert!(!data.join("live_alerts.jsonl").exists());
    let (_, alerts) = server.get("/v1/alerts", Some(&read));
    let alerts: serde_json::Value = serde_json::from_str(&alerts).unwrap();
    assert!(alerts["last_evaluation"].is_null(), "{alerts}");
    let (_, metrics) = server.get("/metrics", Some(&read));
    assert!(!metrics.contains("vigil_reloads_total"), "{metrics}");
    // The refused requests stored nothing: the same events are new now.
    let first = server.events(&ingest, &one);
    assert!(first.iter().all(|r| r["status"] == "accepted"), "{first:?}");
    assert_eq!(server.get(&format!("/v1/users/{user}"), Some(&read)).0, 200);
    assert_eq!(
        server.get(&format!("/v1/users/{user}"), Some(&admin)).0,
        200
    );
    let (st, metrics) = server.get("/metrics", Some(&read));
    assert_eq!(st, 200);
    assert!(metrics.contains("vigil_events_total"), "{metrics}");
    assert!(metrics.contains("vigil_request_seconds"), "{metrics}");

    // Only hashes are stored; a revoked token stops working without a restart.
    let stored = std::fs::read(data.join("tokens.db")).unwrap();
    let secret = ingest.rsplit('_').next().unwrap();
    assert!(!stored.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let list = ok(&["token", "list", "--data", s(&data)]);
    let id = &secret[..12];
    assert!(list.contains(id) && !list.contains(secret), "{list}");
    ok(&["token", "revoke", "--data", s(&data), id]);
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        server
            .post("/v1/events", Some(&ingest), "application/json", &body)
            .0,
        401
    );
    let bad = common::vigil(&["token", "create", "--data", s(&data), "--scope", "root"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn bad_events_get_the_ingest_reason_and_land_in_the_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "5000");
    let data = dir.path().join("live");
    let cfg = write_config(
        dir.path(),
        "max_body_bytes = 200000\nmax_events_per_request = 50",
    );
    let ingest = token(&data, "ingest");
    let admin = token(&data, "admin");
    let server = Server::start(&data, &run.join("model"), Some(&cfg));
    let good: Vec<serde_json::Value> = csv_rows(&input)[..4].iter().map(event_json).collect();
    let mut no_user = good[1].clone();
    no_user.as_object_mut().unwrap().remove("user_id");
    no_user["event_id"] = "bad-1".into();
    let mut bad_count = good[2].clone();
    bad_count["event_id"] = "bad-2".into();
    bad_count["tokens_in"] = "12x".into();
    let lines: Vec<String> = vec![
        good[0].to_string(),
        no_user.to_string(),
        "[1, 2]".to_string(),
        bad_count.to_string(),
        "{\"event_id\": \"a\", \"event_id\": \"b\"}".to_string(),
        good[3].to_string(),
    ];
    let body = lines.join("\n");
    let (st, text) = server.post(
        "/v1/events",
        Some(&ingest),
        "application/x-ndjson",
        body.as_bytes(),
    );
    assert_eq!(st, 200, "{text}");
    let results: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let status: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        [
            "accepted", "rejected", "rejected", "rejected", "rejected", "accepted"
        ]
    );
    assert_eq!(results[1]["event_id"], "bad-1");

    // `vigil ingest` of the same lines gives the same reasons.
    let file = dir.path().join("same.jsonl");
    std::fs::write(&file, &body).unwrap();
    let other = dir.path().join("other");
    ok(&["ingest", s(&file), "--data", s(&other)]);
    let quarantined: Vec<serde_json::Value> =
        std::fs::read_to_string(other.join("quarantine.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let ingest_reasons: Vec<&str> = quarantined
        .iter()
        .map(|q| q["reason"].as_str().unwrap())
        .collect();
    let live_reasons: Vec<&str> = results
        .iter()
        .filter(|r| r["status"] == "rejected")
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(live_reasons, ingest_reasons);

    // After a flush the rejected events are in the service's quarantine, raw text and all.
    let (st, text) = server.post("/v1/admin/flush", Some(&admin), "", b"");
    assert_eq!(st, 200, "{text}");
    let q = std::fs::read_to_string(data.join("quarantine.jsonl")).unwrap();
    assert_eq!(q.lines().count(), 4, "{q}");
    assert!(q.contains("12x") && q.contains("bad-1"), "{q}");

    // Limits: too many events, too large a body (413); not JSON at all (400).
    let many: Vec<serde_json::Value> = (0..51).map(|_| good[0].clone()).collect();
    let (st, _) = server.post(
        "/v1/events",
        Some(&ingest),
        "application/json",
        &serde_json::to_vec(&many).unwrap(),
    );
    assert_eq!(st, 413);
    let big = vec![b' '; 300_000];
    assert_eq!(
        server
            .post("/v1/events", Some(&ingest), "application/json", &big)
            .0,
        413
    );
    assert_eq!(
        server
            .post("/v1/events", Some(&ingest), "application/json", b"[{]")
            .0,
        400
    );
    // The service is still up and scoring.
    let again = server.events(&ingest, &good[..1]);
    assert_eq!(again[0]["status"], "duplicate");
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_event_and_stores_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "5000");
    let model = run.join("model");
    let data = dir.path().join("live");
    let cfg = write_config(dir.path(), "flush_interval_secs = 1\nflush_events = 700");
    let ingest = token(&data, "ingest");
    let events: Vec<serde_json::Value> = csv_rows(&input).iter().map(event_json).collect();
    let mut acknowledged = std::collections::HashSet::new();
    let mut rng = Lcg(3);
    // Rounds: start, send batches from a client thread, kill -9 at a random moment. Three
    // in the test suite; the fault harness runs more (VIGIL_SERVE_KILLS=20, README).
    let rounds: usize = std::env::var("VIGIL_SERVE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .clamp(1, 100);
    for round in 0..rounds {
        let server = Server::start(&data, &model, Some(&cfg));
        let addr = server.addr.clone();
        let tok = ingest.clone();
        let evs = events.clone();
        let start = rng.next(events.len() / 2);
        let client = std::thread::spawn(move || {
            let mut acked = Vec::new();
            // From a random point, then around again (retries), until the service dies.
            let until = std::time::Instant::now() + Duration::from_secs(30);
            for chunk in evs[start..].chunks(97).chain(evs.chunks(97).cycle()) {
                if std::time::Instant::now() > until {
                    break;
                }
                let body = serde_json::to_vec(chunk).unwrap();
                let Ok(mut c) = TcpStream::connect(&addr) else {
                    break;
                };
                let head = format!(
                    "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {tok}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if c.write_all(head.as_bytes())
                    .and_then(|()| c.write_all(&body))
                    .is_err()
                {
                    break;
                }
                let mut raw = Vec::new();
                if c.read_to_end(&mut raw).is_err() {
                    break;
                }
                let text = String::from_utf8_lossy(&raw);
                let Some((h, b)) = text.split_once("\r\n\r\n") else {
                    break;
                };
                if !h.starts_with("HTTP/1.1 200") {
                    break;
                }
                let Ok(results) = serde_json::from_str::<Vec<serde_json::Value>>(&dechunk_if(h, b))
                else {
                    break;
                };
                for r in results {
                    if r["status"] == "accepted" || r["status"] == "duplicate" {
                        acked.push(r["event_id"].as_str().unwrap().to_string());
                    }
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(300 + 200 * rng.next(6) as u64));
        server.kill9();
        let acked = client.join().unwrap();
        assert!(
            round > 0 || !acked.is_empty(),
            "no request was acknowledged before the kill"
        );
        acknowledged.extend(acked);
    }
    // Restart, flush by SIGTERM: every acknowledged event is stored, exactly once.
    let server = Server::start(&data, &model, Some(&cfg));
    assert!(server.stop().success());
    let stdout = sql_csv(
        &data,
        "SELECT event_id, COUNT(*) AS n FROM events GROUP BY event_id",
    );
    let mut stored = std::collections::HashSet::new();
    for line in stdout.lines().skip(1) {
        let (id, n) = line.rsplit_once(',').unwrap();
        assert_eq!(n, "1", "event {id} stored {n} times");
        stored.insert(id.to_string());
    }
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    eprintln!(
        "{rounds} kill -9s: {} acknowledged events, {} stored, none lost or twice",
        acknowledged.len(),
        stored.len()
    );
    // The review store the kills interrupted still opens and lists.
    let listed = ok(&["review", "list", "--out", s(&data), "--limit", "1"]);
    assert!(listed.starts_with("    #"), "{listed}");
}

/// `vigil sql --data DATA --format csv QUERY`: its standard output.
fn sql_csv(data: &Path, query: &str) -> String {
    common::ok_output(&["sql", "--data", s(data), "--format", "csv", query]).0
}

fn dechunk_if(head: &str, body: &str) -> String {
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    }
}

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

/// A webhook receiver on 127.0.0.1: answers 500 to the first `fail_first` requests, 200
/// after; records everything.
struct Receiver {
    addr: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Delivery>::new()));
        let seen = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { break };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn);
                    // Keep-alive: several requests per connection.
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = HashMap::new();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                            }
                        }
                        let n: usize = headers
                            .get("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; n];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let answered = {
                            let mut g = seen.lock().unwrap();
                            let answered = if g.len() < fail_first { 500 } else { 200 };
                            g.push(Delivery {
                                headers,
                                body,
                                answered,
                            });
                            answered
                        };
                        let reply = format!("HTTP/1.1 {answered} X\r\nContent-Length: 0\r\n\r\n");
                        if r.get_mut().write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { addr, got }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

const HOOK_SECRET: &str = "a-test-signing-secret-of-some-length";

/// The HMAC-SHA256 signature header a receiver expects, computed here independently.
fn expected_signature(ts: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[test]
fn safety_caps_turn_excess_actions_into_reviews_and_webhooks_are_signed_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "8000");
    let model = run.join("model");
    let data = dir.path().join("live");
    let receiver = Receiver::start(1);
    let cap = 3;
    let cfg = write_config(
        dir.path(),
        &format!(
            "cap_actions_per_day = {cap}\n\
             [[serve.webhooks]]\nurl = \"http://{}/hook\"\nsecret_env = \"VIGIL_TEST_HOOK_SECRET\"\n",
            receiver.addr
        ),
    );
    let ingest = token(&data, "ingest");

    // The secret must come from the environment: without it the service refuses to start.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--data", s(&data), "--model", s(&model)])
        .args(["--listen", "127.0.0.1:0", "--config", s(&cfg)])
        .env("VIGIL_AUDIT_KEY", common::test_audit_key())
        .env_remove("VIGIL_TEST_HOOK_SECRET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("VIGIL_TEST_HOOK_SECRET"), "{err}");

    let server = Server::start_env(
        &data,
        &model,
        Some(&cfg),
        &[("VIGIL_TEST_HOOK_SECRET", HOOK_SECRET)],
    );
    let rows = csv_rows(&input);
    // What the service answered: the settled action of each user-day it reported.
    let mut answered: std::collections::BTreeSet<(String, String, String, String)> =
        Default::default();
    let mut capped = 0;
    let mut capped_days = std::collections::BTreeSet::new();
    for chunk in rows.chunks(250) {
        let batch: Vec<serde_json::Value> = chunk.iter().map(event_json).collect();
        for (r, e) in server.events(&ingest, &batch).iter().zip(chunk) {
            let action = r["action"].as_str().unwrap().to_string();
            if r.get("capped_by").is_some() {
                assert_eq!(r["capped_by"], "global", "{r}");
                assert_eq!(action, "escalate");
                assert_eq!(r["rule"], "safety_cap");
                capped += 1;
                capped_days.insert(e["ts"][..10].to_string());
            }
            if action != "allow" {
                answered.insert((
                    e["user_id"].clone(),
                    e["ts"][..10].to_string(),
                    action,
                    r["rule"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    // The batch's own suggestions: days with more automated user-days than the cap must
    // have been capped live.
    let mut automated_per_day: HashMap<String, usize> = HashMap::new();
    for a in csv_rows(&run.join("enforcement_actions.csv")) {
        if a["suggested_action"] != "allow" && a["suggested_action"] != "escalate" {
            *automated_per_day.entry(a["day"].clone()).or_default() += 1;
        }
    }
    let over_cap: Vec<&String> = automated_per_day
        .iter()
        .filter(|(_, n)| **n > cap)
        .map(|(d, _)| d)
        .collect();
    assert!(
        !over_cap.is_empty(),
        "the test needs a day with more than {cap} automated actions: {automated_per_day:?}"
    );
    assert!(capped > 0, "no event's action was capped");

    // Wait for the deliveries to settle (the first one is answered 500 and retried).
    let action_of = |d: &Delivery| -> Option<(String, String, String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&d.body).ok()?;
        (v["kind"] == "action").then(|| {
            (
                v["user_id"].as_str().unwrap_or_default().to_string(),
                v["day"].as_str().unwrap_or_default().to_string(),
                v["action"].as_str().unwrap_or_default().to_string(),
                v["rule"].as_str().unwrap_or_default().to_string(),
            )
        })
    };
    let mut delivered = Vec::new();
    for _ in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        let d = receiver.deliveries();
        let Some(first) = d.first().map(|x| x.headers["idempotency-key"].clone()) else {
            continue;
        };
        let ok: Vec<&Delivery> = d.iter().filter(|x| x.answered == 200).collect();
        let retried = ok.iter().any(|x| x.headers["idempotency-key"] == first);
        let distinct: std::collections::BTreeSet<_> =
            ok.iter().filter_map(|x| action_of(x)).collect();
        if retried && distinct.len() >= answered.len() {
            delivered = d;
            break;
        }
    }
    assert!(
        !delivered.is_empty(),
        "webhook deliveries did not settle within 30 s"
    );
    assert_eq!(delivered[0].answered, 500);
    let retried = &delivered[0].headers["idempotency-key"];
    assert!(
        delivered[1..]
            .iter()
            .any(|d| &d.headers["idempotency-key"] == retried && d.answered == 200),
        "the delivery answered 500 was not retried with the same Idempotency-Key"
    );

    let mut notified: std::collections::BTreeSet<(String, String, String, String)> =
        Default::default();
    let mut alert_days = std::collections::BTreeSet::new();
    let mut per_day_automated: HashMap<String, usize> = HashMap::new();
    let mut keys_of: HashMap<String, String> = HashMap::new();
    for d in delivered.iter().filter(|d| d.answered == 200) {
        let ts = &d.headers["vigil-timestamp"];
        assert_eq!(
            d.headers["vigil-signature"],
            expected_signature(ts, &d.body),
            "bad signature"
        );
        assert_eq!(d.headers["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        // One key per notice: the same key never names two different actions or alerts.
        let what = format!(
            "{} {} {} {} {} {}",
            v["kind"], v["user_id"], v["day"], v["action"], v["rule"], v["cap"]
        );
        let key = d.headers["idempotency-key"].clone();
        if let Some(before) = keys_of.insert(key, what.clone()) {
            assert_eq!(before, what, "one Idempotency-Key for two notices");
        }
        match v["kind"].as_str().unwrap() {
            "action" => {
                let day = v["day"].as_str().unwrap().to_string();
                let action = v["action"].as_str().unwrap().to_string();
                let what = (
                    v["user_id"].as_str().unwrap().to_string(),
                    day.clone(),
                    action.clone(),
                    v["rule"].as_str().unwrap().to_string(),
                );
                if !v["capped_by"].is_null() {
                    assert_eq!(v["capped_by"], "global");
                    assert_ne!(v["suggested_action"], "escalate");
                } else if action != "escalate" && !notified.contains(&what) {
                    *per_day_automated.entry(day).or_default() += 1;
                }
                notified.insert(what);
            }
            "alert" => {
                assert_eq!(v["alert"], "safety_cap");
                assert_eq!(v["cap"], "global");
                assert_eq!(v["limit"], cap as u64);
                assert!(
                    alert_days.insert(v["day"].as_str().unwrap().to_string()),
                    "two alerts for one cap and day"
                );
            }
            other => panic!("unexpected notice kind {other}"),
        }
    }
    // Each settled action the service answered went out, and nothing else.
    assert_eq!(notified, answered);
    for (day, n) in &per_day_automated {
        assert!(
            *n <= cap,
            "{n} automated actions went out on {day}, cap {cap}"
        );
    }
    // Live, a user-day is scored with the history known when its events arrive, so the live
    // days over the cap are those where an answer was capped: each raised one alert.
    assert!(!capped_days.is_empty());
    assert_eq!(
        capped_days, alert_days,
        "cap alerts do not match the days with capped answers"
    );
    let _ = over_cap;
    assert!(server.stop().success());
}

#[test]
fn undelivered_webhooks_are_kept_across_a_graceful_restart() {
    undelivered_webhooks_are_sent_after_a_restart(false);
}

#[test]
fn undelivered_webhooks_are_kept_across_a_kill_9() {
    undelivered_webhooks_are_sent_after_a_restart(true);
}

/// Every answered automated action gets its notice after a restart (stop or kill -9) when
/// no delivery could be made before, and a notice already delivered is not sent again.
fn undelivered_webhooks_are_sent_after_a_restart(kill: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "5000");
    let model = run.join("model");
    let data = dir.path().join("live");
    // A port bound but never accepting (kept bound, so no other test's server can take it):
    // every delivery times out.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    let hook = |addr: &str| {
        format!(
            "[[serve.webhooks]]\nurl = \"http://{addr}/hook\"\nsecret_env = \"VIGIL_TEST_HOOK_SECRET\"\nkinds = [\"action\"]\ntimeout_secs = 1\n"
        )
    };
    let cfg = write_config(dir.path(), &hook(&dead_addr));
    let env = [("VIGIL_TEST_HOOK_SECRET", HOOK_SECRET)];
    let ingest = token(&data, "ingest");
    let server = Server::start_env(&data, &model, Some(&cfg), &env);
    let rows = csv_rows(&input);
    let mut acted = std::collections::BTreeSet::new();
    for chunk in rows.chunks(500) {
        let batch: Vec<serde_json::Value> = chunk.iter().map(event_json).collect();
        for (r, e) in server.events(&ingest, &batch).iter().zip(chunk) {
            if r["action"].is_string() && r["action"] != "allow" {
                acted.insert((e["user_id"].clone(), r["action"].to_string()));
            }
        }
    }
    assert!(!acted.is_empty(), "the test needs automated actions");
    if kill {
        server.kill9();
    } else {
        assert!(server.stop().success());
    }
    drop(dead);
    let undelivered = |data: &Path| -> usize {
        let conn = rusqlite::Connection::open(data.join("webhooks.db")).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM notices WHERE delivered = 0",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
    };
    let pending = undelivered(&data);
    assert!(
        pending >= acted.len(),
        "{pending} notices kept, {} acted",
        acted.len()
    );

    // Restarted with a live receiver, the kept notices are delivered, once each.
    let receiver = Receiver::start(0);
    std::fs::write(&cfg, format!("[serve]\n{}", hook(&receiver.addr))).unwrap();
    let server = Server::start_env(&data, &model, Some(&cfg), &env);
    let mut got = 0;
    for _ in 0..300 {
        got = receiver.deliveries().len();
        if got >= pending && undelivered(&data) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, pending);
    assert_eq!(undelivered(&data), 0);
    let users: std::collections::BTreeSet<String> = receiver
        .deliveries()
        .iter()
        .map(|d| {
            let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
            v["user_id"].as_str().unwrap().to_string()
        })
        .collect();
    let want: std::collections::BTreeSet<String> = acted.iter().map(|(u, _)| u.clone()).collect();
    assert!(
        users == want,
        "notified {} users, {} acted on",
        users.len(),
        want.len()
    );
    // The same events again: answered, nothing new to notify.
    let again: Vec<serde_json::Value> = rows[..500].iter().map(event_json).collect();
    server.events(&ingest, &again);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receiver.deliveries().len(),
        got,
        "a delivered notice was sent again"
    );
    assert!(server.stop().success());
}

/// Copy a bundle directory (flat: manifest, trees, model card).
fn copy_bundle(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        assert!(e.file_type().unwrap().is_file(), "{:?}", e.path());
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_reload_swaps_bundle_and_settings_without_pausing_intake_and_a_bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "6000");
    // A second bundle from the same events, with the logistic regression as risk model.
    let logistic = dir.path().join("logistic.toml");
    std::fs::write(&logistic, "[detection]\nmodel = \"logistic\"\n").unwrap();
    let run2 = dir.path().join("run2");
    ok(&[
        "run",
        "--input",
        s(&input),
        "--out",
        s(&run2),
        "--config",
        s(&logistic),
    ]);
    let model = dir.path().join("model-in-use");
    copy_bundle(&run.join("model"), &model);
    let data = dir.path().join("live");
    let cfg = write_config(dir.path(), "flush_interval_secs = 1");
    let ingest = token(&data, "ingest");
    let read = token(&data, "read");
    let admin = token(&data, "admin");
    let server = Server::start(&data, &model, Some(&cfg));
    let rows: Vec<serde_json::Value> = csv_rows(&input).iter().map(event_json).collect();
    let first = server.events(&ingest, &rows[..1000]);
    let v1 = first[0]["model_version"].as_str().unwrap().to_string();
    let c1 = first[0]["config_version"].as_str().unwrap().to_string();
    let user = rows[0]["user_id"].as_str().unwrap().to_string();
    let risk_of = |server: &Server| -> (f64, String) {
        let (st, text) = server.get(&format!("/v1/users/{user}"), Some(&read));
        assert_eq!(st, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (
            v["days"][0]["score"]["risk"].as_f64().unwrap(),
            v["model_version"].as_str().unwrap().to_string(),
        )
    };

    // Only an admin token may reload.
    assert_eq!(server.post("/v1/admin/reload", Some(&read), "", b"").0, 403);
    // A configuration with a typo is refused with the reason; the old one keeps running.
    std::fs::write(&cfg, "[serve]\ncap_action_per_day = 5\n").unwrap();
    let (st, text) = server.post("/v1/admin/reload", Some(&admin), "", b"");
    assert_eq!(st, 422, "{text}");
    assert!(text.contains("cap_action_per_day"), "{text}");
    let kept = server.events(&ingest, &rows[1000..1100]);
    assert!(kept.iter().all(|r| r["model_version"] == v1.as_str()
        && r["config_version"] == c1.as_str()
        && r["status"] == "accepted"));

    // A new bundle and a changed restart-only setting, swapped while events keep coming.
    copy_bundle(&run2.join("model"), &model);
    std::fs::write(
        &cfg,
        "[serve]\nflush_interval_secs = 1\nflush_events = 777\n",
    )
    .unwrap();
    let addr = server.addr.clone();
    let tok = ingest.clone();
    let stream = rows[1100..].to_vec();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<String>();
    let feeder = std::thread::spawn(move || {
        // Until five answers came from a bundle other than the first one (or the rows end).
        let mut versions: Vec<String> = Vec::new();
        for chunk in stream.chunks(20) {
            let body = serde_json::to_vec(chunk).unwrap();
            let (st, text) = http(
                &addr,
                "POST",
                "/v1/events",
                Some(&tok),
                "application/json",
                &body,
            );
            assert_eq!(st, 200, "{text}");
            let res: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
            assert!(res.iter().all(|r| r["status"] == "accepted"), "{text}");
            let v = res[0]["model_version"].as_str().unwrap().to_string();
            let _ = seen_tx.send(v.clone());
            versions.push(v);
            if versions.iter().filter(|x| **x != versions[0]).count() >= 5 {
                break;
            }
        }
        versions
    });
    // The reload comes while requests are in flight.
    seen_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let (st, text) = server.post("/v1/admin/reload", Some(&admin), "", b"");
    assert_eq!(st, 200, "{text}");
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["details"]["model_version"][0], v1.as_str());
    let v2 = r["details"]["model_version"][1]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v2, v1);
    assert_ne!(r["details"]["config_version"][1], c1.as_str());
    assert_eq!(
        r["details"]["needs_restart"],
        serde_json::json!(["serve.flush_events"])
    );
    let versions = feeder.join().unwrap();
    // Every request was scored by one bundle or the other, the old ones first.
    let switched = versions
        .iter()
        .position(|v| *v == v2)
        .unwrap_or(versions.len());
    assert!(switched > 0 && switched < versions.len(), "{versions:?}");
    assert!(
        versions[..switched].iter().all(|v| *v == v1),
        "{versions:?}"
    );
    assert!(
        versions[switched..].iter().all(|v| *v == v2),
        "{versions:?}"
    );
    let (risk2, version) = risk_of(&server);
    assert_eq!(version, v2);

    // SIGHUP reloads too: the first bundle comes back.
    copy_bundle(&run.join("model"), &model);
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut now = String::new();
    for _ in 0..300 {
        let (_, text) = server.get("/readyz", None);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        now = v["model_version"].as_str().unwrap_or_default().to_string();
        if now == v1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        now, v1,
        "SIGHUP did not bring the first bundle back within 30 s"
    );
    // The same state scored by the two bundles: they differ, so the swap changed scoring.
    let (risk3, version) = risk_of(&server);
    assert_eq!(version, v1);
    assert_ne!(risk2, risk3, "the two bundles score the user-day alike");
    assert!(server.stop().success());
}

#[cfg(shared_data)]
#[test]
fn rare_harm_affinity_live_equals_sentinel_score_over_the_same_messages() {
    let shared = std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shared.join("conformance/index_small/corpus.json")).unwrap(),
    )
    .unwrap();
    let side = |k: &str| -> Vec<String> {
        corpus[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let (pos, neg) = (side("positive_corpus"), side("negative_corpus"));
    let dir = tempfile::tempdir().unwrap();
    let index = common::build_index(dir.path(), &pos[..30], &neg[..150]);
    let m = common::model();
    let (input, run) = trained(dir.path(), "3000");
    let data = dir.path().join("live");
    let ingest = token(&data, "ingest");
    let read = token(&data, "read");
    let server = start_rare(&data, &run.join("model"), Some(&index), &m, None);
    // Held-out harmful messages (and a few ordinary ones) from one user, ordinary messages
    // from another, all on one day, in two requests each.
    let template = csv_rows(&input)
        .into_iter()
        .find(|r| r["event_type"] == "chat")
        .unwrap();
    let chat = |user: &str, i: usize, text: &str| {
        let mut e = event_json(&template);
        e["event_id"] = format!("rare-{user}-{i}").into();
        e["user_id"] = user.into();
        e["ts"] = format!("2026-02-20T10:{i:02}:00Z").into();
        e["prompt"] = text.into();
        e
    };
    let harmful: Vec<String> = pos[30..].iter().chain(&neg[160..164]).cloned().collect();
    let plain: Vec<String> = neg[165..179].to_vec();
    let mut last = HashMap::new();
    for (user, texts) in [("u_rare_harm", &harmful), ("u_rare_plain", &plain)] {
        let events: Vec<serde_json::Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| chat(user, i, t))
            .collect();
        for half in events.chunks(texts.len().div_ceil(2)) {
            let res = server.events(&ingest, half);
            for r in &res {
                assert_eq!(r["status"], "accepted", "{r}");
                assert!(r["rare_harm_affinity"].is_number(), "{r}");
                let (_, ready) = server.get("/readyz", None);
                let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
                assert_eq!(r["index_version"], ready["index_version"], "{r}");
                // The build fitted a calibrated scorer, and the service uses it.
                assert_eq!(ready["rare_harm_scorer"], "calibrated", "{ready}");
                let version = r["index_version"].as_str().unwrap();
                assert!(
                    version.len() == 16 + "+calibrated".len() && version.ends_with("+calibrated"),
                    "{r}"
                );
            }
            last.insert(
                user,
                res.last().unwrap()["rare_harm_affinity"].as_f64().unwrap(),
            );
        }
    }
    // The same windows scored by `vigil sentinel score` (same index, model, scorer and
    // defaults).
    let groups = format!(
        "{}\n{}\n",
        serde_json::json!({"group": "u_rare_harm", "texts": harmful}),
        serde_json::json!({"group": "u_rare_plain", "texts": plain})
    );
    std::fs::write(dir.path().join("g.jsonl"), groups).unwrap();
    let out = ok(&[
        "sentinel",
        "score",
        "--index",
        s(&index),
        "--model",
        s(&m),
        "--input",
        s(&dir.path().join("g.jsonl")),
        "--scorer",
        "calibrated",
    ]);
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let want = v["affinity"].as_f64().unwrap();
        let got = last[v["group"].as_str().unwrap()];
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{}: live {got}, vigil sentinel score {want}",
            v["group"]
        );
    }
    assert!(
        last["u_rare_harm"] > last["u_rare_plain"],
        "harmful {} vs ordinary {}",
        last["u_rare_harm"],
        last["u_rare_plain"]
    );
    // The user's state shows each message's score; a what-if with a repeated text is served
    // from the cache and stores nothing.
    let (st, text) = server.get("/v1/users/u_rare_harm", Some(&read));
    assert_eq!(st, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["rare_harm"]["messages"].as_array().unwrap().len(),
        harmful.len()
    );
    assert_eq!(
        v["rare_harm"]["affinity"].as_f64().unwrap(),
        last["u_rare_harm"]
    );
    assert_eq!(v["rare_harm"]["scorer"], "calibrated");
    // Each message at least as likely harmful as not names its nearest harmful examples:
    // texts of the index's positive side, most similar first; a less likely one names none.
    let mut named = 0;
    for m in v["rare_harm"]["messages"].as_array().unwrap() {
        let near = m["nearest_harmful"].as_array().unwrap();
        let p = m["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p), "a probability: {m}");
        if p >= 0.5 {
            assert!(!near.is_empty() && near.len() <= 3, "{m}");
            named += 1;
        } else {
            assert!(near.is_empty(), "{m}");
        }
        let sims: Vec<f64> = near
            .iter()
            .map(|n| n["similarity"].as_f64().unwrap())
            .collect();
        assert!(sims.windows(2).all(|w| w[0] >= w[1]), "{m}");
        for n in near {
            assert!(
                pos[..30].contains(&n["text"].as_str().unwrap().to_string()),
                "{n}"
            );
        }
    }
    assert!(named > 0, "some harmful message is likely harmful");
    let what_if = serde_json::to_vec(&[chat("u_rare_plain", 30, &harmful[0])]).unwrap();
    let (st, text) = server.post("/v1/score", Some(&read), "application/json", &what_if);
    assert_eq!(st, 200, "{text}");
    let r: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(
        r[0]["rare_harm_affinity"].as_f64().unwrap() >= last["u_rare_plain"],
        "{text}"
    );
    let (_, metrics) = server.get("/metrics", Some(&read));
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(gauge("vigil_sentinel_cache_hits") >= 1.0);
    assert_eq!(
        gauge("vigil_sentinel_encoded_texts") as usize,
        harmful.len() + plain.len(),
        "a text was encoded twice"
    );
    let (_, text) = server.get("/v1/users/u_rare_plain", Some(&read));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["rare_harm"]["messages"].as_array().unwrap().len(),
        plain.len()
    );
    assert!(server.stop().success());

    // With a review threshold between the two, the next message of each user queues the
    // harmful one's day for review (flag rare_harm) and not the ordinary one's.
    let at = (last["u_rare_harm"] + last["u_rare_plain"]) / 2.0;
    let cfg = write_config(dir.path(), &format!("rare_harm_review_at = {at}"));
    let server = start_rare(&data, &run.join("model"), Some(&index), &m, Some(&cfg));
    for (user, text) in [("u_rare_harm", &neg[180]), ("u_rare_plain", &neg[181])] {
        let r = server.events(&ingest, &[chat(user, 40, text)]);
        assert_eq!(r[0]["status"], "accepted", "{r:?}");
    }
    // The reviewer console's case page shows the messages' nearest harmful examples.
    common::server::add_user(&data, "ana", "reviewer", "ana's long password");
    let (_, ana) = common::server::login(&server, "ana", "ana's long password");
    let ana = ana.unwrap();
    let started = std::time::Instant::now();
    let page = loop {
        let p = ana.get("/case/u_rare_harm@2026-02-20");
        if p.status == 200 || started.elapsed() > Duration::from_secs(30) {
            break p;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("nearest harmful examples"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Rare-harm affinity"));
    assert!(server.stop().success());
    let conn = rusqlite::Connection::open(data.join("review.db")).unwrap();
    let flags = |user: &str| -> Option<String> {
        conn.query_row(
            "SELECT flags FROM cases WHERE user_id = ?1 AND queue_pos IS NOT NULL",
            [user],
            |r| r.get(0),
        )
        .ok()
    };
    let harm = flags("u_rare_harm");
    assert!(
        harm.as_deref().is_some_and(|f| f.contains("rare_harm")),
        "{harm:?}"
    );
    let plain = flags("u_rare_plain");
    assert!(
        !plain.as_deref().is_some_and(|f| f.contains("rare_harm")),
        "{plain:?}"
    );
}

/// `vigil serve` with a Sentinel index and its encoder.
/// `vigil serve` with a Sentinel index (`None`: the one the bundle was trained with).
fn start_rare(
    data: &Path,
    model: &Path,
    index: Option<&Path>,
    encoder: &Path,
    config: Option<&Path>,
) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.env("VIGIL_AUDIT_KEY", common::test_audit_key());
    cmd.args(["serve", "--data", s(data), "--model", s(model)])
        .args(["--listen", "127.0.0.1:0", "--sentinel-model", s(encoder)])
        .stderr(Stdio::inherit());
    if let Some(i) = index {
        cmd.args(["--sentinel-index", s(i)]);
    }
    if let Some(c) = config {
        cmd.args(["--config", s(c)]);
    }
    Server::spawned(cmd)
}

#[test]
fn a_vigil_ingest_beside_the_running_service_stores_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (input, run) = trained(dir.path(), "3000");
    let data = dir.path().join("live");
    let cfg = write_config(dir.path(), "flush_interval_secs = 1");
    let ingest = token(&data, "ingest");
    let server = Server::start(&data, &run.join("model"), Some(&cfg));
    let rows: Vec<serde_json::Value> = csv_rows(&input).iter().map(event_json).collect();
    // Half through the service (logged, maybe flushed), then the whole file by `vigil
    // ingest` into the same dataset, then the rest through the service, whose flushes
    // must skip what the ingest stored.
    for chunk in rows[..1500].chunks(100) {
        server.events(&ingest, chunk);
    }
    ok(&["ingest", s(&input), "--data", s(&data)]);
    for chunk in rows[1500..].chunks(100) {
        for r in server.events(&ingest, chunk) {
            assert!(
                r["status"] == "accepted" || r["status"] == "duplicate",
                "{r}"
            );
        }
    }
    assert!(server.stop().success());
    let stdout = sql_csv(
        &data,
        "SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM events",
    );
    assert_eq!(stdout.lines().nth(1), Some("3000,3000"), "{stdout}");
}

/// A bundle whose models learned from the rare-harm features, trained through the cascade
/// as `vigil demo`'s is: served, every user-day's rare-harm features, risk, flags and action
/// equal the batch run's; `vigil score` of the bundle on the same events reproduces the run;
/// and with the default `serve.state_days` the service keeps the window's messages itself.
#[test]
fn a_bundle_that_learned_from_rare_harm_scores_every_user_day_live_as_in_batch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (positives, negatives) = vigil_events::generator::TextPool::builtin().index_material();
    let m = common::model();
    let index = common::build_index(d, &positives, &negatives);
    let input = d.join("events.csv");
    ok(&[
        "generate",
        "--scenario",
        "realistic",
        "--events",
        "20000",
        "--seed",
        "3",
        "--end",
        "2026-02-15T05:26:38Z",
        "--out",
        s(&input),
    ]);
    let run_cfg = d.join("cascade.toml");
    std::fs::write(&run_cfg, "[sentinel]\ncascade = \"on\"\n").unwrap();
    let run = d.join("run");
    ok(&[
        "run",
        "--config",
        s(&run_cfg),
        "--input",
        s(&input),
        "--out",
        s(&run),
        "--sentinel-index",
        s(&index),
        "--sentinel-model",
        s(&m),
    ]);
    let model = run.join("model");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
    let cut = manifest["rare_harm"]["cascade"]["cut"].as_f64();
    assert!(
        cut.is_some_and(|c| c > 0.0 && c < 1.0),
        "{}",
        manifest["rare_harm"]
    );
    assert!(
        manifest["boosted"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "rare_harm_affinity_window")
    );
    let card = std::fs::read_to_string(model.join("model_card.md")).unwrap();
    assert!(
        card.contains(&format!("Sentinel index `{}`", index.display()))
            && card.contains(&format!("{:.3e}", cut.unwrap())),
        "{card}"
    );
    // The bundle applied to the same events (its cut, its index): the run's scores.
    let scored = d.join("scored");
    ok(&[
        "score",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--out",
        s(&scored),
        "--sentinel-model",
        s(&m),
    ]);
    for f in ["user_day_scored.csv", "user_day_features.csv"] {
        assert_eq!(
            std::fs::read_to_string(run.join(f)).unwrap(),
            std::fs::read_to_string(scored.join(f)).unwrap(),
            "{f}"
        );
    }

    let data = d.join("live");
    let ingest = token(&data, "ingest");
    let read = token(&data, "read");
    let cfg = write_config(d, "state_days = 60");
    common::server::add_user(&data, "ana", "reviewer", "ana's long password");
    let server = start_rare(&data, &model, None, &m, Some(&cfg));
    let (_, ready) = server.get("/readyz", None);
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["rare_harm_features"], true, "{ready}");
    assert_eq!(ready["rare_harm_cut"].as_f64(), cut, "{ready}");
    let rows = csv_rows(&input);
    for batch in rows.chunks(700) {
        let events: Vec<serde_json::Value> = batch.iter().map(event_json).collect();
        for r in server.events(&ingest, &events) {
            assert_eq!(r["status"], "accepted", "{r}");
        }
    }
    let features = csv_rows(&run.join("user_day_features.csv"));
    let batch: HashMap<(String, String), HashMap<String, String>> =
        csv_rows(&run.join("user_day_scored.csv"))
            .into_iter()
            .map(|r| ((r["user_id"].clone(), r["day"].clone()), r))
            .collect();
    let actions: HashMap<(String, String), String> = csv_rows(&run.join("enforcement_actions.csv"))
        .iter()
        .map(|r| {
            (
                (r["user_id"].clone(), r["day"].clone()),
                r["suggested_action"].clone(),
            )
        })
        .collect();
    let rare_queued: Vec<(String, String)> = csv_rows(&run.join("review_queue.csv"))
        .iter()
        .filter(|r| r["flag_rare_harm"] == "1")
        .map(|r| (r["user_id"].clone(), r["day"].clone()))
        .collect();
    assert!(
        !rare_queued.is_empty(),
        "the test world flags no rare-harm user-day"
    );
    let mut users: HashMap<String, serde_json::Value> = HashMap::new();
    let (mut compared, mut positive) = (0, 0);
    let day_of = |view: &serde_json::Value, day: &str| -> serde_json::Value {
        view["days"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["day"] == day)
            .cloned()
            .unwrap_or_else(|| panic!("the service lacks {day}: {view}"))
    };
    for f in &features {
        let user = &f["user_id"];
        let view = users.entry(user.clone()).or_insert_with(|| {
            let (st, text) = server.get(&format!("/v1/users/{user}"), Some(&read));
            assert_eq!(st, 200, "{text}");
            serde_json::from_str(&text).unwrap()
        });
        let day = day_of(view, &f["day"]);
        let key = (user.clone(), f["day"].clone());
        for col in ["rare_harm_affinity", "rare_harm_affinity_window"] {
            let want: f64 = f[col].parse().unwrap();
            let got = day["features"][col].as_f64().unwrap();
            assert!(
                close(got, want),
                "{key:?} {col}: live {got}, batch {want}\n{view}\n{:?}",
                features
                    .iter()
                    .filter(|g| &g["user_id"] == user)
                    .collect::<Vec<_>>()
            );
            positive += usize::from(want > 0.5);
        }
        let want: f64 = batch[&key]["risk_score"].parse().unwrap();
        let got = day["score"]["risk"].as_f64().unwrap();
        assert!(close(got, want), "{key:?}: live risk {got}, batch {want}");
        if rare_queued.contains(&key) {
            assert_eq!(day["score"]["needs_review"], true, "{key:?}: {day}");
        }
        if let Some(action) = actions.get(&key) {
            assert_eq!(day["score"]["action"], action.as_str(), "{key:?}");
        }
        compared += 1;
    }
    assert_eq!(compared, batch.len());
    assert!(positive > 0, "no user-day with a notable affinity");
    // The reviewer sees both features on the case page of a user-day the text queued.
    let (_, client) = common::server::login(&server, "ana", "ana's long password");
    let client = client.unwrap();
    let (user, day) = &rare_queued[0];
    let want: f64 = features
        .iter()
        .find(|f| &f["user_id"] == user && &f["day"] == day)
        .unwrap()["rare_harm_affinity_window"]
        .parse()
        .unwrap();
    let mut page = client.get(&format!("/case/{user}@{day}"));
    for _ in 0..50 {
        if page.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        page = client.get(&format!("/case/{user}@{day}"));
    }
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("rare_harm_affinity_window")
            && page.body.contains(&format!("{want:.4}")),
        "{}",
        page.body
    );
    assert!(server.stop().success());

    // Restarted without a configuration (serve.state_days = 2): the state rebuilt from the
    // dataset holds two days per user, and keeps the scored messages of the rare-harm
    // window's days before them, so every day held scores as in the batch.
    let server = start_rare(&data, &model, None, &m, None);
    let mut checked = 0;
    let mut seen = std::collections::HashSet::new();
    for f in features.iter().rev() {
        if !seen.insert(f["user_id"].clone()) || seen.len() > 60 {
            continue;
        }
        let (st, text) = server.get(&format!("/v1/users/{}", f["user_id"]), Some(&read));
        assert_eq!(st, 200, "{text}");
        let view: serde_json::Value = serde_json::from_str(&text).unwrap();
        let days = view["days"].as_array().unwrap();
        assert!(!days.is_empty() && days.len() <= 2, "{view}");
        for day in days {
            let key = (
                f["user_id"].clone(),
                day["day"].as_str().unwrap().to_string(),
            );
            let want = features
                .iter()
                .find(|g| g["user_id"] == key.0 && g["day"] == key.1)
                .unwrap();
            for col in ["rare_harm_affinity", "rare_harm_affinity_window"] {
                let w: f64 = want[col].parse().unwrap();
                let got = day["features"][col].as_f64().unwrap();
                assert!(close(got, w), "{key:?} {col}: live {got}, batch {w}");
            }
            let w: f64 = batch[&key]["risk_score"].parse().unwrap();
            assert!(close(day["score"]["risk"].as_f64().unwrap(), w), "{key:?}");
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked}");
    assert!(server.stop().success());

    // The scores are kept in the data directory (keys and scores, no text) and a restart
    // takes them from there: with every kept score set to 0 (the file's tag untouched), the
    // restarted service's affinities are 0; with another tag the file is ignored.
    let store = data.join("sentinel_scores.bin");
    let bytes = std::fs::read(&store).unwrap();
    assert_eq!(&bytes[..8], b"VGLSCOR1");
    let tag_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let body = 12 + tag_len;
    // Entries, then the SHA-256 of everything before it.
    let end = bytes.len() - 32;
    assert_eq!((end - body) % 16, 0);
    let sealed = |mut content: Vec<u8>| -> Vec<u8> {
        use sha2::Digest;
        content.truncate(end);
        let sum = sha2::Sha256::digest(&content);
        content.extend_from_slice(&sum);
        content
    };
    assert_eq!(sealed(bytes.clone()), bytes);
    let text = std::fs::read_to_string(&input).unwrap();
    let some_prompt = csv_rows(&input)
        .into_iter()
        .find(|r| r["prompt"].len() > 20)
        .unwrap()["prompt"]
        .clone();
    assert!(text.contains(&some_prompt));
    assert!(
        !bytes
            .windows(some_prompt.len())
            .any(|w| w == some_prompt.as_bytes()),
        "the score store holds message text"
    );
    let (user, day) = rare_queued[0].clone();
    let window_of = |server: &Server| -> f64 {
        let (st, text) = server.get(&format!("/v1/users/{user}"), Some(&read));
        assert_eq!(st, 200, "{text}");
        let view: serde_json::Value = serde_json::from_str(&text).unwrap();
        day_of(&view, &day)["features"]["rare_harm_affinity_window"]
            .as_f64()
            .unwrap()
    };
    let mut zeroed = bytes.clone();
    for entry in zeroed[body..end].chunks_exact_mut(16) {
        entry[8..].copy_from_slice(&0f64.to_le_bytes());
    }
    std::fs::write(&store, sealed(zeroed)).unwrap();
    let cfg60 = write_config(d, "state_days = 60");
    let server = start_rare(&data, &model, None, &m, Some(&cfg60));
    let want: f64 = features
        .iter()
        .find(|f| f["user_id"] == user && f["day"] == day)
        .unwrap()["rare_harm_affinity_window"]
        .parse()
        .unwrap();
    // (The aggregate of probabilities 0 is not exactly 0: it is re-based to the base rate.)
    let zero = window_of(&server);
    assert!(
        zero < 1e-6 && want > 0.5,
        "the kept scores were not used: {zero} vs {want}"
    );
    assert!(server.stop().success());
    // Another tag (sealed again), then a damaged entry (not sealed): both ignored.
    let mut other = bytes.clone();
    other[12] ^= 1;
    let mut damaged = bytes.clone();
    damaged[body + 8] ^= 0x40;
    for file in [sealed(other), damaged] {
        std::fs::write(&store, file).unwrap();
        let server = start_rare(&data, &model, None, &m, Some(&cfg60));
        let got = window_of(&server);
        assert!(close(got, want) && want > 0.5, "{got} vs {want}");
        assert!(server.stop().success());
    }

    // Another index (half the harmful examples) is refused: the bundle knows its index by
    // fingerprint, wherever it lies.
    std::fs::create_dir_all(d.join("other")).unwrap();
    let other = common::build_index(
        &d.join("other"),
        &positives[..positives.len() / 2],
        &negatives,
    );
    let o = common::vigil(&[
        "serve",
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--listen",
        "127.0.0.1:0",
        "--sentinel-index",
        s(&other),
        "--sentinel-model",
        s(&m),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is another index"), "{err}");
    // `vigil score` too.
    let o = common::vigil(&[
        "score",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--out",
        s(&d.join("other-scored")),
        "--sentinel-index",
        s(&other),
        "--sentinel-model",
        s(&m),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("is another index or scorer"), "{err}");
}
