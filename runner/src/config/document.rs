//! The pipeline file as a tree that remembers where every key and value is.
//!
//! `toml` 0.8 reports spans through `toml::Spanned`, but `Spanned` alone cannot read a whole
//! document: implicit tables (`a.b = 1`) have no span, and datetimes arrive as a private map.
//! [`Node`] speaks the same protocol by hand. The protocol's private field names are not
//! hard-coded: they are captured once from `toml::Spanned` and `toml::value::Datetime` with a
//! recording deserializer (see [`names`]).

use std::fmt;
use std::ops::Range;
use std::sync::OnceLock;

use figment::value::{Dict, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// A TOML value with its span in the source (when toml knows it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub span: Option<Range<usize>>,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeKind {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Kept as written (RFC 3339); becomes a string.
    Datetime(String),
    Array(Vec<Node>),
    /// In document order.
    Table(Vec<(Key, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub span: Option<Range<usize>>,
}

/// One step of a path into a [`Node`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// A TOML syntax error: message and byte span.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub span: Option<Range<usize>>,
}

/// Parses a whole document.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let de = toml::de::Deserializer::new(text);
    NodeSeed
        .deserialize(de)
        .map_err(|e: toml::de::Error| SyntaxError {
            // One line ("invalid string; expected `"`, `'`"): the location follows it.
            message: e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
            span: e.span(),
        })
}

/// Parses `text` as one TOML value (what `--set KEY=VALUE` and `LOKY_RUN_*` hold). `None` when
/// it is not exactly one valid value.
pub(crate) fn parse_value(text: &str) -> Option<Node> {
    if text.contains(['\n', '\r']) {
        return None;
    }
    match parse(&format!("v = {text}")).ok()?.kind {
        NodeKind::Table(mut entries) if entries.len() == 1 && entries[0].0.name == "v" => {
            entries.pop().map(|(_, node)| node)
        }
        _ => None,
    }
}

impl Node {
    pub(super) fn table(&self) -> Option<&[(Key, Node)]> {
        match &self.kind {
            NodeKind::Table(entries) => Some(entries),
            _ => None,
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&(Key, Node)> {
        self.table()?.iter().find(|(k, _)| k.name == name)
    }

    /// The node at `path`, with the key that led to it (if the last step was a key).
    pub(super) fn find(&self, path: &[Seg]) -> Option<(Option<&Key>, &Node)> {
        let mut key = None;
        let mut node = self;
        for seg in path {
            match (seg, &node.kind) {
                (Seg::Key(name), NodeKind::Table(_)) => {
                    let (k, n) = node.get(name)?;
                    key = Some(k);
                    node = n;
                }
                (Seg::Index(i), NodeKind::Array(items)) => {
                    key = None;
                    node = items.get(*i)?;
                }
                _ => return None,
            }
        }
        Some((key, node))
    }

    /// The value as a figment value (datetimes as strings), for layering.
    pub(super) fn to_figment(&self) -> Value {
        match &self.kind {
            NodeKind::String(s) | NodeKind::Datetime(s) => Value::from(s.clone()),
            NodeKind::Integer(i) => Value::from(*i),
            NodeKind::Float(f) => Value::from(*f),
            NodeKind::Boolean(b) => Value::from(*b),
            NodeKind::Array(items) => {
                Value::from(items.iter().map(Node::to_figment).collect::<Vec<_>>())
            }
            NodeKind::Table(entries) => Value::from(table_to_dict(entries)),
        }
    }
}

pub(crate) fn table_to_dict(entries: &[(Key, Node)]) -> Dict {
    entries
        .iter()
        .map(|(k, v)| (k.name.clone(), v.to_figment()))
        .collect()
}

// ---- the span protocol -------------------------------------------------------------------

type StructNames = (&'static str, &'static [&'static str]);

struct Names {
    spanned: StructNames,
    datetime_field: &'static str,
}

/// The struct and field names `toml` recognizes for spans and datetimes, captured from the
/// `Deserialize` impls of `toml::Spanned` and `toml::value::Datetime`.
fn names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(|| {
        let spanned = capture::<toml::Spanned<String>>()
            .filter(|(_, fields)| fields.len() == 3)
            .unwrap_or(("$__serde_spanned_private_Spanned", &[]));
        let datetime_field = capture::<toml::value::Datetime>()
            .and_then(|(_, fields)| fields.first().copied())
            .unwrap_or("$__toml_private_datetime");
        Names {
            spanned,
            datetime_field,
        }
    })
}

fn capture<T: de::DeserializeOwned>() -> Option<StructNames> {
    let slot = std::cell::Cell::new(None);
    let _ = T::deserialize(Recorder(&slot));
    slot.get()
}

/// A deserializer that only records the name and fields asked for by `deserialize_struct`.
struct Recorder<'a>(&'a std::cell::Cell<Option<StructNames>>);

#[derive(Debug)]
struct Recorded;

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("recorded")
    }
}

impl std::error::Error for Recorded {}

