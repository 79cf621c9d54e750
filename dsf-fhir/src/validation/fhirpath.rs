//! The part of FHIRPath that profile invariants use: paths, `where`, `exists`, `empty`, `all`,
//! `count`, `matches` and the other common functions, the boolean operators with FHIRPath's
//! three-valued logic, equality, comparison, union and string concatenation.
//!
//! Collections are vectors of JSON values. An expression this subset cannot read is reported
//! as such (the validator then warns instead of failing the resource).

use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// A parse or evaluation failure: the expression uses something outside this subset, or
/// breaks a FHIRPath rule (a boolean asked of several items).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub String);

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, PathError>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(PathError(message.into()))
}

/// Deeper nesting than this is refused, so that no expression can exhaust the stack.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    String(String),
    Number(f64),
    Variable(String),
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == '$' || c == '%' {
            let start = i;
            i += 1;
            if c == '%' && chars.get(i) == Some(&'`') {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&ch| ch == '`')
                    .ok_or_else(|| PathError("unterminated `".into()))?;
                tokens.push(Token::Variable(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
                continue;
            }
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(match c {
                '%' => Token::Variable(word[1..].to_owned()),
                _ => Token::Identifier(word),
            });
            continue;
        }
        if c == '`' {
            let end = chars[i + 1..]
                .iter()
                .position(|&ch| ch == '`')
                .ok_or_else(|| PathError("unterminated `".into()))?;
            tokens.push(Token::Identifier(
                chars[i + 1..i + 1 + end].iter().collect(),
            ));
            i += end + 2;
            continue;
        }
        if c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return fail("unterminated string"),
                    Some('\'') => break,
                    Some('\\') => {
                        i += 1;
                        value.push(match chars.get(i) {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some('r') => '\r',
                            Some(&other) => other,
                            None => return fail("unterminated string"),
                        });
                    }
                    Some(&other) => value.push(other),
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::String(value));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                if chars[i] == '.' && !chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
            let number: String = chars[start..i].iter().collect();
            tokens.push(Token::Number(
                number
                    .parse()
                    .map_err(|_| PathError(format!("bad number {number}")))?,
            ));
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let symbol = match two.as_str() {
            "!=" => Some("!="),
            "!~" => Some("!~"),
            "<=" => Some("<="),
            ">=" => Some(">="),
            _ => None,
        };
        if let Some(symbol) = symbol {
            tokens.push(Token::Symbol(symbol));
            i += 2;
            continue;
        }
        let symbol = match c {
            '.' => ".",
            '(' => "(",
            ')' => ")",
            '[' => "[",
            ']' => "]",
            '{' => "{",
            '}' => "}",
            ',' => ",",
            '=' => "=",
            '~' => "~",
            '<' => "<",
            '>' => ">",
            '|' => "|",
            '+' => "+",
            '-' => "-",
            '&' => "&",
            '*' => "*",
            '/' => "/",
            other => return fail(format!("unexpected character '{other}'")),
        };
        tokens.push(Token::Symbol(symbol));
        i += 1;
    }
    Ok(tokens)
}

#[derive(Debug, Clone)]
enum Ast {
    Literal(Value),
    Empty,
    This,
    Variable(String),
    /// Navigation to a child; `None` input means the focus.
    Member(Option<Box<Ast>>, String),
    Call(Option<Box<Ast>>, String, Vec<Ast>),
    /// `matches()` with a literal pattern, compiled once when the expression is parsed.
    Matches(Option<Box<Ast>>, regex::Regex),
    Index(Box<Ast>, Box<Ast>),
    Binary(&'static str, Box<Ast>, Box<Ast>),
    Negate(Box<Ast>),
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
}

const LEVELS: [&[&str]; 8] = [
    &["implies"],
    &["or", "xor"],
    &["and"],
    &["in", "contains"],
    &["=", "~", "!=", "!~"],
    &["<", ">", "<=", ">="],
    &["|"],
    &["+", "-", "&"],
];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn expect(&mut self, symbol: &str) -> Result<()> {
        match self.next() {
            Some(Token::Symbol(s)) if s == symbol => Ok(()),
            other => fail(format!("expected '{symbol}', found {other:?}")),
        }
    }

