"""The batch pipeline: prepare once per worker, process frames, collect tidy tables.

``process_frame`` runs load → mask → peaks → hit → index → integrate on one frame with
a prepared :class:`Context`; ``process_run`` does it for every frame of a run on a local
process pool, in this process, or on a Dask cluster, and returns :class:`Results` with
the frames, peaks, crystals, reflections and profile tables in frame order. With an
output directory, results are written in committed parts as they arrive, so a rerun into
the same directory resumes where an interrupted one stopped; every frame appears exactly
once.

Frame-table columns (:data:`FRAME_SCHEMA`):

================  ======  ============================================================
column            dtype   meaning
================  ======  ============================================================
frame             int64   global frame index in the run
run               str     run name
event             str     CrystFEL-style event id within the file (``//<index>``)
filename          str     file the frame was read from
status            str     ``ok`` or ``failed``
error             str     error text of a failed frame (empty when ok)
n_peaks           int64   peaks found
hit               bool    ``hits.min_peaks <= n_peaks`` (``<= max_peaks`` when set)
indexed           bool    at least one crystal indexed
n_crystals        int64   lattices indexed
n_reflections     int64   reflections integrated
resolution_A      float64 highest-resolution shell with mean I/σ(I) ≥ 1 (NaN if none)
solvent_ratio     float64 mean intensity at the water-ring angle over the low angle
worker            int64   worker that processed the frame
read_s .. total_s float64 wall seconds per stage: read, peaks, index, integrate, total
================  ======  ============================================================
"""

from __future__ import annotations

import concurrent.futures as cf
import html
import json
import multiprocessing
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .params import Params

__all__ = [
    "FRAME_SCHEMA",
    "Context",
    "FrameResult",
    "Results",
    "atomic_parquet",
    "failed_result",
    "committed_parts",
    "finish_output",
    "prepare",
    "prepare_output",
    "process_frame",
    "process_run",
    "read_parts",
    "write_part",
]

FRAME_SCHEMA = {
    "frame": "int64",
    "run": "object",
    "event": "object",
    "filename": "object",
    "status": "object",
    "error": "object",
    "n_peaks": "int64",
    "hit": "bool",
    "indexed": "bool",
    "n_crystals": "int64",
    "n_reflections": "int64",
    "resolution_A": "float64",
    "solvent_ratio": "float64",
    "worker": "int64",
    "read_s": "float64",
    "peaks_s": "float64",
    "index_s": "float64",
    "integrate_s": "float64",
    "total_s": "float64",
}

_TABLES = ("frames", "peaks", "crystals", "reflections", "profile")


def _schema(kind: str) -> dict:
    """Column -> dtype of a table (schemas may carry (dtype, description) pairs)."""
    return {c: (t[0] if isinstance(t, tuple) else t) for c, t in _raw_schema(kind).items()}


def _raw_schema(kind: str) -> dict:
    if kind == "frames":
        return FRAME_SCHEMA
    if kind == "peaks":
        from .peaks import PEAK_SCHEMA

        return PEAK_SCHEMA
    if kind == "crystals":
        from .index import CRYSTAL_SCHEMA

        return CRYSTAL_SCHEMA
    if kind == "reflections":
        from .integrate import REFLECTION_SCHEMA

        return REFLECTION_SCHEMA
    from .profiling import PROFILE_SCHEMA

    return PROFILE_SCHEMA


def _empty(kind: str) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _schema(kind).items()})


def _concat(kind: str, tables) -> pd.DataFrame:
    tables = [t for t in tables if t is not None and len(t)]
    if not tables:
        return _empty(kind)
    out = pd.concat(tables, ignore_index=True)
    return out.astype({c: t for c, t in _schema(kind).items() if c in out.columns})


# ---------------------------------------------------------------------------- context
@dataclass
class Context:
    """Everything one worker prepares once and reuses for every frame.

    Attributes
    ----------
    geometry : Detector
    params : Params
    mask : Mask
        Static mask: geometry bad regions, beam stop, resolution limits, edges, files.
    finder : PeakFinder or None
    indexer : Indexer or None
    integrator : Integrator or None
    solvent : SolventRatio
    profiler : Profiler
    worker : int
    """

    geometry: object
    params: Params
    mask: object
    finder: object
    indexer: object
    integrator: object
    solvent: object
    profiler: object
    worker: int = 0


