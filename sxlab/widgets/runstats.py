"""RunStats: the cctbx.xfel run-statistics panels, interactive and linked to an ImageViewer."""

from __future__ import annotations

import io
from pathlib import Path

import anywidget
import numpy as np
import pandas as pd
import traitlets as t

from .. import runstats as _rs
from ..results import ResultsReader
from . import _assets
from ._follow import Poller
from ._png import StaticPNG, figure_png

__all__ = ["RunStats"]

_MAX_POINTS = 20000
_LIST_LENGTH = 10


def _values(series: pd.Series, digits: int = 4) -> list:
    """JSON list of a numeric column (NaN as None)."""
    v = np.round(series.to_numpy(np.float64), digits)
    return [None if not np.isfinite(x) else float(x) for x in v]


class RunStats(StaticPNG, anywidget.AnyWidget):
    """The run-statistics panels of the cctbx.xfel GUI, with points you can click.

    Panels sharing the shot axis (runs one after the other): spots per image coloured by
    indexed / not indexed; moving averages of the indexing, multi-lattice and solvent
    rates; per-image resolution with the high-quality rate; the statistics bar of each
    run; and the strongest indexed and unindexed images. Clicking a point or a row of the
    lists selects that frame, and a linked :class:`ImageViewer` shows it. The numbers come
    from :func:`sxlab.runstats.run_stats` (cctbx.xfel definitions); the static twin is
    :func:`sxlab.plots.run_stats`.

    Parameters
    ----------
    source : Results, DataFrame, sxlab.runstats.RunStats, Experiment or path
        Processed frames: a :class:`~sxlab.results.Results` (its ``frames``), a frames
        table, statistics already computed, an object with a ``run_stats(**options)``
        method (an experiment database: ``options`` select the trial and runs), or the
        output directory of a running :func:`sxlab.process_run`, followed as parts are
        committed (:meth:`poll`, :meth:`follow`).
    viewer : ImageViewer, optional
        Linked viewer (see :meth:`link`).
    title : str
        Label of the widget.
    follow : float, optional
        Poll the source every ``follow`` seconds (output directory or experiment).
    **options
        Passed to :func:`sxlab.runstats.run_stats` (``min_spots``, ``hq_resolution``,
        ``solvent_cutoff``, ``n_multiples``, ``window``, ``runs``, ``last`` ...) or to
        the experiment's ``run_stats``.

    Attributes
    ----------
    stats : sxlab.runstats.RunStats
        The statistics shown.
    selected : dict
        The frame clicked last: ``run``, ``frame``, ``shot``.

    Examples
    --------
    >>> import pandas as pd
    >>> frames = pd.DataFrame({"run": "r1", "frame": range(6), "status": "ok",
    ...                        "n_peaks": [50, 3, 40, 60, 2, 30], "n_crystals": [1, 0, 0, 2, 0, 1],
    ...                        "resolution_A": [2.1, None, None, 3.0, None, 2.4],
    ...                        "solvent_ratio": [1.2, 0.8, 1.1, 0.9, 0.7, 1.0]})
    >>> widget = RunStats(frames, min_spots=20)
    >>> widget.stats.runs["indexed"].tolist()
    [3]
    >>> widget.select(frame=3)["shot"]
    3
    """

    _esm = _assets.esm("runstats.js")
    _css = _assets.css()

    points = t.Dict().tag(sync=True)
    runs = t.List(t.Dict()).tag(sync=True)
    total = t.Dict().tag(sync=True)
    lists = t.Dict().tag(sync=True)
    settings = t.Dict().tag(sync=True)
    selected = t.Dict().tag(sync=True)
    title = t.Unicode("").tag(sync=True)

    def __init__(self, source, *, viewer=None, follow: float | None = None, title: str = "",
                 **options):
        self._source = source
        self._options = options
        self._frames = None
        self._follower = None
        self._poller = None
        self._viewer = None
        self._viewer_run = None
        if isinstance(source, (str, Path)):
            self._follower = ResultsReader(source)
            self._frames = None
        elif isinstance(source, _rs.RunStats):
            self.stats = source
        elif isinstance(source, pd.DataFrame):
            self._frames = source
        elif hasattr(source, "run_stats"):
            pass  # an experiment database: queried by refresh()
        elif hasattr(source, "frames") and isinstance(source.frames, pd.DataFrame):
            self._frames = source.frames
        else:
            raise TypeError(f"RunStats needs Results, a frames DataFrame, "
                            f"sxlab.runstats.RunStats, an experiment or a directory, got "
                            f"{type(source).__name__}")
        super().__init__(title=title)
        self.refresh()
        if viewer is not None:
            self.link(viewer)
        if follow is not None:
            self.follow(follow)

    # ----------------------------------------------------------------- data
    def refresh(self) -> RunStats:
        """Recompute from the source (re-reads an experiment or the directory's parts)."""
        src = self._source
        if self._follower is not None:
            new = self._follower.poll()["frames"]
            if len(new):
                self._frames = new if self._frames is None else pd.concat(
                    [self._frames, new], ignore_index=True)
            if self._frames is None:
                self._set(None)
                return self
        if isinstance(src, _rs.RunStats):
            self._set(src)
        elif self._frames is not None:
            self._set(_rs.run_stats(self._frames, **self._options))
        else:
            self._set(src.run_stats(**self._options))
        return self

    poll = refresh

    def append(self, frames: pd.DataFrame) -> RunStats:
        """Add rows of processed frames (live feeding) and recompute."""
        if self._frames is None and not isinstance(self._source, (str, Path, pd.DataFrame)) \
                and not hasattr(self._source, "frames"):
            raise TypeError("append() needs a RunStats made from frames or a directory")
        self._frames = frames if self._frames is None else pd.concat(
            [self._frames, frames], ignore_index=True)
        self._set(_rs.run_stats(self._frames, **self._options))
        return self

    def follow(self, interval_s: float = 2.0) -> RunStats:
        """Call :meth:`refresh` every ``interval_s`` seconds until :meth:`stop`."""
        self.stop()
        self._poller = Poller(self.refresh, interval_s)
        return self

    def stop(self) -> None:
        """Stop following the source."""
        if self._poller is not None:
            self._poller.stop()
            self._poller = None

    def _set(self, stats) -> None:
        self.stats = stats
        with self.hold_sync():
            if stats is None or not len(stats.frames):
                self.points, self.runs, self.total, self.lists = {}, [], {}, {}
                return
            f = stats.frames
            if len(f) > _MAX_POINTS:  # thin the unindexed shots, keep every indexed one
                keep = f["indexed"].to_numpy() | (np.arange(len(f)) % (
                    -(-len(f) // _MAX_POINTS)) == 0)
                shown = f[keep]
            else:
                shown = f
            self.points = {
                "shot": shown["shot"].tolist(), "run": shown["run"].astype(str).tolist(),
                "frame": shown["frame"].tolist(), "n_peaks": shown["n_peaks"].tolist(),
                "indexed": shown["indexed"].astype(int).tolist(),
                "resolution_A": _values(shown["resolution_A"], 3),
                "n_shots": len(f),
            }
            self.points = {**self.points, "rates": {
                "shot": f["shot"].tolist(),
                "indexing": _values(100 * f["indexing_rate"], 2),
                "multi_lattice": _values(100 * f["multi_lattice_rate"], 2),
                "solvent": _values(100 * f["solvent_rate"], 2),
                "high_quality": _values(100 * f["high_quality_rate"], 2)}}
            self.runs = _records(stats.runs)
            self.total = _records(stats.total())[0]
            cols = ["run", "frame", "shot", "n_peaks", "n_crystals", "resolution_A"]
            self.lists = {
                "indexed": _records(stats.strongest(_LIST_LENGTH, indexed=True)[cols]),
                "unindexed": _records(stats.strongest(_LIST_LENGTH, indexed=False)[cols])}
            self.settings = {k: v for k, v in stats.params.items()}

    # ----------------------------------------------------------- selection
    def select(self, *, frame: int, run: str | None = None) -> dict:
        """Select a frame (as a click does); returns the selection."""
        f = self.stats.frames
        rows = f[(f["frame"] == int(frame)) & ((f["run"] == run) if run is not None else True)]
        if not len(rows):
            raise KeyError(f"frame {frame}{'' if run is None else f' of run {run!r}'} is not "
                           "among the shots")
        r = rows.iloc[0]
        self.selected = {"run": str(r["run"]), "frame": int(r["frame"]), "shot": int(r["shot"])}
        return self.selected

    def link(self, viewer, run: str | None = None) -> RunStats:
        """Show the selected frames in ``viewer`` (an :class:`ImageViewer`).

        ``run``: the run the viewer shows (default: its run's name, or any run when the
        statistics hold a single run); frames of other runs are not sent to it.
        """
        self._viewer = viewer
        self._viewer_run = run if run is not None else getattr(viewer.run, "name", None)
        return self

    @t.observe("selected")
    def _on_selected(self, change):
        sel = change["new"] or {}
        v = self._viewer
        if v is None or "frame" not in sel:
            return
        runs = set(self.stats.frames["run"].astype(str)) if self.stats is not None else set()
        if len(runs) > 1 and self._viewer_run is not None and sel.get("run") != str(
                self._viewer_run):
            return
        v.frame = int(sel["frame"])

    # ----------------------------------------------------------- static PNG
    def to_png(self, *, dpi: int = 80) -> bytes:
        """The static figure (:func:`sxlab.plots.run_stats`) as PNG bytes."""
        from .. import plots

        if self.stats is None or not len(self.stats.frames):
            return figure_png(lambda fig: fig.text(0.5, 0.5, "no frames yet", ha="center"),
                              (6, 1), dpi=dpi)
        import matplotlib.pyplot as plt

        fig = plots.run_stats(self.stats)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        return buf.getvalue()


def _records(table: pd.DataFrame) -> list[dict]:
    out = []
    for row in table.to_dict(orient="records"):
        clean = {}
        for k, v in row.items():
            if isinstance(v, (float, np.floating)):
                clean[k] = None if not np.isfinite(v) else round(float(v), 4)
            elif isinstance(v, (np.integer, np.bool_)):
                clean[k] = v.item()
            else:
                clean[k] = v if isinstance(v, (int, bool, str)) or v is None else str(v)
        out.append(clean)
    return out
