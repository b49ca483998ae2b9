"""Run discovery: find runs in a folder by template and decide when each is complete.

A run is complete when (first rule that applies):

1. a status file says so: ``<run>_status.txt`` next to the master file, or
   ``status.txt`` in a folder holding only that run (Cheetah style), with a line
   ``Status: Finished`` (also ``complete``/``completed``/``done``; any other value
   means still acquiring);
2. ``expected_frames`` is given and that many frames are present in the data files;
3. every data file the master links to (external links and virtual-dataset sources)
   exists and all sizes are unchanged since the previous check.

:class:`FolderWatcher` wakes on file-system events (watchdog: inotify on Linux, or
polling for network file systems) and at least every ``interval`` seconds, because
completeness depends on time (stable sizes), not on events alone.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FolderWatcher", "RunCheck", "check_run", "find_runs", "run_name", "run_number"]

_FINISHED = {"finished", "complete", "completed", "done"}
_STATUS_LINE = re.compile(r"^\s*#?\s*status\s*[:=]\s*(.+?)\s*$", re.IGNORECASE)


def find_runs(folder, template: str = "*_master.h5") -> list[Path]:
    """Files under ``folder`` matching the glob ``template`` (``**`` allowed), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder to watch")
    return sorted(p for p in folder.glob(template) if p.is_file())


def run_name(path) -> str:
    """The run's name: the file name without its suffix and a ``_master`` ending.

    >>> run_name("/data/run0012_master.h5")
    'run0012'
    """
    stem = Path(path).name.split(".")[0]
    return stem[: -len("_master")] if stem.endswith("_master") else stem


def run_number(name: str) -> int | None:
    """The last group of digits of a run name (None when it has none).

    >>> run_number("lyso_run0012"), run_number("calib")
    (12, None)
    """
    found = re.findall(r"\d+", name)
    return int(found[-1]) if found else None


@dataclass
class RunCheck:
    """Result of :func:`check_run`."""

    complete: bool
    signature: str
    n_frames: int | None
    reason: str


def _status_file(path: Path, template: str) -> Path | None:
    own = path.with_name(f"{run_name(path)}_status.txt")
    if own.is_file():
        return own
    shared = path.with_name("status.txt")
    if shared.is_file() and len(list(path.parent.glob(Path(template).name))) == 1:
        return shared
    return None


def _read_status(path: Path) -> str | None:
    for line in path.read_text(errors="replace").splitlines():
        m = _STATUS_LINE.match(line)
        if m:
            return m.group(1).lower()
    return None


def _linked_files(master: Path) -> tuple[list[tuple[Path, str]], bool]:
    """(data file, dataset) pairs the master points to; and whether it holds data itself."""
    import h5py

    links: list[tuple[Path, str]] = []
    own_data = False
    with h5py.File(master, "r") as f:
        group = f.get("entry/data")
        if group is None:
            return links, True
        for key in group:
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                links.append((master.parent / link.filename, link.path))
                continue
            obj = group.get(key)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    for vs in obj.virtual_sources():
                        name = vs.file_name
                        target = master if name == "." else master.parent / name
                        links.append((target, vs.dset_name))
                else:
                    own_data = True
    seen: dict = {}
    for target, dset in links:
        seen.setdefault((str(target), dset), (target, dset))
    return list(seen.values()), own_data


def _frames_present(links: list[tuple[Path, str]]) -> int:
    import h5py

    total = 0
    for target, dset in links:
        try:
            with h5py.File(target, "r") as f:
                total += int(f[dset].shape[0])
        except (OSError, KeyError):
            continue
    return total


def check_run(path, previous_signature: str = "", *, expected_frames: int | None = None,
              template: str = "*_master.h5") -> RunCheck:
    """Whether the run whose master file is ``path`` is complete (see the module rules).

    Parameters
    ----------
    path : path-like
        Master file.
    previous_signature : str
        ``signature`` of the previous check (for the stable-sizes rule).
    expected_frames : int, optional
        Frames that make the run complete.
    template : str
        The watch template (to know whether a ``status.txt`` belongs to this run alone).

    Returns
    -------
    RunCheck
    """
    path = Path(path)
    status = _status_file(path, template)
    try:
        links, own = _linked_files(path)
    except OSError as exc:  # master being written
        return RunCheck(False, "", None, f"master not readable yet: {exc}")
    missing = [str(t) for t, _ in links if not t.is_file()]
    sizes = [(str(t), t.stat().st_size if t.is_file() else -1) for t, _ in links]
    signature = json.dumps([path.stat().st_size, sizes])
    if status is not None:
        value = _read_status(status)
        if value in _FINISHED and not missing:
            return RunCheck(True, signature, None, f"{status.name}: {value}")
        return RunCheck(False, signature, None, f"{status.name}: {value or 'no Status line'}")
    if missing:
        return RunCheck(False, signature, None, f"{len(missing)} linked file(s) missing")
    if expected_frames is not None:
        n = _frames_present(links) if links else None
        if n is not None and n >= int(expected_frames):
            return RunCheck(True, signature, n, f"{n} frames present")
        return RunCheck(False, signature, n, f"{n} of {expected_frames} frames present")
    if not links and not own:
        return RunCheck(False, signature, None, "no data in the master file")
    if previous_signature and previous_signature == signature:
        return RunCheck(True, signature, None, "linked files present, sizes stable")
    return RunCheck(False, signature, None, "waiting for the file sizes to settle")


class FolderWatcher:
    """Call ``callback()`` on file-system events in ``folder`` and every ``interval`` s.

    Runs in a daemon thread; :meth:`stop` ends it. With ``polling=True`` (or where
    inotify is not available) watchdog's polling observer is used, which also works on
    network file systems.

    Parameters
    ----------
    folder : path-like
    callback : callable
        Called with no arguments; exceptions are kept in :attr:`errors` and the watcher
        goes on.
    interval : float
        Longest time between two calls, in seconds.
    polling : bool
        Use the polling observer.
    """

    def __init__(self, folder, callback, *, interval: float = 2.0, polling: bool = False):
        self.folder = Path(folder)
        self.callback = callback
        self.interval = float(interval)
        self.polling = bool(polling)
        self.errors: list[BaseException] = []
        self.passes = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer = None

    def _start_observer(self) -> None:
        from watchdog.events import FileSystemEventHandler

        wake = self._wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if not event.is_directory or event.event_type == "created":
                    wake.set()

        if self.polling:
            from watchdog.observers.polling import PollingObserver as Observer
        else:
            from watchdog.observers import Observer
        try:
            obs = Observer()
            obs.schedule(_Handler(), str(self.folder), recursive=True)
            obs.start()
        except OSError:
            from watchdog.observers.polling import PollingObserver

            self.polling = True
            obs = PollingObserver()
            obs.schedule(_Handler(), str(self.folder), recursive=True)
            obs.start()
        self._observer = obs

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.callback()
            except Exception as exc:  # noqa: BLE001 - kept; the beamtime goes on
                self.errors.append(exc)
            self.passes += 1
            self._wake.wait(self.interval)
            self._wake.clear()

    def start(self) -> FolderWatcher:
        """Start observing and calling back; returns self."""
        if self._thread is not None:
            raise RuntimeError("watcher already started")
        self._start_observer()
        self._thread = threading.Thread(target=self._loop, name=f"sxlab-watch {self.folder}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop the thread (after the pass under way) and the observer."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        """Block until :meth:`stop` is called from elsewhere (or KeyboardInterrupt)."""
        try:
            while self.running:
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        kind = "polling" if self.polling else "inotify"
        return f"<FolderWatcher {self.folder} {state}, {kind}, {self.passes} passes>"
