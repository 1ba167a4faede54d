//! Numeric bounds of constrained numbers (`minimum`, `maximum`, `exclusiveMinimum`,
//! `exclusiveMaximum`, `multipleOf`), decided on the digits typed so far.
//!
//! Every value is handled exactly as a fixed-point integer: units of 10^-15 in an `i128`. A
//! generated number has at most 15 integer and 15 fraction digits, and a bound must be
//! representable with at most 15 fraction digits, so nothing is ever rounded. For a prefix of
//! a number, [`NumBounds::close_bytes`] finds the fewest bytes that complete it into a value
//! within the bounds, searching the completions of each length as intervals on a grid; a prefix
//! with no such completion is refused, so the decoder can never type itself into a number
//! that cannot end.

use serde_json::Value;

/// One in fixed point.
pub const ONE: i128 = 1_000_000_000_000_000;
/// The most digits of either part of a generated number.
pub const MAX_DIGITS: u32 = 15;

fn pow10(n: u32) -> i128 {
    10i128.pow(n)
}

/// Bounds on a number, in fixed point (inclusive; exclusive bounds are moved by one unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NumBounds {
    pub lo: Option<i128>,
    pub hi: Option<i128>,
    /// `multipleOf`, in fixed point.
    pub step: Option<i128>,
}

/// Where a number's text stands, with the value typed so far (magnitudes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumPrefix {
    /// Nothing typed.
    Start,
    /// `-` typed.
    Minus,
    /// `0` (or `-0`) typed.
    Zero { neg: bool },
    /// Integer digits: `int` with `digits` digits.
    Int { neg: bool, int: u64, digits: u32 },
    /// `int.` typed.
    Dot { neg: bool, int: u64 },
    /// `int.frac` with `digits` fraction digits.
    Frac {
        neg: bool,
        int: u64,
        frac: u64,
        digits: u32,
    },
}

/// Reads a bound from the schema as fixed point, exactly (from the number's shortest text).
fn fixed(v: &Value, key: &str) -> Result<Option<i128>, String> {
    let Some(v) = v.get(key) else {
        return Ok(None);
    };
    let Some(n) = v.as_f64().filter(|f| f.is_finite()) else {
        return Err(format!("'{key}' must be a number, got {v}"));
    };
    // Beyond 15 integer digits nothing can be generated anyway; clamp there.
    let cap = (pow10(MAX_DIGITS) - 1) as f64 + 1.0;
    if n.abs() >= cap {
        return Ok(Some(if n > 0.0 { cap as i128 } else { -cap as i128 } * ONE));
    }
    let text = if v.is_i64() || v.is_u64() {
        v.to_string()
    } else {
        format!("{n}")
    };
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > MAX_DIGITS as usize || int.contains(['e', 'E']) || frac.contains(['e', 'E']) {
        return Err(format!(
            "'{key}' = {n} has more than {MAX_DIGITS} decimal places; constrained decoding compares numbers exactly to 15 places"
        ));
    }
    let i: i128 = int
        .parse()
        .map_err(|_| format!("'{key}' = {n} is not a plain decimal"))?;
    let f: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i128>()
            .map_err(|_| format!("'{key}' = {n} is not a plain decimal"))?
            * pow10(MAX_DIGITS - frac.len() as u32)
    };
    let m = i * ONE + f;
    Ok(Some(if neg { -m } else { m }))
}

impl NumBounds {
    /// The bounds a schema object declares; `None` when it declares none.
    pub fn of(v: &Value) -> Result<Option<NumBounds>, String> {
        let mut b = NumBounds {
            lo: fixed(v, "minimum")?,
            hi: fixed(v, "maximum")?,
            step: None,
        };
        // Draft 2020-12 gives exclusive bounds as numbers, draft 4 as booleans on the others.
        match v.get("exclusiveMinimum") {
            Some(Value::Bool(true)) => b.lo = b.lo.map(|l| l + 1),
            Some(Value::Bool(false)) | None => {}
            Some(_) => {
                let x = fixed(v, "exclusiveMinimum")?.expect("present") + 1;
                b.lo = Some(b.lo.map_or(x, |l| l.max(x)));
            }
        }
        match v.get("exclusiveMaximum") {
            Some(Value::Bool(true)) => b.hi = b.hi.map(|h| h - 1),
            Some(Value::Bool(false)) | None => {}
            Some(_) => {
                let x = fixed(v, "exclusiveMaximum")?.expect("present") - 1;
                b.hi = Some(b.hi.map_or(x, |h| h.min(x)));
            }
        }
        if let Some(m) = fixed(v, "multipleOf")? {
            if m <= 0 {
                return Err("'multipleOf' must be greater than 0".into());
            }
            b.step = Some(m);
        }
        Ok((b != NumBounds::default()).then_some(b))
    }

