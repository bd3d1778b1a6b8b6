//! `vigil bench serve`: a bounded, self-stopping load on a service started on loopback.
//!
//! The service runs in this process (port 0 on 127.0.0.1, its own temporary data directory
//! unless one is given), and keep-alive HTTP/1.1 clients drive it in two phases: batched
//! intake (closed loop: each connection sends its next batch when the last is answered) and
//! single-event requests at a fixed rate (open loop: latency counts from when a request was
//! due, so a stall is not hidden by the client waiting).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{ServeError, ServeOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The model bundle.
    pub model: PathBuf,
    /// Data directory (`None`: a fresh temporary one, removed afterwards).
    pub data: Option<PathBuf>,
    /// Events in the batched phase.
    pub events: usize,
    /// Events per batched request.
    pub batch: usize,
    /// Concurrent connections in the batched phase.
    pub connections: usize,
    /// Distinct users.
    pub users: usize,
    /// Give chat events a prompt text.
    pub text: bool,
    /// How many distinct prompt texts there are (event `i` says text `i % distinct_texts`).
    pub distinct_texts: usize,
    /// Events (JSON texts) sent in the batched phase instead of synthetic ones.
    pub replay: Option<Vec<String>>,
    /// Score rare-harm affinity with this Sentinel index and encoder.
    pub rare_harm: Option<crate::rare::RareHarmOptions>,
    /// Single-event requests per second in the second phase (0: skip it).
    pub rate: u64,
    /// Length of the single-event phase.
    pub seconds: u64,
}

/// One phase's measurements.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PhaseReport {
    /// The phase.
    pub phase: String,
    /// Requests answered 200.
    pub requests: u64,
    /// Events acknowledged.
    pub events: u64,
    /// Requests that failed or were not 200.
    pub errors: u64,
    /// Wall time.
    pub seconds: f64,
    /// Events acknowledged per second.
    pub events_per_s: f64,
    /// Request latency percentiles, milliseconds.
    pub p50_ms: f64,
    #[allow(missing_docs)]
    pub p99_ms: f64,
    #[allow(missing_docs)]
    pub p999_ms: f64,
    #[allow(missing_docs)]
    pub max_ms: f64,
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    /// Each phase.
    pub phases: Vec<PhaseReport>,
    /// Peak resident memory of this process (service and load together), MiB.
    pub peak_rss_mib: f64,
    /// Users in the service's state at the end.
    pub users_in_state: usize,
}

/// A synthetic event as JSON text (valid for the validator; deterministic per index).
fn event_text(i: usize, users: usize, text: Option<usize>, prefix: &str) -> String {
    let user = (i.wrapping_mul(2_654_435_761)) % users.max(1);
    let chat = !i.is_multiple_of(3);
    let ts = 1_767_225_600 + (i as i64 / 50);
    let dt = chrono::DateTime::from_timestamp(ts, 0).unwrap_or_default();
    let prompt = if let Some(distinct) = text.filter(|_| chat) {
        format!(
            "please summarise document number {} for me",
            i % distinct.max(1)
        )
    } else {
        String::new()
    };
    serde_json::json!({
        "event_id": format!("{prefix}{i}"),
        "ts": dt.to_rfc3339(),
        "user_id": format!("u_{user:07}"),
        "ip": format!("10.{}.{}.{}", user % 200, (user / 200) % 250, i % 3),
        "device_id": format!("dev_{user:07}"),
        "payment_id": if user.is_multiple_of(4) { serde_json::Value::Null } else { format!("pay_{user:07}").into() },
        "surface": "web",
        "product": "assistants",
        "event_type": if chat { "chat" } else { "login" },
        "prompt": prompt,
        "tokens_in": 100 + i % 200,
        "tokens_out": 200 + i % 300,
        "latency_ms": 300 + i % 900,
        "blocked": u8::from(i.is_multiple_of(97)),
        "warned": u8::from(i.is_multiple_of(41)),
        "is_abuse_gt": 0,
    })
    .to_string()
}

