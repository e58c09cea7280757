//! A scanner of our own for the common shape of a record: one flat JSON object whose
//! values are strings, short numbers, `true`, `false` or `null`, with spaces only
//! between them. One pass over the whole record (or a whole body of lines), many bytes
//! at a time, finds it printable ASCII (else it is checked for control bytes and
//! UTF-8: [`checked`], [`checked_lines`]); then a walk through it checks the syntax and
//! hands over each field's column and value without building anything
//! ([`scan_object`]). simd-json instead finds every structural byte first and writes a
//! tape of every value: for Nexmark bids this decodes 1.4 to 1.8 times as fast
//! (docs/PERFORMANCE.md, "A scanner for flat records").
//!
//! It takes only what it is sure of: a nested value, a `\u` escape, a control byte or
//! line end in a string, a number of more than 18 characters or with an exponent, or
//! any syntax error makes it give the record back (`None`); so does its caller for a
//! value its column would read otherwise than arrow-json (any escaped string it reads,
//! a fraction for an integer, a zero for a float: see `simd::value_of_token`). Then
//! simd-json's path decides as before. So it never accepts a record the other paths
//! refuse.

use super::simd::{column_of, same_key};

/// A value as the scanner found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token<'a> {
    Null,
    Bool(bool),
    /// A number: `integer` is its value when it has no fraction (at most 18
    /// characters, so it fits an `i64`).
    Number {
        text: &'a [u8],
        integer: Option<i64>,
    },
    /// A string without escapes, as it stands between its quotes (UTF-8: see [`checked`]).
    Text(&'a [u8]),
    /// A string with escapes (`\n`, `\"`, ...), left escaped: valid, but not unescaped.
    Escaped,
}

/// Numbers longer than this are given back: simd-json and arrow-json read them by roads
/// of their own (see `simd::long_number`), and they do not fit an `i64` as integers.
const LONGEST_NUMBER: usize = 18;

/// Whether `record` is fit for [`scan_object`]: no control byte (JSON allows none in a
/// string, and whitespace other than a space is rare between values), and UTF-8 (so
/// every string cut from it at quotes is). One pass over the whole record, many bytes
/// at a time, spares the strings a check per byte.
pub fn checked(record: &[u8]) -> bool {
    printable_ascii(record) || !has_control_byte(record) && std::str::from_utf8(record).is_ok()
}

/// Whether every line of `body` is [`checked`], a search for the line ends saved. A
/// line may end in `\r\n` (files written on Windows): a `\r` before a `\n` is taken
/// as part of the line end, any other `\r` as the control byte it is.
pub fn checked_lines(body: &[u8]) -> bool {
    (printable_lines(body)
        || !has_control_byte_but_line_ends(body) && std::str::from_utf8(body).is_ok())
        && memchr::memchr_iter(b'\r', body).all(|at| body.get(at + 1) == Some(&b'\n'))
}

/// Whether `body` is lines of printable ASCII (`\r` let through, see [`checked_lines`]).
fn printable_lines(body: &[u8]) -> bool {
    !(body.iter()).fold(false, |other, &b| {
        other | (b.wrapping_sub(0x20) >= 0x60 && b != b'\n' && b != b'\r')
    })
}

fn has_control_byte_but_line_ends(body: &[u8]) -> bool {
    (body.iter()).fold(false, |seen, &b| {
        seen | (b < 0x20 && b != b'\n' && b != b'\r')
    })
}

