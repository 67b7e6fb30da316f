//! The part of CEL that Istio's Telemetry API dimensions and access-log filters use:
//! literals, attribute paths (`request.headers['x-user']`,
//! `xds.node.metadata.LABELS.version`, `filter_state.upstream_peer.app`), `has(…)`,
//! `string(…)`, `? :`, `==`, `!=`, `<`, `<=`, `>`, `>=`, `&&`, `||`, `!` and `+` on
//! strings and integers. An expression outside it is refused
//! when the config arrives (with the expression quoted), never evaluated wrongly.
//! Evaluation errors (a missing header, an unknown attribute) become Istio's
//! `unknown`, as in istio-proxy.
use std::fmt;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Val),
    /// An attribute path: its root name and the selections after it.
    Path(String, Vec<Seg>),
    Has(String, Vec<Seg>),
    Str(Box<Expr>),
    Not(Box<Expr>),
    Bin(Box<Expr>, Op, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Field(String),
    Key(String),
    Index(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Add,
}

/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
}

impl fmt::Display for Val {
    /// Envoy's `print()`: strings as they are, numbers in decimal, `true`/`false`,
    /// null as `NULL`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Str(s) => f.write_str(s),
            Val::Int(i) => write!(f, "{i}"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Null => f.write_str("NULL"),
        }
    }
}

/// Resolves attribute paths; `None` is an evaluation error (no such attribute or key).
pub trait Attributes {
    fn get(&self, root: &str, path: &[Seg]) -> Option<Val>;
}

impl Expr {
    pub fn parse(src: &str) -> Result<Expr, String> {
        let toks = lex(src)?;
        let mut p = Parser { toks, at: 0 };
        let e = p.cond()?;
        if p.at != p.toks.len() {
            return Err(format!("unexpected '{}'", p.toks[p.at]));
        }
        Ok(e)
    }

    /// The value, or `None` on an evaluation error.
    pub fn eval(&self, a: &dyn Attributes) -> Option<Val> {
        Some(match self {
            Expr::Lit(v) => v.clone(),
            Expr::Path(root, segs) => a.get(root, segs)?,
            Expr::Has(root, segs) => Val::Bool(a.get(root, segs).is_some()),
            Expr::Str(e) => Val::Str(e.eval(a)?.to_string()),
            Expr::Not(e) => match e.eval(a)? {
                Val::Bool(b) => Val::Bool(!b),
                _ => return None,
            },
            Expr::Cond(c, t, f) => match c.eval(a)? {
                Val::Bool(true) => t.eval(a)?,
                Val::Bool(false) => f.eval(a)?,
                _ => return None,
            },
            Expr::Bin(l, Op::And, r) => match l.eval(a)? {
                Val::Bool(false) => Val::Bool(false),
                Val::Bool(true) => match r.eval(a)? {
                    Val::Bool(b) => Val::Bool(b),
                    _ => return None,
                },
                _ => return None,
            },
            Expr::Bin(l, Op::Or, r) => match l.eval(a)? {
                Val::Bool(true) => Val::Bool(true),
                Val::Bool(false) => match r.eval(a)? {
                    Val::Bool(b) => Val::Bool(b),
                    _ => return None,
                },
                _ => return None,
            },
            Expr::Bin(l, op, r) => {
                let (l, r) = (l.eval(a)?, r.eval(a)?);
                match (op, l, r) {
                    (Op::Eq, l, r) => Val::Bool(l == r),
                    (Op::Ne, l, r) => Val::Bool(l != r),
                    (Op::Lt | Op::Le | Op::Gt | Op::Ge, l, r) => {
                        let ord = match (l, r) {
                            (Val::Int(l), Val::Int(r)) => l.cmp(&r),
                            (Val::Str(l), Val::Str(r)) => l.cmp(&r),
                            _ => return None,
                        };
                        Val::Bool(match op {
                            Op::Lt => ord.is_lt(),
                            Op::Le => ord.is_le(),
                            Op::Gt => ord.is_gt(),
                            _ => ord.is_ge(),
                        })
                    }
                    (Op::Add, Val::Str(l), Val::Str(r)) => Val::Str(l + &r),
                    (Op::Add, Val::Int(l), Val::Int(r)) => Val::Int(l.checked_add(r)?),
                    _ => return None,
                }
            }
        })
    }

