//! The plugin's self-description: a small JSON document (docs/PLUGIN_ABI.md), written
//! by hand so plugins need no JSON library.

use std::fmt::Write;

use arrow_schema::Field;

use crate::{ABI_VERSION, Output, Plugin};

/// The descriptor `weir_describe` returns.
pub fn describe_json(plugin: &Plugin) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"{{"abi":{ABI_VERSION},"name":{},"version":{},"functions":["#,
        quote(&plugin.name),
        quote(&plugin.version)
    );
    for (i, f) in plugin.functions.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let args: Vec<String> = f.args.iter().map(|t| quote(&t.to_string())).collect();
        let _ = write!(
            s,
            r#"{{"name":{},"args":[{}],"returns":{}}}"#,
            quote(&f.name),
            args.join(","),
            quote(&f.returns.to_string())
        );
    }
    s.push_str(r#"],"transforms":["#);
    for (i, t) in plugin.transforms.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let output = match &t.output {
            Output::SameAsInput => quote("same_as_input"),
            Output::Append(fields) => format!(r#"{{"append":{}}}"#, fields_json(fields)),
            Output::Fields(fields) => format!(r#"{{"fields":{}}}"#, fields_json(fields)),
        };
        let _ = write!(s, r#"{{"name":{},"output":{output}}}"#, quote(&t.name));
    }
    s.push_str("]}");
    s
}

fn fields_json(fields: &[Field]) -> String {
    let items: Vec<String> = fields
        .iter()
        .map(|f| {
            format!(
                r#"{{"name":{},"type":{},"nullable":{}}}"#,
                quote(f.name()),
                quote(&f.data_type().to_string()),
                f.is_nullable()
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::DataType;

    #[test]
    fn descriptor_lists_functions_and_transforms() {
        let plugin = Plugin::new("p\"x", "1.0")
            .function(
                "f",
                &[DataType::Int64, DataType::Utf8],
                DataType::Float64,
                |a| Ok(a[0].clone()),
            )
            .transform(
                "t",
                Output::Append(vec![Field::new("c", DataType::Utf8, true)]),
                Ok,
            );
        assert_eq!(
            describe_json(&plugin),
            r#"{"abi":1,"name":"p\"x","version":"1.0","functions":[{"name":"f","args":["Int64","Utf8"],"returns":"Float64"}],"transforms":[{"name":"t","output":{"append":[{"name":"c","type":"Utf8","nullable":true}]}}]}"#
        );
    }
}
