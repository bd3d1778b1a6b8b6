//! The console's routes. Every page but `/login` needs a session (else a redirect to the
//! login page); every state-changing request also needs the session's CSRF token (form
//! field `csrf` or header `X-CSRF-Token`) and, when the browser sends one, an `Origin` that
//! is this server. The reviewer written into the audit log is always the session's account.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use vigil_config::{AutomationConfig, ConsoleConfig};
use vigil_review::worklist::{QueueFilter, Status};
use vigil_review::{AuditKey, Decision, ReviewStore};

use crate::accounts::{Accounts, LoginRefused, Role, Session, generate_password, random_hex};
use crate::groups::{Clusters, Components, MAX_AGE, MAX_BULK, graph_svg};
use crate::html::{bars, esc, fmt_num, page, path_seg};
use crate::{ConsoleError, LiveView};

const SESSION_COOKIE: &str = "vigil_session";
const LOGIN_COOKIE: &str = "vigil_login";
const CSS: &str = include_str!("../assets/console.css");
const JS: &str = include_str!("../assets/console.js");
/// The actions in the order of the keys 1-5.
const ACTIONS: [&str; 5] = ["allow", "warn", "rate_limit", "block", "escalate"];

/// The console's shared parts.
#[derive(Debug)]
pub struct Console {
    accounts: Accounts,
    store: Mutex<ReviewStore>,
    review_db: PathBuf,
    key: AuditKey,
    cfg: ConsoleConfig,
    live: Option<Arc<dyn LiveView>>,
    /// The batch's clustering settings, for the queue's clusters.
    automation: AutomationConfig,
    /// The latest clustering of the undecided queue.
    clusters: Mutex<Option<Arc<Clusters>>>,
    /// The latest entity resolution of the undecided queue's users.
    components: Mutex<Option<Arc<Components>>>,
    /// The last whole-chain verification: the head it ended at, when, and its verdict.
    verified: Mutex<Option<Verified>>,
    /// Bounds the Argon2 work running at once (each takes ~19 MiB and tens of ms).
    logins: tokio::sync::Semaphore,
}

impl Console {
    /// The console of data directory `data`, over the review store `review_db`, recording
    /// decisions under `key`.
    pub fn new(
        data: &Path,
        review_db: &Path,
        key: AuditKey,
        cfg: ConsoleConfig,
        automation: AutomationConfig,
        live: Option<Arc<dyn LiveView>>,
    ) -> Result<Self, ConsoleError> {
        Ok(Self {
            automation,
            clusters: Mutex::new(None),
            components: Mutex::new(None),
            verified: Mutex::new(None),
            accounts: Accounts::open(data)?,
            store: Mutex::new(ReviewStore::create(review_db)?),
            review_db: review_db.to_path_buf(),
            key,
            cfg,
            live,
            logins: tokio::sync::Semaphore::new(2),
        })
    }

    /// The account store.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }
}

type Con = Arc<Console>;

/// A verification verdict: the head it ended at, when, and the verdict as HTML.
type Verified = (Option<(i64, String)>, std::time::Instant, String);

/// The console's routes (merge them into the service's router).
pub fn router(c: Con) -> Router {
    Router::new()
        .route("/", get(queue_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/next", post(next_case))
        .route("/case/{id}", get(case_page))
        .route("/case/{id}/claim", post(claim))
        .route("/case/{id}/release", post(release))
        .route("/case/{id}/assign", post(assign))
        .route("/case/{id}/decide", post(decide))
        .route("/case/{id}/reveal", post(reveal))
        .route("/case/{id}/appeal", post(appeal))
        .route("/cluster/{n}", get(cluster_page))
        .route("/component/{n}", get(component_page))
        .route("/bulk", post(bulk))
        .route("/lead", get(lead_page))
        .route("/lead/audit.csv", get(audit_csv))
        .route("/lead/audit.jsonl", get(audit_jsonl))
        .route("/admin/users", get(users_page).post(add_user))
        .route("/admin/users/{name}/disable", post(disable_user))
        .route("/admin/tokens", post(create_token))
        .route("/admin/tokens/{id}/revoke", post(revoke_token))
        .route(
            "/static/console.css",
            get(|| async { asset(CSS, "text/css") }),
        )
        .route(
            "/static/console.js",
            get(|| async { asset(JS, "text/javascript") }),
        )
        .layer(axum::middleware::map_response(security_headers))
        .with_state(c)
}

/// Nothing on a console page may come from anywhere but this server, frame it, or be cached.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // `same-origin`, not `no-referrer`: with the latter a browser sends `Origin: null` on
    // its own form posts, which the origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn asset(body: &'static str, ctype: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// An error page; the message is escaped.
fn problem(status: StatusCode, s: Option<&Session>, message: &str) -> Response {
    let body = format!(
        "<section class=\"card\"><h1>{}</h1><p>{}</p><p><a href=\"/\">Back to the queue</a></p></section>",
        status.canonical_reason().unwrap_or("Error"),
        esc(message)
    );
    html(status, page(status.as_str(), s, &body))
}

fn internal(s: Option<&Session>, e: impl std::fmt::Display) -> Response {
    tracing::error!("console: {e}");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        s,
        "Something went wrong on the server; it has been logged.",
    )
}

/// Run `f` on the review store off the async threads.
async fn with_store<T: Send + 'static>(
    c: &Con,
    f: impl FnOnce(&mut ReviewStore) -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    let c = c.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = c
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut s)
    })
    .await
    .map_err(|e| ConsoleError::Internal(e.to_string()))?
}

/// The clustering of the undecided queue, recomputed when older than [`MAX_AGE`].
async fn clusters(c: &Con) -> Result<Arc<Clusters>, ConsoleError> {
    let cached = c
        .clusters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(cl) = cached
        && cl.at.elapsed() < MAX_AGE
    {
        return Ok(cl);
    }
    let cc = c.clone();
    let fresh = with_store(c, move |st| {
        crate::groups::compute(st, &cc.automation, now())
    })
    .await?;
    *c.clusters
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
    Ok(fresh)
}

/// The linked accounts of the undecided queue (`None` without a live service), recomputed
/// when older than [`MAX_AGE`].
async fn components(c: &Con) -> Result<Option<Arc<Components>>, ConsoleError> {
    let Some(live) = c.live.clone() else {
        return Ok(None);
    };
    let cached = c
        .components
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(cm) = cached
        && cm.at.elapsed() < MAX_AGE
    {
        return Ok(Some(cm));
    }
    let cc = c.clone();
    let fresh = with_store(c, move |st| {
        crate::groups::compute_components(st, live.as_ref(), &cc.automation, now())
    })
    .await?;
    *c.components
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
    Ok(Some(fresh))
}

/// The form that decides every case of a group (cluster or component), or why not.
fn bulk_form(csrf: &str, ids: &[String]) -> String {
    if ids.len() > MAX_BULK {
        return format!(
            "<p class=\"error\">More than {MAX_BULK} cases: too many for one bulk decision; decide them in smaller groups.</p>"
        );
    }
    format!(
        "<section class=\"card\"><h2>Decide all {} cases</h2>\
         <form method=\"post\" action=\"/bulk\" id=\"bulk\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <input type=\"hidden\" name=\"ids\" value=\"{}\">\
         <label>Action <select name=\"decision\">{}</select></label> \
         <label>Reason <select name=\"reason_code\">{}</select></label> \
         <label>Notes <input name=\"notes\"></label> \
         <button type=\"submit\">Review the bulk decision</button></form>\
         <p class=\"muted\">One audit record per case; you confirm on the next page.</p></section>",
        ids.len(),
        esc(csrf),
        esc(&join_ids(ids.iter())),
        ACTIONS
            .iter()
            .map(|a| format!("<option>{a}</option>"))
            .collect::<String>(),
        vigil_review::REASON_CODES
            .iter()
            .map(|r| format!("<option>{r}</option>"))
            .collect::<String>(),
    )
}

