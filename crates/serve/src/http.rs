//! The HTTP surface: routes, authentication, request parsing and the JSON answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use vigil_events::reader::JsonEvent;

use crate::event::{Event, day_text};
use crate::intake::{Rejected, WriteError};
use crate::scoring::{Row, Score, Scorer};
use crate::state::UserView;
use crate::tokens::Scope;
use crate::{Live, Reloaded, ServeError, Service};

type Svc = Arc<Service>;

pub(crate) fn router(svc: Svc) -> Router {
    let limit = svc.cfg.serve.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/events", post(post_events))
        .route("/v1/score", post(post_score))
        .route("/v1/users/{id}", get(get_user))
        .route("/v1/admin/flush", post(post_flush))
        .route("/v1/admin/reload", post(post_reload))
        .route("/v1/admin/evaluate", post(post_evaluate))
        .route("/v1/alerts", get(get_alerts))
        .route("/v1/appeals", post(post_appeal))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(svc)
}

/// Token refresh, idle eviction and gauges, until the service stops.
pub(crate) async fn housekeeping(svc: Svc) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        if let Err(e) = svc.auth.refresh() {
            tracing::warn!("cannot re-read the token store: {e}");
        }
        if n.is_multiple_of(30) {
            let gone = svc.state.evict_idle();
            if gone > 0 {
                tracing::info!(users = gone, "evicted idle users");
            }
            // Decisions and cap counters of days no longer held in state.
            if let Some(day) = svc.state.newest_day() {
                svc.actions.forget_before(day - svc.state.days_kept());
                svc.webhooks.forget_before(day - svc.state.days_kept());
            }
        }
        metrics::gauge!("vigil_users_in_state").set(svc.state.users() as f64);
        metrics::gauge!("vigil_intake_queue_depth").set(svc.intake.depth() as f64);
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn unavailable(message: &str, retry_after_s: u32) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Check the bearer token for `needed`; the error is the answer to send.
fn authorize(svc: &Service, headers: &HeaderMap, needed: Scope) -> Result<Scope, Box<Response>> {
    let challenge = |message: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, message);
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Box::new(challenge(
            "missing `Authorization: Bearer TOKEN` (create a token with `vigil token create`)",
        )));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    match svc.auth.scope_of(token) {
        None => Err(Box::new(challenge("unknown or revoked token"))),
        Some(s) if s.grants(needed) => Ok(s),
        Some(s) => Err(Box::new(error(
            StatusCode::FORBIDDEN,
            format!(
                "a `{}` token cannot do this; it needs the `{}` scope",
                s.as_str(),
                needed.as_str()
            ),
        ))),
    }
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(svc): State<Svc>) -> Response {
    if svc.intake.alive() {
        axum::Json(json!({
            "status": "ready",
            "model_version": svc.live().scorer.version(),
            "index_version": svc.rare.as_ref().map(|r| r.version()),
            "rare_harm_scorer": svc.rare.as_ref().map(|r| r.kind().name()),
            // Whether the model scores with the rare-harm features, and the cascade cut
            // messages are screened with (null: every message exactly).
            "rare_harm_features": svc.live().scorer.rare_window().is_some(),
            "rare_harm_cut": svc.rare.as_ref().and_then(|r| r.cut()),
        }))
        .into_response()
    } else {
        unavailable("the intake writer has stopped; see the service log", 5)
    }
}

async fn metrics_text(State(svc): State<Svc>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&svc, &headers, Scope::Read) {
        return *r;
    }
    metrics::gauge!("vigil_users_in_state").set(svc.state.users() as f64);
    metrics::gauge!("vigil_intake_queue_depth").set(svc.intake.depth() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        svc.metrics.render(),
    )
        .into_response()
}

/// One item of a request body: its JSON text, or why it cannot be read at all.
enum Item {
    Text(String),
    Unreadable { raw: String, reason: String },
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| {
            matches!(
                t.as_str(),
                "application/x-ndjson"
                    | "application/ndjson"
                    | "application/jsonl"
                    | "application/x-jsonlines"
            )
        })
}

