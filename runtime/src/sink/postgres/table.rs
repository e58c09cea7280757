//! The sink's table: its name as PostgreSQL folds it, the column types a view's Arrow
//! types become, the check that an existing table fits the view (or its creation), and
//! the statements that write it. Values travel as text arrays (one per column, Arrow's
//! own formatting) and are cast by PostgreSQL to the table's column types, so a table
//! with `numeric` or `varchar(20)` columns takes a view's `Float64` or `Utf8`.

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use tokio_postgres::Client;

/// A table or the progress table, quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableName {
    /// `"schema"."name"` or `"name"`.
    pub quoted: String,
}

impl TableName {
    /// `name` or `schema.name`, each part folded as PostgreSQL folds an unquoted
    /// identifier (to lower case) unless written in double quotes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<String> = split_name(text)?;
        if parts.is_empty() || parts.len() > 2 || parts.iter().any(String::is_empty) {
            return Err(format!(
                "table {text:?} is not a name or schema.name (quote a name with dots in it)"
            ));
        }
        Ok(Self {
            quoted: parts.iter().map(|p| quote(p)).collect::<Vec<_>>().join("."),
        })
    }
}

/// The parts of a dotted name: `"Mixed.Case"` stays as written, `Plain` folds to `plain`.
fn split_name(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(format!("table {text:?} has an unclosed quote")),
                }
            }
        } else {
            while let Some(&c) = chars.peek().filter(|c| **c != '.') {
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            None => return Ok(parts),
            Some(c) => return Err(format!("table {text:?}: unexpected {c:?} after a name")),
        }
    }
}

/// An identifier in double quotes.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The column type a view's column gets in a table the sink creates, or why the sink
/// cannot write it.
pub(super) fn column_type(data_type: &DataType) -> Result<String, String> {
    Ok(match data_type {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 => "bigint".into(),
        DataType::UInt64 => "numeric(20)".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => format!("numeric({p},{s})"),
        DataType::Boolean => "boolean".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamptz".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        other => return Err(format!("the postgres sink cannot write {other} columns")),
    })
}

/// Which PostgreSQL types take a value of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Whole numbers: they fit integer and fractional columns alike.
    Integer,
    /// Numbers with a fraction: `1.5` does not cast to an integer column.
    Fraction,
    Text,
    Bool,
    Time,
}

fn family_of_arrow(data_type: &DataType) -> Option<Family> {
    Some(match data_type {
        t if t.is_integer() => Family::Integer,
        t if t.is_numeric() => Family::Fraction,
        DataType::Boolean => Family::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Family::Text,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => Family::Time,
        _ => return None,
    })
}

/// `timestamp(3) without time zone`, `numeric(12,2)`: the type without its modifier.
fn without_modifier(type_name: &str) -> String {
    match (type_name.find('('), type_name.find(')')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{}", &type_name[..open], &type_name[close + 1..])
                .trim()
                .to_string()
        }
        _ => type_name.to_string(),
    }
}

fn family_of_pg(type_name: &str) -> Option<Family> {
    Some(match without_modifier(type_name).as_str() {
        "smallint" | "integer" | "bigint" => Family::Integer,
        "numeric" | "real" | "double precision" => Family::Fraction,
        "text" | "character varying" | "character" => Family::Text,
        "boolean" => Family::Bool,
        "timestamp without time zone" | "timestamp with time zone" | "date" => Family::Time,
        _ => return None,
    })
}

/// One column of the table as PostgreSQL describes it.
#[derive(Debug, Clone)]
pub(super) struct TableColumn {
    pub name: String,
    /// As `format_type` writes it: `bigint`, `character varying(20)`.
    pub type_name: String,
    pub not_null: bool,
    pub has_default: bool,
}

/// What the sink writes with: each view column's type in the table without its
/// modifier, in view order. The values are cast to it, then stored by the column's own
/// rules: an explicit cast to `varchar(5)` would cut a longer value short in silence,
/// where storing it is refused (a dead letter).
#[derive(Debug, Clone)]
pub(super) struct Fitted {
    pub column_types: Vec<String>,
}

