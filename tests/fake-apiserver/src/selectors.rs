//! Label and field selectors, parsed the way `k8s.io/apimachinery` does.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
//! `k` (exists), `!k` (does not exist), `k>n`, `k<n`, comma-separated (AND).
//! Field selectors: `path=v`, `path==v`, `path!=v`, comma-separated, with `\`
//! escaping `,`, `=` and `\` in values. Which field paths a resource accepts
//! is decided by the caller (the real server rejects unknown ones with 400).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<LabelReq>,
}

fn bad(selector: &str, why: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement: invalid label selector {selector:?}: {why}"
    ))
}

/// Characters that end an identifier in a label selector.
fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '=' | '!' | '(' | ')' | '<' | '>')
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.chars.peek().is_some_and(|c| c.is_whitespace()) {
            self.chars.next();
        }
    }
    fn ident(&mut self) -> String {
        self.skip_ws();
        let mut s = String::new();
        while let Some(&c) = self.chars.peek() {
            if is_special(c) {
                break;
            }
            s.push(c);
            self.chars.next();
        }
        s
    }
    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.chars.peek().copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.chars.next();
            true
        } else {
            false
        }
    }
}

impl LabelSelector {
    /// Parses a label selector string.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for a malformed selector, as the real server answers.
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut lx = Lexer {
            chars: selector.chars().peekable(),
        };
        let mut reqs = Vec::new();
        if lx.peek().is_none() {
            return Ok(Self { reqs });
        }
        loop {
            let req = if lx.eat('!') {
                let key = lx.ident();
                if key.is_empty() {
                    return Err(bad(selector, "missing key after '!'"));
                }
                LabelReq::NotExists(key)
            } else {
                let key = lx.ident();
                if key.is_empty() {
                    return Err(bad(selector, "empty key"));
                }
                match lx.peek() {
                    None | Some(',') => LabelReq::Exists(key),
                    Some('=') => {
                        lx.chars.next();
                        // `==` is the same as `=`.
                        if lx.chars.peek() == Some(&'=') {
                            lx.chars.next();
                        }
                        LabelReq::Eq(key, lx.ident())
                    }
                    Some('!') => {
                        lx.chars.next();
                        if lx.chars.next() != Some('=') {
                            return Err(bad(selector, "expected '!='"));
                        }
                        LabelReq::NotEq(key, lx.ident())
                    }
                    Some(c @ ('<' | '>')) => {
                        lx.chars.next();
                        let v = lx.ident();
                        let n: i64 = v
                            .parse()
                            .map_err(|_| bad(selector, "'<'/'>' need an integer"))?;
                        if c == '<' {
                            LabelReq::Lt(key, n)
                        } else {
                            LabelReq::Gt(key, n)
                        }
                    }
                    Some(_) => {
                        let op = lx.ident();
                        let values = Self::set(&mut lx, selector)?;
                        match op.as_str() {
                            "in" => LabelReq::In(key, values),
                            "notin" => LabelReq::NotIn(key, values),
                            _ => return Err(bad(selector, &format!("unknown operator {op:?}"))),
                        }
                    }
                }
            };
            reqs.push(req);
            match lx.peek() {
                None => break,
                Some(',') => {
                    lx.chars.next();
                }
                Some(c) => return Err(bad(selector, &format!("unexpected {c:?}"))),
            }
        }
        Ok(Self { reqs })
    }

    /// Parses `(a, b, c)`.
    fn set(lx: &mut Lexer<'_>, selector: &str) -> Result<Vec<String>, ApiError> {
        if !lx.eat('(') {
            return Err(bad(selector, "expected '('"));
        }
        let mut values = Vec::new();
        loop {
            values.push(lx.ident());
            if lx.eat(',') {
                continue;
            }
            if lx.eat(')') {
                return Ok(values);
            }
            return Err(bad(selector, "expected ',' or ')'"));
        }
    }

    /// True when the selector selects nothing in particular (matches all).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether a label map satisfies every requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => labels.get(k) == Some(v),
            LabelReq::NotEq(k, v) => labels.get(k) != Some(v),
            LabelReq::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelReq::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelReq::Exists(k) => labels.contains_key(k),
            LabelReq::NotExists(k) => !labels.contains_key(k),
            LabelReq::Gt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Lt(k, n) => labels
                .get(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        })
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    #[must_use]
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

/// One field requirement: `path` equals (or not) `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReq {
    /// Dotted field path, e.g. `metadata.name`.
    pub field: String,
    /// The value to compare with.
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The requirements (AND).
    pub reqs: Vec<FieldReq>,
}

