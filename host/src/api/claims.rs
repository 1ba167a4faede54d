//! Runs on a shared (PostgreSQL) journal: this replica claims queued runs while it has free run
//! slots, renews the leases of the runs it executes, gives up a run whose lease another replica
//! took, carries out the cancels and approval decisions other replicas forwarded, and hands its
//! runs back when it stops. The queue and fencing themselves are `journal::queue`'s.

use std::sync::Arc;
use std::time::Duration;

use crate::graph::engine::EngineError;
use crate::journal::queue::{Claim, Command, RunQueue};
use crate::journal::{JournalError, RunId};

use super::State;

/// How often a replica with free slots looks for runs other replicas queued (its own
/// submissions wake it at once).
pub const POLL: Duration = Duration::from_millis(100);

/// How often readers following another replica's run re-read the journal when the database
/// notifies them of appends anyway (a notification can be lost while the listener reconnects).
pub const SAFETY_POLL: Duration = Duration::from_secs(2);

/// The most runs one claim takes (each needs a free run slot).
const CLAIM_BATCH: usize = 16;

/// A run that ended without its end in the journal (the database went away mid-run) is
/// claimable again after this.
const RETRY_AFTER: Duration = Duration::from_millis(500);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JournalError::Flush(format!("a queue call ended abnormally: {e}")))?
}

/// [`blocking`], answering an error once `within` has passed without an answer (the call itself
/// goes on in its thread until the connection's own timeouts end it).
async fn bounded<T: Send + 'static>(
    within: Duration,
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::time::timeout(within, blocking(f))
        .await
        .unwrap_or_else(|_| {
            Err(JournalError::Flush(format!(
                "no answer from the database within {within:?}"
            )))
        })
}