/// Split a body into event texts: NDJSON (one object per line) or JSON (one object or an
/// array of them). A body that is not JSON at all is the client's error (400).
fn split_body(body: &[u8], ndjson: bool) -> Result<Vec<Item>, String> {
    if ndjson {
        let mut out = Vec::new();
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match std::str::from_utf8(line) {
                Ok(t) if t.trim().is_empty() => {}
                Ok(t) => out.push(Item::Text(t.to_string())),
                Err(e) => out.push(Item::Unreadable {
                    raw: vigil_events::reader::escape_bytes(line),
                    reason: format!(
                        "not valid UTF-8 (byte {} of the line); the raw line is kept with \\xNN escapes",
                        e.valid_up_to() + 1
                    ),
                }),
            }
        }
        return Ok(out);
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "the body is not valid UTF-8 (byte {}); send UTF-8 JSON or NDJSON",
            e.valid_up_to() + 1
        )
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)
            .map_err(|e| format!("the body is not a JSON array of events: {e}"))?;
        Ok(items
            .into_iter()
            .map(|r| Item::Text(r.get().to_string()))
            .collect())
    } else if trimmed.is_empty() {
        Err("the body is empty; send one event object, an array of them, or NDJSON".into())
    } else {
        Ok(vec![Item::Text(text.trim().to_string())])
    }
}

/// A rejection's class for the metrics label (never the value itself).
fn reason_class(reason: &str) -> String {
    if let Some(rest) = reason.split('`').nth(1)
        && vigil_events::COLUMNS.contains(&rest)
    {
        return format!("field_{rest}");
    }
    if reason.starts_with("invalid JSON") {
        "invalid_json".into()
    } else if reason.starts_with("not a JSON object") {
        "not_an_object".into()
    } else if reason.starts_with("not valid UTF-8") {
        "not_utf8".into()
    } else {
        "other".into()
    }
}

/// The `event_id` a client sent, when it can be read (for rejected events too).
fn claimed_id(text: &str) -> Value {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("event_id").and_then(Value::as_str).map(Value::from))
        .unwrap_or(Value::Null)
}

/// Parsed and validated request items, in order.
struct Parsed {
    /// Per item: `Ok(index into events)` or `Err((event_id, reason, raw))`.
    items: Vec<Result<usize, (Value, String, String)>>,
    events: Vec<Event>,
}

fn parse_events(svc: &Service, headers: &HeaderMap, body: &[u8]) -> Result<Parsed, Box<Response>> {
    let items =
        split_body(body, is_ndjson(headers)).map_err(|m| error(StatusCode::BAD_REQUEST, m))?;
    let max = svc.cfg.serve.max_events_per_request;
    if items.len() > max {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} events in one request; at most {max} (serve.max_events_per_request)",
                items.len()
            ),
        )));
    }
    let mut events = Vec::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Item::Text(t) => {
                match JsonEvent::parse(&t)
                    .and_then(|e| e.validate(&svc.validator).map(|r| Event::from_row(&r)))
                {
                    Ok(e) => {
                        out.push(Ok(events.len()));
                        events.push(e);
                    }
                    Err(reason) => out.push(Err((claimed_id(&t), reason, t))),
                }
            }
            Item::Unreadable { raw, reason } => out.push(Err((Value::Null, reason, raw))),
        }
    }
    Ok(Parsed { items: out, events })
}

fn score_json(s: &Score, live: &Live) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("risk".into(), json!(s.risk));
    m.insert("action".into(), json!(s.action));
    m.insert("rule".into(), json!(s.rule));
    m.insert("needs_review".into(), json!(s.needs_review));
    if let Some(cap) = &s.capped_by {
        m.insert("capped_by".into(), json!(cap));
    }
    m.insert("model_version".into(), json!(live.scorer.version()));
    m.insert("config_version".into(), json!(live.config_version));
    m
}

/// Snapshots of the users of `keys` as they stand (or would stand, with `what_if` events);
/// taken once per request and shared by scoring and the rare-harm windows.
fn views_of(
    svc: &Service,
    keys: &[(String, i32)],
    what_if: Option<(&[Event], &[Option<f64>])>,
) -> HashMap<String, UserView> {
    let mut views = HashMap::new();
    for (user, _) in keys {
        if !views.contains_key(user) {
            let v = match what_if {
                Some((extra, rare)) => svc.state.what_if(user, extra, rare),
                None => svc.state.view(user),
            };
            if let Some(v) = v {
                views.insert(user.clone(), v);
            }
        }
    }
    views
}

