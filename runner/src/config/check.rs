//! The shape of the pipeline file: sections where they belong, and every key known. Reports
//! every unknown key of the file at once, at the key's line and column, with the closest valid
//! key.

use super::diagnostic::{Diagnostic, SourceText};
use super::document::{Key, Node, NodeKind};
use super::extract::valid_stage_name;
use super::keys::{INITIALIZER_KEYS, INPUT_KEYS, KeySpec, SECTIONS, Section, closest, join_words};

/// The sections of a file, where they have the right shape.
pub(crate) struct FileSections<'a> {
    pub pipeline: Option<&'a Node>,
    pub pool: Option<&'a Node>,
    pub slurm: Option<&'a Node>,
    /// `(index in the file, stage table)`; `None` when the file has no `stage` key at all
    /// (or one that is not an array). Entries that are not tables are left out (and reported).
    pub stages: Option<Vec<(usize, &'a Node)>>,
    /// How many entries the `stage` array has, tables or not.
    pub stage_count: usize,
}

/// "stage `squares`", or "stage #2" for a stage without a usable name.
pub(crate) fn stage_title(index: usize, stage: &Node) -> String {
    match stage.get("name").map(|(_, n)| &n.kind) {
        Some(NodeKind::String(name)) if valid_stage_name(name) => format!("stage `{name}`"),
        _ => format!("stage #{}", index + 1),
    }
}

/// The `--set` spelling of a stage's keys: `stage.squares`, or `stage #2`.
pub(crate) fn stage_prefix(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) if valid_stage_name(name) => format!("stage.{name}"),
        _ => format!("stage #{}", index + 1),
    }
}

pub(crate) fn check_file<'a>(
    doc: &'a Node,
    src: &SourceText,
    diags: &mut Vec<Diagnostic>,
) -> FileSections<'a> {
    let mut out = FileSections {
        pipeline: None,
        pool: None,
        slurm: None,
        stages: None,
        stage_count: 0,
    };
    let checker = Checker { src };
    for (key, node) in doc.table().unwrap_or_default() {
        match key.name.as_str() {
            "pipeline" | "pool" | "slurm" => {
                let section = match key.name.as_str() {
                    "pipeline" => Section::Pipeline,
                    "pool" => Section::Pool,
                    _ => Section::Slurm,
                };
                if node.table().is_none() {
                    diags.push(
                        checker
                            .at(
                                format!("`{}` must be a table", key.name),
                                key.span.clone().or(node.span.clone()),
                            )
                            .help(format!("write a {} section", section.header()))
                            .key(key.name.clone()),
                    );
                    continue;
                }
                checker.keys(node, section, section.header(), &key.name, diags);
                match section {
                    Section::Pipeline => out.pipeline = Some(node),
                    Section::Pool => out.pool = Some(node),
                    Section::Slurm => out.slurm = Some(node),
                    Section::Stage => {}
                }
            }
            "stage" => match &node.kind {
                NodeKind::Array(items) => {
                    let mut stages = Vec::new();
                    for (i, item) in items.iter().enumerate() {
                        if item.table().is_none() {
                            diags.push(
                                checker
                                    .at(
                                        format!("stage #{} must be a table", i + 1),
                                        item.span.clone(),
                                    )
                                    .help("write each stage as a [[stage]] section")
                                    .key("stage"),
                            );
                            continue;
                        }
                        let name = match item.get("name").map(|(_, n)| &n.kind) {
                            Some(NodeKind::String(name)) => Some(name.as_str()),
                            _ => None,
                        };
                        checker.keys(
                            item,
                            Section::Stage,
                            &stage_title(i, item),
                            &stage_prefix(i, name),
                            diags,
                        );
                        stages.push((i, item));
                    }
                    out.stages = Some(stages);
                    out.stage_count = items.len();
                }
                _ => diags.push(
                    checker
                        .at("`stage` must be an array of tables", key.span.clone())
                        .help("write [[stage]] (with double brackets) before each stage")
                        .key("stage"),
                ),
            },
            other => {
                let is_table = node.table().is_some();
                let suggestion = closest(other, SECTIONS.iter().copied());
                let help = match suggestion {
                    Some("stage") => Some("did you mean `[[stage]]`?".to_string()),
                    Some(s) if is_table => Some(format!("did you mean `[{s}]`?")),
                    _ => {
                        let homes: Vec<String> = Section::ALL
                            .into_iter()
                            .filter(|s| s.spec(other).is_some())
                            .map(|s| s.header().to_string())
                            .collect();
                        if homes.is_empty() {
                            Some(
                                "the sections are [pipeline], [pool], [slurm] and [[stage]]"
                                    .to_string(),
                            )
                        } else {
                            Some(format!(
                                "`{other}` is a key of {}: put it under that section's header",
                                join_words(&homes, "or")
                            ))
                        }
                    }
                };
                let message = if is_table {
                    format!("unknown section `[{other}]`")
                } else {
                    format!("unknown key `{other}` at the top level")
                };
                diags.push(
                    checker
                        .at(message, key.span.clone())
                        .maybe_help(help)
                        .key(other.to_string()),
                );
            }
        }
    }
    out
}

