//! Input files: `input::check_file` (the check before anything runs) and the sources of
//! `input::open` (what a stage reads). On any bytes: no panic; an error names the file and the
//! line; what the check accepts, the source yields, value for value; and a `from` stage's file
//! that changed is never read silently when its SHA-256 is known.

use std::path::Path;

use loky_run::config::InputSpec;
use loky_run::input::{InputError, check_file, open};
use loky_run::protocol::{Cursor, FrameBuf, tag};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

/// One line of a generated input file, with what the check must make of it.
#[derive(Debug, Clone)]
enum Line {
    Value(Value, Vec<u8>),
    Blank(Vec<u8>),
    /// Not a JSON value (the check must stop here).
    Bad(Vec<u8>),
    /// Invalid UTF-8 (the check must stop here).
    NotUtf8(Vec<u8>),
    /// Anything: serde_json decides.
    Noise(Vec<u8>),
}

impl Line {
    fn bytes(&self) -> &[u8] {
        match self {
            Line::Value(_, b)
            | Line::Blank(b)
            | Line::Bad(b)
            | Line::NotUtf8(b)
            | Line::Noise(b) => b,
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![1.5, -0.25, 1e10, 3.0e-7]).prop_map(Value::from),
        prop::collection::vec(any::<char>(), 0..12)
            .prop_map(|c| Value::from(c.into_iter().collect::<String>())),
        // Longer than the reader's 64 KiB buffer.
        (70_000usize..200_000).prop_map(|n| Value::from("é".repeat(n / 2))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(inner, 0..4).prop_map(|vs| {
                Value::Object(
                    vs.into_iter()
                        .enumerate()
                        .map(|(i, v)| (format!("k{i}"), v))
                        .collect(),
                )
            }),
        ]
    })
}

/// ASCII whitespace the reader trims (JSON's own, and form feed).
fn padding() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b' ', b'\t', b'\r', 0x0c]), 0..3)
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        6 => (padding(), json_value(), padding()).prop_map(|(a, v, b)| {
            let text = serde_json::to_vec(&v).unwrap();
            Line::Value(v, [a, text, b].concat())
        }),
        2 => padding().prop_map(Line::Blank),
        1 => prop::sample::select(vec![
            &b"{oops"[..], b"1 2", b"\"unterminated", b"[1,]", b"nul\0l", b"\"a\0b\"", b"\0",
            b"tru", b"{\"a\":1}}", b"01",
        ])
        .prop_map(|b| Line::Bad(b.to_vec())),
        1 => prop::sample::select(vec![&b"\"\xff\""[..], b"\"caf\xc3\"", b"\xfe", b"[\"\xed\xa0\x80\"]"])
            .prop_map(|b| Line::NotUtf8(b.to_vec())),
        1 => prop::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n'), 0..30)
            .prop_map(Line::Noise),
    ]
}

/// The file's text: the lines joined by `\n`, with a last newline or not.
fn file_bytes(lines: &[Line], last_newline: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        out.extend_from_slice(l.bytes());
        if i + 1 < lines.len() || last_newline {
            out.push(b'\n');
        }
    }
    out
}

/// What the check must find: the values (trimmed lines), or the first bad line (1-based)
/// and whether it is not UTF-8.
/// Why a file is refused, as the reference model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Malformed,
    NotUtf8,
    /// A blank line with more lines after it (blank lines are allowed only at the end: the
    /// line number is the record's index).
    Blank,
}

fn reference(lines: &[Line]) -> Result<Vec<Vec<u8>>, (u64, Fault)> {
    let mut values = Vec::new();
    let mut blank = None;
    for (i, l) in lines.iter().enumerate() {
        let trimmed = l.bytes().trim_ascii();
        let number = i as u64 + 1;
        if trimmed.is_empty() {
            blank.get_or_insert(number);
            continue;
        }
        if let Some(at) = blank {
            return Err((at, Fault::Blank));
        }
        match l {
            Line::Blank(_) => unreachable!("a blank line trims to nothing"),
            Line::Value(..) => values.push(trimmed.to_vec()),
            Line::Bad(_) => return Err((number, Fault::Malformed)),
            Line::NotUtf8(_) => return Err((number, Fault::NotUtf8)),
            Line::Noise(_) => {
                if std::str::from_utf8(trimmed).is_err() {
                    return Err((number, Fault::NotUtf8));
                }
                if serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_err() {
                    return Err((number, Fault::Malformed));
                }
                values.push(trimmed.to_vec());
            }
        }
    }
    Ok(values)
}

