//! End-to-end tests of the reviewer console that `vigil serve` serves: access rules over
//! real HTTP (logins, roles, CSRF, claims, session expiry, lockout), and a reviewer working
//! the queue by keyboard in a real headless Chromium driven over the DevTools protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::server::{Server, add_user, field, login, request, s, token};
use common::{ok, ok_output};

/// Generated events, a run over them, and the run's dataset as the service's data
/// directory (the demo's layout): the service derives the review cases at start.
fn world(dir: &Path) -> (PathBuf, PathBuf) {
    let input = dir.join("events.csv");
    ok(&[
        "generate",
        "--events",
        "20000",
        "--seed",
        "5",
        "--end",
        "2026-03-01T00:00:00Z",
        "--out",
        s(&input),
    ]);
    let run = dir.join("run");
    ok(&["run", "--input", s(&input), "--out", s(&run)]);
    (run.join("data"), run.join("model"))
}

fn sqlite_count(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// The least role a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Reviewer,
    Lead,
    Admin,
}

/// The service writes the cases it derives at start every 250 ms: wait (at most 30 s) for
/// the first ones.
fn wait_for_cases(db: &Path) {
    let start = Instant::now();
    while !db.exists()
        || sqlite_count(db, "SELECT COUNT(*) FROM cases WHERE queue_pos IS NOT NULL") == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the service derived no review cases from the stored events"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn console_config(dir: &Path, console: &str) -> PathBuf {
    common::server::write_config(dir, "console", console)
}