/// Score the user-days `keys` from the users' snapshots.
pub(crate) fn score_keys(
    scorer: &Scorer,
    keys: &[(String, i32)],
    views: &HashMap<String, UserView>,
) -> Result<HashMap<(String, i32), Score>, crate::ServeError> {
    let mut rows = Vec::new();
    let mut row_keys = Vec::new();
    for (user, day) in keys {
        let Some(v) = views.get(user) else { continue };
        if let Some(i) = v.days.iter().position(|d| d.day == *day) {
            rows.push(Row {
                user_id: user,
                day: &v.days[i],
                context: &v.context,
                prompts: &v.prompts[i],
                rare: scorer.rare_features(v, i),
            });
            row_keys.push((user.clone(), *day));
        }
    }
    let scores = scorer.score(&rows)?;
    Ok(row_keys.into_iter().zip(scores).collect())
}

fn distinct_keys(events: &[Event], which: impl Fn(usize) -> bool) -> Vec<(String, i32)> {
    let mut keys: Vec<(String, i32)> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| which(*i))
        .map(|(_, e)| (e.user_id.clone(), e.day()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Pass each scored user-day's suggestion through the safety caps; with `notify`, new
/// automated actions and first cap hits of a day go to the webhooks.
fn settle_actions(
    svc: &Service,
    scores: &mut HashMap<(String, i32), Score>,
    live: &Live,
    notify: bool,
) {
    for ((user, day), s) in scores.iter_mut() {
        let (outcome, hit) = svc.actions.settle(user, *day, &s.action, &s.rule);
        if let Some(hit) = hit.filter(|_| notify) {
            metrics::counter!("vigil_safety_cap_hits_total", "cap" => hit.cap.clone()).increment(1);
            tracing::warn!(
                cap = %hit.cap,
                limit = hit.limit,
                day = %day_text(hit.day),
                "safety cap reached: further automated actions today become `escalate` (review)"
            );
            svc.webhooks.send(&crate::webhook::Notice::new(
                "alert",
                &format!("safety_cap\u{0}{}\u{0}{}", hit.cap, hit.day),
                json!({
                    "kind": "alert",
                    "alert": "safety_cap",
                    "cap": hit.cap,
                    "limit": hit.limit,
                    "day": day_text(hit.day),
                    "message": format!(
                        "more than {} automated actions by `{}` on {}; the rest are sent to review",
                        hit.limit, hit.cap, day_text(hit.day)
                    ),
                }),
            ), hit.day);
        }
        // Every answer's automated action is offered to the webhooks, not only a new one:
        // the notice record drops what it has seen, and a retried request after a kill -9
        // (whose notice was never recorded) sends it then.
        if notify && outcome.action != "allow" {
            if outcome.new {
                metrics::counter!("vigil_actions_total", "action" => outcome.action.clone())
                    .increment(1);
            }
            svc.webhooks.send(
                &crate::webhook::Notice::new(
                    "action",
                    &format!(
                        "{user}\u{0}{day}\u{0}{}\u{0}{}",
                        outcome.action, outcome.rule
                    ),
                    json!({
                        "kind": "action",
                        "user_id": user,
                        "day": day_text(*day),
                        "action": outcome.action,
                        "rule": outcome.rule,
                        "capped_by": outcome.capped_by,
                        "suggested_action": s.action,
                        "suggested_rule": s.rule,
                        "risk": s.risk,
                        "priority": s.priority,
                        "model_version": live.scorer.version(),
                        "config_version": live.config_version,
                    }),
                ),
                *day,
            );
        }
        s.action = outcome.action;
        s.rule = outcome.rule;
        s.capped_by = outcome.capped_by;
    }
}

/// A user's rare-harm affinity and the scores of the messages in their window.
pub(crate) struct Rare {
    pub(crate) affinity: f64,
    pub(crate) messages: Vec<(String, f64)>,
}

/// Each user's message window (the last `recent_messages` prompts), from their snapshot.
pub(crate) fn windows(
    svc: &Service,
    views: &HashMap<String, UserView>,
) -> Vec<(String, Vec<String>)> {
    let n = svc.cfg.serve.recent_messages;
    views
        .iter()
        .map(|(u, v)| {
            let w = crate::rare::window(&v.prompts, n)
                .into_iter()
                .map(str::to_string)
                .collect();
            (u.clone(), w)
        })
        .collect()
}

/// Rare-harm affinity per user (empty without `--sentinel-index`); new texts are encoded on
/// the blocking pool. A failure is logged and leaves the affinity out of the answer.
pub(crate) async fn rare_of(
    svc: &Svc,
    windows: Vec<(String, Vec<String>)>,
) -> HashMap<String, Rare> {
    let Some(r) = svc.rare.clone() else {
        return HashMap::new();
    };
    let started = Instant::now();
    let res = tokio::task::spawn_blocking(move || -> Result<_, ServeError> {
        let texts: Vec<&str> = windows
            .iter()
            .flat_map(|(_, w)| w.iter().map(String::as_str))
            .collect();
        // Stored messages were kept when they came in; what-if texts are not kept.
        let scores = r.message_scores(&texts, false)?;
        let mut out = HashMap::new();
        let mut at = 0;
        for (user, w) in &windows {
            let s = &scores[at..at + w.len()];
            at += w.len();
            let refs: Vec<&str> = w.iter().map(String::as_str).collect();
            out.insert(
                user.clone(),
                Rare {
                    affinity: r.affinity(&refs, s),
                    messages: w.iter().cloned().zip(s.iter().copied()).collect(),
                },
            );
        }
        Ok(out)
    })
    .await;
    metrics::histogram!("vigil_rare_harm_seconds").record(started.elapsed().as_secs_f64());
    match res {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::error!("rare-harm scoring failed: {e}");
            HashMap::new()
        }
        Err(e) => {
            tracing::error!("rare-harm scoring stopped: {e}");
            HashMap::new()
        }
    }
}

/// Each event's chat message scored against the service's index (`None` for other events,
/// empty prompts, a service without an index, or a failure, which is logged: the state then
/// misses the message until a restart rebuilds it).
/// With `keep`, the new scores are kept across restarts (stored events, not what-if ones).
pub(crate) async fn message_scores_of(
    svc: &Svc,
    events: &[&Event],
    keep: bool,
) -> Vec<Option<f64>> {
    let none = vec![None; events.len()];
    let Some(r) = svc.rare.clone() else {
        return none;
    };
    let prompts: Vec<Option<String>> = events
        .iter()
        .map(|e| crate::rare::chat_prompt(e).map(str::to_string))
        .collect();
    if prompts.iter().all(Option::is_none) {
        return none;
    }
    let res = tokio::task::spawn_blocking(move || {
        let refs: Vec<Option<&str>> = prompts.iter().map(Option::as_deref).collect();
        r.prompt_scores(&refs, keep)
    })
    .await;
    match res {
        Ok(Ok(scores)) => scores,
        Ok(Err(e)) => {
            tracing::error!("rare-harm scoring of new messages failed: {e}");
            none
        }
        Err(e) => {
            tracing::error!("rare-harm scoring of new messages stopped: {e}");
            none
        }
    }
}

/// How many nearest harmful examples a scored message shows.
pub(crate) const NEAREST: usize = 3;

/// The nearest harmful examples of each distinct text whose score is notable (above 0, or a
/// calibrated probability of at least one half; empty without
/// an index, or on an error, which is logged).
pub(crate) async fn nearest_of(svc: &Svc, rare: &Rare) -> HashMap<String, Vec<(String, f64)>> {
    let Some(r) = svc.rare.clone() else {
        return HashMap::new();
    };
    let mut texts: Vec<String> = rare
        .messages
        .iter()
        .filter(|(_, s)| r.is_notable(*s))
        .map(|(t, _)| t.clone())
        .collect();
    texts.sort();
    texts.dedup();
    if texts.is_empty() {
        return HashMap::new();
    }
    let res = tokio::task::spawn_blocking(move || {
        r.nearest_harmful(&texts, NEAREST)
            .map(|n| texts.into_iter().zip(n).collect::<HashMap<_, _>>())
    })
    .await;
    match res {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::error!("nearest harmful examples failed: {e}");
            HashMap::new()
        }
        Err(e) => {
            tracing::error!("nearest harmful examples stopped: {e}");
            HashMap::new()
        }
    }
}

