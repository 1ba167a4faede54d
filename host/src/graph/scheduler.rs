//! Which steps run next: a deterministic machine fed with step completions in journal order.
//! The live run and a resume after a crash drive the same machine with the same completions, so
//! both arrive at the same activations, step names and inputs without storing any snapshot.
//!
//! Rules:
//! - Entry nodes are activated at start. When a step completes, its output is merged into the run
//!   state and its outbound edges are evaluated in declaration order; a true edge signals its
//!   target, a false one (from a node that cannot run again) is dead.
//! - A join (two or more forward inbound edges) fires once every forward inbound edge has been
//!   signalled or is dead and at least one was signalled; with all dead it is dead itself, and so
//!   are its outbound edges. Other nodes fire on each signal (loops come back through back edges).
//! - When nothing runs any more, joins still waiting on edges that can no longer arrive (a branch
//!   of a loop, a condition that was false) fire with what they received.
//! - A step is named `<node>#<iteration>`; `maxIterations` bounds a node's iterations and
//!   `maxSteps` the run's total, both as errors rather than silent stops.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use petgraph::Direction;
use petgraph::stable_graph::{EdgeIndex, NodeIndex};
use petgraph::visit::EdgeRef;
use serde_json::{Map, Value};

use super::compile::CompiledGraph;
use super::expr::ExprError;
use super::state::{EvalError, RunState};
use super::validate::abbreviate;

/// An expression of a pinned graph that cannot run (it predates a limit): the step fails.
fn refused_error(source: &str, refused: &ExprError) -> EvalError {
    EvalError {
        source_text: abbreviate(source),
        reason: format!("refused before running: it {refused}"),
    }
}

/// A node activated to run as one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// `<node>#<iteration>`.
    pub step: String,
    pub node: NodeIndex,
    pub node_id: String,
    pub iteration: u32,
    pub input: Value,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "node '{node}' would run {next} times but its maxIterations is {max}; the loop did not exit, check the condition on its back edge"
    )]
    IterationLimit { node: String, max: u32, next: u32 },
    #[error("the run reached its maxSteps limit of {max} steps")]
    StepLimit { max: u32 },
    #[error("node '{node}' input field '{field}': {source}")]
    Input {
        node: String,
        field: String,
        source: EvalError,
    },
    #[error("edge '{from} -> {to}': condition {source}")]
    Condition {
        from: String,
        to: String,
        source: EvalError,
    },
    #[error("step '{step}' completed but is not running; the journal does not match this graph")]
    UnknownStep { step: String },
}

pub struct Scheduler {
    graph: Arc<CompiledGraph>,
    pub state: RunState,
    /// Nodes on a cycle (they can run again, so their false edges are not final).
    on_cycle: HashSet<NodeIndex>,
    iterations: HashMap<NodeIndex, u32>,
    steps: u32,
    /// Activated steps not yet completed, by name.
    open: BTreeMap<String, NodeIndex>,
    /// For each join, the forward inbound edges signalled / dead since it last fired.
    arrived: HashMap<NodeIndex, HashSet<EdgeIndex>>,
    dead: HashMap<NodeIndex, HashSet<EdgeIndex>>,
    /// Nodes that will never run (all inbound paths dead).
    dead_nodes: HashSet<NodeIndex>,
    /// Completed steps, in completion order.
    completed: Vec<String>,
}

impl Scheduler {
    pub fn new(graph: Arc<CompiledGraph>, input: Value) -> Scheduler {
        let mut on_cycle = HashSet::new();
        for scc in petgraph::algo::tarjan_scc(&graph.graph) {
            let self_loop = scc.len() == 1 && graph.graph.contains_edge(scc[0], scc[0]);
            if scc.len() > 1 || self_loop {
                on_cycle.extend(scc);
            }
        }
        Scheduler {
            graph,
            state: RunState::new(input),
            on_cycle,
            iterations: HashMap::new(),
            steps: 0,
            open: BTreeMap::new(),
            arrived: HashMap::new(),
            dead: HashMap::new(),
            dead_nodes: HashSet::new(),
            completed: Vec::new(),
        }
    }

