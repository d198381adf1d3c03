//! Access-list patterns: `*` matches any run of characters (`public-*`, `*-prod`, `*`),
//! anything else is literal. Compiled once per snapshot into its literal pieces.

#[derive(Debug, Clone)]
pub struct Pattern {
    /// The text between the stars; `anchored_*` say whether the ends are fixed.
    pieces: Box<[Box<str>]>,
    anchored_start: bool,
    anchored_end: bool,
}

impl Pattern {
    pub fn new(pattern: &str) -> Self {
        Self {
            pieces: pattern
                .split('*')
                .filter(|p| !p.is_empty())
                .map(Into::into)
                .collect(),
            anchored_start: !pattern.starts_with('*'),
            anchored_end: !pattern.ends_with('*'),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        let mut rest = text;
        let last = self.pieces.len().saturating_sub(1);
        for (i, piece) in self.pieces.iter().enumerate() {
            if i == 0 && self.anchored_start {
                let Some(after) = rest.strip_prefix(&**piece) else {
                    return false;
                };
                rest = after;
                if i == last && self.anchored_end {
                    return rest.is_empty();
                }
                continue;
            }
            if i == last && self.anchored_end {
                return rest.ends_with(&**piece);
            }
            match rest.find(&**piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        // No pieces: `*` (or `**`) matches anything, "" only the empty text.
        !self.pieces.is_empty() || !self.anchored_start || rest.is_empty()
    }
}

/// Any of several patterns; an empty list allows everything.
#[derive(Debug, Clone, Default)]
pub struct Patterns(Box<[Pattern]>);

impl Patterns {
    pub fn new(patterns: &[String]) -> Self {
        Self(patterns.iter().map(|p| Pattern::new(p)).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, text: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(text))
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn wildcards() {
        let cases = [
            ("public-*", "public-web", true),
            ("public-*", "public-", true),
            ("public-*", "private-web", false),
            ("*-prod", "api-prod", true),
            ("*-prod", "api-prod-2", false),
            ("*", "", true),
            ("*", "anything", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("exact", "inexact", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Pattern::new(pattern).matches(text),
                expected,
                "{pattern} vs {text}"
            );
        }
    }
}
