//! `vigil review`: page through the queue, record decisions, verify the audit chain.

use std::path::PathBuf;

use std::io::Write;

use anyhow::Result;
use clap::Subcommand;
use vigil_review::{Decision, ReviewStore};

/// Review subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum ReviewCommand {
    /// List cases in queue order with their latest decision.
    List {
        /// Output directory of a run (holds review.db).
        #[arg(long)]
        out: PathBuf,
        /// Cases to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Cases to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only cases without a decision.
        #[arg(long)]
        undecided: bool,
    },
    /// Show one case, its enrichment, suggestion and decision history.
    Show {
        /// Output directory of a run.
        #[arg(long)]
        out: PathBuf,
        /// The case id: USER@DAY, as `vigil review list` shows it (the same in every run).
        review_id: String,
    },
    /// Record a decision (appended to the hash-chained audit log).
    Decide {
        /// Output directory of a run.
        #[arg(long)]
        out: PathBuf,
        /// The case id (USER@DAY).
        review_id: String,
        /// allow, warn, rate_limit, block or escalate.
        #[arg(long)]
        decision: String,
        /// spam, policy_evasion, coordinated_abuse or false_positive.
        #[arg(long)]
        reason: String,
        /// Who decides.
        #[arg(long, env = "VIGIL_REVIEWER")]
        reviewer: String,
        /// Free-text notes.
        #[arg(long, default_value = "")]
        notes: String,
        /// The audit key that authenticates the record (created, owner-only, on first use)
        /// [default: ~/.config/vigil/audit.key].
        #[arg(long, env = "VIGIL_AUDIT_KEY")]
        audit_key: Option<PathBuf>,
    },
    /// Check the whole audit chain, its authenticators and its anchor; names the first
    /// broken record (exit 3). Reads the store only, never changes it.
    Verify {
        /// Output directory of a run.
        #[arg(long)]
        out: PathBuf,
        /// The audit key the records were written with [default: ~/.config/vigil/audit.key].
        #[arg(long, env = "VIGIL_AUDIT_KEY")]
        audit_key: Option<PathBuf>,
        /// A head hash recorded elsewhere (a ticket, a log): the chain must contain it.
        #[arg(long)]
        expect_head: Option<String>,
    },
}

fn key_path(given: Option<PathBuf>) -> Result<PathBuf> {
    given
        .or_else(vigil_review::default_key_path)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no home directory for the audit key: pass --audit-key PATH or set VIGIL_AUDIT_KEY"
            )
        })
}

/// Raised when the chain is broken, so the binary exits with 3.
#[derive(Debug, thiserror::Error)]
#[error("audit log broken {}: {why}", if *seq > 0 { format!("at record #{seq}") } else { "as a whole".to_string() })]
pub(crate) struct BrokenChain {
    seq: i64,
    why: String,
}

fn store(out: &std::path::Path) -> Result<ReviewStore> {
    Ok(ReviewStore::open(&out.join("review.db"))?)
}

