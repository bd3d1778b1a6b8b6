//! Vigil events: the event schema, streaming readers (CSV, JSONL, Parquet, optionally gzip or
//! zstd compressed), row validation with quarantine, the on-disk Parquet dataset, and the
//! seeded synthetic telemetry generator.
//!
//! This crate knows nothing of detection or reporting: it turns files into validated Arrow
//! record batches and back.

mod csvscan;
pub mod dataset;
pub mod generator;
pub mod ingest;
pub mod reader;
pub mod schema;
pub mod timestamp;
pub mod validate;

use std::path::PathBuf;

pub use dataset::{Dataset, WriteLock};
pub use generator::{GeneratorConfig, GeneratorSummary, generate};
pub use ingest::{IngestOptions, IngestSummary, ingest_file};
pub use reader::{Compression, Format, ReadStats};
pub use schema::{COLUMNS, event_schema};
pub use validate::Validator;

/// Errors of the events layer, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// User: the input cannot be used at all (unknown format, missing columns...).
    #[error("{path}: {message}")]
    BadInput {
        /// The input file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// User: an argument of the call is out of range (exit code 2, like a bad flag).
    #[error("{0}")]
    BadArgument(String),
    /// User: a bad row under `--strict` (the same message quarantine would record).
    #[error("{source_file}:{line}: {reason}")]
    BadRow {
        /// The input file.
        source_file: String,
        /// 1-based line (the CSV header is line 1).
        line: u64,
        /// Why the row was refused.
        reason: String,
    },
    /// Environment: a file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Environment: reading or writing failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Stored state: a dataset file cannot be read back.
    #[error("corrupt dataset file {path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// Internal: Arrow refused a batch we built (a bug).
    #[error("internal error building an Arrow batch: {0}")]
    Arrow(arrow::error::ArrowError),
    /// Internal: a bug in how the library was called.
    #[error("internal error: {0}")]
    Internal(String),
    /// Internal: the Parquet writer thread stopped early (its own error is reported instead
    /// when known).
    #[error("the Parquet writer stopped unexpectedly")]
    WriterStopped,
}

impl vigil_core::Classify for EventsError {
    fn kind(&self) -> vigil_core::ErrorKind {
        use vigil_core::ErrorKind as K;
        match self {
            EventsError::BadArgument(_) => K::Usage,
            EventsError::BadInput { .. } | EventsError::BadRow { .. } => K::BadData,
            EventsError::Open { .. } | EventsError::Io { .. } | EventsError::Corrupt { .. } => {
                K::Environment
            }
            EventsError::Arrow(_) | EventsError::Internal(_) | EventsError::WriterStopped => K::Bug,
        }
    }
}