def build_mask(geometry, params: Params):
    """The static mask described by ``params.mask`` (plus the geometry's bad pixels)."""
    from . import masks

    mp = params.mask
    mask = masks.mask_from_geometry(geometry)
    if mp.beamstop_radius_px > 0:
        mask &= masks.mask_beamstop(geometry, mp.beamstop_radius_px,
                                    rod_width_px=mp.beamstop_rod_width_px or None,
                                    rod_angle_deg=mp.beamstop_rod_angle_deg)
    if mp.d_min_A is not None or mp.d_max_A is not None:
        mask &= masks.mask_resolution(geometry, d_min=mp.d_min_A, d_max=mp.d_max_A)
    if mp.edge_pixels > 0:
        mask &= masks.mask_panel_edges(geometry, mp.edge_pixels)
    if mp.mask_file is not None:
        mask &= masks.mask_from_hdf5(geometry, mp.mask_file, mp.mask_dataset or "/data/data",
                                     badbits=mp.mask_badbits)
    return mask


def _solvent_angles(geometry) -> tuple[float, float]:
    """Water-ring (d = 3.2 Å) and background (d = 6 Å) scattering angles for the beam."""
    lam = geometry.beam.wavelength_A
    return (float(np.degrees(2 * np.arcsin(min(lam / 6.4, 1.0)))),
            float(np.degrees(2 * np.arcsin(min(lam / 12.0, 1.0)))))


def prepare(geometry, params: Params | None = None, *, worker: int = 0) -> Context:
    """Build a worker's :class:`Context` once (masks, peak finder, indexer, integrator).

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> ctx = prepare(run.geometry, Params())
    >>> result = process_frame(*run.read(0), ctx)  # doctest: +SKIP
    """
    from .hits import SolventRatio
    from .profiling import Profiler

    params = params or Params()
    mask = build_mask(geometry, params)
    st = params.stages
    finder = indexer = integrator = None
    if st.peaks:
        from .peaks import PeakFinder

        finder = PeakFinder(geometry, mask, params.peaks)
    if st.index:
        from .index import Indexer

        indexer = Indexer(geometry, params.cell, params.index)
    if st.integrate:
        from .integrate import Integrator

        integrator = Integrator(geometry, mask, params.integrate)
    high, low = _solvent_angles(geometry)
    solvent = SolventRatio(geometry, mask, two_theta_high_deg=high, two_theta_low_deg=low)
    return Context(geometry, params, mask, finder, indexer, integrator, solvent,
                   Profiler(worker=worker, enabled=st.profile), worker)


# ----------------------------------------------------------------------- one frame
@dataclass
class FrameResult:
    """What :func:`process_frame` returns for one frame: the tables of that frame."""

    frame: dict
    peaks: pd.DataFrame
    crystals: pd.DataFrame
    reflections: pd.DataFrame
    profile: pd.DataFrame

    @property
    def row(self) -> pd.DataFrame:
        """The frame summary as a one-row DataFrame."""
        return _concat("frames", [pd.DataFrame([self.frame])])

    def table(self, kind: str) -> pd.DataFrame:
        """One of the tables by name: frames (the one-row summary), peaks, crystals, ..."""
        return self.row if kind == "frames" else getattr(self, kind)


def _frame_row(frame: int, attrs: dict, worker: int) -> dict:
    row = {c: None for c in FRAME_SCHEMA}
    row.update(frame=int(frame), run=str(attrs.get("run", "")),
               event=str(attrs.get("event", "")), filename=str(attrs.get("source", "")),
               status="ok", error="", n_peaks=0, hit=False, indexed=False, n_crystals=0,
               n_reflections=0, resolution_A=np.nan, solvent_ratio=np.nan, worker=worker,
               read_s=0.0, peaks_s=0.0, index_s=0.0, integrate_s=0.0, total_s=0.0)
    return row


