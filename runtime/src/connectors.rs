//! What the API tells of each connector, so that forms and docs are made from the code:
//! its options (the names are read from the connector's own options struct, so a list
//! that drifts fails a test), what each means, and a connection test that answers in
//! plain words.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::RuntimeConfig;
use crate::{Error, Result};

/// One `WITH (...)` option of a connector.
#[derive(Debug, Clone, Serialize)]
pub struct OptionDoc {
    pub name: &'static str,
    /// `text`, `number`, `duration` ('100ms', '5s') or `choice` (see `choices`).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub choices: &'static [&'static str],
    pub required: bool,
    /// What an unset option means.
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

/// A connector as the API describes it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectorInfo {
    pub name: &'static str,
    /// `source` or `sink`.
    pub kind: &'static str,
    pub doc: &'static str,
    /// Whether CREATE SOURCE declares the columns (`false`: the connector has its own).
    pub declares_columns: bool,
    /// Other options it passes through, e.g. `properties.*` to librdkafka.
    pub passes_through: Option<&'static str>,
    pub options: Vec<OptionDoc>,
}

/// A connector's entry in the catalog the API serves.
pub(crate) struct Described {
    pub info: fn() -> ConnectorInfo,
    /// The option names the connector's options struct accepts (its own, beyond the
    /// common ones), read from the struct by [`field_names`]; a test holds `info` to
    /// them.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fields: fn() -> Vec<&'static str>,
    /// Try the endpoint the options name; `Ok` says what was found.
    pub test: fn(&BTreeMap<String, String>, &RuntimeConfig) -> Result<String>,
}

/// Options every source takes (crate::options::CommonOptions).
pub const COMMON_SOURCE_OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "format",
        kind: "choice",
        choices: &["json", "raw"],
        required: false,
        default: Some("json"),
        doc: "Record format: json; a kafka source also takes raw (the value as bytes).",
    },
    OptionDoc {
        name: "max_rows",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("8192"),
        doc: "A micro-batch closes at this many rows.",
    },
    OptionDoc {
        name: "max_delay",
        kind: "duration",
        choices: &[],
        required: false,
        default: Some("0ms"),
        doc: "...or this long after its first row; at 0ms as soon as nothing more is queued.",
    },
];

/// `brokers`, as the Kafka source and sink both take it.
pub(crate) const KAFKA_BROKERS: OptionDoc = OptionDoc {
    name: "brokers",
    kind: "text",
    choices: &[],
    required: true,
    default: None,
    doc: "host:port[,host:port...]",
};

/// Options every sink takes (the runtime's, not the connector's).
pub const COMMON_SINK_OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        name: "max_pending_rows",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("10000000"),
        doc: "Changes held in memory while the destination is slow or down, a number or 'unbounded'; past it further epochs spill to disk (without a data dir, the sink fails).",
    },
    OptionDoc {
        name: "max_spilled_bytes",
        kind: "text",
        choices: &[],
        required: false,
        default: Some("4294967296"),
        doc: "Bytes of changes spilled to the data dir while the destination is slow or down, a number, 0 (never spill) or 'unbounded'; past it the sink fails.",
    },
];

/// Every connector, sources then sinks.
pub fn all() -> Vec<ConnectorInfo> {
    crate::source::connector::described()
        .chain(crate::sink::described())
        .map(|d| (d.info)())
        .collect()
}

/// One connector of `kind` (`source` or `sink`).
pub fn describe(kind: &str, name: &str) -> Result<ConnectorInfo> {
    all()
        .into_iter()
        .find(|c| c.kind == kind && c.name == name)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "no {kind} connector named {name}; there are {}",
                all()
                    .iter()
                    .filter(|c| c.kind == kind)
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Try what a source's or sink's options point at (a broker, a file), without
/// creating anything.
pub fn test(
    kind: &str,
    name: &str,
    options: &BTreeMap<String, String>,
    config: &RuntimeConfig,
) -> Result<String> {
    describe(kind, name)?;
    let mut described: Box<dyn Iterator<Item = &Described>> = match kind {
        "source" => Box::new(crate::source::connector::described()),
        _ => Box::new(crate::sink::described()),
    };
    match described.find(|d| (d.info)().name == name) {
        Some(entry) => (entry.test)(options, config),
        None => Err(Error::NotFound(format!("no {kind} connector named {name}"))),
    }
}

/// A connection test for connectors with nothing to connect to.
pub(crate) fn nothing_to_test(_: &BTreeMap<String, String>, _: &RuntimeConfig) -> Result<String> {
    Ok("nothing to connect to: this connector needs no endpoint".into())
}

/// Ask the brokers of `options` for the topics' metadata, within a few seconds.
pub(crate) fn test_kafka(options: &BTreeMap<String, String>, _: &RuntimeConfig) -> Result<String> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let brokers = options
        .get("brokers")
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("name the brokers (host:port, ...) first".into()))?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "4000")
        .set("reconnect.backoff.max.ms", "1000");
    for (k, v) in crate::options::properties(options) {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| Error::BadRequest(format!("cannot make a Kafka client: {e}")))?;
    let wait = Duration::from_secs(5);
    let metadata = consumer.fetch_metadata(None, wait).map_err(|e| {
        Error::BadRequest(format!(
            "cannot reach the brokers at {brokers} within {} s: {e}",
            wait.as_secs()
        ))
    })?;
    let mut found = format!(
        "reached {} broker{} at {brokers}",
        metadata.brokers().len(),
        if metadata.brokers().len() == 1 {
            ""
        } else {
            "s"
        }
    );
    if let Some(topics) = options.get("topic") {
        for topic in topics.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() => found.push_str(&format!(
                    "; topic {topic} has {} partition{}",
                    t.partitions().len(),
                    if t.partitions().len() == 1 { "" } else { "s" }
                )),
                _ => found.push_str(&format!("; topic {topic} does not exist yet")),
            }
        }
    }
    Ok(found)
}