#[test]
fn console_access_needs_a_session_the_right_role_and_the_csrf_token_and_claims_lock_cases() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = world(dir.path());
    add_user(&data, "ana", "reviewer", "ana's long password");
    add_user(&data, "lee", "lead", "lee's long password");
    add_user(&data, "bo", "reviewer", "bo's long password");
    add_user(&data, "root", "admin", "root's long password");
    let cfg = console_config(
        dir.path(),
        "session_ttl_secs = 4\nmax_failed_logins = 3\nclaim_ttl_secs = 600\nsecond_review_share = 1.0",
    );
    let review_token = token(&data, "review");
    let server = Server::start(&data, &model, Some(&cfg));
    let db = data.join("review.db");
    wait_for_cases(&db);

    // Without a session: pages redirect to the login page, the API says 401, posts 401.
    for page in ["/", "/lead", "/admin/users", "/case/x@2026-01-01"] {
        let a = request(&server.addr, "GET", page, &[], b"");
        assert_eq!(a.status, 303, "{page}");
        assert!(
            a.header("location").unwrap().starts_with("/login?next="),
            "{page}"
        );
    }
    assert_eq!(
        request(&server.addr, "GET", "/v1/users/u1", &[], b"").status,
        401
    );
    assert_eq!(request(&server.addr, "POST", "/next", &[], b"").status, 401);
    // Security headers on every console page.
    let login_page = request(&server.addr, "GET", "/login", &[], b"");
    let csp = login_page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));

    // Wrong password, a forged login form (no matching login cookie).
    let (a, none) = login(&server, "ana", "not her password");
    assert_eq!(a.status, 401);
    assert!(none.is_none());
    let forged = request(
        &server.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"csrf=abc&name=ana&password=ana%27s%20long%20password",
    );
    assert_eq!(forged.status, 403);
    assert!(
        forged
            .all("set-cookie")
            .iter()
            .all(|c| !c.starts_with("vigil_session="))
    );

    let (a, ana) = login(&server, "ana", "ana's long password");
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/"));
    let ana = ana.unwrap();
    let queue = ana.get("/");
    assert_eq!(queue.status, 200);
    assert!(queue.body.contains("Review queue") && queue.body.contains("data-href=\"/case/"));
    // A reviewer is refused the lead and admin pages.
    assert_eq!(ana.get("/lead").status, 403);
    assert_eq!(ana.get("/lead/audit.csv").status, 403);
    assert_eq!(ana.get("/admin/users").status, 403);

    // State changes need the session's CSRF token and a same-site origin; refused ones
    // change nothing.
    let csrf = ana.csrf();
    assert_eq!(ana.post("/next", &[]).status, 403);
    assert_eq!(ana.post("/next", &[("csrf", "0000")]).status, 403);
    assert_eq!(
        ana.post_with(
            "/next",
            &[("csrf", &csrf)],
            &[("Origin", "http://evil.example")]
        )
        .status,
        403
    );
    assert_eq!(sqlite_count(&db, "SELECT COUNT(*) FROM claims"), 0);
    // Every state-changing route: no session is 401, a session without the CSRF token is
    // 403, a reviewer on a lead or admin route is 403 even with it; and nothing changes.
    let some_case = {
        let page = ana.get("/");
        let at = page.body.find("data-href=\"").unwrap() + 11;
        page.body[at..at + page.body[at..].find('"').unwrap()].to_string()
    };
    let state = || {
        let console = data.join("console.db");
        [
            sqlite_count(&db, "SELECT COUNT(*) FROM claims"),
            sqlite_count(&db, "SELECT COUNT(*) FROM audit_log"),
            sqlite_count(&db, "SELECT COUNT(*) FROM appeals"),
            sqlite_count(&db, "SELECT COUNT(*) FROM reveals"),
            sqlite_count(&console, "SELECT COUNT(*) FROM users"),
            sqlite_count(&data.join("tokens.db"), "SELECT COUNT(*) FROM tokens"),
        ]
    };
    let before = state();
    let routes = [
        ("/next", Role::Reviewer),
        ("/logout", Role::Reviewer),
        ("/bulk", Role::Reviewer),
        (&format!("{some_case}/claim") as &str, Role::Reviewer),
        (&format!("{some_case}/release"), Role::Reviewer),
        (&format!("{some_case}/decide"), Role::Reviewer),
        (&format!("{some_case}/reveal"), Role::Reviewer),
        (&format!("{some_case}/appeal"), Role::Reviewer),
        (&format!("{some_case}/assign"), Role::Lead),
        ("/admin/users", Role::Admin),
        ("/admin/users/lee/disable", Role::Admin),
        ("/admin/tokens", Role::Admin),
    ];
    let form = [
        ("decision", "block"),
        ("reason_code", "spam"),
        ("ids", some_case.trim_start_matches("/case/")),
        ("confirm", "1"),
        ("statement", "x"),
        ("to", "ana"),
        ("name", "mallory"),
        ("role", "admin"),
        ("scope", "admin"),
    ];
    for (route, needs) in routes {
        let anon = request(
            &server.addr,
            "POST",
            route,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"decision=block",
        );
        assert_eq!(anon.status, 401, "{route} without a session");
        assert_eq!(
            ana.post(route, &form).status,
            403,
            "{route} without the CSRF token"
        );
        if needs != Role::Reviewer {
            let mut with = form.to_vec();
            with.push(("csrf", &csrf));
            assert_eq!(ana.post(route, &with).status, 403, "{route} as a reviewer");
        }
    }
    assert_eq!(state(), before, "a refused request changed something");
    let next = ana.post("/next", &[("csrf", &csrf)]);
    assert_eq!(next.status, 303, "{}", next.body);
    let case_url = next.header("location").unwrap().to_string();
    assert!(case_url.starts_with("/case/"));
    assert_eq!(
        sqlite_count(&db, "SELECT COUNT(*) FROM claims WHERE reviewer = 'ana'"),
        1
    );
    let page = ana.get(&case_url);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("claimed by you"));

    // The lead cannot decide the case Ana holds; Ana can, and the audit log names her
    // whatever the form says.
    let (_, lee) = login(&server, "lee", "lee's long password");
    let lee = lee.unwrap();
    let lee_csrf = lee.csrf();
    let decide = format!("{case_url}/decide");
    let refused = lee.post(
        &decide,
        &[
            ("csrf", &lee_csrf),
            ("decision", "block"),
            ("reason_code", "spam"),
        ],
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("claimed by ana"));
    assert_eq!(sqlite_count(&db, "SELECT COUNT(*) FROM audit_log"), 0);
    let no_csrf = ana.post(&decide, &[("decision", "block"), ("reason_code", "spam")]);
    assert_eq!(no_csrf.status, 403);
    assert_eq!(sqlite_count(&db, "SELECT COUNT(*) FROM audit_log"), 0);
    let bad = ana.post(
        &decide,
        &[
            ("csrf", &csrf),
            ("decision", "nuke"),
            ("reason_code", "spam"),
        ],
    );
    assert_eq!(bad.status, 400);
    let done = ana.post(
        &decide,
        &[
            ("csrf", &csrf),
            ("decision", "block"),
            ("reason_code", "spam"),
            ("notes", "ring member"),
            ("reviewer", "mallory"),
        ],
    );
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done.header("location").unwrap().ends_with("?recorded=1"));
    let c = rusqlite::Connection::open(&db).unwrap();
    let (who, decision): (String, String) = c
        .query_row("SELECT reviewer, decision FROM audit_log", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((who.as_str(), decision.as_str()), ("ana", "block"));
    assert_eq!(
        sqlite_count(&db, "SELECT COUNT(*) FROM claims"),
        0,
        "deciding ends the claim"
    );
    ok(&["review", "verify", "--out", s(&data)]);
    // Every first decision is sampled here: the case waits for a blind second review, so
    // another reviewer sees neither Ana's decision nor her notes.
    let (_, bo) = login(&server, "bo", "bo's long password");
    let blind = bo.unwrap().get(&case_url);
    assert_eq!(blind.status, 200);
    assert!(blind.body.contains("id=\"blind\""), "{}", blind.body);
    assert!(!blind.body.contains("ring member"));

    // The lead's views: the chain verified, the export names Ana.
    let (_, lee) = login(&server, "lee", "lee's long password");
    let lee = lee.unwrap();
    let team = lee.get("/lead");
    assert_eq!(team.status, 200);
    assert!(
        team.body.contains("Audit chain verified: 1 records"),
        "{}",
        team.body
    );
    let csv = lee.get("/lead/audit.csv");
    assert_eq!(csv.status, 200);
    assert!(csv.body.lines().nth(1).unwrap().contains(",ana,"));
    assert_eq!(
        lee.get("/admin/users").status,
        403,
        "leads do not manage accounts"
    );

    // An appeal (service API, review scope) goes to a reviewer other than Ana; deciding it
    // differently overturns it, and the team page counts that against the rule.
    let case_id = case_url.trim_start_matches("/case/").to_string();
    assert!(
        !case_id.contains('%'),
        "generated user ids need no escaping"
    );
    let body =
        serde_json::json!({"case": case_id, "statement": "it was a joke", "opened_by": "ticket-7"})
            .to_string();
    let json = [("Content-Type", "application/json")];
    assert_eq!(
        request(&server.addr, "POST", "/v1/appeals", &json, body.as_bytes()).status,
        401
    );
    let auth = format!("Bearer {review_token}");
    let with_token = [
        ("Content-Type", "application/json"),
        ("Authorization", auth.as_str()),
    ];
    let opened = request(
        &server.addr,
        "POST",
        "/v1/appeals",
        &with_token,
        body.as_bytes(),
    );
    assert_eq!(opened.status, 201, "{}", opened.body);
    let appeal: serde_json::Value = serde_json::from_str(&opened.body).unwrap();
    assert_eq!(appeal["original_reviewer"], "ana");
    assert_eq!(
        request(
            &server.addr,
            "POST",
            "/v1/appeals",
            &with_token,
            body.as_bytes()
        )
        .status,
        409,
        "one open appeal per case"
    );
    let (_, ana) = login(&server, "ana", "ana's long password");
    let ana = ana.unwrap();
    let csrf = ana.csrf();
    let ana_next = ana.post("/next", &[("csrf", &csrf)]);
    assert_eq!(ana_next.status, 303);
    assert_ne!(
        ana_next.header("location"),
        Some(case_url.as_str()),
        "not her own appeal"
    );
    let own = ana.post(
        &decide,
        &[
            ("csrf", &csrf),
            ("decision", "allow"),
            ("reason_code", "false_positive"),
        ],
    );
    assert_eq!(own.status, 400, "{}", own.body);
    let lee_csrf = lee.csrf();
    let lee_next = lee.post("/next", &[("csrf", &lee_csrf)]);
    assert_eq!(
        lee_next.header("location"),
        Some(case_url.as_str()),
        "appeals come first"
    );
    let overturn = lee.post(
        &decide,
        &[
            ("csrf", &lee_csrf),
            ("decision", "allow"),
            ("reason_code", "false_positive"),
        ],
    );
    assert_eq!(overturn.status, 303, "{}", overturn.body);
    let team = lee.get("/lead");
    assert!(team.body.contains("id=\"overturns\""), "{}", team.body);
    assert!(
        team.body.contains("id=\"overturns-by-flag\""),
        "overturns by detector threshold: {}",
        team.body
    );
    assert!(
        team.body.contains("<td>1</td><td>1</td><td>100.0%</td>"),
        "{}",
        team.body
    );
    // The lead's decision was also the second review: it disagrees with Ana's.
    assert!(
        team.body
            .contains("<tr><td>ana</td><td>1</td><td>0</td><td>0.0%</td></tr>"),
        "{}",
        team.body
    );
    ok(&["review", "verify", "--out", s(&data)]);

    // Admins manage API tokens from the console: a new token works at once, a revoked one
    // is refused at once; a reviewer cannot make one.
    assert_eq!(
        ana.post("/admin/tokens", &[("csrf", &csrf), ("scope", "admin")])
            .status,
        403
    );
    let (_, root) = login(&server, "root", "root's long password");
    let root = root.unwrap();
    let root_csrf = root.csrf();
    let made = root.post(
        "/admin/tokens",
        &[
            ("csrf", &root_csrf),
            ("scope", "read"),
            ("name", "dashboard"),
        ],
    );
    assert_eq!(made.status, 200, "{}", made.body);
    let marker = "id=\"new-token\">";
    let at = made.body.find(marker).unwrap() + marker.len();
    let new_token = made.body[at..at + made.body[at..].find('<').unwrap()].to_string();
    let at = made.body.find("Token ").unwrap() + 6;
    let token_id = made.body[at..at + made.body[at..].find(' ').unwrap()].to_string();
    let bearer = format!("Bearer {new_token}");
    let read = |h: &str| {
        request(
            &server.addr,
            "GET",
            "/v1/users/nobody",
            &[("Authorization", h)],
            b"",
        )
        .status
    };
    assert_eq!(read(&bearer), 404, "the new read token works at once");
    let revoked = root.post(
        &format!("/admin/tokens/{token_id}/revoke"),
        &[("csrf", &root_csrf)],
    );
    assert_eq!(revoked.status, 303, "{}", revoked.body);
    assert_eq!(read(&bearer), 401, "a revoked token is refused at once");

    // Sessions expire (4 s here).
    std::thread::sleep(Duration::from_secs(5));
    let expired = ana.get("/");
    assert_eq!(expired.status, 303);
    assert_eq!(ana.post("/next", &[("csrf", &csrf)]).status, 401);

    // Three failures in a row lock the account; then even the right password waits.
    for _ in 0..2 {
        assert_eq!(login(&server, "lee", "wrong").0.status, 401);
    }
    assert_eq!(login(&server, "lee", "wrong").0.status, 429);
    let (locked, none) = login(&server, "lee", "lee's long password");
    assert_eq!(locked.status, 429);
    assert!(none.is_none());
    assert!(server.stop().success());
}

