//! `vigil serve` and `vigil token`: flags only; the service is `vigil-serve`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use vigil_config::Config;
use vigil_serve::{Scope, ServeOptions, TokenStore};

/// `vigil serve` flags.
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// The service's home: the Parquet dataset, the durable intake log, the token store.
    #[arg(long, default_value = "vigil-data")]
    data: PathBuf,
    /// Model bundle (`OUT/model` of a `vigil run`) [default: the newest under DATA/model or
    /// DATA/models/*].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Configuration file (its `[serve]` table sets limits and state bounds).
    #[arg(long, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. Loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    sentinel: SentinelArgs,
    /// The audit key the console's decisions are authenticated with (created, owner-only,
    /// on first use) [default: ~/.config/vigil/audit.key, as `vigil review decide`].
    #[arg(long, env = "VIGIL_AUDIT_KEY")]
    audit_key: Option<PathBuf>,
}

/// Rare-harm affinity flags, shared by `vigil serve` and `vigil bench serve`.
#[derive(Args, Debug)]
pub(crate) struct SentinelArgs {
    /// Sentinel index (a directory or s3://bucket/prefix) for each user's rare-harm affinity
    /// over their recent chat messages [default: the index of a bundle that learned from the
    /// rare-harm features, else none, no affinity].
    #[arg(long)]
    sentinel_index: Option<String>,
    /// The encoder for --sentinel-index [env: VIGIL_MODEL; default: models/all-MiniLM-L6-v2].
    #[arg(long, env = "VIGIL_MODEL")]
    sentinel_model: Option<PathBuf>,
}

impl SentinelArgs {
    /// Without --sentinel-index, the index of a bundle that learned from the rare-harm
    /// features (it needs one, and brings its own along).
    fn or_bundle_index(mut self, bundle: Option<&std::path::Path>) -> Self {
        if self.sentinel_index.is_none()
            && let Some(m) = bundle
            && let Ok(b) = vigil_pipeline::ModelBundle::load(m)
            && b.manifest.learns_rare_harm()
            && let Some(index) = b.manifest.rare_harm.as_ref().map(|r| r.index.clone())
        {
            tracing::info!(
                "the model bundle learned from the rare-harm features: scoring messages with \
                 the index it was trained with, {index} (--sentinel-index to name another)"
            );
            self.sentinel_index = Some(index);
        }
        self
    }

    /// What the service loads, when an index is given.
    fn options(self, config: &Config) -> Option<vigil_serve::rare::RareHarmOptions> {
        let model = self.sentinel_model;
        self.sentinel_index
            .map(|index| vigil_serve::rare::RareHarmOptions {
                index,
                model: model.unwrap_or_else(|| PathBuf::from("models/all-MiniLM-L6-v2")),
                cache_texts: config.serve.sentinel_cache_texts,
            })
    }
}

/// `vigil token` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Make a token and print it, alone on its line (only its hash is stored).
    Create {
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
        /// What it may do: ingest, read, review or admin.
        #[arg(long)]
        scope: String,
        /// A name for people (who holds it, what for).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (ids, names, scopes; never the tokens).
    List {
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
    },
    /// Revoke a token by its id (from `vigil token list`).
    Revoke {
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
        /// The token's id.
        id: String,
    },
}

pub(crate) fn serve(a: ServeArgs) -> Result<()> {
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if !a.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} (not loopback): every endpoint but health needs a token; put TLS \
             in front of it",
            a.listen
        );
    }
    let model = match &a.model {
        Some(m) => Some(m.clone()),
        None => vigil_serve::find_bundle(&a.data).ok(),
    };
    let sentinel = a.sentinel.or_bundle_index(model.as_deref());
    let rare_harm = sentinel.options(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let opts = ServeOptions {
        data: a.data,
        model: a.model,
        config,
        config_path: a.config,
        rare_harm,
        listen: a.listen,
        audit_key: a.audit_key,
    };
    runtime.block_on(vigil_serve::serve(opts, |addr| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        eprintln!(
            "reviewer console: http://{addr}/ (accounts: `vigil user add NAME --role reviewer`)"
        );
        let _ = out.flush();
    }))?;
    Ok(())
}