/// Scan the JSON object `bytes` start with, which are [`checked`] (but for line ends,
/// which no string may hold), calling `field` with each key's column in `names`
/// (`None` for a key of no column) and its value, in order: where the object ends, or
/// `None` if it is not of the flat shape, not valid, or `field` said `None`. With
/// `plain_names` (no name holds a quote, a backslash or a control byte), a key is first
/// compared as it stands with the name after the last one found: records mostly list
/// their keys in one order.
pub fn scan_object<'a>(
    bytes: &'a [u8],
    names: &[Box<[u8]>],
    plain_names: bool,
    mut field: impl FnMut(Option<usize>, Token<'a>) -> Option<()>,
) -> Option<usize> {
    let mut s = Scanner { s: bytes, at: 0 };
    s.expect(b'{')?;
    s.blanks();
    let mut next = 0;
    if s.peek() == Some(b'}') {
        s.at += 1;
    } else {
        loop {
            s.expect(b'"')?;
            let guess = names.get(next).filter(|_| plain_names);
            let column = if s.name(guess.map(|n| &n[..])) {
                Some(next)
            } else {
                let Token::Text(key) = s.string()? else {
                    return None;
                };
                column_of(names, key, next)
            };
            next = column.map_or(next, |c| c + 1);
            s.blanks();
            s.expect(b':')?;
            s.blanks();
            let value = match s.peek()? {
                b'"' => {
                    s.at += 1;
                    s.string()?
                }
                b'-' | b'0'..=b'9' => s.number()?,
                b't' => s.literal(b"true", Token::Bool(true))?,
                b'f' => s.literal(b"false", Token::Bool(false))?,
                b'n' => s.literal(b"null", Token::Null)?,
                _ => return None,
            };
            field(column, value)?;
            s.blanks();
            match s.peek()? {
                b',' => {
                    s.at += 1;
                    s.blanks();
                }
                b'}' => {
                    s.at += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    Some(s.at)
}

/// Whether every byte of `record` is from 0x20 to 0x7f: a loop the compiler makes
/// vector code of, as it does [`has_control_byte`].
fn printable_ascii(record: &[u8]) -> bool {
    (record.iter().map(|b| b.wrapping_sub(0x20)).max()).is_none_or(|highest| highest < 0x60)
}

/// Whether `record` holds a byte below 0x20.
fn has_control_byte(record: &[u8]) -> bool {
    record.iter().fold(false, |seen, &b| seen | (b < 0x20))
}

/// Bytes known to be UTF-8 and to hold no control byte but line ends, and where in them
/// the scan is.
struct Scanner<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// JSON's whitespace, of which only spaces are left (see [`has_control_byte`]).
    fn blanks(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn literal(&mut self, word: &[u8], token: Token<'a>) -> Option<Token<'a>> {
        let end = self.at + word.len();
        (self.s.get(self.at..end)? == word).then(|| {
            self.at = end;
            token
        })
    }

    /// Whether the string whose opening quote was just passed is `name` (passed if so).
    fn name(&mut self, name: Option<&[u8]>) -> bool {
        let Some(name) = name else {
            return false;
        };
        let end = self.at + name.len();
        let found = self.s.get(end) == Some(&b'"') && same_key(name, &self.s[self.at..end]);
        if found {
            self.at = end + 1;
        }
        found
    }

    /// The string whose opening quote was just passed.
    fn string(&mut self) -> Option<Token<'a>> {
        let start = self.at;
        let mut at = start;
        let mut escaped = false;
        loop {
            at += quote_backslash_or_line_end(&self.s[at..])?;
            match self.s[at] {
                b'"' => break,
                b'\n' => return None,
                _ => {}
            }
            match self.s.get(at + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                    escaped = true;
                    at += 2;
                }
                // `\u` (surrogates are where the parsers differ) or invalid.
                _ => return None,
            }
        }
        self.at = at + 1;
        Some(if escaped {
            Token::Escaped
        } else {
            Token::Text(&self.s[start..at])
        })
    }

    /// A number by JSON's grammar: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)?, without an
    /// exponent (given back: overflow and underflow are where the parsers differ).
    fn number(&mut self) -> Option<Token<'a>> {
        let s = self.s;
        let start = self.at;
        let mut at = start;
        let negative = s.get(at) == Some(&b'-');
        at += usize::from(negative);
        let mut value: i64 = 0;
        match s.get(at)? {
            b'0' => at += 1,
            b'1'..=b'9' => loop {
                let (digits, eight) = leading_digits(&s[at..]);
                // Cannot overflow where it counts: more than 18 characters are given
                // back below before the value is used, and wrapping keeps this cheap.
                value = value
                    .wrapping_mul(POWERS_OF_TEN[digits])
                    .wrapping_add(eight);
                at += digits;
                if digits < 8 {
                    break;
                }
            },
            _ => return None,
        }
        let fraction = s.get(at) == Some(&b'.');
        if fraction {
            at += 1;
            let digits = at;
            while s.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == digits {
                return None;
            }
        }
        if matches!(s.get(at), Some(b'e' | b'E')) || at - start > LONGEST_NUMBER {
            return None;
        }
        self.at = at;
        Some(Token::Number {
            text: &s[start..at],
            integer: (!fraction).then_some(if negative { -value } else { value }),
        })
    }
}

const POWERS_OF_TEN: [i64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the first 8 bytes of `bytes` are digits before any other byte, and the
/// value of those digits, found one word at a time without a branch per digit (a
/// digit at a time, the end of each number was a mispredicted branch, and numbers were
/// the scan's hottest loop).
fn leading_digits(bytes: &[u8]) -> (usize, i64) {
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut padded = [0u8; 8];
    let word = match bytes.get(..8) {
        Some(word) => word,
        None => {
            padded[..bytes.len()].copy_from_slice(bytes);
            &padded
        }
    };
    // The first byte is the lowest. A digit becomes 0 to 9 in `x`; any other byte is
    // from 10 up, so adding 0x76 or its own value sets its high bit. A carry out of a
    // byte comes only from a byte that is no digit, and only into bytes above it.
    let x = u64::from_le_bytes(word.try_into().unwrap_or([0; 8])) ^ ZEROS;
    let others = (x.wrapping_add(0x7676_7676_7676_7676) | x) & HIGHS;
    let digits = (others.trailing_zeros() / 8) as usize;
    if digits == 0 {
        return (0, 0);
    }
    // Move the digits to the top, the zero bytes below them are leading zeros; then
    // pairs of neighbours make two-digit numbers, pairs of those four-digit ones, and
    // the last step the eight-digit one (the products carry past the top on purpose).
    let w = x << (8 * (8 - digits));
    let w = w.wrapping_mul(10 << 8 | 1) >> 8;
    let w = (w & 0x00FF_00FF_00FF_00FF).wrapping_mul(100 << 16 | 1) >> 16;
    let w = (w & 0x0000_FFFF_0000_FFFF).wrapping_mul(10_000 << 32 | 1) >> 32;
    (digits, w as i64)
}

/// Where the first `"`, `\\` or line end of `s` is: eight bytes at a time, a string's
/// bytes are most of a record's.
fn quote_backslash_or_line_end(s: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `w` equal to `b` becomes a zero byte of `w ^ b`, and a zero byte sets its
    // high bit in `(x - ONES) & !x & HIGHS`; the lowest one so found is exact.
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut at = 0;
    while let Some(word) = s.get(at..at + 8) {
        let w = u64::from_le_bytes(word.try_into().ok()?);
        let found = zero_bytes(w ^ (ONES * u64::from(b'"')))
            | zero_bytes(w ^ (ONES * u64::from(b'\\')))
            | zero_bytes(w ^ (ONES * u64::from(b'\n')));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    (s[at..]
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | b'\n')))
    .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole record, as the per-record path scans it.
    fn scan<'a>(
        record: &'a [u8],
        names: &[Box<[u8]>],
        plain_names: bool,
        field: impl FnMut(Option<usize>, Token<'a>) -> Option<()>,
    ) -> Option<()> {
        let whole =
            checked(record) && scan_object(record, names, plain_names, field)? == record.len();
        whole.then_some(())
    }

    /// `checked_lines` is `checked` for every line, whichever way it goes, lines ending
    /// in `\n` or `\r\n`.
    #[test]
    fn checked_lines_is_checked_for_every_line() {
        let mut bodies: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b'{', b, b'}']).collect();
        bodies.extend(
            [&b"\"\xc3\xa9\""[..], b"\xc3", b"\xe6\x97\xa5", b"\xff", b""].map(<[u8]>::to_vec),
        );
        for a in &bodies {
            assert_eq!(
                printable_ascii(a),
                a.iter().all(|b| (0x20..0x80).contains(b))
            );
            for b in &bodies {
                for line_end in [&b"\n"[..], b"\r\n"] {
                    let body = [&a[..], line_end, b].concat();
                    // A `\r` ends a line only before its `\n`: the last line keeps its own.
                    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
                    let (last, ended) = lines.split_last().expect("one line at least");
                    let each = checked(last)
                        && (ended.iter()).all(|l| checked(l.strip_suffix(b"\r").unwrap_or(l)));
                    assert_eq!(checked_lines(&body), each, "{body:?}");
                }
            }
        }
    }

    /// The names of the columns the tests' records have, in another order than theirs.
    const NAMES: [&str; 10] = [
        "none", "auction", "price", "channel", "url", "ok", "no", "zero", "é", "n",
    ];

    fn fields(record: &str) -> Option<Vec<(String, Token<'_>)>> {
        assert_eq!(
            printable_ascii(record.as_bytes()),
            record.bytes().all(|b| (0x20..0x80).contains(&b))
        );
        let names: Vec<Box<[u8]>> = NAMES.iter().map(|n| n.as_bytes().into()).collect();
        let mut out = Vec::new();
        let mut each = |plain_names| {
            out.clear();
            scan(record.as_bytes(), &names, plain_names, |column, token| {
                out.push((NAMES[column.expect("a column")].to_string(), token));
                Some(())
            })
            .map(|()| out.clone())
        };
        // Names compared as they stand or found by the key: the same fields.
        let fields = each(true);
        assert_eq!(fields, each(false), "{record}");
        fields
    }

    fn number(text: &str, integer: Option<i64>) -> Token<'_> {
        let text = text.as_bytes();
        Token::Number { text, integer }
    }

    #[test]
    fn a_flat_record_gives_each_key_and_value_in_order() {
        let record = r#"{"auction":1007,"price":-25.5,"channel":"Apple","url":"a\/b\n","ok" : true , "no":false,"none":null,"zero":-0,"é":"日本"}"#;
        assert_eq!(
            fields(record),
            Some(vec![
                ("auction".into(), number("1007", Some(1007))),
                ("price".into(), number("-25.5", None)),
                ("channel".into(), Token::Text("Apple".as_bytes())),
                ("url".into(), Token::Escaped),
                ("ok".into(), Token::Bool(true)),
                ("no".into(), Token::Bool(false)),
                ("none".into(), Token::Null),
                ("zero".into(), number("-0", Some(0))),
                ("é".into(), Token::Text("日本".as_bytes())),
            ])
        );
        assert_eq!(fields("{ }"), Some(vec![]));
        assert_eq!(
            fields(r#"{"n":-99999999999999999}"#),
            Some(vec![(
                "n".into(),
                number("-99999999999999999", Some(-99_999_999_999_999_999))
            )])
        );
    }

    /// `quote_backslash_or_line_end` finds what a byte-by-byte search finds, wherever.
    #[test]
    fn quote_backslash_or_line_end_is_the_first_of_them() {
        for n in 0..24 {
            for at in 0..=n {
                for (first, second) in [
                    (b'"', b'\\'),
                    (b'\\', b'"'),
                    (b'"', b'x'),
                    (b'\n', b'"'),
                    (b'x', b'\n'),
                    (0xa2, 0xdc),
                ] {
                    let mut s = vec![b'a'; n];
                    if at < n {
                        s[at] = first;
                        s[n - 1] = if at < n - 1 { second } else { first };
                    }
                    let naive = s.iter().position(|&b| matches!(b, b'"' | b'\\' | b'\n'));
                    assert_eq!(quote_backslash_or_line_end(&s), naive, "{s:?}");
                }
            }
        }
    }

    /// `leading_digits` reads what a digit-by-digit loop reads, whatever follows them.
    #[test]
    fn leading_digits_are_read_a_word_at_a_time() {
        let naive = |b: &[u8]| {
            let n = b.iter().take(8).take_while(|d| d.is_ascii_digit()).count();
            let v = (b[..n].iter()).fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
            (n, v)
        };
        let mut n: u64 = 12_345_678;
        for _ in 0..20_000 {
            n = n
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let text = format!("{}", n >> (n % 60));
            let mut bytes = text.into_bytes();
            // Then something else, or the end.
            match n % 5 {
                0 => {}
                1 => bytes.push(b'}'),
                2 => bytes.push(b'.'),
                3 => bytes.push((n >> 40) as u8),
                _ => bytes.extend_from_slice(b",\"x\":1234"),
            }
            for cut in [bytes.len(), bytes.len().min(3), bytes.len().min(9)] {
                let b = &bytes[..cut];
                assert_eq!(leading_digits(b), naive(b), "{b:?}");
            }
        }
        for other in (0..=255u8).filter(|b| !b.is_ascii_digit()) {
            for at in 0..9 {
                let mut b = *b"123456789";
                b[at] = other;
                assert_eq!(leading_digits(&b), naive(&b), "{b:?}");
            }
        }
    }

    /// Everything not of the flat shape, or not valid JSON, is given back.
    #[test]
    fn anything_else_is_given_back() {
        for record in [
            r#"{"n":{"ok":1}}"#,
            r#"{"n":[1]}"#,
            r#"{"n":"\u00e9"}"#,
            r#"{"\n":1}"#,
            "{\"n\":\"tab\there\"}",
            // Whitespace other than a space (valid, but rare: the tape path takes it).
            "{\"n\":1,\n\"ok\":2}",
            "{\"n\":\"nul\0\"}",
            "{\"n\":\"line\nend\"}",
            r#"{"n":1e3}"#,
            r#"{"n":1.5E3}"#,
            r#"{"n":1234567890123456789}"#,
            r#"{"n":-999999999999999999}"#,
            r#"{"n":0.12345678901234567}"#,
            r#"{"n":01}"#,
            r#"{"n":1.}"#,
            r#"{"n":.5}"#,
            r#"{"n":+1}"#,
            r#"{"n":-}"#,
            r#"{"n":tru}"#,
            r#"{"n":nulll}"#,
            r#"{"n":"x\q"}"#,
            r#"{"n":1,}"#,
            r#"{"n":1 "ok":2}"#,
            r#"{"n" 1}"#,
            r#"{a:1}"#,
            r#"{"n":1}x"#,
            r#"{"n":1}{"n":2}"#,
            r#"{"n":1"#,
            r#"{"n":"unterminated}"#,
            r#"[{"n":1}]"#,
            r#"{,}"#,
        ] {
            assert_eq!(fields(record), None, "{record}");
        }
        // Not UTF-8, in a key or a value.
        for record in [&b"{\"a\":\"\xff\"}"[..], b"{\"\xc3\":1}"] {
            assert!(scan(record, &[], false, |_, _| Some(())).is_none());
        }
        // The caller can give a record back too.
        assert!(scan(br#"{"a":1}"#, &[], false, |_, _| None).is_none());
        // A key of no column.
        let names = [b"b"[..].into()];
        let mut columns = Vec::new();
        let scanned = scan(br#"{"a":1,"b":2,"bb":3}"#, &names, true, |c, _| {
            columns.push(c);
            Some(())
        });
        assert_eq!((scanned, columns), (Some(()), vec![None, Some(0), None]));
    }
}
