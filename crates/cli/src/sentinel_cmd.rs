//! `vigil sentinel ...`: embed texts, build an index, score groups, evaluate and sweep
//! settings on labelled groups. A stable machine interface: JSONL in, JSONL out.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vigil_sentinel::compare::{CompareRow, compare_row};
use vigil_sentinel::encoder::MODEL_HELP;
use vigil_sentinel::harness::{
    EncodedGroups, EvalRow, Grid, LabeledGroup, compare_aggregators, evaluate_affinities,
    group_affinity, run_grid_search, score_groups,
};
use vigil_sentinel::index::read_safetensors;
use vigil_sentinel::{
    Aggregator, CachedEncoder, CalibratedScorer, Encoder, GroupAggregator, Matrix, MiniLmEncoder,
    Precision, ScoreParams, Scorer, SentinelIndex,
};

/// Sentinel subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum SentinelCommand {
    /// Embed texts: JSONL lines {"text": ...} in, {"text", "embedding"} out.
    Embed(EmbedArgs),
    /// Build an index from positive and negative example files.
    Build(BuildArgs),
    /// Compare the six aggregators on labelled groups (JSONL {"group", "label", "texts"}).
    Eval(EvalArgs),
    /// Grid search over index size, ratio, top_k, min_score and aggregator on labelled groups
    /// (with a calibrated scorer, its aggregators' rows follow, named calibrated:NAME).
    Sweep(SweepArgs),
    /// Score groups of texts: JSONL lines {"group", "texts"} in, one result line per group out.
    Score(ScoreArgs),
    /// Fit the calibrated scorer of an existing index from its own examples and store it
    /// beside the index (two files the reference library ignores).
    Calibrate(CalibrateArgs),
    /// Distil the rare-harm cascade's static token embeddings from the model, once, into the
    /// model directory (`vigil run` does it on first use; this prepares a directory that
    /// will be read-only later).
    Distill(DistillArgs),
}

#[derive(Args, Debug)]
pub(crate) struct DistillArgs {
    /// A sentence-transformers model directory (written to) [env: VIGIL_MODEL; default:
    /// models/all-MiniLM-L6-v2].
    #[arg(long, env = "VIGIL_MODEL")]
    model: Option<PathBuf>,
}

/// Which scorer `vigil sentinel score` uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScorerChoice {
    /// The reference library's contrastive nearest-neighbour scoring (exactly as it scores).
    Reference,
    /// Per-message probabilities from the index's calibrated scorer (`vigil sentinel build`
    /// fits it; `vigil sentinel calibrate` adds it to an existing index).
    Calibrated,
}

/// Which scorers `vigil sentinel eval` reports.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EvalScorers {
    /// `both` when the index has a calibrated scorer, else `reference`.
    Auto,
    /// The reference harness's rows (the reference library's columns).
    Reference,
    /// The calibrated scorer's aggregators, side-by-side columns.
    Calibrated,
    /// Both scorers side by side: ROC-AUC, average precision, recall at 1% and 5%
    /// false-positive rate, with bootstrap intervals.
    Both,
}

