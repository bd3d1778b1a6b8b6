//! Sentinel-style rare-harm detection.
//!
//! An index holds embeddings of examples of a rare harmful class (positives) and of ordinary
//! text (negatives), in the reference Python library's on-disk format. Each observation is
//! scored by the contrastive log-ratio of its nearest positive and negative neighbours, and a
//! group of one source's recent observations is aggregated into one affinity score: a
//! high-recall candidate generator for human review.
//!
//! This crate stands alone: it depends on no other Vigil crate and on no SQL engine.

pub mod aggregate;
#[cfg(feature = "encoder")]
pub mod bert;
#[cfg(feature = "encoder")]
mod build;
#[cfg(feature = "encoder")]
pub mod cache;
pub mod calibrated;
#[cfg(feature = "encoder")]
pub mod cascade;
pub mod compare;
#[cfg(feature = "encoder")]
pub mod encoder;
pub mod harness;
pub mod index;
pub mod lexical;
pub mod logistic;
pub mod matrix;
pub mod messages;
#[cfg(feature = "encoder")]
pub mod quant;
pub mod score;
pub mod search;
pub mod store;
pub mod torch_rng;

use std::path::PathBuf;

pub use aggregate::Aggregator;
#[cfg(feature = "encoder")]
pub use cache::CachedEncoder;
pub use calibrated::{CalibratedScorer, GroupAggregator};
#[cfg(feature = "encoder")]
pub use encoder::{Encoder, MiniLmEncoder};
pub use index::{IndexConfig, SentinelIndex};
pub use matrix::Matrix;
pub use messages::{MessageScorer, ScorerKind, text_key};
#[cfg(feature = "encoder")]
pub use quant::Precision;
pub use score::{GroupResult, ScaleFn, ScoreParams, Scorer};
pub use store::S3Credentials;

/// Errors of the Sentinel library, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// User: invalid arguments or inputs (empty example sets, `top_k` 0, mismatched rows).
    #[error("{0}")]
    BadInput(String),
    /// User or environment: an index file is corrupt, truncated or of the wrong shape.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// User or environment: the encoder model is missing or unreadable (the message says how to
    /// get it).
    #[error("model {path}: {message}")]
    Model {
        /// The model directory or file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Environment: reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Environment: object storage (S3) failed or is misconfigured.
    #[error("object storage: {0}")]
    Storage(String),
    /// Internal: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl vigil_core::Classify for SentinelError {
    fn kind(&self) -> vigil_core::ErrorKind {
        use vigil_core::ErrorKind as K;
        match self {
            SentinelError::BadInput(_) => K::BadData,
            SentinelError::Corrupt { .. }
            | SentinelError::Model { .. }
            | SentinelError::Io { .. }
            | SentinelError::Storage(_) => K::Environment,
            SentinelError::Internal(_) => K::Bug,
        }
    }
}
