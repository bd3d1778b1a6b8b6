//! Vigil configuration (`vigil.toml`).
//!
//! Every threshold, rule and weight of the pipeline lives here with the spec's default, so a
//! T&S engineer tunes Vigil by editing a file rather than Rust. Rules that users will want to
//! change (alerts) are data: SQL boolean expressions evaluated by the same engine that builds
//! the tables. Unknown keys are rejected so that a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod stages;
pub use stages::{
    ACTIONS, AutomationConfig, DetectionConfig, EnforcementConfig, EnforcementRule, ErMode,
    ModelKind, ReviewConfig, USER_CONTEXT_FEATURES,
};

/// Errors raised while reading a configuration file. Always the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A value is well-formed but makes no sense (a negative window, an empty rule name...).
    #[error("invalid config value `{key}`: {message}")]
    Invalid {
        /// Dotted key of the offending setting.
        key: String,
        /// Why it is rejected.
        message: String,
    },
    /// An unknown profile name was requested.
    #[error("unknown profile `{0}` (expected `default` or `notebook`)")]
    UnknownProfile(String),
}

/// Which family of defaults to start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Vigil's own defaults: the notebook's rules plus the improvements documented in README.
    #[default]
    Default,
    /// Exactly the notebook proof-of-concept's rules, for parity checks.
    Notebook,
}

impl std::str::FromStr for Profile {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "notebook" => Ok(Self::Notebook),
            other => Err(ConfigError::UnknownProfile(other.to_string())),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which defaults this file starts from.
    pub profile: Profile,
    /// Ingestion limits and timestamp policy.
    pub ingest: IngestConfig,
    /// SQL core tables.
    pub sql: SqlConfig,
    /// Daily metrics and alert rules.
    pub monitoring: MonitoringConfig,
    /// PSI drift on user-day features.
    pub drift: DriftConfig,
    /// Features, models and thresholds.
    pub detection: DetectionConfig,
    /// Review queue flags, priority and size.
    pub review: ReviewConfig,
    /// Dedup, clustering and entity resolution.
    pub automation: AutomationConfig,
    /// The ordered enforcement policy.
    pub enforcement: EnforcementConfig,
    /// The live service (`vigil serve`).
    pub serve: ServeConfig,
    /// The reviewer console served by `vigil serve`.
    pub console: ConsoleConfig,
    /// The rare-harm stage of `vigil run` / `vigil score` (off without an index).
    pub sentinel: SentinelConfig,
}

/// The rare-harm stage: every chat message scored with a Sentinel index (its calibrated
/// scorer when it has one), each user-day's and each user's trailing affinity added to the
/// user-day features the boosted model learns from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelConfig {
    /// A Sentinel index: a directory or `s3://bucket/prefix`; unset, the stage is off.
    pub index: Option<String>,
    /// Days of a user's messages behind `rare_harm_affinity_window` (the day itself and the
    /// days before it).
    pub window_days: u32,
    /// How many of the highest-scored messages `rare_harm_messages.csv` lists, each with its
    /// nearest harmful examples.
    pub top_messages: usize,
    /// Whether the models learn from the two rare-harm features (false: the stage still
    /// scores, reports and writes them, but the models, queue and policy do not use them).
    pub model_features: bool,
    /// A user-day whose `rare_harm_affinity_window` reaches this is queued (flag
    /// `rare_harm`, priority at least `affinity / (2 * review_at)`) and, by a rule put
    /// first in the policy, suggested `escalate` (reason `rare_harm_affinity`). In the
    /// scorer's units: with a calibrated index and `expected_count`, 1.0 is one expected
    /// harmful message, and the default 0.9 sits below it so that one message the scorer is
    /// sure of (probability ~1, expected count 1 - 1e-12) is not left out by rounding.
    /// Unset: none of this. Applies with `model_features`.
    pub review_at: Option<f64>,
    /// Whether distinct texts are screened first with static token embeddings distilled
    /// from the encoder, so that only candidates reach the exact encoder: `auto` (above
    /// `cascade_above` distinct texts, with a calibrated index), `on` or `off`.
    pub cascade: CascadeMode,
    /// `auto` screens runs with more distinct texts than this.
    pub cascade_above: usize,
    /// Share of the index's notable examples (exact probability >= 0.5) the screen's cut
    /// keeps; the cut is chosen on the index material only.
    pub cascade_recall: f64,
    /// The highest-ranked share of distinct texts that goes to the exact encoder whatever
    /// the cut (a run's texts are not the index's: typos, paraphrases).
    pub cascade_share: f64,
    /// Screened-out texts also scored exactly (an even spread) to estimate the cascade's
    /// recall on the run itself, reported in `run.json`; 0 skips the check.
    pub cascade_audit: usize,
}

