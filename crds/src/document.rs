//! Reads resources from YAML (or JSON) text, one or many documents per file, with the line
//! of every problem. Every source uses this reader, so a document means the same thing in a
//! directory, in a KV bucket and in `validate`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::resource::DEFAULT_NAMESPACE;
use crate::{
    API_VERSION, ApiKey, CorsPolicy, Kind, RateLimitPolicy, Resource, ResourceKey, Route, Shard,
    TenantPlacement, TokenRevocation,
};

/// A document that could not be read as a resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct DocumentError {
    /// 1-based line in the text given to [`parse_documents`].
    pub line: usize,
    /// Path of the offending field (`spec.rules[0].timeout`), or `document`.
    pub field: String,
    pub message: String,
}

/// One non-empty document of a text.
#[derive(Clone, Debug)]
pub struct ParsedDocument {
    /// 1-based line where the document's content starts.
    pub line: usize,
    /// Which resource the document claims to be (`kind`, `metadata.namespace`,
    /// `metadata.name`), read leniently: known even when `result` is an error, as long as the
    /// text is YAML and names a known kind. A broken edit of a live resource is recognised
    /// by it, so the last accepted version can go on serving.
    pub identity: Option<ResourceKey>,
    pub result: Result<Resource, DocumentError>,
}

/// Largest document read; Kubernetes itself stores objects of at most about 1.5 MiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Documents read from one text; the rest is reported in one error, not read.
pub const MAX_DOCUMENTS: usize = 20_000;
/// Problems listed per text; the others are counted in one closing error.
pub const MAX_LISTED_ERRORS: usize = 100;

/// Splits `text` into YAML documents and reads each one. Empty documents (only comments or
/// blank lines) are skipped; every other document yields a resource or an error.
///
/// Bounded whatever the text: documents over [`MAX_DOCUMENT_BYTES`] are refused unread,
/// at most [`MAX_DOCUMENTS`] are read, and past [`MAX_LISTED_ERRORS`] problems the rest are
/// summed up in one error, so a huge file of garbage costs little memory and a small status.
pub fn parse_documents(text: &str) -> Vec<ParsedDocument> {
    parse_documents_except(text, &|_| false)
        .into_iter()
        .filter_map(|document| match document {
            Document::Parsed { document, .. } => Some(document),
            Document::Known { .. } => None,
        })
        .collect()
}

/// A document of [`parse_documents_except`], with its text.
// Most documents of a read are parsed ones: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Document<'a> {
    /// Read (the text is empty for the closing summaries of what was not read or listed).
    Parsed {
        document: ParsedDocument,
        text: &'a str,
    },
    /// Recognised by its text and not read: the caller holds its resource already.
    Known { line: usize, text: &'a str },
}

/// [`parse_documents`], except that a document whose text `known` recognises is not read
/// again: a file edited in one place reads that one document, not the hundred around it.
pub fn parse_documents_except<'a>(
    text: &'a str,
    known: &dyn Fn(&str) -> bool,
) -> Vec<Document<'a>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (chunks, unread) = split_documents(text, MAX_DOCUMENTS);
    let mut documents = Vec::new();
    let mut errors = 0usize;
    let mut unlisted: Option<(usize, usize)> = None;
    for (first_line, chunk) in chunks {
        let Some(line) = first_content_line(chunk).map(|offset| first_line + offset) else {
            continue;
        };
        if known(chunk) {
            documents.push(Document::Known { line, text: chunk });
            continue;
        }
        let (identity, result) = if chunk.len() > MAX_DOCUMENT_BYTES {
            (
                None,
                Err(DocumentError {
                    line,
                    field: "document".into(),
                    message: format!(
                        "{} bytes; documents of more than {MAX_DOCUMENT_BYTES} bytes are not read",
                        chunk.len()
                    ),
                }),
            )
        } else {
            parse_document(chunk, first_line, line)
        };
        if result.is_err() {
            errors += 1;
            if errors > MAX_LISTED_ERRORS {
                let (_, count) = unlisted.get_or_insert((line, 0));
                *count += 1;
                continue;
            }
        }
        let identity = match &result {
            Ok(resource) => Some(resource.key()),
            Err(_) => identity,
        };
        documents.push(Document::Parsed {
            document: ParsedDocument {
                line,
                identity,
                result,
            },
            text: chunk,
        });
    }
    let summary = |document| Document::Parsed { document, text: "" };
    if let Some((line, count)) = unlisted {
        documents.push(summary(ParsedDocument {
            line,
            identity: None,
            result: Err(DocumentError {
                line,
                field: "document".into(),
                message: format!(
                    "{count} more invalid documents from here on (only the first {MAX_LISTED_ERRORS} problems are listed)"
                ),
            }),
        }));
    }
    if let Some(line) = unread {
        documents.push(summary(ParsedDocument {
            line,
            identity: None,
            result: Err(DocumentError {
                line,
                field: "document".into(),
                message: format!(
                    "more than {MAX_DOCUMENTS} documents; the rest of the text from here on is not read"
                ),
            }),
        }));
    }
    documents
}

