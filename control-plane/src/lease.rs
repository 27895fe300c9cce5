//! Leadership among control-plane replicas: exactly one replica schedules and assigns at a
//! time, the one holding the scheduling lease (a PostgreSQL advisory lock, see
//! [`crate::store::lease`]). On SQLite the one process always leads.
//!
//! [`Lease::start`] keeps the lease: a follower tries to take it every [`TICK`]; the leader
//! proves its session alive every [`TICK`] and steps down at once when a round trip fails or
//! takes longer than [`ROUND_TRIP_LIMIT`], closing the session so the lock is released. A
//! leader thus stops within [`STEP_DOWN_WITHIN`] (3 s) of its session's end, however it ended
//! (PostgreSQL restarted, the session terminated, the path lost), and a replica that takes the
//! lock waits [`TAKEOVER_WAIT`], that and a tick of margin for a busy scheduler, before it
//! acts: two live replicas never lead at once. (A process
//! frozen for longer, e.g. stopped by a debugger, is not covered: there are no fencing
//! tokens.) When the path is lost, PostgreSQL keeps the silent holder's lock for its keepalive
//! timeout (~10 s) before another replica can take it. Work that a lead switch can cut (a
//! notification in flight) is redone by the next leader: deliveries are at least once.
//!
//! [`lead`] runs a worker only while this replica leads and aborts it when leadership is lost.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::counters::Counters;
use crate::store::Store;

/// How often a follower tries to take the lease and the leader proves it still holds it.
pub const TICK: Duration = Duration::from_secs(1);

/// A lease round trip slower than this counts as a lost session: the leader steps down.
pub const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(2);

/// A leader whose session ended has stepped down by this long after the end: its next round
/// trip comes within a [`TICK`] and fails within [`ROUND_TRIP_LIMIT`]. A replica that takes
/// the lock waits longer than this before it leads ([`TAKEOVER_WAIT`]).
pub const STEP_DOWN_WITHIN: Duration = TICK.saturating_add(ROUND_TRIP_LIMIT);

/// How long a replica that took the lock waits before it leads: [`STEP_DOWN_WITHIN`] and a
/// [`TICK`] of margin for timers that fire late on a busy machine.
pub const TAKEOVER_WAIT: Duration = STEP_DOWN_WITHIN.saturating_add(TICK);

/// Whether this replica leads, as it changes.
#[derive(Clone)]
pub struct Lease {
    leading: Arc<watch::Sender<bool>>,
    shared: bool,
    /// Whether another replica held the lock at this replica's last try (then that one
    /// leads, or is about to).
    others_hold: Arc<std::sync::atomic::AtomicBool>,
}

impl Lease {
    /// A lease that is always held (SQLite, a single process, and tests of one process).
    pub fn always() -> Lease {
        Lease {
            leading: Arc::new(watch::Sender::new(true)),
            shared: false,
            others_hold: Arc::default(),
        }
    }