// ---- a real browser -------------------------------------------------------------------

/// A headless Chromium with one page, driven over the DevTools protocol (JSON over a
/// WebSocket). Console errors, exceptions and every requested URL are collected.
struct Browser {
    child: std::process::Child,
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    session: String,
    next_id: u64,
    errors: Vec<String>,
    requests: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(common::server::chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Chromium prints its DevTools address on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut sent = false;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if !sent && let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_string());
                    sent = true;
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium prints its DevTools address within 60 s");
        let rest = url.strip_prefix("ws://").unwrap();
        let host = &rest[..rest.find('/').unwrap()];
        let stream = std::net::TcpStream::connect(host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket");
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            errors: Vec::new(),
            requests: Vec::new(),
            _profile: profile,
        };
        let target = b.call(
            "Target.createTarget",
            serde_json::json!({"url": "about:blank"}),
        );
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.call(
            "Target.attachToTarget",
            serde_json::json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Network.enable",
            "Log.enable",
        ] {
            b.call(domain, serde_json::json!({}));
        }
        b
    }

    /// Send one command (to the page's session once attached) and wait for its answer,
    /// collecting the events that arrive meanwhile.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = serde_json::Value::from(self.session.clone());
        }
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .unwrap();
        loop {
            let m = self.ws.read().expect("DevTools answers");
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                // An evaluation can race a navigation ("context destroyed"): no value then.
                if method == "Runtime.evaluate" && v.get("error").is_some() {
                    return serde_json::Value::Null;
                }
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &serde_json::Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.errors.push(v["params"].to_string()),
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                self.errors.push(v["params"].to_string());
            }
            Some("Log.entryAdded") if v["params"]["entry"]["level"] == "error" => {
                self.errors.push(v["params"]["entry"].to_string());
            }
            Some("Network.requestWillBeSent") => {
                if let Some(u) = v["params"]["request"]["url"].as_str() {
                    self.requests.push(u.to_string());
                }
            }
            _ => {}
        }
    }

    fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        r["result"]["value"].clone()
    }

    /// Wait (at most 30 s) until `js` is true in the page.
    fn wait_for(&mut self, js: &str) {
        let start = Instant::now();
        loop {
            if self.eval(&format!("document.readyState === 'complete' && !!({js})")) == true {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {js}; page: {}",
                self.eval("document.location.href + ' ' + document.body.innerText.slice(0, 400)")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn go(&mut self, url: &str) {
        self.call("Page.navigate", serde_json::json!({"url": url}));
    }

    /// Press one key as a person would (key down, the character, key up).
    fn press(&mut self, key: &str) {
        let (code, text) = match key {
            "Enter" => (13, "\r"),
            k => (k.chars().next().unwrap().to_ascii_uppercase() as i64, k),
        };
        self.call(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": "keyDown", "key": key, "text": text,
                               "windowsVirtualKeyCode": code}),
        );
        self.call(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": "keyUp", "key": key, "windowsVirtualKeyCode": code}),
        );
    }

    fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png"}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(path, png).unwrap();
    }
}