fn members_table(ids: &[String]) -> String {
    let mut b =
        String::from("<section class=\"card wide\"><table id=\"members\"><tr><th>Case</th></tr>");
    for id in ids.iter().take(500) {
        let _ = write!(
            b,
            "<tr><td><a href=\"/case/{}\">{}</a></td></tr>",
            path_seg(id),
            esc(id)
        );
    }
    b.push_str("</table></section>");
    b
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The request's session, if its cookie names a live one.
async fn session_of(c: &Con, headers: &HeaderMap) -> Result<Option<Session>, ConsoleError> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let c = c.clone();
    tokio::task::spawn_blocking(move || c.accounts.session(&token, now()))
        .await
        .map_err(|e| ConsoleError::Internal(e.to_string()))?
}

/// The session of a page request with at least `role`: no session redirects to the login
/// page (coming back to `back` afterwards), too low a role is 403.
async fn require(
    c: &Con,
    headers: &HeaderMap,
    role: Role,
    back: &str,
) -> Result<Session, Response> {
    match session_of(c, headers).await {
        Err(e) => Err(internal(None, e)),
        Ok(None) => Err(see_other(&format!("/login?next={}", path_seg(back)))),
        Ok(Some(s)) if s.role < role => Err(problem(
            StatusCode::FORBIDDEN,
            Some(&s),
            &format!("This page is for the {} role and above.", role.as_str()),
        )),
        Ok(Some(s)) => Ok(s),
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// A state-changing request: a session of at least `role` (no session: 401, not a
/// redirect, so nothing is retried after a login), the session's CSRF token, and a
/// same-origin `Origin` when there is one. Any failure changes nothing.
async fn require_post(
    c: &Con,
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
    role: Role,
) -> Result<Session, Response> {
    let s = match session_of(c, headers).await {
        Err(e) => return Err(internal(None, e)),
        Ok(None) => {
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                None,
                "Your session has ended; log in again.",
            ));
        }
        Ok(Some(s)) => s,
    };
    if !same_origin(headers) {
        tracing::warn!(
            account = s.name,
            origin = ?headers.get(header::ORIGIN),
            host = ?headers.get(header::HOST),
            "console request from another origin refused"
        );
        return Err(problem(
            StatusCode::FORBIDDEN,
            Some(&s),
            "The request came from another site.",
        ));
    }
    let given = fields
        .get("csrf")
        .cloned()
        .or_else(|| {
            headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(s.csrf.as_bytes())) {
        tracing::warn!(
            account = s.name,
            "console request without a valid CSRF token refused"
        );
        return Err(problem(
            StatusCode::FORBIDDEN,
            Some(&s),
            "The form's security token is missing or stale; reload the page and try again.",
        ));
    }
    if s.role < role {
        return Err(problem(
            StatusCode::FORBIDDEN,
            Some(&s),
            &format!("This needs the {} role.", role.as_str()),
        ));
    }
    Ok(s)
}

/// No `Origin` (same-origin form posts in some browsers, command-line clients), or one whose
/// host is the request's `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| !host.is_empty() && o == host)
}

/// A local path to return to after logging in (never another site).
fn local_next(next: Option<&String>) -> String {
    match next {
        // Browsers drop tabs and newlines from URLs (`/<TAB>/evil` becomes `//evil`): no
        // control character or space is followed either.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.bytes().any(|b| b.is_ascii_control() || b == b' ') =>
        {
            n.clone()
        }
        _ => "/".into(),
    }
}