/// Whether the table's columns take the view's rows: every view column is a column of
/// the table of a type its values cast to, every other table column may be left out,
/// and with a key, the key is the table's primary key or one of its unique indexes.
pub(super) fn fit(
    table: &str,
    schema: &SchemaRef,
    columns: &[TableColumn],
    key: &[String],
    unique_indexes: &[Vec<String>],
) -> Result<Fitted, String> {
    let mut column_types = Vec::new();
    for field in schema.fields() {
        let Some(column) = columns.iter().find(|c| c.name == *field.name()) else {
            return Err(format!(
                "table {table} has no column {:?} (its columns: {}); add it, or write to a \
                 new table the sink creates",
                field.name(),
                columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let fits = match (
            family_of_arrow(field.data_type()),
            family_of_pg(&column.type_name),
        ) {
            (Some(view), Some(table)) => {
                view == table
                    || table == Family::Text
                    || (view == Family::Integer && table == Family::Fraction)
            }
            _ => false,
        };
        if !fits {
            return Err(format!(
                "column {:?} is {} in the view but {} in table {table}",
                field.name(),
                field.data_type(),
                column.type_name
            ));
        }
        column_types.push(without_modifier(&column.type_name));
    }
    if let Some(required) = columns.iter().find(|c| {
        c.not_null && !c.has_default && schema.fields().iter().all(|f| *f.name() != c.name)
    }) {
        return Err(format!(
            "table {table} requires column {:?} (NOT NULL, no default), which the view has not",
            required.name
        ));
    }
    if !key.is_empty() {
        let mut wanted = key.to_vec();
        wanted.sort();
        let found = unique_indexes.iter().any(|index| {
            let mut index = index.clone();
            index.sort();
            index == wanted
        });
        if !found {
            return Err(format!(
                "table {table} has no primary key or unique index on ({}), which an upsert \
                 by key needs",
                key.join(", ")
            ));
        }
    }
    Ok(Fitted { column_types })
}

/// Read the table's columns and unique indexes; `None` when it does not exist.
pub(super) async fn describe(
    client: &Client,
    table: &TableName,
) -> Result<Option<(Vec<TableColumn>, Vec<Vec<String>>)>, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&table.quoted])
        .await?;
    let Some(oid): Option<u32> = row.get(0) else {
        return Ok(None);
    };
    let columns = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull, atthasdef \
             FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| TableColumn {
            name: r.get(0),
            type_name: r.get(1),
            not_null: r.get(2),
            has_default: r.get(3),
        })
        .collect();
    let indexes = client
        .query(
            "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a \
             ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indimmediate AND i.indpred IS NULL \
             GROUP BY i.indexrelid",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some((columns, indexes)))
}

/// `CREATE TABLE` for the view's columns, with the key as primary key.
pub(super) fn create_sql(table: &TableName, schema: &SchemaRef, key: &[String]) -> String {
    let mut columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            // Checked when the sink was made.
            let t = column_type(f.data_type()).unwrap_or_else(|_| "text".into());
            format!("{} {t}", quote(f.name()))
        })
        .collect();
    if !key.is_empty() {
        let key: Vec<String> = key.iter().map(|k| quote(k)).collect();
        columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS {} ({})",
        table.quoted,
        columns.join(", ")
    )
}

/// The progress table: per sink and lineage, the newest epoch the table holds.
pub(super) fn progress_sql(progress: &TableName) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (sink text NOT NULL, lineage text NOT NULL, \
         epoch bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (sink, lineage))",
        progress.quoted
    )
}

/// The statements an epoch is written with. Parameter `$i` is the text array of the
/// i-th column written; `unnest` turns the arrays back into rows.
#[derive(Debug, Clone)]
pub(super) struct Statements {
    /// Every view column, appended.
    pub insert: String,
    /// Every view column, the newest row of each key kept, inserted or updated.
    pub upsert: String,
    /// Parameters: the key columns of replaced rows, then of the new rows; deletes the
    /// keys of the first set not in the second.
    pub delete: String,
    /// Makes the sink's progress row when it has none (epoch 0), so that the lock below
    /// has a row to take even at a lineage's first epoch.
    pub make_progress: String,
    pub lock_progress: String,
    pub record_progress: String,
}

