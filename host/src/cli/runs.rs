//! `sandgraph runs list|show|events` and `sandgraph journal gc`: read and tidy the journal from
//! the command line. Reading never changes a run; `gc` only drops finished runs.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};

use super::run::JournalArgs;
use crate::journal::{Event, Journal, PayloadRef, RunId, RunStatus};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// One line per run: id, status, graph, created, events.
    List {
        #[command(flatten)]
        journal: JournalArgs,
    },
    /// A run's steps with attempts, durations and outcomes; with --format, its graph drawn
    /// with each node coloured by its state in the run.
    Show {
        run: String,
        #[arg(long, value_enum)]
        format: Option<super::graph::PictureFormat>,
        #[command(flatten)]
        journal: JournalArgs,
    },
    /// Every journal event of a run as JSON lines.
    Events {
        run: String,
        #[command(flatten)]
        journal: JournalArgs,
    },
    /// Approve a step awaiting approval (`approval: required`); `sandgraph resume <run>` then
    /// continues a run no host is holding.
    Approve {
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        journal: JournalArgs,
    },
    /// Reject a step awaiting approval: the run fails with the comment when it continues.
    Reject {
        run: String,
        step: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        journal: JournalArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Remove finished runs last touched longer ago than --older-than, and unreferenced payloads.
    Gc {
        /// e.g. `30m`, `12h`, `7d`.
        #[arg(long)]
        older_than: String,
        #[command(flatten)]
        journal: JournalArgs,
    },
    /// Copy this journal (--journal, e.g. a sled directory) into another (--to, e.g. a
    /// postgres:// URL): events, summaries, payloads, graphs, tools and idempotency keys,
    /// verbatim. Run it with the hosts of both stopped. Idempotent (run it again after an
    /// interruption); refuses to overwrite different content; verified by counts and digests.
    /// Unfinished runs are queued in a PostgreSQL target for the replicas to resume.
    Migrate {
        /// The target journal: a directory or a postgres:// URL.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        journal: JournalArgs,
    },
}

pub fn runs(cmd: RunsCommand) -> Result<String, String> {
    match cmd {
        RunsCommand::List { journal } => list(&journal.open()?),
        RunsCommand::Show {
            run,
            format: None,
            journal,
        } => show(&journal.open()?, parse(&run)?),
        RunsCommand::Show {
            run,
            format: Some(format),
            journal,
        } => show_picture(&journal.open()?, parse(&run)?, format),
        RunsCommand::Events { run, journal } => events(&journal.open()?, parse(&run)?),
        RunsCommand::Approve {
            run,
            step,
            comment,
            journal,
        } => decide(&journal, &run, &step, true, comment),
        RunsCommand::Reject {
            run,
            step,
            comment,
            journal,
        } => decide(&journal, &run, &step, false, comment),
    }
}

fn decide(
    args: &JournalArgs,
    run: &str,
    step: &str,
    approved: bool,
    comment: Option<String>,
) -> Result<String, String> {
    let id = parse(run)?;
    let journal = args.open()?;
    // A run in the replicas' queue is written by the replica executing it only: the decision
    // is checked here and left for that replica (or the next to claim the run) to journal.
    if let Some(url) = args.journal.as_ref().and_then(|p| p.to_str())
        && crate::journal::is_database_url(url)
    {
        let queue = crate::journal::queue::RunQueue::open(
            url,
            "cli-decide",
            std::time::Duration::from_secs(15),
        )
        .map_err(|e| e.to_string())?;
        if queue.holds(id).map_err(|e| e.to_string())? {
            crate::graph::engine::check_decision(&journal, id, step).map_err(|e| e.to_string())?;
            queue
                .send(
                    id,
                    &crate::journal::queue::Command::Decide {
                        step: step.to_owned(),
                        approved,
                        comment,
                    },
                )
                .map_err(|e| e.to_string())?;
            return Ok(format!(
                "step '{step}' of run {id} {}; the replica executing the run carries on with it",
                if approved { "approved" } else { "rejected" }
            ));
        }
    }
    crate::graph::engine::record_decision(&journal, id, step, approved, comment)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "step '{step}' of run {id} {}; continue it with: sandgraph resume {id}",
        if approved { "approved" } else { "rejected" }
    ))
}

