//! Settings of the stages after the core tables: detection, review, automation, enforcement
//! and incidents. Defaults are the spec's (the notebook's) values unless a comment says why
//! Vigil's default differs; `--profile notebook` restores the notebook's choice everywhere.

use serde::{Deserialize, Serialize};

use crate::{Profile, USER_DAY_FEATURES};

/// Columns of the `user_context` table (per-user history and identifier fanout).
pub const USER_CONTEXT_FEATURES: [&str; 7] = [
    "user_block_rate",
    "user_warn_rate",
    "user_days_active",
    "user_events_per_day",
    "ip_fanout",
    "device_fanout",
    "payment_fanout",
];

/// Which model's probability becomes `risk_score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Logistic regression exactly as the spec (the notebook's model).
    Logistic,
    /// Gradient-boosted trees (forust), Vigil's default: stronger on every measured dataset.
    GradientBoosting,
}

/// Detection settings: features, models, split and threshold sweep, heuristic weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionConfig {
    /// The model whose probability becomes `risk_score` (both are always trained and
    /// reported in `model_eval.csv`).
    pub model: ModelKind,
    /// Columns of `user_day_features` the logistic regression uses, in order.
    pub features: Vec<String>,
    /// Columns the gradient-boosted model uses: any of `user_day_features` and of
    /// `user_context` (per-user history and identifier fanout, joined by user).
    pub gbt_features: Vec<String>,
    /// Share of user-days held out for testing (stratified).
    pub test_size: f64,
    /// Seed of the stratified split (numpy `RandomState` semantics, so 42 gives the
    /// notebook's split).
    pub seed: u32,
    /// Inverse L2 strength of the logistic regression (scikit-learn's `C`).
    pub logistic_c: f64,
    /// Weight classes by `n / (2 * n_class)`.
    pub balanced_class_weights: bool,
    /// First threshold of the F1 sweep.
    pub threshold_start: f64,
    /// Last threshold of the F1 sweep (inclusive).
    pub threshold_end: f64,
    /// Step of the F1 sweep (at most a million thresholds between start and end).
    pub threshold_step: f64,
    /// Gradient boosting: number of trees.
    pub gbt_trees: usize,
    /// Gradient boosting: learning rate.
    pub gbt_learning_rate: f32,
    /// Gradient boosting: maximum tree depth.
    pub gbt_max_depth: usize,
    /// Gradient boosting trains on at most this many rows (a stratified sample of the
    /// training split, with a third as many more held out to place its threshold) so
    /// 10M-event runs stay fast; the logistic model always uses all.
    pub gbt_max_train_rows: usize,
    /// Heuristic score weights for n_chat/50, block_rate/0.10, n_ips/3, n_warned/5.
    pub heuristic_weights: [f64; 4],
    /// Heuristic score scales (each term is `clip(value / scale, 0, heuristic_clip)`).
    pub heuristic_scales: [f64; 4],
    /// Upper clip of each heuristic term.
    pub heuristic_clip: f64,
    /// Calibrate the boosted model's probabilities (Platt scaling on its held-out quarter),
    /// so `risk_score` and the enforcement thresholds on it mean what they say. Off in the
    /// notebook profile, which keeps the notebook's raw scores.
    pub calibrate_boosted: bool,
}

impl DetectionConfig {
    /// Defaults for a profile.
    pub fn for_profile(profile: Profile) -> Self {
        Self {
            model: match profile {
                Profile::Default => ModelKind::GradientBoosting,
                Profile::Notebook => ModelKind::Logistic,
            },
            features: USER_DAY_FEATURES.iter().map(|s| s.to_string()).collect(),
            gbt_features: USER_DAY_FEATURES
                .iter()
                .chain(USER_CONTEXT_FEATURES.iter())
                .map(|s| s.to_string())
                .collect(),
            test_size: 0.25,
            seed: 42,
            logistic_c: 1.0,
            balanced_class_weights: true,
            threshold_start: 0.10,
            threshold_end: 0.90,
            threshold_step: 0.01,
            gbt_trees: 120,
            gbt_learning_rate: 0.1,
            gbt_max_depth: 4,
            gbt_max_train_rows: 120_000,
            heuristic_weights: [0.35, 0.35, 0.15, 0.15],
            heuristic_scales: [50.0, 0.10, 3.0, 5.0],
            heuristic_clip: 3.0,
            calibrate_boosted: profile == Profile::Default,
        }
    }
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self::for_profile(Profile::Default)
    }
}

