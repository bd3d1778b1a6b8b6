//! Helpers shared by the Sentinel integration tests.

use std::path::{Path, PathBuf};

use vigil_sentinel::encoder::MODEL_HELP;

/// The real model directory (VIGIL_MODEL, else the repository's models/all-MiniLM-L6-v2);
/// fails loudly with how to get it when it is missing.
pub(crate) fn model_dir() -> PathBuf {
    let dir = std::env::var_os("VIGIL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "model not found at {}: {MODEL_HELP}",
        dir.display()
    );
    dir
}
