// The build script of each crate whose tests read the reference data in `shared/` (beside the
// checkout, or `VIGIL_SHARED`): it sets `cfg(shared_data)` when that data is there, so a
// clean clone without it builds and passes `cargo test` on what it carries (the in-repo
// parity slice), while `./scripts/test.sh`, which refuses to run without `shared/`, always
// runs the full suite. Included by `crates/*/build.rs`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(shared_data)");
    println!("cargo::rerun-if-env-changed=VIGIL_SHARED");
    let dir = std::env::var_os("VIGIL_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
        });
    let marker = dir.join("parity/raw_events.csv.gz");
    println!("cargo::rerun-if-changed={}", marker.display());
    if marker.exists() && dir.join("conformance/README.md").exists() {
        println!("cargo::rustc-cfg=shared_data");
    }
}