    /// Keeps the lease on `store` from now on: on PostgreSQL a task takes and holds the
    /// advisory lock (this replica follows until it has it); on SQLite the lease is always
    /// held.
    pub fn start(store: &Store, counters: Arc<Counters>) -> Lease {
        if !store.is_postgres() {
            counters.gauges.leader.store(1, Ordering::Relaxed);
            return Lease::always();
        }
        let lease = Lease {
            leading: Arc::new(watch::Sender::new(false)),
            shared: true,
            others_hold: Arc::default(),
        };
        tokio::spawn(keep(
            store.clone(),
            lease.leading.clone(),
            lease.others_hold.clone(),
            counters,
        ));
        lease
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Whether other replicas may share the store (PostgreSQL): then state that other
    /// replicas change is not announced in this process and must be re-read.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether this replica judges verdicts and host-metric rules: unless another replica
    /// held the lease at its last try (that one judges, with what this one commits brought
    /// to it by the live relay). A replica alone, one that just took the lock and waits to
    /// lead, and one that has not tried yet judge what they commit.
    pub fn judges(&self) -> bool {
        self.is_leader() || !self.others_hold.load(Ordering::Relaxed)
    }

    /// Follows leadership changes.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }
}

/// Takes and holds the lease until the process ends.
async fn keep(
    store: Store,
    leading: Arc<watch::Sender<bool>>,
    others_hold: Arc<std::sync::atomic::AtomicBool>,
    counters: Arc<Counters>,
) {
    let set = |lead: bool| {
        counters
            .gauges
            .leader
            .store(u64::from(lead), Ordering::Relaxed);
        leading.send_replace(lead);
    };
    loop {
        let mut session = match store.lease_session().await {
            Ok(Some(session)) => session,
            Ok(None) => {
                set(true);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot open the lease session; retrying in 1 s");
                tokio::time::sleep(TICK).await;
                continue;
            }
        };
        loop {
            let leads = *leading.borrow();
            let round = if leads {
                tokio::time::timeout(ROUND_TRIP_LIMIT, session.holds()).await
            } else {
                tokio::time::timeout(ROUND_TRIP_LIMIT, session.try_take()).await
            };
            match round {
                Ok(Ok(true)) if !leads => {
                    others_hold.store(false, Ordering::Relaxed);
                    // The previous holder may not know yet that its session is gone.
                    tracing::info!(
                        wait_ms = TAKEOVER_WAIT.as_millis() as u64,
                        "Took the scheduling lease; leading once the previous leader has surely stopped"
                    );
                    tokio::time::sleep(TAKEOVER_WAIT).await;
                    match tokio::time::timeout(ROUND_TRIP_LIMIT, session.holds()).await {
                        Ok(Ok(true)) => {
                            tracing::info!("This replica leads: it schedules and assigns");
                            set(true);
                        }
                        _ => break,
                    }
                }
                Ok(Ok(true)) => {}
                Ok(Ok(false)) if !leads => others_hold.store(true, Ordering::Relaxed),
                Ok(Ok(false)) => {
                    tracing::error!("The lease session no longer holds the lock: stepping down");
                    set(false);
                    break;
                }
                Ok(Err(error)) => {
                    if leads {
                        tracing::warn!(%error, "The lease session failed: stepping down");
                        set(false);
                    }
                    break;
                }
                Err(_) => {
                    if leads {
                        tracing::warn!(
                            limit_ms = ROUND_TRIP_LIMIT.as_millis() as u64,
                            "The lease session did not answer in time: stepping down"
                        );
                        set(false);
                    }
                    break;
                }
            }
            tokio::time::sleep(TICK).await;
        }
        // Closing gives the lock back at once when PostgreSQL can still be reached; when it
        // cannot, the server drops the session on its own timeouts.
        let _ = tokio::time::timeout(ROUND_TRIP_LIMIT, session.close()).await;
        tokio::time::sleep(TICK).await;
    }
}

/// Runs the worker that `start` makes while this replica leads: started when leadership is
/// gained, aborted when it is lost, started afresh on the next gain. A worker that panics is
/// started again after a second (while leading), so one bad pass does not stop the duty.
pub async fn lead<F, Fut>(lease: Lease, name: &'static str, start: F)
where
    F: Fn() -> Fut + Send,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut leading = lease.subscribe();
    loop {
        if leading.wait_for(|lead| *lead).await.map(|_| ()).is_err() {
            return;
        }
        // Dropping a JoinHandle does not stop its task: the guard aborts it when this future
        // is dropped (the process stopping) as well as on a step-down.
        let mut task = AbortOnDrop(tokio::spawn(start()));
        tokio::select! {
            lost = async { leading.wait_for(|lead| !*lead).await.map(|_| ()) } => {
                task.0.abort();
                if lost.is_err() {
                    return;
                }
                tracing::info!(worker = name, "Stopped: this replica no longer leads");
            }
            ended = &mut task.0 => {
                match ended {
                    Err(error) if error.is_panic() => {
                        tracing::error!(worker = name, "Worker panicked; starting it again in 1 s");
                        tokio::time::sleep(TICK).await;
                    }
                    _ => return,
                }
            }
        }
    }
}

/// Aborts the task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_follower_judges_only_while_another_replica_holds_the_lease() {
        let lease = Lease {
            leading: Arc::new(watch::Sender::new(false)),
            shared: true,
            others_hold: Arc::default(),
        };
        assert!(lease.judges(), "a lone replica judges before it leads");
        lease.others_hold.store(true, Ordering::Relaxed);
        assert!(!lease.judges(), "a follower beside a leader judges nothing");
        lease.leading.send_replace(true);
        assert!(lease.judges());
        assert!(Lease::always().judges());
    }

    #[tokio::test]
    async fn lead_runs_the_worker_only_while_leading() {
        let lease = Lease {
            leading: Arc::new(watch::Sender::new(false)),
            shared: true,
            others_hold: Arc::default(),
        };
        let (starts, running) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        struct Running(Arc<AtomicU32>);
        impl Drop for Running {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let duty = tokio::spawn(lead(lease.clone(), "test", {
            let (starts, running) = (starts.clone(), running.clone());
            move || {
                let (starts, running) = (starts.clone(), running.clone());
                async move {
                    starts.fetch_add(1, Ordering::SeqCst);
                    running.fetch_add(1, Ordering::SeqCst);
                    let _guard = Running(running);
                    std::future::pending::<()>().await;
                }
            }
        }));
        let settle = || tokio::time::sleep(Duration::from_millis(50));
        settle().await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "a follower runs no duty");
        lease.leading.send_replace(true);
        settle().await;
        assert_eq!(
            (
                starts.load(Ordering::SeqCst),
                running.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
        lease.leading.send_replace(false);
        settle().await;
        assert_eq!(running.load(Ordering::SeqCst), 0, "stepping down aborts it");
        lease.leading.send_replace(true);
        settle().await;
        assert_eq!(
            (
                starts.load(Ordering::SeqCst),
                running.load(Ordering::SeqCst)
            ),
            (2, 1),
            "leading again starts it afresh"
        );
        duty.abort();
        settle().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            0,
            "stopping the duty (the process stopping) stops its worker"
        );
    }
}
