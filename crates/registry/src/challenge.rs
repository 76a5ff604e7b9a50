//! Parser for `WWW-Authenticate` challenges (RFC 7235): several challenges per header,
//! `name=value` parameters whose values may be quoted strings holding commas and escapes.

use std::collections::HashMap;

/// One authentication challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    /// Scheme in lower case (`bearer`, `basic`).
    pub(crate) scheme: String,
    /// Parameters with lower-case names.
    pub(crate) params: HashMap<String, String>,
}

impl Challenge {
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in one header value; malformed trailing text is ignored.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: header.as_bytes(),
        text: header,
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        p.skip(|b| b == b',' || b.is_ascii_whitespace());
        let scheme = p.token();
        if scheme.is_empty() {
            // Not a token: skip one byte of junk, or stop at the end.
            if p.i >= p.s.len() {
                break;
            }
            p.i += 1;
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: HashMap::new(),
        };
        loop {
            p.skip(|b| b == b',' || b.is_ascii_whitespace());
            let start = p.i;
            let name = p.token();
            p.skip(|b| b == b' ' || b == b'\t');
            if name.is_empty() || p.peek() != Some(b'=') {
                // A new challenge starts here (or the header ended).
                p.i = start;
                break;
            }
            p.i += 1; // '='
            if matches!(p.peek(), Some(b'=') | Some(b',') | None) {
                // token68 form (`Basic abc==`): not used by registries, skip it.
                p.skip(|b| b == b'=');
                continue;
            }
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                // Lenient: unquoted values run to the next comma or space, so that an
                // unquoted URL (`realm=https://…`) survives.
                p.bare_value().to_string()
            };
            challenge.params.insert(name.to_ascii_lowercase(), value);
        }
        out.push(challenge);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    /// An RFC 7230 token (anything but separators, spaces and controls).
    fn token(&mut self) -> &'a str {
        let start = self.i;
        self.skip(|b| b > 0x20 && b != 0x7f && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        &self.text[start..self.i]
    }

    /// An unquoted parameter value: everything up to a comma or whitespace.
    fn bare_value(&mut self) -> &'a str {
        let start = self.i;
        self.skip(|b| b != b',' && !b.is_ascii_whitespace());
        &self.text[start..self.i]
    }

    /// A quoted string starting at the current `"`, with backslash escapes; an unterminated
    /// string runs to the end of the header.
    fn quoted(&mut self) -> String {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                _ => out.push(b),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(header: &str) -> Challenge {
        let mut all = parse_challenges(header);
        assert_eq!(all.len(), 1, "{header}: {all:?}");
        all.remove(0)
    }

    #[test]
    fn docker_hub_style_bearer() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/busybox:pull"));
    }

    #[test]
    fn quoted_commas_escapes_spaces_and_case() {
        let c = one(
            r#"BEARER Realm = "http://127.0.0.1:1/token?a=b,c" , scope="repository:a/b:pull,push repository:c:pull", error="insufficient_scope", note="say \"hi\"\\""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("http://127.0.0.1:1/token?a=b,c"));
        assert_eq!(
            c.param("scope"),
            Some("repository:a/b:pull,push repository:c:pull")
        );
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        assert_eq!(c.param("note"), Some(r#"say "hi"\"#));
    }

    #[test]
    fn several_challenges_and_unquoted_values() {
        let all = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer realm=https://a/t,service=svc"#,
        );
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0].scheme, "basic");
        assert_eq!(all[0].param("realm"), Some("Registry Realm"));
        assert_eq!(all[1].scheme, "bearer");
        assert_eq!(all[1].param("realm"), Some("https://a/t"));
        assert_eq!(all[1].param("service"), Some("svc"));
    }

    #[test]
    fn odd_input_does_not_panic() {
        for header in [
            "",
            ",,,",
            "Bearer",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "Basic abc==",
            "=,=\"x",
            "Bearer ,realm=\"x\"",
            "\u{e9}t\u{e9} x=\"\u{e9}\"",
        ] {
            let _ = parse_challenges(header);
        }
        let c = one("Bearer realm=\"unterminated");
        assert_eq!(c.param("realm"), Some("unterminated"));
        assert_eq!(one("Bearer").params.len(), 0);
        let all = parse_challenges("Basic abc==, Bearer realm=x");
        assert_eq!(
            all.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["basic", "bearer"]
        );
        assert_eq!(all[1].param("realm"), Some("x"));
    }
}
