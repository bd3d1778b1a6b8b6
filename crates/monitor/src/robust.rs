//! The statistical alert rule: a daily metric more than `z` robust standard deviations
//! (1.4826 x MAD, floored at a fraction of the median) away from the median of its trailing
//! window.
//!
//! Fixed thresholds miss slow-moving products and fire constantly on noisy ones; a robust
//! baseline adapts to each metric's own level and ignores a few outlier days in the window.

use vigil_config::RobustZConfig;
use vigil_warehouse::Table;

use crate::{Alert, MonitorError};
use vigil_warehouse::{column_f64, column_text};

/// Median of a non-empty slice (mean of the two middle values for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Alerts of the robust rule over `monitoring_metrics`.
pub fn robust_alerts(metrics: &Table, cfg: &RobustZConfig) -> Result<Vec<Alert>, MonitorError> {
    let days = column_text(metrics, "day")?;
    let events = column_f64(metrics, "n_events")?;
    let mut out = Vec::new();
    for metric in &cfg.metrics {
        let values = column_f64(metrics, metric)?;
        for d in 0..values.len() {
            let lo = d.saturating_sub(cfg.window_days);
            let window = &values[lo..d];
            if window.len() < cfg.min_history_days {
                continue;
            }
            // A partial day (the ends of an export window) is not an anomaly.
            let typical_events = median(&events[lo..d]);
            if events[d] < cfg.min_day_coverage * typical_events {
                continue;
            }
            let med = median(window);
            let deviations: Vec<f64> = window.iter().map(|v| (v - med).abs()).collect();
            let sigma = (1.4826 * median(&deviations)).max(cfg.min_sigma_fraction * med.abs());
            let x = values[d];
            if sigma.is_nan() || sigma <= 0.0 || x.is_nan() {
                continue;
            }
            let z = (x - med) / sigma;
            if z.abs() > cfg.z {
                out.push(Alert {
                    day: days[d].clone(),
                    alert_type: format!("robust_z_{metric}"),
                    severity: cfg.severity.clone(),
                    details: format!(
                        "{metric}={x:.4}, baseline_median={med:.4}, robust_z={z:.1} over {} days",
                        window.len()
                    ),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::*;

    fn metrics(rates: &[f64], events: &[f64]) -> Table {
        let schema = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Utf8, false),
            Field::new("n_events", DataType::Float64, false),
            Field::new("block_rate", DataType::Float64, false),
        ]));
        let days: Vec<String> = (0..rates.len())
            .map(|i| format!("2026-01-{:02}", i + 1))
            .collect();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(days)),
                Arc::new(Float64Array::from(events.to_vec())),
                Arc::new(Float64Array::from(rates.to_vec())),
            ],
        )
        .unwrap();
        Table {
            name: "monitoring_metrics".into(),
            schema,
            batches: vec![b],
        }
    }

    fn cfg() -> RobustZConfig {
        RobustZConfig {
            metrics: vec!["block_rate".into()],
            ..RobustZConfig::default()
        }
    }

    #[test]
    fn a_spike_after_a_noisy_baseline_fires_once() {
        let rates = [
            0.070, 0.072, 0.068, 0.071, 0.069, 0.073, 0.070, 0.150, 0.071,
        ];
        let alerts = robust_alerts(&metrics(&rates, &[1000.0; 9]), &cfg()).unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].day, "2026-01-08");
        assert_eq!(alerts[0].alert_type, "robust_z_block_rate");
    }

    #[test]
    fn ordinary_noise_after_a_quiet_week_stays_quiet() {
        // Regression: a 5-day baseline with a tiny MAD made a 3-sigma binomial wobble look like
        // z = -10; the sigma floor (5% of the median) keeps it quiet.
        let rates = [0.0710, 0.0712, 0.0713, 0.0711, 0.0712, 0.0632];
        assert!(
            robust_alerts(&metrics(&rates, &[1000.0; 6]), &cfg())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn partial_days_and_short_history_stay_quiet() {
        let rates = [0.070, 0.072, 0.068, 0.071, 0.069, 0.073, 0.070, 0.150];
        let mut events = [1000.0; 8];
        events[7] = 100.0;
        assert!(
            robust_alerts(&metrics(&rates, &events), &cfg())
                .unwrap()
                .is_empty()
        );
        let short = [0.07, 0.07, 0.5];
        assert!(
            robust_alerts(&metrics(&short, &[1000.0; 3]), &cfg())
                .unwrap()
                .is_empty()
        );
    }
}
