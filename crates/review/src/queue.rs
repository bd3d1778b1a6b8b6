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
    /// The user's rare-harm affinity reached `[sentinel] review_at` (batch rare-harm stage).
    pub rare_harm: bool,
}

impl Flags {
    /// Any flag set: the user-day needs review.
    pub fn any(self) -> bool {
        self.ml || self.heuristic || self.uncertain || self.rare_harm
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
        rare_harm: false,
    }
}

/// A case's priority (expected harm): `w0 * risk + w1 * uncertainty + w2 * clip(n_chat /
/// priority_chat_scale, 0, 1)`. The batch queue and the live service both rank by it.
pub fn priority(risk: f64, uncertainty: f64, n_chat: f64, cfg: &ReviewConfig) -> f64 {
    let [w0, w1, w2] = cfg.priority_weights;
    w0 * risk + w1 * uncertainty + w2 * (n_chat / cfg.priority_chat_scale).clamp(0.0, 1.0)
}

/// The rare-harm signal on one user-day: whether its affinity reaches `review_at`, and its
/// priority raised to at least `min(1, affinity / (2 * review_at))` when it does.
pub fn rare_harm_priority(priority: f64, affinity: f64, review_at: f64) -> (bool, f64) {
    if affinity >= review_at {
        (true, priority.max((affinity / (2.0 * review_at)).min(1.0)))
    } else {
        (false, priority)
    }
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
    build_queue_with(risk, uncertainty, heuristic, n_chat, threshold, cfg, None)
}

/// [`build_queue`] with the rare-harm signal: `(affinity, review_at)` flags a user-day whose
/// affinity reaches `review_at` (`rare_harm`) and raises its priority to at least
/// `min(1, affinity / (2 * review_at))`, so a user found only through what they write is
/// not ranked below the queue's capacity by a low behavioural risk.
pub fn build_queue_with(
    risk: &[f64],
    uncertainty: &[f64],
    heuristic: &[f64],
    n_chat: &[f64],
    threshold: f64,
    cfg: &ReviewConfig,
    rare: Option<(&[f64], f64)>,
) -> Vec<QueueEntry> {
    let mut q: Vec<QueueEntry> = (0..risk.len())
        .filter_map(|i| {
            let mut f = flags(risk[i], uncertainty[i], heuristic[i], threshold, cfg);
            let mut p = priority(risk[i], uncertainty[i], n_chat[i], cfg);
            if let Some((affinity, at)) = rare {
                (f.rare_harm, p) = rare_harm_priority(p, affinity[i], at);
            }
            f.any().then_some(QueueEntry {
                row: i,
                flags: f,
                priority: p,
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
#[allow(clippy::unwrap_used)]
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

    #[test]
    fn a_rare_harm_affinity_queues_a_low_risk_day_and_raises_its_priority() {
        let cfg = ReviewConfig::default();
        let risk = [0.05, 0.05, 0.95];
        let unc: Vec<f64> = risk
            .iter()
            .map(|r: &f64| 1.0 - 2.0 * (r - 0.5).abs())
            .collect();
        let affinity = [3.0, 0.2, 0.0];
        let plain = build_queue(&risk, &unc, &[0.0; 3], &[1.0; 3], 0.7, &cfg);
        assert_eq!(plain.len(), 1, "only the risky day without the signal");
        let q = build_queue_with(
            &risk,
            &unc,
            &[0.0; 3],
            &[1.0; 3],
            0.7,
            &cfg,
            Some((&affinity, 1.0)),
        );
        let rows: Vec<usize> = q.iter().map(|e| e.row).collect();
        assert_eq!(rows, [0, 2], "{q:?}");
        let rare = q.iter().find(|e| e.row == 0).unwrap();
        assert!(rare.flags.rare_harm && !rare.flags.ml);
        assert_eq!(rare.priority, 1.0, "3 >= 2 x review_at: top priority");
    }
}