impl de::Error for Recorded {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Recorded
    }
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Recorded;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Recorded> {
        Err(Recorded)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Recorded> {
        self.0.set(Some((name, fields)));
        Err(Recorded)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Asks for a spanned value.
struct NodeSeed;
/// Asks for the bare value (inside the span wrapper).
struct BareSeed;
struct KeySeed;
struct NodeVisitor;
struct KeyVisitor;

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        let (name, fields) = names().spanned;
        d.deserialize_struct(name, fields, NodeVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for BareSeed {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        let (name, fields) = names().spanned;
        d.deserialize_struct(name, fields, KeyVisitor)
    }
}

fn bare(kind: NodeKind) -> Node {
    Node { span: None, kind }
}

/// Reads `start`, `end` and the value of the span protocol, the first key already read.
fn read_spanned<'de, A, T, S>(map: &mut A, seed: S) -> Result<(Range<usize>, T), A::Error>
where
    A: MapAccess<'de>,
    S: DeserializeSeed<'de, Value = T>,
{
    let start: usize = map.next_value()?;
    let _end_field: Option<String> = map.next_key()?;
    let end: usize = map.next_value()?;
    let _value_field: Option<String> = map.next_key()?;
    let value = map.next_value_seed(seed)?;
    Ok((start..end, value))
}

fn is_start_field(key: &Key) -> bool {
    key.span.is_none() && names().spanned.1.first() == Some(&key.name.as_str())
}

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key {
            name: v.to_string(),
            span: None,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let _start_field: Option<String> = map.next_key()?;
        let (span, name): (_, String) = read_spanned(&mut map, std::marker::PhantomData)?;
        Ok(Key {
            name,
            span: Some(span),
        })
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(bare(NodeKind::String(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(bare(NodeKind::String(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(bare(NodeKind::Integer(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(|v| bare(NodeKind::Integer(v)))
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(bare(NodeKind::Float(v)))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(bare(NodeKind::Boolean(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed)? {
            items.push(item);
        }
        Ok(bare(NodeKind::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if entries.is_empty() && key.span.is_none() {
                if is_start_field(&key) {
                    let (span, mut node) = read_spanned(&mut map, BareSeed)?;
                    node.span = Some(span);
                    return Ok(node);
                }
                if key.name == names().datetime_field {
                    return Ok(bare(NodeKind::Datetime(map.next_value()?)));
                }
            }
            let value = map.next_value_seed(NodeSeed)?;
            entries.push((key, value));
        }
        Ok(bare(NodeKind::Table(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_at<'a>(src: &'a str, span: &Option<Range<usize>>) -> &'a str {
        &src[span.clone().expect("span")]
    }

    #[test]
    fn spans_of_keys_and_values() {
        let src = r#"top.dotted = 1
[pipeline]
name = "x"
when = 2024-01-01T00:00:00Z
[pool]
env = { A = 1 }
initializer.task = "demo::setup"
[[stage]]
name = "a"
input = { range = [0, 3] }
[[stage]]
name = "b"
[stage.input]
from = "a"
"#;
        let doc = parse(src).unwrap();
        let (key, node) = doc.find(&["pipeline".into(), "when".into()]).unwrap();
        assert_eq!(text_at(src, &key.unwrap().span), "when");
        assert_eq!(node.kind, NodeKind::Datetime("2024-01-01T00:00:00Z".into()));
        let (key, node) = doc
            .find(&["pool".into(), "initializer".into(), "task".into()])
            .unwrap();
        assert_eq!(text_at(src, &key.unwrap().span), "task");
        assert_eq!(text_at(src, &node.span), "\"demo::setup\"");
        let (_, node) = doc
            .find(&[
                "stage".into(),
                0.into(),
                "input".into(),
                "range".into(),
                1.into(),
            ])
            .unwrap();
        assert_eq!(node.kind, NodeKind::Integer(3));
        assert_eq!(text_at(src, &node.span), "3");
        let (_, stage) = doc.find(&["stage".into(), 1.into()]).unwrap();
        assert!(text_at(src, &stage.span).starts_with("[[stage]]"));
        let (key, _) = doc
            .find(&["stage".into(), 1.into(), "input".into(), "from".into()])
            .unwrap();
        assert_eq!(text_at(src, &key.unwrap().span), "from");
        assert!(doc.find(&["nope".into()]).is_none());
    }

    #[test]
    fn syntax_errors_have_spans() {
        let err = parse("[pool]\nmax_workers = = 2\n").unwrap_err();
        assert!(err.span.is_some());
        assert!(!err.message.is_empty());
        let err = parse("a = 1\na = 2\n").unwrap_err();
        assert!(err.message.contains("duplicate"), "{}", err.message);
    }

    #[test]
    fn single_values() {
        assert_eq!(parse_value("4").unwrap().kind, NodeKind::Integer(4));
        assert_eq!(
            parse_value("\"auto\"").unwrap().kind,
            NodeKind::String("auto".into())
        );
        assert!(parse_value("auto").is_none());
        assert!(parse_value("1\nx = 2").is_none());
        assert!(parse_value("1 x = 2").is_none());
        assert!(matches!(
            parse_value("[1, 2]").unwrap().kind,
            NodeKind::Array(_)
        ));
        assert!(matches!(
            parse_value("{ GREETING = \"x\" }").unwrap().kind,
            NodeKind::Table(_)
        ));
    }
}
