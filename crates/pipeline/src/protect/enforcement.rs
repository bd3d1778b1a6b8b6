//! Enforcement: the policy compiled once and applied to a batch of any size.

use arrow::record_batch::RecordBatch;
use vigil_config::Config;
use vigil_warehouse::Table;

use crate::PipelineError;
use crate::tables::{Col, extend, table};

use super::{Queue, Scored, Written};

/// One enforcement suggestion per queue case, in queue order.
pub(crate) struct Actions {
    pub action: Vec<String>,
    pub reason: Vec<String>,
}

/// The enforcement policy compiled once over the queue's columns: its rules in order, the
/// first whose `when` holds picks the action and reason, else the defaults. Applied to a
/// batch of any size with no session tables, so the batch run and a live service (one row)
/// share it. Rules see the row's columns only.
#[derive(Debug)]
pub struct CompiledPolicy {
    rules: Vec<(vigil_warehouse::Predicate, String, String)>,
    default_action: String,
    default_reason: String,
}

impl CompiledPolicy {
    /// Compile every rule of `policy` against `schema`; an error names the rule.
    pub fn compile(
        policy: &vigil_config::EnforcementConfig,
        schema: arrow::datatypes::SchemaRef,
    ) -> Result<Self, PipelineError> {
        let mut rules = Vec::with_capacity(policy.rules.len());
        for (i, r) in policy.rules.iter().enumerate() {
            // Parsed as one expression (never pasted as written): a rule cannot close the
            // policy and add branches of its own.
            vigil_warehouse::parse_expression(&r.when).map_err(|e| {
                PipelineError::Config(format!(
                    "enforcement.rules[{i}] (action {}): `when` is not one SQL expression: {e}",
                    r.action
                ))
            })?;
            let p = vigil_warehouse::Predicate::compile(&r.when, schema.clone()).map_err(
                |message| PipelineError::EnforcementRules {
                    source: vigil_warehouse::WarehouseError::Sql {
                        context: format!("enforcement.rules[{i}] (action {})", r.action),
                        message,
                    },
                },
            )?;
            rules.push((p, r.action.clone(), r.reason.clone()));
        }
        Ok(Self {
            rules,
            default_action: policy.default_action.clone(),
            default_reason: policy.default_reason.clone(),
        })
    }

    /// The suggested action and reason of every row of `batch`, in row order.
    pub fn apply(&self, batch: &RecordBatch) -> Result<(Vec<String>, Vec<String>), PipelineError> {
        let n = batch.num_rows();
        let mut chosen: Vec<Option<usize>> = vec![None; n];
        for (k, (p, action, _)) in self.rules.iter().enumerate() {
            if chosen.iter().all(Option::is_some) {
                break;
            }
            let holds = p
                .evaluate(batch)
                .map_err(|message| PipelineError::EnforcementRules {
                    source: vigil_warehouse::WarehouseError::Sql {
                        context: format!("enforcement.rules[{k}] (action {action})"),
                        message,
                    },
                })?;
            for (slot, h) in chosen.iter_mut().zip(holds) {
                if slot.is_none() && h {
                    *slot = Some(k);
                }
            }
        }
        let pick = |c: &Option<usize>,
                    field: fn(&(vigil_warehouse::Predicate, String, String)) -> &String,
                    default: &String| {
            c.map_or_else(|| default.clone(), |k| field(&self.rules[k]).clone())
        };
        Ok((
            chosen
                .iter()
                .map(|c| pick(c, |r| &r.1, &self.default_action))
                .collect(),
            chosen
                .iter()
                .map(|c| pick(c, |r| &r.2, &self.default_reason))
                .collect(),
        ))
    }
}

/// [`CompiledPolicy`] applied to every batch of the queue: (actions, reasons) in row order.
pub fn suggest_actions(
    queue: &Table,
    policy: &vigil_config::EnforcementConfig,
) -> Result<(Vec<String>, Vec<String>), PipelineError> {
    let compiled = CompiledPolicy::compile(policy, queue.schema.clone())?;
    let (mut actions, mut reasons) = (Vec::new(), Vec::new());
    for batch in &queue.batches {
        let (a, r) = compiled.apply(batch)?;
        actions.extend(a);
        reasons.extend(r);
    }
    Ok((actions, reasons))
}

