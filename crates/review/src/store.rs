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
    /// Position in the latest queue, from 0 (`None` once the case left the queue).
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
    /// The first broken record and why, if any.
    pub first_broken: Option<(i64, String)>,
}

/// The columns [`ReviewStore::row_to_case`] reads, in its order.
const CASE_COLUMNS: &str = "c.review_id, c.day, c.user_id, c.risk_score, c.uncertainty, \
     c.priority, c.recent_prompts, c.suggested_action, c.suggested_reason, c.flags, c.queue_pos";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS cases (
    review_id TEXT PRIMARY KEY, day TEXT NOT NULL, user_id TEXT NOT NULL,
    risk_score REAL NOT NULL, uncertainty REAL NOT NULL, priority REAL NOT NULL,
    recent_prompts TEXT NOT NULL, suggested_action TEXT NOT NULL,
    suggested_reason TEXT NOT NULL, flags TEXT NOT NULL, queue_pos INTEGER);
CREATE INDEX IF NOT EXISTS cases_by_queue_pos ON cases (queue_pos);
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY, review_id TEXT NOT NULL, day TEXT NOT NULL,
    user_id TEXT NOT NULL, decision TEXT NOT NULL, reason_code TEXT NOT NULL,
    notes TEXT NOT NULL, reviewer TEXT NOT NULL, decision_ts TEXT NOT NULL,
    prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_log_append_only_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_append_only_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
";

/// The review store.
#[derive(Debug)]
pub struct ReviewStore {
    conn: Connection,
    path: PathBuf,
}

