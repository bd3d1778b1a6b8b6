//! `vigil review`: page through the queue, record decisions, verify the audit chain.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use vigil_review::{Decision, ReviewStore};

/// Review subcommands.
#[derive(Subcommand, Debug)]
pub enum ReviewCommand {
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
        /// The case id (rev_000000, ...).
        review_id: String,
    },
    /// Record a decision (appended to the hash-chained audit log).
    Decide {
        /// Output directory of a run.
        #[arg(long)]
        out: PathBuf,
        /// The case id.
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
    },
    /// Check the whole audit chain; names the first broken record (exit 3).
    Verify {
        /// Output directory of a run.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Raised when the chain is broken, so the binary exits with 3.
#[derive(Debug, thiserror::Error)]
#[error("audit log broken at record #{seq}: {why}")]
pub struct BrokenChain {
    seq: i64,
    why: String,
}

fn store(out: &std::path::Path) -> Result<ReviewStore> {
    Ok(ReviewStore::open(&out.join("review.db"))?)
}

/// Run one review subcommand.
pub fn run(cmd: ReviewCommand) -> Result<()> {
    match cmd {
        ReviewCommand::List {
            out,
            offset,
            limit,
            undecided,
        } => {
            let s = store(&out)?;
            let rows = s.list(offset, limit, undecided)?;
            println!(
                "{:<11} {:<10} {:<8} {:>6} {:>8} {:<11} {:<10} recent prompts",
                "case", "day", "user", "risk", "priority", "suggested", "decision"
            );
            for (c, d) in &rows {
                let prompts: String = c.recent_prompts.chars().take(60).collect();
                println!(
                    "{:<11} {:<10} {:<8} {:>6.3} {:>8.3} {:<11} {:<10} {}",
                    c.review_id,
                    c.day,
                    c.user_id,
                    c.risk_score,
                    c.priority,
                    c.suggested_action,
                    d.as_deref().unwrap_or("-"),
                    prompts
                );
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
            println!("case:        {}", c.review_id);
            println!("user-day:    {} on {}", c.user_id, c.day);
            println!(
                "risk:        {:.4} (uncertainty {:.4})",
                c.risk_score, c.uncertainty
            );
            println!("priority:    {:.4}; flags: {}", c.priority, c.flags);
            println!(
                "suggested:   {} ({})",
                c.suggested_action, c.suggested_reason
            );
            println!("prompts:     {}", c.recent_prompts);
            if history.is_empty() {
                println!("decisions:   none yet");
            }
            for h in history {
                println!(
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
                );
            }
        }
        ReviewCommand::Decide {
            out,
            review_id,
            decision,
            reason,
            reviewer,
            notes,
        } => {
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
            )?;
            println!(
                "recorded #{}: {} -> {} ({}) by {}; hash {}",
                rec.seq, rec.review_id, rec.decision, rec.reason_code, rec.reviewer, rec.hash
            );
        }
        ReviewCommand::Verify { out } => {
            let v = store(&out)?.verify()?;
            if let Some((seq, why)) = v.first_broken {
                return Err(BrokenChain { seq, why }.into());
            }
            println!("audit log intact: {} record(s) verified", v.records);
        }
    }
    Ok(())
}
