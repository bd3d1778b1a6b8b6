//! Working the queue together: claims (a lock with an expiry, so two reviewers never work the
//! same case and an abandoned claim returns to the queue), filtered queue pages, reveals of
//! blurred text, and the numbers leads watch. Lives in `review.db` beside the cases and the
//! audit log, so the console, `vigil review` and the live service share one store.
//!
//! Every query binds its values as parameters; filter values never become SQL text.

use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

use crate::store::{CASE_COLUMNS, Case, ReviewError, ReviewStore};

/// Tables and indexes added for working the queue (created with the store).
pub(crate) const SCHEMA: &str = "
CREATE INDEX IF NOT EXISTS audit_log_by_user_day ON audit_log (user_id, day, seq);
CREATE INDEX IF NOT EXISTS audit_log_by_reviewer ON audit_log (reviewer, decision_ts);
CREATE TABLE IF NOT EXISTS claims (
    review_id TEXT PRIMARY KEY, reviewer TEXT NOT NULL, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS claims_by_reviewer ON claims (reviewer);
CREATE INDEX IF NOT EXISTS cases_by_user ON cases (user_id, day);
CREATE INDEX IF NOT EXISTS cases_by_queued_at ON cases (queued_at) WHERE queue_pos IS NOT NULL;
CREATE TABLE IF NOT EXISTS appeals (
    id INTEGER PRIMARY KEY, review_id TEXT NOT NULL, appealed_seq INTEGER NOT NULL,
    original_reviewer TEXT NOT NULL, opened_at TEXT NOT NULL, opened_by TEXT NOT NULL,
    statement TEXT NOT NULL, resolved_seq INTEGER, outcome TEXT);
CREATE INDEX IF NOT EXISTS appeals_open ON appeals (review_id) WHERE resolved_seq IS NULL;
CREATE TABLE IF NOT EXISTS second_reviews (
    review_id TEXT PRIMARY KEY, first_seq INTEGER NOT NULL, first_reviewer TEXT NOT NULL,
    first_decision TEXT NOT NULL, first_reason TEXT NOT NULL,
    second_seq INTEGER, second_reviewer TEXT, agreed INTEGER);
CREATE TABLE IF NOT EXISTS reveals (
    id INTEGER PRIMARY KEY, review_id TEXT NOT NULL, reviewer TEXT NOT NULL,
    revealed_at TEXT NOT NULL);
";

/// Which cases a queue page shows, by their decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// No decision recorded yet (the default: the work left).
    #[default]
    Undecided,
    /// At least one decision recorded.
    Decided,
    /// Under an open appeal (decided, and to be decided again by someone else).
    Appealed,
    /// Both decided and undecided.
    All,
}

impl Status {
    /// The name used in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Undecided => "undecided",
            Status::Decided => "decided",
            Status::Appealed => "appealed",
            Status::All => "all",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "undecided" | "" => Ok(Status::Undecided),
            "decided" => Ok(Status::Decided),
            "appealed" => Ok(Status::Appealed),
            "all" => Ok(Status::All),
            other => Err(format!(
                "`{other}` is not a status; use undecided, decided, appealed or all"
            )),
        }
    }
}

/// A queue page's filters; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    /// Cases carrying this flag (`ml`, `heuristic`, `uncertain`, ...).
    pub flag: Option<String>,
    /// Cases whose suggested action is this.
    pub action: Option<String>,
    /// Decided, undecided or all.
    pub status: Status,
    /// Cases whose live claim this reviewer holds.
    pub claimed_by: Option<String>,
}

/// One row of a queue page.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    /// The case.
    pub case: Case,
    /// When the case first entered the queue (UTC, `None` for cases stored before that was
    /// recorded).
    pub queued_at: Option<String>,
    /// The latest decision and who made it.
    pub latest: Option<(String, String)>,
    /// Who holds a live claim on it.
    pub holder: Option<String>,
    /// The first reviewer, while the case waits for its second, blind review.
    pub second_review_of: Option<String>,
}

/// One of a user's cases, as the case page lists the user's others.
#[derive(Debug, Clone, Serialize)]
pub struct UserCase {
    /// The case.
    pub case: Case,
    /// Its latest decision.
    pub latest: Option<String>,
    /// The first reviewer, while its second, blind review is pending.
    pub second_review_of: Option<String>,
}

/// The queue's size and age, for leads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// Cases in the queue.
    pub queued: usize,
    /// Of those, without a decision.
    pub undecided: usize,
    /// Undecided cases queued longer than the SLA.
    pub past_sla: usize,
    /// Cases under a live claim.
    pub claimed: usize,
    /// When the oldest undecided case entered the queue.
    pub oldest_undecided: Option<String>,
}

/// One reviewer's output, for leads.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewerStats {
    /// The reviewer.
    pub reviewer: String,
    /// Decisions recorded in all.
    pub decisions: usize,
    /// Decisions in the last hour.
    pub last_hour: usize,
    /// Decisions in the last 24 hours.
    pub last_day: usize,
}

/// An appeal against a case's decision.
#[derive(Debug, Clone, Serialize)]
pub struct Appeal {
    /// Its number.
    pub id: i64,
    /// The case.
    pub review_id: String,
    /// The audit record appealed against.
    pub appealed_seq: i64,
    /// Who made that decision (the appeal goes to someone else).
    pub original_reviewer: String,
    /// When it was opened (UTC).
    pub opened_at: String,
    /// Who opened it (an account, or the API token's name).
    pub opened_by: String,
    /// What the appellant says.
    pub statement: String,
    /// The record that decided it, once decided.
    pub resolved_seq: Option<i64>,
    /// `upheld` (same action) or `overturned`, once decided.
    pub outcome: Option<String>,
}