/// The events of a file (CSV, JSONL or Parquet, read and validated as `vigil ingest` reads
/// them) as the JSON texts a client sends, in file order. A row that does not validate is an
/// error naming its line.
pub fn replay_events(path: &std::path::Path) -> Result<Vec<String>, ServeError> {
    struct Sink {
        out: Vec<String>,
        bad: Option<(u64, String)>,
    }
    impl vigil_events::reader::RowSink for Sink {
        fn good(
            &mut self,
            row: &vigil_events::validate::ValidRow<'_>,
        ) -> Result<(), vigil_events::EventsError> {
            let e = crate::event::Event::from_row(row);
            let ts = chrono::DateTime::from_timestamp_micros(e.ts)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                .unwrap_or_default();
            let mut m = serde_json::json!({
                "event_id": e.event_id,
                "ts": ts,
                "user_id": e.user_id,
                "ip": e.ip,
                "device_id": e.device_id,
                "surface": e.surface,
                "product": e.product,
                "event_type": e.event_type,
                "prompt": e.prompt,
                "tokens_in": e.tokens_in,
                "tokens_out": e.tokens_out,
                "latency_ms": e.latency_ms,
                "blocked": e.blocked,
                "warned": e.warned,
            });
            if let Some(o) = m.as_object_mut() {
                if let Some(p) = e.payment_id {
                    o.insert("payment_id".into(), p.into());
                }
                if let Some(g) = e.is_abuse_gt {
                    o.insert("is_abuse_gt".into(), g.into());
                }
            }
            self.out.push(m.to_string());
            Ok(())
        }
        fn bad(
            &mut self,
            line: u64,
            reason: String,
            _raw: String,
        ) -> Result<(), vigil_events::EventsError> {
            self.bad.get_or_insert((line, reason));
            Ok(())
        }
    }
    let (format, compression) = vigil_events::reader::detect_format(path, None)?;
    let mut sink = Sink {
        out: Vec::new(),
        bad: None,
    };
    vigil_events::reader::read_rows(
        path,
        format,
        compression,
        &vigil_events::Validator::default(),
        &mut sink,
        &|_| {},
    )?;
    if let Some((line, reason)) = sink.bad {
        return Err(ServeError::Usage(format!(
            "{} line {line}: {reason} (the replay needs valid events)",
            path.display()
        )));
    }
    Ok(sink.out)
}

/// A keep-alive HTTP/1.1 connection.
struct Conn {
    r: BufReader<TcpStream>,
    head: String,
}

