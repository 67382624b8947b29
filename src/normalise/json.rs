//! JSON text: the one-pass scanner that decides whether DoX's JSON text can be
//! embedded in a request body as it is (`embeddable_json`), strings escaped as
//! serde_json escapes them, and JSON text parsed the way DoX wrote it
//! (`parse_json_text`: Python's `NaN` / `Infinity` tokens become `null`).

use std::fmt::Write as _;

use serde_json::Value;

use super::values::Lossy;

/// Append `s` as a JSON string, escaped as serde_json escapes it. `Err` (and
/// `out` partly written) when `s` holds a NUL, which PostgreSQL text cannot.
pub(super) fn push_json_str(out: &mut String, s: &str) -> std::result::Result<(), ()> {
    let b = s.as_bytes();
    out.reserve(s.len() + 2);
    out.push('"');
    let mut done = 0;
    let mut i = 0;
    while i < b.len() {
        i = skip_plain(b, i);
        let Some(&c) = b.get(i) else { break };
        // Every byte that needs an escape is ASCII: the slices stay on char boundaries.
        out.push_str(&s[done..i]);
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0 => return Err(()),
            _ => {
                write!(out, "\\u{c:04x}").expect("writing to a String cannot fail");
            }
        }
        i += 1;
        done = i;
    }
    out.push_str(&s[done..]);
    out.push('"');
    Ok(())
}

