//! Boolean filter expressions for Consul's `?filter=` query parameter.
//!
//! This is a self-contained re-implementation of the subset of HashiCorp
//! [go-bexpr] that Consul uses (Consul pins go-bexpr **v0.1.2**), evaluated
//! over `serde_json::Value` objects: each element of an API response list,
//! serialized with Consul's PascalCase field names.
//!
//! ```text
//! ServiceName == web and (ServiceMeta["env"] != "prod" or "canary" in ServiceTags)
//! ```
//!
//! Supported: `==`, `!=`, `is empty`, `is not empty`, `in`, `not in`,
//! `contains`, `not contains`, `matches`, `not matches` (unanchored regex via
//! the `regex` crate); `not` > `and` > `or`, parentheses; `"Go-escaped"`,
//! `` `raw` ``, number and bare-word values; selectors `A.B.c`, `Meta["k-1"]`.
//! Errors reproduce go-bexpr's parser text (`1:9 (8): rule "number": Invalid
//! number literal`); Consul prefixes it, see [`FilterError::consul_message`].
//!
//! go-bexpr checks selectors against Go struct types when the filter is
//! created; [`parse_for`] does the same against the [`fields`] of the listed
//! type. Evaluation runs over JSON, so:
//! * Selector segments are JSON keys, matched case-sensitively (go-bexpr uses
//!   Go field names, also case-sensitively; in Consul these are the same).
//! * A missing or `null` value is not an error; it acts like go-bexpr's
//!   missing map key: `==`, `in`, `is not empty`, `matches` are false and
//!   their negations true. Serialize zero values (no `omitempty`) first.
//! * Operators or literals go-bexpr would reject for a field's type (`==` on
//!   a list, `is empty` on a string, `Port == abc`) evaluate leniently.
//! * Through a list inside a selector (`Checks.Status == passing`) a match
//!   holds if it holds for any element, as in go-bexpr.
//!
//! [go-bexpr]: https://github.com/hashicorp/go-bexpr

pub mod fields;

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use regex::Regex;
use serde_json::Value;

/// Text Consul puts before a [`FilterError`] in its HTTP response body.
pub const CONSUL_ERROR_PREFIX: &str = "Failed to create boolean expression evaluator: ";

/// Deepest rule nesting accepted (each parenthesis costs 3, each `and`/`or`
/// term 1), so hostile input cannot overflow the stack: at the limit parsing
/// needs under 512 KiB of stack even in debug builds.
const MAX_DEPTH: usize = 256;

const WS: &str = "[ \\t\\r\\n]";

/// An invalid filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    message: String,
}

impl FilterError {
    /// The go-bexpr style message, e.g. `1:6 (5): rule "match": Invalid selector`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message as Consul reports it, with [`CONSUL_ERROR_PREFIX`].
    pub fn consul_message(&self) -> String {
        format!("{CONSUL_ERROR_PREFIX}{}", self.message)
    }
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FilterError {}

impl From<String> for FilterError {
    fn from(message: String) -> Self {
        FilterError { message }
    }
}

/// A parsed filter; [`Filter::matches`] tests one JSON value against it.
#[derive(Debug, Clone)]
pub struct Filter {
    expr: Option<Expr>,
}

impl Filter {
    /// Whether `value` satisfies the filter. The empty filter matches everything.
    pub fn matches(&self, value: &Value) -> bool {
        self.expr.as_ref().is_none_or(|e| e.eval(value))
    }
}

/// Parses a filter expression. As in go-bexpr, the empty string is a filter
/// that matches everything.
pub fn parse(expr: &str) -> Result<Filter, FilterError> {
    if expr.is_empty() {
        return Ok(Filter { expr: None });
    }
    let mut p = Parser {
        src: expr,
        ..Parser::default()
    };
    let result = p.input();
    if !p.errors.is_empty() {
        let mut seen = BTreeSet::new();
        p.errors.retain(|e| seen.insert(e.clone()));
        return Err(p.errors.join("\n").into());
    }
    let Some(mut expr) = result else {
        return Err(p.no_match_message().into());
    };
    expr.compile_regexes()?;
    Ok(Filter { expr: Some(expr) })
}

/// Parses a filter for a list of a known type: as go-bexpr, a selector naming a field the
/// type does not have is an error, not a filter that matches nothing.
pub fn parse_for(expr: &str, fields: &fields::Fields) -> Result<Filter, FilterError> {
    let filter = parse(expr)?;
    if let Some(e) = &filter.expr {
        let mut bad = None;
        e.each_selector(&mut |sel| {
            if bad.is_none() {
                bad = fields.invalid_prefix(sel);
            }
        });
        if let Some(sel) = bad {
            return Err(format!("Selector {sel:?} is not valid").into());
        }
    }
    Ok(filter)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    In,
    IsEmpty,
    Matches,
}

/// An operator and whether it is negated (`!=`, `not in`, `is not empty`, ...).
type MatchOp = (Op, bool);

#[derive(Debug, Clone)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match(Box<Match>),
}

