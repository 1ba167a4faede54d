//! The run queue several hosts share on PostgreSQL (tables in `postgres.rs`'s schema).
//!
//! A submitted run is journaled, then queued. Each host claims queued runs with
//! `FOR UPDATE SKIP LOCKED` while it has a free run slot, and holds each claimed run under a
//! lease it renews on a heartbeat. A claim bumps the run's lease epoch, its fencing token: the
//! journal checks every write to a leased run against the epoch this host claimed (see
//! `postgres.rs`), so a host that lost the lease (paused, partitioned) can no longer write to
//! the run. A run whose lease ran out is claimable again, and its new owner resumes it from the
//! journal as a restarted host does. Cancel and approval decisions for a run another host
//! executes travel as commands its owner picks up on its heartbeat.
//!
//! Calls block (one connection, reconnected on the next call after it breaks): call them from
//! `spawn_blocking` in async code.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::postgres::{Pg, PostgresStore, db_error, redact, run_of};
use super::{JournalError, RunId};

/// A run this host claimed, with the epoch its writes are fenced by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub run: RunId,
    pub epoch: i64,
}

/// What another host asks of a run's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    Cancel,
    Decide {
        step: String,
        approved: bool,
        comment: Option<String>,
    },
}

/// The SQL counting runs waiting for a host: queued ones and ones whose lease ran out (what
/// KEDA's `postgresql` scaler is given).
pub const DEPTH_SQL: &str = "SELECT count(*) FROM sandgraph_leases WHERE state = 'queued' OR (state = 'running' AND lease_until < clock_timestamp())";