#[derive(Args, Debug)]
pub(crate) struct CalibrateArgs {
    /// Index: a directory or s3://bucket/prefix (AWS_* environment for credentials and
    /// endpoint).
    #[arg(long)]
    index: String,
    /// Seed of the cross-validation folds and the simulated groups.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
pub(crate) struct ModelArg {
    /// A sentence-transformers model directory [env: VIGIL_MODEL; default: models/all-MiniLM-L6-v2].
    #[arg(long, env = "VIGIL_MODEL")]
    model: Option<PathBuf>,
    /// Arithmetic of the encoder's dense layers: f32 (exact; matches the reference), int16
    /// (fast mode: ~1.5x f32 end to end, near-lossless), int8 (fastest, lossy: cosine >= 0.99).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

impl ModelArg {
    fn load(&self) -> Result<MiniLmEncoder> {
        let dir = self
            .model
            .clone()
            .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2"));
        if !dir.join("model.safetensors").exists() {
            bail!("no model at {}: {MODEL_HELP}", dir.display());
        }
        Ok(MiniLmEncoder::load_with_precision(&dir, self.precision)?)
    }
}

#[derive(Args, Debug)]
pub(crate) struct EmbedArgs {
    #[command(flatten)]
    model: ModelArg,
    /// JSONL file of {"text": "..."} lines.
    #[arg(long)]
    input: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Rare-class examples: one per line, or JSONL with "text".
    #[arg(long)]
    positives: PathBuf,
    /// Ordinary examples: one per line, or JSONL with "text".
    #[arg(long)]
    negatives: PathBuf,
    /// Output index: a directory or s3://bucket/prefix.
    #[arg(long)]
    out: String,
    /// Keep at most floor(positives x R) negatives (chosen at random) before encoding.
    #[arg(long)]
    neg_to_pos_ratio: Option<f64>,
    /// Seed for that choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Do not fit the calibrated scorer (only the reference library's three files are written).
    #[arg(long)]
    no_calibrated: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ScoreArgs {
    /// Index: a directory or s3://bucket/prefix (AWS_* environment for credentials and
    /// endpoint).
    #[arg(long)]
    index: String,
    #[command(flatten)]
    model: ModelArg,
    /// JSONL file of {"group": "...", "texts": [...]} lines.
    #[arg(long)]
    input: PathBuf,
    /// Neighbours per observation.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Observation scores below this become 0.
    #[arg(long, default_value_t = 0.1)]
    min_score: f64,
    /// Skip an exact match at the top of the neighbour list.
    #[arg(long)]
    prevent_exact_match: bool,
    /// Which scorer: the reference library's method, or the index's calibrated scorer.
    #[arg(long, value_enum, default_value = "reference")]
    scorer: ScorerChoice,
    /// Reference: skewness (default), mean_of_positives, top_k_mean, percentile_score,
    /// softmax_weighted_mean, max_score. Calibrated: also expected_count, noisy_or, llr_sum
    /// [default: the one the scorer chose when it was fitted].
    #[arg(long)]
    aggregator: Option<String>,
    /// Keep floor(positives x R) random negatives on load, or `none` for all.
    #[arg(long, default_value = "none")]
    load_ratio: String,
    /// Seed for --load-ratio.
    #[arg(long)]
    seed: Option<u64>,
    /// Add explanations (neighbours and contrastive terms) to each result.
    #[arg(long)]
    explain: bool,
    /// Precomputed observation embeddings: a safetensors file with one f32 tensor per group
    /// name, rows in the group's text order. Skips encoding.
    #[arg(long)]
    embeddings: Option<PathBuf>,
}

/// The non-blank lines of a file with their 1-based line numbers.
fn non_blank_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}

fn parse_json_line(path: &Path, n: usize, line: &str) -> Result<serde_json::Value> {
    serde_json::from_str(line).with_context(|| format!("{}:{n}: invalid JSON", path.display()))
}

fn read_examples(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (n, line) in non_blank_lines(path)? {
        if line.trim_start().starts_with('{') {
            match parse_json_line(path, n, &line)?["text"].as_str() {
                Some(t) => out.push(t.to_string()),
                None => bail!(
                    "{}:{n}: a JSON line needs a \"text\" string",
                    path.display()
                ),
            }
        } else {
            out.push(line);
        }
    }
    Ok(out)
}

/// How to print harness rows.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum RowFormat {
    /// An aligned table of the main columns.
    Table,
    /// Every column as CSV.
    Csv,
    /// One JSON object per line, every column (NaN as null).
    Json,
}

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// Index: a directory or s3://bucket/prefix (AWS_* environment for credentials and
    /// endpoint).
    #[arg(long)]
    index: String,
    #[command(flatten)]
    model: ModelArg,
    /// JSONL of {"group": "...", "label": 0|1, "texts": [...]} lines.
    #[arg(long)]
    groups: PathBuf,
    /// Neighbours per observation.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Observation scores below this become 0.
    #[arg(long, default_value_t = 0.1)]
    min_score: f64,
    /// Leaderboard size for precision/recall@n [default: number of positive groups].
    #[arg(long)]
    top_n: Option<i64>,
    /// Fixed decision threshold [default: the best-F1 threshold].
    #[arg(long)]
    threshold: Option<f64>,
    /// Which scorers to report.
    #[arg(long, value_enum, default_value = "auto")]
    scorer: EvalScorers,
    /// Bootstrap resamples of the groups behind each side-by-side interval.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: RowFormat,
}

