//! Start, and the guest's supervisor: it runs the guest on the guest
//! runtime, applies the signal policy (a server stops gracefully on SIGTERM,
//! a sandbox ends cleanly, anything else ends the guest with 128 + signal),
//! waits until the guest's output is passed on, and records the exit.

use std::sync::OnceLock;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;
use wasmcell_engine::Exit;

use crate::container::{Container, Workload};
use crate::lifecycle::State;
use crate::task::TaskService;
use crate::{config, stdio, ShimError};

/// Guests run on a runtime of their own, so a guest that computes for its
/// whole epoch slice never delays a task RPC.
pub(crate) fn guest_runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config::guest_workers())
            .thread_name("wasm-guest")
            .enable_all()
            .build()
            .expect("guest runtime")
    })
}

pub(crate) fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// Signals whose default action is not to terminate the process.
pub(crate) fn ignored_signal(sig: u32) -> bool {
    matches!(sig as i32, libc::SIGCHLD | libc::SIGCONT | libc::SIGURG | libc::SIGWINCH)
}

/// Signals that would stop (pause) a process.
pub(crate) fn stop_signal(sig: u32) -> bool {
    matches!(sig as i32, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// What a signal does to a guest, by workload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OnSignal {
    /// Stop accepting, finish in-flight requests, exit 0.
    Drain,
    /// End now with this status.
    End(u32),
}

pub(crate) fn on_signal(sig: u32, server: bool, pause: bool) -> OnSignal {
    let graceful = sig as i32 == libc::SIGTERM || sig as i32 == libc::SIGINT;
    match () {
        _ if graceful && server => OnSignal::Drain,
        // A sandbox ends cleanly on SIGTERM/SIGINT, as pause does.
        _ if graceful && pause => OnSignal::End(0),
        _ => OnSignal::End(128 + sig),
    }
}

impl TaskService {
    pub(crate) async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse, ShimError> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.start_exec(c, &req.exec_id).await;
        }
        let engine = self.engine()?;
        let mut kill_rx = c.life.begin_start(&c.id)?;
        let header_timeout = config::http_header_timeout();
        let io = c.guest_io.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        let listener = c.listener.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.inner.events.start(&c.id, self.inner.pid);
        let svc = self.clone();
        let container = c.clone();
        guest_runtime().spawn(async move {
            let c = container;
            let (stop_tx, stop_rx) = watch::channel(false);
            let stats = c.stats.clone();
            // The guest's future lives in this block only: it is dropped at
            // the block's end, a killed guest's too, which closes the guest's
            // ends of its output pipes.
            let (status, oom) = {
                let run = async {
                    match (&c.workload, listener) {
                        (Workload::Wasm { program, config }, Some(l)) if program.is_server() => {
                            engine.serve(program, config, io, stats, l, stop_rx, header_timeout).await
                        }
                        (Workload::Wasm { program, config }, _) => engine.run(program, config, io, stats).await,
                        // A sandbox runs until a signal ends it.
                        (Workload::Pause, _) => std::future::pending().await,
                    }
                };
                tokio::pin!(run);
                let server = c.workload.is_server();
                let pause = matches!(c.workload, Workload::Pause);
                loop {
                    tokio::select! {
                        r = &mut run => break match r {
                            Ok(exit) => (exit.status(), matches!(exit, Exit::OutOfMemory(_))),
                            Err(e) => {
                                log::error!("start id={}: {e}", c.id);
                                (126, false)
                            }
                        },
                        sig = kill_rx.recv() => match sig.map(|s| on_signal(s, server, pause)) {
                            Some(OnSignal::Drain) => {
                                log::info!("id={}: stopping HTTP server gracefully", c.id);
                                let _ = stop_tx.send(true);
                            }
                            Some(OnSignal::End(status)) => break (status, false),
                            None => break (128 + libc::SIGKILL as u32, false),
                        },
                    }
                }
            };
            stdio::wait_drained(&c.drained, &format!("id={}", c.id)).await;
            svc.exited(&c, status, oom);
            // Execs end with their container.
            svc.kill_execs(&c);
            svc.leave_cgroup_early(&c.id).await;
        });
        c.life.started();
        // Once the guest runs, the shim mostly waits: give back what starting
        // it cost (freed heap, and the mapped code that ran once).
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let _ = tokio::task::spawn_blocking(|| {
                crate::sys::process::trim_heap();
                crate::sys::process::release_code_pages();
            })
            .await;
        });
        Ok(api::StartResponse { pid: self.inner.pid, ..Default::default() })
    }

    /// Records the guest's exit and queues its events (OOM first), once,
    /// in one critical section with the state change.
    pub(crate) fn exited(&self, c: &Container, status: u32, oom: bool) {
        let (events, pid) = (&self.inner.events, self.inner.pid);
        let recorded = c.life.record_exit(status, now(), |status, at| {
            if oom {
                events.oom(&c.id);
            }
            events.exit(&c.id, pid, status, at.clone());
        });
        if recorded {
            log::info!("exit id={} status={status}", c.id);
        }
    }

    /// Starts leaving the cgroup as soon as its container has exited, when
    /// no other guest of this shim still runs (or may run) in it.
    async fn leave_cgroup_early(&self, id: &str) {
        let others_run = self
            .inner
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|c| c.id != id && !matches!(c.life.state(), State::Stopped { .. }));
        if !others_run {
            self.inner.cgroup.leave_early(id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_policy() {
        let (term, int, kill, usr1) =
            (libc::SIGTERM as u32, libc::SIGINT as u32, libc::SIGKILL as u32, libc::SIGUSR1 as u32);
        assert_eq!(on_signal(term, true, false), OnSignal::Drain);
        assert_eq!(on_signal(int, true, false), OnSignal::Drain);
        assert_eq!(on_signal(kill, true, false), OnSignal::End(137));
        assert_eq!(on_signal(term, false, true), OnSignal::End(0));
        assert_eq!(on_signal(term, false, false), OnSignal::End(143));
        assert_eq!(on_signal(usr1, false, false), OnSignal::End(128 + usr1));
        assert!(ignored_signal(libc::SIGCHLD as u32) && !ignored_signal(term));
        assert!(stop_signal(libc::SIGTSTP as u32) && !stop_signal(kill));
    }
}
