//! `review.db`: the current review queue and the append-only, hash-chained audit log.
//!
//! A case is identified by what it is, its user-day ([`case_id`]: `USER@DAY`), never by its
//! queue position. A run upserts its queue into `cases` (in one transaction): a case seen
//! before keeps its id and its decisions, its scores are refreshed, and `queue_pos` says
//! where it stands in the latest queue (NULL once it left it). `audit_log` is never touched.
//! Every decision is appended in an IMMEDIATE transaction, so a crash leaves either the whole
//! record or nothing. Triggers reject UPDATE and DELETE on the log; the hash chain catches
//! anything done around them (a rewritten file, a dropped trigger).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use vigil_config::ACTIONS;

use crate::REASON_CODES;
use crate::anchor::AuditKey;

/// Errors of the review store, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// User: there is no store where one was expected.
    #[error("no review store at {0}: run `vigil run --out DIR` first, then pass that DIR")]
    Missing(PathBuf),
    /// User: the case id is not in the current queue.
    #[error("unknown case `{0}` (see `vigil review list`)")]
    UnknownCase(String),
    /// User: the decision is not an allowed action.
    #[error("invalid decision `{value}`: expected one of {}", ACTIONS.join(", "))]
    InvalidDecision {
        /// What was given.
        value: String,
    },
    /// User: the reason code is not an allowed one.
    #[error("invalid reason code `{value}`: expected one of {}", REASON_CODES.join(", "))]
    InvalidReason {
        /// What was given.
        value: String,
    },
    /// User: the reviewer name is empty.
    #[error("a decision needs a reviewer name (--reviewer)")]
    MissingReviewer,
    /// User: another reviewer holds the case's claim (a claim is a lock with an expiry).
    #[error(
        "case `{case}` is claimed by {holder} until {until}; pick another case or wait for the claim to expire"
    )]
    Claimed {
        /// The case.
        case: String,
        /// Who holds it.
        holder: String,
        /// When the claim expires (UTC).
        until: String,
    },
    /// User: an appeal or second review that the rules do not allow (what and why).
    #[error("{0}")]
    NotAllowed(String),
    /// Environment: the audit key (or an anchor beside it) cannot be used.
    #[error("audit key {path}: {message}")]
    Key {
        /// The key or anchor file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Environment: SQLite failed.
    #[error("review store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
}

/// The stable id of the case for `user_id` on `day` (`YYYY-MM-DD`): `USER@DAY`. The day has
/// a fixed shape, so the id splits unambiguously at its last `@` whatever the user id holds.
pub fn case_id(user_id: &str, day: &str) -> String {
    format!("{user_id}@{day}")
}

/// One case of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    /// [`case_id`] of the user-day: the same in every run.
    pub review_id: String,
    /// Where the case entered the queue, from 0: for a run's queue its rank; for the live
    /// service's cases the order they arrived (`None` once the case left the queue).
    pub queue_pos: Option<usize>,
    /// The user-day's day.
    pub day: String,
    /// The user.
    pub user_id: String,
    /// Model risk.
    pub risk_score: f64,
    /// Model uncertainty.
    pub uncertainty: f64,
    /// Queue priority.
    pub priority: f64,
    /// The last normalised prompts of the user-day.
    pub recent_prompts: String,
    /// The enforcement policy's suggestion.
    pub suggested_action: String,
    /// Why the policy suggested it.
    pub suggested_reason: String,
    /// Which flags put it in the queue, e.g. `ml,heuristic`.
    pub flags: String,
}

/// A reviewer's decision, before it is stored.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The case.
    pub review_id: String,
    /// allow, warn, rate_limit, block or escalate.
    pub decision: String,
    /// One of [`REASON_CODES`].
    pub reason_code: String,
    /// Free text.
    pub notes: String,
    /// Who decided.
    pub reviewer: String,
}

/// One stored audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Position in the log, from 1.
    pub seq: i64,
    /// The case id at decision time (stores before stable ids used `rev_NNNNNN`).
    pub review_id: String,
    /// The user-day's day.
    pub day: String,
    /// The user.
    pub user_id: String,
    /// The decision.
    pub decision: String,
    /// The reason code.
    pub reason_code: String,
    /// Notes.
    pub notes: String,
    /// Reviewer.
    pub reviewer: String,
    /// When (UTC, RFC 3339).
    pub decision_ts: String,
    /// Hash of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and this record's fields.
    pub hash: String,
    /// HMAC of the store id and `hash` under the audit key ([`AuditKey::mac`]); `None` for
    /// records written before audit keys.
    pub mac: Option<String>,
}

impl AuditRecord {
    fn compute_hash(&self) -> String {
        let body = serde_json::json!([
            self.seq,
            self.review_id,
            self.day,
            self.user_id,
            self.decision,
            self.reason_code,
            self.notes,
            self.reviewer,
            self.decision_ts
        ]);
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(b"\n");
        h.update(body.to_string().as_bytes());
        format!("{:x}", h.finalize())
    }
}

/// Result of checking the whole chain.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: usize,
    /// The last record's position and hash, if any.
    pub head: Option<(i64, String)>,
    /// The first broken record and why, if any (position 0: the store as a whole).
    pub first_broken: Option<(i64, String)>,
    /// Records checked against the audit key.
    pub authenticated: usize,
    /// Records from before audit keys (no authenticator to check).
    pub unauthenticated: usize,
    /// The anchored head (records, hash) the store was compared with, if the key has one.
    pub anchor: Option<(i64, String)>,
    /// Where the expected head (`--expect-head`) was found.
    pub expected_head_at: Option<i64>,
}