/// The index of the first byte at or after `i` that a JSON string cannot hold
/// as it is (`"`, `\`, a control character), or `b.len()`. Eight bytes at a time.
fn skip_plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // Any byte below 0x20, equal to `"` or to `\`.
        let special = (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | zero_byte(w ^ (ONES * u64::from(b'"')))
            | zero_byte(w ^ (ONES * u64::from(b'\\')));
        if special != 0 {
            break;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}

/// Whether JSON text can be embedded in a request as it is, in one pass: it is
/// valid JSON as serde_json reads it (RFC 8259), it has no `\u0000` escape
/// and no unpaired surrogate escape (jsonb refuses both), and every number is
/// surely within a double's range (no literal over 300 characters, no exponent
/// beyond ±300). `false` only sends the value
/// down the slow path, which decides exactly.
pub(super) fn embeddable_json(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    // Open containers: `[` or `{`.
    let mut open: Vec<u8> = Vec::new();
    let ws = |i: &mut usize| {
        while matches!(b.get(*i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            *i += 1;
        }
    };
    // A key and its colon, at `i`.
    let key = |i: &mut usize| {
        if !json_string(b, i) {
            return false;
        }
        ws(i);
        if b.get(*i) != Some(&b':') {
            return false;
        }
        *i += 1;
        true
    };
    ws(&mut i);
    loop {
        // A value at `i`.
        match b.get(i) {
            Some(&c @ (b'{' | b'[')) => {
                i += 1;
                ws(&mut i);
                let close = if c == b'{' { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    i += 1;
                } else {
                    open.push(c);
                    if c == b'{' && !key(&mut i) {
                        return false;
                    }
                    ws(&mut i);
                    continue;
                }
            }
            Some(b'"') => {
                if !json_string(b, &mut i) {
                    return false;
                }
            }
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            Some(b'-' | b'0'..=b'9') => {
                if !json_number(b, &mut i) {
                    return false;
                }
            }
            _ => return false,
        }
        // After a value: close containers until a comma asks for the next one.
        loop {
            ws(&mut i);
            let Some(&c) = open.last() else {
                return i == b.len();
            };
            match (c, b.get(i)) {
                (_, Some(b',')) => {
                    i += 1;
                    ws(&mut i);
                    if c == b'{' && !key(&mut i) {
                        return false;
                    }
                    ws(&mut i);
                    break;
                }
                (b'[', Some(b']')) | (b'{', Some(b'}')) => {
                    i += 1;
                    open.pop();
                }
                _ => return false,
            }
        }
    }
}

/// A JSON string at `b[*i]` (its opening quote); moves `i` past it.
fn json_string(b: &[u8], i: &mut usize) -> bool {
    if b.get(*i) != Some(&b'"') {
        return false;
    }
    let mut j = *i + 1;
    loop {
        j = skip_plain(b, j);
        match b.get(j) {
            Some(b'"') => {
                *i = j + 1;
                return true;
            }
            Some(b'\\') => match b.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                Some(b'u') => match hex4(b, j + 2) {
                    Some(0) | None => return false,
                    // A surrogate pair, as Python's json.dumps escapes emoji.
                    Some(0xd800..=0xdbff) => {
                        if b.get(j + 6..j + 8) != Some(b"\\u")
                            || !matches!(hex4(b, j + 8), Some(0xdc00..=0xdfff))
                        {
                            return false;
                        }
                        j += 12;
                    }
                    // A lone low surrogate: jsonb refuses it.
                    Some(0xdc00..=0xdfff) => return false,
                    Some(_) => j += 6,
                },
                _ => return false,
            },
            // A control character, or the end of the text.
            _ => return false,
        }
    }
}

/// The four hex digits at `b[at..]`, as a number.
fn hex4(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?
        .iter()
        .try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
}

/// A JSON number at `b[*i]`; moves `i` past it. `false` also when it may not
/// fit a double (see [`embeddable_json`]).
fn json_number(b: &[u8], i: &mut usize) -> bool {
    let start = *i;
    let mut j = *i;
    let digits = |j: &mut usize| {
        let from = *j;
        while b.get(*j).is_some_and(u8::is_ascii_digit) {
            *j += 1;
        }
        *j > from
    };
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    match b.get(j) {
        Some(b'0') => j += 1,
        Some(b'1'..=b'9') => {
            digits(&mut j);
        }
        _ => return false,
    }
    if b.get(j) == Some(&b'.') {
        j += 1;
        if !digits(&mut j) {
            return false;
        }
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let from = j;
        if !digits(&mut j) {
            return false;
        }
        let exp = b[from..j].iter().try_fold(0u32, |n, d| {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        });
        if exp.is_none_or(|e| e > 300) {
            return false;
        }
    }
    *i = j;
    j - start <= 300
}
/// Parse JSON text the way DoX wrote it. Python's encoder may emit `NaN`,
/// `Infinity` and `-Infinity`; those become `null` (lossy). Text that is not
/// JSON is kept as a JSON string (lossy).
pub fn parse_json_text(s: &str) -> (Value, Option<Lossy>) {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return (v, None);
    }
    if let Some(fixed) = replace_non_finite(s) {
        if let Ok(v) = serde_json::from_str::<Value>(&fixed) {
            return (v, Some(Lossy::NonFiniteJson));
        }
    }
    (
        Value::String(s.to_owned()),
        Some(Lossy::InvalidJsonAsString),
    )
}

/// Tracks, byte by byte, whether a scan of JSON text is inside a string.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Feed the next byte; true when it belongs to a string (its quotes included).
    fn inside(&mut self, c: u8) -> bool {
        if self.inside {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.inside = false,
                _ => {}
            }
            true
        } else if c == b'"' {
            self.inside = true;
            true
        } else {
            false
        }
    }
}

