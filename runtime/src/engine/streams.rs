//! Derived streams: `CREATE STREAM name AS TRANSFORM source USING PLUGIN 'p[.t]'`. A
//! stream has a schema (the transform's output) and the source's watermark when its
//! time column survives; views read it like a source.

use std::sync::Arc;

use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::SchemaRef;
use weir_sql::{CreateStream, WatermarkSpec};

use super::introspect::rows;
use super::{Engine, SqlOutput, missing};
use crate::plugin::PluginEntry;
use crate::plugin::transform::StreamTransform;
use crate::{Error, Result};

/// A declared stream.
pub struct StreamDef {
    pub name: String,
    pub source: String,
    pub plugin: Arc<PluginEntry>,
    pub transform: String,
    pub schema: SchemaRef,
    pub watermark: Option<WatermarkSpec>,
    /// The transform every view of the stream shares: one call per batch for all.
    pub shared: Arc<StreamTransform>,
}

/// What the API shows of a stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub source: String,
    pub plugin: String,
    pub transform: String,
    pub columns: Vec<crate::view::ColumnInfo>,
}

impl Engine {
    /// Every derived stream, by name.
    pub fn streams(&self) -> Vec<StreamStatus> {
        let mut out: Vec<StreamStatus> = (self.inner.streams.iter())
            .map(|s| StreamStatus {
                name: s.name.clone(),
                source: s.source.clone(),
                plugin: s.plugin.name.clone(),
                transform: s.transform.clone(),
                columns: crate::view::ColumnInfo::of(&s.schema),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub(super) fn create_stream(&self, c: CreateStream) -> Result<SqlOutput> {
        let name = c.name.clone();
        if self.name_taken(&name) {
            if c.if_not_exists && self.inner.streams.contains_key(&name) {
                return Ok(SqlOutput::Done {
                    message: format!("stream {name} already exists"),
                });
            }
            return Err(Error::Conflict(format!(
                "the name {name} is taken; DROP it first or choose another"
            )));
        }
        if self.inner.streams.contains_key(&c.source) {
            return Err(Error::BadRequest(format!(
                "stream {name} reads stream {}: streams over streams are not supported yet; transform the source",
                c.source
            )));
        }
        let source = self.source(&c.source)?;
        let plugin = self.inner.plugins.get(&c.plugin).ok_or_else(|| {
            Error::NotFound(format!(
                "no plugin named {} (upload it with POST /api/v1/plugins?name={})",
                c.plugin, c.plugin
            ))
        })?;
        let current = plugin.current();
        let transforms = &current.descriptor.transforms;
        let spec = match &c.transform {
            Some(t) => transforms.iter().find(|s| &s.name == t),
            None if transforms.len() == 1 => transforms.first(),
            None => None,
        };
        let Some(spec) = spec else {
            let names: Vec<&str> = transforms.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::BadRequest(match (&c.transform, names.as_slice()) {
                (_, []) => format!("plugin {} exports no transforms", c.plugin),
                (Some(t), _) => format!(
                    "plugin {} has no transform {t}; it exports {}",
                    c.plugin,
                    names.join(", ")
                ),
                (None, _) => format!(
                    "plugin {} exports several transforms ({}); name one: USING PLUGIN '{}.{}'",
                    c.plugin,
                    names.join(", "),
                    c.plugin,
                    names[0]
                ),
            }));
        };
        let schema = spec.output_schema(&source.schema);
        // The source's watermark carries over when the time column does.
        let watermark = source.watermark.clone().filter(|w| {
            schema
                .field_with_name(&w.column)
                .ok()
                .zip(source.schema.field_with_name(&w.column).ok())
                .is_some_and(|(out, input)| out.data_type() == input.data_type())
        });
        let stream = StreamDef {
            name: name.clone(),
            source: c.source.clone(),
            shared: Arc::new(StreamTransform::new(plugin.clone(), spec.name.clone())),
            plugin,
            transform: spec.name.clone(),
            schema,
            watermark,
        };
        self.inner.streams.insert(name.clone(), Arc::new(stream));
        Ok(SqlOutput::Done {
            message: format!("stream {name} created"),
        })
    }

    pub(super) fn drop_stream(&self, name: &str, if_exists: bool) -> Result<SqlOutput> {
        if !self.inner.streams.contains_key(name) {
            return missing(if_exists, format!("no stream named {name}"));
        }
        let users: Vec<String> = self
            .inner
            .views
            .iter()
            .filter(|v| v.stream.as_deref() == Some(name))
            .map(|v| v.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "stream {name} is read by views {}; drop them first",
                users.join(", ")
            )));
        }
        self.inner.streams.remove(name);
        Ok(SqlOutput::Done {
            message: format!("stream {name} dropped"),
        })
    }

    pub(super) fn show_streams(&self) -> Result<SqlOutput> {
        let mut streams: Vec<Arc<StreamDef>> =
            self.inner.streams.iter().map(|s| s.clone()).collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        let column = |f: fn(&StreamDef) -> String| {
            Arc::new(StringArray::from_iter_values(streams.iter().map(|s| f(s)))) as _
        };
        rows(vec![
            ("name", column(|s| s.name.clone())),
            ("source", column(|s| s.source.clone())),
            ("plugin", column(|s| s.plugin.name.clone())),
            ("transform", column(|s| s.transform.clone())),
        ])
    }

    /// Streams that read `source`, or that a plugin serves.
    pub(super) fn streams_where(&self, keep: impl Fn(&StreamDef) -> bool) -> Vec<String> {
        let mut names: Vec<String> = self
            .inner
            .streams
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        names
    }
}