pub fn journal(cmd: JournalCommand) -> Result<String, String> {
    match cmd {
        JournalCommand::Gc {
            older_than,
            journal,
        } => {
            let age: Duration = humantime::parse_duration(&older_than).map_err(|e| {
                format!("--older-than `{older_than}`: {e}; write e.g. 30m, 12h or 7d")
            })?;
            let r = journal.open()?.gc(age).map_err(|e| e.to_string())?;
            Ok(format!(
                "removed {} finished runs ({} events) and {} payloads",
                r.runs, r.events, r.blobs
            ))
        }
        JournalCommand::Migrate { to, journal } => {
            let from = journal.open()?;
            let target = JournalArgs {
                journal: Some(to.clone().into()),
            }
            .open()?;
            let r = crate::journal::migrate::migrate(&from, &target).map_err(|e| e.to_string())?;
            let mut queued = 0;
            if crate::journal::is_database_url(&to) && !r.unfinished.is_empty() {
                let q = crate::journal::queue::RunQueue::open(
                    &to,
                    "journal-migrate",
                    std::time::Duration::from_secs(15),
                )
                .map_err(|e| e.to_string())?;
                for run in &r.unfinished {
                    q.enqueue(*run).map_err(|e| e.to_string())?;
                    queued += 1;
                }
            }
            Ok(format!(
                "migrated {} runs from {} to {}: {} events copied ({} already there), {} payloads copied ({} already there), {} graph/tool/key records copied ({} already there); verified: same events on both sides (sha256 {}){}",
                r.runs,
                from.describe(),
                target.describe(),
                r.events_copied,
                r.events_present,
                r.blobs_copied,
                r.blobs_present,
                r.records_copied,
                r.records_present,
                r.events_digest,
                if queued > 0 {
                    format!("; {queued} unfinished runs queued for the replicas to resume")
                } else if !r.unfinished.is_empty() {
                    format!(
                        "; {} unfinished runs resume when a host opens the target",
                        r.unfinished.len()
                    )
                } else {
                    String::new()
                }
            ))
        }
    }
}