/// Appeals decided, by the rule that suggested the appealed action.
#[derive(Debug, Clone, Serialize)]
pub struct OverturnStats {
    /// The enforcement rule (the case's suggested reason).
    pub rule: String,
    /// Appeals decided.
    pub decided: usize,
    /// Of those, overturned.
    pub overturned: usize,
}

const APPEAL_COLUMNS: &str = "id, review_id, appealed_seq, original_reviewer, opened_at, \
     opened_by, statement, resolved_seq, outcome";

fn row_to_appeal(r: &rusqlite::Row<'_>) -> rusqlite::Result<Appeal> {
    Ok(Appeal {
        id: r.get(0)?,
        review_id: r.get(1)?,
        appealed_seq: r.get(2)?,
        original_reviewer: r.get(3)?,
        opened_at: r.get(4)?,
        opened_by: r.get(5)?,
        statement: r.get(6)?,
        resolved_seq: r.get(7)?,
        outcome: r.get(8)?,
    })
}

/// A SQLite error of the store at `path`.
fn sqlite(path: &std::path::Path) -> impl Fn(rusqlite::Error) -> ReviewError + '_ {
    move |source| ReviewError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// The live claim on a case at `now`: (holder, expiry).
fn live_claim(
    conn: &rusqlite::Connection,
    review_id: &str,
    now: i64,
    path: &std::path::Path,
) -> Result<Option<(String, i64)>, ReviewError> {
    conn.query_row(
        "SELECT reviewer, expires_at FROM claims WHERE review_id = ?1 AND expires_at > ?2",
        params![review_id, now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(sqlite(path))
}

/// Refuse when someone other than `reviewer` holds a live claim on the case at `now`.
fn refuse_held(
    conn: &rusqlite::Connection,
    review_id: &str,
    reviewer: &str,
    now: i64,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    match live_claim(conn, review_id, now, path)? {
        Some((holder, until)) if holder != reviewer => Err(ReviewError::Claimed {
            case: review_id.to_string(),
            holder,
            until: utc_text(until),
        }),
        _ => Ok(()),
    }
}

/// Refuse an unknown case id.
fn known_case(
    conn: &rusqlite::Connection,
    review_id: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    let known: bool = conn
        .query_row(
            "SELECT COUNT(*) > 0 FROM cases WHERE review_id = ?1",
            [review_id],
            |r| r.get(0),
        )
        .map_err(sqlite(path))?;
    if known {
        Ok(())
    } else {
        Err(ReviewError::UnknownCase(review_id.to_string()))
    }
}

/// The reviewer an open appeal (`appeals`) or a pending second review (`second_reviews`)
/// of the case is about.
fn pending_about(
    conn: &rusqlite::Connection,
    table: Pending,
    review_id: &str,
    path: &std::path::Path,
) -> Result<Option<String>, ReviewError> {
    let sql = match table {
        Pending::Appeal => {
            "SELECT original_reviewer FROM appeals WHERE review_id = ?1 AND resolved_seq IS NULL"
        }
        Pending::SecondReview => {
            "SELECT first_reviewer FROM second_reviews WHERE review_id = ?1 AND second_seq IS NULL"
        }
    };
    conn.query_row(sql, [review_id], |r| r.get(0))
        .optional()
        .map_err(sqlite(path))
}

/// What a case may be waiting for from someone other than a given reviewer.
#[derive(Clone, Copy)]
enum Pending {
    Appeal,
    SecondReview,
}

/// Inside the decision's (or claim's) transaction: an open appeal may not be decided,
/// claimed or assigned by the reviewer whose decision is appealed.
pub(crate) fn check_appeal(
    tx: &Transaction<'_>,
    review_id: &str,
    reviewer: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    refuse_pending(tx, Pending::Appeal, review_id, reviewer, path)
}

/// A pending second review may not be claimed by (or assigned to) its first reviewer: they
/// could otherwise hold it from everyone else for ever. (Amending their own decision needs
/// no claim and stays possible.)
pub(crate) fn check_second_review(
    tx: &Transaction<'_>,
    review_id: &str,
    reviewer: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    refuse_pending(tx, Pending::SecondReview, review_id, reviewer, path)
}

/// Refuse `reviewer` when the case waits (`kind`) for someone other than them.
fn refuse_pending(
    conn: &rusqlite::Connection,
    kind: Pending,
    review_id: &str,
    reviewer: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    match pending_about(conn, kind, review_id, path)? {
        Some(about) if about == reviewer => Err(ReviewError::NotAllowed(match kind {
            Pending::Appeal => format!(
                "case `{review_id}` is under appeal against {about}'s decision: another reviewer decides it"
            ),
            Pending::SecondReview => format!(
                "case `{review_id}` waits for a second review of {about}'s decision by another reviewer"
            ),
        })),
        _ => Ok(()),
    }
}

/// Inside the decision's transaction, after the record `seq` was appended: it decides the
/// case's open appeal, upheld when the action is the appealed one's, else overturned.
pub(crate) fn resolve_appeal(
    tx: &Transaction<'_>,
    review_id: &str,
    seq: i64,
    decision: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    tx.execute(
        "UPDATE appeals SET resolved_seq = ?2, outcome = CASE WHEN ?3 = \
         (SELECT a.decision FROM audit_log a WHERE a.seq = appeals.appealed_seq) \
         THEN 'upheld' ELSE 'overturned' END \
         WHERE review_id = ?1 AND resolved_seq IS NULL",
        params![review_id, seq, decision],
    )
    .map_err(sqlite(path))?;
    Ok(())
}

/// Second reviews done, grouped by the first reviewer or by the first decision's reason.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// The reviewer or reason code.
    pub key: String,
    /// Second reviews done.
    pub reviewed: usize,
    /// Of those, the same action as the first decision.
    pub agreed: usize,
}

/// Is the case in the sample for second review at `share` (0..1)? Decided by a hash of its
/// id, so the same case is always in or out of a given share.
pub fn in_second_review_sample(review_id: &str, share: f64) -> bool {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(review_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    (u64::from_be_bytes(b) as f64 / 18_446_744_073_709_551_616.0) < share
}

/// Inside the decision's transaction: a decision by someone other than the first reviewer
/// completes the case's pending second review (agreed = same action).
pub(crate) fn resolve_second_review(
    tx: &Transaction<'_>,
    review_id: &str,
    seq: i64,
    decision: &str,
    reviewer: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    tx.execute(
        "UPDATE second_reviews SET second_seq = ?2, second_reviewer = ?3, \
         agreed = (first_decision = ?4) \
         WHERE review_id = ?1 AND second_seq IS NULL AND first_reviewer <> ?3",
        params![review_id, seq, reviewer, decision],
    )
    .map_err(sqlite(path))?;
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (the form `queued_at` and decision times use).
pub fn utc_text(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Refuse (inside the decision's transaction) when someone other than `reviewer` holds a
/// live claim on the case.
pub(crate) fn check_claim(
    tx: &Transaction<'_>,
    review_id: &str,
    reviewer: &str,
    path: &std::path::Path,
) -> Result<(), ReviewError> {
    refuse_held(
        tx,
        review_id,
        reviewer,
        chrono::Utc::now().timestamp(),
        path,
    )
}

const LATEST: &str = "(SELECT a.decision || char(31) || a.reviewer FROM audit_log a \
     WHERE a.user_id = c.user_id AND a.day = c.day ORDER BY a.seq DESC LIMIT 1)";

impl ReviewStore {
    /// One page of the queue in rank order (priority, risk, then queue order), filtered,
    /// and whether more rows follow. `now` is the Unix time claims are judged at.
    pub fn queue_page(
        &self,
        filter: &QueueFilter,
        now: i64,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<QueueRow>, bool), ReviewError> {
        let status = match filter.status {
            Status::Undecided => {
                "AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.user_id = c.user_id AND a.day = c.day)"
            }
            Status::Decided => {
                "AND EXISTS (SELECT 1 FROM audit_log a WHERE a.user_id = c.user_id AND a.day = c.day)"
            }
            Status::Appealed => {
                "AND EXISTS (SELECT 1 FROM appeals p WHERE p.review_id = c.review_id AND p.resolved_seq IS NULL)"
            }
            Status::All => "",
        };
        let sql = format!(
            "SELECT {CASE_COLUMNS}, c.queued_at, {LATEST}, \
             (SELECT k.reviewer FROM claims k WHERE k.review_id = c.review_id AND k.expires_at > ?1), \
             (SELECT r.first_reviewer FROM second_reviews r WHERE r.review_id = c.review_id AND r.second_seq IS NULL) \
             FROM cases c WHERE c.queue_pos IS NOT NULL \
             AND (?2 IS NULL OR instr(',' || c.flags || ',', ',' || ?2 || ',') > 0) \
             AND (?3 IS NULL OR c.suggested_action = ?3) \
             AND (?4 IS NULL OR EXISTS (SELECT 1 FROM claims k WHERE k.review_id = c.review_id \
                  AND k.reviewer = ?4 AND k.expires_at > ?1)) \
             {status} \
             ORDER BY c.priority DESC, c.risk_score DESC, c.queue_pos LIMIT ?5 OFFSET ?6"
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let rows = st
            .query_map(
                params![
                    now,
                    filter.flag,
                    filter.action,
                    filter.claimed_by,
                    limit as i64 + 1,
                    offset as i64
                ],
                |r| {
                    let latest: Option<String> = r.get(12)?;
                    Ok(QueueRow {
                        case: Self::row_to_case(r)?,
                        queued_at: r.get(11)?,
                        latest: latest.and_then(|l| {
                            l.split_once('\u{1f}')
                                .map(|(d, who)| (d.to_string(), who.to_string()))
                        }),
                        holder: r.get(13)?,
                        second_review_of: r.get(14)?,
                    })
                },
            )
            .map_err(self.err())?;
        let mut out = rows.collect::<Result<Vec<_>, _>>().map_err(self.err())?;
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    /// Claim the top case of the queue that is undecided and not claimed by someone else,
    /// for `ttl_secs`; the reviewer's other claims are released (one case at a time).
    /// `None` when nothing is left.
    pub fn claim_next(
        &mut self,
        reviewer: &str,
        ttl_secs: i64,
        now: i64,
    ) -> Result<Option<String>, ReviewError> {
        let e = self.err_owned();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        // Open appeals first (oldest first), never to the reviewer whose decision is
        // appealed; then the top undecided case.
        let appeal: Option<String> = tx
            .query_row(
                "SELECT p.review_id FROM appeals p WHERE p.resolved_seq IS NULL \
                 AND p.original_reviewer <> ?2 \
                 AND NOT EXISTS (SELECT 1 FROM claims k WHERE k.review_id = p.review_id \
                     AND k.expires_at > ?1 AND k.reviewer <> ?2) \
                 ORDER BY p.id LIMIT 1",
                params![now, reviewer],
                |r| r.get(0),
            )
            .optional()
            .map_err(&e)?;
        // Then second reviews waiting for someone other than the first reviewer.
        let second: Option<String> = match appeal {
            Some(_) => None,
            None => tx
                .query_row(
                    "SELECT r.review_id FROM second_reviews r WHERE r.second_seq IS NULL \
                     AND r.first_reviewer <> ?2 \
                     AND NOT EXISTS (SELECT 1 FROM claims k WHERE k.review_id = r.review_id \
                         AND k.expires_at > ?1 AND k.reviewer <> ?2) \
                     ORDER BY r.first_seq LIMIT 1",
                    params![now, reviewer],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&e)?,
        };
        let next: Option<String> = match appeal.or(second) {
            Some(a) => Some(a),
            None => tx
            .query_row(
                "SELECT c.review_id FROM cases c WHERE c.queue_pos IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.user_id = c.user_id AND a.day = c.day) \
                 AND NOT EXISTS (SELECT 1 FROM claims k WHERE k.review_id = c.review_id \
                     AND k.expires_at > ?1 AND k.reviewer <> ?2) \
                 ORDER BY c.priority DESC, c.risk_score DESC, c.queue_pos LIMIT 1",
                params![now, reviewer],
                |r| r.get(0),
            )
            .optional()
            .map_err(&e)?,
        };
        if let Some(id) = &next {
            tx.execute(
                "DELETE FROM claims WHERE reviewer = ?1 AND review_id <> ?2",
                params![reviewer, id],
            )
            .map_err(&e)?;
            tx.execute(
                "INSERT OR REPLACE INTO claims (review_id, reviewer, expires_at) VALUES (?1, ?2, ?3)",
                params![id, reviewer, now + ttl_secs],
            )
            .map_err(&e)?;
        }
        tx.commit().map_err(&e)?;
        Ok(next)
    }

    /// Claim (or renew the claim on) one case; refused when someone else holds it. Returns
    /// when the claim expires.
    pub fn claim(
        &mut self,
        review_id: &str,
        reviewer: &str,
        ttl_secs: i64,
        now: i64,
    ) -> Result<i64, ReviewError> {
        let e = self.err_owned();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        known_case(&tx, review_id, &self.path)?;
        refuse_held(&tx, review_id, reviewer, now, &self.path)?;
        check_appeal(&tx, review_id, reviewer, &self.path)?;
        check_second_review(&tx, review_id, reviewer, &self.path)?;
        let until = now + ttl_secs;
        tx.execute(
            "INSERT OR REPLACE INTO claims (review_id, reviewer, expires_at) VALUES (?1, ?2, ?3)",
            params![review_id, reviewer, until],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)?;
        Ok(until)
    }

    /// Give a claim back (only its holder can); false when the reviewer held none.
    pub fn release(&mut self, review_id: &str, reviewer: &str) -> Result<bool, ReviewError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM claims WHERE review_id = ?1 AND reviewer = ?2",
                params![review_id, reviewer],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// Who holds a live claim on the case, and until when (Unix time).
    pub fn claim_of(
        &self,
        review_id: &str,
        now: i64,
    ) -> Result<Option<(String, i64)>, ReviewError> {
        live_claim(&self.conn, review_id, now, &self.path)
    }

    /// A lead hands a case to `reviewer` for `ttl_secs`, taking it from whoever held it.
    pub fn assign(
        &mut self,
        review_id: &str,
        reviewer: &str,
        ttl_secs: i64,
        now: i64,
    ) -> Result<(), ReviewError> {
        let e = self.err_owned();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        known_case(&tx, review_id, &self.path)?;
        // Not to the reviewer an open appeal or a pending second review is about.
        check_appeal(&tx, review_id, reviewer, &self.path)?;
        check_second_review(&tx, review_id, reviewer, &self.path)?;
        tx.execute(
            "INSERT OR REPLACE INTO claims (review_id, reviewer, expires_at) VALUES (?1, ?2, ?3)",
            params![review_id, reviewer, now + ttl_secs],
        )
        .map_err(&e)?;
        tx.commit().map_err(&e)
    }

    /// Every case of a user (queued or not), newest day first, with its latest decision
    /// and, while one is pending, its second review's first reviewer (so a page can keep
    /// that review blind).
    pub fn cases_of_user(&self, user_id: &str) -> Result<Vec<UserCase>, ReviewError> {
        let sql = format!(
            "SELECT {CASE_COLUMNS}, (SELECT a.decision FROM audit_log a WHERE a.user_id = c.user_id \
             AND a.day = c.day ORDER BY a.seq DESC LIMIT 1), \
             (SELECT r.first_reviewer FROM second_reviews r WHERE r.review_id = c.review_id \
             AND r.second_seq IS NULL) FROM cases c WHERE c.user_id = ?1 \
             ORDER BY c.day DESC LIMIT 100"
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(self.err())?;
        let rows = st
            .query_map([user_id], |r| {
                Ok(UserCase {
                    case: Self::row_to_case(r)?,
                    latest: r.get(11)?,
                    second_review_of: r.get(12)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Open an appeal against the case's latest decision; refused when it has none or is
    /// under appeal already.
    pub fn open_appeal(
        &mut self,
        review_id: &str,
        statement: &str,
        opened_by: &str,
        now: i64,
    ) -> Result<Appeal, ReviewError> {
        let e = self.err_owned();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        let latest: Option<(i64, String)> = tx
            .query_row(
                "SELECT a.seq, a.reviewer FROM cases c JOIN audit_log a \
                 ON a.user_id = c.user_id AND a.day = c.day WHERE c.review_id = ?1 \
                 ORDER BY a.seq DESC LIMIT 1",
                [review_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(&e)?;
        known_case(&tx, review_id, &self.path)?;
        let Some((seq, original)) = latest else {
            return Err(ReviewError::NotAllowed(format!(
                "case `{review_id}` has no decision to appeal"
            )));
        };
        let open: Option<i64> = tx
            .query_row(
                "SELECT id FROM appeals WHERE review_id = ?1 AND resolved_seq IS NULL",
                [review_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(&e)?;
        if let Some(id) = open {
            return Err(ReviewError::NotAllowed(format!(
                "case `{review_id}` is under appeal already (appeal #{id})"
            )));
        }
        tx.execute(
            "INSERT INTO appeals (review_id, appealed_seq, original_reviewer, opened_at, opened_by, statement) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![review_id, seq, original, utc_text(now), opened_by, statement],
        )
        .map_err(&e)?;
        let id = tx.last_insert_rowid();
        // The original reviewer may not decide it: their claim on the case ends.
        tx.execute(
            "DELETE FROM claims WHERE review_id = ?1 AND reviewer = ?2",
            params![review_id, original],
        )
        .map_err(&e)?;
        let appeal = tx
            .query_row(
                &format!("SELECT {APPEAL_COLUMNS} FROM appeals WHERE id = ?1"),
                [id],
                row_to_appeal,
            )
            .map_err(&e)?;
        tx.commit().map_err(&e)?;
        Ok(appeal)
    }

    /// Every appeal on a case, oldest first.
    pub fn appeals_of(&self, review_id: &str) -> Result<Vec<Appeal>, ReviewError> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {APPEAL_COLUMNS} FROM appeals WHERE review_id = ?1 ORDER BY id"
            ))
            .map_err(self.err())?;
        let rows = st
            .query_map([review_id], row_to_appeal)
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Put the case of `rec` in the second-review sample when it is the case's first
    /// decision and the case falls in `share`; true when it was added.
    pub fn sample_second_review(
        &mut self,
        rec: &crate::AuditRecord,
        share: f64,
    ) -> Result<bool, ReviewError> {
        if !in_second_review_sample(&rec.review_id, share) {
            return Ok(false);
        }
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO second_reviews (review_id, first_seq, first_reviewer, \
                 first_decision, first_reason) \
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (SELECT 1 FROM audit_log a \
                 WHERE a.user_id = ?6 AND a.day = ?7 AND a.seq < ?2)",
                params![
                    rec.review_id,
                    rec.seq,
                    rec.reviewer,
                    rec.decision,
                    rec.reason_code,
                    rec.user_id,
                    rec.day
                ],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    /// The first reviewer of the case's pending second review, if one is pending (the
    /// console hides earlier decisions from everyone else: the review is blind).
    pub fn second_review_pending(&self, review_id: &str) -> Result<Option<String>, ReviewError> {
        pending_about(&self.conn, Pending::SecondReview, review_id, &self.path)
    }

    /// Agreement of second reviews with the first decision, per first reviewer and per the
    /// first decision's reason code.
    pub fn agreement_stats(&self) -> Result<(Vec<Agreement>, Vec<Agreement>), ReviewError> {
        let group = |col: &str| -> Result<Vec<Agreement>, ReviewError> {
            let mut st = self
                .conn
                .prepare(&format!(
                    "SELECT {col}, COUNT(*), COALESCE(SUM(agreed), 0) FROM second_reviews \
                     WHERE second_seq IS NOT NULL GROUP BY {col} ORDER BY {col}"
                ))
                .map_err(self.err())?;
            let rows = st
                .query_map([], |r| {
                    Ok(Agreement {
                        key: r.get(0)?,
                        reviewed: r.get::<_, i64>(1)? as usize,
                        agreed: r.get::<_, i64>(2)? as usize,
                    })
                })
                .map_err(self.err())?;
            rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
        };
        Ok((group("first_reviewer")?, group("first_reason")?))
    }

    /// Decided appeals and how many were overturned, by the rule that suggested the
    /// appealed case's action (the feedback from review to the detector's rules).
    pub fn overturn_stats(&self) -> Result<Vec<OverturnStats>, ReviewError> {
        self.overturns("c.suggested_reason", "")
    }

    /// Decided appeals and how many were overturned, by the detector threshold that queued
    /// the appealed case (its flags: `ml` = the model's risk threshold, `heuristic`,
    /// `uncertain`, `capped`, `rare_harm`; a case with two flags counts for both).
    pub fn overturn_by_flag(&self) -> Result<Vec<OverturnStats>, ReviewError> {
        self.overturns(
            "f.flag",
            "JOIN (SELECT 'ml' AS flag UNION ALL SELECT 'heuristic' UNION ALL \
             SELECT 'uncertain' UNION ALL SELECT 'capped' UNION ALL SELECT 'rare_harm') f \
             ON instr(',' || c.flags || ',', ',' || f.flag || ',') > 0",
        )
    }

    /// Decided appeals grouped by `key` (a fixed column expression, never user text) after
    /// the extra fixed `join`.
    fn overturns(&self, key: &str, join: &str) -> Result<Vec<OverturnStats>, ReviewError> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {key}, COUNT(*), COALESCE(SUM(p.outcome = 'overturned'), 0) \
                 FROM appeals p JOIN cases c ON c.review_id = p.review_id {join} \
                 WHERE p.resolved_seq IS NOT NULL GROUP BY {key} ORDER BY {key}"
            ))
            .map_err(self.err())?;
        let rows = st
            .query_map([], |r| {
                Ok(OverturnStats {
                    rule: r.get(0)?,
                    decided: r.get::<_, i64>(1)? as usize,
                    overturned: r.get::<_, i64>(2)? as usize,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Record that `reviewer` revealed a case's blurred text (who and when, never the text).
    pub fn record_reveal(
        &mut self,
        review_id: &str,
        reviewer: &str,
        now: i64,
    ) -> Result<(), ReviewError> {
        self.conn
            .execute(
                "INSERT INTO reveals (review_id, reviewer, revealed_at) VALUES (?1, ?2, ?3)",
                params![review_id, reviewer, utc_text(now)],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// How many times each reviewer revealed the case's blurred text.
    pub fn reveals(&self, review_id: &str) -> Result<Vec<(String, String)>, ReviewError> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT reviewer, revealed_at FROM reveals WHERE review_id = ?1 ORDER BY id",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([review_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The queue's size and age at `now`, with `sla_secs` as the time a case may wait.
    pub fn queue_stats(&self, now: i64, sla_secs: i64) -> Result<QueueStats, ReviewError> {
        let cutoff = utc_text(now - sla_secs);
        // Driven by the (few) decisions and claims, not by a lookup per queued case.
        let one = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<i64, ReviewError> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut st| st.query_row(p, |r| r.get::<_, i64>(0)))
                .map_err(self.err())
        };
        let queued = one(
            "SELECT COUNT(*) FROM cases WHERE queue_pos IS NOT NULL",
            &[],
        )?;
        let decided = one(
            "SELECT COUNT(*) FROM (SELECT DISTINCT user_id, day FROM audit_log) d \
             JOIN cases c ON c.user_id = d.user_id AND c.day = d.day WHERE c.queue_pos IS NOT NULL",
            &[],
        )?;
        let late_all = one(
            "SELECT COUNT(*) FROM cases WHERE queue_pos IS NOT NULL AND queued_at < ?1",
            &[&cutoff],
        )?;
        let late_decided = one(
            "SELECT COUNT(*) FROM (SELECT DISTINCT user_id, day FROM audit_log) d \
             JOIN cases c ON c.user_id = d.user_id AND c.day = d.day \
             WHERE c.queue_pos IS NOT NULL AND c.queued_at < ?1",
            &[&cutoff],
        )?;
        let claimed = one(
            "SELECT COUNT(*) FROM claims k JOIN cases c ON c.review_id = k.review_id \
             WHERE k.expires_at > ?1 AND c.queue_pos IS NOT NULL",
            &[&now],
        )?;
        let oldest_undecided: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT c.queued_at FROM cases c WHERE c.queue_pos IS NOT NULL \
                 AND c.queued_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM audit_log a \
                 WHERE a.user_id = c.user_id AND a.day = c.day) ORDER BY c.queued_at LIMIT 1",
            )
            .and_then(|mut st| st.query_row([], |r| r.get(0)).optional())
            .map_err(self.err())?;
        Ok(QueueStats {
            queued: queued as usize,
            undecided: (queued - decided).max(0) as usize,
            past_sla: (late_all - late_decided).max(0) as usize,
            claimed: claimed as usize,
            oldest_undecided,
        })
    }

    /// Decisions per reviewer: in all, in the hour and the day before `now`.
    pub fn reviewer_stats(&self, now: i64) -> Result<Vec<ReviewerStats>, ReviewError> {
        let (hour, day) = (utc_text(now - 3600), utc_text(now - 86_400));
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT reviewer, COUNT(*), COALESCE(SUM(decision_ts >= ?1), 0), \
                 COALESCE(SUM(decision_ts >= ?2), 0) FROM audit_log GROUP BY reviewer ORDER BY reviewer",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![hour, day], |r| {
                Ok(ReviewerStats {
                    reviewer: r.get(0)?,
                    decisions: r.get::<_, i64>(1)? as usize,
                    last_hour: r.get::<_, i64>(2)? as usize,
                    last_day: r.get::<_, i64>(3)? as usize,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The audit log's last record (sequence number and hash), if any.
    pub fn audit_head(&self) -> Result<Option<(i64, String)>, ReviewError> {
        self.conn
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())
    }

    /// Every audit record in chain order (for export).
    pub fn audit_records(&self) -> Result<Vec<crate::AuditRecord>, ReviewError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT seq, review_id, day, user_id, decision, reason_code, notes, reviewer, \
                 decision_ts, prev_hash, hash, mac FROM audit_log ORDER BY seq",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], crate::store::row_to_record)
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    fn err_owned(&self) -> impl Fn(rusqlite::Error) -> ReviewError + use<> {
        let path = self.path.clone();
        move |source| ReviewError::Sqlite {
            path: path.clone(),
            source,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{AuditKey, Decision, case_id};

    fn case(i: usize, priority: f64, flags: &str, action: &str) -> Case {
        Case {
            review_id: case_id(&format!("u{i}"), "2026-02-01"),
            queue_pos: Some(i),
            day: "2026-02-01".into(),
            user_id: format!("u{i}"),
            risk_score: 0.5,
            uncertainty: 0.1,
            priority,
            recent_prompts: String::new(),
            suggested_action: action.into(),
            suggested_reason: "r".into(),
            flags: flags.into(),
        }
    }

    fn store() -> (tempfile::TempDir, ReviewStore, AuditKey) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReviewStore::create(&dir.path().join("review.db")).unwrap();
        s.upsert_cases(&[
            case(0, 3.0, "ml", "block"),
            case(1, 2.0, "ml,heuristic", "warn"),
            case(2, 1.0, "uncertain", "block"),
        ])
        .unwrap();
        let key = AuditKey::load_or_create(&dir.path().join("audit.key")).unwrap();
        (dir, s, key)
    }

    fn decide(s: &mut ReviewStore, key: &AuditKey, id: &str, who: &str) -> Result<(), ReviewError> {
        s.decide(
            &Decision {
                review_id: id.into(),
                decision: "warn".into(),
                reason_code: "spam".into(),
                notes: String::new(),
                reviewer: who.into(),
            },
            "2026-02-02T00:00:00Z",
            key,
        )
        .map(|_| ())
    }

    #[test]
    fn two_reviewers_never_hold_the_same_case_and_an_expired_claim_returns_to_the_queue() {
        let (_d, mut s, key) = store();
        let a = s.claim_next("ana", 60, 1_000).unwrap().unwrap();
        let b = s.claim_next("bo", 60, 1_000).unwrap().unwrap();
        assert_eq!(a, "u0@2026-02-01");
        assert_eq!(b, "u1@2026-02-01");
        // Bo cannot take or decide Ana's case while her claim lives.
        assert!(matches!(
            s.claim(&a, "bo", 60, 1_010),
            Err(ReviewError::Claimed { .. })
        ));
        // (decide judges claims at the wall clock: a claim far in the future holds.)
        s.claim(&a, "ana", 10_000_000_000, 1_010).unwrap();
        assert!(matches!(
            decide(&mut s, &key, &a, "bo"),
            Err(ReviewError::Claimed { .. })
        ));
        assert_eq!(
            s.audit_records().unwrap().len(),
            0,
            "a refused decision stores nothing"
        );
        decide(&mut s, &key, &a, "ana").unwrap();
        assert_eq!(
            s.claim_of(&a, 1_020).unwrap(),
            None,
            "deciding ends the claim"
        );
        // Bo's claim expires at 1_060: then Ana's next case is his abandoned one.
        let next = s.claim_next("ana", 60, 1_061).unwrap().unwrap();
        assert_eq!(next, b);
        // Ana's next claim released her earlier one (one case at a time).
        let later = s.claim_next("ana", 60, 1_062).unwrap().unwrap();
        assert_eq!(later, b, "the top undecided case is still hers");
        assert_eq!(
            s.claim_next("bo", 60, 1_063).unwrap().unwrap(),
            "u2@2026-02-01"
        );
        assert_eq!(s.claim_next("cy", 60, 1_064).unwrap(), None, "nothing left");
    }

    #[test]
    fn an_appeal_goes_to_another_reviewer_and_its_outcome_is_counted_per_rule() {
        let (_d, mut s, key) = store();
        let id = "u0@2026-02-01";
        assert!(
            matches!(
                s.open_appeal(id, "not me", "api", 1_000),
                Err(ReviewError::NotAllowed(_))
            ),
            "nothing decided yet"
        );
        decide(&mut s, &key, id, "ana").unwrap();
        // A claim Ana took on her decided case ends when the appeal opens (she may not
        // decide it, so she must not hold it from others).
        s.claim(id, "ana", 10_000_000_000, 1_000).unwrap();
        let a = s.open_appeal(id, "it was a joke", "api", 1_000).unwrap();
        assert_eq!(s.claim_of(id, 1_000).unwrap(), None);
        assert!(
            matches!(
                s.assign(id, "ana", 60, 1_000),
                Err(ReviewError::NotAllowed(_))
            ),
            "nor can a lead hand it to her"
        );
        assert_eq!((a.original_reviewer.as_str(), a.appealed_seq), ("ana", 1));
        assert!(
            s.open_appeal(id, "again", "api", 1_001).is_err(),
            "one open appeal"
        );
        // Ana's next case is not her own appealed decision; Bo's is.
        assert_ne!(s.claim_next("ana", 60, 1_002).unwrap().as_deref(), Some(id));
        assert!(matches!(
            decide(&mut s, &key, id, "ana"),
            Err(ReviewError::NotAllowed(_))
        ));
        assert_eq!(s.claim_next("bo", 60, 1_003).unwrap().as_deref(), Some(id));
        s.decide(
            &Decision {
                review_id: id.into(),
                decision: "allow".into(),
                reason_code: "false_positive".into(),
                notes: String::new(),
                reviewer: "bo".into(),
            },
            "2026-02-03T00:00:00Z",
            &key,
        )
        .unwrap();
        let a = &s.appeals_of(id).unwrap()[0];
        assert_eq!(
            (a.resolved_seq, a.outcome.as_deref()),
            (Some(2), Some("overturned"))
        );
        let stats = s.overturn_stats().unwrap();
        assert_eq!(
            (
                stats[0].rule.as_str(),
                stats[0].decided,
                stats[0].overturned
            ),
            ("r", 1, 1)
        );
        let f = QueueFilter {
            status: Status::Appealed,
            ..Default::default()
        };
        assert!(
            s.queue_page(&f, 1_004, 0, 10).unwrap().0.is_empty(),
            "resolved"
        );
    }

    #[test]
    fn a_sampled_first_decision_gets_a_blind_second_review_by_someone_else() {
        let (_d, mut s, key) = store();
        assert!(in_second_review_sample("anything", 1.0));
        assert!(!in_second_review_sample("anything", 0.0));
        let share = (0..1000)
            .filter(|i| in_second_review_sample(&format!("u{i}@2026-02-01"), 0.1))
            .count();
        assert!((60..=140).contains(&share), "about 10% sampled: {share}");
        let id = "u1@2026-02-01";
        decide(&mut s, &key, id, "ana").unwrap();
        let rec = s.audit_records().unwrap().pop().unwrap();
        assert!(s.sample_second_review(&rec, 1.0).unwrap());
        assert_eq!(s.second_review_pending(id).unwrap().as_deref(), Some("ana"));
        // Not Ana's to do; Bo's next case is it (before the undecided top case u0).
        assert_ne!(s.claim_next("ana", 60, 1_000).unwrap().as_deref(), Some(id));
        assert_eq!(s.claim_next("bo", 60, 1_000).unwrap().as_deref(), Some(id));
        // Once Bo lets it go, Ana cannot claim it (she could hold it from everyone else for
        // ever).
        s.release(id, "bo").unwrap();
        assert!(matches!(
            s.claim(id, "ana", 60, 1_001),
            Err(ReviewError::NotAllowed(_))
        ));
        // Ana amending her own decision is no second review.
        decide(&mut s, &key, id, "ana").unwrap();
        assert!(s.second_review_pending(id).unwrap().is_some());
        decide(&mut s, &key, id, "bo").unwrap();
        assert_eq!(s.second_review_pending(id).unwrap(), None);
        let (by_reviewer, by_reason) = s.agreement_stats().unwrap();
        assert_eq!(
            (
                by_reviewer[0].key.as_str(),
                by_reviewer[0].reviewed,
                by_reviewer[0].agreed
            ),
            ("ana", 1, 1)
        );
        assert_eq!(by_reason[0].key, "spam");
        // A later decision is not a first decision: never sampled.
        let later = s.audit_records().unwrap().pop().unwrap();
        assert!(!s.sample_second_review(&later, 1.0).unwrap());
    }

    #[test]
    fn queue_pages_filter_by_flag_action_status_and_holder_in_rank_order() {
        let (_d, mut s, key) = store();
        fn ids_of(s: &ReviewStore, f: &QueueFilter) -> Vec<String> {
            s.queue_page(f, 1_000, 0, 10)
                .unwrap()
                .0
                .into_iter()
                .map(|r| r.case.user_id)
                .collect()
        }
        assert_eq!(ids_of(&s, &QueueFilter::default()), ["u0", "u1", "u2"]);
        let ml = QueueFilter {
            flag: Some("ml".into()),
            ..Default::default()
        };
        assert_eq!(ids_of(&s, &ml), ["u0", "u1"]);
        // A flag is matched whole, not as a substring of another flag.
        let m = QueueFilter {
            flag: Some("m".into()),
            ..Default::default()
        };
        assert!(ids_of(&s, &m).is_empty());
        let block = QueueFilter {
            action: Some("block".into()),
            ..Default::default()
        };
        assert_eq!(ids_of(&s, &block), ["u0", "u2"]);
        decide(&mut s, &key, "u1@2026-02-01", "ana").unwrap();
        assert_eq!(ids_of(&s, &QueueFilter::default()), ["u0", "u2"]);
        let decided = QueueFilter {
            status: Status::Decided,
            ..Default::default()
        };
        let (rows, more) = s.queue_page(&decided, 1_000, 0, 10).unwrap();
        assert!(!more);
        assert_eq!(rows[0].latest, Some(("warn".into(), "ana".into())));
        s.claim("u2@2026-02-01", "bo", 60, 1_000).unwrap();
        let mine = QueueFilter {
            claimed_by: Some("bo".into()),
            ..Default::default()
        };
        assert_eq!(ids_of(&s, &mine), ["u2"]);
        let all = QueueFilter {
            status: Status::All,
            ..Default::default()
        };
        let (page, more) = s.queue_page(&all, 1_000, 1, 1).unwrap();
        assert_eq!(page[0].case.user_id, "u1");
        assert!(more);
        assert_eq!(
            s.queue_page(&all, 1_000, 0, 10).unwrap().0[2]
                .holder
                .as_deref(),
            Some("bo")
        );
        let stats = s.queue_stats(1_000, 3600).unwrap();
        assert_eq!((stats.queued, stats.undecided, stats.claimed), (3, 2, 1));
        // A day from now, every undecided case has waited past a one-minute SLA, none past
        // a ten-day one; the oldest undecided one is named.
        let later = chrono::Utc::now().timestamp() + 86_400;
        let late = s.queue_stats(later, 60).unwrap();
        assert_eq!((late.undecided, late.past_sla), (2, 2));
        assert!(late.oldest_undecided.is_some());
        assert_eq!(s.queue_stats(later, 10 * 86_400).unwrap().past_sla, 0);
    }
}
