//! containerd's filter language for `List`, applied to snapshot infos.
//!
//! A request carries several filter strings, OR-ed; each is a comma-separated list of
//! selectors, AND-ed. A selector is a field path with an optional operator and value:
//! `name==foo`, `parent!=x`, `kind==committed`, `labels."containerd.io/snapshot.ref"==sha256:…`,
//! `labels.foo~=^b.r$`, or just `labels.foo` (the label is present). Values and path parts may
//! be double-quoted with backslash escapes. containerd's metadata layer relies on this to find
//! the snapshot a remote Prepare committed, so parsing is strict: a bad filter is an error.

use std::collections::BTreeMap;

use regex::Regex;

use super::error::SnapshotError;

/// Fields a selector can look at.
pub struct Fields<'a> {
    /// Snapshot key/name.
    pub name: &'a str,
    /// Parent key ("" when none).
    pub parent: &'a str,
    /// `view`, `active` or `committed`.
    pub kind: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
}

enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed set of filters (OR of ANDs). An empty set matches everything.
pub struct Filter {
    alternatives: Vec<Vec<Selector>>,
}

fn bad(filter: &str, why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::InvalidArgument(format!("bad filter {filter:?}: {why}"))
}

struct Scanner<'a> {
    src: &'a str,
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl<'a> Scanner<'a> {
    fn new(src: &'a str) -> Self {
        Scanner {
            src,
            chars: src.char_indices().peekable(),
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|(_, c)| *c)
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.chars.next();
        }
    }

    fn quoted(&mut self) -> Result<String, SnapshotError> {
        self.chars.next(); // opening quote
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None => return Err(bad(self.src, "unterminated quoted string")),
                Some((_, '"')) => return Ok(out),
                Some((_, '\\')) => match self.chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, c)) => out.push(c),
                    None => return Err(bad(self.src, "unterminated escape")),
                },
                Some((_, c)) => out.push(c),
            }
        }
    }

    /// One field-path component: quoted, or identifier characters.
    fn field(&mut self) -> Result<String, SnapshotError> {
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                out.push(c);
                self.chars.next();
            } else {
                break;
            }
        }
        if out.is_empty() {
            return Err(bad(self.src, "expected a field name"));
        }
        Ok(out)
    }

    /// A value: quoted, or everything up to the next comma (trimmed).
    fn value(&mut self) -> Result<String, SnapshotError> {
        self.skip_spaces();
        if self.peek() == Some('"') {
            return self.quoted();
        }
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == ',' {
                break;
            }
            out.push(c);
            self.chars.next();
        }
        Ok(out.trim_end().to_owned())
    }

    fn selector(&mut self) -> Result<Selector, SnapshotError> {
        self.skip_spaces();
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.chars.next();
            path.push(self.field()?);
        }
        self.skip_spaces();
        let op = match self.peek() {
            None | Some(',') => Op::Present,
            Some(c @ ('=' | '!' | '~')) => {
                self.chars.next();
                if self.peek() != Some('=') {
                    return Err(bad(
                        self.src,
                        format!("unknown operator starting with {c:?}"),
                    ));
                }
                self.chars.next();
                let v = self.value()?;
                match c {
                    '=' => Op::Equal(v),
                    '!' => Op::NotEqual(v),
                    _ => Op::Matches(
                        Regex::new(&v).map_err(|e| bad(self.src, format!("bad regexp: {e}")))?,
                    ),
                }
            }
            Some(c) => return Err(bad(self.src, format!("unexpected {c:?}"))),
        };
        Ok(Selector { path, op })
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, SnapshotError> {
        let mut out = vec![self.selector()?];
        loop {
            self.skip_spaces();
            match self.chars.next() {
                None => return Ok(out),
                Some((_, ',')) => out.push(self.selector()?),
                Some((_, c)) => return Err(bad(self.src, format!("unexpected {c:?}"))),
            }
        }
    }
}

impl Filter {
    /// Parses the filter strings of a `List` request.
    pub fn parse(filters: &[String]) -> Result<Filter, SnapshotError> {
        let mut alternatives = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            alternatives.push(Scanner::new(f).selectors()?);
        }
        Ok(Filter { alternatives })
    }

    /// Whether a snapshot passes the filter.
    pub fn matches(&self, fields: &Fields<'_>) -> bool {
        self.alternatives.is_empty()
            || self
                .alternatives
                .iter()
                .any(|all| all.iter().all(|s| s.matches(fields)))
    }
}

impl Selector {
    fn lookup<'a>(&self, f: &Fields<'a>) -> Option<&'a str> {
        match self.path.as_slice() {
            [one] if one == "name" => Some(f.name),
            [one] if one == "parent" => Some(f.parent),
            [one] if one == "kind" => Some(f.kind),
            [first, rest @ ..] if first == "labels" && !rest.is_empty() => {
                f.labels.get(&rest.join(".")).map(String::as_str)
            }
            _ => None,
        }
    }

    fn matches(&self, f: &Fields<'_>) -> bool {
        let value = self.lookup(f);
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Equal(want) => value == Some(want.as_str()),
            Op::NotEqual(want) => value != Some(want.as_str()),
            Op::Matches(re) => value.is_some_and(|v| re.is_match(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(labels: &BTreeMap<String, String>) -> Fields<'_> {
        Fields {
            name: "default/3/extract-1 sha256:abc",
            parent: "default/2/sha256:p",
            kind: "committed",
            labels,
        }
    }

    fn check(filters: &[&str], labels: &BTreeMap<String, String>) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filter::parse(&f).unwrap().matches(&fields(labels))
    }

    #[test]
    fn containerd_remote_snapshot_lookup() {
        let mut l = BTreeMap::new();
        l.insert(
            "containerd.io/snapshot.ref".to_string(),
            "sha256:abc".to_string(),
        );
        assert!(check(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/2/sha256:p""#],
            &l
        ));
        assert!(!check(
            &[r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent==other"#],
            &l
        ));
    }

    #[test]
    fn or_of_filters_and_operators() {
        let mut l = BTreeMap::new();
        l.insert("a".to_string(), "bar".to_string());
        assert!(check(&["kind==active", "labels.a"], &l));
        assert!(!check(&["labels.b"], &l));
        assert!(check(&["labels.a~=^b.r$"], &l));
        assert!(check(&["labels.a!=baz, kind==committed"], &l));
        assert!(check(&[], &l));
        assert!(check(&[""], &l));
        assert!(check(&[r#"name=="default/3/extract-1 sha256:abc""#], &l));
    }

    #[test]
    fn malformed_filters_are_errors() {
        for f in [
            "labels.\"x",
            "=foo",
            "labels.a=b",
            "labels.a~=(",
            "name==a,",
        ] {
            assert!(Filter::parse(&[f.to_string()]).is_err(), "{f}");
        }
    }
}
