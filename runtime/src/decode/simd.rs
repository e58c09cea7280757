//! The fast path of JSON decoding: records taken by the flat scanner ([`flat`]), or else
//! parsed by simd-json (SIMD, 2.5 times arrow-json's speed on Nexmark bids, see
//! docs/PERFORMANCE.md), straight into Arrow builders, for schemas of plain columns
//! (integers, floats, booleans, strings, millisecond timestamps).
//!
//! It takes only what it knows arrow-json decodes the same way: a record that is not
//! one object, a value of another JSON type than its column's (a number as a string, a
//! float for an integer), a repeated key or a null in a NOT NULL column makes it give
//! the whole batch back, and arrow-json decides (and words the reasons). So a record is
//! accepted or refused exactly as before; only the common case is faster.

use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use simd_json::{Node, StaticNode, Tape};

use super::Columns;
use super::builders::{Column, Kind, Value};
use super::flat::{self, Token};

/// How each column of a schema the fast path can decode takes its values.
#[derive(Debug)]
pub struct SimdPlan {
    schema: SchemaRef,
    /// The columns' names, as the keys are compared with them.
    names: Vec<Box<[u8]>>,
    kinds: Vec<Kind>,
    nullable: Vec<bool>,
    /// Whether no name holds a quote, a backslash or a control byte, so that a key can be
    /// matched with a name as it stands in the record (see [`flat::scan_object`]).
    plain_names: bool,
    /// Whether a column is a float (see [`long_number`]).
    has_floats: bool,
    /// Bodies still to decode record by record before [`SimdPlan::decode_lines`] tries
    /// again (see there).
    lines_backoff: AtomicUsize,
    /// Each text column's bytes per row in the last batch, to size the next one's
    /// buffer (growing it by doubling cost copies and page faults).
    text_bytes_per_row: Vec<AtomicUsize>,
    /// Bytes per record of the last body of lines that had any (0: none yet), to size
    /// the next.
    bytes_per_row: AtomicUsize,
}

impl Clone for SimdPlan {
    fn clone(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            names: self.names.clone(),
            plain_names: self.plain_names,
            kinds: self.kinds.clone(),
            nullable: self.nullable.clone(),
            has_floats: self.has_floats,
            text_bytes_per_row: text_hints(&self.kinds),
            lines_backoff: AtomicUsize::new(0),
            bytes_per_row: AtomicUsize::new(0),
        }
    }
}

/// What [`SimdPlan::decode`]'s caller already knows of its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Nothing: each record is checked on its own.
    No,
    /// The body holding every record is [`plain`] and has no long number.
    WholeBody,
}

/// See [`SimdPlan::decode_lines`].
const LINES_BACKOFF: usize = 64;

/// The most rows a body's columns are first sized for by an estimate (see
/// `SimdPlan::rows_in`); more grow them.
const ROWS_SIZED: usize = 1 << 16;

fn text_hints(kinds: &[Kind]) -> Vec<AtomicUsize> {
    kinds.iter().map(|_| AtomicUsize::new(16)).collect()
}

impl SimdPlan {
    /// A plan for `schema`, if every column is of a type the fast path decodes.
    pub fn new(schema: &SchemaRef) -> Option<Self> {
        let kinds = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Some(Kind::Int),
                DataType::Float64 => Some(Kind::Float),
                DataType::Boolean => Some(Kind::Bool),
                DataType::Utf8 => Some(Kind::Text),
                DataType::Timestamp(TimeUnit::Millisecond, None) => Some(Kind::Millis),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        // Keys are looked up by name: with two columns of one name, arrow-json decides.
        let mut names: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
        Some(Self {
            schema: schema.clone(),
            names: (schema.fields().iter())
                .map(|f| f.name().as_bytes().into())
                .collect(),
            plain_names: (schema.fields().iter()).all(|f| {
                f.name()
                    .bytes()
                    .all(|b| b >= 0x20 && b != b'"' && b != b'\\')
            }),
            has_floats: kinds.iter().any(|k| matches!(k, Kind::Float)),
            text_bytes_per_row: text_hints(&kinds),
            lines_backoff: AtomicUsize::new(0),
            bytes_per_row: AtomicUsize::new(0),
            kinds,
            nullable: schema.fields().iter().map(|f| f.is_nullable()).collect(),
        })
    }

