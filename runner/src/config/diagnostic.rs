//! Configuration errors as the user sees them: what is wrong, where (file line and column, or
//! the environment variable, or the `--set` argument) and what to do.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where a configuration value came from. Layers apply lowest first: the file, the
/// environment, `--set`; `Default` is a value nobody set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "layer", content = "source", rename_all = "snake_case")]
pub enum Layer {
    /// The pipeline file (absolute path).
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
    /// A `--set KEY=VALUE` argument, as given.
    Set(String),
    /// The built-in default.
    Default,
}

impl Layer {
    /// "from environment variable `X`": how a message names the layer (empty for the file,
    /// whose location is printed under the message).
    pub fn from_phrase(&self) -> String {
        match self {
            Layer::File(_) => String::new(),
            Layer::Env(var) => format!(" from environment variable `{var}`"),
            Layer::Set(arg) => format!(" from `--set {arg}`"),
            Layer::Default => " from the default".into(),
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::File(path) => write!(f, "{}", path.display()),
            Layer::Env(var) => write!(f, "environment variable {var}"),
            Layer::Set(arg) => write!(f, "--set {arg}"),
            Layer::Default => f.write_str("default"),
        }
    }
}

/// A place in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// How many characters to underline (at least 1, at most to the end of the line).
    pub width: usize,
    /// The whole line, without its line break.
    pub line_text: String,
}

/// Where a resolved value came from: its layer and, for the file, its location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub layer: Layer,
    pub location: Option<Location>,
}

impl Origin {
    pub fn default_value() -> Self {
        Origin {
            layer: Layer::Default,
            location: None,
        }
    }
}

/// One problem with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// One line: what is wrong, naming the key and (for the environment and `--set`) the layer.
    pub message: String,
    pub layer: Layer,
    /// For problems in the file: where.
    pub location: Option<Location>,
    /// What to do: "did you mean `max_workers`?", the accepted forms, ...
    pub help: Option<String>,
    /// The key concerned, in `--set` syntax (`pool.max_workers`, `stage.squares.retries`),
    /// when there is one.
    pub key: Option<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, layer: Layer) -> Self {
        Diagnostic {
            message: message.into(),
            layer,
            location: None,
            help: None,
            key: None,
        }
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// For sorting: the file first in line order, then the environment, then `--set`.
    fn sort_key(&self) -> (u8, usize, usize) {
        let rank = match self.layer {
            Layer::File(_) => 0,
            Layer::Env(_) => 1,
            Layer::Set(_) => 2,
            Layer::Default => 3,
        };
        match &self.location {
            Some(l) => (rank, l.line, l.column),
            None => (rank, usize::MAX, 0),
        }
    }
}

/// Renders like rustc:
///
/// ```text
/// error: unknown key `max_worker` in [pool]
///  --> /abs/path/pipeline.toml:5:1
///   |
/// 5 | max_worker = 2
///   | ^^^^^^^^^^
///   = help: did you mean `max_workers`?
/// ```
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        let mut pad = String::from(" ");
        match (&self.layer, &self.location) {
            (Layer::File(path), Some(loc)) => {
                let num = loc.line.to_string();
                pad = " ".repeat(num.len() + 1);
                let gutter = " ".repeat(num.len());
                write!(
                    f,
                    "\n{gutter}--> {}:{}:{}",
                    path.display(),
                    loc.line,
                    loc.column
                )?;
                write!(f, "\n{pad}|")?;
                write!(f, "\n{num} | {}", loc.line_text)?;
                // Keep tabs so the caret lines up with the text above it.
                let lead: String = loc
                    .line_text
                    .chars()
                    .take(loc.column.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n{pad}| {lead}{}", "^".repeat(loc.width.max(1)))?;
            }
            (Layer::File(path), None) => write!(f, "\n --> {}", path.display())?,
            _ => {}
        }
        if let Some(help) = &self.help {
            let mut lines = help.lines();
            if let Some(first) = lines.next() {
                write!(f, "\n{pad}= help: {first}")?;
            }
            for line in lines {
                write!(f, "\n{pad}        {line}")?;
            }
        }
        Ok(())
    }
}

