"""The batch pipeline: prepare once per worker, process frames, collect tidy tables.

``process_frame`` runs load → mask → peaks → hit → index → integrate on one frame with
a prepared :class:`Context`; ``process_run`` does it for every frame of a run on a local
process pool, in this process, or on a Dask cluster, and returns :class:`Results` with
the frames, peaks, crystals, reflections and profile tables in frame order. With an
output directory, results are written in committed parts as they arrive, so a rerun into
the same directory resumes where an interrupted one stopped (failed frames are tried
again unless asked not to, and a directory of other input or geometry is refused); every
frame appears exactly once.

A geometry whose beam energy or camera length is read from the data files
(:meth:`sxlab.io.Run.frame_geometry`) gets a prepared context per distinct frame geometry
(a few are kept per worker).

The tables are those of :mod:`sxlab.tables`: :data:`~sxlab.tables.FRAMES`,
:data:`~sxlab.tables.PEAKS`, :data:`~sxlab.tables.CRYSTALS`,
:data:`~sxlab.tables.REFLECTIONS` and :data:`~sxlab.tables.PROFILE`.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import tables
from ._frames import NATIVE_DTYPES
from .executors import map_unordered
from .hits import SolventRatio, hit_rule
from .indexing import Indexer
from .integration import Integrator, resolution_estimate
from .masks import build_mask
from .params import Params
from .peaks import PeakFinder
from .profiling import INDEX, INTEGRATION, LOAD_IMAGE_DATA, PEAK_SEARCH, WAIT, Profiler
from .results import Results, ResultsWriter

__all__ = [
    "Context",
    "FrameResult",
    "failed_result",
    "frame_tables",
    "prepare",
    "process_frame",
    "process_run",
    "read_frame",
]


def _empty(kind: str) -> pd.DataFrame:
    return tables.get(kind).empty()


def _concat(kind: str, parts) -> pd.DataFrame:
    return tables.get(kind).concat(parts)


def frame_tables(results) -> dict[str, pd.DataFrame]:
    """The five tables of several frames' :class:`FrameResult` s, each concatenated.

    The frames table is made at once from the frames' rows (not a one-row table per
    frame). Returns a dict: frames, peaks, crystals, reflections, profile.

    Examples
    --------
    >>> res = failed_result(3, "no data")
    >>> frame_tables([res])["frames"][["frame", "status"]].values.tolist()
    [[3, 'failed']]
    """
    results = list(results)
    out = {"frames": tables.FRAMES.make(
        {c: [r.frame[c] for r in results] for c in tables.FRAMES.names})
        if results else _empty("frames")}
    for kind in ("peaks", "crystals", "reflections", "profile"):
        out[kind] = _concat(kind, [getattr(r, kind) for r in results])
    return out


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
    buffers : dict
        The frame and bad-pixel arrays the batch loop reads every frame into (by shape
        and dtype), reused from frame to frame.
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
    buffers: dict = field(default_factory=dict, repr=False)

    def frame_buffers(self, shape: tuple, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """This worker's (image, bool bad) arrays of ``shape`` and ``dtype``, made once."""
        key = (tuple(shape), np.dtype(dtype).str)
        bufs = self.buffers.get(key)
        if bufs is None:
            bufs = self.buffers[key] = (np.empty(shape, dtype), np.empty(shape, bool))
        return bufs


def prepare(geometry, params: Params | None = None, *, worker: int = 0) -> Context:
    """Build a worker's :class:`Context` once (masks, peak finder, indexer, integrator).

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> ctx = prepare(run.geometry, Params())
    >>> result = process_frame(*run.read(0), ctx)  # doctest: +SKIP
    """
    params = params or Params()
    maps = geometry.maps
    maps_before = maps.computed()

    def release_maps():
        # the per-pixel maps a stage's set-up computed are not used per frame: free
        # them before the next stage (a later stage that needs one computes it again)
        maps.release(maps.computed() - maps_before)

    mask = build_mask(geometry, params.mask)
    st = params.stages
    finder = indexer = integrator = None
    if st.peaks:
        finder = PeakFinder(geometry, mask, params.peaks)
        release_maps()
    if st.index:
        indexer = Indexer(geometry, params.cell, params.index, symmetry=params.symmetry)
    if st.integrate:
        integrator = Integrator(geometry, mask, params.integrate)
        release_maps()
    hp = params.hits
    solvent = SolventRatio(geometry, mask, d_high_A=hp.solvent_d_high_A,
                           d_low_A=hp.solvent_d_low_A)
    release_maps()
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
    row = dict.fromkeys(tables.FRAMES.names)
    row.update(frame=int(frame), run=str(attrs.get("run", "")),
               event=str(attrs.get("event", "")), filename=str(attrs.get("source", "")),
               status="ok", error="", n_peaks=0, hit=False, indexed=False, n_crystals=0,
               n_reflections=0, resolution_A=np.nan, solvent_ratio=np.nan, worker=worker,
               read_s=0.0, peaks_s=0.0, index_s=0.0, integrate_s=0.0, total_s=0.0)
    return row


