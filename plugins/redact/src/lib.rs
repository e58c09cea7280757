//! PII redaction as a batch transform: every string column keeps its shape, with
//! e-mail addresses, IP addresses (v4 and v6) and payment card numbers (13 to 19
//! digits that pass the Luhn check) replaced by a tag.

use std::sync::{Arc, OnceLock};

use regex::{Captures, Regex};
use weir_sdk::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use weir_sdk::{Output, Plugin, PluginError};

pub const EMAIL: &str = "[email]";
pub const IP: &str = "[ip]";
pub const CARD: &str = "[card]";

fn pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(concat!(
            r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
            r"|(?P<ipv6>\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b|\b(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?\b)",
            r"|(?P<ipv4>\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b)",
            r"|(?P<card>\b\d(?:[ -]?\d){12,18}\b)",
        ))
        .expect("the pattern is valid")
    })
}

/// Luhn checksum over the digits of `text`.
fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if !i.is_multiple_of(2) {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// One string with its PII masked.
pub fn redact_text(text: &str) -> std::borrow::Cow<'_, str> {
    pattern().replace_all(text, |c: &Captures| {
        if c.name("email").is_some() {
            EMAIL.to_string()
        } else if c.name("ipv6").is_some() || c.name("ipv4").is_some() {
            IP.to_string()
        } else if luhn(&c[0]) {
            CARD.to_string()
        } else {
            c[0].to_string()
        }
    })
}

fn redact_column(column: &ArrayRef) -> ArrayRef {
    match column.as_any().downcast_ref::<StringArray>() {
        Some(strings) => {
            let masked: StringArray = strings.iter().map(|v| v.map(redact_text)).collect();
            Arc::new(masked)
        }
        None => column.clone(),
    }
}

/// Mask every string column; other columns pass through untouched.
pub fn redact(batch: RecordBatch) -> Result<RecordBatch, PluginError> {
    let columns = batch.columns().iter().map(redact_column).collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

pub fn plugin() -> Plugin {
    Plugin::new("redact", env!("CARGO_PKG_VERSION")).transform(
        "redact",
        Output::SameAsInput,
        redact,
    )
}

weir_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::arrow::array::Int64Array;

    #[test]
    fn masks_emails_ips_and_valid_card_numbers() {
        assert_eq!(
            redact_text("mail ann.lee+x@mail.example.org now"),
            "mail [email] now"
        );
        assert_eq!(
            redact_text("from 10.0.0.255, not 999.1.1.1"),
            "from [ip], not 999.1.1.1"
        );
        assert_eq!(
            redact_text("v6 2001:db8:85a3::8a2e:370:7334 ok"),
            "v6 [ip] ok"
        );
        assert_eq!(redact_text("card 4111 1111 1111 1111."), "card [card].");
        assert_eq!(
            redact_text("card 4111-1111-1111-1112"),
            "card 4111-1111-1111-1112",
            "fails Luhn"
        );
        assert_eq!(redact_text("order 12345"), "order 12345");
    }

    #[test]
    fn keeps_the_schema_nulls_and_other_columns() {
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            (
                "note",
                Arc::new(StringArray::from(vec![Some("bob@example.com"), None])) as ArrayRef,
            ),
        ])
        .expect("batch");
        let out = redact(batch.clone()).expect("redacts");
        assert_eq!(out.schema(), batch.schema());
        assert_eq!(out.column(0), batch.column(0));
        let note = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        assert_eq!(note.value(0), EMAIL);
        assert!(note.is_null(1));
    }
}