    /// Whether `v` (fixed point) is within the bounds.
    pub fn admits(&self, v: i128) -> bool {
        self.lo.is_none_or(|l| v >= l)
            && self.hi.is_none_or(|h| v <= h)
            && self.step.is_none_or(|m| v % m == 0)
    }

    /// Whether a value of the grid `a, a + step, ..., b` is within the bounds (`a` is a
    /// multiple of `step`).
    fn grid_hits(&self, a: i128, b: i128, step: i128) -> bool {
        let lo = self.lo.map_or(a, |l| l.max(a));
        let hi = self.hi.map_or(b, |h| h.min(b));
        if lo > hi {
            return false;
        }
        // A value on the grid and a multiple of `multipleOf`: a multiple of both (the grid
        // starts at a multiple of its step). An lcm past i128 means no such value fits.
        let s = match self.step {
            Some(m) => match lcm(step, m) {
                Some(l) => l,
                None => return false,
            },
            None => step,
        };
        let first = lo.div_euclid(s) * s + if lo.rem_euclid(s) == 0 { 0 } else { s };
        first <= hi
    }

    /// The fewest bytes that turn `p` into a complete number within the bounds (0 when it is
    /// one already), or `None` when no completion is.
    pub fn close_bytes(&self, p: NumPrefix, integer: bool) -> Option<u32> {
        let frac_ok = !integer;
        (0..=2 * MAX_DIGITS + 3).find(|&e| {
            completions(p, e, frac_ok)
                .into_iter()
                .any(|(a, b, step)| self.grid_hits(a, b, step))
        })
    }
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: i128, b: i128) -> Option<i128> {
    (a / gcd(a, b)).checked_mul(b)
}

/// Signed intervals `(a, b, step)` (a grid from `a` to `b`) of the values reachable from `p`
/// by exactly `e` more bytes.
fn completions(p: NumPrefix, e: u32, frac_ok: bool) -> Vec<(i128, i128, i128)> {
    let mut out = Vec::new();
    let signed = |neg: bool, (a, b, s): (i128, i128, i128)| {
        if neg { (-b, -a, s) } else { (a, b, s) }
    };
    // `f` fraction digits: values on a grid of 10^-f.
    let fgrid = |f: u32| pow10(MAX_DIGITS - f);
    match p {
        NumPrefix::Start => {
            out.extend(magnitudes_fresh(e, frac_ok));
            if e >= 1 {
                out.extend(
                    magnitudes_fresh(e - 1, frac_ok)
                        .into_iter()
                        .map(|m| signed(true, m)),
                );
            }
        }
        NumPrefix::Minus => out.extend(
            magnitudes_fresh(e, frac_ok)
                .into_iter()
                .map(|m| signed(true, m)),
        ),
        NumPrefix::Zero { neg } => {
            if e == 0 {
                out.push((0, 0, ONE));
            } else if frac_ok && e >= 2 && e - 1 <= MAX_DIGITS {
                let f = e - 1;
                out.push(signed(neg, (0, ONE - fgrid(f), fgrid(f))));
            }
        }
        NumPrefix::Int { neg, int, digits } => {
            let i = int as i128;
            if e == 0 {
                out.push(signed(neg, (i * ONE, i * ONE, ONE)));
            }
            if e >= 1 && digits + e <= MAX_DIGITS {
                let lo = i * pow10(e);
                out.push(signed(neg, (lo * ONE, (lo + pow10(e) - 1) * ONE, ONE)));
            }
            if frac_ok {
                // j more integer digits, the dot, f >= 1 fraction digits.
                for j in 0..e.saturating_sub(1) {
                    let f = e - 1 - j;
                    if f == 0 || f > MAX_DIGITS || digits + j > MAX_DIGITS {
                        continue;
                    }
                    let lo = i * pow10(j);
                    let hi = (lo + pow10(j)) * ONE - fgrid(f);
                    out.push(signed(neg, (lo * ONE, hi, fgrid(f))));
                }
            }
        }
        NumPrefix::Dot { neg, int } => {
            if (1..=MAX_DIGITS).contains(&e) {
                let base = int as i128 * ONE;
                out.push(signed(neg, (base, base + ONE - fgrid(e), fgrid(e))));
            }
        }
        NumPrefix::Frac {
            neg,
            int,
            frac,
            digits,
        } => {
            let base = int as i128 * ONE + frac as i128 * fgrid(digits);
            if e == 0 {
                out.push(signed(neg, (base, base, fgrid(digits))));
            } else if digits + e <= MAX_DIGITS {
                let step = fgrid(digits + e);
                out.push(signed(neg, (base, base + fgrid(digits) - step, step)));
            }
        }
    }
    out
}

