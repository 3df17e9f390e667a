//! A container's state machine: `Created -> Starting -> Running -> Stopped`
//! (or `Created -> Stopped` when killed or deleted unstarted), and `Deleted`
//! once Delete took it. Every transition is decided while holding the one
//! lock, on the state as it is then, never on a copy; and what must be
//! ordered with a transition (queuing the exit event, waking Wait) happens in
//! the same critical section, as runc-shim's `process_exits` does under the
//! lock its Delete takes.
//!
//! The kill channel exists from Create on, so a signal sent while Start is
//! still handing the guest its stdio waits in the channel for the guest
//! instead of being lost.

use std::sync::Mutex;

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{mpsc, watch};

use crate::ShimError;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum State {
    Created,
    /// Start has taken the container: the guest is being spawned.
    Starting,
    Running,
    Stopped {
        status: u32,
        at: Timestamp,
    },
}

struct Inner {
    state: State,
    /// The guest's end of the kill channel, taken by Start.
    kill_rx: Option<mpsc::UnboundedReceiver<u32>>,
    /// Delete has taken the container (its resources are being released).
    deleted: bool,
}

/// What a Kill did, decided under the lock.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Killed {
    /// The signal is queued for the guest (starting or running).
    Delivered,
    /// An unstarted container is now stopped with this status.
    StoppedUnstarted(u32),
    /// The signal's default action is not to terminate: nothing to do.
    Ignored,
}

