//! Tokenizer and precedence-climbing evaluator for `calc` expressions.
//!
//! Evaluation happens during parsing (no AST): inputs are short and this keeps the
//! component small. Every error carries the 1-based character column.

use std::fmt;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// A character that starts no token.
    UnexpectedChar { ch: char, column: usize },
    /// A token where something else was required.
    Unexpected {
        found: String,
        column: usize,
        expected: &'static str,
    },
    /// The expression ended early.
    UnexpectedEnd { expected: &'static str },
    /// A name that is neither a function nor a constant.
    UnknownName { name: String, column: usize },
    /// A function called with the wrong number of arguments.
    Arity {
        name: String,
        column: usize,
        expected: &'static str,
        got: usize,
    },
    /// `x / 0` or `x % 0`.
    DivisionByZero { column: usize },
    /// The result is not a finite number (overflow, `sqrt(-1)`, `ln(0)`, ...).
    NotFinite { column: usize, what: String },
    /// Parentheses nested deeper than [`MAX_DEPTH`].
    TooDeep { column: usize },
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnexpectedChar { ch, column } => {
                write!(f, "unexpected character `{ch}` at column {column}")
            }
            Self::Unexpected {
                found,
                column,
                expected,
            } => {
                write!(
                    f,
                    "unexpected `{found}` at column {column}; expected {expected}"
                )
            }
            Self::UnexpectedEnd { expected } => {
                write!(f, "the expression ends too early; expected {expected}")
            }
            Self::UnknownName { name, column } => write!(
                f,
                "unknown name `{name}` at column {column}; known: pi, e, {}",
                FUNCTIONS.join(", ")
            ),
            Self::Arity {
                name,
                column,
                expected,
                got,
            } => write!(
                f,
                "`{name}` at column {column} takes {expected} argument(s), got {got}"
            ),
            Self::DivisionByZero { column } => write!(f, "division by zero at column {column}"),
            Self::NotFinite { column, what } => {
                write!(f, "{what} at column {column} is not a finite number")
            }
            Self::TooDeep { column } => write!(
                f,
                "expression nests deeper than {MAX_DEPTH} levels at column {column}"
            ),
        }
    }
}

impl std::error::Error for EvalError {}

/// Deepest nesting of parentheses/unary operators accepted; bounds the recursion.
pub const MAX_DEPTH: usize = 256;

const FUNCTIONS: [&str; 13] = [
    "sqrt", "abs", "floor", "ceil", "round", "ln", "log10", "exp", "sin", "cos", "tan", "min",
    "max",
];

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Name(String),
    Op(char),
    LParen,
    RParen,
    Comma,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Number(n) => n.to_string(),
            Token::Name(n) => n.clone(),
            Token::Op(c) => c.to_string(),
            Token::LParen => "(".into(),
            Token::RParen => ")".into(),
            Token::Comma => ",".into(),
        }
    }
}

/// (token, 1-based column)
fn tokenize(src: &str) -> Result<Vec<(Token, usize)>, EvalError> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || c == '.' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            // Optional exponent: 1e3, 2.5E-4.
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            let text: String = chars[start..i].iter().collect();
            let value = text.parse::<f64>().map_err(|_| EvalError::Unexpected {
                found: text.clone(),
                column,
                expected: "a number such as 12, 0.5 or 1e3",
            })?;
            tokens.push((Token::Number(value), column));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push((Token::Name(chars[start..i].iter().collect()), column));
        } else {
            let token = match c {
                '+' | '-' | '*' | '/' | '%' | '^' => Token::Op(c),
                '(' => Token::LParen,
                ')' => Token::RParen,
                ',' => Token::Comma,
                _ => return Err(EvalError::UnexpectedChar { ch: c, column }),
            };
            tokens.push((token, column));
            i += 1;
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    depth: usize,
}

const OPERAND: &str = "a number, `(`, `-` or a function";