static REQUEST_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn post_events(State(svc): State<Svc>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    if let Err(r) = authorize(&svc, &headers, Scope::Ingest) {
        return *r;
    }
    let parsed = match parse_events(&svc, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    drop(body);
    let rid = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let source = format!("vigil serve request {rid}");
    let rejected: Vec<Rejected> = parsed
        .items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| {
            it.as_ref().err().map(|(_, reason, raw)| Rejected {
                source: source.clone(),
                line: i as u64 + 1,
                reason: reason.clone(),
                raw: raw.clone(),
            })
        })
        .collect();
    let n_rejected = rejected.len();
    let stored = match svc.intake.write(parsed.events.clone(), rejected).await {
        Ok(s) => s,
        Err(WriteError::Saturated) => {
            metrics::counter!("vigil_saturated_total").increment(1);
            return unavailable("the intake log is saturated; retry after the delay", 1);
        }
        Err(WriteError::Failed(m)) => {
            return unavailable(
                &format!("{m}; nothing of this request was stored, retry it"),
                5,
            );
        }
    };
    let events = parsed.events;
    if svc.rare.is_none() {
        for (e, new) in events.iter().zip(&stored) {
            if *new {
                svc.state.apply(e, None);
            }
        }
    } else {
        // Scoring waits for the encoder: it and the fold run in a task of their own, so a
        // client that hangs up meanwhile cannot leave stored events out of the state.
        let fresh: Vec<Event> = events
            .iter()
            .zip(&stored)
            .filter(|(_, new)| **new)
            .map(|(e, _)| e.clone())
            .collect();
        let task = {
            let svc = svc.clone();
            tokio::spawn(async move {
                let refs: Vec<&Event> = fresh.iter().collect();
                let scores = message_scores_of(&svc, &refs, true).await;
                for (e, score) in fresh.iter().zip(scores) {
                    svc.state.apply(e, score);
                }
            })
        };
        if let Err(e) = task.await {
            tracing::error!("folding stored events into the state stopped: {e}");
        }
    }
    let keys = distinct_keys(&events, |_| true);
    let live = svc.live();
    let views = views_of(&svc, &keys, None);
    let mut scores = match score_keys(&live.scorer, &keys, &views) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("scoring failed after the events were stored: {e}");
            HashMap::new()
        }
    };
    settle_actions(&svc, &mut scores, &live, true);
    let rare = if svc.rare.is_some() {
        rare_of(&svc, windows(&svc, &views)).await
    } else {
        HashMap::new()
    };
    drop(views);
    if let Some(at) = live.cfg.serve.rare_harm_review_at {
        for ((user, _), s) in scores.iter_mut() {
            s.rare_harm |= rare.get(user).is_some_and(|r| r.affinity >= at);
        }
    }
    svc.cases
        .update(scores.iter().map(|((u, d), s)| (u.as_str(), *d, s)));
    let index_version = svc.rare.as_ref().map(|r| r.version());
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    let results: Vec<Value> = parsed
        .items
        .iter()
        .map(|it| match it {
            Ok(i) => {
                let e = &events[*i];
                let status = if stored[*i] {
                    accepted += 1;
                    "accepted"
                } else {
                    duplicates += 1;
                    "duplicate"
                };
                let mut m = scores
                    .get(&(e.user_id.clone(), e.day()))
                    .map(|s| score_json(s, &live))
                    .unwrap_or_default();
                if let Some(r) = rare.get(&e.user_id) {
                    m.insert("rare_harm_affinity".into(), json!(r.affinity));
                    m.insert("index_version".into(), json!(index_version));
                }
                m.insert("event_id".into(), json!(e.event_id));
                m.insert("status".into(), json!(status));
                Value::Object(m)
            }
            Err((id, reason, _)) => {
                metrics::counter!("vigil_events_rejected_total", "reason" => reason_class(reason))
                    .increment(1);
                json!({"event_id": id, "status": "rejected", "reason": reason})
            }
        })
        .collect();
    metrics::counter!("vigil_events_total", "status" => "accepted").increment(accepted);
    metrics::counter!("vigil_events_total", "status" => "duplicate").increment(duplicates);
    metrics::counter!("vigil_events_total", "status" => "rejected").increment(n_rejected as u64);
    metrics::histogram!("vigil_request_seconds", "route" => "events")
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(
        request = %rid,
        accepted,
        duplicates,
        rejected = n_rejected,
        "events request in {:.1} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    axum::Json(Value::Array(results)).into_response()
}

