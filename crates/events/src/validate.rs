//! Row validation: turns one raw input row into a typed event or a reason to quarantine it.
//!
//! Nothing is coerced: a value is accepted only when it means exactly what the schema says
//! (an integral number for a count, 0 or 1 for a flag, a known event type, a timestamp with an
//! offset). Every refusal names the column and the offending value.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int8Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::record_batch::RecordBatch;

use crate::schema::{COLUMNS, EVENT_TYPES, TS_TZ, col, event_schema};
use crate::timestamp::{TsError, parse_timestamp_micros};

/// One raw value as a reader found it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// The column is absent from this input, or the field is empty.
    Missing,
    /// Explicit null (JSON `null`).
    Null,
    /// Text.
    Str(&'a str),
    /// A JSON integer.
    Int(i64),
    /// A JSON non-integer number.
    Float(f64),
    /// A JSON boolean.
    Bool(bool),
}

/// A row that passed validation, borrowing its text from the input.
#[derive(Debug, Clone)]
pub struct ValidRow<'a> {
    /// `event_id, user_id, ip, device_id, surface, product, event_type, prompt`.
    pub event_id: &'a str,
    /// Microseconds since the epoch, UTC.
    pub ts: i64,
    #[allow(missing_docs)]
    pub user_id: &'a str,
    #[allow(missing_docs)]
    pub ip: &'a str,
    #[allow(missing_docs)]
    pub device_id: &'a str,
    /// `None` when the user has no payment token.
    pub payment_id: Option<&'a str>,
    #[allow(missing_docs)]
    pub surface: &'a str,
    #[allow(missing_docs)]
    pub product: &'a str,
    #[allow(missing_docs)]
    pub event_type: &'a str,
    /// Empty unless chat.
    pub prompt: &'a str,
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

/// Validation policy (from `[ingest]` in `vigil.toml`).
#[derive(Debug, Clone, Copy)]
pub struct Validator {
    /// Longest accepted field in bytes.
    pub max_field_bytes: usize,
    /// A quoted CSV field may cross at most this many line ends; a longer one is a bad row at
    /// its opening line and reading resumes on the next line.
    pub max_field_lines: usize,
    /// Treat timestamps without an offset as UTC.
    pub assume_utc: bool,
}

impl Default for Validator {
    fn default() -> Self {
        Self {
            max_field_bytes: 64 * 1024,
            max_field_lines: 100,
            assume_utc: false,
        }
    }
}

