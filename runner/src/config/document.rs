//! The pipeline file as a tree that remembers where every key and value is.
//!
//! Built from `toml`'s own spanned document ([`toml::de::DeTable::parse`], the supported span
//! API since toml 0.9): every key and value carries its byte range in the source, implicit
//! tables (`a.b = 1`) included, and tables keep document order (`preserve_order`).

use std::ops::Range;

use figment::value::{Dict, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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
    let doc = DeTable::parse(text).map_err(|e| SyntaxError {
        // One line ("invalid string; expected `"`, `'`"): the location follows it.
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
        span: e.span(),
    })?;
    let span = doc.span();
    Ok(Node {
        span: Some(span),
        kind: table_kind(doc.get_ref())?,
    })
}

fn table_kind(table: &DeTable<'_>) -> Result<NodeKind, SyntaxError> {
    let entries = table
        .iter()
        .map(|(key, value)| {
            let key = Key {
                name: key.get_ref().to_string(),
                span: Some(key.span()),
            };
            Ok((key, node(value)?))
        })
        .collect::<Result<Vec<_>, SyntaxError>>()?;
    Ok(NodeKind::Table(entries))
}

fn node(value: &Spanned<DeValue<'_>>) -> Result<Node, SyntaxError> {
    let span = value.span();
    let out_of_range = |what: &str| SyntaxError {
        message: format!("{what} out of range"),
        span: Some(span.clone()),
    };
    let kind = match value.get_ref() {
        DeValue::String(s) => NodeKind::String(s.to_string()),
        DeValue::Integer(i) => NodeKind::Integer(
            i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| out_of_range("integer"))?,
        ),
        DeValue::Float(f) => {
            let v: f64 = f.as_str().parse().map_err(|_| out_of_range("float"))?;
            if v.is_infinite() && !f.as_str().contains("inf") {
                return Err(out_of_range("float"));
            }
            NodeKind::Float(v)
        }
        DeValue::Boolean(b) => NodeKind::Boolean(*b),
        DeValue::Datetime(d) => NodeKind::Datetime(d.to_string()),
        DeValue::Array(items) => NodeKind::Array(items.iter().map(node).collect::<Result<_, _>>()?),
        DeValue::Table(table) => table_kind(table)?,
    };
    Ok(Node {
        span: Some(span),
        kind,
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
