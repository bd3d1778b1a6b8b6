//! `vigil`: the command-line interface. Parses arguments, shows progress, maps errors to exit
//! codes; all logic lives in the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod review_cmd;
mod sentinel_cmd;
mod serve_cmd;

/// mimalloc keeps freed pages for reuse instead of handing every large column buffer back to
/// the kernel (see BENCHMARKS.md: the 10M-event run spent ~12% of its CPU zeroing fresh pages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tell mimalloc never to hand freed pages back to the kernel (its default purges them after
/// a delay). The encoder frees and reallocates the same few megabytes of activations per
/// batch; purged, every reuse page-faults and the kernel zeroes the pages again: 366,000
/// faults and ~25% of end-to-end Sentinel time (BENCHMARKS.md); ingest saves ~15% CPU; the
/// 10M-event `vigil run` ~18% wall time for ~15% more peak memory (2.68 GB, BENCHMARKS.md).
/// Set for every command. An explicit `MIMALLOC_PURGE_DELAY` in the environment (for example
/// `1000`, mimalloc's default, to trade that time back for memory) is left alone.
pub(crate) fn keep_freed_pages() {
    /// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (not exported by the -sys crate).
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    /// Its v3 default, which confirms the index before anything is changed.
    const DEFAULT_DELAY_MS: std::ffi::c_long = 1000;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: reads and sets one integer option of the allocator; no memory is passed.
    #[allow(unsafe_code)]
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) == DEFAULT_DELAY_MS {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// Turn transparent huge pages off for this process (the pipeline commands). mimalloc asks
/// the kernel for huge pages on its arena, and with `defrag=madvise` (a common default) the
/// first touch of each 2 MiB page compacts memory and zeroes the whole page, which cost
/// seconds of system time per run (BENCHMARKS.md, "transparent huge pages"). An explicit
/// `MIMALLOC_ALLOW_THP` in the environment is left alone.
fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and sets one flag of this
    // process; no memory is passed. A failure (an old kernel) leaves things as they were.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use vigil_config::{Config, Profile};
use vigil_events::{Dataset, EventsError, Format, GeneratorConfig, IngestOptions};
use vigil_pipeline::{PipelineError, Progress, RunOptions};

const EXAMPLES: &str = "\
Examples:
  vigil demo
  vigil generate --events 1000000 --seed 7 --out events.csv
  vigil run --input events.csv --out out/
  vigil score --model out/model --input today.csv --out today/
  vigil ingest more.jsonl.gz --data out/data
  vigil sql --out out/ \"SELECT day, block_rate FROM monitoring_metrics ORDER BY block_rate DESC LIMIT 3\"
  vigil review list --out out/
  vigil review decide --out out/ u_00042@2026-02-10 --decision block --reason spam --reviewer alice
  vigil config --profile notebook > vigil.toml";

/// Vigil: a Trust & Safety pipeline from raw product events to detection, review, enforcement
/// and an executive report; plus Sentinel rare-harm detection.
#[derive(Parser, Debug)]
#[command(name = "vigil", version, about, after_help = EXAMPLES)]
struct Cli {
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate seeded synthetic telemetry (CSV or Parquet) plus ground_truth.csv beside it.
    #[command(
        after_help = "Examples:\n  vigil generate --out events.csv\n  vigil generate --events 200000 --rings 8 --incident-day 5 --drift --end 2026-02-15T00:00:00Z --out gen/events.parquet"
    )]
    Generate(GenerateArgs),
    /// Validate event files and append them to the Parquet dataset; bad rows go to quarantine.
    #[command(
        after_help = "Examples:\n  vigil ingest events.csv\n  vigil ingest logs/day1.jsonl.gz logs/day2.jsonl.zst --data vigil-data\n  vigil ingest export.txt --format csv --strict"
    )]
    Ingest(IngestArgs),
    /// Generate synthetic telemetry and run every stage on it: the one-command tour.
    #[command(after_help = "Examples:\n  vigil demo\n  vigil demo --events 1000000 --out demo-1m")]
    Demo(DemoArgs),
    /// Ingest inputs and run every stage: core tables, monitoring, detection, review queue,
    /// automation, enforcement, incidents, report.
    #[command(
        after_help = "Examples:\n  vigil run --input events.csv --out out/\n  vigil run --input events.csv --out out/ --profile notebook\n  vigil run --input gen/events.csv --ground-truth gen/ground_truth.csv --out out/ --config vigil.toml"
    )]
    Run(RunArgs),
    /// Apply a saved model bundle (`OUT/model` of a `vigil run`) to events without refitting:
    /// features, risk, review queue, enforcement suggestions and the report.
    #[command(
        after_help = "Examples:\n  vigil run --input last_week.csv --out trained/\n  vigil score --model trained/model --input today.csv --out today/\n  vigil score --model trained/model --data vigil-data --out scored/"
    )]
    Score(ScoreArgs),
    /// Work the review queue of a run: list, show, decide, verify the audit log.
    #[command(
        after_help = "Examples:\n  vigil review list --out out/ --undecided\n  vigil review show --out out/ u_00042@2026-02-10\n  vigil review decide --out out/ u_00042@2026-02-10 --decision rate_limit --reason policy_evasion --reviewer alice --notes \"asked to bypass filters\"\n  vigil review verify --out out/"
    )]
    Review {
        #[command(subcommand)]
        cmd: review_cmd::ReviewCommand,
    },
    /// Run SQL over the events and the tables of an output directory.
    #[command(
        after_help = "Example:\n  vigil sql --out out/ \"SELECT user_id, n_events FROM core_users ORDER BY n_events DESC LIMIT 5\""
    )]
    Sql(SqlArgs),
    /// Sentinel rare-harm detection: embed texts, build an index, score groups, tune settings.
    #[command(
        after_help = "Examples:\n  ./scripts/fetch-model.sh\n  vigil sentinel build --model models/all-MiniLM-L6-v2 --positives harmful.txt --negatives ordinary.txt --out my-index\n  vigil sentinel score --index my-index --model models/all-MiniLM-L6-v2 --input groups.jsonl --explain\n  vigil sentinel eval --index s3://bucket/my-index --groups labelled.jsonl\n  vigil sentinel sweep --index my-index --groups labelled.jsonl --n-positive 100,500 --ratios 1,5 --format csv\n  vigil sentinel distill --model models/all-MiniLM-L6-v2   # the cascade's static embeddings, once"
    )]
    Sentinel {
        #[command(subcommand)]
        cmd: sentinel_cmd::SentinelCommand,
    },
    /// The live detection service: events in over HTTP, durable, scored in milliseconds.
    #[command(
        after_help = "Examples:\n  vigil run --input events.csv --out out/ && cp -r out/model vigil-data/model\n  vigil token create --data vigil-data --scope ingest --name collector\n  vigil serve --data vigil-data --listen 127.0.0.1:8080\n  vigil serve --data vigil-data --model out/model --config vigil.toml --listen 127.0.0.1:0\n  vigil serve --data vigil-data --sentinel-index grooming-index --sentinel-model models/all-MiniLM-L6-v2\n  kill -HUP $(pidof vigil)   # reload vigil.toml and the bundle (or POST /v1/admin/reload)\n\nThen:\n  curl -H \"Authorization: Bearer $TOKEN\" --data-binary @events.ndjson -H 'Content-Type: application/x-ndjson' http://127.0.0.1:8080/v1/events"
    )]
    Serve(serve_cmd::ServeArgs),
    /// API tokens of a service's data directory: create (printed once), list, revoke.
    #[command(
        after_help = "Examples:\n  vigil token create --data vigil-data --scope ingest --name collector\n  vigil token create --data vigil-data --scope read\n  vigil token list --data vigil-data\n  vigil token revoke --data vigil-data 3f9a1c0b2d4e"
    )]
    Token {
        #[command(subcommand)]
        cmd: serve_cmd::TokenCommand,
    },
    /// Reviewer console accounts of a service's data directory: add, list, passwd, disable.
    #[command(
        after_help = "Examples:\n  vigil user add ana --data vigil-data --role reviewer            # generates and prints a password once\n  printf '%s\\n' \"$PASSWORD\" | vigil user add lee --data vigil-data --role lead --password-stdin\n  vigil user list --data vigil-data\n  vigil user disable ana --data vigil-data\n\nThen open the console that `vigil serve --data vigil-data` serves at http://127.0.0.1:8080/"
    )]
    User {
        #[command(subcommand)]
        cmd: serve_cmd::UserCommand,
    },
    /// Benchmarks that need a running service: `vigil bench serve`.
    #[command(
        after_help = "Examples:\n  vigil bench serve --model out/model\n  vigil bench serve --model out/model --events 1000000 --batch 2000 --rate 0\n  vigil bench serve --model out/model --events 0 --rate 2000 --seconds 30"
    )]
    Bench {
        #[command(subcommand)]
        cmd: serve_cmd::BenchCommand,
    },
    /// Print a configuration file with every setting at its default.
    Config {
        /// Which defaults to print.
        #[arg(long, default_value = "default")]
        profile: String,
    },
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Number of events.
    #[arg(long, default_value_t = 50_000)]
    events: u64,
    /// Number of users [default: 1,500 per 50,000 events].
    #[arg(long)]
    users: Option<usize>,
    /// Days in the window.
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// Share of users who are abusers.
    #[arg(long, default_value_t = 0.04)]
    abuse_rate: f64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// End of the window (RFC 3339) [default: now].
    #[arg(long)]
    end: Option<String>,
    /// Calendar day (0 = first) with a block-rate spike.
    #[arg(long)]
    incident_day: Option<u32>,
    /// Shift chat tokens and latency in the last 3 days.
    #[arg(long)]
    drift: bool,
    /// Number of coordinated rings sharing payment tokens and devices.
    #[arg(long, default_value_t = 0)]
    rings: usize,
    /// notebook (the notebook's world, byte for byte) or realistic (abusers without a
    /// giveaway IP block, noisy benign users, label noise, rare-harm users found only
    /// through what they write).
    #[arg(long, default_value = "notebook")]
    scenario: vigil_events::generator::Scenario,
    /// The realistic scenario's message pools: JSONL {"text", "class"} with class benign,
    /// spam, evasion or rare (a class left out keeps the built-in lines).
    #[arg(long)]
    text_pool: Option<PathBuf>,
    /// Output file (.csv or .parquet).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct InputOpts {
    /// Input format, when the extension does not tell (csv, jsonl, parquet).
    #[arg(long)]
    format: Option<Format>,
    /// Fail on the first bad row (nothing is stored) instead of quarantining it.
    #[arg(long)]
    strict: bool,
    /// Configuration file.
    #[arg(long, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// Start from this profile's defaults (default or notebook) when no config file names one.
    #[arg(long)]
    profile: Option<String>,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Files to ingest (.csv, .jsonl, .parquet, optionally .gz or .zst).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Data directory.
    #[arg(long, default_value = "vigil-data")]
    data: PathBuf,
    #[command(flatten)]
    opts: InputOpts,
}

