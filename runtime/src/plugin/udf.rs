//! A plugin's scalar function as a DataFusion scalar UDF: one guest call per batch.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::descriptor::FunctionSpec;
use super::registry::PluginEntry;

/// `name(args) -> returns`, served by the current version of a plugin.
#[derive(Debug)]
pub struct PluginFunction {
    plugin: Arc<PluginEntry>,
    name: String,
    signature: Signature,
    returns: DataType,
    /// `arg0, arg1, ...` of the declared types, built once: the signature is exact, so
    /// every batch has these types (and the IPC encoder sees the same schema each time).
    args: SchemaRef,
}

impl std::fmt::Debug for PluginEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEntry")
            .field("name", &self.name)
            .finish()
    }
}

impl PluginFunction {
    pub fn udf(plugin: Arc<PluginEntry>, spec: &FunctionSpec) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            plugin,
            name: spec.name.clone(),
            // Volatile: never folded at plan time, so planning never runs guest code.
            signature: Signature::exact(spec.args.clone(), Volatility::Volatile),
            returns: spec.returns.clone(),
            args: Arc::new(Schema::new(
                spec.args
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Field::new(format!("arg{i}"), t.clone(), true))
                    .collect::<Vec<_>>(),
            )),
        })
    }

    pub fn plugin_name(&self) -> &str {
        &self.plugin.name
    }
}

impl PartialEq for PluginFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.plugin, &other.plugin)
    }
}

impl Eq for PluginFunction {}

impl Hash for PluginFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.plugin.name.hash(state);
    }
}

impl ScalarUDFImpl for PluginFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let columns = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.args.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let result = self
            .plugin
            .call_function(&self.name, batch, &self.returns)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(ColumnarValue::Array(result))
    }
}