#[derive(Args, Debug)]
pub(crate) struct SweepArgs {
    /// Index: a directory or s3://bucket/prefix (AWS_* environment for credentials and
    /// endpoint).
    #[arg(long)]
    index: String,
    #[command(flatten)]
    model: ModelArg,
    /// JSONL of {"group": "...", "label": 0|1, "texts": [...]} lines.
    #[arg(long)]
    groups: PathBuf,
    /// Index sizes (positives kept), comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    n_positive: Vec<usize>,
    /// Negative-to-positive ratios, comma-separated [default: all negatives].
    #[arg(long, value_delimiter = ',')]
    ratios: Vec<f64>,
    /// top_k values.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    top_k: Vec<usize>,
    /// min_score values.
    #[arg(long, value_delimiter = ',', default_value = "0.0,0.1,0.2")]
    min_score: Vec<f64>,
    /// Seed of the index subsampling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: RowFormat,
}

fn read_groups(path: &Path) -> Result<Vec<LabeledGroup>> {
    let mut groups = Vec::new();
    for (line, v) in read_jsonl(path)? {
        let name = v["group"].as_str().map(str::to_string);
        let label = v["label"].as_u64().filter(|l| *l <= 1);
        let texts: Option<Vec<String>> = v["texts"]
            .as_array()
            .and_then(|t| t.iter().map(|x| x.as_str().map(str::to_string)).collect());
        match (name, label, texts) {
            (Some(name), Some(label), Some(observations)) => groups.push(LabeledGroup {
                name,
                label: label as u8,
                observations,
            }),
            _ => bail!(
                "{}:{line}: each line needs \"group\" (string), \"label\" (0 or 1) and \"texts\" (array of strings)",
                path.display()
            ),
        }
    }
    Ok(groups)
}

fn encode_groups(enc: &MiniLmEncoder, groups: Vec<LabeledGroup>) -> Result<EncodedGroups> {
    Ok(EncodedGroups::encode(groups, &mut |t| {
        encode_all(enc, t).map_err(|e| vigil_sentinel::SentinelError::Internal(format!("{e:#}")))
    })?)
}

/// Harness columns in the reference's order.
const EVAL_COLUMNS: [&str; 28] = [
    "aggregator",
    "min_score_to_consider",
    "n_groups",
    "n_positive",
    "roc_auc",
    "top_n",
    "precision_at_n",
    "recall_at_n",
    "avg_rank_positive",
    "avg_rank_negative",
    "rank_ratio",
    "tp",
    "fp",
    "fn",
    "tn",
    "precision",
    "recall",
    "f1",
    "false_positive_rate",
    "decision_threshold",
    "mean_separation",
    "cohens_d",
    "ks_statistic",
    "top_k",
    "index_n_positive",
    "index_neg_to_pos_ratio",
    "index_n_positive_actual",
    "index_n_negative_actual",
];
const GRID_COLUMNS: [&str; 5] = [
    "top_k",
    "index_n_positive",
    "index_neg_to_pos_ratio",
    "index_n_positive_actual",
    "index_n_negative_actual",
];