/// Replace bare `NaN`, `Infinity`, `-Infinity` tokens (outside strings) with `null`.
/// Returns `None` when there is none.
fn replace_non_finite(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut strings = Strings::default();
    let mut changed = false;
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if strings.inside(b[i]) {
            i += 1;
            continue;
        }
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| b[i..].starts_with(t));
        if let Some(t) = token {
            out.push_str(&s[copied..i]);
            out.push_str("null");
            i += t.len();
            copied = i;
            changed = true;
            continue;
        }
        i += 1;
    }
    if !changed {
        return None;
    }
    out.push_str(&s[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalise::{to_canonical, to_json_row, SqlValue};
    use serde_json::json;

    /// What [`embeddable_json`] decides in one pass, decided the slow way: the
    /// reference it must agree with. serde_json refuses unpaired surrogates
    /// when it decodes strings into a `Value`.
    fn old_embeddable(s: &str) -> bool {
        !s.contains('\0')
            && !s.contains("\\u0000")
            && numbers_fit_f64(s)
            && serde_json::from_str::<&serde_json::value::RawValue>(s).is_ok()
            && (!s.to_ascii_lowercase().contains("\\ud")
                || serde_json::from_str::<Value>(s).is_ok())
    }

    /// Whether every number in JSON text (outside strings) is surely within a
    /// double's range, as the canonical form needs: no exponent beyond ±300 and no
    /// literal of more than 300 characters. Conservative: `false` only sends the
    /// value down the slow path, which decides exactly.
    fn numbers_fit_f64(s: &str) -> bool {
        let b = s.as_bytes();
        let mut strings = Strings::default();
        let mut i = 0;
        while i < b.len() {
            if strings.inside(b[i]) {
                i += 1;
                continue;
            }
            let c = b[i];
            if c == b'-' || c.is_ascii_digit() {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &s[start..i];
                if token.len() > 300 {
                    return false;
                }
                if let Some(pos) = token.find(['e', 'E']) {
                    match token[pos + 1..].parse::<i32>() {
                        Ok(exp) if exp.abs() <= 300 => {}
                        _ => return false,
                    }
                }
                continue;
            }
            i += 1;
        }
        true
    }

    fn json_corpus() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            " ",
            "null",
            "true",
            "false",
            "nul",
            "truex",
            "0",
            "-0",
            "01",
            "-",
            "1.",
            ".5",
            "1.5",
            "1e5",
            "1E+5",
            "1e-300",
            "1e301",
            "1e-301",
            "1e",
            "1e+",
            "2.5e0300",
            "1e99999999999",
            "-1.25E-7",
            "123456789012345678901234567890",
            "[]",
            "{}",
            "[ ]",
            "{ }",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":}",
            "{1:2}",
            "{\"a\":1",
            "[[[]]]",
            "[[[]]",
            "]",
            "}",
            "\"abc",
            "\"a\\\"b\"",
            "\"\\u0041\"",
            "\"\\u0000\"",
            "\"\\ud83d\\ude00\"",
            "\"\\uD7FF\"",
            "\"\\u00e9\"",
            "\"\\u12\"",
            "\"\\x\"",
            "\"\\/\\b\\f\\n\\r\\t\"",
            "\"tab\there\"",
            "\"nul\u{0}\"",
            "NaN",
            "[NaN]",
            "Infinity",
            "{\"k\": [1, 2.5, {\"x\": null}], \"é\": \"日本\"}",
            " \n\t\r[1]\r\n ",
            "[1]x",
            "[1] [2]",
            "\u{feff}[1]",
            "\"\u{7f}\"",
            "{\"a\":{\"b\":[true,false,null,\"s\",-1.5e-3]}}",
            "[\"\\\\\"]",
            "[\"\\\\\\\"]",
            "\"\\ud83d\"",
            "\"\\ud83dx\"",
            "\"\\ud83d\\u0041\"",
            "\"\\ude00\\ud83d\"",
            "\"\\uDBFF\\uDFFF\"",
            "\"\\ud83d\\ude0\"",
            "\"\\ud83d\\\\ude00\"",
            "[\"\\uD83D\\uDE00\", \"\\u00e9\\ud800\\udc00x\"]",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push("[".repeat(300) + &"]".repeat(300));
        v.push(format!("[{}]", "9".repeat(301)));
        v.push(format!("[{}]", "9".repeat(299)));
        v
    }

    #[test]
    fn the_one_pass_json_test_agrees_with_the_reference() {
        // Python's escaped emoji go the fast way; what jsonb refuses does not.
        assert!(embeddable_json(
            r#"{"e": "\ud83d\ude00", "n": [1.5e3, -0, null]}"#
        ));
        for refused in [
            r#""\ude00""#,
            r#""\ud83d""#,
            r#""\u0000""#,
            "[1e400]",
            "[NaN]",
        ] {
            assert!(!embeddable_json(refused), "{refused}");
        }
        for s in json_corpus() {
            assert_eq!(embeddable_json(&s), old_embeddable(&s), "{s:?}");
        }
        // Every prefix, and every single-byte change, of well-formed documents.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"{}[]:,\"\\ -+.0123456789eEtrufalsn\tuxdDcC8";
        for base in json_corpus()
            .iter()
            .filter(|s| serde_json::from_str::<Value>(s).is_ok())
        {
            for cut in 0..=base.len() {
                if let Some(p) = base.get(..cut) {
                    assert_eq!(embeddable_json(p), old_embeddable(p), "{p:?}");
                }
            }
            for _ in 0..200 {
                let mut bytes = base.clone().into_bytes();
                if bytes.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = alphabet[rng.gen_range(0..alphabet.len())];
                if let Ok(m) = String::from_utf8(bytes) {
                    assert_eq!(embeddable_json(&m), old_embeddable(&m), "{m:?}");
                }
            }
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (1u8..0x80).map(|c| format!("a{}b", c as char)).collect();
        cases.extend(
            [
                "",
                "plain",
                "quote\" and \\ back",
                "日本語 ü 🎉",
                "\u{7f}\u{80}\u{2028}",
                "12345678\"1234567\n",
            ]
            .map(String::from),
        );
        cases.push("x".repeat(1000) + "\u{1}" + &"y".repeat(17));
        for s in cases {
            let mut out = String::new();
            push_json_str(&mut out, &s).unwrap();
            assert_eq!(out, serde_json::to_string(&s).unwrap(), "{s:?}");
        }
        assert!(push_json_str(&mut String::new(), "before\0after").is_err());
    }

    #[test]
    fn python_non_finite_tokens_become_null_and_are_counted() {
        let (v, l) = parse_json_text(
            r#"[{"Spend": 80.0, "Revenue": NaN, "x": -Infinity, "s": "NaN Infinity"}]"#,
        );
        assert_eq!(
            v,
            json!([{"Spend": 80.0, "Revenue": null, "x": null, "s": "NaN Infinity"}])
        );
        assert_eq!(l, Some(Lossy::NonFiniteJson));
    }

    #[test]
    fn tokens_inside_strings_with_escapes_are_left_alone() {
        let s = r#"{"a": "say \"NaN\"", "b": Infinity}"#;
        let (v, l) = parse_json_text(s);
        assert_eq!(v, json!({"a": "say \"NaN\"", "b": null}));
        assert_eq!(l, Some(Lossy::NonFiniteJson));
    }

    #[test]
    fn invalid_json_is_kept_as_a_string() {
        let (v, l) = parse_json_text("not json {");
        assert_eq!(v, json!("not json {"));
        assert_eq!(l, Some(Lossy::InvalidJsonAsString));
        let (v, l) = parse_json_text("{\"a\": 1}");
        assert_eq!(v, json!({"a": 1}));
        assert_eq!(l, None);
    }

    #[test]
    fn numbers_beyond_a_double_take_the_slow_path() {
        assert!(numbers_fit_f64(
            r#"{"a": [1, -2.5e-7, 3E+10], "s": "1e999"}"#
        ));
        assert!(!numbers_fit_f64(r#"{"a": 1e400}"#));
        assert!(!numbers_fit_f64(&format!("[{}]", "9".repeat(400))));
        let row = vec![SqlValue::text("d"), SqlValue::text("{\"x\": 1e400}")];
        let fast: Value = serde_json::from_str(
            &to_json_row(&crate::catalogue::DOCUMENT_STRUCTURE, &row)
                .unwrap()
                .row,
        )
        .unwrap();
        let slow = to_canonical(&crate::catalogue::DOCUMENT_STRUCTURE, &row).unwrap();
        assert_eq!(fast, Value::Object(slow.row));
    }
}
