"""One executor for every run-wide pass: this process, a local pool, threads or Dask.

:func:`map_unordered` runs a task function over many tasks (chunks of frames, blocks of a
run) on the executor a caller names, the same way for every pass over a run
(:func:`sxlab.process_run`, :func:`sxlab.hits.run_statistics`):

* ``"serial"``: in this process, in order;
* ``"local"``: a process pool of ``n_workers`` processes, started with
  :func:`mp_start_method` (``fork`` on Linux: workers start in a fraction of a second);
* ``"threads"``: a thread pool (for work that releases the GIL, or overlaps reading);
* a ``dask.distributed.Client``: its cluster.

Worker processes of the local pool die with the process that started them: each asks the
kernel to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``) and watches its
parent's id as well (elsewhere), so a killed ``sxlab process`` leaves no worker behind.
They ignore Ctrl-C (SIGINT, sent to the whole terminal process group): the caller gets the
KeyboardInterrupt, and the pool's processes are terminated at once instead of finishing
their tasks, whenever the caller stops iterating early or an exception passes through.

Each worker (process, thread, or thread of a Dask worker) calls ``setup(worker_id)`` once,
before its first task, and keeps what it returns (prepared objects, reopened files) for
its later tasks: prepared objects are not shared between threads. A task may report
progress units while it runs (``report(n)``); they reach the caller's ``progress`` in the
calling thread (from processes through a queue).

Examples
--------
>>> import functools, operator
>>> sorted(map_unordered(lambda base, x, report: base + x, [1, 2, 3],
...                      setup=lambda worker: 10, executor="serial"))
[(0, 11), (1, 12), (2, 13)]
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import queue as queue_module
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

__all__ = ["EXECUTORS", "die_with_parent", "map_unordered", "mp_start_method",
           "system_arrow_allocator"]

#: Executor names; a ``dask.distributed.Client`` is accepted too.
EXECUTORS = ("serial", "local", "threads")

# Per-worker state in worker processes (set by the pool's initializer).
_STATE: dict = {}
# Per-(call, thread) state on Dask workers, the most recent few calls.
_DASK_STATES: collections.OrderedDict = collections.OrderedDict()
_DASK_KEEP = 4
_DASK_LOCK = threading.Lock()


def mp_start_method() -> str:
    """Start method of the local process pool: ``SXLAB_MP_START`` or ``fork`` on Linux.

    Forked workers start in a fraction of a second; ``spawn`` (the default elsewhere)
    starts a fresh interpreter per worker and pays every import and kernel load again
    (a script using it must guard its main code with ``if __name__ == "__main__":``).
    Files are reopened in each worker either way.

    Examples
    --------
    >>> mp_start_method() in ("fork", "spawn", "forkserver")
    True
    """
    env = os.environ.get("SXLAB_MP_START")
    if env:
        return env
    return "fork" if sys.platform.startswith("linux") else "spawn"


def system_arrow_allocator() -> None:
    """Let Arrow (pandas strings, Parquet I/O) allocate with the C library's ``malloc``.

    Arrow's own pool keeps about 15-20 MB per process once a run's tables are written,
    which a worker process (``sxlab process``, a live worker) does better without. The
    command line calls this at start, before pandas is imported and before any pool is
    forked (worker processes inherit it); a ``ARROW_DEFAULT_MEMORY_POOL`` already set is
    kept.

    Examples
    --------
    >>> system_arrow_allocator()
    """
    if os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system") != "system":
        return
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:  # already loaded: its default pool exists, switch from now on
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


def _noop(n: int) -> None:
    pass


def _is_dask_client(executor) -> bool:
    return hasattr(executor, "submit") and hasattr(executor, "scatter")


_PR_SET_PDEATHSIG = 1


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


def die_with_parent(parent: int) -> None:
    """Make this (worker) process end when process ``parent`` ends, and ignore Ctrl-C.

    Linux delivers SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``); a daemon
    thread also checks the parent id twice a second (any platform, and the case of a
    parent that died before this was set up).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="sxlab-parent-watch").start()


def _init_process(setup, ids, reports, parent) -> None:
    die_with_parent(parent)
    _STATE["state"] = setup(ids.get())
    _STATE["report"] = reports.put if reports is not None else _noop


def _run_in_process(task_fn, task):
    return task_fn(_STATE["state"], task, _STATE["report"])


