//! The `files` sink: a view's rows as Parquet files on a local path or in an
//! S3-compatible store (the role HDFS plays for Spark jobs), through `object_store` and
//! `parquet`. Each durable epoch becomes its own files (or, with `roll_interval`, the
//! epochs of that long, up to `max_rows_per_file` rows, gathered: `Sink::gather`), split
//! by the `partition_by` column into Hive-style directories (`dt=2024-05-01/`) and by
//! `max_rows_per_file`, named by the sink's lineage, the (first) epoch and their place
//! (`part-<lineage>-<epoch>-<n>.parquet`). A file is written whole and made visible at
//! once (a local file under a temporary name, then renamed; an S3 object when its upload
//! completes), and only once the checkpoint that covers it is durable; an epoch written
//! again after a crash (gathered with the same epochs as before, which the runtime
//! notes before it writes) writes the same names with the same rows, so a reader never
//! sees a partial or a duplicated file. See docs/CONNECTORS.md.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::kernels::cmp::eq;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, is_null};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::error::ArrowError;
use object_store::CredentialProvider;
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::local::LocalFileSystem;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Deserialize;

use super::{EpochChanges, Sink, SinkDef};
use crate::aws::block_on;
use crate::config::RuntimeConfig;
use crate::connectors::{ConnectorInfo, Described, OptionDoc, field_names};
use crate::{Error, Result};

/// Rows a file holds at most, unless the options say.
const DEFAULT_MAX_ROWS: usize = 1_000_000;
/// Hive's name for the directory of rows whose partition column is null.
const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesSinkOptions {
    path: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    partition_by: Option<String>,
    max_rows_per_file: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    roll_interval: Option<std::time::Duration>,
}

/// A files sink.
pub struct FilesSink {
    /// The store, and where the files go inside it; made at the first delivery when it
    /// could not be at a restart (the sink must start all the same, its backlog kept).
    store: Option<(Arc<dyn ObjectStore>, Path)>,
    /// The `path` option (shown in errors), and `endpoint` and `region`.
    shown: String,
    endpoint: Option<String>,
    region: Option<String>,
    schema: SchemaRef,
    partition: Option<usize>,
    max_rows: usize,
    /// Epochs gather this long into one set of files (none: each epoch its own).
    roll_interval: Option<std::time::Duration>,
}

/// Where `path` names: a local directory (made when missing), or `s3://bucket/prefix`.
fn store_for(
    path: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> std::result::Result<(Arc<dyn ObjectStore>, Path), String> {
    if let Some(rest) = path.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("path {path} names no bucket (s3://bucket/prefix)"));
        }
        // Credentials and region as every AWS connector finds them: the SDK's default
        // chain (environment, ~/.aws profiles, SSO, web identity, instance role).
        let sdk = crate::aws::Endpoint {
            region: region.map(str::to_string),
            endpoint: endpoint.map(str::to_string),
        }
        .config()?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(region) = sdk.region() {
            builder = builder.with_region(region.as_ref());
        }
        if let Some(provider) = sdk.credentials_provider() {
            builder = builder.with_credentials(Arc::new(SdkCredentials {
                provider,
                cached: parking_lot::Mutex::new(None),
            }));
        }
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = builder
            .build()
            .map_err(|e| format!("cannot reach {path}: {e}"))?;
        return Ok((Arc::new(store), Path::from(prefix)));
    }
    if path.contains("://") && !path.starts_with("file://") {
        return Err(format!(
            "path {path} is neither a local directory nor s3://bucket/prefix"
        ));
    }
    let dir = path.strip_prefix("file://").unwrap_or(path);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make directory {dir}: {e}"))?;
    remove_unfinished(std::path::Path::new(dir));
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| format!("cannot use directory {dir}: {e}"))?;
    Ok((Arc::new(store), Path::default()))
}

/// S3 credentials from the AWS SDK's chain, kept until five minutes before they expire.
#[derive(Debug)]
struct SdkCredentials {
    provider: aws_credential_types::provider::SharedCredentialsProvider,
    cached: parking_lot::Mutex<Option<(Arc<AwsCredential>, Option<std::time::SystemTime>)>>,
}

