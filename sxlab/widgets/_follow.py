"""Following a growing output directory, and periodic polling in a notebook.

:class:`PartsFollower` reads the committed parts of a :func:`sxlab.process_run` output
directory (``parts/<kind>-<first>-<last>.parquet``, committed once the part's frames file
exists) that it has not read before; :class:`Poller` calls a function every few seconds
on the kernel's event loop (a thread where no loop runs).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pandas as pd


class PartsFollower:
    """New committed parts of one table of an output directory, part by part."""

    def __init__(self, path, kind: str):
        self.path = Path(path)
        self.kind = kind
        self._seen: set[str] = set()

    def read_new(self) -> pd.DataFrame | None:
        """Rows of the parts committed since the last call (None when there are none)."""
        parts = self.path / "parts"
        stems = sorted(p.name[len("frames-"):-len(".parquet")]
                       for p in parts.glob("frames-*.parquet"))
        tables = []
        for stem in stems:
            if stem in self._seen:
                continue
            f = parts / f"{self.kind}-{stem}.parquet"
            if not f.is_file():
                continue
            tables.append(pd.read_parquet(f))
            self._seen.add(stem)
        if not tables:
            return None
        return pd.concat(tables, ignore_index=True)


class Poller:
    """Call ``fn()`` every ``interval_s`` seconds until :meth:`stop`."""

    def __init__(self, fn, interval_s: float):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.fn = fn
        self.interval_s = float(interval_s)
        self._stop = threading.Event()
        self._task = self._thread = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(self._run_async())
        else:
            self._thread = threading.Thread(target=self._run_thread, daemon=True)
            self._thread.start()

    async def _run_async(self) -> None:
        while not self._stop.is_set():
            self.fn()
            await asyncio.sleep(self.interval_s)

    def _run_thread(self) -> None:
        while not self._stop.is_set():
            self.fn()
            self._stop.wait(self.interval_s)

    @property
    def running(self) -> bool:
        if self._task is not None:
            return not self._task.done() and not self._stop.is_set()
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