#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    op: Op,
    negated: bool,
    value: String,
    regex: Option<Regex>,
}

impl Expr {
    fn eval(&self, v: &Value) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(v) || b.eval(v),
            Expr::And(a, b) => a.eval(v) && b.eval(v),
            Expr::Not(e) => !e.eval(v),
            Expr::Match(m) => m.eval_at(&m.selector, v),
        }
    }

    fn each_selector(&self, f: &mut impl FnMut(&[String])) {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                a.each_selector(f);
                b.each_selector(f);
            }
            Expr::Not(e) => e.each_selector(f),
            Expr::Match(m) => f(&m.selector),
        }
    }

    fn compile_regexes(&mut self) -> Result<(), FilterError> {
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => a.compile_regexes().and(b.compile_regexes()),
            Expr::Not(e) => e.compile_regexes(),
            Expr::Match(m) if m.op == Op::Matches => {
                // regex's syntax errors are multi-line drawings; keep the last line.
                let re = Regex::new(&m.value).map_err(|e| {
                    let text = e.to_string();
                    let last = text.lines().last().unwrap_or_default();
                    let reason = last.trim_start_matches("error: ");
                    format!(
                        "Failed to compile regular expression {:?}: {reason}",
                        m.value
                    )
                })?;
                m.regex = Some(re);
                Ok(())
            }
            Expr::Match(_) => Ok(()),
        }
    }
}

impl Match {
    fn eval_at(&self, path: &[String], v: &Value) -> bool {
        match (path.split_first(), v) {
            (Some(_), Value::Array(items)) => items.iter().any(|item| self.eval_at(path, item)),
            (Some((key, rest)), Value::Object(map)) => match map.get(key) {
                Some(child) => self.eval_at(rest, child),
                // go-bexpr's `RaftIndex.CreateIndex` is a top-level `CreateIndex` in JSON.
                None if key == "RaftIndex" => self.eval_at(rest, v),
                None => self.absent(),
            },
            (Some(_), _) | (None, Value::Null) => self.absent(),
            (None, leaf) => self.leaf(leaf),
        }
    }

    /// Result for a missing or null value (go-bexpr's missing-map-key rules;
    /// v0.1.2 made `matches` true here, later versions fixed it to false).
    fn absent(&self) -> bool {
        (self.op == Op::IsEmpty) != self.negated
    }

    fn leaf(&self, v: &Value) -> bool {
        let raw = self.value.as_str();
        let hit = match self.op {
            Op::Equal => equals(raw, v),
            Op::In => contains(v, raw),
            Op::IsEmpty => is_empty(v),
            Op::Matches => self.regex_match(v),
        };
        hit != self.negated
    }

    fn regex_match(&self, v: &Value) -> bool {
        match (v, &self.regex) {
            (Value::String(s), Some(re)) => re.is_match(s),
            _ => false,
        }
    }
}