impl Parser {
    fn peek(&self) -> Option<&(Token, usize)> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self, expected: &'static str) -> Result<(Token, usize), EvalError> {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or(EvalError::UnexpectedEnd { expected })?;
        self.pos += 1;
        Ok(token)
    }

    /// Binary operators with precedence >= `min_prec`. `^` binds tightest and to the right.
    fn expr(&mut self, min_prec: u8) -> Result<f64, EvalError> {
        let mut lhs = self.unary()?;
        while let Some((Token::Op(op), column)) = self.peek().cloned() {
            let (prec, right_assoc) = match op {
                '+' | '-' => (1, false),
                '*' | '/' | '%' => (2, false),
                '^' => (4, true),
                _ => unreachable_op(),
            };
            if prec < min_prec {
                break;
            }
            self.pos += 1;
            let rhs = self.expr(if right_assoc { prec } else { prec + 1 })?;
            lhs = apply(op, lhs, rhs, column)?;
        }
        Ok(lhs)
    }

    /// Unary minus/plus sit between `*` and `^`: `-2^2` is `-4`, `2*-3` is `-6`.
    fn unary(&mut self) -> Result<f64, EvalError> {
        if let Some((Token::Op(op @ ('-' | '+')), column)) = self.peek().cloned() {
            self.pos += 1;
            self.enter(column)?;
            let value = self.expr(3)?;
            self.depth -= 1;
            return Ok(if op == '-' { -value } else { value });
        }
        self.primary()
    }

    fn enter(&mut self, column: usize) -> Result<(), EvalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(EvalError::TooDeep { column });
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<f64, EvalError> {
        let (token, column) = self.next(OPERAND)?;
        match token {
            Token::Number(n) => Ok(n),
            Token::LParen => {
                self.enter(column)?;
                let value = self.expr(1)?;
                self.depth -= 1;
                self.expect_rparen()?;
                Ok(value)
            }
            Token::Name(name) => {
                if let Some((Token::LParen, _)) = self.peek() {
                    self.pos += 1;
                    self.enter(column)?;
                    let args = self.arguments()?;
                    self.depth -= 1;
                    call(&name, column, &args)
                } else {
                    match name.as_str() {
                        "pi" => Ok(std::f64::consts::PI),
                        "e" => Ok(std::f64::consts::E),
                        _ => Err(EvalError::UnknownName { name, column }),
                    }
                }
            }
            other => Err(EvalError::Unexpected {
                found: other.text(),
                column,
                expected: OPERAND,
            }),
        }
    }

    /// After `name(`: comma-separated expressions up to `)`.
    fn arguments(&mut self) -> Result<Vec<f64>, EvalError> {
        let mut args = Vec::new();
        if let Some((Token::RParen, _)) = self.peek() {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            args.push(self.expr(1)?);
            match self.next("`,` or `)`")? {
                (Token::Comma, _) => continue,
                (Token::RParen, _) => return Ok(args),
                (other, column) => {
                    return Err(EvalError::Unexpected {
                        found: other.text(),
                        column,
                        expected: "`,` or `)`",
                    });
                }
            }
        }
    }

    fn expect_rparen(&mut self) -> Result<(), EvalError> {
        match self.next("`)`")? {
            (Token::RParen, _) => Ok(()),
            (other, column) => Err(EvalError::Unexpected {
                found: other.text(),
                column,
                expected: "`)`",
            }),
        }
    }
}

/// The tokenizer only produces the six operators matched above.
fn unreachable_op() -> (u8, bool) {
    (0, false)
}

fn apply(op: char, a: f64, b: f64, column: usize) -> Result<f64, EvalError> {
    let value = match op {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        '/' | '%' if b == 0.0 => return Err(EvalError::DivisionByZero { column }),
        '/' => a / b,
        '%' => a % b,
        '^' => a.powf(b),
        _ => f64::NAN,
    };
    finite(value, column, || format!("`{a} {op} {b}`"))
}

fn call(name: &str, column: usize, args: &[f64]) -> Result<f64, EvalError> {
    let arity = |expected: &'static str| EvalError::Arity {
        name: name.to_owned(),
        column,
        expected,
        got: args.len(),
    };
    let one = |f: fn(f64) -> f64| match args {
        [x] => Ok(f(*x)),
        _ => Err(arity("1")),
    };
    let value = match name {
        "sqrt" => one(f64::sqrt)?,
        "abs" => one(f64::abs)?,
        "floor" => one(f64::floor)?,
        "ceil" => one(f64::ceil)?,
        "round" => one(f64::round)?,
        "ln" => one(f64::ln)?,
        "log10" => one(f64::log10)?,
        "exp" => one(f64::exp)?,
        "sin" => one(f64::sin)?,
        "cos" => one(f64::cos)?,
        "tan" => one(f64::tan)?,
        "min" | "max" => {
            if args.is_empty() {
                return Err(arity("at least 1"));
            }
            let pick = if name == "min" { f64::min } else { f64::max };
            args.iter().copied().fold(args[0], pick)
        }
        _ => {
            return Err(EvalError::UnknownName {
                name: name.to_owned(),
                column,
            });
        }
    };
    finite(value, column, || format!("`{name}(…)`"))
}

fn finite(value: f64, column: usize, what: impl FnOnce() -> String) -> Result<f64, EvalError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(EvalError::NotFinite {
            column,
            what: what(),
        })
    }
}