/// `POST /v1/appeals` (review scope): `{"case": "USER@DAY", "statement": "...",
/// "opened_by": "ticket-123"}` opens an appeal against the case's latest decision; it goes
/// to the console's queue for a reviewer other than the one who decided.
async fn post_appeal(State(svc): State<Svc>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = authorize(&svc, &headers, Scope::Review) {
        return *r;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        case: String,
        #[serde(default)]
        statement: String,
        #[serde(default)]
        opened_by: String,
    }
    let b: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"case\": \"USER@DAY\", \"statement\": \"...\", \"opened_by\": \"...\"}}: {e}"
                ),
            );
        }
    };
    if b.statement.len() > 10_000 || b.opened_by.len() > 200 {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "statement at most 10,000 bytes, opened_by at most 200",
        );
    }
    let db = crate::cases::store_path(&svc.data);
    let res = tokio::task::spawn_blocking(move || {
        let mut store = vigil_review::ReviewStore::open(&db)?;
        let by = if b.opened_by.is_empty() {
            "api".to_string()
        } else {
            format!("api: {}", b.opened_by)
        };
        store.open_appeal(&b.case, &b.statement, &by, chrono::Utc::now().timestamp())
    })
    .await;
    match res {
        Ok(Ok(a)) => {
            tracing::info!(appeal = a.id, case = a.review_id, "appeal opened");
            (StatusCode::CREATED, axum::Json(a)).into_response()
        }
        Ok(Err(vigil_review::ReviewError::UnknownCase(c))) => {
            error(StatusCode::NOT_FOUND, format!("no case `{c}`"))
        }
        Ok(Err(e @ vigil_review::ReviewError::NotAllowed(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn post_score(State(svc): State<Svc>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    if let Err(r) = authorize(&svc, &headers, Scope::Read) {
        return *r;
    }
    let parsed = match parse_events(&svc, &headers, &body) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let keys = distinct_keys(&parsed.events, |_| true);
    let live = svc.live();
    let all: Vec<&Event> = parsed.events.iter().collect();
    let rare_scores = message_scores_of(&svc, &all, false).await;
    let views = views_of(&svc, &keys, Some((&parsed.events, &rare_scores)));
    let scores = match score_keys(&live.scorer, &keys, &views) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let rare = if svc.rare.is_some() {
        rare_of(&svc, windows(&svc, &views)).await
    } else {
        HashMap::new()
    };
    let results: Vec<Value> = parsed
        .items
        .iter()
        .map(|it| match it {
            Ok(i) => {
                let e = &parsed.events[*i];
                let mut m = scores
                    .get(&(e.user_id.clone(), e.day()))
                    .map(|s| score_json(s, &live))
                    .unwrap_or_default();
                if let Some(r) = rare.get(&e.user_id) {
                    m.insert("rare_harm_affinity".into(), json!(r.affinity));
                }
                m.insert("event_id".into(), json!(e.event_id));
                m.insert("status".into(), json!("scored"));
                Value::Object(m)
            }
            Err((id, reason, _)) => json!({"event_id": id, "status": "rejected", "reason": reason}),
        })
        .collect();
    metrics::histogram!("vigil_request_seconds", "route" => "score")
        .record(started.elapsed().as_secs_f64());
    axum::Json(Value::Array(results)).into_response()
}

async fn get_user(State(svc): State<Svc>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let started = Instant::now();
    if let Err(r) = authorize(&svc, &headers, Scope::Read) {
        return *r;
    }
    let Some(view) = svc.state.view(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "the service holds no state for this user (never seen, or evicted as idle)",
        );
    };
    let keys: Vec<(String, i32)> = view.days.iter().map(|d| (id.clone(), d.day)).collect();
    let live = svc.live();
    let views = HashMap::from([(id.clone(), view)]);
    let Some(view) = views.get(&id) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the user's snapshot vanished",
        );
    };
    let scores = match score_keys(&live.scorer, &keys, &views) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let days: Vec<Value> = view
        .days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let s = scores.get(&(id.clone(), d.day));
            let mut features = json!(d);
            // The rare-harm features, when the bundle learned from them.
            if let (Some((day, window)), Some(f)) =
                (live.scorer.rare_features(view, i), features.as_object_mut())
            {
                f.insert("rare_harm_affinity".into(), json!(day));
                f.insert("rare_harm_affinity_window".into(), json!(window));
            }
            json!({
                "day": day_text(d.day),
                "features": features,
                "score": s,
            })
        })
        .collect();
    let rare = if svc.rare.is_some() {
        rare_of(&svc, windows(&svc, &views)).await.remove(&id)
    } else {
        None
    };
    let nearest = match &rare {
        Some(r) => nearest_of(&svc, r).await,
        None => HashMap::new(),
    };
    let scorer = svc.rare.as_ref().map(|r| r.kind().name());
    let rare_harm = rare.map(|r| {
        json!({
            "affinity": r.affinity,
            "scorer": scorer,
            "messages": r
                .messages
                .iter()
                .map(|(t, s)| {
                    let near: Vec<Value> = nearest
                        .get(t)
                        .map(|n| n.iter().map(|(x, sim)| json!({"text": x, "similarity": sim})).collect())
                        .unwrap_or_default();
                    json!({"text": t, "score": s, "nearest_harmful": near})
                })
                .collect::<Vec<_>>(),
        })
    });
    let newest = chrono::DateTime::from_timestamp_micros(view.newest_ts)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    metrics::histogram!("vigil_request_seconds", "route" => "user")
        .record(started.elapsed().as_secs_f64());
    axum::Json(json!({
        "user_id": id,
        "newest_event": newest,
        "context": view.context,
        "velocity": view.velocity,
        "days": days,
        "rare_harm": rare_harm,
        "model_version": live.scorer.version(),
        "config_version": live.config_version,
    }))
    .into_response()
}

