//! The part of JUEL (the expression language of Camunda 7) that DSF process files use:
//! `${var}`, `${a.b}`, `${a['b']}`, comparisons (`==`, `!=`, `<`, `>`, `<=`, `>=` and their
//! word forms `eq`, `ne`, `lt`, `gt`, `le`, `ge`), `&&`, `||`, `!` (`and`, `or`, `not`),
//! `empty`, `? :`, string, number, boolean and null literals, and the calls
//! `execution.hasVariable('x')` and `execution.getVariable('x')`.
//!
//! Evaluation is safe by construction: there is no reflection and no other call; anything else
//! is an error when the expression is parsed, that is when the process is deployed.
//!
//! ```
//! use dsf_bpmn::expr::Expression;
//! use serde_json::json;
//! let vars = std::collections::BTreeMap::from([("statusCode".to_owned(), json!("ok"))]);
//! let e = Expression::parse("${statusCode == 'ok' && !execution.hasVariable('error')}").unwrap();
//! assert_eq!(e.evaluate(&vars).unwrap(), json!(true));
//! ```

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Why an expression cannot be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expression '{source_text}': {message}")]
pub struct ExprError {
    /// The expression as written.
    pub source_text: String,
    /// What is wrong with it.
    pub message: String,
}

/// Where an expression finds its variables: the process instance's scopes.
pub trait VariableLookup {
    /// The variable `name` as seen from where the expression runs.
    fn variable(&self, name: &str) -> Option<Value>;
}

impl VariableLookup for BTreeMap<String, Value> {
    fn variable(&self, name: &str) -> Option<Value> {
        self.get(name).cloned()
    }
}

impl VariableLookup for serde_json::Map<String, Value> {
    fn variable(&self, name: &str) -> Option<Value> {
        self.get(name).cloned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Ast {
    Literal(Value),
    Variable(String),
    Member(Box<Ast>, String),
    Index(Box<Ast>, Box<Ast>),
    Not(Box<Ast>),
    Empty(Box<Ast>),
    And(Box<Ast>, Box<Ast>),
    Or(Box<Ast>, Box<Ast>),
    Compare(Compare, Box<Ast>, Box<Ast>),
    Choose(Box<Ast>, Box<Ast>, Box<Ast>),
    HasVariable(Box<Ast>),
    GetVariable(Box<Ast>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Eval(Ast),
}

/// A parsed expression: literal text, `${…}` parts, or both (a composite evaluates to a string).
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    source: String,
    parts: Vec<Part>,
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Expression {
    /// Parses text with `${…}` or `#{…}` parts, or plain text.
    pub fn parse(source: &str) -> Result<Expression, ExprError> {
        let error = |message: String| ExprError {
            source_text: source.to_owned(),
            message,
        };
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("${").or_else(|| rest.find("#{")) {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let body_start = start + 2;
            let end = closing_brace(&rest[body_start..])
                .ok_or_else(|| error("'${' without a closing '}'".into()))?;
            let body = &rest[body_start..body_start + end];
            parts.push(Part::Eval(
                Parser::new(body).map_err(error)?.whole().map_err(error)?,
            ));
            rest = &rest[body_start + end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Expression {
            source: source.to_owned(),
            parts,
        })
    }

    /// Whether the text has no `${…}` part.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The text it was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The value: that of the single `${…}` when the expression is nothing else, otherwise
    /// the concatenation of all parts as a string.
    pub fn evaluate(&self, vars: &dyn VariableLookup) -> Result<Value, ExprError> {
        let error = |message: String| ExprError {
            source_text: self.source.clone(),
            message,
        };
        match self.parts.as_slice() {
            [] => Ok(Value::String(String::new())),
            [Part::Eval(ast)] => eval(ast, vars).map_err(error),
            parts => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Eval(ast) => out.push_str(&to_text(&eval(ast, vars).map_err(error)?)),
                    }
                }
                Ok(Value::String(out))
            }
        }
    }

    /// [`Expression::evaluate`] coerced to a boolean as JUEL does (null and "" are false,
    /// strings `true`/`false` in any case), for conditions.
    pub fn evaluate_bool(&self, vars: &dyn VariableLookup) -> Result<bool, ExprError> {
        let value = self.evaluate(vars)?;
        to_bool(&value).map_err(|message| ExprError {
            source_text: self.source.clone(),
            message,
        })
    }
}

/// The index of the `}` that ends an expression body, skipping string literals.
fn closing_brace(body: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '}' => return Some(i),
                _ => {}
            },
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse()
                .map_err(|_| format!("invalid number '{text}'"))?;
            out.push(Token::Num(n));
        } else if c == '\'' || c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err("unterminated string literal".into());
                };
                i += 1;
                if d == c {
                    break;
                }
                if d == '\\' {
                    let Some(&e) = chars.get(i) else {
                        return Err("unterminated string literal".into());
                    };
                    i += 1;
                    s.push(e);
                } else {
                    s.push(d);
                }
            }
            out.push(Token::Str(s));
        } else {
            const SYMBOLS: [&str; 17] = [
                "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", ".", "[", "]", "?",
                ":", ",",
            ];
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) else {
                return Err(format!("unexpected character '{c}'"));
            };
            out.push(Token::Sym(sym));
            i += sym.len();
        }
    }
    Ok(out)
}

