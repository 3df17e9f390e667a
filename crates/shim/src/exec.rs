//! Exec: another program of the container's image, run as a new instance in
//! the container's shim (`ctr task exec`, `kubectl exec`, kubelet's exec
//! probes through CRI ExecSync). It gets exactly the container's grants: the
//! same preopens, network and memory cap (its memory counts in the
//! container's), the container's env plus the exec's. A command that is not
//! a Wasm program of the image (`cat /tmp/healthy`, `sh -c ...`) is answered
//! as a failed command: exit 126 and a line on its stderr saying why, so that
//! a probe counts as failed rather than unknown.

use std::io::Write;
use std::sync::{Arc, Mutex};

use containerd_shim::asynchronous::io::IoTasks;
use containerd_shim_protos::api;
use tokio::sync::mpsc;
use wasmcell_engine::{GuestConfig, GuestIo, Program};

use crate::container::{Container, Workload};
use crate::lifecycle::{Lifecycle, State};
use crate::supervisor::{now, on_signal, OnSignal};
use crate::task::{blocking, TaskService};
use crate::{stdio, ShimError};

/// Status of an exec whose command cannot run (as a shell reports a command
/// it cannot execute).
pub(crate) const CANNOT_EXECUTE: u32 = 126;

/// One per exec, made once: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ExecWhat {
    Wasm {
        program: Program,
        config: GuestConfig,
    },
    /// Not a Wasm command of the image: this line goes to its stderr, and it
    /// exits [`CANNOT_EXECUTE`].
    Refused(String),
}

pub(crate) struct Exec {
    pub(crate) id: String,
    pub(crate) stdin: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    what: ExecWhat,
    io: IoTasks,
    pub(crate) stdin_copy: stdio::Stdin,
    guest_io: Mutex<Option<GuestIo>>,
    drained: Mutex<Option<stdio::Drained>>,
    pub(crate) life: Lifecycle,
}

impl Exec {
    pub(crate) async fn release(&self) {
        drop(self.guest_io.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.stdin_copy.close();
        self.io.shutdown().await;
    }
}

/// The container's env with the exec's entries added, an exec entry
/// replacing the container's of the same name.
fn merged_env(base: &[(String, String)], extra: &[String]) -> Vec<(String, String)> {
    let mut env = base.to_vec();
    for e in extra {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        match env.iter_mut().find(|(n, _)| n == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    env
}

impl TaskService {
    pub(crate) async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<(), ShimError> {
        let c = self.get(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("exec id is empty".into()));
        }
        if req.terminal {
            return Err(ShimError::InvalidArgument(
                "a terminal (tty) is not supported for Wasm containers: exec without -t/--tty".into(),
            ));
        }
        if matches!(c.life.state(), State::Stopped { .. }) {
            return Err(ShimError::FailedPrecondition(format!("container {} is not running", c.id)));
        }
        let Workload::Wasm { config: base, .. } = &c.workload else {
            return Err(ShimError::FailedPrecondition(format!("container {} is a pod sandbox: it runs nothing", c.id)));
        };
        let process: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| ShimError::InvalidArgument(format!("exec process spec: {e}")))?;
        let args = process.args().clone().unwrap_or_default();
        let Some(program_path) = args.first().cloned() else {
            return Err(ShimError::InvalidArgument("exec has no command (process.args is empty)".into()));
        };
        let what = self.exec_program(base, &program_path).await?;
        let what = match what {
            Ok(program) => {
                let mut config = base.clone();
                config.argv = args;
                config.env = merged_env(&base.env, process.env().as_deref().unwrap_or_default());
                let cwd = process.cwd().display().to_string();
                if !cwd.is_empty() {
                    config.cwd = cwd;
                }
                ExecWhat::Wasm { program, config }
            }
            Err(why) => {
                log::info!("exec id={} exec_id={}: {why}", c.id, req.exec_id);
                ExecWhat::Refused(format!("wasmcell: {why}\n"))
            }
        };
        let (io, stdin_copy, guest_io, drained) = stdio::open(&req.stdin, &req.stdout, &req.stderr).await?;
        let exec = Arc::new(Exec {
            id: req.exec_id.clone(),
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            what,
            io,
            stdin_copy,
            guest_io: Mutex::new(Some(guest_io)),
            drained: Mutex::new(Some(drained)),
            life: Lifecycle::new(),
        });
        let inserted = {
            let mut execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
            match execs.contains_key(&req.exec_id) {
                true => false,
                false => execs.insert(req.exec_id.clone(), exec.clone()).is_none(),
            }
        };
        if !inserted {
            exec.release().await;
            return Err(ShimError::AlreadyExists(format!("exec {} of {}", req.exec_id, c.id)));
        }
        self.inner.events.exec_added(&c.id, &req.exec_id);
        Ok(())
    }

    /// The Wasm command `path` of the container's image, compiled (or from
    /// the cache) and linked; `Err(why)` when it is not one.
    async fn exec_program(&self, base: &GuestConfig, path: &str) -> Result<Result<Program, String>, ShimError> {
        let Some(root) = base.preopens.iter().find(|p| p.guest == "/").map(|p| p.host.clone()) else {
            return Ok(Err(format!("{path}: the container has no root filesystem to run it from")));
        };
        let engine = self.engine()?;
        let p = path.to_string();
        // The exec has its container's grants, the key-value store included.
        let granted = wasmcell_engine::Granted { keyvalue: base.keyvalue.is_some() };
        blocking(move || {
            let file = match wasmcell_oci::open_entrypoint(&root, &p) {
                Ok(f) => f,
                Err(e) => {
                    return Err(format!("{e}; only WebAssembly programs in the container's image can be executed"))
                }
            };
            match engine.prepare_file(&file, None, granted) {
                Ok(program) if program.is_server() => {
                    Err(format!("{p} is an HTTP component; exec runs command components and WASI modules"))
                }
                Ok(program) => Ok(program),
                Err(e) => Err(format!("{p}: {e}")),
            }
        })
        .await
    }

    pub(crate) fn get_exec(&self, c: &Container, exec_id: &str) -> Result<Arc<Exec>, ShimError> {
        c.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} of {}", c.id)))
    }