/// Claims runs while this replica has free slots, until shutdown.
pub(crate) async fn claim_loop(state: Arc<State>, queue: Arc<RunQueue>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let permit = tokio::select! {
            p = state.admission.admit() => match p {
                Ok(p) => p,
                Err(retry) => {
                    tokio::time::sleep(retry.0).await;
                    continue;
                }
            },
            _ = state.shutdown.cancelled() => return,
        };
        // Every slot free now goes into the same claim (up to a bound), so a backlog is
        // claimed a batch per round trip rather than a run per round trip.
        let mut permits = vec![permit];
        while permits.len() < CLAIM_BATCH {
            match state.admission.try_admit() {
                Some(p) => permits.push(p),
                None => break,
            }
        }
        let q = queue.clone();
        let n = permits.len();
        match blocking(move || q.claim_up_to(n)).await {
            Ok(claims) if !claims.is_empty() => {
                backoff = Duration::from_millis(100);
                for (claim, permit) in claims.into_iter().zip(permits.drain(..)) {
                    // Loading the run (its events, graph and tools) goes on beside the next
                    // claim, so one slow start does not hold back the runs queued behind it.
                    let (state, queue) = (state.clone(), queue.clone());
                    tokio::spawn(async move { start_claimed(&state, &queue, claim, permit).await });
                }
            }
            Ok(_) => {
                drop(permits);
                tokio::select! {
                    _ = state.claim_wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = state.shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                drop(permits);
                tracing::warn!(error = %e, "claiming runs failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = state.shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Executes a claimed run from its journal: from its start, or mid-step where the replica that
/// held it before stopped.
async fn start_claimed(
    state: &Arc<State>,
    queue: &Arc<RunQueue>,
    claim: Claim,
    permit: super::limits::AdmissionPermit,
) {
    let run = claim.run;
    state.journal.fence(run, claim.epoch);
    state
        .metrics
        .queue_wait
        .observe(permit.waited().as_secs_f64());
    match state.engine.resume_or_fail(run).await {
        Ok(handle) => {
            if claim.epoch > 1 {
                tracing::info!(run_id = %run, epoch = claim.epoch, "claimed a run another replica held before (its lease ran out or it was handed back)");
            } else {
                tracing::info!(run_id = %run, "claimed a queued run");
            }
            state
                .claims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(run, claim);
            let labels = super::run_labels(&state.journal, run);
            state.clone().supervise(handle, labels, Some(permit));
        }
        Err(e) => {
            // resume_or_fail ends unusable runs itself: what is left is the journal failing
            // under it (or something unexpected), and the run goes back for another try.
            match &e {
                EngineError::Journal(_) => {
                    tracing::warn!(run_id = %run, error = %e, "a claimed run cannot be read; handing it back")
                }
                _ => {
                    tracing::error!(run_id = %run, error = %e, "a claimed run cannot start; handing it back")
                }
            }
            state.journal.unfence(run);
            let q = queue.clone();
            let _ = blocking(move || q.release(claim, RETRY_AFTER)).await;
        }
    }
}

/// After a claimed run's task ended: finished in the journal → done in the queue; otherwise
/// (its lease was lost, or the journal failed under it) handed back for another try.
pub(crate) async fn settle(state: &Arc<State>, run: RunId) {
    let Some(queue) = state.queue.clone() else {
        return;
    };
    let Some(claim) = state
        .claims
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&run)
    else {
        return;
    };
    let journal = state.journal.clone();
    let finished = blocking(move || journal.run_summary(run).map(|s| s.status.is_finished()))
        .await
        .unwrap_or(false);
    let lost = state.journal.check_fence(run).is_err();
    state.journal.unfence(run);
    if lost {
        // Another replica holds it now; nothing to hand back.
        return;
    }
    let q = queue.clone();
    let done = if finished {
        blocking(move || q.finish(claim)).await
    } else {
        tracing::warn!(run_id = %run, "run stopped before its end was journaled; handing it back");
        blocking(move || q.release(claim, RETRY_AFTER)).await
    };
    if let Err(e) = done {
        // The lease runs out and another replica finds the run finished (or resumes it).
        tracing::warn!(run_id = %run, error = %e, "updating the run queue failed");
    }
    state.claim_wake.notify_one();
}

/// Renews this replica's leases every third of the lease and stops runs whose lease it lost (or
/// could not renew for a whole lease), until shutdown.
pub(crate) async fn heartbeat(state: Arc<State>, queue: Arc<RunQueue>) {
    let mut tick = tokio::time::interval(queue.lease() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let claims: Vec<Claim> = state
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .copied()
            .collect();
        let q = queue.clone();
        let held = claims.clone();
        let started = tokio::time::Instant::now();
        // Bounded: a call stuck on an unreachable database (a partition drops packets without a
        // reset) must not keep this replica from noticing that its leases are running out.
        match bounded(queue.lease() / 3, move || q.renew(&held)).await {
            Ok(lost) => {
                renewed = started;
                for c in lost {
                    give_up(
                        &state,
                        c,
                        "another replica claimed it after this one's lease ran out",
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing run leases failed");
                // Cut off from the database for a whole lease: other replicas may hold these
                // runs now. Stop them here before doing more of their work twice.
                if renewed.elapsed() >= queue.lease() {
                    for c in &claims {
                        give_up(
                            &state,
                            *c,
                            "this replica could not renew its leases for a whole lease (the database is unreachable)",
                        );
                    }
                }
            }
        }
    }
}

/// Applies the cancel and approval decisions other replicas forwarded for the runs this one
/// holds, and exports the shared queue's depth, every third of a lease until shutdown. Apart
/// from [`heartbeat`]: these calls wait as long as the database takes (a command taken must be
/// applied, not dropped by a timeout), and must not delay the lease watch meanwhile.
pub(crate) async fn follow_commands(state: Arc<State>, queue: Arc<RunQueue>) {
    let mut tick = tokio::time::interval(queue.lease() / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let runs: Vec<RunId> = state
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| c.run)
            .collect();
        let q = queue.clone();
        match blocking(move || q.take_commands(&runs)).await {
            Ok(commands) => {
                for (run, command) in commands {
                    apply(&state, run, command).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading forwarded commands failed"),
        }
        let q = queue.clone();
        if let Ok(depth) = blocking(move || q.depth()).await {
            state.metrics.queue_depth.set(depth);
        }
    }
}

/// Stops executing `claim`'s run here: its writes are refused from now on, and it is cancelled
/// locally (what it would write on the way out is refused too).
fn give_up(state: &State, claim: Claim, why: &str) {
    tracing::warn!(run_id = %claim.run, epoch = claim.epoch, reason = why, "lost a run's lease; stopping it here");
    state.journal.fence_lost(claim.run, why.to_owned());
    cancel_here(state, claim.run);
}

/// Cancels `run` if this replica executes it; returns whether it does.
fn cancel_here(state: &State, run: RunId) -> bool {
    match state
        .active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&run)
    {
        Some(t) => {
            t.cancel();
            true
        }
        None => false,
    }
}

/// Carries out a command another replica forwarded for a run this one executes.
async fn apply(state: &Arc<State>, run: RunId, command: Command) {
    match command {
        Command::Cancel => {
            if cancel_here(state, run) {
                tracing::info!(run_id = %run, "run cancel requested (forwarded)");
            }
        }
        Command::Decide {
            step,
            approved,
            comment,
        } => {
            if let Err(e) = state.engine.decide(run, &step, approved, comment).await {
                tracing::warn!(run_id = %run, step = %step, error = %e, "a forwarded approval decision was refused");
            }
        }
    }
}

/// At shutdown: this replica's unfinished runs go back to the queue at once, for the other
/// replicas to take over without waiting for their leases to run out.
pub(crate) async fn hand_back(state: &Arc<State>) {
    let Some(queue) = state.queue.clone() else {
        return;
    };
    let claims: Vec<Claim> = state
        .claims
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, c)| c)
        .collect();
    for c in &claims {
        state
            .journal
            .fence_lost(c.run, "this replica stopped and handed it back".into());
    }
    if claims.is_empty() {
        return;
    }
    let n = claims.len();
    let q = queue.clone();
    match blocking(move || {
        for c in claims {
            q.release(c, Duration::ZERO)?;
        }
        Ok(())
    })
    .await
    {
        Ok(()) => tracing::info!(runs = n, "unfinished runs handed back to the queue"),
        Err(e) => {
            tracing::warn!(error = %e, "handing runs back failed; they are taken over when their leases run out")
        }
    }
}
