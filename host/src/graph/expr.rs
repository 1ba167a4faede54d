//! CEL expressions as graphs use them, bounded so that no expression can exhaust the stack.
//! The `cel` crate parses and evaluates by recursion (about 170 KiB of stack per bracket and
//! 40 KiB per operator level in a debug build), so a source is measured first by a linear scan
//! (size, bracket nesting, operator chains, unary runs, selection chains, and all of these
//! combined along one path) and refused with the limit it crossed; only a bounded source is
//! parsed and evaluated, on a stack segment sized for the worst case those limits admit.
//!
//! Time is bounded too: `cel` has no step budget, so the cost is bounded statically (macros
//! nest at most [`MAX_MACRO_NESTING`] deep, and what they iterate is bounded by the size
//! limits of the run input and tool outputs), and an expression with a macro runs on an
//! evaluator thread, never on an async worker, with a wall-clock limit ([`MAX_EVAL_TIME`])
//! past which the step fails as `expression_timeout` and the evaluation is abandoned to finish
//! alone. An expression without macros costs time linear in its size and in the values it
//! reads (every function of the standard library is linear, and nothing iterates), like
//! reading those values in the first place, so it runs where it is called when the stack there
//! has room for it: a step's input mapping then costs no hand-off to another thread and back.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cel::common::ast::{EntryExpr, Expr};
use serde_json::Value;

/// Expressions longer than this are refused before parsing.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Brackets (parentheses, lists, maps, call arguments, indexes) nested deeper than this.
pub const MAX_NESTING: usize = 24;
/// Binary operators (`+ - * / % == != < <= > >= in` and `?:`) in one operand list of one
/// bracket level; `&&` and `||` are not counted (they build a balanced tree).
pub const MAX_OPERATORS: usize = 32;
/// Selections, indexes and method calls in a row on one value (`a.b[0].c()`).
pub const MAX_CHAIN: usize = 32;
/// `!` or `-` in a row.
pub const MAX_UNARY: usize = 16;
/// Brackets, operators, chains and unary runs combined along one path from the root to the
/// innermost value: an upper bound of the depth the parser and evaluator recurse to.
pub const MAX_DEPTH: usize = 64;
/// The same bound checked on the parsed tree (macros expand into a few levels each); a
/// source within the scan's limits stays under it, so this only guards against the scan and
/// the parser disagreeing.
pub const MAX_TREE_DEPTH: usize = 4 * MAX_DEPTH;

/// Macros (`map`, `filter`, `all`, `exists`, `exists_one`) nested in the body of another:
/// each level multiplies the cost by the length of what it iterates.
pub const MAX_MACRO_NESTING: usize = 2;
/// How long one evaluation may run before the step fails with `expression_timeout`.
pub const MAX_EVAL_TIME: Duration = Duration::from_secs(1);

/// The stack segment parsing and evaluation run on when the current one has too little
/// left. Only the pages touched are ever committed. Measured worst case at the limits above
/// (debug build): about 7 MiB to parse, 6 MiB to evaluate.
const STACK_SEGMENT: usize = 32 << 20;
/// Stack a parse may need at the limits, with margin.
const PARSE_RED_ZONE: usize = 16 << 20;
/// Stack one tree level may need while evaluating (measured at most 40 KiB), with margin.
const EVAL_PER_LEVEL: usize = 96 << 10;
/// Stack converting JSON documents into CEL values and back needs (measured under 1 MiB at
/// `sandbox::MAX_JSON_DEPTH`); with it a tokio worker (2 MiB) always evaluates on a segment.
const EVAL_BASE: usize = 2 << 20;

/// Stack an evaluation in place needs besides its tree levels and JSON levels, with margin.
const INLINE_BASE: usize = 256 << 10;
/// Stack one level of a JSON document may need while it is converted into the evaluator's
/// values and back (measured under 1 MiB for `MAX_JSON_DEPTH` = 64 levels), with margin.
const JSON_PER_LEVEL: usize = 24 << 10;

/// Stack the type checker needs, with a wide margin (one recursion per tree level).
const CHECK_BASE: usize = 256 << 10;
const CHECK_PER_LEVEL: usize = 32 << 10;

/// Variables an expression may read.
pub const STATE_ROOTS: [&str; 3] = ["input", "nodes", "state"];

/// Why an expression was refused before it ran; the message reads after "expression `…`".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error(
        "is {bytes} bytes, over the limit of {limit}; compute the value in a tool step or split it across nodes"
    )]
    TooLong { bytes: usize, limit: usize },
    #[error(
        "nests brackets (parentheses, lists, maps, call arguments, indexes) more than {limit} deep at column {col}; flatten it"
    )]
    Nesting { col: usize, limit: usize },
    #[error(
        "chains more than {limit} binary operators at column {col}; split it across nodes, or group the terms with parentheses"
    )]
    Operators { col: usize, limit: usize },
    #[error(
        "has more than {limit} selections, indexes or calls in a row on one value at column {col}; shorten the path"
    )]
    Chain { col: usize, limit: usize },
    #[error(
        "has more than {limit} unary `!` or `-` in a row at column {col}; two of them cancel out, remove them"
    )]
    Unary { col: usize, limit: usize },
    #[error(
        "is composed more than {limit} levels deep (brackets, operators, selections and unary operators along one path, up to column {col}); split it across nodes"
    )]
    Depth { col: usize, limit: usize },
    #[error(
        "nests macros (map, filter, all, exists, exists_one) {depth} deep in one another's bodies, over the limit of {limit}; each level multiplies the work, compute the inner part in its own node"
    )]
    MacroNesting { depth: usize, limit: usize },
    #[error("does not compile: {0}")]
    Syntax(String),
    #[error("reads unknown variable '{0}'; use input, nodes.<id> or state")]
    UnknownVariable(String),
}