/// What `vigil run` and `vigil score` read and where they write.
#[derive(Args, Debug)]
struct RunTarget {
    /// Event files to ingest first (repeatable).
    #[arg(long = "input", num_args = 1..)]
    inputs: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Data directory of stored events [default: OUT/data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Ground truth (user_id,is_abuser,actor_id; `vigil generate` writes one) to score entity
    /// resolution against known actors and rings.
    #[arg(long)]
    ground_truth: Option<PathBuf>,
    /// Format, strictness and configuration (for `vigil score`: of the stages the bundle does
    /// not fix, monitoring, drift, automation; default: the bundle's own).
    #[command(flatten)]
    opts: InputOpts,
    /// A Sentinel index (directory or s3://bucket/prefix): score every chat message with it
    /// and add each user-day's rare-harm affinity to the features ([sentinel] index).
    #[arg(long)]
    sentinel_index: Option<String>,
    /// The encoder for the rare-harm stage [env: VIGIL_MODEL; default: models/all-MiniLM-L6-v2].
    #[arg(long, env = "VIGIL_MODEL")]
    sentinel_model: Option<PathBuf>,
}

impl RunTarget {
    fn options(&self, mut config: Config, models: vigil_pipeline::Models) -> RunOptions {
        if let Some(index) = &self.sentinel_index {
            config.sentinel.index = Some(index.clone());
        }
        RunOptions {
            sentinel_model: self
                .sentinel_model
                .clone()
                .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2")),
            models,
            inputs: self.inputs.clone(),
            out: self.out.clone(),
            data: self.data.clone(),
            ingest: ingest_options(&self.opts, &config),
            config,
            ground_truth: self.ground_truth.clone(),
            as_of_micros: None,
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    target: RunTarget,
}

#[derive(Args, Debug)]
struct ScoreArgs {
    /// The model bundle: the `model/` directory a `vigil run` wrote.
    #[arg(long)]
    model: PathBuf,
    /// Where to score (the output directory must not be the run that trained the bundle).
    #[command(flatten)]
    target: RunTarget,
}

/// A command-line argument that makes no sense: the user's to fix, exit code 2.
#[derive(Debug)]
pub(crate) struct BadArgument(pub(crate) String);

impl std::fmt::Display for BadArgument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgument {}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Coordinated rings in the synthetic data.
    #[arg(long, default_value_t = 8)]
    rings: usize,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output directory (the generated data goes to OUT/input, the run's outputs to OUT).
    #[arg(long, default_value = "demo")]
    out: PathBuf,
    /// Start from this profile's defaults (default or notebook).
    #[arg(long)]
    profile: Option<String>,
    /// Then serve the demo's data: the live service and the reviewer console on ADDR
    /// [default when given without a value: 127.0.0.1:8080], with an `admin` account whose
    /// password is printed (a new one on every start).
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8080", value_name = "ADDR")]
    serve: Option<std::net::SocketAddr>,
    /// realistic (default: abusers hidden in ordinary traffic, rare-harm users found only
    /// through what they write; the demo builds a Sentinel index from the shipped message
    /// pools and runs the rare-harm stage) or notebook (the notebook's world, no text stage).
    #[arg(long, default_value = "realistic")]
    scenario: vigil_events::generator::Scenario,
    /// A Sentinel index for the rare-harm stage [default with the realistic scenario: one
    /// built from the shipped pools into OUT/index].
    #[arg(long)]
    sentinel_index: Option<String>,
    /// The encoder for the rare-harm stage [env: VIGIL_MODEL; default: models/all-MiniLM-L6-v2].
    #[arg(long, env = "VIGIL_MODEL")]
    sentinel_model: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum OutFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
struct SqlArgs {
    /// The query.
    query: String,
    /// Data directory holding the events [default: OUT/data, else vigil-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory of a run: its tables (Parquet, and the CSV outputs without a Parquet
    /// twin, such as monitoring_metrics or alerts) are queryable by file name.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How to print the result.
    #[arg(long, value_enum, default_value = "table")]
    format: OutFormat,
    /// Stop the query after this many seconds (0: no limit).
    #[arg(long, default_value_t = 300.0, value_parser = parse_timeout)]
    timeout: f64,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && (0.0..=1e9).contains(&t) => Ok(t),
        _ => Err(format!(
            "{s:?} is not a number of seconds from 0 (no limit) to 1e9"
        )),
    }
}

fn load_config(opts: &InputOpts) -> Result<Config> {
    let mut cfg = match &opts.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(p) = &opts.profile {
        let profile: Profile = p.parse()?;
        if opts.config.is_none() {
            cfg = Config::for_profile(profile);
        } else if cfg.profile != profile {
            anyhow::bail!(
                "--profile {p} conflicts with the profile of the config file; change one of them"
            );
        }
    }
    Ok(cfg)
}

fn ingest_options(opts: &InputOpts, cfg: &Config) -> IngestOptions {
    vigil_pipeline::ingest_options(cfg, opts.format, opts.strict)
}

fn bytes_bar(total: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

fn cmd_generate(a: GenerateArgs) -> Result<()> {
    let end_micros = match &a.end {
        Some(s) => vigil_events::timestamp::parse_timestamp_micros(s, false)
            .map_err(|_| BadArgument(format!("--end {s:?} is not an RFC 3339 timestamp with an offset within years 1 to 9999 (e.g. 2026-02-15T05:26:38Z)")))?,
        None => chrono::Utc::now().timestamp_micros(),
    };
    let cfg = GeneratorConfig {
        events: a.events,
        users: a
            .users
            .unwrap_or_else(|| GeneratorConfig::default_users(a.events)),
        days: a.days,
        abuse_rate: a.abuse_rate,
        seed: a.seed,
        end_micros,
        incident_day: a.incident_day,
        drift: a.drift,
        rings: a.rings,
        scenario: a.scenario,
        pool: a
            .text_pool
            .as_deref()
            .map(vigil_events::generator::TextPool::from_jsonl)
            .transpose()?,
    };
    let pb = ProgressBar::new(a.events);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {human_pos}/{human_len} events {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message("generating");
    let summary = vigil_events::generate(&cfg, &a.out, &|n| pb.set_position(n))
        .with_context(|| format!("generating {}", a.out.display()))?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} events for {} users ({} abusers, {} in rings) to {}; ground truth in {}",
        summary.events,
        summary.users,
        summary.abusers,
        summary.ring_members,
        summary.out.display(),
        summary.ground_truth.display()
    );
    Ok(())
}

fn print_ingest(s: &vigil_events::IngestSummary, quarantine: &Path) {
    eprintln!(
        "{}: {} rows read ({} lines), {} accepted, {} quarantined, {} duplicates skipped ({:.2}s)",
        s.source, s.rows_read, s.lines, s.accepted, s.quarantined, s.duplicates, s.seconds
    );
    if s.quarantined > 0 {
        eprintln!(
            "  bad rows (with line and reason) are in {}",
            quarantine.display()
        );
    }
}

fn cmd_ingest(a: IngestArgs) -> Result<()> {
    let cfg = load_config(&a.opts)?;
    let opts = ingest_options(&a.opts, &cfg);
    let ds = Dataset::open(&a.data)?;
    // One writer at a time: the stored ids read next stay true until this ingest ends.
    let lock = ds.lock()?;
    let mut known = ds.known_event_keys()?;
    for file in &a.files {
        let total = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        let pb = bytes_bar(total, "ingesting");
        let s =
            vigil_events::ingest_file(&ds, &lock, &mut known, file, &opts, &|n| pb.set_position(n));
        pb.finish_and_clear();
        print_ingest(&s?, &ds.quarantine_path());
    }
    Ok(())
}

fn cmd_demo(a: DemoArgs) -> Result<()> {
    let input = a.out.join("input").join("events.csv");
    if let Some(dir) = input.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A fresh data directory each time so the demo never double-reads an older dataset.
    let data = a.out.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("clearing {}", data.display()))?;
    }
    let realistic = a.scenario == vigil_events::generator::Scenario::Realistic;
    let steps = if realistic && a.sentinel_index.is_none() {
        3
    } else {
        2
    };
    eprintln!(
        "1/{steps} generating {} synthetic events, {} scenario ({} rings, an incident on day 9, \
         drift in the last 3 days)",
        a.events,
        if realistic { "realistic" } else { "notebook" },
        a.rings
    );
    cmd_generate(GenerateArgs {
        events: a.events,
        users: None,
        days: 14,
        abuse_rate: 0.04,
        seed: a.seed,
        end: Some("2026-02-15T05:26:38Z".into()),
        incident_day: Some(9),
        drift: true,
        rings: a.rings,
        scenario: a.scenario,
        text_pool: None,
        out: input.clone(),
    })?;
    let model = a
        .sentinel_model
        .clone()
        .unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2"));
    let mut index = a.sentinel_index.clone();
    if realistic && index.is_none() {
        // Every other rare line: half of what the rare-harm users write is not in the index.
        let (positives, negatives) = vigil_events::generator::TextPool::builtin().index_material();
        let dir = a.out.join("index");
        eprintln!(
            "2/{steps} building a Sentinel index from the shipped pools ({} rare-class lines, \
             {} ordinary) into {}",
            positives.len(),
            negatives.len(),
            dir.display()
        );
        let location = dir.display().to_string();
        sentinel_cmd::build_index(&model, positives, negatives, &location)?;
        index = Some(location);
    }
    eprintln!("{steps}/{steps} running every stage");
    let target = RunTarget {
        inputs: vec![input.clone()],
        out: a.out.clone(),
        data: None,
        ground_truth: Some(input.with_file_name("ground_truth.csv")),
        opts: InputOpts {
            format: None,
            strict: false,
            config: None,
            profile: a.profile,
        },
        sentinel_index: index.clone(),
        sentinel_model: Some(model.clone()),
    };
    let cfg = load_config(&target.opts)?;
    run_stages(&target.options(cfg, vigil_pipeline::Models::Fit))?;
    if let Some(listen) = a.serve {
        let sentinel = index.map(|i| (i, model));
        return serve_cmd::serve_demo(&a.out.join("data"), &a.out.join("model"), listen, sentinel);
    }
    let out = a.out.display();
    // The served bundle scores messages with its index and this encoder.
    let encoder = match (&index, a.sentinel_model.is_some()) {
        (Some(_), true) => format!(" --sentinel-model {}", model.display()),
        _ => String::new(),
    };
    eprintln!(
        "live service and reviewer console on this data and model:\n  \
         vigil user add admin --data {out}/data --role admin   # prints a password once\n  \
         vigil token create --data {out}/data --scope admin    # API token, printed once\n  \
         vigil serve --data {out}/data --model {out}/model{encoder}    # console: http://127.0.0.1:8080/\n\
         (or `vigil demo --serve`: the demo, then the console with an admin login printed)"
    );
    Ok(())
}

fn cmd_run(a: RunArgs) -> Result<()> {
    let cfg = load_config(&a.target.opts)?;
    run_stages(&a.target.options(cfg, vigil_pipeline::Models::Fit))
}

fn cmd_score(a: ScoreArgs) -> Result<()> {
    let t = &a.target;
    if t.inputs.is_empty() && t.data.is_none() {
        return Err(BadArgument(
            "nothing to score: give event files with --input, or stored events with --data".into(),
        )
        .into());
    }
    let same_dir = |p: &Path, q: &Path| match (p.canonicalize(), q.canonicalize()) {
        (Ok(p), Ok(q)) => p == q,
        _ => false,
    };
    if a.model.parent().is_some_and(|p| same_dir(p, &t.out)) {
        return Err(BadArgument(format!(
            "--out {} is the run that trained the bundle: scoring there would replace its \
             outputs and review queue; choose another --out",
            t.out.display()
        ))
        .into());
    }
    let bundle = vigil_pipeline::ModelBundle::load(&a.model)?;
    let cfg = if t.opts.config.is_some() || t.opts.profile.is_some() {
        load_config(&t.opts)?
    } else {
        bundle.manifest.config.clone()
    };
    let m = &bundle.manifest;
    eprintln!(
        "model bundle {}: {} trained by Vigil {} on {} user-days ({} to {})",
        a.model.display(),
        m.risk_model,
        m.vigil_version,
        m.training.user_days,
        m.training.first_day,
        m.training.last_day
    );
    let models = vigil_pipeline::Models::Apply {
        bundle: Box::new(bundle),
        dir: a.model.clone(),
    };
    run_stages(&t.options(cfg, models))
}

/// Run the pipeline with a spinner per stage and print what it did.
fn run_stages(opts: &RunOptions) -> Result<()> {
    let bar = std::cell::RefCell::new(None::<ProgressBar>);
    let progress = |p: Progress<'_>| match p {
        Progress::StageStart(name) => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_message(name.to_string());
            pb.enable_steady_tick(Duration::from_millis(120));
            *bar.borrow_mut() = Some(pb);
        }
        Progress::IngestBytes { path, done, total } => {
            let mut b = bar.borrow_mut();
            let needs_new = b.as_ref().is_none_or(|pb| pb.length() != Some(total));
            if needs_new {
                if let Some(pb) = b.take() {
                    pb.finish_and_clear();
                }
                *b = Some(bytes_bar(total, &format!("{}", path.display())));
            }
            if let Some(pb) = b.as_ref() {
                pb.set_position(done);
            }
        }
        Progress::Messages { done, total } => {
            let mut b = bar.borrow_mut();
            if b.as_ref()
                .is_none_or(|pb| pb.length() != Some(total as u64))
            {
                if let Some(pb) = b.take() {
                    pb.finish_and_clear();
                }
                let pb = ProgressBar::new(total as u64);
                pb.set_style(
                    ProgressStyle::with_template(
                        "rare harm [{bar:30}] {human_pos}/{human_len} texts {per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                *b = Some(pb);
            }
            if let Some(pb) = b.as_ref() {
                pb.set_position(done as u64);
            }
        }
        Progress::StageEnd(name, secs) => {
            if let Some(pb) = bar.borrow_mut().take() {
                pb.finish_and_clear();
            }
            eprintln!("  {name:<18} {secs:>8.2}s");
        }
    };
    let m = vigil_pipeline::run(opts, &progress)?;
    for s in &m.inputs {
        print_ingest(s, &Path::new(&m.data_dir).join("quarantine.jsonl"));
    }
    eprintln!(
        "{} events in the dataset; {} alert(s); drifted features: {}",
        m.events_in_dataset,
        m.alerts,
        if m.drifted_features.is_empty() {
            "none".to_string()
        } else {
            m.drifted_features.join(", ")
        }
    );
    for e in &m.model_eval {
        eprintln!(
            "model {:<20} threshold {:.2}  test precision {:.3} recall {:.3} F1 {:.3} AUC {:.3} \
             ECE {:.3}",
            e.model,
            e.threshold,
            e.test_precision,
            e.test_recall,
            e.test_f1,
            e.test_auc,
            e.test_ece
        );
    }
    eprintln!(
        "risk model: {}; {} case(s) in the review queue (vigil review list --out {}); {} incident(s)",
        m.risk_model,
        m.queue_size,
        opts.out.display(),
        m.incidents
    );
    if m.command == "run" {
        eprintln!(
            "model bundle: {} (apply it to new events with vigil score --model {})",
            m.model_bundle, m.model_bundle
        );
    }
    eprintln!("outputs in {} (manifest: run.json)", opts.out.display());
    eprintln!("report: {}", m.report);
    Ok(())
}

fn cmd_sql(a: SqlArgs) -> Result<()> {
    let data = a
        .data
        .clone()
        .or_else(|| a.out.as_ref().map(|o| o.join("data")))
        .unwrap_or_else(|| PathBuf::from("vigil-data"));
    let wh = vigil_pipeline::open_outputs(
        a.out.as_deref(),
        &data,
        (a.timeout > 0.0).then(|| std::time::Duration::from_secs_f64(a.timeout)),
    )?;
    let t = match wh.query_read_only("query", &a.query) {
        Ok(t) => t,
        Err(e) => {
            // A missing table is answered with the ones there are.
            let hint = if e.to_string().contains("not found") {
                format!("tables available: {}", wh.table_names().join(", "))
            } else {
                "the query failed".into()
            };
            return Err(anyhow::Error::new(e).context(BadQuery(hint)));
        }
    };
    let mut stdout = std::io::stdout().lock();
    // An empty result still shows its columns (the header line, the table's top row).
    let empty = [arrow::record_batch::RecordBatch::new_empty(
        t.schema.clone(),
    )];
    let batches = if t.batches.is_empty() {
        &empty[..]
    } else {
        &t.batches[..]
    };
    match a.format {
        OutFormat::Table => {
            let s =
                arrow::util::pretty::pretty_format_batches_with_schema(t.schema.clone(), batches)?;
            use std::io::Write;
            writeln!(stdout, "{s}")?;
        }
        OutFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(stdout);
            for b in batches {
                w.write(b)?;
            }
        }
        OutFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(stdout);
            for b in &t.batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message
/// already carries (library errors name their source in their own text).
fn error_text(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Whether the error is a write to a pipe whose reader has gone (`| head`).
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<arrow::error::ArrowError>()
                .is_some_and(|e| {
                    matches!(e, arrow::error::ArrowError::IoError(_, io)
                    if io.kind() == std::io::ErrorKind::BrokenPipe)
                })
    })
}