#[test]
fn a_reviewer_logs_in_takes_the_next_case_and_decides_by_keyboard_in_headless_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = world(dir.path());
    add_user(&data, "ana", "reviewer", "ana's long password");
    add_user(&data, "bo", "reviewer", "bo's long password");
    let review_token = token(&data, "review");
    let server = Server::start(&data, &model, None);
    wait_for_cases(&data.join("review.db"));
    let origin = format!("http://{}", server.addr);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();

    let mut b = Browser::start();
    b.go(&format!("{origin}/"));
    b.wait_for("document.location.pathname === '/login'");
    b.eval(
        "document.querySelector('input[name=name]').value = 'ana';\
         document.querySelector('input[name=password]').value = \"ana's long password\";\
         document.querySelector('form').requestSubmit(); true",
    );
    b.wait_for("document.querySelector('#queue tbody tr')");
    b.screenshot(&shots.join("queue.png"));
    // j selects the first row, j again the second, k back to the first.
    b.press("j");
    b.press("j");
    b.press("k");
    assert_eq!(
        b.eval("Array.from(document.querySelectorAll('#queue tbody tr')).findIndex(r => r.classList.contains('sel'))"),
        0
    );
    // ? opens the help, Escape closes it.
    b.press("?");
    assert_eq!(b.eval("document.getElementById('help').hidden"), false);
    b.call(
        "Input.dispatchKeyEvent",
        serde_json::json!({"type": "keyDown", "key": "Escape", "windowsVirtualKeyCode": 27}),
    );
    assert_eq!(b.eval("document.getElementById('help').hidden"), true);
    // n takes (claims) the top case.
    b.press("n");
    b.wait_for(
        "document.location.pathname.startsWith('/case/') && document.getElementById('decide')",
    );
    let case = b.eval("decodeURIComponent(document.location.pathname.slice(6))");
    let case = case.as_str().unwrap().to_string();
    assert!(case.contains('@'));
    b.screenshot(&shots.join("case.png"));
    // Blurred text stays blurred until r reveals it, and the reveal is recorded.
    // (The top case's risk is above the default blur_at, 0.8, so its text is blurred.)
    let blurred = b.eval("document.querySelectorAll('.messages .blur').length");
    assert!(
        blurred.as_u64().unwrap() > 0,
        "the top case's messages are blurred"
    );
    {
        b.press("r");
        b.wait_for("document.querySelectorAll('.messages .blur').length === 0");
        assert_eq!(
            sqlite_count(
                &data.join("review.db"),
                "SELECT COUNT(*) FROM reveals WHERE reviewer = 'ana'"
            ),
            1
        );
    }
    // 4 chooses block, Enter records it.
    b.press("4");
    assert_eq!(
        b.eval("document.querySelector('input[name=decision]:checked').value"),
        "block"
    );
    b.press("Enter");
    b.wait_for("document.getElementById('recorded')");
    assert!(
        b.eval("document.getElementById('recorded').innerText")
            .as_str()
            .unwrap()
            .contains("Decision #1 recorded")
    );

    // The decision is in the audit log under the logged-in reviewer, and the chain verifies.
    let c = rusqlite::Connection::open(data.join("review.db")).unwrap();
    let (id, who, decision): (String, String, String) = c
        .query_row(
            "SELECT review_id, reviewer, decision FROM audit_log",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (id.as_str(), who.as_str(), decision.as_str()),
        (case.as_str(), "ana", "block")
    );
    let (out, _) = ok_output(&["review", "verify", "--out", s(&data)]);
    assert!(out.contains("1 record"), "{out}");

    // Bulk: the top undecided case's cluster, decided together after a confirmation that
    // says how many cases it touches; one audit record per case.
    b.go(&format!("{origin}/"));
    b.wait_for("document.querySelector('#queue tbody tr a')");
    b.eval("document.querySelector('#queue tbody tr a').click(); true");
    b.wait_for("document.getElementById('cluster-link')");
    b.eval("document.getElementById('cluster-link').click(); true");
    b.wait_for("document.getElementById('bulk')");
    let members = b
        .eval("document.querySelectorAll('#members a').length")
        .as_u64()
        .unwrap();
    assert!(members >= 2, "a cluster of {members}");
    b.eval(
        "document.querySelector('#bulk select[name=decision]').value = 'warn';\
         document.getElementById('bulk').requestSubmit(); true",
    );
    b.wait_for("document.getElementById('bulk-confirm')");
    let shown = b.eval("document.querySelector('#bulk-count b').innerText");
    assert_eq!(
        shown.as_str().unwrap(),
        members.to_string(),
        "the confirmation counts the cases"
    );
    b.screenshot(&shots.join("bulk-confirm.png"));
    b.eval("document.getElementById('bulk-confirm').requestSubmit(); true");
    b.wait_for("document.getElementById('bulk-done')");
    let done = b.eval("document.getElementById('bulk-done').innerText");
    assert!(
        done.as_str()
            .unwrap()
            .starts_with(&format!("{members} decisions recorded")),
        "{done}"
    );
    assert_eq!(
        sqlite_count(
            &data.join("review.db"),
            "SELECT COUNT(*) FROM audit_log WHERE reviewer = 'ana' AND decision = 'warn'"
        ) as u64,
        members
    );
    let (out, _) = ok_output(&["review", "verify", "--out", s(&data)]);
    assert!(out.contains(&format!("{} record", members + 1)), "{out}");

    // An appeal against Ana's keyboard decision goes to another reviewer: Bo logs in, and
    // his next case is the appealed one, which he decides differently (overturned).
    let body = serde_json::json!({"case": case, "statement": "not spam"}).to_string();
    let auth = format!("Bearer {review_token}");
    let opened = request(
        &server.addr,
        "POST",
        "/v1/appeals",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
        ],
        body.as_bytes(),
    );
    assert_eq!(opened.status, 201, "{}", opened.body);
    b.go(&format!("{origin}/"));
    b.wait_for("document.querySelector('form[action=\"/logout\"]')");
    b.eval("document.querySelector('form[action=\"/logout\"]').requestSubmit(); true");
    b.wait_for("document.location.pathname === '/login'");
    b.eval(
        "document.querySelector('input[name=name]').value = 'bo';\
         document.querySelector('input[name=password]').value = \"bo's long password\";\
         document.querySelector('form').requestSubmit(); true",
    );
    b.wait_for("document.querySelector('#queue')");
    b.press("n");
    b.wait_for(
        "document.location.pathname.startsWith('/case/') && document.getElementById('decide')",
    );
    assert_eq!(
        b.eval("decodeURIComponent(document.location.pathname.slice(6))"),
        serde_json::Value::from(case.clone()),
        "appeals come first"
    );
    assert!(
        b.eval("document.body.innerText")
            .as_str()
            .unwrap()
            .contains("open: to be decided by a reviewer other than ana")
    );
    b.press("1");
    b.press("Enter");
    b.wait_for("document.getElementById('recorded')");
    let c = rusqlite::Connection::open(data.join("review.db")).unwrap();
    let outcome: String = c
        .query_row("SELECT outcome FROM appeals", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outcome, "overturned");
    ok(&["review", "verify", "--out", s(&data)]);

    // No script error, and nothing was requested from anywhere but this server.
    b.eval("true");
    assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
    assert!(!b.requests.is_empty());
    for u in &b.requests {
        assert!(
            u.starts_with(&origin) || u.starts_with("data:") || u == "about:blank",
            "a request left the server: {u}"
        );
    }
    drop(b);
    assert!(server.stop().success());
}

