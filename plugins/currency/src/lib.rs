//! Nexmark q1's conversion from dollars to euros (`0.908 * price`) as a plugin function.

use std::sync::Arc;

use weir_sdk::arrow::array::types::Float64Type;
use weir_sdk::arrow::array::{ArrayRef, Int64Array};
use weir_sdk::arrow::datatypes::DataType;
use weir_sdk::{Plugin, PluginError, downcast, expect_args};

/// Dollars to euros at Nexmark's fixed rate; NULL stays NULL.
pub fn to_eur(args: &[ArrayRef]) -> Result<ArrayRef, PluginError> {
    let [price] = expect_args::<1>(args)?;
    let price = downcast::<Int64Array>(price)?;
    Ok(Arc::new(
        price.unary::<_, Float64Type>(|p| 0.908 * p as f64),
    ))
}

pub fn plugin() -> Plugin {
    Plugin::new("currency", env!("CARGO_PKG_VERSION")).function(
        "to_eur",
        &[DataType::Int64],
        DataType::Float64,
        to_eur,
    )
}

weir_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::arrow::array::{Array, Float64Array};

    #[test]
    fn converts_and_keeps_nulls() {
        let prices: ArrayRef = Arc::new(Int64Array::from(vec![Some(1000), None, Some(-5)]));
        let eur = to_eur(&[prices]).expect("converts");
        let eur = eur.as_any().downcast_ref::<Float64Array>().expect("f64");
        assert_eq!(eur.value(0), 908.0);
        assert!(eur.is_null(1));
        assert_eq!(eur.value(2), 0.908 * -5.0);
    }

    #[test]
    fn refuses_the_wrong_argument_type() {
        let text: ArrayRef = Arc::new(weir_sdk::arrow::array::StringArray::from(vec!["1"]));
        let err = to_eur(&[text]).expect_err("wrong type");
        assert!(err.0.contains("Utf8"), "{err}");
    }
}