/// When the rare-harm stage screens texts before the exact encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CascadeMode {
    /// Above `cascade_above` distinct texts, when the index has a calibrated scorer.
    Auto,
    /// Always (the index must have a calibrated scorer and keep its example texts).
    On,
    /// Never: every distinct text is encoded exactly.
    Off,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        Self {
            index: None,
            window_days: 7,
            top_messages: 100,
            model_features: true,
            review_at: Some(0.9),
            cascade: CascadeMode::Auto,
            cascade_above: 20_000,
            cascade_recall: 0.995,
            cascade_share: 0.005,
            cascade_audit: 2_000,
        }
    }
}

/// The reviewer console: sessions, claims, the queue's SLA, blurring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// A login lasts this long (seconds), then the reviewer logs in again.
    pub session_ttl_secs: u64,
    /// A claim on a case lasts this long (seconds) unless renewed; an abandoned claim then
    /// returns the case to the queue.
    pub claim_ttl_secs: u64,
    /// A case may wait this many hours for a decision; older ones are SLA breaches.
    pub sla_hours: f64,
    /// Message text whose rare-harm score (or, without one, whose case's risk) is at least
    /// this is blurred until the reviewer reveals it; each reveal is logged. 1.0 blurs only
    /// certain harm, 0.0 everything.
    pub blur_at: f64,
    /// Failed logins in a row before an account is locked; each further failure doubles
    /// the lock (30 s, 60 s, ... up to 15 minutes).
    pub max_failed_logins: u32,
    /// Cases per queue page.
    pub page_size: usize,
    /// Share of first decisions (0..1) sent for a second, blind review by another
    /// reviewer; the agreement rate is shown to leads. Chosen by a hash of the case id.
    pub second_review_share: f64,
    /// Mark the session cookies `Secure` (browsers then send them over HTTPS only): turn
    /// on when the console is reached through a TLS proxy.
    pub secure_cookies: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            session_ttl_secs: 8 * 3600,
            claim_ttl_secs: 15 * 60,
            sla_hours: 24.0,
            blur_at: 0.8,
            max_failed_logins: 5,
            page_size: 50,
            second_review_share: 0.1,
            secure_cookies: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::for_profile(Profile::Default)
    }
}

/// Ingestion settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Any field longer than this many bytes sends its row to quarantine.
    pub max_field_bytes: usize,
    /// A quoted CSV field may cross at most this many line ends: past it, the row is bad at
    /// its opening line and reading resumes on the next line (one stray quote cannot swallow
    /// the rest of a file).
    pub max_field_lines: usize,
    /// Rows per Arrow batch (and so the memory bound of one in-flight batch).
    pub batch_rows: usize,
    /// Accept timestamps without a UTC offset as UTC. Off by default: such a timestamp is
    /// ambiguous and is quarantined with a reason that names this setting.
    pub assume_utc_for_naive_timestamps: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_field_bytes: 64 * 1024,
            max_field_lines: 100,
            batch_rows: 64 * 1024,
            assume_utc_for_naive_timestamps: false,
        }
    }
}

/// The live service: request limits, group commit, flushing into the dataset, state bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Largest request body in bytes (a larger one is answered 413).
    pub max_body_bytes: usize,
    /// Most events in one request (more is answered 413).
    pub max_events_per_request: usize,
    /// Most events one group commit makes durable at once.
    pub group_commit_events: usize,
    /// Requests waiting for the durable log before new ones get 503 with Retry-After.
    pub intake_queue: usize,
    /// Move durable events into the Parquet dataset every this many seconds...
    pub flush_interval_secs: u64,
    /// ...or as soon as this many are waiting.
    pub flush_events: usize,
    /// Days of per-day detail kept per user, counted back from the user's newest event.
    pub state_days: u32,
    /// A user with no event for this many days of event time (behind the newest event the
    /// service has seen) is evicted from memory; 0 keeps every user.
    pub idle_evict_days: u32,
    /// Chat messages kept per user (for the queue enrichment and rare-harm affinity).
    pub recent_messages: usize,
    /// Distinct message texts whose rare-harm scores are cached (with `--sentinel-index`).
    pub sentinel_cache_texts: usize,
    /// A user whose rare-harm affinity reaches this gets a review case for the day of the
    /// message (flag `rare_harm`) even when the model does not flag it; unset: no such cases.
    pub rare_harm_review_at: Option<f64>,
    /// Evaluate `[monitoring]`'s alert rules over the live day metrics every this many
    /// seconds (0: never).
    pub alert_interval_secs: u64,
    /// Most automated (non-`allow`, non-`escalate`) actions per UTC day of event time; past
    /// it an action becomes `escalate` with rule `safety_cap` and an alert is raised once.
    pub cap_actions_per_day: u64,
    /// The same cap per enforcement rule (a bad rule cannot act on everyone).
    pub cap_actions_per_rule_per_day: u64,
    /// The same cap per action, e.g. `{ block = 1000 }`; actions not named are not capped
    /// beyond the two caps above.
    pub cap_per_action_per_day: BTreeMap<String, u64>,
    /// Where automated actions and alerts are sent (signed JSON POSTs).
    pub webhooks: Vec<WebhookConfig>,
}

