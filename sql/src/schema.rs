//! SQL column types and intervals as weir understands them in `CREATE SOURCE` and in
//! window sizes. `TIMESTAMP` is milliseconds since the Unix epoch without a time zone,
//! so JSON producers can send either an RFC 3339 string or an integer of milliseconds.

use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, DateTimeField, Expr, Value};

use crate::{Result, invalid, unsupported};

/// The Arrow type of a `TIMESTAMP` column.
pub const TIMESTAMP: DataType = DataType::Timestamp(TimeUnit::Millisecond, None);

/// Map a column type of `CREATE SOURCE` to its Arrow type.
pub fn arrow_type(sql: &ast::DataType) -> Result<DataType> {
    use ast::DataType as S;
    Ok(match sql {
        S::BigInt(_) | S::Int8(_) | S::Int64 => DataType::Int64,
        S::Int(_) | S::Integer(_) | S::Int4(_) | S::Int32 => DataType::Int32,
        S::SmallInt(_) | S::Int2(_) | S::Int16 => DataType::Int16,
        S::TinyInt(_) => DataType::Int8,
        S::Double(_) | S::DoublePrecision | S::Float8 | S::Float64 => DataType::Float64,
        S::Float(_) | S::Real | S::Float4 | S::Float32 => DataType::Float32,
        S::Boolean | S::Bool => DataType::Boolean,
        S::Varchar(_)
        | S::Text
        | S::String(_)
        | S::Char(_)
        | S::CharVarying(_)
        | S::Character(_) => DataType::Utf8,
        S::Timestamp(_, ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone) => TIMESTAMP,
        S::Date => DataType::Date32,
        S::Bytea | S::Varbinary(_) | S::Binary(_) => DataType::Binary,
        S::Decimal(info) | S::Numeric(info) => match info {
            ast::ExactNumberInfo::PrecisionAndScale(p, s) => DataType::Decimal128(
                u8::try_from(*p).map_err(|_| invalid!("DECIMAL precision {p} is too large"))?,
                i8::try_from(*s).map_err(|_| invalid!("DECIMAL scale {s} is too large"))?,
            ),
            ast::ExactNumberInfo::Precision(p) => DataType::Decimal128(
                u8::try_from(*p).map_err(|_| invalid!("DECIMAL precision {p} is too large"))?,
                0,
            ),
            ast::ExactNumberInfo::None => DataType::Decimal128(38, 10),
        },
        other => {
            return Err(unsupported!(
                "column type {other} is not supported in CREATE SOURCE; use BIGINT, INT, SMALLINT, \
                 TINYINT, DOUBLE, REAL, BOOLEAN, VARCHAR, BYTEA, TIMESTAMP, DATE or DECIMAL(p, s)"
            ));
        }
    })
}

/// Read an interval literal such as `INTERVAL '10' SECOND` or `INTERVAL '1 minute'`.
pub fn interval(expr: &Expr) -> Result<Duration> {
    let Expr::Interval(iv) = expr else {
        return Err(invalid!(
            "expected an interval such as INTERVAL '10' SECOND, found {expr}"
        ));
    };
    let text = match iv.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => return Err(invalid!("expected a number in the interval, found {other}")),
        },
        other => return Err(invalid!("expected a number in the interval, found {other}")),
    };
    let (number, unit) = match &iv.leading_field {
        Some(field) => (text.trim().to_string(), unit_name(field)?),
        None => {
            let mut parts = text.split_whitespace();
            let n = parts.next().unwrap_or_default().to_string();
            let u = parts.next().unwrap_or("second").to_ascii_lowercase();
            (n, u)
        }
    };
    scaled(&number, &unit).map_err(|e| invalid!("interval {expr}: {e}"))
}

/// A duration written as text, as in `WITH (allowed_lateness = '5s')`: a number and a unit
/// (`ms`, `s`, `min`, `h`, `d` or their long names); seconds without a unit.
pub fn duration_text(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = match unit.trim().to_ascii_lowercase() {
        u if u.is_empty() => "second".to_string(),
        u if u == "h" => "hour".to_string(),
        u if u == "d" => "day".to_string(),
        u if u == "s" => "second".to_string(),
        u => u,
    };
    scaled(number, &unit).map_err(|e| invalid!("duration '{text}': {e}"))
}

fn scaled(number: &str, unit: &str) -> Result<Duration> {
    let n: f64 = number
        .parse()
        .map_err(|_| invalid!("'{number}' is not a number"))?;
    let seconds_per_unit = match unit.trim_end_matches('s') {
        "millisecond" | "m" => 0.001,
        "second" | "sec" => 1.0,
        "minute" | "min" => 60.0,
        "hour" => 3600.0,
        "day" => 86_400.0,
        other => {
            return Err(invalid!(
                "unit '{other}' is not supported; use MILLISECOND, SECOND, MINUTE, HOUR or DAY"
            ));
        }
    };
    Duration::try_from_secs_f64(n * seconds_per_unit)
        .map_err(|_| invalid!("must be a non-negative duration of at most a few centuries"))
}

fn unit_name(field: &DateTimeField) -> Result<String> {
    Ok(match field {
        DateTimeField::Millisecond | DateTimeField::Milliseconds => "millisecond",
        DateTimeField::Second | DateTimeField::Seconds => "second",
        DateTimeField::Minute | DateTimeField::Minutes => "minute",
        DateTimeField::Hour | DateTimeField::Hours => "hour",
        DateTimeField::Day | DateTimeField::Days => "day",
        other => return Err(invalid!("interval unit {other} is not supported; use MILLISECOND, SECOND, MINUTE, HOUR or DAY")),
    }
    .to_string())
}

/// Convert a duration to the unit of a timestamp column.
pub fn duration_in_unit(d: Duration, unit: TimeUnit) -> i64 {
    let nanos = d.as_nanos();
    let v = match unit {
        TimeUnit::Second => nanos / 1_000_000_000,
        TimeUnit::Millisecond => nanos / 1_000_000,
        TimeUnit::Microsecond => nanos / 1_000,
        TimeUnit::Nanosecond => nanos,
    };
    i64::try_from(v).unwrap_or(i64::MAX)
}
