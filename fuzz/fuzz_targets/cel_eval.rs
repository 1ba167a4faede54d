//! CEL as graphs use it (edge `when`s and node inputs): any expression compiles to a bounded
//! program or a typed error, and any compiled program evaluates against any run state to a
//! value or an error, never a stack overflow or a panic the host does not catch.
//!
//! Input: the expression, then a NUL byte, then the run state as JSON: an object with
//! `input`, `nodes` and `state` (missing parts are empty), or any other JSON value as `input`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgraph::graph::state::RunState;
use sandgraph::graph::validate;
use serde_json::{Map, Value};

fn run_state(bytes: &[u8]) -> RunState {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        return RunState::new(Value::Null);
    };
    // Where a run's input and a tool's output enter, JSON deeper than this is refused.
    if sandgraph::graph::expr::json_depth(&v) > sandgraph::sandbox::MAX_JSON_DEPTH {
        return RunState::new(Value::Null);
    }
    match v {
        Value::Object(mut m) if m.contains_key("nodes") || m.contains_key("state") => {
            let map = |v: Option<Value>| match v {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            RunState {
                input: m.remove("input").unwrap_or(Value::Null),
                nodes: map(m.remove("nodes")),
                state: map(m.remove("state")),
            }
        }
        other => RunState::new(other),
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let Ok(source) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let state = run_state(data.get(split + 1..).unwrap_or_default());
    // What graph validation runs on every `when` and input mapping.
    let Ok(expr) = validate::check_expression(source) else {
        return;
    };
    let _ = state.eval(&expr);
    let _ = state.condition(&expr);
});