/// Review queue settings: flags, priority weights and queue size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    /// `flag_heur` when the normalised heuristic score is at least this.
    pub heuristic_flag: f64,
    /// `flag_uncertain` when uncertainty is at least this ...
    pub uncertain_flag: f64,
    /// ... and risk at least this.
    pub uncertain_min_risk: f64,
    /// Priority weights of risk, uncertainty and `clip(n_chat / priority_chat_scale, 0, 1)`.
    pub priority_weights: [f64; 3],
    /// Chat count at which the chat term of the priority saturates.
    pub priority_chat_scale: f64,
    /// Largest queue.
    pub queue_size: usize,
    /// Prompts of a user-day shown to the reviewer (the last N, in time order).
    pub recent_prompts: usize,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            heuristic_flag: 0.75,
            uncertain_flag: 0.75,
            uncertain_min_risk: 0.35,
            priority_weights: [0.65, 0.20, 0.15],
            priority_chat_scale: 50.0,
            queue_size: 2000,
            recent_prompts: 3,
        }
    }
}

/// How entity resolution links users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErMode {
    /// The notebook's rules: any shared device or payment, any IP shared by 2..30 users.
    Notebook,
    /// Vigil's default: devices and payments only when the key is rare (fanout at most
    /// `max_key_fanout`), IPs only when the IP is rare AND the pair shares another signal.
    Corroborated,
}

/// Automation settings: clustering and entity resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutomationConfig {
    /// Largest k of the k-means (k = min(max_clusters, max(2, floor(sqrt(n))))).
    pub max_clusters: usize,
    /// Fewer non-duplicate cases than this: everything in cluster 0.
    pub min_cases_to_cluster: usize,
    /// TF-IDF vocabulary cap.
    pub max_features: usize,
    /// TF-IDF minimum document frequency.
    pub min_df: usize,
    /// k-means seed.
    pub seed: u64,
    /// Entity-resolution rules.
    pub er_mode: ErMode,
    /// Notebook mode: an IP links its users when 2..=this many share it.
    pub ip_max_fanout: usize,
    /// Corroborated mode: a device, payment or IP key links users only when at most this
    /// many users share it (a key seen by hundreds of users is infrastructure, not a ring).
    pub max_key_fanout: usize,
}

impl AutomationConfig {
    /// Defaults for a profile.
    pub fn for_profile(profile: Profile) -> Self {
        Self {
            max_clusters: 25,
            min_cases_to_cluster: 10,
            max_features: 5000,
            min_df: 2,
            seed: 42,
            er_mode: match profile {
                Profile::Default => ErMode::Corroborated,
                Profile::Notebook => ErMode::Notebook,
            },
            ip_max_fanout: 30,
            max_key_fanout: 50,
        }
    }
}

impl Default for AutomationConfig {
    fn default() -> Self {
        Self::for_profile(Profile::Default)
    }
}

/// One enforcement rule: the first rule whose SQL condition holds for a queue case decides
/// its action. Columns available: every column of `review_queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementRule {
    /// allow, warn, rate_limit, block or escalate.
    pub action: String,
    /// Written to `reason_code`.
    pub reason: String,
    /// SQL boolean expression over the queue's columns.
    pub when: String,
}

/// The ordered enforcement policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforcementConfig {
    /// Rules in order; the first that matches wins.
    pub rules: Vec<EnforcementRule>,
    /// Action when no rule matches.
    pub default_action: String,
    /// Reason when no rule matches.
    pub default_reason: String,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        let r = |action: &str, reason: &str, when: &str| EnforcementRule {
            action: action.into(),
            reason: reason.into(),
            when: when.into(),
        };
        Self {
            rules: vec![
                r(
                    "block",
                    "high_confidence_abuse",
                    "risk_score >= 0.90 AND uncertainty <= 0.35",
                ),
                r(
                    "rate_limit",
                    "policy_evasion_or_repeat",
                    "risk_score >= 0.75 AND (block_rate >= 0.10 OR recent_prompts LIKE '%bypass%' \
                     OR recent_prompts LIKE '%evade%')",
                ),
                r(
                    "escalate",
                    "uncertain_high_risk",
                    "risk_score >= 0.55 AND uncertainty >= 0.75",
                ),
                r(
                    "warn",
                    "suspicious_burst",
                    "risk_score >= 0.50 AND n_chat >= 80",
                ),
            ],
            default_action: "allow".into(),
            default_reason: "below_threshold".into(),
        }
    }
}

/// The actions a rule or a reviewer may choose ([`vigil_core::Action`]'s names).
pub const ACTIONS: [&str; 5] = vigil_core::Action::NAMES;