/// A `vigil sql` query that DataFusion refused: the user's argument, so exit code 2.
#[derive(Debug)]
struct BadQuery(String);

impl std::fmt::Display for BadQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Exit code of a model-bundle error: a damaged bundle is bad data (3), a missing or
/// mismatched one the user's argument (2), an I/O failure the environment's (1).
/// The kind of one link of an error chain, if it is one of the workspace's typed errors.
fn kind_of(cause: &(dyn std::error::Error + 'static)) -> Option<vigil_core::ErrorKind> {
    use vigil_core::{Classify, ErrorKind};
    if cause.is::<BadArgument>() {
        return Some(ErrorKind::Usage);
    }
    if cause.is::<review_cmd::BrokenChain>() {
        return Some(ErrorKind::BadData);
    }
    macro_rules! classify {
        ($($t:ty),*) => {
            $(if let Some(e) = cause.downcast_ref::<$t>() {
                return Some(e.kind());
            })*
        };
    }
    classify!(
        PipelineError,
        vigil_pipeline::BundleError,
        EventsError,
        vigil_warehouse::WarehouseError,
        vigil_monitor::MonitorError,
        vigil_review::ReviewError,
        vigil_sentinel::SentinelError,
        vigil_config::ConfigError,
        vigil_serve::ServeError,
        vigil_console::ConsoleError
    );
    None
}

/// The exit code of an error: the kind of the outermost typed error in its chain (context
/// messages around it are skipped); 1 when there is none.
fn exit_code(err: &anyhow::Error) -> u8 {
    // A failed `vigil sql` query is wrapped in the user's-fault context whatever it says.
    if err.downcast_ref::<BadQuery>().is_some() || err.downcast_ref::<BadArgument>().is_some() {
        return 2;
    }
    err.chain()
        .find_map(kind_of)
        .map_or(1, vigil_core::ErrorKind::exit_code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    keep_freed_pages();
    if !matches!(cli.command, Command::Sentinel { .. }) {
        no_huge_pages();
    }
    let result = match cli.command {
        Command::Generate(a) => cmd_generate(a),
        Command::Ingest(a) => cmd_ingest(a),
        Command::Demo(a) => cmd_demo(a),
        Command::Run(a) => cmd_run(a),
        Command::Score(a) => cmd_score(a),
        Command::Review { cmd } => review_cmd::run(cmd),
        Command::Sql(a) => cmd_sql(a),
        Command::Sentinel { cmd } => sentinel_cmd::run(cmd),
        Command::Serve(a) => serve_cmd::serve(a),
        Command::Token { cmd } => serve_cmd::token(cmd),
        Command::User { cmd } => serve_cmd::user(cmd),
        Command::Bench { cmd } => serve_cmd::bench(cmd),
        Command::Config { profile } => profile
            .parse::<Profile>()
            .map_err(anyhow::Error::from)
            .and_then(|p| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(Config::for_profile(p).to_toml().as_bytes())?;
                Ok(out.flush()?)
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `vigil sql ... | head`: the reader has all it wanted; not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}