async fn post_flush(State(svc): State<Svc>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&svc, &headers, Scope::Admin) {
        return *r;
    }
    match svc.intake.flush().await {
        Ok(n) => axum::Json(json!({"flushed": n})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn post_reload(State(svc): State<Svc>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&svc, &headers, Scope::Admin) {
        return *r;
    }
    let done = svc.reload().await;
    log_reload(&done);
    match done {
        Ok(r) => axum::Json(json!({"reloaded": true, "details": r})).into_response(),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload refused, the running configuration and bundle are kept: {e}"),
        ),
    }
}

/// Log (and count) what a reload did.
pub(crate) fn log_reload(done: &Result<Reloaded, ServeError>) {
    match done {
        Ok(r) => {
            metrics::counter!("vigil_reloads_total", "result" => "ok").increment(1);
            tracing::info!(
                model = %r.model.display(),
                model_version = %r.model_version.1,
                config_version = %r.config_version.1,
                "reloaded (model {} -> {}, config {} -> {})",
                r.model_version.0,
                r.model_version.1,
                r.config_version.0,
                r.config_version.1
            );
            if !r.needs_restart.is_empty() {
                tracing::warn!(
                    "changed settings that take effect only after a restart: {}",
                    r.needs_restart.join(", ")
                );
            }
        }
        Err(e) => {
            metrics::counter!("vigil_reloads_total", "result" => "refused").increment(1);
            tracing::error!("reload refused, the running configuration and bundle are kept: {e}");
        }
    }
}