pub struct RunQueue {
    url: String,
    shown: String,
    /// This host's name in lease rows.
    owner: String,
    lease: Duration,
    /// Prepares each statement once, so a claim is one round trip.
    client: Mutex<Option<Pg>>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RunQueue {
    /// The queue in the database at `url` (its schema created or checked as the journal's is),
    /// for host `owner` holding runs for `lease` between heartbeats.
    pub fn open(url: &str, owner: &str, lease: Duration) -> Result<RunQueue, JournalError> {
        // Creates or checks the schema, under the same advisory lock the journal takes.
        drop(PostgresStore::open(url)?);
        let q = RunQueue {
            url: url.to_owned(),
            shown: redact(url),
            owner: owner.to_owned(),
            lease,
            client: Mutex::new(None),
        };
        q.with(|_| Ok(()))?;
        Ok(q)
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Runs `f` on the connection, connecting first when there is none or it broke.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Pg) -> Result<T, postgres::Error>,
    ) -> Result<T, JournalError> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(Pg::is_closed) {
            *slot = Some(Pg::connect(&self.url)?);
        }
        let c = slot.as_mut().expect("connected above");
        let r = f(c).map_err(|e| db_error(&self.shown, e));
        if c.is_closed() {
            *slot = None;
        }
        r
    }

    /// Queues journaled run `run` for whichever host claims it first.
    pub fn enqueue(&self, run: RunId) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sandgraph_leases (run, state) VALUES ($1, 'queued')
                 ON CONFLICT (run) DO NOTHING",
                &[&&run.0[..]],
            )
        })?;
        Ok(())
    }

    /// Queues journaled run `run`, claimed at once by this host unless runs queued before it
    /// (or runs whose lease ran out) are waiting for a host: a replica with a free run slot
    /// executes its own submission without a trip through the queue, and never ahead of older
    /// runs. One round trip. The claim, if it was taken; `None` when the run waits in the queue
    /// (or was queued already).
    pub fn enqueue_or_claim(&self, run: RunId) -> Result<Option<Claim>, JournalError> {
        let (owner, lease) = (self.owner.clone(), ms(self.lease));
        let row = self.with(|c| {
            c.query_opt(
                "INSERT INTO sandgraph_leases (run, state, owner, epoch, lease_until)
                 SELECT $1,
                        CASE WHEN w.waiting THEN 'queued' ELSE 'running' END,
                        CASE WHEN w.waiting THEN NULL ELSE $2 END,
                        CASE WHEN w.waiting THEN 0 ELSE 1 END,
                        CASE WHEN w.waiting THEN NULL
                             ELSE clock_timestamp() + $3::bigint * interval '1 millisecond' END
                 FROM (SELECT EXISTS (
                         SELECT 1 FROM sandgraph_leases
                         WHERE state = 'queued'
                            OR (state = 'running' AND lease_until < clock_timestamp())) AS waiting) w
                 ON CONFLICT (run) DO NOTHING
                 RETURNING state, epoch",
                &[&&run.0[..], &owner, &lease],
            )
        })?;
        Ok(row
            .filter(|r| r.get::<_, &str>(0) == "running")
            .map(|r| Claim {
                run,
                epoch: r.get(1),
            }))
    }

    /// Claims the oldest run that is queued or whose lease ran out, if any: it is this host's
    /// for one lease, under a new epoch.
    pub fn claim(&self) -> Result<Option<Claim>, JournalError> {
        Ok(self.claim_up_to(1)?.pop())
    }

    /// [`RunQueue::claim`] for up to `n` runs in one round trip (a host with `n` free run
    /// slots), oldest first; fewer when fewer wait.
    pub fn claim_up_to(&self, n: usize) -> Result<Vec<Claim>, JournalError> {
        let (owner, lease) = (self.owner.clone(), ms(self.lease));
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = self.with(|c| {
            c.query(
                "UPDATE sandgraph_leases l
                 SET state = 'running', owner = $1, epoch = l.epoch + 1,
                     lease_until = clock_timestamp() + $2::bigint * interval '1 millisecond'
                 WHERE l.run IN (
                     SELECT run FROM sandgraph_leases
                     WHERE state = 'queued' OR (state = 'running' AND lease_until < clock_timestamp())
                     ORDER BY queued_at
                     FOR UPDATE SKIP LOCKED
                     LIMIT $3)
                 RETURNING l.run, l.epoch, l.queued_at",
                &[&owner, &lease, &n],
            )
        })?;
        let mut claims: Vec<(std::time::SystemTime, Claim)> = rows
            .iter()
            .map(|r| {
                (
                    r.get(2),
                    Claim {
                        run: run_of(r.get::<_, &[u8]>(0)),
                        epoch: r.get(1),
                    },
                )
            })
            .collect();
        claims.sort_by_key(|(queued, _)| *queued);
        Ok(claims.into_iter().map(|(_, c)| c).collect())
    }

    /// Renews the lease of each claim this host still holds; returns the claims it lost (their
    /// epoch moved on, or the row is gone). One row per statement, so a renewal never holds one
    /// lease row locked while it waits for another.
    pub fn renew(&self, claims: &[Claim]) -> Result<Vec<Claim>, JournalError> {
        let (owner, lease) = (self.owner.clone(), ms(self.lease));
        self.with(|c| {
            let mut lost = Vec::new();
            for claim in claims {
                let n = c.execute(
                    "UPDATE sandgraph_leases
                     SET lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
                     WHERE run = $1 AND epoch = $2 AND owner = $4 AND state = 'running'",
                    &[&&claim.run.0[..], &claim.epoch, &lease, &owner],
                )?;
                if n == 0 {
                    lost.push(*claim);
                }
            }
            Ok(lost)
        })
    }

    /// Marks a claimed run finished (its end is in the journal): it is never claimed again.
    pub fn finish(&self, claim: Claim) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE sandgraph_leases SET state = 'done', lease_until = NULL
                 WHERE run = $1 AND epoch = $2",
                &[&&claim.run.0[..], &claim.epoch],
            )
        })?;
        Ok(())
    }

    /// Hands a claimed, unfinished run back: claimable by any host after `after`.
    pub fn release(&self, claim: Claim, after: Duration) -> Result<(), JournalError> {
        let after = ms(after);
        self.with(|c| {
            c.execute(
                "UPDATE sandgraph_leases
                 SET lease_until = clock_timestamp() + $3::bigint * interval '1 millisecond'
                 WHERE run = $1 AND epoch = $2 AND state = 'running'",
                &[&&claim.run.0[..], &claim.epoch, &after],
            )
        })?;
        Ok(())
    }

    /// Whether `run` is in the queue (and so executed by whichever host holds it).
    pub fn holds(&self, run: RunId) -> Result<bool, JournalError> {
        self.with(|c| {
            c.query_opt(
                "SELECT 1 FROM sandgraph_leases WHERE run = $1",
                &[&&run.0[..]],
            )
        })
        .map(|r| r.is_some())
    }

    /// Leaves `command` for `run`'s owner (now or the next host to claim it).
    pub fn send(&self, run: RunId, command: &Command) -> Result<(), JournalError> {
        let text = serde_json::to_string(command).expect("commands serialise");
        self.with(|c| {
            c.execute(
                "INSERT INTO sandgraph_commands (run, command) VALUES ($1, $2)",
                &[&&run.0[..], &text],
            )
        })?;
        Ok(())
    }

    /// Takes the commands left for `runs`, oldest first (an unreadable one is dropped).
    pub fn take_commands(&self, runs: &[RunId]) -> Result<Vec<(RunId, Command)>, JournalError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&[u8]> = runs.iter().map(|r| &r.0[..]).collect();
        let rows = self.with(|c| {
            c.query(
                "DELETE FROM sandgraph_commands WHERE run = ANY($1) RETURNING id, run, command",
                &[&ids],
            )
        })?;
        let mut out: Vec<(i64, RunId, Command)> = rows
            .iter()
            .filter_map(|r| {
                let cmd = serde_json::from_str(r.get::<_, &str>(2)).ok()?;
                Some((r.get::<_, i64>(0), run_of(r.get::<_, &[u8]>(1)), cmd))
            })
            .collect();
        out.sort_by_key(|(id, _, _)| *id);
        Ok(out.into_iter().map(|(_, r, c)| (r, c)).collect())
    }

    /// Runs waiting for a host (see [`DEPTH_SQL`]).
    pub fn depth(&self) -> Result<i64, JournalError> {
        self.with(|c| c.query_one(DEPTH_SQL, &[])).map(|r| r.get(0))
    }
}

impl Drop for RunQueue {
    /// The client's runtime must not be dropped on an async worker thread: the connection is
    /// closed on a thread of its own.
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(c) = client {
            let _ = std::thread::Builder::new()
                .name("sandgraph-queue-close".into())
                .spawn(move || drop(c));
        }
    }
}