#[async_trait::async_trait]
impl CredentialProvider for SdkCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        use aws_credential_types::provider::ProvideCredentials;
        let margin = std::time::Duration::from_secs(300);
        if let Some((credential, expiry)) = self.cached.lock().clone()
            && expiry.is_none_or(|at| std::time::SystemTime::now() + margin < at)
        {
            return Ok(credential);
        }
        let found = self.provider.provide_credentials().await.map_err(|e| {
            object_store::Error::Generic {
                store: "S3",
                source: format!("no AWS credentials: {}", crate::aws::describe(&e)).into(),
            }
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: found.access_key_id().to_string(),
            secret_key: found.secret_access_key().to_string(),
            token: found.session_token().map(str::to_string),
        });
        *self.cached.lock() = Some((credential.clone(), found.expiry()));
        Ok(credential)
    }
}

/// Remove the files a crash left half-written under `dir`: object_store writes a local
/// file as `<name>#<n>` and renames it once whole, so such a name is never a finished
/// file.
fn remove_unfinished(dir: &std::path::Path) {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                todo.push(path);
            } else if name.contains(".parquet#")
                && let Err(e) = std::fs::remove_file(&path)
            {
                tracing::warn!(file = %path.display(), "cannot remove an unfinished file: {e}");
            }
        }
    }
}

pub fn open(def: &SinkDef) -> Result<Box<dyn Sink>> {
    let name = def.name;
    let bad = |m: String| Error::BadRequest(format!("sink {name}: {m}"));
    let options: FilesSinkOptions = super::own_options(def)?;
    let path = options
        .path
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| {
            bad("a files sink needs path = '/a/directory' or 's3://bucket/prefix'".into())
        })?;
    let partition = options
        .partition_by
        .as_deref()
        .map(|c| {
            def.schema.index_of(c.trim()).map_err(|_| {
                bad(format!(
                    "partition_by {c} is not a column of view {}",
                    def.view
                ))
            })
        })
        .transpose()?;
    let max_rows = match options.max_rows_per_file.as_deref() {
        None => DEFAULT_MAX_ROWS,
        Some(text) => text
            .trim()
            .replace('_', "")
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("max_rows_per_file {text} is not a number above 0")))?,
    };
    // Writable as Parquet: refused now rather than at the first epoch.
    ArrowWriter::try_new(Vec::new(), def.schema.clone(), None).map_err(|e| {
        bad(format!(
            "the view's columns cannot be written as Parquet: {e}"
        ))
    })?;
    let store = match store_for(
        &path,
        options.endpoint.as_deref(),
        options.region.as_deref(),
    ) {
        Ok(store) => Some(store),
        Err(e) if def.restoring => {
            tracing::warn!(sink = name, "{e}; tried again at the first delivery");
            None
        }
        Err(e) => return Err(bad(e)),
    };
    Ok(Box::new(FilesSink {
        store,
        shown: path,
        endpoint: options.endpoint,
        region: options.region,
        schema: def.schema.clone(),
        partition,
        max_rows,
        roll_interval: options.roll_interval.filter(|d| !d.is_zero()),
    }))
}

/// Rows of one partition value (`None`: a null, or no `partition_by`).
type Partition = (Option<String>, Vec<RecordBatch>);

/// The rows of `batches` by the text of column `column` (`None`: one group of all).
fn by_partition(
    batches: &[RecordBatch],
    column: Option<usize>,
) -> std::result::Result<Vec<Partition>, ArrowError> {
    let Some(column) = column else {
        return Ok(vec![(None, batches.to_vec())]);
    };
    let mut groups: Vec<Partition> = Vec::new();
    for batch in batches {
        let text: ArrayRef = cast(batch.column(column), &DataType::Utf8)?;
        let Some(strings) = text.as_any().downcast_ref::<StringArray>() else {
            continue;
        };
        let values: BTreeSet<Option<&str>> = strings.iter().collect();
        for value in values {
            let mask = match value {
                Some(v) => eq(&text, &StringArray::new_scalar(v))?,
                None => is_null(&text)?,
            };
            let rows = filter_record_batch(batch, &mask)?;
            let key = value.map(str::to_string);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, found)) => found.push(rows),
                None => groups.push((key, vec![rows])),
            }
        }
    }
    Ok(groups)
}