fn print_rows(rows: &[EvalRow], format: RowFormat) -> Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match format {
        RowFormat::Json => {
            for v in &values {
                writeln!(out, "{v}")?;
            }
        }
        RowFormat::Csv => {
            let grid = rows.iter().any(|r| r.top_k.is_some());
            let cols: Vec<&str> = EVAL_COLUMNS
                .iter()
                .copied()
                .filter(|c| grid || !GRID_COLUMNS.contains(c))
                .collect();
            writeln!(out, "{}", cols.join(","))?;
            for v in &values {
                let line: Vec<String> = cols.iter().map(|c| cell(&v[*c])).collect();
                writeln!(out, "{}", line.join(","))?;
            }
        }
        RowFormat::Table => {
            let grid = rows.iter().any(|r| r.top_k.is_some());
            let mut cols = vec![
                "aggregator",
                "min_score_to_consider",
                "roc_auc",
                "precision_at_n",
                "recall_at_n",
                "f1",
                "decision_threshold",
                "cohens_d",
                "ks_statistic",
            ];
            if grid {
                cols.splice(
                    0..0,
                    [
                        "index_n_positive_actual",
                        "index_n_negative_actual",
                        "top_k",
                    ],
                );
            }
            // Aggregator names in full (calibrated:expected_count), the numbers in 12.
            let width = |c: &str| if c == "aggregator" { 32 } else { 12 };
            writeln!(
                out,
                "{}",
                cols.iter()
                    .map(|c| format!("{c:>w$.w$}", w = width(c)))
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
            for v in &values {
                let line: Vec<String> = cols
                    .iter()
                    .map(|c| match &v[*c] {
                        serde_json::Value::Number(n) => {
                            format!("{:>12.4}", n.as_f64().unwrap_or(f64::NAN))
                        }
                        other => format!("{:>w$.w$}", cell(other), w = width(c)),
                    })
                    .collect();
                writeln!(out, "{}", line.join(" "))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    non_blank_lines(path)?
        .into_iter()
        .map(|(n, line)| Ok((n, parse_json_line(path, n, &line)?)))
        .collect()
}

/// `vigil sentinel distill`: the static table made (or found sound) and written beside the
/// model; an unwritable directory is an error here, not a warning.
fn distill(a: &DistillArgs) -> Result<()> {
    use vigil_sentinel::cascade::{STATIC_FILE, StaticEmbeddings};
    let dir = a
        .model
        .clone()
        .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").exists() {
        bail!("no model at {}: {MODEL_HELP}", dir.display());
    }
    let enc = MiniLmEncoder::load(&dir)?;
    let pb = bar(enc.vocab_size(), "distilling");
    let table = StaticEmbeddings::load_or_distill(&enc, &dir, &|done, _| {
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let path = dir.join(STATIC_FILE);
    let stored = std::fs::read(&path)
        .ok()
        .and_then(|b| StaticEmbeddings::from_bytes(&b, &path).ok());
    if stored.as_ref() != Some(&table) {
        bail!(
            "could not write {} (is the model directory writable?)",
            path.display()
        );
    }
    eprintln!(
        "static token embeddings for {} tokens at {}",
        table.vocab(),
        path.display()
    );
    Ok(())
}

fn bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn encode_all(enc: &MiniLmEncoder, texts: &[String]) -> Result<Matrix> {
    let pb = bar(texts.len(), "encoding");
    let mut rows = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        let m = enc.encode(chunk)?;
        rows.extend((0..m.rows).map(|r| m.row(r).to_vec()));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    if rows.is_empty() {
        return Ok(Matrix {
            data: vec![],
            rows: 0,
            dim: enc.dim(),
        });
    }
    Ok(Matrix::from_rows(&rows)?)
}

/// Run a sentinel subcommand.
pub(crate) fn run(cmd: SentinelCommand) -> Result<()> {
    match cmd {
        SentinelCommand::Embed(a) => {
            let enc = a.model.load()?;
            let mut texts = Vec::new();
            for (line, v) in read_jsonl(&a.input)? {
                match v["text"].as_str() {
                    Some(t) => texts.push(t.to_string()),
                    None => bail!(
                        "{}:{line}: each line needs a \"text\" string",
                        a.input.display()
                    ),
                }
            }
            let m = encode_all(&enc, &texts)?;
            let mut out = BufWriter::new(std::io::stdout().lock());
            for (i, t) in texts.iter().enumerate() {
                let line = serde_json::json!({"text": t, "embedding": m.row(i)});
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        SentinelCommand::Build(a) => {
            let enc = a.model.load()?;
            let pos = read_examples(&a.positives)?;
            let neg = read_examples(&a.negatives)?;
            let pb = bar(pos.len() + neg.len(), "encoding");
            let idx =
                SentinelIndex::from_texts(&enc, pos, neg, a.neg_to_pos_ratio, a.seed, &|d, _| {
                    pb.set_position(d as u64)
                })?;
            pb.finish_and_clear();
            idx.save_to(&a.out)?;
            eprintln!(
                "index with {} positives and {} negatives saved to {}",
                idx.positive.rows, idx.negative.rows, a.out
            );
            if !a.no_calibrated {
                match calibrate(&idx, &a.out, a.seed.unwrap_or(1)) {
                    // Too few examples for cross-validation: the index itself is still good.
                    Err(e)
                        if e.downcast_ref::<vigil_sentinel::SentinelError>()
                            .is_some_and(|s| {
                                matches!(s, vigil_sentinel::SentinelError::BadInput(_))
                            }) =>
                    {
                        eprintln!("no calibrated scorer: {e}");
                    }
                    other => other?,
                }
            }
        }
        SentinelCommand::Calibrate(a) => {
            let idx = SentinelIndex::load_from(&a.index, None, None)?;
            calibrate(&idx, &a.index, a.seed)?;
        }
        SentinelCommand::Distill(a) => distill(&a)?,
        SentinelCommand::Score(a) => score(a)?,
        SentinelCommand::Eval(a) => {
            let index = SentinelIndex::load_from(&a.index, None, None)?;
            let calibrated = CalibratedScorer::load_from(&a.index)?;
            let scorers = match (a.scorer, &calibrated) {
                (EvalScorers::Auto, Some(_)) => EvalScorers::Both,
                (EvalScorers::Auto, None) => {
                    eprintln!(
                        "{} has no calibrated scorer: reference rows only (add one with \
                         `vigil sentinel calibrate --index {}`)",
                        a.index, a.index
                    );
                    EvalScorers::Reference
                }
                (EvalScorers::Calibrated | EvalScorers::Both, None) => {
                    return Err(no_calibrated(&a.index));
                }
                (s, _) => s,
            };
            let enc = a.model.load()?;
            check_dim(&index, &enc, Path::new(&a.index))?;
            let encoded = encode_groups(&enc, read_groups(&a.groups)?)?;
            if scorers == EvalScorers::Reference {
                let scores = score_groups(&index, &encoded, a.top_k)?;
                let rows = compare_aggregators(&scores, a.min_score, a.top_n, a.threshold);
                print_rows(&rows, a.format)?;
            } else {
                let rows = side_by_side(&index, calibrated.as_ref(), &encoded, &a, scorers)?;
                print_compare(&rows, a.format)?;
            }
        }
        SentinelCommand::Sweep(a) => {
            let index = SentinelIndex::load_from(&a.index, None, None)?;
            let enc = a.model.load()?;
            check_dim(&index, &enc, Path::new(&a.index))?;
            let encoded = encode_groups(&enc, read_groups(&a.groups)?)?;
            let grid = Grid {
                n_positive_values: if a.n_positive.is_empty() {
                    vec![None]
                } else {
                    a.n_positive.iter().map(|&n| Some(n)).collect()
                },
                neg_to_pos_ratios: if a.ratios.is_empty() {
                    vec![None]
                } else {
                    a.ratios.iter().map(|&r| Some(r)).collect()
                },
                top_k_values: a.top_k.clone(),
                min_score_values: a.min_score.clone(),
                aggregators: Aggregator::ALL.to_vec(),
                index_seed: Some(a.seed),
            };
            let total = grid.n_positive_values.len()
                * grid.neg_to_pos_ratios.len()
                * grid.top_k_values.len();
            let pb = bar(total, "scoring");
            let mut rows =
                run_grid_search(&index, &encoded, &grid, &|d, _| pb.set_position(d as u64))?;
            pb.finish_and_clear();
            // The calibrated scorer (fitted on the whole index), one row per aggregator,
            // named `calibrated:AGGREGATOR`, beside the reference grid.
            if let Some(c) = CalibratedScorer::load_from(&a.index)? {
                let labels: Vec<bool> = encoded.groups.iter().map(|g| g.label == 1).collect();
                let probs = group_probabilities(&c, &encoded)?;
                for agg in GroupAggregator::all() {
                    let aff: Vec<f64> = probs.iter().map(|p| c.aggregate(p, agg)).collect();
                    let name = format!("calibrated:{}", agg.name());
                    rows.push(evaluate_affinities(&aff, &labels, &name, 0.0, None, None));
                }
            }
            print_rows(&rows, a.format)?;
        }
    }
    Ok(())
}

/// Build an index (and its calibrated scorer) from example texts at `out`: `vigil sentinel
/// build`'s path, for `vigil demo`.
pub(crate) fn build_index(
    model: &Path,
    positives: Vec<String>,
    negatives: Vec<String>,
    out: &str,
) -> Result<()> {
    if !model.join("model.safetensors").exists() {
        bail!("no model at {}: {MODEL_HELP}", model.display());
    }
    let enc = MiniLmEncoder::load(model)?;
    let pb = bar(positives.len() + negatives.len(), "encoding");
    let idx = SentinelIndex::from_texts(&enc, positives, negatives, None, Some(1), &|d, _| {
        pb.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    idx.save_to(out)?;
    calibrate(&idx, out, 1)
}

/// Each group's messages' calibrated probabilities.
fn group_probabilities(c: &CalibratedScorer, encoded: &EncodedGroups) -> Result<Vec<Vec<f64>>> {
    Ok(encoded
        .groups
        .iter()
        .zip(&encoded.embeddings)
        .map(|(g, m)| c.probabilities(m, &g.observations))
        .collect::<Result<_, _>>()?)
}

/// The user asked for a calibrated scorer the index does not have.
fn no_calibrated(index: &str) -> anyhow::Error {
    anyhow::Error::new(crate::BadArgument(format!(
        "{index} has no calibrated scorer: fit one with `vigil sentinel calibrate --index {index}`"
    )))
}

/// Fit the calibrated scorer on an index's examples and store it at `location`.
fn calibrate(index: &SentinelIndex, location: &str, seed: u64) -> Result<()> {
    let pb = ProgressBar::new_spinner();
    pb.set_message(format!(
        "fitting the calibrated scorer on {} + {} examples (5-fold cross-validation)",
        index.positive.rows, index.negative.rows
    ));
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let fitted = CalibratedScorer::fit(index, seed);
    pb.finish_and_clear();
    let scorer = fitted?;
    scorer.save_to(location)?;
    let m = &scorer.manifest;
    let lexical = match &m.lexical {
        Some(l) => format!(", text n-grams {:.3}", l.cv_roc_auc),
        None => ", no example texts in the index: embeddings only".into(),
    };
    eprintln!(
        "calibrated scorer saved to {location}: per-message out-of-fold ROC-AUC {:.3} \
         (embeddings {:.3}{lexical}); default aggregator {} (chosen on groups simulated from \
         the index's own examples)",
        m.cv_roc_auc, m.embedding.cv_roc_auc, m.default_aggregator
    );
    Ok(())
}

/// Group affinities of the reference scorer (its six aggregators) and of the calibrated
/// scorer (its nine), compared on the same bootstrap resamples.
fn side_by_side(
    index: &SentinelIndex,
    calibrated: Option<&CalibratedScorer>,
    encoded: &EncodedGroups,
    a: &EvalArgs,
    scorers: EvalScorers,
) -> Result<Vec<CompareRow>> {
    let labels: Vec<bool> = encoded.groups.iter().map(|g| g.label == 1).collect();
    let mut rows = Vec::new();
    if scorers == EvalScorers::Both {
        let scores = score_groups(index, encoded, a.top_k)?;
        for agg in Aggregator::ALL {
            let aff: Vec<f64> = scores
                .iter()
                .map(|g| group_affinity(&g.observation_scores, agg, a.min_score))
                .collect();
            rows.push(compare_row(
                "reference",
                agg.name(),
                &aff,
                &labels,
                a.resamples,
                a.seed,
            ));
        }
    }
    if let Some(c) = calibrated {
        let probs = group_probabilities(c, encoded)?;
        let default = c.default_aggregator()?;
        for agg in GroupAggregator::all() {
            let aff: Vec<f64> = probs.iter().map(|p| c.aggregate(p, agg)).collect();
            let name = if agg == default {
                format!("{} (default)", agg.name())
            } else {
                agg.name().to_string()
            };
            rows.push(compare_row(
                "calibrated",
                &name,
                &aff,
                &labels,
                a.resamples,
                a.seed,
            ));
        }
    }
    Ok(rows)
}

fn print_compare(rows: &[CompareRow], format: RowFormat) -> Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let f = |v: Option<f64>| v.map_or_else(String::new, |x| format!("{x:.4}"));
    match format {
        RowFormat::Json => {
            for r in rows {
                writeln!(out, "{}", serde_json::to_string(r)?)?;
            }
        }
        RowFormat::Csv => {
            writeln!(
                out,
                "scorer,aggregator,n_groups,n_positive,roc_auc,roc_auc_low,roc_auc_high,\
                 average_precision,average_precision_low,average_precision_high,\
                 recall_at_1pct_fpr,recall_at_1pct_fpr_low,recall_at_1pct_fpr_high,\
                 recall_at_5pct_fpr,recall_at_5pct_fpr_low,recall_at_5pct_fpr_high,resamples"
            )?;
            for r in rows {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                    r.scorer,
                    r.aggregator,
                    r.n_groups,
                    r.n_positive,
                    f(r.roc_auc),
                    f(r.roc_auc_low),
                    f(r.roc_auc_high),
                    f(r.average_precision),
                    f(r.average_precision_low),
                    f(r.average_precision_high),
                    f(r.recall_at_1pct_fpr),
                    f(r.recall_at_1pct_fpr_low),
                    f(r.recall_at_1pct_fpr_high),
                    f(r.recall_at_5pct_fpr),
                    f(r.recall_at_5pct_fpr_low),
                    f(r.recall_at_5pct_fpr_high),
                    r.resamples
                )?;
            }
        }
        RowFormat::Table => {
            let cell = |v: Option<f64>, lo: Option<f64>, hi: Option<f64>| match (v, lo, hi) {
                (Some(v), Some(lo), Some(hi)) => format!("{v:.3} [{lo:.3}-{hi:.3}]"),
                (Some(v), _, _) => format!("{v:.3}"),
                _ => "-".into(),
            };
            writeln!(
                out,
                "{:<10} {:<26} {:>21} {:>21} {:>21} {:>21}",
                "scorer",
                "aggregator",
                "roc_auc",
                "average_precision",
                "recall@1%fpr",
                "recall@5%fpr"
            )?;
            for r in rows {
                writeln!(
                    out,
                    "{:<10} {:<26} {:>21} {:>21} {:>21} {:>21}",
                    r.scorer,
                    r.aggregator,
                    cell(r.roc_auc, r.roc_auc_low, r.roc_auc_high),
                    cell(
                        r.average_precision,
                        r.average_precision_low,
                        r.average_precision_high
                    ),
                    cell(
                        r.recall_at_1pct_fpr,
                        r.recall_at_1pct_fpr_low,
                        r.recall_at_1pct_fpr_high
                    ),
                    cell(
                        r.recall_at_5pct_fpr,
                        r.recall_at_5pct_fpr_low,
                        r.recall_at_5pct_fpr_high
                    ),
                )?;
            }
            if let Some(r) = rows.first() {
                writeln!(
                    out,
                    "\n{} groups, {} harmful. [low-high]: 95% bootstrap interval over {} resamples \
                     of the groups. With a few hundred groups these intervals are wide: scorers \
                     whose intervals overlap are not shown apart by this data.",
                    r.n_groups, r.n_positive, r.resamples
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// An index built with another encoder cannot be searched with this one.
fn check_dim(index: &SentinelIndex, enc: &MiniLmEncoder, path: &Path) -> Result<()> {
    if index.dim() != enc.dim() {
        bail!(
            "index {} has {}-dimensional embeddings but the encoder makes {}-dimensional ones: \
             rebuild the index with this model or pass the model it was built with",
            path.display(),
            index.dim(),
            enc.dim()
        );
    }
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let calibrated = match a.scorer {
        ScorerChoice::Reference => None,
        ScorerChoice::Calibrated => {
            Some(CalibratedScorer::load_from(&a.index)?.ok_or_else(|| no_calibrated(&a.index))?)
        }
    };
    let bad = |e: String| anyhow::Error::new(crate::BadArgument(e));
    let group_aggregator = match (&calibrated, &a.aggregator) {
        (Some(c), None) => Some(c.default_aggregator()?),
        (Some(_), Some(name)) => Some(name.parse::<GroupAggregator>().map_err(bad)?),
        (None, _) => None,
    };
    let aggregator: Aggregator = a
        .aggregator
        .as_deref()
        .filter(|_| calibrated.is_none())
        .unwrap_or("skewness")
        .parse()
        .map_err(bad)?;
    let ratio = match a.load_ratio.as_str() {
        "none" => None,
        r => Some(
            r.parse::<f64>()
                .with_context(|| format!("--load-ratio {r:?} is not a number or `none`"))?,
        ),
    };
    let index = SentinelIndex::load_from(&a.index, ratio, a.seed)?;
    let params = ScoreParams {
        top_k: a.top_k,
        min_score_to_consider: a.min_score,
        prevent_exact_match: a.prevent_exact_match,
        aggregator,
        explain: a.explain,
        ..ScoreParams::default()
    };
    let mut groups = Vec::new();
    for (line, v) in read_jsonl(&a.input)? {
        let name = v["group"].as_str().map(str::to_string);
        let texts: Option<Vec<String>> = v["texts"]
            .as_array()
            .and_then(|t| t.iter().map(|x| x.as_str().map(str::to_string)).collect());
        match (name, texts) {
            (Some(n), Some(t)) => groups.push((n, t)),
            _ => bail!(
                "{}:{line}: each line needs \"group\" (a string) and \"texts\" (a list of strings)",
                a.input.display()
            ),
        }
    }
    let precomputed: Option<std::collections::HashMap<String, Matrix>> = match &a.embeddings {
        Some(p) => Some(read_safetensors(p)?.into_iter().collect()),
        None => None,
    };
    // Recent message embeddings are cached: the same text in many groups is encoded once.
    let encoder = if precomputed.is_none() {
        Some(CachedEncoder::new(a.model.load()?, 100_000))
    } else {
        None
    };
    if let Some(enc) = &encoder
        && enc.dim() != index.dim()
    {
        bail!(
            "the index has {}-dimensional embeddings but the model produces {}",
            index.dim(),
            enc.dim()
        );
    }
    let scorer = Scorer::new(&index);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let pb = bar(groups.len(), "scoring");
    // Groups are encoded a block at a time: one encoder call per block (the cache encodes
    // only texts it has not seen), then each group takes its rows.
    const BLOCK: usize = 256;
    let mut block_emb: Option<Matrix> = None;
    let mut block_start = 0;
    for (g, (name, texts)) in groups.iter().enumerate() {
        if let (None, Some(enc)) = (&precomputed, &encoder)
            && g % BLOCK == 0
        {
            let all: Vec<String> = groups[g..(g + BLOCK).min(groups.len())]
                .iter()
                .flat_map(|(_, t)| t.iter().cloned())
                .collect();
            block_emb = Some(enc.encode(&all)?);
            block_start = 0;
        }
        let emb = match (&precomputed, &block_emb) {
            (Some(map), _) => map
                .get(name)
                .cloned()
                .with_context(|| format!("--embeddings has no tensor named {name:?}"))?,
            (None, Some(all)) => {
                let rows: Vec<usize> = (block_start..block_start + texts.len()).collect();
                block_start += texts.len();
                let mut m = all.select(&rows);
                m.dim = all.dim;
                m
            }
            (None, None) => bail!("no encoder and no embeddings"),
        };
        if let (Some(c), Some(agg)) = (&calibrated, group_aggregator) {
            let p = c
                .probabilities(&emb, texts)
                .with_context(|| format!("group {name:?}"))?;
            let line = serde_json::json!({
                "group": name,
                "scorer": "calibrated",
                "affinity": c.aggregate(&p, agg),
                "aggregation_name": agg.name(),
                "num_texts": texts.len(),
                "per_observation_probabilities": p,
            });
            writeln!(out, "{line}")?;
            pb.inc(1);
            continue;
        }
        let r = scorer
            .score_group(texts, &emb, &params)
            .with_context(|| format!("group {name:?}"))?;
        let mut obs = serde_json::Map::new();
        for (t, s) in &r.observation_scores {
            obs.insert(t.clone(), serde_json::json!(s));
        }
        let mut line = serde_json::json!({
            "group": name,
            "affinity": r.affinity,
            "observation_scores": obs,
            "per_observation_scores": r.per_observation,
            "aggregation_name": r.aggregation_name,
            "aggregation_stats": r.aggregation_stats,
        });
        if let Some(e) = &r.explanations {
            line["explanations"] = serde_json::to_value(e)?;
        }
        writeln!(out, "{line}")?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    out.flush()?;
    if let Some(enc) = &encoder {
        let (hits, misses) = enc.stats();
        tracing::info!("embedding cache: {hits} texts reused, {misses} encoded");
    }
    Ok(())
}
