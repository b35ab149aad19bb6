//! The parser of KeOps formula strings: `"Exp(-SqDist(x,y)) * b"` with aliases
//! `"x = Vi(0,3)"`, `"y = Vj(3)"` (index = position in the alias list), `"p = Pm(1)"`.
//!
//! Grammar (loosest first): `a | b` (Scalprod), `+ -`, `* /`, unary `-`, `**`
//! (right-associative, binds tighter than unary minus as in Python), calls
//! `Name(arg, ...)`, aliases, integer and float literals, parentheses. Integer
//! parameters of ops (`Pow(x, 2)`, `Extract(x, 0, 2)`) are written after the formula
//! operands. Errors name the byte position and what was expected.

use super::ops::{self, Cat};
use super::{Formula, Op, Unary};
use crate::error::{KeopsError, Result};
use std::collections::HashMap;

/// Named variables declared by alias strings such as `"x = Vi(0,3)"`.
#[derive(Clone, Debug, Default)]
pub struct Aliases {
    map: HashMap<String, Formula>,
    order: Vec<String>,
}

impl Aliases {
    /// Parses a list of alias declarations. `"x = Vi(3)"` takes the position of the
    /// declaration in the list as its argument index, as in pykeops.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Aliases> {
        let mut out = Aliases::default();
        for (pos, decl) in list.iter().enumerate() {
            let decl = decl.as_ref();
            let err = |at: usize, msg: String| KeopsError::Parse {
                input: decl.to_string(),
                pos: at,
                msg,
            };
            let eq = decl.find('=').ok_or_else(|| {
                err(
                    0,
                    "expected an alias of the form 'name = Vi(index, dim)'".into(),
                )
            })?;
            let name = decl[..eq].trim();
            if !is_ident(name) {
                return Err(err(0, format!("{name:?} is not a valid alias name")));
            }
            if lookup_builtin(name) {
                return Err(err(
                    0,
                    format!("alias {name:?} shadows an operation of the same name"),
                ));
            }
            let rhs_at = eq + 1;
            let mut p = Parser::new(decl, &EMPTY);
            p.pos = rhs_at;
            let f = p.alias_rhs(pos)?;
            if let Some(prev) = out.map.get(name) {
                if *prev != f {
                    return Err(KeopsError::Conflict {
                        index: f.as_var().map(|v| v.1).unwrap_or(pos),
                        first: format!("{name} = {prev}"),
                        second: format!("{name} = {f}"),
                    });
                }
            }
            out.order.push(name.to_string());
            out.map.insert(name.to_string(), f);
        }
        Ok(out)
    }

    /// The variable an alias stands for.
    pub fn get(&self, name: &str) -> Option<&Formula> {
        self.map.get(name)
    }

    /// The declared variables, in declaration order.
    pub fn variables(&self) -> Vec<Formula> {
        self.order.iter().map(|n| self.map[n].clone()).collect()
    }
}

static EMPTY: std::sync::LazyLock<Aliases> = std::sync::LazyLock::new(Aliases::default);

