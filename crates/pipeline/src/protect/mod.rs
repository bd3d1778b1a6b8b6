//! The protection stages after the features, one module each: detection, the review queue,
//! automation (dedup, clustering, entity resolution), enforcement and incidents. Each returns
//! what later stages and the report need, and hands the tables it produced to a [`Written`]
//! collector: only the orchestrator writes files.

mod automation;
mod detection;
mod enforcement;
mod incidents;
mod queue;
mod rare_harm;
mod text_signal;

pub(crate) use automation::{Automation, automation, read_ground_truth};
pub(crate) use detection::{DetectWith, detection};
pub(crate) use enforcement::{Actions, enforcement};
pub use enforcement::{CompiledPolicy, suggest_actions};
pub(crate) use incidents::incidents;
pub(crate) use queue::{Queue, review_queue};
pub use rare_harm::{RARE_HARM_FEATURES, RareHarmInfo};
pub(crate) use rare_harm::{Source as RareHarmSource, check_encoder, rare_harm};
pub(crate) use text_signal::{TextSignal, text_signal};

use vigil_detect::Detection;
use vigil_review::Flags;
use vigil_warehouse::Table;
use vigil_warehouse::column_f64;

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
    /// With the rare-harm features: the boosted model fitted without them, its probability
    /// for every row and its threshold (`text_signal`).
    pub behaviour_only: Option<(Vec<f64>, f64)>,
}

fn f64_col(t: &Table, c: &str) -> Result<Vec<f64>, PipelineError> {
    Ok(column_f64(t, c)?)
}

/// What a stage produced for the output directory, by name, in order. Stages never touch
/// the file system; the orchestrator writes these ([`crate::Outputs::write`]).
#[derive(Default)]
pub(crate) struct Written(pub Vec<Output>);

/// One output of a stage.
pub(crate) enum Output {
    /// `NAME.csv`.
    Csv(Table),
    /// `NAME.csv` and `NAME.parquet`.
    CsvAndParquet(Table),
    /// A text file.
    Text {
        /// File name.
        name: String,
        /// Its content.
        content: String,
    },
}

impl Written {
    /// `t` as `NAME.csv` (its batches are shared, not copied).
    pub(crate) fn csv(&mut self, t: &Table) -> Result<(), PipelineError> {
        self.0.push(Output::Csv(t.clone()));
        Ok(())
    }

    /// `t` as CSV and Parquet twins.
    pub(crate) fn csv_and_parquet(&mut self, t: &Table) -> Result<(), PipelineError> {
        self.0.push(Output::CsvAndParquet(t.clone()));
        Ok(())
    }

    /// A text file.
    pub(crate) fn text(&mut self, name: &str, content: &str) -> Result<(), PipelineError> {
        self.0.push(Output::Text {
            name: name.to_string(),
            content: content.to_string(),
        });
        Ok(())
    }
}