def _run_on_dask(setup, token: str, task_fn, task):
    key = (token, threading.get_ident())
    with _DASK_LOCK:
        state = _DASK_STATES.get(key)
    if state is None:
        try:
            from distributed import get_worker

            worker = abs(hash(get_worker().address)) % 10**6
        except (ImportError, ValueError):
            worker = os.getpid()
        state = setup(worker)
        with _DASK_LOCK:
            _DASK_STATES[key] = state
            while len({k[0] for k in _DASK_STATES}) > _DASK_KEEP:
                _DASK_STATES.popitem(last=False)
    return task_fn(state, task, _noop)


def _drain(reports, progress, timeout: float) -> None:
    while True:
        try:
            n = reports.get(timeout=timeout) if timeout else reports.get_nowait()
        except queue_module.Empty:
            return
        progress(n)
        timeout = 0.0


def _terminate(pool) -> None:
    """Stop a pool at once: cancel what has not started, end worker processes."""
    pool.shutdown(wait=False, cancel_futures=True)
    processes = getattr(pool, "_processes", None) or {}  # stdlib has no public handle
    for p in list(processes.values()):
        if p.is_alive():
            p.terminate()
    for p in list(processes.values()):
        p.join(timeout=5)
        if p.is_alive():
            p.kill()


def _pooled(pool, futures: dict, reports, progress) -> Iterator[tuple[int, object]]:
    finished = False
    try:
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            if reports is not None:
                _drain(reports, progress, 0.0)
            for fut in done:
                yield futures[fut], fut.result()
        if reports is not None:
            _drain(reports, progress, 0.0)
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:  # an exception, Ctrl-C, or the caller stopped iterating
            _terminate(pool)


def map_unordered(task_fn: Callable, tasks: Iterable, *, setup: Callable,
                  executor="local", n_workers: int | None = None,
                  progress: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[int, object]]:
    """Run ``task_fn(state, task, report)`` for every task; yield results as they finish.

    Parameters
    ----------
    task_fn : callable
        ``task_fn(state, task, report) -> result``; module-level (it is pickled for
        processes and Dask).
    tasks : iterable
        The tasks (picklable for processes and Dask).
    setup : callable
        ``setup(worker_id) -> state``, called once per worker before its first task;
        picklable. Worker ids are ``0 .. n_workers - 1`` for processes and threads,
        derived from the worker's address with Dask.
    executor : {"local", "serial", "threads"} or dask.distributed.Client
        Where the tasks run (see the module notes). ``"local"`` with one worker runs in
        this process.
    n_workers : int, optional
        Processes or threads (default: every CPU). Ignored by ``"serial"`` and Dask.
    progress : callable, optional
        Receives, in the calling thread, the units tasks ``report``.

    Yields
    ------
    (int, object)
        The task's position in ``tasks`` and its result, in completion order (task order
        for ``"serial"``).

    Raises
    ------
    ValueError
        An unknown executor.
    """
    tasks = list(tasks)
    progress = progress or _noop
    n = int(n_workers or os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if executor == "serial" or (executor == "local" and n == 1):
        state = setup(0)
        for i, task in enumerate(tasks):
            yield i, task_fn(state, task, progress)
        return
    if executor == "local":
        ctx = multiprocessing.get_context(mp_start_method())
        ids = ctx.Queue()
        for k in range(n):
            ids.put(k)
        reports = ctx.Queue()
        pool = cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_process,
                                      initargs=(setup, ids, reports, os.getpid()))
        try:
            futures = {pool.submit(_run_in_process, task_fn, t): i
                       for i, t in enumerate(tasks)}
            yield from _pooled(pool, futures, reports, progress)
        finally:
            reports.close()
            reports.join_thread()
        return
    if executor == "threads":
        reports = queue_module.Queue()
        local = threading.local()
        counter = iter(range(n))
        lock = threading.Lock()

        def run(task):
            if not hasattr(local, "state"):
                with lock:
                    worker = next(counter)
                local.state = setup(worker)
            return task_fn(local.state, task, reports.put)

        pool = cf.ThreadPoolExecutor(n)
        futures = {pool.submit(run, t): i for i, t in enumerate(tasks)}
        yield from _pooled(pool, futures, reports, progress)
        return
    if _is_dask_client(executor):
        from distributed import as_completed

        setup_f = executor.scatter(setup, broadcast=True, hash=False)
        token = uuid.uuid4().hex
        futures = [executor.submit(_run_on_dask, setup_f, token, task_fn, t, pure=False)
                   for t in tasks]
        position = {f.key: i for i, f in enumerate(futures)}
        for fut in as_completed(futures):
            yield position[fut.key], fut.result()
        return
    raise ValueError(f"unknown executor {executor!r}: use one of {EXECUTORS} or a "
                     "dask.distributed.Client")