/// One webhook: a URL, the environment variable holding its signing secret, what it gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the notices are POSTed to.
    pub url: String,
    /// The environment variable holding the HMAC secret (at least 16 bytes); the secret
    /// itself never goes into the config file.
    pub secret_env: String,
    /// Which notices: `action` (a user-day's new automated action), `alert` (a safety cap
    /// hit). Default both.
    #[serde(default = "WebhookConfig::default_kinds")]
    pub kinds: Vec<String>,
    /// Seconds one delivery attempt may take.
    #[serde(default = "WebhookConfig::default_timeout")]
    pub timeout_secs: f64,
}

/// Notice kinds a webhook can take.
pub const WEBHOOK_KINDS: &[&str] = &["action", "alert"];

impl WebhookConfig {
    fn default_kinds() -> Vec<String> {
        WEBHOOK_KINDS.iter().map(|k| (*k).to_string()).collect()
    }

    fn default_timeout() -> f64 {
        5.0
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_events_per_request: 20_000,
            group_commit_events: 50_000,
            intake_queue: 1024,
            flush_interval_secs: 60,
            flush_events: 200_000,
            state_days: 2,
            idle_evict_days: 30,
            recent_messages: 20,
            sentinel_cache_texts: 100_000,
            rare_harm_review_at: None,
            alert_interval_secs: 60,
            cap_actions_per_day: 10_000,
            cap_actions_per_rule_per_day: 5_000,
            cap_per_action_per_day: BTreeMap::new(),
            webhooks: Vec::new(),
        }
    }
}

/// Where the SQL of the core tables comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// A directory holding `core_users.sql`, `core_user_day.sql`, `core_day_metrics.sql` and
    /// `user_day_features.sql` to use instead of the built-in ones. Files missing there fall
    /// back to the built-in SQL.
    pub dir: Option<PathBuf>,
    /// Longest a query of the user's text may run (alert and enforcement rules, `vigil
    /// sql`), in seconds; past it the query is stopped and named. 0 means no limit.
    pub statement_timeout_secs: f64,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            dir: None,
            statement_timeout_secs: 300.0,
        }
    }
}

impl SqlConfig {
    /// The user timeout as a duration (`None` for no limit).
    pub fn statement_timeout(&self) -> Option<std::time::Duration> {
        (self.statement_timeout_secs > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.statement_timeout_secs))
    }
}

/// Monitoring settings: the alert rules and the robust anomaly rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// Fixed-threshold rules, evaluated in order over `monitoring_metrics`.
    pub alerts: Vec<AlertRule>,
    /// The statistical rule: a metric far from its trailing median in MAD units.
    pub robust_z: RobustZConfig,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            alerts: AlertRule::spec_defaults(),
            robust_z: RobustZConfig::default(),
        }
    }
}

/// One alert rule: a SQL boolean expression over the columns of `monitoring_metrics`
/// (`day, n_events, n_chat, n_active_users, n_blocked, n_warned, latency_ms_avg, block_rate,
/// warn_rate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Written to `alerts.csv` as `alert_type`.
    pub name: String,
    /// `high`, `medium` or `low`; a `high` alert opens an incident.
    pub severity: String,
    /// SQL boolean expression; the rule fires on the days where it is true.
    pub when: String,
    /// SQL string expression for the `details` column. `format_fixed(x, digits)` formats a
    /// number with a fixed count of decimals.
    pub details: String,
}