    pub fn graph(&self) -> &Arc<CompiledGraph> {
        &self.graph
    }

    /// Activates the entry nodes.
    pub fn start(&mut self) -> Result<Vec<Activation>, ScheduleError> {
        let mut out = Vec::new();
        for n in self.graph.entries.clone() {
            out.push(self.activate(n)?);
        }
        Ok(out)
    }

    /// Steps activated and not completed, by name.
    pub fn open_steps(&self) -> impl Iterator<Item = (&String, &NodeIndex)> {
        self.open.iter()
    }

    pub fn is_open(&self, step: &str) -> bool {
        self.open.contains_key(step)
    }

    /// Records `step`'s output and returns the steps it activates.
    pub fn complete(
        &mut self,
        step: &str,
        output: Value,
    ) -> Result<Vec<Activation>, ScheduleError> {
        let node = self
            .open
            .remove(step)
            .ok_or_else(|| ScheduleError::UnknownStep {
                step: step.to_owned(),
            })?;
        let cn = &self.graph.graph[node];
        let id = cn.spec.id.clone();
        let reducers = cn.reducers.clone();
        self.state.merge(&id, &output, &reducers);
        self.completed.push(step.to_owned());
        let mut out = Vec::new();
        let can_run_again = self.on_cycle.contains(&node);
        for edge in self.out_edges(node) {
            let target = self.graph.graph.edge_endpoints(edge).map(|(_, t)| t);
            let Some(target) = target else { continue };
            let e = &self.graph.graph[edge];
            let condition_error = |source| ScheduleError::Condition {
                from: id.clone(),
                to: self.graph.graph[target].spec.id.clone(),
                source,
            };
            let pass = match &e.when {
                Some(Ok(expr)) => self.state.condition(expr).map_err(condition_error)?,
                Some(Err(refused)) => {
                    return Err(condition_error(refused_error(
                        e.when_source.as_deref().unwrap_or(""),
                        refused,
                    )));
                }
                None => true,
            };
            if pass {
                self.signal(edge, target, &mut out)?;
            } else if !can_run_again {
                self.kill(edge, target, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Called when no step is open: fires joins still waiting for branches that can no longer
    /// arrive. An empty result means the run is finished.
    pub fn quiesce(&mut self) -> Result<Vec<Activation>, ScheduleError> {
        if !self.open.is_empty() {
            return Ok(Vec::new());
        }
        let mut waiting: Vec<NodeIndex> = self
            .arrived
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(n, _)| *n)
            .collect();
        waiting.sort();
        let mut out = Vec::new();
        for n in waiting {
            self.arrived.remove(&n);
            self.dead.remove(&n);
            out.push(self.activate(n)?);
        }
        Ok(out)
    }

    /// The run's output: the latest output of every sink node (no outbound edges) that ran,
    /// by node id; if no sink ran, of every node that ran.
    pub fn output(&self) -> Value {
        let g = &self.graph.graph;
        let sinks: Map<String, Value> = g
            .node_indices()
            .filter(|&n| g.edges_directed(n, Direction::Outgoing).next().is_none())
            .filter_map(|n| {
                let id = &g[n].spec.id;
                self.state.nodes.get(id).map(|v| (id.clone(), v.clone()))
            })
            .collect();
        if sinks.is_empty() {
            Value::Object(self.state.nodes.clone())
        } else {
            Value::Object(sinks)
        }
    }

    pub fn completed(&self) -> &[String] {
        &self.completed
    }

    /// Outbound edges in declaration order (petgraph lists them newest first).
    fn out_edges(&self, node: NodeIndex) -> Vec<EdgeIndex> {
        let mut edges: Vec<EdgeIndex> = self
            .graph
            .graph
            .edges_directed(node, Direction::Outgoing)
            .map(|e| e.id())
            .collect();
        edges.sort();
        edges
    }

    fn is_join_edge(&self, edge: EdgeIndex, target: NodeIndex) -> bool {
        self.graph
            .joins
            .get(&target)
            .is_some_and(|ins| ins.contains(&edge))
    }

    fn signal(
        &mut self,
        edge: EdgeIndex,
        target: NodeIndex,
        out: &mut Vec<Activation>,
    ) -> Result<(), ScheduleError> {
        if self.is_join_edge(edge, target) {
            self.arrived.entry(target).or_default().insert(edge);
            self.check_join(target, out)
        } else {
            self.dead_nodes.remove(&target);
            out.push(self.activate(target)?);
            Ok(())
        }
    }

    fn kill(
        &mut self,
        edge: EdgeIndex,
        target: NodeIndex,
        out: &mut Vec<Activation>,
    ) -> Result<(), ScheduleError> {
        if self.is_join_edge(edge, target) {
            self.dead.entry(target).or_default().insert(edge);
            self.check_join(target, out)
        } else if !self.on_cycle.contains(&target) {
            self.kill_node(target, out)
        } else {
            Ok(())
        }
    }

    fn kill_node(
        &mut self,
        node: NodeIndex,
        out: &mut Vec<Activation>,
    ) -> Result<(), ScheduleError> {
        if !self.dead_nodes.insert(node) {
            return Ok(());
        }
        for edge in self.out_edges(node) {
            if let Some((_, t)) = self.graph.graph.edge_endpoints(edge) {
                self.kill(edge, t, out)?;
            }
        }
        Ok(())
    }

    fn check_join(
        &mut self,
        node: NodeIndex,
        out: &mut Vec<Activation>,
    ) -> Result<(), ScheduleError> {
        let ins = self.graph.joins.get(&node).cloned().unwrap_or_default();
        let arrived = self.arrived.get(&node).cloned().unwrap_or_default();
        let dead = self.dead.get(&node).cloned().unwrap_or_default();
        if !ins.iter().all(|e| arrived.contains(e) || dead.contains(e)) {
            return Ok(());
        }
        self.arrived.remove(&node);
        self.dead.remove(&node);
        if arrived.is_empty() {
            self.kill_node(node, out)
        } else {
            out.push(self.activate(node)?);
            Ok(())
        }
    }

    fn activate(&mut self, node: NodeIndex) -> Result<Activation, ScheduleError> {
        let cn = &self.graph.graph[node];
        let id = cn.spec.id.clone();
        let next = self.iterations.get(&node).copied().unwrap_or(0) + 1;
        let max = match cn.max_iterations {
            Some(m) => m,
            None if self.on_cycle.contains(&node) => u32::MAX,
            None => 1,
        };
        if next > max {
            return Err(ScheduleError::IterationLimit {
                node: id,
                max,
                next,
            });
        }
        if let Some(max) = self.graph.max_steps
            && self.steps + 1 > max
        {
            return Err(ScheduleError::StepLimit { max });
        }
        let mut input = Map::new();
        for (field, expr) in &cn.input {
            let input_error = |source| ScheduleError::Input {
                node: id.clone(),
                field: field.clone(),
                source,
            };
            let value = match expr {
                Ok(expr) => self.state.eval(expr).map_err(input_error)?,
                Err(refused) => {
                    let source = cn.spec.input.get(field).map(String::as_str).unwrap_or("");
                    return Err(input_error(refused_error(source, refused)));
                }
            };
            input.insert(field.clone(), value);
        }
        self.iterations.insert(node, next);
        self.steps += 1;
        let step = format!("{id}#{next}");
        self.open.insert(step.clone(), node);
        Ok(Activation {
            step,
            node,
            node_id: id,
            iteration: next,
            input: Value::Object(input),
        })
    }
}