/// The columns [`ReviewStore::row_to_case`] reads, in its order.
pub(crate) const CASE_COLUMNS: &str = "c.review_id, c.day, c.user_id, c.risk_score, c.uncertainty, \
     c.priority, c.recent_prompts, c.suggested_action, c.suggested_reason, c.flags, c.queue_pos";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cases (
    review_id TEXT PRIMARY KEY, day TEXT NOT NULL, user_id TEXT NOT NULL,
    risk_score REAL NOT NULL, uncertainty REAL NOT NULL, priority REAL NOT NULL,
    recent_prompts TEXT NOT NULL, suggested_action TEXT NOT NULL,
    suggested_reason TEXT NOT NULL, flags TEXT NOT NULL, queue_pos INTEGER);
CREATE INDEX IF NOT EXISTS cases_by_queue_pos ON cases (queue_pos);
CREATE INDEX IF NOT EXISTS cases_by_rank ON cases (priority DESC, risk_score DESC, queue_pos)
    WHERE queue_pos IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, review_id TEXT NOT NULL, day TEXT NOT NULL,
    user_id TEXT NOT NULL, decision TEXT NOT NULL, reason_code TEXT NOT NULL,
    notes TEXT NOT NULL, reviewer TEXT NOT NULL, decision_ts TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL, mac TEXT);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_log_append_only_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_append_only_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
";

/// Cases a bulk decision left alone, each with why.
pub type Skipped = Vec<(String, String)>;

/// The review store.
#[derive(Debug)]
pub struct ReviewStore {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
}

