"""Per-frame profiling: hierarchical wall-clock timers, as a tidy table.

Every frame a worker processes gets a tree of timed segments. The root covers the whole
iteration, waiting for data included; stages and their sub-steps nest inside it, as in
CrystFEL's ``--profile`` output::

    prof = Profiler(worker=3)
    with prof.frame(12):
        with prof.section(WAIT):
            ...
        with prof.section(PEAK_SEARCH):
            with prof.section(PF8_RSTATS):
                ...
    prof.table()          # frame, worker, path, depth, start_s, duration_s, completion

Functions decorated with :func:`profiled`, and :func:`section` blocks, time themselves
into the profiler whose frame is open in the current thread (or do nothing when there is
none), so library code needs no profiler argument; :func:`record` adds the summed time of
a phase that alternates with others (asdf's per-batch phases). Times come from
:func:`time.perf_counter_ns` (monotonic). The objects :meth:`Profiler.frame` and
:meth:`Profiler.section` return give the block's ``seconds`` afterwards, also when the
profiler is disabled (it then records nothing), so a caller times each stage once.

:func:`read_crystfel_profile` and :func:`to_crystfel_profile` convert from and to
CrystFEL's one-line S-expressions; :func:`profile_blocks` averages records in blocks and
keeps the largest categories, for :func:`sxlab.plots.profile`.
"""

from __future__ import annotations

import contextvars
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import pandas as pd

from . import tables

__all__ = [
    "STAGES",
    "WAIT_STAGES",
    "Profiler",
    "combine_profiles",
    "profile_blocks",
    "active",
    "profiled",
    "read_crystfel_profile",
    "record",
    "section",
    "to_crystfel_profile",
    "default_block",
]

# Stage names of CrystFEL's real-time pipeline (libcrystfel profile blocks), reused here.
ROOT = "root"
WAIT = "wait"
ZMQ_FETCH = "zmq-fetch"
ASAPO_FETCH = "asapo-fetch"
PROCESS_IMAGE = "process-image"
LOAD_IMAGE_DATA = "load-image-data"
FLAG_VALUES = "flag-values"
ZERO_MASK = "zero-mask"
PEAK_SEARCH = "peak-search"
PF8_RMAPS = "pf8-rmaps"
PF8_MASK = "pf8-mask"
PF8_RSTATS = "pf8-rstats"
PF8_SEARCH = "pf8-search"
#: Candidates and peaks of the dispersion spot finder (sxlab's own name).
DISPERSION_SEARCH = "dispersion-search"
INDEX = "index"
ASDF_TRIPLETS = "asdf-triplets"
ASDF_SEARCH = "asdf-search"
ASDF_FINDCELL = "asdf-findcell"
PREREFINE_CELL_CHECK = "prerefine-cell-check"
REFINE = "refine"
POSTREFINE_CELL_CHECK = "postrefine-cell-check"
INTEGRATION = "integration"
WRITE_STREAM = "write-stream"

#: Every stage name above.
STAGES = (
    ROOT, WAIT, ZMQ_FETCH, ASAPO_FETCH, PROCESS_IMAGE, LOAD_IMAGE_DATA, FLAG_VALUES,
    ZERO_MASK, PEAK_SEARCH, PF8_RMAPS, PF8_MASK, PF8_RSTATS, PF8_SEARCH, DISPERSION_SEARCH,
    INDEX, ASDF_TRIPLETS, ASDF_SEARCH, ASDF_FINDCELL, PREREFINE_CELL_CHECK, REFINE,
    POSTREFINE_CELL_CHECK, INTEGRATION, WRITE_STREAM,
)
#: First-level stages that are time spent waiting for data, not processing it.
WAIT_STAGES = (WAIT, ZMQ_FETCH, ASAPO_FETCH)

_ACTIVE: contextvars.ContextVar[Profiler | None] = contextvars.ContextVar(
    "sxlab_profiler", default=None)


class _Null:
    """The context object of a disabled profiler: does nothing."""

    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _Null()


class _Stopwatch:
    """The section of a disabled profiler: measures ``seconds``, records nothing.

    ``seconds`` holds the start (ns) inside the block and the duration (s) after it.
    """

    __slots__ = ("seconds",)

    def __enter__(self):
        self.seconds = perf_counter_ns()
        return self

    def __exit__(self, *exc):
        self.seconds = (perf_counter_ns() - self.seconds) / 1e9
        return False