/// The field names serde deserializes `T` from: the options a struct accepts, read
/// from the struct itself (with its renames), so documentation cannot drift from it.
pub(crate) fn field_names<T: DeserializeOwned>() -> Vec<&'static str> {
    let mut names = FieldNames(&[]);
    let _ = T::deserialize(&mut names);
    names.0.to_vec()
}

/// A deserializer that only notes the fields a struct asks for.
struct FieldNames(&'static [&'static str]);

#[derive(Debug)]
struct Noted;

impl std::fmt::Display for Noted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names noted")
    }
}

impl std::error::Error for Noted {}

impl de::Error for Noted {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Noted
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldNames {
    type Error = Noted;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Noted> {
        Err(Noted)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> std::result::Result<V::Value, Noted> {
        self.0 = fields;
        Err(Noted)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// The `WITH (...)` of a form, as the test endpoint takes it.
#[derive(Debug, Deserialize)]
pub struct TestRequest {
    pub options: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_option_is_one_the_connector_takes_and_back() {
        let described = crate::source::connector::described().chain(crate::sink::described());
        for d in described {
            let info = (d.info)();
            let common = if info.kind == "source" {
                COMMON_SOURCE_OPTIONS
            } else {
                COMMON_SINK_OPTIONS
            };
            let common: Vec<&str> = common.iter().map(|o| o.name).collect();
            let mut documented: Vec<&str> = info
                .options
                .iter()
                .map(|o| o.name)
                .filter(|n| !common.contains(n))
                .collect();
            let mut taken = (d.fields)();
            documented.sort();
            taken.sort();
            assert_eq!(documented, taken, "{} {}", info.kind, info.name);
            for o in &info.options {
                assert!(!o.doc.is_empty(), "{}: {}", info.name, o.name);
                assert_eq!(o.kind == "choice", !o.choices.is_empty(), "{}", o.name);
            }
        }
    }

    #[test]
    fn the_docs_name_every_option_the_api_serves() {
        let docs = ["SQL.md", "CONNECTORS.md"]
            .map(|f| {
                let path = format!("{}/../docs/{f}", env!("CARGO_MANIFEST_DIR"));
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
            })
            .concat();
        for c in all() {
            for o in &c.options {
                assert!(
                    docs.contains(&format!("`{}`", o.name)),
                    "{} {}: option {} is not in docs/SQL.md or docs/CONNECTORS.md",
                    c.kind,
                    c.name,
                    o.name
                );
            }
        }
    }

    #[test]
    fn the_common_options_are_the_ones_every_source_takes() {
        let mut taken = field_names::<crate::options::CommonOptions>();
        taken.retain(|n| *n != "connector");
        taken.sort();
        let mut documented: Vec<&str> = COMMON_SOURCE_OPTIONS.iter().map(|o| o.name).collect();
        documented.sort();
        assert_eq!(documented, taken);
    }

    #[test]
    fn the_file_test_says_whether_the_file_is_there() {
        let dir = tempfile::tempdir().expect("dir");
        let config = RuntimeConfig {
            data_dir: dir.path().to_path_buf(),
            ..RuntimeConfig::default()
        };
        std::fs::create_dir_all(config.files_dir()).expect("files dir");
        std::fs::write(config.files_dir().join("in.jsonl"), "{}\n").expect("file");
        let options = |path: &str| BTreeMap::from([("path".to_string(), path.to_string())]);
        let ok = test("source", "file", &options("in.jsonl"), &config).expect("there");
        assert!(ok.contains("is there: 3 bytes"), "{ok}");
        let missing = test("source", "file", &options("nope.jsonl"), &config).expect_err("missing");
        assert!(missing.to_string().contains("cannot be read"), "{missing}");
        let outside = test("source", "file", &options("../x"), &config).expect_err("outside");
        assert!(!outside.to_string().is_empty());
        let none = test("source", "file", &BTreeMap::new(), &config).expect_err("no path");
        assert!(none.to_string().contains("name the file first"), "{none}");
        assert!(test("sink", "nope", &BTreeMap::new(), &config).is_err());
    }

    #[test]
    fn field_names_come_from_serde_with_renames() {
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[allow(dead_code)]
        struct S {
            #[serde(rename = "start_at")]
            start: Option<String>,
            event_rate: u64,
        }
        assert_eq!(field_names::<S>(), vec!["start_at", "event_rate"]);
    }

    #[test]
    fn a_broker_that_is_not_there_is_named_in_plain_words() {
        let options = BTreeMap::from([("brokers".to_string(), "127.0.0.1:1".to_string())]);
        let config = RuntimeConfig::default();
        let e = test_kafka(&options, &config).expect_err("nothing listens on port 1");
        assert!(
            e.to_string()
                .contains("cannot reach the brokers at 127.0.0.1:1"),
            "{e}"
        );
        let e = test_kafka(&BTreeMap::new(), &config).expect_err("no brokers");
        assert!(e.to_string().contains("name the brokers"), "{e}");
    }
}