    /// Whether it reads the request's headers (kept for the end of the stream then).
    pub fn reads_request_headers(&self) -> bool {
        match self {
            Expr::Lit(_) => false,
            Expr::Path(root, segs) | Expr::Has(root, segs) => {
                root == "request" && matches!(segs.first(), Some(Seg::Field(f)) if f == "headers")
            }
            Expr::Str(e) | Expr::Not(e) => e.reads_request_headers(),
            Expr::Bin(l, _, r) => l.reads_request_headers() || r.reads_request_headers(),
            Expr::Cond(c, t, f) => {
                c.reads_request_headers() || t.reads_request_headers() || f.reads_request_headers()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Sym(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => f.write_str(s),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::Int(i) => write!(f, "{i}"),
            Tok::Sym(s) => f.write_str(s),
        }
    }
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'\'' || c == b'"' {
            let mut s = Vec::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(&q) if q == c => break,
                    Some(b'\\') => {
                        let e = *b.get(i + 1).ok_or("unterminated string")?;
                        s.push(match e {
                            b'n' => b'\n',
                            b't' => b'\t',
                            b'\\' | b'\'' | b'"' => e,
                            _ => return Err(format!("escape '\\{}'", char::from(e))),
                        });
                        i += 2;
                        continue;
                    }
                    Some(&x) => s.push(x),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(
                String::from_utf8(s).map_err(|_| "a string is not UTF-8")?,
            ));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Tok::Int(
                src[start..i]
                    .parse()
                    .map_err(|_| "an integer is too large")?,
            ));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_owned()));
            continue;
        }
        let sym = [
            "==", "!=", "<=", ">=", "&&", "||", "<", ">", "?", ":", "!", "+", ".", "[", "]", "(",
            ")",
        ]
        .into_iter()
        .find(|s| src[i..].starts_with(s))
        .ok_or_else(|| format!("unexpected '{}'", char::from(c)))?;
        i += sym.len();
        out.push(Tok::Sym(sym));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek_sym(&self, s: &str) -> bool {
        matches!(self.toks.get(self.at), Some(Tok::Sym(x)) if *x == s)
    }

    fn eat(&mut self, s: &str) -> bool {
        let yes = self.peek_sym(s);
        if yes {
            self.at += 1;
        }
        yes
    }

    fn expect(&mut self, s: &str) -> Result<(), String> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(match self.toks.get(self.at) {
                Some(t) => format!("expected '{s}', found '{t}'"),
                None => format!("expected '{s}' at the end"),
            })
        }
    }

    fn cond(&mut self) -> Result<Expr, String> {
        let c = self.binary(0)?;
        if !self.eat("?") {
            return Ok(c);
        }
        let t = self.cond()?;
        self.expect(":")?;
        let f = self.cond()?;
        Ok(Expr::Cond(Box::new(c), Box::new(t), Box::new(f)))
    }

    /// Precedence levels: `||`, `&&`, the relations (`==`, `!=`, `<`, `<=`, `>`,
    /// `>=`), `+`.
    fn binary(&mut self, level: usize) -> Result<Expr, String> {
        const LEVELS: [&[(&str, Op)]; 4] = [
            &[("||", Op::Or)],
            &[("&&", Op::And)],
            &[
                ("==", Op::Eq),
                ("!=", Op::Ne),
                ("<=", Op::Le),
                (">=", Op::Ge),
                ("<", Op::Lt),
                (">", Op::Gt),
            ],
            &[("+", Op::Add)],
        ];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut l = self.binary(level + 1)?;
        'more: loop {
            for (s, op) in LEVELS[level] {
                if self.eat(s) {
                    let r = self.binary(level + 1)?;
                    l = Expr::Bin(Box::new(l), *op, Box::new(r));
                    continue 'more;
                }
            }
            return Ok(l);
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.cond()?;
            self.expect(")")?;
            return Ok(e);
        }
        match self.toks.get(self.at).cloned() {
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(Expr::Lit(Val::Str(s)))
            }
            Some(Tok::Int(i)) => {
                self.at += 1;
                Ok(Expr::Lit(Val::Int(i)))
            }
            Some(Tok::Ident(id)) => {
                self.at += 1;
                match id.as_str() {
                    "true" => Ok(Expr::Lit(Val::Bool(true))),
                    "false" => Ok(Expr::Lit(Val::Bool(false))),
                    "null" => Ok(Expr::Lit(Val::Null)),
                    "has" | "string" => {
                        self.expect("(")?;
                        let inner = if id == "has" {
                            let Some(Tok::Ident(root)) = self.toks.get(self.at).cloned() else {
                                return Err("has() takes an attribute".into());
                            };
                            self.at += 1;
                            let segs = self.segs()?;
                            if segs.is_empty() {
                                return Err("has() takes a field selection".into());
                            }
                            Expr::Has(root, segs)
                        } else {
                            Expr::Str(Box::new(self.cond()?))
                        };
                        self.expect(")")?;
                        Ok(inner)
                    }
                    _ if self.peek_sym("(") => Err(format!("function '{id}' is not supported")),
                    _ => {
                        let segs = self.segs()?;
                        Ok(Expr::Path(id, segs))
                    }
                }
            }
            Some(t) => Err(format!("unexpected '{t}'")),
            None => Err("unexpected end".into()),
        }
    }

    fn segs(&mut self) -> Result<Vec<Seg>, String> {
        let mut segs = Vec::new();
        loop {
            if self.eat(".") {
                match self.toks.get(self.at).cloned() {
                    Some(Tok::Ident(f)) => {
                        self.at += 1;
                        if self.peek_sym("(") {
                            return Err(format!("method '{f}' is not supported"));
                        }
                        segs.push(Seg::Field(f));
                    }
                    _ => return Err("a field name must follow '.'".into()),
                }
            } else if self.eat("[") {
                match self.toks.get(self.at).cloned() {
                    Some(Tok::Str(k)) => segs.push(Seg::Key(k)),
                    Some(Tok::Int(i)) => segs.push(Seg::Index(i)),
                    _ => return Err("an index must be a string or integer literal".into()),
                }
                self.at += 1;
                self.expect("]")?;
            } else {
                return Ok(segs);
            }
        }
    }
}