fn session_cookie(token: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

// ---- login ----------------------------------------------------------------------------

async fn login_page(State(c): State<Con>, Query(q): Query<HashMap<String, String>>) -> Response {
    login_form(&q, StatusCode::OK, "", c.cfg.secure_cookies)
}

fn login_form(
    q: &HashMap<String, String>,
    status: StatusCode,
    message: &str,
    secure: bool,
) -> Response {
    let token = random_hex(16);
    let next = local_next(q.get("next"));
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(message))
    };
    let body = format!(
        "<section class=\"card login\"><h1>Vigil review</h1>{msg}\
         <form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>Name <input name=\"name\" autocomplete=\"username\" required autofocus></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Log in</button></form></section>",
        esc(&next)
    );
    let mut r = html(status, page("Log in", None, &body));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/login; Max-Age=3600{}",
        if secure { "; Secure" } else { "" }
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn login(State(c): State<Con>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let given = f.get("csrf").cloned().unwrap_or_default();
    if expected.is_empty() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return login_form(
            &f,
            StatusCode::FORBIDDEN,
            "The login form expired; please try again.",
            c.cfg.secure_cookies,
        );
    }
    let name = f.get("name").cloned().unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    let Ok(_permit) = c.logins.acquire().await else {
        return internal(None, "the login semaphore closed");
    };
    let cc = c.clone();
    let n = name.clone();
    let ttl = c.cfg.session_ttl_secs as i64;
    let max_failed = c.cfg.max_failed_logins;
    let res = tokio::task::spawn_blocking(move || {
        cc.accounts.login(&n, &password, now(), ttl, max_failed)
    })
    .await;
    match res {
        Ok(Ok(Ok((token, s)))) => {
            tracing::info!(account = s.name, role = s.role.as_str(), "console login");
            let mut r = see_other(&local_next(f.get("next")));
            if let Ok(v) = HeaderValue::from_str(&session_cookie(&token, ttl, c.cfg.secure_cookies))
            {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            if let Ok(v) =
                HeaderValue::from_str(&format!("{LOGIN_COOKIE}=; Path=/login; Max-Age=0"))
            {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Ok(Err(LoginRefused::Wrong))) => {
            tracing::warn!(account = name, "console login refused");
            login_form(
                &f,
                StatusCode::UNAUTHORIZED,
                "Wrong name or password.",
                c.cfg.secure_cookies,
            )
        }
        Ok(Ok(Err(LoginRefused::Locked(secs)))) => {
            tracing::warn!(
                account = name,
                secs,
                "console login refused: account locked"
            );
            login_form(
                &f,
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Too many failed logins: try again in {secs} s."),
                c.cfg.secure_cookies,
            )
        }
        Ok(Err(e)) => internal(None, e),
        Err(e) => internal(None, e),
    }
}

async fn logout(State(c): State<Con>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        let cc = c.clone();
        let _ = tokio::task::spawn_blocking(move || cc.accounts.logout(&token)).await;
    }
    tracing::info!(account = s.name, "console logout");
    let mut r = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&session_cookie("", 0, c.cfg.secure_cookies)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

// ---- the queue ------------------------------------------------------------------------

async fn queue_page(
    State(c): State<Con>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match require(&c, &headers, Role::Reviewer, "/").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let status: Status = match q.get("status").map(String::as_str).unwrap_or("").parse() {
        Ok(st) => st,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Some(&s), &e),
    };
    let pick = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = QueueFilter {
        flag: pick("flag"),
        action: pick("action"),
        status,
        claimed_by: q.get("mine").filter(|v| *v == "1").map(|_| s.name.clone()),
    };
    // Bounded so that no arithmetic on it overflows (and SQLite sees a real offset).
    let offset: usize = q
        .get("offset")
        .and_then(|o| o.parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 40);
    let limit = c.cfg.page_size;
    let f2 = filter.clone();
    let t = now();
    let res = with_store(&c, move |st| {
        let (rows, more) = st.queue_page(&f2, t, offset, limit)?;
        let total = st.count()?;
        Ok((rows, more, total))
    })
    .await;
    let (rows, more, total) = match res {
        Ok(x) => x,
        Err(e) => return internal(Some(&s), e),
    };
    let sla = (c.cfg.sla_hours * 3600.0) as i64;
    let mut b = String::new();
    let _ = write!(
        b,
        "<header class=\"bar\"><h1>Review queue</h1><span class=\"muted\">{total} cases queued</span>\
         <form method=\"post\" action=\"/next\" class=\"inline\" id=\"next-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" class=\"primary\">Next case <kbd>n</kbd></button></form></header>",
        esc(&s.csrf)
    );
    if q.contains_key("empty") {
        b.push_str("<p class=\"notice\" role=\"status\">No undecided, unclaimed case is left.</p>");
    }
    // Filters (GET: bookmarkable, no state change).
    let sel = |name: &str, cur: Option<&String>, opts: &[&str]| -> String {
        let mut o = format!("<select name=\"{name}\"><option value=\"\">any {name}</option>");
        for v in opts {
            let _ = write!(
                o,
                "<option value=\"{v}\"{}>{v}</option>",
                if cur.map(String::as_str) == Some(*v) {
                    " selected"
                } else {
                    ""
                }
            );
        }
        o.push_str("</select>");
        o
    };
    let _ = write!(
        b,
        "<form method=\"get\" action=\"/\" class=\"filters\">{}{}\
         <select name=\"status\">{}</select>\
         <label><input type=\"checkbox\" name=\"mine\" value=\"1\"{}> claimed by me</label>\
         <button type=\"submit\">Filter</button></form>",
        sel(
            "flag",
            filter.flag.as_ref(),
            &["ml", "heuristic", "uncertain", "capped", "rare_harm"]
        ),
        sel("action", filter.action.as_ref(), &ACTIONS),
        ["undecided", "decided", "appealed", "all"]
            .iter()
            .map(|v| format!(
                "<option value=\"{v}\"{}>{v}</option>",
                if status.as_str() == *v {
                    " selected"
                } else {
                    ""
                }
            ))
            .collect::<String>(),
        if filter.claimed_by.is_some() {
            " checked"
        } else {
            ""
        },
    );
    b.push_str(
        "<table class=\"queue\" id=\"queue\"><thead><tr><th>#</th><th>Case</th><th>Why</th>\
         <th>Priority</th><th>Risk</th><th>Suggested</th><th>Age</th><th>Held by</th>\
         <th>Decision</th></tr></thead><tbody>",
    );
    for (i, r) in rows.iter().enumerate() {
        let cs = &r.case;
        let age = r
            .queued_at
            .as_deref()
            .and_then(|q| chrono::DateTime::parse_from_rfc3339(q).ok())
            .map(|q| t - q.timestamp());
        let age_cell = match age {
            Some(a) => format!(
                "<td class=\"{}\">{:.1} h</td>",
                if a > sla && r.latest.is_none() {
                    "late"
                } else {
                    ""
                },
                a as f64 / 3600.0
            ),
            None => "<td class=\"muted\">-</td>".into(),
        };
        let flags: String = cs
            .flags
            .split(',')
            .filter(|f| !f.is_empty())
            .map(|f| format!("<span class=\"flag\">{}</span>", esc(f)))
            .collect();
        let _ = write!(
            b,
            "<tr data-href=\"/case/{}\"><td>{}</td><td><a href=\"/case/{}\">{}</a></td>\
             <td>{flags}</td><td>{}</td><td>{:.3}</td><td><b>{}</b> <span class=\"muted\">{}</span></td>\
             {age_cell}<td>{}</td><td>{}</td></tr>",
            path_seg(&cs.review_id),
            offset + i + 1,
            path_seg(&cs.review_id),
            esc(&cs.review_id),
            fmt_num(cs.priority),
            cs.risk_score,
            esc(&cs.suggested_action),
            esc(&cs.suggested_reason),
            r.holder.as_deref().map(esc).unwrap_or_default(),
            match (&r.latest, &r.second_review_of) {
                (Some(_), Some(first)) if *first != s.name && s.role < Role::Lead => {
                    "<i>second review</i>".to_string()
                }
                (Some((d, who)), _) => {
                    format!("{} <span class=\"muted\">by {}</span>", esc(d), esc(who))
                }
                (None, _) => String::new(),
            },
        );
    }
    b.push_str("</tbody></table>");
    if rows.is_empty() {
        b.push_str("<p class=\"muted\">No case matches.</p>");
    }
    let base: String = [
        ("flag", filter.flag.clone()),
        ("action", filter.action.clone()),
        ("status", Some(status.as_str().to_string())),
        ("mine", filter.claimed_by.as_ref().map(|_| "1".to_string())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={}&", path_seg(&v))))
    .collect();
    b.push_str("<nav class=\"pages\">");
    if offset > 0 {
        let _ = write!(
            b,
            "<a href=\"/?{base}offset={}\" rel=\"prev\">Previous</a>",
            offset.saturating_sub(limit)
        );
    }
    if more {
        let _ = write!(
            b,
            "<a href=\"/?{base}offset={}\" rel=\"next\">Next page</a>",
            offset + limit
        );
    }
    b.push_str("</nav>");
    html(StatusCode::OK, page("Queue", Some(&s), &b))
}

async fn next_case(State(c): State<Con>, headers: HeaderMap, body: Bytes) -> Response {
    let s = match require_post(&c, &headers, &form(&body), Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (who, ttl) = (s.name.clone(), c.cfg.claim_ttl_secs as i64);
    match with_store(&c, move |st| Ok(st.claim_next(&who, ttl, now())?)).await {
        Ok(Some(id)) => see_other(&format!("/case/{}", path_seg(&id))),
        Ok(None) => see_other("/?empty=1"),
        Err(e) => internal(Some(&s), e),
    }
}

// ---- a case -----------------------------------------------------------------------------

async fn case_page(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match require(
        &c,
        &headers,
        Role::Reviewer,
        &format!("/case/{}", path_seg(&id)),
    )
    .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = now();
    let idc = id.clone();
    let res = with_store(&c, move |st| {
        let (case, history) = st.show(&idc)?;
        let claim = st.claim_of(&idc, t)?;
        let reveals = st.reveals(&idc)?;
        let others = st.cases_of_user(&case.user_id)?;
        let appeals = st.appeals_of(&idc)?;
        let second = st.second_review_pending(&idc)?;
        Ok((case, history, claim, reveals, others, appeals, second))
    })
    .await;
    let (case, history, claim, reveals, others, appeals, second) = match res {
        Ok(x) => x,
        Err(ConsoleError::Review(vigil_review::ReviewError::UnknownCase(_))) => {
            return problem(StatusCode::NOT_FOUND, Some(&s), &format!("No case `{id}`."));
        }
        Err(e) => return internal(Some(&s), e),
    };
    let live = match &c.live {
        Some(l) => l.case(&case.user_id, &case.day).await,
        None => None,
    };
    let enc = path_seg(&case.review_id);
    let mut b = String::new();
    if let Some(n) = q.get("recorded") {
        let _ = write!(
            b,
            "<p class=\"notice\" role=\"status\" id=\"recorded\">Decision #{} recorded. \
             Press <kbd>n</kbd> for the next case.</p>",
            esc(n)
        );
    }
    let flags: String = case
        .flags
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|f| format!("<span class=\"flag\">{}</span>", esc(f)))
        .collect();
    let claim_html = match &claim {
        Some((who, until)) if *who == s.name => format!(
            "<span class=\"held mine\">claimed by you until {}</span>{}",
            esc(&vigil_review::worklist::utc_text(*until)),
            post_button(&format!("/case/{enc}/release"), &s.csrf, "Release", &[])
        ),
        Some((who, until)) => format!(
            "<span class=\"held\">claimed by {} until {}</span>",
            esc(who),
            esc(&vigil_review::worklist::utc_text(*until))
        ),
        None => post_button(&format!("/case/{enc}/claim"), &s.csrf, "Claim", &[]),
    };
    let _ = write!(
        b,
        "<header class=\"bar\"><h1>Case {}</h1>{flags}{claim_html}<a href=\"/\" class=\"back\">Queue <kbd>u</kbd></a>{}</header>\
         <div class=\"grid\"><section class=\"card\"><h2>Why it is here</h2><table class=\"kv\">\
         <tr><th>User</th><td>{}</td></tr><tr><th>Day</th><td>{}</td></tr>\
         <tr><th>Priority</th><td>{}</td></tr><tr><th>Risk</th><td>{:.4}</td></tr>\
         <tr><th>Uncertainty</th><td>{:.4}</td></tr>\
         <tr><th>Suggested</th><td><b>{}</b> (rule {})</td></tr>",
        esc(&case.review_id),
        post_button_id("/next", &s.csrf, "Next case (n)", "next-form"),
        esc(&case.user_id),
        esc(&case.day),
        fmt_num(case.priority),
        case.risk_score,
        case.uncertainty,
        esc(&case.suggested_action),
        esc(&case.suggested_reason),
    );
    if let Some(a) = live.as_ref().and_then(|l| l.affinity) {
        let _ = write!(b, "<tr><th>Rare-harm affinity</th><td>{a:.4}</td></tr>");
    }
    b.push_str("</table>");
    if let Some(l) = &live
        && !l.scores.is_empty()
    {
        b.push_str("<h3>How it was scored</h3><table class=\"kv\">");
        for (k, v) in &l.scores {
            let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        b.push_str("</table>");
    }
    b.push_str("</section>");
    // History and the decision form.
    b.push_str("<section class=\"card\"><h2>Decisions on this case</h2>");
    // A pending second review is blind: only its first reviewer and leads see the
    // earlier decision.
    let blind = second
        .as_ref()
        .is_some_and(|first| *first != s.name && s.role < Role::Lead);
    if blind {
        b.push_str(
            "<p class=\"notice\" id=\"blind\">Second review: earlier decisions are hidden until you decide.</p>",
        );
    } else if history.is_empty() {
        b.push_str("<p class=\"muted\">None yet.</p>");
    } else {
        b.push_str("<table><tr><th>#</th><th>Decision</th><th>Reason</th><th>By</th><th>When</th><th>Notes</th></tr>");
        let last = history.len() - 1;
        for (i, h) in history.iter().enumerate() {
            let _ = write!(
                b,
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if i == last { "current" } else { "superseded" },
                h.seq,
                esc(&h.decision),
                esc(&h.reason_code),
                esc(&h.reviewer),
                esc(&h.decision_ts),
                esc(&h.notes)
            );
        }
        b.push_str("</table><p class=\"muted\">The latest record is in force; a new decision supersedes it (records are never edited).</p>");
    }
    let open_appeal = appeals.iter().find(|a| a.resolved_seq.is_none());
    for a in &appeals {
        let _ = write!(
            b,
            "<p class=\"{}\" id=\"appeal-{}\">Appeal #{} opened {} by {} against decision #{} (by {}): \
             \u{201c}{}\u{201d} \u{2014} {}</p>",
            if a.resolved_seq.is_none() {
                "notice"
            } else {
                "muted"
            },
            a.id,
            a.id,
            esc(&a.opened_at),
            esc(&a.opened_by),
            a.appealed_seq,
            esc(&a.original_reviewer),
            esc(&a.statement),
            match (&a.outcome, a.resolved_seq) {
                (Some(o), Some(seq)) => format!("{} by decision #{seq}", esc(o)),
                _ => format!(
                    "open: to be decided by a reviewer other than {}",
                    esc(&a.original_reviewer)
                ),
            }
        );
    }
    let appealed_by_me = open_appeal.is_some_and(|a| a.original_reviewer == s.name);
    let held_by_other = matches!(&claim, Some((who, _)) if *who != s.name);
    if held_by_other {
        b.push_str("<p class=\"error\">Another reviewer holds this case.</p>");
    } else if appealed_by_me {
        b.push_str("<p class=\"error\">This case is under appeal against your decision: another reviewer decides it.</p>");
    } else {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/case/{enc}/decide\" id=\"decide\" class=\"decide\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><fieldset><legend>Action</legend>",
            esc(&s.csrf)
        );
        for (i, a) in ACTIONS.iter().enumerate() {
            let _ = write!(
                b,
                "<label><input type=\"radio\" name=\"decision\" value=\"{a}\" required{}> <kbd>{}</kbd> {a}</label>",
                if *a == case.suggested_action {
                    " data-suggested=\"1\""
                } else {
                    ""
                },
                i + 1
            );
        }
        b.push_str("</fieldset><label>Reason <select name=\"reason_code\" required>");
        for r in vigil_review::REASON_CODES {
            let _ = write!(b, "<option value=\"{r}\">{r}</option>");
        }
        b.push_str(
            "</select></label><label>Notes <textarea name=\"notes\" rows=\"2\"></textarea></label>\
             <button type=\"submit\" class=\"primary\">Record decision <kbd>Enter</kbd></button></form>",
        );
    }
    if !history.is_empty() && open_appeal.is_none() {
        let _ = write!(
            b,
            "<details><summary>Record an appeal against the latest decision</summary>\
             <form method=\"post\" action=\"/case/{enc}/appeal\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>What the user says <textarea name=\"statement\" rows=\"2\" required></textarea></label>\
             <button type=\"submit\">Open appeal</button></form></details>",
            esc(&s.csrf)
        );
    }
    if s.role >= Role::Lead {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/case/{enc}/assign\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Assign to <input name=\"to\" size=\"12\" required></label>\
             <button type=\"submit\">Assign</button></form>",
            esc(&s.csrf)
        );
    }
    b.push_str("</section>");
    // Messages: the live window with scores when the service holds the user, else the
    // prompts stored with the case. Text at or above blur_at is blurred until revealed.
    let blur_at = c.cfg.blur_at;
    let messages: Vec<crate::Message> = match &live {
        Some(l) if !l.messages.is_empty() => l.messages.clone(),
        _ => case
            .recent_prompts
            .split(" | ")
            .filter(|p| !p.is_empty())
            .map(|p| crate::Message {
                text: p.to_string(),
                score: None,
                nearest: Vec::new(),
            })
            .collect(),
    };
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Recent messages</h2>\
         <p class=\"muted\">Text scoring at least {blur_at} (or, unscored, in a case of risk at least \
         {blur_at}) is blurred; <kbd>r</kbd> reveals it and the reveal is logged ({} so far).</p><ol class=\"messages\">",
        reveals.len()
    );
    let mut blurred = 0;
    for m in &messages {
        let blur = m.score.unwrap_or(case.risk_score) >= blur_at;
        blurred += usize::from(blur);
        let cls = if blur { "blur" } else { "" };
        let near: String = if m.nearest.is_empty() {
            String::new()
        } else {
            format!(
                "<div class=\"nearest\">nearest harmful examples: {}</div>",
                m.nearest
                    .iter()
                    .map(|(t, sim)| format!(
                        "<span class=\"{cls}\">\u{201c}{}\u{201d}</span> {sim:.2}",
                        esc(t)
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        };
        let _ = write!(
            b,
            "<li><span class=\"{cls}\">{}</span>{}{near}</li>",
            esc(&m.text),
            m.score
                .map(|x| format!(" <span class=\"score\">{x:.3}</span>"))
                .unwrap_or_default()
        );
    }
    b.push_str("</ol>");
    if blurred > 0 {
        let _ = write!(
            b,
            "<button type=\"button\" id=\"reveal\" data-url=\"/case/{enc}/reveal\">Reveal {blurred} blurred <kbd>r</kbd></button>"
        );
    }
    if messages.is_empty() {
        b.push_str("<p class=\"muted\">No messages on record.</p>");
    }
    b.push_str("</section>");
    if let Some(l) = &live
        && !l.features.is_empty()
    {
        b.push_str("<section class=\"card\"><h2>Features of the day</h2><table class=\"kv\">");
        for (k, v) in &l.features {
            let _ = write!(b, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        b.push_str("</table></section>");
    }
    if history.is_empty()
        && let Ok(cl) = clusters(&c).await
        && let Some(&n) = cl.of.get(&case.review_id)
    {
        let _ = write!(
            b,
            "<section class=\"card\"><h2>Cluster</h2><p>One of <a href=\"/cluster/{n}\" id=\"cluster-link\">{} undecided \
             cases in cluster {n}</a> (similar recent messages); decide them together there.</p></section>",
            cl.members.get(n).map_or(0, Vec::len)
        );
    }
    if let Ok(Some(cm)) = components(&c).await
        && let Some(&n) = cm.of.get(&case.review_id)
    {
        let users = &cm.users[n];
        let _ = write!(
            b,
            "<section class=\"card\"><h2>Linked accounts</h2><p>{} users share devices, payment tokens or IPs with \
             this one; <a href=\"/component/{n}\" id=\"component-link\">{} undecided cases</a> among them.</p>{}{}</section>",
            users.len(),
            cm.members[n].len(),
            graph_svg(users, &cm.edges[n], &case.user_id),
            LEGEND
        );
    }
    if others.len() > 1 {
        b.push_str("<section class=\"card\"><h2>This user's other cases</h2><table>");
        for u in others.iter().filter(|u| u.case.review_id != case.review_id) {
            // A pending second review stays blind here too.
            let shown = match (&u.latest, &u.second_review_of) {
                (Some(_), Some(first)) if *first != s.name && s.role < Role::Lead => {
                    "<i>second review</i>".to_string()
                }
                (Some(d), _) => esc(d),
                (None, _) => "undecided".into(),
            };
            let _ = write!(
                b,
                "<tr><td><a href=\"/case/{}\">{}</a></td><td>risk {:.3}</td><td>{shown}</td></tr>",
                path_seg(&u.case.review_id),
                esc(&u.case.review_id),
                u.case.risk_score,
            );
        }
        b.push_str("</table></section>");
    }
    b.push_str("</div>");
    html(
        StatusCode::OK,
        page(&format!("Case {}", case.review_id), Some(&s), &b),
    )
}

fn post_button_id(action: &str, csrf: &str, label: &str, id: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\" id=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">{}</button></form>",
        esc(action),
        esc(id),
        esc(csrf),
        esc(label)
    )
}

fn post_button(action: &str, csrf: &str, label: &str, fields: &[(&str, &str)]) -> String {
    let extra: String = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                esc(k),
                esc(v)
            )
        })
        .collect();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{extra}\
         <button type=\"submit\">{}</button></form>",
        esc(action),
        esc(csrf),
        esc(label)
    )
}

