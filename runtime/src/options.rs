//! `WITH (...)` options of CREATE SOURCE, deserialized into plain serde structs so that
//! unknown or mistyped options get a precise error. Values arrive as text; numbers and
//! booleans are recognised before deserializing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::BatchConfig;
use crate::{Error, Result};

/// Options every connector accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct CommonOptions {
    /// `http`, `nexmark` or `file`.
    pub connector: String,
    /// Record format; only `json` for now.
    #[serde(default)]
    pub format: Option<String>,
    /// Close micro-batches at this many rows (default from the runtime config).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Close micro-batches this long after their first row, e.g. '100ms'.
    #[serde(default, with = "humantime_serde::option")]
    pub max_delay: Option<Duration>,
}

impl CommonOptions {
    /// The batch policy of this source: its options over the runtime defaults.
    pub fn batch(&self, defaults: BatchConfig) -> BatchConfig {
        BatchConfig {
            max_rows: self.max_rows.unwrap_or(defaults.max_rows),
            max_delay: self.max_delay.unwrap_or(defaults.max_delay),
        }
    }
}

/// Keys every connector takes: [`CommonOptions`]'s.
pub const COMMON: &[&str] = &["connector", "format", "max_rows", "max_delay"];

/// Deserialize `options` into `T`, naming the source in errors. Values stay text
/// unless a field asks for a number or a flag: `group = '42'` is the string "42".
pub fn parse<T: DeserializeOwned>(source: &str, options: &BTreeMap<String, String>) -> Result<T> {
    from_text(&format!("source {source}"), options.iter())
}

/// [`parse`] for another object than a source: `what` names it in errors ("sink out").
pub fn parse_as<T: DeserializeOwned>(what: &str, options: &BTreeMap<String, String>) -> Result<T> {
    from_text(what, options.iter())
}

/// A connector's own options: every key but the common ones and `properties.*`
/// (passed through to a client library). `T` should deny unknown fields, so that a
/// misspelt option is an error that lists the right ones.
pub fn parse_own<T: DeserializeOwned>(
    source: &str,
    options: &BTreeMap<String, String>,
) -> Result<T> {
    from_text(
        &format!("source {source}"),
        options
            .iter()
            .filter(|(k, _)| !COMMON.contains(&k.as_str()) && !k.starts_with("properties.")),
    )
}

/// The `properties.<name>` options, without the prefix.
pub fn properties(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    options
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("properties.")?.to_string(), v.clone())))
        .collect()
}

fn from_text<'a, T: DeserializeOwned>(
    what: &str,
    pairs: impl Iterator<Item = (&'a String, &'a String)>,
) -> Result<T> {
    // The form-encoding deserializer reads every value as text and parses it only
    // where the target type wants a number or a bool.
    let form = serde_urlencoded::to_string(pairs.collect::<Vec<_>>())
        .map_err(|e| Error::BadRequest(format!("{what}: bad WITH option: {e}")))?;
    serde_urlencoded::from_str(&form).map_err(|e| {
        let e = e.to_string().replace("unknown field", "unknown option");
        Error::BadRequest(format!("{what}: bad WITH option: {e}"))
    })
}

/// `sql` with the values of secret-looking options (`...password...`, `...secret...`,
/// `...token...`, `sasl.jaas...`, `...credentials...`) replaced by `'***'`, and so is the
/// password of a URL (`postgres://user:***@host`): statements are shown to every reader
/// of the API, secrets only to the connector.
pub fn redact_secrets(sql: &str) -> String {
    static SECRET: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)([a-z0-9_.]*(?:password|secret|token|jaas|credentials|private)[a-z0-9_.]*\s*=\s*)'(?:[^']|'')*'",
        )
        .expect("a valid pattern")
    });
    static URL_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"([a-z][a-z0-9+.-]*://[^:/@'\s]*:)[^@'\s]+@").expect("a valid pattern")
    });
    // A libpq key-value string: `host=db password=secret`.
    static KEY_VALUE_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?i)(\bpassword\s*=\s*)[^\s']+").expect("a valid pattern")
    });
    let shown = SECRET.replace_all(sql, "$1'***'");
    let shown = URL_PASSWORD.replace_all(&shown, "$1***@");
    KEY_VALUE_PASSWORD.replace_all(&shown, "$1***").into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Own {
        group: Option<String>,
        events: Option<u64>,
    }

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn secrets_are_not_shown() {
        let sql = "CREATE SOURCE s (id BIGINT) WITH (connector = 'kafka', brokers = 'b:9092', \
                   properties.sasl.password = 'hunter''2', properties.ssl.key.password='k', \
                   topic = 'token_topic', properties.sasl.username = 'me')";
        let shown = redact_secrets(sql);
        assert!(
            !shown.contains("hunter") && !shown.contains("'k'"),
            "{shown}"
        );
        assert!(
            shown.contains("properties.sasl.password = '***'"),
            "{shown}"
        );
        assert!(
            shown.contains("topic = 'token_topic'") && shown.contains("'me'"),
            "{shown}"
        );
        let sql = "CREATE SINK p FROM v WITH (url = 'postgres://weir:s3cr3t@db:5432/app', \
                   other = 'redis://:pw@cache:6379/0', plain = 'postgres://weir@db/app', \
                   kv = 'host=db user=weir password=kv-secret dbname=app')";
        let shown = redact_secrets(sql);
        assert!(
            !shown.contains("s3cr3t") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://weir:***@db:5432/app")
                && shown.contains("postgres://weir@db/app"),
            "{shown}"
        );
    }

    #[test]
    fn text_stays_text_and_numbers_parse_where_wanted() {
        let o: Own = parse_own(
            "s",
            &options(&[
                ("connector", "kafka"),
                ("group", "42"),
                ("events", "7"),
                ("properties.sasl.mechanism", "PLAIN"),
            ]),
        )
        .expect("parses");
        assert_eq!(o.group.as_deref(), Some("42"));
        assert_eq!(o.events, Some(7));
        let e = parse_own::<Own>("s", &options(&[("gruop", "a")])).expect_err("misspelt");
        assert!(
            e.to_string().contains("unknown option `gruop`") && e.to_string().contains("group"),
            "{e}"
        );
        let e = parse_own::<Own>("s", &options(&[("events", "many")])).expect_err("not a number");
        assert!(e.to_string().contains("source s"), "{e}");
        assert_eq!(
            properties(&options(&[
                ("properties.sasl.mechanism", "PLAIN"),
                ("topic", "t")
            ])),
            options(&[("sasl.mechanism", "PLAIN")])
        );
    }
}
