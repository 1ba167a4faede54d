//! The run state that conditions and input mappings read: the run input, the latest output of
//! every node, and the reducer-merged `state`. It is a pure fold over step outputs in completion
//! order, which is why the journal only keeps outputs (deltas) and never a snapshot of it.

use serde_json::{Map, Value};

use super::expr::{Expression, map_to_cel, to_cel};
use super::spec::Reducer;
use super::validate::abbreviate;

/// Why an expression could not be evaluated against the run state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expression `{source_text}` failed: {reason}")]
pub struct EvalError {
    pub source_text: String,
    pub reason: String,
}

/// The CEL standard library, built once per process: `cel::Context::default()` builds it anew
/// (every function overload into fresh maps) for each context, i.e. for every evaluation.
fn stdlib() -> std::sync::Arc<cel::Env> {
    static STDLIB: std::sync::LazyLock<std::sync::Arc<cel::Env>> =
        std::sync::LazyLock::new(|| std::sync::Arc::new(cel::Env::stdlib()));
    STDLIB.clone()
}

/// `input`, `nodes.<id>` and `state`, as expressions see them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunState {
    pub input: Value,
    /// The latest output of each node that has completed.
    pub nodes: Map<String, Value>,
    /// Fields merged from node outputs by the nodes' reducers.
    pub state: Map<String, Value>,
}

impl RunState {
    pub fn new(input: Value) -> RunState {
        RunState {
            input,
            nodes: Map::new(),
            state: Map::new(),
        }
    }

    /// Records `node`'s output and merges the fields its reducers name into `state`.
    pub fn merge(&mut self, node: &str, output: &Value, reducers: &[(String, Reducer)]) {
        for (field, reducer) in reducers {
            let Some(value) = output.get(field) else {
                continue;
            };
            match reducer {
                Reducer::Replace => {
                    self.state.insert(field.clone(), value.clone());
                }
                Reducer::Append => {
                    let slot = self
                        .state
                        .entry(field.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if !slot.is_array() {
                        *slot = Value::Array(vec![slot.take()]);
                    }
                    if let Value::Array(list) = slot {
                        match value {
                            Value::Array(items) => list.extend(items.iter().cloned()),
                            one => list.push(one.clone()),
                        }
                    }
                }
            }
        }
        self.nodes.insert(node.to_owned(), output.clone());
    }

    /// Evaluates a compiled expression against this state (see [`super::expr`] for how JSON
    /// maps to CEL values and how deep evaluation may go).
    pub fn eval(&self, expr: &Expression) -> Result<Value, EvalError> {
        let vars = [
            ("input", to_cel(&self.input)),
            ("nodes", map_to_cel(&self.nodes)),
            ("state", map_to_cel(&self.state)),
        ];
        expr.eval(&stdlib(), vars).map_err(|e| EvalError {
            source_text: abbreviate(&expr.source),
            reason: e.to_string(),
        })
    }

    /// Evaluates a condition; anything but a boolean is an error naming what it was.
    pub fn condition(&self, expr: &Expression) -> Result<bool, EvalError> {
        match self.eval(expr)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError {
                source_text: abbreviate(&expr.source),
                reason: format!("a condition must be true or false, got {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn program(src: &str) -> Expression {
        Expression::compile(src).unwrap()
    }

    #[test]
    fn expressions_read_input_nodes_and_state() {
        let mut s = RunState::new(json!({"limit": 10, "name": "x"}));
        s.merge(
            "a",
            &json!({"value": 4.0, "n": 1}),
            &[("n".into(), Reducer::Replace)],
        );
        let v = s
            .eval(&program("nodes.a.value < input.limit && state.n == 1"))
            .unwrap();
        assert_eq!(v, json!(true));
        assert_eq!(s.eval(&program("input.name + '!'")).unwrap(), json!("x!"));
    }

    #[test]
    fn append_concatenates_lists_and_collects_scalars() {
        let mut s = RunState::new(json!({}));
        let r = [("items".to_string(), Reducer::Append)];
        s.merge("a", &json!({"items": [1, 2]}), &r);
        s.merge("b", &json!({"items": 3}), &r);
        s.merge("c", &json!({"other": 9}), &r);
        assert_eq!(s.state["items"], json!([1, 2, 3]));
        assert_eq!(s.nodes["c"], json!({"other": 9}));
    }

    #[test]
    fn replace_keeps_the_newest_value() {
        let mut s = RunState::new(json!({}));
        let r = [("v".to_string(), Reducer::Replace)];
        s.merge("a", &json!({"v": 1}), &r);
        s.merge("a", &json!({"v": 2}), &r);
        assert_eq!(s.state["v"], json!(2));
    }

    #[test]
    fn missing_keys_and_non_boolean_conditions_are_named() {
        let s = RunState::new(json!({}));
        let e = s.eval(&program("nodes.seed.value"));
        let e = e.unwrap_err();
        assert!(e.reason.contains("seed"), "{e}");
        let e = s.condition(&program("1 + 1")).unwrap_err();
        assert!(e.reason.contains("must be true or false, got 2"), "{e}");
    }
}