fn review_problem(s: &Session, e: ConsoleError) -> Response {
    use vigil_review::ReviewError as R;
    match e {
        ConsoleError::Review(R::Claimed { .. }) => {
            problem(StatusCode::CONFLICT, Some(s), &e.to_string())
        }
        ConsoleError::Review(R::UnknownCase(_)) => {
            problem(StatusCode::NOT_FOUND, Some(s), &e.to_string())
        }
        ConsoleError::Review(
            R::InvalidDecision { .. } | R::InvalidReason { .. } | R::NotAllowed(_),
        ) => problem(StatusCode::BAD_REQUEST, Some(s), &e.to_string()),
        e => internal(Some(s), e),
    }
}

async fn claim(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let s = match require_post(&c, &headers, &form(&body), Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (who, ttl, idc) = (s.name.clone(), c.cfg.claim_ttl_secs as i64, id.clone());
    match with_store(&c, move |st| Ok(st.claim(&idc, &who, ttl, now())?)).await {
        Ok(_) => see_other(&format!("/case/{}", path_seg(&id))),
        Err(e) => review_problem(&s, e),
    }
}

async fn release(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let s = match require_post(&c, &headers, &form(&body), Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (who, idc) = (s.name.clone(), id.clone());
    match with_store(&c, move |st| Ok(st.release(&idc, &who)?)).await {
        Ok(_) => see_other("/"),
        Err(e) => review_problem(&s, e),
    }
}

/// A lead hands a case to a reviewer (taking it from whoever held it).
async fn assign(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Lead).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let to = f.get("to").cloned().unwrap_or_default();
    let cc = c.clone();
    let t2 = to.clone();
    match tokio::task::spawn_blocking(move || cc.accounts.role(&t2)).await {
        Ok(Ok(Some(_))) => {}
        Ok(Ok(None)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                Some(&s),
                &format!("No active account named `{to}`."),
            );
        }
        Ok(Err(e)) => return internal(Some(&s), e),
        Err(e) => return internal(Some(&s), e),
    }
    let (ttl, idc, t3) = (c.cfg.claim_ttl_secs as i64, id.clone(), to.clone());
    match with_store(&c, move |st| Ok(st.assign(&idc, &t3, ttl, now())?)).await {
        Ok(()) => {
            tracing::info!(lead = s.name, to, case = id, "case assigned");
            see_other(&format!("/case/{}", path_seg(&id)))
        }
        Err(e) => review_problem(&s, e),
    }
}

