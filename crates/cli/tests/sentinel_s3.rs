//! Sentinel indexes on S3, against a real S3-compatible server: `moto_server` (PyPI
//! `moto[server]`, installed by ./scripts/test.sh) started here on 127.0.0.1. An index built
//! with `vigil sentinel build --out s3://...` loads back and scores exactly as the same index
//! built on disk, and the reference's own files, uploaded unchanged, load from the bucket.
// Reads the reference data in `shared/`: built only where it is (see build-support/).
#![cfg(shared_data)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn shared() -> PathBuf {
    std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn model() -> PathBuf {
    std::env::var_os("VIGIL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
        })
}

fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VIGIL_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-test/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    panic!(
        "moto_server (an S3-compatible server from PyPI) is needed for the S3 tests: run \
         ./scripts/test.sh (it installs `moto[server]` into .venv-test) or set VIGIL_MOTO_SERVER"
    );
}

/// A moto server on a free port, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn start_moto() -> Moto {
    // One server start at a time: picking a free port and binding it is racy between threads.
    static START: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = START.lock().unwrap_or_else(|e| e.into_inner());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(moto_binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let mut moto = Moto { child, port };
    // Ready when our own server answers the bucket creation (retried: the port may accept
    // connections a moment before the application serves them).
    let t = Instant::now();
    loop {
        assert!(
            moto.child.try_wait().unwrap().is_none(),
            "moto_server exited early (port {port} taken?)"
        );
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let resp = http(
                port,
                &format!(
                    "PUT /vigil-test HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            );
            if resp.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "moto_server on port {port} did not become ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    moto
}

fn vigil(moto: &Moto, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", moto.port),
        )
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn indexes_build_load_and_score_on_s3() {
    let moto = start_moto();
    let dir = tempfile::tempdir().unwrap();
    let pos = dir.path().join("pos.txt");
    let neg = dir.path().join("neg.txt");
    std::fs::write(
        &pos,
        "send me a private photo\nkeep this secret from your parents\nare you home alone?\n\
         delete this chat after\nadd me on another app, just us\n",
    )
    .unwrap();
    std::fs::write(
        &neg,
        "nice game\nwho wants to trade\ngg well played\nlunch at noon?\nbrb dinner\n\
         that map is huge\n",
    )
    .unwrap();
    let m = model();
    let local = dir.path().join("idx");
    for out in [local.to_str().unwrap(), "s3://vigil-test/indexes/small"] {
        ok(vigil(
            &moto,
            &[
                "sentinel",
                "build",
                "--model",
                m.to_str().unwrap(),
                "--positives",
                pos.to_str().unwrap(),
                "--negatives",
                neg.to_str().unwrap(),
                "--out",
                out,
            ],
        ));
    }
    // scoring from S3 gives the same result as scoring from disk
    let input = dir.path().join("groups.jsonl");
    std::fs::write(
        &input,
        r#"{"group": "g1", "texts": ["keep this secret from your parents", "nice game"]}"#,
    )
    .unwrap();
    let score = |index: &str, scorer: &str| {
        ok(vigil(
            &moto,
            &[
                "sentinel",
                "score",
                "--index",
                index,
                "--model",
                m.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--scorer",
                scorer,
            ],
        ))
    };
    // Both scorers: the calibrated one is stored beside the index on S3 as on disk.
    for scorer in ["reference", "calibrated"] {
        assert_eq!(
            score("s3://vigil-test/indexes/small", scorer),
            score(local.to_str().unwrap(), scorer)
        );
    }
    // a missing index is a clear error naming the object
    let missing = vigil(
        &moto,
        &[
            "sentinel",
            "score",
            "--index",
            "s3://vigil-test/nothing-here",
            "--model",
            m.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("s3://vigil-test/nothing-here"), "{err}");
}

#[test]
fn the_reference_index_round_trips_through_s3() {
    let moto = start_moto();
    let reference = shared().join("conformance/index_small");
    let dir = tempfile::tempdir().unwrap();
    let groups = dir.path().join("g.jsonl");
    std::fs::write(
        &groups,
        r#"{"group": "a", "label": 1, "texts": ["hello"]}
{"group": "b", "label": 0, "texts": ["gg"]}"#,
    )
    .unwrap();
    // Upload the reference files as they are, then evaluate from the bucket.
    for name in [
        "sentinel_local_index_config.json",
        "embeddings.safetensors",
        "corpus.json",
    ] {
        let body = std::fs::read(reference.join(name)).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", moto.port)).unwrap();
        write!(
            s,
            "PUT /vigil-test/ref/{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            moto.port,
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let m = model();
    let out = ok(vigil(
        &moto,
        &[
            "sentinel",
            "eval",
            "--index",
            "s3://vigil-test/ref",
            "--model",
            m.to_str().unwrap(),
            "--groups",
            groups.to_str().unwrap(),
            "--format",
            "csv",
        ],
    ));
    assert_eq!(out.lines().count(), 7, "{out}");
}
