//! `launcher = "slurm"`: each worker is a job step of the current allocation,
//! `srun --exact --ntasks=1 --kill-on-bad-exit=0 loky-run __worker`, that connects back to the
//! runner over TCP (see `transport`). Workers are started once per pool, never per task.
//!
//! The local `srun` process stands for the step: its exit is the worker's exit (a task killed by
//! a signal makes `srun` exit with 128 + the signal), SIGTERM to it ends the step, and it gets a
//! parent-death SIGTERM so a killed runner takes its steps along.

use std::fs::File;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::spawn::{self, SpawnRequest, SpawnedWorker};
use crate::interrupt;
use crate::sys;
use crate::transport::{self, Listener, Ticket};
use crate::worker::WORKER_ARG;

/// How long a step may take to start and connect.
const CONNECT_DEADLINE: Duration = Duration::from_secs(120);
// A worker that cannot connect gives up (and its srun ends) before the step's deadline, so a
// step past it with srun still running was late to start, not kept out.
const _: () = assert!(transport::WORKER_CONNECT_DEADLINE.as_secs() < CONNECT_DEADLINE.as_secs());

/// Where `launcher = "slurm"` gets its workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Job steps of the allocation loky-run runs in (`sbatch`, `salloc`).
    InAllocation,
    /// Outside an allocation, with a `[slurm]` table: allocations loky-run submits itself.
    OnDemand,
}

/// Where `launcher = "slurm"` gets its workers here, or why it cannot be used.
/// `has_table`: the pipeline has a `[slurm]` table.
pub fn mode(has_table: bool) -> Result<Mode, String> {
    if let Ok(step) = std::env::var("SLURM_STEP_ID") {
        return Err(format!(
            "loky-run is itself running inside job step {step} (under `srun`), where it cannot start worker steps: run it directly in the `sbatch` script or the `salloc` shell"
        ));
    }
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        return Ok(Mode::InAllocation);
    }
    if !has_table {
        return Err(
            "launcher = \"slurm\" outside a Slurm allocation needs a [slurm] table (partition, time_limit, nodes, tasks, ...) for the allocations loky-run submits itself; or run loky-run inside `sbatch` or `salloc`"
                .into(),
        );
    }
    if !on_path("sbatch") {
        return Err(
            "the [slurm] table asks for allocations, but `sbatch` is not on PATH here: run loky-run on a host that can submit Slurm jobs"
                .into(),
        );
    }
    Ok(Mode::OnDemand)
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The default number of workers under `launcher = "slurm"`: the allocation's task count
/// (`--ntasks`), since every worker step takes one task and extra steps would wait for CPUs.
pub fn default_workers() -> Option<usize> {
    ["SLURM_NTASKS", "SLURM_NPROCS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
}

/// srun's report, in a line of its output, that the step's node failed (Slurm declared it
/// DOWN): `srun: error: Node failure on node3`. srun then exits 0, so its exit status alone
/// does not tell.
pub fn node_failure(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let at = line.find("Node failure on ")?;
    line.starts_with("srun: ")
        .then(|| line[at..].chars().take(200).collect())
}

/// `scancel` of job steps (`JOB.STEP`), for steps whose `srun` was killed and so cannot end
/// them. `wait`: block until scancel is done (bounded), else reap it on a thread.
pub fn cancel_steps(steps: &[String], wait: bool) {
    let child = Command::new("scancel")
        .arg("--quiet")
        .args(steps)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return };
    if wait {
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    } else {
        let _ = std::thread::Builder::new()
            .name("scancel".into())
            .spawn(move || child.wait());
    }
}

/// A worker step submitted with `srun`, not yet connected.
pub struct PendingStep {
    child: Option<Child>,
    ticket: Ticket,
    output: Option<File>,
    deadline: Instant,
}

/// Submits a worker step; [`PendingStep::connect`] waits for it. Several steps submitted
/// before waiting start in parallel.
pub fn start(
    req: &SpawnRequest<'_>,
    listener: &Listener,
    srun_args: &[String],
) -> io::Result<PendingStep> {
    let ticket = listener.expect()?;
    let (out_read, out_write) = spawn::pipe()?;
    let mut command = Command::new("srun");
    command
        .args([
            "--exact",
            "--ntasks=1",
            "--nodes=1",
            "--kill-on-bad-exit=0",
            "--job-name=loky-run-worker",
            // The worker needs the runner's environment (its address and token, the plugin
            // path, the pipeline's env): `sbatch --export=NONE` or SLURM_EXPORT_ENV must not
            // strip it. srun_args may still narrow it.
            "--export=ALL",
        ])
        .args(srun_args)
        .arg(sys::current_exe())
        .arg(WORKER_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_write.try_clone()?))
        .stderr(Stdio::from(out_write))
        .process_group(0)
        .env(transport::CONNECT_ENV, listener.advertised())
        .env(transport::TOKEN_ENV, ticket.token());
    spawn::set_worker_env(&mut command, req);
    spawn::die_with_parent(&mut command, libc::SIGTERM);
    let child = command.spawn()?;
    // Our copies of the pipe's write end must go, or reading srun's output never ends.
    drop(command);
    Ok(PendingStep {
        child: Some(child),
        ticket,
        output: Some(File::from(out_read)),
        deadline: Instant::now() + CONNECT_DEADLINE,
    })
}