/// Days since 1970 of a `YYYY-MM-DD` day (0 if it is not one).
pub(crate) fn day_number(day: &str) -> i32 {
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |t| (t.and_utc().timestamp().div_euclid(86_400)) as i32)
}

/// Evaluate the alert rules every `alert_interval_secs` of the configuration in force.
pub(crate) async fn alerting(svc: Svc) {
    loop {
        let every = svc.live().cfg.serve.alert_interval_secs;
        if every == 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        tokio::time::sleep(Duration::from_secs(every)).await;
        if let Err(e) = evaluate_now(&svc).await {
            metrics::counter!("vigil_alert_evaluations_total", "result" => "failed").increment(1);
            tracing::error!("alert evaluation failed: {e}");
        }
    }
}

/// Evaluate the alert rules over the live day metrics now; new alerts go to the log, the
/// `alert` webhooks and `live_alerts.jsonl`, a new high one opens an incident.
pub(crate) async fn evaluate_now(svc: &Svc) -> Result<crate::monitor::Evaluation, ServeError> {
    let started = Instant::now();
    let live = svc.live();
    let days = svc.state.day_totals();
    let scratch = svc.monitor.scratch();
    let rules = live.cfg.monitoring.clone();
    let alerts =
        tokio::task::spawn_blocking(move || crate::monitor::evaluate(&days, &rules, &scratch))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))??;
    let as_of = svc
        .state
        .newest_ts()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .unwrap_or_default();
    let ev = svc.monitor.record(alerts, as_of)?;
    metrics::counter!("vigil_alert_evaluations_total", "result" => "ok").increment(1);
    metrics::histogram!("vigil_alert_evaluation_seconds").record(started.elapsed().as_secs_f64());
    metrics::gauge!("vigil_alerts_firing").set(ev.alerts.len() as f64);
    for a in &ev.new_alerts {
        metrics::counter!("vigil_alerts_total", "severity" => a.severity.clone()).increment(1);
        tracing::warn!(
            alert = %a.alert_type,
            severity = %a.severity,
            day = %a.day,
            "alert: {}",
            a.details
        );
        svc.webhooks.send(
            &crate::webhook::Notice::new(
                "alert",
                &format!("monitoring\u{0}{}\u{0}{}", a.alert_type, a.day),
                json!({
                    "kind": "alert",
                    "alert": a.alert_type,
                    "severity": a.severity,
                    "day": a.day,
                    "details": a.details,
                    "config_version": live.config_version,
                }),
            ),
            day_number(&a.day),
        );
    }
    if let Some(id) = &ev.incident {
        metrics::counter!("vigil_incidents_total").increment(1);
        tracing::error!(incident = %id, "high-severity alert: incident opened (incident_log.csv)");
    }
    Ok(ev)
}