    pub(crate) async fn start_exec(&self, c: Arc<Container>, exec_id: &str) -> Result<api::StartResponse, ShimError> {
        let e = self.get_exec(&c, exec_id)?;
        let mut kill_rx: mpsc::UnboundedReceiver<u32> = e.life.begin_start(exec_id)?;
        let engine = self.engine()?;
        let io = e.guest_io.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_default();
        self.inner.events.exec_started(&c.id, exec_id, self.inner.pid);
        let svc = self.clone();
        let exec = e.clone();
        crate::supervisor::guest_runtime().spawn(async move {
            let e = exec;
            let status = match &e.what {
                ExecWhat::Refused(line) => {
                    if let Some(fd) = io.stderr {
                        let _ = std::fs::File::from(fd).write_all(line.as_bytes());
                    }
                    CANNOT_EXECUTE
                }
                ExecWhat::Wasm { program, config } => {
                    let run = engine.run(program, config, io, c.stats.clone());
                    tokio::pin!(run);
                    loop {
                        tokio::select! {
                            r = &mut run => break match r {
                                Ok(exit) => exit.status(),
                                Err(err) => {
                                    log::warn!("exec id={} exec_id={}: {err}", c.id, e.id);
                                    CANNOT_EXECUTE
                                }
                            },
                            sig = kill_rx.recv() => match sig.map(|s| on_signal(s, false, false)) {
                                Some(OnSignal::End(status)) => break status,
                                Some(OnSignal::Drain) => {}
                                None => break 128 + libc::SIGKILL as u32,
                            },
                        }
                    }
                }
            };
            stdio::wait_drained(&e.drained, &format!("id={} exec_id={}", c.id, e.id)).await;
            let (events, pid) = (&svc.inner.events, svc.inner.pid);
            if e.life.record_exit(status, now(), |status, at| events.exec_exit(&c.id, &e.id, pid, status, at.clone())) {
                log::info!("exit id={} exec_id={} status={status}", c.id, e.id);
            }
        });
        e.life.started();
        Ok(api::StartResponse { pid: self.inner.pid, ..Default::default() })
    }

    /// Ends every exec of `c` that still runs (the container stopped).
    pub(crate) fn kill_execs(&self, c: &Container) {
        let execs: Vec<_> = c.execs.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let (events, pid) = (&self.inner.events, self.inner.pid);
        for e in execs {
            let _ = e.life.kill(&e.id, libc::SIGKILL as u32, false, now(), |status, at| {
                events.exec_exit(&c.id, &e.id, pid, status, at.clone())
            });
        }
    }

    pub(crate) async fn delete_exec(&self, c: &Container, exec_id: &str) -> Result<api::DeleteResponse, ShimError> {
        let e = self.get_exec(c, exec_id)?;
        let (status, at) = e.life.begin_delete(exec_id, now())?;
        e.release().await;
        c.execs.lock().unwrap_or_else(|p| p.into_inner()).remove(exec_id);
        log::info!("delete id={} exec_id={exec_id} status={status}", c.id);
        Ok(api::DeleteResponse {
            pid: self.inner.pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_adds_to_and_overrides_the_containers() {
        let base = vec![("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())];
        let got = merged_env(&base, &["B=3".into(), "C=4".into(), "D".into()]);
        let want: Vec<(String, String)> = [("A", "1"), ("B", "3"), ("C", "4"), ("D", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