async fn decide(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = Decision {
        review_id: id.clone(),
        decision: f.get("decision").cloned().unwrap_or_default(),
        reason_code: f.get("reason_code").cloned().unwrap_or_default(),
        notes: f.get("notes").cloned().unwrap_or_default(),
        reviewer: s.name.clone(),
    };
    let cc = c.clone();
    let res = with_store(&c, move |st| {
        // The decision's own transaction refuses a case another reviewer holds (or an
        // appeal against this reviewer's decision), so a refused one leaves no claim.
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let rec = st.decide(&d, &ts, &cc.key)?;
        // A sampled first decision waits for a second, blind review (after the decision's
        // commit: a crash between the two only leaves the case out of the sample).
        st.sample_second_review(&rec, cc.cfg.second_review_share)?;
        Ok(rec)
    })
    .await;
    match res {
        Ok(rec) => {
            tracing::info!(
                reviewer = s.name,
                case = rec.review_id,
                decision = rec.decision,
                seq = rec.seq,
                "decision recorded"
            );
            see_other(&format!("/case/{}?recorded={}", path_seg(&id), rec.seq))
        }
        Err(e) => review_problem(&s, e),
    }
}

async fn appeal(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let statement = f.get("statement").cloned().unwrap_or_default();
    if statement.len() > 10_000 {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(&s),
            "The statement is longer than 10,000 bytes.",
        );
    }
    let (who, idc) = (s.name.clone(), id.clone());
    match with_store(&c, move |st| {
        Ok(st.open_appeal(&idc, &statement, &who, now())?)
    })
    .await
    {
        Ok(a) => {
            tracing::info!(by = s.name, appeal = a.id, case = id, "appeal opened");
            see_other(&format!("/case/{}", path_seg(&id)))
        }
        Err(e) => review_problem(&s, e),
    }
}