/// One file's name.
fn file_path(
    prefix: &Path,
    partition: Option<(&str, Option<&str>)>,
    lineage: &str,
    epoch: u64,
    n: usize,
) -> Path {
    let mut parts: Vec<PathPart<'static>> = prefix
        .parts()
        .map(|p| p.as_ref().to_string().into())
        .collect();
    if let Some((column, value)) = partition {
        parts.push(PathPart::from(format!(
            "{column}={}",
            value.unwrap_or(NULL_PARTITION)
        )));
    }
    parts.push(PathPart::from(format!(
        "part-{lineage}-{epoch:012}-{n:04}.parquet"
    )));
    Path::from_iter(parts)
}

impl FilesSink {
    /// The epoch's files: (name, Parquet bytes, rows).
    fn files(
        &self,
        prefix: &Path,
        to_write: &EpochChanges<'_>,
    ) -> std::result::Result<Vec<(Path, Vec<u8>, usize)>, String> {
        let rows: Vec<RecordBatch> = to_write
            .changes
            .iter()
            .map(|c| c.rows.clone())
            .filter(|r| r.num_rows() > 0)
            .collect();
        let groups = by_partition(&rows, self.partition).map_err(|e| e.to_string())?;
        let column = self.partition.map(|i| self.schema.field(i).name().as_str());
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut files = Vec::new();
        for (value, batches) in groups {
            let all = concat_batches(&self.schema, &batches).map_err(|e| e.to_string())?;
            let mut offset = 0;
            while offset < all.num_rows() {
                let len = self.max_rows.min(all.num_rows() - offset);
                let mut writer =
                    ArrowWriter::try_new(Vec::new(), self.schema.clone(), Some(props.clone()))
                        .map_err(|e| e.to_string())?;
                writer
                    .write(&all.slice(offset, len))
                    .map_err(|e| e.to_string())?;
                let bytes = writer.into_inner().map_err(|e| e.to_string())?;
                let partition = column.map(|c| (c, value.as_deref()));
                let n = offset / self.max_rows;
                files.push((
                    file_path(prefix, partition, to_write.lineage, to_write.first_epoch, n),
                    bytes,
                    len,
                ));
                offset += len;
            }
        }
        Ok(files)
    }
}

impl Sink for FilesSink {
    /// With `roll_interval`, a file takes the epochs of that long, or `max_rows_per_file`
    /// rows, whichever comes first; it is named by the first of them.
    fn gather(&self) -> Option<super::Gather> {
        self.roll_interval.map(|max_wait| super::Gather {
            max_wait,
            max_rows: self.max_rows,
        })
    }

    fn deliver(&mut self, to_write: &EpochChanges<'_>) -> std::result::Result<u64, String> {
        let epoch = to_write.epoch;
        let (store, prefix) = match &self.store {
            Some(store) => store.clone(),
            None => {
                let made = store_for(
                    &self.shown,
                    self.endpoint.as_deref(),
                    self.region.as_deref(),
                )?;
                self.store.insert(made).clone()
            }
        };
        let files = self
            .files(&prefix, to_write)
            .map_err(|e| format!("epoch {epoch}: cannot write Parquet: {e}"))?;
        let rows: usize = files.iter().map(|(_, _, n)| n).sum();
        // Each put is atomic: the object (or the renamed local file) appears whole.
        block_on(async move {
            for (path, bytes, _) in files {
                store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map_err(|e| format!("cannot write {path}: {e}"))?;
            }
            Ok::<_, String>(())
        })
        .map_err(|e| format!("epoch {epoch} to {}: {e}", self.shown))?;
        Ok(rows as u64)
    }
}