impl PendingStep {
    /// Checks on the step, waiting at most `wait` for its worker to connect: `Ok(None)` while
    /// it is still starting. An error when srun ended, the deadline passed or the run was
    /// interrupted (kind `Interrupted`); it carries srun's status and its last lines of
    /// output. Once this returned a worker or an error, the step is spent.
    pub fn poll(&mut self, wait: Duration) -> io::Result<Option<SpawnedWorker>> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("worker step already handled"));
        };
        let failure = match self.ticket.wait(wait) {
            Ok(Some(stream)) => return self.connected(stream).map(Some),
            Err(e) => e.to_string(),
            Ok(None) => {
                // What the runner's port saw meanwhile: a step that never connected may have
                // been crowded out, which srun's status alone would not say.
                let crowd = || {
                    let dropped = self.ticket.dropped_meanwhile();
                    if dropped.total() == 0 {
                        String::new()
                    } else {
                        format!("; meanwhile the runner dropped {dropped}")
                    }
                };
                if let Some(status) = child.try_wait()? {
                    format!(
                        "srun {} before the worker connected{}",
                        sys::describe_exit(status),
                        crowd()
                    )
                } else if Instant::now() >= self.deadline {
                    // A running worker gives up connecting sooner (see above): this one has
                    // not run for long, if at all.
                    format!(
                        "the worker step did not connect within {} s while its srun kept running: \
                         it may still be waiting for resources (see `squeue -s`){}",
                        CONNECT_DEADLINE.as_secs(),
                        crowd()
                    )
                } else if interrupt::count() > 0 {
                    self.stop();
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "interrupted while starting a worker step",
                    ));
                } else {
                    return Ok(None);
                }
            }
        };
        self.stop();
        let mut text = String::new();
        if let Some(mut output) = self.output.take() {
            let _ = output.read_to_string(&mut text);
        }
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("; it printed:\n  {}", tail.join("\n  "))
        };
        Err(io::Error::other(format!("{failure}{tail}")))
    }

    /// The worker connected: its connection becomes the worker's command and result streams.
    fn connected(&mut self, stream: std::net::TcpStream) -> io::Result<SpawnedWorker> {
        // Everything that can fail comes first: until the child is taken, dropping the step
        // ends srun.
        let commands = stream.try_clone()?;
        let remote = stream.try_clone()?;
        let watched = stream.try_clone()?;
        let pid = self.child.as_ref().expect("present until connected").id();
        // The connection ends when srun does, even if the worker's node vanished without
        // closing it (srun notices a lost node; the socket alone would wait for keepalive).
        // Not at once: what the worker sent just before it exited may still be on its way.
        std::thread::Builder::new()
            .name(format!("srun-{pid}-watch"))
            .spawn(move || {
                spawn::wait_exited(pid);
                std::thread::sleep(SRUN_EXIT_GRACE);
                let _ = watched.shutdown(Shutdown::Both);
            })?;
        // Reaped by the pool's reaper thread, like a local worker.
        drop(self.child.take());
        Ok(SpawnedWorker {
            pid,
            commands: OwnedFd::from(commands),
            results: OwnedFd::from(stream),
            output: Box::new(self.output.take().expect("present until connected")),
            progress: None,
            remote: Some(remote),
        })
    }

    /// Ends a step that will not be used: SIGTERM to srun (which ends the step), SIGKILL if
    /// it does not end within a few seconds, then reaped.
    fn stop(&mut self) {
        end_sruns(self.child.take().into_iter().collect());
    }
}

impl Drop for PendingStep {
    fn drop(&mut self) {
        // Another step failed to start, or the run was interrupted: this one must not run on
        // unattended. (Dropping the ticket withdraws its token.)
        self.stop();
    }
}

/// After srun exited, how long the worker's last frames may take to arrive before its
/// connection is cut.
const SRUN_EXIT_GRACE: Duration = Duration::from_secs(2);

/// How long srun may take to end its step after SIGTERM.
const SRUN_TERM_GRACE: Duration = Duration::from_secs(5);

/// Ends steps that will not be used, all at once: SIGTERM to every srun (which ends its step),
/// one grace period for all of them (not one each), SIGKILL for those left; then reaped.
pub fn abandon(steps: impl IntoIterator<Item = PendingStep>) {
    end_sruns(
        steps
            .into_iter()
            .filter_map(|mut step| step.child.take())
            .collect(),
    );
}

fn end_sruns(mut children: Vec<Child>) {
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    spawn::end_gracefully(&pids, SRUN_TERM_GRACE);
    for child in &mut children {
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::node_failure;

    #[test]
    fn srun_node_failure_lines_are_recognised_and_nothing_else() {
        assert_eq!(
            node_failure(b"srun: error: Node failure on node3\r").as_deref(),
            Some("Node failure on node3")
        );
        assert_eq!(
            node_failure(b"srun: error: Node failure on node[2-3]").as_deref(),
            Some("Node failure on node[2-3]")
        );
        // A task printing the same words is not srun.
        assert_eq!(node_failure(b"my task: Node failure on node3"), None);
        assert_eq!(
            node_failure(b"srun: Job 12 step creation temporarily disabled"),
            None
        );
    }
}
