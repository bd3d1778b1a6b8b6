//! Vigil human review: which user-days a person should look at, in what order, and a record
//! of what they decided that nobody can quietly rewrite.
//!
//! - [`queue`]: the spec's flags (model, heuristic, uncertain), priority and the capped queue.
//! - [`store`]: `review.db`, a SQLite store holding the cases (by stable user-day id) and an append-only audit
//!   log whose records are hash-chained (each record's SHA-256 covers the previous hash), so
//!   `verify` names the first record that was altered, removed or reordered.
//! - [`anchor`]: the audit key outside `review.db` that authenticates every record, and the
//!   last head each store reached, so a truncated, emptied, restored or rehashed log is
//!   caught too.

pub mod anchor;
pub mod queue;
pub mod store;
pub mod worklist;

pub use anchor::{AuditKey, default_key_path};
pub use queue::{Flags, QueueEntry, build_queue, build_queue_with};
pub use store::{AuditRecord, Case, Decision, ReviewError, ReviewStore, VerifyReport, case_id};

/// Reason codes a reviewer may give.
pub const REASON_CODES: [&str; 4] = vigil_core::ReasonCode::NAMES;