/// Evaluate the ordered policy over the queue (`enforcement_actions`).
pub(crate) fn enforcement(
    s: &Scored,
    q: &Queue,
    cfg: &Config,
    out: &mut Written,
) -> Result<Actions, PipelineError> {
    let n = q.entries.len();
    let with_pos = extend(
        "review_queue",
        &q.batch,
        vec![("queue_pos", Col::I64((0..n as i64).collect()))],
    )?;
    let (action, reason) = suggest_actions(&with_pos, &cfg.enforcement)?;
    // enforcement_actions.csv: by action, then risk descending (ties keep queue order)
    let mut order: Vec<usize> = (0..n).collect();
    let risk = |i: usize| s.risk[q.entries[i].row];
    order.sort_by(|&a, &b| action[a].cmp(&action[b]).then(risk(b).total_cmp(&risk(a))));
    let row = |i: usize| q.entries[i].row;
    out.csv(&table(
        "enforcement_actions",
        vec![
            (
                "day",
                Col::Str(
                    order
                        .iter()
                        .map(|&i| s.day.get(row(i)).to_string())
                        .collect(),
                ),
            ),
            (
                "user_id",
                Col::Str(
                    order
                        .iter()
                        .map(|&i| s.user.get(row(i)).to_string())
                        .collect(),
                ),
            ),
            (
                "risk_score",
                Col::F64(order.iter().map(|&i| risk(i)).collect()),
            ),
            (
                "uncertainty",
                Col::F64(order.iter().map(|&i| s.uncertainty[row(i)]).collect()),
            ),
            (
                "suggested_action",
                Col::Str(order.iter().map(|&i| action[i].clone()).collect()),
            ),
            (
                "reason_code",
                Col::Str(order.iter().map(|&i| reason[i].clone()).collect()),
            ),
        ],
    )?)?;
    Ok(Actions { action, reason })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn queue() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("risk_score", DataType::Float64, true),
            Field::new("uncertainty", DataType::Float64, true),
            Field::new("block_rate", DataType::Float64, true),
            Field::new("n_chat", DataType::Float64, true),
            Field::new("recent_prompts", DataType::Utf8, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(vec![
                Some(0.95),
                Some(0.8),
                Some(0.6),
                None,
                Some(0.1),
            ])),
            Arc::new(Float64Array::from(vec![0.1, 0.2, 0.9, 0.1, 0.1])),
            Arc::new(Float64Array::from(vec![0.0, 0.02, 0.0, 0.5, 0.0])),
            Arc::new(Float64Array::from(vec![10.0, 5.0, 3.0, 200.0, 2.0])),
            Arc::new(StringArray::from(vec![
                "a",
                "how to bypass it",
                "c",
                "d",
                "e",
            ])),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    #[test]
    fn the_policy_gives_one_row_what_it_gives_that_row_in_a_batch() {
        let policy = vigil_config::EnforcementConfig::default();
        let batch = queue();
        let compiled = CompiledPolicy::compile(&policy, batch.schema()).unwrap();
        let (actions, reasons) = compiled.apply(&batch).unwrap();
        // The spec's policy: block, rate_limit (bypass in the prompts), escalate, and a null
        // risk holds no rule (as SQL's CASE WHEN has it), so the default.
        assert_eq!(
            actions,
            ["block", "rate_limit", "escalate", "allow", "allow"]
        );
        assert_eq!(reasons[0], "high_confidence_abuse");
        assert_eq!(reasons[3], policy.default_reason);
        for i in 0..batch.num_rows() {
            let (a, r) = compiled.apply(&batch.slice(i, 1)).unwrap();
            assert_eq!(
                (a[0].as_str(), r[0].as_str()),
                (actions[i].as_str(), reasons[i].as_str())
            );
        }
        assert_eq!(compiled.apply(&batch.slice(0, 0)).unwrap().0.len(), 0);
    }

    #[test]
    fn a_rule_that_is_no_boolean_or_names_an_unknown_column_or_a_table_is_refused() {
        let schema = queue().schema();
        for (when, want) in [
            ("no_such_column > 1", "no_such_column"),
            ("risk_score + 1", "true or false"),
            (
                "risk_score > (SELECT MAX(risk_score) FROM events)",
                "enforcement.rules[0]",
            ),
            ("false) THEN 'allow' WHEN (true", "not one SQL expression"),
        ] {
            let mut policy = vigil_config::EnforcementConfig::default();
            policy.rules.truncate(1);
            policy.rules[0].when = when.into();
            let err = CompiledPolicy::compile(&policy, schema.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{when}: {err}");
        }
    }
}
