"""Results directories: per-frame tables written in committed parts, read as they grow.

A results directory holds the tables of processed frames (:mod:`sxlab.tables`:
``frames``, ``peaks``, ``crystals``, ``reflections``, ``profile``) and what is needed to
interpret and reproduce them::

    out/
      params.toml  params.sha256  versions.json  geometry.geom  input.json
      parts/
        peaks-<stem>.parquet  crystals-<stem>.parquet  reflections-<stem>.parquet
        profile-<stem>.parquet  frames-<stem>.parquet      one part per chunk of frames
      frames.parquet  peaks.parquet  ...  results.stream     written by finish()
      timing.json                                             wall time of each session

**Parts and commits.** :meth:`ResultsWriter.write` writes the five tables of a chunk of
frames, each atomically (a temporary file renamed into place), the frames table last:
a part exists for readers once its ``frames-<stem>.parquet`` does, so a reader never
sees half a part, and a writer killed mid-part leaves nothing that counts. The stem is
``<first frame>-<last frame>`` (nine digits each), with ``-<tag>`` when the writer has a
tag (several writers filling one directory).

**Every frame once.** A frame may end up in two committed parts (a live worker that
died after committing, its frames handed to another). Readers take each frame from the
first part that holds it, in stem order, and list the others in
:attr:`ResultsReader.duplicates`; a batch run into an existing directory skips the
frames already there (:attr:`ResultsWriter.done`).

**Resuming safely.** A directory is reopened only for the same parameters, the same
geometry and (when the writer is given the run's identity, :meth:`sxlab.io.Run.identity`)
the same input: file names, frame count, frame shape and the SHA-256 of the stored bytes
of the first and last frames recorded in ``input.json``. Anything else is a
:class:`ResultsDirError` naming the difference. Input files whose size or modification
time changed but whose fingerprint frames did not (a repaired file) are accepted with a
note. With ``retry_failed`` the frames that failed are taken out of their parts (the
frames table of the part is rewritten atomically without them) so they are processed
again.

* :class:`ResultsWriter` — prepare a directory (or reopen it with the same
  parameters), commit parts, and :meth:`~ResultsWriter.finish` with the consolidated
  tables and a CrystFEL stream;
* :class:`ResultsReader` — read a directory, all at once (:meth:`~ResultsReader.read`)
  or incrementally, only the parts committed since the last call
  (:meth:`~ResultsReader.poll`), for a directory that is still growing;
* :class:`Results` — the tables of a processed run, with a summary; ``Results.load``.

Examples
--------
>>> import tempfile
>>> import sxlab as sx
>>> from sxlab import tables
>>> out = tempfile.mkdtemp()
>>> writer = ResultsWriter(out, sx.Params())
>>> frames = tables.FRAMES.make({"frame": [0, 1], "status": ["ok", "ok"]},
...                             fill_missing=True)
>>> writer.write(frames)
'000000000-000000001'
>>> reader = ResultsReader(out)
>>> len(reader.poll()["frames"]), len(reader.poll()["frames"])
(2, 0)
>>> len(writer.finish().frames)
2
"""

from __future__ import annotations

import html
import json
import os
import platform
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import tables
from .params import Params

__all__ = ["KINDS", "Results", "ResultsDirError", "ResultsReader", "ResultsWriter",
           "open_results"]

#: The per-frame tables of a results directory, in the order a part is written (the
#: frames table, last, commits the part).
KINDS = ("peaks", "crystals", "reflections", "profile", "frames")

#: Columns each table is sorted by (stably: the order within a frame is the producer's).
_SORT_KEYS = {"frames": ["frame"], "peaks": ["frame", "panel"],
              "crystals": ["frame", "crystal"],
              "reflections": ["frame", "crystal", "panel", "h", "k", "l"],
              "profile": ["frame", "path", "start_s"]}


class ResultsDirError(ValueError):
    """A results directory that cannot serve as asked: not one, or of other parameters,
    geometry or input (the message names the difference)."""