impl AlertRule {
    /// The spec's two rules.
    pub fn spec_defaults() -> Vec<Self> {
        vec![
            Self {
                name: "spike_block_rate".into(),
                severity: "high".into(),
                when: "block_rate > 0.08 AND n_chat > 500".into(),
                details: "'block_rate=' || format_fixed(block_rate, 3) || ', n_chat=' || n_chat"
                    .into(),
            },
            Self {
                name: "high_chat_per_user".into(),
                severity: "medium".into(),
                when: "CAST(n_chat AS DOUBLE) / n_active_users > 80".into(),
                details:
                    "'chats_per_user=' || format_fixed(CAST(n_chat AS DOUBLE) / n_active_users, 1)"
                        .into(),
            },
        ]
    }
}

/// The robust anomaly rule: for each listed metric and day, the median and MAD of the trailing
/// `window_days` days (not including the day itself); the day alerts when
/// `|value - median| / max(1.4826 * MAD, min_sigma_fraction * |median|) > z`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustZConfig {
    /// Turn the rule on or off.
    pub enabled: bool,
    /// Metrics (columns of `monitoring_metrics`) to watch.
    pub metrics: Vec<String>,
    /// Length of the trailing baseline in days.
    pub window_days: usize,
    /// Fewest baseline days needed before the rule can fire.
    pub min_history_days: usize,
    /// Threshold in robust standard deviations.
    pub z: f64,
    /// Severity of the alerts it raises.
    pub severity: String,
    /// Skip the last day when it covers less than this share of the median day's events (a
    /// partial day at the end of a window is not an anomaly).
    pub min_day_coverage: f64,
    /// The robust standard deviation is never taken below this fraction of the baseline
    /// median, so a week of unusually quiet days does not turn ordinary noise into alerts.
    pub min_sigma_fraction: f64,
}

impl Default for RobustZConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics: vec![
                "block_rate".into(),
                "warn_rate".into(),
                "n_chat".into(),
                "n_active_users".into(),
                "latency_ms_avg".into(),
            ],
            window_days: 7,
            min_history_days: 5,
            z: 4.0,
            severity: "medium".into(),
            min_day_coverage: 0.5,
            min_sigma_fraction: 0.05,
        }
    }
}

/// PSI drift settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// The last this many days are the current sample; the rest is the reference.
    pub recent_days: usize,
    /// PSI is computed only with at least this many days of data.
    pub min_days: usize,
    /// Number of quantile bins of the reference (edges at 0, 1/bins, ..., 1); 2 to 10,000.
    pub bins: usize,
    /// `drift_flag` is 1 when PSI is above this.
    pub flag_threshold: f64,
    /// Features to compare (columns of `user_day_features`).
    pub features: Vec<String>,
}

/// Alert severities; a `high` alert is what opens an incident ([`vigil_core::Severity`]'s
/// names).
pub const SEVERITIES: [&str; 3] = vigil_core::Severity::NAMES;

