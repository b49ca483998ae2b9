"""Job executors and the job runner.

A job is a folder (``<experiment>/output/<run>/t<trial>_b<block>/``) holding ``job.json``
(the archived command and its provenance), ``params.toml`` (the effective parameters),
``geometry.geom`` (the block's geometry, when it has one), ``job.log`` and ``results/``
(the ``sxlab process`` output). Every executor runs the same thing:
``python -m sxlab.experiment.jobs JOB_DIR``, which runs the archived ``sxlab`` command
and keeps ``status.json`` up to date (state, host, pid, heartbeat, exit code), so the
experiment learns a job's state from its folder whatever ran it, and a watcher that was
restarted finds running jobs again instead of starting them twice.

Executors:

* :class:`LocalExecutor` — a pool of ``max_jobs`` jobs on this machine, each a detached
  process group (it survives the watcher);
* :class:`DaskExecutor` — tasks on a Dask cluster (each starts the runner on a worker);
* :func:`jobqueue_cluster` — a SLURM / PBS / LSF cluster from ``dask-jobqueue`` for the
  :class:`DaskExecutor`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["DaskExecutor", "LocalExecutor", "job_state", "jobqueue_cluster", "run_job"]

#: Seconds between heartbeats written by a running job.
HEARTBEAT_S = 5.0
#: A job on another host whose heartbeat is older than this is taken as lost.
LOST_AFTER_S = 120.0


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid_alive(pid: int, job_dir: str | None = None) -> bool:
    """Whether ``pid`` runs here (and, when ``job_dir`` is given, is that job's runner)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    if job_dir is None:
        return True
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return os.fsencode(str(job_dir)) in cmdline


def job_state(job_dir) -> dict:
    """The state of a job from its folder.

    Returns
    -------
    dict
        ``state``: ``pending`` (no runner yet), ``running``, ``done``, ``failed`` or
        ``lost`` (the runner died without finishing); with ``started``, ``finished``,
        ``exit_code``, ``error``, ``host`` and ``pid`` where known.
    """
    st = _read_json(Path(job_dir) / "status.json")
    if st is None:
        return {"state": "pending"}
    if st.get("state") == "running":
        if st.get("host") == socket.gethostname():
            if not _pid_alive(st.get("pid", -1), str(job_dir)):
                return {**st, "state": "lost", "error": "the job's process ended without "
                                                         "reporting a result"}
        elif time.time() - float(st.get("heartbeat", 0)) > LOST_AFTER_S:
            return {**st, "state": "lost", "error": f"no heartbeat from {st.get('host')} "
                                                     f"for more than {LOST_AFTER_S:.0f} s"}
    return st


def run_job(job_dir) -> int:
    """Run the job in ``job_dir`` in this process and record its state (the runner).

    Returns the command's exit status.
    """
    job_dir = Path(job_dir)
    spec = json.loads((job_dir / "job.json").read_text())
    status_path = job_dir / "status.json"
    status = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
              "started": _now_iso(), "heartbeat": time.time(), "attempt": spec.get("attempt")}
    _write_json(status_path, status)
    stop = threading.Event()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            status["heartbeat"] = time.time()
            _write_json(status_path, status)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    error = ""
    try:
        from ..cli import main

        code = int(main(spec["argv"][1:]) or 0)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        error = "" if code == 0 else f"exit status {code}"
    except Exception as exc:  # noqa: BLE001 - recorded in status.json, shown in jobs()
        import traceback

        traceback.print_exc()
        code = 1
        error = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        thread.join()
    if code and not error:
        error = f"exit status {code}"
    status.update(state="done" if code == 0 else "failed", exit_code=code, error=error,
                  finished=_now_iso(), heartbeat=time.time())
    _write_json(status_path, status)
    return code


#: Handles of local jobs still running when their executor was closed.
_DETACHED: list[subprocess.Popen] = []


def _runner_argv(job_dir) -> list[str]:
    return [sys.executable, "-m", "sxlab.experiment.jobs", str(job_dir)]