class _Section:
    __slots__ = ("_prof", "_name", "seconds")

    def __init__(self, prof: Profiler, name: str):
        self._prof = prof
        self._name = name

    def __enter__(self):
        prof = self._prof
        stack = prof._stack
        if not stack:
            raise RuntimeError(f"section {self._name!r} opened outside a frame; open "
                               "profiler.frame(i) first")
        stack.append((stack[-1][0] + "/" + self._name, prof._seq, perf_counter_ns()))
        prof._seq += 1
        return self

    def __exit__(self, *exc):
        end = perf_counter_ns()
        prof = self._prof
        path, seq, start = prof._stack.pop()
        prof._open.append((seq, path, len(prof._stack), start, end))
        self.seconds = (end - start) / 1e9
        return False


class _Frame:
    __slots__ = ("_prof", "_frame", "_token", "_entered", "seconds")

    def __init__(self, prof: Profiler, frame: int):
        self._prof = prof
        self._frame = frame
        self._token = None

    def __enter__(self):
        prof = self._prof
        if prof._stack:
            raise RuntimeError(f"frame {self._frame} opened while frame {prof._frame} is "
                               "still open")
        prof._frame = self._frame
        prof._open = []
        prof._seq = 1
        self._token = _ACTIVE.set(prof)
        self._entered = perf_counter_ns()
        prof._stack.append((ROOT, 0, self._entered))
        return self

    def __exit__(self, *exc):
        end = perf_counter_ns()
        self.seconds = (end - self._entered) / 1e9
        prof = self._prof
        _, seq, start = prof._stack.pop()
        _ACTIVE.reset(self._token)
        prof._open.append((seq, ROOT, 0, start, end))
        prof._open.sort()
        completion = prof._completion
        prof._completion += 1
        frame = self._frame
        prof._records.extend((frame, path, depth, s, e, completion)
                             for _, path, depth, s, e in prof._open)
        prof._open = []
        prof._stack.clear()
        return False