/// The twelve user-day features of the spec, in the spec's order.
pub const USER_DAY_FEATURES: [&str; 12] = [
    "n_events",
    "n_chat",
    "tokens_in_sum",
    "tokens_out_sum",
    "latency_ms_avg",
    "n_blocked",
    "n_warned",
    "n_ips",
    "n_devices",
    "block_rate",
    "warn_rate",
    "chat_fraction",
];

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            recent_days: 3,
            min_days: 6,
            bins: 10,
            flag_threshold: 0.2,
            features: USER_DAY_FEATURES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl Config {
    /// The defaults of one profile.
    pub fn for_profile(profile: Profile) -> Self {
        let mut monitoring = MonitoringConfig::default();
        if profile == Profile::Notebook {
            monitoring.robust_z.enabled = false;
        }
        Self {
            profile,
            ingest: IngestConfig::default(),
            sql: SqlConfig::default(),
            monitoring,
            drift: DriftConfig::default(),
            detection: DetectionConfig::for_profile(profile),
            review: ReviewConfig::default(),
            automation: AutomationConfig::for_profile(profile),
            enforcement: EnforcementConfig::default(),
            serve: ServeConfig::default(),
            console: ConsoleConfig::default(),
            sentinel: SentinelConfig::default(),
        }
    }

    /// Parse TOML text. Settings absent from the text take the defaults of the profile the
    /// text names (or `default`).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // First read the profile alone, then overlay the file on that profile's defaults.
        let raw: toml::Table = toml::from_str(text).map_err(parse_err)?;
        let profile = match raw.get("profile") {
            Some(toml::Value::String(s)) => s.parse::<Profile>()?,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "profile".into(),
                    message: format!("expected a string, found {}", other.type_str()),
                });
            }
            None => Profile::Default,
        };
        let mut merged = toml::Table::try_from(Self::for_profile(profile)).map_err(|e| {
            ConfigError::Invalid {
                key: "profile".into(),
                message: e.to_string(),
            }
        })?;
        merge_tables(&mut merged, raw);
        let cfg: Config = toml::Value::Table(merged).try_into().map_err(parse_err)?;
        cfg.validate()?;
        // Checked for a configuration the user wrote, not for one read back from a model
        // bundle (which never reads SQL files on the machine that scores).
        if let Some(dir) = &cfg.sql.dir
            && !dir.is_dir()
        {
            return Err(ConfigError::Invalid {
                key: "sql.dir".into(),
                message: format!(
                    "{} is not a directory (the built-in SQL would be used without a word)",
                    dir.display()
                ),
            });
        }
        Ok(cfg)
    }

    /// Read a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// The configuration as TOML, e.g. for `vigil config show`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Reject values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if self.ingest.max_field_bytes == 0 {
            return bad("ingest.max_field_bytes", "must be at least 1");
        }
        if self.ingest.batch_rows == 0 {
            return bad("ingest.batch_rows", "must be at least 1");
        }
        let sv = &self.serve;
        for (key, v) in [
            ("serve.max_body_bytes", sv.max_body_bytes),
            ("serve.max_events_per_request", sv.max_events_per_request),
            ("serve.group_commit_events", sv.group_commit_events),
            ("serve.intake_queue", sv.intake_queue),
            ("serve.flush_events", sv.flush_events),
            ("serve.state_days", sv.state_days as usize),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if sv.flush_interval_secs == 0 {
            return bad("serve.flush_interval_secs", "must be at least 1");
        }
        if sv.rare_harm_review_at.is_some_and(|t| !t.is_finite()) {
            return bad("serve.rare_harm_review_at", "must be a finite number");
        }
        if let Some(a) = sv
            .cap_per_action_per_day
            .keys()
            .find(|a| !ACTIONS.contains(&a.as_str()) || *a == "allow" || *a == "escalate")
        {
            return bad(
                "serve.cap_per_action_per_day",
                &format!("`{a}` is not an automated action (one of warn, rate_limit, block)"),
            );
        }
        for (i, h) in sv.webhooks.iter().enumerate() {
            let key = |k: &str| format!("serve.webhooks[{i}].{k}");
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return bad(&key("url"), "must start with http:// or https://");
            }
            if h.secret_env.trim().is_empty() {
                return bad(
                    &key("secret_env"),
                    "must name the environment variable that holds the signing secret",
                );
            }
            if h.kinds.is_empty() {
                return bad(&key("kinds"), "must name at least one of action, alert");
            }
            if let Some(k) = h
                .kinds
                .iter()
                .find(|k| !WEBHOOK_KINDS.contains(&k.as_str()))
            {
                return bad(
                    &key("kinds"),
                    &format!("`{k}` is not one of {}", WEBHOOK_KINDS.join(", ")),
                );
            }
            if !h.timeout_secs.is_finite() || !(0.1..=600.0).contains(&h.timeout_secs) {
                return bad(&key("timeout_secs"), "must be from 0.1 to 600 seconds");
            }
        }
        let t = self.sql.statement_timeout_secs;
        if !t.is_finite() || !(0.0..=1e9).contains(&t) {
            return bad(
                "sql.statement_timeout_secs",
                "must be a number of seconds from 0 (no limit) to 1e9",
            );
        }
        for (i, rule) in self.monitoring.alerts.iter().enumerate() {
            if rule.name.trim().is_empty() {
                return bad(&format!("monitoring.alerts[{i}].name"), "must not be empty");
            }
            if rule.when.trim().is_empty() {
                return bad(&format!("monitoring.alerts[{i}].when"), "must not be empty");
            }
            if !SEVERITIES.contains(&rule.severity.as_str()) {
                return bad(
                    &format!("monitoring.alerts[{i}].severity"),
                    &format!(
                        "`{}` is not one of {} (lower case; only `high` opens an incident)",
                        rule.severity,
                        SEVERITIES.join(", ")
                    ),
                );
            }
        }
        let rz = &self.monitoring.robust_z;
        if !SEVERITIES.contains(&rz.severity.as_str()) {
            return bad(
                "monitoring.robust_z.severity",
                &format!("`{}` is not one of {}", rz.severity, SEVERITIES.join(", ")),
            );
        }
        if rz.window_days == 0 {
            return bad("monitoring.robust_z.window_days", "must be at least 1");
        }
        if rz.min_history_days == 0 || rz.min_history_days > rz.window_days {
            return bad(
                "monitoring.robust_z.min_history_days",
                "must be between 1 and window_days",
            );
        }
        if rz.z.is_nan() || rz.z <= 0.0 {
            return bad("monitoring.robust_z.z", "must be positive");
        }
        if !(2..=10_000).contains(&self.drift.bins) {
            return bad("drift.bins", "must be from 2 to 10000");
        }
        if self.drift.recent_days == 0 {
            return bad("drift.recent_days", "must be at least 1");
        }
        if self.drift.min_days <= self.drift.recent_days {
            return bad("drift.min_days", "must be greater than drift.recent_days");
        }
        let d = &self.detection;
        if !(d.test_size > 0.0 && d.test_size < 1.0) {
            return bad("detection.test_size", "must be between 0 and 1");
        }
        if d.features.is_empty() {
            return bad("detection.features", "must name at least one feature");
        }
        if d.gbt_features.is_empty() {
            return bad("detection.gbt_features", "must name at least one feature");
        }
        for (key, v) in [
            ("detection.threshold_start", d.threshold_start),
            ("detection.threshold_end", d.threshold_end),
            ("detection.threshold_step", d.threshold_step),
        ] {
            if !v.is_finite() {
                return bad(key, "must be a finite number");
            }
        }
        if !(d.threshold_step > 0.0 && d.threshold_start <= d.threshold_end) {
            return bad(
                "detection.threshold_step",
                "the sweep needs a positive step and start <= end",
            );
        }
        if (d.threshold_end - d.threshold_start) / d.threshold_step > 1_000_000.0 {
            return bad(
                "detection.threshold_step",
                "the sweep would try more than a million thresholds",
            );
        }
        if d.gbt_trees == 0 || d.gbt_max_depth == 0 {
            return bad("detection.gbt_trees", "trees and depth must be at least 1");
        }
        if d.gbt_max_train_rows < 10 {
            // Fewer rows than this and the boosted model silently falls back to the heuristic.
            return bad("detection.gbt_max_train_rows", "must be at least 10");
        }
        let r = &self.review;
        // Numbers that divide or scale: finite and positive.
        for (key, v) in [
            ("detection.logistic_c", d.logistic_c),
            (
                "detection.gbt_learning_rate",
                f64::from(d.gbt_learning_rate),
            ),
            ("detection.heuristic_clip", d.heuristic_clip),
            ("review.priority_chat_scale", r.priority_chat_scale),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, "must be a finite positive number");
            }
        }
        // Each element of a list: weights finite (heuristic ones also >= 0), scales positive.
        for (key, values, ok, what) in [
            (
                "detection.heuristic_weights",
                &d.heuristic_weights[..],
                (|w: f64| w >= 0.0) as fn(f64) -> bool,
                "each weight must be a finite number >= 0",
            ),
            (
                "detection.heuristic_scales",
                &d.heuristic_scales[..],
                |s: f64| s > 0.0,
                "each scale must be a finite positive number (it divides)",
            ),
            (
                "review.priority_weights",
                &r.priority_weights[..],
                |_: f64| true,
                "each weight must be a finite number",
            ),
        ] {
            if values.iter().any(|v| !v.is_finite() || !ok(*v)) {
                return bad(key, what);
            }
        }
        for (key, v) in [
            ("review.heuristic_flag", r.heuristic_flag),
            ("review.uncertain_flag", r.uncertain_flag),
            ("review.uncertain_min_risk", r.uncertain_min_risk),
        ] {
            if !v.is_finite() {
                return bad(key, "must be a finite number");
            }
        }
        if self.automation.max_features == 0 {
            return bad("automation.max_features", "must be at least 1");
        }

        if self.review.queue_size == 0 {
            return bad("review.queue_size", "must be at least 1");
        }
        if self.automation.max_clusters < 2 {
            return bad("automation.max_clusters", "must be at least 2");
        }
        if self.automation.min_df == 0 {
            return bad(
                "automation.min_df",
                "must be at least 1 (a term in no case cannot be a feature)",
            );
        }
        // A key shared by one user links nobody: below 2 entity resolution silently finds
        // no rings at all.
        for (key, v) in [
            ("automation.ip_max_fanout", self.automation.ip_max_fanout),
            ("automation.max_key_fanout", self.automation.max_key_fanout),
        ] {
            if v < 2 {
                return bad(key, "must be at least 2");
            }
        }
        if !(1..=366).contains(&self.sentinel.window_days) {
            return bad("sentinel.window_days", "must be between 1 and 366");
        }
        if self
            .sentinel
            .review_at
            .is_some_and(|t| !(t.is_finite() && t > 0.0))
        {
            return bad("sentinel.review_at", "must be a positive number");
        }
        if !(self.sentinel.cascade_recall > 0.0 && self.sentinel.cascade_recall <= 1.0) {
            return bad("sentinel.cascade_recall", "must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.sentinel.cascade_share) {
            return bad("sentinel.cascade_share", "must be in [0, 1]");
        }
        if self.sentinel.top_messages > 100_000 {
            return bad("sentinel.top_messages", "must be at most 100000");
        }
        if self
            .sentinel
            .index
            .as_deref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return bad(
                "sentinel.index",
                "must name a directory or an s3:// location",
            );
        }
        if self.serve.sentinel_cache_texts == 0 {
            return bad("serve.sentinel_cache_texts", "must be at least 1");
        }
        let c = &self.console;
        for (key, v, lo) in [
            ("console.session_ttl_secs", c.session_ttl_secs, 1),
            ("console.claim_ttl_secs", c.claim_ttl_secs, 1),
            (
                "console.max_failed_logins",
                u64::from(c.max_failed_logins),
                1,
            ),
            ("console.page_size", c.page_size as u64, 1),
        ] {
            if v < lo {
                return bad(key, "must be at least 1");
            }
        }
        for (key, v) in [
            ("console.session_ttl_secs", c.session_ttl_secs),
            ("console.claim_ttl_secs", c.claim_ttl_secs),
        ] {
            if v > 30 * 86_400 {
                return bad(key, "must be at most 30 days (2592000)");
            }
        }
        if c.page_size > 1000 {
            return bad("console.page_size", "must be at most 1000");
        }
        if !(c.sla_hours.is_finite() && c.sla_hours > 0.0) {
            return bad("console.sla_hours", "must be a positive number of hours");
        }
        if !(0.0..=1.0).contains(&c.blur_at) {
            return bad("console.blur_at", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&c.second_review_share) {
            return bad("console.second_review_share", "must be between 0 and 1");
        }
        for (i, r) in self.enforcement.rules.iter().enumerate() {
            if !ACTIONS.contains(&r.action.as_str()) {
                return bad(
                    &format!("enforcement.rules[{i}].action"),
                    &format!("`{}` is not one of {}", r.action, ACTIONS.join(", ")),
                );
            }
            if r.when.trim().is_empty() {
                return bad(&format!("enforcement.rules[{i}].when"), "must not be empty");
            }
        }
        if !ACTIONS.contains(&self.enforcement.default_action.as_str()) {
            return bad(
                "enforcement.default_action",
                &format!("must be one of {}", ACTIONS.join(", ")),
            );
        }
        Ok(())
    }
}