    /// Whether a body's records can skip the per-record checks: one pass over the whole
    /// body costs less than a pass per short record.
    pub fn check_body(&self, body: &[u8]) -> Checked {
        if plain(body) && !(self.has_floats && long_number(body)) {
            Checked::WholeBody
        } else {
            Checked::No
        }
    }

    /// Every record as a row, or `None` if any record needs arrow-json's judgement.
    /// Only the columns in `wanted` are built; the others are checked alike but hold
    /// placeholders (zeros, empty strings).
    pub fn decode<'r>(
        &self,
        records: &[(usize, &'r [u8])],
        checked: Checked,
        wanted: Columns,
    ) -> Option<RecordBatch> {
        let record_bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
        let mut columns = self.columns(records.len(), record_bytes, wanted);
        let mut buffers = simd_json::Buffers::default();
        let mut scratch = Vec::new();
        // One tape for every record: emptied (`reset`) before the record it borrows
        // from is overwritten, so no record allocates one of its own.
        let mut spare: Tape<'static> = Tape(Vec::new());
        let mut seen = vec![false; columns.len()];
        let mut flat_values: Vec<Option<Value<'r>>> = vec![None; columns.len()];
        for (_, record) in records {
            if record.first() != Some(&b'{') {
                return None;
            }
            // The common shape first; simd-json for what the flat scanner gives back.
            if self.scan_flat(record, &mut flat_values) {
                append_row(&mut columns, &mut flat_values)?;
                continue;
            }
            if checked == Checked::No
                && (!plain(record) || (self.has_floats && long_number(record)))
            {
                return None;
            }
            scratch.clear();
            scratch.extend_from_slice(record);
            let mut tape = std::mem::replace(&mut spare, Tape(Vec::new()));
            simd_json::fill_tape(&mut scratch, &mut buffers, &mut tape).ok()?;
            let nodes = &tape.0;
            let Some(&Node::Object { len, count }) = nodes.first() else {
                return None;
            };
            if count + 1 != nodes.len() {
                return None;
            }
            seen.fill(false);
            let mut at = 1;
            // Records mostly list their keys in one order: try the column after the
            // last one matched before searching.
            let mut next = 0;
            for _ in 0..len {
                let Node::String(key) = nodes.get(at)? else {
                    return None;
                };
                let value = nodes.get(at + 1)?;
                if let Some(c) = column_of(&self.names, key.as_bytes(), next) {
                    next = c + 1;
                    if seen[c] {
                        return None;
                    }
                    seen[c] = true;
                    columns[c].append(value_of(self.kinds[c], value, self.nullable[c])?);
                }
                at += 1 + nodes_of(value);
            }
            for (c, column) in columns.iter_mut().enumerate() {
                if !seen[c] {
                    if !self.nullable[c] {
                        return None;
                    }
                    column.null();
                }
            }
            spare = tape.reset();
        }
        self.finish(columns, records.len())
    }

    /// Every line of `body` as a row, if every non-blank line is one record of the flat
    /// shape ([`flat::scan_object`]) with only spaces after it: lines found as they are
    /// scanned, where splitting the body first cost a search per line. A body that is one
    /// JSON array of such records gives its elements, found the same way. `None` otherwise
    /// (the caller then splits the body and decodes it record by record); after a body
    /// that was not, the next [`LINES_BACKOFF`] bodies go that way at once, so a source
    /// whose records are often of another shape does not scan each body twice.
    pub fn decode_lines(&self, body: &[u8], wanted: Columns) -> Option<RecordBatch> {
        let backoff = self.lines_backoff.load(Ordering::Relaxed);
        if backoff > 0 {
            self.lines_backoff.store(backoff - 1, Ordering::Relaxed);
            return None;
        }
        let batch = self.scan_lines(body, wanted);
        if batch.is_none() {
            self.lines_backoff.store(LINES_BACKOFF, Ordering::Relaxed);
        }
        batch
    }

    fn scan_lines(&self, body: &[u8], wanted: Columns) -> Option<RecordBatch> {
        // A column is marked in a word as its value is appended (see `scan_row`).
        if self.kinds.len() > 64 || !flat::checked_lines(body) {
            return None;
        }
        let start = blanks_from(body, 0);
        if body.get(start) == Some(&b'[') {
            return self.scan_array(body, start + 1, wanted);
        }
        let mut columns = self.columns(self.rows_in(body), body.len(), wanted);
        let (mut at, mut rows) = (0, 0);
        loop {
            // Every `\r` is a line end's, before a `\n` ([`flat::checked_lines`]).
            while matches!(body.get(at), Some(b' ' | b'\n' | b'\r')) {
                at += 1;
            }
            if at == body.len() {
                break;
            }
            at += self.scan_row(&body[at..], &mut columns)?;
            while body.get(at) == Some(&b' ') {
                at += 1;
            }
            match body.get(at) {
                None => {}
                Some(b'\n') => at += 1,
                // Always before a `\n` ([`flat::checked_lines`]).
                Some(b'\r') => at += 2,
                Some(_) => return None,
            }
            rows += 1;
        }
        if let Some(per_row) = body.len().checked_div(rows) {
            (self.bytes_per_row).store(per_row, Ordering::Relaxed);
        }
        self.finish(columns, rows)
    }

    /// The elements of the JSON array whose `[` is just before `at` in `body` (already
    /// [`flat::checked_lines`]), each a record of the flat shape, with nothing but
    /// blanks after the array.
    // Kept out of `scan_lines`: inlined there, the lines path ran 3 to 5% slower.
    #[inline(never)]
    fn scan_array(&self, body: &[u8], mut at: usize, wanted: Columns) -> Option<RecordBatch> {
        // The first time, about a row per `{`: a count of the lines would say one for an
        // array on one line.
        let rows = match self.bytes_per_row.load(Ordering::Relaxed) {
            0 => memchr::memchr_iter(b'{', body).count().min(ROWS_SIZED),
            _ => self.rows_in(body),
        };
        let mut columns = self.columns(rows, body.len(), wanted);
        let mut rows = 0;
        at = blanks_from(body, at);
        if body.get(at) == Some(&b']') {
            at += 1;
        } else {
            loop {
                at += self.scan_row(&body[at..], &mut columns)?;
                rows += 1;
                at = blanks_from(body, at);
                match body.get(at)? {
                    b',' => at = blanks_from(body, at + 1),
                    b']' => {
                        at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        if blanks_from(body, at) != body.len() {
            return None;
        }
        if let Some(per_row) = body.len().checked_div(rows) {
            (self.bytes_per_row).store(per_row, Ordering::Relaxed);
        }
        self.finish(columns, rows)
    }

    /// About how many rows `body` holds: by the bytes per row of the last body (a
    /// column's buffer grows if it is more), where counting its lines cost a pass. At
    /// most [`ROWS_SIZED`]: a body of tiny records must not size a large one's columns.
    fn rows_in(&self, body: &[u8]) -> usize {
        match self.bytes_per_row.load(Ordering::Relaxed) {
            0 => (memchr::memchr_iter(b'\n', body).count() + 1).min(ROWS_SIZED),
            per_row => {
                let rows = body.len() / per_row;
                (rows + rows / 16 + 1).min(ROWS_SIZED)
            }
        }
    }

    /// Scan the object `bytes` start with (already [`flat::checked`], but for line ends)
    /// into one row of `columns`, each value appended as its key is met: where the object
    /// ends, or `None` if the scanner gives it back, and then `columns` are left uneven
    /// (the caller drops them). Appended at once, a value is not stored and read back,
    /// which stalled the loads (a fifth of a decoding worker's time).
    #[inline(always)]
    fn scan_row(&self, bytes: &[u8], columns: &mut [Column]) -> Option<usize> {
        let mut seen = 0u64;
        let end = flat::scan_object(bytes, &self.names, self.plain_names, |column, token| {
            let Some(c) = column else {
                return Some(());
            };
            if seen >> c & 1 == 1 {
                return None;
            }
            seen |= 1 << c;
            columns[c].append(value_of_token(self.kinds[c], token, self.nullable[c])?)
        })?;
        if seen.count_ones() as usize != columns.len() {
            for (c, column) in columns.iter_mut().enumerate() {
                if seen >> c & 1 == 0 {
                    if !self.nullable[c] {
                        return None;
                    }
                    column.null();
                }
            }
        }
        Some(end)
    }

    /// The columns to build for `rows` records of `bytes` bytes in all.
    fn columns(&self, rows: usize, bytes: usize, wanted: Columns) -> Vec<Column> {
        (self.kinds.iter().zip(&self.text_bytes_per_row))
            .enumerate()
            .map(|(c, (k, hint))| {
                if !wanted.contains(c) {
                    return Column::Unread(*k);
                }
                // A column's text is never longer than the records it came from.
                let text_bytes = (rows.saturating_mul(hint.load(Ordering::Relaxed))).min(bytes);
                Column::new(*k, rows, text_bytes)
            })
            .collect()
    }

    fn finish(&self, mut columns: Vec<Column>, rows: usize) -> Option<RecordBatch> {
        for (column, hint) in columns.iter().zip(&self.text_bytes_per_row) {
            if let Column::Text(b) = column {
                let per_row = b.values.len() / rows.max(1);
                hint.store(per_row + per_row / 8 + 1, Ordering::Relaxed);
            }
        }
        let columns: Vec<ArrayRef> = (columns.iter_mut())
            .map(|c| c.finish(rows))
            .collect::<Option<_>>()?;
        RecordBatch::try_new(self.schema.clone(), columns).ok()
    }

    /// Whether the flat scanner ([`flat::scan_object`]) took `record`: then `values` holds each
    /// column's value, `None` where a nullable column's key is missing.
    fn scan_flat<'r>(&self, record: &'r [u8], values: &mut [Option<Value<'r>>]) -> bool {
        flat::checked(record) && self.scan_object(record, values) == Some(record.len())
    }

    /// [`SimdPlan::scan_flat`] of the object `bytes` start with, in bytes already
    /// [`flat::checked`]: where it ends.
    fn scan_object<'r>(&self, bytes: &'r [u8], values: &mut [Option<Value<'r>>]) -> Option<usize> {
        values.fill(None);
        let end = flat::scan_object(bytes, &self.names, self.plain_names, |column, token| {
            let Some(c) = column else {
                return Some(());
            };
            if values[c].is_some() {
                return None;
            }
            values[c] = Some(value_of_token(self.kinds[c], token, self.nullable[c])?);
            Some(())
        })?;
        (values.iter().zip(&self.nullable))
            .all(|(v, &null)| v.is_some() || null)
            .then_some(end)
    }
}

/// Append the scanned `values` as a row (a missing one as a null), and empty them.
fn append_row(columns: &mut [Column], values: &mut [Option<Value<'_>>]) -> Option<()> {
    for (column, value) in columns.iter_mut().zip(values) {
        column.append(value.take().unwrap_or(Value::Null))?;
    }
    Some(())
}

/// The column of `names` named `key`, looked for at `guess` first.
pub(super) fn column_of(names: &[Box<[u8]>], key: &[u8], guess: usize) -> Option<usize> {
    if names.get(guess).is_some_and(|name| same_key(name, key)) {
        return Some(guess);
    }
    names.iter().position(|name| same_key(name, key))
}

/// Whether two keys are the same. Keys are short: compared as two overlapping words
/// (the first and the last 4 or 8 bytes) they cost two compares, where a byte loop cost
/// about a quarter of `SimdPlan::decode` and a call to `memcmp` more.
#[inline]
pub(super) fn same_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        4..=8 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        9..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a.iter().zip(b).all(|(x, y)| x == y),
    }
}

/// The `N` bytes of `s` from `at` (within `s`: see [`same_key`]).
#[inline]
fn word<const N: usize>(s: &[u8], at: usize) -> Option<[u8; N]> {
    s.get(at..at + N).and_then(|w| w.try_into().ok())
}

/// The value `node` gives a column of `kind`; `None` if it is not one arrow-json would
/// read the same way (or at all).
fn value_of<'a>(kind: Kind, node: &'a Node<'_>, nullable: bool) -> Option<Value<'a>> {
    use StaticNode::{Bool, F64, I64, Null, U64};
    Some(match (kind, node) {
        (_, Node::Static(Null)) if nullable => Value::Null,
        (Kind::Int | Kind::Millis, Node::Static(I64(v))) => Value::Int(short(*v)?),
        (Kind::Int | Kind::Millis, Node::Static(U64(v))) => {
            Value::Int(short(i64::try_from(*v).ok()?)?)
        }
        (Kind::Float, Node::Static(F64(v))) => Value::Float(*v),
        // An integer zero may have been written `-0`, which arrow-json reads as -0.0.
        (Kind::Float, Node::Static(I64(v))) if *v != 0 => Value::Float(short(*v)? as f64),
        (Kind::Float, Node::Static(U64(v))) if *v != 0 => {
            Value::Float(short(i64::try_from(*v).ok()?)? as f64)
        }
        (Kind::Bool, Node::Static(Bool(v))) => Value::Bool(*v),
        (Kind::Text, Node::String(s)) => Value::Text(s.as_bytes()),
        (Kind::Millis, Node::String(s)) => {
            Value::Int(string_to_timestamp_nanos(s).ok()?.div_euclid(1_000_000))
        }
        _ => return None,
    })
}

/// The value the flat scanner's `token` gives a column of `kind`: what [`value_of`]
/// gives for the same value; `None` where that is not sure. Inlined: returned through
/// memory, its value was read back before the store had landed (a third of the scan).
#[inline(always)]
fn value_of_token<'a>(kind: Kind, token: Token<'a>, nullable: bool) -> Option<Value<'a>> {
    Some(match (kind, token) {
        (_, Token::Null) if nullable => Value::Null,
        (
            Kind::Int | Kind::Millis,
            Token::Number {
                integer: Some(v), ..
            },
        ) => Value::Int(v),
        // An integer zero may have been written `-0` (see `value_of`).
        (
            Kind::Float,
            Token::Number {
                integer: Some(v), ..
            },
        ) if v != 0 => Value::Float(v as f64),
        (
            Kind::Float,
            Token::Number {
                text,
                integer: None,
            },
        ) => Value::Float(std::str::from_utf8(text).ok()?.parse().ok()?),
        (Kind::Bool, Token::Bool(v)) => Value::Bool(v),
        (Kind::Text, Token::Text(s)) => Value::Text(s),
        (Kind::Millis, Token::Text(s)) => {
            let s = std::str::from_utf8(s).ok()?;
            Value::Int(string_to_timestamp_nanos(s).ok()?.div_euclid(1_000_000))
        }
        _ => return None,
    })
}

/// Whether a record is free of what simd-json 0.17 reads differently from arrow-json,
/// which refuses these: `\u` escapes (a lone surrogate becomes a NUL, simd-json issue
/// 481) and NUL bytes. Numbers are checked by [`long_number`] and in [`value_of`].
/// Records that are not plain go to arrow-json.
fn plain(record: &[u8]) -> bool {
    // One pass for both (backslashes are rare): any NUL, or a backslash before a `u`.
    let mut from = 0;
    while let Some(at) = memchr::memchr2(0, b'\\', &record[from..]) {
        let at = from + at;
        if record[at] == 0 || record.get(at + 1) == Some(&b'u') {
            return false;
        }
        from = at + 1;
    }
    true
}

/// Whether a record may hold a number with more than 18 significant digits: simd-json
/// takes those by a slower road that does not notice junk right after them. (Integers
/// that long are refused by value; this is for floats.)
fn long_number(record: &[u8]) -> bool {
    let (mut run, mut longest) = (0u32, 0u32);
    for &b in record {
        run = (run + 1) * u32::from(b.is_ascii_digit() || b == b'.');
        longest = longest.max(run);
    }
    longest > 18
}

/// An integer of at most 18 digits: simd-json reads longer ones by a road that does
/// not notice junk right after them, so those go to arrow-json.
fn short(v: i64) -> Option<i64> {
    (v.unsigned_abs() < 1_000_000_000_000_000_000).then_some(v)
}

/// Tape nodes a value takes, itself included.
fn nodes_of(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// Where the blanks (JSON's whitespace but tabs, which [`flat::checked_lines`] refuses)
/// from `at` on end.
#[inline]
fn blanks_from(body: &[u8], mut at: usize) -> usize {
    while matches!(body.get(at), Some(b' ' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests;
