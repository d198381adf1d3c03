//! `pavilion-control validate PATH...`: the compiler's verdict on files, before they are
//! applied. Files are compiled together, so duplicates and policy targets across files
//! are checked too.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::compile::{CompileOptions, Outcome, compile_with};
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

/// Validates the documents under `paths` as they would stand among `context` (what a
/// source already holds; documents of `paths` replace those of `context` with the same
/// key). Only problems of the new documents are reported; the new items are returned.
pub fn validate_with(
    mut context: Vec<Item>,
    paths: &[PathBuf],
    options: &CompileOptions,
) -> (Verdict, Vec<Item>) {
    let mut verdict = Verdict::default();
    let mut items: Vec<Item> = Vec::new();
    for path in paths {
        if path.is_dir() {
            match load_tree(path) {
                Ok(found) => items.extend(found),
                Err(e) => verdict
                    .errors
                    .push(format!("{}: cannot read directory: {e}", path.display())),
            }
        } else {
            items.extend(load_file(path));
        }
    }
    let replaced: HashSet<_> = items.iter().filter_map(Item::key).collect();
    context.retain(|item| item.key().is_none_or(|key| !replaced.contains(&key)));
    let first_new = context.len();
    context.extend(items.iter().cloned());
    let compiled = compile_with(&context, options);
    verdict.documents = items.len();
    for (item, report) in items.iter().zip(&compiled.reports[first_new..]) {
        // A document that could not be read knows the exact line of the problem.
        let origin = match (&item.origin, &item.parsed) {
            (Origin::File { path, .. }, Err(e)) => Origin::File {
                path: path.clone(),
                line: e.line,
            },
            (origin, _) => origin.clone(),
        };
        match &report.outcome {
            Outcome::Rejected { errors, .. } | Outcome::Stale { errors, .. } => {
                verdict
                    .errors
                    .extend(errors.iter().map(|e| format!("{origin}: {e}")));
            }
            Outcome::Accepted { warnings } => {
                verdict
                    .warnings
                    .extend(warnings.iter().map(|w| format!("{origin}: warning: {w}")));
            }
        }
    }
    (verdict, items)
}