/// Overlay `over` onto `base`, recursing into tables; arrays and scalars are replaced whole.
fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl vigil_core::Classify for ConfigError {
    fn kind(&self) -> vigil_core::ErrorKind {
        match self {
            // An unreadable file named by the user is still the user's to fix.
            ConfigError::Read { .. }
            | ConfigError::Parse { .. }
            | ConfigError::Invalid { .. }
            | ConfigError::UnknownProfile(_) => vigil_core::ErrorKind::Usage,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let cfg = Config::default();
        let text = cfg.to_toml();
        let back = Config::from_toml_str(&text, Path::new("x.toml")).unwrap();
        assert_eq!(cfg, back);
    }

    #[test]
    fn notebook_profile_turns_off_robust_rule_but_keeps_overrides() {
        let cfg = Config::from_toml_str(
            "profile = \"notebook\"\n[drift]\nflag_threshold = 0.3\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(cfg.profile, Profile::Notebook);
        assert!(!cfg.monitoring.robust_z.enabled);
        assert_eq!(cfg.drift.flag_threshold, 0.3);
        assert_eq!(cfg.drift.bins, 10);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::from_toml_str("[drift]\nflag_treshold = 0.3\n", Path::new("v.toml"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("flag_treshold"), "{msg}");
        assert!(msg.contains("v.toml"), "{msg}");
    }

    /// Regression: NaN weights, zero scales, `max_features = 0`, `gbt_max_train_rows = 0`
    /// and a missing `sql.dir` were accepted (some failing late without the key, some
    /// silently changing the model); each is refused up front, naming its key.
    #[test]
    fn nonsense_numbers_and_paths_are_refused_naming_the_key() {
        for (toml, key) in [
            (
                "[detection]\nheuristic_weights = [1.0, nan, 1.0, 1.0]\n",
                "detection.heuristic_weights",
            ),
            (
                "[detection]\nheuristic_scales = [50.0, 0.0, 3.0, 5.0]\n",
                "detection.heuristic_scales",
            ),
            (
                "[detection]\nheuristic_clip = inf\n",
                "detection.heuristic_clip",
            ),
            (
                "[detection]\ngbt_learning_rate = nan\n",
                "detection.gbt_learning_rate",
            ),
            (
                "[detection]\ngbt_max_train_rows = 0\n",
                "detection.gbt_max_train_rows",
            ),
            ("[detection]\nlogistic_c = inf\n", "detection.logistic_c"),
            (
                "[detection]\nthreshold_start = nan\n",
                "detection.threshold_start",
            ),
            ("[review]\nheuristic_flag = nan\n", "review.heuristic_flag"),
            (
                "[review]\npriority_weights = [0.5, nan, 0.2]\n",
                "review.priority_weights",
            ),
            (
                "[review]\npriority_chat_scale = 0.0\n",
                "review.priority_chat_scale",
            ),
            (
                "[automation]\nmax_features = 0\n",
                "automation.max_features",
            ),
            ("[sql]\ndir = \"/no/such/vigil/sql/dir\"\n", "sql.dir"),
            (
                "[sql]\nstatement_timeout_secs = -1.0\n",
                "sql.statement_timeout_secs",
            ),
            ("[ingest]\nmax_field_bytes = 0\n", "ingest.max_field_bytes"),
            ("[automation]\nmin_df = 0\n", "automation.min_df"),
            (
                "[automation]\nip_max_fanout = 1\n",
                "automation.ip_max_fanout",
            ),
            (
                "[automation]\nmax_key_fanout = 0\n",
                "automation.max_key_fanout",
            ),
            (
                "[serve]\nsentinel_cache_texts = 0\n",
                "serve.sentinel_cache_texts",
            ),
            (
                "[serve]\nrare_harm_review_at = nan\n",
                "serve.rare_harm_review_at",
            ),
            ("[serve]\nintake_queue = 0\n", "serve.intake_queue"),
            (
                "[sentinel]\ncascade_recall = 0.0\n",
                "sentinel.cascade_recall",
            ),
            (
                "[sentinel]\ncascade_recall = nan\n",
                "sentinel.cascade_recall",
            ),
            (
                "[sentinel]\ncascade_share = 1.5\n",
                "sentinel.cascade_share",
            ),
            // An unknown mode is refused by name, not read as `auto`.
            ("[sentinel]\ncascade = \"always\"\n", "always"),
        ] {
            let err = Config::from_toml_str(toml, Path::new("v.toml")).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    #[test]
    fn nonsense_values_are_rejected() {
        // `High` would never open an incident (incidents open on `high`): refused.
        let err = Config::from_toml_str(
            "[[monitoring.alerts]]\nname = \"x\"\nseverity = \"High\"\nwhen = \"true\"\ndetails = \"'x'\"\n",
            Path::new("v.toml"),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("monitoring.alerts[0].severity"),
            "{err}"
        );
        let err = Config::from_toml_str(
            "[monitoring.robust_z]\nseverity = \"urgent\"\n",
            Path::new("v.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("robust_z.severity"), "{err}");
        let err = Config::from_toml_str("[drift]\nbins = 1\n", Path::new("v.toml")).unwrap_err();
        assert!(err.to_string().contains("drift.bins"));
        // The boosted model needs a column too (an empty list left it with no rows to score).
        let err = Config::from_toml_str("[detection]\ngbt_features = []\n", Path::new("v.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("detection.gbt_features"));
        let err = Config::from_toml_str("profile = \"fast\"\n", Path::new("v.toml")).unwrap_err();
        assert!(err.to_string().contains("fast"));
        // A step so small the sweep's grid could not be allocated.
        let err = Config::from_toml_str(
            "[detection]\nthreshold_step = 1e-300\n",
            Path::new("v.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("million thresholds"), "{err}");
        // Four billion PSI bins ran the machine out of memory.
        let err =
            Config::from_toml_str("[drift]\nbins = 4000000000\n", Path::new("v.toml")).unwrap_err();
        assert!(err.to_string().contains("drift.bins"), "{err}");
    }

    #[test]
    fn user_rules_replace_the_defaults() {
        let cfg = Config::from_toml_str(
            "[[monitoring.alerts]]\nname = \"low_chat\"\nseverity = \"low\"\nwhen = \"n_chat < 10\"\ndetails = \"'n_chat=' || n_chat\"\n",
            Path::new("v.toml"),
        )
        .unwrap();
        assert_eq!(cfg.monitoring.alerts.len(), 1);
        assert_eq!(cfg.monitoring.alerts[0].name, "low_chat");
    }
}
