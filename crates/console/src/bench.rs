//! `vigil bench console`: the console's pages timed over loopback against a review store of
//! many cases. Everything lives in a temporary directory; nothing outside it is touched.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vigil_review::{AuditKey, Case, Decision, ReviewStore, case_id};

use crate::{Accounts, Console, ConsoleError, Role};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Cases in the queue.
    pub cases: usize,
    /// Requests per page kind.
    pub requests: usize,
    /// Share of cases already decided.
    pub decided: f64,
}

/// Latency percentiles of one page kind, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Which page.
    pub page: String,
    /// Requests timed.
    pub requests: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The whole result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Cases in the store.
    pub cases: usize,
    /// Decisions in the audit log.
    pub decisions: usize,
    /// Seconds to fill the store.
    pub fill_secs: f64,
    /// Per page kind.
    pub pages: Vec<Latency>,
}

fn get(addr: SocketAddr, path: &str, cookie: &str) -> Result<(u16, usize), ConsoleError> {
    let io = |e| ConsoleError::Internal(format!("bench request {path}: {e}"));
    let mut c = TcpStream::connect(addr).map_err(io)?;
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).map_err(io)?;
    let status = raw
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, raw.len()))
}

/// Makes the path of the next request of one page kind.
type PathOf = Box<dyn FnMut(&mut rand_chacha::ChaCha8Rng) -> String>;

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Fill a store in a temporary directory (removed afterwards) with `opts.cases` cases
/// (seeded), start the console on 127.0.0.1, time each page kind, stop.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, ConsoleError> {
    let dir = std::env::temp_dir().join(format!(
        "vigil-bench-console-{}",
        crate::accounts::random_hex(6)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| ConsoleError::io(&dir, e))?;
    let res = run_in(&dir, opts);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn run_in(dir: &Path, opts: &BenchOptions) -> Result<BenchReport, ConsoleError> {
    let started = Instant::now();
    let db = dir.join("review.db");
    let key = AuditKey::load_or_create(&dir.join("audit.key"))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let flags = [
        "ml",
        "ml,heuristic",
        "uncertain",
        "heuristic",
        "ml,uncertain",
    ];
    let actions = ["allow", "warn", "rate_limit", "block", "escalate"];
    let cases: Vec<Case> = (0..opts.cases)
        .map(|i| {
            let day = format!("2026-02-{:02}", 1 + i % 28);
            let user = format!("u_{:07}", i / 28);
            Case {
                review_id: case_id(&user, &day),
                queue_pos: Some(i),
                day,
                user_id: user,
                risk_score: rng.random::<f64>(),
                uncertainty: rng.random::<f64>(),
                priority: (rng.random::<f64>() * 1000.0).round() / 10.0,
                recent_prompts: "hello there | buy cheap followers now | see you".into(),
                suggested_action: actions[rng.random_range(0..actions.len())].into(),
                suggested_reason: "rule".into(),
                flags: flags[rng.random_range(0..flags.len())].into(),
            }
        })
        .collect();
    let mut store = ReviewStore::create(&db)?;
    store.upsert_cases(&cases)?;
    let decided = ((opts.cases as f64) * opts.decided) as usize;
    for c in cases
        .iter()
        .step_by((opts.cases / decided.max(1)).max(1))
        .take(decided)
    {
        store.decide(
            &Decision {
                review_id: c.review_id.clone(),
                decision: "warn".into(),
                reason_code: "spam".into(),
                notes: String::new(),
                reviewer: "bench".into(),
            },
            "2026-02-28T00:00:00Z",
            &key,
        )?;
    }
    drop(store);
    let fill_secs = started.elapsed().as_secs_f64();
    let accounts = Accounts::open(dir)?;
    accounts.add("bench", Role::Admin, "bench password 123")?;
    let now = chrono::Utc::now().timestamp();
    let (token, _) = accounts
        .login("bench", "bench password 123", now, 3600, 5)?
        .map_err(|e| ConsoleError::Internal(format!("bench login refused: {e:?}")))?;
    let cookie = format!("vigil_session={token}");
    let console = Arc::new(Console::new(
        dir,
        &db,
        AuditKey::load_or_create(&dir.join("audit.key"))?,
        vigil_config::ConsoleConfig::default(),
        vigil_config::AutomationConfig::default(),
        None,
    )?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ConsoleError::Internal(e.to_string()))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| ConsoleError::io(Path::new("127.0.0.1:0"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ConsoleError::io(Path::new("127.0.0.1:0"), e))?;
    let server = runtime.spawn(async move {
        let _ = axum::serve(listener, crate::router(console)).await;
    });
    let page_size = vigil_config::ConsoleConfig::default().page_size;
    let pages = opts.cases / page_size;
    let mut kinds: Vec<(&str, PathOf)> = vec![
        ("queue, first page", Box::new(|_| "/".to_string())),
        (
            "queue, any page",
            Box::new(move |r| {
                format!(
                    "/?status=all&offset={}",
                    r.random_range(0..pages.max(1)) * page_size
                )
            }),
        ),
        (
            "queue, filtered (flag, action)",
            Box::new(|r| {
                format!(
                    "/?flag=uncertain&action={}&status=undecided",
                    ["warn", "block"][r.random_range(0..2)]
                )
            }),
        ),
        (
            "team page (stats + chain verification)",
            Box::new(|_| "/lead".to_string()),
        ),
        (
            "case page",
            Box::new({
                let ids: Vec<String> = cases.iter().map(|c| c.review_id.clone()).collect();
                move |r| format!("/case/{}", ids[r.random_range(0..ids.len())])
            }),
        ),
    ];
    let mut out = Vec::new();
    for (name, path_of) in &mut kinds {
        let mut times = Vec::with_capacity(opts.requests);
        for i in 0..opts.requests + 5 {
            let path = path_of(&mut rng);
            let t = Instant::now();
            let (status, _) = get(addr, &path, &cookie)?;
            if status != 200 {
                return Err(ConsoleError::Internal(format!("{path}: HTTP {status}")));
            }
            // The first few warm the caches.
            if i >= 5 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        out.push(Latency {
            page: (*name).to_string(),
            requests: times.len(),
            p50_ms: percentile(&times, 0.5),
            p99_ms: percentile(&times, 0.99),
            max_ms: times.last().copied().unwrap_or(0.0),
        });
    }
    server.abort();
    Ok(BenchReport {
        cases: opts.cases,
        decisions: decided,
        fill_secs,
        pages: out,
    })
}