    fn operator_at(&self, level: usize) -> Option<&'static str> {
        let found = match self.peek()? {
            Token::Symbol(s) => LEVELS[level].iter().find(|op| **op == *s),
            Token::Identifier(word) => LEVELS[level].iter().find(|op| **op == word.as_str()),
            _ => None,
        };
        found.copied()
    }

    fn expression(&mut self, level: usize) -> Result<Ast> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return fail("expression nested too deeply");
        }
        let result = self.binary(level);
        self.depth -= 1;
        result
    }

    fn binary(&mut self, level: usize) -> Result<Ast> {
        if level == LEVELS.len() {
            return self.multiplicative();
        }
        let mut left = self.expression(level + 1)?;
        while let Some(op) = self.operator_at(level) {
            self.position += 1;
            let right = self.expression(level + 1)?;
            left = Ast::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn multiplicative(&mut self) -> Result<Ast> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Token::Symbol("*")) => "*",
                Some(Token::Symbol("/")) => "/",
                Some(Token::Identifier(w)) if w == "div" => "div",
                Some(Token::Identifier(w)) if w == "mod" => "mod",
                _ => break,
            };
            self.position += 1;
            let right = self.unary()?;
            left = Ast::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Ast> {
        if self.peek() == Some(&Token::Symbol("-")) {
            self.position += 1;
            return Ok(Ast::Negate(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Symbol("+")) {
            self.position += 1;
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Ast> {
        let mut term = self.term()?;
        loop {
            match self.peek() {
                Some(Token::Symbol(".")) => {
                    self.position += 1;
                    let name = match self.next() {
                        Some(Token::Identifier(name)) => name,
                        other => {
                            return fail(format!("expected a name after '.', found {other:?}"))
                        }
                    };
                    term = self.member_or_call(Some(Box::new(term)), name)?;
                }
                Some(Token::Symbol("[")) => {
                    self.position += 1;
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    term = Ast::Index(Box::new(term), Box::new(index));
                }
                _ => return Ok(term),
            }
        }
    }

    fn member_or_call(&mut self, input: Option<Box<Ast>>, name: String) -> Result<Ast> {
        if self.peek() != Some(&Token::Symbol("(")) {
            return Ok(Ast::Member(input, name));
        }
        self.position += 1;
        let mut arguments = Vec::new();
        if self.peek() != Some(&Token::Symbol(")")) {
            loop {
                arguments.push(self.expression(0)?);
                if self.peek() == Some(&Token::Symbol(",")) {
                    self.position += 1;
                } else {
                    break;
                }
            }
        }
        self.expect(")")?;
        if let ("matches", [Ast::Literal(Value::String(pattern))]) =
            (name.as_str(), arguments.as_slice())
        {
            return Ok(Ast::Matches(input, whole_match(pattern)?));
        }
        Ok(Ast::Call(input, name, arguments))
    }

    fn term(&mut self) -> Result<Ast> {
        match self.next() {
            Some(Token::String(s)) => Ok(Ast::Literal(Value::String(s))),
            Some(Token::Number(n)) => Ok(Ast::Literal(
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
            )),
            Some(Token::Variable(name)) => Ok(Ast::Variable(name)),
            Some(Token::Symbol("(")) => {
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Symbol("{")) => {
                self.expect("}")?;
                Ok(Ast::Empty)
            }
            Some(Token::Identifier(word)) => match word.as_str() {
                "true" => Ok(Ast::Literal(Value::Bool(true))),
                "false" => Ok(Ast::Literal(Value::Bool(false))),
                "$this" => Ok(Ast::This),
                _ if word.starts_with('$') => fail(format!("{word} is not supported")),
                _ => self.member_or_call(None, word),
            },
            other => fail(format!("unexpected {other:?}")),
        }
    }
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expression {
    ast: Ast,
}

impl Expression {
    /// Parses a FHIRPath expression of the subset profiles' invariants use.
    pub fn parse(text: &str) -> Result<Self> {
        let mut parser = Parser {
            tokens: tokenize(text)?,
            position: 0,
            depth: 0,
        };
        let ast = parser.expression(0)?;
        if parser.position < parser.tokens.len() {
            return fail(format!(
                "unexpected {:?} after the expression",
                parser.tokens[parser.position]
            ));
        }
        Ok(Expression { ast })
    }

    /// Evaluates on `focus` inside `resource` (`%resource`) and reads the result as a
    /// boolean: `None` for an empty result.
    pub fn is_true(&self, focus: &Value, resource: &Value) -> Result<Option<bool>> {
        let context = Context { resource, depth: 0 };
        let focus = Item::Borrowed(focus);
        let result = context.eval(&self.ast, std::slice::from_ref(&focus), &focus)?;
        as_boolean(&result)
    }

    /// Evaluates on `focus` inside `resource`, giving the resulting collection.
    pub fn evaluate(&self, focus: &Value, resource: &Value) -> Result<Vec<Value>> {
        let context = Context { resource, depth: 0 };
        let focus = Item::Borrowed(focus);
        let result = context.eval(&self.ast, std::slice::from_ref(&focus), &focus)?;
        Ok(result.into_iter().map(Cow::into_owned).collect())
    }
}

/// One item of a collection: a part of the resource or of the expression, borrowed, or a
/// value computed on the way (a comparison's result, a concatenation).
type Item<'a> = Cow<'a, Value>;

/// A FHIRPath `matches()` pattern: it must match the whole string.
fn whole_match(pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| PathError(format!("bad regular expression: {e}")))
}

fn as_boolean(collection: &[Item<'_>]) -> Result<Option<bool>> {
    match collection {
        [] => Ok(None),
        [item] => Ok(Some(item.as_bool().unwrap_or(true))),
        _ => fail("a boolean was expected, but the collection has several items"),
    }
}

fn computed<'a>(value: Value) -> Vec<Item<'a>> {
    vec![Cow::Owned(value)]
}

fn boolean<'a>(value: Option<bool>) -> Vec<Item<'a>> {
    value
        .map(|b| Cow::Owned(Value::Bool(b)))
        .into_iter()
        .collect()
}

/// The children named `name` of one item: arrays are flattened, and a choice element is
/// found by its stem (`value` finds `valueString`).
fn children<'a>(item: &Item<'a>, name: &str, out: &mut Vec<Item<'a>>) {
    match item {
        Cow::Borrowed(value) => value_children(value, name, |child| out.push(Cow::Borrowed(child))),
        Cow::Owned(value) => {
            value_children(value, name, |child| out.push(Cow::Owned(child.clone())))
        }
    }
}

/// [`children`] of one JSON value, each handed to `push`.
fn value_children<'v>(value: &'v Value, name: &str, mut push: impl FnMut(&'v Value)) {
    if let Some(object) = value.as_object() {
        let mut found = Vec::new();
        object_children(object, name, &mut found);
        found.into_iter().for_each(push);
    } else if name == "value" && !value.is_array() {
        // A primitive's `value` is the primitive itself (as in the FHIR object model).
        push(value);
    }
}

/// The children named `name` of a JSON object, arrays flattened, a choice element found by
/// its stem.
pub(super) fn object_children<'v>(
    object: &'v serde_json::Map<String, Value>,
    name: &str,
    out: &mut Vec<&'v Value>,
) {
    let found = object.get(name).or_else(|| {
        object.iter().find_map(|(key, value)| {
            let rest = key.strip_prefix(name)?;
            rest.starts_with(|c: char| c.is_ascii_uppercase())
                .then_some(value)
        })
    });
    match found {
        Some(Value::Array(items)) => out.extend(items.iter()),
        Some(value) => out.push(value),
        None => {}
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn text<'v>(value: &'v Item<'_>) -> Option<&'v str> {
    value.as_str()
}

struct Context<'a> {
    resource: &'a Value,
    depth: usize,
}

impl<'a> Context<'a> {
    fn eval(&self, ast: &'a Ast, focus: &[Item<'a>], this: &Item<'a>) -> Result<Vec<Item<'a>>> {
        if self.depth > MAX_DEPTH {
            return fail("evaluation nested too deeply");
        }
        match ast {
            Ast::Literal(value) => Ok(vec![Cow::Borrowed(value)]),
            Ast::Empty => Ok(Vec::new()),
            Ast::This => Ok(vec![this.clone()]),
            Ast::Variable(name) => match name.as_str() {
                "resource" | "rootResource" => Ok(vec![Cow::Borrowed(self.resource)]),
                "context" => Ok(focus.to_vec()),
                _ => fail(format!("%{name} is not supported")),
            },
            Ast::Member(input, name) => {
                let items = match input {
                    Some(input) => self.eval(input, focus, this)?,
                    None => {
                        // A path may start with the type name of its focus (`Task.status`).
                        let starts_with_type = !focus.is_empty()
                            && focus.iter().all(|item| {
                                item.get("resourceType").and_then(Value::as_str) == Some(name)
                            });
                        if starts_with_type {
                            return Ok(focus.to_vec());
                        }
                        focus.to_vec()
                    }
                };
                let mut out = Vec::new();
                for item in &items {
                    children(item, name, &mut out);
                }
                Ok(out)
            }
            Ast::Index(input, index) => {
                let items = self.eval(input, focus, this)?;
                let index = self.eval(index, focus, this)?;
                let position = index.first().and_then(|i| i.as_f64()).unwrap_or(-1.0);
                Ok(if position >= 0.0 {
                    items
                        .into_iter()
                        .nth(position as usize)
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                })
            }
            Ast::Negate(inner) => {
                let items = self.eval(inner, focus, this)?;
                Ok(items
                    .iter()
                    .filter_map(|i| i.as_f64())
                    .filter_map(|n| serde_json::Number::from_f64(-n))
                    .map(|n| Cow::Owned(Value::Number(n)))
                    .collect())
            }
            Ast::Binary(op, left, right) => self.binary(op, left, right, focus, this),
            Ast::Matches(input, regex) => {
                let items = match input {
                    Some(input) => self.eval(input, focus, this)?,
                    None => focus.to_vec(),
                };
                Ok(match single(&items).and_then(text) {
                    Some(value) => computed(Value::Bool(regex.is_match(value))),
                    None => Vec::new(),
                })
            }
            Ast::Call(input, name, arguments) => {
                let items = match input {
                    Some(input) => self.eval(input, focus, this)?,
                    None => focus.to_vec(),
                };
                let nested = Context {
                    resource: self.resource,
                    depth: self.depth + 1,
                };
                nested.call(name, &items, arguments, focus, this)
            }
        }
    }

    fn binary(
        &self,
        op: &str,
        left: &'a Ast,
        right: &'a Ast,
        focus: &[Item<'a>],
        this: &Item<'a>,
    ) -> Result<Vec<Item<'a>>> {
        let a = self.eval(left, focus, this)?;
        let b = self.eval(right, focus, this)?;
        match op {
            "and" | "or" | "xor" | "implies" => {
                let (x, y) = (as_boolean(&a)?, as_boolean(&b)?);
                Ok(boolean(match op {
                    "and" => match (x, y) {
                        (Some(false), _) | (_, Some(false)) => Some(false),
                        (Some(true), Some(true)) => Some(true),
                        _ => None,
                    },
                    "or" => match (x, y) {
                        (Some(true), _) | (_, Some(true)) => Some(true),
                        (Some(false), Some(false)) => Some(false),
                        _ => None,
                    },
                    "xor" => match (x, y) {
                        (Some(p), Some(q)) => Some(p != q),
                        _ => None,
                    },
                    _ => match (x, y) {
                        (Some(true), y) => y,
                        (Some(false), _) => Some(true),
                        (None, Some(true)) => Some(true),
                        (None, _) => None,
                    },
                }))
            }
            "=" | "!=" | "~" | "!~" => {
                if a.is_empty() || b.is_empty() {
                    return Ok(Vec::new());
                }
                let equivalent = op.contains('~');
                let same = a.len() == b.len()
                    && a.iter().zip(&b).all(|(x, y)| {
                        if equivalent {
                            match (text(x), text(y)) {
                                (Some(p), Some(q)) => p.trim().eq_ignore_ascii_case(q.trim()),
                                _ => equal(x, y),
                            }
                        } else {
                            equal(x, y)
                        }
                    });
                Ok(boolean(Some(same != op.starts_with('!'))))
            }
            "<" | ">" | "<=" | ">=" => {
                let (Some(x), Some(y)) = (single(&a), single(&b)) else {
                    return Ok(Vec::new());
                };
                let ordering = match (&**x, &**y) {
                    (Value::Number(p), Value::Number(q)) => p.as_f64().partial_cmp(&q.as_f64()),
                    (Value::String(p), Value::String(q)) => Some(p.cmp(q)),
                    _ => return fail("comparison of values of different kinds"),
                };
                let Some(ordering) = ordering else {
                    return Ok(Vec::new());
                };
                Ok(boolean(Some(match op {
                    "<" => ordering.is_lt(),
                    ">" => ordering.is_gt(),
                    "<=" => ordering.is_le(),
                    _ => ordering.is_ge(),
                })))
            }
            "|" => {
                let mut out: Vec<Item<'a>> = Vec::new();
                for item in a.into_iter().chain(b) {
                    if !out.iter().any(|o| equal(o, &item)) {
                        out.push(item);
                    }
                }
                Ok(out)
            }
            "in" | "contains" => {
                let (element, collection) = if op == "in" { (a, b) } else { (b, a) };
                match single(&element) {
                    None => Ok(Vec::new()),
                    Some(x) => Ok(boolean(Some(collection.iter().any(|y| equal(x, y))))),
                }
            }
            "&" => {
                let p = single(&a).and_then(text).unwrap_or("");
                let q = single(&b).and_then(text).unwrap_or("");
                Ok(computed(Value::String(format!("{p}{q}"))))
            }
            "+" => match (single(&a), single(&b)) {
                (Some(x), Some(y)) => match (&**x, &**y) {
                    (Value::String(p), Value::String(q)) => {
                        Ok(computed(Value::String(format!("{p}{q}"))))
                    }
                    (x, y) => arithmetic(x, y, |p, q| p + q),
                },
                _ => Ok(Vec::new()),
            },
            "-" | "*" | "/" | "div" | "mod" => match (single(&a), single(&b)) {
                (Some(x), Some(y)) => arithmetic(x, y, |p, q| match op {
                    "-" => p - q,
                    "*" => p * q,
                    "/" => p / q,
                    "div" => (p / q).trunc(),
                    _ => p % q,
                }),
                _ => Ok(Vec::new()),
            },
            other => fail(format!("operator {other} is not supported")),
        }
    }

    fn call(
        &self,
        name: &str,
        items: &[Item<'a>],
        arguments: &'a [Ast],
        focus: &[Item<'a>],
        this: &Item<'a>,
    ) -> Result<Vec<Item<'a>>> {
        // Arguments evaluated once, on the expression's focus (not per item).
        let argument = |index: usize| -> Result<Vec<Item<'a>>> {
            match arguments.get(index) {
                Some(ast) => self.eval(ast, focus, this),
                None => fail(format!("{name}() needs an argument")),
            }
        };
        let string_argument = |index: usize| -> Result<String> {
            match argument(index)?.as_slice() {
                [item] => match item.as_str() {
                    Some(s) => Ok(s.to_owned()),
                    None => fail(format!("{name}() needs a string argument")),
                },
                _ => fail(format!("{name}() needs a string argument")),
            }
        };
        // Criteria are evaluated per item, with the item as focus and `$this`.
        let per_item = |item: &Item<'a>| -> Result<Option<bool>> {
            match arguments.first() {
                Some(ast) => as_boolean(&self.eval(ast, std::slice::from_ref(item), item)?),
                None => Ok(Some(true)),
            }
        };
        let single_text = || single(items).and_then(text);
        match name {
            "exists" => {
                let mut any = false;
                for item in items {
                    if per_item(item)? == Some(true) {
                        any = true;
                        break;
                    }
                }
                Ok(boolean(Some(any)))
            }
            "empty" => Ok(boolean(Some(items.is_empty()))),
            "not" => Ok(boolean(as_boolean(items)?.map(|b| !b))),
            "where" => {
                let mut out = Vec::new();
                for item in items {
                    if per_item(item)? == Some(true) {
                        out.push(item.clone());
                    }
                }
                Ok(out)
            }
            "select" => {
                let ast = arguments
                    .first()
                    .ok_or_else(|| PathError("select() needs an argument".into()))?;
                let mut out = Vec::new();
                for item in items {
                    out.extend(self.eval(ast, std::slice::from_ref(item), item)?);
                }
                Ok(out)
            }
            "all" => {
                for item in items {
                    if per_item(item)? != Some(true) {
                        return Ok(boolean(Some(false)));
                    }
                }
                Ok(boolean(Some(true)))
            }
            "count" => Ok(computed(Value::from(items.len()))),
            "first" => Ok(items.first().cloned().into_iter().collect()),
            "last" => Ok(items.last().cloned().into_iter().collect()),
            "distinct" => {
                let mut out: Vec<Item<'a>> = Vec::new();
                for item in items {
                    if !out.iter().any(|o| equal(o, item)) {
                        out.push(item.clone());
                    }
                }
                Ok(out)
            }
            "isDistinct" => {
                let distinct = items
                    .iter()
                    .enumerate()
                    .all(|(i, a)| items[i + 1..].iter().all(|b| !equal(a, b)));
                Ok(boolean(Some(distinct)))
            }
            "hasValue" => Ok(boolean(Some(
                single(items).is_some_and(|v| !v.is_object() && !v.is_array()),
            ))),
            "matches" => {
                let Some(value) = single_text() else {
                    return Ok(Vec::new());
                };
                let regex = whole_match(&string_argument(0)?)?;
                Ok(boolean(Some(regex.is_match(value))))
            }
            "startsWith" | "endsWith" | "contains" => {
                let Some(value) = single_text() else {
                    return Ok(Vec::new());
                };
                let part = string_argument(0)?;
                Ok(boolean(Some(match name {
                    "startsWith" => value.starts_with(&part),
                    "endsWith" => value.ends_with(&part),
                    _ => value.contains(&part),
                })))
            }
            "length" => Ok(single_text()
                .map(|s| Cow::Owned(Value::from(s.chars().count())))
                .into_iter()
                .collect()),
            "upper" | "lower" => Ok(single_text()
                .map(|s| {
                    Cow::Owned(Value::String(if name == "upper" {
                        s.to_uppercase()
                    } else {
                        s.to_lowercase()
                    }))
                })
                .into_iter()
                .collect()),
            "toString" => Ok(single(items)
                .map(|v| match &**v {
                    Value::String(s) => Cow::Owned(Value::String(s.clone())),
                    other => Cow::Owned(Value::String(other.to_string())),
                })
                .into_iter()
                .collect()),
            "iif" => match as_boolean(&argument(0)?)? {
                Some(true) => argument(1),
                _ if arguments.len() > 2 => argument(2),
                _ => Ok(Vec::new()),
            },
            "trace" => Ok(items.to_vec()),
            other => fail(format!("function {other}() is not supported")),
        }
    }
}

fn single<'i, 'a>(items: &'i [Item<'a>]) -> Option<&'i Item<'a>> {
    match items {
        [one] => Some(one),
        _ => None,
    }
}

fn arithmetic<'a>(x: &Value, y: &Value, f: impl Fn(f64, f64) -> f64) -> Result<Vec<Item<'a>>> {
    match (x.as_f64(), y.as_f64()) {
        (Some(p), Some(q)) => Ok(serde_json::Number::from_f64(f(p, q))
            .map(|n| Cow::Owned(Value::Number(n)))
            .into_iter()
            .collect()),
        _ => fail("arithmetic on values that are not numbers"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(expression: &str, focus: &Value) -> Option<bool> {
        Expression::parse(expression)
            .and_then(|e| e.is_true(focus, focus))
            .unwrap_or_else(|e| panic!("{expression}: {e}"))
    }

    #[test]
    fn the_dsf_invariants_evaluate() {
        let task = json!({
            "resourceType": "Task", "status": "draft",
            "identifier": [{"system": "http://dsf.dev/sid/task-identifier", "value": "x"}],
            "input": [{"type": {"coding": [{"system": "http://dsf.dev/fhir/CodeSystem/bpmn-message", "code": "business-key"}]}, "valueString": "b"}]
        });
        assert_eq!(
            check("%resource.status = 'draft' implies identifier.where(system = 'http://dsf.dev/sid/task-identifier' and value.exists()).exists()", &task),
            Some(true)
        );
        assert_eq!(
            check("((%resource.status = 'in-progress') or (%resource.status = 'completed')) implies input.type.coding.where(system = 'http://dsf.dev/fhir/CodeSystem/bpmn-message' and code = 'business-key').exists()", &task),
            Some(true)
        );
        assert_eq!(check("Task.input.value = 'b'", &task), Some(true));
        let requested = json!({"resourceType": "Task", "status": "draft"});
        assert_eq!(
            check(
                "%resource.status = 'draft' implies identifier.where(system = 'x').exists()",
                &requested
            ),
            Some(false)
        );
        let thumbprint = json!({"url": "u", "valueString": "ab12"});
        assert_eq!(
            check("value.matches('^[a-f0-9]{4}$')", &thumbprint),
            Some(true)
        );
        assert_eq!(
            check("value.matches('^[a-f0-9]{5}$')", &thumbprint),
            Some(false)
        );
        let meta =
            json!({"tag": [{"system": "s", "code": "ALL"}, {"system": "s", "code": "LOCAL"}]});
        assert_eq!(
            check("tag.where(system = 's' and code = 'ALL').exists() implies tag.where(system = 's' and code = 'LOCAL').exists().not()", &meta),
            Some(false)
        );
        let reference = json!({"identifier": {"system": "o"}, "type": "Organization"});
        assert_eq!(
            check(
                "identifier.system = 'o' implies type.empty() or type = 'Organization'",
                &reference
            ),
            Some(true)
        );
        assert_eq!(
            check(
                "$this.empty().not() implies ($this = 'a' or $this = 'b')",
                &json!("c")
            ),
            Some(false)
        );
    }

    #[test]
    fn three_valued_logic_and_empty_collections() {
        let empty = json!({});
        assert_eq!(check("missing = 'x'", &empty), None);
        assert_eq!(check("missing.exists() or true", &empty), Some(true));
        assert_eq!(check("{} implies false", &empty), None);
        assert_eq!(check("false implies {}", &empty), Some(true));
        assert_eq!(
            check("(1 + 2) = 3 and 'a' & 'b' = 'ab'", &empty),
            Some(true)
        );
    }

    #[test]
    fn unsupported_and_hostile_expressions_are_errors() {
        assert!(Expression::parse("resolve(").is_err());
        assert!(Expression::parse("'open").is_err());
        assert!(Expression::parse(&"(".repeat(500)).is_err());
        let unknown = Expression::parse("conformsTo('x')").expect("parses");
        assert!(unknown.is_true(&json!({}), &json!({})).is_err());
        let several = Expression::parse("a and true").expect("parses");
        assert!(several
            .is_true(&json!({"a": [true, false]}), &json!({}))
            .is_err());
    }
}
