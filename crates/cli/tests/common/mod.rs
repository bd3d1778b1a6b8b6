//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

pub(crate) mod server;

/// Run `vigil ARGS`. The audit key lives in a directory of this test process, never in the
/// home directory of whoever runs the tests.
pub(crate) fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .env("VIGIL_AUDIT_KEY", test_audit_key())
        .output()
        .expect("the vigil binary runs")
}

/// The audit key path of this test process.
pub(crate) fn test_audit_key() -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("vigil-test-{}", std::process::id()))
        .join("audit.key")
}

/// Run `vigil ARGS`, which must succeed; its (standard output, standard error).
pub(crate) fn ok_output(args: &[&str]) -> (String, String) {
    let o = vigil(args);
    assert!(
        o.status.success(),
        "vigil {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Run `vigil ARGS`, which must succeed; its standard output.
pub(crate) fn ok(args: &[&str]) -> String {
    ok_output(args).0
}

/// The encoder the Sentinel tests use: `VIGIL_MODEL`, else the directory
/// `scripts/fetch-model.sh` fills.
pub(crate) fn model() -> std::path::PathBuf {
    let dir = std::env::var_os("VIGIL_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "no model at {}: run ./scripts/fetch-model.sh",
        dir.display()
    );
    dir
}

/// Build a Sentinel index (with its calibrated scorer) from example lines into `dir/idx`,
/// writing them to `dir/pos.txt` and `dir/neg.txt`.
pub(crate) fn build_index(
    dir: &std::path::Path,
    positives: &[String],
    negatives: &[String],
) -> std::path::PathBuf {
    std::fs::write(dir.join("pos.txt"), positives.join("\n")).unwrap();
    std::fs::write(dir.join("neg.txt"), negatives.join("\n")).unwrap();
    let m = model();
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_string();
    ok(&[
        "sentinel",
        "build",
        "--model",
        &arg(&m),
        "--positives",
        &arg(&dir.join("pos.txt")),
        "--negatives",
        &arg(&dir.join("neg.txt")),
        "--out",
        &arg(&dir.join("idx")),
    ]);
    dir.join("idx")
}

/// A CSV file's rows as header -> value maps.
pub(crate) fn csv_rows(path: &std::path::Path) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}