fn lookup_builtin(name: &str) -> bool {
    ops::lookup(name).is_some()
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses a formula string with aliases.
///
/// ```
/// use keops::formula::parse::parse;
/// let f = parse("Exp(-SqDist(x,y)) * b", &["x = Vi(0,3)", "y = Vj(1,3)", "b = Vj(2,1)"])?;
/// assert_eq!(f.dim, 1);
/// # Ok::<(), keops::KeopsError>(())
/// ```
pub fn parse<S: AsRef<str>>(formula: &str, aliases: &[S]) -> Result<Formula> {
    parse_with(formula, &Aliases::parse(aliases)?)
}

/// Parses a formula string with already parsed aliases.
pub fn parse_with(formula: &str, aliases: &Aliases) -> Result<Formula> {
    parse_written(formula, aliases).map(|(f, _)| f)
}

/// As [`parse_with`], with the variables written in the formula itself (`Var(1,3,1)`,
/// `Vj(2,1)`), which simplification may have removed from it: as in pykeops, they
/// still take their argument positions (`Grad(x + Var(1,3,1), x, e)` is a constant
/// that takes `y`).
pub fn parse_written(formula: &str, aliases: &Aliases) -> Result<(Formula, Vec<Formula>)> {
    let mut p = Parser::new(formula, aliases);
    let f = p.expr()?;
    p.skip_ws();
    if p.pos < p.src.len() {
        return Err(p.err("expected an operator (+ - * / ** |) or the end of the formula"));
    }
    Ok((f, p.written))
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    aliases: &'a Aliases,
    depth: usize,
    /// The variables written in the formula (not through an alias).
    written: Vec<Formula>,
}

/// Deepest nesting accepted: the parser (and the printer) recurse, and a stack
/// overflow would abort the process instead of returning an error.
const MAX_DEPTH: usize = 500;

/// One argument of a call: a formula, or the integer it folds to.
struct Arg {
    f: Formula,
    at: usize,
    /// An `Ind(k, l, ...)` list (then `f` is a placeholder).
    ind: Option<Vec<i64>>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, aliases: &'a Aliases) -> Self {
        Parser {
            src,
            pos: 0,
            aliases,
            depth: 0,
            written: Vec::new(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> KeopsError {
        self.err_at(self.pos, msg)
    }

    fn err_at(&self, pos: usize, msg: impl Into<String>) -> KeopsError {
        KeopsError::Parse {
            input: self.src.to_string(),
            pos,
            msg: msg.into(),
        }
    }

    /// Wraps an error from a constructor (dimension, arity) with the position.
    fn at(&self, pos: usize, r: Result<Formula>) -> Result<Formula> {
        r.map_err(|e| self.err_at(pos, e.to_string()))
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.src[self.pos..].chars().next() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.src[self.pos..].chars().next()
    }

    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &str) -> Result<()> {
        if self.eat(s) {
            Ok(())
        } else {
            let found = self
                .peek()
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "the end".into());
            Err(self.err(format!("expected {s:?}, found {found}")))
        }
    }

    fn expr(&mut self) -> Result<Formula> {
        self.depth += 1;
        let r = self.expr_inner();
        self.depth -= 1;
        r
    }

    fn expr_inner(&mut self) -> Result<Formula> {
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("formula nested more than {MAX_DEPTH} levels deep")));
        }
        let mut f = self.sum()?;
        loop {
            let at = self.pos;
            if self.eat("|") {
                let g = self.sum()?;
                f = self.at(at, f.scalprod(&g))?;
            } else {
                return Ok(f);
            }
        }
    }

    fn sum(&mut self) -> Result<Formula> {
        let mut f = self.product()?;
        loop {
            let at = self.pos;
            if self.eat("+") {
                let g = self.product()?;
                f = self.at(at, f.add(&g))?;
            } else if self.eat("-") {
                let g = self.product()?;
                f = self.at(at, f.sub(&g))?;
            } else {
                return Ok(f);
            }
        }
    }

    fn product(&mut self) -> Result<Formula> {
        let mut f = self.unary()?;
        loop {
            self.skip_ws();
            let at = self.pos;
            if self.src[self.pos..].starts_with("**") {
                return Ok(f);
            }
            if self.eat("*") {
                let g = self.unary()?;
                f = self.at(at, f.mul(&g))?;
            } else if self.eat("/") {
                let g = self.unary()?;
                f = self.at(at, f.div(&g))?;
            } else {
                return Ok(f);
            }
        }
    }

    fn unary(&mut self) -> Result<Formula> {
        self.depth += 1;
        let r = if self.depth > MAX_DEPTH {
            Err(self.err(format!("formula nested more than {MAX_DEPTH} levels deep")))
        } else if self.eat("-") {
            self.unary().map(|f| f.neg())
        } else if self.eat("+") {
            self.unary()
        } else {
            self.power()
        };
        self.depth -= 1;
        r
    }

    fn power(&mut self) -> Result<Formula> {
        let base = self.atom()?;
        let at = self.pos;
        if self.eat("**") {
            let e = self.unary()?;
            return self.at(at, power(&base, &e));
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Formula> {
        let start = {
            self.skip_ws();
            self.pos
        };
        match self.peek() {
            None => Err(self.err("expected a formula, found the end")),
            Some('(') => {
                self.pos += 1;
                let f = self.expr()?;
                self.expect(")")?;
                Ok(f)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.ident();
                if self.peek() == Some('(') {
                    self.pos += 1;
                    self.call(name, start)
                } else if let Some(f) = self.aliases.get(name) {
                    Ok(f.clone())
                } else {
                    Err(self.err_at(
                        start,
                        format!("unknown alias {name:?} (declare it, e.g. \"{name} = Vi(0,3)\")"),
                    ))
                }
            }
            Some(c) => Err(self.err(format!("expected a formula, found {c:?}"))),
        }
    }

    fn ident(&mut self) -> &'a str {
        let s = &self.src[self.pos..];
        let n = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        self.pos += n;
        &s[..n]
    }

    fn number(&mut self) -> Result<Formula> {
        let start = self.pos;
        let s = &self.src[start..];
        let bytes = s.as_bytes();
        let mut n = 0;
        let mut float = false;
        while n < bytes.len() && (bytes[n].is_ascii_digit() || bytes[n] == b'.') {
            float |= bytes[n] == b'.';
            n += 1;
        }
        if n < bytes.len() && (bytes[n] == b'e' || bytes[n] == b'E') {
            let mut m = n + 1;
            if m < bytes.len() && (bytes[m] == b'+' || bytes[m] == b'-') {
                m += 1;
            }
            if m < bytes.len() && bytes[m].is_ascii_digit() {
                while m < bytes.len() && bytes[m].is_ascii_digit() {
                    m += 1;
                }
                n = m;
                float = true;
            }
        }
        let text = &s[..n];
        self.pos += n;
        if float {
            text.parse::<f64>()
                .map(Formula::float)
                .map_err(|_| self.err_at(start, format!("invalid number {text:?}")))
        } else {
            text.parse::<i64>()
                .map(Formula::int)
                .map_err(|_| self.err_at(start, format!("integer {text:?} is out of range")))
        }
    }

    /// A call's arguments, after its `(`.
    fn args(&mut self) -> Result<Vec<Arg>> {
        self.items(")", false)
    }

    /// Comma-separated arguments up to `close`. An argument is a formula or an
    /// integer list: `Ind(2, 3)`, or `[2, 3]` as pykeops' LazyTensor writes them
    /// (keopscore evaluates formula strings as Python, where both are sequences).
    fn items(&mut self, close: &str, in_list: bool) -> Result<Vec<Arg>> {
        let mut args = Vec::new();
        if self.eat(close) {
            return Ok(args);
        }
        loop {
            self.skip_ws();
            let at = self.pos;
            let list_close = if self.eat("Ind(") {
                Some(")")
            } else if self.eat("[") {
                Some("]")
            } else if !in_list && self.tuple_ahead() && self.eat("(") {
                Some(")")
            } else {
                None
            };
            if let Some(list_close) = list_close {
                if in_list {
                    return Err(self.err_at(at, "an integer list cannot hold lists"));
                }
                let items = self.items(list_close, true)?;
                let list = items
                    .iter()
                    .map(|a| self.int_arg("Ind", a))
                    .collect::<Result<Vec<i64>>>()?;
                args.push(Arg {
                    f: Formula::int(0),
                    at,
                    ind: Some(list),
                });
            } else {
                let f = self.expr()?;
                args.push(Arg { f, at, ind: None });
            }
            if self.eat(close) {
                return Ok(args);
            }
            if !self.eat(",") {
                let found = self
                    .peek()
                    .map(|c| format!("{c:?}"))
                    .unwrap_or_else(|| "the end".into());
                return Err(self.err(format!("expected \",\" or \"{close}\", found {found}")));
            }
            // A trailing comma, as Python writes a tuple of one: `(2,)`.
            if in_list && self.eat(close) {
                return Ok(args);
            }
        }
    }

    /// Whether a Python tuple of integers starts here: `()`, `(2,)`, `(2, 3)`, which
    /// keopscore reads as lists (`(2)` is an integer, as in Python). Reads no further
    /// than the tuple would go.
    fn tuple_ahead(&self) -> bool {
        let Some(rest) = self.src[self.pos..].strip_prefix('(') else {
            return false;
        };
        // `seen`: anything but blanks (a tuple without a comma is empty).
        let (mut comma, mut seen) = (false, false);
        for c in rest.chars() {
            match c {
                ')' => return comma || !seen,
                ',' => comma = true,
                '0'..='9' | '-' => seen = true,
                ' ' | '\t' | '\n' | '\r' => {}
                _ => return false,
            }
        }
        false
    }

    fn int_arg(&self, name: &str, a: &Arg) -> Result<i64> {
        if a.ind.is_some() {
            return Err(self.err_at(
                a.at,
                format!("{name} expects an integer here, found an Ind(...) list"),
            ));
        }
        match a.f.op {
            Op::IntCst(n) => Ok(n),
            _ => Err(self.err_at(
                a.at,
                format!("{name} expects an integer here, found {}", a.f),
            )),
        }
    }

    fn call(&mut self, name: &str, start: usize) -> Result<Formula> {
        let spec = ops::lookup(name)
            .ok_or_else(|| self.err_at(start, format!("unknown operation {name:?}")))?;
        let args = self.args()?;
        if let Some(a) = args[..spec.formulas.min(args.len())]
            .iter()
            .find(|a| a.ind.is_some())
        {
            return Err(self.err_at(
                a.at,
                format!("{name} expects a formula here, found an Ind(...) list"),
            ));
        }
        if spec.lists {
            return self.call_with_lists(name, spec, &args, start);
        }
        let want = spec.formulas + spec.ints;
        if args.len() != want {
            return Err(self.err_at(
                start,
                format!(
                    "{name} expects {want} argument(s) ({} formula(s) then {} integer(s)), got {}",
                    spec.formulas,
                    spec.ints,
                    args.len()
                ),
            ));
        }
        let fs: Vec<Formula> = args[..spec.formulas].iter().map(|a| a.f.clone()).collect();
        let ns = args[spec.formulas..]
            .iter()
            .map(|a| self.int_arg(name, a))
            .collect::<Result<Vec<i64>>>()?;
        let f = self.at(start, (spec.build)(&fs, &ns))?;
        if spec.formulas == 0 && f.as_var().is_some() {
            self.written.push(f.clone());
        }
        Ok(f)
    }

    /// An op whose parameters are `Ind(...)` lists (the last one optional).
    fn call_with_lists(
        &mut self,
        name: &str,
        spec: &ops::OpSpec,
        args: &[Arg],
        start: usize,
    ) -> Result<Formula> {
        let n_lists = args.len().saturating_sub(spec.formulas);
        if args.len() < spec.formulas || n_lists + 1 < spec.ints || n_lists > spec.ints {
            return Err(self.err_at(
                start,
                format!(
                    "{name} expects {} formula(s) then {} or {} Ind(...) lists, got {} argument(s)",
                    spec.formulas,
                    spec.ints - 1,
                    spec.ints,
                    args.len()
                ),
            ));
        }
        let mut flat = Vec::new();
        for a in &args[spec.formulas..] {
            let list = a.ind.as_ref().ok_or_else(|| {
                self.err_at(
                    a.at,
                    format!("{name} expects an Ind(...) list here, found {}", a.f),
                )
            })?;
            flat.push(list.len() as i64);
            flat.extend(list);
        }
        let fs: Vec<Formula> = args[..spec.formulas].iter().map(|a| a.f.clone()).collect();
        self.at(start, (spec.build)(&fs, &flat))
    }

    /// The right-hand side of an alias: `Vi(k,d)`, `Vi(d)` (index = `pos`), `Var(k,d,c)`.
    fn alias_rhs(&mut self, pos: usize) -> Result<Formula> {
        self.skip_ws();
        let start = self.pos;
        let name = self.ident();
        let cat = match name {
            "Vi" => Some(Cat::Vi),
            "Vj" => Some(Cat::Vj),
            "Pm" => Some(Cat::Pm),
            "Var" => None,
            _ => {
                return Err(self.err_at(start, "expected Vi(...), Vj(...), Pm(...) or Var(...)"));
            }
        };
        self.expect("(")?;
        let args = self.args()?;
        let ints = args
            .iter()
            .map(|a| self.int_arg(name, a))
            .collect::<Result<Vec<i64>>>()?;
        self.skip_ws();
        if self.pos < self.src.len() {
            return Err(self.err("unexpected text after the alias declaration"));
        }
        let f = match (cat, ints.as_slice()) {
            (Some(c), [d]) => {
                let dim = usize::try_from(*d)
                    .map_err(|_| self.err_at(start, "dimension must be positive"))?;
                Formula::var(c, pos, dim)
            }
            _ => {
                let spec =
                    ops::lookup(name).ok_or_else(|| self.err_at(start, "unknown variable kind"))?;
                if ints.len() != spec.ints {
                    return Err(self.err_at(
                        start,
                        format!(
                            "{name} expects {} integer(s), got {}",
                            spec.ints,
                            ints.len()
                        ),
                    ));
                }
                (spec.build)(&[], &ints)
            }
        };
        self.at(start, f)
    }
}