fn parse(run: &str) -> Result<RunId, String> {
    RunId::parse(run).map_err(|e| e.to_string())
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn list(journal: &Journal) -> Result<String, String> {
    let runs = journal.runs().map_err(|e| e.to_string())?;
    let mut out = vec![format!(
        "{:<32}  {:<9}  {:<24}  {:<24}  {:>6}",
        "RUN", "STATUS", "GRAPH", "CREATED", "EVENTS"
    )];
    for r in runs {
        out.push(format!(
            "{:<32}  {:<9}  {:<24}  {:<24}  {:>6}",
            r.run.to_string(),
            r.status.as_str(),
            r.graph_name,
            time(r.created_ms),
            r.events
        ));
    }
    Ok(out.join("\n"))
}

#[derive(Default)]
struct StepRow {
    node: String,
    first_start: Option<u64>,
    end: Option<u64>,
    attempts: u32,
    outcome: String,
}

/// `runs show --format`: the run's pinned graph, its nodes coloured by what they did.
fn show_picture(
    journal: &Journal,
    run: RunId,
    format: super::graph::PictureFormat,
) -> Result<String, String> {
    let records = journal.events(run).map_err(|e| e.to_string())?;
    let compiled = crate::graph::render::pinned_graph(journal, &records)
        .map_err(|e| format!("run {run}: {e}"))?;
    let runs = crate::graph::render::node_runs(&records);
    Ok(super::graph::picture(&compiled, format, Some(&runs))
        .trim_end()
        .to_owned())
}

fn show(journal: &Journal, run: RunId) -> Result<String, String> {
    let records = journal.events(run).map_err(|e| e.to_string())?;
    let mut header = Vec::new();
    let mut steps: BTreeMap<u64, String> = BTreeMap::new();
    let mut rows: BTreeMap<String, StepRow> = BTreeMap::new();
    let mut status = RunStatus::Running;
    let mut created = 0;
    let mut ended = None;
    let mut error = None;
    for r in &records {
        match &r.event {
            Event::RunCreated {
                graph_name,
                graph_digest,
                components,
                ..
            } => {
                created = r.at_ms;
                header.push(format!("run       {run}"));
                header.push(format!("graph     {graph_name} (sha256:{graph_digest})"));
                for c in components {
                    header.push(format!("component {} ({})", c.name, c.digest));
                }
            }
            Event::StepScheduled { step, node, .. } => {
                steps.insert(r.seq, step.clone());
                rows.entry(step.clone()).or_default().node = node.clone();
                rows.entry(step.clone()).or_default().outcome = "scheduled".into();
            }
            Event::StepStarted { step, attempt } => {
                let row = rows.entry(step.clone()).or_default();
                row.first_start.get_or_insert(r.at_ms);
                row.attempts = row.attempts.max(*attempt);
                row.outcome = "running".into();
            }
            Event::StepCompleted { step, attempt, .. } => {
                let row = rows.entry(step.clone()).or_default();
                row.end = Some(r.at_ms);
                row.attempts = row.attempts.max(*attempt);
                row.outcome = "completed".into();
            }
            Event::StepFailed {
                step,
                attempt,
                kind,
                message,
                retry_in_ms,
            } => {
                let row = rows.entry(step.clone()).or_default();
                row.attempts = row.attempts.max(*attempt);
                if retry_in_ms.is_none() {
                    row.end = Some(r.at_ms);
                    row.outcome = format!("failed ({kind}): {message}");
                } else {
                    row.outcome = format!("retrying after ({kind}): {message}");
                }
            }
            Event::RunFinished {
                status: s,
                error: e,
                ..
            } => {
                status = *s;
                ended = Some(r.at_ms);
                error = e.clone();
            }
            Event::StepAwaitingApproval { step, .. } => {
                rows.entry(step.clone()).or_default().outcome = "awaiting approval".into();
            }
            Event::StepApproval {
                step,
                approved,
                comment,
            } => {
                rows.entry(step.clone()).or_default().outcome = format!(
                    "{}{}",
                    if *approved { "approved" } else { "rejected" },
                    comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                );
            }
            Event::Crossing { .. } | Event::WorkspaceSnapshot { .. } | Event::StepAudit { .. } => {}
        }
    }
    let (usage, total) = crate::journal::usage::model_usage(&records);
    header.push(format!("status    {status}"));
    if total.model_calls > 0 {
        header.push(format!(
            "model     {} calls, {} tokens in, {} tokens out, {} ms model time ({:.1} tok/s)",
            total.model_calls,
            total.input_tokens,
            total.output_tokens,
            total.model_ms,
            total.tokens_per_second()
        ));
    }
    header.push(format!("created   {}", time(created)));
    if let Some(end) = ended {
        header.push(format!("duration  {} ms", end.saturating_sub(created)));
    }
    if let Some(e) = error {
        header.push(format!("error     {e}"));
    }
    header.push(String::new());
    header.push(format!(
        "{:<24}  {:<16}  {:>8}  {:>10}  {:>13}  OUTCOME",
        "STEP", "NODE", "ATTEMPTS", "DURATION", "TOKENS IN/OUT"
    ));
    for step in steps.values() {
        let Some(row) = rows.get(step) else { continue };
        let took = match (row.first_start, row.end) {
            (Some(s), Some(e)) => format!("{} ms", e.saturating_sub(s)),
            _ => "-".into(),
        };
        let tokens = usage.get(step).map_or("-".to_owned(), |u| {
            format!("{}/{}", u.input_tokens, u.output_tokens)
        });
        header.push(format!(
            "{:<24}  {:<16}  {:>8}  {:>10}  {:>13}  {}",
            step, row.node, row.attempts, took, tokens, row.outcome
        ));
    }
    Ok(header.join("\n"))
}

fn events(journal: &Journal, run: RunId) -> Result<String, String> {
    let records = journal.events(run).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for r in records {
        let event = serde_json::to_value(&r.event).map_err(|e| e.to_string())?;
        let line = json!({"seq": r.seq, "at": time(r.at_ms), "event": readable(journal, event)});
        out.push(line.to_string());
    }
    Ok(out.join("\n"))
}

/// Payload references as text: small UTF-8 payloads inline, others as their digest and size.
fn readable(journal: &Journal, v: Value) -> Value {
    match v {
        Value::Object(m)
            if m.len() == 1 && (m.contains_key("Inline") || m.contains_key("Blob")) =>
        {
            let Ok(r) = serde_json::from_value::<PayloadRef>(Value::Object(m.clone())) else {
                return Value::Object(m);
            };
            match (&r, journal.payload(&r)) {
                (_, Ok(bytes)) if bytes.len() <= 4096 => match String::from_utf8(bytes) {
                    Ok(s) => Value::String(s),
                    Err(e) => json!({"bytes": e.into_bytes().len()}),
                },
                (PayloadRef::Inline(_), Ok(bytes)) => json!({"bytes": bytes.len()}),
                (PayloadRef::Blob(d), Ok(bytes)) => {
                    json!({"sha256": hex::encode(d), "bytes": bytes.len()})
                }
                (PayloadRef::Blob(d), Err(e)) => {
                    json!({"sha256": hex::encode(d), "error": e.to_string()})
                }
                (PayloadRef::Inline(_), Err(e)) => json!({"error": e.to_string()}),
            }
        }
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, readable(journal, v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| readable(journal, v)).collect()),
        other => other,
    }
}
