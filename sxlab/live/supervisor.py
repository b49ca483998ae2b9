"""One-machine supervisor of a live run: broker, ingest, workers, output, summary.

:func:`run_live` starts the embedded broker unless given one, the ingest and ``n_workers``
workers as separate processes (``python -m sxlab live ingest|worker``), restarts any of
them that dies (a restarted worker keeps its consumer name, so it first finishes what it
had been handed), appends the CrystFEL stream as parts commit, and returns when the
series has ended and every frame is acknowledged, after recording frames that never
reached a worker as failed and writing the consolidated tables.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .broker import Broker

__all__ = ["LiveRunSummary", "run_live"]

log = logging.getLogger("sxlab.live")


@dataclass
class LiveRunSummary:
    """Result of :func:`run_live`."""

    key: str
    results: object
    status: pd.DataFrame
    wall_s: float
    restarts: dict = field(default_factory=dict)
    master: str | None = None

    def table(self) -> pd.DataFrame:
        """One-row summary: the results' summary plus stream, wall time and restarts."""
        s = self.results.summary()
        s.insert(0, "stream", self.key)
        s["wall_s"] = self.wall_s
        s["restarts"] = sum(self.restarts.values())
        return s


def _cmd(*args) -> list[str]:
    return [sys.executable, "-m", "sxlab", "live", *map(str, args)]


