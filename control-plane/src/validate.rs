//! `pavilion-control validate PATH...`: the compiler's verdict on files, before they are
//! applied. Files are compiled together, so duplicates and policy targets across files
//! are checked too.

use std::path::PathBuf;

use crate::compile::{Outcome, compile};
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

pub fn validate(paths: &[PathBuf]) -> Verdict {
    let mut items: Vec<Item> = Vec::new();
    let mut verdict = Verdict::default();
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
    let compiled = compile(&items);
    verdict.documents = items.len();
    for (item, report) in items.iter().zip(&compiled.reports) {
        // A document that could not be read knows the exact line of the problem.
        let origin = match (&item.origin, &item.parsed) {
            (Origin::File { path, .. }, Err(e)) => Origin::File {
                path: path.clone(),
                line: e.line,
            },
            (origin, _) => origin.clone(),
        };
        match &report.outcome {
            Outcome::Rejected { errors, .. } => {
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
    verdict
}
