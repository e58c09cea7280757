//! weir-sdk: what a weir plugin author links.
//!
//! A plugin is a WebAssembly module that receives whole Arrow record batches, one call
//! per batch (docs/PLUGIN_ABI.md). With this crate a plugin is plain Rust: functions
//! over Arrow arrays (scalar functions, callable from SQL) or over a `RecordBatch`
//! (transforms, which turn a stream into a derived stream), listed in a [`Plugin`] and
//! exported with [`export!`]:
//!
//! ```
//! use std::sync::Arc;
//! use weir_sdk::arrow::array::{ArrayRef, Float64Array, Int64Array};
//! use weir_sdk::arrow::datatypes::DataType;
//! use weir_sdk::{Plugin, PluginError, expect_args};
//!
//! fn to_eur(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
//!     let [price] = expect_args::<1>(args)?;
//!     let price = weir_sdk::downcast::<Int64Array>(price)?;
//!     let eur: Float64Array = price.iter().map(|p| p.map(|p| p as f64 * 0.908)).collect();
//!     Ok(Arc::new(eur))
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("currency", "1.0.0").function("to_eur", &[DataType::Int64], DataType::Float64, to_eur)
//! }
//!
//! weir_sdk::export!(plugin);
//! # fn main() {}
//! ```
//!
//! The raw exports exist only on `wasm32`; natively the same functions are ordinary
//! Rust, so plugin logic is unit-tested with `cargo test`. [`Plugin::call`] runs the
//! whole ABI path (Arrow IPC in, Arrow IPC out) natively too.

mod describe;
pub mod ipc;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod abi;

use std::sync::Arc;

pub use arrow_array;
pub use arrow_schema;

/// The Arrow crates a plugin needs, under one name.
pub mod arrow {
    pub use arrow_array as array;
    pub use arrow_buffer as buffer;
    pub use arrow_schema as datatypes;
    pub use arrow_schema::ArrowError as error;
}

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field};

pub use describe::describe_json;

/// The plugin ABI version this SDK speaks. The host refuses modules of another version.
pub const ABI_VERSION: u32 = 1;

/// What a plugin function returns when it cannot produce a result; the host puts the
/// batch in the dead-letter store with this message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError(pub String);

impl PluginError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PluginError {}

impl From<arrow_schema::ArrowError> for PluginError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        Self(e.to_string())
    }
}

/// A scalar function body: one array per argument in, one array of the same length out.
pub type ScalarBody = fn(&[ArrayRef]) -> Result<ArrayRef, PluginError>;
/// A transform body: a batch in, a batch of the declared output schema out.
pub type TransformBody = fn(RecordBatch) -> Result<RecordBatch, PluginError>;

/// A scalar function a plugin exports (callable anywhere in SQL).
#[derive(Debug, Clone)]
pub struct ScalarFunction {
    pub name: String,
    pub args: Vec<DataType>,
    pub returns: DataType,
    pub body: ScalarBody,
}

/// What a transform's output looks like.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The same columns as the input (for example a redaction that masks values).
    SameAsInput,
    /// The input's columns followed by these (for example an enrichment).
    Append(Vec<Field>),
    /// Exactly these columns, whatever the input.
    Fields(Vec<Field>),
}

/// A batch transform a plugin exports (turns a stream into a derived stream).
#[derive(Debug, Clone)]
pub struct Transform {
    pub name: String,
    pub output: Output,
    pub body: TransformBody,
}

/// Which export table a call addresses (the `kind` argument of `weir_call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Function = 0,
    Transform = 1,
}

/// Everything a plugin exports.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub name: String,
    pub version: String,
    pub functions: Vec<ScalarFunction>,
    pub transforms: Vec<Transform>,
}

