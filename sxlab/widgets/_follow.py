"""Periodic polling in a notebook: :class:`Poller` calls a function every few seconds.

It runs on the kernel's event loop when there is one (a task), else in a daemon thread.
The widgets poll a growing results directory with :class:`sxlab.results.ResultsReader`.
"""

from __future__ import annotations

import asyncio
import threading


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