/// Evaluates `src`; see the crate docs for the grammar.
pub fn evaluate(src: &str) -> Result<f64, EvalError> {
    let tokens = tokenize(src)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let value = parser.expr(1)?;
    if let Some((token, column)) = parser.peek() {
        return Err(EvalError::Unexpected {
            found: token.text(),
            column: *column,
            expected: "an operator or the end of the expression",
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> f64 {
        evaluate(src).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn err(src: &str) -> String {
        evaluate(src).unwrap_err().to_string()
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(ok("1 + 2 * 3"), 7.0);
        assert_eq!(ok("(1 + 2) * 3"), 9.0);
        assert_eq!(ok("10 - 4 - 3"), 3.0);
        assert_eq!(ok("100 / 10 / 5"), 2.0);
        assert_eq!(ok("2 ^ 3 ^ 2"), 512.0);
        assert_eq!(ok("7 % 4 * 2"), 6.0);
    }

    #[test]
    fn unary_minus() {
        assert_eq!(ok("-2 ^ 2"), -4.0);
        assert_eq!(ok("(-2) ^ 2"), 4.0);
        assert_eq!(ok("2 * -3"), -6.0);
        assert_eq!(ok("--3"), 3.0);
        assert_eq!(ok("2 ^ -1"), 0.5);
        assert_eq!(ok("+4"), 4.0);
    }

    #[test]
    fn numbers() {
        assert_eq!(ok("0.5 + .25"), 0.75);
        assert_eq!(ok("1e3 + 2.5E-1"), 1000.25);
    }

    #[test]
    fn functions_and_constants() {
        assert_eq!(ok("sqrt(16)"), 4.0);
        assert_eq!(ok("min(3, 1, 2)"), 1.0);
        assert_eq!(ok("max(3, 1 + 9, 2)"), 10.0);
        assert_eq!(ok("abs(-2) + floor(2.7) + ceil(0.2) + round(2.5)"), 8.0);
        assert!((ok("sin(pi / 2)") - 1.0).abs() < 1e-12);
        assert!((ok("ln(e)") - 1.0).abs() < 1e-12);
        assert_eq!(ok("log10(1000)"), 3.0);
    }

    #[test]
    fn errors_carry_columns() {
        assert_eq!(
            err("1 + * 2"),
            "unexpected `*` at column 5; expected a number, `(`, `-` or a function"
        );
        assert_eq!(err("2 $ 3"), "unexpected character `$` at column 3");
        assert_eq!(err("(1 + 2"), "the expression ends too early; expected `)`");
        assert_eq!(
            err("1 + 2)"),
            "unexpected `)` at column 6; expected an operator or the end of the expression"
        );
        assert_eq!(
            err("1 +"),
            "the expression ends too early; expected a number, `(`, `-` or a function"
        );
        assert_eq!(err("4 / (2 - 2)"), "division by zero at column 3");
        assert_eq!(err("5 % 0"), "division by zero at column 3");
        assert_eq!(
            err("1.2.3"),
            "unexpected `1.2.3` at column 1; expected a number such as 12, 0.5 or 1e3"
        );
        assert_eq!(
            err("2 3"),
            "unexpected `3` at column 3; expected an operator or the end of the expression"
        );
    }

    #[test]
    fn function_errors() {
        assert!(err("foo(1)").starts_with("unknown name `foo` at column 1; known: pi, e, sqrt"));
        assert!(err("x + 1").starts_with("unknown name `x` at column 1"));
        assert_eq!(
            err("sqrt(1, 2)"),
            "`sqrt` at column 1 takes 1 argument(s), got 2"
        );
        assert_eq!(
            err("1 + max()"),
            "`max` at column 5 takes at least 1 argument(s), got 0"
        );
        assert_eq!(
            err("sqrt(-1)"),
            "`sqrt(…)` at column 1 is not a finite number"
        );
        assert_eq!(
            err("min(1 2)"),
            "unexpected `2` at column 7; expected `,` or `)`"
        );
    }

    #[test]
    fn overflow_is_reported_not_returned() {
        assert_eq!(
            err("10 ^ 400"),
            "`10 ^ 400` at column 4 is not a finite number"
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(
            err(&deep),
            format!(
                "expression nests deeper than {MAX_DEPTH} levels at column {}",
                MAX_DEPTH + 1
            )
        );
        let minus = "-".repeat(100_000) + "1";
        assert!(err(&minus).starts_with("expression nests deeper than"));
        let ok_depth = format!("{}1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(ok(&ok_depth), 1.0);
    }
}
