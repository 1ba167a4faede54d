//! The run state that conditions and input mappings read: the run input, the latest output of
//! every node, and the reducer-merged `state`. It is a pure fold over step outputs in completion
//! order, which is why the journal only keeps outputs (deltas) and never a snapshot of it.

use serde_json::{Map, Value};

use super::expr::{Expression, read_map_to_cel, read_to_cel};
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
    /// Only what the expression reads is converted: a step's input mapping reads one or two
    /// nodes, not every output the run has produced so far.
    pub fn eval(&self, expr: &Expression) -> Result<Value, EvalError> {
        let [input, nodes, state] = expr.reads();
        let vars = [
            ("input", read_to_cel(&self.input, input)),
            ("nodes", read_map_to_cel(&self.nodes, nodes)),
            ("state", read_map_to_cel(&self.state, state)),
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

    /// Every variable converted whole, as every evaluation did before reads were narrowed.
    fn eval_whole(s: &RunState, e: &Expression) -> Result<Value, String> {
        use super::super::expr::{map_to_cel, to_cel};
        let vars = [
            ("input", to_cel(&s.input)),
            ("nodes", map_to_cel(&s.nodes)),
            ("state", map_to_cel(&s.state)),
        ];
        e.eval(&stdlib(), vars).map_err(|e| e.to_string())
    }

    #[test]
    fn narrowed_reads_evaluate_as_the_whole_state_does() {
        let mut s = RunState::new(json!({"limit": 10, "name": "x", "list": [1, 2]}));
        let r = [("n".to_string(), Reducer::Replace)];
        s.merge("a", &json!({"value": 4, "n": 1}), &r);
        s.merge("b", &json!({"value": "five"}), &r);
        s.merge("c", &json!([1, 2, 3]), &r);
        let cases = [
            "nodes.a.value",
            "nodes.a.value + nodes.a.n",
            "has(nodes.a)",
            "has(nodes.zz)",
            "nodes.zz.value",
            "nodes.c[1]",
            "size(nodes)",
            "size(state)",
            "nodes['a'].value",
            "'b' in nodes",
            "nodes.exists(k, k == 'c')",
            "nodes == {}",
            "[nodes.a.value, nodes.b.value].size()",
            "[1, 2].map(nodes, nodes + 1)",
            "[1].map(nodes, nodes.a)",
            "nodes.a.value < input.limit && state.n == 1",
            "input.name + '!'",
            "input.missing",
            "size(input)",
            "input",
            "state",
            "has(state.n) ? state.n : 0",
            "1 + 1",
        ];
        for src in cases {
            let e = program(src);
            let narrowed = s.eval(&e).map_err(|e| e.reason);
            assert_eq!(narrowed, eval_whole(&s, &e), "{src}");
        }
        // A run input that is not an object is passed as it is.
        let list = RunState::new(json!([1, 2]));
        for src in ["input.x", "input[0]", "size(input)"] {
            let e = program(src);
            let narrowed = list.eval(&e).map_err(|e| e.reason);
            assert_eq!(narrowed, eval_whole(&list, &e), "{src}");
        }
    }

    /// A macro-free expression runs in place only when the stack there has room: on a tokio
    /// worker's 2 MiB a document as deep as the limits allow goes to an evaluator thread instead
    /// of overflowing, and on a large stack it runs in place with the same result.
    #[test]
    fn in_place_and_evaluator_thread_results_agree_whatever_the_stack() {
        let mut deep = json!(1);
        for _ in 0..crate::sandbox::MAX_JSON_DEPTH - 1 {
            deep = json!([deep]);
        }
        let mut s = RunState::new(json!({"k": "v"}));
        s.merge("a", &json!({"deep": deep, "n": 2}), &[]);
        let cases = [
            "nodes.a.deep",
            "[nodes.a.deep, [[nodes.a.deep]]]",
            "nodes.a.n * 21",
            "input.k + string(nodes.a.n)",
            "nodes.a.deep[0][0][1]",
        ];
        let on_stack = |bytes: usize| {
            let s = s.clone();
            std::thread::Builder::new()
                .stack_size(bytes)
                .spawn(move || {
                    let results = cases
                        .iter()
                        .map(|src| s.eval(&program(src)).map_err(|e| e.reason))
                        .collect::<Vec<_>>();
                    (results, super::super::expr::IN_PLACE.with(|n| n.get()))
                })
                .unwrap()
                .join()
                .expect("evaluation must not overflow the stack")
        };
        let (small, in_place) = on_stack(2 << 20);
        assert_eq!(in_place, 0, "no room on 2 MiB for a document this deep");
        let (large, in_place) = on_stack(64 << 20);
        assert_eq!(in_place, cases.len(), "every one is macro-free");
        assert_eq!(small, large);
        assert_eq!(small[0], Ok(s.nodes["a"]["deep"].clone()));
        assert_eq!(small[2], Ok(json!(42)));
        assert_eq!(small[3], Ok(json!("v2")));
        assert!(small[4].is_err());
    }

    #[test]
    fn reads_name_the_fields_selected_or_the_whole_value() {
        use super::super::expr::Reads;
        let fields = |f: &[&str]| Reads::Fields(f.iter().map(|s| s.to_string()).collect());
        let reads = |src: &str| program(src).reads().clone();
        assert_eq!(
            reads("nodes.a.value + nodes.b.x + nodes.a.y"),
            [fields(&[]), fields(&["a", "b"]), fields(&[])]
        );
        assert_eq!(
            reads("has(nodes.a) && input.x > 1"),
            [fields(&["x"]), fields(&["a"]), fields(&[])]
        );
        assert_eq!(
            reads("size(nodes) + state.n"),
            [fields(&[]), Reads::Whole, fields(&["n"])]
        );
        assert_eq!(reads("nodes['a']")[1], Reads::Whole);
        assert_eq!(reads("nodes.a.value + nodes[input.k]")[1], Reads::Whole);
        // Inside a macro that binds `nodes`, the name is the loop variable, not the state.
        assert_eq!(reads("[1].map(nodes, nodes.a)")[1], fields(&[]));
        assert_eq!(reads("[1].all(x, nodes.a.v > x)")[1], fields(&["a"]));
        assert_eq!(reads("[1].all(x, x in nodes)")[1], Reads::Whole);
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