class LocalExecutor:
    """Jobs as detached processes on this machine, at most ``max_jobs`` at a time.

    Parameters
    ----------
    max_jobs : int
        Jobs running at once.
    workers : int, optional
        Worker processes per job (``sxlab process -j``; default: all cores divided
        among the jobs).
    """

    name = "local"

    def __init__(self, max_jobs: int = 1, workers: int | None = None):
        if int(max_jobs) < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        self.max_jobs = int(max_jobs)
        self.workers = int(workers or max(1, (os.cpu_count() or 1) // self.max_jobs))
        self._procs: dict[str, subprocess.Popen] = {}

    def __repr__(self) -> str:
        return f"<LocalExecutor max_jobs={self.max_jobs} workers={self.workers}>"

    def submit(self, job_dir) -> str:
        """Start the runner detached (own session); returns its pid."""
        job_dir = Path(job_dir)
        log = open(job_dir / "job.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(_runner_argv(job_dir), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=job_dir)
        finally:
            log.close()
        self._procs[str(proc.pid)] = proc
        return str(proc.pid)

    def poll(self) -> None:
        """Reap finished children of this process (no zombies)."""
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]

    def close(self, timeout: float = 10.0) -> None:
        """Reap the jobs that have finished; the others go on, detached from this object."""
        deadline = time.monotonic() + float(timeout)
        for pid, proc in list(self._procs.items()):
            finished = (job_state(proc.args[-1]).get("state") in ("done", "failed"))
            try:
                proc.wait(max(0.0, deadline - time.monotonic()) if finished else 0.01)
            except subprocess.TimeoutExpired:
                _DETACHED.append(proc)  # still running: keep the handle until exit
            del self._procs[pid]

    def terminate(self, external_id: str, job_dir) -> None:
        """Stop the job's process group (SIGTERM, then SIGKILL after 5 s)."""
        st = _read_json(Path(job_dir) / "status.json") or {}
        pid = int(st.get("pid") or external_id or 0)
        if pid <= 0 or not _pid_alive(pid):
            return
        try:
            pgid = os.getpgid(pid)
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _pid_alive(pid, str(job_dir)):
            self.poll()
            time.sleep(0.05)
        if _pid_alive(pid, str(job_dir)):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.poll()


def _dask_run(job_dir: str) -> int:
    """Dask task: run the job's runner in a subprocess on the worker."""
    job_dir = Path(job_dir)
    with open(job_dir / "job.log", "ab") as log:
        return subprocess.call(_runner_argv(job_dir), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=job_dir)


def _dask_kill(pid: int, host: str) -> bool:
    if socket.gethostname() != host:
        return False
    try:
        os.killpg(os.getpgid(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
    return True


class DaskExecutor:
    """Jobs as tasks on a Dask cluster (``dask.distributed.Client``).

    Each task runs the job runner in a subprocess on its worker; the task is
    fire-and-forget, so it goes on if this process ends. The output folders must be on a
    file system the workers share.

    Parameters
    ----------
    client : dask.distributed.Client
    max_jobs : int, optional
        Jobs at once (default: the cluster's worker threads, at least 1).
    workers : int
        Worker processes per job (``sxlab process -j``). Default 1.
    """

    name = "dask"

    def __init__(self, client, max_jobs: int | None = None, workers: int = 1):
        self.client = client
        if max_jobs is None:
            info = client.scheduler_info().get("workers", {})
            max_jobs = max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))
        self.max_jobs = int(max_jobs)
        self.workers = int(workers)

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.client.scheduler.address} max_jobs={self.max_jobs}>"

    def submit(self, job_dir) -> str:
        from distributed import fire_and_forget

        key = f"sxlab-job-{Path(job_dir).name}-{time.time_ns()}"
        fut = self.client.submit(_dask_run, str(job_dir), key=key, pure=False)
        fire_and_forget(fut)
        return key

    def poll(self) -> None:
        """Nothing to reap: job states come from the job folders."""

    def close(self) -> None:
        """Nothing to release: the tasks are fire-and-forget."""

    def terminate(self, external_id: str, job_dir) -> None:
        """Kill the runner on whichever worker host runs it."""
        st = _read_json(Path(job_dir) / "status.json") or {}
        if st.get("state") == "running" and st.get("pid"):
            self.client.run(_dask_kill, int(st["pid"]), str(st.get("host")))


_JOBQUEUE = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster"}


def jobqueue_cluster(system: str, *, cores: int = 8, memory: str = "16GB",
                     walltime: str = "04:00:00", queue: str | None = None,
                     account: str | None = None, log_directory: str | None = None,
                     **kwargs):
    """A dask-jobqueue cluster for SLURM, PBS or LSF that runs sxlab jobs.

    Each batch job starts one Dask worker with ``cores`` threads and ``memory``; the
    workers run this Python (``sys.executable``), so sxlab must be installed where the
    batch jobs run. Scale with ``cluster.scale(jobs=N)`` or ``cluster.adapt(...)`` and
    hand ``Client(cluster)`` to :class:`DaskExecutor`.

    Parameters
    ----------
    system : {"slurm", "pbs", "lsf"}
    cores, memory, walltime, queue, account, log_directory
        Batch-job resources (see dask-jobqueue).
    **kwargs
        Passed to the dask-jobqueue cluster class (e.g. ``job_extra_directives``).

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Its ``job_script()`` is the script submitted to the scheduler.
    """
    import dask_jobqueue

    try:
        cls = getattr(dask_jobqueue, _JOBQUEUE[system.lower()])
    except KeyError:
        raise ValueError(f"unknown batch system {system!r}; known: {sorted(_JOBQUEUE)}") \
            from None
    options = {"cores": int(cores), "memory": memory, "walltime": walltime,
               "python": sys.executable, "job_name": "sxlab", "processes": 1}
    if queue:
        options["queue"] = queue
    if account:
        options["account"] = account
    if log_directory:
        options["log_directory"] = log_directory
    options.update(kwargs)
    return cls(**options)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m sxlab.experiment.jobs JOB_DIR")
    sys.exit(run_job(sys.argv[1]))