fn describe(v: &Value<'_>) -> String {
    match v {
        Value::Missing => "nothing".into(),
        Value::Null => "null".into(),
        Value::Str(s) => {
            let shown: String = s.chars().take(40).collect();
            if shown.len() < s.len() {
                format!("{shown:?}...")
            } else {
                format!("{shown:?}")
            }
        }
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

/// Parse an integer written the way data tools write one: an optional `-`, digits without a
/// redundant leading zero, optionally an all-zero fraction (pandas writes "296.0" for an
/// integer column holding a null). Nothing else: no whitespace (as for every typed field),
/// no `+`, no `007`, which are more likely a shifted column or an identifier than a count.
fn parse_int_text(s: &str) -> Option<i64> {
    let (int_part, frac) = match s.split_once('.') {
        Some((i, f)) if !f.is_empty() && f.bytes().all(|c| c == b'0') => (i, Some(f)),
        Some(_) => return None,
        None => (s, None),
    };
    let digits = int_part.strip_prefix('-').unwrap_or(int_part);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'));
    let _ = frac;
    if canonical {
        int_part.parse::<i64>().ok()
    } else {
        None
    }
}

impl Validator {
    fn text<'a>(&self, name: &str, v: Value<'a>) -> Result<&'a str, String> {
        match v {
            Value::Str(s) if !s.is_empty() => {
                if s.len() > self.max_field_bytes {
                    Err(format!(
                        "field `{name}` is {} bytes, over the {}-byte limit",
                        s.len(),
                        self.max_field_bytes
                    ))
                } else {
                    Ok(s)
                }
            }
            Value::Missing | Value::Null | Value::Str(_) => {
                Err(format!("missing required field `{name}`"))
            }
            other => Err(format!(
                "field `{name}` must be text, found {}",
                describe(&other)
            )),
        }
    }

    fn optional_text<'a>(&self, name: &str, v: Value<'a>) -> Result<Option<&'a str>, String> {
        match v {
            Value::Missing | Value::Null => Ok(None),
            Value::Str("") => Ok(None),
            other => self.text(name, other).map(Some),
        }
    }

    fn count(&self, name: &str, v: Value<'_>) -> Result<i64, String> {
        let n = match v {
            Value::Int(i) => Some(i),
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
            Value::Str(s) if !s.is_empty() => parse_int_text(s),
            Value::Missing | Value::Null | Value::Str(_) => {
                return Err(format!("missing required field `{name}`"));
            }
            _ => None,
        };
        match n {
            Some(n) if n < 0 => Err(format!("field `{name}` is negative ({n})")),
            Some(n) => Ok(n),
            None => Err(format!(
                "field `{name}` is not an integer: {}",
                describe(&v)
            )),
        }
    }

    fn flag(&self, name: &str, v: Value<'_>) -> Result<i8, String> {
        let f = match v {
            Value::Int(0) => Some(0),
            Value::Int(1) => Some(1),
            Value::Bool(b) => Some(i8::from(b)),
            Value::Float(0.0) => Some(0),
            Value::Float(1.0) => Some(1),
            // Exactly as written: ` 1` is refused like ` chat` is.
            Value::Str(s) => match s {
                "0" | "0.0" => Some(0),
                "1" | "1.0" => Some(1),
                "" => return Err(format!("missing required field `{name}`")),
                _ => None,
            },
            Value::Missing | Value::Null => return Err(format!("missing required field `{name}`")),
            _ => None,
        };
        f.ok_or_else(|| format!("field `{name}` must be 0 or 1, found {}", describe(&v)))
    }

    /// Validate one row; `get(i)` returns the raw value of column `i` of [`COLUMNS`].
    pub fn validate<'a>(&self, get: impl Fn(usize) -> Value<'a>) -> Result<ValidRow<'a>, String> {
        let event_id = self.text("event_id", get(col::EVENT_ID))?;
        let ts_raw = get(col::TS);
        let ts = match ts_raw {
            Value::Str(s) if !s.is_empty() => {
                parse_timestamp_micros(s, self.assume_utc).map_err(|e| match e {
                    TsError::Invalid => format!("unparsable timestamp `ts`: {}", describe(&ts_raw)),
                    TsError::NoOffset => format!(
                        "timestamp `ts` has no UTC offset: {} (add one, or set ingest.assume_utc_for_naive_timestamps = true)",
                        describe(&ts_raw)
                    ),
                })?
            }
            Value::Missing | Value::Null | Value::Str(_) => {
                return Err("missing required field `ts`".into());
            }
            other => {
                return Err(format!(
                    "unparsable timestamp `ts`: {} (expected RFC 3339 text)",
                    describe(&other)
                ));
            }
        };
        let event_type = self.text("event_type", get(col::EVENT_TYPE))?;
        if !EVENT_TYPES.contains(&event_type) {
            return Err(format!(
                "unknown event type {:?} (expected one of {})",
                event_type,
                EVENT_TYPES.join(", ")
            ));
        }
        let prompt = match get(col::PROMPT) {
            Value::Missing | Value::Null => "",
            Value::Str(s) => {
                if s.len() > self.max_field_bytes {
                    return Err(format!(
                        "field `prompt` is {} bytes, over the {}-byte limit",
                        s.len(),
                        self.max_field_bytes
                    ));
                }
                s
            }
            other => {
                return Err(format!(
                    "field `prompt` must be text, found {}",
                    describe(&other)
                ));
            }
        };
        let is_abuse_gt = match get(col::IS_ABUSE_GT) {
            Value::Missing | Value::Null | Value::Str("") => None,
            v => Some(self.flag("is_abuse_gt", v)?),
        };
        Ok(ValidRow {
            event_id,
            ts,
            user_id: self.text("user_id", get(col::USER_ID))?,
            ip: self.text("ip", get(col::IP))?,
            device_id: self.text("device_id", get(col::DEVICE_ID))?,
            payment_id: self.optional_text("payment_id", get(col::PAYMENT_ID))?,
            surface: self.text("surface", get(col::SURFACE))?,
            product: self.text("product", get(col::PRODUCT))?,
            event_type,
            prompt,
            tokens_in: self.count("tokens_in", get(col::TOKENS_IN))?,
            tokens_out: self.count("tokens_out", get(col::TOKENS_OUT))?,
            latency_ms: self.count("latency_ms", get(col::LATENCY_MS))?,
            blocked: self.flag("blocked", get(col::BLOCKED))?,
            warned: self.flag("warned", get(col::WARNED))?,
            is_abuse_gt,
        })
    }
}