/// `a ** b` as pykeops reads it: `**2` is `Square`, an integer is `Pow`, `0.5` is
/// `Sqrt`, `-0.5` is `Rsqrt`, anything else is `Powf`.
fn power(a: &Formula, b: &Formula) -> Result<Formula> {
    match b.op {
        Op::IntCst(2) => Ok(a.unary(Unary::Square)),
        Op::IntCst(n) => i32::try_from(n)
            .map(|m| a.pow(m))
            .map_err(|_| KeopsError::Arity {
                op: "Pow".into(),
                msg: format!("exponent {n} is out of range"),
            }),
        Op::RatCst(1, 2) => Ok(a.unary(Unary::Sqrt)),
        Op::RatCst(-1, 2) => Ok(a.unary(Unary::Rsqrt)),
        Op::FloatCst(bits) if f64::from_bits(bits) == 0.5 => Ok(a.unary(Unary::Sqrt)),
        Op::FloatCst(bits) if f64::from_bits(bits) == -0.5 => Ok(a.unary(Unary::Rsqrt)),
        _ => a.powf(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let al = ["x = Vi(0,1)"];
        let deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(matches!(parse(&deep, &al), Err(KeopsError::Parse { .. })));
        let minus = format!("{}x", "-".repeat(100_000));
        assert!(matches!(parse(&minus, &al), Err(KeopsError::Parse { .. })));
        let ok = format!("{}x{}", "Exp(".repeat(100), ")".repeat(100));
        assert!(parse(&ok, &al).is_ok());
    }

    #[test]
    fn integer_lists_are_written_ind_or_in_brackets() {
        // pykeops' LazyTensor writes `[2, 3]`; keopscore's docs `Ind(2, 3)`.
        let al = ["x = Vi(0,6)", "y = Vj(1,4)"];
        let brackets = parse("Kron(x, y, [2, 3], [2,2])", &al).unwrap();
        assert_eq!(
            brackets,
            parse("Kron(x, y, Ind(2,3), Ind(2, 2))", &al).unwrap()
        );
        // keopscore evaluates formulas as Python, where tuples are sequences too.
        assert_eq!(brackets, parse("Kron(x, y, (2, 3), (2,2,))", &al).unwrap());
        let tuples = "TensorDot(x, y, (2, 3), (2, 2), (), (), (0, 2, 1, 3))";
        let td = "TensorDot(x, y, [2, 3], [2, 2], [], [], [0, 2, 1, 3])";
        assert_eq!(parse(tuples, &al).unwrap(), parse(td, &al).unwrap());
        let al1 = ["x = Vi(0,2)", "y = Vj(1,2)"];
        let one = "TensorDot(x, y, (2,), (2,), (0,), (0,))";
        assert_eq!(
            parse(one, &al1).unwrap(),
            parse("TensorDot(x, y, [2], [2], [0], [0])", &al1).unwrap()
        );
        // A parenthesised formula is still one, even of integers.
        assert!(parse("Kron(x, (y), [2, 3], [2,2])", &al).is_ok());
        assert_eq!(
            parse("Concat(x, (2))", &al1).unwrap(),
            parse("Concat(x, 2)", &al1).unwrap()
        );
        let ind = "TensorDot(x, y, Ind(2,3), Ind(2,2), Ind(), Ind(), Ind(0,2,1,3))";
        assert_eq!(parse(td, &al).unwrap(), parse(ind, &al).unwrap());
        for (bad, want) in [
            ("Kron(x, y, [2, [3]], [2,2])", "cannot hold lists"),
            ("Kron(x, y, [2, 3), [2,2])", "expected \",\" or \"]\""),
            ("Kron(x, y, [2, x], [2,2])", "expects an integer"),
        ] {
            let e = parse(bad, &al).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let deep = format!("Kron(x, y, {}", "[".repeat(100_000));
        assert!(parse(&deep, &al).is_err());
    }
}