/// A compiled expression and its source.
#[derive(Debug)]
pub struct Expression {
    pub source: String,
    program: Arc<cel::Program>,
    tree_depth: usize,
    /// Has no macro: its cost is linear, so it may run in place (see the module's doc).
    macro_free: bool,
    /// What it reads of `input`, `nodes` and `state` (in [`STATE_ROOTS`] order).
    reads: [Reads; 3],
}

/// What an expression reads of one state variable, as its parsed tree shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// Only these fields, each by a plain selection (`nodes.a`, `has(nodes.a)`): a map holding
    /// just them (those present) evaluates exactly as the whole one. Empty: never read.
    Fields(Vec<String>),
    /// The value as a whole (indexed, iterated, sized, compared, passed to a function).
    Whole,
}

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalFailure {
    #[error("{0}")]
    Execution(String),
    #[error("result is not JSON: {0}")]
    NotJson(String),
    #[error("the evaluator panicked: {0}; report this expression as a bug")]
    Panicked(String),
    #[error(
        "expression_timeout: evaluation did not finish within {limit:?} and was abandoned; make the expression cheaper (fewer nested macros over large lists) or compute it in a tool step"
    )]
    Timeout { limit: Duration },
}

/// Runs `f` where an expression can be parsed in place: on this thread when its stack has
/// room for the deepest parse the limits admit, otherwise on one thread with a stack that large
/// (spawned for `f` and joined). Graph validation parses every expression of a graph; without
/// this each one went to an evaluator thread and back (two futex wake-ups per expression, a
/// third of the time validating a 20,000-node graph took).
pub fn on_parse_stack<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if stacker::remaining_stack().is_some_and(|left| left >= PARSE_RED_ZONE) {
        return f();
    }
    let f = std::sync::Mutex::new(Some(f));
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("sandgraph-validate".into())
            .stack_size(STACK_SEGMENT)
            .spawn_scoped(scope, || {
                let f = f.lock().unwrap_or_else(|p| p.into_inner()).take();
                f.map(|f| f())
            });
        match spawned.map(|h| h.join()) {
            Ok(Ok(Some(out))) => out,
            // A panic in `f` is `f`'s own: carry it on here.
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // No thread could be spawned: run here; each parse then finds its own stack.
            Ok(Ok(None)) | Err(_) => {
                let f = f.lock().unwrap_or_else(|p| p.into_inner()).take();
                f.expect("the spawned thread did not take f")()
            }
        }
    })
}

impl Expression {
    /// Checks `source` against the limits, parses it, and checks it reads only the run state
    /// (comprehension variables of the standard macros are bound, not state).
    pub fn compile(source: &str) -> Result<Expression, ExprError> {
        scan(source)?;
        let parse = |source: &str| {
            stacker::maybe_grow(PARSE_RED_ZONE, STACK_SEGMENT, || {
                std::panic::catch_unwind(|| cel::Program::compile(source))
            })
        };
        // A thread with less stack left than a parse may need parses on an evaluator thread,
        // whose stack is already that large: growing a fresh segment for every expression
        // (map, fault in, unmap) was a third of the time validation took.
        let parsed = if stacker::remaining_stack().is_some_and(|left| left >= PARSE_RED_ZONE) {
            parse(source)
        } else {
            let owned = source.to_owned();
            evaluators::run_to_end(move || parse(&owned)).unwrap_or_else(|| parse(source))
        };
        let program = parsed
            .map_err(|p| ExprError::Syntax(format!("the parser panicked: {}", panic_text(&p))))?
            .map_err(|e| ExprError::Syntax(e.to_string().replace('\n', "; ")))?;
        let Walked {
            tree_depth,
            macro_depth,
            free,
            reads,
        } = walk(program.expression());
        if macro_depth > MAX_MACRO_NESTING {
            return Err(ExprError::MacroNesting {
                depth: macro_depth,
                limit: MAX_MACRO_NESTING,
            });
        }
        if tree_depth > MAX_TREE_DEPTH {
            return Err(ExprError::Depth {
                col: source.chars().count(),
                limit: MAX_DEPTH,
            });
        }
        if let Some(v) = free.iter().find(|v| !STATE_ROOTS.contains(&v.as_str())) {
            return Err(ExprError::UnknownVariable(v.clone()));
        }
        let reads = STATE_ROOTS.map(|root| {
            free.iter()
                .position(|f| f == root)
                .map_or(Reads::Fields(Vec::new()), |i| reads[i].clone())
        });
        Ok(Expression {
            source: source.to_owned(),
            program: Arc::new(program),
            tree_depth,
            macro_free: macro_depth == 0,
            reads,
        })
    }

    /// Type errors of this expression against what the run state can hold (see
    /// [`super::typecheck`]); `condition` asks that it can be a boolean.
    pub fn type_errors(
        &self,
        env: &super::typecheck::TypeEnv,
        condition: bool,
    ) -> Vec<super::typecheck::TypeError> {
        let need = CHECK_BASE + self.tree_depth * CHECK_PER_LEVEL;
        stacker::maybe_grow(need, STACK_SEGMENT, || {
            super::typecheck::check(
                self.program.expression(),
                self.program.source_info(),
                &self.source,
                env,
                condition,
            )
        })
    }