#[test]
fn vigil_demo_serve_prints_a_first_login_that_opens_the_demo_queue() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    cmd.args(["demo", "--events", "20000", "--out", s(&out)])
        .args(["--serve", "127.0.0.1:0"])
        .env("VIGIL_AUDIT_KEY", common::test_audit_key())
        .stderr(Stdio::piped());
    let (tx, rx) = std::sync::mpsc::channel();
    let mut server = Server::spawned(cmd);
    let stderr = server.child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("reviewer console login: admin / ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let password = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(password.len() >= 12);
    let (a, admin) = login(&server, "admin", &password);
    assert_eq!(a.status, 303);
    let admin = admin.unwrap();
    wait_for_cases(&out.join("data").join("review.db"));
    let queue = admin.get("/");
    assert_eq!(queue.status, 200);
    assert!(
        queue.body.contains("data-href=\"/case/"),
        "the demo's cases are queued"
    );
    assert_eq!(admin.get("/admin/users").status, 200);
    assert!(server.stop().success());
}

#[test]
fn linked_accounts_are_drawn_and_their_cases_decided_together() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.csv");
    ok(&[
        "generate",
        "--events",
        "20000",
        "--seed",
        "5",
        "--rings",
        "4",
        "--end",
        "2026-03-01T00:00:00Z",
        "--out",
        s(&input),
    ]);
    let run = dir.path().join("run");
    ok(&["run", "--input", s(&input), "--out", s(&run)]);
    let (data, model) = (run.join("data"), run.join("model"));
    add_user(&data, "ana", "reviewer", "ana's long password");
    let server = Server::start(&data, &model, None);
    let db = data.join("review.db");
    wait_for_cases(&db);
    let (_, ana) = login(&server, "ana", "ana's long password");
    let ana = ana.unwrap();
    // A queued ring member's case page links to its linked accounts.
    let queue = ana.get("/");
    let cases: Vec<String> = queue
        .body
        .split("data-href=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect();
    assert!(!cases.is_empty());
    let component = cases
        .iter()
        .find_map(|c| {
            let page = ana.get(c);
            let at = page.body.find("href=\"/component/")?;
            let rest = &page.body[at + 6..];
            Some(rest[..rest.find('"').unwrap()].to_string())
        })
        .expect("a queued ring member has linked accounts");
    let page = ana.get(&component);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("<svg class=\"er-graph\""));
    assert!(page.body.matches("<circle").count() >= 2);
    assert!(
        page.body.contains("<line class=\"shared_"),
        "the links are drawn"
    );
    let ids = field(&page.body, "ids");
    let n = ids.split_whitespace().count();
    assert!(n >= 2, "{ids}");
    let csrf = field(&page.body, "csrf");
    let form = [
        ("csrf", csrf.as_str()),
        ("ids", ids.as_str()),
        ("decision", "block"),
        ("reason_code", "coordinated_abuse"),
    ];
    let preview = ana.post("/bulk", &form);
    assert_eq!(preview.status, 200);
    assert!(
        preview
            .body
            .contains(&format!("This records <b>{n}</b> decisions"))
    );
    assert_eq!(
        sqlite_count(&db, "SELECT COUNT(*) FROM audit_log"),
        0,
        "nothing before confirming"
    );
    let mut confirmed = form.to_vec();
    confirmed.push(("confirm", "1"));
    let done = ana.post("/bulk", &confirmed);
    assert!(
        done.body.contains(&format!("{n} decisions recorded")),
        "{}",
        done.body
    );
    assert_eq!(
        sqlite_count(
            &db,
            "SELECT COUNT(*) FROM audit_log WHERE decision = 'block' AND reason_code = 'coordinated_abuse' AND reviewer = 'ana'"
        ),
        n as i64
    );
    ok(&["review", "verify", "--out", s(&data)]);
    assert!(server.stop().success());
}