def process_frame(image, bad=None, context: Context | None = None, *,
                  frame: int | None = None, read_s: float = 0.0,
                  wait_s: float = 0.0, attrs: dict | None = None) -> FrameResult:
    """Run every enabled stage on one frame.

    Parameters
    ----------
    image : xarray.DataArray or ndarray
        The frame, flagged pixels zero: float32 as :meth:`Run.read` returns it, or the
        stored dtype as :func:`read_frame` reads it (uint16, uint32, int32 are taken as
        they are).
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
    attrs : dict, optional
        The frame's ``run``, ``event`` and ``source`` (as :meth:`Run.read_into` returns
        them) when ``image`` is a plain array (default: ``image.attrs``).

    Returns
    -------
    FrameResult
        ``frame`` (a dict with the :data:`sxlab.tables.FRAMES` columns), ``peaks``,
        ``crystals``, ``reflections`` and ``profile`` tables.
    """
    if context is None:
        raise TypeError("process_frame needs a context from prepare(geometry, params)")
    ctx = context
    if attrs is None:
        attrs = dict(getattr(image, "attrs", {}) or {})
    if frame is None:
        frame = int(attrs.get("frame", -1))
    prof = ctx.profiler
    row = _frame_row(frame, attrs, ctx.worker)
    row["read_s"] = read_s
    peaks = crystals = reflections = None
    with prof.frame(frame) as whole:
        if wait_s:
            prof.add(WAIT, wait_s)
        if read_s:
            prof.add(LOAD_IMAGE_DATA, read_s)
        if ctx.finder is not None:
            with prof.section(PEAK_SEARCH) as stage:
                peaks = ctx.finder(image, bad, frame=frame)
            row["peaks_s"] = stage.seconds
            row["n_peaks"] = len(peaks)
            hp = ctx.params.hits
            row["hit"] = hit_rule(len(peaks), hp.min_peaks, hp.max_peaks)
        row["solvent_ratio"] = float(ctx.solvent(image, bad=bad))
        if ctx.indexer is not None and row["hit"]:
            with prof.section(INDEX) as stage:
                crystals, peaks = ctx.indexer.index(peaks, frame=frame)
            row["index_s"] = stage.seconds
            row["n_crystals"] = len(crystals)
            row["indexed"] = len(crystals) > 0
        if ctx.integrator is not None and crystals is not None and len(crystals):
            with prof.section(INTEGRATION) as stage:
                reflections = ctx.integrator(image, crystals, bad)
            row["integrate_s"] = stage.seconds
            row["n_reflections"] = len(reflections)
            row["resolution_A"] = float(resolution_estimate(reflections))
    row["total_s"] = whole.seconds + read_s
    return FrameResult(row, _concat("peaks", [peaks]), _concat("crystals", [crystals]),
                       _concat("reflections", [reflections]),
                       _concat("profile", [prof.table(clear=True)]))


def failed_result(frame: int, error, worker: int = 0, run_name: str = "",
                  attrs: dict | None = None) -> FrameResult:
    """The result of a frame that could not be processed: a ``failed`` row saying why.

    ``error`` is an exception (recorded as ``Type: message``) or a text; ``attrs`` may
    give the frame's ``event`` and ``source`` (as :meth:`Run.read` attrs do).
    """
    row = _frame_row(frame, {"run": run_name, **(attrs or {})}, worker)
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    row.update(status="failed", error=text)
    return FrameResult(row, _empty("peaks"), _empty("crystals"), _empty("reflections"),
                       _empty("profile"))


