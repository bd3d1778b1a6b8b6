//! Sets `cfg(shared_data)` for the tests that read `shared/` (see the included file).

include!("../../build-support/shared_data.rs");
