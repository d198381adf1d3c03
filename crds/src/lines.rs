//! Where a field is written: the line of a path such as `spec.rules[0].backends[0].url` in
//! a document, so a validation error points at the offending field rather than at the
//! document's first line. Read with a YAML event parser that keeps positions (serde's
//! readers keep none once a document is read).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// The line (1-based, in `text`) of `field` in the document of `text` whose content starts
/// at `document_line`, or of its nearest ancestor written there; `None` when the document
/// is not found.
pub fn field_line(text: &str, document_line: usize, field: &str) -> Option<usize> {
    let (first_line, chunk) =
        crate::document::document_chunks(text)
            .into_iter()
            .find(|(first, chunk)| {
                crate::document::first_content_line(chunk).map(|offset| first + offset)
                    == Some(document_line)
            })?;
    let lines = field_lines(chunk);
    let mut path = field;
    loop {
        if let Some(line) = lines.get(path) {
            return Some(first_line + line - 1);
        }
        let cut = path.rfind(['.', '['])?;
        path = &path[..cut];
    }
}

/// Every path of a document with the line (1-based, in `chunk`) where it is written: a
/// mapping entry at its key, a sequence element at its start.
pub fn field_lines(chunk: &str) -> HashMap<String, usize> {
    let mut receiver = Receiver::default();
    // A document that does not parse has no lines to give; what was read so far is kept.
    let _ = Parser::new_from_str(chunk).load(&mut receiver, false);
    receiver.lines
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Receiver {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Receiver {
    /// The path of the value that starts here, recording the line of sequence elements.
    /// `None` for a mapping key (recorded as the entry's line) and at the top.
    fn value_path(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => {
                let key = key.take()?;
                Some(join(path, &key))
            }
            Frame::Seq { path, index } => {
                let element = format!("{path}[{index}]");
                *index += 1;
                self.lines.entry(element.clone()).or_insert(line);
                Some(element)
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Receiver {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    self.lines.entry(join(path, &text)).or_insert(line);
                    *key = Some(text);
                } else {
                    self.value_path(line);
                }
            }
            Event::Alias(_) => {
                self.value_path(line);
            }
            Event::MappingStart(..) => {
                let path = self.value_path(line).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(line).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# a route
apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: { name: orders }
spec:
  rules:
    - matches: [{ path: { type: PathPrefix, value: /a } }]
      backends:
        - url: http://127.0.0.1:9000
        - { url: 'ftp://x', weight: 3 }
---
kind: Route
spec:
  rules: []
";

    #[test]
    fn fields_are_found_on_their_line_block_or_flow() {
        let line = |field| field_line(TEXT, 2, field);
        assert_eq!(line("spec.rules[0].backends[1].url"), Some(10));
        assert_eq!(line("spec.rules[0].backends[1]"), Some(10));
        assert_eq!(line("spec.rules[0].backends[0].url"), Some(9));
        assert_eq!(line("spec.rules[0].backends"), Some(8));
        assert_eq!(line("spec.rules[0].matches[0].path.value"), Some(7));
        assert_eq!(line("metadata.name"), Some(4));
        // A field that is not written: its nearest written ancestor.
        assert_eq!(line("spec.rules[0].timeout"), Some(7));
        assert_eq!(line("metadata.namespace"), Some(4));
        // The second document, by its first line.
        assert_eq!(field_line(TEXT, 12, "spec.rules"), Some(14));
        assert_eq!(field_line(TEXT, 5, "spec"), None);
    }
}
