//! Automated actions: what the service has decided per user-day, the safety caps that stop a
//! bad rule from acting on half the users, and the notices that go to webhooks.
//!
//! A user-day's action is counted once, when it first reaches it (later events of the same
//! user-day with the same action are not new actions). A non-`allow` action beyond a cap is
//! turned into `escalate` (a human looks at it) with rule `safety_cap`, and the cap's first
//! hit of the day raises an alert. Counts are per UTC day of event time, so a replayed day
//! trips the same caps as the live one. `escalate` itself is never capped: it is the route
//! to review.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use vigil_config::ServeConfig;

/// What became of one scored user-day's suggested action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The action to report (the policy's, or `escalate` when capped).
    pub action: String,
    /// The rule's reason (or `safety_cap`).
    pub rule: String,
    /// The cap that turned it, when one did: `global`, `rule:<reason>` or `action:<action>`.
    pub capped_by: Option<String>,
    /// True the first time the user-day reaches this action: notify the webhooks.
    pub new: bool,
}

/// A cap that was hit for the first time on a day (an alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapHit {
    /// The day (days since 1970).
    pub day: i32,
    /// Which cap.
    pub cap: String,
    /// Its limit.
    pub limit: u64,
}

#[derive(Debug, Default)]
struct Day {
    total: u64,
    by_rule: HashMap<String, u64>,
    by_action: HashMap<String, u64>,
    alerted: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (user, day) -> (policy action, policy rule, outcome).
    decided: HashMap<(String, i32), (String, String, Outcome)>,
    days: BTreeMap<i32, Day>,
    limits: Limits,
}

#[derive(Debug, Default, Clone)]
struct Limits {
    global: u64,
    per_rule: u64,
    per_action: BTreeMap<String, u64>,
}

impl Limits {
    fn of(cfg: &ServeConfig) -> Self {
        Self {
            global: cfg.cap_actions_per_day,
            per_rule: cfg.cap_actions_per_rule_per_day,
            per_action: cfg.cap_per_action_per_day.clone(),
        }
    }
}

/// The decisions taken so far and the caps' counters.
#[derive(Debug)]
pub struct Actions {
    inner: Mutex<Inner>,
}

/// The action reported when a cap turns an automated one into a review.
pub const CAPPED_ACTION: &str = "escalate";
/// The rule reported then.
pub const CAPPED_RULE: &str = "safety_cap";