impl ReviewStore {
    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> ReviewError + '_ {
        move |source| ReviewError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Open (creating if needed) the store at `path`.
    pub fn create(path: &Path) -> Result<Self, ReviewError> {
        let e = |source| ReviewError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(e)?;
        // The live service and `vigil review` share the store: a writer waits for the other
        // instead of failing at once.
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(e)?;
        // A store written before stable case ids has a `cases` table without `queue_pos`:
        // that table is only the last run's queue (rebuilt by every run), so it is replaced;
        // the audit log is kept as it is.
        let has_cases: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'cases'",
                [],
                |r| r.get(0),
            )
            .map_err(e)?;
        let has_pos: bool = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('cases') WHERE name = 'queue_pos'",
                [],
                |r| r.get(0),
            )
            .map_err(e)?;
        if has_cases && !has_pos {
            conn.execute_batch("DROP TABLE cases").map_err(e)?;
        }
        conn.execute_batch(SCHEMA).map_err(e)?;
        // Stores from before audit keys gain the authenticator column (their records keep
        // NULL there) and an id; the triggers forbid UPDATE and DELETE, not a new column.
        if !has_column(&conn, "audit_log", "mac").map_err(e)? {
            conn.execute_batch("ALTER TABLE audit_log ADD COLUMN mac TEXT")
                .map_err(e)?;
        }
        // Stores from before the console gain the time a case first entered the queue.
        if !has_column(&conn, "cases", "queued_at").map_err(e)? {
            conn.execute_batch("ALTER TABLE cases ADD COLUMN queued_at TEXT")
                .map_err(e)?;
        }
        conn.execute_batch(crate::worklist::SCHEMA).map_err(e)?;
        let id: [u8; 16] = rand::random();
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?1)",
            [id],
        )
        .map_err(e)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Open an existing store read-only, changing nothing in it (for `verify`: a check must
    /// not repair what it is checking, such as a dropped trigger).
    pub fn open_read_only(path: &Path) -> Result<Self, ReviewError> {
        if !path.exists() {
            return Err(ReviewError::Missing(path.to_path_buf()));
        }
        // A writer killed inside a transaction leaves a hot journal, which only a writable
        // connection may roll back (read-only, SQLite refuses to read at all). Rolling it
        // back restores the last committed state: it changes nothing that was committed.
        let journal = PathBuf::from(format!("{}-journal", path.display()));
        if std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
            let e = |source| ReviewError::Sqlite {
                path: path.to_path_buf(),
                source,
            };
            let conn = Connection::open(path).map_err(e)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))
                .map_err(e)?;
            conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(e)?;
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| ReviewError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The store's random id (`None` for a store from before audit keys opened read-only).
    pub fn store_id(&self) -> Result<Option<String>, ReviewError> {
        if !has_table(&self.conn, "meta").map_err(self.err())? {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())
    }

    /// Open an existing store; a missing file is the user's error.
    pub fn open(path: &Path) -> Result<Self, ReviewError> {
        if !path.exists() {
            return Err(ReviewError::Missing(path.to_path_buf()));
        }
        Self::create(path)
    }

    /// Make `cases` the current queue, in one transaction: each case is inserted or, when
    /// its user-day was queued before, updated in place (same id, decisions still attached);
    /// cases not in `cases` leave the queue (`queue_pos` NULL) but stay showable. The audit
    /// log is untouched.
    pub fn upsert_cases(&mut self, cases: &[Case]) -> Result<(), ReviewError> {
        let path = self.path.clone();
        let e = |source| ReviewError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "UPDATE cases SET queue_pos = NULL WHERE queue_pos IS NOT NULL",
            [],
        )
        .map_err(e)?;
        {
            let mut st = tx
                .prepare(&upsert_case_sql("?11", "excluded.queue_pos"))
                .map_err(e)?;
            for c in cases {
                let pos = c.queue_pos.map(|p| p as i64);
                let mut row = case_row(c).to_vec();
                row.push(&pos);
                st.execute(&*row).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    /// Upsert the live service's cases without touching the rest of the queue, in one
    /// transaction: each case in `queued` is inserted at the end of the queue or, when its
    /// user-day is there already, refreshed in place (its `queue_pos` is kept, its
    /// decisions stay attached); the ids in `left` leave the queue (their user-day no
    /// longer needs review) but stay showable. The `queue_pos` of `queued` is ignored.
    pub fn upsert_live(&mut self, queued: &[Case], left: &[String]) -> Result<(), ReviewError> {
        let path = self.path.clone();
        let e = |source| ReviewError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        {
            let mut st = tx
                .prepare(&upsert_case_sql(
                    "(SELECT COALESCE(MAX(queue_pos), -1) + 1 FROM cases)",
                    "COALESCE(cases.queue_pos, excluded.queue_pos)",
                ))
                .map_err(e)?;
            for c in queued {
                st.execute(case_row(c)).map_err(e)?;
            }
            let mut out = tx
                .prepare("UPDATE cases SET queue_pos = NULL WHERE review_id = ?1")
                .map_err(e)?;
            for id in left {
                out.execute([id]).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    pub(crate) fn row_to_case(r: &rusqlite::Row<'_>) -> rusqlite::Result<Case> {
        Ok(Case {
            review_id: r.get(0)?,
            day: r.get(1)?,
            user_id: r.get(2)?,
            risk_score: r.get(3)?,
            uncertainty: r.get(4)?,
            priority: r.get(5)?,
            recent_prompts: r.get(6)?,
            suggested_action: r.get(7)?,
            suggested_reason: r.get(8)?,
            flags: r.get(9)?,
            queue_pos: r.get::<_, Option<i64>>(10)?.map(|p| p as usize),
        })
    }

    /// Cases in queue order (priority, then risk, both descending; then the order they
    /// entered the queue: for a run's queue exactly its `queue_pos`) with their latest
    /// decision (if any).
    pub fn list(
        &self,
        offset: usize,
        limit: usize,
        undecided_only: bool,
    ) -> Result<Vec<(Case, Option<String>)>, ReviewError> {
        let sql = format!(
            "SELECT {CASE_COLUMNS}, (SELECT a.decision FROM audit_log a WHERE a.day = c.day \
             AND a.user_id = c.user_id ORDER BY a.seq DESC LIMIT 1) AS latest FROM cases c \
             WHERE c.queue_pos IS NOT NULL {} ORDER BY c.priority DESC, c.risk_score DESC, c.queue_pos LIMIT ?1 OFFSET ?2",
            if undecided_only {
                "AND NOT EXISTS (SELECT 1 FROM audit_log a WHERE a.day = c.day AND \
                 a.user_id = c.user_id)"
            } else {
                ""
            }
        );
        let mut st = self.conn.prepare(&sql).map_err(self.err())?;
        let rows = st
            .query_map(params![limit as i64, offset as i64], |r| {
                Ok((Self::row_to_case(r)?, r.get::<_, Option<String>>(11)?))
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The ids of the cases in the current queue.
    pub fn queued_ids(&self) -> Result<Vec<String>, ReviewError> {
        let mut st = self
            .conn
            .prepare("SELECT review_id FROM cases WHERE queue_pos IS NOT NULL")
            .map_err(self.err())?;
        let rows = st.query_map([], |r| r.get(0)).map_err(self.err())?;
        rows.collect::<Result<Vec<String>, _>>().map_err(self.err())
    }

    /// Number of cases in the current queue.
    pub fn count(&self) -> Result<usize, ReviewError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM cases WHERE queue_pos IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(self.err())
    }

    /// One case (in the current queue or not) and every decision recorded for its user-day.
    pub fn show(&self, review_id: &str) -> Result<(Case, Vec<AuditRecord>), ReviewError> {
        let case = self
            .conn
            .query_row(
                &format!("SELECT {CASE_COLUMNS} FROM cases c WHERE review_id = ?1"),
                [review_id],
                Self::row_to_case,
            )
            .optional()
            .map_err(self.err())?
            .ok_or_else(|| ReviewError::UnknownCase(review_id.to_string()))?;
        let mut st = self
            .conn
            .prepare("SELECT * FROM audit_log WHERE day = ?1 AND user_id = ?2 ORDER BY seq")
            .map_err(self.err())?;
        let history = st
            .query_map(params![case.day, case.user_id], row_to_record)
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok((case, history))
    }

    /// Validate and append a decision; returns the stored record. Nothing is written when
    /// the decision, reason, reviewer or case is invalid.
    /// The record is authenticated with `key` and the key's anchor for this store moved to it.
    pub fn decide(
        &mut self,
        d: &Decision,
        decision_ts: &str,
        key: &AuditKey,
    ) -> Result<AuditRecord, ReviewError> {
        let (rec, store_id) =
            self.immediate(|tx, store_id, path| append(tx, d, decision_ts, key, store_id, path))?;
        move_anchor(key, &store_id, &rec);
        Ok(rec)
    }

    /// Run `f` in one IMMEDIATE transaction (given the store's id and path) and commit when
    /// it succeeds; returns its result and the store's id.
    fn immediate<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &str, &Path) -> Result<T, ReviewError>,
    ) -> Result<(T, String), ReviewError> {
        let store_id = self.store_id()?.unwrap_or_default();
        let path = self.path.clone();
        let e = |source| ReviewError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let out = f(&tx, &store_id, &path)?;
        tx.commit().map_err(e)?;
        Ok((out, store_id))
    }

    /// Record many decisions in one transaction (a bulk decision over a group of cases):
    /// all of them or, on an error, none. Cases decided meanwhile, held by another
    /// reviewer, or under appeal against this reviewer are skipped and returned with the
    /// reason.
    pub fn decide_many(
        &mut self,
        decisions: &[Decision],
        decision_ts: &str,
        key: &AuditKey,
    ) -> Result<(Vec<AuditRecord>, Skipped), ReviewError> {
        let ((done, skipped), store_id) = self.immediate(|tx, store_id, path| {
            let mut done = Vec::new();
            let mut skipped = Vec::new();
            for d in decisions {
                // A bulk decision is over undecided cases: one decided meanwhile is left alone.
                let decided: bool = tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM cases c JOIN audit_log a \
                     ON a.user_id = c.user_id AND a.day = c.day WHERE c.review_id = ?1)",
                        [&d.review_id],
                        |r| r.get(0),
                    )
                    .map_err(|source| ReviewError::Sqlite {
                        path: path.to_path_buf(),
                        source,
                    })?;
                if decided {
                    skipped.push((d.review_id.clone(), "decided meanwhile".to_string()));
                    continue;
                }
                match append(tx, d, decision_ts, key, store_id, path) {
                    Ok(rec) => done.push(rec),
                    Err(err @ (ReviewError::Claimed { .. } | ReviewError::NotAllowed(_))) => {
                        skipped.push((d.review_id.clone(), err.to_string()));
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok((done, skipped))
        })?;
        if let Some(last) = done.last() {
            move_anchor(key, &store_id, last);
        }
        Ok((done, skipped))
    }

    /// Walk the whole log in order and name the first record whose position, link, hash or
    /// authenticator does not check out, then compare the head with the key's anchor and
    /// with `expect_head`. Reads only: run it on a store opened with
    /// [`open_read_only`](Self::open_read_only). Without `key`, a log holding authenticated
    /// records is an error (it cannot be checked), not a pass.
    pub fn verify(
        &self,
        key: Option<&AuditKey>,
        expect_head: Option<&str>,
    ) -> Result<VerifyReport, ReviewError> {
        let has_mac = has_column(&self.conn, "audit_log", "mac").map_err(self.err())?;
        let sql = format!(
            "SELECT seq, review_id, day, user_id, decision, reason_code, notes, reviewer, \
             decision_ts, prev_hash, hash, {} FROM audit_log ORDER BY seq",
            if has_mac { "mac" } else { "NULL" }
        );
        let mut st = self.conn.prepare(&sql).map_err(self.err())?;
        let records = st
            .query_map([], row_to_record)
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        let store_id = self.store_id()?.unwrap_or_default();
        let mut report = VerifyReport {
            records: records.len(),
            head: records.last().map(|r| (r.seq, r.hash.clone())),
            first_broken: None,
            authenticated: 0,
            unauthenticated: 0,
            anchor: None,
            expected_head_at: None,
        };
        let broken = |mut report: VerifyReport, seq: i64, why: String| {
            report.first_broken = Some((seq, why));
            Ok(report)
        };
        for trigger in [
            "audit_log_append_only_update",
            "audit_log_append_only_delete",
        ] {
            let present: bool = self
                .conn
                .query_row(
                    "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'trigger' AND name = ?1",
                    [trigger],
                    |r| r.get(0),
                )
                .map_err(self.err())?;
            if !present {
                return broken(
                    report,
                    0,
                    format!(
                        "the append-only trigger {trigger} was dropped, so records may have \
                         been changed around it"
                    ),
                );
            }
        }
        if key.is_none() && records.iter().any(|r| r.mac.is_some()) {
            return Err(ReviewError::Key {
                path: crate::anchor::default_key_path().unwrap_or_default(),
                message: "not found: these records are authenticated, and verify needs the \
                          audit key they were recorded with (--audit-key or VIGIL_AUDIT_KEY)"
                    .into(),
            });
        }
        let mut prev = GENESIS.to_string();
        let mut seen_mac = false;
        for (i, r) in records.iter().enumerate() {
            let problem = if r.seq != i as i64 + 1 {
                Some(format!(
                    "expected record #{} here, found #{} (a record was removed or reordered)",
                    i + 1,
                    r.seq
                ))
            } else if r.prev_hash != prev {
                Some("its link to the previous record does not match".to_string())
            } else if r.compute_hash() != r.hash {
                Some(format!(
                    "its contents do not match its hash (case {}, reviewer {})",
                    r.review_id, r.reviewer
                ))
            } else {
                match (&r.mac, key) {
                    (Some(mac), Some(k)) if *mac != k.mac(&store_id, &r.hash) => Some(
                        "its authenticator does not match: it was written or rehashed without \
                         the audit key"
                            .to_string(),
                    ),
                    (Some(_), _) => {
                        seen_mac = true;
                        report.authenticated += 1;
                        None
                    }
                    (None, _) if seen_mac => Some(
                        "it has no authenticator though earlier records do (added without \
                         the audit key)"
                            .to_string(),
                    ),
                    (None, _) => {
                        report.unauthenticated += 1;
                        None
                    }
                }
            };
            if let Some(why) = problem {
                return broken(report, r.seq, why);
            }
            if expect_head == Some(r.hash.as_str()) {
                report.expected_head_at = Some(r.seq);
            }
            prev = r.hash.clone();
        }
        if let Some(k) = key {
            report.anchor = k.anchor(&store_id)?;
        }
        if let Some((n, head)) = report.anchor.clone() {
            let at = usize::try_from(n).ok().and_then(|n| n.checked_sub(1));
            match at.and_then(|i| records.get(i)) {
                None => {
                    return broken(
                        report,
                        0,
                        format!(
                            "the store holds {} record(s) but had reached #{n} (anchor in {}): \
                             records were removed, or an older review.db was restored",
                            records.len(),
                            key.map(|k| k.path().display().to_string())
                                .unwrap_or_default()
                        ),
                    );
                }
                Some(r) if r.hash != head => {
                    return broken(
                        report,
                        n,
                        "it is not the record anchored at this position: the chain was replaced"
                            .into(),
                    );
                }
                Some(_) => {}
            }
        }
        if let Some(h) = expect_head
            && report.expected_head_at.is_none()
        {
            return broken(
                report,
                0,
                format!("the expected head {h} is not in the chain"),
            );
        }
        Ok(report)
    }
}

/// Validate one decision and append its record inside `tx` (checks the claim and any open
/// appeal, resolves the appeal and a pending second review, ends the case's claim).
/// Nothing is written when the decision, reason, reviewer or case is invalid.
fn append(
    tx: &rusqlite::Transaction<'_>,
    d: &Decision,
    decision_ts: &str,
    key: &AuditKey,
    store_id: &str,
    path: &Path,
) -> Result<AuditRecord, ReviewError> {
    // Parsed into the closed vocabularies: what is stored is always one of their names.
    let action: vigil_core::Action =
        d.decision
            .parse()
            .map_err(|_| ReviewError::InvalidDecision {
                value: d.decision.clone(),
            })?;
    let reason: vigil_core::ReasonCode =
        d.reason_code
            .parse()
            .map_err(|_| ReviewError::InvalidReason {
                value: d.reason_code.clone(),
            })?;
    if d.reviewer.trim().is_empty() {
        return Err(ReviewError::MissingReviewer);
    }
    let e = |source| ReviewError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let (day, user_id): (String, String) = tx
        .query_row(
            "SELECT day, user_id FROM cases WHERE review_id = ?1",
            [&d.review_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(e)?
        .ok_or_else(|| ReviewError::UnknownCase(d.review_id.clone()))?;
    // Two reviewers never work the same case: a live claim by someone else refuses.
    crate::worklist::check_claim(tx, &d.review_id, d.reviewer.trim(), path)?;
    crate::worklist::check_appeal(tx, &d.review_id, d.reviewer.trim(), path)?;
    let (last_seq, prev_hash): (i64, String) = tx
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(e)?
        .unwrap_or((0, GENESIS.to_string()));
    let mut rec = AuditRecord {
        seq: last_seq + 1,
        review_id: d.review_id.clone(),
        day,
        user_id,
        decision: action.as_str().to_string(),
        reason_code: reason.as_str().to_string(),
        notes: d.notes.clone(),
        reviewer: d.reviewer.trim().to_string(),
        decision_ts: decision_ts.to_string(),
        prev_hash,
        hash: String::new(),
        mac: None,
    };
    rec.hash = rec.compute_hash();
    rec.mac = Some(key.mac(store_id, &rec.hash));
    tx.execute(
        "INSERT INTO audit_log (seq, review_id, day, user_id, decision, reason_code, notes, \
         reviewer, decision_ts, prev_hash, hash, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            rec.seq,
            rec.review_id,
            rec.day,
            rec.user_id,
            rec.decision,
            rec.reason_code,
            rec.notes,
            rec.reviewer,
            rec.decision_ts,
            rec.prev_hash,
            rec.hash,
            rec.mac
        ],
    )
    .map_err(e)?;
    crate::worklist::resolve_appeal(tx, &d.review_id, rec.seq, &rec.decision, path)?;
    crate::worklist::resolve_second_review(
        tx,
        &d.review_id,
        rec.seq,
        &rec.decision,
        &rec.reviewer,
        path,
    )?;
    // The decision ends any claim on the case.
    tx.execute("DELETE FROM claims WHERE review_id = ?1", [&d.review_id])
        .map_err(e)?;
    Ok(rec)
}

/// After the commit: a failure here leaves the anchor behind, which verify accepts (the
/// records after it are still authenticated); the decisions stand.
fn move_anchor(key: &AuditKey, store_id: &str, last: &AuditRecord) {
    if let Err(err) = key.set_anchor(store_id, last.seq, &last.hash) {
        tracing::warn!(
            "decision #{} recorded, but the anchor was not moved: {err}",
            last.seq
        );
    }
}

/// Insert a case or refresh it in place: `pos` is the SQL of a new row's `queue_pos`, `keep`
/// the SQL of an existing row's (the case's own columns are `?1`..`?10`, [`case_row`]).
fn upsert_case_sql(pos: &str, keep: &str) -> String {
    format!(
        "INSERT INTO cases (review_id, day, user_id, risk_score, uncertainty, priority, \
         recent_prompts, suggested_action, suggested_reason, flags, queue_pos, queued_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, {pos}, \
         strftime('%Y-%m-%dT%H:%M:%SZ', 'now')) \
         ON CONFLICT (review_id) DO UPDATE SET risk_score = excluded.risk_score, \
         uncertainty = excluded.uncertainty, priority = excluded.priority, \
         recent_prompts = excluded.recent_prompts, \
         suggested_action = excluded.suggested_action, \
         suggested_reason = excluded.suggested_reason, flags = excluded.flags, \
         queue_pos = {keep}, queued_at = COALESCE(cases.queued_at, excluded.queued_at)"
    )
}

/// A case's own columns, in [`upsert_case_sql`]'s order.
fn case_row(c: &Case) -> [&dyn rusqlite::ToSql; 10] {
    [
        &c.review_id,
        &c.day,
        &c.user_id,
        &c.risk_score,
        &c.uncertainty,
        &c.priority,
        &c.recent_prompts,
        &c.suggested_action,
        &c.suggested_reason,
        &c.flags,
    ]
}

fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
}

pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )
}

pub(crate) fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        review_id: r.get(1)?,
        day: r.get(2)?,
        user_id: r.get(3)?,
        decision: r.get(4)?,
        reason_code: r.get(5)?,
        notes: r.get(6)?,
        reviewer: r.get(7)?,
        decision_ts: r.get(8)?,
        prev_hash: r.get(9)?,
        hash: r.get(10)?,
        mac: r.get(11)?,
    })
}