impl Conn {
    async fn open(addr: SocketAddr, token: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            r: BufReader::new(s),
            head: format!(
                "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            ),
        })
    }

    /// Send one body; the status.
    async fn post(&mut self, body: &[u8]) -> std::io::Result<u16> {
        let req = format!("{}Content-Length: {}\r\n\r\n", self.head, body.len());
        let s = self.r.get_mut();
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        Ok(status)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(phase: &str, mut lat: Vec<f64>, events: u64, errors: u64, seconds: f64) -> PhaseReport {
    lat.sort_by(f64::total_cmp);
    PhaseReport {
        phase: phase.into(),
        requests: lat.len() as u64,
        events,
        errors,
        seconds,
        events_per_s: events as f64 / seconds.max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Run the benchmark; `progress` gets one line per phase.
pub async fn bench(
    opts: BenchOptions,
    config: vigil_config::Config,
    progress: impl Fn(&str),
) -> Result<BenchReport, ServeError> {
    let tmp;
    let data = match &opts.data {
        Some(d) => d.clone(),
        None => {
            tmp = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            tmp.clone()
        }
    };
    let store = crate::TokenStore::open(&data)?;
    let (token, _) = store.create(crate::Scope::Admin, "vigil bench serve")?;
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let serve_opts = ServeOptions {
        data: data.clone(),
        model: Some(opts.model.clone()),
        config,
        config_path: None,
        rare_harm: opts.rare_harm.clone(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        // The bench's own key, beside its throwaway data (never the user's audit key).
        audit_key: Some(data.join("audit.key")),
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            crate::serve_until(
                serve_opts,
                |a| {
                    let _ = addr_tx.send(a);
                },
                async move { stop.notified().await },
            )
            .await
        }
    });
    let addr = addr_rx
        .await
        .map_err(|_| ServeError::Internal("the service did not start".into()))?;
    let prefix = format!("b{}-", std::process::id());
    let mut phases = Vec::new();

    let texts = opts.text.then_some(opts.distinct_texts);
    let replay = opts.replay.clone().map(Arc::new);
    let n_events = replay
        .as_ref()
        .map_or(opts.events, |r| r.len().min(opts.events));
    // Phase 1: batched, closed loop (a replay: each connection sends every `connections`-th
    // batch, so the events go in roughly file order).
    let per_conn = n_events.div_ceil(opts.connections.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..opts.connections.max(1) {
        let (token, prefix) = (token.clone(), prefix.clone());
        let (batch, users, text) = (opts.batch.max(1), opts.users, texts);
        let (from, to) = (c * per_conn, ((c + 1) * per_conn).min(n_events));
        let replay = replay.clone();
        let conns = opts.connections.max(1);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut events, mut errors) = (0u64, 0u64);
            let Ok(mut conn) = Conn::open(addr, &token).await else {
                return (lat, events, 1);
            };
            // A replay interleaves the connections' batches instead of giving each a range.
            let (mut i, to, stride) = match &replay {
                Some(_) => (c * batch, n_events, batch * conns),
                None => (from, to, batch),
            };
            while i < to {
                let n = batch.min(to - i);
                let mut body = String::from("[");
                for k in i..i + n {
                    if k > i {
                        body.push(',');
                    }
                    match &replay {
                        Some(r) => body.push_str(&r[k]),
                        None => body.push_str(&event_text(k, users, text, &prefix)),
                    }
                }
                body.push(']');
                let t = Instant::now();
                match conn.post(body.as_bytes()).await {
                    Ok(200) => {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                        events += n as u64;
                        i += stride.max(n);
                    }
                    Ok(503) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        errors += 1;
                        match Conn::open(addr, &token).await {
                            Ok(c) => conn = c,
                            Err(_) => break,
                        }
                        i += stride.max(n);
                    }
                }
            }
            (lat, events, errors)
        }));
    }
    let (mut lat, mut events, mut errors) = (Vec::new(), 0, 0);
    for t in tasks {
        if let Ok((l, e, x)) = t.await {
            lat.extend(l);
            events += e;
            errors += x;
        }
    }
    let p = report(
        &format!(
            "batched ({} per request, {} connections{})",
            opts.batch,
            opts.connections,
            if replay.is_some() {
                ", replayed from a file"
            } else if opts.text {
                ", with text"
            } else {
                ""
            }
        ),
        lat,
        events,
        errors,
        started.elapsed().as_secs_f64(),
    );
    progress(&format!(
        "{}: {:.0} events/s, p50 {:.1} ms, p99 {:.1} ms, {} errors",
        p.phase, p.events_per_s, p.p50_ms, p.p99_ms, p.errors
    ));
    phases.push(p);

    // Phase 2: single events at a fixed rate, open loop over a pool of connections.
    if opts.rate > 0 && opts.seconds > 0 {
        let total = opts.rate * opts.seconds;
        let conns = 32usize;
        let interval = Duration::from_secs_f64(1.0 / opts.rate as f64);
        let started = Instant::now();
        let (tx, rx) = async_channel(conns * 4);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let rx = rx.clone();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let Ok(mut conn) = Conn::open(addr, &token).await else {
                    return (lat, 0u64, 1u64);
                };
                while let Ok((due, body)) = recv(&rx).await {
                    let due: Instant = due;
                    let body: String = body;
                    match conn.post(body.as_bytes()).await {
                        Ok(200) => lat.push(due.elapsed().as_secs_f64() * 1e3),
                        _ => {
                            errors += 1;
                            if let Ok(c) = Conn::open(addr, &token).await {
                                conn = c;
                            }
                        }
                    }
                }
                let n = lat.len() as u64;
                (lat, n, errors)
            }));
        }
        let base = opts.events;
        for k in 0..total as usize {
            let due = started + interval.mul_f64(k as f64);
            tokio::time::sleep_until(due.into()).await;
            let body = event_text(base + k, opts.users, texts, &prefix);
            if tx.send((due, body)).await.is_err() {
                break;
            }
        }
        drop(tx);
        let (mut lat, mut events, mut errors) = (Vec::new(), 0, 0);
        for t in tasks {
            if let Ok((l, e, x)) = t.await {
                lat.extend(l);
                events += e;
                errors += x;
            }
        }
        let p = report(
            &format!("single events at {} requests/s", opts.rate),
            lat,
            events,
            errors,
            started.elapsed().as_secs_f64(),
        );
        progress(&format!(
            "{}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} errors",
            p.phase, p.p50_ms, p.p99_ms, p.p999_ms, p.errors
        ));
        phases.push(p);
    }
    stop.notify_one();
    let users_in_state = match server.await {
        Ok(Ok(users)) => users,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(ServeError::Internal(e.to_string())),
    };
    if opts.data.is_none() {
        let _ = std::fs::remove_dir_all(&data);
    }
    Ok(BenchReport {
        phases,
        peak_rss_mib: peak_rss_mib(),
        users_in_state,
    })
}