/// Run one review subcommand. Output goes to standard output; a write failure is an error
/// (a closed pipe is ended quietly by the binary).
pub(crate) fn run(cmd: ReviewCommand) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cmd {
        ReviewCommand::List {
            out,
            offset,
            limit,
            undecided,
        } => {
            let s = store(&out)?;
            let rows = s.list(offset, limit, undecided)?;
            writeln!(
                stdout,
                "{:>5} {:<24} {:>6} {:>8} {:<11} {:<10} recent prompts",
                "#", "case", "risk", "priority", "suggested", "decision"
            )?;
            for (rank, (c, d)) in (offset..).zip(&rows) {
                let prompts: String = c.recent_prompts.chars().take(60).collect();
                writeln!(
                    stdout,
                    "{:>5} {:<24} {:>6.3} {:>8.3} {:<11} {:<10} {}",
                    rank,
                    c.review_id,
                    c.risk_score,
                    c.priority,
                    c.suggested_action,
                    d.as_deref().unwrap_or("-"),
                    prompts
                )?;
            }
            eprintln!(
                "{} of {} cases (offset {offset}); next page: --offset {}",
                rows.len(),
                s.count()?,
                offset + rows.len()
            );
        }
        ReviewCommand::Show { out, review_id } => {
            let (c, history) = store(&out)?.show(&review_id)?;
            writeln!(
                stdout,
                "case:        {}{}",
                c.review_id,
                c.queue_pos.map_or_else(
                    || " (not in the latest queue)".into(),
                    |p| format!(" (#{p} in the queue)")
                )
            )?;
            writeln!(stdout, "user-day:    {} on {}", c.user_id, c.day)?;
            writeln!(
                stdout,
                "risk:        {:.4} (uncertainty {:.4})",
                c.risk_score, c.uncertainty
            )?;
            writeln!(stdout, "priority:    {:.4}; flags: {}", c.priority, c.flags)?;
            writeln!(
                stdout,
                "suggested:   {} ({})",
                c.suggested_action, c.suggested_reason
            )?;
            writeln!(stdout, "prompts:     {}", c.recent_prompts)?;
            if history.is_empty() {
                writeln!(stdout, "decisions:   none yet")?;
            }
            for h in history {
                writeln!(
                    stdout,
                    "decision #{}: {} ({}) by {} at {}{}",
                    h.seq,
                    h.decision,
                    h.reason_code,
                    h.reviewer,
                    h.decision_ts,
                    if h.notes.is_empty() {
                        String::new()
                    } else {
                        format!(" — {}", h.notes)
                    }
                )?;
            }
        }
        ReviewCommand::Decide {
            out,
            review_id,
            decision,
            reason,
            reviewer,
            notes,
            audit_key,
        } => {
            let key = vigil_review::AuditKey::load_or_create(&key_path(audit_key)?)?;
            let mut s = store(&out)?;
            let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let rec = s.decide(
                &Decision {
                    review_id,
                    decision,
                    reason_code: reason,
                    notes,
                    reviewer,
                },
                &ts,
                &key,
            )?;
            let said = writeln!(
                stdout,
                "recorded #{}: {} -> {} ({}) by {}; hash {}",
                rec.seq, rec.review_id, rec.decision, rec.reason_code, rec.reviewer, rec.hash
            )
            .and_then(|()| stdout.flush());
            if let Err(e) = said {
                // The decision is committed: say so, so nobody retries and records it twice.
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    eprintln!(
                        "the decision WAS recorded as #{} ({}); only printing this \
                         confirmation failed: do not decide again",
                        rec.seq, rec.review_id
                    );
                }
                return Err(anyhow::Error::new(e).context("writing the confirmation"));
            }
        }
        ReviewCommand::Verify {
            out,
            audit_key,
            expect_head,
        } => {
            let path = key_path(audit_key)?;
            let key = vigil_review::AuditKey::load(&path)?;
            let s = ReviewStore::open_read_only(&out.join("review.db"))?;
            let v = s.verify(key.as_ref(), expect_head.as_deref())?;
            if let Some((seq, why)) = v.first_broken {
                return Err(BrokenChain { seq, why }.into());
            }
            writeln!(stdout, "audit log intact: {} record(s) verified", v.records)?;
            if let Some((n, head)) = &v.head {
                writeln!(stdout, "head: #{n} {head}")?;
            }
            if v.authenticated > 0 {
                writeln!(
                    stdout,
                    "authenticated: {} record(s) with the key {}",
                    v.authenticated,
                    path.display()
                )?;
            }
            if v.unauthenticated > 0 {
                writeln!(
                    stdout,
                    "not authenticated: {} record(s) written before audit keys (checked by hash only)",
                    v.unauthenticated
                )?;
            }
            match &v.anchor {
                Some((n, _)) => writeln!(stdout, "anchor: matches the head recorded at #{n}")?,
                None if v.records > 0 => writeln!(
                    stdout,
                    "anchor: none for this store beside {} (truncation cannot be ruled out; record the head above elsewhere and pass it as --expect-head)",
                    path.display()
                )?,
                None => {}
            }
            if let Some(at) = v.expected_head_at {
                writeln!(stdout, "expected head: found at #{at}")?;
            }
        }
    }
    Ok(())
}