/// List the first objects under the path.
pub(crate) fn test_files(
    options: &std::collections::BTreeMap<String, String>,
    _: &RuntimeConfig,
) -> Result<String> {
    let path = options
        .get("path")
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| Error::BadRequest("give the path first".into()))?
        .clone();
    let (store, prefix) = store_for(
        &path,
        options.get("endpoint").map(String::as_str),
        options.get("region").map(String::as_str),
    )
    .map_err(Error::BadRequest)?;
    let listed = block_on(async move {
        store
            .list_with_delimiter(Some(&prefix))
            .await
            .map(|l| l.objects.len() + l.common_prefixes.len())
    })
    .map_err(|e| Error::BadRequest(format!("cannot list {path}: {e}")))?;
    Ok(format!("{path}: {listed} entries"))
}

/// What the API says of this connector (crate::connectors).
pub(crate) const DESCRIBED: Described = Described {
    info: || ConnectorInfo {
        name: "files",
        kind: "sink",
        doc: "A view's rows as Parquet files in a local directory or s3://bucket/prefix, partitioned by a column; each file appears whole, once its checkpoint is durable, and never twice.",
        declares_columns: false,
        passes_through: None,
        options: OPTIONS.to_vec(),
    },
    fields: field_names::<FilesSinkOptions>,
    test: test_files,
};

const OPTIONS: [OptionDoc; 6] = [
    OptionDoc {
        name: "path",
        kind: "text",
        choices: &[],
        required: true,
        default: None,
        doc: "A local directory (made when missing) or s3://bucket/prefix; S3 credentials from the AWS chain (environment, ~/.aws profile, SSO, instance role).",
    },
    OptionDoc {
        name: "endpoint",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "An S3-compatible endpoint (MinIO, a local one); path-style requests.",
    },
    OptionDoc {
        name: "region",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "The bucket's region; default: the AWS chain's (AWS_REGION, the profile).",
    },
    OptionDoc {
        name: "partition_by",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "A column whose value names each file's directory, Hive-style (dt=2024-05-01/).",
    },
    OptionDoc {
        name: "max_rows_per_file",
        kind: "number",
        choices: &[],
        required: false,
        default: Some("1000000"),
        doc: "Rows a file holds at most; an epoch with more is split over several files.",
    },
    OptionDoc {
        name: "roll_interval",
        kind: "text",
        choices: &[],
        required: false,
        default: None,
        doc: "Gather the epochs of this long ('5m') into one set of files, closed sooner once they hold max_rows_per_file rows; default: each checkpoint's epoch its own files.",
    },
];

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(ids: &[i64], days: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("dt", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(days.to_vec())),
            ],
        )
        .expect("batch")
    }

    #[test]
    fn rows_go_to_the_directory_of_their_partition_value() {
        let batches = [
            batch(&[1, 2, 3], &[Some("d1"), Some("d2"), Some("d1")]),
            batch(&[4, 5], &[None, Some("d2")]),
        ];
        let groups = by_partition(&batches, Some(1)).expect("groups");
        let rows: Vec<(Option<String>, usize)> = groups
            .iter()
            .map(|(k, b)| (k.clone(), b.iter().map(RecordBatch::num_rows).sum()))
            .collect();
        assert_eq!(
            rows,
            vec![(Some("d1".into()), 2), (Some("d2".into()), 2), (None, 1)]
        );
        let path = file_path(&Path::from("out/bids"), Some(("dt", None)), "abc", 7, 1);
        assert_eq!(
            path.as_ref(),
            "out/bids/dt=__HIVE_DEFAULT_PARTITION__/part-abc-000000000007-0001.parquet"
        );
        // A file a crash left half-written goes when the sink opens the directory.
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("dt=1")).expect("mkdir");
        std::fs::write(dir.path().join("dt=1/part-a-1-0.parquet#3"), b"half").expect("write");
        std::fs::write(dir.path().join("dt=1/part-a-1-0.parquet"), b"whole").expect("write");
        remove_unfinished(dir.path());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("dt=1"))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["part-a-1-0.parquet"]);
        // A value with a slash stays one directory.
        let path = file_path(&Path::default(), Some(("dt", Some("a/b"))), "abc", 7, 0);
        assert_eq!(path.parts().count(), 2, "{path}");
    }
}
