//! An accepted event, owned: what the durable log stores and the per-user state consumes.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int8Type, Int64Type, TimestampMicrosecondType};
use vigil_events::validate::ValidRow;

/// Microseconds in a UTC day.
pub(crate) const DAY_MICROS: i64 = 86_400_000_000;

/// One validated event, owning its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The dedup key's text.
    pub event_id: String,
    /// Microseconds since the epoch, UTC.
    pub ts: i64,
    #[allow(missing_docs)]
    pub user_id: String,
    #[allow(missing_docs)]
    pub ip: String,
    #[allow(missing_docs)]
    pub device_id: String,
    /// `None` when the user has no payment token.
    pub payment_id: Option<String>,
    #[allow(missing_docs)]
    pub surface: String,
    #[allow(missing_docs)]
    pub product: String,
    #[allow(missing_docs)]
    pub event_type: String,
    /// Empty unless chat.
    pub prompt: String,
    #[allow(missing_docs)]
    pub tokens_in: i64,
    #[allow(missing_docs)]
    pub tokens_out: i64,
    #[allow(missing_docs)]
    pub latency_ms: i64,
    #[allow(missing_docs)]
    pub blocked: i8,
    #[allow(missing_docs)]
    pub warned: i8,
    /// `None` for unlabelled data.
    pub is_abuse_gt: Option<i8>,
}

impl Event {
    /// Own a validated row.
    pub fn from_row(r: &ValidRow<'_>) -> Self {
        Self {
            event_id: r.event_id.to_string(),
            ts: r.ts,
            user_id: r.user_id.to_string(),
            ip: r.ip.to_string(),
            device_id: r.device_id.to_string(),
            payment_id: r.payment_id.map(str::to_string),
            surface: r.surface.to_string(),
            product: r.product.to_string(),
            event_type: r.event_type.to_string(),
            prompt: r.prompt.to_string(),
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
            latency_ms: r.latency_ms,
            blocked: r.blocked,
            warned: r.warned,
            is_abuse_gt: r.is_abuse_gt,
        }
    }

    /// Borrow as a validated row (for the dataset's batch builder).
    pub fn as_row(&self) -> ValidRow<'_> {
        ValidRow {
            event_id: &self.event_id,
            ts: self.ts,
            user_id: &self.user_id,
            ip: &self.ip,
            device_id: &self.device_id,
            payment_id: self.payment_id.as_deref(),
            surface: &self.surface,
            product: &self.product,
            event_type: &self.event_type,
            prompt: &self.prompt,
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            latency_ms: self.latency_ms,
            blocked: self.blocked,
            warned: self.warned,
            is_abuse_gt: self.is_abuse_gt,
        }
    }

    /// The UTC calendar day of `ts` as days since 1970 (the batch's `day`).
    pub fn day(&self) -> i32 {
        day_of(self.ts)
    }
}

/// The UTC calendar day of a microsecond timestamp, as days since 1970.
pub(crate) fn day_of(ts: i64) -> i32 {
    // Years 1-9999 only (the validator's range), so the quotient fits.
    i32::try_from(ts.div_euclid(DAY_MICROS)).unwrap_or(i32::MAX)
}

/// `YYYY-MM-DD` of a day number.
pub(crate) fn day_text(day: i32) -> String {
    chrono::NaiveDate::from_num_days_from_ce_opt(day + 719_163)
        .map_or_else(|| day.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// The events of a stored batch (full event schema), in row order.
pub(crate) fn events_of(batch: &RecordBatch) -> Result<Vec<Event>, String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("stored events have no column `{name}`"))
    };
    let s = |name: &str| -> Result<&arrow::array::StringArray, String> {
        col(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("column `{name}` is not text"))
    };
    let i = |name: &str| -> Result<&arrow::array::PrimitiveArray<Int64Type>, String> {
        col(name)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| format!("column `{name}` is not a 64-bit integer"))
    };
    let f = |name: &str| -> Result<&arrow::array::PrimitiveArray<Int8Type>, String> {
        col(name)?
            .as_primitive_opt::<Int8Type>()
            .ok_or_else(|| format!("column `{name}` is not an 8-bit integer"))
    };
    let ts = col("ts")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or("column `ts` is not a microsecond timestamp")?;
    let (id, user, ip, dev, pay, surface, product, et, prompt) = (
        s("event_id")?,
        s("user_id")?,
        s("ip")?,
        s("device_id")?,
        s("payment_id")?,
        s("surface")?,
        s("product")?,
        s("event_type")?,
        s("prompt")?,
    );
    let (tin, tout, lat) = (i("tokens_in")?, i("tokens_out")?, i("latency_ms")?);
    let (blocked, warned, gt) = (f("blocked")?, f("warned")?, f("is_abuse_gt")?);
    Ok((0..batch.num_rows())
        .map(|r| Event {
            event_id: id.value(r).to_string(),
            ts: ts.value(r),
            user_id: user.value(r).to_string(),
            ip: ip.value(r).to_string(),
            device_id: dev.value(r).to_string(),
            payment_id: pay.is_valid(r).then(|| pay.value(r).to_string()),
            surface: surface.value(r).to_string(),
            product: product.value(r).to_string(),
            event_type: et.value(r).to_string(),
            prompt: if prompt.is_valid(r) {
                prompt.value(r).to_string()
            } else {
                String::new()
            },
            tokens_in: tin.value(r),
            tokens_out: tout.value(r),
            latency_ms: lat.value(r),
            blocked: blocked.value(r),
            warned: warned.value(r),
            is_abuse_gt: gt.is_valid(r).then(|| gt.value(r)),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days_before_and_after_1970() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_of(DAY_MICROS - 1), 0);
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(-1), "1969-12-31");
        assert_eq!(day_text(20_454), "2026-01-01");
    }
}
