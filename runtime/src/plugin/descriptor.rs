//! What a plugin says about itself (`weir_describe`, docs/PLUGIN_ABI.md), parsed and
//! checked: names, Arrow types, transform output shapes.

use std::str::FromStr;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use serde::Deserialize;

/// The ABI version this host speaks: the one weir-sdk writes.
pub use weir_sdk::ABI_VERSION;

#[derive(Debug, Clone)]
pub struct Descriptor {
    pub name: String,
    pub version: String,
    pub functions: Vec<FunctionSpec>,
    pub transforms: Vec<TransformSpec>,
}

#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub args: Vec<DataType>,
    pub returns: DataType,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputSpec {
    SameAsInput,
    Append(Fields),
    Fields(Fields),
}

#[derive(Debug, Clone)]
pub struct TransformSpec {
    pub name: String,
    pub output: OutputSpec,
}

impl TransformSpec {
    /// The schema this transform produces for `input`.
    pub fn output_schema(&self, input: &SchemaRef) -> SchemaRef {
        match &self.output {
            OutputSpec::SameAsInput => input.clone(),
            OutputSpec::Append(extra) => {
                let fields: Vec<_> = input.fields().iter().chain(extra.iter()).cloned().collect();
                std::sync::Arc::new(Schema::new(fields))
            }
            OutputSpec::Fields(fields) => std::sync::Arc::new(Schema::new(fields.clone())),
        }
    }
}

#[derive(Deserialize)]
struct RawDescriptor {
    abi: u32,
    name: String,
    version: String,
    #[serde(default)]
    functions: Vec<RawFunction>,
    #[serde(default)]
    transforms: Vec<RawTransform>,
}

#[derive(Deserialize)]
struct RawFunction {
    name: String,
    args: Vec<String>,
    returns: String,
}

#[derive(Deserialize)]
struct RawTransform {
    name: String,
    output: RawOutput,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawOutput {
    Same(String),
    Append { append: Vec<RawField> },
    Fields { fields: Vec<RawField> },
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default = "yes")]
    nullable: bool,
}

fn yes() -> bool {
    true
}

impl Descriptor {
    /// Parse and check the JSON a plugin returned from `weir_describe`.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let raw: RawDescriptor = serde_json::from_slice(json)
            .map_err(|e| format!("weir_describe returned an unreadable descriptor: {e}"))?;
        if raw.abi != ABI_VERSION {
            return Err(format!(
                "the plugin was built for plugin ABI {} but this weir speaks ABI {ABI_VERSION}; rebuild it with a matching weir-sdk",
                raw.abi
            ));
        }
        let mut names = std::collections::HashSet::new();
        let functions = raw
            .functions
            .into_iter()
            .map(|f| {
                check_name(&f.name, "function")?;
                if !names.insert(f.name.clone()) {
                    return Err(format!("the plugin exports {} twice", f.name));
                }
                Ok(FunctionSpec {
                    args: f
                        .args
                        .iter()
                        .map(|t| data_type(t, &f.name))
                        .collect::<Result<_, _>>()?,
                    returns: data_type(&f.returns, &f.name)?,
                    name: f.name,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let transforms = raw
            .transforms
            .into_iter()
            .map(|t| {
                check_name(&t.name, "transform")?;
                let output = match t.output {
                    RawOutput::Same(s) if s == "same_as_input" => OutputSpec::SameAsInput,
                    RawOutput::Same(other) => {
                        return Err(format!(
                            "transform {}: unknown output \"{other}\" (expected \"same_as_input\", {{\"append\": [...]}} or {{\"fields\": [...]}})",
                            t.name
                        ));
                    }
                    RawOutput::Append { append } => OutputSpec::Append(fields(append, &t.name)?),
                    RawOutput::Fields { fields: f } => OutputSpec::Fields(fields(f, &t.name)?),
                };
                Ok(TransformSpec {
                    name: t.name,
                    output,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if functions.is_empty() && transforms.is_empty() {
            return Err("the plugin exports no functions and no transforms".into());
        }
        Ok(Self {
            name: raw.name,
            version: raw.version,
            functions,
            transforms,
        })
    }
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name {name:?} is not a SQL identifier (lower-case letters, digits and _, not starting with a digit)"
        ))
    }
}

fn data_type(text: &str, owner: &str) -> Result<DataType, String> {
    // The parser recurses: bound the nesting before handing it untrusted text.
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for c in text.chars() {
        match c {
            '(' | '<' | '[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | '>' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if text.len() > 256 || deepest > 16 {
        return Err(format!(
            "{owner}: the type {:?}... is longer than 256 characters or nested deeper than 16",
            text.chars().take(40).collect::<String>()
        ));
    }
    DataType::from_str(text).map_err(|e| format!("{owner}: unknown Arrow type {text:?}: {e}"))
}

fn fields(raw: Vec<RawField>, owner: &str) -> Result<Fields, String> {
    raw.into_iter()
        .map(|f| {
            Ok(Field::new(
                f.name,
                data_type(&f.data_type, owner)?,
                f.nullable,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_functions_and_transforms() {
        let d = Descriptor::parse(br#"{"abi":1,"name":"p","version":"1","functions":[{"name":"f","args":["Int64","Timestamp(ms)"],"returns":"Float64"}],"transforms":[{"name":"t","output":"same_as_input"},{"name":"u","output":{"append":[{"name":"c","type":"Utf8"}]}}]}"#).expect("parses");
        assert_eq!(
            d.functions[0].args[1],
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None)
        );
        assert_eq!(d.transforms[0].output, OutputSpec::SameAsInput);
        assert!(matches!(&d.transforms[1].output, OutputSpec::Append(f) if f[0].name() == "c"));
    }

    #[test]
    fn refuses_other_abi_versions_and_bad_types() {
        let e = Descriptor::parse(br#"{"abi":2,"name":"p","version":"1","functions":[]}"#)
            .expect_err("abi");
        assert!(e.contains("ABI 2"), "{e}");
        let e = Descriptor::parse(br#"{"abi":1,"name":"p","version":"1","functions":[{"name":"f","args":["Integer"],"returns":"Int64"}]}"#).expect_err("type");
        assert!(e.contains("unknown Arrow type \"Integer\""), "{e}");
        let deep = format!("{}Int64{}", "List(".repeat(5000), ")".repeat(5000));
        let json = format!(
            r#"{{"abi":1,"name":"p","version":"1","functions":[{{"name":"f","args":[],"returns":"{deep}"}}]}}"#
        );
        let e = Descriptor::parse(json.as_bytes()).expect_err("too deep");
        assert!(e.contains("nested deeper than 16"), "{e}");
        let e = Descriptor::parse(br#"{"abi":1,"name":"p","version":"1","functions":[{"name":"drop table","args":[],"returns":"Int64"}]}"#).expect_err("name");
        assert!(e.contains("not a SQL identifier"), "{e}");
    }
}