impl vigil_core::Classify for ReviewError {
    fn kind(&self) -> vigil_core::ErrorKind {
        use vigil_core::ErrorKind as K;
        match self {
            ReviewError::UnknownCase(_)
            | ReviewError::InvalidDecision { .. }
            | ReviewError::InvalidReason { .. }
            | ReviewError::MissingReviewer
            | ReviewError::Claimed { .. }
            | ReviewError::NotAllowed(_) => K::Usage,
            ReviewError::Missing(_) | ReviewError::Key { .. } | ReviewError::Sqlite { .. } => {
                K::Environment
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn case(i: usize) -> Case {
        Case {
            review_id: case_id(&format!("u_{i:05}"), "2026-02-01"),
            queue_pos: Some(i),
            day: "2026-02-01".into(),
            user_id: format!("u_{i:05}"),
            risk_score: 0.9,
            uncertainty: 0.2,
            priority: 0.7,
            recent_prompts: "buy now".into(),
            suggested_action: "block".into(),
            suggested_reason: "high_confidence_abuse".into(),
            flags: "ml".into(),
        }
    }

    fn key(dir: &tempfile::TempDir) -> AuditKey {
        AuditKey::load_or_create(&dir.path().join("keys").join("audit.key")).unwrap()
    }

    fn decision(id: &str, what: &str) -> Decision {
        Decision {
            review_id: id.into(),
            decision: what.into(),
            reason_code: "spam".into(),
            notes: "n".into(),
            reviewer: "alice".into(),
        }
    }

    #[test]
    fn decisions_chain_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReviewStore::create(&dir.path().join("review.db")).unwrap();
        let k = key(&dir);
        s.upsert_cases(&[case(0), case(1)]).unwrap();
        let a = s
            .decide(
                &decision("u_00000@2026-02-01", "block"),
                "2026-02-02T00:00:00Z",
                &k,
            )
            .unwrap();
        let b = s
            .decide(
                &decision("u_00001@2026-02-01", "allow"),
                "2026-02-02T00:01:00Z",
                &k,
            )
            .unwrap();
        assert_eq!(b.prev_hash, a.hash);
        let v = s.verify(Some(&k), None).unwrap();
        assert_eq!(v.records, 2);
        assert!(v.first_broken.is_none());
        let listed = s.list(0, 10, false).unwrap();
        assert_eq!(listed[0].1.as_deref(), Some("block"));
        assert!(s.list(0, 10, true).unwrap().is_empty());
    }

    #[test]
    fn live_cases_join_the_queue_by_priority_and_keep_their_place_and_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReviewStore::create(&dir.path().join("review.db")).unwrap();
        let k = key(&dir);
        let with = |i: usize, priority: f64, risk: f64| Case {
            priority,
            risk_score: risk,
            ..case(i)
        };
        // A run's queue first: its order is its queue_pos.
        s.upsert_cases(&[with(0, 0.9, 0.9), with(1, 0.5, 0.5)])
            .unwrap();
        // Live cases: one between the two, one tied with case 1 on both keys (arrives later,
        // so it ranks after it), and an update of case 1 that must keep its place.
        s.upsert_live(&[with(2, 0.7, 0.7), with(3, 0.5, 0.5)], &[])
            .unwrap();
        let ids = |s: &ReviewStore| -> Vec<String> {
            s.list(0, 10, false)
                .unwrap()
                .into_iter()
                .map(|(c, _)| c.user_id)
                .collect()
        };
        assert_eq!(ids(&s), ["u_00000", "u_00002", "u_00001", "u_00003"]);
        s.decide(
            &decision("u_00002@2026-02-01", "warn"),
            "2026-02-02T00:00:00Z",
            &k,
        )
        .unwrap();
        s.upsert_live(&[with(2, 0.95, 0.95)], &["u_00000@2026-02-01".into()])
            .unwrap();
        assert_eq!(ids(&s), ["u_00002", "u_00001", "u_00003"]);
        let (c, history) = s.show("u_00002@2026-02-01").unwrap();
        assert_eq!(c.queue_pos, Some(2));
        assert_eq!(c.priority, 0.95);
        assert_eq!(history.len(), 1);
        // The case that left the queue is still showable, and comes back at the end.
        assert_eq!(s.show("u_00000@2026-02-01").unwrap().0.queue_pos, None);
        assert_eq!(s.count().unwrap(), 3);
        s.upsert_live(&[with(0, 0.1, 0.1)], &[]).unwrap();
        assert_eq!(s.show("u_00000@2026-02-01").unwrap().0.queue_pos, Some(4));
        assert!(s.verify(Some(&k), None).unwrap().first_broken.is_none());
    }

    #[test]
    fn invalid_decisions_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReviewStore::create(&dir.path().join("review.db")).unwrap();
        let k = key(&dir);
        s.upsert_cases(&[case(0)]).unwrap();
        assert!(matches!(
            s.decide(&decision("u_00000@2026-02-01", "nuke"), "t", &k),
            Err(ReviewError::InvalidDecision { .. })
        ));
        assert!(matches!(
            s.decide(&decision("u_99999@2026-02-01", "block"), "t", &k),
            Err(ReviewError::UnknownCase(_))
        ));
        let mut d = decision("u_00000@2026-02-01", "block");
        d.reason_code = "because".into();
        assert!(s.decide(&d, "t", &k).is_err());
        assert_eq!(s.verify(Some(&k), None).unwrap().records, 0);
    }