impl Plugin {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            functions: Vec::new(),
            transforms: Vec::new(),
        }
    }

    /// Export a scalar function with its Arrow argument and result types.
    pub fn function(
        mut self,
        name: impl Into<String>,
        args: &[DataType],
        returns: DataType,
        body: ScalarBody,
    ) -> Self {
        self.functions.push(ScalarFunction {
            name: name.into(),
            args: args.to_vec(),
            returns,
            body,
        });
        self
    }

    /// Export a batch transform with the shape of its output.
    pub fn transform(
        mut self,
        name: impl Into<String>,
        output: Output,
        body: TransformBody,
    ) -> Self {
        self.transforms.push(Transform {
            name: name.into(),
            output,
            body,
        });
        self
    }

    /// One call as the host makes it: Arrow IPC stream in, Arrow IPC stream out.
    pub fn call(&self, kind: Kind, index: usize, input: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.call_buffer(kind, index, arrow_buffer::Buffer::from(input))
    }

    /// [`Plugin::call`] on a buffer the plugin owns (decoded without copying).
    pub fn call_buffer(
        &self,
        kind: Kind,
        index: usize,
        input: arrow_buffer::Buffer,
    ) -> Result<Vec<u8>, PluginError> {
        let batch = ipc::read_one(input)?;
        let output = match kind {
            Kind::Function => {
                let f = self
                    .functions
                    .get(index)
                    .ok_or_else(|| PluginError(format!("no function number {index}")))?;
                let result = (f.body)(batch.columns())?;
                if result.len() != batch.num_rows() {
                    return Err(PluginError(format!(
                        "{} returned {} values for {} rows",
                        f.name,
                        result.len(),
                        batch.num_rows()
                    )));
                }
                let field = Field::new(&f.name, result.data_type().clone(), true);
                RecordBatch::try_new(
                    Arc::new(arrow_schema::Schema::new(vec![field])),
                    vec![result],
                )?
            }
            Kind::Transform => {
                let t = self
                    .transforms
                    .get(index)
                    .ok_or_else(|| PluginError(format!("no transform number {index}")))?;
                (t.body)(batch)?
            }
        };
        ipc::write_one(&output)
    }
}

/// The arguments of a scalar function as a fixed-size array, or an error naming the
/// count: `let [a, b] = expect_args::<2>(args)?;`
pub fn expect_args<const N: usize>(args: &[ArrayRef]) -> Result<&[ArrayRef; N], PluginError> {
    args.try_into()
        .map_err(|_| PluginError(format!("expected {N} arguments, got {}", args.len())))
}

/// Downcast an argument to its concrete array type, or an error naming both types.
pub fn downcast<T: Array + 'static>(array: &ArrayRef) -> Result<&T, PluginError> {
    array.as_any().downcast_ref::<T>().ok_or_else(|| {
        PluginError(format!(
            "unexpected argument type {} (wanted {})",
            array.data_type(),
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("?")
        ))
    })
}

/// Generate the raw exports of the ABI for a function that builds the [`Plugin`].
/// On targets other than wasm32 this expands to nothing.
#[macro_export]
macro_rules! export {
    ($plugin:path) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            #[unsafe(no_mangle)]
            pub extern "C" fn weir_abi_version() -> i32 {
                $crate::ABI_VERSION as i32
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn weir_alloc(size: i32) -> i32 {
                $crate::abi::alloc(size)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn weir_free(ptr: i32, size: i32) {
                $crate::abi::free(ptr, size)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn weir_describe() -> i64 {
                $crate::abi::describe($plugin)
            }
            #[unsafe(no_mangle)]
            pub extern "C" fn weir_call(kind: i32, index: i32, ptr: i32, len: i32) -> i64 {
                $crate::abi::call($plugin, kind, index, ptr, len)
            }
        };
    };
}

/// Log a line through the host (tagged with the plugin, rate-limited). Natively it
/// goes to standard error so unit tests show it.
pub fn log(message: &str) {
    #[cfg(target_arch = "wasm32")]
    abi::log(message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("{message}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    fn double(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
        let [x] = expect_args::<1>(args)?;
        let x = downcast::<Int64Array>(x)?;
        Ok(Arc::new(
            x.iter().map(|v| v.map(|v| v * 2)).collect::<Int64Array>(),
        ))
    }

    #[test]
    fn a_call_round_trips_through_arrow_ipc() {
        let plugin =
            Plugin::new("p", "1").function("double", &[DataType::Int64], DataType::Int64, double);
        let x: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(-4)]));
        let input = ipc::write_one(&RecordBatch::try_from_iter([("arg0", x)]).expect("batch"))
            .expect("encodes");
        let output = plugin.call(Kind::Function, 0, &input).expect("calls");
        let batch = ipc::read_one(arrow_buffer::Buffer::from(output.as_slice())).expect("decodes");
        let out = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("Int64");
        assert_eq!(out, &Int64Array::from(vec![Some(2), None, Some(-8)]));
        let text: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
        let input = ipc::write_one(&RecordBatch::try_from_iter([("arg0", text)]).expect("batch"))
            .expect("encodes");
        let err = plugin
            .call(Kind::Function, 0, &input)
            .expect_err("wrong type");
        assert!(err.0.contains("unexpected argument type Utf8"), "{err}");
        assert!(
            plugin.call(Kind::Transform, 0, &input).is_err(),
            "no transform 0"
        );
        assert!(plugin.call(Kind::Function, 0, b"garbage").is_err());
    }
}