async fn reveal(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let s = match require_post(&c, &headers, &form(&body), Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (who, idc) = (s.name.clone(), id.clone());
    match with_store(&c, move |st| {
        st.show(&idc)?;
        Ok(st.record_reveal(&idc, &who, now())?)
    })
    .await
    {
        Ok(()) => {
            tracing::info!(reviewer = s.name, case = id, "blurred text revealed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => review_problem(&s, e),
    }
}

// ---- clusters and bulk decisions --------------------------------------------------------

async fn cluster_page(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(n): UrlPath<usize>,
) -> Response {
    let s = match require(&c, &headers, Role::Reviewer, &format!("/cluster/{n}")).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let cl = match clusters(&c).await {
        Ok(cl) => cl,
        Err(e) => return internal(Some(&s), e),
    };
    let Some(ids) = cl.members.get(n) else {
        return problem(
            StatusCode::NOT_FOUND,
            Some(&s),
            &format!("No cluster {n} in the current clustering of the undecided queue."),
        );
    };
    let mut b = format!(
        "<header class=\"bar\"><h1>Cluster {n}</h1><span class=\"muted\">{} undecided cases with similar \
         recent messages (clustered {} s ago)</span><a href=\"/\" class=\"back\">Queue <kbd>u</kbd></a></header>",
        ids.len(),
        cl.at.elapsed().as_secs()
    );
    b.push_str(&bulk_form(&s.csrf, ids));
    b.push_str(&members_table(ids));
    html(StatusCode::OK, page(&format!("Cluster {n}"), Some(&s), &b))
}

async fn component_page(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(n): UrlPath<usize>,
) -> Response {
    let s = match require(&c, &headers, Role::Reviewer, &format!("/component/{n}")).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let cm = match components(&c).await {
        Ok(Some(cm)) => cm,
        Ok(None) => {
            return problem(
                StatusCode::NOT_FOUND,
                Some(&s),
                "Linked accounts need the live service (vigil serve).",
            );
        }
        Err(e) => return internal(Some(&s), e),
    };
    let (Some(ids), Some(users), Some(edges)) =
        (cm.members.get(n), cm.users.get(n), cm.edges.get(n))
    else {
        return problem(
            StatusCode::NOT_FOUND,
            Some(&s),
            &format!("No linked-account group {n} among the undecided queue's users."),
        );
    };
    let mut b = format!(
        "<header class=\"bar\"><h1>Linked accounts {n}</h1><span class=\"muted\">{} users sharing identifiers, \
         {} undecided cases (resolved {} s ago)</span><a href=\"/\" class=\"back\">Queue <kbd>u</kbd></a></header>\
         <section class=\"card wide\">{}{}</section>",
        users.len(),
        ids.len(),
        cm.at.elapsed().as_secs(),
        graph_svg(users, edges, ""),
        LEGEND
    );
    b.push_str(&bulk_form(&s.csrf, ids));
    b.push_str(&members_table(ids));
    html(
        StatusCode::OK,
        page(&format!("Linked accounts {n}"), Some(&s), &b),
    )
}

const LEGEND: &str = "<p class=\"legend muted\"><span>orange: shared device</span>\
<span>purple: shared payment token</span><span>grey dashes: shared IP</span> \
(identifiers are shown as opaque keys)</p>";

/// Case ids for a form field: each percent-encoded, separated by spaces (an id may hold
/// any character, an encoded one no space).
fn join_ids<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    ids.map(|id| path_seg(id)).collect::<Vec<_>>().join(" ")
}

/// The inverse of [`path_seg`] (a malformed escape is kept as it is).
fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A bulk decision: without `confirm`, a page that says how many cases it touches and asks
/// for confirmation; with it, one audit record per case in one transaction.
async fn bulk(State(c): State<Con>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Reviewer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let ids: Vec<String> = f
        .get("ids")
        .map(|v| v.split_whitespace().map(pct_decode).collect())
        .unwrap_or_default();
    if ids.is_empty() || ids.len() > MAX_BULK {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(&s),
            &format!("A bulk decision covers 1 to {MAX_BULK} cases."),
        );
    }
    let decision = f.get("decision").cloned().unwrap_or_default();
    let reason = f.get("reason_code").cloned().unwrap_or_default();
    let notes = f.get("notes").cloned().unwrap_or_default();
    if decision.parse::<vigil_core::Action>().is_err()
        || reason.parse::<vigil_core::ReasonCode>().is_err()
    {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(&s),
            "Unknown action or reason code.",
        );
    }
    if f.get("confirm").map(String::as_str) != Some("1") {
        let b = format!(
            "<section class=\"card\"><h1>Confirm the bulk decision</h1>\
             <p id=\"bulk-count\">This records <b>{}</b> decisions: <b>{}</b>, reason <b>{}</b>, one audit record per case, \
             under your name. Cases decided meanwhile, held by another reviewer, or under appeal against you are skipped.</p>\
             <form method=\"post\" action=\"/bulk\" id=\"bulk-confirm\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"ids\" value=\"{}\"><input type=\"hidden\" name=\"decision\" value=\"{}\">\
             <input type=\"hidden\" name=\"reason_code\" value=\"{}\"><input type=\"hidden\" name=\"notes\" value=\"{}\">\
             <input type=\"hidden\" name=\"confirm\" value=\"1\">\
             <button type=\"submit\" class=\"primary\">Record {} decisions</button> <a href=\"/\">Cancel</a></form></section>",
            ids.len(),
            esc(&decision),
            esc(&reason),
            esc(&s.csrf),
            esc(&join_ids(ids.iter())),
            esc(&decision),
            esc(&reason),
            esc(&notes),
            ids.len()
        );
        return html(StatusCode::OK, page("Confirm", Some(&s), &b));
    }
    let decisions: Vec<Decision> = ids
        .iter()
        .map(|id| Decision {
            review_id: id.clone(),
            decision: decision.clone(),
            reason_code: reason.clone(),
            notes: notes.clone(),
            reviewer: s.name.clone(),
        })
        .collect();
    let cc = c.clone();
    let res = with_store(&c, move |st| {
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (done, skipped) = st.decide_many(&decisions, &ts, &cc.key)?;
        for rec in &done {
            st.sample_second_review(rec, cc.cfg.second_review_share)?;
        }
        Ok((done, skipped))
    })
    .await;
    match res {
        Ok((done, skipped)) => {
            tracing::info!(
                reviewer = s.name,
                recorded = done.len(),
                skipped = skipped.len(),
                "bulk decision recorded"
            );
            // The clustering changed: the next view computes it again.
            *c.clusters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            *c.components
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
            let mut b = format!(
                "<section class=\"card\"><h1>Bulk decision</h1><p class=\"notice\" id=\"bulk-done\">{} decisions recorded{}.</p>",
                done.len(),
                done.first()
                    .zip(done.last())
                    .map(|(a, z)| format!(" (#{}-#{})", a.seq, z.seq))
                    .unwrap_or_default()
            );
            if !skipped.is_empty() {
                let _ = write!(b, "<p>{} skipped:</p><ul>", skipped.len());
                for (id, why) in &skipped {
                    let _ = write!(b, "<li>{}: {}</li>", esc(id), esc(why));
                }
                b.push_str("</ul>");
            }
            b.push_str("<p><a href=\"/\">Back to the queue</a></p></section>");
            html(StatusCode::OK, page("Bulk decision", Some(&s), &b))
        }
        Err(e) => review_problem(&s, e),
    }
}

// ---- leads --------------------------------------------------------------------------------