impl ReviewStore {
    fn err(&self) -> impl Fn(rusqlite::Error) -> ReviewError + '_ {
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
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
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
                .prepare(
                    "INSERT INTO cases (review_id, day, user_id, risk_score, uncertainty, \
                     priority, recent_prompts, suggested_action, suggested_reason, flags, \
                     queue_pos) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                     ON CONFLICT (review_id) DO UPDATE SET risk_score = excluded.risk_score, \
                     uncertainty = excluded.uncertainty, priority = excluded.priority, \
                     recent_prompts = excluded.recent_prompts, \
                     suggested_action = excluded.suggested_action, \
                     suggested_reason = excluded.suggested_reason, flags = excluded.flags, \
                     queue_pos = excluded.queue_pos",
                )
                .map_err(e)?;
            for c in cases {
                st.execute(params![
                    c.review_id,
                    c.day,
                    c.user_id,
                    c.risk_score,
                    c.uncertainty,
                    c.priority,
                    c.recent_prompts,
                    c.suggested_action,
                    c.suggested_reason,
                    c.flags,
                    c.queue_pos.map(|p| p as i64)
                ])
                .map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    fn row_to_case(r: &rusqlite::Row<'_>) -> rusqlite::Result<Case> {
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

    /// Cases in queue order with their latest decision (if any).
    pub fn list(
        &self,
        offset: usize,
        limit: usize,
        undecided_only: bool,
    ) -> Result<Vec<(Case, Option<String>)>, ReviewError> {
        let sql = format!(
            "SELECT {CASE_COLUMNS}, (SELECT a.decision FROM audit_log a WHERE a.day = c.day \
             AND a.user_id = c.user_id ORDER BY a.seq DESC LIMIT 1) AS latest FROM cases c \
             WHERE c.queue_pos IS NOT NULL {} ORDER BY c.queue_pos LIMIT ?1 OFFSET ?2",
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
    pub fn decide(&mut self, d: &Decision, decision_ts: &str) -> Result<AuditRecord, ReviewError> {
        if !ACTIONS.contains(&d.decision.as_str()) {
            return Err(ReviewError::InvalidDecision {
                value: d.decision.clone(),
            });
        }
        if !REASON_CODES.contains(&d.reason_code.as_str()) {
            return Err(ReviewError::InvalidReason {
                value: d.reason_code.clone(),
            });
        }
        if d.reviewer.trim().is_empty() {
            return Err(ReviewError::MissingReviewer);
        }
        let path = self.path.clone();
        let e = |source| ReviewError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(e)?;
        let (day, user_id): (String, String) = tx
            .query_row(
                "SELECT day, user_id FROM cases WHERE review_id = ?1",
                [&d.review_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(e)?
            .ok_or_else(|| ReviewError::UnknownCase(d.review_id.clone()))?;
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
            decision: d.decision.clone(),
            reason_code: d.reason_code.clone(),
            notes: d.notes.clone(),
            reviewer: d.reviewer.trim().to_string(),
            decision_ts: decision_ts.to_string(),
            prev_hash,
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        tx.execute(
            "INSERT INTO audit_log VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                rec.hash
            ],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(rec)
    }

    /// Walk the whole log in order and name the first record whose position, link or hash
    /// does not check out.
    pub fn verify(&self) -> Result<VerifyReport, ReviewError> {
        let mut st = self
            .conn
            .prepare("SELECT * FROM audit_log ORDER BY seq")
            .map_err(self.err())?;
        let records = st
            .query_map([], row_to_record)
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        let mut prev = GENESIS.to_string();
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
                None
            };
            if let Some(why) = problem {
                return Ok(VerifyReport {
                    records: records.len(),
                    first_broken: Some((r.seq, why)),
                });
            }
            prev = r.hash.clone();
        }
        Ok(VerifyReport {
            records: records.len(),
            first_broken: None,
        })
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
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
    })
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
        s.upsert_cases(&[case(0), case(1)]).unwrap();
        let a = s
            .decide(
                &decision("u_00000@2026-02-01", "block"),
                "2026-02-02T00:00:00Z",
            )
            .unwrap();
        let b = s
            .decide(
                &decision("u_00001@2026-02-01", "allow"),
                "2026-02-02T00:01:00Z",
            )
            .unwrap();
        assert_eq!(b.prev_hash, a.hash);
        let v = s.verify().unwrap();
        assert_eq!(v.records, 2);
        assert!(v.first_broken.is_none());
        let listed = s.list(0, 10, false).unwrap();
        assert_eq!(listed[0].1.as_deref(), Some("block"));
        assert!(s.list(0, 10, true).unwrap().is_empty());
    }

    #[test]
    fn invalid_decisions_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ReviewStore::create(&dir.path().join("review.db")).unwrap();
        s.upsert_cases(&[case(0)]).unwrap();
        assert!(matches!(
            s.decide(&decision("u_00000@2026-02-01", "nuke"), "t"),
            Err(ReviewError::InvalidDecision { .. })
        ));
        assert!(matches!(
            s.decide(&decision("u_99999@2026-02-01", "block"), "t"),
            Err(ReviewError::UnknownCase(_))
        ));
        let mut d = decision("u_00000@2026-02-01", "block");
        d.reason_code = "because".into();
        assert!(s.decide(&d, "t").is_err());
        assert_eq!(s.verify().unwrap().records, 0);
    }

    #[test]
    fn tampering_is_refused_or_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.db");
        let mut s = ReviewStore::create(&path).unwrap();
        s.upsert_cases(&[case(0), case(1)]).unwrap();
        for id in [
            "u_00000@2026-02-01",
            "u_00001@2026-02-01",
            "u_00000@2026-02-01",
        ] {
            s.decide(&decision(id, "warn"), "2026-02-02T00:00:00Z")
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
        let v = s.verify().unwrap();
        assert_eq!(v.first_broken.as_ref().map(|b| b.0), Some(2));
        // a deleted record breaks the sequence at the next one
        let mut s2 = ReviewStore::create(&dir.path().join("b.db")).unwrap();
        s2.upsert_cases(&[case(0)]).unwrap();
        for _ in 0..3 {
            s2.decide(&decision("u_00000@2026-02-01", "warn"), "t")
                .unwrap();
        }
        s2.conn
            .execute_batch(
                "DROP TRIGGER audit_log_append_only_delete; DELETE FROM audit_log WHERE seq = 2;",
            )
            .unwrap();
        assert_eq!(s2.verify().unwrap().first_broken.map(|b| b.0), Some(3));
    }

    #[test]
    fn a_rerun_keeps_a_decided_case_and_its_id_and_drops_only_the_queue_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("review.db");
        let mut s = ReviewStore::create(&path).unwrap();
        s.upsert_cases(&[case(0), case(1), case(2)]).unwrap();
        s.decide(&decision("u_00001@2026-02-01", "block"), "t")
            .unwrap();
        // Run 2: user 1's day is queued again, first now and with a new risk; user 0's is not.
        let mut again = case(1);
        again.queue_pos = Some(0);
        again.risk_score = 0.5;
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
        assert!(s.verify().unwrap().first_broken.is_none());
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
        s.upsert_cases(&[case(0)]).unwrap();
        s.decide(&decision("u_00000@2026-02-01", "warn"), "t")
            .unwrap();
        assert_eq!(s.count().unwrap(), 1);
        assert_eq!(s.verify().unwrap().records, 1);
    }
}