/// The documents of `text` as `(first line, text)` pairs, markers excluded: for tools that
/// rewrite one document of a file and keep the others byte for byte.
pub fn document_chunks(text: &str) -> Vec<(usize, &str)> {
    split_documents(text, usize::MAX).0
}

/// Splits at document markers (`---` or `...` at the start of a line), into at most `max`
/// documents; when there are more, also the line where the unread rest begins. A marker in
/// column 0 ends any block scalar in YAML too, so this split agrees with a full YAML parser.
fn split_documents(text: &str, max: usize) -> (Vec<(usize, &str)>, Option<usize>) {
    let mut documents = Vec::new();
    // Documents with content so far (empty ones are free).
    let mut counted = 0;
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let is_marker = |marker: &str| {
            content
                .strip_prefix(marker)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") || is_marker("...") {
            let chunk = &text[start..offset];
            counted += usize::from(first_content_line(chunk).is_some());
            documents.push((start_line, chunk));
            // Whatever follows is unread, if it holds anything but blanks and comments.
            if counted >= max && first_content_line(&text[offset + 3..]).is_some() {
                return (documents, Some(index + 1));
            }
            if is_marker("---") {
                // Content may follow the marker on its line (`--- {kind: Route, …}`): the
                // next document starts right after the three dashes, on this line.
                start = offset + 3;
                start_line = index + 1;
            } else {
                start = offset + line.len();
                start_line = index + 2;
            }
        }
        offset += line.len();
    }
    documents.push((start_line, &text[start..]));
    (documents, None)
}

/// Offset (in lines) of the first line that is neither blank nor a comment.
pub(crate) fn first_content_line(chunk: &str) -> Option<usize> {
    chunk.lines().position(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#') && l != "%YAML" && !l.starts_with("%YAML ")
    })
}

/// Top-level shape of every resource document. Unknown top-level fields are errors, like
/// unknown fields anywhere in a spec; `status` is accepted and ignored (it is ours to write).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope<S> {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: ObjectMeta,
    spec: S,
    #[allow(dead_code)]
    #[serde(default)]
    status: Option<IgnoredAny>,
}

/// Reads one document: the identity it claims (see [`ParsedDocument::identity`]) and the
/// resource, or why it is not one.
fn parse_document(
    chunk: &str,
    first_line: usize,
    content_line: usize,
) -> (Option<ResourceKey>, Result<Resource, DocumentError>) {
    let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(chunk) {
        Ok(value) => value,
        Err(e) => {
            let line = e
                .location()
                .map_or(content_line, |l| first_line + l.line() - 1);
            let error = DocumentError {
                line,
                field: "document".into(),
                message: strip_location(&e.to_string()),
            };
            return (None, Err(error));
        }
    };
    (
        claimed_identity(&value),
        read_resource(&value, chunk, first_line, content_line),
    )
}