def process_frame(image, bad=None, context: Context | None = None, *,
                  frame: int | None = None, read_s: float = 0.0,
                  wait_s: float = 0.0) -> FrameResult:
    """Run every enabled stage on one frame.

    Parameters
    ----------
    image : xarray.DataArray or ndarray
        The frame (float32, flagged pixels zero), as :meth:`Run.read` returns it.
    bad : array_like of bool, optional
        Per-frame bad pixels (True = bad).
    context : Context
        From :func:`prepare`.
    frame : int, optional
        Frame index (default: ``image.attrs["frame"]``).
    read_s : float
        Seconds spent reading (decoding) the frame, recorded as ``load-image-data``
        and counted in ``total_s``.
    wait_s : float
        Seconds spent waiting for the frame to arrive (live processing), recorded as
        the profile segment ``wait``; not counted in ``total_s``.

    Returns
    -------
    FrameResult
        ``frame`` (a dict with the :data:`FRAME_SCHEMA` columns), ``peaks``,
        ``crystals``, ``reflections`` and ``profile`` tables.
    """
    if context is None:
        raise TypeError("process_frame needs a context from prepare(geometry, params)")
    ctx = context
    attrs = dict(getattr(image, "attrs", {}) or {})
    if frame is None:
        frame = int(attrs.get("frame", -1))
    prof = ctx.profiler
    row = _frame_row(frame, attrs, ctx.worker)
    row["read_s"] = read_s
    peaks = crystals = reflections = None
    t_start = time.perf_counter()
    with prof.frame(frame):
        if wait_s:
            prof.add("wait", wait_s)
        if read_s:
            prof.add("load-image-data", read_s)
        if ctx.finder is not None:
            t0 = time.perf_counter()
            with prof.section("peak-search"):
                peaks = ctx.finder(image, bad, frame=frame)
            row["peaks_s"] = time.perf_counter() - t0
            row["n_peaks"] = len(peaks)
            hp = ctx.params.hits
            row["hit"] = bool(len(peaks) >= hp.min_peaks
                              and (hp.max_peaks <= 0 or len(peaks) <= hp.max_peaks))
        row["solvent_ratio"] = float(ctx.solvent(image, bad=bad))
        if ctx.indexer is not None and row["hit"]:
            t0 = time.perf_counter()
            with prof.section("index"):
                crystals = ctx.indexer(peaks, frame=frame)
            row["index_s"] = time.perf_counter() - t0
            row["n_crystals"] = len(crystals)
            row["indexed"] = len(crystals) > 0
        if ctx.integrator is not None and crystals is not None and len(crystals):
            from .integrate import resolution_estimate

            t0 = time.perf_counter()
            with prof.section("integration"):
                reflections = ctx.integrator(image, crystals, bad, peaks=peaks)
            row["integrate_s"] = time.perf_counter() - t0
            row["n_reflections"] = len(reflections)
            row["resolution_A"] = float(resolution_estimate(reflections))
    row["total_s"] = time.perf_counter() - t_start + read_s
    return FrameResult(row, _concat("peaks", [peaks]), _concat("crystals", [crystals]),
                       _concat("reflections", [reflections]),
                       _concat("profile", [prof.table(clear=True)]))


def failed_result(frame: int, error, worker: int = 0, run_name: str = "",
                  attrs: dict | None = None) -> FrameResult:
    """The result of a frame that could not be processed: a ``failed`` row saying why.

    ``error`` is an exception (recorded as ``Type: message``) or a text.
    """
    row = _frame_row(frame, {"run": run_name, **(attrs or {})}, worker)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    row.update(status="failed", error=text)
    return FrameResult(row, _empty("peaks"), _empty("crystals"), _empty("reflections"),
                       _empty("profile"))


def _process_index(run, i: int, ctx: Context) -> FrameResult:
    """Read frame ``i`` of ``run`` and process it; any failure becomes a failed row."""
    t0 = time.perf_counter()
    try:
        image, bad = run.read(i)
    except Exception as exc:  # noqa: BLE001 - recorded per frame, processing goes on
        return failed_result(i, exc, ctx.worker, getattr(run, "name", ""))
    read_s = time.perf_counter() - t0
    try:
        return process_frame(image, bad, ctx, frame=i, read_s=read_s)
    except Exception as exc:  # noqa: BLE001
        ctx.profiler.clear()
        return failed_result(i, exc, ctx.worker, getattr(run, "name", ""))


# --------------------------------------------------------------------- executors
_WORKER: dict = {}


def _worker_init(run, params: Params, worker_ids) -> None:
    worker = worker_ids.get() if worker_ids is not None else os.getpid()
    _WORKER["run"] = run
    _WORKER["ctx"] = prepare(run.geometry, params, worker=worker)


