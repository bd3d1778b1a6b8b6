//! A running `vigil serve` on loopback and a small HTTP/1.1 client for the end-to-end tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ok;

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A running `vigil serve`; killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start the service and wait (at most 120 s) for its "listening on" line.
    pub(crate) fn start(data: &Path, model: &Path, config: Option<&Path>) -> Server {
        Self::start_env(data, model, config, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub(crate) fn start_env(
        data: &Path,
        model: &Path,
        config: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.env("VIGIL_AUDIT_KEY", super::test_audit_key());
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--data", s(data), "--model", s(model)])
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = config {
            cmd.args(["--config", s(c)]);
        }
        Self::spawned(cmd)
    }

    /// Spawn `cmd` (a `vigil` command that serves) with stdout piped and wait (at most
    /// 120 s) for its "listening on" line.
    pub(crate) fn spawned(mut cmd: Command) -> Server {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("vigil starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("vigil serve says where it listens within 120 s");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// SIGTERM, then the exit status (at most 60 s).
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..600 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("vigil serve did not stop within 60 s of SIGTERM");
    }

    pub(crate) fn kill9(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        let _ = self.child.wait();
    }

    pub(crate) fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        http(&self.addr, "GET", path, token, "", b"")
    }

    pub(crate) fn post(
        &self,
        path: &str,
        token: Option<&str>,
        ctype: &str,
        body: &[u8],
    ) -> (u16, String) {
        http(&self.addr, "POST", path, token, ctype, body)
    }

    /// POST events as a JSON array; the parsed per-event results.
    pub(crate) fn events(
        &self,
        token: &str,
        events: &[serde_json::Value],
    ) -> Vec<serde_json::Value> {
        let body = serde_json::to_vec(events).unwrap();
        let (status, text) = self.post("/v1/events", Some(token), "application/json", &body);
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// One HTTP/1.1 request over a fresh loopback connection; (status, body).
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    ctype: &str,
    body: &[u8],
) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    if !ctype.is_empty() {
        headers.push(("Content-Type", ctype));
    }
    let a = request(addr, method, path, &headers, body);
    (a.status, a.body)
}

pub(crate) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A `vigil.toml` in `dir` holding one table.
pub(crate) fn write_config(dir: &Path, table: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join("vigil.toml");
    std::fs::write(&p, format!("[{table}]\n{body}\n")).unwrap();
    p
}

/// The headless Chromium of the browser tests: `VIGIL_CHROMIUM`, else one on the PATH.
pub(crate) fn chromium() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_CHROMIUM") {
        return std::path::PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        if let Ok(o) = Command::new("which").arg(name).output()
            && o.status.success()
        {
            return std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        }
    }
    panic!(
        "headless Chromium is needed for the browser tests and was not found: install it \
         (`apt-get install chromium`, which ./scripts/test.sh does) or set VIGIL_CHROMIUM"
    );
}

pub(crate) fn token(data: &Path, scope: &str) -> String {
    ok(&["token", "create", "--data", s(data), "--scope", scope])
        .trim()
        .to_string()
}

/// A whole HTTP answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// Header lines, names lowercased.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Answer {
    /// The first value of a header.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One request with any headers over a fresh loopback connection.
pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading the whole body and close.
    let _ = c.write_all(body);
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// `vigil user add NAME --role ROLE` with the password on stdin.
pub(crate) fn add_user(data: &Path, name: &str, role: &str, password: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["user", "add", name, "--data", s(data), "--role", role])
        .arg("--password-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a given password is never printed");
}

/// The value of `name="NAME" value="..."` in a page.
pub(crate) fn field(body: &str, name: &str) -> String {
    let at = body
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no field {name} in {body}"));
    let rest = &body[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// A browser-like session: the cookie it holds and the CSRF token of the last page.
pub(crate) struct Client<'a> {
    pub(crate) server: &'a Server,
    pub(crate) cookie: String,
}

impl Client<'_> {
    pub(crate) fn get(&self, path: &str) -> Answer {
        request(
            &self.server.addr,
            "GET",
            path,
            &[("Cookie", &self.cookie)],
            b"",
        )
    }

    pub(crate) fn post(&self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.post_with(path, form, &[])
    }

    pub(crate) fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Answer {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut headers = vec![
            ("Cookie", self.cookie.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ];
        headers.extend_from_slice(extra);
        request(&self.server.addr, "POST", path, &headers, body.as_bytes())
    }

    /// The CSRF token of the session (from the queue page).
    pub(crate) fn csrf(&self) -> String {
        let page = self.get("/");
        assert_eq!(page.status, 200, "{}", page.body);
        field(&page.body, "csrf")
    }
}

pub(crate) fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Log in through the form (the login page's own CSRF cookie included); the answer and,
/// on success, a client holding the session cookie.
pub(crate) fn login<'a>(
    server: &'a Server,
    name: &str,
    password: &str,
) -> (Answer, Option<Client<'a>>) {
    let page = request(&server.addr, "GET", "/login?next=/", &[], b"");
    assert_eq!(page.status, 200);
    let token = field(&page.body, "csrf");
    let cookie = page
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("vigil_login="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let body = format!(
        "csrf={token}&next=%2F&name={}&password={}",
        enc(name),
        enc(password)
    );
    let a = request(
        &server.addr,
        "POST",
        "/login",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body.as_bytes(),
    );
    let session = a
        .all("set-cookie")
        .into_iter()
        .find(|c| c.starts_with("vigil_session=") && !c.starts_with("vigil_session=;"))
        .map(str::to_string);
    let client = session.map(|c| {
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        Client {
            server,
            cookie: c.split(';').next().unwrap().to_string(),
        }
    });
    (a, client)
}