class Profiler:
    """Hierarchical wall-clock timers for the frames one worker processes.

    Parameters
    ----------
    worker : int
        Worker id recorded with every segment.
    enabled : bool
        When False, :meth:`frame` and :meth:`section` return a shared no-op context
        object and nothing is recorded.
    epoch_ns : int, optional
        :func:`time.perf_counter_ns` value that ``start_s`` counts from (default: when the
        profiler was made). Give workers of one run the same epoch to compare their
        timelines (on Linux the clock is system-wide, so this works across processes).

    Notes
    -----
    A segment costs two clock readings, a tuple and an append: about 1 µs on a current
    CPU, well below 1 % of a frame that takes tens of milliseconds. Sections are
    recorded when they close; a frame's segments join the table when its root closes, with
    the frame's completion number (0, 1, ... in the order frames finished, over the
    profiler's lifetime).

    Examples
    --------
    >>> prof = Profiler(worker=1)
    >>> with prof.frame(7):
    ...     with prof.section("peak-search"):
    ...         with prof.section("pf8-rstats"):
    ...             pass
    ...     with prof.section("index"):
    ...         pass
    >>> t = prof.table()
    >>> t["path"].tolist()
    ['root', 'root/peak-search', 'root/peak-search/pf8-rstats', 'root/index']
    >>> t[["frame", "worker", "depth", "completion"]].values.tolist()
    [[7, 1, 0, 0], [7, 1, 1, 0], [7, 1, 2, 0], [7, 1, 1, 0]]
    >>> bool((t["duration_s"] >= 0).all())
    True
    """

    def __init__(self, worker: int = 0, enabled: bool = True, *, epoch_ns: int | None = None):
        self.worker = int(worker)
        self.enabled = bool(enabled)
        self.epoch_ns = perf_counter_ns() if epoch_ns is None else int(epoch_ns)
        self._records: list[tuple] = []
        self._stack: list[tuple] = []
        self._open: list[tuple] = []
        self._seq = 0
        self._frame: int | None = None
        self._completion = 0

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return (f"<Profiler worker={self.worker} {state}: {self._completion} frames, "
                f"{len(self._records)} segments>")

    def frame(self, frame_index: int):
        """Context manager timing one frame (the ``root`` segment).

        While it is open, :func:`profiled` functions and :func:`section` blocks in the
        same thread record into this profiler. Like :meth:`section` it returns itself,
        with the block's ``seconds`` after it (measured when disabled too).
        """
        if not self.enabled:
            return _Stopwatch()
        return _Frame(self, int(frame_index))

    def section(self, name: str):
        """Context manager timing a named segment inside the innermost open one.

        It returns itself on entry; after the block its ``seconds`` is the segment's
        duration, measured by a disabled profiler too (which records nothing), so a
        caller needs no timer of its own:

        >>> prof = Profiler(enabled=False)
        >>> with prof.section("index") as seg:
        ...     pass
        >>> seg.seconds >= 0
        True
        """
        if not self.enabled:
            return _Stopwatch()
        return _Section(self, name)

    def add(self, name: str, seconds: float) -> None:
        """Record a segment of known duration that ended now, in the innermost open one.

        For work timed before the frame opened (e.g. reading the image): the open
        segments are extended back to cover it.

        Examples
        --------
        >>> prof = Profiler()
        >>> with prof.frame(0):
        ...     prof.add("load-image-data", 0.25)
        >>> t = prof.table()
        >>> t["path"].tolist(), bool(t["duration_s"][0] >= 0.25)
        (['root', 'root/load-image-data'], True)
        """
        if not self.enabled:
            return
        if not self._stack:
            raise RuntimeError(f"segment {name!r} added outside a frame; open "
                               "profiler.frame(i) first")
        end = perf_counter_ns()
        start = end - int(round(float(seconds) * 1e9))
        stack = self._stack
        for i, (path, seq, begin) in enumerate(stack):
            if start < begin:
                stack[i] = (path, seq, start)
        self._open.append((self._seq, stack[-1][0] + "/" + name, len(stack), start, end))
        self._seq += 1

    def clear(self) -> None:
        """Forget the recorded segments (completion numbers go on counting)."""
        self._records = []

    def rows(self) -> list[dict]:
        """The recorded segments as dicts (the rows of :meth:`table`)."""
        return self.table().to_dict("records")

    @tables.documented
    def table(self, *, clear: bool = False) -> pd.DataFrame:
        """The recorded segments, one row per segment.

        Parameters
        ----------
        clear : bool
            Forget the segments once the table is made (as :meth:`clear`).

        Returns
        -------
        pandas.DataFrame
            One row per segment (:data:`sxlab.tables.PROFILE`), in completion order
            and, within a frame, in the order segments opened (parents before
            children):

            [columns: profile]
        """
        rec = self._records
        if clear:
            self._records = []
        if not rec:
            return tables.PROFILE.empty()
        frame, path, depth, start, end, completion = zip(*rec, strict=True)
        start = np.asarray(start, dtype=np.int64)
        end = np.asarray(end, dtype=np.int64)
        return tables.PROFILE.make({
            "frame": frame, "worker": np.full(len(rec), self.worker), "path": list(path),
            "depth": depth, "start_s": (start - self.epoch_ns) / 1e9,
            "duration_s": (end - start) / 1e9, "completion": completion,
        })


def section(name: str):
    """Time a block into the profiler whose frame is open in this thread, if any.

    Examples
    --------
    >>> prof = Profiler()
    >>> with prof.frame(0):
    ...     with section("integration"):
    ...         pass
    >>> prof.table()["path"].tolist()
    ['root', 'root/integration']
    >>> with section("integration"):  # no frame open: nothing is recorded
    ...     pass
    """
    prof = _ACTIVE.get()
    if prof is None:
        return _NULL
    return _Section(prof, name)


def record(name: str, seconds: float) -> None:
    """Add a segment of known duration to the profiler whose frame is open, if any.

    For a phase that alternates with others many times (the per-batch phases of a
    search): its summed duration becomes one segment, ending now, in the innermost open
    segment (see :meth:`Profiler.add`).

    Examples
    --------
    >>> prof = Profiler()
    >>> with prof.frame(0):
    ...     with prof.section("index"):
    ...         record("asdf-search", 0.002)
    >>> prof.table()["path"].tolist()
    ['root', 'root/index', 'root/index/asdf-search']
    >>> record("asdf-search", 0.002)  # no frame open: nothing is recorded
    """
    prof = _ACTIVE.get()
    if prof is not None:
        prof.add(name, seconds)


def active() -> bool:
    """Whether a profiler's frame is open in this thread (so that sections are recorded).

    Examples
    --------
    >>> active()
    False
    """
    return _ACTIVE.get() is not None