async fn post_evaluate(State(svc): State<Svc>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&svc, &headers, Scope::Admin) {
        return *r;
    }
    match evaluate_now(&svc).await {
        Ok(ev) => axum::Json(ev).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_alerts(State(svc): State<Svc>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&svc, &headers, Scope::Read) {
        return *r;
    }
    let days: Vec<Value> = svc
        .state
        .day_totals()
        .iter()
        .map(|(d, t)| {
            json!({
                "day": day_text(*d),
                "n_events": t.n_events,
                "n_chat": t.n_chat,
                "n_active_users": t.n_active_users,
                "n_blocked": t.n_blocked,
                "n_warned": t.n_warned,
                "latency_ms_avg": t.latency_sum as f64 / t.n_events.max(1) as f64,
            })
        })
        .collect();
    axum::Json(json!({"days": days, "last_evaluation": svc.monitor.last()})).into_response()
}

/// Score every user-day held in state and derive what the stored events imply: the review
/// cases, and the safety caps' counts (without sending notices). Run at start; returns the
/// number of user-days scored.
pub(crate) fn derive_all(svc: &Service) -> Result<usize, ServeError> {
    let mut keys = svc.state.user_days();
    // Time order, so the caps count a day's actions in the order the day went.
    keys.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let live = svc.live();
    // Rare-harm cases are not derived again (that would encode every message held): with
    // them configured, a case is only ever added here, never taken out of the queue.
    let keep_queued = svc.rare.is_some() && live.cfg.serve.rare_harm_review_at.is_some();
    for chunk in keys.chunks(8192) {
        let mut scores = score_keys(&live.scorer, chunk, &views_of(svc, chunk, None))?;
        settle_actions(svc, &mut scores, &live, false);
        svc.cases.update(
            scores
                .iter()
                .filter(|(_, s)| !keep_queued || s.needs_review || s.capped_by.is_some())
                .map(|((u, d), s)| (u.as_str(), *d, s)),
        );
    }
    Ok(keys.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_events_as_json_arrays_objects_or_ndjson() {
        let texts = |items: Vec<Item>| -> Vec<String> {
            items
                .into_iter()
                .map(|i| match i {
                    Item::Text(t) => t,
                    Item::Unreadable { reason, .. } => format!("!{reason}"),
                })
                .collect()
        };
        assert_eq!(
            texts(split_body(br#"[{"a":1}, {"b":2}]"#, false).unwrap()),
            vec![r#"{"a":1}"#, r#"{"b":2}"#]
        );
        assert_eq!(
            texts(split_body(b" {\"a\":1}\n", false).unwrap()),
            vec![r#"{"a":1}"#]
        );
        let nd = texts(split_body(b"{\"a\":1}\r\n\n{\"b\":\xff}\n", true).unwrap());
        assert_eq!(nd.len(), 2);
        assert!(nd[1].starts_with("!not valid UTF-8"));
        assert!(split_body(b"[{\"a\":1}", false).is_err());
        assert!(split_body(b"  ", false).is_err());
    }

    #[test]
    fn rejection_classes_name_the_field_not_the_value() {
        assert_eq!(
            reason_class("missing required field `user_id`"),
            "field_user_id"
        );
        assert_eq!(reason_class("invalid JSON: EOF"), "invalid_json");
        assert_eq!(reason_class("field `x` secret"), "other");
    }
}