def read_frame(run, i: int, context: Context):
    """Read frame ``i`` of ``run`` the way the batch workers do: (image, bad, attrs).

    A :class:`~sxlab.io.Run` is read with :meth:`~sxlab.io.Run.read_into` into the
    context's reused arrays (:meth:`Context.frame_buffers`), in the stored dtype when
    every stage takes it as it is (no conversion to float32), else as float32; the arrays
    are overwritten by the next call. Other runs are read with ``run.read(i)`` (attrs
    None: they are the image's).

    Examples
    --------
    >>> import sxlab as sx
    >>> run = sx.datasets.load("lysozyme-sample", progress=False)
    >>> ctx = prepare(run.geometry, sx.Params())
    >>> image, bad, attrs = read_frame(run, 0, ctx)
    >>> image.dtype.name, attrs["event"]
    ('uint16', '//0')
    """
    if not hasattr(run, "read_into"):
        image, bad = run.read(i)
        return image, bad, None
    shape = tuple(run.frame_shape)
    dtype = run.dtype if np.dtype(run.dtype).name in NATIVE_DTYPES else np.float32
    image, bad = context.frame_buffers(shape, dtype)
    try:
        return image, bad, run.read_into(i, image, bad)
    except ValueError:  # a file of the run stored in another dtype
        if image.dtype == np.float32:
            raise
    image, bad = context.frame_buffers(shape)
    return image, bad, run.read_into(i, image, bad)


class _WorkerState:
    """A worker's run, parameters and prepared contexts (one per frame geometry)."""

    _KEEP = 4

    def __init__(self, run, params: Params, worker: int, context: Context | None = None):
        self.run = run
        self.params = params
        self.worker = worker
        self.base = run.geometry
        self._contexts: dict[int, tuple[object, Context]] = {}
        if context is not None:
            self._contexts[id(context.geometry)] = (context.geometry, context)

    def context(self, i: int) -> Context:
        """The context of frame ``i`` (its geometry's, prepared on first use)."""
        frame_geometry = getattr(self.run, "frame_geometry", None)
        geometry = frame_geometry(i) if frame_geometry is not None else self.base
        hit = self._contexts.get(id(geometry))
        if hit is not None:
            return hit[1]
        ctx = prepare(geometry, self.params, worker=self.worker)
        if len(self._contexts) >= self._KEEP:
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[id(geometry)] = (geometry, ctx)
        return ctx


def _process_index(run, i: int, state) -> FrameResult:
    """Read frame ``i`` of ``run`` and process it; any failure becomes a failed row."""
    worker = state.worker if isinstance(state, _WorkerState) else state.worker
    t0 = time.perf_counter()
    try:
        ctx = state.context(i) if isinstance(state, _WorkerState) else state
        image, bad, attrs = read_frame(run, i, ctx)
    except Exception as exc:  # noqa: BLE001 - recorded per frame, processing goes on
        return failed_result(i, exc, worker, getattr(run, "name", ""))
    read_s = time.perf_counter() - t0
    try:
        return process_frame(image, bad, ctx, frame=i, read_s=read_s, attrs=attrs)
    except Exception as exc:  # noqa: BLE001
        ctx.profiler.clear()
        return failed_result(i, exc, ctx.worker, getattr(run, "name", ""))


# --------------------------------------------------------------------- executors
def _prepare_worker(run, params: Params, worker: int, context: Context | None = None):
    """A worker's state (:class:`_WorkerState`), with a context already prepared or not."""
    if context is not None and context.worker != worker:
        context = None
    return _WorkerState(run, params, worker, context)


def _process_chunk(state, indices: list[int], report) -> list[FrameResult]:
    return [_process_index(state.run, i, state) for i in indices]


def _iter_results(run, params: Params, todo: list[int], executor, n_workers: int,
                  chunk_size: int, context: Context | None = None):
    """Yield lists of FrameResult as chunks finish (completion order)."""
    chunks = [todo[k:k + chunk_size] for k in range(0, len(todo), chunk_size)]
    setup = functools.partial(_prepare_worker, run, params, context=context)
    for _, results in map_unordered(_process_chunk, chunks, setup=setup, executor=executor,
                                    n_workers=n_workers):
        yield results


class _CompileNotice:
    """Says on a progress bar, when the first frame takes long, that kernels compile."""

    DELAY_S = 3.0

    def __init__(self, bar):
        self.bar = bar
        self.timer = None
        self.shown = False

    def __enter__(self):
        if self.bar is not None:
            self.timer = threading.Timer(self.DELAY_S, self._show)
            self.timer.daemon = True
            self.timer.start()
        return self

    def _show(self):
        self.shown = True
        self.bar.set_description("process (compiling kernels once, ~1 min; later runs start "
                                 "at once)")

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        if self.shown:
            self.bar.set_description("process")


