//! `pavilion-control validate PATH...`: the compiler's verdict on files, before they are
//! applied. Files are compiled together, so duplicates and policy targets across files
//! are checked too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use pavilion_crds::FieldError;

use crate::compile::{CompileOptions, Outcome, Reason, compile_with};
use crate::source::dir::{load_file, load_tree};
use crate::source::{Item, Origin};

/// The verdict: one `file:line: field: message` line per problem.
#[derive(Debug, Default)]
pub struct Verdict {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub documents: usize,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}

pub fn validate(paths: &[PathBuf], options: &CompileOptions) -> Verdict {
    validate_with(Vec::new(), paths, options).0
}

/// How documents read from standard input (`-`) are named in messages.
pub const STDIN: &str = "<stdin>";

/// Standard input and its documents, like a file's.
fn read_stdin() -> std::io::Result<(String, Vec<Item>)> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
    let path = std::sync::Arc::from(std::path::Path::new(STDIN));
    let items = pavilion_crds::parse_documents(&text)
        .into_iter()
        .map(|doc| Item::from_document(&path, doc))
        .collect();
    Ok((text, items))
}

/// The texts problems were found in, read again only when a problem needs its line.
#[derive(Default)]
struct Texts(std::collections::HashMap<PathBuf, Option<String>>);

impl Texts {
    fn field_line(&mut self, path: &Path, document_line: usize, field: &str) -> Option<usize> {
        let text = self
            .0
            .entry(path.to_owned())
            .or_insert_with(|| std::fs::read_to_string(path).ok())
            .as_deref()?;
        pavilion_crds::lines::field_line(text, document_line, field)
    }
}

/// What the compiler says about one document, as `validate`, `kv put` and the admission
/// webhook report it.
#[derive(Debug, Default, PartialEq)]
pub struct Findings {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<FieldError>,
}

/// Judges `items` as they would stand among `context` (what a source already holds;
/// documents of `items` replace those of `context` with the same key): one [`Findings`]
/// per item. A policy or placement whose target is not there (yet) is a warning, not an
/// error: targets may arrive later, or live in another file, and the compiler attaches the
/// policy as soon as its target is accepted.
pub fn judge(mut context: Vec<Item>, items: &[Item], options: &CompileOptions) -> Vec<Findings> {
    let replaced: HashSet<_> = items.iter().filter_map(|i| i.identity.clone()).collect();
    context.retain(|item| {
        item.identity
            .as_ref()
            .is_none_or(|key| !replaced.contains(key))
    });
    let first_new = context.len();
    context.extend(items.iter().cloned());
    let compiled = compile_with(&context, options);
    compiled.reports[first_new..]
        .iter()
        .map(|report| match &report.outcome {
            Outcome::Rejected {
                reason: Reason::TargetNotFound,
                errors,
            } => Findings {
                errors: Vec::new(),
                warnings: errors
                    .iter()
                    .map(|e| FieldError {
                        field: e.field.clone(),
                        message: format!(
                            "{}; accepted, it takes effect once the target is",
                            e.message
                        ),
                    })
                    .collect(),
            },
            Outcome::Rejected { errors, .. } | Outcome::Stale { errors, .. } => Findings {
                errors: errors.clone(),
                warnings: Vec::new(),
            },
            Outcome::Accepted { warnings } => Findings {
                errors: Vec::new(),
                warnings: warnings.clone(),
            },
        })
        .collect()
}

/// Validates the documents under `paths` as they would stand among `context` (see
/// [`judge`]). Only problems of the new documents are reported; the new items are returned.
pub fn validate_with(
    context: Vec<Item>,
    paths: &[PathBuf],
    options: &CompileOptions,
) -> (Verdict, Vec<Item>) {
    let mut verdict = Verdict::default();
    let mut items: Vec<Item> = Vec::new();
    let mut stdin_text = None;
    for path in paths {
        let found = if path.as_os_str() == "-" {
            match read_stdin() {
                Ok((text, found)) => {
                    stdin_text = Some(text);
                    found
                }
                Err(e) => {
                    verdict
                        .errors
                        .push(format!("{STDIN}: cannot read standard input: {e}"));
                    continue;
                }
            }
        } else if path.is_dir() {
            match load_tree(path) {
                Ok(found) => found,
                Err(e) => {
                    verdict
                        .errors
                        .push(format!("{}: cannot read directory: {e}", path.display()));
                    continue;
                }
            }
        } else {
            load_file(path)
        };
        let empty = found.is_empty();
        items.extend(found);
        if empty {
            // An empty file or directory is almost always a wrong path or a failed
            // redirect: say so instead of reporting success for nothing.
            verdict.errors.push(format!(
                "{}: no resources (an empty file, or a directory without .yaml, .yml or .json files)",
                path.display()
            ));
        }
    }
    let findings = judge(context, &items, options);
    verdict.documents = items.len();
    let mut texts = Texts::default();
    if let Some(text) = stdin_text {
        texts.0.insert(PathBuf::from(STDIN), Some(text));
    }
    for (item, findings) in items.iter().zip(findings) {
        // Each problem at the exact line: a document that could not be read knows it; for
        // the others, the line where the field (or its nearest ancestor) is written.
        let at = |field: &str, texts: &mut Texts| match (&item.origin, &item.parsed) {
            (Origin::File { path, .. }, Err(e)) => Origin::File {
                path: path.clone(),
                line: e.line,
            },
            (Origin::File { path, line }, Ok(_)) => Origin::File {
                path: path.clone(),
                line: texts.field_line(path, *line, field).unwrap_or(*line),
            },
            (origin, _) => origin.clone(),
        };
        for error in &findings.errors {
            let origin = at(&error.field, &mut texts);
            verdict.errors.push(format!("{origin}: {error}"));
        }
        for warning in &findings.warnings {
            let origin = at(&warning.field, &mut texts);
            verdict
                .warnings
                .push(format!("{origin}: warning: {warning}"));
        }
    }
    (verdict, items)
}