/// A path segment's name, whether selected as a field or a key.
pub fn seg_name(s: &Seg) -> Option<&str> {
    match s {
        Seg::Field(f) | Seg::Key(f) => Some(f),
        Seg::Index(_) => None,
    }
}

/// Follows `path` into a JSON value (node metadata, cluster metadata).
pub fn json_path(mut v: &serde_json::Value, path: &[Seg]) -> Option<Val> {
    for s in path {
        v = match s {
            Seg::Index(i) => v.as_array()?.get(usize::try_from(*i).ok()?)?,
            s => v.as_object()?.get(seg_name(s)?)?,
        };
    }
    Some(match v {
        serde_json::Value::String(s) => Val::Str(s.clone()),
        serde_json::Value::Bool(b) => Val::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => Val::Str(n.to_string()),
        },
        serde_json::Value::Null => Val::Null,
        other => Val::Str(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct A;
    impl Attributes for A {
        fn get(&self, root: &str, path: &[Seg]) -> Option<Val> {
            let names: Vec<&str> = path.iter().filter_map(seg_name).collect();
            match (root, &names[..]) {
                ("request", ["headers", "x-user"]) => Some(Val::Str("alice".into())),
                ("request", ["protocol"]) => Some(Val::Str("HTTP/1.1".into())),
                ("destination", ["port"]) => Some(Val::Int(9080)),
                ("xds", ["node", "metadata", "LABELS", "version"]) => Some(Val::Str("v1".into())),
                _ => None,
            }
        }
    }

    fn run(src: &str) -> Option<String> {
        Expr::parse(src).unwrap().eval(&A).map(|v| v.to_string())
    }

    #[test]
    fn evaluates_what_telemetry_dimensions_use() {
        assert_eq!(run("'gateway'").as_deref(), Some("gateway"));
        assert_eq!(run("request.headers['x-user']").as_deref(), Some("alice"));
        assert_eq!(run("request.protocol").as_deref(), Some("HTTP/1.1"));
        assert_eq!(run("string(destination.port)").as_deref(), Some("9080"));
        assert_eq!(run("destination.port").as_deref(), Some("9080"));
        assert_eq!(
            run("xds.node.metadata.LABELS.version").as_deref(),
            Some("v1")
        );
        assert_eq!(
            run("has(request.headers['x-team']) ? request.headers['x-team'] : 'none'").as_deref(),
            Some("none")
        );
        assert_eq!(
            run("request.headers['x-user'] == 'alice' && !(destination.port != 9080)").as_deref(),
            Some("true")
        );
        assert_eq!(
            run("'u-' + request.headers['x-user']").as_deref(),
            Some("u-alice")
        );
        // A missing attribute is an evaluation error (Istio's `unknown`).
        assert_eq!(run("request.headers['x-missing']"), None);
        assert_eq!(run("cannot_evaluate"), None);
        assert!(
            Expr::parse("request.headers['a']")
                .unwrap()
                .reads_request_headers()
        );
        assert!(!Expr::parse("request.host").unwrap().reads_request_headers());
    }

    #[test]
    fn relations_on_integers_and_strings() {
        struct None_;
        impl Attributes for None_ {
            fn get(&self, _: &str, _: &[Seg]) -> Option<Val> {
                None
            }
        }
        for (src, want) in [
            ("1 < 2", true),
            ("2 <= 2", true),
            ("3 > 4", false),
            ("500 >= 400 && 'b' > 'a'", true),
            ("1 < 2 == true", true),
        ] {
            assert_eq!(
                Expr::parse(src).unwrap().eval(&None_),
                Some(Val::Bool(want)),
                "{src}"
            );
        }
        // Unlike kinds do not compare.
        assert_eq!(Expr::parse("1 < 'a'").unwrap().eval(&None_), None);
    }

    #[test]
    fn refuses_what_it_cannot_evaluate() {
        for (src, err) in [
            ("cannot _ parse", "unexpected '_'"),
            ("size(request.path)", "function 'size' is not supported"),
            (
                "request.path.startsWith('/a')",
                "method 'startsWith' is not supported",
            ),
            ("'open", "unterminated string"),
            ("a ? b", "expected ':' at the end"),
            ("1 % 2", "unexpected '%'"),
        ] {
            assert_eq!(Expr::parse(src).unwrap_err(), err, "{src}");
        }
    }
}