    #[test]
    fn tampering_is_refused_or_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.db");
        let mut s = ReviewStore::create(&path).unwrap();
        let k = key(&dir);
        s.upsert_cases(&[case(0), case(1)]).unwrap();
        for id in [
            "u_00000@2026-02-01",
            "u_00001@2026-02-01",
            "u_00000@2026-02-01",
        ] {
            s.decide(&decision(id, "warn"), "2026-02-02T00:00:00Z", &k)
                .unwrap();
        }
        // the triggers refuse edits through SQL
        assert!(
            s.conn
                .execute("UPDATE audit_log SET decision = 'allow' WHERE seq = 2", [])
                .is_err()
        );
        // someone drops the trigger and edits record 2: verify names it
        s.conn
            .execute_batch(
                "DROP TRIGGER audit_log_append_only_update;
                 UPDATE audit_log SET decision = 'allow' WHERE seq = 2;",
            )
            .unwrap();
        // The dropped trigger is itself evidence...
        let v = s.verify(Some(&k), None).unwrap();
        let (at, why) = v.first_broken.unwrap();
        assert_eq!(at, 0);
        assert!(
            why.contains("audit_log_append_only_update was dropped"),
            "{why}"
        );
        // ...and with it put back, verify names the edited record.
        s.conn.execute_batch(SCHEMA).unwrap();
        let v = s.verify(Some(&k), None).unwrap();
        assert_eq!(v.first_broken.as_ref().map(|b| b.0), Some(2));
        // a deleted record breaks the sequence at the next one
        let mut s2 = ReviewStore::create(&dir.path().join("b.db")).unwrap();
        let k = key(&dir);
        s2.upsert_cases(&[case(0)]).unwrap();
        for _ in 0..3 {
            s2.decide(&decision("u_00000@2026-02-01", "warn"), "t", &k)
                .unwrap();
        }
        s2.conn
            .execute_batch(
                "DROP TRIGGER audit_log_append_only_delete; DELETE FROM audit_log WHERE seq = 2;",
            )
            .unwrap();
        s2.conn.execute_batch(SCHEMA).unwrap();
        assert_eq!(
            s2.verify(Some(&k), None).unwrap().first_broken.map(|b| b.0),
            Some(3)
        );
    }

    /// A store with three decisions, its key, and the directory holding both.
    fn decided(n: usize) -> (tempfile::TempDir, PathBuf, AuditKey) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.db");
        let mut s = ReviewStore::create(&path).unwrap();
        let k = key(&dir);
        s.upsert_cases(&[case(0), case(1)]).unwrap();
        for i in 0..n {
            s.decide(
                &decision(&case(i % 2).review_id, "warn"),
                "2026-02-02T00:00:00Z",
                &k,
            )
            .unwrap();
        }
        (dir, path, k)
    }

    fn broken_at(path: &Path, k: &AuditKey) -> Option<(i64, String)> {
        ReviewStore::open_read_only(path)
            .unwrap()
            .verify(Some(k), None)
            .unwrap()
            .first_broken
    }

    /// Regression: cutting off the last records, emptying the log, or restoring an older
    /// review.db all verified as intact (the chain agrees with itself); the key's anchor
    /// catches each.
    #[test]
    fn a_truncated_emptied_or_restored_audit_log_is_caught_by_the_anchor() {
        for cut in [
            "DELETE FROM audit_log WHERE seq = 3",
            "DELETE FROM audit_log",
        ] {
            let (_dir, path, k) = decided(3);
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!(
                "DROP TRIGGER audit_log_append_only_delete; {cut}; {SCHEMA}"
            ))
            .unwrap();
            let (at, why) = broken_at(&path, &k).unwrap();
            assert_eq!(at, 0, "{cut}");
            assert!(why.contains("had reached #3"), "{cut}: {why}");
        }
        // An older copy of the file put back after a third decision.
        let (dir, path, k) = decided(2);
        let copy = dir.path().join("old.db");
        std::fs::copy(&path, &copy).unwrap();
        let mut s = ReviewStore::open(&path).unwrap();
        s.decide(&decision(&case(0).review_id, "block"), "t", &k)
            .unwrap();
        drop(s);
        std::fs::copy(&copy, &path).unwrap();
        let (_, why) = broken_at(&path, &k).unwrap();
        assert!(why.contains("older review.db was restored"), "{why}");
    }

    /// Regression: rewriting a record and rehashing the whole chain after it verified as
    /// intact; without the key its authenticator cannot be made again.
    #[test]
    fn a_rewritten_and_rehashed_chain_fails_its_authenticators() {
        let (_dir, path, k) = decided(3);
        let c = Connection::open(&path).unwrap();
        c.execute_batch("DROP TRIGGER audit_log_append_only_update")
            .unwrap();
        let s = ReviewStore::open_read_only(&path).unwrap();
        let mut st = s
            .conn
            .prepare("SELECT * FROM audit_log ORDER BY seq")
            .unwrap();
        let mut records: Vec<AuditRecord> = st
            .query_map([], row_to_record)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        drop(st);
        drop(s);
        records[1].decision = "allow".into();
        let mut prev = GENESIS.to_string();
        for r in &mut records {
            r.prev_hash = prev.clone();
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            c.execute(
                "UPDATE audit_log SET decision = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
                params![r.decision, r.prev_hash, r.hash, r.seq],
            )
            .unwrap();
        }
        c.execute_batch(SCHEMA).unwrap();
        let (at, why) = broken_at(&path, &k).unwrap();
        assert_eq!(at, 2);
        assert!(why.contains("authenticator does not match"), "{why}");
        // With the authenticators emptied as well, the record after the old ones says so.
        c.execute_batch(
            "DROP TRIGGER audit_log_append_only_update; UPDATE audit_log SET mac = NULL WHERE seq >= 2",
        )
        .unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let (at, why) = broken_at(&path, &k).unwrap();
        assert_eq!(at, 2);
        assert!(why.contains("no authenticator"), "{why}");
    }

    /// Regression: verify re-created dropped triggers (erasing the evidence). It opens the
    /// store read-only and changes nothing.
    #[test]
    fn verify_never_modifies_the_store() {
        let (_dir, path, k) = decided(2);
        Connection::open(&path)
            .unwrap()
            .execute_batch("DROP TRIGGER audit_log_append_only_delete")
            .unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(broken_at(&path, &k).unwrap().1.contains("was dropped"));
        assert!(broken_at(&path, &k).unwrap().1.contains("was dropped"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn verify_after_a_writer_killed_mid_transaction_reads_the_committed_chain() {
        let (dir, path, k) = decided(2);
        // A transaction left open with its journal: copies of the store and the journal
        // taken then are what a kill -9 inside `decide` leaves behind.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA cache_size = 1; BEGIN IMMEDIATE; \
             UPDATE cases SET recent_prompts = hex(randomblob(5000));",
        )
        .unwrap();
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).unwrap();
        let journal = |p: &Path| PathBuf::from(format!("{}-journal", p.display()));
        std::fs::copy(journal(&path), journal(&copy)).unwrap();
        drop(conn);
        let s = ReviewStore::open_read_only(&copy).unwrap();
        let v = s.verify(Some(&k), None).unwrap();
        assert_eq!(v.records, 2);
        assert!(v.first_broken.is_none(), "{:?}", v.first_broken);
    }

    #[test]
    fn verify_finds_an_expected_head_or_says_it_is_missing() {
        let (_dir, path, k) = decided(3);
        let s = ReviewStore::open_read_only(&path).unwrap();
        let v = s.verify(Some(&k), None).unwrap();
        let (n, head) = v.head.clone().unwrap();
        assert_eq!((n, v.authenticated, v.unauthenticated), (3, 3, 0));
        assert_eq!(v.anchor, Some((3, head.clone())));
        let v = s.verify(Some(&k), Some(&head)).unwrap();
        assert_eq!((v.expected_head_at, v.first_broken), (Some(3), None));
        let v = s.verify(Some(&k), Some("00ff")).unwrap();
        assert!(v.first_broken.unwrap().1.contains("expected head 00ff"));
        // Authenticated records cannot be verified without the key.
        assert!(matches!(s.verify(None, None), Err(ReviewError::Key { .. })));
    }

    #[test]
    fn a_rerun_keeps_a_decided_case_and_its_id_and_drops_only_the_queue_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.db");
        let mut s = ReviewStore::create(&path).unwrap();
        let k = key(&dir);
        s.upsert_cases(&[case(0), case(1), case(2)]).unwrap();
        s.decide(&decision("u_00001@2026-02-01", "block"), "t", &k)
            .unwrap();
        // Run 2: user 1's day is queued again, first now (a higher priority) and with a new
        // risk; user 0's is not.
        let mut again = case(1);
        again.queue_pos = Some(0);
        again.risk_score = 0.5;
        again.priority = 0.8;
        let mut third = case(2);
        third.queue_pos = Some(1);
        s.upsert_cases(&[again, third]).unwrap();
        let listed = s.list(0, 10, false).unwrap();
        let ids: Vec<&str> = listed.iter().map(|c| c.0.review_id.as_str()).collect();
        assert_eq!(ids, ["u_00001@2026-02-01", "u_00002@2026-02-01"]);
        assert_eq!(listed[0].1.as_deref(), Some("block"));
        assert_eq!(listed[0].0.risk_score, 0.5);
        assert_eq!(s.count().unwrap(), 2);
        // The case that left the queue can still be shown (and decided).
        let (gone, _) = s.show("u_00000@2026-02-01").unwrap();
        assert_eq!(gone.queue_pos, None);
        let (kept, history) = s.show("u_00001@2026-02-01").unwrap();
        assert_eq!(kept.queue_pos, Some(0));
        assert_eq!(history.len(), 1);
        assert!(s.verify(Some(&k), None).unwrap().first_broken.is_none());
    }

    #[test]
    fn a_store_from_before_stable_ids_keeps_its_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE cases (review_id TEXT PRIMARY KEY, day TEXT NOT NULL, \
                 user_id TEXT NOT NULL, risk_score REAL NOT NULL, uncertainty REAL NOT NULL, \
                 priority REAL NOT NULL, recent_prompts TEXT NOT NULL, \
                 suggested_action TEXT NOT NULL, suggested_reason TEXT NOT NULL, \
                 flags TEXT NOT NULL);
                 INSERT INTO cases VALUES ('rev_000000', '2026-02-01', 'u_00000', 0.9, 0.2, \
                 0.7, '', 'block', 'x', 'ml');",
            )
            .unwrap();
        }
        let mut s = ReviewStore::create(&path).unwrap();
        let k = key(&dir);
        s.upsert_cases(&[case(0)]).unwrap();
        s.decide(&decision("u_00000@2026-02-01", "warn"), "t", &k)
            .unwrap();
        assert_eq!(s.count().unwrap(), 1);
        assert_eq!(s.verify(Some(&k), None).unwrap().records, 1);
    }
}