/// Everything wrong with a configuration, found before anything runs. `Display` prints every
/// diagnostic, separated by blank lines.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render_all(&self.diagnostics))]
pub struct ConfigError {
    pub diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        diagnostics.sort_by_key(Diagnostic::sort_key);
        diagnostics.dedup();
        ConfigError { diagnostics }
    }

    pub fn single(diagnostic: Diagnostic) -> Self {
        ConfigError {
            diagnostics: vec![diagnostic],
        }
    }
}

fn render_all(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (i, d) in diagnostics.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&d.to_string());
    }
    if diagnostics.len() > 1 {
        out.push_str(&format!(
            "\n\nerror: {} problems in the configuration",
            diagnostics.len()
        ));
    }
    out
}

/// The pipeline file's text, with a line index to turn byte spans into [`Location`]s.
#[derive(Debug)]
pub(crate) struct SourceText {
    pub path: PathBuf,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceText {
    pub(super) fn new(path: &Path, text: String) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceText {
            path: path.to_path_buf(),
            text,
            line_starts,
        }
    }

    pub(super) fn layer(&self) -> Layer {
        Layer::File(self.path.clone())
    }

    pub(super) fn location(&self, span: Range<usize>) -> Location {
        let start = floor_char_boundary(&self.text, span.start.min(self.text.len()));
        let line_idx = match self.line_starts.binary_search(&start) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let line_start = self.line_starts[line_idx];
        let line_end = self.text[line_start..]
            .find('\n')
            .map_or(self.text.len(), |i| line_start + i);
        let line_text = self.text[line_start..line_end].trim_end_matches('\r');
        let column = self.text[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(&self.text, span.end.clamp(start, line_end));
        let width = self.text[start..end]
            .trim_end_matches(['\r', '\n'])
            .chars()
            .count()
            .max(1);
        Location {
            line: line_idx + 1,
            column,
            width,
            line_text: line_text.to_string(),
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let src = SourceText::new(
            Path::new("/p.toml"),
            "a = 1\n[pool]\nmax_worker = 2\n".into(),
        );
        let at = src.text.find("max_worker").unwrap();
        let loc = src.location(at..at + 10);
        assert_eq!(
            loc,
            Location {
                line: 3,
                column: 1,
                width: 10,
                line_text: "max_worker = 2".into()
            }
        );
        // A span running over several lines is cut at the end of its first line.
        let loc = src.location(6..src.text.len());
        assert_eq!((loc.line, loc.column, loc.width), (2, 1, 6));
        // At the very end.
        let loc = src.location(src.text.len()..src.text.len());
        assert_eq!((loc.line, loc.width), (4, 1));
    }

    #[test]
    fn renders_like_rustc() {
        let src = SourceText::new(Path::new("/p.toml"), "[pool]\n\tmax_worker = 2\n".into());
        let at = src.text.find("max_worker").unwrap();
        let d = Diagnostic::new("unknown key `max_worker` in [pool]", src.layer())
            .at(Some(src.location(at..at + 10)))
            .help("did you mean `max_workers`?");
        assert_eq!(
            d.to_string(),
            "error: unknown key `max_worker` in [pool]\n \
             --> /p.toml:2:2\n  \
             |\n\
             2 | \tmax_worker = 2\n  \
             | \t^^^^^^^^^^\n  \
             = help: did you mean `max_workers`?"
        );
        let d = Diagnostic::new(
            "invalid value for `pool.max_workers` from environment variable `X`: bad",
            Layer::Env("X".into()),
        )
        .help("one\ntwo");
        assert_eq!(
            d.to_string(),
            "error: invalid value for `pool.max_workers` from environment variable `X`: bad\n \
             = help: one\n         two"
        );
    }
}
