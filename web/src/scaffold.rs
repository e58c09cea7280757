//! `weir plugin new NAME`: a plugin crate that builds as is, with one scalar function,
//! one transform and their unit tests, ready for `cargo build --target wasm32-unknown-unknown`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where weir-sdk is: `--sdk`, else the sdk/ of the checkout this binary was built from.
pub fn default_sdk() -> Option<PathBuf> {
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    built_from
        .join("Cargo.toml")
        .exists()
        .then(|| built_from.canonicalize().unwrap_or(built_from))
}

/// Write the crate `dir/name`; refuses to overwrite anything.
pub fn new_plugin(name: &str, dir: &Path, sdk: Option<PathBuf>) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        bail!("plugin name {name:?}: use lower-case letters, digits and _, starting with a letter");
    }
    let sdk = sdk
        .or_else(default_sdk)
        .context("cannot find weir-sdk: pass --sdk PATH/TO/weir/sdk")?;
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let root = dir.join(name);
    if root.exists() {
        bail!(
            "{} already exists; choose another name or directory",
            root.display()
        );
    }
    std::fs::create_dir_all(root.join("src"))
        .with_context(|| format!("cannot create {}", root.display()))?;
    let files = [
        ("Cargo.toml", cargo_toml(name, &sdk)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        ("README.md", README.replace("{name}", name)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        std::fs::write(root.join(file), text)
            .with_context(|| format!("cannot write {}", root.join(file).display()))?;
    }
    Ok(root)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the .wasm module; rlib: native unit tests.
crate-type = ["cdylib", "rlib"]

[dependencies]
weir-sdk = {{ path = "{sdk}" }}

[profile.release]
strip = true
lto = true
codegen-units = 4

# A crate of its own, not part of an enclosing workspace.
[workspace]
"#,
        sdk = sdk.display()
    )
}

const LIB_RS: &str = r#"//! The {name} weir plugin. Build: cargo build --release --target wasm32-unknown-unknown
//! Upload: curl --data-binary @target/wasm32-unknown-unknown/release/{name}.wasm \
//!     'http://127.0.0.1:8080/api/v1/plugins?name={name}'

use std::sync::Arc;

use weir_sdk::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use weir_sdk::arrow::datatypes::DataType;
use weir_sdk::{Output, Plugin, PluginError, downcast, expect_args};

/// A scalar function, callable in SQL as `double_it(x)`: one array in, one array out.
pub fn double_it(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    let [x] = expect_args::<1>(args)?;
    let x = downcast::<Int64Array>(x)?;
    let doubled: Int64Array = x.iter().map(|v| v.map(|v| v.saturating_mul(2))).collect();
    Ok(Arc::new(doubled))
}

/// A transform, used as `CREATE STREAM s AS TRANSFORM source USING PLUGIN '{name}'`:
/// a batch in, a batch out. This one upper-cases every string column.
pub fn shout(batch: RecordBatch) -> Result<RecordBatch, PluginError> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.as_any().downcast_ref::<StringArray>() {
            Some(s) => Arc::new(s.iter().map(|v| v.map(str::to_uppercase)).collect::<StringArray>()) as ArrayRef,
            None => c.clone(),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

pub fn plugin() -> Plugin {
    Plugin::new("{name}", env!("CARGO_PKG_VERSION"))
        .function("double_it", &[DataType::Int64], DataType::Int64, double_it)
        .transform("shout", Output::SameAsInput, shout)
}

weir_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::arrow::array::Array;

    #[test]
    fn doubles_and_keeps_nulls() {
        let x: ArrayRef = Arc::new(Int64Array::from(vec![Some(2), None]));
        let out = double_it(&[x]).expect("runs");
        let out = out.as_any().downcast_ref::<Int64Array>().expect("Int64");
        assert_eq!(out.value(0), 4);
        assert!(out.is_null(1));
    }

    #[test]
    fn upper_cases_strings() {
        let s: ArrayRef = Arc::new(StringArray::from(vec!["hi"]));
        let batch = RecordBatch::try_from_iter([("s", s)]).expect("batch");
        let out = shout(batch).expect("runs");
        let out = out.column(0).as_any().downcast_ref::<StringArray>().expect("Utf8");
        assert_eq!(out.value(0), "HI");
    }
}
"#;

const README: &str = r#"# {name}

A weir plugin (see weir's docs/PLUGINS.md and docs/PLUGIN_ABI.md).

    cargo test                                                # the logic, natively
    rustup target add wasm32-unknown-unknown                  # once
    cargo build --release --target wasm32-unknown-unknown
    curl --data-binary @target/wasm32-unknown-unknown/release/{name}.wasm \
      'http://127.0.0.1:8080/api/v1/plugins?name={name}'

Then in SQL: `SELECT double_it(price) FROM ...`, or
`CREATE STREAM s AS TRANSFORM source USING PLUGIN '{name}'`.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_crate_and_never_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sdk = default_sdk().expect("built from a checkout");
        let root = new_plugin("my_plugin", dir.path(), Some(sdk.clone())).expect("scaffolds");
        let cargo = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
        assert!(cargo.contains("name = \"my_plugin\""));
        assert!(cargo.contains(&sdk.display().to_string()));
        let lib = std::fs::read_to_string(root.join("src/lib.rs")).expect("lib.rs");
        assert!(lib.contains("Plugin::new(\"my_plugin\""));
        assert!(new_plugin("my_plugin", dir.path(), Some(sdk.clone())).is_err());
        assert!(new_plugin("My Plugin", dir.path(), Some(sdk)).is_err());
    }
}