/// `kind`, `metadata.namespace` (default `default`) and `metadata.name`, when the document
/// names a known kind and a name.
fn claimed_identity(value: &serde_yaml_ng::Value) -> Option<ResourceKey> {
    let kind = Kind::from_name(value.get("kind")?.as_str()?)?;
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.into();
    let namespace = match metadata.get("namespace") {
        None => DEFAULT_NAMESPACE.into(),
        Some(namespace) => namespace.as_str()?.into(),
    };
    Some(ResourceKey {
        kind,
        namespace,
        name,
    })
}

fn read_resource(
    value: &serde_yaml_ng::Value,
    chunk: &str,
    first_line: usize,
    content_line: usize,
) -> Result<Resource, DocumentError> {
    let error_at = |line: usize, field: &str, message: String| DocumentError {
        line,
        field: field.to_owned(),
        message,
    };
    let Some(map) = value.as_mapping() else {
        return Err(error_at(
            content_line,
            "document",
            "expected a mapping with apiVersion, kind, metadata and spec".into(),
        ));
    };
    check_metadata_keys(map, chunk, first_line, content_line)?;
    let text_field = |name: &str| map.get(name).and_then(|v| v.as_str());
    match text_field("apiVersion") {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(error_at(
                content_line,
                "apiVersion",
                format!("`{other}` is not served here; use {API_VERSION}"),
            ));
        }
        None => {
            return Err(error_at(
                content_line,
                "apiVersion",
                format!("required ({API_VERSION})"),
            ));
        }
    }
    let kind = match text_field("kind") {
        Some(name) => Kind::from_name(name).ok_or_else(|| {
            let known: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            error_at(
                content_line,
                "kind",
                format!(
                    "unknown kind `{name}`; expected one of {}",
                    known.join(", ")
                ),
            )
        })?,
        None => return Err(error_at(content_line, "kind", "required".into())),
    };
    let typed = |chunk| -> Result<Resource, DocumentError> {
        Ok(match kind {
            Kind::Route => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::Route(Route {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
            Kind::Shard => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::Shard(Shard {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
            Kind::TenantPlacement => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::TenantPlacement(TenantPlacement {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
            Kind::RateLimitPolicy => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::RateLimitPolicy(RateLimitPolicy {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
            Kind::CorsPolicy => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::CorsPolicy(CorsPolicy {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
            Kind::ApiKey => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::ApiKey(ApiKey {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
            Kind::TokenRevocation => {
                let e: Envelope<_> = typed_document(chunk, first_line)?;
                Resource::TokenRevocation(TokenRevocation {
                    metadata: with_namespace(e.metadata),
                    spec: e.spec,
                    status: None,
                })
            }
        })
    };
    typed(chunk)
}

/// Fields of `metadata` a document may carry (Kubernetes' ObjectMeta). ObjectMeta's own
/// reader skips unknown fields, which would let `namespce: shop` land in `default` silently.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

fn check_metadata_keys(
    document: &serde_yaml_ng::Mapping,
    chunk: &str,
    first_line: usize,
    content_line: usize,
) -> Result<(), DocumentError> {
    let Some(metadata) = document.get("metadata").and_then(|m| m.as_mapping()) else {
        return Ok(());
    };
    for key in metadata.keys() {
        let name = key.as_str().unwrap_or_default();
        if !METADATA_FIELDS.contains(&name) {
            // The line of the first `name:` in the document, else the document's start.
            let line = chunk
                .lines()
                .position(|l| l.contains(&format!("{name}:")))
                .map_or(content_line, |i| first_line + i);
            return Err(DocumentError {
                line,
                field: format!("metadata.{name}"),
                message: format!("unknown field `{name}` in metadata"),
            });
        }
    }
    Ok(())
}

fn with_namespace(mut metadata: ObjectMeta) -> ObjectMeta {
    metadata
        .namespace
        .get_or_insert_with(|| DEFAULT_NAMESPACE.to_owned());
    metadata
}

/// Deserializes the chunk into `T`, reporting the path of the failing field and its line.
fn typed_document<T: DeserializeOwned>(chunk: &str, first_line: usize) -> Result<T, DocumentError> {
    let deserializer = serde_yaml_ng::Deserializer::from_str(chunk);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = strip_location(&inner.to_string());
        // serde_yaml prefixes the container's path ("spec.rules[0]: unknown field …");
        // the field is reported on its own.
        if let Some((prefix, rest)) = message.split_once(": ")
            && !prefix.contains(char::is_whitespace)
            && path.starts_with(prefix)
        {
            message = rest.to_owned();
        }
        DocumentError {
            line: inner
                .location()
                .map_or(first_line, |l| first_line + l.line() - 1),
            field: if path == "." {
                "document".to_owned()
            } else {
                path
            },
            message,
        }
    })
}

/// serde_yaml appends " at line L column C"; the line is reported separately.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: gateway.pavilion.dev/v1alpha1
kind: Route
metadata: { name: orders, namespace: shop }
spec:
  hosts: [api.example.com]
  rules:
    - backends: [{ url: http://127.0.0.1:9000 }]
";

    fn only_error(text: &str) -> DocumentError {
        let docs = parse_documents(text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.into_iter()
            .next()
            .unwrap()
            .result
            .expect_err("should be rejected")
    }

    #[test]
    fn reads_a_route() {
        let docs = parse_documents(ROUTE);
        let Resource::Route(route) = docs[0].result.as_ref().unwrap() else {
            panic!()
        };
        assert_eq!(docs[0].line, 1);
        assert_eq!(route.spec.hosts, ["api.example.com"]);
        assert_eq!(route.metadata.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn a_routes_sequences_hold_no_spare_room() {
        // From YAML, and from JSON as the API server sends resources.
        let docs = parse_documents(ROUTE);
        let Resource::Route(from_yaml) = docs[0].result.as_ref().unwrap() else {
            panic!()
        };
        let json = serde_json::to_string(from_yaml).unwrap();
        let from_json: crate::route::Route = serde_json::from_str(&json).unwrap();
        for route in [from_yaml, &from_json] {
            let spec = &route.spec;
            assert_eq!((spec.hosts.len(), spec.hosts.capacity()), (1, 1));
            assert_eq!((spec.rules.len(), spec.rules.capacity()), (1, 1));
            let backends = &spec.rules[0].backends;
            assert_eq!((backends.len(), backends.capacity()), (1, 1));
        }
    }

    #[test]
    fn splits_documents_and_keeps_line_numbers() {
        let text = format!(
            "# leading comment\n---\n{ROUTE}---\n\n---\n# only a comment\n...\n{}",
            ROUTE.replace("orders", "billing")
        );
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 3);
        assert_eq!(docs[1].line, 3 + 7 + 1 + 1 + 1 + 1 + 1);
        assert_eq!(docs[1].result.as_ref().unwrap().name(), "billing");
    }

    #[test]
    fn missing_namespace_means_default() {
        let docs = parse_documents(&ROUTE.replace(", namespace: shop", ""));
        assert_eq!(docs[0].result.as_ref().unwrap().namespace(), "default");
    }

    #[test]
    fn unknown_field_names_its_path_and_line() {
        let e = only_error(&ROUTE.replace("    - backends", "    - timout: 3s\n      backends"));
        assert_eq!(e.line, 7);
        assert_eq!(e.field, "spec.rules[0].timout");
        assert!(e.message.starts_with("unknown field `timout`"), "{e}");
    }

    #[test]
    fn unknown_top_level_field_is_rejected() {
        let e = only_error(&format!("{ROUTE}specs: {{}}\n"));
        assert_eq!(e.field, "specs");
        assert_eq!(e.line, 8);
    }

    #[test]
    fn unknown_kind_and_api_version() {
        let e = only_error(&ROUTE.replace("kind: Route", "kind: Ingress"));
        assert_eq!(e.field, "kind");
        assert!(e.message.contains("unknown kind `Ingress`"));
        let e = only_error(&ROUTE.replace("gateway.pavilion.dev/v1alpha1", "v1"));
        assert_eq!(e.field, "apiVersion");
    }

    #[test]
    fn malformed_yaml_reports_its_line() {
        let e = only_error("apiVersion: x\nkind: [unclosed\nmetadata: {}\n");
        assert_eq!(e.field, "document");
        assert!(e.line >= 2, "{e}");
    }

    #[test]
    fn wrong_types_and_enum_values() {
        let e = only_error(&ROUTE.replace(
            "    - backends",
            "    - matches: [{ path: { type: Prefix, value: / } }]\n      backends",
        ));
        assert!(e.field.starts_with("spec.rules[0].matches[0].path"), "{e}");
        assert!(e.message.contains("unknown variant `Prefix`"), "{e}");
        let e = only_error(&ROUTE.replace("[api.example.com]", "api.example.com"));
        assert_eq!(e.field, "spec.hosts");
    }

    #[test]
    fn unknown_metadata_fields_are_refused() {
        let e = only_error(&ROUTE.replace("namespace: shop", "namespce: shop"));
        assert_eq!((e.field.as_str(), e.line), ("metadata.namespce", 3));
    }

    #[test]
    fn byte_order_marks_and_inline_documents() {
        let docs = parse_documents(&format!("\u{feff}# c\n---\n{ROUTE}"));
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].line, 3);
        assert!(docs[0].result.is_ok());

        let inline = "--- {apiVersion: gateway.pavilion.dev/v1alpha1, kind: Route, metadata: {name: a}, spec: {rules: [{backends: [{url: 'http://x:1'}]}]}}\n--- {apiVersion: v1}\n";
        let docs = parse_documents(inline);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].result.as_ref().unwrap().name(), "a");
        assert_eq!(docs[1].line, 2);
        assert_eq!(docs[1].result.as_ref().unwrap_err().field, "apiVersion");
    }

    #[test]
    fn a_document_that_is_not_a_mapping() {
        assert_eq!(only_error("- just\n- a list\n").field, "document");
    }

    #[test]
    fn oversized_documents_are_refused_unread() {
        let text = format!(
            "{ROUTE}---\nkind: Route\nx: \"{}\"\n",
            "a".repeat(MAX_DOCUMENT_BYTES)
        );
        let docs = parse_documents(&text);
        assert_eq!(docs.len(), 2);
        assert!(docs[0].result.is_ok());
        let error = docs[1].result.as_ref().unwrap_err();
        assert_eq!(error.line, 9);
        assert!(error.message.contains("are not read"), "{error}");
    }

    #[test]
    fn problems_past_the_listed_ones_are_summed_up_and_good_documents_still_read() {
        let mut text = String::new();
        for i in 0..(MAX_LISTED_ERRORS + 50) {
            text.push_str(&format!("---\nnot: a resource {i}\n"));
        }
        text.push_str("---\n");
        text.push_str(ROUTE);
        let docs = parse_documents(&text);
        let errors: Vec<_> = docs
            .iter()
            .filter_map(|d| d.result.as_ref().err())
            .collect();
        assert_eq!(errors.len(), MAX_LISTED_ERRORS + 1);
        let last = errors.last().unwrap();
        assert!(
            last.message.starts_with("50 more invalid documents"),
            "{last}"
        );
        assert_eq!(
            last.line,
            2 * MAX_LISTED_ERRORS + 2,
            "where the unlisted ones start"
        );
        assert_eq!(docs.iter().filter(|d| d.result.is_ok()).count(), 1);
    }

    #[test]
    fn documents_past_the_maximum_are_not_read() {
        let text = "---\nx: 1\n".repeat(MAX_DOCUMENTS + 10);
        let docs = parse_documents(&text);
        assert!(docs.len() <= MAX_LISTED_ERRORS + 2, "{}", docs.len());
        let last = docs.last().unwrap().result.as_ref().unwrap_err();
        assert!(
            last.message.starts_with("more than 20000 documents"),
            "{last}"
        );
        assert_eq!(
            last.line,
            2 * MAX_DOCUMENTS + 1,
            "the marker after the last one read"
        );
        // Exactly the maximum, with trailing comments: all read, nothing refused.
        let text = format!("{}# the end\n", "---\nx: 1\n".repeat(MAX_DOCUMENTS));
        let docs = parse_documents(&text);
        assert!(
            docs.iter()
                .all(|d| !d.result.as_ref().unwrap_err().message.contains("more than"))
        );
    }
}