def profiled(name: str):
    """Decorator timing each call as a section ``name`` of the active profiler.

    Outside an open frame (or with a disabled profiler) the function runs untimed.

    Examples
    --------
    >>> @profiled("index")
    ... def index_frame(peaks):
    ...     return len(peaks)
    >>> prof = Profiler()
    >>> with prof.frame(3):
    ...     index_frame([1, 2, 3])
    3
    >>> prof.table()["path"].tolist()
    ['root', 'root/index']
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prof = _ACTIVE.get()
            if prof is None:
                return fn(*args, **kwargs)
            with _Section(prof, name):
                return fn(*args, **kwargs)
        return wrapper
    return decorate


@tables.documented
def combine_profiles(profiles: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Join the tables of several workers, renumbering ``completion`` by end time.

    The workers' profilers must share an epoch (see :class:`Profiler`) for their end
    times to be comparable.

    Returns
    -------
    pandas.DataFrame
        The segments of every table (:data:`sxlab.tables.PROFILE`), ordered by the new
        ``completion``:

        [columns: profile]

    Examples
    --------
    >>> a, b = Profiler(worker=0, epoch_ns=0), Profiler(worker=1, epoch_ns=0)
    >>> with a.frame(0):
    ...     with b.frame(1):
    ...         pass
    >>> combine_profiles([a.table(), b.table()])[["frame", "completion"]].values.tolist()
    [[1, 0], [0, 1]]
    """
    profiles = [t for t in profiles if len(t)]
    if not profiles:
        return tables.PROFILE.empty()
    table = tables.PROFILE.concat(profiles)
    roots = table[table["depth"] == 0]
    end = roots["start_s"] + roots["duration_s"]
    order = np.lexsort((roots["worker"].to_numpy(), end.to_numpy()))
    rank = pd.Series(np.arange(len(roots)),
                     index=pd.MultiIndex.from_arrays([roots["worker"].to_numpy()[order],
                                                      roots["completion"].to_numpy()[order]]))
    key = pd.MultiIndex.from_arrays([table["worker"], table["completion"]])
    table["completion"] = rank.reindex(key).to_numpy()
    return table.sort_values(["completion"], kind="stable", ignore_index=True)