impl FieldSelector {
    /// Parses a field selector string.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for a term without an operator.
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for term in split_unescaped(selector, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, op_len, negated) = if let Some(i) = find_unescaped(term, "!=") {
                (&term[..i], 2, true)
            } else if let Some(i) = find_unescaped(term, "==") {
                (&term[..i], 2, false)
            } else if let Some(i) = find_unescaped(term, "=") {
                (&term[..i], 1, false)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector: {term:?}: no operator"
                )));
            };
            let raw_value = &term[field.len() + op_len..];
            reqs.push(FieldReq {
                field: field.trim().to_owned(),
                value: unescape(raw_value),
                negated,
            });
        }
        Ok(Self { reqs })
    }

    /// Rejects field paths outside `allowed`, as the real server does (400).
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] naming the unsupported field label.
    pub fn check_fields(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self
            .reqs
            .iter()
            .find(|r| !allowed.contains(&r.field.as_str()))
        {
            Some(r) => Err(ApiError::BadRequest(format!(
                "field label not supported: {}",
                r.field
            ))),
            None => Ok(()),
        }
    }

    /// Whether the object's fields satisfy every requirement; a missing field
    /// reads as the empty string (so `involvedObject.namespace=` matches
    /// cluster-scoped references, as kubectl expects).
    #[must_use]
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) != r.negated
        })
    }
}

/// Reads a dotted path as a string (numbers and booleans are rendered).
#[must_use]
pub fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for part in path.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    #[test]
    fn equality_forms() {
        let l = labels(&[("role", "edge"), ("zone", "a")]);
        assert!(sel("role=edge").matches(&l));
        assert!(sel("role==edge").matches(&l));
        assert!(sel(" role = edge , zone=a ").matches(&l));
        assert!(!sel("role=core").matches(&l));
        assert!(sel("role!=core").matches(&l));
        assert!(!sel("role!=edge").matches(&l));
        // `!=` matches objects without the label, like the real server.
        assert!(sel("missing!=x").matches(&l));
    }

    #[test]
    fn set_forms() {
        let l = labels(&[("role", "edge")]);
        assert!(sel("role in (core, edge)").matches(&l));
        assert!(!sel("role in (core)").matches(&l));
        assert!(sel("role notin (core)").matches(&l));
        assert!(!sel("role notin (edge,core)").matches(&l));
        assert!(sel("missing notin (x)").matches(&l));
        assert!(!sel("missing in (x)").matches(&l));
    }

    #[test]
    fn existence_forms() {
        let l = labels(&[("node-role.kubernetes.io/control-plane", "")]);
        assert!(sel("node-role.kubernetes.io/control-plane").matches(&l));
        assert!(!sel("!node-role.kubernetes.io/control-plane").matches(&l));
        assert!(sel("!other").matches(&l));
        assert!(sel("node-role.kubernetes.io/control-plane=").matches(&l));
        assert!(sel("").matches(&l));
        assert!(sel("").is_empty());
    }

    #[test]
    fn numeric_forms() {
        let l = labels(&[("weight", "5")]);
        assert!(sel("weight>3").matches(&l));
        assert!(!sel("weight<3").matches(&l));
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for s in [
            "=x", "a in b", "a in (b", "a ~ b", "!", "a b", "a>x", "a,,b",
        ] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code(), 400, "{s}");
        }
    }

    #[test]
    fn field_selectors() {
        let node = json!({"metadata": {"name": "node-a"}, "spec": {"unschedulable": true}});
        let f = |s: &str| FieldSelector::parse(s).unwrap();
        assert!(f("metadata.name=node-a").matches_object(&node));
        assert!(f("metadata.name==node-a").matches_object(&node));
        assert!(!f("metadata.name!=node-a").matches_object(&node));
        assert!(f("metadata.name!=node-b").matches_object(&node));
        assert!(f("spec.unschedulable=true").matches_object(&node));
        assert!(f("metadata.namespace=").matches_object(&node));
        assert!(f("").matches_object(&node));
        assert_eq!(
            FieldSelector::parse("metadata.name").unwrap_err().code(),
            400
        );
        assert!(
            f("metadata.name=node-a")
                .check_fields(&["metadata.name"])
                .is_ok()
        );
        assert_eq!(
            f("spec.x=1")
                .check_fields(&["metadata.name"])
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn field_selector_escapes() {
        let f = FieldSelector::parse(r"a=x\,y,b=z\=w").unwrap();
        assert_eq!(f.reqs.len(), 2);
        assert_eq!(f.reqs[0].value, "x,y");
        assert_eq!(f.reqs[1].value, "z=w");
    }

    #[test]
    fn describe_event_selector() {
        let ev = json!({"involvedObject": {"kind": "Node", "name": "node-a", "uid": "u1"}});
        let f = FieldSelector::parse(
            "involvedObject.name=node-a,involvedObject.namespace=,involvedObject.kind=Node,involvedObject.uid=u1",
        )
        .unwrap();
        assert!(f.matches_object(&ev));
    }
}