class _Child:
    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.restarts = 0
        self.proc = None
        self.start()

    def start(self) -> None:
        fh = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            fh.close()

    def poll(self):
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_live(source: str, params_path, out, *, geometry=None, n_workers: int = 2,
             broker_url: str | None = None, beamtime: str = "local",
             detector: str = "eiger", run: str | None = None,
             maxlen_frames: int | None = None, maxlen_minutes: float | None = None,
             backfill=None, claim_idle_s: float = 30.0, batch: int = 4,
             publish: str = "results", timeout_s: float | None = None,
             progress: bool = True, write=None, store: str = "all",
             blank_sample: float = 0.0, blank_seed: int = 0, bin_factor: int | None = None,
             frames_per_file: int = 1000) -> LiveRunSummary:
    """Process one series arriving on ``source`` into ``out``.

    Parameters
    ----------
    source : str
        Detector stream endpoint, e.g. ``tcp://127.0.0.1:9999``.
    params_path : path or None
        Parameter file (``Params.save``); None: defaults.
    out : path
        Output directory (batch layout).
    geometry : path, optional
        CrystFEL geometry file (default: the one in the run header).
    n_workers : int
    broker_url : str, optional
        ``redis://...`` of a running server (default: an embedded one for this run).
    maxlen_frames, maxlen_minutes : optional
        Broker cache bound (see :class:`~sxlab.live.ingest.Ingest`).
    backfill : path, optional
        The detector's files of the series, to fill frames lost in transit.
    timeout_s : float, optional
        Give up (and stop everything) after this long.
    write : path, optional
        Also store the run as NeXus files there (:mod:`sxlab.live.writer`).
    store : {"all", "hits", "indexed"}
        Which frames ``write`` stores (:mod:`sxlab.live.storage`).
    blank_sample, blank_seed : float, int
        With ``store`` hits or indexed: the seeded random fraction of the other frames
        stored as well.
    bin_factor : int, optional
        Bin frames ``bin_factor`` × ``bin_factor`` for processing. Without ``write`` the
        workers bin each frame as they decode it (``sxlab live worker --bin``; positions
        reported in unbinned pixels); with ``write`` the binning worker
        (:mod:`sxlab.live.binner`) publishes a binned stream that processing and
        ``write`` use (positions in binned pixels, the binned geometry).
    frames_per_file : int
        Frames per data file of ``write``.

    Returns
    -------
    LiveRunSummary
    """
    from sxlab.params import Params

    from .worker import LiveOutput, geometry_from_header

    worker_bin = bin_factor if bin_factor and not write else None
    if geometry and bin_factor and not worker_bin:
        raise ValueError("--geometry and --bin do not go together: the binning worker bins "
                         "the geometry of the series header")
    if store not in ("all", "hits", "indexed"):
        raise ValueError(f"unknown storage policy {store!r}; use all, hits or indexed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    params = Params.load(params_path) if params_path else Params()
    if params_path is None:
        params_path = out / "params.toml"
        if not params_path.exists():
            params.save(params_path)
    t_start = time.time()
    broker = Broker(broker_url, beamtime=beamtime, source=detector)
    children: list[_Child] = []
    bar = None
    try:
        common = ["--broker", broker.url, "--beamtime", beamtime, "--detector", detector]
        ingest_args = ["ingest", "--source", source, *common, "--series-count", 1]
        if run:
            ingest_args += ["--run", run]
        if maxlen_frames:
            ingest_args += ["--maxlen", maxlen_frames]
        if maxlen_minutes:
            ingest_args += ["--maxlen-minutes", maxlen_minutes]
        if backfill:
            ingest_args += ["--backfill", backfill]
        children.append(_Child("ingest", _cmd(*ingest_args), logs / "ingest.log"))
        which = ["--since", repr(t_start)] + (["--run", run] if run else [])
        binned = f"binned{bin_factor}" if bin_factor and not worker_bin else None
        if binned:
            children.append(_Child("binner", _cmd("bin", *common, *which, "--factor",
                                                  bin_factor), logs / "binner.log"))
        selection = store if write and store != "all" else None
        if selection and selection not in publish.split(","):
            publish = f"{publish},{selection}"
        for k in range(n_workers):
            wargs = ["worker", *common, "--out", out, "--params", params_path,
                     "--since", repr(t_start), "--worker", k, "--name", f"w{k}",
                     "--claim-idle", claim_idle_s, "--batch", batch, "--publish", publish]
            if geometry:
                wargs += ["--geometry", geometry]
            if run:
                wargs += ["--run", run]
            if binned:
                wargs += ["--input", binned]
            if worker_bin:
                wargs += ["--bin", worker_bin]
            if selection:
                wargs += ["--blank-sample", blank_sample, "--blank-seed", blank_seed]
            children.append(_Child(f"w{k}", _cmd(*wargs), logs / f"worker{k}.log"))
        if write:
            kind = "_".join(p for p in (binned, None if store == "all" else store) if p)
            children.append(_Child("writer", _cmd(
                "write", *common, *which, "--out", write, "--input", kind or "frames",
                "--frames-per-file", frames_per_file), logs / "writer.log"))
        key = None
        output = None
        while True:
            if timeout_s is not None and time.time() - t_start > timeout_s:
                raise TimeoutError(f"live run did not finish within {timeout_s} s")
            if key is None:
                key = broker.wait_run(since=t_start, timeout_s=0.2, run=run)
                if key is not None:
                    if binned:
                        from .binner import binned_params
                        from .broker import derived_key

                        key = derived_key(key, binned)
                        params = binned_params(params, bin_factor)   # as the workers do
                    if worker_bin:
                        from .binner import binned_params

                        params = binned_params(params, worker_bin)   # as the workers do
                    header = broker.wait_header(key, timeout_s=30)
                    from sxlab.io import read_geom

                    geom = read_geom(geometry) if geometry else geometry_from_header(header)
                    output = LiveOutput(out, params, geom)
                    if progress:
                        from tqdm.auto import tqdm

                        total = header["config"].get("nimages")
                        bar = tqdm(total=int(total) if total else None, desc="live",
                                   unit="frame")
            finished = key is not None and broker.finished(key, "process")
            ended = key is not None and broker.info(key).get("state") == "ended"
            for c in children:
                rc = c.poll()
                if rc is None:
                    continue
                if c.name == "ingest" and (rc == 0 or ended):
                    continue
                if c.name != "ingest" and (rc == 0 and finished):
                    continue
                if c.name in ("binner", "writer") and rc == 0:
                    continue                      # done: the run has ended
                c.restarts += 1
                log.warning("%s exited with status %s; restarting it (see %s)", c.name, rc,
                            c.log_path)
                c.start()
            if output is not None:
                n = output.follow()
                if bar is not None and n:
                    bar.update(n)
            if finished and all(c.poll() is not None for c in children if c.name != "ingest"):
                break
            time.sleep(0.2)
        output.follow()
        status = broker.status(key)
        results = output.finish(broker, key)
        master = None
        if write:
            from .writer import master_path

            master = str(master_path(write, broker.header(key)["run"], kind or "frames"))
        return LiveRunSummary(key, results, status, time.time() - t_start,
                              {c.name: c.restarts for c in children}, master)
    finally:
        if bar is not None:
            bar.close()
        for c in children:
            c.stop()
        broker.close()