type Job = (Instant, String);

/// A bounded multi-consumer queue (a mutex around a tokio mpsc receiver).
fn async_channel(
    n: usize,
) -> (
    tokio::sync::mpsc::Sender<Job>,
    Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(n);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

async fn recv(rx: &Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>) -> Result<Job, ()> {
    rx.lock().await.recv().await.ok_or(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEADER: &str = "event_id,ts,user_id,ip,device_id,payment_id,surface,product,event_type,\
                          prompt,tokens_in,tokens_out,latency_ms,blocked,warned,is_abuse_gt";

    #[test]
    fn a_replayed_file_becomes_the_events_a_client_sends_and_a_bad_row_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("events.csv");
        std::fs::write(
            &good,
            format!(
                "{HEADER}\n\
                 e1,2026-02-01T05:26:43.523510Z,u1,203.0.113.5,d1,,web,chat,chat,\"hi, there\",3,4,5,0,1,\n\
                 e2,2026-02-01T06:00:00Z,u2,203.0.113.6,d2,p2,ios,files,login,,1,2,3,1,0,1\n"
            ),
        )
        .unwrap();
        let texts = replay_events(&good).unwrap();
        assert_eq!(texts.len(), 2);
        let v = vigil_events::Validator::default();
        let parsed: Vec<crate::event::Event> = texts
            .iter()
            .map(|t| {
                let j = vigil_events::reader::JsonEvent::parse(t).unwrap();
                crate::event::Event::from_row(&j.validate(&v).unwrap())
            })
            .collect();
        assert_eq!(parsed[0].prompt, "hi, there");
        assert_eq!(parsed[0].payment_id, None);
        assert_eq!(parsed[0].is_abuse_gt, None);
        assert_eq!(parsed[0].ts % 1_000_000, 523_510);
        assert_eq!(parsed[1].payment_id.as_deref(), Some("p2"));
        assert_eq!(parsed[1].is_abuse_gt, Some(1));
        assert_eq!(parsed[1].blocked, 1);

        let bad = dir.path().join("bad.csv");
        std::fs::write(
            &bad,
            format!("{HEADER}\ne1,yesterday,u1,ip,d1,,web,chat,chat,hi,3,4,5,0,1,\n"),
        )
        .unwrap();
        let e = replay_events(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.csv line 2"), "{e}");
    }
}