struct Checker<'s> {
    src: &'s SourceText,
}

impl Checker<'_> {
    fn at(&self, message: impl Into<String>, span: Option<std::ops::Range<usize>>) -> Diagnostic {
        Diagnostic::new(message, self.src.layer()).at(span.map(|s| self.src.location(s)))
    }

    /// Checks the keys of a section table (and of the tables inside it with known keys).
    fn keys(
        &self,
        table: &Node,
        section: Section,
        title: &str,
        prefix: &str,
        diags: &mut Vec<Diagnostic>,
    ) {
        for (key, node) in table.table().unwrap_or_default() {
            let Some(spec) = section.spec(&key.name) else {
                let elsewhere = section.others_with(&key.name);
                let belongs = (!elsewhere.is_empty()).then(|| {
                    let places: Vec<String> =
                        elsewhere.iter().map(|s| s.header().to_string()).collect();
                    format!("`{}` is a key of {}", key.name, join_words(&places, "or"))
                });
                // A near miss here and an exact key elsewhere (`tasks` in [pool]: `task_timeout`,
                // or [slurm]'s `tasks`): say both.
                let help = match (closest(&key.name, section.names()), belongs) {
                    (Some(s), Some(belongs)) => format!("did you mean `{s}`? ({belongs})"),
                    (Some(s), None) => format!("did you mean `{s}`?"),
                    (None, Some(belongs)) => belongs,
                    (None, None) => {
                        let valid: Vec<String> =
                            section.names().map(|n| format!("`{n}`")).collect();
                        format!("valid keys: {}", valid.join(", "))
                    }
                };
                diags.push(self.unknown(key, title, help, &format!("{prefix}.{}", key.name)));
                continue;
            };
            let inner: &[KeySpec] = match spec.name {
                "initializer" => INITIALIZER_KEYS,
                "input" => INPUT_KEYS,
                _ => continue,
            };
            let Some(entries) = node.table() else {
                continue; // a wrong type, reported when the value is read
            };
            let sub_title = match spec.name {
                "input" => format!("the input of {title}"),
                _ => format!("`{prefix}.{}`", spec.name),
            };
            for (sub, _) in entries {
                if inner.iter().any(|k| k.name == sub.name) {
                    continue;
                }
                let help = match closest(&sub.name, inner.iter().map(|k| k.name)) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => {
                        let valid: Vec<String> =
                            inner.iter().map(|k| format!("`{}`", k.name)).collect();
                        format!("valid keys: {}", join_words(&valid, "and"))
                    }
                };
                let label = format!("{prefix}.{}.{}", spec.name, sub.name);
                diags.push(self.unknown(sub, &sub_title, help, &label));
            }
        }
    }

    fn unknown(&self, key: &Key, title: &str, help: String, label: &str) -> Diagnostic {
        self.at(
            format!("unknown key `{}` in {title}", key.name),
            key.span.clone(),
        )
        .help(help)
        .key(label.to_string())
    }
}