/// `raw` converted to the JSON value's type, then compared.
fn equals(raw: &str, v: &Value) -> bool {
    match v {
        Value::String(s) => s == raw,
        Value::Bool(b) => parse_go_bool(raw) == Some(*b),
        Value::Number(n) => {
            let int = n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from));
            if let (Some(i), Some(lit)) = (int, parse_go_int(raw)) {
                return i == lit;
            }
            matches!((n.as_f64(), raw.parse::<f64>()), (Some(a), Ok(b)) if a == b)
        }
        _ => false,
    }
}

fn contains(v: &Value, raw: &str) -> bool {
    match v {
        Value::String(s) => s.contains(raw),
        Value::Array(items) => items.iter().any(|item| equals(raw, item)),
        Value::Object(map) => map.contains_key(raw),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: sign, then `0x`, `0o`, `0b` or `0` prefix.
fn parse_go_int(s: &str) -> Option<i128> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = body.to_ascii_lowercase();
    let prefixed = [("0x", 16), ("0o", 8), ("0b", 2), ("0", 8)]
        .into_iter()
        .find_map(|(pre, radix)| {
            lower
                .strip_prefix(pre)
                .filter(|d| !d.is_empty())
                .map(|d| (radix, d.replace('_', "")))
        });
    let (radix, digits) = prefixed.unwrap_or((10, lower.clone()));
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = i128::from_str_radix(&digits, radix).ok()?;
    Some(if neg { -n } else { n })
}

/// Go's `strconv.Unquote` for the two string forms the grammar admits.
fn unquote(text: &str) -> Option<String> {
    if let Some(raw) = text.strip_prefix('`').and_then(|t| t.strip_suffix('`')) {
        return Some(raw.replace('\r', ""));
    }
    let body = text.strip_prefix('"')?.strip_suffix('"')?;
    if body.contains('\n') {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        let esc = chars.next()?;
        if let Some(i) = "abfnrtv\\\"".find(esc) {
            out.push(b"\x07\x08\x0c\n\r\t\x0b\\\""[i]);
            continue;
        }
        let mut digits = |n: usize, radix: u32| -> Option<u32> {
            (0..n).try_fold(0u32, |acc, _| {
                Some(acc * radix + chars.next()?.to_digit(radix)?)
            })
        };
        match esc {
            'x' => out.push(u8::try_from(digits(2, 16)?).ok()?),
            d @ '0'..='7' => {
                let rest = digits(2, 8)?;
                out.push(u8::try_from(d.to_digit(8)? * 64 + rest).ok()?);
            }
            'u' | 'U' => {
                let ch = char::from_u32(digits(if esc == 'u' { 4 } else { 8 }, 16)?)?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
            }
            _ => return None,
        }
    }
    Some(
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    )
}

/// A backtracking parser that follows go-bexpr's PEG grammar rule for rule,
/// and tracks the farthest failure the way pigeon-generated parsers do, so
/// that error messages come out the same.
#[derive(Default)]
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    max_fail: usize,
    expected: Vec<String>,
    invert: bool,
    errors: Vec<String>,
    depth: usize,
    memo: HashMap<(u8, usize), Option<(Expr, usize)>>,
}

type Rule<'a> = fn(&mut Parser<'a>) -> Option<Expr>;
type BinaryCtor = fn(Box<Expr>, Box<Expr>) -> Expr;

impl<'a> Parser<'a> {
    /// `line:col (offset)`, counted as pigeon does.
    fn position(&self, offset: usize) -> String {
        let (mut line, mut col) = (1, 0);
        for c in self.src[..offset].chars() {
            col += 1;
            if c == '\n' {
                (line, col) = (line + 1, 0);
            }
        }
        col += 1;
        if self.src[offset..].starts_with('\n') {
            (line, col) = (line + 1, 0);
        }
        format!("{line}:{col} ({offset})")
    }