/// Non-negative values a fresh number (no digit yet) reaches with exactly `e` bytes.
fn magnitudes_fresh(e: u32, frac_ok: bool) -> Vec<(i128, i128, i128)> {
    let mut out = Vec::new();
    if e == 0 {
        return out;
    }
    // Only digits: one digit is 0-9, more start with 1-9.
    if e == 1 {
        out.push((0, 9 * ONE, ONE));
    } else if e <= MAX_DIGITS {
        out.push((pow10(e - 1) * ONE, (pow10(e) - 1) * ONE, ONE));
    }
    if frac_ok {
        // j >= 1 integer digits, the dot, f >= 1 fraction digits.
        for j in 1..e.saturating_sub(1) {
            let f = e - 1 - j;
            if f == 0 || f > MAX_DIGITS || j > MAX_DIGITS {
                continue;
            }
            let g = pow10(MAX_DIGITS - f);
            let (lo, hi) = if j == 1 {
                (0, 10 * ONE - g)
            } else {
                (pow10(j - 1) * ONE, pow10(j) * ONE - g)
            };
            out.push((lo, hi, g));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bounds(v: Value) -> NumBounds {
        NumBounds::of(&v).unwrap().unwrap()
    }

    #[test]
    fn bounds_are_read_exactly_and_exclusive_ones_move_by_one_unit() {
        let b = bounds(json!({"minimum": 0.3, "exclusiveMaximum": 2}));
        assert_eq!(b.lo, Some(3 * ONE / 10));
        assert_eq!(b.hi, Some(2 * ONE - 1));
        let b = bounds(json!({"minimum": 1, "exclusiveMinimum": true}));
        assert_eq!(b.lo, Some(ONE + 1));
        assert_eq!(
            bounds(json!({"multipleOf": 0.05})).step,
            Some(5 * ONE / 100)
        );
        assert!(NumBounds::of(&json!({"multipleOf": 0})).is_err());
        assert!(NumBounds::of(&json!({"minimum": 1e-20})).is_err());
        assert_eq!(NumBounds::of(&json!({"type": "number"})).unwrap(), None);
    }

    #[test]
    fn the_cheapest_completion_is_found_and_impossible_prefixes_refused() {
        let b = bounds(json!({"minimum": 100, "maximum": 250}));
        assert_eq!(b.close_bytes(NumPrefix::Start, true), Some(3));
        let one = NumPrefix::Int {
            neg: false,
            int: 1,
            digits: 1,
        };
        assert_eq!(b.close_bytes(one, true), Some(2));
        let three = NumPrefix::Int {
            neg: false,
            int: 3,
            digits: 1,
        };
        assert_eq!(b.close_bytes(three, true), None);
        assert_eq!(b.close_bytes(NumPrefix::Minus, true), None);
        // A fraction: 0.25 <= x < 0.3 from "0" needs ".25" (3 bytes).
        let f = bounds(json!({"minimum": 0.25, "exclusiveMaximum": 0.3}));
        assert_eq!(
            f.close_bytes(NumPrefix::Zero { neg: false }, false),
            Some(3)
        );
        assert_eq!(f.close_bytes(NumPrefix::Zero { neg: false }, true), None);
        // Multiples of 7 between 10 and 20: only 14.
        let m = bounds(json!({"minimum": 10, "maximum": 20, "multipleOf": 7}));
        assert_eq!(m.close_bytes(NumPrefix::Start, false), Some(2));
        let fifteen = NumPrefix::Int {
            neg: false,
            int: 15,
            digits: 2,
        };
        assert_eq!(m.close_bytes(fifteen, false), None);
        assert!(m.admits(14 * ONE) && !m.admits(15 * ONE));
        // Cents: "3.1" may go on to "3.14", "3.141" may not.
        let c = bounds(json!({"multipleOf": 0.01}));
        let frac = |frac, digits| NumPrefix::Frac {
            neg: false,
            int: 3,
            frac,
            digits,
        };
        assert_eq!(c.close_bytes(frac(1, 1), false), Some(0));
        assert_eq!(c.close_bytes(frac(14, 2), false), Some(0));
        assert_eq!(c.close_bytes(frac(141, 3), false), None);
    }
}