async fn lead_page(State(c): State<Con>, headers: HeaderMap) -> Response {
    let s = match require(&c, &headers, Role::Lead, "/lead").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let t = now();
    let sla = (c.cfg.sla_hours * 3600.0) as i64;
    let cc = c.clone();
    let res = with_store(&c, move |st| {
        let q = st.queue_stats(t, sla)?;
        let r = st.reviewer_stats(t)?;
        let o = st.overturn_stats()?;
        let of = st.overturn_by_flag()?;
        let a = st.agreement_stats()?;
        Ok((q, r, (o, of), a))
    })
    .await;
    let (q, reviewers, (overturns, overturns_by_flag), (by_reviewer, by_reason)) = match res {
        Ok(x) => x,
        Err(e) => return internal(Some(&s), e),
    };
    // The chain is verified on a read-only connection, as `vigil review verify` does; a
    // verdict is reused for a minute while the head has not moved (a whole-chain check of
    // 10,000 records takes ~0.2 s).
    let head = with_store(&c, |st| Ok(st.audit_head()?))
        .await
        .ok()
        .flatten();
    let cached = c
        .verified
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .filter(|(h, at, _)| *h == head && at.elapsed() < std::time::Duration::from_secs(60));
    let verify_html = match cached {
        Some((_, at, html)) => format!(
            "{html}<p class=\"muted\">Checked {} s ago.</p>",
            at.elapsed().as_secs()
        ),
        None => {
            let fresh = verify_chain(&cc).await;
            *c.verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some((head, std::time::Instant::now(), fresh.clone()));
            fresh
        }
    };
    let mut b = format!(
        "<header class=\"bar\"><h1>Team</h1></header><div class=\"grid\">\
         <section class=\"card\"><h2>Queue</h2><table class=\"kv\">\
         <tr><th>Queued</th><td>{}</td></tr><tr><th>Undecided</th><td>{}</td></tr>\
         <tr><th>Past the {}-hour SLA</th><td class=\"{}\">{}</td></tr>\
         <tr><th>Claimed now</th><td>{}</td></tr><tr><th>Oldest undecided since</th><td>{}</td></tr></table></section>",
        q.queued,
        q.undecided,
        fmt_num(c.cfg.sla_hours),
        if q.past_sla > 0 { "late" } else { "" },
        q.past_sla,
        q.claimed,
        esc(q.oldest_undecided.as_deref().unwrap_or("-"))
    );
    let _ = write!(
        b,
        "<section class=\"card\"><h2>Audit log</h2>{verify_html}\
         <p><a href=\"/lead/audit.csv\" download>Export CSV</a> · <a href=\"/lead/audit.jsonl\" download>Export JSONL</a></p></section>"
    );
    b.push_str("<section class=\"card wide\"><h2>Decisions per reviewer (last 24 h)</h2>");
    let day: Vec<(String, f64)> = reviewers
        .iter()
        .map(|r| (r.reviewer.clone(), r.last_day as f64))
        .collect();
    b.push_str(&bars(&day, "decisions"));
    b.push_str("<table><tr><th>Reviewer</th><th>Last hour</th><th>Last 24 h</th><th>All</th></tr>");
    for r in &reviewers {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.reviewer),
            r.last_hour,
            r.last_day,
            r.decisions
        );
    }
    b.push_str("</table></section>");
    b.push_str("<section class=\"card wide\"><h2>Appeals decided: overturn rates by rule and by detector threshold</h2>");
    if overturns.is_empty() {
        b.push_str("<p class=\"muted\">No appeal decided yet.</p>");
    } else {
        for (id, title, rows) in [
            ("overturns", "Enforcement rule", &overturns),
            (
                "overturns-by-flag",
                "Detector threshold (flag)",
                &overturns_by_flag,
            ),
        ] {
            b.push_str(&rate_table(
                id,
                [title, "Decided", "Overturned", "Overturn rate"],
                rows.iter()
                    .map(|o| (o.rule.as_str(), o.decided, o.overturned)),
            ));
        }
    }
    b.push_str("</section>");
    let _ = write!(
        b,
        "<section class=\"card wide\"><h2>Second reviews: agreement with the first decision</h2>\
         <p class=\"muted\">{}% of first decisions are sampled ([console] second_review_share).</p>",
        fmt_num(c.cfg.second_review_share * 100.0)
    );
    if by_reviewer.is_empty() {
        b.push_str("<p class=\"muted\">No second review done yet.</p>");
    }
    for (title, rows, id) in [
        ("First reviewer", &by_reviewer, "agreement-reviewer"),
        ("Reason", &by_reason, "agreement-reason"),
    ] {
        if rows.is_empty() {
            continue;
        }
        b.push_str(&rate_table(
            id,
            [title, "Reviewed", "Agreed", "Agreement"],
            rows.iter().map(|a| (a.key.as_str(), a.reviewed, a.agreed)),
        ));
    }
    b.push_str("</section></div>");
    html(StatusCode::OK, page("Team", Some(&s), &b))
}

/// A table of (key, count, part of it) rows with the part's share as a percentage.
fn rate_table<'a>(
    id: &str,
    headers: [&str; 4],
    rows: impl Iterator<Item = (&'a str, usize, usize)>,
) -> String {
    let mut t = format!("<table id=\"{id}\"><tr>");
    for h in headers {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr>");
    for (key, n, part) in rows {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{n}</td><td>{part}</td><td>{:.1}%</td></tr>",
            esc(key),
            100.0 * part as f64 / n.max(1) as f64
        );
    }
    t.push_str("</table>");
    t
}

/// Verify the whole audit chain (read-only, as `vigil review verify`); the verdict as HTML.
async fn verify_chain(c: &Con) -> String {
    let cc = c.clone();
    let path = cc.review_db.clone();
    let verify = tokio::task::spawn_blocking(move || {
        ReviewStore::open_read_only(&path).and_then(|st| st.verify(Some(&cc.key), None))
    })
    .await;
    match verify {
        Ok(Ok(v)) => match &v.first_broken {
            None => format!(
                "<p class=\"ok\" id=\"chain\">Audit chain verified: {} records, {} authenticated, head {}.</p>",
                v.records,
                v.authenticated,
                esc(&v
                    .head
                    .map(|h| format!("#{} {}", h.0, &h.1[..12.min(h.1.len())]))
                    .unwrap_or_else(|| "none".into()))
            ),
            Some((seq, why)) => format!(
                "<p class=\"error\" id=\"chain\">Audit chain BROKEN at record #{seq}: {}</p>",
                esc(why)
            ),
        },
        Ok(Err(e)) => format!(
            "<p class=\"error\" id=\"chain\">Audit chain not verified: {}</p>",
            esc(&e.to_string())
        ),
        Err(e) => format!(
            "<p class=\"error\" id=\"chain\">Audit chain not verified: {}</p>",
            esc(&e.to_string())
        ),
    }
}

