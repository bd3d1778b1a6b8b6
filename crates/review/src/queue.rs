//! The review queue: flags, priority and ordering, exactly as the spec.

use vigil_config::ReviewConfig;

/// The three flags of one user-day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    /// risk >= model threshold.
    pub ml: bool,
    /// normalised heuristic score >= `heuristic_flag`.
    pub heuristic: bool,
    /// uncertainty >= `uncertain_flag` and risk >= `uncertain_min_risk`.
    pub uncertain: bool,
}

impl Flags {
    /// Any flag set: the user-day needs review.
    pub fn any(self) -> bool {
        self.ml || self.heuristic || self.uncertain
    }
}

/// One queued user-day.
#[derive(Debug, Clone, Copy)]
pub struct QueueEntry {
    /// Index of the user-day in the scored table.
    pub row: usize,
    /// Its flags.
    pub flags: Flags,
    /// `w0*risk + w1*uncertainty + w2*clip(n_chat/scale, 0, 1)`.
    pub priority: f64,
}

/// Flags of one user-day.
pub fn flags(
    risk: f64,
    uncertainty: f64,
    heuristic: f64,
    threshold: f64,
    cfg: &ReviewConfig,
) -> Flags {
    Flags {
        ml: risk >= threshold,
        heuristic: heuristic >= cfg.heuristic_flag,
        uncertain: uncertainty >= cfg.uncertain_flag && risk >= cfg.uncertain_min_risk,
    }
}

/// A case's priority (expected harm): `w0 * risk + w1 * uncertainty + w2 * clip(n_chat /
/// priority_chat_scale, 0, 1)`. The batch queue and the live service both rank by it.
pub fn priority(risk: f64, uncertainty: f64, n_chat: f64, cfg: &ReviewConfig) -> f64 {
    let [w0, w1, w2] = cfg.priority_weights;
    w0 * risk + w1 * uncertainty + w2 * (n_chat / cfg.priority_chat_scale).clamp(0.0, 1.0)
}

/// Flag every user-day, keep the flagged ones ordered by priority then risk (both
/// descending; ties keep table order), at most `cfg.queue_size`.
pub fn build_queue(
    risk: &[f64],
    uncertainty: &[f64],
    heuristic: &[f64],
    n_chat: &[f64],
    threshold: f64,
    cfg: &ReviewConfig,
) -> Vec<QueueEntry> {
    let mut q: Vec<QueueEntry> = (0..risk.len())
        .filter_map(|i| {
            let f = flags(risk[i], uncertainty[i], heuristic[i], threshold, cfg);
            f.any().then(|| QueueEntry {
                row: i,
                flags: f,
                priority: priority(risk[i], uncertainty[i], n_chat[i], cfg),
            })
        })
        .collect();
    q.sort_by(|a, b| {
        b.priority
            .total_cmp(&a.priority)
            .then(risk[b.row].total_cmp(&risk[a.row]))
    });
    q.truncate(cfg.queue_size);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_orders_by_priority_and_caps() {
        let cfg = ReviewConfig {
            queue_size: 2,
            ..ReviewConfig::default()
        };
        let risk = [0.9, 0.1, 0.8, 0.95];
        let unc: Vec<f64> = risk
            .iter()
            .map(|r: &f64| 1.0 - 2.0 * (r - 0.5).abs())
            .collect();
        let q = build_queue(&risk, &unc, &[0.0; 4], &[10.0; 4], 0.7, &cfg);
        assert_eq!(q.iter().map(|e| e.row).collect::<Vec<_>>(), vec![3, 0]);
        assert!(q[0].flags.ml && !q[0].flags.heuristic);
    }

    #[test]
    fn uncertain_flag_needs_minimum_risk() {
        let cfg = ReviewConfig::default();
        assert!(flags(0.4, 0.8, 0.0, 0.9, &cfg).uncertain);
        assert!(!flags(0.3, 0.8, 0.0, 0.9, &cfg).uncertain);
        assert!(flags(0.1, 0.2, 0.75, 0.9, &cfg).heuristic);
    }
}