    /// What it reads of `input`, `nodes` and `state`, in that order.
    pub fn reads(&self) -> &[Reads; 3] {
        &self.reads
    }

    /// Evaluates against `input`, `nodes` and `state`: in place when it has no macro and the
    /// stack here has room for its depth and the depth of the values it reads, otherwise on an
    /// evaluator thread (a stack large enough for this expression's depth and JSON documents of
    /// `MAX_JSON_DEPTH` levels), waiting at most [`MAX_EVAL_TIME`].
    pub fn eval(
        &self,
        env: &Arc<cel::Env>,
        vars: [(&'static str, cel::Value); 3],
    ) -> Result<Value, EvalFailure> {
        self.eval_within(env, vars, MAX_EVAL_TIME)
    }

    /// The stack an evaluation in place against `vars` may use, or None when it may not run
    /// in place (it has a macro).
    fn in_place_need(&self, vars: &[(&'static str, cel::Value); 3]) -> Option<usize> {
        if !self.macro_free {
            return None;
        }
        // The result nests at most as deep as what it reads plus the brackets written.
        let json_levels =
            vars.iter().map(|(_, v)| cel_depth(v)).max().unwrap_or(0) + MAX_NESTING + 2;
        Some(INLINE_BASE + self.tree_depth * EVAL_PER_LEVEL + json_levels * JSON_PER_LEVEL)
    }

    /// [`Expression::eval`] with another time limit for evaluations on an evaluator thread.
    pub fn eval_within(
        &self,
        env: &Arc<cel::Env>,
        vars: [(&'static str, cel::Value); 3],
        limit: Duration,
    ) -> Result<Value, EvalFailure> {
        if let Some(need) = self.in_place_need(&vars)
            && stacker::remaining_stack().is_some_and(|left| left >= need)
        {
            #[cfg(test)]
            IN_PLACE.with(|n| n.set(n.get() + 1));
            return evaluate(&self.program, env.clone(), vars);
        }
        let program = self.program.clone();
        let env = env.clone();
        let need = EVAL_BASE + self.tree_depth * EVAL_PER_LEVEL;
        let job =
            move || stacker::maybe_grow(need, STACK_SEGMENT, || evaluate(&program, env, vars));
        evaluators::run(job, limit).unwrap_or(Err(EvalFailure::Timeout { limit }))
    }
}

#[cfg(test)]
thread_local! {
    /// Evaluations this thread ran in place.
    pub(crate) static IN_PLACE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `program` against `vars` on this thread and converts the result to JSON.
fn evaluate(
    program: &cel::Program,
    env: Arc<cel::Env>,
    vars: [(&'static str, cel::Value); 3],
) -> Result<Value, EvalFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut ctx = cel::Context::with_env(env);
        for (name, value) in vars {
            ctx.add_variable_from_value(name, value);
        }
        let value = program
            .execute(&ctx)
            .map_err(|e| EvalFailure::Execution(e.to_string()))?;
        value
            .json()
            .map_err(|e| EvalFailure::NotJson(format!("{e:?}")))
    }))
    .unwrap_or_else(|p| Err(EvalFailure::Panicked(panic_text(&p))))
}

/// How deep lists and maps nest in `v` (a scalar is 0), without recursion.
fn cel_depth(v: &cel::Value) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(v, 0usize)];
    while let Some((v, d)) = todo.pop() {
        match v {
            cel::Value::List(items) => {
                deepest = deepest.max(d + 1);
                todo.extend(items.iter().map(|i| (i, d + 1)));
            }
            cel::Value::Map(m) => {
                deepest = deepest.max(d + 1);
                todo.extend(m.map.values().map(|i| (i, d + 1)));
            }
            _ => deepest = deepest.max(d),
        }
    }
    deepest
}

/// The evaluator threads: idle ones wait for a job; a job that outlives its caller's limit
/// keeps its thread until it ends (its cost is bounded statically), and a new thread serves
/// the next caller meanwhile. The caller waits off the async workers (`block_in_place` on a
/// multi-threaded tokio runtime), so a slow evaluation never stalls other runs.
mod evaluators {
    use super::*;

    type Job = Box<dyn FnOnce() + Send>;

    /// At most this many threads wait idle; more are let go when they finish.
    const MAX_IDLE: usize = 8;

    static IDLE: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

    fn idle() -> std::sync::MutexGuard<'static, Vec<mpsc::Sender<Job>>> {
        IDLE.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on an evaluator thread; `None` when it did not finish within `limit`.
    pub(super) fn run<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
        limit: Duration,
    ) -> Option<T> {
        let (done_tx, done_rx) = mpsc::sync_channel::<T>(1);
        submit(Box::new(move || {
            let _ = done_tx.send(f());
        }))?;
        let wait = || done_rx.recv_timeout(limit).ok();
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Runs `f` on an evaluator thread and waits for it to end; `None` only when no thread
    /// could run it.
    pub(super) fn run_to_end<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done_tx, done_rx) = mpsc::sync_channel::<T>(1);
        submit(Box::new(move || {
            let _ = done_tx.send(f());
        }))?;
        let wait = || done_rx.recv().ok();
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// Hands `job` to an idle thread, or a new one.
    fn submit(mut job: Job) -> Option<()> {
        loop {
            let worker = idle().pop();
            match worker {
                Some(tx) => match tx.send(job) {
                    Ok(()) => return Some(()),
                    // That thread is gone; take another.
                    Err(mpsc::SendError(j)) => job = j,
                },
                None => return spawn(job).ok(),
            }
        }
    }

    fn spawn(first: Job) -> std::io::Result<()> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sandgraph-cel".into())
            .stack_size(STACK_SEGMENT)
            .spawn(move || {
                first();
                loop {
                    {
                        let mut idle = idle();
                        if idle.len() >= MAX_IDLE {
                            return;
                        }
                        idle.push(tx.clone());
                    }
                    match rx.recv() {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .map(|_| ())
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// A JSON value as CEL sees it: integral numbers in the i64 range are `int`, larger positive
/// integers `uint`, every other number `double`; so `nodes.s.out.x * 2` works as written.
pub fn to_cel(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(m) => map_to_cel(m),
    }
}

/// The part of a JSON value an expression that `reads` it can see, as CEL: of an object read
/// only through plain selections, just the fields selected (conversion then costs what is
/// read, not everything a run has accumulated); anything else whole.
pub fn read_to_cel(v: &Value, reads: &Reads) -> cel::Value {
    match v {
        Value::Object(m) => read_map_to_cel(m, reads),
        _ => to_cel(v),
    }
}

/// [`read_to_cel`] of a JSON object.
pub fn read_map_to_cel(m: &serde_json::Map<String, Value>, reads: &Reads) -> cel::Value {
    let Reads::Fields(fields) = reads else {
        return map_to_cel(m);
    };
    let map: HashMap<cel::objects::Key, cel::Value> = fields
        .iter()
        .filter_map(|f| {
            let (k, v) = m.get_key_value(f)?;
            Some((cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
        })
        .collect();
    cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
}

/// A JSON object as a CEL map.
pub fn map_to_cel(m: &serde_json::Map<String, Value>) -> cel::Value {
    let map: HashMap<cel::objects::Key, cel::Value> = m
        .iter()
        .map(|(k, v)| (cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)))
        .collect();
    cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
}

/// How deep arrays and objects nest in `v` (a scalar is 0), without recursion.
pub fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(v, 0usize)];
    while let Some((v, d)) = todo.pop() {
        match v {
            Value::Array(items) => todo.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(m) => todo.extend(m.values().map(|i| (i, d + 1))),
            _ => deepest = deepest.max(d),
        }
        if matches!(v, Value::Array(_) | Value::Object(_)) {
            deepest = deepest.max(d + 1);
        }
    }
    deepest
}

/// What [`walk`] finds in a parsed tree.
struct Walked {
    tree_depth: usize,
    macro_depth: usize,
    /// Free variables in order of first use.
    free: Vec<String>,
    /// What each free variable is read for, in the order of `free`.
    reads: Vec<Reads>,
}

/// The depth of the parsed tree, how deep macros nest in one another's loop bodies, and the
/// free variables in order of first use with what each is read for, without recursion.
/// Comprehension variables (`x` in `list.map(x, x * 2)`, the accumulator) are bound inside the
/// loop, not free.
fn walk(root: &cel::IdedExpr) -> Walked {
    let mut deepest = 0;
    let mut macros = 0;
    let mut free: Vec<String> = Vec::new();
    let mut reads: Vec<Reads> = Vec::new();
    // (index of the enclosing scope, names it binds, macro nesting of its loop body)
    let mut scopes: Vec<(Option<usize>, Vec<&str>, usize)> = vec![(None, Vec::new(), 0)];
    let mut todo: Vec<(&cel::IdedExpr, usize, usize)> = vec![(root, 1, 0)];
    let is_bound = |scopes: &[(Option<usize>, Vec<&str>, usize)], scope: usize, name: &str| {
        let mut s = Some(scope);
        while let Some(i) = s {
            if scopes[i].1.contains(&name) {
                return true;
            }
            s = scopes[i].0;
        }
        false
    };
    // The read of free variable `name`: `field` for a plain selection, None for the whole.
    let mut note = |name: &str, field: Option<&str>| {
        let i = match free.iter().position(|f| f == name) {
            Some(i) => i,
            None => {
                free.push(name.to_owned());
                reads.push(Reads::Fields(Vec::new()));
                free.len() - 1
            }
        };
        match (&mut reads[i], field) {
            (Reads::Fields(fields), Some(f)) => {
                if !fields.iter().any(|x| x == f) {
                    fields.push(f.to_owned());
                }
            }
            (r, None) => *r = Reads::Whole,
            (Reads::Whole, Some(_)) => {}
        }
    };
    while let Some((e, d, scope)) = todo.pop() {
        deepest = deepest.max(d);
        match &e.expr {
            Expr::Ident(name) => {
                if !is_bound(&scopes, scope, name) {
                    note(name, None);
                }
            }
            Expr::Select(s) if matches!(&s.operand.expr, Expr::Ident(name) if !is_bound(&scopes, scope, name)) =>
            {
                deepest = deepest.max(d + 1);
                if let Expr::Ident(name) = &s.operand.expr {
                    note(name, Some(&s.field));
                }
            }
            Expr::Call(c) => {
                todo.extend(c.target.iter().map(|t| (&**t, d + 1, scope)));
                todo.extend(c.args.iter().map(|a| (a, d + 1, scope)));
            }
            Expr::Select(s) => todo.push((&s.operand, d + 1, scope)),
            Expr::List(l) => todo.extend(l.elements.iter().map(|x| (x, d + 1, scope))),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        todo.push((&me.key, d + 1, scope));
                        todo.push((&me.value, d + 1, scope));
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => todo.push((&f.value, d + 1, scope)),
                        EntryExpr::MapEntry(me) => {
                            todo.push((&me.key, d + 1, scope));
                            todo.push((&me.value, d + 1, scope));
                        }
                    }
                }
            }
            Expr::Comprehension(c) => {
                todo.push((&c.iter_range, d + 1, scope));
                todo.push((&c.accu_init, d + 1, scope));
                let mut names = vec![c.iter_var.as_str(), c.accu_var.as_str()];
                names.extend(c.iter_var2.as_deref());
                let nesting = scopes[scope].2 + 1;
                macros = macros.max(nesting);
                scopes.push((Some(scope), names, nesting));
                let inner = scopes.len() - 1;
                todo.push((&c.loop_cond, d + 1, inner));
                todo.push((&c.loop_step, d + 1, inner));
                todo.push((&c.result, d + 1, inner));
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
    Walked {
        tree_depth: deepest,
        macro_depth: macros,
        free,
        reads,
    }
}

/// One bracket level of the scan.
#[derive(Default)]
struct Frame {
    /// Deepest bound among the finished operands (separated by `,`, `&&`, `||`) and children.
    best: usize,
    /// The current operand: binary operators, longest chain and unary run so far, and the
    /// chain of the value being read.
    ops: usize,
    chain: usize,
    cur_chain: usize,
    unary: usize,
    /// Deepest child bracket inside the current operand.
    child: usize,
    /// `&&` / `||` operands of this level (they nest log2 of that deep).
    logic: usize,
}

impl Frame {
    fn operand(&self) -> usize {
        self.ops + self.chain + self.unary + self.child
    }
    fn end_operand(&mut self) {
        self.best = self.best.max(self.operand());
        self.ops = 0;
        self.chain = 0;
        self.cur_chain = 0;
        self.unary = 0;
        self.child = 0;
    }
    fn bound(&mut self) -> usize {
        self.end_operand();
        let logic = (usize::BITS - self.logic.leading_zeros()) as usize;
        1 + self.best + logic
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Prev {
    /// Start, an operator, an opening bracket or a separator: a value comes next.
    Operator,
    /// A value just ended (literal, identifier, closing bracket): an operator or postfix next.
    Operand,
    /// A `.`: a field or method name comes next.
    Dot,
}

/// Measures `source` in one pass without recursion and refuses it at the first limit crossed.
pub fn scan(source: &str) -> Result<(), ExprError> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(ExprError::TooLong {
            bytes: source.len(),
            limit: MAX_EXPRESSION_BYTES,
        });
    }
    let b = source.as_bytes();
    let col = |i: usize| source[..i.min(source.len())].chars().count() + 1;
    let mut frames: Vec<Frame> = vec![Frame::default()];
    let mut prev = Prev::Operator;
    // Consecutive `!`/`-` before the current operand.
    let mut run = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let f = frames.last_mut().expect("the root frame is never popped");
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' | b'"' => {
                start_operand(f, &mut run);
                i = skip_string(b, i, false);
                prev = Prev::Operand;
            }
            b'0'..=b'9' => {
                start_operand(f, &mut run);
                i = skip_number(b, i);
                prev = Prev::Operand;
            }
            b'.' if prev != Prev::Operand && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                start_operand(f, &mut run);
                i = skip_number(b, i);
                prev = Prev::Operand;
            }
            b'.' => {
                i += 1;
                if prev == Prev::Operand {
                    postfix(f, col(i - 1))?;
                }
                prev = Prev::Dot;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &source[start..i];
                let is_prefix =
                    word.len() <= 2 && word.chars().all(|ch| matches!(ch, 'r' | 'R' | 'b' | 'B'));
                if is_prefix && matches!(b.get(i), Some(b'\'' | b'"')) && prev != Prev::Dot {
                    start_operand(f, &mut run);
                    let raw = word.contains(['r', 'R']);
                    i = skip_string(b, i, raw);
                    prev = Prev::Operand;
                } else if word == "in" && prev == Prev::Operand {
                    operator(f, &mut prev, col(start))?;
                } else {
                    if prev == Prev::Operator {
                        start_operand(f, &mut run);
                    }
                    prev = Prev::Operand;
                }
            }
            b'(' | b'[' | b'{' => {
                if prev == Prev::Operand && c != b'{' {
                    postfix(f, col(i))?;
                } else if prev == Prev::Operator {
                    start_operand(f, &mut run);
                }
                frames.push(Frame::default());
                if frames.len() - 1 > MAX_NESTING {
                    return Err(ExprError::Nesting {
                        col: col(i),
                        limit: MAX_NESTING,
                    });
                }
                prev = Prev::Operator;
                i += 1;
            }
            b')' | b']' | b'}' => {
                if frames.len() > 1 {
                    let mut done = frames.pop().expect("checked above");
                    let bound = done.bound();
                    let parent = frames.last_mut().expect("checked above");
                    parent.child = parent.child.max(bound);
                    check_depth(&frames, col(i))?;
                }
                prev = Prev::Operand;
                i += 1;
            }
            b',' => {
                f.end_operand();
                prev = Prev::Operator;
                i += 1;
            }
            b'&' | b'|' if b.get(i + 1) == Some(&c) => {
                f.end_operand();
                f.logic += 1;
                prev = Prev::Operator;
                i += 2;
            }
            b'!' if b.get(i + 1) != Some(&b'=') => {
                run += 1;
                if run > MAX_UNARY {
                    return Err(ExprError::Unary {
                        col: col(i),
                        limit: MAX_UNARY,
                    });
                }
                prev = Prev::Operator;
                i += 1;
            }
            b'-' if prev != Prev::Operand => {
                run += 1;
                if run > MAX_UNARY {
                    return Err(ExprError::Unary {
                        col: col(i),
                        limit: MAX_UNARY,
                    });
                }
                i += 1;
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'!' | b'?' => {
                let start = i;
                i += 1;
                if matches!(b.get(i), Some(b'=')) {
                    i += 1;
                }
                operator(f, &mut prev, col(start))?;
            }
            b':' => {
                // A map entry's key/value separator or the second half of `?:`, which `?`
                // already counted.
                prev = Prev::Operator;
                i += 1;
            }
            _ => i += 1,
        }
        if frames.iter().map(|f| f.operand() + 1).sum::<usize>() > MAX_DEPTH {
            return Err(ExprError::Depth {
                col: col(i.saturating_sub(1)),
                limit: MAX_DEPTH,
            });
        }
    }
    let mut root = frames.pop().expect("the root frame is never popped");
    // Unclosed brackets are the parser's to report; their depth was checked as they opened.
    if root.bound() > MAX_DEPTH {
        return Err(ExprError::Depth {
            col: col(b.len()),
            limit: MAX_DEPTH,
        });
    }
    Ok(())
}

fn operator(f: &mut Frame, prev: &mut Prev, col: usize) -> Result<(), ExprError> {
    f.ops += 1;
    if f.ops > MAX_OPERATORS {
        return Err(ExprError::Operators {
            col,
            limit: MAX_OPERATORS,
        });
    }
    *prev = Prev::Operator;
    Ok(())
}

/// A value starts: the unary operators before it apply to it, and its chain begins.
fn start_operand(f: &mut Frame, run: &mut usize) {
    f.unary = f.unary.max(*run);
    *run = 0;
    f.cur_chain = 0;
}

/// A selection, index or call on the current value.
fn postfix(f: &mut Frame, col: usize) -> Result<(), ExprError> {
    f.cur_chain += 1;
    f.chain = f.chain.max(f.cur_chain);
    if f.cur_chain > MAX_CHAIN {
        return Err(ExprError::Chain {
            col,
            limit: MAX_CHAIN,
        });
    }
    Ok(())
}

fn check_depth(frames: &[Frame], col: usize) -> Result<(), ExprError> {
    if frames.iter().map(|f| f.operand() + 1).sum::<usize>() > MAX_DEPTH {
        return Err(ExprError::Depth {
            col,
            limit: MAX_DEPTH,
        });
    }
    Ok(())
}

/// The index just past the string literal starting at `i` (at its quote).
fn skip_string(b: &[u8], i: usize, raw: bool) -> usize {
    let q = b[i];
    let triple = b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q);
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < b.len() {
        if !raw && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q && (!triple || (b.get(j + 1) == Some(&q) && b.get(j + 2) == Some(&q))) {
            return j + if triple { 3 } else { 1 };
        }
        if b[j] == b'\n' && !triple {
            return j;
        }
        j += 1;
    }
    j
}

/// The index just past the number literal starting at `i`.
fn skip_number(b: &[u8], mut i: usize) -> usize {
    let hex = b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'x' | b'X'));
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphanumeric() || c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let exp = !hex && matches!(c, b'e' | b'E');
            i += 1;
            if exp && matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::state::RunState;
    use serde_json::json;

    fn nest(open: &str, inner: &str, close: &str, n: usize) -> String {
        format!("{}{inner}{}", open.repeat(n), close.repeat(n))
    }

    /// Compiles `src` and evaluates it on this test thread (2 MiB of stack, like a tokio
    /// worker), which only works because evaluation moves to a large enough segment.
    fn compiles_and_runs(src: &str) -> Value {
        let e = Expression::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let mut s = RunState::new(json!({"a": {"a": 1}}));
        s.merge("s", &json!({"x": 5}), &[]);
        s.eval(&e).unwrap_or_else(|e| json!(e.reason))
    }

    fn refused(src: &str) -> ExprError {
        Expression::compile(src).expect_err(src)
    }

    #[test]
    fn brackets_nest_up_to_the_limit_and_no_further() {
        for (open, inner, close) in [("(", "1", ")"), ("[", "1", "]"), ("{1:", "1", "}")] {
            compiles_and_runs(&nest(open, inner, close, MAX_NESTING));
            let over = nest(open, inner, close, MAX_NESTING + 1);
            let col = MAX_NESTING * open.len() + 1;
            assert_eq!(
                refused(&over),
                ExprError::Nesting {
                    col,
                    limit: MAX_NESTING
                },
                "{over}"
            );
            let far = nest(open, inner, close, 1000);
            assert_eq!(
                refused(&far),
                ExprError::Nesting {
                    col,
                    limit: MAX_NESTING
                }
            );
            let huge = nest(open, inner, close, 10_000);
            assert!(matches!(
                refused(&huge),
                ExprError::TooLong { limit: MAX_EXPRESSION_BYTES, bytes } if bytes == huge.len()
            ));
        }
    }

    #[test]
    fn unary_runs_are_bounded() {
        for (op, operand) in [("!", "true"), ("-", "1")] {
            let at = format!("{}{operand}", op.repeat(MAX_UNARY));
            compiles_and_runs(&at);
            let over = format!("{}{operand}", op.repeat(MAX_UNARY + 1));
            let expected = ExprError::Unary {
                col: MAX_UNARY + 1,
                limit: MAX_UNARY,
            };
            assert_eq!(refused(&over), expected);
            assert_eq!(refused(&format!("{}{operand}", op.repeat(4000))), expected);
            assert!(matches!(
                refused(&format!("{}{operand}", op.repeat(10_000))),
                ExprError::TooLong { .. }
            ));
        }
        // Separate operands each have their own run; `!=` is not a unary `!`.
        compiles_and_runs("-1 - -1 - -1 != -2");
    }

    #[test]
    fn selection_chains_are_bounded() {
        let at = format!("input{}", ".a".repeat(MAX_CHAIN));
        assert!(
            compiles_and_runs(&at).is_string(),
            "an evaluation error, not an abort"
        );
        let over = format!("input{}", ".a".repeat(MAX_CHAIN + 1));
        let expected = ExprError::Chain {
            col: 6 + 2 * MAX_CHAIN,
            limit: MAX_CHAIN,
        };
        assert_eq!(refused(&over), expected);
        assert_eq!(refused(&format!("input{}", ".a".repeat(2000))), expected);
        let idx = format!("input{}", "['a']".repeat(MAX_CHAIN + 1));
        assert!(matches!(refused(&idx), ExprError::Chain { .. }));
        // Chains of separate operands do not add up.
        let many = vec!["input.a.a"; 40].join(" == ");
        assert!(matches!(refused(&many), ExprError::Operators { .. }));
        compiles_and_runs(&vec!["input.a.a"; 20].join(" + "));
    }

    #[test]
    fn operator_chains_are_bounded() {
        let at = vec!["1"; MAX_OPERATORS + 1].join(" + ");
        assert_eq!(compiles_and_runs(&at), json!(MAX_OPERATORS + 1));
        let over = vec!["1"; MAX_OPERATORS + 2].join(" + ");
        let expected = ExprError::Operators {
            col: 4 * (MAX_OPERATORS + 1) - 1,
            limit: MAX_OPERATORS,
        };
        assert_eq!(refused(&over), expected);
        assert_eq!(refused(&vec!["1"; 1000].join(" + ")), expected);
        assert!(matches!(
            refused(&vec!["1"; 10_000].join(" + ")),
            ExprError::TooLong { .. }
        ));
        // `&&` and `||` build a balanced tree: long chains of them are fine.
        assert_eq!(
            compiles_and_runs(&vec!["1 + 1 == 2"; 250].join(" && ")),
            json!(true)
        );
        // Commas separate operands: a long list of sums is fine.
        compiles_and_runs(&format!("[{}]", vec!["1 + 1"; 300].join(", ")));
    }

    #[test]
    fn combined_depth_is_bounded() {
        // Two operators and a bracket per level: 3 per level.
        let level = |n: usize| nest("1 + 1 + (", "1", ")", n);
        let at = (1..MAX_NESTING)
            .rev()
            .find(|&n| Expression::compile(&level(n)).is_ok())
            .unwrap();
        compiles_and_runs(&level(at));
        assert!(matches!(
            refused(&level(at + 1)),
            ExprError::Depth {
                limit: MAX_DEPTH,
                ..
            }
        ));
        assert!(at * 3 <= MAX_DEPTH && (at + 1) * 3 + 1 > MAX_DEPTH, "{at}");
    }

    #[test]
    fn macros_nest_up_to_the_limit_and_chain_freely() {
        let macros = |n: usize| {
            let mut s = "x0".to_string();
            for i in (0..n).rev() {
                s = format!("[{i}].map(x{i}, {s})");
            }
            s
        };
        assert_eq!(compiles_and_runs(&macros(MAX_MACRO_NESTING)), json!([[0]]));
        assert_eq!(
            refused(&macros(MAX_MACRO_NESTING + 1)),
            ExprError::MacroNesting {
                depth: MAX_MACRO_NESTING + 1,
                limit: MAX_MACRO_NESTING
            }
        );
        // In a loop condition (all/exists) as in a step.
        assert!(matches!(
            refused("[1].all(x, [2].exists(y, [3].all(z, x < z)))"),
            ExprError::MacroNesting { depth: 3, .. }
        ));
        assert!(matches!(
            refused(&macros(500)),
            ExprError::TooLong { .. } | ExprError::Depth { .. } | ExprError::Nesting { .. }
        ));
        // What a macro iterates, and macros one after another, do not nest: their costs add.
        let chained = format!("[1, 2, 3]{}", ".map(x, x * 2).filter(x, x > 2)".repeat(6));
        assert_eq!(compiles_and_runs(&chained), json!([128, 192]));
        compiles_and_runs("[1].map(x, [2].map(y, y)).map(l, l.map(z, z + 1))");
    }

    #[test]
    fn strings_and_comments_do_not_count() {
        let s = format!(
            "'{}' + \"{}\" + r'''{}''' // {}",
            "(".repeat(500),
            "[".repeat(500),
            "\\\\".repeat(100),
            "(".repeat(500)
        );
        Expression::compile(&s).unwrap();
        let e = Expression::compile(&format!("'{}' + \"{}\"", "(".repeat(500), "[".repeat(500)))
            .unwrap();
        assert_eq!(e.source.len(), 1007);
        Expression::compile(&format!(
            "size('{}') > 0 // {}",
            "((".repeat(100),
            "!".repeat(100)
        ))
        .unwrap();
    }

    #[test]
    fn standard_macros_bind_their_variables() {
        let mut s = RunState::new(json!({"xs": [1, 2, 3], "m": {"k": 1}}));
        s.merge("s", &json!({"x": 5}), &[]);
        for (src, want) in [
            ("input.xs.filter(x, x > 1)", json!([2, 3])),
            ("input.xs.map(x, x * 2)", json!([2, 4, 6])),
            ("input.xs.map(x, x > 1, x * 10)", json!([20, 30])),
            ("input.xs.exists(x, x == 2)", json!(true)),
            ("input.xs.all(x, x > 0)", json!(true)),
            ("input.xs.exists_one(x, x > 2)", json!(true)),
            ("has(input.m.k) && !has(input.m.z)", json!(true)),
            (
                "input.xs.map(x, input.xs.filter(y, y < x).size())",
                json!([0, 1, 2]),
            ),
            ("nodes.s.x * 2", json!(10)),
        ] {
            let e = Expression::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert_eq!(s.eval(&e).unwrap(), want, "{src}");
        }
        // A comprehension variable is bound only inside its macro.
        assert_eq!(
            refused("input.xs.map(x, x) + [x]"),
            ExprError::UnknownVariable("x".into())
        );
        assert_eq!(
            refused("input.xs.filter(x, y > 1)"),
            ExprError::UnknownVariable("y".into())
        );
    }

    #[test]
    fn json_numbers_map_to_int_uint_and_double() {
        assert_eq!(to_cel(&json!(5)), cel::Value::Int(5));
        assert_eq!(to_cel(&json!(-5)), cel::Value::Int(-5));
        assert_eq!(to_cel(&json!(i64::MAX)), cel::Value::Int(i64::MAX));
        assert_eq!(
            to_cel(&json!(i64::MAX as u64 + 1)),
            cel::Value::UInt(i64::MAX as u64 + 1)
        );
        assert_eq!(to_cel(&json!(2.5)), cel::Value::Float(2.5));
        assert_eq!(to_cel(&json!(5.0)), cel::Value::Float(5.0));
        let s = RunState::new(json!({"n": 5, "f": 2.5, "big": u64::MAX}));
        let eval = |src: &str| s.eval(&Expression::compile(src).unwrap());
        assert_eq!(eval("input.n * 2 + 1").unwrap(), json!(11));
        assert_eq!(eval("input.f * 2.0").unwrap(), json!(5.0));
        assert_eq!(eval("input.n < 10 && input.n > -1").unwrap(), json!(true));
        assert_eq!(eval("input.big").unwrap(), json!(u64::MAX));
        assert_eq!(eval("double(input.n) * input.f").unwrap(), json!(12.5));
        assert!(eval("input.n * 2.0").unwrap_err().reason.contains("mul"));
    }

    /// Evaluated in place on a stack only just above what `in_place_need` asks for, the
    /// costliest macro-free shapes the limits admit (documents `MAX_JSON_DEPTH` deep compared,
    /// rebuilt and returned; brackets, operators and unary runs nested to the limits) must fit:
    /// an estimate too small overflows the stack and aborts the test process (as it did with the
    /// constants cut to 0 and 512 bytes a level). Measured in a debug build, each of these used
    /// under 128 KiB, where the estimate asks 2.7–5.8 MiB.
    #[test]
    fn in_place_evaluation_fits_the_stack_it_asks_for() {
        let mut deep = serde_json::json!(1);
        for _ in 0..crate::sandbox::MAX_JSON_DEPTH - 1 {
            deep = serde_json::json!([deep]);
        }
        let nodes = serde_json::json!({"a": {"deep": deep.clone()}, "b": {"deep": deep}});
        let brackets = format!(
            "{}nodes.a.deep{}",
            "[".repeat(MAX_NESTING - 1),
            "]".repeat(MAX_NESTING - 1)
        );
        let sources = [
            "nodes.a.deep == nodes.b.deep".to_string(),
            "[nodes.a.deep, nodes.b.deep, {'k': nodes.a.deep}]".to_string(),
            "nodes.a.deep[0][0][0] + nodes.b.deep[0][0]".to_string(),
            brackets,
            format!(
                "{}1{}",
                "(".repeat(MAX_NESTING - 1),
                ")".repeat(MAX_NESTING - 1)
            ),
            format!("1{}", " + 1".repeat(MAX_OPERATORS)),
            format!(
                "{}nodes.a.deep[0]{}",
                "(".repeat(MAX_NESTING - 1),
                " + [1])".repeat(MAX_NESTING - 1)
            ),
            format!("{}size(nodes.a.deep)", "-".repeat(MAX_UNARY)),
            format!(
                "{}nodes.a.deep{}",
                "size([".repeat(MAX_NESTING / 2 - 1),
                "])".repeat(MAX_NESTING / 2 - 1)
            ),
        ];
        for src in sources {
            let e = Expression::compile(&src).unwrap();
            let vars = [
                ("input", to_cel(&serde_json::json!({}))),
                ("nodes", to_cel(&nodes)),
                ("state", to_cel(&serde_json::json!({}))),
            ];
            let need = e.in_place_need(&vars).expect("macro-free");
            let env = Arc::new(cel::Env::stdlib());
            let (result, in_place) = std::thread::Builder::new()
                .stack_size(need + (16 << 10))
                .spawn(move || (e.eval(&env, vars), IN_PLACE.with(|n| n.get())))
                .unwrap()
                .join()
                .expect("the evaluation must fit the stack it asked for");
            assert_eq!(in_place, 1, "{src} ran in place");
            assert!(result.is_ok(), "{src}: {result:?}");
        }
    }

    #[test]
    fn json_depth_counts_levels_without_recursion() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}]})), 4);
        let mut v = json!(1);
        for _ in 0..100_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(json_depth(&v), 100_000);
        // Dropping it recursively would overflow; take it apart level by level.
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }
}