async fn audit_export(c: Con, headers: HeaderMap, jsonl: bool) -> Response {
    let s = match require(&c, &headers, Role::Lead, "/lead").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let records = match with_store(&c, |st| Ok(st.audit_records()?)).await {
        Ok(r) => r,
        Err(e) => return internal(Some(&s), e),
    };
    tracing::info!(lead = s.name, records = records.len(), "audit log exported");
    let mut out = String::new();
    if jsonl {
        for r in &records {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
        }
    } else {
        out.push_str("seq,review_id,day,user_id,decision,reason_code,notes,reviewer,decision_ts,prev_hash,hash,mac\n");
        for r in &records {
            let cells = [
                r.seq.to_string(),
                r.review_id.clone(),
                r.day.clone(),
                r.user_id.clone(),
                r.decision.clone(),
                r.reason_code.clone(),
                r.notes.clone(),
                r.reviewer.clone(),
                r.decision_ts.clone(),
                r.prev_hash.clone(),
                r.hash.clone(),
                r.mac.clone().unwrap_or_default(),
            ];
            let line: Vec<String> = cells.iter().map(|v| csv_cell(v)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
    }
    let (ctype, name) = if jsonl {
        ("application/x-ndjson", "audit_log.jsonl")
    } else {
        ("text/csv; charset=utf-8", "audit_log.csv")
    };
    (
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        out,
    )
        .into_response()
}

/// One CSV cell: quoted when needed; a cell a spreadsheet would run as a formula is
/// prefixed with `'`.
fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) && v.parse::<f64>().is_err() {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

async fn audit_csv(State(c): State<Con>, headers: HeaderMap) -> Response {
    audit_export(c, headers, false).await
}

async fn audit_jsonl(State(c): State<Con>, headers: HeaderMap) -> Response {
    audit_export(c, headers, true).await
}

// ---- admins -------------------------------------------------------------------------------

async fn users_page(State(c): State<Con>, headers: HeaderMap) -> Response {
    let s = match require(&c, &headers, Role::Admin, "/admin/users").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    users_view(&c, &s, StatusCode::OK, "").await
}

async fn users_view(c: &Con, s: &Session, status: StatusCode, notice: &str) -> Response {
    let cc = c.clone();
    let list = match tokio::task::spawn_blocking(move || cc.accounts.list()).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return internal(Some(s), e),
        Err(e) => return internal(Some(s), e),
    };
    let mut b = String::from("<header class=\"bar\"><h1>Accounts</h1></header>");
    b.push_str(notice);
    b.push_str("<section class=\"card wide\"><table><tr><th>Name</th><th>Role</th><th>Created</th><th>State</th><th></th></tr>");
    for a in &list {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&a.name),
            a.role.as_str(),
            esc(&a.created_at),
            if a.disabled { "disabled" } else { "active" },
            if a.disabled || a.name == s.name {
                String::new()
            } else {
                post_button(
                    &format!("/admin/users/{}/disable", path_seg(&a.name)),
                    &s.csrf,
                    "Disable",
                    &[],
                )
            }
        );
    }
    let _ = write!(
        b,
        "</table></section><section class=\"card\"><h2>Add an account</h2>\
         <form method=\"post\" action=\"/admin/users\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Name <input name=\"name\" required pattern=\"[A-Za-z0-9._-]{{1,64}}\"></label>\
         <label>Role <select name=\"role\"><option>reviewer</option><option>lead</option><option>admin</option></select></label>\
         <button type=\"submit\">Add (the password is shown once)</button></form></section>",
        esc(&s.csrf)
    );
    if let Some(live) = c.live.clone() {
        let rows = match tokio::task::spawn_blocking(move || live.tokens()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return internal(Some(s), e),
            Err(e) => return internal(Some(s), e),
        };
        b.push_str(
            "<section class=\"card wide\"><h2>API tokens</h2><table id=\"tokens\"><tr><th>Id</th><th>Name</th>\
             <th>Scope</th><th>Created</th><th>Revoked</th><th></th></tr>",
        );
        for t in &rows {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.id),
                esc(&t.name),
                esc(&t.scope),
                esc(&t.created_at),
                esc(t.revoked_at.as_deref().unwrap_or("")),
                if t.revoked_at.is_some() {
                    String::new()
                } else {
                    post_button(
                        &format!("/admin/tokens/{}/revoke", path_seg(&t.id)),
                        &s.csrf,
                        "Revoke",
                        &[],
                    )
                }
            );
        }
        let _ = write!(
            b,
            "</table><form method=\"post\" action=\"/admin/tokens\" id=\"token-form\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Scope <select name=\"scope\"><option>ingest</option><option>read</option>\
             <option>review</option><option>admin</option></select></label> \
             <label>Name <input name=\"name\" maxlength=\"100\"></label> \
             <button type=\"submit\">Create token (shown once)</button></form></section>",
            esc(&s.csrf)
        );
    }
    html(status, page("Accounts", Some(s), &b))
}

async fn add_user(State(c): State<Con>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Admin).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let name = f.get("name").cloned().unwrap_or_default();
    let role: Role = match f.get("role").map(String::as_str).unwrap_or("").parse() {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Some(&s), &e),
    };
    let password = generate_password();
    let cc = c.clone();
    let (n2, p2) = (name.clone(), password.clone());
    match tokio::task::spawn_blocking(move || cc.accounts.add(&n2, role, &p2)).await {
        Ok(Ok(_)) => {
            tracing::info!(
                admin = s.name,
                account = name,
                role = role.as_str(),
                "account added"
            );
            let notice = format!(
                "<p class=\"notice\" role=\"status\">Account <b>{}</b> ({}) added. Its password, shown only now: \
                 <code id=\"new-password\">{}</code></p>",
                esc(&name),
                role.as_str(),
                esc(&password)
            );
            users_view(&c, &s, StatusCode::OK, &notice).await
        }
        Ok(Err(e @ ConsoleError::Usage(_))) => {
            problem(StatusCode::BAD_REQUEST, Some(&s), &e.to_string())
        }
        Ok(Err(e)) => internal(Some(&s), e),
        Err(e) => internal(Some(&s), e),
    }
}

async fn create_token(State(c): State<Con>, headers: HeaderMap, body: Bytes) -> Response {
    let f = form(&body);
    let s = match require_post(&c, &headers, &f, Role::Admin).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(live) = c.live.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            Some(&s),
            "API tokens belong to the live service.",
        );
    };
    let scope = f.get("scope").cloned().unwrap_or_default();
    let name: String = f
        .get("name")
        .cloned()
        .unwrap_or_default()
        .chars()
        .take(100)
        .collect();
    let (sc, nm) = (scope.clone(), name.clone());
    match tokio::task::spawn_blocking(move || live.create_token(&sc, &nm)).await {
        Ok(Ok((token, id))) => {
            tracing::info!(admin = s.name, token = id, scope, "API token created");
            let notice = format!(
                "<p class=\"notice\" role=\"status\">Token {} ({}) created. It is shown only now: \
                 <code id=\"new-token\">{}</code></p>",
                esc(&id),
                esc(&scope),
                esc(&token)
            );
            users_view(&c, &s, StatusCode::OK, &notice).await
        }
        Ok(Err(e)) => problem(StatusCode::BAD_REQUEST, Some(&s), &e),
        Err(e) => internal(Some(&s), e),
    }
}

async fn revoke_token(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Response {
    let s = match require_post(&c, &headers, &form(&body), Role::Admin).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(live) = c.live.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            Some(&s),
            "API tokens belong to the live service.",
        );
    };
    let i2 = id.clone();
    match tokio::task::spawn_blocking(move || live.revoke_token(&i2)).await {
        Ok(Ok(true)) => {
            tracing::info!(admin = s.name, token = id, "API token revoked");
            see_other("/admin/users")
        }
        Ok(Ok(false)) => problem(StatusCode::NOT_FOUND, Some(&s), "No such live token."),
        Ok(Err(e)) => internal(Some(&s), e),
        Err(e) => internal(Some(&s), e),
    }
}

async fn disable_user(
    State(c): State<Con>,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let s = match require_post(&c, &headers, &form(&body), Role::Admin).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if name == s.name {
        return problem(
            StatusCode::BAD_REQUEST,
            Some(&s),
            "You cannot disable your own account.",
        );
    }
    let cc = c.clone();
    let n2 = name.clone();
    match tokio::task::spawn_blocking(move || cc.accounts.set_disabled(&n2, true)).await {
        Ok(Ok(())) => {
            tracing::info!(admin = s.name, account = name, "account disabled");
            see_other("/admin/users")
        }
        Ok(Err(e @ ConsoleError::Usage(_))) => {
            problem(StatusCode::BAD_REQUEST, Some(&s), &e.to_string())
        }
        Ok(Err(e)) => internal(Some(&s), e),
        Err(e) => internal(Some(&s), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        let n = |s: &str| local_next(Some(&s.to_string()));
        assert_eq!(n("/case/u1@2026-02-01"), "/case/u1@2026-02-01");
        assert_eq!(n("//evil.example/x"), "/");
        assert_eq!(n("https://evil.example/"), "/");
        assert_eq!(n("/\\evil.example"), "/");
        assert_eq!(n("/\t/evil.example"), "/", "a tab is dropped by browsers");
        assert_eq!(n("/\n/evil.example"), "/");
    }

    #[test]
    fn case_ids_survive_a_form_field_whatever_they_hold() {
        let ids = vec![
            "u 1@2026-02-01".to_string(),
            "a%b,c\n@2026-02-02".to_string(),
        ];
        let field = join_ids(ids.iter());
        let back: Vec<String> = field.split_whitespace().map(pct_decode).collect();
        assert_eq!(back, ids);
    }

    #[test]
    fn exported_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-0.5"), "-0.5");
    }
}