    /// go-bexpr's named syntax errors: `Prefix !Follows &{ return error }`.
    fn syntax_error<T>(
        &mut self,
        prefix: impl FnOnce(&mut Self) -> Option<()>,
        follows: impl FnOnce(&mut Self) -> bool,
        rule: &str,
        msg: &str,
    ) -> Option<T> {
        let start = self.pos;
        if prefix(self).is_some() && self.not_ahead(follows) {
            self.error(self.pos, rule, msg);
        }
        self.pos = start;
        None
    }

    fn error(&mut self, offset: usize, rule: &str, msg: &str) {
        let at = self.position(offset);
        self.errors.push(format!("{at}: rule \"{rule}\": {msg}"));
    }

    fn no_match_message(&self) -> String {
        let mut set: BTreeSet<&str> = self.expected.iter().map(String::as_str).collect();
        let eof = set.remove("!.");
        let mut list: Vec<&str> = set.into_iter().collect();
        if eof {
            list.push("EOF");
        }
        let joined = match list.split_last() {
            Some((last, init)) if !init.is_empty() => format!("{} or {last}", init.join(", ")),
            _ => list.concat(),
        };
        format!(
            "{}: no match found, expected: {joined}",
            self.position(self.max_fail)
        )
    }

    /// Records what was wanted at `pos` (pigeon's `failAt`).
    fn fail_at(&mut self, matched: bool, pos: usize, want: &str) {
        if matched != self.invert || pos < self.max_fail {
            return;
        }
        if pos > self.max_fail {
            self.max_fail = pos;
            self.expected.clear();
        }
        let prefix = if self.invert { "!" } else { "" };
        self.expected.push(format!("{prefix}{want}"));
    }