impl Actions {
    /// Caps from `[serve]`.
    pub fn new(cfg: &ServeConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                limits: Limits::of(cfg),
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// New caps from a reloaded `[serve]`; the day's counts so far are kept, so a lowered
    /// cap already exceeded holds from the next action on.
    pub fn set_limits(&self, cfg: &ServeConfig) {
        self.lock().limits = Limits::of(cfg);
    }

    /// Settle the policy's suggestion for a user-day; the second value is a cap hit for the
    /// first time that day, if this settled one.
    pub fn settle(
        &self,
        user: &str,
        day: i32,
        action: &str,
        rule: &str,
    ) -> (Outcome, Option<CapHit>) {
        let untouched = Outcome {
            action: action.to_string(),
            rule: rule.to_string(),
            capped_by: None,
            new: false,
        };
        if action == "allow" {
            return (untouched, None);
        }
        let mut g = self.lock();
        let key = (user.to_string(), day);
        if let Some((a, r, o)) = g.decided.get(&key)
            && a == action
            && r == rule
        {
            let mut o = o.clone();
            o.new = false;
            return (o, None);
        }
        let g = &mut *g;
        let limits = &g.limits;
        let d = g.days.entry(day).or_default();
        let mut capped_by = None;
        if action != CAPPED_ACTION {
            let limit_action = limits.per_action.get(action).copied();
            if d.total >= limits.global {
                capped_by = Some(("global".to_string(), limits.global));
            } else if d.by_rule.get(rule).copied().unwrap_or(0) >= limits.per_rule {
                capped_by = Some((format!("rule:{rule}"), limits.per_rule));
            } else if let Some(l) = limit_action
                && d.by_action.get(action).copied().unwrap_or(0) >= l
            {
                capped_by = Some((format!("action:{action}"), l));
            }
        }
        let mut hit = None;
        let outcome = match capped_by {
            None => {
                if action != CAPPED_ACTION {
                    d.total += 1;
                    *d.by_rule.entry(rule.to_string()).or_default() += 1;
                    *d.by_action.entry(action.to_string()).or_default() += 1;
                }
                Outcome {
                    action: action.to_string(),
                    rule: rule.to_string(),
                    capped_by: None,
                    new: true,
                }
            }
            Some((cap, limit)) => {
                if !d.alerted.contains(&cap) {
                    d.alerted.push(cap.clone());
                    hit = Some(CapHit {
                        day,
                        cap: cap.clone(),
                        limit,
                    });
                }
                Outcome {
                    action: CAPPED_ACTION.to_string(),
                    rule: CAPPED_RULE.to_string(),
                    capped_by: Some(cap),
                    new: true,
                }
            }
        };
        g.decided
            .insert(key, (action.to_string(), rule.to_string(), outcome.clone()));
        (outcome, hit)
    }

    /// Forget decisions and counters of days before `day`.
    pub fn forget_before(&self, day: i32) {
        let mut g = self.lock();
        g.decided.retain(|k, _| k.1 >= day);
        g.days.retain(|d, _| *d >= day);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caps(global: u64, per_rule: u64, block: Option<u64>) -> Actions {
        let mut cfg = ServeConfig {
            cap_actions_per_day: global,
            cap_actions_per_rule_per_day: per_rule,
            ..ServeConfig::default()
        };
        if let Some(b) = block {
            cfg.cap_per_action_per_day.insert("block".into(), b);
        }
        Actions::new(&cfg)
    }

    #[test]
    fn a_user_days_action_counts_once_and_allow_never() {
        let a = caps(2, 10, None);
        assert!(a.settle("u1", 1, "block", "r").0.new);
        assert!(!a.settle("u1", 1, "block", "r").0.new);
        assert!(!a.settle("u2", 1, "allow", "below").0.new);
        assert!(a.settle("u2", 1, "warn", "r2").0.new);
        // The third distinct automated action of the day is over the global cap.
        let (o, hit) = a.settle("u3", 1, "warn", "r2");
        assert_eq!(o.action, CAPPED_ACTION);
        assert_eq!(o.rule, CAPPED_RULE);
        assert_eq!(o.capped_by.as_deref(), Some("global"));
        assert_eq!(hit.unwrap().cap, "global");
        // The alert is raised once per cap and day; another day starts afresh.
        assert!(a.settle("u4", 1, "warn", "r2").1.is_none());
        assert_eq!(a.settle("u4", 2, "warn", "r2").0.action, "warn");
        // A capped user-day stays capped for the same suggestion.
        assert_eq!(a.settle("u3", 1, "warn", "r2").0.action, CAPPED_ACTION);
    }

    #[test]
    fn per_rule_and_per_action_caps_turn_actions_into_reviews() {
        let a = caps(100, 1, Some(2));
        assert_eq!(a.settle("u1", 1, "block", "r1").0.action, "block");
        let (o, _) = a.settle("u2", 1, "block", "r1");
        assert_eq!(o.capped_by.as_deref(), Some("rule:r1"));
        assert_eq!(a.settle("u3", 1, "block", "r2").0.action, "block");
        let (o, _) = a.settle("u4", 1, "block", "r3");
        assert_eq!(o.capped_by.as_deref(), Some("action:block"));
        // escalate is the route to review: never capped.
        assert_eq!(a.settle("u5", 1, "escalate", "r1").0.action, "escalate");
    }
}