def _first_frame(run, params: Params, i: int, bar):
    """Prepare a context in this process and process frame ``i`` with it.

    Numba compiles (or loads) the kernels here, once, before worker processes are forked
    from this process (they inherit them instead of compiling each).
    """
    state = _WorkerState(run, params, 0)
    with _CompileNotice(bar):
        result = _process_index(run, i, state)
    contexts = list(state._contexts.values())
    return result, (contexts[0][1] if contexts else None)


def _notes(params: Params, crystals: pd.DataFrame) -> list[str]:
    """What a user should know about how the results were made."""
    notes = []
    if params.cell is None and len(crystals):
        kinds = (crystals.lattice.astype(str) + " " + crystals.centering.astype(str))
        counts = ", ".join(f"{k} {n}" for k, n in kinds.value_counts().items())
        what = (f"lattices of {params.symmetry} only" if params.symmetry
                else "no symmetry given")
        notes.append(f"no reference cell ({what}): each lattice is reported in the "
                     f"conventional setting of its Bravais lattice ({counts} crystals)")
    return notes


def process_run(run, params: Params | None = None, *, executor="local",
                n_workers: int | None = None, out=None, overwrite: bool = False,
                retry_failed: bool = True, chunk_size: int = 4,
                progress: bool = True) -> Results:
    """Process every frame of ``run``.

    Parameters
    ----------
    run : Run
        From :func:`sxlab.open_run` (it must carry a geometry). Frames are read inside
        the workers, never shipped through pickles.
    params : Params, optional
    executor : {"local", "serial", "threads"} or dask.distributed.Client
        ``local``: a process pool over ``n_workers`` processes (default: all cores);
        ``serial``: this process; ``threads``: a thread pool; a Dask client: its cluster
        (see :mod:`sxlab.executors`).
    out : path, optional
        Output directory: committed parts as frames finish, then ``frames.parquet``,
        ``peaks.parquet``, ``crystals.parquet``, ``reflections.parquet``,
        ``profile.parquet``, ``results.stream`` (CrystFEL stream 2.3), ``params.toml``
        with ``params.sha256``, ``geometry.geom``, ``input.json`` (the run's
        :meth:`~sxlab.io.Run.identity`), ``timing.json`` and ``versions.json``.
        Rerunning into the same directory skips finished frames; the parameters, the
        geometry and the input files must be the same (else
        :class:`~sxlab.results.ResultsDirError`).
    overwrite : bool
        Delete an existing output directory first.
    retry_failed : bool
        When resuming, process the frames that failed before again (e.g. after a damaged
        file was repaired); False keeps their failed rows.
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
        raise ValueError(f"run {run.name!r} carries no geometry: give one (open_run(..., "
                         "geometry=), sxlab process --geometry)")
    if len(run) and hasattr(run, "frame_geometry"):
        run.frame_geometry(0)  # a geometry that cannot be completed fails here, not per frame
    n_workers = int(n_workers or os.cpu_count() or 1)
    t0 = time.perf_counter()
    writer = None
    done: set[int] = set()
    notes: list[str] = []
    if out is not None:
        identity = None
        if hasattr(run, "identity"):
            def identity(frames):
                return run.identity(fingerprint_frames=frames)
        writer = ResultsWriter(out, params, run.geometry, overwrite=overwrite,
                               inputs=identity, retry_failed=retry_failed)
        done = writer.done
        notes += writer.notes
    todo = [i for i in range(len(run)) if i not in done]
    collected: list[FrameResult] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(run), initial=len(done), desc="process", unit="frame")
    n_hits = n_indexed = n_seen = 0

    def commit(results):
        nonlocal n_hits, n_indexed, n_seen
        if writer is not None:
            writer.write(**frame_tables(results))
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

    try:
        context = None
        if todo and executor in ("local", "serial", "threads"):
            first, context = _first_frame(run, params, todo[0], bar)
            commit([first])
            todo = todo[1:]
        serial = executor == "serial" or (executor == "local" and n_workers == 1)
        for results in _iter_results(run, params, todo, executor, n_workers, chunk_size,
                                     context=context if serial else None):
            commit(results)
    finally:
        if bar is not None:
            bar.close()
    if writer is not None:
        res = writer.finish(wall_s=time.perf_counter() - t0)
    else:
        res = Results.from_tables(frame_tables(collected), params,
                                  wall_s=time.perf_counter() - t0, geometry=run.geometry)
    res.notes = notes + _notes(params, res.crystals)
    return res