impl Statements {
    pub fn new(
        table: &TableName,
        progress: &TableName,
        schema: &SchemaRef,
        fitted: &Fitted,
        key: &[usize],
    ) -> Self {
        let names: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
        let n = names.len();
        let cast = |i: usize| format!("u.a{i}::{}", fitted.column_types[i]);
        let unnest = |columns: &[usize], from: usize| {
            let params: Vec<String> = (0..columns.len())
                .map(|p| format!("${}::text[]", from + p))
                .collect();
            let aliases: Vec<String> = columns.iter().map(|i| format!("a{i}")).collect();
            (params.join(", "), aliases.join(", "))
        };
        let all: Vec<usize> = (0..n).collect();
        let (params, aliases) = unnest(&all, 1);
        let casts: Vec<String> = all.iter().map(|&i| cast(i)).collect();
        let insert = format!(
            "INSERT INTO {} ({}) SELECT {} FROM unnest({params}) AS u({aliases})",
            table.quoted,
            names.join(", "),
            casts.join(", ")
        );
        let key_names: Vec<&str> = key.iter().map(|&i| names[i].as_str()).collect();
        let key_aliases: Vec<String> = key.iter().map(|i| format!("u.a{i}")).collect();
        let updates: Vec<String> = (0..n)
            .filter(|i| !key.contains(i))
            .map(|i| format!("{0} = EXCLUDED.{0}", names[i]))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_string()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        // DISTINCT ON keeps one row per key (a statement may not update a row twice):
        // the newest, by its place in the arrays.
        let upsert = format!(
            "INSERT INTO {} ({}) SELECT DISTINCT ON ({}) {} FROM unnest({params}) \
             WITH ORDINALITY AS u({aliases}, place) ORDER BY {}, u.place DESC \
             ON CONFLICT ({}) {on_conflict}",
            table.quoted,
            names.join(", "),
            key_aliases.join(", "),
            casts.join(", "),
            key_aliases.join(", "),
            key_names.join(", "),
        );
        let (gone_params, gone_aliases) = unnest(key, 1);
        let (kept_params, kept_aliases) = unnest(key, 1 + key.len());
        let key_casts: Vec<String> = key.iter().map(|&i| cast(i)).collect();
        let delete = format!(
            "DELETE FROM {} WHERE ({}) IN (SELECT {casts} FROM unnest({gone_params}) AS \
             u({gone_aliases}) EXCEPT SELECT {casts} FROM unnest({kept_params}) AS \
             u({kept_aliases}))",
            table.quoted,
            key_names.join(", "),
            casts = key_casts.join(", "),
        );
        Self {
            insert,
            upsert,
            delete,
            make_progress: format!(
                "INSERT INTO {} (sink, lineage, epoch) VALUES ($1, $2, 0) \
                 ON CONFLICT (sink, lineage) DO NOTHING",
                progress.quoted
            ),
            lock_progress: format!(
                "SELECT epoch FROM {} WHERE sink = $1 AND lineage = $2 FOR UPDATE",
                progress.quoted
            ),
            record_progress: format!(
                "INSERT INTO {} (sink, lineage, epoch) VALUES ($1, $2, $3) \
                 ON CONFLICT (sink, lineage) DO UPDATE SET epoch = EXCLUDED.epoch, \
                 committed_at = now()",
                progress.quoted
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn names_fold_as_postgres_folds_them() {
        let parsed = |t: &str| TableName::parse(t).map(|n| n.quoted);
        assert_eq!(parsed("Results"), Ok("\"results\"".into()));
        assert_eq!(parsed("app.Totals"), Ok("\"app\".\"totals\"".into()));
        assert_eq!(
            parsed("\"Mixed.Case\".\"Ta\"\"ble\""),
            Ok("\"Mixed.Case\".\"Ta\"\"ble\"".into())
        );
        assert!(parsed("a.b.c").is_err());
        assert!(parsed("\"open").is_err());
        assert!(parsed("").is_err());
    }

    fn view() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("price", DataType::Float64, true),
            Field::new("seller", DataType::Utf8, true),
        ]))
    }

    fn column(name: &str, type_name: &str) -> TableColumn {
        TableColumn {
            name: name.into(),
            type_name: type_name.into(),
            not_null: false,
            has_default: false,
        }
    }

    #[test]
    fn a_table_fits_when_its_columns_take_the_views_values() {
        let columns = [
            column("auction", "bigint"),
            column("price", "numeric(12,2)"),
            column("seller", "character varying(40)"),
            column("note", "text"),
        ];
        let fitted = fit(
            "t",
            &view(),
            &columns,
            &["auction".into()],
            &[vec!["auction".into()]],
        )
        .expect("fits");
        assert_eq!(fitted.column_types[1..3], ["numeric", "character varying"]);
        // A number fits a text column.
        let mut as_text = columns.clone();
        as_text[1] = column("price", "text");
        assert!(fit("t", &view(), &as_text, &[], &[]).is_ok());
    }

    #[test]
    fn a_table_that_does_not_fit_is_refused_with_the_reason() {
        let good = vec![
            column("auction", "bigint"),
            column("price", "double precision"),
            column("seller", "text"),
        ];
        let err = |columns: &[TableColumn], key: &[String], unique: &[Vec<String>]| {
            fit("t", &view(), columns, key, unique).expect_err("refused")
        };
        assert!(err(&good[..2], &[], &[]).contains("no column \"seller\""));
        let mut wrong = good.clone();
        wrong[2] = column("seller", "jsonb");
        assert!(err(&wrong, &[], &[]).contains("Utf8 in the view but jsonb"));
        let mut text_in_number = good.clone();
        text_in_number[0] = column("auction", "text");
        text_in_number[2] = column("seller", "integer");
        assert!(err(&text_in_number, &[], &[]).contains("\"seller\""));
        let mut required = good.clone();
        required.push(TableColumn {
            not_null: true,
            ..column("id", "bigint")
        });
        assert!(err(&required, &[], &[]).contains("requires column \"id\""));
        assert!(
            err(&good, &["auction".into()], &[vec!["seller".into()]])
                .contains("no primary key or unique index on (auction)")
        );
        // A price with a fraction cannot go into an integer column.
        let mut whole = good.clone();
        whole[1] = column("price", "bigint");
        assert!(err(&whole, &[], &[]).contains("Float64 in the view but bigint"));
    }

    #[test]
    fn the_upsert_keeps_the_newest_row_of_a_key_and_updates_the_other_columns() {
        let fitted = Fitted {
            column_types: vec!["bigint".into(), "double precision".into(), "text".into()],
        };
        let table = TableName::parse("t").expect("name");
        let progress = TableName::parse("p").expect("name");
        let s = Statements::new(&table, &progress, &view(), &fitted, &[0]);
        assert_eq!(
            s.upsert,
            "INSERT INTO \"t\" (\"auction\", \"price\", \"seller\") SELECT DISTINCT ON (u.a0) \
             u.a0::bigint, u.a1::double precision, u.a2::text FROM unnest($1::text[], \
             $2::text[], $3::text[]) WITH ORDINALITY AS u(a0, a1, a2, place) ORDER BY u.a0, \
             u.place DESC ON CONFLICT (\"auction\") DO UPDATE SET \"price\" = \
             EXCLUDED.\"price\", \"seller\" = EXCLUDED.\"seller\""
        );
        assert_eq!(
            s.delete,
            "DELETE FROM \"t\" WHERE (\"auction\") IN (SELECT u.a0::bigint FROM \
             unnest($1::text[]) AS u(a0) EXCEPT SELECT u.a0::bigint FROM unnest($2::text[]) \
             AS u(a0))"
        );
    }
}