/// Recursive descent over JUEL's precedence: `?:` < `||` < `&&` < equality < relational <
/// unary (`!`, `empty`) < member access.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn new(text: &str) -> Result<Parser, String> {
        Ok(Parser {
            tokens: tokenize(text)?,
            at: 0,
        })
    }

    fn whole(mut self) -> Result<Ast, String> {
        if self.tokens.is_empty() {
            return Err("empty expression".into());
        }
        let ast = self.choice()?;
        match self.tokens.get(self.at) {
            None => Ok(ast),
            Some(t) => Err(format!("unexpected {} after the expression", describe(t))),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn eat_sym(&mut self, sym: &str) -> bool {
        if matches!(self.peek(), Some(Token::Sym(s)) if *s == sym) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token::Ident(w)) if w == word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_sym(&mut self, sym: &str) -> Result<(), String> {
        if self.eat_sym(sym) {
            Ok(())
        } else {
            Err(format!(
                "expected '{sym}', found {}",
                self.peek().map_or("the end".to_owned(), describe)
            ))
        }
    }

    fn choice(&mut self) -> Result<Ast, String> {
        let condition = self.or()?;
        if self.eat_sym("?") {
            let yes = self.choice()?;
            self.expect_sym(":")?;
            let no = self.choice()?;
            return Ok(Ast::Choose(
                Box::new(condition),
                Box::new(yes),
                Box::new(no),
            ));
        }
        Ok(condition)
    }

    fn or(&mut self) -> Result<Ast, String> {
        let mut left = self.and()?;
        while self.eat_sym("||") || self.eat_word("or") {
            left = Ast::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Ast, String> {
        let mut left = self.equality()?;
        while self.eat_sym("&&") || self.eat_word("and") {
            left = Ast::And(Box::new(left), Box::new(self.equality()?));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Ast, String> {
        let mut left = self.relational()?;
        loop {
            let op = if self.eat_sym("==") || self.eat_word("eq") {
                Compare::Eq
            } else if self.eat_sym("!=") || self.eat_word("ne") {
                Compare::Ne
            } else {
                return Ok(left);
            };
            left = Ast::Compare(op, Box::new(left), Box::new(self.relational()?));
        }
    }

    fn relational(&mut self) -> Result<Ast, String> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_sym("<=") || self.eat_word("le") {
                Compare::Le
            } else if self.eat_sym(">=") || self.eat_word("ge") {
                Compare::Ge
            } else if self.eat_sym("<") || self.eat_word("lt") {
                Compare::Lt
            } else if self.eat_sym(">") || self.eat_word("gt") {
                Compare::Gt
            } else {
                return Ok(left);
            };
            left = Ast::Compare(op, Box::new(left), Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Ast, String> {
        if self.eat_sym("!") || self.eat_word("not") {
            return Ok(Ast::Not(Box::new(self.unary()?)));
        }
        if self.eat_word("empty") {
            return Ok(Ast::Empty(Box::new(self.unary()?)));
        }
        self.member()
    }

    fn member(&mut self) -> Result<Ast, String> {
        let mut value = self.primary()?;
        loop {
            if self.eat_sym(".") {
                let Some(Token::Ident(name)) = self.peek().cloned() else {
                    return Err("expected a property name after '.'".into());
                };
                self.at += 1;
                if self.eat_sym("(") {
                    value = self.call(value, &name)?;
                } else {
                    value = Ast::Member(Box::new(value), name);
                }
            } else if self.eat_sym("[") {
                let index = self.choice()?;
                self.expect_sym("]")?;
                value = Ast::Index(Box::new(value), Box::new(index));
            } else {
                return Ok(value);
            }
        }
    }

    /// The only calls there are: `execution.hasVariable(x)` and `execution.getVariable(x)`.
    fn call(&mut self, target: Ast, method: &str) -> Result<Ast, String> {
        let on_execution = matches!(&target, Ast::Variable(t) if t == "execution");
        let build: fn(Box<Ast>) -> Ast = match method {
            "hasVariable" if on_execution => Ast::HasVariable,
            "getVariable" if on_execution => Ast::GetVariable,
            _ => {
                return Err(format!(
                    "method call '{method}(…)' is not supported; only execution.hasVariable and execution.getVariable are"
                ))
            }
        };
        let argument = self.choice()?;
        self.expect_sym(")")?;
        Ok(build(Box::new(argument)))
    }

    fn primary(&mut self) -> Result<Ast, String> {
        let Some(token) = self.peek().cloned() else {
            return Err("expression ends too early".into());
        };
        self.at += 1;
        match token {
            Token::Str(s) => Ok(Ast::Literal(Value::String(s))),
            Token::Num(n) => Ok(Ast::Literal(number(n))),
            Token::Ident(word) => match word.as_str() {
                "true" => Ok(Ast::Literal(Value::Bool(true))),
                "false" => Ok(Ast::Literal(Value::Bool(false))),
                "null" => Ok(Ast::Literal(Value::Null)),
                "and" | "or" | "not" | "eq" | "ne" | "lt" | "gt" | "le" | "ge" | "empty"
                | "div" | "mod" | "instanceof" => Err(format!("unexpected keyword '{word}'")),
                _ => Ok(Ast::Variable(word)),
            },
            Token::Sym("(") => {
                let inner = self.choice()?;
                self.expect_sym(")")?;
                Ok(inner)
            }
            other => Err(format!("unexpected {}", describe(&other))),
        }
    }
}

fn describe(token: &Token) -> String {
    match token {
        Token::Ident(w) => format!("'{w}'"),
        Token::Str(s) => format!("string '{s}'"),
        Token::Num(n) => format!("number {n}"),
        Token::Sym(s) => format!("'{s}'"),
    }
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn eval(ast: &Ast, vars: &dyn VariableLookup) -> Result<Value, String> {
    Ok(match ast {
        Ast::Literal(v) => v.clone(),
        Ast::Variable(name) => vars
            .variable(name)
            .ok_or_else(|| format!("unknown variable '{name}'"))?,
        Ast::Member(target, name) => member(&eval(target, vars)?, name)?,
        Ast::Index(target, index) => {
            let target = eval(target, vars)?;
            match eval(index, vars)? {
                Value::String(key) => member(&target, &key)?,
                Value::Number(n) => match (&target, n.as_u64()) {
                    (Value::Array(items), Some(i)) => {
                        items.get(i as usize).cloned().unwrap_or(Value::Null)
                    }
                    _ => return Err(format!("cannot index {} with {n}", kind(&target))),
                },
                other => return Err(format!("cannot index with {}", kind(&other))),
            }
        }
        Ast::Not(inner) => Value::Bool(!to_bool(&eval(inner, vars)?)?),
        Ast::Empty(inner) => Value::Bool(match eval(inner, vars)? {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        }),
        Ast::And(a, b) => Value::Bool(to_bool(&eval(a, vars)?)? && to_bool(&eval(b, vars)?)?),
        Ast::Or(a, b) => Value::Bool(to_bool(&eval(a, vars)?)? || to_bool(&eval(b, vars)?)?),
        Ast::Compare(op, a, b) => Value::Bool(compare(*op, &eval(a, vars)?, &eval(b, vars)?)?),
        Ast::Choose(c, yes, no) => {
            if to_bool(&eval(c, vars)?)? {
                eval(yes, vars)?
            } else {
                eval(no, vars)?
            }
        }
        Ast::HasVariable(name) => {
            Value::Bool(vars.variable(&to_text(&eval(name, vars)?)).is_some())
        }
        Ast::GetVariable(name) => vars
            .variable(&to_text(&eval(name, vars)?))
            .unwrap_or(Value::Null),
    })
}

fn member(target: &Value, name: &str) -> Result<Value, String> {
    match target {
        Value::Object(map) => Ok(map.get(name).cloned().unwrap_or(Value::Null)),
        other => Err(format!("cannot read property '{name}' of {}", kind(other))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// JUEL's coercion to boolean.
pub(crate) fn to_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.is_empty() => Ok(false),
        Value::String(s) => Ok(s.eq_ignore_ascii_case("true")),
        other => Err(format!("{} is not a boolean", kind(other))),
    }
}

/// JUEL's coercion to string (null is "").
pub(crate) fn to_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn compare(op: Compare, a: &Value, b: &Value) -> Result<bool, String> {
    use std::cmp::Ordering;
    Ok(match op {
        Compare::Eq => equals(a, b)?,
        Compare::Ne => !equals(a, b)?,
        Compare::Lt => order(a, b)? == Ordering::Less,
        Compare::Gt => order(a, b)? == Ordering::Greater,
        Compare::Le => order(a, b)? != Ordering::Greater,
        Compare::Ge => order(a, b)? != Ordering::Less,
    })
}

/// JUEL equality: null only equals null; a number against anything compares numerically; a
/// boolean against anything compares as booleans; otherwise strings and values as they are.
fn equals(a: &Value, b: &Value) -> Result<bool, String> {
    Ok(match (a, b) {
        (Value::Null, _) | (_, Value::Null) => a == b,
        (Value::Number(_), _) | (_, Value::Number(_)) => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => return Err(format!("cannot compare {} with {}", kind(a), kind(b))),
        },
        (Value::Bool(x), other) | (other, Value::Bool(x)) => Some(*x) == to_bool(other).ok(),
        _ => a == b,
    })
}

fn order(a: &Value, b: &Value) -> Result<std::cmp::Ordering, String> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
        _ => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x
                .partial_cmp(&y)
                .ok_or_else(|| "cannot order NaN".to_owned()),
            _ => Err(format!("cannot order {} and {}", kind(a), kind(b))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> BTreeMap<String, Value> {
        BTreeMap::from([
            ("statusCode".to_owned(), json!("ok")),
            ("count".to_owned(), json!(3)),
            ("flag".to_owned(), json!(true)),
            ("none".to_owned(), Value::Null),
            ("text".to_owned(), json!("")),
            ("list".to_owned(), json!([1, 2])),
            (
                "target".to_owned(),
                json!({"organizationIdentifier": "org-a", "endpoint": {"url": "https://a"}}),
            ),
        ])
    }

    fn eval_str(s: &str) -> Result<Value, ExprError> {
        Expression::parse(s)?.evaluate(&vars())
    }

    #[test]
    fn the_forms_dsf_files_use() {
        for (source, expected) in [
            ("${statusCode}", json!("ok")),
            ("${target.organizationIdentifier}", json!("org-a")),
            ("${target.endpoint.url}", json!("https://a")),
            ("${target['organizationIdentifier']}", json!("org-a")),
            ("${list[1]}", json!(2)),
            ("${statusCode == 'ok'}", json!(true)),
            ("${statusCode != \"ok\"}", json!(false)),
            ("${statusCode eq 'ok' and count gt 2}", json!(true)),
            ("${count < 3}", json!(false)),
            ("${count <= 3}", json!(true)),
            ("${count >= 4 || flag}", json!(true)),
            ("${!flag}", json!(false)),
            ("${not flag}", json!(false)),
            ("${empty none}", json!(true)),
            ("${empty text}", json!(true)),
            ("${!empty list}", json!(true)),
            ("${empty target.missing}", json!(true)),
            ("${execution.hasVariable('count')}", json!(true)),
            ("${execution.hasVariable('nope')}", json!(false)),
            ("${execution.getVariable('count') == 3}", json!(true)),
            ("${execution.getVariable('nope')}", Value::Null),
            ("${count == '3'}", json!(true)),
            ("${flag == 'true'}", json!(true)),
            ("${none == null}", json!(true)),
            ("${flag ? 'yes' : 'no'}", json!("yes")),
            ("${(count > 1) && (count < 5)}", json!(true)),
            ("${1.5 > 1}", json!(true)),
            ("#{statusCode}", json!("ok")),
            ("plain text", json!("plain text")),
            (
                "status: ${statusCode}, count ${count}",
                json!("status: ok, count 3"),
            ),
            ("${'a}b'}", json!("a}b")),
        ] {
            assert_eq!(eval_str(source).unwrap(), expected, "{source}");
        }
    }

    #[test]
    fn booleans_for_conditions() {
        let v = vars();
        assert!(Expression::parse("${flag}")
            .unwrap()
            .evaluate_bool(&v)
            .unwrap());
        assert!(!Expression::parse("${none}")
            .unwrap()
            .evaluate_bool(&v)
            .unwrap());
        assert!(Expression::parse("${count}")
            .unwrap()
            .evaluate_bool(&v)
            .is_err());
    }

    #[test]
    fn errors_name_the_problem() {
        for (source, message) in [
            ("${unknown}", "unknown variable 'unknown'"),
            ("${count.x}", "cannot read property 'x' of a number"),
            ("${statusCode < 3}", "cannot order a string and a number"),
            ("${count && flag}", "a number is not a boolean"),
        ] {
            assert_eq!(eval_str(source).unwrap_err().message, message, "{source}");
        }
        for (source, message) in [
            ("${", "'${' without a closing '}'"),
            ("${}", "empty expression"),
            ("${a ==}", "expression ends too early"),
            ("${a b}", "unexpected 'b' after the expression"),
            ("${'open}", "'${' without a closing '}'"),
            ("${x.getClass()}", "method call 'getClass(…)' is not supported; only execution.hasVariable and execution.getVariable are"),
            ("${Runtime.exec('rm')}", "method call 'exec(…)' is not supported; only execution.hasVariable and execution.getVariable are"),
            ("${a + b}", "unexpected character '+'"),
            ("${(a}", "expected ')', found the end"),
        ] {
            assert_eq!(Expression::parse(source).unwrap_err().message, message, "{source}");
        }
    }

    #[test]
    fn literal_text_is_literal() {
        assert!(Expression::parse("PT5M").unwrap().is_literal());
        assert!(!Expression::parse("${x}").unwrap().is_literal());
    }
}