pub(crate) struct Lifecycle {
    inner: Mutex<Inner>,
    kill_tx: mpsc::UnboundedSender<u32>,
    /// Set once, when the container stops: (exit status, time).
    exited: watch::Sender<Option<(u32, Timestamp)>>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A created container, its kill channel ready.
    pub(crate) fn new() -> Self {
        let (kill_tx, kill_rx) = mpsc::unbounded_channel();
        Lifecycle {
            inner: Mutex::new(Inner { state: State::Created, kill_rx: Some(kill_rx), deleted: false }),
            kill_tx,
            exited: watch::channel(None).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state(&self) -> State {
        self.lock().state.clone()
    }

    /// `Created -> Starting`: returns the guest's end of the kill channel.
    pub(crate) fn begin_start(&self, id: &str) -> Result<mpsc::UnboundedReceiver<u32>, ShimError> {
        let mut g = self.lock();
        match (&g.state, g.kill_rx.is_some()) {
            (State::Created, true) if !g.deleted => {
                g.state = State::Starting;
                Ok(g.kill_rx.take().expect("checked"))
            }
            _ => Err(ShimError::FailedPrecondition(format!("container {id} is not in the created state"))),
        }
    }

    /// `Starting -> Running`, once the guest is spawned. A guest that
    /// already exited stays stopped.
    pub(crate) fn started(&self) {
        let mut g = self.lock();
        if g.state == State::Starting {
            g.state = State::Running;
        }
    }

    /// Decides what signal `sig` does, under the lock. An unstarted
    /// container stops with `128 + sig`; `publish` queues its exit (called
    /// inside the critical section, before Wait is woken).
    pub(crate) fn kill(
        &self,
        id: &str,
        sig: u32,
        ignored: bool,
        at: Timestamp,
        publish: impl FnOnce(u32, &Timestamp),
    ) -> Result<Killed, ShimError> {
        let mut g = self.lock();
        match g.state {
            State::Stopped { .. } => Err(ShimError::NotFound(format!("{id}: process already finished"))),
            _ if ignored => Ok(Killed::Ignored),
            State::Created => {
                let status = 128 + sig;
                self.stop_locked(&mut g, status, at, publish);
                Ok(Killed::StoppedUnstarted(status))
            }
            State::Starting | State::Running => {
                // The receiver lives as long as the guest's supervisor; a
                // send error means the guest is finishing anyway.
                let _ = self.kill_tx.send(sig);
                Ok(Killed::Delivered)
            }
        }
    }

    /// Records the guest's exit once: `publish` queues the exit events in the
    /// same critical section, then waiters wake. False if already stopped.
    pub(crate) fn record_exit(&self, status: u32, at: Timestamp, publish: impl FnOnce(u32, &Timestamp)) -> bool {
        let mut g = self.lock();
        if matches!(g.state, State::Stopped { .. }) {
            return false;
        }
        self.stop_locked(&mut g, status, at, publish);
        true
    }

    fn stop_locked(&self, g: &mut Inner, status: u32, at: Timestamp, publish: impl FnOnce(u32, &Timestamp)) {
        g.state = State::Stopped { status, at: at.clone() };
        publish(status, &at);
        self.exited.send_replace(Some((status, at)));
    }

    /// Delete takes the container: refused while the guest runs; an
    /// unstarted one stops with 137 (no exit event: it never ran). Returns
    /// the exit to report. A second Delete finds nothing.
    pub(crate) fn begin_delete(&self, id: &str, at: Timestamp) -> Result<(u32, Timestamp), ShimError> {
        let mut g = self.lock();
        if g.deleted {
            return Err(ShimError::NotFound(id.to_string()));
        }
        let exit = match &g.state {
            State::Starting | State::Running => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container {id} is running; kill it before deleting it"
                )))
            }
            State::Created => {
                self.stop_locked(&mut g, 137, at.clone(), |_, _| {});
                (137, at)
            }
            State::Stopped { status, at } => (*status, at.clone()),
        };
        g.deleted = true;
        Ok(exit)
    }

    /// Waits until the container stopped.
    pub(crate) async fn wait(&self) -> (u32, Timestamp) {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(v) = rx.borrow_and_update().clone() {
                return v;
            }
            // The sender lives in `self`, which outlives this borrow.
            if rx.changed().await.is_err() {
                return (255, Timestamp::default());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex as StdMutex};

    fn ts() -> Timestamp {
        Timestamp::default()
    }

    const SIGTERM: u32 = 15;
    const SIGKILL: u32 = 9;

    /// Kill during Start: the old service decided on a copy of the state
    /// taken before Start moved it to Running, recorded an exit (128+sig)
    /// and let the guest run on. Here the signal goes to the guest.
    #[test]
    fn kill_during_start_reaches_the_guest() {
        let l = Lifecycle::new();
        let mut rx = l.begin_start("c").unwrap();
        let events = StdMutex::new(Vec::new());
        let k = l.kill("c", SIGTERM, false, ts(), |s, _| events.lock().unwrap().push(s)).unwrap();
        assert_eq!(k, Killed::Delivered);
        assert_eq!(l.state(), State::Starting, "no exit was recorded for a guest about to run");
        assert!(events.lock().unwrap().is_empty());
        l.started();
        assert_eq!(rx.try_recv().unwrap(), SIGTERM, "the guest gets the signal once it runs");
    }

    /// A kill between the state becoming Running and the guest's sender
    /// being stored was lost (Ok, nothing delivered). The channel now exists
    /// from Create: a kill at any point after Start began is queued.
    #[test]
    fn kill_before_the_guest_listens_is_not_lost() {
        let l = Lifecycle::new();
        let rx = l.begin_start("c").unwrap();
        l.started();
        assert_eq!(l.kill("c", SIGKILL, false, ts(), |_, _| {}).unwrap(), Killed::Delivered);
        // The supervisor only now starts listening.
        let mut rx = rx;
        assert_eq!(rx.try_recv().unwrap(), SIGKILL);
    }

    #[test]
    fn kill_of_an_unstarted_container_stops_it_and_start_then_fails() {
        let l = Lifecycle::new();
        let seen = StdMutex::new(None);
        let k = l.kill("c", SIGKILL, false, ts(), |s, _| *seen.lock().unwrap() = Some(s)).unwrap();
        assert_eq!(k, Killed::StoppedUnstarted(137));
        assert_eq!(*seen.lock().unwrap(), Some(137));
        assert!(matches!(l.begin_start("c"), Err(ShimError::FailedPrecondition(_))));
        assert!(matches!(l.kill("c", SIGKILL, false, ts(), |_, _| {}), Err(ShimError::NotFound(_))));
    }

    /// Start and Kill from two threads, many times: either the kill stopped
    /// the unstarted container and Start failed, or Start won and the guest
    /// received the signal. Never an exit recorded for a guest that runs.
    #[test]
    fn start_and_kill_interleaved_never_lose_the_guest() {
        for _ in 0..2000 {
            let l = Arc::new(Lifecycle::new());
            let l2 = l.clone();
            let killer = std::thread::spawn(move || l2.kill("c", SIGKILL, false, ts(), |_, _| {}).unwrap());
            let started = l.begin_start("c").inspect(|_| l.started());
            let killed = killer.join().unwrap();
            match (started, killed) {
                (Err(_), Killed::StoppedUnstarted(137)) => {}
                (Ok(mut rx), Killed::Delivered) => {
                    assert_eq!(rx.try_recv().unwrap(), SIGKILL);
                    assert_eq!(l.state(), State::Running, "no exit recorded while the guest runs");
                }
                (s, k) => panic!("inconsistent: start {:?}, kill {k:?}", s.map(|_| ())),
            }
        }
    }

    /// Delete racing the exit: the exit event is queued in the transition to
    /// Stopped, so a Delete that sees Stopped queues its event after it; a
    /// Delete that comes first is refused (the guest runs).
    #[test]
    fn delete_racing_the_exit_keeps_events_in_order() {
        for _ in 0..2000 {
            let l = Arc::new(Lifecycle::new());
            let _rx = l.begin_start("c").unwrap();
            l.started();
            let events = Arc::new(StdMutex::new(Vec::new()));
            let (l2, e2) = (l.clone(), events.clone());
            let exiter = std::thread::spawn(move || {
                std::thread::yield_now();
                l2.record_exit(0, ts(), |_, _| e2.lock().unwrap().push("exit"));
            });
            let deleted = loop {
                match l.begin_delete("c", ts()) {
                    Ok(_) => {
                        events.lock().unwrap().push("delete");
                        break true;
                    }
                    Err(ShimError::FailedPrecondition(_)) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            };
            exiter.join().unwrap();
            assert!(deleted);
            assert_eq!(*events.lock().unwrap(), vec!["exit", "delete"]);
            assert!(matches!(l.begin_delete("c", ts()), Err(ShimError::NotFound(_))), "deleted once");
        }
    }

    #[test]
    fn exit_is_recorded_once_and_wakes_waiters() {
        let l = Arc::new(Lifecycle::new());
        let _rx = l.begin_start("c").unwrap();
        l.started();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let l2 = l.clone();
        let waiter = rt.spawn(async move { l2.wait().await.0 });
        let mut n = 0;
        assert!(l.record_exit(3, ts(), |_, _| n += 1));
        assert!(!l.record_exit(4, ts(), |_, _| n += 1));
        assert_eq!(n, 1);
        assert_eq!(rt.block_on(waiter).unwrap(), 3);
        assert!(matches!(l.state(), State::Stopped { status: 3, .. }));
    }

    #[test]
    fn delete_of_a_running_container_is_refused() {
        let l = Lifecycle::new();
        let _rx = l.begin_start("c").unwrap();
        assert!(matches!(l.begin_delete("c", ts()), Err(ShimError::FailedPrecondition(_))));
        l.started();
        assert!(matches!(l.begin_delete("c", ts()), Err(ShimError::FailedPrecondition(_))));
        let unstarted = Lifecycle::new();
        assert_eq!(unstarted.begin_delete("c", ts()).unwrap().0, 137);
    }
}