/// `vigil demo --serve`: an `admin` account with a fresh password (printed), then the
/// service and console on the demo's data and model.
pub(crate) fn serve_demo(
    data: &std::path::Path,
    model: &std::path::Path,
    listen: SocketAddr,
    sentinel: Option<(String, PathBuf)>,
) -> Result<()> {
    let accounts = vigil_console::Accounts::open(data)?;
    let password = vigil_console::accounts::generate_password();
    let exists = accounts.list()?.iter().any(|a| a.name == "admin");
    if exists {
        accounts.set_disabled("admin", false)?;
        accounts.set_password("admin", &password)?;
    } else {
        accounts.add("admin", vigil_console::Role::Admin, &password)?;
    }
    eprintln!(
        "reviewer console login: admin / {password}   (a new password at every `vigil demo --serve`)"
    );
    serve(ServeArgs {
        data: data.to_path_buf(),
        model: Some(model.to_path_buf()),
        config: None,
        listen,
        sentinel: SentinelArgs {
            sentinel_model: sentinel.as_ref().map(|s| s.1.clone()),
            sentinel_index: sentinel.map(|s| s.0),
        },
        audit_key: None,
    })
}

/// `vigil user` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Add a console account. The password is read from stdin with --password-stdin;
    /// otherwise one is generated and printed once (only its Argon2id hash is stored).
    Add {
        /// The login name (also the reviewer name in the audit log).
        name: String,
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
        /// reviewer (decides cases), lead (also team views, reassigning, audit export) or
        /// admin (also accounts).
        #[arg(long, default_value = "reviewer")]
        role: String,
        /// Read the password from the first line of stdin (at least 12 characters).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts (names, roles, state; never passwords).
    List {
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
    },
    /// Set a new password (generated and printed, or --password-stdin); unlocks the account
    /// and ends its sessions.
    Passwd {
        /// The account.
        name: String,
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account (it can no longer log in; its sessions end). Decisions it made
    /// stay in the audit log under its name.
    Disable {
        /// The account.
        name: String,
        /// The service's data directory.
        #[arg(long, default_value = "vigil-data")]
        data: PathBuf,
    },
}

/// The password from stdin's first line, or a generated one (and whether it was generated).
fn password(from_stdin: bool) -> Result<(String, bool)> {
    if !from_stdin {
        return Ok((vigil_console::accounts::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let pw = line.trim_end_matches(['\n', '\r']).to_string();
    Ok((pw, false))
}

pub(crate) fn user(cmd: UserCommand) -> Result<()> {
    use vigil_console::{Accounts, Role};
    match cmd {
        UserCommand::Add {
            name,
            data,
            role,
            password_stdin,
        } => {
            let role: Role = role.parse().map_err(|e: String| crate::BadArgument(e))?;
            let (pw, generated) = password(password_stdin)?;
            let a = Accounts::open(&data)?.add(&name, role, &pw)?;
            if generated {
                println!("{pw}");
                eprintln!(
                    "account {} ({}) added; its password (above) is shown only now",
                    a.name,
                    a.role.as_str()
                );
            } else {
                eprintln!("account {} ({}) added", a.name, a.role.as_str());
            }
        }
        UserCommand::List { data } => {
            println!("{:<24} {:<9} {:<21} state", "name", "role", "created");
            for a in Accounts::open(&data)?.list()? {
                println!(
                    "{:<24} {:<9} {:<21} {}",
                    a.name,
                    a.role.as_str(),
                    a.created_at,
                    if a.disabled { "disabled" } else { "active" }
                );
            }
        }
        UserCommand::Passwd {
            name,
            data,
            password_stdin,
        } => {
            let (pw, generated) = password(password_stdin)?;
            Accounts::open(&data)?.set_password(&name, &pw)?;
            if generated {
                println!("{pw}");
            }
            eprintln!("password of {name} set; its sessions ended");
        }
        UserCommand::Disable { name, data } => {
            Accounts::open(&data)?.set_disabled(&name, true)?;
            eprintln!("account {name} disabled; its sessions ended");
        }
    }
    Ok(())
}

pub(crate) fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create { data, scope, name } => {
            let scope: Scope = scope.parse().map_err(|e: String| crate::BadArgument(e))?;
            let (token, info) = TokenStore::open(&data)?.create(scope, &name)?;
            println!("{token}");
            eprintln!(
                "token {} ({}, scope {}) created; it is shown only now: store it in a secret manager",
                info.id,
                info.name,
                info.scope.as_str()
            );
        }
        TokenCommand::List { data } => {
            let tokens = TokenStore::open(&data)?.list()?;
            println!(
                "{:<14} {:<8} {:<21} {:<21} name",
                "id", "scope", "created", "revoked"
            );
            for t in tokens {
                println!(
                    "{:<14} {:<8} {:<21} {:<21} {}",
                    t.id,
                    t.scope.as_str(),
                    t.created_at,
                    t.revoked_at.as_deref().unwrap_or("-"),
                    t.name
                );
            }
        }
        TokenCommand::Revoke { data, id } => {
            if !TokenStore::open(&data)?.revoke(&id)? {
                return Err(crate::BadArgument(format!(
                    "no live token with id `{id}` (see `vigil token list --data {}`)",
                    data.display()
                ))
                .into());
            }
            eprintln!("token {id} revoked; a running service refuses it within 2 seconds");
        }
    }
    Ok(())
}

/// `vigil bench` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Start the service on loopback and drive it with a bounded load: batched intake, then
    /// single events at a fixed rate; prints throughput, latency percentiles and peak memory.
    Serve(BenchServeArgs),
    /// Time the reviewer console's pages (queue, deep pages, filtered, case) over loopback
    /// against a temporary review store of --cases cases; prints latency percentiles.
    Console(BenchConsoleArgs),
}

/// `vigil bench console` flags.
#[derive(Args, Debug)]
pub(crate) struct BenchConsoleArgs {
    /// Cases in the queue.
    #[arg(long, default_value_t = 100_000)]
    cases: usize,
    /// Requests timed per page kind.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Share of the cases already decided.
    #[arg(long, default_value_t = 0.1)]
    decided: f64,
}

/// `vigil bench serve` flags.
#[derive(Args, Debug)]
pub(crate) struct BenchServeArgs {
    /// Model bundle (`OUT/model` of a `vigil run`).
    #[arg(long)]
    model: PathBuf,
    /// Data directory [default: a temporary one, removed afterwards].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Configuration file (its `[serve]` table).
    #[arg(long, env = "VIGIL_CONFIG")]
    config: Option<PathBuf>,
    /// Events in the batched phase.
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    /// Events per batched request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent connections in the batched phase.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 50_000)]
    users: usize,
    /// Give chat events prompt text.
    #[arg(long)]
    text: bool,
    /// Distinct prompt texts (with --text): event i says text i mod N, so fewer distinct
    /// texts than chat events means repeats.
    #[arg(long, default_value_t = 5000)]
    distinct_texts: usize,
    /// Send the events of this file (CSV, JSONL or Parquet, e.g. a `vigil generate` world) in
    /// file order in the batched phase instead of synthetic ones (at most --events of them).
    #[arg(long)]
    replay: Option<PathBuf>,
    #[command(flatten)]
    sentinel: SentinelArgs,
    /// Single-event requests per second (0 skips that phase).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of the single-event phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

pub(crate) fn bench(cmd: BenchCommand) -> Result<()> {
    let a = match cmd {
        BenchCommand::Serve(a) => a,
        BenchCommand::Console(c) => {
            if !(0.0..=1.0).contains(&c.decided) {
                return Err(crate::BadArgument("--decided must be between 0 and 1".into()).into());
            }
            eprintln!("filling a review store with {} cases...", c.cases);
            let report = vigil_console::bench::run(&vigil_console::bench::BenchOptions {
                cases: c.cases,
                requests: c.requests,
                decided: c.decided,
            })?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(());
        }
    };
    let config = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let rare_harm = a.sentinel.or_bundle_index(Some(&a.model)).options(&config);
    let opts = vigil_serve::bench::BenchOptions {
        model: a.model,
        data: a.data,
        events: a.events,
        batch: a.batch,
        connections: a.connections,
        users: a.users,
        text: a.text,
        distinct_texts: a.distinct_texts,
        replay: match &a.replay {
            Some(p) => {
                eprintln!("reading {}...", p.display());
                Some(vigil_serve::bench::replay_events(p)?)
            }
            None => None,
        },
        rare_harm,
        rate: a.rate,
        seconds: a.seconds,
    };
    let report = runtime.block_on(vigil_serve::bench::bench(opts, config, |line| {
        eprintln!("{line}");
    }))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