/// Every input a source yields, as the bytes put in the frame.
fn drain(spec: &InputSpec, from: Option<(&Path, Option<&str>)>) -> (Vec<Vec<u8>>, Option<String>) {
    let mut source = match open(spec, from) {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e.to_string())),
    };
    let mut frame = FrameBuf::new();
    frame.begin(tag::CHUNK);
    let mut n = 0;
    let error = loop {
        match source.next_into(&mut frame) {
            Ok(true) => n += 1,
            Ok(false) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    let bytes = frame.finish().to_vec();
    let mut c = Cursor::new(&bytes[5..]);
    let items = (0..n).map(|_| c.bytes().unwrap().to_vec()).collect();
    (items, error)
}

/// A stage output file: `(record lines, the outputs a `from` stage reads)`.
fn output_file() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<u8>>)> {
    prop::collection::vec(prop::option::weighted(0.8, json_value()), 0..20).prop_map(|recs| {
        let mut text = Vec::new();
        let mut outputs = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            match r {
                Some(v) => {
                    let o = serde_json::to_vec(v).unwrap();
                    text.extend_from_slice(format!("{{\"index\":{i},\"output\":").as_bytes());
                    text.extend_from_slice(&o);
                    text.extend_from_slice(b"}\n");
                    outputs.push(o);
                }
                None => text.extend_from_slice(
                    format!(
                        "{{\"index\":{i},\"error\":{{\"kind\":\"panic\",\"message\":\"m\"}}}}\n"
                    )
                    .as_bytes(),
                ),
            }
        }
        (text, outputs)
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Cut(Index, usize),
    Insert(Index, Vec<u8>),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Cut(i, n)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Insert(_, b) = m {
            bytes.extend_from_slice(b);
        }
        return;
    }
    match m {
        Mutation::Flip(i, bit) => {
            let at = i.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Mutation::Cut(i, n) => {
            let from = i.index(bytes.len());
            let to = (from + n).min(bytes.len());
            bytes.drain(from..to);
        }
        Mutation::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

proptest! {
    #![proptest_config(crate::config(64))]

    #[test]
    fn the_check_and_the_source_agree_on_every_line(
        lines in prop::collection::vec(line(), 0..16),
        last_newline in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let bytes = file_bytes(&lines, last_newline);
        std::fs::write(&path, &bytes).unwrap();
        let shown = path.display().to_string();
        match (check_file(&path), reference(&lines)) {
            (Ok(check), Ok(values)) => {
                prop_assert_eq!(check.count, values.len() as u64);
                prop_assert_eq!(check.sha256, sha256_hex(&bytes));
                let (items, error) = drain(&InputSpec::File(path.clone()), None);
                prop_assert_eq!(error, None);
                prop_assert!(items == values, "the source yields other bytes than the lines checked");
                // Value for value, where the generator knows the value.
                let known = lines.iter().filter_map(|l| match l {
                    Line::Value(v, _) => Some(Some(v)),
                    Line::Noise(b) if !b.trim_ascii().is_empty() => Some(None),
                    _ => None,
                });
                for (item, v) in items.iter().zip(known) {
                    let parsed: Value = serde_json::from_slice(item).unwrap();
                    if let Some(v) = v {
                        prop_assert_eq!(&parsed, v);
                    }
                }
            }
            (Err(e), Err((line, fault))) => {
                let text = e.to_string();
                prop_assert!(text.contains(&format!("{shown}:{line}:")), "{text}");
                match e {
                    InputError::NotUtf8 { line: l, .. } => {
                        prop_assert!(fault == Fault::NotUtf8 && l == line);
                    }
                    InputError::BlankLine { line: l, .. } => {
                        prop_assert!(fault == Fault::Blank && l == line);
                    }
                    InputError::Malformed { line: l, message, .. } => {
                        prop_assert!(fault == Fault::Malformed && l == line);
                        prop_assert!(!message.is_empty());
                    }
                    other => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
            (got, want) => prop_assert!(false, "check {got:?}, expected {want:?}"),
        }
    }

    #[test]
    fn the_check_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        match check_file(&path) {
            Ok(check) => {
                let (items, error) = drain(&InputSpec::File(path.clone()), None);
                prop_assert_eq!(error, None);
                prop_assert_eq!(items.len() as u64, check.count);
                for item in &items {
                    prop_assert!(serde_json::from_slice::<Value>(item).is_ok());
                }
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains(&path.display().to_string()), "{text}");
                let lines = bytes.split(|&b| b == b'\n').count() as u64;
                match e {
                    InputError::NotUtf8 { line, .. }
                    | InputError::Malformed { line, .. }
                    | InputError::BlankLine { line, .. } => {
                        prop_assert!(line >= 1 && line <= lines, "line {line} of {lines}");
                    }
                    other => prop_assert!(false, "unexpected error {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_from_stage_reads_the_outputs_in_order(file in output_file()) {
        let (text, outputs) = file;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prev.jsonl");
        std::fs::write(&path, &text).unwrap();
        let sha = sha256_hex(&text);
        let (items, error) = drain(&InputSpec::From("prev".into()), Some((&path, Some(&sha))));
        prop_assert_eq!(error, None);
        prop_assert!(items == outputs);
    }

    /// A changed output file is never read silently when the manifest has its SHA-256; without
    /// it, what is read is either records or an error naming the file and line.
    #[test]
    fn a_changed_from_file_is_an_error_naming_it(
        file in output_file(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let (text, _) = file;
        let mut changed = text.clone();
        for m in &mutations {
            mutate(&mut changed, m);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prev.jsonl");
        std::fs::write(&path, &changed).unwrap();
        let shown = path.display().to_string();
        let sha = sha256_hex(&text);
        let (_, error) = drain(&InputSpec::From("prev".into()), Some((&path, Some(&sha))));
        match error {
            None => prop_assert!(changed == text, "a changed file was read without an error"),
            Some(e) => prop_assert!(e.contains(&shown), "{e}"),
        }
        let (items, error) = drain(&InputSpec::From("prev".into()), Some((&path, None)));
        if let Some(e) = error {
            prop_assert!(e.contains(&format!("{shown}:")), "{e}");
        }
        for item in &items {
            prop_assert!(serde_json::from_slice::<Value>(item).is_ok(), "an output that is not JSON");
        }
    }
}
