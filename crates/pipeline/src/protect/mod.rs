//! The protection stages after the features, one module each: detection, the review queue,
//! automation (dedup, clustering, entity resolution), enforcement and incidents. Each returns
//! what the report needs and writes its tables through [`crate::Outputs`].

mod automation;
mod detection;
mod enforcement;
mod incidents;
mod queue;

pub(crate) use automation::{Automation, automation, read_ground_truth};
pub(crate) use detection::{DetectWith, detection};
pub(crate) use enforcement::{Actions, enforcement};
pub use enforcement::{CompiledPolicy, suggest_actions};
pub(crate) use incidents::incidents;
pub(crate) use queue::{Queue, review_queue};

use vigil_detect::Detection;
use vigil_monitor::column_f64;
use vigil_review::Flags;
use vigil_warehouse::Table;

use crate::PipelineError;
use crate::tables::Strings;

/// Every user-day with its model risk and the inputs of the queue.
pub(crate) struct Scored {
    /// `user_day_scored`: the features with `risk_score` and `uncertainty`.
    pub table: Table,
    pub day: Strings,
    pub user: Strings,
    pub risk: Vec<f64>,
    pub uncertainty: Vec<f64>,
    pub heuristic: Vec<f64>,
    pub n_chat: Vec<f64>,
    pub flags: Vec<Flags>,
    pub threshold: f64,
    pub model: String,
    pub detection: Option<Detection>,
}

fn f64_col(t: &Table, c: &str) -> Result<Vec<f64>, PipelineError> {
    Ok(column_f64(t, c)?)
}