def _worker_chunk(indices: list[int]) -> list[FrameResult]:
    run, ctx = _WORKER["run"], _WORKER["ctx"]
    return [_process_index(run, i, ctx) for i in indices]


def _dask_chunk(run, params: Params, indices: list[int]) -> list[FrameResult]:
    # One context per (run, parameters, thread): prepared objects are not thread-safe.
    key = (id(run), params.digest(), threading.get_ident())
    ctx = _WORKER.get(key)
    if ctx is None:
        try:
            from distributed import get_worker

            worker = abs(hash(get_worker().address)) % 10**6
        except (ImportError, ValueError):
            worker = os.getpid()
        ctx = _WORKER[key] = prepare(run.geometry, params, worker=worker)
    return [_process_index(run, i, ctx) for i in indices]


def mp_start_method() -> str:
    """Start method of the local process pool: ``SXLAB_MP_START`` or ``fork`` on Linux.

    Forked workers start in a fraction of a second; ``spawn`` (the default elsewhere)
    starts a fresh interpreter per worker and pays every import and kernel load again.
    Frame files are reopened in each worker either way.
    """
    env = os.environ.get("SXLAB_MP_START")
    if env:
        return env
    return "fork" if sys.platform.startswith("linux") else "spawn"


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[k:k + size] for k in range(0, len(indices), size)]


def _iter_results(run, params: Params, todo: list[int], executor, n_workers: int,
                  chunk_size: int):
    """Yield lists of FrameResult as chunks finish (completion order)."""
    chunks = _chunks(todo, chunk_size)
    if executor == "serial" or (executor == "local" and n_workers == 1):
        ctx = prepare(run.geometry, params, worker=0)
        for chunk in chunks:
            yield [_process_index(run, i, ctx) for i in chunk]
        return
    if executor == "local":
        mp = multiprocessing.get_context(mp_start_method())
        ids = mp.Queue()
        for k in range(n_workers):
            ids.put(k)
        with cf.ProcessPoolExecutor(n_workers, mp_context=mp, initializer=_worker_init,
                                    initargs=(run, params, ids)) as pool:
            futures = [pool.submit(_worker_chunk, c) for c in chunks]
            for fut in cf.as_completed(futures):
                yield fut.result()
        return
    # A dask.distributed Client (duck-typed so dask stays optional).
    if hasattr(executor, "submit") and hasattr(executor, "scatter"):
        from distributed import as_completed

        run_f = executor.scatter(run, broadcast=True)
        futures = [executor.submit(_dask_chunk, run_f, params, c, pure=False)
                   for c in chunks]
        for fut in as_completed(futures):
            yield fut.result()
        return
    raise ValueError(f"unknown executor {executor!r}: use 'local', 'serial' or a "
                     "dask.distributed.Client")


# -------------------------------------------------------------------------- results
@dataclass
class Results:
    """Tables of a processed run, in frame order.

    Attributes
    ----------
    frames, peaks, crystals, reflections, profile : DataFrame
        See :data:`FRAME_SCHEMA` and the schemas of :mod:`sxlab.peaks`,
        :mod:`sxlab.index`, :mod:`sxlab.integrate` and :mod:`sxlab.profiling`.
    params : Params
    wall_s : float
        Wall time of the processing call (0 for results loaded from disk).
    out : pathlib.Path or None
        Output directory.
    """

    frames: pd.DataFrame
    peaks: pd.DataFrame
    crystals: pd.DataFrame
    reflections: pd.DataFrame
    profile: pd.DataFrame
    params: Params
    wall_s: float = 0.0
    out: Path | None = None
    geometry: object = field(default=None, repr=False)

    @classmethod
    def load(cls, out) -> Results:
        """Read the tables an earlier :func:`process_run` wrote to ``out``."""
        out = Path(out)
        params = Params.load(out / "params.toml")
        tables = read_parts(out)
        geometry = None
        if (out / "geometry.geom").is_file():
            from .io.crystfel_geom import read_geom

            geometry = read_geom(out / "geometry.geom")
        return cls(*(tables[k] for k in _TABLES), params=params, out=out, geometry=geometry)

    def summary(self) -> pd.DataFrame:
        """One-row table: frames, failed, hits, indexed, crystals, rates, times."""
        f = self.frames
        ok = f[f.status == "ok"]
        n = len(f)
        hits = int(ok.hit.sum())
        indexed = int(ok.indexed.sum())
        return pd.DataFrame([{
            "frames": n,
            "failed": int((f.status != "ok").sum()),
            "hits": hits,
            "hit_rate": hits / n if n else np.nan,
            "indexed": indexed,
            "indexing_rate": indexed / hits if hits else np.nan,
            "crystals": int(ok.n_crystals.sum()),
            "reflections": len(self.reflections),
            "median_resolution_A": float(ok.resolution_A.median()) if indexed else np.nan,
            "ms_per_frame": 1e3 * float(ok.total_s.mean()) if len(ok) else np.nan,
            "wall_s": self.wall_s,
        }])

    def __repr__(self) -> str:
        s = self.summary().astype(object).iloc[0]
        return (f"<Results {s.frames} frames, {s.failed} failed, {s.hits} hits "
                f"({100 * s.hit_rate:.1f} %), {s.indexed} indexed "
                f"({100 * (s.indexing_rate if s.hits else 0):.1f} % of hits), "
                f"{s.reflections} reflections>")

    def _repr_html_(self) -> str:
        s = self.summary()
        table = s.to_html(index=False, float_format=lambda v: f"{v:.3g}")
        where = f" — {html.escape(str(self.out))}" if self.out else ""
        return f"<div><b>sxlab Results</b>{where}{table}</div>"


def atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_part(out: Path, results: list[FrameResult], *, tag: str = "") -> str:
    """Write the tables of some frames as one part of an output directory.

    The frames file, written last, commits the part. ``tag`` (e.g. a worker name)
    makes the part's name unique when several writers may write the same frames.
    Returns the part's stem.
    """
    parts = Path(out) / "parts"
    first = min(r.frame["frame"] for r in results)
    last = max(r.frame["frame"] for r in results)
    stem = f"{first:09d}-{last:09d}" + (f"-{tag}" if tag else "")
    # The frames table is written last: it commits the part.
    for kind in ("peaks", "crystals", "reflections", "profile", "frames"):
        table = _concat(kind, [r.table(kind) for r in results])
        atomic_parquet(table, parts / f"{kind}-{stem}.parquet")
    return stem


def committed_parts(out) -> list[str]:
    """Stems of the committed parts of an output directory, oldest commit first."""
    files = list((Path(out) / "parts").glob("frames-*.parquet"))
    files.sort(key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [p.name[len("frames-"):-len(".parquet")] for p in files]


def read_parts(out, stems: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """Tables of committed parts, sorted by frame, every frame once.

    A frame committed in several parts (a live frame delivered again after its
    worker died between committing and acknowledging it) is taken from the newest
    part. ``stems`` restricts the reading to those parts (default: all committed).
    """
    parts = Path(out) / "parts"
    if stems is None:
        stems = committed_parts(out)
    raw = {kind: [pd.read_parquet(parts / f"{kind}-{s}.parquet") for s in stems]
           for kind in _TABLES}
    owner: dict[int, int] = {}
    for k, f in enumerate(raw["frames"]):
        owner.update(dict.fromkeys(f["frame"].tolist(), k))
    if len(owner) < sum(len(f) for f in raw["frames"]):
        for kind in _TABLES:
            raw[kind] = [t[t["frame"].map(owner).to_numpy() == k]
                         for k, t in enumerate(raw[kind])]
    tables = {}
    for kind in _TABLES:
        t = _concat(kind, raw[kind])
        keys = [c for c in ("frame", "crystal", "panel", "h", "k", "l", "path", "start_s")
                if c in t.columns]
        tables[kind] = t.sort_values(keys, kind="stable").reset_index(drop=True)
    return tables


def _versions() -> dict:
    import h5py
    import numba

    from . import __version__

    return {"sxlab": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "pandas": pd.__version__,
            "h5py": h5py.__version__, "platform": platform.platform()}


def prepare_output(out, params: Params, geometry, overwrite: bool = False) -> None:
    """Create (or check, to resume) an output directory for ``params`` and ``geometry``."""
    from .io.crystfel_geom import write_geom

    out = Path(out)
    if overwrite and out.exists():
        shutil.rmtree(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / "parts").glob("*.tmp"):
        stale.unlink()
    ptoml = out / "params.toml"
    if ptoml.exists():
        old = Params.load(ptoml)
        if old.digest() != params.digest():
            raise ValueError(
                f"{out} holds results of other parameters (hash {old.digest()}, now "
                f"{params.digest()}); choose another directory or pass overwrite=True")
    else:
        params.save(ptoml)
    (out / "params.sha256").write_text(params.digest() + "\n")
    (out / "versions.json").write_text(json.dumps(_versions(), indent=1))
    try:
        (out / "geometry.geom").write_text(write_geom(geometry))
    except ValueError:
        pass


def finish_output(out, results: Results) -> None:
    """Consolidated tables and the CrystFEL stream, rewritten from the committed parts."""
    from .io.stream import write_stream

    out = Path(out)
    for kind in _TABLES:
        atomic_parquet(getattr(results, kind), out / f"{kind}.parquet")
    tmp = out / "results.stream.tmp"
    write_stream(tmp, results.geometry, results.frames, results.peaks, results.crystals,
                 results.reflections, cell=results.params.cell)
    os.replace(tmp, out / "results.stream")


def process_run(run, params: Params | None = None, *, executor="local",
                n_workers: int | None = None, out=None, overwrite: bool = False,
                chunk_size: int = 4, progress: bool = True) -> Results:
    """Process every frame of ``run``.

    Parameters
    ----------
    run : Run
        From :func:`sxlab.open_run` (it must carry a geometry). Frames are read inside
        the workers, never shipped through pickles.
    params : Params, optional
    executor : {"local", "serial"} or dask.distributed.Client
        ``local``: a process pool over ``n_workers`` processes (default: all cores);
        ``serial``: this process; a Dask client: its cluster.
    out : path, optional
        Output directory: committed parts as frames finish, then ``frames.parquet``,
        ``peaks.parquet``, ``crystals.parquet``, ``reflections.parquet``,
        ``profile.parquet``, ``results.stream`` (CrystFEL stream 2.3), ``params.toml``
        with ``params.sha256``, ``geometry.geom`` and ``versions.json``. Rerunning into
        the same directory skips finished frames (same parameters required).
    overwrite : bool
        Delete an existing output directory first.
    chunk_size : int
        Frames per task.
    progress : bool
        ``tqdm.auto`` bar with frames/s, hit rate and indexing rate.

    Returns
    -------
    Results

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> res = sx.process_run(run, sx.Params(), executor="serial", progress=False)
    >>> len(res.frames)
    8
    """
    params = params or Params()
    if run.geometry is None:
        raise ValueError("the run carries no geometry; open it with open_run(..., geometry=)")
    n_workers = int(n_workers or os.cpu_count() or 1)
    t0 = time.perf_counter()
    out = Path(out) if out is not None else None
    done: set[int] = set()
    if out is not None:
        prepare_output(out, params, run.geometry, overwrite)
        done = set(read_parts(out)["frames"].frame.tolist())
    todo = [i for i in range(len(run)) if i not in done]
    collected: list[FrameResult] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(run), initial=len(done), desc="process", unit="frame")
    n_hits = n_indexed = n_seen = 0
    try:
        for results in _iter_results(run, params, todo, executor, n_workers, chunk_size):
            if out is not None:
                write_part(out, results)
            else:
                collected.extend(results)
            for r in results:
                n_seen += 1
                n_hits += bool(r.frame["hit"])
                n_indexed += bool(r.frame["indexed"])
            if bar is not None:
                bar.update(len(results))
                bar.set_postfix(hits=f"{100 * n_hits / n_seen:.0f}%",
                                indexed=f"{100 * n_indexed / max(n_hits, 1):.0f}%")
    finally:
        if bar is not None:
            bar.close()
    if out is not None:
        tables = read_parts(out)
    else:
        tables = {k: _concat(k, [r.table(k) for r in collected]) for k in _TABLES}
        order = tables["frames"].frame.argsort(kind="stable")
        tables["frames"] = tables["frames"].iloc[order].reset_index(drop=True)
        for k in ("peaks", "crystals", "reflections", "profile"):
            keys = [c for c in ("frame", "crystal", "panel", "h", "k", "l", "path",
                                "start_s") if c in tables[k].columns]
            tables[k] = tables[k].sort_values(keys, kind="stable").reset_index(drop=True)
    res = Results(*(tables[k] for k in _TABLES), params=params,
                  wall_s=time.perf_counter() - t0, out=out, geometry=run.geometry)
    if out is not None:
        finish_output(out, res)
    return res