def _parts_dir(out: Path) -> Path:
    return out / "parts"


#: What a results directory holds (besides temporary files of its writers).
_RESULTS_FILES = frozenset({"parts", "logs", "params.toml", "params.sha256", "versions.json",
                            "geometry.geom", "input.json", "timing.json", "results.stream",
                            *(f"{kind}.parquet" for kind in ("frames", "peaks", "crystals",
                                                             "reflections", "profile"))})


def _is_results_file(name: str) -> bool:
    return name in _RESULTS_FILES or name.endswith(".tmp")


_HOST = socket.gethostname().replace(".", "_")


def _atomic(path: Path, write) -> None:
    """Write ``path`` through a temporary file of this host and process, then rename it."""
    tmp = path.with_name(f"{path.name}.{_HOST}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_tmp(folder: Path) -> None:
    """Remove temporary files left by dead processes of this host (writers that crashed)."""
    for tmp in folder.glob(f"*.{_HOST}.*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ValueError:
            pass
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # the process exists (another user's)


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    _atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


def _atomic_text(text: str, path: Path) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def _committed(out: Path) -> list[str]:
    """Stems of the committed parts, sorted."""
    return sorted(p.name[len("frames-"):-len(".parquet")]
                  for p in _parts_dir(out).glob("frames-*.parquet"))


def _committed_frames(out: Path) -> set[int]:
    """Frames of every committed part (reading the frames tables only)."""
    done: set[int] = set()
    for stem in _committed(out):
        path = _parts_dir(out) / f"frames-{stem}.parquet"
        done.update(pd.read_parquet(path, columns=["frame"])["frame"].tolist())
    return done


def _sorted(kind: str, table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(_SORT_KEYS[kind], kind="stable").reset_index(drop=True)


def _versions() -> dict:
    import h5py
    import numba

    from . import __version__

    return {"sxlab": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "pandas": pd.__version__,
            "h5py": h5py.__version__, "platform": platform.platform()}


# ============================================================================ Results
@tables.documented
@dataclass
class Results:
    """Tables of a processed run, in frame order.

    Attributes
    ----------
    frames : DataFrame
        One row per frame (:data:`sxlab.tables.FRAMES`).
    peaks, crystals, reflections, profile : DataFrame
        :data:`sxlab.tables.PEAKS`, :data:`~sxlab.tables.CRYSTALS`,
        :data:`~sxlab.tables.REFLECTIONS`, :data:`~sxlab.tables.PROFILE`.
    params : Params
    wall_s : float
        Wall time of the processing (for a directory: of every session that wrote it,
        from ``timing.json``; NaN when unknown, e.g. while a live run still writes it).
    out : pathlib.Path or None
        Output directory.
    geometry : Detector or None
        The geometry the frames were processed with.
    notes : list of str
        What a user should know about how the results were made (a resumed directory
        with changed input files, lattices reported without a reference cell, ...).
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
    notes: list = field(default_factory=list, repr=False)

    @classmethod
    def from_tables(cls, found, params: Params, **attributes) -> Results:
        """Results from the five tables in any row order (each cast and sorted by frame).

        Parameters
        ----------
        found : mapping of str to DataFrame
            ``"frames"``, ``"peaks"``, ``"crystals"``, ``"reflections"``, ``"profile"``.
        params : Params
        **attributes
            ``wall_s``, ``out``, ``geometry``.
        """
        return cls(*(_sorted(k, tables.get(k).cast(found[k]))
                     for k in ("frames", "peaks", "crystals", "reflections", "profile")),
                   params=params, **attributes)

    @classmethod
    def load(cls, out) -> Results:
        """Read the committed tables of results directory ``out`` (see :class:`ResultsReader`).

        Examples
        --------
        >>> res = Results.load("results/")  # doctest: +SKIP
        """
        return ResultsReader(out).read()

    def table(self, kind: str) -> pd.DataFrame:
        """One of the tables by name (``"frames"``, ``"peaks"``, ...)."""
        if kind not in KINDS:
            raise KeyError(f"no table {kind!r}; tables: {list(KINDS)}")
        return getattr(self, kind)

    @tables.documented
    def summary(self) -> pd.DataFrame:
        """One-row table: frames, failed, hits, indexed, crystals, rates, times.

        Returns
        -------
        DataFrame
            One row (:data:`sxlab.tables.RUN_SUMMARY`):

            [columns: run_summary]
        """
        f = self.frames
        ok = f[f.status == "ok"]
        n = len(f)
        hits = int(ok.hit.sum())
        indexed = int(ok.indexed.sum())
        return tables.RUN_SUMMARY.make({k: [v] for k, v in {
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
        }.items()})

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


# ============================================================================= reader
class ResultsReader:
    """Read a results directory, whole or incrementally as it grows.

    Parameters
    ----------
    out : path
        The results directory (it may not exist yet: a reader can wait for a writer).

    Attributes
    ----------
    out : pathlib.Path
    parts : list of str
        Stems of the parts read so far, in the order read.
    duplicates : list of tuple (str, int)
        ``(stem, frame)`` of frames found again in a later part and left out.

    Notes
    -----
    Each frame is taken once, from the first part that holds it in stem order (see the
    module notes); tables are validated against :mod:`sxlab.tables` as they are read,
    so a file of another layout is an error naming it.

    Examples
    --------
    >>> reader = ResultsReader("live-out/")  # doctest: +SKIP
    >>> new = reader.poll()                  # doctest: +SKIP
    >>> new["frames"].hit.mean()             # doctest: +SKIP
    """

    def __init__(self, out):
        self.out = Path(out)
        self.parts: list[str] = []
        self.duplicates: list[tuple[str, int]] = []
        self._frames: set[int] = set()

    def _read_part(self, stem: str) -> dict[str, pd.DataFrame]:
        found = {}
        for kind in KINDS:
            path = _parts_dir(self.out) / f"{kind}-{stem}.parquet"
            schema = tables.get(kind)
            found[kind] = schema.validate(schema.cast(pd.read_parquet(path)), where=str(path))
        frames = found["frames"]["frame"].to_numpy()
        again = np.isin(frames, list(self._frames)) if self._frames else np.zeros(len(frames),
                                                                                bool)
        if again.any():
            self.duplicates += [(stem, int(f)) for f in frames[again]]
            drop = set(frames[again].tolist())
            found = {k: t[~t["frame"].isin(drop)].reset_index(drop=True)
                     for k, t in found.items()}
        self._frames.update(found["frames"]["frame"].tolist())
        self.parts.append(stem)
        return found

    def poll(self) -> dict[str, pd.DataFrame]:
        """The rows of the parts committed since the last call (or since the start).

        Returns
        -------
        dict of str to DataFrame
            ``"frames"``, ``"peaks"``, ``"crystals"``, ``"reflections"``, ``"profile"``:
            the new rows, each table sorted by frame (empty, typed tables when nothing is
            new).
        """
        seen = set(self.parts)
        stems = _committed(self.out) if _parts_dir(self.out).is_dir() else []
        chunks = [self._read_part(s) for s in stems if s not in seen]
        return {kind: _sorted(kind, tables.get(kind).concat(c[kind] for c in chunks))
                for kind in KINDS}

    def frames_done(self) -> set[int]:
        """Frames of the parts read so far."""
        return set(self._frames)

    def read(self) -> Results:
        """Every committed part, as :class:`Results` (with parameters and geometry).

        Independent of :meth:`poll`: the whole directory is read again.

        Raises
        ------
        FileNotFoundError
            No such directory.
        ResultsDirError
            The directory is not a results directory (no ``params.toml``).
        """
        if not self.out.is_dir():
            raise FileNotFoundError(f"{self.out}: no such results directory")
        if not (self.out / "params.toml").is_file():
            raise ResultsDirError(f"{self.out}: not an sxlab results directory (no "
                                  "params.toml)")
        params = Params.load(self.out / "params.toml")
        got = ResultsReader(self.out).poll()
        geometry = None
        if (self.out / "geometry.geom").is_file():
            from .io.crystfel_geom import read_geom

            geometry = read_geom(self.out / "geometry.geom")
        wall_s = float("nan")
        timing = self.out / "timing.json"
        if timing.is_file():
            try:
                wall_s = float(json.loads(timing.read_text())["wall_s"])
            except (ValueError, KeyError, TypeError):
                pass
        return Results.from_tables(got, params, out=self.out, geometry=geometry,
                                   wall_s=wall_s)


# ============================================================================= writer
class ResultsWriter:
    """Write a results directory: prepare it, commit parts, finish it.

    Parameters
    ----------
    out : path
        The directory; created if needed. An existing one is reopened if it holds
        results of the same parameters (its committed frames are in :attr:`done`).
    params : Params
        The processing parameters (written to ``params.toml`` with their hash).
    geometry : Detector, optional
        Written to ``geometry.geom`` (when CrystFEL's format can hold it) and to the
        stream of :meth:`finish`.
    overwrite : bool
        Delete an existing directory first.
    tag : str
        Appended to the stem of every part this writer commits (``-<tag>``), so that
        several writers can fill one directory (e.g. one tag per live worker).
    inputs : callable, optional
        ``inputs(fingerprint_frames) -> dict``: the identity of the input (as
        :meth:`sxlab.io.Run.identity`), recorded in ``input.json`` and compared with the
        recorded one when the directory is reopened.
    retry_failed : bool
        Take the failed frames of a reopened directory out of its parts, so that they
        are processed again (they are then not in :attr:`done`).

    Raises
    ------
    ResultsDirError
        The directory holds results of other parameters, another geometry or other
        input, or a file in it is in the way.

    Attributes
    ----------
    out : pathlib.Path
    done : set of int
        Frames committed in the directory when it was opened, and since by this writer.
    notes : list of str
        What reopening found that a user should know (changed input files, failed frames
        to be tried again).
    """

    def __init__(self, out, params: Params, geometry=None, *, overwrite: bool = False,
                 tag: str = "", inputs=None, retry_failed: bool = False):
        if tag and not tag.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"tag must be letters, digits, '-' or '_', got {tag!r}")
        self.out = Path(out)
        self.params = params
        self.geometry = geometry
        self.tag = tag
        self.notes: list[str] = []
        self._prepare(overwrite, inputs)
        if retry_failed:
            self._retire_failed()
        self.done: set[int] = _committed_frames(self.out)

    def _prepare(self, overwrite: bool, inputs) -> None:
        out, params = self.out, self.params
        if out.exists() and not out.is_dir():
            raise ResultsDirError(f"{out} is a file, not a results directory")
        if out.is_dir():
            foreign = sorted(p.name for p in out.iterdir() if not _is_results_file(p.name))
            if foreign:
                raise ResultsDirError(
                    f"{out} holds files that are not sxlab results ({', '.join(foreign[:3])}"
                    f"{' ...' if len(foreign) > 3 else ''}); give an empty or new directory")
        if overwrite and out.exists():
            shutil.rmtree(out)
        _parts_dir(out).mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(_parts_dir(out))
        _remove_stale_tmp(out)
        ptoml = out / "params.toml"
        reopened = ptoml.exists()
        if reopened:
            old = Params.load(ptoml)
            if old.digest() != params.digest():
                raise ResultsDirError(
                    f"{out} holds results of other parameters (hash {old.digest()}, now "
                    f"{params.digest()}: {_first_difference(old.to_toml(), params.to_toml())})")
        geom_text = None
        if self.geometry is not None:
            from .io.crystfel_geom import write_geom

            try:
                geom_text = write_geom(self.geometry)
            except ValueError:
                pass  # a geometry CrystFEL's format cannot hold: not written
        gfile = out / "geometry.geom"
        if reopened and geom_text is not None and gfile.is_file():
            old_text = gfile.read_text()
            if old_text != geom_text:
                raise ResultsDirError(f"{out} holds results of another geometry "
                                      f"({_first_difference(old_text, geom_text)})")
        if inputs is not None:
            self._check_inputs(inputs, reopened)
        if not reopened:
            _atomic_text(params.to_toml(), ptoml)
        _atomic_text(params.digest() + "\n", out / "params.sha256")
        _atomic_text(json.dumps(_versions(), indent=1), out / "versions.json")
        if geom_text is not None:
            _atomic_text(geom_text, gfile)

    def _check_inputs(self, inputs, reopened: bool) -> None:
        path = self.out / "input.json"
        old = None
        if reopened and path.is_file():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = None
        new = inputs(old["fingerprint"]["frames"] if old else None)
        if old is not None:
            problem, notes = _compare_inputs(old, new)
            if problem:
                raise ResultsDirError(f"{self.out} holds results of other input: {problem}")
            self.notes += notes
        _atomic_text(json.dumps(new, indent=1), path)

    def _retire_failed(self) -> None:
        """Take failed frames out of the committed parts (frames tables rewritten)."""
        folder = _parts_dir(self.out)
        n = 0
        for stem in _committed(self.out):
            path = folder / f"frames-{stem}.parquet"
            frames = pd.read_parquet(path)
            failed = frames["status"] != "ok"
            if not failed.any():
                continue
            n += int(failed.sum())
            if failed.all():
                path.unlink()  # the part no longer counts; then its other tables
                for kind in KINDS[:-1]:
                    (folder / f"{kind}-{stem}.parquet").unlink(missing_ok=True)
            else:
                _atomic_parquet(frames[~failed].reset_index(drop=True), path)
        if n:
            self.notes.append(f"{n} frame(s) that failed before will be processed again")

    def write(self, frames: pd.DataFrame, peaks: pd.DataFrame | None = None,
              crystals: pd.DataFrame | None = None, reflections: pd.DataFrame | None = None,
              profile: pd.DataFrame | None = None) -> str:
        """Commit one part: the tables of a chunk of frames.

        Parameters
        ----------
        frames : DataFrame
            One row per frame of the chunk (:data:`sxlab.tables.FRAMES`), at least one.
        peaks, crystals, reflections, profile : DataFrame, optional
            The chunk's other tables (their rows belong to the frames of ``frames``);
            None: no rows.

        Returns
        -------
        str
            The part's stem.

        Raises
        ------
        TableError
            A table that does not follow its schema (nothing of the part is written).
        ValueError
            No frame, or rows of frames that are not in ``frames``.
        """
        given = {"peaks": peaks, "crystals": crystals, "reflections": reflections,
                 "profile": profile, "frames": frames}
        parts = {}
        for kind, table in given.items():
            schema = tables.get(kind)
            parts[kind] = (schema.empty() if table is None
                           else schema.validate(schema.cast(table), where=f"part {kind}"))
        ids = parts["frames"]["frame"].to_numpy()
        if not len(ids):
            raise ValueError("a part needs at least one frame")
        for kind, table in parts.items():
            stray = np.setdiff1d(table["frame"].to_numpy(), ids)
            if stray.size:
                raise ValueError(f"{kind} rows of frames {stray[:5].tolist()} that the "
                                 "part's frames table does not have")
        stem = f"{int(ids.min()):09d}-{int(ids.max()):09d}" + (f"-{self.tag}" if self.tag
                                                               else "")
        folder = _parts_dir(self.out)
        for kind in KINDS:  # frames last: it commits the part
            _atomic_parquet(parts[kind], folder / f"{kind}-{stem}.parquet")
        self.done.update(ids.tolist())
        return stem

    def finish(self, *, stream: bool = True, wall_s: float = 0.0) -> Results:
        """Consolidate the committed parts.

        Writes ``frames.parquet``, ``peaks.parquet``, ``crystals.parquet``,
        ``reflections.parquet`` and ``profile.parquet`` (every committed frame once, in
        frame order) and, with ``stream`` and a known geometry (the writer's or the
        directory's), ``results.stream`` (CrystFEL stream 2.3).

        Returns
        -------
        Results
        """
        timing_path = self.out / "timing.json"
        timing = {"wall_s": 0.0, "sessions": []}
        if timing_path.is_file():
            try:
                timing = json.loads(timing_path.read_text())
            except ValueError:
                pass
        timing["sessions"].append({"wall_s": float(wall_s), "host": socket.gethostname(),
                                   "pid": os.getpid()})
        timing["wall_s"] = float(sum(s["wall_s"] for s in timing["sessions"]))
        _atomic_text(json.dumps(timing, indent=1), timing_path)
        res = ResultsReader(self.out).read()
        if self.geometry is not None:
            res.geometry = self.geometry
        for kind in KINDS:
            _atomic_parquet(getattr(res, kind), self.out / f"{kind}.parquet")
        if stream and res.geometry is not None:
            from .io.stream import write_stream

            def write(tmp):
                write_stream(tmp, res.geometry, res.frames, res.peaks, res.crystals,
                             res.reflections, cell=res.params.cell)

            _atomic(self.out / "results.stream", write)
        return res

    def __repr__(self) -> str:
        tag = f" tag {self.tag!r}" if self.tag else ""
        return f"<ResultsWriter {self.out}{tag}: {len(self.done)} frames committed>"


def _first_difference(old: str, new: str) -> str:
    """The first line where two texts differ, in words."""
    a, b = old.splitlines(), new.splitlines()
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"line {i + 1}: {x.strip()!r} was, now {y.strip()!r}"
    if len(a) != len(b):
        longer, what = (a, "was") if len(a) > len(b) else (b, "now")
        return f"line {min(len(a), len(b)) + 1}: {longer[min(len(a), len(b))].strip()!r} {what}"
    return "no difference"


def _compare_inputs(old: dict, new: dict) -> tuple[str | None, list[str]]:
    """(the difference that makes ``new`` other input, notes) of two run identities."""
    def names(d):
        return [f["name"] for f in d.get("files", [])]

    if names(old) != names(new):
        def show(d):
            n = names(d)
            return n[0] + (f" and {len(n) - 1} more file(s)" if len(n) > 1 else "")

        return (f"they were made from {show(old)}, this run is {show(new)}", [])
    if old.get("n_frames") != new.get("n_frames"):
        return (f"they were made from {old.get('n_frames')} frames, this run has "
                f"{new.get('n_frames')}", [])
    if old.get("frame_shape") != new.get("frame_shape") or old.get("dtype") != new.get("dtype"):
        return (f"they were made from frames of shape {old.get('frame_shape')} "
                f"{old.get('dtype')}, this run has {new.get('frame_shape')} {new.get('dtype')}",
                [])
    fo, fn = old.get("fingerprint", {}), new.get("fingerprint", {})
    if fo.get("sha256") != fn.get("sha256"):
        return (f"frames {fo.get('frames')} of {names(new)[0]} hold other data than when the "
                "results were made (same file names, other content)", [])
    notes = []
    for a, b in zip(old.get("files", []), new.get("files", []), strict=False):
        if (a.get("size"), a.get("mtime")) != (b.get("size"), b.get("mtime")):
            notes.append(f"{b['name']} changed since the results were written (size "
                         f"{a.get('size')} -> {b.get('size')} bytes); its fingerprint frames "
                         "are unchanged, so finished frames are kept")
    return None, notes


def open_results(out) -> Results:
    """The results of a batch or live output directory, as committed so far.

    A finished directory is read from its merged tables; a growing one (a run still being
    processed, by ``sxlab process`` or live workers) from the parts committed up to now,
    so calling it again shows the frames added since.

    Parameters
    ----------
    out : str or Path
        The output directory.

    Returns
    -------
    Results

    Examples
    --------
    >>> res = sx.open_results("results/")  # doctest: +SKIP
    >>> res.summary()  # doctest: +SKIP
    """
    return Results.load(out)