    fn attempt<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let start = self.pos;
        let r = f(self);
        if r.is_none() {
            self.pos = start;
        }
        r
    }

    fn lit(&mut self, s: &str) -> bool {
        let ok = self.src[self.pos..].starts_with(s);
        self.fail_at(ok, self.pos, &format!("{s:?}"));
        self.pos += if ok { s.len() } else { 0 };
        ok
    }

    fn l(&mut self, s: &str) -> Option<()> {
        self.lit(s).then_some(())
    }

    fn class(&mut self, want: &str, f: fn(char) -> bool) -> bool {
        let c = self.src[self.pos..].chars().next().filter(|&c| f(c));
        self.fail_at(c.is_some(), self.pos, want);
        self.pos += c.map_or(0, char::len_utf8);
        c.is_some()
    }

    fn any(&mut self) -> bool {
        self.class(".", |_| true)
    }

    fn not_ahead(&mut self, f: impl FnOnce(&mut Self) -> bool) -> bool {
        let start = self.pos;
        self.invert = !self.invert;
        let ok = f(self);
        self.invert = !self.invert;
        self.pos = start;
        !ok
    }

    fn eof(&mut self) -> bool {
        self.not_ahead(Self::any)
    }

    fn ws(&mut self) -> bool {
        let is_ws = |c| matches!(c, ' ' | '\t' | '\r' | '\n');
        let ok = self.class(WS, is_ws);
        while ok && self.class(WS, is_ws) {}
        ok
    }

    fn w(&mut self) -> Option<()> {
        self.ws().then_some(())
    }

    /// Runs an expression rule once per position and guards recursion depth.
    fn memo(&mut self, rule: u8, f: Rule<'a>) -> Option<Expr> {
        let key = (rule, self.pos);
        if let Some(hit) = self.memo.get(&key) {
            let (e, end) = hit.clone()?;
            self.pos = end;
            return Some(e);
        }
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH {
            let at = self.position(self.pos);
            self.errors
                .push(format!("{at}: expression nested too deeply"));
            None
        } else {
            f(self)
        };
        self.depth -= 1;
        self.memo.insert(key, r.clone().map(|e| (e, self.pos)));
        r
    }

    /// `_? OrExpression _? EOF`. go-bexpr's first alternative (the same with
    /// outer parentheses) accepts and expects nothing this one does not.
    fn input(&mut self) -> Option<Expr> {
        self.ws();
        let e = self.or_expr()?;
        self.ws();
        self.eof().then_some(e)
    }

    /// `"(" _? OrExpression _? ")"`, or without the `")"`.
    fn group(&mut self, closed: bool) -> Option<Expr> {
        self.attempt(|p| {
            p.l("(")?;
            p.ws();
            let e = p.or_expr()?;
            p.ws();
            (!closed || p.lit(")")).then_some(e)
        })
    }

    fn or_expr(&mut self) -> Option<Expr> {
        self.memo(0, |p| {
            p.binary("or", Self::and_expr, Self::or_expr, Expr::Or)
        })
    }

    fn and_expr(&mut self) -> Option<Expr> {
        self.memo(1, |p| {
            p.binary("and", Self::not_expr, Self::and_expr, Expr::And)
        })
    }

    /// `left:Operand _ "keyword" _ right:Rest / Operand`
    fn binary(
        &mut self,
        kw: &str,
        operand: Rule<'a>,
        rest: Rule<'a>,
        make: BinaryCtor,
    ) -> Option<Expr> {
        self.attempt(|p| {
            let left = operand(p)?;
            p.w()?;
            p.l(kw)?;
            p.w()?;
            Some(make(Box::new(left), Box::new(rest(p)?)))
        })
        .or_else(|| operand(self))
    }

    fn not_expr(&mut self) -> Option<Expr> {
        self.memo(2, |p| {
            p.attempt(|p| {
                p.l("not")?;
                p.w()?;
                Some(match p.not_expr()? {
                    Expr::Not(inner) => *inner,
                    e => Expr::Not(Box::new(e)),
                })
            })
            .or_else(|| p.group(true))
            .or_else(|| p.match_expr().map(|m| Expr::Match(Box::new(m))))
            .or_else(|| {
                let open = |p: &mut Self| p.group(false).map(drop);
                p.syntax_error(open, |p| p.lit(")"), "grouping", "Unmatched parentheses")
            })
        })
    }

    fn match_expr(&mut self) -> Option<Match> {
        let new = |selector, (op, negated): MatchOp, value| Match {
            selector,
            op,
            negated,
            value,
            regex: None,
        };
        self.attempt(|p| Some(new(p.selector()?, p.selector_op()?, p.value()?)))
            .or_else(|| self.attempt(|p| Some(new(p.selector()?, p.empty_op()?, String::new()))))
            .or_else(|| {
                self.attempt(|p| {
                    let (value, op) = (p.value()?, p.in_op()?);
                    Some(new(p.selector()?, op, value))
                })
            })
            .or_else(|| {
                let value_op = |p: &mut Self| p.value().and_then(|_| p.in_op()).map(drop);
                let selector = |p: &mut Self| p.selector().is_some();
                self.syntax_error(value_op, selector, "match", "Invalid selector")
            })
    }

    fn selector_op(&mut self) -> Option<MatchOp> {
        self.symbol("==", (Op::Equal, false))
            .or_else(|| self.symbol("!=", (Op::Equal, true)))
            .or_else(|| self.keywords(&["contains"], true, (Op::In, false)))
            .or_else(|| self.keywords(&["not", "contains"], true, (Op::In, true)))
            .or_else(|| self.keywords(&["matches"], true, (Op::Matches, false)))
            .or_else(|| self.keywords(&["not", "matches"], true, (Op::Matches, true)))
    }

    fn empty_op(&mut self) -> Option<MatchOp> {
        self.keywords(&["is", "empty"], false, (Op::IsEmpty, false))
            .or_else(|| self.keywords(&["is", "not", "empty"], false, (Op::IsEmpty, true)))
    }

    fn in_op(&mut self) -> Option<MatchOp> {
        self.keywords(&["in"], true, (Op::In, false))
            .or_else(|| self.keywords(&["not", "in"], true, (Op::In, true)))
    }

    /// `_? "sym" _?`
    fn symbol(&mut self, sym: &str, op: MatchOp) -> Option<MatchOp> {
        self.attempt(|p| {
            p.ws();
            p.l(sym)?;
            p.ws();
            Some(op)
        })
    }

    /// `_ "word1" _ "word2" ... [_]`
    fn keywords(&mut self, words: &[&str], trailing_ws: bool, op: MatchOp) -> Option<MatchOp> {
        self.attempt(|p| {
            for word in words {
                p.w()?;
                p.l(word)?;
            }
            (!trailing_ws || p.ws()).then_some(op)
        })
    }

    fn selector(&mut self) -> Option<Vec<String>> {
        let mut path = vec![self.identifier()?];
        let dotted = |p: &mut Self| p.attempt(|p| p.l(".").and_then(|()| p.identifier()));
        while let Some(segment) = dotted(self).or_else(|| self.index_expr()) {
            path.push(segment);
        }
        Some(path)
    }

    fn identifier(&mut self) -> Option<String> {
        let start = self.pos;
        self.class("[a-zA-Z]", |c| c.is_ascii_alphabetic())
            .then_some(())?;
        while self.class("[a-zA-Z0-9_]", |c| c.is_ascii_alphanumeric() || c == '_') {}
        Some(self.src[start..self.pos].to_string())
    }

    fn index_expr(&mut self) -> Option<String> {
        let open = |p: &mut Self| p.l("[").map(|()| _ = p.ws());
        self.attempt(|p| {
            open(p)?;
            let key = p.string_literal()?;
            p.ws();
            p.l("]").map(|()| key)
        })
        .or_else(|| {
            let string = |p: &mut Self| p.string_literal().is_some();
            self.syntax_error(open, string, "index", "Invalid index")
        })
        .or_else(|| {
            let open_key = |p: &mut Self| {
                open(p)
                    .and_then(|()| p.string_literal())
                    .map(|_| _ = p.ws())
            };
            self.syntax_error(
                open_key,
                |p| p.lit("]"),
                "index",
                "Unclosed index expression",
            )
        })
    }

    fn value(&mut self) -> Option<String> {
        let selector = self.selector().map(|s| s.join("."));
        selector
            .or_else(|| self.number_literal())
            .or_else(|| self.string_literal())
    }

    fn number_literal(&mut self) -> Option<String> {
        let start = self.pos;
        self.attempt(|p| {
            p.integer_or_float_signed()?;
            p.after_numbers().then(|| p.src[start..p.pos].to_string())
        })
        .or_else(|| {
            self.syntax_error(
                Self::integer_or_float_signed,
                Self::after_numbers,
                "number",
                "Invalid number literal",
            )
        })
    }

    /// `&(_ / EOF / ")")`
    fn after_numbers(&mut self) -> bool {
        let start = self.pos;
        let ok = self.ws() || self.eof() || self.lit(")");
        self.pos = start;
        ok
    }

    /// `"-"? ("0" / [1-9][0-9]*) ("." [0-9]+)?`
    fn integer_or_float_signed(&mut self) -> Option<()> {
        self.lit("-");
        let digit = |c: char| c.is_ascii_digit();
        if !self.lit("0") {
            self.class("[1-9]", |c| matches!(c, '1'..='9'))
                .then_some(())?;
            while self.class("[0-9]", digit) {}
        }
        self.attempt(|p| {
            p.l(".")?;
            p.class("[0-9]", digit).then_some(())?;
            while p.class("[0-9]", digit) {}
            Some(())
        });
        Some(())
    }

    fn string_literal(&mut self) -> Option<String> {
        let start = self.pos;
        let quoted = |p: &mut Self, q: &str, closed: bool| {
            p.attempt(|p| {
                p.l(q)?;
                while p.not_ahead(|p| p.lit(q)) && p.any() {}
                (!closed || p.lit(q)).then_some(())
            })
        };
        if quoted(self, "`", true)
            .or_else(|| quoted(self, "\"", true))
            .is_some()
        {
            return Some(unquote(&self.src[start..self.pos]).unwrap_or_else(|| {
                self.error(start, "string", "invalid syntax");
                String::new()
            }));
        }
        self.attempt(|p| {
            quoted(p, "`", false).or_else(|| quoted(p, "\"", false))?;
            if p.eof() {
                p.error(p.pos, "string", "Unterminated string literal");
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    #[rustfmt::skip]
    fn evaluates_table() {
        let v = json!({
            "Node": "node-1", "Address": "10.0.0.1", "ServiceName": "web",
            "ServiceTags": ["primary", "v1"], "ServicePort": 8080, "ServiceEnableTagOverride": false,
            "ServiceMeta": {"env": "prod", "team-name": "core", "dotted": "a.b"},
            "Weights": {"Passing": 1, "Warning": 0.5},
            "Checks": [{"Status": "passing"}, {"Status": "critical"}],
            "Empty": "", "Nothing": null, "NoTags": []
        });
        let cases: &[(&str, bool)] = &[
            ("", true), ("ServiceName == web", true), ("ServiceName == \"web\"", true),
            ("ServiceName==`web`", true), ("ServiceName != web", false), ("servicename == web", false),
            ("ServicePort == 8080", true), ("ServicePort == \"0x1F90\"", true), ("ServicePort != 80", true),
            ("ServicePort == abc", false), ("Weights.Warning == 0.5", true), ("Weights.Passing == 1", true),
            ("ServiceEnableTagOverride == false", true), ("ServiceEnableTagOverride == F", true),
            ("ServiceEnableTagOverride == true", false),
            // in / contains: list element, substring, map key
            ("primary in ServiceTags", true), ("\"v1\" in ServiceTags", true),
            ("ServiceTags contains v2", false), ("v2 not in ServiceTags", true),
            ("ServiceTags not contains primary", false), ("Address contains \"10.0\"", true),
            ("env in ServiceMeta", true), ("ServiceMeta contains \"team-name\"", true),
            ("ServiceMeta not contains region", true),
            // map keys, bracketed keys, missing keys
            ("ServiceMeta.env == prod", true), ("ServiceMeta[\"team-name\"] == core", true),
            ("ServiceMeta[ `team-name` ] != core", false), ("ServiceMeta.dotted == a.b", true),
            ("ServiceMeta.missing == x", false), ("ServiceMeta.missing != x", true),
            ("ServiceMeta.missing is empty", true), ("ServiceMeta.missing is not empty", false),
            ("ServiceMeta.missing matches \".*\"", false), ("ServiceMeta.missing not matches \".*\"", true),
            ("x in ServiceMeta.missing", false), ("Missing == x", false), ("Missing is empty", true),
            // regex, emptiness, any-element through lists, escapes
            ("Node matches \"^node-[0-9]+$\"", true), ("Node matches `node`", true),
            ("Node not matches \"^db\"", true), ("Empty is empty", true), ("Nothing is empty", true),
            ("NoTags is empty", true), ("ServiceTags is not empty", true), ("ServiceMeta is not empty", true),
            ("Checks.Status == critical", true), ("Checks.Status == warning", false),
            ("Checks.Status != passing", true), ("NoTags.Status != passing", false),
            ("ServiceMeta.env == \"pr\\u006fd\"", true), ("ServiceMeta.env == \"pr\\157d\"", true),
            // precedence: not > and > or
            ("ServiceName == web or ServiceName == db and ServicePort == 1", true),
            ("(ServiceName == web or ServiceName == db) and ServicePort == 1", false),
            ("not ServiceName == db and ServicePort == 1", false),
            ("not (ServiceName == db and ServicePort == 1)", true),
            ("not not ServiceName == web", true), (" ( ServiceName == web ) ", true),
            ("((ServiceName == web) and (not (ServicePort == 1)))", true),
            ("ServiceName == web and\n\tServicePort == 8080", true),
        ];
        for (expr, want) in cases {
            let filter = parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
            assert_eq!(filter.matches(&v), *want, "{expr:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn error_messages_follow_go_bexpr() {
        let value_expected = r#""-", "0", "\"", "`", [ \t\r\n], [1-9] or [a-zA-Z]"#;
        let cases: &[(&str, &str)] = &[
            ("foo == \"12x", r#"1:12 (11): rule "string": Unterminated string literal"#),
            ("foo == `12x", r#"1:12 (11): rule "string": Unterminated string literal"#),
            ("foo == \"a\\q\"", r#"1:8 (7): rule "string": invalid syntax"#),
            ("foo == 3x", r#"1:9 (8): rule "number": Invalid number literal"#),
            ("Address == 10.10.10.10 ", r#"1:17 (16): rule "number": Invalid number literal"#),
            ("foo[3] == abc", r#"1:5 (4): rule "index": Invalid index"#),
            ("x in foo[\"abc\"", r#"1:15 (14): rule "index": Unclosed index expression"#),
            ("foo[\"abc\" == 3", r#"1:11 (10): rule "index": Unclosed index expression"#),
            ("x in 32", r#"1:6 (5): rule "match": Invalid selector"#),
            ("(foo == 4", r#"1:10 (9): rule "grouping": Unmatched parentheses"#),
            ("foo", r#"1:4 (3): no match found, expected: "!=", ".", "==", "[", [ \t\r\n] or [a-zA-Z0-9_]"#),
            ("x in foo and ", r#"1:14 (13): no match found, expected: "(", "-", "0", "\"", "`", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#),
            ("x in foo or not ", concat!(r#"1:17 (16): no match found, expected: "!=", "(", "-", "0", "==", "\"", "`", "#,
                r#""contains", "in", "is", "matches", "not", [ \t\r\n], [1-9] or [a-zA-Z]"#)),
            ("Name ==", &format!("1:8 (7): no match found, expected: {value_expected}")),
            ("Name === x", &format!("1:8 (7): no match found, expected: {value_expected}")),
        ];
        for (expr, want) in cases {
            assert_eq!(parse(expr).expect_err(expr).to_string(), *want, "{expr:?}");
        }
        for expr in ["Name == a)", "Name ~= x", "Name is", "Name equals x", "and Name == x", "Name == x or", "()", " "] {
            let err = parse(expr).expect_err(expr);
            assert!(err.message().contains("no match found"), "{expr:?}: {err}");
        }
    }

    #[test]
    fn bad_regex_nesting_and_consul_prefix() {
        let err = parse("Node matches \"(\"").expect_err("bad regex");
        assert!(
            err.message()
                .starts_with("Failed to compile regular expression \"(\": ")
        );
        assert!(!err.message().contains('\n'), "{err}");
        let err = parse("x in 32").expect_err("invalid selector");
        assert_eq!(
            err.consul_message(),
            "Failed to create boolean expression evaluator: 1:6 (5): rule \"match\": Invalid selector"
        );
        let deep = format!("{}Name == x{}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse(&deep).is_err());
        assert!(parse(&vec!["Name == x"; 2000].join(" and ")).is_err());
        let nested = format!("{}Name == x{}", "(".repeat(40), ")".repeat(40));
        assert!(
            parse(&nested)
                .expect("40 levels")
                .matches(&json!({"Name": "x"}))
        );
    }

    #[test]
    fn go_conversions() {
        assert_eq!(parse_go_int("0x1f"), Some(31));
        assert_eq!(parse_go_int("-0b101"), Some(-5));
        assert_eq!(parse_go_int("017"), Some(15));
        assert_eq!(parse_go_int("08"), None);
        assert_eq!(parse_go_int("1.0"), None);
        assert_eq!(unquote(r#""\x41\t\"""#).as_deref(), Some("A\t\""));
        assert_eq!(unquote(r#""\'""#), None);
        assert_eq!(unquote("`a\\n\r`").as_deref(), Some("a\\n"));
    }
}