/// Accumulates validated rows into Arrow arrays of the event schema.
#[derive(Debug)]
pub struct EventBatchBuilder {
    strings: [StringBuilder; 9],
    ts: TimestampMicrosecondBuilder,
    ints: [Int64Builder; 3],
    flags: [Int8Builder; 3],
    len: usize,
}

impl EventBatchBuilder {
    /// A builder sized for `capacity` rows.
    pub fn with_capacity(capacity: usize) -> Self {
        let s = || StringBuilder::with_capacity(capacity, capacity * 12);
        Self {
            strings: [s(), s(), s(), s(), s(), s(), s(), s(), s()],
            ts: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(TS_TZ),
            ints: [
                Int64Builder::with_capacity(capacity),
                Int64Builder::with_capacity(capacity),
                Int64Builder::with_capacity(capacity),
            ],
            flags: [
                Int8Builder::with_capacity(capacity),
                Int8Builder::with_capacity(capacity),
                Int8Builder::with_capacity(capacity),
            ],
            len: 0,
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no row is buffered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one row.
    pub fn append(&mut self, r: &ValidRow<'_>) {
        let [
            event_id,
            user_id,
            ip,
            device_id,
            payment_id,
            surface,
            product,
            event_type,
            prompt,
        ] = &mut self.strings;
        event_id.append_value(r.event_id);
        user_id.append_value(r.user_id);
        ip.append_value(r.ip);
        device_id.append_value(r.device_id);
        payment_id.append_option(r.payment_id);
        surface.append_value(r.surface);
        product.append_value(r.product);
        event_type.append_value(r.event_type);
        prompt.append_value(r.prompt);
        self.ts.append_value(r.ts);
        self.ints[0].append_value(r.tokens_in);
        self.ints[1].append_value(r.tokens_out);
        self.ints[2].append_value(r.latency_ms);
        self.flags[0].append_value(r.blocked);
        self.flags[1].append_value(r.warned);
        self.flags[2].append_option(r.is_abuse_gt);
        self.len += 1;
    }

    /// Take the buffered rows as one record batch.
    pub fn finish(&mut self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let [
            event_id,
            user_id,
            ip,
            device_id,
            payment_id,
            surface,
            product,
            event_type,
            prompt,
        ] = &mut self.strings;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(event_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(user_id.finish()),
            Arc::new(ip.finish()),
            Arc::new(device_id.finish()),
            Arc::new(payment_id.finish()),
            Arc::new(surface.finish()),
            Arc::new(product.finish()),
            Arc::new(event_type.finish()),
            Arc::new(prompt.finish()),
            Arc::new(self.ints[0].finish()),
            Arc::new(self.ints[1].finish()),
            Arc::new(self.ints[2].finish()),
            Arc::new(self.flags[0].finish()),
            Arc::new(self.flags[1].finish()),
            Arc::new(self.flags[2].finish()),
        ];
        self.len = 0;
        RecordBatch::try_new(event_schema(), columns)
    }
}

/// Column names for messages.
pub fn column_name(i: usize) -> &'static str {
    COLUMNS.get(i).copied().unwrap_or("?")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(vals: [&'static str; 16]) -> impl Fn(usize) -> Value<'static> {
        move |i| Value::Str(vals[i])
    }

    const GOOD: [&str; 16] = [
        "e_1",
        "2026-02-01 05:26:54.143876+00:00",
        "u_1",
        "203.0.113.1",
        "dev_1",
        "",
        "web",
        "chat",
        "chat",
        "hello",
        "12",
        "30.0",
        "800",
        "0",
        "1",
        "",
    ];

    #[test]
    fn a_good_row_is_typed_exactly() {
        let r = Validator::default().validate(row(GOOD)).unwrap();
        assert_eq!(r.payment_id, None);
        assert_eq!(r.tokens_out, 30);
        assert_eq!(r.warned, 1);
        assert_eq!(r.is_abuse_gt, None);
    }

    /// Regression: ` 3`, `+3` and `007` were stored as 3 and 7, and a flag ` 1` as 1, while
    /// ` chat` was refused. One rule now: typed fields are taken exactly as written.
    #[test]
    fn silent_leniencies_in_numbers_and_flags_are_bad_rows() {
        for v in [
            " 3", "3 ", "+3", "007", "00", "-", "3.", ".0", "1e3", "3.01",
        ] {
            let mut vals = GOOD;
            vals[col::TOKENS_IN] = v;
            let err = Validator::default().validate(row(vals)).unwrap_err();
            assert!(
                err.contains("`tokens_in` is not an integer"),
                "{v:?}: {err}"
            );
        }
        for v in [" 1", "1 ", "01", "+1", "true"] {
            let mut vals = GOOD;
            vals[col::BLOCKED] = v;
            let err = Validator::default().validate(row(vals)).unwrap_err();
            assert!(err.contains("`blocked` must be 0 or 1"), "{v:?}: {err}");
        }
        let mut vals = GOOD;
        vals[col::EVENT_TYPE] = " chat";
        assert!(Validator::default().validate(row(vals)).is_err());
        // What data tools do write stays accepted.
        for (v, want) in [("0", 0), ("7", 7), ("296.0", 296), ("10.00", 10)] {
            let mut vals = GOOD;
            vals[col::TOKENS_IN] = v;
            assert_eq!(
                Validator::default().validate(row(vals)).unwrap().tokens_in,
                want
            );
        }
        let mut vals = GOOD;
        vals[col::BLOCKED] = "1.0";
        assert_eq!(Validator::default().validate(row(vals)).unwrap().blocked, 1);
    }

    #[test]
    fn each_kind_of_bad_value_names_its_column() {
        let cases: [(usize, &str, &str); 9] = [
            (col::USER_ID, "", "missing required field `user_id`"),
            (col::TS, "not a time", "unparsable timestamp"),
            (col::TS, "2026-02-01 05:26:54", "no UTC offset"),
            (col::TOKENS_IN, "12x", "`tokens_in` is not an integer"),
            (col::TOKENS_IN, "12.5", "`tokens_in` is not an integer"),
            (col::LATENCY_MS, "-4", "`latency_ms` is negative"),
            (col::EVENT_TYPE, "purchase", "unknown event type"),
            (col::BLOCKED, "2", "`blocked` must be 0 or 1"),
            (col::IS_ABUSE_GT, "yes", "`is_abuse_gt` must be 0 or 1"),
        ];
        for (c, v, want) in cases {
            let mut vals = GOOD;
            vals[c] = v;
            let err = Validator::default().validate(row(vals)).unwrap_err();
            assert!(err.contains(want), "{c} {v}: {err}");
        }
    }

    #[test]
    fn overlong_fields_are_refused() {
        let v = Validator {
            max_field_bytes: 4,
            ..Validator::default()
        };
        let err = v.validate(row(GOOD)).unwrap_err();
        assert!(
            err.contains("`prompt` is 5 bytes, over the 4-byte limit")
                || err.contains("over the 4-byte limit"),
            "{err}"
        );
    }

    #[test]
    fn builder_produces_the_schema() {
        let mut b = EventBatchBuilder::with_capacity(2);
        let r = Validator::default().validate(row(GOOD)).unwrap();
        b.append(&r);
        b.append(&r);
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), event_schema());
        assert!(b.is_empty());
    }
}