# ================================================================= CrystFEL format
_LINE = re.compile(r"^\s*(-?\d+)\s+(\(root\b.*)$")
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def _parse_sexpr(text: str, where: str) -> list[tuple[str, int, float]]:
    """``(name seconds child...)`` as (path, depth, seconds) in pre-order."""
    tokens = _TOKEN.findall(text)
    out: list[tuple[str, int, float]] = []
    stack: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(":
            if i + 2 >= len(tokens) or tokens[i + 1] in "()" or tokens[i + 2] in "()":
                raise ValueError(f"{where}: expected '(name seconds ...)' at token {i + 1}")
            name = tokens[i + 1]
            try:
                seconds = float(tokens[i + 2])
            except ValueError:
                raise ValueError(f"{where}: expected a number of seconds after {name!r}, got "
                                 f"{tokens[i + 2]!r}") from None
            path = name if not stack else stack[-1] + "/" + name
            out.append((path, len(stack), seconds))
            stack.append(path)
            i += 3
        elif tok == ")":
            if not stack:
                raise ValueError(f"{where}: unbalanced ')'")
            stack.pop()
            i += 1
            if not stack and i < len(tokens):
                raise ValueError(f"{where}: expected the end of the line after the root's ')'")
        else:
            raise ValueError(f"{where}: expected '(' or ')', got {tok!r}")
    if stack:
        raise ValueError(f"{where}: expected {len(stack)} more ')'")
    return out


@tables.documented
def read_crystfel_profile(path_or_lines) -> pd.DataFrame:
    """Read CrystFEL ``--profile`` output: one S-expression per frame and worker.

    Parameters
    ----------
    path_or_lines : str, path-like or iterable of str
        A file (e.g. indexamajig's captured stdout), or its lines. Lines that are not
        profile records (``<worker> (root ...)``) are skipped.

    Returns
    -------
    pandas.DataFrame
        A profile table (:data:`sxlab.tables.PROFILE`). CrystFEL records neither frame
        numbers nor start times: ``frame`` and ``completion`` are the record's position
        among the records (the order frames completed), ``start_s`` is NaN; durations
        are in seconds as printed (1 ms resolution):

        [columns: profile]

    Raises
    ------
    ValueError
        For a record line whose S-expression is malformed (the message gives the line).

    Examples
    --------
    >>> t = read_crystfel_profile([
    ...     "0 (root 0.378 (wait 0.012) (peak-search 0.170 (pf8-rstats 0.120)) (index 0.190))",
    ...     "indexamajig: 1 images processed",
    ...     "1 (root 0.250 (wait 0.200))",
    ... ])
    >>> t[["frame", "worker", "path", "depth", "duration_s"]].values.tolist()[:3]
    [[0, 0, 'root', 0, 0.378], [0, 0, 'root/wait', 1, 0.012], [0, 0, 'root/peak-search', 1, 0.17]]
    >>> t.groupby("frame").size().tolist()
    [5, 2]
    """
    is_text = isinstance(path_or_lines, str) and (
        "\n" in path_or_lines or _LINE.match(path_or_lines) is not None)
    if isinstance(path_or_lines, (str, os.PathLike)) and not is_text:
        source = str(path_or_lines)
        lines = Path(path_or_lines).read_text(encoding="utf-8").splitlines()
    else:
        source = "<lines>"
        lines = path_or_lines.splitlines() if isinstance(path_or_lines, str) \
            else list(path_or_lines)
    cols: dict[str, list] = {c: [] for c in tables.PROFILE.names}
    record = 0
    for lineno, line in enumerate(lines, start=1):
        m = _LINE.match(line)
        if m is None:
            continue
        segments = _parse_sexpr(m.group(2), f"{source}, line {lineno}")
        worker = int(m.group(1))
        for path, depth, seconds in segments:
            cols["frame"].append(record)
            cols["worker"].append(worker)
            cols["path"].append(path)
            cols["depth"].append(depth)
            cols["start_s"].append(np.nan)
            cols["duration_s"].append(seconds)
            cols["completion"].append(record)
        record += 1
    return tables.PROFILE.make(cols if cols["frame"] else None)


def to_crystfel_profile(table: pd.DataFrame) -> str:
    """Write a profile table as CrystFEL ``--profile`` lines (seconds with 3 decimals).

    Records are written in completion order; within a record, rows must come parents
    first (as :meth:`Profiler.table` and :func:`read_crystfel_profile` give them).

    Examples
    --------
    >>> prof = Profiler(worker=2)
    >>> with prof.frame(0):
    ...     with prof.section("index"):
    ...         pass
    >>> text = to_crystfel_profile(prof.table())
    >>> text.startswith("2 (root ") and "(index " in text
    True
    """
    if not len(table):
        return ""
    order = np.lexsort((table["worker"].to_numpy(), table["completion"].to_numpy()))
    t = table.iloc[order]
    lines = []
    for (_, worker), rec in t.groupby(["completion", "worker"], sort=False):
        parts: list[str] = []
        depth_open = -1
        for path, depth, seconds in zip(rec["path"], rec["depth"], rec["duration_s"],
                                        strict=True):
            depth = int(depth)
            if depth > depth_open + 1:
                raise ValueError(f"segment {path!r} at depth {depth} has no parent row "
                                 "before it; rows must come parents first")
            parts.append(")" * (depth_open - depth + 1))
            name = str(path).rsplit("/", 1)[-1]
            parts.append(f"{' ' if depth else ''}({name} {float(seconds):.3f}")
            depth_open = depth
        parts.append(")" * (depth_open + 1))
        lines.append(f"{int(worker)} {''.join(parts)}")
    return "\n".join(lines) + "\n"


# ================================================================= blocks for plots
def _category_times(table: pd.DataFrame, level: int) -> pd.DataFrame:
    """Seconds per (record, category): segments at ``level`` plus the self time of
    shallower segments (their time outside their children)."""
    t = table[table["depth"] <= level]
    key = ["worker", "completion", "path"]
    totals = t.groupby(key, sort=False)["duration_s"].sum()
    depth = t.groupby(key, sort=False)["depth"].first()
    parent_path = totals.index.get_level_values("path").str.rsplit("/", n=1).str[0]
    child = pd.DataFrame({"worker": totals.index.get_level_values("worker"),
                          "completion": totals.index.get_level_values("completion"),
                          "path": parent_path, "seconds": totals.to_numpy()})
    child = child[depth.to_numpy() > 0]
    child_sum = child.groupby(["worker", "completion", "path"], sort=False)["seconds"].sum()
    self_time = totals - child_sum.reindex(totals.index, fill_value=0.0)
    seconds = np.where(depth.to_numpy() < level, np.maximum(self_time.to_numpy(), 0.0),
                       totals.to_numpy())
    out = totals.reset_index()[key]
    out["seconds"] = seconds
    return out


def default_block(n_records: int, *, points: int = 60, largest: int = 133) -> int:
    """Records per block for a readable profile plot: about ``points`` blocks.

    Between 1 and ``largest`` (CrystFEL's ``--profile`` plots average 133 frames, right
    for long runs; a 200-frame run gets blocks of 3, 67 points).

    Examples
    --------
    >>> default_block(200), default_block(20), default_block(1_000_000)
    (3, 1, 133)
    """
    return int(min(max(round(n_records / points), 1), largest))


@tables.documented
def profile_blocks(table: pd.DataFrame, block: int | None = 133, top: int = 10,
                   include_wait: bool = True, *, level: int = 1) -> pd.DataFrame:
    """Mean time per frame in each category, averaged in blocks of records.

    Parameters
    ----------
    table : pandas.DataFrame
        A profile table (:meth:`Profiler.table`, :func:`read_crystfel_profile` or
        :func:`combine_profiles`).
    block : int or None
        Records (frames) per block, in completion order (ties between workers broken by
        worker id); the last block may be shorter. None: :func:`default_block` of the
        number of records (about 60 points, 1 to 133 records each).
    top : int
        Categories kept, by total time over all records; the others are summed as
        ``"other"``.
    include_wait : bool
        Keep the time spent waiting for data (first-level stages in
        :data:`WAIT_STAGES`); without it the blocks show processing time only.
    level : int
        Depth of the categories: 1 sums every segment into its first-level stage
        (``peak-search``, ``index`` ...); 2 splits stages into their steps, and so on.
        Time of a shallower segment not covered by its children is its own category
        (``root`` for the root's).

    Returns
    -------
    pandas.DataFrame
        One row per block and category (:data:`sxlab.tables.PROFILE_BLOCKS`); the
        categories are paths below the root (``peak-search``, ``root``, ``other``),
        ordered by total time, ``other`` last:

        [columns: profile_blocks]

    Examples
    --------
    >>> t = read_crystfel_profile(["0 (root 1.0 (wait 0.5) (index 0.25))",
    ...                            "0 (root 2.0 (wait 0.5) (index 1.25))"])
    >>> b = profile_blocks(t, block=2)
    >>> b[["category", "seconds_per_frame"]].values.tolist()
    [['index', 0.75], ['wait', 0.5], ['root', 0.25]]
    >>> profile_blocks(t, block=2, top=1, include_wait=False)["category"].tolist()
    ['index', 'other']
    """
    if block is None:
        block = default_block(int((table["depth"] == 0).sum()) if len(table) else 0)
    block = int(block)
    if block < 1 or top < 1 or level < 1:
        raise ValueError("block, top and level must be at least 1")
    if not len(table):
        return tables.PROFILE_BLOCKS.empty()
    roots = table.loc[table["depth"] == 0, ["worker", "completion"]].drop_duplicates()
    order = np.lexsort((roots["worker"].to_numpy(), roots["completion"].to_numpy()))
    rank = pd.Series(np.arange(len(roots)), index=pd.MultiIndex.from_arrays(
        [roots["worker"].to_numpy()[order], roots["completion"].to_numpy()[order]]))
    cat = _category_times(table, level)
    cat["category"] = cat["path"].str.replace(r"^root/", "", regex=True)
    if not include_wait:
        first = cat["category"].str.split("/").str[0]
        cat = cat[~first.isin(WAIT_STAGES)]
    cat["record"] = rank.reindex(pd.MultiIndex.from_arrays(
        [cat["worker"], cat["completion"]])).to_numpy()
    totals = cat.groupby("category", sort=False)["seconds"].sum()
    names = totals.sort_values(ascending=False, kind="stable").index.tolist()
    kept = names[:top]
    rest = names[top:]
    categories = kept + (["other"] if rest else [])
    cat["category"] = cat["category"].where(cat["category"].isin(kept), "other")
    n_records = len(roots)
    n_blocks = (n_records + block - 1) // block
    cat["block"] = cat["record"] // block
    sums = cat.groupby(["block", "category"], sort=False)["seconds"].sum()
    full = pd.MultiIndex.from_product([range(n_blocks), categories],
                                      names=["block", "category"])
    sums = sums.reindex(full, fill_value=0.0)
    first_record = np.arange(n_blocks) * block
    counts = np.minimum(block, n_records - first_record)
    blocks = sums.index.get_level_values("block").to_numpy()
    return tables.PROFILE_BLOCKS.make({
        "block": blocks,
        "first_record": first_record[blocks],
        "n_records": counts[blocks],
        "category": pd.Categorical(sums.index.get_level_values("category"),
                                   categories=categories, ordered=True),
        "seconds_per_frame": sums.to_numpy() / counts[blocks],
    })
