//! Enrichment as a batch transform: the `url` column's site (host, or host plus first
//! path segment) is looked up in a table compiled into the plugin, and the category is
//! appended as a `site_category` column (NULL when the site is unknown).

use std::sync::Arc;

use weir_sdk::arrow::array::{ArrayRef, RecordBatch, StringArray};
use weir_sdk::arrow::datatypes::{DataType, Field, Schema};
use weir_sdk::{Output, Plugin, PluginError, downcast};

/// Site -> category, sorted by site for binary search.
const CATEGORIES: &[(&str, &str)] = &[
    ("amazon.com", "shopping"),
    ("bbc.co.uk", "news"),
    ("ebay.com", "shopping"),
    ("github.com", "technology"),
    ("google.com", "search"),
    ("nytimes.com", "news"),
    ("wikipedia.org", "reference"),
    ("www.nexmark.com/apple", "technology"),
    ("www.nexmark.com/baidu", "search"),
    ("www.nexmark.com/faceb", "social"),
    ("www.nexmark.com/googl", "search"),
    ("youtube.com", "video"),
];

fn lookup(key: &str) -> Option<&'static str> {
    CATEGORIES
        .binary_search_by(|(site, _)| site.cmp(&key))
        .ok()
        .map(|i| CATEGORIES[i].1)
}

/// The category of a URL: host plus first path segment, then the host and each of its
/// parent domains (`shop.ebay.com` falls back to `ebay.com`).
pub fn categorize_url(url: &str) -> Option<&'static str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host_port = &rest[..end];
    let host = host_port
        .split(':')
        .next()
        .unwrap_or(host_port)
        .to_ascii_lowercase();
    let path = &rest[end..];
    if let Some(segment) = path
        .strip_prefix('/')
        .and_then(|p| p.split(['/', '?', '#']).next())
        && !segment.is_empty()
        && let Some(c) = lookup(&format!("{host}/{segment}"))
    {
        return Some(c);
    }
    let mut domain = host.as_str();
    loop {
        if let Some(c) = lookup(domain) {
            return Some(c);
        }
        match domain.split_once('.') {
            Some((_, parent)) if parent.contains('.') => domain = parent,
            _ => return None,
        }
    }
}

pub fn categorize(batch: RecordBatch) -> Result<RecordBatch, PluginError> {
    let schema = batch.schema();
    let index = schema
        .index_of("url")
        .map_err(|_| PluginError::new("categorize needs a url column"))?;
    let urls = downcast::<StringArray>(batch.column(index))?;
    let categories: StringArray = urls.iter().map(|u| u.and_then(categorize_url)).collect();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("site_category", DataType::Utf8, true));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(categories));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

pub fn plugin() -> Plugin {
    Plugin::new("enrich", env!("CARGO_PKG_VERSION")).transform(
        "categorize",
        Output::Append(vec![Field::new("site_category", DataType::Utf8, true)]),
        categorize,
    )
}

weir_sdk::export!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::arrow::array::Array;

    #[test]
    fn the_table_is_sorted() {
        assert!(CATEGORIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn categorizes_by_site_then_domain() {
        assert_eq!(
            categorize_url("https://www.nexmark.com/faceb/item.htm?query=1"),
            Some("social")
        );
        assert_eq!(
            categorize_url("https://shop.ebay.com:8443/x"),
            Some("shopping")
        );
        assert_eq!(categorize_url("http://GitHub.com"), Some("technology"));
        assert_eq!(
            categorize_url("https://www.nexmark.com/zzzzz/item.htm"),
            None
        );
        assert_eq!(categorize_url("not a url"), None);
    }

    #[test]
    fn appends_a_nullable_category_column() {
        let batch = RecordBatch::try_from_iter([(
            "url",
            Arc::new(StringArray::from(vec![Some("https://youtube.com/w"), None])) as ArrayRef,
        )])
        .expect("batch");
        let out = categorize(batch).expect("enriches");
        assert_eq!(out.schema().field(1).name(), "site_category");
        let c = out
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        assert_eq!(c.value(0), "video");
        assert!(c.is_null(1));
        let err =
            categorize(RecordBatch::new_empty(Arc::new(Schema::empty()))).expect_err("no url");
        assert!(err.0.contains("url column"));
    }
}
