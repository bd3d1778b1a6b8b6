//! The 16-column event schema of the spec, as an Arrow schema.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names in schema order.
pub const COLUMNS: [&str; 16] = [
    "event_id",
    "ts",
    "user_id",
    "ip",
    "device_id",
    "payment_id",
    "surface",
    "product",
    "event_type",
    "prompt",
    "tokens_in",
    "tokens_out",
    "latency_ms",
    "blocked",
    "warned",
    "is_abuse_gt",
];

/// Index of each column in [`COLUMNS`].
#[allow(missing_docs)]
pub mod col {
    pub const EVENT_ID: usize = 0;
    pub const TS: usize = 1;
    pub const USER_ID: usize = 2;
    pub const IP: usize = 3;
    pub const DEVICE_ID: usize = 4;
    pub const PAYMENT_ID: usize = 5;
    pub const SURFACE: usize = 6;
    pub const PRODUCT: usize = 7;
    pub const EVENT_TYPE: usize = 8;
    pub const PROMPT: usize = 9;
    pub const TOKENS_IN: usize = 10;
    pub const TOKENS_OUT: usize = 11;
    pub const LATENCY_MS: usize = 12;
    pub const BLOCKED: usize = 13;
    pub const WARNED: usize = 14;
    pub const IS_ABUSE_GT: usize = 15;
}

/// Columns an input file may leave out entirely: `payment_id` (no payment), `prompt` (no chat
/// text) and `is_abuse_gt` (unlabelled data).
pub const OPTIONAL_COLUMNS: [usize; 3] = [col::PAYMENT_ID, col::PROMPT, col::IS_ABUSE_GT];

/// The event types the pipeline understands.
pub const EVENT_TYPES: [&str; 7] = [
    "signup",
    "login",
    "chat",
    "upload",
    "billing",
    "policy_block",
    "warning",
];

/// Time zone of the `ts` column.
pub const TS_TZ: &str = "UTC";

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let utf8 = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        utf8("event_id", false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some(TS_TZ.into())),
            false,
        ),
        utf8("user_id", false),
        utf8("ip", false),
        utf8("device_id", false),
        utf8("payment_id", true),
        utf8("surface", false),
        utf8("product", false),
        utf8("event_type", false),
        utf8("prompt", false),
        Field::new("tokens_in", DataType::Int64, false),
        Field::new("tokens_out", DataType::Int64, false),
        Field::new("latency_ms", DataType::Int64, false),
        Field::new("blocked", DataType::Int8, false),
        Field::new("warned", DataType::Int8, false),
        Field::new("is_abuse_gt", DataType::Int8, true),
    ]))
});

/// The Arrow schema of stored events: timestamps in UTC microseconds, counts as `Int64`,
/// flags as `Int8` (0/1), `payment_id` and `is_abuse_gt` nullable.
pub fn event_schema() -> SchemaRef {
    SCHEMA.clone()
}
