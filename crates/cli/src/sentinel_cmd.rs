//! `vigil sentinel ...`: embed texts, build an index, score groups. A stable machine
//! interface: JSONL in, JSONL out.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vigil_sentinel::encoder::MODEL_HELP;
use vigil_sentinel::index::read_safetensors;
use vigil_sentinel::{
    Aggregator, Encoder, Matrix, MiniLmEncoder, ScoreParams, Scorer, SentinelIndex,
};

/// Sentinel subcommands.
#[derive(Subcommand, Debug)]
pub enum SentinelCommand {
    /// Embed texts: JSONL lines {"text": ...} in, {"text", "embedding"} out.
    Embed(EmbedArgs),
    /// Build an index from positive and negative example files.
    Build(BuildArgs),
    /// Score groups of texts: JSONL lines {"group", "texts"} in, one result line per group out.
    Score(ScoreArgs),
}

#[derive(Args, Debug)]
pub struct ModelArg {
    /// A sentence-transformers model directory [env: VIGIL_MODEL; default: models/all-MiniLM-L6-v2].
    #[arg(long, env = "VIGIL_MODEL")]
    model: Option<PathBuf>,
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
        Ok(MiniLmEncoder::load(&dir)?)
    }
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArg,
    /// JSONL file of {"text": "..."} lines.
    #[arg(long)]
    input: PathBuf,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Rare-class examples: one per line, or JSONL with "text".
    #[arg(long)]
    positives: PathBuf,
    /// Ordinary examples: one per line, or JSONL with "text".
    #[arg(long)]
    negatives: PathBuf,
    /// Output index directory.
    #[arg(long)]
    out: PathBuf,
    /// Keep at most floor(positives x R) negatives (chosen at random) before encoding.
    #[arg(long)]
    neg_to_pos_ratio: Option<f64>,
    /// Seed for that choice.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Index directory.
    #[arg(long)]
    index: PathBuf,
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
    /// skewness, mean_of_positives, top_k_mean, percentile_score, softmax_weighted_mean, max_score.
    #[arg(long, default_value = "skewness")]
    aggregator: String,
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

fn read_examples(path: &Path) -> Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_start().starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
            match v["text"].as_str() {
                Some(t) => out.push(t.to_string()),
                None => bail!(
                    "{}:{}: a JSON line needs a \"text\" string",
                    path.display(),
                    i + 1
                ),
            }
        } else {
            out.push(line);
        }
    }
    Ok(out)
}

fn read_jsonl(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
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
pub fn run(cmd: SentinelCommand) -> Result<()> {
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
            idx.save(&a.out)?;
            eprintln!(
                "index with {} positives and {} negatives saved to {}",
                idx.positive.rows,
                idx.negative.rows,
                a.out.display()
            );
        }
        SentinelCommand::Score(a) => score(a)?,
    }
    Ok(())
}

fn score(a: ScoreArgs) -> Result<()> {
    let aggregator: Aggregator = a.aggregator.parse().map_err(anyhow::Error::msg)?;
    let ratio = match a.load_ratio.as_str() {
        "none" => None,
        r => Some(
            r.parse::<f64>()
                .with_context(|| format!("--load-ratio {r:?} is not a number or `none`"))?,
        ),
    };
    let index = SentinelIndex::load(&a.index, ratio, a.seed)?;
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
    let encoder = if precomputed.is_none() {
        Some(a.model.load()?)
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
    for (name, texts) in &groups {
        let emb = match (&precomputed, &encoder) {
            (Some(map), _) => map
                .get(name)
                .cloned()
                .with_context(|| format!("--embeddings has no tensor named {name:?}"))?,
            (None, Some(enc)) => enc.encode(texts)?,
            (None, None) => bail!("no encoder and no embeddings"),
        };
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
    Ok(())
}
